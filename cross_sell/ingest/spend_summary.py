"""The customer spend summary: one row per customer, spend per category in ``Mnt*`` columns.

This is the layout of the public "Customer Personality Analysis" data and of the purchase table
in the original design documents. Mapping onto the canonical contract:

* **customers**: ``customer_id = ID``; ``Year_Birth``, ``Education``, ``Marital_Status``, ``Income``
  and ``Dt_Customer`` (the signup date) map to their canonical columns; every other attribute
  (``Kidhome``, ``Recency``, campaign flags, ...) stays in the audit table, unpublished.
* **products**: every spend column is one product and its own category: ``product_id`` is the
  column name (``MntWines``), the name and category its words (``Wines``, ``Meat Products``).
* **purchases**: one line per customer and spend column with a non-zero amount (a zero is "did
  not buy", not a purchase): ``amount`` = the spend, ``purchase_date`` = the as-of date of the
  summary. Orders and quantities are not in the file: ``quantity`` is null, each customer's lines
  share one summary ``order_id`` (``<ID>:summary``, a grouping key, not an order), and the metrics
  built on orders are reported as unavailable, never invented.

Quirk rules, each reported with its count in the landing metadata:

* dates are read with the configured format (``dd-mm-yyyy`` by default) and written as ISO;
* an empty income is unknown (null);
* a marital status outside Married, Together, Single, Divorced, Widow is unknown (null), except
  ``Alone``, a synonym of Single;
* a birth year more than 100 years before the customer's signup is unknown (null);
* a column with one value in every row (``Z_CostContact``, ``Z_Revenue``) carries no information
  and is dropped; incomes far above the rest and rows identical but for ``ID`` are reported, kept.

The as-of date is ``input_files.as_of_date`` when set, else the newest signup date in the file
(the newest date the summary is known to cover). The gate ``source_rules`` checks
``invalid_count(<spend column>) = 0`` for every spend column: a number, present, and >= 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandera.pandas as pa

from cross_sell import contracts
from cross_sell.ingest.landing import LandingReport
from cross_sell.ingest.source import (
    AdapterOptions,
    Columns,
    Finding,
    SourceLayoutError,
    count,
    date_conversion_finding,
    examples,
    iso_date_sql,
    land_source,
    literal,
    publish_mapping,
    quoted,
    source_table,
)
from cross_sell.warehouse import AUDIT_SCHEMA, table_exists

NAME = "spend_summary"
SPEND_PREFIX = "mnt"
MARITAL_STATUSES = ("Married", "Together", "Single", "Divorced", "Widow")
MARITAL_SYNONYMS = {"Alone": "Single"}
MAX_AGE_AT_SIGNUP = 100
INCOME_OUTLIER_FACTOR = 3.0
"""An income above this multiple of the 99th percentile is reported (and kept)."""

ID = ("ID", "customer_id", "customer")
BIRTH_YEAR = ("Year_Birth", "birth_year")
EDUCATION = ("Education",)
MARITAL = ("Marital_Status", "marital_status")
INCOME = ("Income",)
SIGNUP = ("Dt_Customer", "signup_date")


def spend_columns(columns: Columns) -> list[str]:
    """Every ``Mnt*`` column: each is one category of spend."""
    return [c for c in columns.names if c.lower().startswith(SPEND_PREFIX) and len(c) > len(SPEND_PREFIX)]


def category_name(column: str) -> str:
    """``MntMeatProducts`` -> ``Meat Products``, ``MntWines`` -> ``Wines``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", column[len(SPEND_PREFIX):].strip("_ ")).replace("_", " ")
    return " ".join(w[:1].upper() + w[1:] for w in words.split()) or column


def _columns(conn: duckdb.DuckDBPyConnection, dataset: str) -> tuple[Columns, list[str]]:
    columns = Columns([r[0] for r in conn.execute(f"describe {AUDIT_SCHEMA}.{source_table(dataset)}").fetchall()], NAME)
    columns.require("customer id", *ID)
    spend = spend_columns(columns)
    if not spend:
        raise SourceLayoutError(f"{NAME} input needs spend columns named Mnt<Category>; the file has: {', '.join(columns.names)}")
    return columns, spend


def as_of_date(conn: duckdb.DuckDBPyConnection, table: str, columns: Columns, options: AdapterOptions) -> str:
    """The configured as-of date, else the newest signup date in the file (ISO)."""
    if options.as_of_date:
        return str(conn.execute("select ?::date", [options.as_of_date]).fetchall()[0][0])
    signup = columns.find(*SIGNUP)
    newest = None
    if signup:
        newest = conn.execute(
            f"select max(try_strptime(trim({quoted(signup)}), {literal(options.date_format)}))::date from {table}"
        ).fetchall()[0][0]
    if newest is None:
        if not signup:
            raise SourceLayoutError(
                f"{NAME} input has no signup date column ({' or '.join(SIGNUP)}) to take the as-of date from; "
                "set input_files.as_of_date"
            )
        sample = [v for (v,) in conn.execute(
            f"select distinct trim({quoted(signup)}) from {table} where trim({quoted(signup)}) <> '' limit 3"
        ).fetchall()]
        raise SourceLayoutError(
            f"{NAME} input: no {signup} value reads as a date with date_format {options.date_format!r} "
            f"(values like {', '.join(repr(v) for v in sample)}): set input_files.date_format to the file's "
            "format (e.g. '%d.%m.%Y'), or input_files.as_of_date"
        )
    return str(newest)


