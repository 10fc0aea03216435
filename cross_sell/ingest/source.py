"""What every input adapter shares: reading a source file as text, finding its columns by name,
and reporting each quirk it cleaned.

An adapter lands the source file(s) into ``audit.<dataset>_source`` (all text, unparseable lines
to ``audit.<dataset>_rejects`` so the contract gate reports them), then maps the text onto the
canonical columns in ``audit.<dataset>`` with one SQL statement. Every rule that changes a value
is a :class:`Finding` with its count, returned to the landing step for its metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from cross_sell.ingest.landing import LandingReport, detect_delimiter, land
from cross_sell.ingest.publication import retire_published_load
from cross_sell.warehouse import AUDIT_SCHEMA, table_columns

SOURCE_SUFFIX = "_source"
KEEP_SOURCE = ("purchases",)
"""Source tables kept after mapping, for the source-rules gate (the others are dropped)."""


@dataclass(frozen=True)
class AdapterOptions:
    """Settings an adapter needs beyond the files (from the ``input_files`` resource)."""

    date_format: str = "%d-%m-%Y"
    as_of_date: str | None = None
    allow_dropped_categories: bool = False


@dataclass(frozen=True)
class Finding:
    """One rule an adapter applied, and how many values or rows it touched."""

    rule: str
    column: str
    count: int
    action: str
    examples: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class SourceLayoutError(ValueError):
    """A source file that lacks the columns its input format needs."""


def source_table(dataset: str) -> str:
    return f"{dataset}{SOURCE_SUFFIX}"


def land_source(conn: duckdb.DuckDBPyConnection, dataset: str, files: list[Path]) -> LandingReport:
    """Land the source file(s) as text into ``audit.<dataset>_source``; parse failures go to
    ``audit.<dataset>_rejects``, where the dataset's contract gate finds them."""
    return land(
        conn, source_table(dataset), files, [],
        delimiter=detect_delimiter(files[0]), rejects_table=f"{dataset}_rejects",
    )


class Columns:
    """The source's column names, found case-insensitively among a format's accepted names."""

    def __init__(self, names: Sequence[str], format_name: str):
        self.names = [n for n in names if n != "_source_file"]
        self._by_lower = {n.lower(): n for n in self.names}
        self.format_name = format_name

    def find(self, *aliases: str) -> str | None:
        for alias in aliases:
            if alias.lower() in self._by_lower:
                return self._by_lower[alias.lower()]
        return None

    def require(self, role: str, *aliases: str) -> str:
        found = self.find(*aliases)
        if found is None:
            raise SourceLayoutError(
                f"{self.format_name} input needs a {role} column (one of {', '.join(aliases)}); "
                f"the file has: {', '.join(self.names)}"
            )
        return found


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def count(conn: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(conn.execute(sql).fetchall()[0][0] or 0)


def examples(conn: duckdb.DuckDBPyConnection, sql: str, limit: int = 5) -> str:
    """The first ``limit`` values of a one-column query, comma separated, for a finding."""
    return ", ".join(str(r[0]) for r in conn.execute(f"{sql} limit {limit}").fetchall())


def publish_mapping(
    conn: duckdb.DuckDBPyConnection, dataset: str, source: LandingReport, select_sql: str, contract_columns: list[str]
) -> LandingReport:
    """Replace ``audit.<dataset>`` with the mapped rows and report it like a canonical landing."""
    retire_published_load(conn, dataset)
    conn.execute(f"create or replace table {AUDIT_SCHEMA}.{dataset} as {select_sql}")
    if dataset not in KEEP_SOURCE:
        conn.execute(f"drop table if exists {AUDIT_SCHEMA}.{source_table(dataset)}")
    columns = [c for c in table_columns(conn, dataset, AUDIT_SCHEMA) if c != "_source_file"]
    return LandingReport(
        table=dataset,
        files=source.files,
        rows=count(conn, f"select count(*) from {AUDIT_SCHEMA}.{dataset}"),
        columns=columns,
        extra_columns=[c for c in columns if c not in contract_columns],
        missing_columns=[c for c in contract_columns if c not in columns],
        rejected_lines=source.rejected_lines,
    )


def iso_date_sql(column: str, date_format: str) -> str:
    """The text date in ``column`` as ISO ``yyyy-mm-dd`` when it parses with ``date_format``;
    otherwise the trimmed text followed by the format it does not match (``2015-07-21 (not
    %d-%m-%Y)``), which no contract reads as a date, so the contract gate reports the value, even
    one that happens to be ISO: a file's dates follow its one format, never a guess."""
    raw = f"nullif(trim({quoted(column)}), '')"
    unmatched = literal(f" (not {date_format})")
    return f"coalesce(strftime(try_strptime({raw}, {literal(date_format)}), '%Y-%m-%d'), {raw} || {unmatched})"


def date_conversion_finding(conn: duckdb.DuckDBPyConnection, table: str, column: str, date_format: str) -> Finding:
    raw = f"nullif(trim({quoted(column)}), '')"
    converted = count(conn, f"select count(try_strptime({raw}, {literal(date_format)})) from {table}")
    unreadable = count(
        conn, f"select count(*) from {table} where {raw} is not null and try_strptime({raw}, {literal(date_format)}) is null"
    )
    action = f"converted from {date_format} to ISO yyyy-mm-dd"
    if unreadable:
        action += f"; {unreadable} could not be read and are left for the contract gate"
    return Finding("date_to_iso", column, converted, action)
