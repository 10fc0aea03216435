"""What the cross-sell model sees: each customer's category profile, metrics and demographics
as of one moment, and the affinity statistics that link the categories they have to the ones
they lack.

Everything is computed as of a moment ``as_of`` from the published ``customers``, ``products``
and ``purchases`` tables, so the same code builds the training features (as of a cutoff in the
past) and the scoring features (as of the newest purchase): no train/serve skew. The heavy
lifting is two DuckDB aggregations; the rest is dense numpy over customers x categories. As of
the newest purchase, the published ``customer_metrics`` and ``customer_category_matrix`` already
hold those aggregates, and scoring reads them instead while they are current
(:func:`profiles_from_metrics`, :func:`metrics_unusable`): the same numbers, bit for bit.

Per customer (the same definitions as ``customer_metrics``, evaluated as of ``as_of``):

* **profile**: for every category, its share of the customer's spend and of their orders (the
  model codes them for at most 10 categories: :func:`cross_sell.scoring.design.share_categories`);
* **metrics**: orders, purchase frequency (orders per 30 days of the active window, at least
  30 days), total spend, average order value, recency and tenure in days, categories owned;
* **demographics**: age (in the as-of year), income, education, marital status, country.

Per (customer, candidate category b), from the ownership of all customers as of ``as_of``:

* ``popularity``: share of buying customers who have b;
* ``rule_confidence`` / ``rule_lift``: the strongest rule a -> b over the categories a the
  customer has (max confidence P(b | a), max lift);
* ``log_lift_sum``: sum over the customer's categories of log lift(a -> b), smoothed: a naive
  Bayes view of how much the whole profile points at b;
* ``weighted_confidence``: confidence of a -> b averaged with the customer's spend shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from cross_sell import audit_log
from cross_sell.ingest.formats import published_capabilities
from cross_sell.scoring.logic import distinct_profiles, strongest_rule

CANDIDATE = "category"
CUSTOMER_NUMERIC = (
    "log_orders", "purchase_frequency", "log_total_spend", "log_avg_order_value",
    "recency_days", "tenure_days", "categories_owned", "age", "log_income",
)
CUSTOMER_CATEGORICAL = ("education", "marital_status", "country")
PAIR_NUMERIC = ("popularity", "rule_confidence", "rule_lift", "log_lift_sum", "weighted_confidence")
HIDDEN_VIEW = "_cross_sell_hidden"
ORDER_LINES = "_cross_sell_order_lines"


def spend_share_column(category: str) -> str:
    return f"spend_share[{category}]"


def order_share_column(category: str) -> str:
    return f"order_share[{category}]"


@dataclass(frozen=True)
class Profiles:
    """Every customer's state as of ``as_of``; rows are customers sorted by id, columns categories sorted by name."""

    customer_ids: np.ndarray  # (n,) object
    categories: list[str]  # (k,)
    as_of: pd.Timestamp
    owned: np.ndarray  # (n, k) bool: bought the category on or before as_of
    spend_share: np.ndarray  # (n, k) float32
    order_share: np.ndarray  # (n, k) float32
    customer: pd.DataFrame  # (n rows) CUSTOMER_NUMERIC floats and CUSTOMER_CATEGORICAL categoricals
    active: np.ndarray  # (n,) bool: signed up or bought on or before as_of
    bought_after: np.ndarray  # (n, k) bool: bought the category after as_of

    @property
    def shape(self) -> tuple[int, int]:
        return self.owned.shape


@dataclass(frozen=True)
class RuleStatistics:
    """Category-level association statistics over customers (who has what), as of one moment."""

    popularity: np.ndarray  # (k,) P(b) among buying customers
    confidence: np.ndarray  # (k, k) P(b | a), 0 where a has no buyer
    lift: np.ndarray  # (k, k) confidence / P(b), 0 where undefined
    log_lift_smoothed: np.ndarray  # (k, k) log of the smoothed lift, 0 on the diagonal
    pair_support: np.ndarray  # (k, k) P(a and b)


