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

How ``C`` is counted depends on the number of items. Up to :data:`MASK_ITEMS` items (categories),
each transaction becomes one integer whose bits are its items; customers with the same set of
items collapse into one distinct mask with a count, and ``C`` is summed from the distinct masks
byte pair by byte pair (a weighted histogram of 65,536 cells per pair of bytes), so the cost is a
few passes over the input and never grows with pairs of items. More items (products) take the
sparse product ``X^T X``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from cross_sell.parallel import for_each_slice

RULE_COLUMNS = [
    "level", "antecedent", "consequent", "pair_count", "antecedent_count", "consequent_count",
    "transactions", "support", "confidence", "lift",
]


def _countable(codes: np.ndarray) -> bool:
    """Whether ``codes`` can index a bincount of modest size: non-negative integers below a few
    times their number (as the warehouse encoding returns)."""
    return bool(np.issubdtype(codes.dtype, np.integer) and codes.min() >= 0 and codes.max() < 4 * len(codes) + 1024)


def dense_codes(codes: np.ndarray) -> np.ndarray:
    """``codes`` renumbered 0..n-1 in order (n distinct values). Countable codes take one
    counting pass, no sort."""
    codes = np.asarray(codes)
    if _countable(codes):
        present = np.bincount(codes) > 0
        return (np.cumsum(present) - 1)[codes]
    return np.unique(codes, return_inverse=True)[1]


# Items up to this many are counted as bit masks: six bytes make at most 15 byte pairs. Up to 32
# items a mask is a uint32, which halves the memory the masks are summed into.
MASK_ITEMS = 48
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(np.float64)


def _small_codes(codes: np.ndarray) -> np.ndarray:
    """``codes`` as they are if they can index a bincount of modest size, else renumbered."""
    return codes if _countable(codes) else dense_codes(codes)


def transaction_masks(transaction_codes: np.ndarray, item_codes: np.ndarray, n_items: int) -> np.ndarray | None:
    """One unsigned integer per transaction (uint32 up to 32 items, else uint64) with bit i set
    when it holds item i (transactions without items dropped), or None when a (transaction, item)
    pair repeats.

    The masks are sums of powers of two (one unbuffered ``np.add.at``); a repeated pair would carry
    into another bit (or out of the top one), which the population count detects: the set bits
    add up to the number of pairs exactly when no pair repeats."""
    if n_items > MASK_ITEMS:
        raise ValueError(f"bit masks hold at most {MASK_ITEMS} items, not {n_items}")
    item_codes = np.asarray(item_codes)
    if len(item_codes) and (int(item_codes.min()) < 0 or int(item_codes.max()) >= n_items):
        raise ValueError(f"item codes must lie in 0..{n_items - 1}")
    dtype = np.uint32 if n_items <= 32 else np.uint64
    transactions = _small_codes(transaction_codes)
    masks = np.zeros(int(transactions.max()) + 1 if len(transactions) else 0, dtype=dtype)
    np.add.at(masks, transactions, np.left_shift(dtype(1), item_codes.astype(dtype)))
    masks = masks[masks != 0]
    if int(np.bitwise_count(masks).sum(dtype=np.int64)) != len(item_codes):
        return None
    return masks


# Fewer masks than this are counted on the calling thread, where threads gain nothing (measured:
# 100,000 masks 3.6 ms on one thread, 4.4 ms on two; a million 38 ms, 30 ms on two).
_THREADED_MASKS = 400_000


