"""Work split over threads gives exactly what one pass over everything gives: the slices helper
itself, and the scoring and affinity functions that use it, against plain references, with blocks small enough
that every input crosses several block boundaries, on one thread and on four. And scikit-learn's OpenMP
threads sleep, not spin, while they wait."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from cross_sell import parallel
from cross_sell.affinity import logic as affinity_logic
from cross_sell.scoring import logic
from cross_sell.scoring.logic import NO_RULE, reason_rules, reason_rules_at, strongest_rule, top_n


@pytest.fixture(params=["1", "4"], ids=["one thread", "four threads"])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv(parallel.WORKERS_ENV, request.param)
    return int(request.param)


def test_every_slice_runs_once_and_in_its_own_bounds(threads: int) -> None:
    seen: list[tuple[int, int]] = []
    names: set[str] = set()
    lock = threading.Lock()

    def work(start: int, stop: int) -> None:
        with lock:
            seen.append((start, stop))
            names.add(threading.current_thread().name)

    parallel.for_each_slice(work, 10, 3)
    assert sorted(seen) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    if threads == 1:
        assert names == {threading.current_thread().name}  # in order, on the calling thread
    parallel.for_each_slice(work, 0, 3)  # nothing to do
    assert len(seen) == 4


def test_a_failing_slice_raises_in_the_caller(threads: int) -> None:
    def work(start: int, stop: int) -> None:
        if start == 4:
            raise ValueError("slice 4 failed")

    with pytest.raises(ValueError, match="slice 4 failed"):
        parallel.for_each_slice(work, 8, 2)


def test_thread_count_comes_from_the_environment_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(parallel.WORKERS_ENV, raising=False)
    assert parallel.workers() >= 1
    monkeypatch.setenv(parallel.WORKERS_ENV, "3")
    assert parallel.workers() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv(parallel.WORKERS_ENV, bad)
        with pytest.raises(ValueError, match=parallel.WORKERS_ENV):
            parallel.workers()
    with pytest.raises(ValueError, match="at least 1"):
        parallel.for_each_slice(lambda start, stop: None, 5, 0)


def _openmp_spin_count(environment: dict[str, str]) -> str:
    """The spin count scikit-learn's OpenMP runtime settles on in a fresh process that loads the
    project's definitions and then fits nothing: the runtime prints it as it starts."""
    probe = "import cross_sell.definitions, sklearn.ensemble"
    run = subprocess.run(
        [sys.executable, "-c", probe], env={**environment, "OMP_DISPLAY_ENV": "VERBOSE"},
        capture_output=True, text=True, timeout=120, check=True,
    )
    spin = [line.split("=", 1)[1].strip().strip("'") for line in run.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not spin:
        pytest.skip("this scikit-learn ships an OpenMP runtime other than libgomp")
    return spin[0]


def test_openmp_threads_sleep_while_they_wait_unless_the_user_says_otherwise() -> None:
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    assert _openmp_spin_count(environment) == "0"  # PASSIVE: no spinning at all
    assert int(_openmp_spin_count({**environment, "OMP_WAIT_POLICY": "ACTIVE"})) > 10**9


def _owned_and_lift(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    owned = rng.random((n, k)) < rng.uniform(0.05, 0.5, k)[None, :]
    owned[:20] = False  # customers with nothing: no rule behind anything
    lift = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0, 3.0], size=(k, k))  # repeated values: ties
    np.fill_diagonal(lift, 0.0)
    return owned, lift


def _strongest_by_hand(owned: np.ndarray, strength: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row by row, category by category: the first owned category with the largest strength > 0."""
    n, k = owned.shape
    best = np.zeros((n, k), dtype=np.float32)
    which = np.full((n, k), NO_RULE, dtype=np.int32)
    for i in range(n):
        for b in range(k):
            for a in np.flatnonzero(owned[i]):
                if np.float32(strength[a, b]) > best[i, b]:
                    best[i, b], which[i, b] = strength[a, b], a
    return best, which


@pytest.mark.parametrize("k", [7, 70], ids=["few categories", "more than 64 categories"])
def test_strongest_rule_in_blocks_equals_the_rule_by_hand(threads: int, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logic, "RULE_BLOCK_ROWS", 37)
    owned, lift = _owned_and_lift(300, k, seed=k)
    best, which = strongest_rule(owned, lift)
    expected_best, expected_which = _strongest_by_hand(owned, lift)
    np.testing.assert_array_equal(best, expected_best)
    np.testing.assert_array_equal(which, expected_which)


@pytest.mark.parametrize("k", [7, 70], ids=["few categories", "more than 64 categories"])
def test_reason_rules_at_cells_equal_the_whole_matrix_read_there(threads: int, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logic, "RULE_BLOCK_ROWS", 37)
    owned, lift = _owned_and_lift(500, k, seed=100 + k)
    rng = np.random.default_rng(1)
    ci = rng.integers(0, 500, 2000)
    ki = rng.integers(0, k, 2000)
    np.testing.assert_array_equal(reason_rules_at(owned, lift, ci, ki), reason_rules(owned, lift)[ci, ki])
    assert (reason_rules_at(owned, lift, ci, ki) != NO_RULE).any() and (reason_rules_at(owned, lift, ci, ki) == NO_RULE).any()


def _top_n_by_hand(score: np.ndarray, n: int) -> list[tuple[int, int, int]]:
    picks = []
    for c, row in enumerate(score):
        candidates = sorted((-v, b) for b, v in enumerate(row) if not np.isnan(v))  # best first, then by index
        picks += [(c, rank, b) for rank, (_, b) in enumerate(candidates[:n], start=1)]
    return picks


@pytest.mark.parametrize(("k", "n"), [(30, 3), (5, 3), (4, 6)], ids=["argmax passes", "stable sort", "fewer categories than n"])
def test_top_n_in_blocks_equals_ranking_by_hand(threads: int, k: int, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logic, "TOP_N_BLOCK_ROWS", 29)
    rng = np.random.default_rng(k * 10 + n)
    score = np.round(rng.random((200, k)), 1)  # rounded: many ties
    score[rng.random((200, k)) < 0.3] = np.nan
    score[5] = np.nan  # a customer who has everything
    customers, ranks, categories = top_n(score, n)
    assert list(zip(customers.tolist(), ranks.tolist(), categories.tolist())) == _top_n_by_hand(score, n)


@pytest.mark.parametrize("n_items", [9, 30, 33, 48], ids=["two bytes", "uint32 masks", "uint64 masks", "six bytes"])
def test_pair_counts_on_threads_equal_the_one_hot_product(threads: int, n_items: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(affinity_logic, "_THREADED_MASKS", 0)  # threads even for a few masks
    rng = np.random.default_rng(n_items)
    onehot = rng.random((3000, n_items)) < rng.uniform(0.02, 0.6, n_items)[None, :]
    tx, items = np.nonzero(onehot)
    masks = affinity_logic.transaction_masks(tx, items, n_items)
    assert masks is not None and masks.dtype == (np.uint32 if n_items <= 32 else np.uint64)
    kept = onehot[onehot.any(axis=1)]
    x = kept.astype(np.int64)
    np.testing.assert_array_equal(affinity_logic.mask_pair_counts(masks, None, n_items), x.T @ x)
    # Distinct masks with how many transactions have each, as the warehouse counts them.
    distinct, counts = np.unique(masks.astype(np.uint64), return_counts=True)
    np.testing.assert_array_equal(affinity_logic.mask_pair_counts(distinct, counts, n_items), x.T @ x)
