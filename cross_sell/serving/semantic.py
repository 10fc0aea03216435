"""The semantic model: one spec of what consumers see, and everything built from it.

:data:`MODEL` names every consumer-facing view of the data product: its kind (a *dimension*
describes a business entity, a *measure* view carries metrics at a stated grain), its grain, the
published tables it reads, and every column with its type, role, meaning, how it rolls up and
how the marketing role sees it when it is personal data. From this one spec the project

* builds the DuckDB views in schema ``semantic`` of the warehouse (:func:`build_views`), each column
  cast to its declared type, so consumers get a stable interface even when an upstream table's
  physical types drift;
* verifies them (:func:`verify_views`): declared columns and types, unique grain, no null keys, and
  every declared relationship resolves;
* builds the masked copies of the marketing role (:mod:`cross_sell.serving.roles`);
* renders the reference page (:func:`render_reference`; ``python -m cross_sell.serving.semantic``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import duckdb

from cross_sell.serving.row_order import in_key_order

SCHEMA = "semantic"
PUBLISHED_SCHEMA = "main"

# Masking bands, part of the spec because they decide what the marketing role can learn.
INCOME_BAND_EDGES: tuple[int, ...] = (25_000, 50_000, 75_000, 100_000, 150_000)
AGE_BAND_EDGES: tuple[int, ...] = (18, 25, 35, 45, 55, 65)


class Mask(Enum):
    """How the marketing role sees a personal-data column (the SQL is in :mod:`roles`)."""

    HASH = "hash"
    INITIAL = "initial"
    INCOME_BAND = "income_band"
    AGE_BAND = "age_band"

    def masked_name(self, column: str) -> str:
        return {
            Mask.HASH: f"{column}_hash",
            Mask.INITIAL: f"{column}_initial",
            Mask.INCOME_BAND: "income_band",
            Mask.AGE_BAND: "age_band",
        }[self]

    def labels(self) -> list[str] | None:
        """Every value a band shows (None for the masks whose values are not a fixed list)."""
        if self is Mask.INCOME_BAND:
            return income_band_labels()
        return age_band_labels() if self is Mask.AGE_BAND else None

    def explain(self) -> str:
        if self is Mask.HASH:
            return (
                "keyed SHA-256 pseudonym (64 hex characters): the same value always gives the same "
                "pseudonym, so it joins and counts, but it cannot be reversed or recomputed without the key"
            )
        if self is Mask.INITIAL:
            return "first letter only, e.g. 'A.'"
        if self is Mask.INCOME_BAND:
            return f"income band: {', '.join(self.labels())}"
        return f"age band (years, as of the build date): {', '.join(self.labels())}"


def _k(value: int) -> str:
    return f"{value // 1000}k"


def income_band_labels() -> list[str]:
    edges = INCOME_BAND_EDGES
    labels = [f"under {_k(edges[0])}"]
    labels += [f"{_k(lo)}-{_k(hi)}" for lo, hi in zip(edges, edges[1:])]
    return labels + [f"{_k(edges[-1])}+", "unknown"]


def age_band_labels() -> list[str]:
    edges = AGE_BAND_EDGES
    labels = [f"under {edges[0]}"]
    labels += [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])]
    return labels + [f"{edges[-1]}+", "unknown"]


KEY, DIMENSION, MEASURE = "key", "dimension", "measure"


@dataclass(frozen=True)
class Column:
    """One column of a view."""

    name: str
    type: str  # the DuckDB type the view exposes (the column is cast to it)
    description: str
    role: str = DIMENSION  # key (part of the grain) | dimension (group or filter by) | measure (aggregate)
    expr: str | None = None  # SQL over the view's source; default: the source column of the same name
    rollup: str | None = None  # how a measure aggregates across rows, e.g. "sum", "average"
    mask: Mask | None = None  # personal data: how the marketing role sees it

    @property
    def sql(self) -> str:
        return self.expr or f'"{self.name}"'


@dataclass(frozen=True)
class View:
    """One consumer-facing view: ``semantic.<name>``."""

    name: str
    kind: str  # "dimension" or "measure"
    description: str
    source: str  # FROM clause over the published tables (schema main)
    depends_on: tuple[str, ...]  # the published tables (asset keys) it reads
    columns: tuple[Column, ...]
    where: str | None = None
    aggregate: bool = False  # group by every non-measure column (GROUP BY ALL)
    example: str | None = None
    # The published table whose rows are the view's rows, one for one: the view reads it and adds
    # columns by left joins, and its grain columns are that table's columns of the same names.
    # verify_views then proves the grain unique from the table's stored order (see there).
    rows_of: str | None = None

    @property
    def qualified(self) -> str:
        return f"{SCHEMA}.{self.name}"

    @property
    def grain(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.role == KEY)

    @property
    def has_pii(self) -> bool:
        return any(c.mask is not None for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.qualified} has no column {name!r}")


@dataclass(frozen=True)
class Relationship:
    """A join path between two views: every ``from`` value exists in ``to``."""

    from_view: str
    from_column: str
    to_view: str
    to_column: str
    cardinality: str  # "many_to_one" or "one_to_one"
    description: str


@dataclass(frozen=True)
class SemanticModel:
    name: str
    description: str
    views: tuple[View, ...]
    relationships: tuple[Relationship, ...] = field(default=())

    def view(self, name: str) -> View:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(f"the semantic model has no view {name!r}")

    def problems(self) -> list[str]:
        """Inconsistencies in the spec itself (empty when it is sound)."""
        found: list[str] = []
        names = [v.name for v in self.views]
        if len(set(names)) != len(names):
            found.append("view names are not unique")
        for v in self.views:
            cols = [c.name for c in v.columns]
            if len(set(cols)) != len(cols):
                found.append(f"{v.name}: column names are not unique")
            if not v.grain:
                found.append(f"{v.name}: no key column (grain)")
            if v.rows_of is not None and v.rows_of not in v.depends_on:
                found.append(f"{v.name}: rows_of {v.rows_of!r} is not among the tables it reads")
            if v.kind not in (DIMENSION, MEASURE):
                found.append(f"{v.name}: kind must be dimension or measure")
            for c in v.columns:
                if c.role not in (KEY, DIMENSION, MEASURE):
                    found.append(f"{v.name}.{c.name}: unknown role {c.role!r}")
                if c.role == MEASURE and not c.rollup:
                    found.append(f"{v.name}.{c.name}: a measure needs a rollup rule")
        for r in self.relationships:
            for view, column in ((r.from_view, r.from_column), (r.to_view, r.to_column)):
                try:
                    self.view(view).column(column)
                except KeyError as exc:
                    found.append(f"relationship {r.from_view}.{r.from_column} -> {r.to_view}.{r.to_column}: {exc}")
            if r.cardinality not in ("many_to_one", "one_to_one"):
                found.append(f"relationship {r.from_view} -> {r.to_view}: unknown cardinality {r.cardinality!r}")
        return found


_CUSTOMER_KEY = Column("customer_id", "VARCHAR", "Business key of the customer; joins every customer-level view.", KEY)

MODEL = SemanticModel(
    name="cross_sell",
    description=(
        "Product Affinity & Cross-Sell Opportunity: who the customers are, what they spend and how often "
        "they buy, which categories go together, and which category each customer is most likely to buy next."
    ),
    views=(
        View(
            name="customer",
            kind=DIMENSION,
            description="Everyone who can buy from the shop, with demographics. Holds the product's personal data.",
            source=f"{PUBLISHED_SCHEMA}.customers",
            depends_on=("customers",),
            columns=(
                _CUSTOMER_KEY,
                Column("first_name", "VARCHAR", "Given name.", mask=Mask.INITIAL),
                Column("last_name", "VARCHAR", "Family name.", mask=Mask.INITIAL),
                Column("email", "VARCHAR", "E-mail address.", mask=Mask.HASH),
                Column("phone", "VARCHAR", "Phone number.", mask=Mask.HASH),
                Column("birth_year", "BIGINT", "Year of birth.", mask=Mask.AGE_BAND),
                Column("education", "VARCHAR", "Highest education level."),
                Column("marital_status", "VARCHAR", "Marital status."),
                Column("income", "DOUBLE", "Yearly household income in the shop currency (null when unknown).", mask=Mask.INCOME_BAND),
                Column("country", "VARCHAR", "Country of residence (ISO-3166 alpha-2)."),
                Column("signup_date", "TIMESTAMP", "When the customer enrolled."),
            ),
            example="select country, count(*) as customers from semantic.customer group by 1 order by 2 desc",
        ),
        View(
            name="product",
            kind=DIMENSION,
            description="The catalogue: every product and the category it is sold under.",
            source=f"{PUBLISHED_SCHEMA}.products",
            depends_on=("products",),
            columns=(
                Column("product_id", "VARCHAR", "Business key of the product.", KEY),
                Column("product_name", "VARCHAR", "Display name of the product."),
                Column("product_category", "VARCHAR", "Category the product is sold under; the unit of cross-selling."),
                Column("price", "DOUBLE", "List price per unit (null when unknown).", MEASURE, rollup="average"),
            ),
        ),
        View(
            name="product_category",
            kind=DIMENSION,
            description="The categories cross-selling works on, with the size and price level of each.",
            source=f"{PUBLISHED_SCHEMA}.products",
            depends_on=("products",),
            aggregate=True,
            columns=(
                Column("product_category", "VARCHAR", "Business key of the category.", KEY),
                Column("products", "BIGINT", "Products in the category.", MEASURE, expr="count(*)", rollup="sum"),
                Column("avg_price", "DOUBLE", "Average list price of its products.", MEASURE, expr="avg(price)", rollup="average, weighted by products"),
            ),
        ),
        View(
            name="total_spend",
            kind=MEASURE,
            description="Total spend: what each customer has spent, all time, and the size of their average order.",
            source=f"{PUBLISHED_SCHEMA}.customer_metrics",
            depends_on=("customer_metrics",),
            columns=(
                _CUSTOMER_KEY,
                Column("total_spend", "DOUBLE", "Sum of line amounts, all time (0 without orders).", MEASURE, rollup="sum"),
                Column("orders", "BIGINT", "Distinct orders placed, all time.", MEASURE, rollup="sum"),
                Column(
                    "avg_order_value", "DOUBLE", "total_spend / orders (0 without orders).", MEASURE,
                    rollup="ratio: recompute as sum(total_spend) / sum(orders)",
                ),
            ),
            example=(
                "select c.country, sum(t.total_spend) as spend, sum(t.total_spend) / nullif(sum(t.orders), 0) as avg_order_value\n"
                "from semantic.total_spend t join semantic.customer c using (customer_id) group by 1 order by 2 desc"
            ),
        ),
        View(
            name="purchase_frequency",
            kind=MEASURE,
            description=(
                "Purchase frequency: how often each customer buys, as distinct orders per 30 days of the "
                "customer's active window (first to last purchase, counted as at least 30 days)."
            ),
            source=f"{PUBLISHED_SCHEMA}.customer_metrics",
            depends_on=("customer_metrics",),
            columns=(
                _CUSTOMER_KEY,
                Column("purchase_frequency", "DOUBLE", "Distinct orders per 30 days of the active window (0 without orders).", MEASURE, rollup="average"),
                Column("orders", "BIGINT", "Distinct orders placed, all time (the raw count).", MEASURE, rollup="sum"),
                Column("recency_days", "DOUBLE", "Days from the last purchase to the data's as-of date (null without orders).", MEASURE, rollup="average or minimum"),
            ),
            example="select round(purchase_frequency) as orders_per_30_days, count(*) as customers from semantic.purchase_frequency group by 1 order by 1",
        ),
        View(
            name="customer_lifetime_value",
            kind=MEASURE,
            description=(
                "Predicted lifetime value: avg_order_value x orders per year x horizon years (3 by default) "
                "x exp(-recency_days / 365), with orders per year = orders x 365 / max(tenure_days, 30)."
            ),
            source=f"{PUBLISHED_SCHEMA}.customer_metrics",
            depends_on=("customer_metrics",),
            columns=(
                _CUSTOMER_KEY,
                Column("clv", "DOUBLE", "Predicted lifetime value in the shop currency.", MEASURE, rollup="sum"),
                Column("tenure_days", "DOUBLE", "Days from signup (or the first purchase, if earlier) to the as-of date.", MEASURE, rollup="average"),
            ),
        ),
        View(
            name="cross_sell_opportunities",
            kind=MEASURE,
            description=(
                "Cross-sell opportunities: every customer and every category they have not bought yet, with "
                "the likelihood (0..1) that they buy it, and whether it is one of the customer's top offers."
            ),
            source=(
                f"{PUBLISHED_SCHEMA}.cross_sell_scores s left join {PUBLISHED_SCHEMA}.cross_sell_recommendations r "
                "on r.customer_id = s.customer_id and r.product_category = s.product_category"
            ),
            depends_on=("cross_sell_scores", "cross_sell_recommendations"),
            rows_of="cross_sell_scores",
            columns=(
                Column("customer_id", "VARCHAR", "Business key of the customer.", KEY, expr="s.customer_id"),
                Column("product_category", "VARCHAR", "A category the customer has not bought yet.", KEY, expr="s.product_category"),
                Column("score", "DOUBLE", "Cross-sell opportunity score: likelihood (0..1) that the customer buys the category.", MEASURE, expr="s.score", rollup="average; or count rows above a threshold"),
                Column("recommended", "BOOLEAN", "True when the category is one of the customer's top offers.", expr="r.rank is not null"),
                Column("recommendation_rank", "BIGINT", "1 = the customer's best offer; null when not among the top offers.", expr="r.rank"),
                Column("reason", "VARCHAR", "Why it is offered: the strongest affinity rule behind it, or its popularity (top offers only).", expr="r.reason"),
            ),
            example=(
                "select customer_id, product_category, score, reason from semantic.cross_sell_opportunities\n"
                "where recommendation_rank = 1 order by score desc limit 10"
            ),
        ),
        View(
            name="category_affinity",
            kind=MEASURE,
            description=(
                "Which categories are bought together beyond chance: for each rule A -> B over customers, "
                "support = P(A and B), confidence = P(B | A) and lift = confidence / P(B)."
            ),
            source=f"{PUBLISHED_SCHEMA}.product_affinity",
            where="level = 'category'",
            depends_on=("product_affinity",),
            columns=(
                Column("antecedent", "VARCHAR", "A: the category the customer already has.", KEY),
                Column("consequent", "VARCHAR", "B: the category the rule suggests.", KEY),
                Column("pair_count", "BIGINT", "Customers who bought both A and B.", MEASURE, rollup="not additive across rules"),
                Column("support", "DOUBLE", "P(A and B): share of buying customers with both.", MEASURE, rollup="not additive"),
                Column("confidence", "DOUBLE", "P(B | A): share of A's buyers who also bought B.", MEASURE, rollup="not additive"),
                Column("lift", "DOUBLE", "confidence / P(B); above 1 means A raises the odds of B.", MEASURE, rollup="not additive"),
            ),
            example="select antecedent, consequent, lift, confidence from semantic.category_affinity order by lift desc limit 10",
        ),
    ),
    relationships=(
        Relationship("total_spend", "customer_id", "customer", "customer_id", "one_to_one", "Spend of the customer."),
        Relationship("purchase_frequency", "customer_id", "customer", "customer_id", "one_to_one", "Frequency of the customer."),
        Relationship("customer_lifetime_value", "customer_id", "customer", "customer_id", "one_to_one", "Lifetime value of the customer."),
        Relationship("cross_sell_opportunities", "customer_id", "customer", "customer_id", "many_to_one", "The customer the opportunity is for."),
        Relationship("cross_sell_opportunities", "product_category", "product_category", "product_category", "many_to_one", "The category offered."),
        Relationship("product", "product_category", "product_category", "product_category", "many_to_one", "The category a product is sold under."),
        Relationship("category_affinity", "antecedent", "product_category", "product_category", "many_to_one", "The category the customer has."),
        Relationship("category_affinity", "consequent", "product_category", "product_category", "many_to_one", "The category suggested."),
    ),
)


# ---------------------------------------------------------------------------------------------
# Views


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(view: View) -> str:
    """The SELECT behind ``semantic.<view>``: every column cast to its declared type."""
    columns = ",\n       ".join(f'cast({c.sql} as {c.type}) as "{c.name}"' for c in view.columns)
    sql = f"select {columns}\nfrom {view.source}"
    if view.where:
        sql += f"\nwhere {view.where}"
    if view.aggregate:
        sql += "\ngroup by all"
    return sql


def comment_statements(view: View, relation: str, kind: str = "view", masked: bool = False) -> list[str]:
    """COMMENT ON statements that make the relation self-describing in any SQL client."""
    statements = [f"comment on {kind} {relation} is {_literal(view.description)}"]
    for c in view.columns:
        name = c.mask.masked_name(c.name) if (masked and c.mask) else c.name
        text = f"{c.description} Masked: {c.mask.explain()}." if (masked and c.mask) else c.description
        statements.append(f'comment on column {relation}."{name}" is {_literal(text)}')
    return statements


def build_views(conn: duckdb.DuckDBPyConnection, model: SemanticModel = MODEL) -> None:
    """Create or replace every view of the model in schema ``semantic`` (the caller owns the transaction)."""
    problems = model.problems()
    if problems:
        raise ValueError("The semantic model spec is inconsistent: " + "; ".join(problems))
    conn.execute(f"create schema if not exists {SCHEMA}")
    for view in model.views:
        conn.execute(f"create or replace view {view.qualified} as\n{view_sql(view)}")
        for statement in comment_statements(view, view.qualified):
            conn.execute(statement)


@dataclass(frozen=True)
class ViewReport:
    """What :func:`verify_views` found about one view."""

    view: str
    rows: int
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


def _actual_types(conn: duckdb.DuckDBPyConnection, schema: str, name: str) -> dict[str, str]:
    rows = conn.execute(
        "select column_name, data_type from information_schema.columns where table_schema = ? and table_name = ? "
        "order by ordinal_position",
        [schema, name],
    ).fetchall()
    return dict(rows)


def _rows_in_strict_grain_order(conn: duckdb.DuckDBPyConnection, view: View) -> int | None:
    """The row count of the view's ``rows_of`` table when that table is stored in strictly
    increasing order of the view's grain (so the grain is unique in it); None otherwise."""
    if view.rows_of is None or not in_key_order(conn, view.rows_of, list(view.grain), schema=PUBLISHED_SCHEMA, strict=True):
        return None
    return int(conn.execute(f'select count(*) from {PUBLISHED_SCHEMA}."{view.rows_of}"').fetchone()[0])


