"""Landing: read an input dataset's files into its audit table, as text, losing nothing.

Files are found by dataset name in the input folder: ``<name>.parquet``, ``<name>.csv``,
``<name>.csv.gz`` or a folder ``<name>/`` of such files (singular or plural name).

CSV is read with a fixed dialect and no sniffing: comma, double quotes (doubled to escape), a
header row whose names are taken as they are, UTF-8. Lines that cannot be parsed (ragged rows,
an unbalanced quote, bytes that are not UTF-8) are not dropped silently: they go to
``audit.<table>_rejects`` and fail the gate, named ``parse:<error>`` with file and line. Typing
happens in the gate, not here, so a value like ``"abc"`` in ``amount`` is reported with its row
instead of aborting the read. What cannot be read at all (a missing or 0-byte file, a header that
is not UTF-8 or repeats a name) fails the landing step with a message that says so.

CSV values land as text. A Parquet column lands typed when its Parquet type is one the contract
column's type reads exactly (``DOUBLE`` for a number, an integer type for an integer,
``TIMESTAMP`` or ``DATE`` for a timestamp, ``VARCHAR`` for text; see :data:`NATIVE_TYPES`),
widened to the contract's type where it differs (``INTEGER`` lands as ``BIGINT``): the gate's
casts are then no-ops, turning those values into text and back, which cost more than the rest of
landing, is skipped, and a load whose contract columns all landed typed is published without a
copy (:mod:`cross_sell.ingest.publication`). Every other
column (outside the contract, or of another type, e.g. ``FLOAT`` or ``DECIMAL``) lands as text, as
before, so the gate still sees and reports whatever cannot be typed.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from cross_sell.ingest.publication import retire_published_load
from cross_sell.warehouse import AUDIT_SCHEMA, quoted, table_columns

SUFFIXES = (".parquet", ".csv", ".csv.gz")

# Parquet (DuckDB) types kept as received for a contract column of each SQL type: the value cast
# to the contract type equals the value written as text and cast back (no rounding, no time zone,
# no precision change). Anything else lands as text.
NATIVE_TYPES: dict[str, frozenset[str]] = {
    "varchar": frozenset({"VARCHAR"}),
    "bigint": frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}),
    "double": frozenset({"DOUBLE"}),
    "timestamp": frozenset({"TIMESTAMP", "DATE"}),
}


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
    warnings: list[str] = field(default_factory=list)  # not failures: said in the run's log and metadata


def _name_variants(dataset: str) -> list[str]:
    singular = dataset[:-1] if dataset.endswith("s") else dataset
    return [singular, f"{singular}s"]


class InputAmbiguousError(ValueError):
    """More than one input for a dataset: which one is meant cannot be told, and a stale file
    must never win silently over a new one."""


def find_files(location: Path, dataset: str) -> list[Path]:
    """The files holding ``dataset`` under ``location``: one file (``purchase.csv``,
    ``purchases.parquet``, ...) or one folder of files (``purchases/``), names in any case
    (``Purchase.CSV`` from a Windows export too). Raises InputMissingError with what was tried, or
    InputAmbiguousError when more than one of them exists."""
    entries: dict[str, list[Path]] = {}
    for entry in (sorted(location.iterdir()) if location.is_dir() else []):
        entries.setdefault(entry.name.lower(), []).append(entry)
    tried: list[str] = []
    found: list[tuple[str, list[Path]]] = []
    for stem in _name_variants(dataset):
        for suffix in SUFFIXES:
            tried.append(f"{stem}{suffix}")
            found += [(p.name, [p]) for p in entries.get(f"{stem}{suffix}", []) if p.is_file()]
        tried.append(f"{stem}/")
        for folder in (p for p in entries.get(stem, []) if p.is_dir()):
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
            if files:
                found.append((f"{folder.name}/", files))
    if len(found) > 1:
        raise InputAmbiguousError(
            f"more than one input for '{dataset}' in {location}: {', '.join(name for name, _ in found)}. "
            "Keep exactly one (move the stale one away): the load will not guess which is current"
        )
    if found:
        return found[0][1]
    raise InputMissingError(f"no input for '{dataset}' in {location}: looked for {', '.join(tried)} (in any case)")


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join(_sql_text(str(p)) for p in paths) + "]"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class InputUnreadableError(ValueError):
    """An input file whose header (or compression) cannot be read at all."""


MAX_HEADER_BYTES = 1 << 20


def csv_header(path: Path, delimiter: str = ",") -> list[str]:
    """The column names in a CSV file's first line (UTF-8, a BOM is allowed).

    Names are stripped of surrounding spaces; a blank name becomes ``column<N>`` (its position).
    Raises :class:`InputUnreadableError` for a header that is missing, not UTF-8, or repeats a name.
    """
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")) as handle:
            first = handle.readline(MAX_HEADER_BYTES)
    except (OSError, EOFError) as exc:
        raise InputUnreadableError(f"{path.name}: cannot be read ({exc})") from exc
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputUnreadableError(f"{path.name}: the header line is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not text.strip():
        raise InputUnreadableError(f"{path.name}: the first line is empty; expected a header row with the column names")
    names = [name.strip() or f"column{i}" for i, name in enumerate(next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter)))]
    other = next((sep for sep in (";", "\t", "|") if sep != delimiter and sep in names[0]), None) if len(names) == 1 else None
    if other is not None:
        shown = "TAB" if other == "\t" else repr(other)
        raise InputUnreadableError(
            f"{path.name}: the header is one column, {names[0][:80]!r}: the file looks separated by {shown}, "
            f"but this input is read with {delimiter!r} as the separator"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputUnreadableError(f"{path.name}: the header repeats column names: {', '.join(repeated)}")
    return names


def _csv_scan(files: list[Path], columns: list[str], n: int, delimiter: str) -> str:
    """One strict CSV scan: the header's names, every value as text, unparseable lines to rejects.

    The dialect is fixed (no sniffing): the given delimiter (comma unless an input format says
    otherwise), double quote (doubled to escape), header row, UTF-8.
    Sniffing gives up on a file with an unbalanced quote; a fixed dialect instead rejects exactly
    the broken line(s), which then fail the gate with their line number.
    """
    struct = "{" + ", ".join(f"{_sql_text(c)}: 'VARCHAR'" for c in columns) + "}"
    return (
        f"select * exclude (filename), filename as _source_file from read_csv({_sql_list(files)}, "
        f"columns = {struct}, auto_detect = false, header = true, delim = {_sql_text(delimiter)}, quote = '\"', escape = '\"', "
        "all_varchar = true, filename = true, store_rejects = true, "
        f"rejects_table = 'reject_errors_{n}', rejects_scan = 'reject_scans_{n}')"
    )


def _parquet_relation(conn: duckdb.DuckDBPyConnection, files: list[Path], contract_types: Mapping[str, str]) -> str:
    """Parquet files as one relation: contract columns whose Parquet type the contract reads
    exactly (:data:`NATIVE_TYPES`) typed as the contract, every other column as text, plus the
    file name."""
    scan = f"read_parquet({_sql_list(files)}, union_by_name = true, filename = true)"
    described = conn.execute(f"describe select * exclude (filename) from {scan}").fetchall()
    columns = []
    for name, column_type, *_ in described:
        wanted = contract_types.get(name, "")
        if column_type == wanted.upper():
            columns.append(quoted(name))
        elif column_type in NATIVE_TYPES.get(wanted, frozenset()):
            columns.append(f"{quoted(name)}::{wanted} as {quoted(name)}")  # widened, exactly
        else:
            columns.append(f"{quoted(name)}::varchar as {quoted(name)}")
    return f"select {', '.join(columns)}, filename as _source_file from {scan}"


def _read_relation(
    conn: duckdb.DuckDBPyConnection, files: list[Path], delimiter: str = ",", contract_types: Mapping[str, str] | None = None
) -> tuple[str, list[str]]:
    """SQL text of a relation with the files' columns (as text, or as received for Parquet columns
    the contract reads exactly) and the source file name, and the SELECTs of the rejected lines of
    each CSV scan."""
    empty = [p for p in files if p.stat().st_size == 0]
    if empty:
        raise InputMissingError(f"input file is empty (0 bytes): {', '.join(p.name for p in empty)}")
    if all(p.name.lower().endswith(".parquet") for p in files):
        return _parquet_relation(conn, files, contract_types or {}), []
    if any(p.name.lower().endswith(".parquet") for p in files):
        raise ValueError("a dataset folder must hold either CSV or Parquet files, not both")
    by_header: dict[tuple[str, ...], list[Path]] = {}
    for path in files:  # one header read per file, never per row
        by_header.setdefault(tuple(csv_header(path, delimiter)), []).append(path)
    scans, rejects = [], []
    for n, (columns, group) in enumerate(by_header.items()):
        conn.execute(f"drop table if exists reject_errors_{n}; drop table if exists reject_scans_{n}")
        scans.append(_csv_scan(group, list(columns), n, delimiter))
        rejects.append(
            "select s.file_path as file, e.line, e.column_name, e.error_type, e.csv_line, e.error_message "
            f"from reject_errors_{n} e join reject_scans_{n} s using (scan_id, file_id)"
        )
    return " union all by name ".join(scans), rejects


def land(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    files: list[Path],
    contract_columns: list[str],
    *,
    delimiter: str = ",",
    rejects_table: str | None = None,
    contract_types: Mapping[str, str] | None = None,
) -> LandingReport:
    """Replace ``audit.<table>`` with the files' rows and ``audit.<rejects_table>`` (default
    ``<table>_rejects``) with the lines that could not be parsed. Values land as text, except
    Parquet columns whose type the contract type in ``contract_types`` (column -> ``varchar``,
    ``bigint``, ``double`` or ``timestamp``) reads exactly: those land as the contract type. If the
    current ``audit.<table>`` holds the published rows, they are kept as the published table first
    (:func:`~cross_sell.ingest.publication.retire_published_load`). Runs in the caller's transaction."""
    rejects_table = rejects_table or f"{table}_rejects"
    relation, reject_selects = _read_relation(conn, files, delimiter, contract_types)
    conn.execute(f"create schema if not exists {AUDIT_SCHEMA}")
    retire_published_load(conn, table)
    conn.execute(f"create or replace table {AUDIT_SCHEMA}.{table} as {relation}")
    rejects_select = " union all ".join(reject_selects) or (
        "select null::varchar as file, null::bigint as line, null::varchar as column_name, "
        "null::varchar as error_type, null::varchar as csv_line, null::varchar as error_message where false"
    )
    conn.execute(f"create or replace table {AUDIT_SCHEMA}.{rejects_table} as {rejects_select}")
    rows = int(conn.execute(f"select count(*) from {AUDIT_SCHEMA}.{table}").fetchone()[0])
    rejected = int(conn.execute(f"select count(*) from {AUDIT_SCHEMA}.{rejects_table}").fetchone()[0])
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
    """The rejected lines of a landing in pandera's failure-case shape, for the gate: rule
    ``parse:<error>`` (e.g. ``parse:invalid_encoding``), the column DuckDB stopped at, and the
    file, line number and (start of the) line as the value."""
    # Both ends: with CRLF line ends DuckDB can hand back a record that starts with the previous
    # line's LF (a last line cut short in a CRLF file), which is not a line break inside it.
    record = "trim(csv_line, chr(13) || chr(10))"
    # A quote left open runs the record on over the lines after it, often to the end of the file,
    # and DuckDB keeps only the start of such a record: say that the lines after it were lost.
    first_line = f"split_part({record}, chr(10), 1)"
    return (
        f"select 'parse:' || lower(replace(error_type, ' ', '_')) as check, "
        f"coalesce(column_name, '<line>') as column, "
        f"parse_filename(file) || ' line ' || line || ': ' || left({first_line}, 200) "
        f"|| case when contains({record}, chr(10)) then ' (a quote opened here is never closed on its line: the lines "
        f"after it were read into this one value, and none of them was landed or checked)' else '' end as failure_case, "
        f"null::bigint as index "
        f"from {AUDIT_SCHEMA}.{table}_rejects order by file, line"
    )


SOURCE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".parquet")


def find_source_files(location: Path) -> list[Path]:
    """The file(s) an input format other than ``canonical`` reads: ``location`` itself when it
    names a file, else every data file directly in the folder (sorted; they are read as one)."""
    if location.is_file():
        return [location]
    if not location.is_dir():
        raise InputMissingError(f"input location does not exist: {location}")
    files = sorted(p for p in location.iterdir() if p.is_file() and p.name.lower().endswith(SOURCE_SUFFIXES))
    if not files:
        raise InputMissingError(f"no data file in {location}: looked for {', '.join('*' + s for s in SOURCE_SUFFIXES)}")
    return files


def detect_delimiter(path: Path) -> str:
    """The field separator of a delimited text file, from its header line only: TAB when the
    header holds a TAB, else ``;`` when it holds semicolons and no comma, else a comma."""
    if path.name.lower().endswith(".parquet"):
        return ","
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")) as handle:
            first = handle.readline(MAX_HEADER_BYTES).decode("utf-8-sig", errors="replace")
    except (OSError, EOFError) as exc:
        raise InputUnreadableError(f"{path.name}: cannot be read ({exc})") from exc
    if "\t" in first:
        return "\t"
    if ";" in first and "," not in first:
        return ";"
    return ","
