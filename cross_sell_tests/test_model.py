"""The learned cross-sell score: training data, evaluation against baselines, versioning, scoring
and the evaluation command, on real Dagster runs into DuckDB files under tmp_path."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from cross_sell.definitions import ASSETS, CHECKS
from cross_sell.evaluate import main as evaluate_main
from cross_sell.scoring import evaluation as ev
from cross_sell.scoring import model as ml
from cross_sell.scoring.features import load_profiles, pair_features, purchase_span, rule_statistics
from cross_sell.scoring.logic import NO_RULE, reason_rules, recommendation_reasons
from cross_sell_tests.conftest import PROJECT_ROOT, SHARED_DATASETS, make_resources, read_table, write_tiny_dataset

SAMPLE = PROJECT_ROOT / "data" / "sample"  # the committed generated sample: 2,000 customers, 50,000 lines
THROUGH_RECOMMENDATIONS = dg.AssetSelection.assets("cross_sell_recommendations", "customer_metrics").upstream()


@dataclass(frozen=True)
class Built:
    warehouse: Path
    result: dg.ExecuteInProcessResult

    def metadata(self, asset: str) -> dict:
        [event] = [e for e in self.result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
        return {k: v.value for k, v in event.materialization.metadata.items()}


def build(data_dir: Path, warehouse: Path, selection=THROUGH_RECOMMENDATIONS, **kwargs) -> Built:
    result = dg.materialize(
        [*ASSETS, *CHECKS], selection=selection, resources=make_resources(data_dir, warehouse), raise_on_error=False, **kwargs
    )
    return Built(warehouse, result)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The committed generated sample, ingested, modelled, scored and recommended."""
    built = build(SAMPLE, tmp_path_factory.mktemp("sample") / "warehouse" / "cross_sell.duckdb")
    assert built.result.success
    return built


def flat_copy(source: Path, target: Path, day: str = "2024-06-30") -> Path:
    """The same data with every purchase on one day, as in a spend-summary dataset."""
    target.mkdir(parents=True)
    with duckdb.connect() as conn:
        for name in ("customer", "product"):
            conn.execute(f"copy (select * from '{source / name}.parquet') to '{target / name}.parquet' (format parquet)")
        conn.execute(
            f"copy (select * replace (timestamp '{day}' as purchase_date) from '{source / 'purchase'}.parquet') "
            f"to '{target / 'purchase'}.parquet' (format parquet)"
        )
    return target


# ---------------------------------------------------------------------------------------------
# The model earns its place


def test_model_beats_popularity_and_is_calibrated(sample: Built) -> None:
    meta = sample.metadata("cross_sell_model")
    assert meta["strategy"] == ml.TIME_SPLIT
    # The planted segments make next categories predictable from the profile: the model must beat
    # "most popular category you lack" clearly, and rank buyers within a category better than both baselines.
    assert meta["model_recall_at_k"] > meta["popularity_recall_at_k"] + 0.03
    assert meta["model_roc_auc"] > meta["popularity_roc_auc"] + 0.05
    assert meta["model_roc_auc"] > meta["affinity_rules_roc_auc"]
    checks = {e.check_name: e for e in sample.result.get_asset_check_evaluations() if e.asset_key.to_user_string() == "cross_sell_model"}
    assert checks["beats_popularity"].passed and checks["beats_popularity"].metadata["comparable"].value

    # Calibrated: in ten score bins, mean score and observed rate differ by little, unlike the baselines'.
    table = read_table(sample.warehouse, "model_evaluation")
    overall = table[table.category == ""].pivot(index="scorer", columns="metric", values="value")
    assert overall.loc["model", "calibration_error"] < 0.06
    assert overall.loc["model", "calibration_error"] < overall.loc[["popularity", "affinity_rules"], "calibration_error"].min()
    assert overall.loc["model", "brier"] < overall.loc[["popularity", "affinity_rules"], "brier"].min()
    per_category = table[(table.category != "") & (table.scorer == "popularity")]
    assert per_category["value"].dropna().eq(0.5).all()  # popularity cannot rank customers within a category
    assert len(per_category) == read_table(sample.warehouse, "products").product_category.nunique()


def test_model_is_registered_with_its_training_metadata(sample: Built) -> None:
    meta = sample.metadata("cross_sell_model")
    registry = read_table(sample.warehouse, "model_registry")
    assert registry.is_current.tolist() == [True] and registry.version.tolist() == [meta["version"]]
    row = registry.iloc[0]
    artifact = Path(row.artifact)
    assert artifact == sample.warehouse.parent / "models" / f"cross_sell_model-{meta['version']}.joblib"
    assert artifact.is_file()
    with duckdb.connect(str(sample.warehouse), read_only=True) as conn:
        first, last = purchase_span(conn)
    # Cutoff at 75 % of the purchase date span; the label window runs to the newest purchase.
    assert pd.Timestamp(row.cutoff) == first + (last - first) * 0.75
    assert row.label_window_days == pytest.approx((last - pd.Timestamp(row.cutoff)).total_seconds() / 86400, abs=0.01)
    assert 0 < row.training_positives < row.training_rows
    assert row.evaluation_customers > 0 and row.evaluation_positives > 0
    features = json.loads(row.features)
    assert {"category", "rule_confidence", "recency_days", "age", "education", "spend_share[Wines]", "order_share[Meat]"} <= set(features)
    assert '"seed": 42' in row.params and "data_fingerprint" in registry.columns
    loaded = ml.load(artifact)
    assert loaded.version == meta["version"] and loaded.metadata["features"] == features