def mask_pair_counts(masks: np.ndarray, counts: np.ndarray | None, n_items: int) -> np.ndarray:
    """Dense ``C = X^T X`` (int64, n_items x n_items) from transaction bit masks (unsigned
    integers) and how many transactions have each (``counts``; None: one each, so the masks need
    not be distinct: the histograms count them, which is cheaper than sorting them into distinct
    ones first).

    Each pair of bytes (i, j) is one weighted histogram of 65,536 cells, whose bits give the
    block of ``C`` between the items of byte i and those of byte j; its margins are the histograms
    of the bytes alone, which give the blocks within a byte. Each histogram is its own task on the
    thread pool (:mod:`cross_sell.parallel`)."""
    width = masks.dtype.itemsize
    n_bytes = max(1, -(-n_items // 8))
    if n_bytes > width:
        raise ValueError(f"{n_items} items do not fit in {masks.dtype} masks")
    raw = masks.astype(f"<u{width}", copy=False).view(np.uint8).reshape(-1, width)
    octets = [raw[:, i].astype(np.intp) for i in range(n_bytes)]  # one contiguous column per byte
    weights = None if counts is None else counts.astype(np.float64)
    total = np.zeros((8 * n_bytes, 8 * n_bytes))
    if n_bytes == 1:
        byte_counts = [np.bincount(octets[0], weights=weights, minlength=256).astype(np.float64)]
    else:
        byte_counts = [np.zeros(256) for _ in range(n_bytes)]
        highs = [octet << 8 for octet in octets[:-1]]
        byte_pairs = [(i, j) for i in range(n_bytes) for j in range(i + 1, n_bytes)]

        def count(start: int, stop: int) -> None:
            for i, j in byte_pairs[start:stop]:
                joint = np.bincount(highs[i] + octets[j], weights=weights, minlength=65536).astype(np.float64)
                joint = joint.reshape(256, 256)
                rows, cols = slice(8 * i, 8 * i + 8), slice(8 * j, 8 * j + 8)
                block = _BYTE_BITS.T @ joint @ _BYTE_BITS
                total[rows, cols], total[cols, rows] = block, block.T
                if j == i + 1:  # every byte's margin, each written by one task
                    byte_counts[i][:] = joint.sum(axis=1)
                    if j == n_bytes - 1:
                        byte_counts[j][:] = joint.sum(axis=0)

        for_each_slice(count, len(byte_pairs), 1, threads=None if len(masks) >= _THREADED_MASKS else 1)
    for i, within in enumerate(byte_counts):
        rows = slice(8 * i, 8 * i + 8)
        total[rows, rows] = _BYTE_BITS.T @ (within[:, None] * _BYTE_BITS)
    return np.rint(total[:n_items, :n_items]).astype(np.int64)


def co_occurrence(transaction_codes: np.ndarray, item_codes: np.ndarray, n_items: int) -> tuple[sparse.csr_matrix, int]:
    """Pair counts ``X^T X`` for (transaction, item) code pairs (duplicates allowed) and the
    number of distinct transactions."""
    if len(transaction_codes) == 0:
        return sparse.csr_matrix((n_items, n_items), dtype=np.int64), 0
    if n_items <= MASK_ITEMS:
        masks = transaction_masks(transaction_codes, item_codes, n_items)
        if masks is not None:
            return sparse.csr_matrix(mask_pair_counts(masks, None, n_items)), len(masks)
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
    pairs, n_tx = co_occurrence(np.asarray(transaction_codes), np.asarray(item_codes), len(item_names))
    return rules_from_pair_counts(pairs, n_tx, item_names, min_support=min_support, level=level)


def association_rules_from_masks(
    distinct_masks: np.ndarray,
    counts: np.ndarray,
    item_names: list[str] | np.ndarray,
    *,
    min_support: float = 0.0,
    level: str = "category",
) -> pd.DataFrame:
    """The same rules as :func:`association_rules`, from the distinct transaction bit masks (bit i
    = item i) and how many transactions have each, as the warehouse can count them."""
    distinct_masks = np.asarray(distinct_masks, dtype=np.uint64)
    counts = np.asarray(counts, dtype=np.int64)
    pairs = sparse.csr_matrix(mask_pair_counts(distinct_masks, counts, len(item_names)))
    return rules_from_pair_counts(pairs, int(counts.sum()), item_names, min_support=min_support, level=level)


def rules_from_pair_counts(
    pairs: sparse.spmatrix, n_tx: int, item_names: list[str] | np.ndarray, *, min_support: float, level: str
) -> pd.DataFrame:
    """Rules from the pair counts ``C`` (item counts on the diagonal) of ``n_tx`` transactions."""
    names = np.asarray(item_names, dtype=object)
    if n_tx == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _empty_types().items()})
    item_count = pairs.diagonal()
    coo = pairs.tocoo()
    keep = (coo.row != coo.col) & (coo.data / n_tx >= min_support)
    a, b, count = coo.row[keep], coo.col[keep], coo.data[keep]
    support = count / n_tx
    confidence = count / item_count[a]
    lift = confidence / (item_count[b] / n_tx)
    # Sorted by lift, then support (both descending), then the names, in numpy: one stable lexsort
    # (last key first) over the names' ranks, instead of pandas sorting text columns.
    name_rank = np.empty(len(names), dtype=np.int64)
    name_rank[np.argsort(names, kind="stable")] = np.arange(len(names))
    order = np.lexsort((name_rank[b], name_rank[a], -support, -lift))
    a, b, count, support, confidence, lift = (x[order] for x in (a, b, count, support, confidence, lift))
    return pd.DataFrame(
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


def _empty_types() -> dict[str, str]:
    return {
        "level": "object", "antecedent": "object", "consequent": "object", "pair_count": "int64",
        "antecedent_count": "int64", "consequent_count": "int64", "transactions": "int64",
        "support": "float64", "confidence": "float64", "lift": "float64",
    }
