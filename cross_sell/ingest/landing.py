"""Landing: read an input dataset's files into its audit table, as text, losing nothing.

Files are found by dataset name in the input folder: ``<name>.parquet``, ``<name>.csv``,
``<name>.csv.gz`` or a folder ``<name>/`` of such files (singular or plural name). CSV is read
with a fixed dialect (comma, double quotes, header row, UTF-8); lines that cannot be parsed
(ragged rows, broken quoting, bytes that are not UTF-8) are not dropped silently: they go to
``audit.<table>_rejects`` and fail the gate. Typing happens in the gate, not here, so a value like
``"abc"`` in ``amount`` is reported with its row instead of aborting the read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from cross_sell.warehouse import AUDIT_SCHEMA, table_columns

SUFFIXES = (".parquet", ".csv", ".csv.gz")


class InputMissingError(FileNotFoundError):
    """No readable file for a dataset."""


@dataclass(frozen=True)
class LandingReport:
    """What one landing read."""

    table: str
    files: list[Path]
    rows: int
    columns: list[str]
    extra_columns: list[str] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)
    rejected_lines: int = 0


def _name_variants(dataset: str) -> list[str]:
    singular = dataset[:-1] if dataset.endswith("s") else dataset
    return [singular, f"{singular}s"]


def find_files(location: Path, dataset: str) -> list[Path]:
    """The files holding ``dataset`` under ``location``; raises InputMissingError with what was tried."""
    tried: list[str] = []
    for stem in _name_variants(dataset):
        for suffix in SUFFIXES:
            candidate = location / f"{stem}{suffix}"
            tried.append(candidate.name)
            if candidate.is_file():
                return [candidate]
        folder = location / stem
        tried.append(f"{stem}/")
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
            if files:
                return files
    raise InputMissingError(f"no input for '{dataset}' in {location}: looked for {', '.join(tried)}")


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _read_relation(conn: duckdb.DuckDBPyConnection, files: list[Path], rejects_table: str) -> str:
    """SQL text of a relation with every column as VARCHAR and the source file name."""
    empty = [p for p in files if p.stat().st_size == 0]
    if empty:
        raise InputMissingError(f"input file is empty (0 bytes): {', '.join(p.name for p in empty)}")
    if all(p.name.endswith(".parquet") for p in files):
        return (
            f"select columns(* exclude (filename))::varchar, filename as _source_file "
            f"from read_parquet({_sql_list(files)}, union_by_name = true, filename = true)"
        )
    if any(p.name.endswith(".parquet") for p in files):
        raise ValueError("a dataset folder must hold either CSV or Parquet files, not both")
    conn.execute("drop table if exists reject_errors; drop table if exists reject_scans")
    return (
        f"select * exclude (filename), filename as _source_file from read_csv({_sql_list(files)}, "
        "header = true, delim = ',', quote = '\"', escape = '\"', all_varchar = true, "
        "filename = true, store_rejects = true, "
        "rejects_table = 'reject_errors', rejects_scan = 'reject_scans')"
    )


def land(
    conn: duckdb.DuckDBPyConnection, table: str, files: list[Path], contract_columns: list[str]
) -> LandingReport:
    """Replace ``audit.<table>`` with the files' rows (all text) and ``audit.<table>_rejects``
    with the lines that could not be parsed. Runs in the caller's transaction."""
    relation = _read_relation(conn, files, f"{table}_rejects")
    conn.execute(f"create schema if not exists {AUDIT_SCHEMA}")
    conn.execute(f"create or replace table {AUDIT_SCHEMA}.{table} as {relation}")
    rejects_select = (
        "select s.file_path as file, e.line, e.column_name, e.error_type, e.csv_line, e.error_message "
        "from reject_errors e join reject_scans s using (scan_id, file_id)"
    )
    has_rejects = conn.execute(
        "select count(*) from duckdb_tables() where table_name = 'reject_errors' and temporary"
    ).fetchone()[0]
    if not has_rejects:
        rejects_select = (
            "select null::varchar as file, null::bigint as line, null::varchar as column_name, "
            "null::varchar as error_type, null::varchar as csv_line, null::varchar as error_message where false"
        )
    conn.execute(f"create or replace table {AUDIT_SCHEMA}.{table}_rejects as {rejects_select}")
    rows = int(conn.execute(f"select count(*) from {AUDIT_SCHEMA}.{table}").fetchone()[0])
    rejected = int(conn.execute(f"select count(*) from {AUDIT_SCHEMA}.{table}_rejects").fetchone()[0])
    columns = [c for c in table_columns(conn, table, AUDIT_SCHEMA) if c != "_source_file"]
    return LandingReport(
        table=table,
        files=files,
        rows=rows,
        columns=columns,
        extra_columns=[c for c in columns if c not in contract_columns],
        missing_columns=[c for c in contract_columns if c not in columns],
        rejected_lines=rejected,
    )


def rejects_as_failure_cases_sql(table: str) -> str:
    """The rejected lines of a landing in pandera's failure-case shape, for the gate."""
    return (
        f"select 'parseable_csv:' || lower(replace(error_type, ' ', '_')) as check, "
        f"coalesce(column_name, '<line>') as column, csv_line as failure_case, line as index "
        f"from {AUDIT_SCHEMA}.{table}_rejects order by line"
    )
