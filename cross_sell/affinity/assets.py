"""Affinity stage: which categories (or products) are bought together, beyond chance."""


from collections.abc import Iterator
from typing import Literal

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb import DuckDBResource

from cross_sell import contracts, settings
from cross_sell.affinity import heatmap
from cross_sell.affinity.logic import MASK_ITEMS, RULE_COLUMNS, association_rules, association_rules_from_masks
from cross_sell.quality import gated_publish, output_contract_spec
from cross_sell.warehouse import connect, distinct_item_sets, encode_pairs, markdown, uri

OWNER = "team:customer-analytics"
GROUP = "affinity"


class AffinityConfig(dg.Config):
    """Which rules to compute and which to keep."""

    min_support: float = 0.01
    """Category-level rules with support below this share of transactions are dropped."""
    product_level: bool | None = None
    """Also compute product-to-product rules (larger; on request). Unset: the deployment's setting,
    ``$CROSS_SELL_PRODUCT_LEVEL`` (default false), which every run keeps, scheduled and automated
    ones included; true or false here decides for this run only."""
    product_min_support: float = 0.002
    """Support floor for product-level rules."""
    basis: Literal["customer", "order"] = "customer"
    """Transactions are customers (bought ever) or single orders (bought together)."""


PURCHASE_LINES = (
    "select p.customer_id, p.order_id, p.product_id, pr.product_category "
    "from purchases p join products pr using (product_id)"
)
# Each customer's categories, already one row per (customer, category): the same item sets as the
# purchase lines give with customers as transactions, from a third of the rows and no join.
CUSTOMER_CATEGORIES = "select customer_id, product_category from customer_category_matrix"


def product_level_choice(requested: bool | None) -> tuple[bool, str]:
    """Whether this run computes product-level rules, and what decided it: the run's config, else
    the deployment's ``$CROSS_SELL_PRODUCT_LEVEL``, else the default (no)."""
    if requested is not None:
        return requested, "run config"
    deployed = settings.product_level()
    if deployed is not None:
        return deployed, f"${settings.PRODUCT_LEVEL_ENV}"
    return False, "default"


def category_level_rules(conn: duckdb.DuckDBPyConnection, relation: str, transaction: str, *, min_support: float) -> pd.DataFrame:
    """Category-level rules over the ``transaction`` column of ``relation`` (which has
    ``product_category``). Up to ``MASK_ITEMS`` categories, each transaction's categories are one
    bit mask counted in DuckDB; more take the (transaction, category) pairs."""
    item_sets = distinct_item_sets(conn, relation, transaction, "product_category", MASK_ITEMS)
    if item_sets is not None:
        return association_rules_from_masks(*item_sets, min_support=min_support, level="category")
    tx_codes, item_codes, names = encode_pairs(conn, relation, transaction, "product_category")
    return association_rules(tx_codes, item_codes, names, min_support=min_support, level="category")


@dg.asset(
    deps=["customer_category_matrix", "purchases", "products"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"duckdb", "scipy"},
    pool="duckdb",
    tags={"data_product": "cross_sell"},
    check_specs=[output_contract_spec("product_affinity", contracts.ProductAffinity)],
    metadata={"dagster/column_schema": contracts.table_schema(contracts.ProductAffinity)},
)
def product_affinity(
    context: dg.AssetExecutionContext, config: AffinityConfig, duckdb: DuckDBResource
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """The product affinity matrix: for every pair of categories A and B, how many customers
    bought both (pair count), how common that is (support), how likely a buyer of A is to buy B
    (confidence) and how much A raises the odds of B compared with chance (lift). Marketing reads
    it to plan bundles and cross-sell campaigns; the scores build on it."""
    product_level, product_level_set_by = product_level_choice(config.product_level)
    tx = "customer_id" if config.basis == "customer" else "order_id"
    categories = CUSTOMER_CATEGORIES if config.basis == "customer" else PURCHASE_LINES
    with connect(duckdb, needs=("customer_category_matrix", "purchases", "products")) as conn:
        frames = []
        frames.append(category_level_rules(conn, categories, tx, min_support=config.min_support))
        if product_level:
            tx_codes, item_codes, names = encode_pairs(conn, PURCHASE_LINES, tx, "product_id")
            frames.append(
                association_rules(tx_codes, item_codes, names, min_support=config.product_min_support, level="product")
            )
        rules = pd.concat(frames, ignore_index=True)[RULE_COLUMNS]
        category_rules = rules[rules["level"] == "category"]
        top = category_rules.head(10)[["antecedent", "consequent", "pair_count", "support", "confidence", "lift"]]
        picture = heatmap.render_lift_heatmap(category_rules)
        picture_path = heatmap.figure_path(duckdb.database)
        with heatmap.staged_file(picture, picture_path):
            yield from gated_publish(
                conn,
                "product_affinity",
                contracts.ProductAffinity,
                rules,
                {
                    "dagster/uri": uri(duckdb, "product_affinity"),
                    "basis": config.basis,
                    "min_support": config.min_support,
                    "product_level": product_level,
                    "product_level_set_by": product_level_set_by,
                    "category_rules": len(category_rules),
                    "product_rules": int((rules["level"] == "product").sum()),
                    "transactions": int(category_rules["transactions"].iloc[0]) if len(category_rules) else 0,
                    "max_lift": float(category_rules["lift"].max()) if len(category_rules) else 0.0,
                    "top_pairs_by_lift": dg.MetadataValue.md(markdown(top)),
                    **heatmap.metadata(picture, picture_path),
                },
            )
