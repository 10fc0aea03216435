"""Bookkeeping for write-audit-publish: which load sits in the audit tables and what it passed.

The gates (asset checks) record their verdict here, next to the data, so the publish step can
refuse to publish a load whose gates did not all pass, even when someone selects the publish
step on its own. A verdict that was reached against other datasets (referential integrity looks
up customers and products) also records which loads of those datasets it saw: if one of them is
re-landed afterwards, the verdict no longer counts.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

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
alter table {AUDIT_SCHEMA}.load_log add column if not exists fingerprint varchar;
create table if not exists {AUDIT_SCHEMA}.publish_log (publish_id varchar, published_at timestamp, run_id varchar);
create table if not exists {AUDIT_SCHEMA}.derived_log (
    table_name varchar, publish_id varchar, built_at timestamp, run_id varchar);
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
    fingerprint: str | None = None,
) -> str:
    """Register a new load of ``dataset`` into the audit schema and return its id. ``mode`` is
    ``full`` (the load replaces the published table) or ``delta`` (new lines, upserted);
    ``fingerprint`` identifies the files read (:func:`files_fingerprint`)."""
    ensure_tables(conn)
    load_id = uuid.uuid4().hex
    conn.execute(
        f"insert into {AUDIT_SCHEMA}.load_log (dataset, load_id, loaded_at, row_count, source, run_id, input_format, mode, fingerprint) "
        "values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [dataset, load_id, _now(), rows, source, run_id, input_format, mode, fingerprint],
    )
    return load_id


def files_fingerprint(files: Sequence[Path]) -> str:
    """The files a load read, by path, size and modification time: two loads with the same
    fingerprint read the same bytes (short of a file rewritten to the same size within the same
    nanosecond)."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _latest_load(conn: duckdb.DuckDBPyConnection, dataset: str, columns: str, run_id: str | None = None) -> tuple | None:
    """``columns`` (SQL) of the newest load of ``dataset`` in ``load_log`` (the current audit
    load), or of the newest one ``run_id`` landed; None if there is none."""
    ensure_tables(conn)
    by_run = " and run_id = ?" if run_id is not None else ""
    return conn.execute(
        f"select {columns} from {AUDIT_SCHEMA}.load_log where dataset = ?{by_run} order by loaded_at desc limit 1",
        [dataset] if run_id is None else [dataset, run_id],
    ).fetchone()


def current_mode(conn: duckdb.DuckDBPyConnection, dataset: str) -> str:
    """Whether the current audit load of ``dataset`` is a ``full`` load or a ``delta``."""
    row = _latest_load(conn, dataset, "mode")
    return (row[0] if row else None) or FULL


def current_format(conn: duckdb.DuckDBPyConnection, dataset: str) -> str:
    """The input format the current audit load of ``dataset`` was read in (canonical if none)."""
    row = _latest_load(conn, dataset, "input_format")
    return (row[0] if row else None) or "canonical"


