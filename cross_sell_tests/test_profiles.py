"""load_profiles is exactly the straightforward computation it replaced: every array, dtype,
customer column and categorical category the same, on a real warehouse built by the ingest
under tmp_path, at an as_of in the middle of the data, with and without hidden categories.
And the profiles read from the published metrics tables are exactly those of the lines, and are
used only while those tables are current."""

from __future__ import annotations

from pathlib import Path

import shutil

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from cross_sell.definitions import ASSETS, CHECKS
from cross_sell import audit_log
from cross_sell.ingest.formats import FORMAT_TABLE, publish_format_sql
from cross_sell.ingest.publication import published_rows
from cross_sell.metrics.logic import customer_category_sql, customer_metrics_sql
from cross_sell.scoring.features import (
    CUSTOMER_CATEGORICAL,
    METRICS_TABLES,
    Profiles,
    load_profiles,
    metrics_unusable,
    profiles_from_metrics,
    purchase_span,
)
from cross_sell_tests.conftest import PROJECT_ROOT, make_resources

SAMPLE = PROJECT_ROOT / "data" / "sample"


def reference_profiles(
    conn: duckdb.DuckDBPyConnection, as_of: pd.Timestamp, hidden: tuple[np.ndarray, np.ndarray] | None = None
) -> Profiles:
    """The previous load_profiles: filtered aggregates over every (customer, category, order),
    the customer frame through pandas, dense float64 matrices."""
    categories = [r[0] for r in conn.execute("select distinct product_category from products order by 1").fetchall()]
    if hidden is not None:
        conn.register("_ref_hidden", pd.DataFrame({"ci": hidden[0].astype(np.int32), "ki": hidden[1].astype(np.int32)}))
    anti = "anti join _ref_hidden h on h.ci = cust.ci and h.ki = cat.ki" if hidden is not None else ""
    customers = """
        cust as (select customer_id, signup_date, birth_year, income, education, marital_status, country,
                        (row_number() over (order by customer_id) - 1)::integer as ci from customers)"""
    params = {"as_of": as_of.to_pydatetime()}
    conn.execute(
        "create or replace temp table _ref_order_lines as with " + customers + f""",
        cat as (select product_category, (row_number() over (order by product_category) - 1)::integer as ki
                from (select distinct product_category from products)),
        lines as (select cust.ci, cat.ki, p.order_id, p.amount, p.purchase_date
                  from purchases p join products pr using (product_id) join cust using (customer_id)
                  join cat using (product_category) {anti})
        select ci, ki, order_id,
               bool_or(purchase_date <= $as_of) as before,
               min(purchase_date) filter (where purchase_date <= $as_of) as first_at,
               sum(amount) filter (where purchase_date <= $as_of) as amount_before,
               bool_or(purchase_date > $as_of) as after
        from lines group by ci, ki, order_id""",
        params,
    )
    pairs = conn.execute(
        """select ci, ki, count(*) filter (where before)::integer as orders,
                  coalesce(sum(amount_before), 0)::double as spend, bool_or(after) as after
           from _ref_order_lines group by ci, ki"""
    ).fetchnumpy()
    customer = conn.execute(
        "with " + customers + """,
        orders as (select ci, order_id, min(first_at) as ordered_at, sum(amount_before) as order_amount
                   from _ref_order_lines where before group by ci, order_id),
        per as (select ci, count(*) as orders, sum(order_amount) as total_spend,
                       min(ordered_at) as first_order, max(ordered_at) as last_order from orders group by ci)
        select cust.customer_id,
               coalesce(per.orders, 0)::double as orders,
               coalesce(per.total_spend, 0)::double as total_spend,
               case when per.orders > 0
                    then per.orders / (greatest(date_diff('day', per.first_order, per.last_order), 30) / 30.0)
                    else 0 end::double as purchase_frequency,
               date_diff('day', per.last_order, $as_of)::double as recency_days,
               greatest(date_diff('day',
                    least(coalesce(cust.signup_date, per.first_order), coalesce(per.first_order, cust.signup_date)),
                    $as_of), 0)::double as tenure_days,
               (per.orders > 0 or cust.signup_date <= $as_of) is true as active,
               (year($as_of) - cust.birth_year)::double as age,
               cust.income::double as income,
               cust.education, cust.marital_status, cust.country
        from cust left join per using (ci) order by cust.ci""",
        params,
    ).df()
    conn.execute("drop table _ref_order_lines")
    if hidden is not None:
        conn.unregister("_ref_hidden")

    n, k = len(customer), len(categories)
    ci, ki = pairs["ci"].astype(np.int64), pairs["ki"].astype(np.int64)
    owned = np.zeros((n, k), dtype=bool)
    owned[ci, ki] = pairs["orders"] > 0
    bought_after = np.zeros((n, k), dtype=bool)
    bought_after[ci, ki] = pairs["after"]
    spend_by_cat = np.zeros((n, k))
    spend_by_cat[ci, ki] = pairs["spend"]
    orders_by_cat = np.zeros((n, k))
    orders_by_cat[ci, ki] = pairs["orders"]
    total_spend = spend_by_cat.sum(axis=1, keepdims=True)
    total_orders = customer["orders"].to_numpy()[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        spend_share = np.where(total_spend > 0, spend_by_cat / total_spend, 0.0).astype(np.float32)
        order_share = np.where(total_orders > 0, orders_by_cat / total_orders, 0.0).astype(np.float32)
    orders, spend = customer["orders"].to_numpy(), customer["total_spend"].to_numpy()
    frame = pd.DataFrame(
        {
            "log_orders": np.log1p(orders),
            "purchase_frequency": customer["purchase_frequency"].to_numpy(),
            "log_total_spend": np.log1p(spend),
            "log_avg_order_value": np.log1p(np.divide(spend, orders, out=np.zeros(n), where=orders > 0)),
            "recency_days": customer["recency_days"].to_numpy(dtype=np.float64, na_value=np.nan),
            "tenure_days": customer["tenure_days"].to_numpy(dtype=np.float64, na_value=np.nan),
            "categories_owned": owned.sum(axis=1).astype(np.float64),
            "age": customer["age"].to_numpy(dtype=np.float64, na_value=np.nan),
            "log_income": np.log1p(customer["income"].to_numpy(dtype=np.float64, na_value=np.nan)),
        }
    ).astype(np.float32)
    frame.loc[:, frame.columns[frame.isna().all().to_numpy()]] = 0.0
    for column in CUSTOMER_CATEGORICAL:
        frame[column] = customer[column].astype("category")
    return Profiles(
        customer_ids=customer["customer_id"].to_numpy(dtype=object),
        categories=categories,
        as_of=as_of,
        owned=owned,
        spend_share=spend_share,
        order_share=order_share,
        customer=frame,
        active=customer["active"].to_numpy(dtype=bool),
        bought_after=bought_after,
    )


def assert_same_profiles(got: Profiles, expected: Profiles) -> None:
    assert got.categories == expected.categories and got.as_of == expected.as_of
    for name in ("customer_ids", "owned", "spend_share", "order_share", "active", "bought_after"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), name
    assert got.customer.columns.tolist() == expected.customer.columns.tolist()
    assert got.customer.dtypes.tolist() == expected.customer.dtypes.tolist()
    pd.testing.assert_frame_equal(got.customer, expected.customer, check_exact=True)
    for column in CUSTOMER_CATEGORICAL:
        a, b = got.customer[column].cat, expected.customer[column].cat
        assert a.categories.equals(b.categories) and a.categories.dtype == b.categories.dtype
        assert np.array_equal(a.codes, b.codes)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed sample through the ingest, then the awkward cases the sample lacks: orders
    whose lines straddle the as_of, missing amounts and demographics, text values whose order
    depends on case and accents, customers who never bought (one signed up later)."""
    path = tmp_path_factory.mktemp("profiles") / "warehouse" / "cross_sell.duckdb"
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=dg.AssetSelection.assets("customers", "products", "purchases").upstream(),
        resources=make_resources(SAMPLE, path),
        raise_on_error=False,
    )
    assert result.success
    with duckdb.connect(str(path)) as conn:
        first, last = purchase_span(conn)
        middle = first + (last - first) * 0.5
        # The published inputs are views: the edits go to the tables that hold their rows.
        purchases, customers = published_rows(conn, "purchases"), published_rows(conn, "customers")
        # Every 7th order gets a second, later date on some of its lines: the order counts before
        # and after the as_of, its date is its first line's.
        conn.execute(
            f"""update {purchases} set purchase_date = purchase_date + interval 40 day
               where hash(order_id) % 7 = 0 and hash(purchase_id) % 2 = 0"""
        )
        conn.execute(f"update {purchases} set amount = null where hash(purchase_id) % 23 = 0")
        conn.execute(
            f"""update {customers} set education = case hash(customer_id) % 5 when 0 then null when 1 then 'basic'
                                                                          when 2 then 'Ärzte' else education end,
                                    marital_status = case when hash(customer_id) % 11 = 0 then null else marital_status end,
                                    country = case when hash(customer_id) % 13 = 0 then null else country end,
                                    birth_year = case when hash(customer_id) % 17 = 0 then null else birth_year end,
                                    signup_date = case when hash(customer_id) % 19 = 0 then null else signup_date end"""
        )
        conn.execute(
            f"""insert into {customers} (customer_id, education, signup_date)
               values ('C-never', 'Zen', $early), ('C-later', null, $late), ('0-first', 'basic', null)""",
            {"early": first.to_pydatetime(), "late": (last + pd.Timedelta(days=3)).to_pydatetime()},
        )
        assert conn.execute("select count(*) from purchases where purchase_date > $m", {"m": middle.to_pydatetime()}).fetchone()[0] > 0
    return path


@pytest.mark.parametrize("moment", ["middle", "last"])
def test_profiles_are_the_reference_computation(warehouse: Path, moment: str) -> None:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        first, last = purchase_span(conn)
        as_of = first + (last - first) * 0.5 if moment == "middle" else last
        got = load_profiles(conn, as_of)
        expected = reference_profiles(conn, as_of)
    assert_same_profiles(got, expected)
    # The case is not trivial: some orders straddle the as_of, some customers lack every text.
    assert got.bought_after.any() == (moment == "middle") and (got.owned & got.bought_after).any() == (moment == "middle")
    assert (got.customer.education.isna()).any() and "Ärzte" in got.customer.education.cat.categories
    assert not got.active.all() and got.owned.any()


def test_profiles_with_hidden_categories_are_the_reference_computation(warehouse: Path) -> None:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        first, last = purchase_span(conn)
        middle = first + (last - first) * 0.5
        full = load_profiles(conn, last)
        rng = np.random.default_rng(3)
        owners = np.flatnonzero(full.owned.any(axis=1))
        hidden = (owners, (rng.random(full.shape) * full.owned).argmax(axis=1)[owners])
        for as_of in (middle, last):
            got = load_profiles(conn, as_of, hidden=hidden)
            assert_same_profiles(got, reference_profiles(conn, as_of, hidden=hidden))
        assert not got.owned[hidden].any() and full.owned[hidden].all()


def test_profiles_from_the_metrics_tables_are_the_lines_computation(warehouse: Path, tmp_path: Path) -> None:
    """The scoring run reads the profiles from customer_metrics and customer_category_matrix: the
    same arrays, bit for bit, as aggregating the lines, on the awkward cases of the fixture."""
    copy = tmp_path / "cross_sell.duckdb"
    shutil.copy(warehouse, copy)
    with duckdb.connect(str(copy)) as conn:
        conn.execute(f"create table customer_category_matrix as {customer_category_sql()}")
        conn.execute(f"create table customer_metrics as {customer_metrics_sql()}")
        _, last = purchase_span(conn)
        assert_same_profiles(profiles_from_metrics(conn, last), load_profiles(conn, last))


def test_the_metrics_tables_stand_in_only_while_current(warehouse: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cross_sell.duckdb"
    shutil.copy(warehouse, copy)
    with duckdb.connect(str(copy)) as conn:
        published = audit_log.current_publish(conn)
        assert published is not None  # the ingest recorded its publish
        assert metrics_unusable(conn) == (
            "customer_metrics and customer_category_matrix were not rebuilt since the inputs were last published"
        )
        for table in METRICS_TABLES:
            audit_log.record_derived(conn, table, published, "test")
        assert metrics_unusable(conn) is None
        # Inputs published again (a new day, say): the tables are stale until rebuilt.
        republished = audit_log.record_publish(conn, "test")
        assert metrics_unusable(conn) == (
            "customer_metrics and customer_category_matrix were not rebuilt since the inputs were last published"
        )
        audit_log.record_derived(conn, "customer_metrics", republished, "test")
        assert metrics_unusable(conn) == "customer_category_matrix was not rebuilt since the inputs were last published"
        audit_log.record_derived(conn, "customer_category_matrix", republished, "test")
        assert metrics_unusable(conn) is None
        # Inputs without prices: the metrics hold nulls where the profile has zeros.
        conn.execute(f"create or replace table {FORMAT_TABLE} as {publish_format_sql('basket_log')}")
        assert metrics_unusable(conn) == "the basket_log inputs lack prices"
