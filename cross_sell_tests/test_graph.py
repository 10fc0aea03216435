"""The whole asset graph, materialized for real into a DuckDB file under tmp_path."""

from __future__ import annotations

import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from cross_sell.definitions import ASSETS, CHECKS
from cross_sell_tests.conftest import RunGraph, make_resources, read_table

OUTPUTS = ["customer_metrics", "customer_category_matrix", "product_affinity", "cross_sell_model", "cross_sell_scores", "cross_sell_recommendations"]


def test_tiny_graph_gives_hand_computed_results(tiny_data: Path, run_graph: RunGraph, warehouse_path: Path) -> None:
    result = run_graph(tiny_data)
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())

    metrics = read_table(warehouse_path, "customer_metrics", "customer_id").set_index("customer_id")
    # C2: orders O2 (2025-02-01) and O3 (2025-03-01); as-of = newest purchase 2025-04-01 09:00.
    c2 = metrics.loc["C2"]
    assert c2.orders == 2 and c2.total_spend == 40 and c2.avg_order_value == 20
    assert c2.purchase_frequency == pytest.approx(2.0)  # 2 orders / (max(28, 30) days / 30)
    assert c2.recency_days == 31 and c2.tenure_days == 425  # signup 2024-02-01
    assert c2.clv == pytest.approx(20 * (2 * 365 / 425) * 3 * math.exp(-31 / 365))
    assert metrics.loc["C4"].orders == 0 and metrics.loc["C4"].clv == 0 and pd.isna(metrics.loc["C4"].recency_days)

    affinity = read_table(warehouse_path, "product_affinity").set_index(["antecedent", "consequent"])
    # Wines is bought by all 3 buying customers, Meat by 2 (C1, C2), Fish by 1 (C3).
    assert affinity.loc[("Wines", "Meat")].pair_count == 2
    assert affinity.loc[("Wines", "Meat")].support == pytest.approx(2 / 3)
    assert affinity.loc[("Wines", "Meat")].confidence == pytest.approx(2 / 3)
    assert affinity.loc[("Meat", "Wines")].confidence == pytest.approx(1.0)
    assert affinity.loc[("Wines", "Fish")].lift == pytest.approx(1.0)
    assert ("Meat", "Fish") not in affinity.index  # never bought together

    scores = read_table(warehouse_path, "cross_sell_scores").set_index(["customer_id", "product_category"])["score"]
    # One row per customer and category not bought: C4 never bought, so all three.
    assert sorted(scores.index) == [("C1", "Fish"), ("C2", "Fish"), ("C3", "Meat"), ("C4", "Fish"), ("C4", "Meat"), ("C4", "Wines")]
    # Only one first purchase of a category follows the time-split cutoff (C3's Fish), so the model
    # falls back to hiding one bought category per customer: each of C1..C3 gives 2 candidate rows,
    # 1 of them the hidden one. Trees cannot split so few rows: the calibrated probability is the
    # observed rate, 1/2, for everyone.
    registry = read_table(warehouse_path, "model_registry")
    assert registry.strategy.tolist() == ["cross_sectional"]
    assert scores.to_numpy() == pytest.approx(0.5)

    recs = read_table(warehouse_path, "cross_sell_recommendations", "customer_id, rank")
    # Wines -> Meat has lift 1.0 (no rule raises C3's odds of Meat), so popularity is the reason.
    assert recs[recs.customer_id == "C3"].iloc[0].reason == "popular: 67% of customers buy Meat; model: 50% (typical 50%)"
    assert sorted(recs[recs.customer_id == "C4"].product_category) == ["Fish", "Meat", "Wines"]


def test_generated_graph_invariants(generated_data: Path, run_graph: RunGraph, warehouse_path: Path) -> None:
    result = run_graph(generated_data)
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert set(OUTPUTS) <= materialized

    customers = read_table(warehouse_path, "customers")
    matrix = read_table(warehouse_path, "customer_category_matrix")
    affinity = read_table(warehouse_path, "product_affinity")
    scores = read_table(warehouse_path, "cross_sell_scores")
    recs = read_table(warehouse_path, "cross_sell_recommendations")
    metrics = read_table(warehouse_path, "customer_metrics")

    assert len(metrics) == len(customers) and metrics.customer_id.is_unique
    assert (metrics.purchase_frequency >= 0).all() and (metrics.clv >= 0).all()

    # Scores: in [0, 1], one row per customer and category not bought, none for bought ones.
    assert scores.score.between(0, 1).all()
    assert not scores.duplicated(["customer_id", "product_category"]).any()
    categories = read_table(warehouse_path, "products").product_category.nunique()
    bought = set(zip(matrix.customer_id, matrix.product_category))
    assert len(scores) == len(customers) * categories - len(bought)
    assert not (set(zip(scores.customer_id, scores.product_category)) & bought)

    # Recommendations never name a bought category; ranks 1..3 by descending score.
    assert not (set(zip(recs.customer_id, recs.product_category)) & bought)
    assert recs.groupby("customer_id")["rank"].max().le(3).all()
    ordered = recs.sort_values(["customer_id", "rank"])
    assert (ordered.groupby("customer_id")["score"].diff().dropna() <= 1e-12).all()
    assert recs.reason.str.len().gt(0).all()

    # Affinity: symmetric pair counts, lift consistent with its definition, min support respected.
    mirror = affinity.merge(affinity, left_on=["antecedent", "consequent"], right_on=["consequent", "antecedent"])
    assert len(mirror) == len(affinity)
    assert (mirror.pair_count_x == mirror.pair_count_y).all()
    np.testing.assert_allclose(affinity.lift, affinity.confidence / (affinity.consequent_count / affinity.transactions))
    np.testing.assert_allclose(affinity.support, affinity.pair_count / affinity.transactions)
    assert (affinity.support >= 0.01).all()
    # The planted structure is found: some category pairs are clearly more than chance.
    assert affinity.lift.max() > 1.3

    # The SLO report ran in the run that made the scores: it says that run is its own and has not
    # finished yet. It ran last, so it counts every gate of the run, the serving ones included.
    report = read_table(warehouse_path, "slo_report")
    durations = report.query("sli == 'run duration'").set_index("subject").value
    assert not durations.str.contains("nan").any()
    own = durations["run behind the current cross_sell_scores (this report's own run)"]
    assert own.startswith("not finished: STARTED since ")
    gates = report.query("sli == 'gate pass rate, 7 days'").set_index("subject").value
    assert (gates != "no evaluations").all(), gates[gates == "no evaluations"]
    assert gates["marketing_database:no_pii"] == "1/1" and gates["parquet_exports:checksums_match"] == "1/1"


