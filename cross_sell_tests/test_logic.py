"""Pure functions on tiny tables, with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cross_sell.affinity.logic import association_rules
from cross_sell.scoring.logic import NO_RULE, reason_codes, reason_texts, rule_matrices, rule_scores, top_n


def _rules(pairs: list[tuple[int, int]], names: list[str], **kwargs) -> pd.DataFrame:
    tx = np.array([p[0] for p in pairs])
    items = np.array([p[1] for p in pairs])
    return association_rules(tx, items, names, **kwargs)


def test_three_customer_affinity_by_hand() -> None:
    # customer 0 has A and B, customer 1 has A and B (bought B twice), customer 2 has only C.
    names = ["A", "B", "C"]
    rules = _rules([(0, 0), (0, 1), (1, 0), (1, 1), (1, 1), (2, 2)], names)
    got = {(r.antecedent, r.consequent): r for r in rules.itertuples()}
    # Only A and B co-occur: both directions, nothing involving C.
    assert set(got) == {("A", "B"), ("B", "A")}
    ab = got[("A", "B")]
    assert ab.pair_count == 2 and ab.antecedent_count == 2 and ab.consequent_count == 2 and ab.transactions == 3
    assert ab.support == pytest.approx(2 / 3)  # 2 of 3 customers have A and B
    assert ab.confidence == pytest.approx(1.0)  # everyone with A has B
    assert ab.lift == pytest.approx(1.5)  # 1.0 / P(B) = 1 / (2/3)
    assert got[("B", "A")].lift == pytest.approx(1.5)


def test_asymmetric_confidence_and_lift_consistent_with_definition() -> None:
    # customers: {A,B}, {A,B}, {A,C}, {B}
    names = ["A", "B", "C"]
    rules = _rules([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2), (3, 1)], names)
    got = {(r.antecedent, r.consequent): r for r in rules.itertuples()}
    assert got[("A", "B")].confidence == pytest.approx(2 / 3)
    assert got[("B", "A")].confidence == pytest.approx(2 / 3)
    assert got[("C", "A")].confidence == pytest.approx(1.0)
    assert got[("A", "C")].confidence == pytest.approx(1 / 3)
    assert got[("A", "B")].lift == pytest.approx((2 / 3) / (3 / 4))
    assert got[("C", "A")].lift == pytest.approx(1.0 / (3 / 4))
    for r in rules.itertuples():
        assert r.lift == pytest.approx(r.confidence / (r.consequent_count / r.transactions))
        assert got[(r.consequent, r.antecedent)].pair_count == r.pair_count


def test_min_support_drops_both_directions() -> None:
    names = ["A", "B", "C"]
    rules = _rules([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2), (3, 1)], names, min_support=0.3)
    assert set(zip(rules.antecedent, rules.consequent)) == {("A", "B"), ("B", "A")}


def test_no_transactions_gives_empty_rules_with_columns() -> None:
    rules = association_rules(np.array([], dtype=int), np.array([], dtype=int), ["A"])
    assert rules.empty and "lift" in rules.columns


def test_rule_scores_max_confidence_or_popularity() -> None:
    categories = ["Fish", "Meat", "Wines"]
    rules = pd.DataFrame(
        {"antecedent": ["Wines", "Meat", "Wines"], "consequent": ["Meat", "Wines", "Fish"],
         "confidence": [2 / 3, 1.0, 1 / 3], "lift": [1.0, 1.0, 1.0]}
    )
    confidence, lift = rule_matrices(rules, categories)
    owned = np.array([[False, True, True], [True, False, True], [False, False, False]])
    base_rate = np.array([1 / 3, 2 / 3, 1.0])
    scored = rule_scores(owned, confidence, base_rate)
    # customer 0 has Meat and Wines: Fish only via Wines -> Fish
    assert scored.score[0, 0] == pytest.approx(1 / 3) and scored.antecedent[0, 0] == 2
    assert math.isnan(scored.score[0, 1]) and math.isnan(scored.score[0, 2])
    # customer 1 has Fish and Wines: Meat via Wines -> Meat
    assert scored.score[1, 1] == pytest.approx(2 / 3) and scored.antecedent[1, 1] == 2
    # customer 2 has nothing: popularity everywhere, no rule behind it
    np.testing.assert_allclose(scored.score[2], base_rate)
    assert (scored.antecedent[2] == NO_RULE).all()


def test_top_n_skips_bought_and_breaks_ties_by_name_order() -> None:
    score = np.array([[0.2, np.nan, 0.2, 0.9], [np.nan, np.nan, np.nan, np.nan]])
    customers, ranks, categories = top_n(score, 3)
    assert customers.tolist() == [0, 0, 0]
    assert ranks.tolist() == [1, 2, 3]
    assert categories.tolist() == [3, 0, 2]


def test_reasons_name_the_rule_or_popularity() -> None:
    categories = ["Meat", "Wines"]
    lift = np.array([[0.0, 1.25], [1.8, 0.0]])
    texts = reason_texts(categories, lift, np.array([0.5, 0.25]))
    codes = reason_codes(np.array([1, NO_RULE]), np.array([0, 1]), 2)
    assert texts[codes[0]] == "bought Wines; Wines \u2192 Meat, lift 1.8"
    assert texts[codes[1]] == "popular: 25% of customers buy Wines"