def land_customers(conn: duckdb.DuckDBPyConnection, files: list[Path], options: AdapterOptions) -> tuple[LandingReport, list[Finding]]:
    source = land_source(conn, "customers", files)
    table = f"{AUDIT_SCHEMA}.{source_table('customers')}"
    columns, spend = _columns(conn, "customers")
    customer_id = columns.find(*ID)
    findings: list[Finding] = []

    distinct = conn.execute(
        "select " + ", ".join(f"count(distinct {quoted(c)})" for c in columns.names) + f" from {table}"
    ).fetchall()[0]
    rows = count(conn, f"select count(*) from {table}")
    constant = [c for c, n in zip(columns.names, distinct) if n == 1 and rows > 1 and c not in spend and c != customer_id]
    for column in constant:
        value = examples(conn, f"select distinct {quoted(column)} from {table}", 1)
        findings.append(Finding("constant_column", column, rows, f"dropped: the same value ({value}) in every row"))

    mapped: dict[str, str] = {"customer_id": f"trim({quoted(customer_id)})"}
    signup = columns.find(*SIGNUP)
    signup_year = f"year(try_strptime(trim({quoted(signup)}), {literal(options.date_format)}))" if signup else "null"
    if signup:
        mapped["signup_date"] = iso_date_sql(signup, options.date_format)
        findings.append(date_conversion_finding(conn, table, signup, options.date_format))
    if birth := columns.find(*BIRTH_YEAR):
        implausible = f"try_cast(trim({quoted(birth)}) as integer) < coalesce({signup_year}, year(current_date)) - {MAX_AGE_AT_SIGNUP}"
        mapped["birth_year"] = f"case when {implausible} then null else nullif(trim({quoted(birth)}), '') end"
        n = count(conn, f"select count(*) from {table} where {implausible}")
        if n:
            findings.append(Finding(
                "implausible_birth_year", birth, n,
                f"set to unknown (null): more than {MAX_AGE_AT_SIGNUP} years before signup",
                examples(conn, f"select {quoted(customer_id)} || ': ' || {quoted(birth)} from {table} where {implausible} order by 1"),
            ))
    if education := columns.find(*EDUCATION):
        mapped["education"] = f"nullif(trim({quoted(education)}), '')"
    if marital := columns.find(*MARITAL):
        value = f"nullif(trim({quoted(marital)}), '')"
        known = ", ".join(literal(s) for s in MARITAL_STATUSES)
        synonyms = " ".join(f"when {value} = {literal(a)} then {literal(b)}" for a, b in MARITAL_SYNONYMS.items())
        mapped["marital_status"] = f"case when {value} in ({known}) then {value} {synonyms} else null end"
        for alias, meaning in MARITAL_SYNONYMS.items():
            if n := count(conn, f"select count(*) from {table} where {value} = {literal(alias)}"):
                findings.append(Finding("marital_status_synonym", marital, n, f"'{alias}' read as '{meaning}'"))
        unknown = f"{value} not in ({known}, {', '.join(literal(a) for a in MARITAL_SYNONYMS)})"
        if n := count(conn, f"select count(*) from {table} where {unknown}"):
            findings.append(Finding(
                "marital_status_not_a_status", marital, n, "set to unknown (null)",
                examples(conn, f"select {value} || ' x' || count(*) from {table} where {unknown} group by {value} order by 1"),
            ))
    if income := columns.find(*INCOME):
        value = f"nullif(trim({quoted(income)}), '')"
        mapped["income"] = value
        if n := count(conn, f"select count(*) from {table} where {value} is null"):
            findings.append(Finding(
                "income_missing", income, n, "kept as unknown (null)",
                examples(conn, f"select {quoted(customer_id)} from {table} where {value} is null order by try_cast({quoted(customer_id)} as bigint), 1"),
            ))
        amount = f"try_cast({value} as double)"
        outlier = f"{amount} > {INCOME_OUTLIER_FACTOR} * (select quantile_cont({amount}, 0.99) from {table})"
        if n := count(conn, f"select count(*) from {table} where {outlier}"):
            findings.append(Finding(
                "income_outlier", income, n,
                f"kept, reported: above {INCOME_OUTLIER_FACTOR:g} x the 99th percentile",
                examples(conn, f"select {quoted(customer_id)} || ': ' || {value} from {table} where {outlier} order by 1"),
            ))
    used = {customer_id, *(c for c in (signup, columns.find(*BIRTH_YEAR), education, marital, income) if c)}
    kept = [c for c in columns.names if c not in used and c not in constant and c not in spend]
    twins = count(
        conn,
        f"select count(*) - (select count(*) from (select distinct * exclude ({quoted(customer_id)}, _source_file) from {table})) from {table}",
    )
    if twins:
        findings.append(Finding("identical_but_id", customer_id, twins, "kept, reported: rows that repeat another row in every column but the id"))

    select = ", ".join(
        [f"{expr} as {quoted(name)}" for name, expr in mapped.items()] + [quoted(c) for c in kept] + ["_source_file"]
    )
    report = publish_mapping(conn, "customers", source, f"select {select} from {table}", contracts.column_names(contracts.Customer))
    return report, findings


