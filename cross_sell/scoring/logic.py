"""Cross-sell scores from the affinity rules: vectorised over customers, looping only over categories.

For customer c and a category b that c has not bought yet:

* ``score(c, b) = max over categories a that c has bought of confidence(a -> b)``: the strongest
  rule the customer's own history triggers, read as the probability of buying b;
* when no kept rule leads to b (or c has bought nothing), ``score(c, b) = P(b)``: the share of
  buying customers who have b (popularity).

Every score is a probability in [0, 1]. The rule behind each score is kept, so each
recommendation can say why: "bought Wines; Wines -> Meat, lift 1.8".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

NO_RULE = -1


@dataclass(frozen=True)
class RuleScores:
    """score[c, b] (NaN where c already has b) and the antecedent category behind it (-1 = popularity)."""

    score: np.ndarray
    antecedent: np.ndarray


def rule_matrices(rules: pd.DataFrame, categories: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Dense k x k confidence and lift matrices (0 where no rule was kept)."""
    k = len(categories)
    position = {name: i for i, name in enumerate(categories)}
    confidence = np.zeros((k, k), dtype=np.float64)
    lift = np.zeros((k, k), dtype=np.float64)
    if len(rules):
        a = rules["antecedent"].map(position).to_numpy()
        b = rules["consequent"].map(position).to_numpy()
        known = ~(pd.isna(a) | pd.isna(b))
        a, b = a[known].astype(np.int64), b[known].astype(np.int64)
        confidence[a, b] = rules["confidence"].to_numpy()[known]
        lift[a, b] = rules["lift"].to_numpy()[known]
    return confidence, lift


def rule_scores(owned: np.ndarray, confidence: np.ndarray, base_rate: np.ndarray) -> RuleScores:
    """Score every (customer, category) pair from the customer's categories and the rules."""
    n, k = owned.shape
    best = np.full((n, k), -1.0, dtype=np.float64)
    antecedent = np.full((n, k), NO_RULE, dtype=np.int32)
    for a in range(k):  # k categories, each step vectorised over all customers
        holders = np.flatnonzero(owned[:, a])
        if holders.size == 0:
            continue
        candidate = np.where(confidence[a] > 0, confidence[a], -1.0)
        current = best[holders]
        better = candidate[None, :] > current
        best[holders] = np.where(better, candidate[None, :], current)
        antecedent[holders] = np.where(better, a, antecedent[holders])
    score = np.where(antecedent == NO_RULE, base_rate[None, :], best)
    score = np.clip(score, 0.0, 1.0)
    score[owned] = np.nan
    antecedent[owned] = NO_RULE
    return RuleScores(score=score, antecedent=antecedent)


def top_n(score: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best ``n`` unbought categories per customer: (customer index, rank 1..n, category index).

    Ties go to the category that sorts first by name (categories are indexed in name order)."""
    masked = np.where(np.isnan(score), -np.inf, score)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :n]
    chosen = np.take_along_axis(masked, order, axis=1)
    valid = np.isfinite(chosen)
    customers = np.repeat(np.arange(score.shape[0]), order.shape[1]).reshape(order.shape)
    ranks = np.tile(np.arange(1, order.shape[1] + 1), (score.shape[0], 1))
    return customers[valid], ranks[valid], order[valid]


def reason_texts(categories: list[str], lift: np.ndarray, base_rate: np.ndarray) -> list[str]:
    """All possible reasons, indexed ``a * k + b`` for rule a -> b and ``k * k + b`` for popularity b."""
    k = len(categories)
    texts = [
        f"bought {categories[a]}; {categories[a]} \u2192 {categories[b]}, lift {lift[a, b]:.1f}"
        for a in range(k) for b in range(k)
    ]
    texts += [f"popular: {base_rate[b]:.0%} of customers buy {categories[b]}" for b in range(k)]
    return texts


def reason_codes(antecedent: np.ndarray, category: np.ndarray, k: int) -> np.ndarray:
    """Index into :func:`reason_texts` for each (rule antecedent, category) pair."""
    return np.where(antecedent == NO_RULE, k * k + category, antecedent * k + category)