def test_scores_are_the_model_probabilities_and_reasons_explain_them(sample: Built) -> None:
    scores = read_table(sample.warehouse, "cross_sell_scores")
    matrix = read_table(sample.warehouse, "customer_category_matrix")
    customers = read_table(sample.warehouse, "customers")
    categories = read_table(sample.warehouse, "products").product_category.nunique()
    bought = set(zip(matrix.customer_id, matrix.product_category))
    assert len(scores) == len(customers) * categories - len(bought)
    assert not (set(zip(scores.customer_id, scores.product_category)) & bought)
    assert scores.score.between(0, 1).all() and scores.score.nunique() > 100  # a model, not a lookup table

    # The scores are the persisted model's calibrated probabilities on today's profiles.
    with duckdb.connect(str(sample.warehouse), read_only=True) as conn:
        model = ml.load(ml.current_artifact(conn, sample.warehouse.parent / "models"))
        again = ml.score(conn, model).frame.astype({"customer_id": str, "product_category": str})
    merged = scores.merge(again, on=["customer_id", "product_category"], suffixes=("", "_again"))
    assert len(merged) == len(scores) and (merged.score == merged.score_again).all()

    # Each reason names a rule the customer's own purchases trigger (with a lift above 1, as
    # published in product_affinity) or popularity, then the model's probability of that offer.
    recs = read_table(sample.warehouse, "cross_sell_recommendations")
    affinity = read_table(sample.warehouse, "product_affinity").set_index(["antecedent", "consequent"])
    window = sample.metadata("cross_sell_model")["label_window_days"]
    parts = recs.reason.str.extract(
        r"^(?:bought (?P<a>[^;]+); (?P=a) \u2192 (?P<b>[^,]+), lift (?P<lift>[\d.]+)|popular: [<>]?\d+% of customers buy (?P<p>.+)); "
        r"model: (?P<pct><1|\d+)% within (?P<days>\d+) days \(typical (?:<1|\d+)%\)$"
    )
    assert parts.pct.notna().all()
    assert (parts.days.astype(int) == round(window)).all()
    shown = parts.pct.replace("<1", "0").astype(int)
    assert (shown == (recs.score * 100).round().astype(int)).all()
    by_rule = parts.a.notna()
    assert by_rule.mean() > 0.5
    assert (parts.b[by_rule] == recs.product_category[by_rule]).all()
    assert (parts.p[~by_rule] == recs.product_category[~by_rule]).all()
    ruled = recs[by_rule].assign(a=parts.a[by_rule], lift=parts.lift[by_rule].astype(float))
    assert set(zip(ruled.customer_id, ruled.a)) <= bought
    published = affinity.loc[list(zip(ruled.a, ruled.product_category)), "lift"].to_numpy()
    assert np.allclose(ruled.lift, np.round(published, 2)) and (published > 1).all()


def test_offers_made_in_the_scoring_step_equal_offers_made_from_the_published_scores(sample: Built, tmp_path: Path) -> None:
    """Scores and offers are one step (cross_sell_scoring): the offers are ranked from the scores in
    memory. Materializing the offers alone reads the published scores instead; both give the same
    table, and selecting one asset materializes that one only."""
    copy = tmp_path / "warehouse"
    shutil.copytree(sample.warehouse.parent, copy)
    alone = build(SAMPLE, copy / sample.warehouse.name, dg.AssetSelection.assets("cross_sell_recommendations"))
    assert alone.result.success
    assert {e.asset_key.to_user_string() for e in alone.result.get_asset_materialization_events()} == {"cross_sell_recommendations"}
    key = "customer_id, rank"
    pd.testing.assert_frame_equal(
        read_table(alone.warehouse, "cross_sell_recommendations", key), read_table(sample.warehouse, "cross_sell_recommendations", key)
    )
    assert alone.metadata("cross_sell_recommendations")["customers_with_recommendations"] == (
        sample.metadata("cross_sell_recommendations")["customers_with_recommendations"]
    )
    scores_only = build(SAMPLE, copy / sample.warehouse.name, dg.AssetSelection.assets("cross_sell_scores"))
    assert {e.asset_key.to_user_string() for e in scores_only.result.get_asset_materialization_events()} == {"cross_sell_scores"}
    [check] = scores_only.result.get_asset_check_evaluations()
    assert check.asset_key.to_user_string() == "cross_sell_scores" and check.passed