def _published_spend_columns(conn: duckdb.DuckDBPyConnection) -> set[str]:
    """The spend columns behind the published catalogue, when it came from a spend summary."""
    if not (table_exists(conn, "products") and table_exists(conn, "input_format")):
        return set()
    if conn.execute("select input_format from main.input_format").fetchall() != [(NAME,)]:
        return set()
    return {product_id for (product_id,) in conn.execute("select product_id from main.products").fetchall()}


def check_catalogue_kept(conn: duckdb.DuckDBPyConnection, spend: list[str], options: AdapterOptions) -> None:
    """Raise SourceLayoutError when the file lacks a spend column the published catalogue has:
    renamed (``Wines`` for ``MntWines``) or dropped, it would drop the category and its spend
    from every output, silently. ``allow_dropped_categories`` accepts it (a category retired on
    purpose)."""
    missing = sorted(_published_spend_columns(conn) - set(spend))
    if missing and not options.allow_dropped_categories:
        raise SourceLayoutError(
            f"the file lacks spend column(s) the published catalogue has: {', '.join(missing)} "
            f"(categor{'y' if len(missing) == 1 else 'ies'} {', '.join(category_name(c) for c in missing)}). "
            "A renamed or dropped column would drop the category and its spend from every output. Restore "
            "the column (header Mnt<Category>); to retire the category on purpose, set "
            "allow_dropped_categories on the input_files resource for that run"
        )


def land_products(conn: duckdb.DuckDBPyConnection, files: list[Path], options: AdapterOptions) -> tuple[LandingReport, list[Finding]]:
    source = land_source(conn, "products", files)
    _, spend = _columns(conn, "products")
    check_catalogue_kept(conn, spend, options)
    rows = ", ".join(f"({literal(c)}, {literal(category_name(c))})" for c in spend)
    select = (
        "select product_id, name as product_name, name as product_category, null::varchar as price, "
        f"{literal(', '.join(f.name for f in files))} as _source_file from (values {rows}) t(product_id, name)"
    )
    report = publish_mapping(conn, "products", source, select, contracts.column_names(contracts.Product))
    finding = Finding("spend_column_is_category", ", ".join(spend), len(spend), "one product and category per spend column; no prices")
    return report, [finding]


def land_purchases(conn: duckdb.DuckDBPyConnection, files: list[Path], options: AdapterOptions) -> tuple[LandingReport, list[Finding]]:
    source = land_source(conn, "purchases", files)
    table = f"{AUDIT_SCHEMA}.{source_table('purchases')}"
    columns, spend = _columns(conn, "purchases")
    customer_id = columns.find(*ID)
    as_of = as_of_date(conn, table, columns, options)
    cells = ", ".join(quoted(c) for c in spend)
    unpivoted = (
        f"(select * from (select {quoted(customer_id)} as id, _source_file, {cells} from {table}) "
        f"unpivot include nulls (spend for product_id in ({cells})))"
    )
    select = (
        "select trim(id) || ':' || product_id as purchase_id, trim(id) || ':summary' as order_id, trim(id) as customer_id, "
        f"product_id, {literal(as_of)} as purchase_date, null::varchar as quantity, nullif(trim(spend), '') as amount, "
        f"null::varchar as channel, _source_file from {unpivoted} "
        "where try_cast(trim(spend) as double) is distinct from 0"
    )
    zero = count(conn, f"select count(*) from {unpivoted} where try_cast(trim(spend) as double) = 0")
    report = publish_mapping(conn, "purchases", source, select, contracts.column_names(contracts.Purchase))
    findings = [
        Finding("as_of_date", "purchase_date", report.rows, f"every line dated {as_of}, the as-of date of the summary"),
        Finding("zero_spend_is_not_a_purchase", ", ".join(spend), zero, "no line written for a spend of 0"),
        Finding("unknown_in_source", "order_id, quantity", report.rows,
                "the summary has no orders or quantities: quantity is null, order_id one summary key per customer"),
    ]
    return report, findings


def source_contract(columns: list[str]) -> pa.DataFrameSchema:
    """``invalid_count(<spend column>) = 0`` for every spend column: a number, present, >= 0."""
    spend = spend_columns(Columns(columns, NAME))
    return pa.DataFrameSchema(
        {c: pa.Column(float, pa.Check.ge(0), nullable=False, coerce=True) for c in spend},
        name="spend_summary_source",
    )
