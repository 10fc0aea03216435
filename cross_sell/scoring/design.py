"""The model's input matrix, and exact fast scoring of every (customer, category) pair.

**Encoding** (:class:`FeatureEncoder`, fitted on the training rows and saved with the model). Every
feature becomes a small integer code, the way gradient-boosted trees see their inputs anyway:

* numbers: the index of their quantile bin (at most 255 bins, edges from the training rows; a
  feature with at most 255 distinct values keeps every value apart), NaN when missing;
* the candidate category: its index in the training category list, NaN for a category the model
  has never seen;
* education, marital status, country: the index in the 250 most frequent values of the training
  rows, NaN for missing or rarer values.

The model is fitted on these codes as a plain float matrix (no pandas, no column transformer).

**Scoring by tables** (:class:`AdditiveTables`). The default model is a gradient-boosted tree
ensemble whose trees may only combine the candidate category with *one* other feature
(``interaction_cst``): its raw score is ``c(category) + sum over features f of h_f(category, x_f)``,
an additive model per category. Because every input is a small integer code, each ``h_f`` is a
table over (category, code), read off the fitted model itself with its public
``decision_function`` on a grid: ``h_f(k, v) = d(k, reference with x_f = v) - d(k, reference)``.
Scoring a customer then costs one table lookup per feature and category instead of a walk down
every tree, and customer-level features are looked up once per customer for all 30 categories.
Tables are exact (same sums of the same leaf values), and every scoring run checks them against
the model's own ``predict_proba`` on a sample of rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from cross_sell.parallel import for_each_slice
from cross_sell.scoring.features import (
    CANDIDATE,
    CUSTOMER_CATEGORICAL,
    CUSTOMER_NUMERIC,
    PAIR_NUMERIC,
    PairFeatures,
    Profiles,
    feature_names,
    order_share_column,
    spend_share_column,
)

MAX_BINS = 255  # the trees' own max_bins: every code is a bin of its own
MAX_CATEGORIES = 250
# Profile (share) features for at most this many categories, the most bought ones: every category
# adds two features, and tree fitting, the tables and scoring all grow with the feature count (at a
# million customers, 78 features fit in 8.0 s, 38 in 4.4 s). Measured on the three datasets the
# project knows, keeping 10 instead of 30 loses nothing: held-out ROC AUC and recall@3 were 0.8005
# and 0.485 with 30, 0.8007 and 0.486 with 10 (generated, 30 categories); 0.9807 and 0.996 both ways
# (Customer Personality Analysis, 6 categories, all kept); 0.8287 and 0.153 with 30, 0.8280 and
# 0.154 with 10 (Groceries basket log, 167 items).
MAX_SHARE_CATEGORIES = 10
EDGE_SAMPLE = 200_000


def bin_edges(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut points between at most ``MAX_BINS`` bins: between distinct values when there are few,
    else between quantiles of (a sample of) the values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size > EDGE_SAMPLE:
        v = rng.choice(v, EDGE_SAMPLE, replace=False)
    cuts = np.unique(v)
    if cuts.size > MAX_BINS:
        cuts = np.unique(np.quantile(v, np.linspace(0.0, 1.0, MAX_BINS)))
    return (cuts[:-1] + cuts[1:]) / 2


GRID = 1 << 16
MAX_EDGES_PER_CELL = 4


def _grid_cells(values: np.ndarray, low: float, scale: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        cells = (np.asarray(values, dtype=np.float64) - low) * scale
        np.nan_to_num(cells, copy=False, nan=0.0)
        np.clip(cells, 0, GRID - 1, out=cells)
        return cells.astype(np.int32)


@dataclass(frozen=True)
class _Grid:
    """A uniform grid over one feature's bin edges (see :func:`_count_below`), built once per edges."""

    low: float
    scale: float
    first: np.ndarray  # per cell: how many edges lie in earlier cells
    inside: np.ndarray  # per cell: how many edges lie in it
    padded: np.ndarray  # the edges, then +inf
    crowd: int  # the most edges in one cell


_GRIDS: dict[bytes, _Grid] = {}