def test_features_as_of_the_newest_purchase_match_customer_metrics(sample: Built) -> None:
    metrics = read_table(sample.warehouse, "customer_metrics", "customer_id")
    with duckdb.connect(str(sample.warehouse), read_only=True) as conn:
        _, last = purchase_span(conn)
        profiles = load_profiles(conn, last)
    assert profiles.customer_ids.tolist() == metrics.customer_id.tolist()
    features = profiles.customer
    np.testing.assert_allclose(features.purchase_frequency, metrics.purchase_frequency)
    np.testing.assert_allclose(features.log_total_spend, np.log1p(metrics.total_spend))
    np.testing.assert_allclose(features.recency_days, metrics.recency_days)
    np.testing.assert_allclose(features.tenure_days, metrics.tenure_days)
    # Shares of spend and orders per category are shares.
    buyers = metrics.orders.to_numpy() > 0
    np.testing.assert_allclose(profiles.spend_share[buyers].sum(axis=1), 1.0, rtol=1e-5)
    assert (profiles.order_share[buyers].max(axis=1) <= 1).all() and (profiles.order_share[buyers].sum(axis=1) >= 1 - 1e-6).all()


# ---------------------------------------------------------------------------------------------
# How the training data is made


def test_time_split_rows_labels_and_features_are_as_of_the_cutoff(tiny_data: Path, warehouse_path: Path) -> None:
    assert build(tiny_data, warehouse_path, dg.AssetSelection.assets("customers", "products", "purchases").upstream()).result.success
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        training = ml.build_training_set(conn, ml.ModelParams(min_positives=1))
    # Purchases run from 2025-01-01 10:00 to 2025-04-01 09:00; the cutoff is 75 % of the way.
    assert training.strategy == ml.TIME_SPLIT
    assert training.cutoff == pd.Timestamp("2025-01-01 10:00") + (pd.Timedelta(days=90) - pd.Timedelta(hours=1)) * 0.75
    profiles = training.profiles
    every = ml.all_rows(training)
    ids = profiles.customer_ids[every.ci]
    cats = np.asarray(profiles.categories)[every.ki]
    rows = sorted(zip(ids, cats, every.label))
    # Before the cutoff: C1 and C2 had Wines and Meat, C3 Wines (C3's Fish came after), C4 nothing
    # but had signed up. Every category a customer lacked at the cutoff is a row; C3's Fish is the one positive.
    assert rows == [
        ("C1", "Fish", False), ("C2", "Fish", False), ("C3", "Fish", True), ("C3", "Meat", False),
        ("C4", "Fish", False), ("C4", "Meat", False), ("C4", "Wines", False),
    ]
    c3 = profiles.customer.iloc[2]
    assert c3.recency_days == 7  # last order 2025-03-02, cutoff on 2025-03-09
    assert c3.log_total_spend == pytest.approx(math.log1p(10))  # the 15 spent on Fish came later
    assert profiles.spend_share[2].tolist() == [0.0, 0.0, 1.0]  # Fish, Meat, Wines


def test_training_and_evaluation_rows_are_drawn_without_listing_every_candidate(sample: Built) -> None:
    """split_customers draws its rows from the candidate masks by rank; the rows must be exactly
    those of listing every candidate row and drawing from the list with the same seeded generator
    (held-out customers first, then the evaluation customers, then the training rows)."""
    with duckdb.connect(str(sample.warehouse), read_only=True) as conn:
        training = ml.build_training_set(conn, ml.ModelParams())
    every = ml.all_rows(training)
    n = training.profiles.shape[0]
    for params in (ml.ModelParams(max_train_rows=5_000, max_eval_customers=100), ml.ModelParams()):
        train, evaluation = ml.split_customers(training, params)
        rng = np.random.default_rng([params.seed, sum(b"split")])
        held_out = rng.random(n) < params.holdout_share
        eval_customers = np.flatnonzero(held_out & (np.bincount(every.ci, minlength=n) > 0))
        if len(eval_customers) > params.max_eval_customers:
            eval_customers = np.sort(rng.choice(eval_customers, params.max_eval_customers, replace=False))
        listed = np.flatnonzero(~held_out[every.ci])
        if len(listed) > params.max_train_rows:
            listed = np.sort(rng.choice(listed, params.max_train_rows, replace=False))
        in_eval = np.isin(every.ci, eval_customers)
        for rows, reference in ((train, listed), (evaluation, np.flatnonzero(in_eval))):
            np.testing.assert_array_equal(rows.ci, every.ci[reference])
            np.testing.assert_array_equal(rows.ki, every.ki[reference])
            np.testing.assert_array_equal(rows.label, every.label[reference])
        assert len(train) == min(params.max_train_rows, int((~held_out[every.ci]).sum()))
        assert train.label.any() and evaluation.label.any()


