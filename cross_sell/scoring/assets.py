"""Scoring stage: how likely each customer is to buy each category they lack, and what to offer."""

from collections.abc import Iterator

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from cross_sell import contracts
from cross_sell.quality import gated_publish, output_contract_spec
from cross_sell.scoring.logic import reason_codes, reason_texts, rule_matrices, rule_scores, top_n
from cross_sell.warehouse import connect, markdown, uri

OWNER = "team:customer-analytics"
GROUP = "scoring"


class RecommendationConfig(dg.Config):
    """How many categories to recommend per customer."""

    top_n: int = 3


def _customer_profiles(conn) -> tuple[list[str], list[str], np.ndarray]:
    """All customers, all categories (both sorted) and the boolean customer x category 'has bought' matrix."""
    customers = conn.execute("select customer_id from customers order by customer_id").df()["customer_id"].tolist()
    categories = [
        r[0] for r in conn.execute("select distinct product_category from products order by 1").fetchall()
    ]
    pairs = conn.execute(
        """with c as (select customer_id, (row_number() over (order by customer_id) - 1)::integer as ci from customers),
                k as (select product_category, (row_number() over (order by product_category) - 1)::integer as ki
                      from (select distinct product_category from products))
           select c.ci, k.ki from customer_category_matrix m join c using (customer_id) join k using (product_category)"""
    ).fetchnumpy()
    owned = np.zeros((len(customers), len(categories)), dtype=bool)
    owned[np.asarray(pairs["ci"]), np.asarray(pairs["ki"])] = True
    return customers, categories, owned


def _category_rules(conn) -> pd.DataFrame:
    return conn.execute(
        "select antecedent, consequent, confidence, lift from product_affinity where level = 'category'"
    ).df()


def _base_rate(owned: np.ndarray) -> np.ndarray:
    buyers = int(owned.any(axis=1).sum())
    return owned.sum(axis=0) / buyers if buyers else np.zeros(owned.shape[1])


@dg.asset(
    deps=["product_affinity", "customer_category_matrix", "customers", "customer_metrics"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"duckdb", "numpy"},
    pool="duckdb",
    tags={"data_product": "cross_sell"},
    check_specs=[output_contract_spec("cross_sell_scores", contracts.CrossSellScore)],
    metadata={"dagster/column_schema": contracts.table_schema(contracts.CrossSellScore)},
)
def cross_sell_scores(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """The cross-sell opportunity score: for every customer and every category they have not
    bought yet, the likelihood (0..1) that they buy it. Here it is the confidence of the strongest
    affinity rule the customer's own purchases trigger, or the category's popularity when no rule
    applies. Sales and marketing sort by it to decide whom to offer what."""
    with connect(duckdb) as conn:
        customers, categories, owned = _customer_profiles(conn)
        confidence, _ = rule_matrices(_category_rules(conn), categories)
        scored = rule_scores(owned, confidence, _base_rate(owned))
        ci, ki = np.nonzero(~owned)
        frame = pd.DataFrame(
            {
                "customer_id": pd.Categorical.from_codes(ci, categories=customers),
                "product_category": pd.Categorical.from_codes(ki, categories=categories),
                "score": scored.score[ci, ki],
            }
        )
        by_category = (
            frame.groupby("product_category", observed=True)["score"].agg(["count", "mean"]).reset_index()
            .rename(columns={"count": "customers_without", "mean": "mean_score"})
        )
        yield from gated_publish(
            conn,
            "cross_sell_scores",
            contracts.CrossSellScore,
            frame,
            {
                "dagster/uri": uri(duckdb, "cross_sell_scores"),
                "customers": len(customers),
                "categories": len(categories),
                "mean_score": float(frame["score"].mean()) if len(frame) else 0.0,
                "scored_by_rule_share": float((scored.antecedent[ci, ki] >= 0).mean()) if len(frame) else 0.0,
                "score_by_category": dg.MetadataValue.md(markdown(by_category)),
            },
        )


@dg.asset(
    deps=["cross_sell_scores", "product_affinity", "customer_category_matrix"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"duckdb", "numpy"},
    pool="duckdb",
    tags={"data_product": "cross_sell"},
    check_specs=[output_contract_spec("cross_sell_recommendations", contracts.CrossSellRecommendation)],
    metadata={"dagster/column_schema": contracts.table_schema(contracts.CrossSellRecommendation)},
)
def cross_sell_recommendations(
    context: dg.AssetExecutionContext, config: RecommendationConfig, duckdb: DuckDBResource
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """The next best offers: for each customer, the top-N categories they have not bought yet,
    best first, each with a human-readable reason ("bought Wines; Wines → Meat, lift 1.8").
    Campaign tools and account managers consume this table directly."""
    with connect(duckdb) as conn:
        customers, categories, owned = _customer_profiles(conn)
        scores = conn.execute(
            """with c as (select customer_id, (row_number() over (order by customer_id) - 1)::integer as ci from customers),
                    k as (select product_category, (row_number() over (order by product_category) - 1)::integer as ki
                          from (select distinct product_category from products))
               select c.ci, k.ki, s.score from cross_sell_scores s join c using (customer_id) join k using (product_category)"""
        ).fetchnumpy()
        score = np.full(owned.shape, np.nan)
        score[np.asarray(scores["ci"]), np.asarray(scores["ki"])] = np.asarray(scores["score"])
        score[owned] = np.nan  # never recommend what the customer already has
        confidence, lift = rule_matrices(_category_rules(conn), categories)
        base_rate = _base_rate(owned)
        behind = rule_scores(owned, confidence, base_rate).antecedent
        ci, rank, ki = top_n(score, config.top_n)
        k = len(categories)
        frame = pd.DataFrame(
            {
                "customer_id": pd.Categorical.from_codes(ci, categories=customers),
                "rank": rank.astype(np.int64),
                "product_category": pd.Categorical.from_codes(ki, categories=categories),
                "score": score[ci, ki],
                "reason": pd.Categorical.from_codes(
                    reason_codes(behind[ci, ki], ki, k), categories=reason_texts(categories, lift, base_rate)
                ),
            }
        )
        preview = frame[frame["rank"] == 1].nlargest(10, "score")
        yield from gated_publish(
            conn,
            "cross_sell_recommendations",
            contracts.CrossSellRecommendation,
            frame,
            {
                "dagster/uri": uri(duckdb, "cross_sell_recommendations"),
                "top_n": config.top_n,
                "customers_with_recommendations": int(frame["customer_id"].nunique()),
                "top_recommendations": dg.MetadataValue.md(markdown(preview.astype({"customer_id": str, "product_category": str, "reason": str}))),
            },
        )
