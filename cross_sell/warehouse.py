"""Small helpers over the DuckDB warehouse: connections, atomic publishing, previews.

Layout of the warehouse file:

* ``audit.<dataset>``: the latest load, as received (text, or typed where the files were), before
  and after the gates ran;
* ``audit.<dataset>_published``: the published rows, once a later load took ``audit.<dataset>`` (or
  when the load had to be parsed to be published);
* ``audit.load_log`` / ``audit.gate_log``: which load is in the audit tables and which gates it passed;
* ``main.<table>``: everything consumers read: the published inputs (``customers``, ``products``,
  ``purchases``: views with the contract's columns over the published rows, see
  :mod:`cross_sell.ingest.publication`) and the outputs (``customer_metrics``, ``product_affinity``, ...).

Every write to ``main`` happens inside one transaction, so a failed gate, an exception or a killed
process leaves the previous tables exactly as they were.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from cross_sell import settings

AUDIT_SCHEMA = "audit"
PUBLISHED_SCHEMA = "main"


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def is_lock_error(exc: BaseException) -> bool:
    """Whether DuckDB refused to open a file because another process holds its lock."""
    return isinstance(exc, duckdb.IOException) and "Could not set lock" in str(exc)


class WarehouseLockedError(RuntimeError):
    """Another process kept the warehouse file's lock for longer than we waited."""

    def __init__(self, database: str, waited: float, cause: str):
        holder = _LOCK_HOLDER.search(cause)
        self.database = database
        self.waited = waited
        self.program = holder["program"] if holder else "unknown program"
        self.pid = int(holder["pid"]) if holder else None
        who = f"{self.program}, PID {self.pid}" if self.pid is not None else self.program
        super().__init__(
            f"The warehouse {database} is locked by another process ({who}), still after {waited:.0f} s. "
            "DuckDB lets one process at a time write a database file, and any connection another process "
            "holds open on it, even a read-only one, blocks every write. Close that connection (a DuckDB "
            "shell, a notebook, a BI tool) and run again; tools that stay connected should read the "
            "marketing database or the Parquet exports."
        )




def open_warehouse(
    database: str, wait_seconds: float, config: Mapping[str, object] | None = None
) -> duckdb.DuckDBPyConnection:
    """A read-write connection to ``database``, waiting up to ``wait_seconds`` (backing off) while
    another process holds the file's lock; then :class:`WarehouseLockedError`, naming the holder.
    Any other error (a file that is not a database, no permission) is raised at once: waiting
    cannot cure it."""
    if database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    delay = 0.1
    while True:
        try:
            return duckdb.connect(database, config=dict(config or {}))
        except duckdb.IOException as exc:
            if not is_lock_error(exc):
                raise
            waited = time.monotonic() - started
            if waited >= wait_seconds:
                raise WarehouseLockedError(database, waited, str(exc)) from exc
            time.sleep(min(delay, wait_seconds - waited))  # the last try comes at the full wait, not before
            delay = min(delay * 2, 5.0)


def rule_failure(rule: str, description: str, metadata: Mapping[str, object] | None = None) -> dg.Failure:
    """A step failure that names its rule in its text (what the shell, the run log and the alerts
    show) and in its metadata (what the failure sensor reads)."""
    return dg.Failure(description=f"{description} (rule {rule})", metadata={"rule": rule, **(metadata or {})})


def _missing_upstream(database: str, tables: Sequence[str]) -> dg.Failure:
    return rule_failure(
        "upstream_published",
        f"The warehouse {database} has no published {', '.join('main.' + t for t in tables)} yet: "
        "materialize the upstream assets first (the inputs: --select 'group:ingest'; or the whole "
        "chain: --select '*<this asset>'). Or is CROSS_SELL_DUCKDB_PATH not the warehouse you meant?",
        {"warehouse": database, "missing": list(tables)},
    )