def test_a_stray_old_date_does_not_move_the_cutoff(sample: Built, tmp_path: Path) -> None:
    """One line typed as 1995 in the sample's two years stretched the span to thirty years, put
    the cutoff in 2018 and switched the model to its fallback. It is left out of the span: same
    cutoff as without it, and the metadata says one line was left out."""
    data = tmp_path / "stray"
    data.mkdir()
    with duckdb.connect() as conn:
        for name in ("customer", "product"):
            conn.execute(f"copy (select * from '{SAMPLE / name}.parquet') to '{data / name}.parquet' (format parquet)")
        conn.execute(
            f"""copy (select * from '{SAMPLE / 'purchase'}.parquet'
                      union all
                      (select * replace ('STRAY-1' as purchase_id, 'STRAY-ORDER' as order_id, timestamp '1995-03-01' as purchase_date)
                       from '{SAMPLE / 'purchase'}.parquet' limit 1))
                to '{data / 'purchase'}.parquet' (format parquet)"""
        )
    built = build(data, tmp_path / "warehouse" / "cross_sell.duckdb", dg.AssetSelection.assets("cross_sell_model").upstream())
    assert built.result.success
    meta, clean = built.metadata("cross_sell_model"), sample.metadata("cross_sell_model")
    assert meta["strategy"] == ml.TIME_SPLIT and meta["cutoff"] == clean["cutoff"]
    assert "1 purchases dated long before the rest" in meta["how_trained"]
    [stray] = read_table(built.warehouse, "model_registry")["metadata"].map(json.loads).map(lambda m: m["stray_lines"])
    assert stray == 1


def test_cross_sectional_fallback_when_dates_do_not_allow(tmp_path: Path) -> None:
    flat = flat_copy(SAMPLE, tmp_path / "flat")
    built = build(flat, tmp_path / "warehouse" / "cross_sell.duckdb")
    assert built.result.success
    meta = built.metadata("cross_sell_model")
    assert meta["strategy"] == ml.CROSS_SECTIONAL and meta["cutoff"] == "none (cross-sectional)"
    assert "span 0.0 days" in meta["how_trained"]
    assert meta["fallback_reason"].startswith("purchase dates span 0.0 days")
    assert meta["model_recall_at_k"] > meta["popularity_recall_at_k"]

    with duckdb.connect(str(built.warehouse), read_only=True) as conn:
        training = ml.build_training_set(conn, ml.ModelParams())
        _, last = purchase_span(conn)
        full = load_profiles(conn, last)
        other_seed = ml.build_training_set(conn, ml.ModelParams(seed=7))
    # Exactly one hidden category per customer who bought anything, one they really bought, and
    # gone from the visible profile the features are computed from.
    label = training.label
    owners = full.owned.any(axis=1)
    assert (label.sum(axis=1) == owners).all()
    assert full.owned[label].all() and not training.profiles.owned[label].any()
    assert (training.profiles.owned | label == full.owned).all()
    # Seeded: another seed hides other categories.
    assert (other_seed.label != label).any()


# ---------------------------------------------------------------------------------------------
# Reproducible, versioned, scoring never retrains


def test_same_input_same_model_and_scores_and_scoring_never_retrains(sample: Built, tmp_path: Path) -> None:
    second = build(SAMPLE, tmp_path / "warehouse" / "cross_sell.duckdb")
    assert second.result.success
    version = sample.metadata("cross_sell_model")["version"]
    assert second.metadata("cross_sell_model")["version"] == version
    first_scores = read_table(sample.warehouse, "cross_sell_scores", "customer_id, product_category")
    second_scores = read_table(second.warehouse, "cross_sell_scores", "customer_id, product_category")
    pd.testing.assert_frame_equal(first_scores, second_scores)

    artifact = second.warehouse.parent / "models" / f"cross_sell_model-{version}.joblib"
    stamp = artifact.stat().st_mtime_ns
    trained_at = read_table(second.warehouse, "model_registry").trained_at.tolist()
    # Scoring alone loads the artifact: nothing is trained or rewritten.
    rescored = build(SAMPLE, second.warehouse, dg.AssetSelection.assets("cross_sell_scores"))
    assert rescored.result.success and rescored.metadata("cross_sell_scores")["model_version"] == version
    assert artifact.stat().st_mtime_ns == stamp
    # The profiles came from the current metrics tables, not from the lines again ...
    assert second.metadata("cross_sell_scores")["profiles_from"] == "customer_metrics and customer_category_matrix"
    assert rescored.metadata("cross_sell_scores")["profiles_from"] == "customer_metrics and customer_category_matrix"
    # ... and once the inputs are published again without rebuilding those, from the lines: the same scores.
    republished = build(SAMPLE, second.warehouse, dg.AssetSelection.assets("customers", "products", "purchases").upstream())
    assert republished.result.success
    stale = build(SAMPLE, second.warehouse, dg.AssetSelection.assets("cross_sell_scores"))
    assert stale.metadata("cross_sell_scores")["profiles_from"] == (
        "purchases (customer_metrics and customer_category_matrix were not rebuilt since the inputs were last published)"
    )
    pd.testing.assert_frame_equal(read_table(second.warehouse, "cross_sell_scores", "customer_id, product_category"), first_scores)
    assert read_table(second.warehouse, "model_registry").trained_at.tolist() == trained_at
    # Materializing the model again on the same data reuses the same version.
    again = build(SAMPLE, second.warehouse, dg.AssetSelection.assets("cross_sell_model"))
    assert again.metadata("cross_sell_model")["reused_artifact"] is True
    assert artifact.stat().st_mtime_ns == stamp
    # Other parameters are another version, and it becomes the current one.
    config = {"ops": {"cross_sell_model": {"config": {"seed": 7}}}}
    other = build(SAMPLE, second.warehouse, dg.AssetSelection.assets("cross_sell_model"), run_config=config)
    other_version = other.metadata("cross_sell_model")["version"]
    assert other_version != version
    registry = read_table(second.warehouse, "model_registry").set_index("version")
    assert registry.is_current.to_dict() == {version: False, other_version: True}

    # Without its artifact, scoring fails clearly and the published scores stay as they were.
    (second.warehouse.parent / "models" / f"cross_sell_model-{other_version}.joblib").unlink()
    failed = build(SAMPLE, second.warehouse, dg.AssetSelection.assets("cross_sell_scores"))
    assert not failed.result.success
    [failure] = failed.result.get_step_failure_events()
    assert "materialize cross_sell_model" in str(failure.event_specific_data.error)
    pd.testing.assert_frame_equal(read_table(second.warehouse, "cross_sell_scores", "customer_id, product_category"), second_scores)


