"""How good a cross-sell scorer is, measured the same way for the model and its baselines.

All scorers are scored on the same held-out rows: (customer, category the customer did not have
at the cutoff), labelled 1 when the customer bought it afterwards. Metrics:

* **ROC AUC per category**: how well the scorer ranks the customers who lack a category, buyers
  of it first. A scorer that gives every customer the same score for a category (popularity)
  gets 0.5 there. Also the macro average over categories and the pooled AUC over all rows.
* **recall@k / precision@k**: for every held-out customer who bought at least one new category,
  the top k categories by score (among those they lacked): the share of their new categories
  that are in it (recall) and the share of it that they bought (precision), averaged over those
  customers.
* **Brier score** and **calibration error** (the gap between mean score and observed rate in ten
  equal-count score bins, weighted): whether a score of 0.3 means 30 %.

The two baselines:

* **popularity**: the categories most customers have, that the customer lacks;
* **affinity rules**: the max confidence P(b | a) over the categories a the customer has (rules
  under the minimum support are dropped, as in ``product_affinity``), popularity when no rule applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cross_sell.parallel import for_each_slice
from cross_sell.scoring.logic import top_n

MODEL = "model"
AFFINITY = "affinity_rules"
POPULARITY = "popularity"
SCORERS = (MODEL, AFFINITY, POPULARITY)


@dataclass(frozen=True)
class Evaluation:
    """Every metric of every scorer on one held-out set."""

    k: int
    summary: pd.DataFrame  # one row per scorer: roc_auc, macro_category_auc, recall_at_k, precision_at_k, brier, calibration_error
    by_category: pd.DataFrame  # one row per category: rows, positives, auc per scorer
    customers: int  # held-out customers
    customers_with_new_category: int
    rows: int
    positives: int

    def metric(self, scorer: str, name: str) -> float:
        return float(self.summary.set_index("scorer").loc[scorer, name])

    def long_format(self) -> pd.DataFrame:
        """scorer, metric, category ('' for overall), value: how the warehouse stores it."""
        overall = self.summary.melt(id_vars="scorer", var_name="metric", value_name="value").assign(category="")
        auc_columns = [f"auc_{s}" for s in SCORERS if f"auc_{s}" in self.by_category]
        per_category = self.by_category.melt(
            id_vars="category", value_vars=auc_columns, var_name="scorer", value_name="value"
        ).assign(metric="roc_auc", scorer=lambda d: d["scorer"].str.removeprefix("auc_"))
        frame = pd.concat([overall, per_category], ignore_index=True)[["scorer", "metric", "category", "value"]]
        return frame.astype({"value": float})


def ranking_metrics(score: np.ndarray, label: np.ndarray, k: int) -> tuple[float, float, int]:
    """(recall@k, precision@k, customers averaged over) for a customers x categories score matrix
    (NaN = not a candidate) and a boolean matrix of what each customer went on to buy."""
    buyers = label.any(axis=1)
    if not buyers.any():
        return float("nan"), float("nan"), 0
    rows, _, cols = top_n(score[buyers], k)
    hits = np.bincount(rows, weights=label[buyers][rows, cols].astype(np.float64), minlength=int(buyers.sum()))
    recommended = np.bincount(rows, minlength=int(buyers.sum()))
    positives = label[buyers].sum(axis=1)
    recall = hits / positives
    precision = np.divide(hits, np.maximum(recommended, 1))
    return float(recall.mean()), float(precision.mean()), int(buyers.sum())


def _bin_order(probability: np.ndarray, bins: int, order: np.ndarray | None) -> np.ndarray:
    """An argsort of ``probability`` that puts the same rows into each of ``bins`` equal-count bins
    as a stable sort would, from any argsort (``order``) or a fresh quick sort. Only a run of equal
    scores that straddles a bin boundary needs the stable order (by row index), so only those runs
    are sorted again: a stable sort of millions of floats costs four quick sorts."""
    order = np.argsort(probability) if order is None else order.copy()
    ranked = probability[order]
    if np.isnan(ranked).any():  # NaN runs are not found by comparison: sort stably
        return np.argsort(probability, kind="stable")
    size, larger = divmod(len(order), bins)  # np.array_split's bins: the first ``larger`` hold one more
    for boundary in np.cumsum([size + 1] * larger + [size] * (bins - larger))[:-1]:
        if 0 < boundary < len(ranked) and ranked[boundary - 1] == ranked[boundary]:
            start = np.searchsorted(ranked, ranked[boundary], side="left")
            stop = np.searchsorted(ranked, ranked[boundary], side="right")
            order[start:stop] = np.sort(order[start:stop])
    return order


def calibration_error(probability: np.ndarray, label: np.ndarray, bins: int = 10, order: np.ndarray | None = None) -> float:
    """Expected calibration error over equal-count bins of the score, rows ordered by score and,
    among equal scores, by position (``order``: any argsort of ``probability`` the caller has)."""
    if len(probability) == 0:
        return float("nan")
    bins = min(bins, len(probability))
    groups = np.array_split(_bin_order(probability, bins, order), bins)
    gaps = [abs(probability[g].mean() - label[g].mean()) * len(g) for g in groups if len(g)]
    return float(np.sum(gaps) / len(probability))


def grouped_auc(
    label: np.ndarray, score: np.ndarray, group: np.ndarray, n_groups: int, order: np.ndarray | None = None
) -> np.ndarray:
    """ROC AUC of ``score`` for ``label`` within each group 0..n_groups-1 (NaN where a group lacks
    positives or negatives), all groups in one sort: the Mann-Whitney statistic from the positives'
    ranks, tied scores sharing their average rank (as ``sklearn.metrics.roc_auc_score`` counts ties).
    ``order``: an argsort of ``score`` when the caller has one (ties in any order)."""
    label = np.asarray(label, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    group = np.asarray(group, dtype=np.int16 if n_groups < 2**15 else np.int64)
    if order is None:
        order = np.argsort(score)  # ties need no order: a run of equal scores shares one rank
    if n_groups > 1:
        order = order[np.argsort(group[order], kind="stable")]  # small integers: a radix sort
    g, s, y = group[order], score[order], label[order]
    n = len(s)
    if n == 0:
        return np.full(n_groups, np.nan)
    run_starts = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])])
    run_ends = np.r_[run_starts[1:], n]
    run_of = np.repeat(np.arange(len(run_starts)), run_ends - run_starts)
    size = np.bincount(g, minlength=n_groups)
    group_start = np.cumsum(size) - size
    rank = (run_starts + run_ends - 1)[run_of] / 2.0 - group_start[g] + 1.0  # 1-based within the group
    positives = np.bincount(g, weights=y, minlength=n_groups)
    positive_ranks = np.bincount(g, weights=np.where(y, rank, 0.0), minlength=n_groups)
    negatives = size - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (positive_ranks - positives * (positives + 1) / 2.0) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def _auc(label: np.ndarray, score: np.ndarray, order: np.ndarray | None = None) -> float:
    return float(grouped_auc(label, score, np.zeros(len(label), dtype=np.int64), 1, order)[0])


def _scorer_summary(
    name: str, row_score: np.ndarray, label: np.ndarray, ki: np.ndarray, row_customer: np.ndarray,
    label_matrix: np.ndarray, k: int,
) -> tuple[dict, np.ndarray]:
    """One scorer's summary row and its AUC per category."""
    n, kk = label_matrix.shape
    matrix = np.full((n, kk), np.nan)
    matrix[row_customer, ki] = row_score
    recall, precision, buyers = ranking_metrics(matrix, label_matrix, k)
    # One sort of the scores serves both AUCs and the calibration bins (clipping to 0..1 keeps
    # the order).
    order = np.argsort(row_score)
    aucs = grouped_auc(label, row_score, ki, kk, order)
    clipped = np.clip(row_score, 0.0, 1.0)
    row = {
        "scorer": name,
        "roc_auc": _auc(label, row_score, order),
        "macro_category_auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "recall_at_k": recall,
        "precision_at_k": precision,
        # Brier score: the mean squared gap between probability and outcome (as sklearn's
        # brier_score_loss, without its label checks over millions of rows)
        "brier": float(np.mean(np.square(clipped - label))) if len(label) else float("nan"),
        "calibration_error": calibration_error(clipped, label.astype(np.float64), order=order),
    }
    return row, aucs