@contextmanager
def connect(resource: DuckDBResource, needs: Sequence[str] = ()) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the resource's warehouse that is closed even on error. While another
    process holds the file (another run's step, someone's open connection) it waits up to
    ``$CROSS_SELL_LOCK_WAIT_SECONDS`` (:func:`cross_sell.settings.lock_wait_seconds`), then fails
    with a message saying who holds it and what to do.

    ``needs``: the published tables (schema main) the step reads. When one is missing (an empty or
    wrong warehouse, upstream never materialized) the step fails saying so, rather than with a
    bare "Table does not exist", and never creates an empty warehouse file where none was."""
    if needs and resource.database != ":memory:" and not Path(resource.database).exists():
        raise _missing_upstream(resource.database, needs)
    try:
        conn = open_warehouse(resource.database, settings.lock_wait_seconds(), resource.connection_config)
    except WarehouseLockedError as exc:
        raise rule_failure(
            "warehouse_unlocked", str(exc),
            {"warehouse": exc.database, "held_by": exc.program, "held_by_pid": exc.pid if exc.pid is not None else -1},
        ) from exc
    try:
        missing = [t for t in needs if not table_exists(conn, t)]
        if missing:
            raise _missing_upstream(resource.database, missing)
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Commit on success, roll back on any exception (including a failed gate)."""
    conn.execute("begin transaction")
    try:
        yield conn
    except BaseException:
        conn.execute("rollback")
        raise
    conn.execute("commit")


@dataclass(frozen=True)
class ColumnDef:
    """One column of a table the project creates with DDL (the registry, logs, reports): the one
    place its name, type and meaning are written, for the DDL and for the asset's column schema."""

    name: str
    sql_type: str  # DuckDB type: varchar, bigint, double, boolean, timestamp
    description: str
    nullable: bool = True
    primary_key: bool = False


def column_ddl(columns: Sequence[ColumnDef]) -> str:
    """The column list of a CREATE TABLE statement."""
    return ",\n    ".join(
        f"{c.name} {c.sql_type}" + (" primary key" if c.primary_key else "" if c.nullable else " not null") for c in columns
    )


def column_schema(columns: Sequence[ColumnDef]) -> dg.TableSchema:
    """The Dagster column schema (``dagster/column_schema``) of a table made with :func:`column_ddl`."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type="string" if c.sql_type == "varchar" else c.sql_type,
                description=c.description,
                constraints=dg.TableColumnConstraints(nullable=c.nullable and not c.primary_key, unique=c.primary_key),
            )
            for c in columns
        ]
    )


def quoted(name: str) -> str:
    """``name`` as a DuckDB identifier, quoted (for names that are not SQL literals in the code)."""
    return '"' + name.replace('"', '""') + '"'


def table_exists(conn: duckdb.DuckDBPyConnection, table: str, schema: str = PUBLISHED_SCHEMA) -> bool:
    found = conn.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(found and found[0])


def row_count(conn: duckdb.DuckDBPyConnection, table: str, schema: str = PUBLISHED_SCHEMA) -> int | None:
    """Rows in ``schema.table``, or None when the table does not exist yet."""
    if not table_exists(conn, table, schema):
        return None
    return int(conn.execute(f'select count(*) from "{schema}"."{table}"').fetchone()[0])


def table_columns(conn: duckdb.DuckDBPyConnection, table: str, schema: str) -> list[str]:
    rows = conn.execute(
        "select column_name from information_schema.columns where table_schema = ? and table_name = ? "
        "order by ordinal_position",
        [schema, table],
    ).fetchall()
    return [r[0] for r in rows]


def replace_table(conn: duckdb.DuckDBPyConnection, table: str, select: str) -> int:
    """Replace ``main.<table>`` with its SELECT in the caller's transaction; returns its row count."""
    conn.execute(f'create or replace table "{PUBLISHED_SCHEMA}"."{table}" as {select}')
    return int(conn.execute(f'select count(*) from "{PUBLISHED_SCHEMA}"."{table}"').fetchall()[0][0])



def _visible(value: object) -> object:
    """Text with spaces, tabs or line breaks around it, quoted: a table cell drops them, and a
    gate's sample would show ``'C1 '``, the value it failed on, as ``C1``."""
    return repr(value) if isinstance(value, str) and value != value.strip() else value