def test_a_model_without_evaluation_evidence_is_reused_too(tiny_data: Path, warehouse_path: Path) -> None:
    """Four customers leave nobody to hold out; the stored (empty) evaluation still loads."""
    first = build(tiny_data, warehouse_path)
    again = build(tiny_data, warehouse_path, dg.AssetSelection.assets("cross_sell_model"))
    assert first.result.success and again.result.success
    assert again.metadata("cross_sell_model")["reused_artifact"] is True
    [check] = [e for e in again.result.get_asset_check_evaluations() if e.check_name == "beats_popularity"]
    assert check.passed and not check.metadata["comparable"].value and "not enough evidence" in check.description


CUSTOMER_HEADER = "customer_id,first_name,last_name,email,phone,birth_year,education,marital_status,income,country,signup_date\n"


def small_world(folder: Path, customers: int, categories: int, bought: Callable[[int, int], bool], idle: int = 0) -> Path:
    """``customers`` customers (plus ``idle`` who never bought) and one product per category;
    customer c bought category k, on its own day, when ``bought(c, k)``."""
    folder.mkdir(parents=True)
    people = [f"C{c}" for c in range(customers + idle)]
    (folder / "customer.csv").write_text(
        CUSTOMER_HEADER + "".join(f"{p},Ann,Lee,{p.lower()}@example.com,,1980,,,,US,2024-01-01\n" for p in people)
    )
    (folder / "product.csv").write_text(
        "product_id,product_name,product_category,price\n" + "".join(f"P{k},Item {k},Cat{k},10\n" for k in range(categories))
    )
    lines = [(c, k) for c in range(customers) for k in range(categories) if bought(c, k)]
    (folder / "purchase.csv").write_text(
        "purchase_id,order_id,customer_id,product_id,purchase_date,quantity,amount,channel\n"
        + "".join(
            f"L{i},O{i},C{c},P{k},2025-{1 + (c + k) % 12:02d}-{1 + (3 * c + k) % 28:02d},1,10,web\n"
            for i, (c, k) in enumerate(lines)
        )
    )
    return folder


@pytest.mark.parametrize(
    ("customers", "categories", "idle", "bought"),
    [
        pytest.param(1, 1, 0, lambda c, k: True, id="one customer, one product, one purchase"),
        pytest.param(3, 2, 0, lambda c, k: True, id="everyone bought everything, 3 x 2"),
        pytest.param(10, 3, 0, lambda c, k: True, id="everyone bought everything, 10 x 3"),
        pytest.param(40, 1, 2, lambda c, k: True, id="one category, two customers never bought"),
        pytest.param(12, 4, 3, lambda c, k: True, id="everyone who bought bought everything"),
    ],
)
def test_a_world_with_one_kind_of_label_still_scores(
    tmp_path: Path, customers: int, categories: int, idle: int, bought: Callable[[int, int], bool]
) -> None:
    """When every training label is the same (nobody, or everybody, bought a new category), the
    model is the observed rate and the graph still publishes: a score for every customer and
    category not bought yet, and never a category the customer already has."""
    data = small_world(tmp_path / "input", customers, categories, bought, idle)
    built = build(data, tmp_path / "warehouse" / "cross_sell.duckdb", selection=dg.AssetSelection.all())
    failures = [e.event_specific_data.error.message for e in built.result.get_step_failure_events()]
    assert built.result.success, failures
    scores = read_table(built.warehouse, "cross_sell_scores")
    owned = {(f"C{c}", f"Cat{k}") for c in range(customers) for k in range(categories) if bought(c, k)}
    expected = {(f"C{c}", f"Cat{k}") for c in range(customers + idle) for k in range(categories)} - owned
    assert set(zip(scores["customer_id"], scores["product_category"])) == expected
    assert scores["score"].between(0, 1).all()
    recommendations = read_table(built.warehouse, "cross_sell_recommendations")
    assert not set(zip(recommendations["customer_id"], recommendations["product_category"])) & owned
    assert built.metadata("cross_sell_model")["estimator"] == "prior"