def evaluate(
    scores: dict[str, np.ndarray],
    ci: np.ndarray,
    ki: np.ndarray,
    label: np.ndarray,
    categories: list[str],
    k: int,
) -> Evaluation:
    """Evaluate each scorer's row scores on held-out rows (customer index ``ci``, category index
    ``ki``, ``label`` = bought it afterwards)."""
    customers, row_customer = np.unique(ci, return_inverse=True)
    n, kk = len(customers), len(categories)
    label_matrix = np.zeros((n, kk), dtype=bool)
    label_matrix[row_customer, ki] = label
    names = list(scores)
    results: list[tuple[dict, np.ndarray] | None] = [None] * len(names)

    def evaluate_scorers(start: int, stop: int) -> None:  # the scorers are independent: one per thread
        for i in range(start, stop):
            results[i] = _scorer_summary(names[i], scores[names[i]], label, ki, row_customer, label_matrix, k)

    for_each_slice(evaluate_scorers, len(names), 1)
    summary = [row for row, _ in results]
    per_category = {f"auc_{name}": aucs for name, (_, aucs) in zip(names, results)}
    rows = np.bincount(ki, minlength=kk)
    positives = np.bincount(ki, weights=label.astype(np.float64), minlength=kk).astype(np.int64)
    by_category = pd.DataFrame({"category": categories, "rows": rows, "positives": positives, **per_category})
    return Evaluation(
        k=k,
        summary=pd.DataFrame(summary),
        by_category=by_category[by_category["rows"] > 0].reset_index(drop=True),
        customers=n,
        customers_with_new_category=int(label_matrix.any(axis=1).sum()),
        rows=int(len(label)),
        positives=int(label.sum()),
    )


def summary_table(evaluation: Evaluation) -> pd.DataFrame:
    """The headline table: one row per scorer, readable column names."""
    k = evaluation.k
    return evaluation.summary.rename(
        columns={
            "roc_auc": "ROC AUC",
            "macro_category_auc": "mean category AUC",
            "recall_at_k": f"recall@{k}",
            "precision_at_k": f"precision@{k}",
            "brier": "Brier",
            "calibration_error": "calibration error",
        }
    )


def format_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A plain-text table (no extra dependency), numbers rounded."""
    text = frame.copy()
    for column in text.columns:
        if pd.api.types.is_float_dtype(text[column]):
            text[column] = text[column].map(lambda v: "n/a" if pd.isna(v) else f"{v:.{digits}f}")
        else:
            text[column] = text[column].astype(str)
    widths = [max(len(str(c)), *(len(v) for v in text[c])) for c in text.columns]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(text.columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in text.itertuples(index=False)]
    return "\n".join(lines)
