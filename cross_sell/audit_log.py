"""Bookkeeping for write-audit-publish: which load sits in the audit tables and what it passed.

The gates (asset checks) record their verdict here, next to the data, so the publish step can
refuse to publish a load whose gates did not all pass, even when someone selects the publish
step on its own.
"""

from __future__ import annotations

import uuid
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
"""


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(_DDL)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def record_load(conn: duckdb.DuckDBPyConnection, dataset: str, rows: int, source: str, run_id: str) -> str:
    """Register a new load of ``dataset`` into the audit schema and return its id."""
    ensure_tables(conn)
    load_id = uuid.uuid4().hex
    conn.execute(
        f"insert into {AUDIT_SCHEMA}.load_log values (?, ?, ?, ?, ?, ?)",
        [dataset, load_id, _now(), rows, source, run_id],
    )
    return load_id


def current_load(conn: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    ensure_tables(conn)
    row = conn.execute(
        f"select load_id from {AUDIT_SCHEMA}.load_log where dataset = ? order by loaded_at desc limit 1",
        [dataset],
    ).fetchone()
    return row[0] if row else None


def record_gate(
    conn: duckdb.DuckDBPyConnection, dataset: str, gate: str, passed: bool, failing: int, run_id: str
) -> None:
    """Record a gate's verdict against the dataset's current load."""
    ensure_tables(conn)
    conn.execute(
        f"insert into {AUDIT_SCHEMA}.gate_log values (?, ?, ?, ?, ?, ?, ?)",
        [dataset, current_load(conn, dataset), gate, passed, failing, _now(), run_id],
    )


def gates_not_passed(conn: duckdb.DuckDBPyConnection, dataset: str, required: list[str]) -> list[str]:
    """Required gates whose latest verdict on the current load is missing or failed."""
    load_id = current_load(conn, dataset)
    if load_id is None:
        return list(required)
    rows = conn.execute(
        f"""select gate, arg_max(passed, evaluated_at) from {AUDIT_SCHEMA}.gate_log
            where dataset = ? and load_id = ? group by gate""",
        [dataset, load_id],
    ).fetchall()
    verdicts = dict(rows)
    return [gate for gate in required if not verdicts.get(gate, False)]