def test_a_category_nobody_bought_is_scored_but_never_offered(tmp_path: Path) -> None:
    """A new category on the shelf (a product nobody has bought) gets a score for every customer,
    since nobody has it, but no recommendation, whose reason would have to say "0% buy it"."""
    data = write_tiny_dataset(tmp_path / "input")
    products = data / "product.csv"
    products.write_text(products.read_text() + "P9,Olive oil,Oils,12\n")
    built = build(data, tmp_path / "warehouse" / "cross_sell.duckdb")
    assert built.result.success
    scores = read_table(built.warehouse, "cross_sell_scores")
    assert sorted(scores.loc[scores["product_category"] == "Oils", "customer_id"]) == ["C1", "C2", "C3", "C4"]
    recommendations = read_table(built.warehouse, "cross_sell_recommendations")
    assert len(recommendations) and "Oils" not in set(recommendations["product_category"])
    assert not recommendations["reason"].str.contains(r"(?<![0-9])0% of customers").any()


def test_train_and_score_from_warehouse_tables(sample: Built, tmp_path: Path) -> None:
    """The plain function a benchmark calls: trains (or reuses), saves and scores everyone."""
    params = ml.ModelParams(max_train_rows=5_000)
    with duckdb.connect(str(sample.warehouse), read_only=True) as conn:
        model, scored, timings = ml.train_and_score(conn, params, tmp_path / "models")
        reused, _, _ = ml.train_and_score(conn, params, tmp_path / "models")
    assert model.metadata["training_rows"] == 5_000 and not model.reused and reused.reused
    assert model.artifact.parent == tmp_path / "models" and reused.version == model.version
    n, k = scored.profiles.shape
    assert len(scored.frame) == n * k - int(scored.profiles.owned.sum())
    assert {"train_s", "score_s", "fit_s"} <= set(timings)


def test_null_amounts_count_as_no_spend(sample: Built, tmp_path: Path) -> None:
    """A basket log carries no prices: NULL amounts are no spend (0 spend, 0 shares), and the
    model still trains, evaluates and scores everyone."""
    with duckdb.connect(str(tmp_path / "baskets.duckdb")) as conn:
        conn.execute(f"attach '{sample.warehouse}' as src (read_only)")
        conn.execute("create table customers as select * from src.customers")
        conn.execute("create table products as select * from src.products")
        conn.execute("create table purchases as select * replace (null::double as amount) from src.purchases")
        conn.execute("detach src")
        _, last = purchase_span(conn)
        profiles = load_profiles(conn, last)
        assert (profiles.spend_share == 0).all() and (profiles.customer.log_total_spend == 0).all()
        assert (profiles.customer.log_avg_order_value == 0).all() and profiles.owned.any()
        model = ml.train(conn, ml.ModelParams(max_train_rows=5_000))
        scored = ml.score(conn, model)
    n, k = profiles.shape
    assert len(scored.score) == n * k - int(profiles.owned.sum())
    assert np.isfinite(scored.score).all() and ((scored.score >= 0) & (scored.score <= 1)).all()
    assert model.evaluation.metric(ev.MODEL, "roc_auc") > 0.5


def test_table_scores_are_the_model_probabilities(sample: Built) -> None:
    """The lookup tables the default model scores with give exactly what predict_proba gives."""
    with duckdb.connect(str(sample.warehouse), read_only=True) as conn:
        model = ml.load(ml.current_artifact(conn, sample.warehouse.parent / "models"))
        _, last = purchase_span(conn)
        profiles = load_profiles(conn, last)
    assert model.tables is not None and model.metadata["scoring"].startswith("additive tables")
    pairs = pair_features(profiles, rule_statistics(profiles.owned))
    ci, ki = np.nonzero(~profiles.owned)
    exact = ml.predict(model, profiles, pairs, ci.astype(np.int32), ki.astype(np.int32))
    fast = ml.predict_rows(model, profiles, pairs, ci, ki)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-12)
    # The trees really combine the candidate category with one other feature at most.
    trees = model.estimator.calibrated_classifiers_[0].estimator
    trees = getattr(trees, "estimator", trees)  # unwrap FrozenEstimator (large training sets)
    assert trees.interaction_cst == [[0, j] for j in range(1, len(model.encoder.names))]


def test_scores_gate_in_slices_is_the_whole_frame_check() -> None:
    """The scores' contract gate runs over slices, with uniqueness proven on the codes when rows
    are in (customer, category) order; a duplicate pair or a score out of range is caught wherever
    it sits, and rows out of order are checked at once, uniqueness included."""
    from types import SimpleNamespace

    from cross_sell.scoring.assets import gate_scores

    profiles = SimpleNamespace(customer_ids=np.array([f"C{i}" for i in range(50)], dtype=object), categories=["A", "B", "C"])
    ci = np.repeat(np.arange(50, dtype=np.int32), 3)
    ki = np.tile(np.arange(3, dtype=np.int8), 50)
    score = np.linspace(0, 1, len(ci))

    def gate(ci, ki, score):
        return gate_scores(ml.Scored(ci=ci, ki=ki, score=score, profiles=profiles), chunk_rows=20)

    passed = gate(ci, ki, score)
    assert passed.passed and passed.metadata["rows_checked"].value == 150
    duplicate = ki.copy()
    duplicate[100] = duplicate[101]  # customer 33 gets category B twice, inside one slice
    failed = gate(ci, duplicate, score)
    assert not failed.passed and "unique" in failed.description.lower()
    out_of_range = score.copy()
    out_of_range[149] = 1.5
    assert not gate(ci, ki, out_of_range).passed
    shuffled = np.r_[ci[75:], ci[:75]]  # not in customer order: one whole-frame check
    assert gate(shuffled, ki, score).passed
    repeated = np.r_[ci[75:], ci[:75]]
    repeated[-1] = repeated[-4]  # the last row becomes customer 23 and category C a second time
    failed = gate(repeated, ki, score)
    assert not failed.passed and "unique" in failed.description.lower()


