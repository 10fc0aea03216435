"""Publication: how a gated load becomes the published ``main.<dataset>`` without copying it.

``main.customers``, ``main.products`` and ``main.purchases`` are views that give the contract's
columns, typed, over the table that holds the published rows. Publishing a load whose columns
already have the contract's types (Parquet columns land typed, see :mod:`cross_sell.ingest.landing`)
points the view at the gated load itself, ``audit.<dataset>``, instead of copying every line into
a second table: that copy was a full write of the largest table (10 million purchase lines: 7 s,
and twice the disk). A load that landed as text (CSV) is parsed once, into
``audit.<dataset>_published``, and the view points there; parsing text on every read would cost
more than the copy.

The published rows must outlive the next load, which replaces ``audit.<dataset>``: before it
does, :func:`retire_published_load` renames the published load to ``audit.<dataset>_published``
(a rename, not a copy) and points the view there. A load that fails its gates therefore changes
nothing that consumers read. Everything here runs in the caller's transaction, so the view and
the table it reads change together or not at all.

States of one dataset (``A`` = ``audit.<dataset>``, ``P`` = ``audit.<dataset>_published``):

* published as is: the view reads A, and P does not exist;
* a newer load landed since, or the load was parsed: the view reads P; A is the newer load;
* an incremental (delta) load: it lands in A, after the published rows were retired to P, and is
  upserted into P (:func:`published_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb

from cross_sell.warehouse import AUDIT_SCHEMA, PUBLISHED_SCHEMA, quoted, table_exists

PUBLISHED_SUFFIX = "_published"


def published_table(dataset: str) -> str:
    """The table that holds published rows once ``audit.<dataset>`` has moved on (qualified)."""
    return f"{AUDIT_SCHEMA}.{quoted(dataset + PUBLISHED_SUFFIX)}"


def _is_view(conn: duckdb.DuckDBPyConnection, name: str, schema: str = PUBLISHED_SCHEMA) -> bool:
    found = conn.execute(
        "select count(*) from duckdb_views() where database_name = current_database() and schema_name = ? and view_name = ?",
        [schema, name],
    ).fetchone()[0]
    return bool(found)


def _column_types(conn: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    return {name: str(column_type) for name, column_type, *_ in conn.execute(f"describe {relation}").fetchall()}


def view_select(conn: duckdb.DuckDBPyConnection, relation: str, contract_types: Mapping[str, str]) -> str:
    """The contract's columns of ``relation``, in contract order: as stored where the type is the
    contract's, cast where it is not, null where the column is missing."""
    present = _column_types(conn, relation)
    parts = []
    for name, sql_type in contract_types.items():
        if name not in present:
            parts.append(f"cast(null as {sql_type}) as {quoted(name)}")
        elif present[name] == sql_type.upper():
            parts.append(quoted(name))
        else:
            parts.append(f"cast({quoted(name)} as {sql_type}) as {quoted(name)}")
    return f"select {', '.join(parts)} from {relation}"


def publishable_as_is(conn: duckdb.DuckDBPyConnection, dataset: str, contract_types: Mapping[str, str]) -> bool:
    """Whether every contract column of ``audit.<dataset>`` already has its contract type
    (missing columns publish as nulls either way)."""
    present = _column_types(conn, f"{AUDIT_SCHEMA}.{quoted(dataset)}")
    return all(present[n] == t.upper() for n, t in contract_types.items() if n in present)


def _point_view(conn: duckdb.DuckDBPyConnection, dataset: str, relation: str, contract_types: Mapping[str, str]) -> None:
    view = f"{PUBLISHED_SCHEMA}.{quoted(dataset)}"
    if table_exists(conn, dataset) and not _is_view(conn, dataset):
        conn.execute(f"drop table {view}")  # a warehouse from before published views
    conn.execute(f"create or replace view {view} as {view_select(conn, relation, contract_types)}")


def publish_load(
    conn: duckdb.DuckDBPyConnection, dataset: str, contract_types: Mapping[str, str], typed_select: str
) -> tuple[int, str]:
    """Publish the gated full load in ``audit.<dataset>``: as is where its types allow, else
    parsed once by ``typed_select`` (the load cast to the contract) into the published table.
    Returns the published row count and how it was published (``as_is`` or ``parsed``)."""
    conn.execute(f"drop table if exists {published_table(dataset)}")  # rows of an earlier publish
    if publishable_as_is(conn, dataset, contract_types):
        source, how = f"{AUDIT_SCHEMA}.{quoted(dataset)}", "as_is"
    else:
        conn.execute(f"create table {published_table(dataset)} as {typed_select}")
        source, how = published_table(dataset), "parsed"
    _point_view(conn, dataset, source, contract_types)
    rows = conn.execute(f"select count(*) from {PUBLISHED_SCHEMA}.{quoted(dataset)}").fetchone()[0]
    return int(rows), how


def retire_published_load(conn: duckdb.DuckDBPyConnection, dataset: str) -> None:
    """Before ``audit.<dataset>`` is replaced: if it holds the published rows (published as is
    and not retired yet), rename it to the published table and point the view there."""
    if not (_is_view(conn, dataset) and table_exists(conn, dataset, AUDIT_SCHEMA)):
        return
    if table_exists(conn, dataset + PUBLISHED_SUFFIX, AUDIT_SCHEMA):
        return  # the view already reads the published table; audit.<dataset> is a later load
    view_types = _column_types(conn, f"{PUBLISHED_SCHEMA}.{quoted(dataset)}")  # the contract's, as published
    contract_types = {name: column_type.lower() for name, column_type in view_types.items()}
    conn.execute(f"alter table {AUDIT_SCHEMA}.{quoted(dataset)} rename to {quoted(dataset + PUBLISHED_SUFFIX)}")
    _point_view(conn, dataset, published_table(dataset), contract_types)


def add_contract_columns(
    conn: duckdb.DuckDBPyConnection, dataset: str, table: str, contract_types: Mapping[str, str], wanted: set[str]
) -> list[str]:
    """Add to ``table`` (holding the published rows, qualified) the contract columns in ``wanted``
    it lacks, null for its rows, and point the view at the widened table. Returns those added."""
    present = _column_types(conn, table)
    added = [name for name in contract_types if name in wanted and name not in present]
    for name in added:
        conn.execute(f"alter table {table} add column {quoted(name)} {contract_types[name]}")
    if added and _is_view(conn, dataset):
        _point_view(conn, dataset, table, contract_types)
    return added


def published_rows(conn: duckdb.DuckDBPyConnection, dataset: str) -> str:
    """The table an upsert changes to change the published rows (qualified)."""
    if table_exists(conn, dataset + PUBLISHED_SUFFIX, AUDIT_SCHEMA):
        return published_table(dataset)
    if _is_view(conn, dataset):
        return f"{AUDIT_SCHEMA}.{quoted(dataset)}"
    return f"{PUBLISHED_SCHEMA}.{quoted(dataset)}"  # a warehouse from before published views