def markdown(df: pd.DataFrame, float_digits: int = 4) -> str:
    """A markdown table for metadata previews (empty frames say so; text with surrounding
    whitespace is quoted so it shows)."""
    if df.empty:
        return "_no rows_"
    shown = df.copy()
    for i in range(df.shape[1]):
        if df.dtypes.iloc[i] == object or isinstance(df.dtypes.iloc[i], pd.StringDtype):
            shown.isetitem(i, df.iloc[:, i].map(_visible))
    return shown.to_markdown(index=False, floatfmt=f".{float_digits}g")


def uri(resource: DuckDBResource, table: str, schema: str = PUBLISHED_SCHEMA) -> str:
    return f"duckdb:///{resource.database}?table={schema}.{table}"


def replace_with_frame(conn: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame) -> int:
    """Replace ``main.<table>`` with a DataFrame in one transaction (categoricals become text).

    A frame with categorical columns travels as Arrow, where a categorical is a dictionary array
    (codes plus one copy of each value): DuckDB reads pandas categoricals by building an ENUM of
    every category first, which for a million customer ids costs seconds."""
    categorical = [c for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)]
    columns = ", ".join(f'"{c}"::varchar as "{c}"' if c in categorical else f'"{c}"' for c in df.columns)
    source: object = df
    if categorical:
        import pyarrow  # imported when publishing, not when the definitions load

        source = pyarrow.Table.from_pandas(df, preserve_index=False)
    view = f"_frame_{table}"
    conn.register(view, source)
    try:
        with transaction(conn):
            conn.execute(f'create or replace table "{PUBLISHED_SCHEMA}"."{table}" as select {columns} from "{view}"')
    finally:
        conn.unregister(view)
    return len(df)


def encode_pairs(
    conn: duckdb.DuckDBPyConnection, relation: str, left: str, right: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(left, right) pairs of a relation as integer codes: left codes in 0..n-1 (n distinct left
    values), right codes indexing the returned right-hand names (sorted). Pairs may repeat.

    Left values are encoded through DuckDB's 64-bit hash and numpy's unique; a hash collision is
    detected (distinct hashes != distinct values) and answered with an exact sort-based encoding.
    """
    pairs = f"select {left} as l, {right} as r from ({relation}) where {left} is not null and {right} is not null"
    names = [row[0] for row in conn.execute(f"select distinct r from ({pairs}) order by 1").fetchall()]
    conn.register("_right_codes", pd.DataFrame({"name": names, "code": np.arange(len(names), dtype=np.int32)}))
    try:
        coded = f"select {{left_code}} as l, d.code as r from ({pairs}) p join _right_codes d on p.r = d.name"
        arrays = conn.execute(coded.format(left_code="hash(p.l)")).fetchnumpy()
        hashes, left_codes = np.unique(np.asarray(arrays["l"]), return_inverse=True)
        if len(hashes) != conn.execute(f"select count(distinct l) from ({pairs})").fetchall()[0][0]:
            # a 64-bit hash collision: astronomically rare, still answered exactly
            arrays = conn.execute(coded.format(left_code="dense_rank() over (order by p.l)::integer - 1")).fetchnumpy()
            left_codes = np.asarray(arrays["l"])
    finally:
        conn.unregister("_right_codes")
    return np.asarray(left_codes), np.asarray(arrays["r"]), names


def distinct_item_sets(
    conn: duckdb.DuckDBPyConnection, relation: str, left: str, right: str, max_items: int
) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Each ``left`` value's set of ``right`` values as a bit mask (bit i = the i-th name, sorted),
    counted in DuckDB: the distinct masks, how many left values have each, and the names. None
    when there are more than ``max_items`` distinct right values (a mask holds at most 64 bits)."""
    pairs = f"select {left} as l, {right} as r from ({relation}) where {left} is not null and {right} is not null"
    names = [row[0] for row in conn.execute(f"select distinct r from ({pairs}) order by 1").fetchall()]
    if len(names) > max_items:
        return None
    arrays = conn.execute(
        f"""with p as ({pairs}),
                codes as (select r, (row_number() over (order by r) - 1)::ubigint as code from (select distinct r from p))
            select mask, count(*) as n
            from (select l, bit_or(1::ubigint << code) as mask from p join codes using (r) group by l)
            group by mask"""
    ).fetchnumpy()
    return np.asarray(arrays["mask"], dtype=np.uint64), np.asarray(arrays["n"], dtype=np.int64), names
