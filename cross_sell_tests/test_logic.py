"""Pure functions on tiny tables, with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cross_sell.affinity.logic import MASK_ITEMS, association_rules, association_rules_from_masks, co_occurrence
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


def _pair_counts_by_set(tx: np.ndarray, items: np.ndarray, n_items: int) -> tuple[np.ndarray, int]:
    """Pair counts the slow, obvious way: each transaction's set of items, every pair counted."""
    counts = np.zeros((n_items, n_items), dtype=np.int64)
    baskets: dict[int, set[int]] = {}
    for t, i in zip(tx.tolist(), items.tolist()):
        baskets.setdefault(t, set()).add(i)
    for basket in baskets.values():
        for a in basket:
            for b in basket:
                counts[a, b] += 1
    return counts, len(baskets)


@pytest.mark.parametrize("n_items", [1, 7, 8, 9, 30, MASK_ITEMS, MASK_ITEMS + 1, 100])
@pytest.mark.parametrize("repeats", [False, True])
def test_pair_counts_match_counting_by_hand(n_items: int, repeats: bool) -> None:
    # Bit masks (up to MASK_ITEMS items, no repeated pair) and the sparse product (more items, or
    # a repeated pair) must both count exactly what counting basket by basket counts.
    rng = np.random.default_rng(n_items)
    tx, items = rng.integers(0, 300, 2000), rng.integers(0, n_items, 2000)
    if not repeats:
        key = np.unique(tx * n_items + items)
        tx, items = key // n_items, key % n_items
    tx = tx * 7 + 5  # codes with gaps, as a warehouse encoding may give
    pairs, n_tx = co_occurrence(tx, items, n_items)
    expected, expected_tx = _pair_counts_by_set(tx, items, n_items)
    assert n_tx == expected_tx
    np.testing.assert_array_equal(pairs.toarray(), expected)


def test_rules_come_sorted_by_lift_then_support_then_names() -> None:
    # Few transactions make many ties in lift and support; names out of alphabetical order (and
    # not in code order) make the name tie-break visible.
    rng = np.random.default_rng(5)
    tx, items = rng.integers(0, 12, 60), rng.integers(0, 6, 60)
    names = ["delta", "Alpha", "charlie", "bravo", "echo", "alpha"]
    rules = association_rules(tx, items, names)
    expected = rules.sort_values(
        ["lift", "support", "antecedent", "consequent"], ascending=[False, False, True, True], kind="stable"
    ).reset_index(drop=True)
    pd.testing.assert_frame_equal(rules, expected)
    assert rules.duplicated(["lift", "support"]).any() and rules.index.equals(pd.RangeIndex(len(rules)))


def test_rules_from_distinct_masks_equal_rules_from_pairs() -> None:
    # customers: {A,B}, {A,B}, {A,C}, {B}, as masks A=1, B=2, C=4 counted once per distinct set.
    names = ["A", "B", "C"]
    from_pairs = _rules([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2), (3, 1)], names)
    from_masks = association_rules_from_masks(np.array([3, 5, 2], dtype=np.uint64), np.array([2, 1, 1]), names)
    pd.testing.assert_frame_equal(from_masks, from_pairs)


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
    assert texts[codes[0]] == "bought Wines; Wines \u2192 Meat, lift 1.80"
    assert texts[codes[1]] == "popular: 25% of customers buy Wines"