def verify_views(conn: duckdb.DuckDBPyConnection, model: SemanticModel = MODEL, schema: str = SCHEMA) -> dict[str, ViewReport]:
    """Check every view against the spec: columns and types as declared, grain unique and not null,
    and every relationship that starts at the view resolves (no orphan keys, one-to-one is one-to-one)."""
    reports: dict[str, ViewReport] = {}
    for view in model.views:
        relation = f"{schema}.{view.name}"
        problems: list[str] = []
        declared = {c.name: c.type for c in view.columns}
        actual = _actual_types(conn, schema, view.name)
        if list(actual) != list(declared):
            problems.append(f"columns are {list(actual)}, the spec declares {list(declared)}")
        mismatched = {n: (actual[n], t) for n, t in declared.items() if n in actual and actual[n] != t}
        problems += [f"{n} is {a}, the spec declares {t}" for n, (a, t) in mismatched.items()]
        if not actual:
            reports[view.name] = ViewReport(view.name, 0, tuple(problems))
            continue
        grain = ", ".join(f'"{k}"' for k in view.grain)
        null_keys = " or ".join(f'"{k}" is null' for k in view.grain)
        # Every aggregate of the view's checks in one pass over it (a view over millions of rows is
        # evaluated once, not once per rule); identical aggregates are computed once. Uniqueness is
        # proven the cheapest way that proves it:
        # * a view whose rows are the rows of one table (``rows_of``): that table stored in strictly
        #   increasing grain order (one streaming pass, no key is hashed) has a unique grain, and
        #   as many view rows as table rows means the left joins added no row, so the view's grain
        #   is unique too;
        # * else, a 64-bit hash of the grain counted distinct (cheaper than the key values): equal
        #   keys have equal hashes, so as many distinct hashes as rows proves the grain unique.
        # Only when neither proves it, or with null keys, is the exact distinct count taken, in a
        # second pass.
        ordered_rows = _rows_in_strict_grain_order(conn, view)
        count, null = "count(*)", f"count(*) filter (where {null_keys})"
        unique = f"count(distinct hash({grain}))" if ordered_rows is None else count
        aggregates = [count, unique, null]
        rules: list[tuple[Relationship, str, str | None]] = []
        for r in model.relationships:
            if r.from_view != view.name:
                continue
            orphans = (
                f'count(*) filter (where f."{r.from_column}" is not null and not exists '
                f'(select 1 from {schema}.{r.to_view} t where t."{r.to_column}" = f."{r.from_column}"))'
            )
            dupes = f'count(*) - count(distinct "{r.from_column}")' if r.cardinality == "one_to_one" else None
            rules.append((r, orphans, dupes))
            aggregates += [a for a in (orphans, dupes) if a]
        aggregates = list(dict.fromkeys(aggregates))
        values = dict(zip(aggregates, conn.execute(f"select {', '.join(aggregates)} from {relation} f").fetchone()))
        rows, distinct, nulls = values[count], values[unique], values[null]
        if ordered_rows is not None and ordered_rows != rows:
            distinct = -1  # the joins added rows: not proven, count exactly below
        if distinct != rows or nulls:
            distinct = conn.execute(f"select count(distinct ({grain})) from {relation}").fetchone()[0]
        if distinct != rows:
            problems.append(f"grain ({grain}) is not unique: {rows - distinct} duplicate rows")
        if nulls:
            problems.append(f"{nulls} rows have a null key")
        for r, orphans, dupes in rules:
            if values[orphans]:
                problems.append(f"{values[orphans]} rows have a {r.from_column} missing from {r.to_view}.{r.to_column}")
            if dupes and values[dupes]:
                problems.append(f"{r.from_column} repeats {values[dupes]} times but is one-to-one with {r.to_view}")
        reports[view.name] = ViewReport(view.name, int(rows), tuple(problems))
    return reports