@dataclass(frozen=True)
class PairFeatures:
    """The (customer, candidate category) features, one (n, k) float32 matrix per name in
    PAIR_NUMERIC: read them with :meth:`at` and :meth:`rows`.

    The features that depend only on which categories a customer owns are kept once per distinct
    set of owned categories only: ``by_profile[name]`` is (sets, k) and ``profile_of[i]`` is
    customer i's row in it, so scoring can work per set instead of per customer, and a million
    customers' copies are never made (customer i's row is ``by_profile[name][profile_of[i]]``).
    ``values`` holds the other features (all of them when there are no sets). ``cache`` holds
    what scoring derives from them."""

    values: dict[str, np.ndarray]
    by_profile: dict[str, np.ndarray] = field(default_factory=dict)
    profile_of: np.ndarray | None = None
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    def _per_set(self, name: str) -> bool:
        return self.profile_of is not None and name in self.by_profile

    def at(self, name: str, ci: np.ndarray, ki: np.ndarray) -> np.ndarray:
        """Feature ``name`` for the (customer index, category index) pairs ``ci``, ``ki``."""
        if self._per_set(name):
            return self.by_profile[name][self.profile_of[ci], ki]
        return self.values[name][ci, ki]

    def rows(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        """Feature ``name`` for the customers ``rows``: (customers, k)."""
        if self._per_set(name):
            return self.by_profile[name][self.profile_of[rows]]
        return self.values[name][rows]


_CUSTOMERS = """
    cust as (select customer_id, signup_date, birth_year, income, education, marital_status, country,
                    (row_number() over (order by customer_id) - 1)::integer as ci from customers)"""
_CATEGORIES = """
    cat as (select product_category, (row_number() over (order by product_category) - 1)::integer as ki
            from (select distinct product_category from products))"""
_CODES = _CUSTOMERS + "," + _CATEGORIES + """,
    lines as (
        select cust.ci, cat.ki, p.order_id, p.amount, p.purchase_date
        from purchases p join products pr using (product_id) join cust using (customer_id) join cat using (product_category)
        {exclude}
    )"""


def _with(exclude: bool) -> str:
    anti = f"anti join {HIDDEN_VIEW} h on h.ci = cust.ci and h.ki = cat.ki" if exclude else ""
    return "with " + _CODES.format(exclude=anti)


def _levels(column: str) -> str:
    """The distinct non-null values of a customer text column, numbered from 0 in SQL order."""
    return f"""(select {column} as value, (row_number() over (order by {column}) - 1)::integer as code
               from (select distinct {column} from customers where {column} is not null))"""


# Stray dates: the time split's span starts at the oldest purchase, unless the oldest
# STRAY_LINES_SHARE of the lines stretch it by more than STRAY_SPAN_SHARE of the whole span (a line
# typed as 1995 in two years of 2024 and 2025 orders). Lines dated more than STRAY_SPAN_SHARE of the
# rest of the history before that quantile are then stray, and the span starts at the oldest other.
STRAY_LINES_SHARE = 0.001
STRAY_SPAN_SHARE = 0.1


def history_span(conn: duckdb.DuckDBPyConnection) -> tuple[pd.Timestamp | None, pd.Timestamp | None, int]:
    """Where the purchase history starts for the time split, the newest purchase, and how many
    older lines the start leaves out as stray dates (0 when it is the oldest purchase; see
    :data:`STRAY_LINES_SHARE`). (None, None, 0) without purchases."""
    [(first, core, last)] = conn.execute(
        f"select min(purchase_date), quantile_disc(purchase_date, {STRAY_LINES_SHARE}), max(purchase_date) from purchases"
    ).fetchall()
    if first is None:
        return None, None, 0
    first, core, last = pd.Timestamp(first), pd.Timestamp(core), pd.Timestamp(last)
    if core - first <= (last - first) * STRAY_SPAN_SHARE:
        return first, last, 0
    threshold = core - (last - core) * STRAY_SPAN_SHARE
    [(start, stray)] = conn.execute(
        "select min(purchase_date) filter (where purchase_date >= $t), count(*) filter (where purchase_date < $t) from purchases",
        {"t": threshold.to_pydatetime()},
    ).fetchall()
    return pd.Timestamp(start), last, int(stray)


def purchase_span(conn: duckdb.DuckDBPyConnection) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """Oldest and newest purchase (None, None without purchases)."""
    [(first, last)] = conn.execute("select min(purchase_date), max(purchase_date) from purchases").fetchall()
    return (pd.Timestamp(first) if first is not None else None, pd.Timestamp(last) if last is not None else None)


def _categories(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in conn.execute("select distinct product_category from products order by 1").fetchall()]


def _customer_sql(ctes: str, columns: dict[str, str], join: str) -> str:
    """One row per customer, in customer id order: ``columns`` (orders, total_spend,
    purchase_frequency, recency_days, tenure_days, active, as SQL over ``join``) and the
    demographics, text columns as codes into their distinct values (see :func:`_levels`) rather
    than one Python string per customer that pandas then has to hash into categories."""
    return (
        "with "
        + _CUSTOMERS
        + "".join(f", {c}_levels as {_levels(c)}" for c in CUSTOMER_CATEGORICAL)
        + ctes
        + " select cust.customer_id, "
        + "".join(f"{sql} as {name}, " for name, sql in columns.items())
        + """(year($as_of) - cust.birth_year)::double as age,
               cust.income::double as income, """
        + ", ".join(f"coalesce({c}_levels.code, -1) as {c}" for c in CUSTOMER_CATEGORICAL)
        + f" from cust {join} "
        + " ".join(f"left join {c}_levels on {c}_levels.value = cust.{c}" for c in CUSTOMER_CATEGORICAL)
        + " order by cust.ci"
    )


def _level_values(conn: duckdb.DuckDBPyConnection) -> dict[str, list]:
    return {
        c: [r[0] for r in conn.execute(f"select value from {_levels(c)} order by code").fetchall()]
        for c in CUSTOMER_CATEGORICAL
    }


def load_profiles(
    conn: duckdb.DuckDBPyConnection,
    as_of: pd.Timestamp,
    hidden: tuple[np.ndarray, np.ndarray] | None = None,
) -> Profiles:
    """Every customer's profile, metrics and demographics from purchases on or before ``as_of``.

    ``hidden`` (customer index, category index) pairs are left out entirely, as if the customer
    had never bought that category: the cross-sectional fallback hides one category per customer
    and asks the model to find it."""
    categories = _categories(conn)
    if hidden is not None:
        conn.register(HIDDEN_VIEW, pd.DataFrame({"ci": hidden[0].astype(np.int32), "ki": hidden[1].astype(np.int32)}))
    try:
        params = {"as_of": as_of.to_pydatetime()}
        # One pass over the purchase lines up to as_of (joined to their customer and category
        # codes) down to one row per customer, category and order; both aggregations below read
        # that instead of the lines, and neither needs a distinct count. Lines after as_of only
        # matter as "bought later", a plain distinct (customer, category) below.
        conn.execute(
            f"create or replace temp table {ORDER_LINES} as "
            + _with(hidden is not None)
            + """
            select ci, ki, order_id, min(purchase_date) as first_at, sum(amount) as amount
            from lines where purchase_date <= $as_of group by ci, ki, order_id""",
            params,
        )
        pairs = conn.execute(
            f"""
            select ci, ki, count(*)::integer as orders, coalesce(sum(amount), 0)::double as spend
            from {ORDER_LINES} group by ci, ki""",
        ).fetchnumpy()
        # At the newest purchase (the scoring run) nothing was bought later: no need to code the
        # customers once more only to find that out.
        later = {"ci": np.zeros(0, dtype=np.int32), "ki": np.zeros(0, dtype=np.int32)}
        [(any_later,)] = conn.execute("select exists (select 1 from purchases where purchase_date > $as_of)", params).fetchall()
        if any_later:
            later = conn.execute(
                _with(hidden is not None) + " select distinct ci, ki from lines where purchase_date > $as_of", params
            ).fetchnumpy()
        customer = conn.execute(
            _customer_sql(
                f""",
                orders as (select ci, order_id, min(first_at) as ordered_at, sum(amount) as order_amount
                           from {ORDER_LINES} group by ci, order_id),
                per as (select ci, count(*) as orders, sum(order_amount) as total_spend,
                               min(ordered_at) as first_order, max(ordered_at) as last_order
                        from orders group by ci)""",
                {
                    "orders": "coalesce(per.orders, 0)::double",
                    "total_spend": "coalesce(per.total_spend, 0)::double",
                    "purchase_frequency": """case when per.orders > 0
                        then per.orders / (greatest(date_diff('day', per.first_order, per.last_order), 30) / 30.0)
                        else 0 end::double""",
                    "recency_days": "date_diff('day', per.last_order, $as_of)::double",
                    "tenure_days": """greatest(date_diff('day',
                        least(coalesce(cust.signup_date, per.first_order), coalesce(per.first_order, cust.signup_date)),
                        $as_of), 0)::double""",
                    "active": "(per.orders > 0 or cust.signup_date <= $as_of) is true",
                },
                "left join per using (ci)",
            ),
            params,
        ).fetchnumpy()
        levels = _level_values(conn)
    finally:
        conn.execute(f"drop table if exists {ORDER_LINES}")
        if hidden is not None:
            conn.unregister(HIDDEN_VIEW)
    return _assemble(as_of, categories, pairs, later, customer, levels)


# The published tables that hold the profile as of the newest purchase (see profiles_from_metrics).
METRICS_TABLES = ("customer_metrics", "customer_category_matrix")


def profiles_from_metrics(conn: duckdb.DuckDBPyConnection, newest: pd.Timestamp) -> Profiles:
    """The same profiles as ``load_profiles(conn, newest)``, ``newest`` being the newest purchase
    (see :func:`purchase_span`), read from the published
    ``customer_metrics`` (orders, spend, frequency, recency, tenure per customer) and
    ``customer_category_matrix`` (orders and spend per customer and category) instead of
    aggregating the purchase lines again: a few million rows instead of every line.

    They are the same numbers by definition (the metrics are computed as of the newest purchase,
    with the formulas of :func:`load_profiles`), but only while those tables are current and the
    inputs carry every fact: see :func:`metrics_unusable`, and use this only when it says so."""
    categories = _categories(conn)
    params = {"as_of": newest.to_pydatetime()}
    pairs = conn.execute(
        "with " + _CUSTOMERS + "," + _CATEGORIES
        + """
        select cust.ci, cat.ki, m.orders::integer as orders, coalesce(m.spend, 0)::double as spend
        from customer_category_matrix m join cust using (customer_id) join cat using (product_category)"""
    ).fetchnumpy()
    customer = conn.execute(
        _customer_sql(
            "",
            {
                "orders": "coalesce(m.orders, 0)::double",
                "total_spend": "coalesce(m.total_spend, 0)::double",
                "purchase_frequency": "coalesce(m.purchase_frequency, 0)::double",
                "recency_days": "m.recency_days::double",
                "tenure_days": "m.tenure_days::double",
                "active": "(m.orders > 0 or cust.signup_date <= $as_of) is true",
            },
            "left join customer_metrics m using (customer_id)",
        ),
        params,
    ).fetchnumpy()
    nothing_later = {"ci": np.zeros(0, dtype=np.int32), "ki": np.zeros(0, dtype=np.int32)}
    return _assemble(newest, categories, pairs, nothing_later, customer, _level_values(conn))


def metrics_unusable(conn: duckdb.DuckDBPyConnection) -> str | None:
    """Why :func:`profiles_from_metrics` cannot stand in for the purchase lines right now, or None
    when it can: both tables must have been rebuilt from the latest publish of the inputs (as
    recorded by :mod:`cross_sell.audit_log`), and the inputs must carry every fact the metrics
    need (a basket log has no prices, so its metrics are null where the profile has zeros)."""
    input_format, caps = published_capabilities(conn)
    if caps.missing():
        return f"the {input_format} inputs lack {', '.join(caps.missing())}"
    publish = audit_log.current_publish(conn)
    if publish is None:
        return "no publish of the inputs is recorded"
    stale = [t for t in METRICS_TABLES if audit_log.derived_from(conn, t) != publish]
    if stale:
        return f"{' and '.join(stale)} {'was' if len(stale) == 1 else 'were'} not rebuilt since the inputs were last published"
    return None


def _assemble(
    as_of: pd.Timestamp, categories: list[str], pairs: dict, later: dict, customer: dict, levels: dict[str, list]
) -> Profiles:
    """The profile arrays from the fetched columns: ``pairs`` (ci, ki, orders, spend per category
    bought), ``later`` (ci, ki bought after as_of) and ``customer`` (one row per customer)."""
    ids = customer["customer_id"]
    n, k = len(ids), len(categories)
    ci = np.asarray(pairs["ci"], dtype=np.int64)
    # Flat (customer, category) positions: scattering through one index is several times faster
    # than through two.
    cell = ci * k + np.asarray(pairs["ki"], dtype=np.int64)
    orders = np.asarray(pairs["orders"], dtype=np.float64)
    spend = np.asarray(pairs["spend"], dtype=np.float64)
    total_orders = _numbers(customer["orders"])
    total_spend = _numbers(customer["total_spend"])

    owned = np.zeros(n * k, dtype=bool)
    owned[cell] = True  # every row is a category bought in at least one order up to as_of
    bought_after = np.zeros(n * k, dtype=bool)
    bought_after[np.asarray(later["ci"], dtype=np.int64) * k + np.asarray(later["ki"], dtype=np.int64)] = True
    # The shares are divided per pair and scattered; the spend they divide by is still summed over
    # the customer's dense row, the same float64 additions in the same order as the shares always had.
    spend_by_cat = np.zeros(n * k, dtype=np.float64)
    spend_by_cat[cell] = spend
    row_spend = spend_by_cat.reshape(n, k).sum(axis=1)[ci]
    del spend_by_cat
    pair_orders = total_orders[ci]
    spend_share = np.zeros(n * k, dtype=np.float32)
    order_share = np.zeros(n * k, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        spend_share[cell] = np.where(row_spend > 0, spend / row_spend, 0.0)
        order_share[cell] = np.where(pair_orders > 0, orders / pair_orders, 0.0)

    frame = pd.DataFrame(
        {
            "log_orders": np.log1p(total_orders),
            "purchase_frequency": _numbers(customer["purchase_frequency"]),
            "log_total_spend": np.log1p(total_spend),
            "log_avg_order_value": np.log1p(
                np.divide(total_spend, total_orders, out=np.zeros(n), where=total_orders > 0)
            ),
            "recency_days": _numbers(customer["recency_days"]),
            "tenure_days": _numbers(customer["tenure_days"]),
            "categories_owned": np.bincount(ci, minlength=n).astype(np.float64),
            "age": _numbers(customer["age"]),
            "log_income": np.log1p(_numbers(customer["income"])),
        }
    )
    frame = frame.astype(np.float32)  # model inputs are float32: half the memory traffic when scoring
    # A feature unknown for every customer (no incomes or birth years in a basket log) carries no
    # information; as a constant it is ignored by the trees, while an all-missing column breaks
    # their binning.
    frame.loc[:, frame.columns[frame.isna().all().to_numpy()]] = 0.0
    for column in CUSTOMER_CATEGORICAL:
        frame[column] = _categorical(np.asarray(customer[column], dtype=np.int64), levels[column])
    return Profiles(
        customer_ids=np.asarray(ids, dtype=object),
        categories=categories,
        as_of=as_of,
        owned=owned.reshape(n, k),
        spend_share=spend_share.reshape(n, k),
        order_share=order_share.reshape(n, k),
        customer=frame,
        active=np.asarray(customer["active"], dtype=bool),
        bought_after=bought_after.reshape(n, k),
    )


def _numbers(column: np.ndarray) -> np.ndarray:
    """A fetched numeric column as float64, NULL as NaN."""
    if isinstance(column, np.ma.MaskedArray):
        return column.astype(np.float64).filled(np.nan)
    return np.asarray(column, dtype=np.float64)


def _categorical(codes: np.ndarray, values: list) -> pd.Categorical:
    """``codes`` into ``values`` (numbered in SQL order, -1 for NULL) as the categorical
    ``astype("category")`` makes of the values themselves: categories in Python sort order."""
    values = np.array(values, dtype=object)
    order = np.argsort(values, kind="stable")
    renumber = np.empty(len(values) + 1, dtype=np.int64)
    renumber[order] = np.arange(len(values))
    renumber[-1] = -1  # NULL stays missing
    return pd.Categorical.from_codes(renumber[codes], categories=pd.Index(values[order], dtype=object))


def rule_statistics(owned: np.ndarray) -> RuleStatistics:
    """Popularity, confidence and lift of every category pair, over customers (one matrix product)."""
    n, k = owned.shape
    x = owned.astype(np.float32)
    counts = (x.T @ x).astype(np.float64)
    has = np.diag(counts).copy()
    buyers = max(int(owned.any(axis=1).sum()), 1)
    popularity = has / buyers
    with np.errstate(divide="ignore", invalid="ignore"):
        confidence = np.where(has[:, None] > 0, counts / has[:, None], 0.0)
        lift = np.where(popularity[None, :] > 0, confidence / popularity[None, :], 0.0)
        # Smoothed towards independence with one pseudo-customer: rare antecedents stay near lift 1.
        floor = 1.0 / (buyers + 1)
        smoothed = (counts + np.maximum(popularity, floor)[None, :]) / (has[:, None] + 1.0)
        log_lift = np.log(smoothed / np.maximum(popularity, floor)[None, :])
    np.fill_diagonal(confidence, 0.0)
    np.fill_diagonal(lift, 0.0)
    np.fill_diagonal(log_lift, 0.0)
    return RuleStatistics(
        popularity=popularity, confidence=confidence, lift=lift, log_lift_smoothed=log_lift, pair_support=counts / buyers
    )


def pair_features(profiles: Profiles, rules: RuleStatistics) -> PairFeatures:
    """The (customer, candidate category) features, as dense (n, k) float32 matrices."""
    n, k = profiles.shape
    distinct = distinct_profiles(profiles.owned)
    sets, profile_of = distinct if distinct is not None else (profiles.owned, None)
    by_profile = {
        "rule_confidence": strongest_rule(sets, rules.confidence)[0],
        "rule_lift": strongest_rule(sets, rules.lift)[0],
        "log_lift_sum": sets.astype(np.float32) @ rules.log_lift_smoothed.astype(np.float32),
    }
    values = {
        "popularity": np.broadcast_to(rules.popularity.astype(np.float32)[None, :], (n, k)),
        "weighted_confidence": profiles.spend_share @ rules.confidence.astype(np.float32),
    }
    if profile_of is None:
        return PairFeatures(values={**values, **by_profile})
    return PairFeatures(values=values, by_profile=by_profile, profile_of=profile_of)


def feature_names(categories: list[str]) -> list[str]:
    """Input columns of the model for a training category list, in order."""
    return [
        CANDIDATE, *PAIR_NUMERIC, *CUSTOMER_NUMERIC, *CUSTOMER_CATEGORICAL,
        *(spend_share_column(c) for c in categories), *(order_share_column(c) for c in categories),
    ]


def data_fingerprint(conn: duckdb.DuckDBPyConnection) -> str:
    """An order-independent fingerprint of everything the model reads (row counts and hash sums)."""
    [parts] = conn.execute(
        """select
             (select count(*) || ':' || coalesce(sum(hash(customer_id, order_id, product_id, purchase_date, quantity, amount)::hugeint), 0)
              from purchases),
             (select count(*) || ':' || coalesce(sum(hash(product_id, product_category)::hugeint), 0) from products),
             (select count(*) || ':' || coalesce(sum(hash(customer_id, signup_date, birth_year, income, education,
                                                          marital_status, country)::hugeint), 0) from customers)"""
    ).fetchall()
    return "|".join(str(p) for p in parts)
