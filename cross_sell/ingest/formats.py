"""Input formats: the layouts the product reads, and what each one can and cannot tell.

``canonical`` is the data contract itself (three files). ``spend_summary`` and ``basket_log`` are
adapters: each maps its layout onto the canonical tables in the audit schema, so the same gates
and the same graph run on them. A format also declares which facts its source lacks (prices,
orders, quantities, purchase dates); those canonical columns are null, the contract accepts
them as null for that format only, and the metrics built on them are published as unavailable
(null) with the reason, never faked. Publishing records the format of the published inputs in
the ``input_format`` table, which downstream steps read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import duckdb
import pandera.pandas as pa

from cross_sell.ingest import basket_log, spend_summary
from cross_sell.ingest.landing import LandingReport
from cross_sell.ingest.source import AdapterOptions, Finding

LandFunction = Callable[[duckdb.DuckDBPyConnection, list[Path], AdapterOptions], tuple[LandingReport, list[Finding]]]
FORMAT_TABLE = "input_format"


@dataclass(frozen=True)
class Capabilities:
    """Which facts the inputs carry. A fact that is missing makes its metrics unavailable."""

    prices: bool = True
    orders: bool = True
    quantities: bool = True
    dated_lines: bool = True
    """Each line's date is when it was bought (not one date for a whole summary)."""

    def unknown_purchase_columns(self) -> list[str]:
        """Canonical purchase columns the format cannot fill (null in every row)."""
        return [column for column, known in (("amount", self.prices), ("quantity", self.quantities)) if not known]

    def missing(self) -> list[str]:
        return [f.name for f in fields(self) if not getattr(self, f.name)]


@dataclass(frozen=True)
class InputFormat:
    """One layout of the inputs and how it becomes the canonical tables."""

    name: str
    description: str
    capabilities: Capabilities
    land: dict[str, LandFunction] | None = None
    """Per dataset, the adapter that maps the source onto it (None: the canonical files)."""
    source_contract: Callable[[list[str]], pa.DataFrameSchema] | None = None
    """Validity rules of the source layout itself, checked by the ``source_rules`` gate."""


FORMATS: dict[str, InputFormat] = {
    "canonical": InputFormat(
        "canonical", "customer, product and purchase files in the contract's own columns", Capabilities()
    ),
    spend_summary.NAME: InputFormat(
        spend_summary.NAME,
        "one row per customer, spend per category in Mnt* columns",
        Capabilities(orders=False, quantities=False, dated_lines=False),
        land={
            "customers": spend_summary.land_customers,
            "products": spend_summary.land_products,
            "purchases": spend_summary.land_purchases,
        },
        source_contract=spend_summary.source_contract,
    ),
    basket_log.NAME: InputFormat(
        basket_log.NAME,
        "one row per item bought: customer, date, item",
        Capabilities(prices=False),
        land={
            "customers": basket_log.land_customers,
            "products": basket_log.land_products,
            "purchases": basket_log.land_purchases,
        },
        source_contract=basket_log.source_contract,
    ),
}
FORMAT_NAMES = tuple(FORMATS)


def get_format(name: str) -> InputFormat:
    if name not in FORMATS:
        raise ValueError(f"input_format {name!r} is not supported; choose one of {', '.join(FORMAT_NAMES)}")
    return FORMATS[name]


def publish_format_sql(name: str) -> str:
    """SELECT for the one-row ``input_format`` table published with the inputs."""
    caps = get_format(name).capabilities
    flags = ", ".join(f"{str(getattr(caps, f.name)).lower()} as has_{f.name}" for f in fields(caps))
    return f"select '{name}' as input_format, {flags}"


def published_capabilities(conn: duckdb.DuckDBPyConnection) -> tuple[str, Capabilities]:
    """The format and capabilities of the published inputs (canonical for a warehouse published
    before formats were recorded)."""
    exists = conn.execute(
        "select count(*) from information_schema.tables where table_schema = 'main' and table_name = ?", [FORMAT_TABLE]
    ).fetchall()[0][0]
    if not exists:
        return "canonical", Capabilities()
    name = conn.execute(f"select input_format from {FORMAT_TABLE}").fetchall()[0][0]
    return name, get_format(name).capabilities
