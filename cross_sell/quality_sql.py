"""Run a pandera contract inside DuckDB, so the input gates scale to tens of millions of rows.

The pandera model stays the single source of truth; this module compiles the parts of it that
the input contracts use into SQL predicates over the audit table and evaluates them all in one
scan (uniqueness included: a unique column with as many distinct values as values needs no
further pass; only a column with duplicates gets one grouped pass that lists them):

* missing required column        -> ``column_in_dataframe``
* value not castable to the type -> ``coerce_dtype('<dtype>')`` (DuckDB ``try_cast``: the same cast
  that publishing applies, so what passes the gate is exactly what gets published; a timestamp
  held as text must also be written in ISO 8601, :data:`ISO_TIMESTAMP`)
* null in a non-nullable column  -> ``not_nullable``
* duplicate in a unique column   -> ``field_uniqueness``
* built-in checks ``greater_than``, ``greater_than_or_equal_to``, ``less_than``,
  ``less_than_or_equal_to``, ``in_range``, ``isin``, ``notin``, ``str_matches``, ``equal_to``
* custom checks: by name from :data:`cross_sell.contracts.SQL_CHECKS`; a check with no SQL form
  runs in pandas on that one typed column, so nothing in the model is ever skipped.

Failure names are pandera's own (``greater_than(0)``, ...), so reports read the same whichever
engine ran. The report is a :class:`cross_sell.quality.GateReport`.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pandas as pd
import pandera.pandas as pa

from cross_sell.contracts import SQL_CHECKS
from cross_sell.warehouse import quoted

SQL_TYPES = {
    "str": "varchar",
    "object": "varchar",
    "int64": "bigint",
    "Int64": "bigint",
    "float64": "double",
    "bool": "boolean",
    "datetime64[ns]": "timestamp",
}


# Conditions that prove a value matches a pattern without running the regular expression, which
# then runs only on the rest. ``^\s*\S`` (not blank): RE2's ``\s`` is [\t\n\f\r ], all below
# '!' (0x21), so a value whose first byte is '!' or above (byte-wise comparison) has a non-space
# first character and matches; an empty value or one starting with a byte below '!' goes to the
# regex. On ids this is about six times cheaper than the regex on every value.
REGEX_SHORTCUTS = {r"^\s*\S": "{} >= '!'"}

# What a timestamp held as text must look like: ISO 8601, a date (yyyy-mm-dd) with an optional
# time (T or a space, then hh:mm, :ss and a fraction), no time zone. DuckDB's own cast is lenient:
# it reads 2025/03/01 and 2025-3-1, and it drops a "+02" offset, shifting the time silently.
ISO_TIMESTAMP = r"\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?\s*"


@dataclass(frozen=True)
class Rule:
    """A row-level rule: rows where ``failing`` is true break it."""

    check: str
    column: str
    failing: str
    value: str


def sql_literal(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, pd.Timestamp):
        return f"timestamp '{value.isoformat(sep=' ')}'"
    return repr(value)


def _builtin_predicate(check: pa.Check, typed: str) -> str | None:
    """SQL that is true when ``typed`` passes the check, or None when the check is not built in."""
    stats = check.statistics or {}
    name = check.name
    if name == "greater_than":
        return f"{typed} > {sql_literal(stats['min_value'])}"
    if name == "greater_than_or_equal_to":
        return f"{typed} >= {sql_literal(stats['min_value'])}"
    if name == "less_than":
        return f"{typed} < {sql_literal(stats['max_value'])}"
    if name == "less_than_or_equal_to":
        return f"{typed} <= {sql_literal(stats['max_value'])}"
    if name == "equal_to":
        return f"{typed} = {sql_literal(stats['value'])}"
    if name == "in_range":
        low = ">=" if stats.get("include_min", True) else ">"
        high = "<=" if stats.get("include_max", True) else "<"
        return f"({typed} {low} {sql_literal(stats['min_value'])} and {typed} {high} {sql_literal(stats['max_value'])})"
    if name in ("isin", "notin"):
        values = ", ".join(sql_literal(v) for v in stats["allowed_values" if name == "isin" else "forbidden_values"])
        return f"{typed} {'in' if name == 'isin' else 'not in'} ({values})"
    if name == "str_matches":
        pattern = stats["pattern"]
        match = f"regexp_matches({typed}, {sql_literal(pattern)})"
        shortcut = REGEX_SHORTCUTS.get(pattern)
        return f"(case when {shortcut.format(typed)} then true else {match} end)" if shortcut else match
    if name in SQL_CHECKS:
        return "(" + SQL_CHECKS[name](typed) + ")"
    return None


def compile_rules(
    schema: pa.DataFrameSchema, present: list[str], text: frozenset[str] = frozenset()
) -> tuple[list[Rule], list[tuple[str, pa.Check]], list[str]]:
    """Row rules in SQL, checks left for pandas as (column, check), and unique columns. ``text``:
    the present columns held as text (a timestamp among them must be written in ISO 8601)."""
    rules: list[Rule] = []
    in_pandas: list[tuple[str, pa.Check]] = []
    unique: list[str] = []
    for name, column in schema.columns.items():
        if name not in present:
            continue
        raw = quoted(name)
        dtype = str(column.dtype)
        sql_type = SQL_TYPES.get(dtype, "varchar")
        typed = raw if sql_type == "varchar" else f"try_cast({raw} as {sql_type})"
        if sql_type == "timestamp" and name in text:
            typed = f"(case when regexp_full_match({raw}, {sql_literal(ISO_TIMESTAMP)}) then {typed} end)"
        if sql_type == "bigint":  # DuckDB rounds text '1.5' to 2 when casting to an integer: refuse fractions
            typed = f"(case when try_cast({raw} as double) = {typed} then {typed} end)"
        if sql_type == "varchar":
            typed = f"{raw}::varchar"
        else:
            rules.append(Rule(f"coerce_dtype('{dtype}')", name, f"{raw} is not null and {typed} is null", f"{raw}::varchar"))
        if not column.nullable:
            rules.append(Rule("not_nullable", name, f"{raw} is null", "null"))
        if column.unique:
            unique.append(name)
        for check in column.checks:
            passing = _builtin_predicate(check, typed)
            if passing is None:
                in_pandas.append((name, check))
                continue
            rules.append(Rule(check.error or check.name, name, f"{typed} is not null and not ({passing})", f"{raw}::varchar"))
    return rules, in_pandas, unique


def failure_cases(
    conn: duckdb.DuckDBPyConnection, table: str, schema: pa.DataFrameSchema, sample_per_rule: int = 20
) -> tuple[int, pd.DataFrame]:
    """Rows checked and pandera-shaped failure cases (check, column, failure_case, index) with at
    most ``sample_per_rule`` listed cases per rule, plus a ``count`` column with each rule's total."""
    described = conn.execute(f"describe {table}").fetchall()
    present = [r[0] for r in described]
    text = frozenset(r[0] for r in described if r[1] == "VARCHAR")
    rows = int(conn.execute(f"select count(*) from {table}").fetchone()[0])
    found: list[pd.DataFrame] = []

    missing = [n for n, c in schema.columns.items() if c.required and n not in present]
    if missing:
        found.append(pd.DataFrame({"check": "column_in_dataframe", "column": missing, "failure_case": missing,
                                   "index": None, "count": 1}))
    rules, in_pandas, unique = compile_rules(schema, present, text)

    duplicated: list[str] = []
    if (rules or unique) and rows:
        counts = conn.execute(
            "select "
            + ", ".join([f"count_if({r.failing})" for r in rules]
                        + [f"count({quoted(name)}) - count(distinct {quoted(name)})" for name in unique])
            + f" from {table}"
        ).fetchone()
        duplicated = [name for name, n in zip(unique, counts[len(rules):]) if n]
        failing = [(r, int(n)) for r, n in zip(rules, counts[: len(rules)]) if n]
        for rule, n in failing:
            sample = conn.execute(
                f"select {rule.value} as failure_case, rowid as index from {table} where {rule.failing} "
                f"order by rowid limit {sample_per_rule}"
            ).df()
            sample.insert(0, "check", rule.check)
            sample.insert(1, "column", rule.column)
            sample["count"] = n
            found.append(sample)

    for name in duplicated:  # every copy of every duplicated value, with a sample of rows
        raw = quoted(name)
        dupes = conn.execute(
            f"""select {raw}::varchar as failure_case, rowid as index, count(*) over () as count from {table}
                where {raw} in (select {raw} from {table} where {raw} is not null group by 1 having count(*) > 1)
                order by rowid"""
        ).df()
        if len(dupes):
            total = int(dupes["count"].iloc[0])
            dupes = dupes.head(sample_per_rule).assign(count=total)
            dupes.insert(0, "check", "field_uniqueness")
            dupes.insert(1, "column", name)
            found.append(dupes)

    for name, check in in_pandas:
        column = schema.columns[name]
        sql_type = SQL_TYPES.get(str(column.dtype), "varchar")
        values = conn.execute(f"select try_cast({quoted(name)} as {sql_type}) as v, rowid as index from {table}").df()
        series = values["v"].dropna()
        outcome = check(series).check_output
        bad = series[~outcome.to_numpy()]
        if len(bad):
            found.append(pd.DataFrame({"check": check.error or check.name, "column": name,
                                       "failure_case": bad.astype(str).head(sample_per_rule).to_numpy(),
                                       "index": values.loc[bad.index, "index"].head(sample_per_rule).to_numpy(),
                                       "count": len(bad)}))

    if not found:
        return rows, pd.DataFrame(columns=["check", "column", "failure_case", "index", "count"])
    return rows, pd.concat(found, ignore_index=True)