# ---------------------------------------------------------------------------------------------
# Metrics and reasons, worked by hand


def test_ranking_metrics_by_hand() -> None:
    # Customer 0 lacks categories 0..3 and bought 1 and 3; customer 1 lacks 0..2 and bought none.
    score = np.array([[0.9, 0.8, 0.1, 0.7], [0.5, 0.4, 0.3, np.nan]])
    label = np.array([[False, True, False, True], [False, False, False, False]])
    recall, precision, customers = ev.ranking_metrics(score, label, k=2)
    # Top 2 of customer 0: categories 0 and 1 -> one hit of two bought, one of two offered.
    assert (recall, precision, customers) == (0.5, 0.5, 1)
    recall, precision, _ = ev.ranking_metrics(score, label, k=3)
    assert recall == 1.0 and precision == pytest.approx(2 / 3)
    # Calibration error: bins of equal count; perfectly calibrated scores give 0.
    assert ev.calibration_error(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 1.0]), bins=2) == 0
    assert ev.calibration_error(np.array([0.5, 0.5]), np.array([1.0, 1.0]), bins=1) == 0.5


def test_evaluate_scores_every_scorer_on_the_same_rows() -> None:
    ci = np.array([0, 0, 1, 1, 2, 2])
    ki = np.array([0, 1, 0, 1, 0, 1])
    label = np.array([True, False, False, True, False, False])
    scores = {"model": np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.2]), "popularity": np.array([0.6, 0.3, 0.6, 0.3, 0.6, 0.3])}
    result = ev.evaluate(scores, ci, ki, label, ["A", "B"], k=1)
    summary = result.summary.set_index("scorer")
    assert summary.loc["model", "recall_at_k"] == 1.0 and summary.loc["popularity", "recall_at_k"] == 0.5
    assert summary.loc["model", "roc_auc"] == 1.0
    assert result.by_category.auc_popularity.tolist() == [0.5, 0.5]
    assert (result.customers, result.customers_with_new_category, result.positives) == (3, 2, 2)
    long = result.long_format()
    assert set(long.metric) >= {"roc_auc", "recall_at_k", "precision_at_k", "brier", "calibration_error"}


def test_reasons_name_a_rule_that_raises_the_odds_and_the_model_view() -> None:
    owned = np.array([[True, False, False], [False, False, False]])
    lift = np.array([[0.0, 1.8, 0.9], [1.8, 0.0, 1.0], [0.9, 1.0, 0.0]])
    behind = reason_rules(owned, lift)
    assert behind[0].tolist() == [NO_RULE, 0, NO_RULE]  # A -> C has lift 0.9: no reason
    assert (behind[1] == NO_RULE).all()
    reasons = recommendation_reasons(
        np.array([0, NO_RULE, NO_RULE, NO_RULE]), np.array([1, 2, 0, 1]), np.array([0.42, 0.003, 0.1, 0.996]),
        ["A", "B", "C"], lift, np.array([0.5, 0.9996, 0.2]), np.array([0.1, 0.18, 0.05]), 182.4,
    )
    assert list(reasons) == [
        "bought A; A \u2192 B, lift 1.80; model: 42% within 182 days (typical 18%)",
        "popular: 20% of customers buy C; model: <1% within 182 days (typical 5%)",
        "popular: 50% of customers buy A; model: 10% within 182 days (typical 10%)",
        # Shares short of everyone never read 100% (the one customer in 2,500 who lacks B sees this).
        "popular: >99% of customers buy B; model: 99% within 182 days (typical 18%)",
    ]


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="cutoff_quantile"):
        ml.ModelParams(cutoff_quantile=1.0)
    with pytest.raises(ValueError, match="estimator"):
        ml.ModelParams(estimator="forest")


# ---------------------------------------------------------------------------------------------
# The evaluation command