# ---------------------------------------------------------------------------------------------
# Reference page


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _marketing_cell(column: Column) -> str:
    if column.mask is None:
        return "as is"
    return f"`{column.mask.masked_name(column.name)}`: {column.mask.explain()}"


def render_reference(model: SemanticModel = MODEL) -> str:
    """The semantic model as a readable Markdown page (deterministic: the spec only)."""
    lines = [
        f"# Semantic model: {model.name}",
        "",
        "<!-- Generated from cross_sell/serving/semantic.py by `python -m cross_sell.serving.semantic`; do not edit by hand. -->",
        "",
        model.description,
        "",
        "Role `analyst` reads the views in schema `semantic` of the warehouse "
        "(`data/warehouse/cross_sell.duckdb` by default). Role `marketing` reads tables of the same names "
        "in its own database (`data/warehouse/cross_sell_marketing.duckdb` by default; schema `main`), "
        "where personal data is masked as shown in the last column of each table below.",
        "",
        "## Views",
        "",
        "| view | kind | one row per | reads | description |",
        "|---|---|---|---|---|",
    ]
    for v in model.views:
        lines.append(
            f"| [`{v.qualified}`](#{v.name}) | {v.kind} | {', '.join(v.grain)} | {', '.join(v.depends_on)} | {_cell(v.description)} |"
        )
    for v in model.views:
        lines += [
            "",
            f'<a id="{v.name}"></a>',
            f"## `{v.qualified}` ({v.kind})",
            "",
            v.description,
            "",
            f"One row per **{', '.join(v.grain)}**. Reads: {', '.join(f'`{t}`' for t in v.depends_on)}."
            + (" Contains personal data (masked for marketing)." if v.has_pii else ""),
            "",
            "| column | type | role | meaning | rolls up by | marketing sees |",
            "|---|---|---|---|---|---|",
        ]
        for c in v.columns:
            lines.append(
                f"| `{c.name}` | {c.type} | {c.role} | {_cell(c.description)} | {_cell(c.rollup or '')} | {_cell(_marketing_cell(c))} |"
            )
        if v.example:
            lines += ["", "```sql", v.example, "```"]
    lines += [
        "",
        "## Relationships",
        "",
        "Every value on the left exists on the right (verified on every build).",
        "",
        "| from | to | cardinality | meaning |",
        "|---|---|---|---|",
    ]
    for r in model.relationships:
        lines.append(
            f"| `{r.from_view}.{r.from_column}` | `{r.to_view}.{r.to_column}` | {r.cardinality.replace('_', '-')} | {_cell(r.description)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print (or write) the semantic model reference page.")
    parser.add_argument("--out", type=Path, help="write the page to this file instead of printing it")
    args = parser.parse_args(argv)
    page = render_reference()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
