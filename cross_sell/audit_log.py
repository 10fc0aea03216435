"""Bookkeeping for write-audit-publish: which load sits in the audit tables and what it passed.

The gates (asset checks) record their verdict here, next to the data, so the publish step can
refuse to publish a load whose gates did not all pass, even when someone selects the publish
step on its own. A verdict that was reached against other datasets (referential integrity looks
up customers and products) also records which loads of those datasets it saw: if one of them is
re-landed afterwards, the verdict no longer counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timezone

import duckdb

from cross_sell.warehouse import AUDIT_SCHEMA

_DDL = f"""
create schema if not exists {AUDIT_SCHEMA};
create table if not exists {AUDIT_SCHEMA}.load_log (
    dataset varchar, load_id varchar, loaded_at timestamp, row_count bigint, source varchar, run_id varchar);
create table if not exists {AUDIT_SCHEMA}.gate_log (
    dataset varchar, load_id varchar, gate varchar, passed boolean, failing bigint,
    evaluated_at timestamp, run_id varchar);
alter table {AUDIT_SCHEMA}.gate_log add column if not exists basis varchar;
alter table {AUDIT_SCHEMA}.load_log add column if not exists input_format varchar default 'canonical';
alter table {AUDIT_SCHEMA}.load_log add column if not exists mode varchar default 'full';
"""


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(_DDL)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


FULL, DELTA = "full", "delta"


def record_load(
    conn: duckdb.DuckDBPyConnection,
    dataset: str,
    rows: int,
    source: str,
    run_id: str,
    input_format: str = "canonical",
    mode: str = FULL,
) -> str:
    """Register a new load of ``dataset`` into the audit schema and return its id. ``mode`` is
    ``full`` (the load replaces the published table) or ``delta`` (new lines, upserted)."""
    ensure_tables(conn)
    load_id = uuid.uuid4().hex
    conn.execute(
        f"insert into {AUDIT_SCHEMA}.load_log (dataset, load_id, loaded_at, row_count, source, run_id, input_format, mode) "
        "values (?, ?, ?, ?, ?, ?, ?, ?)",
        [dataset, load_id, _now(), rows, source, run_id, input_format, mode],
    )
    return load_id


def current_mode(conn: duckdb.DuckDBPyConnection, dataset: str) -> str:
    """Whether the current audit load of ``dataset`` is a ``full`` load or a ``delta``."""
    ensure_tables(conn)
    row = conn.execute(
        f"select mode from {AUDIT_SCHEMA}.load_log where dataset = ? order by loaded_at desc limit 1", [dataset]
    ).fetchone()
    return (row[0] if row else None) or FULL


def current_format(conn: duckdb.DuckDBPyConnection, dataset: str) -> str:
    """The input format the current audit load of ``dataset`` was read in (canonical if none)."""
    ensure_tables(conn)
    row = conn.execute(
        f"select input_format from {AUDIT_SCHEMA}.load_log where dataset = ? order by loaded_at desc limit 1",
        [dataset],
    ).fetchone()
    return (row[0] if row else None) or "canonical"


def current_load(conn: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    ensure_tables(conn)
    row = conn.execute(
        f"select load_id from {AUDIT_SCHEMA}.load_log where dataset = ? order by loaded_at desc limit 1",
        [dataset],
    ).fetchone()
    return row[0] if row else None


def basis(conn: duckdb.DuckDBPyConnection, datasets: Sequence[str]) -> str:
    """The current loads of ``datasets``, as recorded with a verdict that depends on them."""
    return ",".join(f"{d}={current_load(conn, d)}" for d in sorted(datasets))


def record_gate(
    conn: duckdb.DuckDBPyConnection,
    dataset: str,
    gate: str,
    passed: bool,
    failing: int,
    run_id: str,
    depends_on: Sequence[str] = (),
) -> None:
    """Record a gate's verdict against the dataset's current load (and those it depends on)."""
    ensure_tables(conn)
    conn.execute(
        f"insert into {AUDIT_SCHEMA}.gate_log (dataset, load_id, gate, passed, failing, evaluated_at, run_id, basis) "
        "values (?, ?, ?, ?, ?, ?, ?, ?)",
        [dataset, current_load(conn, dataset), gate, passed, failing, _now(), run_id, basis(conn, depends_on)],
    )


def gates_not_passed(conn: duckdb.DuckDBPyConnection, dataset: str, required: list[str]) -> list[str]:
    """Required gates whose latest verdict on the current load is missing, failed, or was reached
    against loads of other datasets that have since been replaced."""
    load_id = current_load(conn, dataset)
    if load_id is None:
        return list(required)
    rows = conn.execute(
        f"""select gate, arg_max(passed, evaluated_at), arg_max(coalesce(basis, ''), evaluated_at)
            from {AUDIT_SCHEMA}.gate_log where dataset = ? and load_id = ? group by gate""",
        [dataset, load_id],
    ).fetchall()
    verdicts = {gate: (passed, seen) for gate, passed, seen in rows}
    not_passed = []
    for gate in required:
        passed, seen = verdicts.get(gate, (False, ""))
        others = [part.split("=", 1)[0] for part in seen.split(",") if part]
        if not passed or (others and seen != basis(conn, others)):
            not_passed.append(gate)
    return not_passed
