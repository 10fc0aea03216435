"""The basket log: one row per item a customer bought on a day, with no ids, prices or categories.

This is the layout of the public "Groceries" data (``Member_number, Date, itemDescription``).
Mapping onto the canonical contract:

* **purchases**: ``order_id`` = customer + date (a basket is everything a customer bought on one
  day); rows repeating the same customer, day and item are one line whose ``quantity`` is the
  number of rows (reported as folded duplicates, never dropped); ``purchase_id`` = customer +
  date + product; ``amount`` is null: there are no prices, so money metrics are reported as
  unavailable, never faked.
* **products**: ``product_id`` = the item name trimmed, inner runs of spaces collapsed, lower case;
  ``product_name`` = its most frequent spelling; with no category column each product is its
  own category.
* **customers**: every customer id in the log (the log has no customer attributes).

Accepted column names (any case): customer ``Member_number``/``customer_id``/``customer``/``member``;
date ``Date``/``purchase_date``/``order_date``, read with the configured format (``dd-mm-yyyy``
by default); item ``itemDescription``/``item``/``product``/``product_name``; optional category
``category``/``product_category``.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandera.pandas as pa

from cross_sell import contracts
from cross_sell.contracts import NON_BLANK
from cross_sell.ingest.landing import LandingReport
from cross_sell.ingest.source import (
    AdapterOptions,
    Columns,
    Finding,
    count,
    date_conversion_finding,
    examples,
    iso_date_sql,
    land_source,
    publish_mapping,
    quoted,
    source_table,
)
from cross_sell.warehouse import AUDIT_SCHEMA

NAME = "basket_log"
CUSTOMER = ("Member_number", "customer_id", "customer", "member")
DATE = ("Date", "purchase_date", "order_date")
ITEM = ("itemDescription", "item", "product", "product_name")
CATEGORY = ("category", "product_category")


def _roles(conn: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, str | None]:
    columns = Columns([r[0] for r in conn.execute(f"describe {AUDIT_SCHEMA}.{source_table(dataset)}").fetchall()], NAME)
    return {
        "customer": columns.require("customer", *CUSTOMER),
        "date": columns.require("date", *DATE),
        "item": columns.require("item", *ITEM),
        "category": columns.find(*CATEGORY),
    }


def _clean_name(column: str) -> str:
    return rf"regexp_replace(trim({quoted(column)}), '\s+', ' ', 'g')"


def _lines_sql(table: str, roles: dict[str, str | None], date_format: str) -> str:
    """Every source row with its canonical customer, day, product id and spellings."""
    category = _clean_name(roles["category"]) if roles["category"] else "null"
    return (
        f"select trim({quoted(roles['customer'])}) as customer_id, {iso_date_sql(roles['date'], date_format)} as day, "
        f"lower({_clean_name(roles['item'])}) as product_id, {_clean_name(roles['item'])} as product_name, "
        f"nullif({category}, '') as product_category, _source_file from {table}"
    )


def _land_log(
    conn: duckdb.DuckDBPyConnection, dataset: str, files: list[Path], options: AdapterOptions
) -> tuple[LandingReport, str, dict[str, str | None], str]:
    """Land the log as text for ``dataset``: the source report, its table, the columns playing
    each role and the SQL of its canonical lines."""
    source = land_source(conn, dataset, files)
    table = f"{AUDIT_SCHEMA}.{source_table(dataset)}"
    roles = _roles(conn, dataset)
    return source, table, roles, _lines_sql(table, roles, options.date_format)


def land_customers(conn: duckdb.DuckDBPyConnection, files: list[Path], options: AdapterOptions) -> tuple[LandingReport, list[Finding]]:
    source = land_source(conn, "customers", files)
    table = f"{AUDIT_SCHEMA}.{source_table('customers')}"
    customer = _roles(conn, "customers")["customer"]
    select = (
        f"select trim({quoted(customer)}) as customer_id, min(_source_file) as _source_file from {table} "
        f"where nullif(trim({quoted(customer)}), '') is not null group by 1"
    )
    report = publish_mapping(conn, "customers", source, select, contracts.column_names(contracts.Customer))
    return report, [Finding("customers_from_log", customer, report.rows, "one customer per distinct id; no attributes in the source")]


def land_products(conn: duckdb.DuckDBPyConnection, files: list[Path], options: AdapterOptions) -> tuple[LandingReport, list[Finding]]:
    source, table, roles, lines = _land_log(conn, "products", files, options)
    select = (
        "select product_id, mode(product_name) as product_name, "
        "coalesce(mode(product_category), mode(product_name)) as product_category, null::varchar as price, "
        f"min(_source_file) as _source_file from ({lines}) where product_id <> '' group by product_id"
    )
    item = roles["item"]
    findings = []
    spaced = f"{quoted(item)} <> {_clean_name(item)}"
    if n := count(conn, f"select count(*) from {table} where {spaced}"):
        findings.append(Finding(
            "item_name_whitespace", item, n, "trimmed, inner spaces collapsed",
            examples(conn, f"select distinct '\"' || {quoted(item)} || '\"' from {table} where {spaced} order by 1"),
        ))
    merged = f"select product_id from ({lines}) group by product_id having count(distinct product_name) > 1"
    if n := count(conn, f"select count(*) from ({merged})"):
        findings.append(Finding("item_names_differ_only_in_case", item, n, "one product; the most frequent spelling is its name",
                                examples(conn, merged + " order by 1")))
    report = publish_mapping(conn, "products", source, select, contracts.column_names(contracts.Product))
    findings.insert(0, Finding(
        "product_is_own_category" if not roles["category"] else "category_from_source",
        roles["category"] or item, report.rows,
        "each product is its own category (the log has none)" if not roles["category"] else "most frequent category per product",
    ))
    return report, findings


def land_purchases(conn: duckdb.DuckDBPyConnection, files: list[Path], options: AdapterOptions) -> tuple[LandingReport, list[Finding]]:
    source, table, roles, lines = _land_log(conn, "purchases", files, options)
    select = (
        "select customer_id || '|' || day || '|' || product_id as purchase_id, customer_id || '|' || day as order_id, "
        "customer_id, product_id, day as purchase_date, count(*)::varchar as quantity, null::varchar as amount, "
        f"null::varchar as channel, min(_source_file) as _source_file from ({lines}) "
        "group by customer_id, day, product_id"
    )
    report = publish_mapping(conn, "purchases", source, select, contracts.column_names(contracts.Purchase))
    folded = source.rows - report.rows
    baskets = count(conn, f"select count(distinct order_id) from {AUDIT_SCHEMA}.purchases")
    repeated = count(conn, f"select count(distinct order_id) from {AUDIT_SCHEMA}.purchases where quantity::bigint > 1")
    findings = [
        date_conversion_finding(conn, table, roles["date"], options.date_format),
        Finding("basket_is_customer_and_day", f"{roles['customer']}, {roles['date']}", baskets, "order_id = customer|date"),
        Finding(
            "duplicate_rows", f"{roles['customer']}, {roles['date']}, {roles['item']}", folded,
            f"folded into quantity: {source.rows} rows read, {report.rows} lines, {repeated} baskets hold a repeated item",
        ),
        Finding("no_prices", "amount", report.rows, "null: the log has no prices; money metrics are unavailable"),
    ]
    return report, findings


def source_contract(columns: list[str]) -> pa.DataFrameSchema:
    """Every row names a customer, a date and an item."""
    found = Columns(columns, NAME)
    roles = {role: found.find(*aliases) for role, aliases in (("customer", CUSTOMER), ("date", DATE), ("item", ITEM))}
    return pa.DataFrameSchema(
        {c: pa.Column(str, pa.Check.str_matches(NON_BLANK), nullable=False) for c in roles.values() if c},
        name="basket_log_source",
    )
