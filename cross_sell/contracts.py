"""The data contract: one pandera model per dataset, inputs and outputs.

Each model is the single source of truth for two things: the runtime quality gate (validated
lazily by :mod:`cross_sell.quality`) and the column schema the Dagster UI shows for the asset
(:func:`table_schema`). Input models coerce from text, because new files land as text in the
audit schema (see :mod:`cross_sell.ingest.landing`) and typing is part of what the gate checks.

Extra, unknown columns in an input are allowed (``strict = False``): they stay in the audit table
for inspection, are listed in the landing metadata, and are not published.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

import dagster as dg
import pandas as pd
import pandera.pandas as pa
from pandera.engines import pandas_engine
from pandera.typing import Series

CHANNELS = ("web", "store", "catalog", "other")
NON_BLANK = r"^\s*\S"
SURROUNDING_SPACE = r"^[ \t\n\r\f\v]|[ \t\n\r\f\v]$"  # ASCII whitespace: the same in Python and DuckDB
_ASCII_SPACE_CODES = "(9, 10, 11, 12, 13, 32)"  # the same characters, as codes: tab to carriage return, and space

# Strict ISO 8601 parsing: a guessing parser silently swaps day and month in dd-mm-yyyy data.
_ISO = {"to_datetime_kwargs": {"format": "ISO8601"}}
# A little slack for clocks and time zones before a timestamp counts as "in the future".
FUTURE_TOLERANCE = timedelta(days=1)


def _now_naive_utc() -> pd.Timestamp:
    return pd.Timestamp(datetime.now(timezone.utc).replace(tzinfo=None))


def _finite(values: pd.Series) -> pd.Series:
    """True where a number is finite or missing (a missing value is the nullability rule's): NaN
    read from a file, infinity and minus infinity fail. In SQL, where NaN is not null, see
    :data:`SQL_CHECKS`."""
    return values.isna() | values.abs().lt(float("inf"))


def _no_surrounding_space(values: Series[str]) -> Series[bool]:
    return values.isna() | ~values.str.contains(SURROUNDING_SPACE, regex=True)


class Customer(pa.DataFrameModel):
    """One row per customer."""

    customer_id: Series[str] = pa.Field(
        unique=True, str_matches=NON_BLANK, description="Business key of the customer; unique, never null or blank."
    )
    first_name: Series[str] = pa.Field(required=False, nullable=True, description="Given name (PII).", metadata={"pii": True})
    last_name: Series[str] = pa.Field(required=False, nullable=True, description="Family name (PII).", metadata={"pii": True})
    email: Series[str] = pa.Field(required=False, nullable=True, description="E-mail address (PII).", metadata={"pii": True})
    phone: Series[str] = pa.Field(required=False, nullable=True, description="Phone number (PII).", metadata={"pii": True})
    birth_year: Series[pd.Int64Dtype] = pa.Field(
        required=False, nullable=True, ge=1900, description="Year of birth, 1900 to this year.", metadata={"pii": True}
    )
    education: Series[str] = pa.Field(required=False, nullable=True, description="Highest education level, free text.")
    marital_status: Series[str] = pa.Field(required=False, nullable=True, description="Marital status, free text.")
    income: Series[float] = pa.Field(
        required=False, nullable=True, ge=0, metadata={"pii": True},
        description="Yearly household income in the shop currency; >= 0 when known (PII).",
    )
    country: Series[str] = pa.Field(required=False, nullable=True, description="Country of residence (ISO-3166 alpha-2).")
    signup_date: Series[pandas_engine.DateTime] = pa.Field(
        required=False, nullable=True, dtype_kwargs=_ISO, description="When the customer enrolled (ISO 8601)."
    )

    @pa.check("customer_id", name="no_surrounding_spaces")
    def customer_id_no_surrounding_spaces(cls, customer_id: Series[str]) -> Series[bool]:
        # "C1 " never joins the purchases of "C1", and would be published as a customer who never bought.
        return _no_surrounding_space(customer_id)

    @pa.check("income", name="finite")
    def income_finite(cls, income: Series[float]) -> Series[bool]:
        return _finite(income)

    @pa.check("birth_year", name="not_after_this_year")
    def birth_year_not_after_this_year(cls, birth_year: Series[pd.Int64Dtype]) -> Series[bool]:
        return birth_year.isna() | (birth_year <= datetime.now(timezone.utc).year)

    class Config:
        coerce = True
        strict = False
        name = "customer"


class Product(pa.DataFrameModel):
    """One row per product."""

    product_id: Series[str] = pa.Field(
        unique=True, str_matches=NON_BLANK, description="Business key of the product; unique, never null or blank."
    )
    product_name: Series[str] = pa.Field(str_matches=NON_BLANK, description="Display name of the product.")
    product_category: Series[str] = pa.Field(
        str_matches=NON_BLANK, description="Category the product belongs to; the unit of cross-selling."
    )
    price: Series[float] = pa.Field(required=False, nullable=True, ge=0, description="List price per unit; >= 0 when known.")

    @pa.check("price", name="finite")
    def price_finite(cls, price: Series[float]) -> Series[bool]:
        return _finite(price)

    @pa.check("product_category", "product_id", name="no_surrounding_spaces")
    def no_surrounding_spaces(cls, values: Series[str]) -> Series[bool]:
        # "Wines " beside "Wines" would silently be a second category, with its own affinity and
        # scores; "P1 " never joins the purchases of "P1": a key with spaces is a key nobody can match.
        return _no_surrounding_space(values)

    class Config:
        coerce = True
        strict = False
        name = "product"


class Purchase(pa.DataFrameModel):
    """One row per order line."""

    purchase_id: Series[str] = pa.Field(
        unique=True, str_matches=NON_BLANK, description="Business key of the order line; unique."
    )
    order_id: Series[str] = pa.Field(str_matches=NON_BLANK, description="Order (basket) the line belongs to.")
    customer_id: Series[str] = pa.Field(
        str_matches=NON_BLANK, description="Buying customer; must exist in the customer dataset."
    )
    product_id: Series[str] = pa.Field(
        str_matches=NON_BLANK, description="Product bought; must exist in the product dataset."
    )
    purchase_date: Series[pandas_engine.DateTime] = pa.Field(
        dtype_kwargs=_ISO, description="When the order was placed (ISO 8601); never in the future."
    )
    quantity: Series[int] = pa.Field(gt=0, description="Units bought; > 0.")
    amount: Series[float] = pa.Field(ge=0, description="Line total in the shop currency; numeric and >= 0.")
    channel: Series[str] = pa.Field(
        required=False, nullable=True, isin=list(CHANNELS), description="Sales channel: web, store, catalog or other."
    )

    @pa.check("purchase_id", "order_id", name="no_surrounding_spaces")
    def no_surrounding_spaces(cls, values: Series[str]) -> Series[bool]:
        # "L1 " re-sent beside "L1" would be a second line, counted twice, instead of replacing it;
        # "O1 " beside "O1" would split one basket in two: more orders, smaller baskets.
        return _no_surrounding_space(values)

    @pa.check("amount", name="finite")
    def amount_finite(cls, amount: Series[float]) -> Series[bool]:
        return _finite(amount)

    @pa.check("purchase_date", name="not_in_future")
    def purchase_date_not_in_future(cls, purchase_date: Series[pd.Timestamp]) -> Series[bool]:
        return purchase_date <= _now_naive_utc() + FUTURE_TOLERANCE

    class Config:
        coerce = True
        strict = False
        name = "purchase"


def purchase_contract(unknown: Sequence[str] = ()) -> pa.DataFrameSchema:
    """The purchase contract for inputs whose format cannot fill the ``unknown`` columns (e.g.
    ``amount`` for a basket log without prices): those may be null; every other rule holds."""
    schema = Purchase.to_schema()
    return schema.update_columns({c: {"nullable": True} for c in unknown}) if unknown else schema


# The custom checks above in SQL, for the in-warehouse gate engine (cross_sell.quality_sql):
# each maps the typed column expression to a predicate that is true for passing values.
SQL_CHECKS: dict[str, Callable[[str], str]] = {
    "not_in_future": lambda column: (
        f"{column} <= timestamp '{(_now_naive_utc() + FUTURE_TOLERANCE).isoformat(sep=' ')}'"
    ),
    "not_after_this_year": lambda column: f"{column} <= {datetime.now(timezone.utc).year}",
    # The first and last characters' codes, not a regular expression: the same rule, about twice
    # as fast on the 10 M purchase ids.
    "no_surrounding_spaces": lambda column: (
        f"not (ascii({column}) in {_ASCII_SPACE_CODES} or ascii(right({column}, 1)) in {_ASCII_SPACE_CODES})"
    ),
    "finite": lambda column: f"isfinite({column})",  # NaN, which DuckDB does not count as null, fails too
}


# ---------------------------------------------------------------------------------------------
# Outputs. These are validated on the computed frame before it is published.


class CustomerMetrics(pa.DataFrameModel):
    """One row per customer: the frequency, spend and value metrics of the data product."""

    customer_id: Series[str] = pa.Field(unique=True, description="Business key of the customer.")
    orders: Series[pd.Int64Dtype] = pa.Field(
        ge=0, nullable=True, coerce=True, description="Distinct orders placed, all time (null when the inputs have no orders)."
    )
    purchase_frequency: Series[float] = pa.Field(
        ge=0, nullable=True,
        description="Distinct orders per 30 days of the customer's active window (first to last purchase, at least 30 days); "
        "null when the inputs have no orders or no purchase dates.",
    )
    total_spend: Series[float] = pa.Field(
        ge=0, nullable=True, description="Sum of line amounts, all time (null when the inputs have no prices)."
    )
    avg_order_value: Series[float] = pa.Field(
        ge=0, nullable=True, description="total_spend / orders (0 without orders; null when either is unavailable)."
    )
    recency_days: Series[float] = pa.Field(
        nullable=True, ge=0,
        description="Days from the last purchase to the data's as-of date (null without orders or purchase dates).",
    )
    tenure_days: Series[float] = pa.Field(
        nullable=True, ge=0, description="Days from signup (or first purchase, if earlier) to the as-of date."
    )
    clv: Series[float] = pa.Field(
        ge=0, nullable=True,
        description="Predicted lifetime value: avg_order_value x orders per year x horizon years x exp(-recency_days/365); "
        "null when the inputs have no prices, orders or purchase dates.",
    )

    @pa.check("purchase_frequency", "total_spend", "avg_order_value", "recency_days", "tenure_days", "clv", name="finite")
    def metrics_finite(cls, values: Series[float]) -> Series[bool]:
        return _finite(values)

    class Config:
        name = "customer_metrics"


class CustomerCategory(pa.DataFrameModel):
    """One row per customer and category the customer has bought."""

    customer_id: Series[str] = pa.Field(description="Business key of the customer.")
    product_category: Series[str] = pa.Field(description="A category the customer has bought.")
    orders: Series[pd.Int64Dtype] = pa.Field(
        gt=0, nullable=True, coerce=True, description="Distinct orders containing the category (null when the inputs have no orders)."
    )
    quantity: Series[pd.Int64Dtype] = pa.Field(
        gt=0, nullable=True, coerce=True, description="Units bought in the category (null when the inputs have no quantities)."
    )
    spend: Series[float] = pa.Field(
        ge=0, nullable=True, description="Amount spent in the category (null when the inputs have no prices)."
    )
    first_purchase: Series[pd.Timestamp] = pa.Field(
        nullable=True, description="First purchase in the category (null when lines carry no purchase dates)."
    )
    last_purchase: Series[pd.Timestamp] = pa.Field(
        nullable=True, description="Latest purchase in the category (null when lines carry no purchase dates)."
    )

    @pa.check("spend", name="finite")
    def spend_finite(cls, spend: Series[float]) -> Series[bool]:
        return _finite(spend)

    class Config:
        name = "customer_category_matrix"
        unique = ["customer_id", "product_category"]


class ProductAffinity(pa.DataFrameModel):
    """Association rules A -> B over customers (or orders), both directions of every pair."""

    level: Series[str] = pa.Field(isin=["category", "product"], description="'category' or 'product'.")
    antecedent: Series[str] = pa.Field(description="A: what the customer already has.")
    consequent: Series[str] = pa.Field(description="B: what the rule suggests.")
    pair_count: Series[int] = pa.Field(gt=0, description="Transactions (customers by default) holding both A and B.")
    antecedent_count: Series[int] = pa.Field(gt=0, description="Transactions holding A.")
    consequent_count: Series[int] = pa.Field(gt=0, description="Transactions holding B.")
    transactions: Series[int] = pa.Field(gt=0, description="Transactions in the base (customers with a purchase).")
    support: Series[float] = pa.Field(ge=0, le=1, description="P(A and B) = pair_count / transactions.")
    confidence: Series[float] = pa.Field(ge=0, le=1, description="P(B | A) = pair_count / antecedent_count.")
    lift: Series[float] = pa.Field(ge=0, description="confidence / P(B); > 1 means A raises the odds of B.")

    @pa.check("lift", name="finite")
    def lift_finite(cls, lift: Series[float]) -> Series[bool]:
        return _finite(lift)

    @pa.dataframe_check(name="symmetric_pair_counts")
    def symmetric_pair_counts(cls, df: pd.DataFrame) -> Series[bool]:
        """Every A -> B has a B -> A with the same pair count."""
        mirror = df.merge(
            df[["level", "antecedent", "consequent", "pair_count"]],
            left_on=["level", "consequent", "antecedent"],
            right_on=["level", "antecedent", "consequent"],
            how="left",
            suffixes=("", "_mirror"),
        )
        return pd.Series((mirror["pair_count_mirror"] == mirror["pair_count"]).to_numpy(), index=df.index)

    class Config:
        name = "product_affinity"
        unique = ["level", "antecedent", "consequent"]


class CrossSellScore(pa.DataFrameModel):
    """One row per customer and category the customer has not bought yet."""

    customer_id: Series[str] = pa.Field(description="Business key of the customer.")
    product_category: Series[str] = pa.Field(description="A category the customer has not bought yet.")
    score: Series[float] = pa.Field(
        ge=0, le=1, description="Calibrated probability (0..1) that the customer first buys the category within the model's label window."
    )

    class Config:
        name = "cross_sell_scores"
        unique = ["customer_id", "product_category"]


class CrossSellRecommendation(pa.DataFrameModel):
    """The top-N categories to offer each customer, best first."""

    customer_id: Series[str] = pa.Field(description="Business key of the customer.")
    rank: Series[int] = pa.Field(ge=1, description="1 = best opportunity.")
    product_category: Series[str] = pa.Field(description="Recommended category (never one already bought).")
    score: Series[float] = pa.Field(ge=0, le=1, description="Cross-sell opportunity score, 0..1.")
    reason: Series[str] = pa.Field(
        description="Why: the strongest affinity rule behind it (or the category's popularity), then the model's view."
    )

    class Config:
        name = "cross_sell_recommendations"
        unique = ["customer_id", "rank"]


# ---------------------------------------------------------------------------------------------

_DAGSTER_TYPES = {
    "str": "string",
    "object": "string",
    "int64": "bigint",
    "Int64": "bigint",
    "float64": "double",
    "bool": "boolean",
    "datetime64[ns]": "timestamp",
}


def column_names(model: type[pa.DataFrameModel]) -> list[str]:
    """Contract columns in declared order."""
    return list(model.to_schema().columns)


def required_column_names(model: type[pa.DataFrameModel]) -> list[str]:
    """Contract columns every input must have, in declared order."""
    return [name for name, column in model.to_schema().columns.items() if column.required]


def table_schema(model: type[pa.DataFrameModel]) -> dg.TableSchema:
    """The Dagster column schema (``dagster/column_schema``) derived from a pandera model."""
    schema = model.to_schema()
    columns = []
    for name, column in schema.columns.items():
        dtype = str(column.dtype)
        tags = {"pii": "true"} if (column.metadata or {}).get("pii") else {}
        columns.append(
            dg.TableColumn(
                name=name,
                type=_DAGSTER_TYPES.get(dtype, dtype),
                description=column.description,
                constraints=dg.TableColumnConstraints(nullable=column.nullable, unique=column.unique),
                tags=tags,
            )
        )
    return dg.TableSchema(columns=columns)


def pii_columns(model: type[pa.DataFrameModel]) -> list[str]:
    """Columns the contract marks as personal data."""
    return [n for n, c in model.to_schema().columns.items() if (c.metadata or {}).get("pii")]
