"""Proving that a table is stored in the order of its keys, in one streaming pass.

Two consumers: the Parquet exports write a table as stored when it is already in key order (no
sort, byte-identical files), and the semantic layer proves a grain unique when the table a view's
rows come from is in *strictly* increasing key order (no hash of every key).
"""

from __future__ import annotations

import re

import duckdb


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _precedes(keys: list[str], strict: bool, a: str = "a", b: str = "b") -> str:
    """SQL: row ``a`` sorts before row ``b`` by ``keys`` (lexicographic, ascending), or equal to it
    unless ``strict``; NULL (unknown) when a key is null."""
    condition = f"{a}.{_ident(keys[-1])} {'<' if strict else '<='} {b}.{_ident(keys[-1])}"
    for k in reversed(keys[:-1]):
        condition = f"({a}.{_ident(k)} < {b}.{_ident(k)} or ({a}.{_ident(k)} = {b}.{_ident(k)} and {condition}))"
    return condition


def in_key_order(
    conn: duckdb.DuckDBPyConnection, table: str, keys: list[str], *, schema: str = "main", strict: bool = False
) -> bool:
    """Whether ``select * from schema.table`` returns the rows in the same order as ``order by keys``;
    with ``strict``, also that no two rows share their keys (each row's keys sort strictly before
    the next row's), which proves the keys unique.

    True only when it is proven: the relation is a table, insertion order is preserved (DuckDB's
    default), the row ids are 0..n-1 (storage order, no gaps), and every row's keys sort before (or
    equal to) the next row's (a comparison with a null key proves nothing). Rows are paired with the
    next one by a positional join of two scans (one join per slice of row ids, so the slices run in
    parallel), and every pair is checked to be (row id, row id + 1), so a pairing out of step cannot
    pass. One streaming pass instead of a sort or a hash of the whole table; callers fall back to
    those when this says False."""
    if any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) or k.lower() == "__row" for k in keys) or not keys:
        return False  # an ORDER BY expression (desc, collate, ...) is not a plain key list
    if str(conn.execute("select current_setting('preserve_insertion_order')").fetchone()[0]).lower() != "true":
        return False
    is_table = conn.execute(
        "select count(*) from duckdb_tables() where database_name = current_database() and schema_name = ? and table_name = ?",
        [schema, table],
    ).fetchone()[0]
    if not is_table:
        return False  # a view has no row ids to prove its order with
    relation = f"{_ident(schema)}.{_ident(table)}"
    rows, first, last = conn.execute(f"select count(*), min(rowid), max(rowid) from {relation}").fetchone()
    if rows <= 1:
        return rows == 0 or first == 0
    if first != 0 or last != rows - 1:
        return False
    columns = ", ".join(_ident(k) for k in keys)
    threads = int(conn.execute("select current_setting('threads')").fetchone()[0])
    chunks = max(1, min(threads, rows // 100_000))  # a positional join runs on one thread: one per thread
    edges = [round(i * (rows - 1) / chunks) for i in range(chunks + 1)]

    def scan(lo: int, hi: int) -> str:
        return f"select rowid as __row, {columns} from {relation} where rowid >= {lo} and rowid < {hi}"

    pairs_sql = [  # row r next to row r + 1, for every r in [lo, hi)
        f"""select count(b.__row) as pairs,
                   count(*) filter (where b.__row is not null and b.__row <> a.__row + 1) as out_of_step,
                   count(*) filter (where b.__row is not null and ({_precedes(keys, strict)}) is not true) as unsorted
            from ({scan(lo, hi)}) a positional join ({scan(lo + 1, hi + 1)}) b"""
        for lo, hi in zip(edges, edges[1:])
    ]
    pairs, out_of_step, unsorted = conn.execute(
        f"select sum(pairs), sum(out_of_step), sum(unsorted) from ({' union all '.join(pairs_sql)})"
    ).fetchone()
    return pairs == rows - 1 and out_of_step == 0 and unsorted == 0