def current_load_run(conn: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    """The run that landed the current audit load of ``dataset`` (None if none)."""
    row = _latest_load(conn, dataset, "run_id")
    return row[0] if row else None


OWN_LOAD_RULE = "own_load_current"


class LoadReplacedError(RuntimeError):
    """A run landed a load of a dataset, and another run has landed another load of it since."""

    rule = OWN_LOAD_RULE


def check_own_load(conn: duckdb.DuckDBPyConnection, dataset: str, run_id: str) -> None:
    """Raise :class:`LoadReplacedError` when this run landed a load of ``dataset`` and another
    run's load of other files has replaced it since in ``audit.<dataset>``: this run's gates would
    judge, and its publish step publish, the other run's lines as its own (two runs started from
    the shell at once are not queued). A load of the very same files (two refreshes started
    together) stands for this run's own. A run that landed nothing (a re-execution, a publish on
    its own) takes the current load."""
    own = _latest_load(conn, dataset, "source, fingerprint", run_id)
    if own is None:
        return
    other_run, source, fingerprint = _latest_load(conn, dataset, "run_id, source, fingerprint")
    if other_run == run_id or (fingerprint is not None and (source, fingerprint) == tuple(own)):
        return
    raise LoadReplacedError(
        f"{dataset}: another run, {other_run} ({source}), landed a {dataset} load after this run landed its own ({own[0]}). "
        f"audit.{dataset} now holds the other run's lines, so this run neither gates nor publishes them, "
        "and has published nothing. Run this selection again once the other run has finished: a new run, "
        "since a re-execution from failure would not land this run's files again (the landing sensor lands "
        "a landing file again by itself). Runs started from the UI, sensors and schedules "
        "are queued one at a time; runs started from the shell are not: do not start two loads at once."
    )


def current_load(conn: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    row = _latest_load(conn, dataset, "load_id")
    return row[0] if row else None


PUBLISHED_INPUTS = "published_inputs"
"""Stands in :func:`basis` for the published inputs as a whole: a verdict reached against the
published customers and products (an incremental load's references) holds until the next publish."""


def basis(conn: duckdb.DuckDBPyConnection, datasets: Sequence[str]) -> str:
    """The current loads of ``datasets`` (or the current publish, for :data:`PUBLISHED_INPUTS`),
    as recorded with a verdict that depends on them."""
    def state(dataset: str) -> str | None:
        return current_publish(conn) if dataset == PUBLISHED_INPUTS else current_load(conn, dataset)

    return ",".join(f"{d}={state(d)}" for d in sorted(datasets))


def record_gate(
    conn: duckdb.DuckDBPyConnection,
    dataset: str,
    gate: str,
    passed: bool,
    failing: int,
    run_id: str,
    depends_on: Sequence[str] = (),
) -> None:
    """Record a gate's verdict against the dataset's current load (and the loads, or the publish,
    it depends on)."""
    ensure_tables(conn)
    conn.execute(
        f"insert into {AUDIT_SCHEMA}.gate_log (dataset, load_id, gate, passed, failing, evaluated_at, run_id, basis) "
        "values (?, ?, ?, ?, ?, ?, ?, ?)",
        [dataset, current_load(conn, dataset), gate, passed, failing, _now(), run_id, basis(conn, depends_on)],
    )


def gates_not_passed(conn: duckdb.DuckDBPyConnection, dataset: str, required: list[str]) -> dict[str, str]:
    """Required gates whose latest verdict on the current load is missing, failed, or was reached
    against loads of other datasets (or published inputs) that have since been replaced; each with
    why, in words."""
    load_id = current_load(conn, dataset)
    if load_id is None:
        return {gate: f"no {dataset} load has landed" for gate in required}
    rows = conn.execute(
        f"""select gate, arg_max(passed, evaluated_at), arg_max(coalesce(basis, ''), evaluated_at)
            from {AUDIT_SCHEMA}.gate_log where dataset = ? and load_id = ? group by gate""",
        [dataset, load_id],
    ).fetchall()
    verdicts = {gate: (passed, seen) for gate, passed, seen in rows}
    not_passed: dict[str, str] = {}
    for gate in required:
        if gate not in verdicts:
            not_passed[gate] = "not evaluated on the current load"
            continue
        passed, seen = verdicts[gate]
        others = [part.split("=", 1)[0] for part in seen.split(",") if part]
        if not passed:
            not_passed[gate] = "failed"
        elif others and seen != basis(conn, others):
            now = dict(part.split("=", 1) for part in basis(conn, others).split(","))
            then = dict(part.split("=", 1) for part in seen.split(","))
            replaced = sorted(d.replace(PUBLISHED_INPUTS, "published inputs") for d in others if now.get(d) != then.get(d))
            not_passed[gate] = f"passed against {' and '.join(replaced)} that have been replaced since"
    return not_passed


def _exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether the bookkeeping table exists (read-only connections cannot create it)."""
    return bool(conn.execute(
        "select count(*) from duckdb_tables() where schema_name = ? and table_name = ? and database_name = current_database()",
        [AUDIT_SCHEMA, table],
    ).fetchone()[0])


def record_publish(conn: duckdb.DuckDBPyConnection, run_id: str) -> str:
    """Register a publish of the inputs (full or delta, in the publishing transaction); returns its id."""
    ensure_tables(conn)
    publish_id = uuid.uuid4().hex
    conn.execute(f"insert into {AUDIT_SCHEMA}.publish_log values (?, ?, ?)", [publish_id, _now(), run_id])
    return publish_id


def current_publish(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The id of the latest publish of the inputs (None if none was recorded). Reads only."""
    if not _exists(conn, "publish_log"):
        return None
    return conn.execute(f"select arg_max(publish_id, published_at) from {AUDIT_SCHEMA}.publish_log").fetchone()[0]


def record_derived(conn: duckdb.DuckDBPyConnection, table: str, publish_id: str | None, run_id: str) -> None:
    """Record that ``table`` was (re)built from the inputs of publish ``publish_id``. Call it after
    the table is published: a failure in between leaves an older record, which only makes readers
    distrust a table that is in fact current, never the other way round."""
    ensure_tables(conn)
    conn.execute(f"insert into {AUDIT_SCHEMA}.derived_log values (?, ?, ?, ?)", [table, publish_id, _now(), run_id])


def derived_from(conn: duckdb.DuckDBPyConnection, table: str) -> str | None:
    """The publish the current ``table`` was built from (None if unknown). Reads only."""
    if not _exists(conn, "derived_log"):
        return None
    return conn.execute(
        f"select arg_max(publish_id, built_at) from {AUDIT_SCHEMA}.derived_log where table_name = ?", [table]
    ).fetchone()[0]