def test_materialization_metadata_is_real(tiny_data: Path, run_graph: RunGraph) -> None:
    result = run_graph(tiny_data)
    events = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert events["purchases"]["dagster/row_count"].value == 6
    assert events["product_affinity"]["dagster/row_count"].value == 4
    assert "Wines" in events["product_affinity"]["top_pairs_by_lift"].value
    assert "C4" in events["cross_sell_recommendations"]["top_recommendations"].value
    assert events["customer_metrics"]["buying_customers"].value == 3


def test_product_level_and_order_basis_on_request(tiny_data: Path, run_graph: RunGraph, warehouse_path: Path) -> None:
    config = {"ops": {"product_affinity": {"config": {"product_level": True, "basis": "order", "min_support": 0.0,
                                                     "product_min_support": 0.0}}}}
    result = run_graph(tiny_data, run_config=config)
    assert result.success
    affinity = read_table(warehouse_path, "product_affinity")
    products = affinity[affinity.level == "product"].set_index(["antecedent", "consequent"])
    # Over 5 orders, only O1 holds two products (P1 and P2).
    assert products.loc[("P1", "P2")].pair_count == 1 and products.loc[("P1", "P2")].transactions == 5
    assert len(products) == 2


def test_product_level_as_a_deployment_setting(
    tiny_data: Path, run_graph: RunGraph, warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CROSS_SELL_PRODUCT_LEVEL turns product-level rules on for every run that does not decide
    itself (the schedule and automation launch runs without config); a run's config still wins."""
    from cross_sell import settings

    def product_rules(result) -> tuple[int, str]:
        assert result.success
        [meta] = [e.materialization.metadata for e in result.get_asset_materialization_events()
                  if e.asset_key.to_user_string() == "product_affinity"]
        rows = int((read_table(warehouse_path, "product_affinity").level == "product").sum())
        assert meta["product_rules"].value == rows
        return rows, meta["product_level_set_by"].value

    monkeypatch.delenv(settings.PRODUCT_LEVEL_ENV, raising=False)
    assert product_rules(run_graph(tiny_data)) == (0, "default")
    monkeypatch.setenv(settings.PRODUCT_LEVEL_ENV, "true")
    rows, set_by = product_rules(run_graph(tiny_data))
    assert rows > 0 and set_by == "$CROSS_SELL_PRODUCT_LEVEL"
    off = {"ops": {"product_affinity": {"config": {"product_level": False}}}}
    assert product_rules(run_graph(tiny_data, run_config=off)) == (0, "run config")

    monkeypatch.setenv(settings.PRODUCT_LEVEL_ENV, "sometimes")
    failed = run_graph(tiny_data)
    assert not failed.success
    [failure] = failed.get_step_failure_events()
    assert "CROSS_SELL_PRODUCT_LEVEL is 'sometimes'" in str(failure.event_specific_data.error)


def test_a_step_on_an_empty_warehouse_says_what_to_run_first(tmp_path: Path, tiny_data: Path) -> None:
    """A downstream asset selected on its own against a warehouse that holds no inputs (the wrong
    CROSS_SELL_DUCKDB_PATH, or upstream never run) fails saying what is missing and what to
    materialize first, and creates no empty warehouse file."""
    warehouse = tmp_path / "nowhere" / "cross_sell.duckdb"
    result = dg.materialize([*ASSETS, *CHECKS], selection=["customer_metrics"],
                            resources=make_resources(tiny_data, warehouse), raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data.metadata["rule"].value == "upstream_published"
    assert "has no published main.customers, main.purchases yet" in data.description
    assert "--select 'group:ingest'" in data.description
    assert not warehouse.exists()
