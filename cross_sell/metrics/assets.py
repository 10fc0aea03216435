"""Metrics stage: what each customer is worth, and what each customer has bought."""

from collections.abc import Iterator

import dagster as dg
from dagster_duckdb import DuckDBResource

from cross_sell import audit_log, contracts
from cross_sell.ingest.formats import published_capabilities
from cross_sell.metrics.logic import customer_category_sql, customer_metrics_sql, per_customer_sql, unavailable_metrics
from cross_sell.quality import gated_publish, output_contract_spec
from cross_sell.warehouse import connect, markdown, uri

OWNER = "team:customer-analytics"
GROUP = "metrics"


class MetricsConfig(dg.Config):
    """How customer lifetime value is projected."""

    clv_horizon_years: float = 3.0


@dg.asset(
    deps=["customers", "purchases"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"duckdb", "sql"},
    pool="duckdb",
    tags={"data_product": "cross_sell"},
    check_specs=[output_contract_spec("customer_metrics", contracts.CustomerMetrics)],
    metadata={"dagster/column_schema": contracts.table_schema(contracts.CustomerMetrics)},
)
def customer_metrics(
    context: dg.AssetExecutionContext, config: MetricsConfig, duckdb: DuckDBResource
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """How often each customer buys (purchase frequency), what they spend (total spend, average
    order value), how recently and how long they have been buying, and their predicted lifetime
    value: the key customer metrics of the data product, one row per customer."""
    with connect(duckdb, needs=("customers", "purchases")) as conn:
        basis = audit_log.current_publish(conn)
        input_format, caps = published_capabilities(conn)
        unavailable = unavailable_metrics(caps)
        # One pass over the purchase lines, kept for the metrics and the count of buying customers.
        conn.execute(f"create or replace temp table _per_customer as {per_customer_sql()}")
        df = conn.execute(customer_metrics_sql(config.clv_horizon_years, caps, per_customer="_per_customer")).df()
        buyers = conn.execute("select count(customer_id) from _per_customer").fetchall()[0][0]
        conn.execute("drop table _per_customer")
        rank_by = next((m for m in ("clv", "total_spend", "orders") if m not in unavailable), "customer_id")
        top = df.sort_values(rank_by, ascending=False).head(10)[["customer_id", "orders", "total_spend", "clv"]]
        metadata: dict = {
            "dagster/uri": uri(duckdb, "customer_metrics"),
            "input_format": input_format,
            "buying_customers": int(buyers),
            "unavailable_metrics": dg.MetadataValue.json(unavailable),
            f"top_customers_by_{rank_by}": dg.MetadataValue.md(markdown(top)),
        }
        if "total_spend" not in unavailable:
            metadata["total_spend"] = float(df["total_spend"].sum())
        if "purchase_frequency" not in unavailable:
            metadata["median_purchase_frequency"] = float(df.loc[df["orders"] > 0, "purchase_frequency"].median() or 0)
        if "clv" not in unavailable:
            metadata["mean_clv"] = float(df["clv"].mean()) if len(df) else 0.0
        for metric, reason in unavailable.items():
            context.log.info(f"customer_metrics.{metric} is unavailable (null): {reason}")
        yield from gated_publish(conn, "customer_metrics", contracts.CustomerMetrics, df, metadata)
        audit_log.record_derived(conn, "customer_metrics", basis, context.run.run_id)  # reached only when published


@dg.asset(
    deps=["purchases", "products"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"duckdb", "sql"},
    pool="duckdb",
    metadata={"dagster/column_schema": contracts.table_schema(contracts.CustomerCategory)},
)
def customer_category_matrix(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Which categories each customer has bought, with orders, units and spend per category:
    the customer profile that affinity rules and cross-sell scores are computed from."""
    with connect(duckdb, needs=("purchases", "products")) as conn:
        basis = audit_log.current_publish(conn)
        _, caps = published_capabilities(conn)
        conn.execute(f"create or replace table customer_category_matrix as {customer_category_sql(caps)}")
        audit_log.record_derived(conn, "customer_category_matrix", basis, context.run.run_id)
        rows, customers, categories = conn.execute(
            "select count(*), count(distinct customer_id), count(distinct product_category) from customer_category_matrix"
        ).fetchone()
        by_category = conn.execute(
            """select product_category, count(*) as customers, round(sum(spend), 2) as spend
               from customer_category_matrix group by 1 order by customers desc, 1 limit 20"""
        ).df()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": int(rows),
            "dagster/uri": uri(duckdb, "customer_category_matrix"),
            "customers": int(customers),
            "categories": int(categories),
            "customers_per_category": dg.MetadataValue.md(markdown(by_category)),
        }
    )
