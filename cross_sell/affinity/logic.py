"""Product affinity: association rules A -> B from who bought what, as sparse matrix algebra.

Transactions are customers by default (a customer "has" a category if they ever bought it), or
orders on request. With X the binary transactions x items matrix, ``C = X^T X`` holds every
pair count at once (the diagonal holds item counts), so the whole rule set costs one sparse
matrix product, never a loop over rows. For each ordered pair A != B with ``C[A, B] > 0``:

* support    = C[A, B] / transactions                 = P(A and B)
* confidence = C[A, B] / C[A, A]                      = P(B | A)
* lift       = confidence / (C[B, B] / transactions)  = P(B | A) / P(B)

Both directions of every pair are present (C is symmetric), and pairs whose support is below
``min_support`` are dropped in both directions together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

RULE_COLUMNS = [
    "level", "antecedent", "consequent", "pair_count", "antecedent_count", "consequent_count",
    "transactions", "support", "confidence", "lift",
]


def dense_codes(codes: np.ndarray) -> np.ndarray:
    """``codes`` renumbered 0..n-1 in order (n distinct values). Non-negative integer codes of
    modest range (as the warehouse encoding returns) take one counting pass, no sort."""
    codes = np.asarray(codes)
    if np.issubdtype(codes.dtype, np.integer) and codes.min() >= 0 and codes.max() < 4 * len(codes) + 1024:
        present = np.bincount(codes) > 0
        return (np.cumsum(present) - 1)[codes]
    return np.unique(codes, return_inverse=True)[1]


def co_occurrence(transaction_codes: np.ndarray, item_codes: np.ndarray, n_items: int) -> tuple[sparse.csr_matrix, int]:
    """Pair counts ``X^T X`` for (transaction, item) code pairs (duplicates allowed) and the
    number of distinct transactions."""
    if len(transaction_codes) == 0:
        return sparse.csr_matrix((n_items, n_items), dtype=np.int64), 0
    tx = dense_codes(transaction_codes)
    n_tx = int(tx.max()) + 1
    x = sparse.csr_matrix(
        (np.ones(len(tx), dtype=np.int32), (tx, item_codes)), shape=(n_tx, n_items), dtype=np.int32
    )
    x.sum_duplicates()
    x.data[:] = 1
    pairs = (x.T @ x).tocsr().astype(np.int64)
    return pairs, n_tx


def association_rules(
    transaction_codes: np.ndarray,
    item_codes: np.ndarray,
    item_names: list[str] | np.ndarray,
    *,
    min_support: float = 0.0,
    level: str = "category",
) -> pd.DataFrame:
    """All rules A -> B (A != B) with support >= ``min_support``, sorted by lift, then support."""
    names = np.asarray(item_names, dtype=object)
    pairs, n_tx = co_occurrence(np.asarray(transaction_codes), np.asarray(item_codes), len(names))
    if n_tx == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _empty_types().items()})
    item_count = pairs.diagonal()
    coo = pairs.tocoo()
    keep = (coo.row != coo.col) & (coo.data / n_tx >= min_support)
    a, b, count = coo.row[keep], coo.col[keep], coo.data[keep]
    support = count / n_tx
    confidence = count / item_count[a]
    lift = confidence / (item_count[b] / n_tx)
    rules = pd.DataFrame(
        {
            "level": level,
            "antecedent": names[a],
            "consequent": names[b],
            "pair_count": count.astype(np.int64),
            "antecedent_count": item_count[a].astype(np.int64),
            "consequent_count": item_count[b].astype(np.int64),
            "transactions": np.full(len(a), n_tx, dtype=np.int64),
            "support": support.astype(np.float64),
            "confidence": confidence.astype(np.float64),
            "lift": lift.astype(np.float64),
        }
    )
    return rules.sort_values(
        ["lift", "support", "antecedent", "consequent"], ascending=[False, False, True, True], kind="stable"
    ).reset_index(drop=True)


def _empty_types() -> dict[str, str]:
    return {
        "level": "object", "antecedent": "object", "consequent": "object", "pair_count": "int64",
        "antecedent_count": "int64", "consequent_count": "int64", "transactions": "int64",
        "support": "float64", "confidence": "float64", "lift": "float64",
    }