def test_evaluate_command_on_a_warehouse_matches_the_asset(sample: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_main(["--warehouse", str(sample.warehouse)]) == 0
    out = capsys.readouterr().out
    meta = sample.metadata("cross_sell_model")
    assert f"model version {meta['version']}" in out  # same data, same parameters: the same model
    [model_line] = [line for line in out.splitlines() if line.startswith("model ")]
    assert f"{meta['model_recall_at_k']:.3f}" in model_line and f"{meta['model_roc_auc']:.3f}" in model_line
    assert "recall@3" in out and "precision@3" in out and "ROC AUC per category" in out
    with duckdb.connect(str(sample.warehouse), read_only=True) as conn:
        assert conn.execute("select count(*) from model_registry").fetchall() == [(1,)]  # nothing was registered


@pytest.mark.slow
def test_evaluate_command_reads_input_through_the_ingest(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"  # the command's temporary warehouse goes here, and must be gone after
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSS_SELL_")}
    env.update(PYTHONWARNINGS="ignore", TMPDIR=str(scratch))
    done = subprocess.run(
        [sys.executable, "-m", "cross_sell.evaluate", "--data-dir", str(SAMPLE), "--k", "5"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    table = [line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["model"], ["affinity_rules"], ["popularity"])]
    assert [row[0] for row in table[:3]] == ["model", "affinity_rules", "popularity"]
    assert "recall@5" in done.stdout and "time split" in done.stdout
    assert float(table[0][3]) > float(table[2][3])  # recall@5: model above popularity

    # Input that fails a gate is reported, not evaluated, and nothing is left behind.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "customer.csv").write_text("customer_id,first_name\nC1,Ann\nC1,Bob\n")
    (broken / "product.csv").write_text("product_id,product_name,product_category\nP1,Wine,Wines\n")
    (broken / "purchase.csv").write_text(
        "purchase_id,order_id,customer_id,product_id,purchase_date,quantity,amount\nL1,O1,C1,P1,2025-01-01,1,10\n"
    )
    failed = subprocess.run(
        [sys.executable, "-m", "cross_sell.evaluate", "--data-dir", str(broken)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert failed.returncode == 2
    assert "could not be published" in failed.stderr and "customers" in failed.stderr
    # The report is the command's own: one line per failed gate, no Dagster event stream or trace.
    assert "Stack Trace" not in failed.stderr and "STEP_FAILURE" not in failed.stderr, failed.stderr
    assert "DagsterAssetCheckFailedError" not in failed.stderr, failed.stderr
    problems = failed.stderr.split("could not be published:", 1)[1].strip().splitlines()
    assert problems and all(line.strip().startswith("gate audit/customers:") for line in problems), failed.stderr
    assert not list(scratch.iterdir())


def test_evaluate_command_takes_the_date_format_of_a_spend_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real spend summary with its dates written dd.mm.yyyy: the command says which of its
    options to set, and reads the file with it."""
    source = SHARED_DATASETS / "marketing_campaign.csv"
    text = source.read_text()
    dotted = tmp_path / "marketing_campaign.csv"
    frame = pd.read_csv(source, sep="\t", dtype=str, keep_default_na=False)
    frame["Dt_Customer"] = frame["Dt_Customer"].str.replace("-", ".", regex=False)
    frame.to_csv(dotted, sep="\t", index=False)
    assert "." in frame["Dt_Customer"].iloc[0] and text.count("\n") == len(frame) + 1
    args = ["--data-dir", str(dotted), "--input-format", "spend_summary"]
    assert evaluate_main(args) == 2
    error = capsys.readouterr().err
    assert "date_format" in error and "(this command takes them as --date-format and --as-of-date)" in error
    assert evaluate_main([*args, "--date-format", "%d.%m.%Y"]) == 0
    assert "recall@" in capsys.readouterr().out


def test_share_columns_are_kept_for_the_categories_most_customers_bought() -> None:
    """Two share features per category, for at most MAX_SHARE_CATEGORIES categories: those bought by
    the most customers (ties by name), in category order; a small catalogue keeps every category."""
    from cross_sell.scoring.design import MAX_SHARE_CATEGORIES, share_categories
    from cross_sell.scoring.features import Profiles

    rng = np.random.default_rng(5)
    k = MAX_SHARE_CATEGORIES + 12
    categories = [f"cat{j:02d}" for j in range(k)]
    buyers = rng.permutation(np.repeat(np.arange(1, k // 2 + 1), 2))  # every count twice: ties to break by name
    owned = np.arange(k // 2 + 1)[:, None] < buyers[None, :]  # category j bought by the first buyers[j] customers
    n = owned.shape[0]
    zeros = np.zeros(owned.shape, dtype=np.float32)
    profiles = Profiles(
        customer_ids=np.asarray([f"C{i}" for i in range(n)], dtype=object), categories=categories,
        as_of=pd.Timestamp("2025-01-01"), owned=owned, spend_share=zeros, order_share=zeros,
        customer=pd.DataFrame(index=range(n)), active=np.ones(n, dtype=bool), bought_after=np.zeros(owned.shape, dtype=bool),
    )
    by_hand = pd.DataFrame({"category": categories, "buyers": owned.sum(axis=0)})
    kept = set(by_hand.sort_values(["buyers", "category"], ascending=[False, True])["category"].head(MAX_SHARE_CATEGORIES))
    assert share_categories(profiles) == [c for c in categories if c in kept]
    assert len(kept) == MAX_SHARE_CATEGORIES and min(by_hand["buyers"][by_hand["category"].isin(kept)]) >= max(
        by_hand["buyers"][~by_hand["category"].isin(kept)]
    )
    assert share_categories(profiles, limit=k) == categories