def _grid(edges: np.ndarray) -> _Grid:
    key = np.asarray(edges, dtype=np.float64).tobytes()
    grid = _GRIDS.get(key)
    if grid is None:
        low, high = float(edges[0]), float(edges[-1])
        scale = (GRID - 1) / (high - low) if high > low else 0.0
        per_cell = np.bincount(_grid_cells(edges, low, scale), minlength=GRID)
        grid = _Grid(
            low=low, scale=scale, first=(np.cumsum(per_cell) - per_cell).astype(np.int16),
            inside=per_cell.astype(np.int16), padded=np.append(np.asarray(edges, dtype=np.float64), np.inf),
            crowd=int(per_cell.max()),
        )
        if len(_GRIDS) >= 1024:  # a bounded cache: models come and go in a long-lived process
            _GRIDS.clear()
        _GRIDS[key] = grid
    return grid


def _count_below(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.searchsorted(edges, values, side="left")`` (how many edges lie below each value), by a
    uniform grid over the edges' range: a value's cell says how many edges lie in earlier cells
    (all of them below it, as cells are monotone in the value), and only the few edges in its own
    cell are compared. Exact; falls back to searchsorted when edges crowd into one cell."""
    m = len(edges)
    if m == 0:
        return np.zeros(np.shape(values), dtype=np.int16)
    grid = _grid(edges)
    if grid.crowd > MAX_EDGES_PER_CELL:
        return np.searchsorted(edges, values, side="left").astype(np.int16)
    cells = _grid_cells(values, grid.low, grid.scale)
    start, inside = grid.first[cells], grid.inside[cells]
    v = np.asarray(values, dtype=np.float64)
    count = start.copy()
    for e in range(grid.crowd):
        count += (v > grid.padded[np.minimum(start + e, m)]) & (inside > e)
    return count


def _bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value (int16); missing values get ``len(edges) + 1``, one past the last bin."""
    codes = _count_below(values, edges)
    missing = np.isnan(values)
    if missing.any():
        codes[missing] = len(edges) + 1
    return codes


def _row_count(rows: np.ndarray | slice, n: int) -> int:
    """How many of ``n`` rows ``rows`` (indices or a slice) selects."""
    return len(range(n)[rows]) if isinstance(rows, slice) else len(rows)


def share_categories(profiles: Profiles, limit: int = MAX_SHARE_CATEGORIES) -> list[str]:
    """The categories that get share columns: the ``limit`` bought by the most customers (ties by
    name), in category order; every category when there are no more than ``limit``."""
    categories = list(profiles.categories)
    if len(categories) <= limit:
        return categories
    # Profile categories are sorted by name, so a stable sort by buyers breaks ties by name.
    kept = np.sort(np.argsort(-profiles.owned.sum(axis=0), kind="stable")[:limit])
    return [categories[j] for j in kept]


@dataclass
class FeatureEncoder:
    """Turns profiles and pair features into the model's integer-coded input (see module doc)."""

    categories: list[str]  # the training categories: candidate codes
    edges: dict[str, np.ndarray]  # numeric feature -> bin edges
    vocab: dict[str, list[str]]  # categorical customer feature -> known values (sorted)
    # Features with no known value in the training rows (no incomes in a basket log): coded 0 for
    # everyone, a constant the trees ignore (an all-missing column would break their binning).
    constant: tuple[str, ...] = ()
    # The categories with share columns (see MAX_SHARE_CATEGORIES), in category order.
    share_categories: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return feature_names(list(self.share_categories))

    @property
    def customer_names(self) -> list[str]:
        """Customer-level features, in matrix order (they follow the candidate and the pair features)."""
        return self.names[1 + len(PAIR_NUMERIC):]

    @property
    def categorical(self) -> list[int]:
        """Matrix columns that hold category codes."""
        return [i for i, n in enumerate(self.names) if n == CANDIDATE or n in CUSTOMER_CATEGORICAL]

    @property
    def missing_code(self) -> np.ndarray:
        """Per matrix column, the code that stands for a missing value (= the number of real codes)."""
        out = []
        for name in self.names:
            if name in self.constant:
                out.append(1)  # code 0 is the constant
            elif name == CANDIDATE:
                out.append(len(self.categories))
            elif name in self.vocab:
                out.append(len(self.vocab[name]))
            else:
                out.append(len(self.edges[name]) + 1)
        return np.asarray(out, dtype=np.int64)

    @classmethod
    def fit(cls, profiles: Profiles, pairs: PairFeatures, ci: np.ndarray, ki: np.ndarray, seed: int) -> FeatureEncoder:
        rng = np.random.default_rng([seed, 7])
        categories = list(profiles.categories)
        shares = share_categories(profiles)
        edges: dict[str, np.ndarray] = {}
        empty: set[str] = set()

        def fit_edges(name: str, values: np.ndarray) -> None:
            if not np.isfinite(values).any():
                empty.add(name)
            edges[name] = bin_edges(values, rng)

        for name in PAIR_NUMERIC:
            fit_edges(name, pairs.at(name, ci, ki))
        customer = profiles.customer
        for name in CUSTOMER_NUMERIC:
            fit_edges(name, customer[name].to_numpy()[ci])
        for j, c in enumerate(categories):
            if c in shares:
                fit_edges(spend_share_column(c), profiles.spend_share[ci, j])
                fit_edges(order_share_column(c), profiles.order_share[ci, j])
        vocab: dict[str, list[str]] = {}
        for name in CUSTOMER_CATEGORICAL:
            values = customer[name].astype(object).to_numpy()[ci]
            counts = pd.Series(values).dropna().astype(str).value_counts()
            counts = counts.rename_axis("value").reset_index(name="n").sort_values(["n", "value"], ascending=[False, True])
            vocab[name] = sorted(counts["value"].head(MAX_CATEGORIES))
        constant = [n for n in feature_names(shares) if n in empty or (n in vocab and not vocab[n])]
        return cls(categories=categories, edges=edges, vocab=vocab, constant=tuple(constant), share_categories=tuple(shares))

    # -- codes ------------------------------------------------------------------------------

    def candidate_codes(self, profiles: Profiles) -> np.ndarray:
        """For each profile category, its candidate code (missing code for a category new since training)."""
        position = {c: i for i, c in enumerate(self.categories)}
        return np.asarray([position.get(c, len(self.categories)) for c in profiles.categories], dtype=np.int16)

    def customer_codes(self, profiles: Profiles, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(customers, customer features) int16 codes for the customers ``rows``, in ``customer_names``
        order. Built feature by feature (each feature's codes contiguous), returned as its transpose."""
        customer = profiles.customer
        position = {c: i for i, c in enumerate(profiles.categories)}
        m = _row_count(rows, profiles.shape[0])
        by_feature = np.empty((len(self.customer_names), m), dtype=np.int16)

        def numeric(name: str, j: int) -> None:
            by_feature[j] = _bins(customer[name].to_numpy()[rows], self.edges[name])

        def categorical(name: str, j: int) -> None:
            cat = customer[name].array
            known = {v: i for i, v in enumerate(self.vocab[name])}
            lookup = np.asarray([known.get(str(v), len(known)) for v in cat.categories] + [len(known)], dtype=np.int16)
            by_feature[j] = lookup[cat.codes[rows]]  # code -1 (missing) reads the last entry

        def share(shares: np.ndarray, edges: np.ndarray, k: int | None, j: int) -> None:
            by_feature[j] = _bins(np.zeros(1), edges)[0]
            if k is not None:  # shares are 0 for every category a customer never bought: bin the rest
                values = shares[rows, k]  # one category's column only, not a transpose of every category
                bought = np.flatnonzero(values)
                by_feature[j, bought] = _bins(values[bought], edges)

        # tasks[j] codes feature j (customer_names order) into row j of by_feature.
        tasks: list[Callable[[int], None]] = [partial(numeric, name) for name in CUSTOMER_NUMERIC]
        tasks += [partial(categorical, name) for name in CUSTOMER_CATEGORICAL]
        for shares, column in ((profiles.spend_share, spend_share_column), (profiles.order_share, order_share_column)):
            tasks += [partial(share, shares, self.edges[column(c)], position.get(c)) for c in self.share_categories]

        def code_features(start: int, stop: int) -> None:
            for j in range(start, stop):
                tasks[j](j)

        for_each_slice(code_features, len(tasks), 1)  # the features are independent: coded on every core
        for j, name in enumerate(self.customer_names):
            if name in self.constant:
                by_feature[j] = 0
        return by_feature.T

    def pair_codes(self, pairs: PairFeatures, name: str, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(customers, profile categories) int16 codes of one pair feature for the customers ``rows``."""
        values = pairs.values.get(name)
        if values is not None and values.strides[0] == 0:  # the same for every customer (popularity): code one row
            shape = values[rows].shape
            return np.zeros(shape, dtype=np.int16) if name in self.constant else np.broadcast_to(_bins(values[0], self.edges[name]), shape)
        block = pairs.rows(name, rows)
        return np.zeros(block.shape, dtype=np.int16) if name in self.constant else _bins(block, self.edges[name])

    def codes(self, profiles: Profiles, pairs: PairFeatures, ci: np.ndarray, ki: np.ndarray) -> np.ndarray:
        """(rows, features) int16 codes of (customer index, profile category index) rows, in ``names`` order."""
        candidate = self.candidate_codes(profiles)[ki]
        pair = [
            np.zeros(len(ci), dtype=np.int16) if name in self.constant else _bins(pairs.at(name, ci, ki), self.edges[name])
            for name in PAIR_NUMERIC
        ]
        return np.column_stack([candidate, *pair, self.customer_codes(profiles, ci)]).astype(np.int16, copy=False)

    def matrix(self, codes: np.ndarray) -> np.ndarray:
        """The model's input: codes as float64, NaN where missing."""
        x = codes.astype(np.float64)
        x[codes >= self.missing_code[None, :]] = np.nan
        return x


# ---------------------------------------------------------------------------------------------
# Exact scoring by tables


GRID_ROWS = 200_000
_PER_SET_LOCK = threading.Lock()


@dataclass
class AdditiveTables:
    """Raw scores of a model that is additive per candidate category, as lookup tables.

    ``base[k]`` is the raw score of candidate code k (k = K: unknown) at the reference input (every
    other code 0); ``tables[j][k, v]`` is what setting feature j to code v (v = missing code:
    missing) adds to it."""

    base: np.ndarray  # (K + 1,)
    tables: list[np.ndarray | None]  # per matrix column; None for the candidate column

    @classmethod
    def tabulate(cls, decision: Callable[[np.ndarray], np.ndarray], encoder: FeatureEncoder) -> AdditiveTables:
        """Read the tables off a fitted model's ``decision`` function on a grid of codes."""
        missing = encoder.missing_code
        n_features = len(missing)
        candidates = np.arange(len(encoder.categories) + 1, dtype=np.float64)
        candidates[-1] = np.nan
        reference = np.zeros((len(candidates), n_features))
        reference[:, 0] = candidates
        base = decision(reference)
        tables: list[np.ndarray | None] = [None] * n_features
        pending: list[int] = []
        size = 0

        def flush() -> None:
            nonlocal size
            blocks = []
            for j in pending:
                values = np.arange(missing[j] + 1, dtype=np.float64)
                values[-1] = np.nan
                block = np.zeros((len(candidates) * len(values), n_features))
                block[:, 0] = np.repeat(candidates, len(values))
                block[:, j] = np.tile(values, len(candidates))
                blocks.append(block)
            raw = decision(np.vstack(blocks))
            start = 0
            for j in pending:
                width = int(missing[j]) + 1
                stop = start + len(candidates) * width
                tables[j] = raw[start:stop].reshape(len(candidates), width) - base[:, None]
                start = stop
            pending.clear()
            size = 0

        for j in range(1, n_features):
            pending.append(j)
            size += len(candidates) * (int(missing[j]) + 1)
            if size >= GRID_ROWS:
                flush()
        if pending:
            flush()
        return cls(base=np.asarray(base, dtype=np.float64), tables=tables)

    def _pair_contribution(self, offset: int, candidate: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """What pair feature ``offset`` adds, for a (rows, profile categories) block of its codes."""
        table = self.tables[offset][candidate]  # (categories, codes)
        flat = np.arange(len(candidate), dtype=np.int32)[None, :] * table.shape[1] + codes  # row-major index
        return np.take(table.ravel(), flat)

    def _per_owned_set(self, encoder: FeatureEncoder, profiles: Profiles, pairs: PairFeatures) -> np.ndarray | None:
        """(distinct owned sets, profile categories): the summed contribution of the pair features
        that depend only on the owned categories, once per set (cached on ``pairs`` for the
        chunks that follow); None when the pair features carry no sets."""
        if pairs.profile_of is None or not pairs.by_profile:
            return None
        with _PER_SET_LOCK:  # chunks scored on parallel threads wait for the first to fill the cache
            cached = pairs.cache.get("per_owned_set")
            if cached is not None and cached[0] is self and cached[1] is encoder:
                return cached[2]
            candidate = encoder.candidate_codes(profiles).astype(np.int64)
            total = np.zeros(next(iter(pairs.by_profile.values())).shape, dtype=np.float64)
            for offset, name in enumerate(PAIR_NUMERIC, start=1):
                if name in pairs.by_profile:
                    codes = np.zeros(total.shape, dtype=np.int16) if name in encoder.constant else _bins(
                        pairs.by_profile[name], encoder.edges[name]
                    )
                    total += self._pair_contribution(offset, candidate, codes)
            pairs.cache["per_owned_set"] = (self, encoder, total)  # one model's sums at a time
            return total

    def _customer_contribution(self, candidate: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(customers, profile categories): what the customer-level features add, for a (customers,
        customer features) block of their codes.

        Most customer features sit at one code for most customers (a category's spend share is 0
        for everyone who never bought it). That code's table row is added once for everyone; every
        other (customer, feature) cell adds its difference to it, all in one sparse product: a
        customer x (feature, code) indicator matrix times the stacked difference tables. One pass
        over the output instead of one per feature."""
        import scipy.sparse  # imported when scoring, not when the definitions load

        first_customer = 1 + len(PAIR_NUMERIC)
        codes = np.ascontiguousarray(codes)  # customer by customer, as the sparse rows are laid out
        m, n_features = codes.shape
        tables = [self.tables[first_customer + j][candidate].T for j in range(n_features)]  # (codes, categories)
        widths = np.asarray([table.shape[0] for table in tables], dtype=np.int64)
        offsets = np.cumsum(widths) - widths
        cells = codes.astype(np.int32) + offsets[None, :].astype(np.int32)  # (customer, feature) -> stacked row
        counts = np.bincount(cells.ravel(), minlength=int(widths.sum()))
        common = np.asarray(  # each feature's most common code (the lowest among equals)
            [int(counts[o:o + w].argmax()) for o, w in zip(offsets, widths)], dtype=np.int64
        )
        common_rows = np.zeros(len(candidate), dtype=np.float64)
        for table, code in zip(tables, common):
            common_rows += table[code]
        stacked = np.vstack([table - table[code] for table, code in zip(tables, common)])
        other = codes != common[None, :]
        columns = cells[other]  # row-major: customer by customer
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(other.sum(axis=1), out=indptr[1:])
        indicator = scipy.sparse.csr_matrix(
            (np.ones(len(columns)), columns, indptr), shape=(m, stacked.shape[0])
        )
        out = np.asarray(indicator @ stacked)
        out += common_rows[None, :]
        return out

    def raw_scores(
        self, encoder: FeatureEncoder, profiles: Profiles, pairs: PairFeatures, rows: np.ndarray | slice,
        customer_codes: np.ndarray | None = None,
    ) -> np.ndarray:
        """(customers, profile categories) raw scores for the customers ``rows``, every category.
        ``customer_codes``: their ``encoder.customer_codes`` when the caller has them already (a
        scoring run codes every customer once, not chunk by chunk)."""
        candidate = encoder.candidate_codes(profiles).astype(np.int64)
        out = np.empty((_row_count(rows, profiles.shape[0]), len(candidate)), dtype=np.float64)
        out[:] = self.base[candidate][None, :]
        per_set = self._per_owned_set(encoder, profiles, pairs)
        if per_set is not None:  # the features that only depend on the owned categories, summed per set
            out += per_set[pairs.profile_of[rows]]
        for offset, name in enumerate(PAIR_NUMERIC, start=1):
            if per_set is not None and name in pairs.by_profile:
                continue
            out += self._pair_contribution(offset, candidate, encoder.pair_codes(pairs, name, rows))
        if customer_codes is None:
            customer_codes = encoder.customer_codes(profiles, rows)
        out += self._customer_contribution(candidate, customer_codes)
        return out
