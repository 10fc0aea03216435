"""The held-out evaluation's metrics against scikit-learn and plain reference computations:
tied scores, scores outside 0..1, categories without positives."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cross_sell.scoring import evaluation as ev


def reference_calibration_error(probability: np.ndarray, label: np.ndarray, bins: int = 10) -> float:
    order = np.argsort(probability, kind="stable")
    total = 0.0
    for group in np.array_split(order, bins):
        total += abs(probability[group].mean() - label[group].mean()) * len(group)
    return total / len(probability)


@pytest.mark.parametrize("outside", [False, True], ids=["within 0..1", "some scores outside 0..1"])
def test_evaluate_matches_sklearn_and_references(outside: bool) -> None:
    rng = np.random.default_rng(3)
    customers, categories = 4_000, 7
    ci = np.repeat(np.arange(customers), categories)
    ki = np.tile(np.arange(categories), customers)
    keep = rng.random(len(ci)) < 0.8  # customers lack different categories
    ci, ki = ci[keep], ki[keep]
    label = rng.random(len(ci)) < 0.05 + 0.04 * ki
    label[ki == 6] = False  # a category nobody bought: its AUC is undefined
    score = np.round(rng.random(len(ci)) * 0.5 + 0.4 * label, 2)  # rounded: many ties
    if outside:
        score[:50] = -0.2
        score[50:100] = 1.3
    names = [f"c{i}" for i in range(categories)]

    evaluation = ev.evaluate({"model": score}, ci, ki, label, names, k=3)
    row = evaluation.summary.set_index("scorer").loc["model"]

    assert row["roc_auc"] == pytest.approx(roc_auc_score(label, score), abs=1e-12)
    by_category = evaluation.by_category.set_index("category")["auc_model"]
    for k in range(categories - 1):
        mine = ki == k
        assert by_category[f"c{k}"] == pytest.approx(roc_auc_score(label[mine], score[mine]), abs=1e-12)
    assert np.isnan(by_category["c6"])
    clipped = np.clip(score, 0.0, 1.0)
    assert row["calibration_error"] == pytest.approx(reference_calibration_error(clipped, label.astype(float)), abs=1e-12)
    assert row["brier"] == pytest.approx(np.mean((clipped - label) ** 2), abs=1e-12)


def test_grouped_auc_with_a_given_order_is_the_same() -> None:
    rng = np.random.default_rng(5)
    score = np.round(rng.random(10_000), 3)
    label = rng.random(10_000) < score
    group = rng.integers(0, 5, 10_000)
    plain = ev.grouped_auc(label, score, group, 5)
    given = ev.grouped_auc(label, score, group, 5, np.argsort(score, kind="stable"))
    np.testing.assert_allclose(plain, given, rtol=0, atol=1e-15)
    assert ev.calibration_error(score, label.astype(float), order=np.argsort(score, kind="stable")) == pytest.approx(
        ev.calibration_error(score, label.astype(float)), abs=0
    )


@pytest.mark.parametrize("distinct", [3, 40, 100_000])
def test_calibration_bins_are_those_of_a_stable_sort_whatever_the_ties(distinct: int) -> None:
    rng = np.random.default_rng(distinct)
    score = rng.integers(0, distinct, 9_999) / distinct  # ties straddle the bin boundaries
    label = (rng.random(9_999) < score).astype(float)
    expected = reference_calibration_error(score, label)
    assert ev.calibration_error(score, label) == pytest.approx(expected, abs=1e-12)
    shuffled_ties = np.argsort(score, kind="stable")[::-1][np.argsort(score[np.argsort(score, kind="stable")[::-1]], kind="stable")]
    assert ev.calibration_error(score, label, order=shuffled_ties) == pytest.approx(expected, abs=1e-12)
