"""Seeded, vectorised generator of realistic retail sample data for ``cross_sell``.

Usage::

    python -m cross_sell.generate --out DIR [--customers 2000] [--purchases 50000]
        [--products 240] [--categories 12] [--seed 42] [--format parquet|csv]
        [--start YYYY-MM-DD] [--end YYYY-MM-DD]

Three files are written into ``DIR``: ``customer.<ext>``, ``product.<ext>`` and
``purchase.<ext>`` (one row per order line).  All randomness comes from a single
seed, so the same arguments always give byte-identical files.  Every array is built
with numpy (no Python loops over rows, customers or orders) and DuckDB formats the
text columns and writes the files, so ten million lines take seconds.

Planted structure (what models and association rules should be able to find):

* **Categories.**  Up to 12 categories use readable retail names (Wines, Meat,
  Fish, Fruits, Sweets, Gold, Bakery, Dairy, Beverages, Household, Pet Care,
  Baby); more categories take further readable names, then ``Category N``.
  Baseline category popularity is Zipf-like in that order (Wines most popular).
* **Products.**  Every category has at least one product; popular categories get
  more.  Within a category, popularity is Zipf-like (a few bestsellers).  Prices
  are lognormal around a category-specific median (Gold is expensive, Fruits cheap).
* **Latent segments.**  Every customer belongs to one of 6-10 hidden segments.
  Each segment has 2-4 *core* categories, which are bought far more often than
  chance.  With 12 categories, the six segments are Wines+Meat+Fish,
  Baby+Dairy+Fruits, Pet Care+Household, Sweets+Bakery+Beverages, Gold+Wines and
  Household+Bakery+Dairy.  With more categories, up to four random segments are
  added.  Pairs of core categories have a lift clearly above 1 (rare categories
  show it most; Wines and Meat are so common that their lift is capped).
  Segments also shift birth year, income and preferred channel, so demographics
  help to tell segments apart.  :func:`planted_segments` returns the core
  categories for given ``categories`` and ``seed``.
* **Favourite category.**  Every customer also has one personal favourite
  category, drawn from a flat Zipf distribution.  It is active from the first order.
* **Adoption over time.**  A customer starts with one of their segment's core
  categories (a random one per customer).  They take up the segment's other core
  categories later, each at a random point in the last 80 % of their own order
  history.  So the
  categories a customer buys for the first time after a cutoff are mostly the
  unadopted core categories of their segment.  A model trained on behaviour before
  the cutoff (which shows the segment) can predict them better than global
  popularity can.
* **Each order line's category** is drawn from a mixture: one of the customer's
  currently adopted core categories (72 %), their favourite (12 %) or the
  baseline popularity (16 %).
* **Activity and time.**  Each customer has a lognormal order rate, so the number
  of orders is very skewed: many customers have a single order and a few have
  hundreds (about 6 % are one-off buyers by design).  Some customers exist from the start of the window and
  others join over time, which gives mild growth.  Some customers stop buying
  (churn).  Daily volume has seasonality (a year-end peak and busier weekends),
  and the time of day peaks at lunch and in the evening.  Orders have 1-6 lines
  (mean about 2.5).  All lines of an order share customer, timestamp and channel,
  and products are not repeated within an order when the category has enough
  products.  Each customer has a preferred channel (web, store, catalog or other)
  that they use for about 70 % of their orders.
* **Lines.**  Quantity is mostly 1-3.  ``amount = price * quantity`` rounded to
  cents, with a 5-30 % discount on about 12 % of lines.
* **Fake PII.**  Names come from built-in lists.  Emails are
  ``first.last<customer number>@example.com`` (unique), and phones are unique
  ``+1-555-XXX-XXXX`` numbers (for up to 10 million customers).
  ``signup_date`` is at least one day before the customer's first purchase.
  Identifiers follow time: ``customer_id`` follows the order of ``signup_date``,
  and ``order_id`` and ``purchase_id`` follow the order of ``purchase_date``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["generate", "main", "planted_segments", "category_names"]

FORMATS = ("parquet", "csv")
CHANNELS = ("web", "store", "catalog", "other")
EDUCATION = ("Basic", "2n Cycle", "Graduation", "Master", "PhD")
MARITAL_STATUS = ("Single", "Married", "Together", "Divorced", "Widow")
COUNTRIES = ("US", "CA", "GB", "DE", "FR", "AU", "ES", "IN")

_BASE_CATEGORIES: tuple[tuple[str, float], ...] = (
    # (name, median product price)
    ("Wines", 18.0),
    ("Meat", 12.0),
    ("Fish", 14.0),
    ("Fruits", 3.5),
    ("Sweets", 4.0),
    ("Gold", 120.0),
    ("Bakery", 4.5),
    ("Dairy", 3.8),
    ("Beverages", 3.0),
    ("Household", 7.0),
    ("Pet Care", 11.0),
    ("Baby", 13.0),
)
_EXTRA_CATEGORIES: tuple[str, ...] = (
    "Cheese", "Coffee", "Tea", "Snacks", "Frozen Foods", "Pasta", "Rice & Grains",
    "Spices", "Condiments", "Canned Goods", "Cereal", "Vegetables", "Deli",
    "Spirits", "Craft Beer", "Health & Beauty", "Pharmacy", "Cleaning",
    "Paper Goods", "Kitchenware", "Garden", "Toys", "Books", "Stationery",
    "Electronics", "Apparel", "Footwear", "Sports", "Outdoor", "Automotive",
    "Hardware", "Home Decor", "Bedding", "Candles", "Flowers", "Seasonal", "Gifts",
    "Jewelry",
)

# Latent segment templates:
# (name, core categories, mean birth year, income multiplier, channel weights).
_SEGMENT_TEMPLATES: tuple[tuple[str, tuple[str, ...], float, float, tuple[float, ...]], ...] = (
    ("Gourmets", ("Wines", "Meat", "Fish"), 1967, 1.45, (0.30, 0.45, 0.20, 0.05)),
    ("Young families", ("Baby", "Dairy", "Fruits"), 1991, 0.95, (0.60, 0.30, 0.05, 0.05)),
    ("Pet owners", ("Pet Care", "Household"), 1980, 1.00, (0.50, 0.35, 0.10, 0.05)),
    ("Sweet tooth", ("Sweets", "Bakery", "Beverages"), 1996, 0.75, (0.55, 0.35, 0.02, 0.08)),
    ("Luxury", ("Gold", "Wines"), 1961, 2.00, (0.25, 0.30, 0.40, 0.05)),
    ("Homemakers", ("Household", "Bakery", "Dairy"), 1972, 0.90, (0.30, 0.55, 0.10, 0.05)),
    ("Health-conscious", ("Fruits", "Fish"), 1983, 1.15, (0.45, 0.45, 0.05, 0.05)),
    ("Party hosts", ("Beverages", "Meat", "Sweets"), 1988, 1.05, (0.40, 0.50, 0.05, 0.05)),
)

_FIRST_NAMES: tuple[str, ...] = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
    "William", "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph",
    "Jessica", "Thomas", "Sarah", "Charles", "Karen", "Daniel", "Nancy", "Matthew",
    "Lisa", "Anthony", "Betty", "Mark", "Margaret", "Paul", "Sandra", "Steven",
    "Ashley", "Andrew", "Emily", "Joshua", "Donna", "Kevin", "Michelle", "Brian",
    "Carol", "George", "Amanda", "Edward", "Melissa", "Ronald", "Deborah", "Timothy",
    "Laura", "Jason", "Olivia",
)
_LAST_NAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
    "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson",
    "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker",
    "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill",
    "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell",
    "Mitchell", "Carter", "Roberts",
)

# Mixture weights for the category of one order line (the rest: baseline popularity).
_P_CORE = 0.72
_P_FAV = 0.12
# Zipf exponents of the baseline category popularity and of the favourite category.
_BASE_ZIPF = 0.9
_FAV_ZIPF = 0.3
# Customer base: share present at the window start, churners, one-off buyers, rate spread.
_EXISTING_SHARE = 0.65
_CHURN_SHARE = 0.15
_ONE_OFF_SHARE = 0.06
_ACTIVITY_SIGMA = 1.0
# A later core category is adopted at this fraction of the customer's order history.
_ADOPT_FROM, _ADOPT_TO = 0.20, 1.0
# Lines per order (1..6) and quantity per line (1..6).
_LINES_PER_ORDER_P = np.array([0.30, 0.28, 0.20, 0.12, 0.06, 0.04])
_QUANTITY_P = np.array([0.62, 0.24, 0.09, 0.03, 0.01, 0.01])
_CHANNEL_P = np.array([0.42, 0.38, 0.14, 0.06])
_PREFERRED_CHANNEL_SHARE = 0.70
_HOUR_W = np.array(
    [0.3, 0.15, 0.1, 0.1, 0.15, 0.3, 0.8, 1.5, 2.2, 2.8, 3.2, 3.8,
     4.2, 3.9, 3.3, 3.1, 3.3, 3.8, 4.4, 4.6, 4.0, 2.9, 1.8, 0.9]
)
_MAX_CORES = 4
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class _Categories:
    """Category names, baseline popularity and median prices."""

    names: list[str]
    popularity: np.ndarray  # normalised Zipf weights, shape (K,)
    median_price: np.ndarray  # shape (K,)


@dataclass(frozen=True)
class _Segments:
    """Latent customer segments."""

    cores: np.ndarray  # (S, 4) category indices, padded with -1
    n_cores: np.ndarray  # (S,)
    weight: np.ndarray  # (S,) segment shares
    birth_mean: np.ndarray  # (S,)
    income_mult: np.ndarray  # (S,)
    channel_p: np.ndarray  # (S, 4)


def _zipf(n: int, s: float) -> np.ndarray:
    """Normalised Zipf weights ``1 / rank**s`` for ranks 1..n."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


def _draw(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    """Draw ``size`` indices from the discrete distribution ``p`` (inverse CDF)."""
    cdf = np.cumsum(p, dtype=np.float64)
    cdf /= cdf[-1]
    idx = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(idx, len(p) - 1)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent random streams per stage, so that one stage does not shift another."""
    names = ("categories", "segments", "products", "customers", "orders", "lines", "pii")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children)}


def category_names(categories: int) -> list[str]:
    """Readable category names for ``categories`` categories (``Category N`` past the built-in list)."""
    names = [n for n, _ in _BASE_CATEGORIES] + list(_EXTRA_CATEGORIES)
    names += [f"Category {i + 1}" for i in range(len(names), categories)]
    return names[:categories]


def _make_categories(rng: np.random.Generator, k: int) -> _Categories:
    """Build category names, Zipf popularity (in name order) and median prices."""
    names = category_names(k)
    base = dict(_BASE_CATEGORIES)
    extra_price = np.round(np.exp(rng.normal(math.log(10.0), 0.6, size=k)), 2)
    median = np.array([base.get(n, extra_price[i]) for i, n in enumerate(names)], dtype=np.float64)
    return _Categories(names=names, popularity=_zipf(k, _BASE_ZIPF), median_price=median)


def _make_segments(rng: np.random.Generator, names: list[str]) -> _Segments:
    """Choose curated segment templates that fit the categories, plus random segments."""
    k = len(names)
    index = {n: i for i, n in enumerate(names)}
    curated = []
    for _name, cores, birth, income, channels in _SEGMENT_TEMPLATES:
        present = [index[c] for c in cores if c in index]
        if len(present) >= 2:
            curated.append((present, birth, income, channels))
    # 6 curated segments up to 12 categories; with more categories up to 4 random
    # segments (preferring categories no segment covers yet), 10 segments at most.
    n_random = 0 if k <= 12 else min(4, math.ceil((k - 12) / 3))
    curated = curated[: min(6, 10 - n_random)]
    n_random = max(n_random, 6 - len(curated))

    cores_list = [c for c, *_ in curated]
    births = [b for _, b, _, _ in curated]
    incomes = [i for _, _, i, _ in curated]
    chans = [list(c) for *_, c in curated]
    covered = np.zeros(k, dtype=bool)
    for c in cores_list:
        covered[c] = True
    for _ in range(n_random):  # loop over segments only
        size = int(rng.integers(2, _MAX_CORES + 1))
        uncovered = np.flatnonzero(~covered)
        take = rng.permutation(uncovered)[:size].tolist()
        if len(take) < size:
            rest = np.setdiff1d(np.arange(k), take)
            take += rng.permutation(rest)[: size - len(take)].tolist()
        covered[take] = True
        cores_list.append(take)
        births.append(float(rng.uniform(1960, 1995)))
        incomes.append(float(np.exp(rng.normal(0.0, 0.3))))
        chans.append(rng.dirichlet(np.array([4.0, 4.0, 1.5, 0.6])).tolist())

    s = len(cores_list)
    cores = np.full((s, _MAX_CORES), -1, dtype=np.int64)
    for i, c in enumerate(cores_list):
        cores[i, : len(c)] = c
    channel_p = np.asarray(chans, dtype=np.float64)
    return _Segments(
        cores=cores,
        n_cores=(cores >= 0).sum(axis=1),
        weight=rng.dirichlet(np.full(s, 6.0)),
        birth_mean=np.asarray(births, dtype=np.float64),
        income_mult=np.asarray(incomes, dtype=np.float64),
        channel_p=channel_p / channel_p.sum(axis=1, keepdims=True),
    )


def planted_segments(categories: int = 12, seed: int = 42) -> list[tuple[str, ...]]:
    """Core category names of each latent segment for the given ``categories`` and ``seed``.

    The result is the same as in :func:`generate` with the same ``categories`` and
    ``seed``.  Use it in tests that check association rules or models.
    """
    if not 8 <= categories <= 50:
        raise ValueError("categories must be between 8 and 50")
    rngs = _streams(seed)
    cats = _make_categories(rngs["categories"], categories)
    segs = _make_segments(rngs["segments"], cats.names)
    return [tuple(cats.names[c] for c in row if c >= 0) for row in segs.cores]


def _day_cdf(start: date, n_days: int) -> np.ndarray:
    """Cumulative day weights: mild growth, year-end peak and busier weekends."""
    days = np.arange(n_days)
    dt = np.datetime64(start.isoformat(), "D") + days
    doy = (dt - dt.astype("datetime64[Y]")).astype(np.int64)
    weekday = (dt.astype(np.int64) + 3) % 7  # 0 = Monday
    month = dt.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (dt - dt.astype("datetime64[M]")).astype(np.int64) + 1
    w = 1.0 + 0.15 * days / max(n_days - 1, 1)
    w *= 1.0 + 0.12 * np.cos(2 * np.pi * (doy - 350) / 365.25)
    w *= np.where((month == 11) & (dom >= 20) | (month == 12) & (dom <= 24), 1.35, 1.0)
    w *= np.where(weekday >= 5, 1.15, 1.0)
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def _sql_list(values: list[str] | tuple[str, ...]) -> str:
    """Render a DuckDB list literal of strings."""
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _width(n: int, minimum: int) -> int:
    """Zero-padding width for ids up to ``n``."""
    return max(minimum, len(str(max(n, 1))))


def _validate(
    customers: int, purchases: int, products: int, categories: int, fmt: str, start: date, end: date
) -> None:
    """Raise ``ValueError`` for unusable arguments."""
    if customers < 1 or purchases < 1:
        raise ValueError("customers and purchases must be >= 1")
    if not 8 <= categories <= 50:
        raise ValueError("categories must be between 8 and 50")
    if products < categories:
        raise ValueError("products must be >= categories (every category needs a product)")
    if customers > 10_000_000:
        raise ValueError("customers must be <= 10,000,000 (unique phone numbers)")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}")
    if end < start:
        raise ValueError("end must not be before start")
    if end >= date.today():
        raise ValueError("end must be before today so that no timestamp lies in the future")


@dataclass
class _Simulation:
    """Simulated tables as integer-coded frames plus the latent truth behind them."""

    customer: pd.DataFrame
    product: pd.DataFrame
    purchase: pd.DataFrame
    category_names: list[str]
    id_widths: dict[str, int]
    segment: np.ndarray  # latent segment of customer number i + 1
    segment_cores: np.ndarray  # (S, 4) core category indices, padded with -1


def _simulate(
    *, customers: int, purchases: int, products: int, categories: int, seed: int, start: date, end: date
) -> _Simulation:
    """Draw all tables as numpy arrays (no I/O)."""
    rngs = _streams(seed)
    n_c, n_l, n_p = customers, purchases, products

    # ---- categories, segments, products -------------------------------------------
    cats = _make_categories(rngs["categories"], categories)
    segs = _make_segments(rngs["segments"], cats.names)
    k = categories
    rng = rngs["products"]
    per_cat = 1 + rng.multinomial(n_p - k, np.sqrt(cats.popularity) / np.sqrt(cats.popularity).sum())
    p_cat = np.repeat(np.arange(k), per_cat)  # internal product order: grouped by category
    cat_start = np.concatenate(([0], np.cumsum(per_cat)[:-1]))
    cat_end = cat_start + per_cat - 1
    p_rank = np.arange(n_p) - cat_start[p_cat]  # 0 = bestseller within category
    w = 1.0 / (p_rank + 1.0) ** 1.1
    cs = np.cumsum(w)
    cs -= (cs[cat_start] - w[cat_start])[p_cat]
    within = cs / cs[cat_end][p_cat]
    within[cat_end] = 1.0
    p_key = p_cat + within  # monotone; searchsorted(cat + u) picks a product of that category
    p_price = np.maximum(
        np.round(cats.median_price[p_cat] * np.exp(rng.normal(0.0, 0.45, n_p)), 2), 0.49
    )
    p_no = rng.permutation(n_p) + 1  # public product number; interleaves categories

    # ---- latent customer attributes ---------------------------------------------
    rng = rngs["customers"]
    seg = _draw(rng, segs.weight, n_c)
    fav = _draw(rng, _zipf(k, _FAV_ZIPF), n_c)
    keys = rng.random((n_c, _MAX_CORES))
    keys[segs.cores[seg] < 0] = 2.0
    core = np.take_along_axis(segs.cores[seg], np.argsort(keys, axis=1), axis=1)  # (C, 4)
    adopt = np.sort(rng.uniform(_ADOPT_FROM, _ADOPT_TO, (n_c, _MAX_CORES - 1)), axis=1).astype(np.float32)
    adopt[np.arange(1, _MAX_CORES)[None, :] >= segs.n_cores[seg][:, None]] = 9.0
    pref_channel = (
        (rng.random(n_c)[:, None] > np.cumsum(segs.channel_p[seg], axis=1)).sum(axis=1).clip(0, 3)
    )
    existing = rng.random(n_c) < _EXISTING_SHARE  # already customers at the window start
    t0 = np.where(existing, 0.0, rng.uniform(0.0, 0.95, n_c))  # joiners: mild growth
    churn = rng.random(n_c) < _CHURN_SHARE
    t1 = np.where(churn, t0 + (1.0 - t0) * rng.uniform(0.2, 1.0, n_c), 1.0)
    # order rate is lognormal; expected orders scale with the active window length
    activity = np.exp(rng.normal(0.0, _ACTIVITY_SIGMA, n_c)) * (t1 - t0)
    activity[rng.random(n_c) < _ONE_OFF_SHARE] = 0.0  # one-off buyers

    # ---- orders ------------------------------------------------------------------
    rng = rngs["orders"]
    mean_lines = float(np.dot(np.arange(1, 7), _LINES_PER_ORDER_P))
    lines_per = 1 + _draw(rng, _LINES_PER_ORDER_P, int(n_l / mean_lines * 1.2) + 16)
    csum = np.cumsum(lines_per)
    n_o = int(np.searchsorted(csum, n_l, side="left")) + 1
    if n_o > len(lines_per):  # practically impossible; pad with single-line orders
        lines_per = np.concatenate((lines_per, np.ones(n_l - int(csum[-1]), dtype=lines_per.dtype)))
        n_o = len(lines_per)
    else:
        lines_per = lines_per[:n_o].copy()
        lines_per[-1] -= int(lines_per.sum()) - n_l
    lines_per = lines_per.astype(np.int32)

    if n_o >= n_c:  # everybody orders once; the rest follows the order rates
        weight = activity + 1e-12
        orders_per = 1 + rng.multinomial(n_o - n_c, weight / weight.sum())
    else:  # fewer orders than customers: some customers never order
        weight = activity + 0.05
        orders_per = rng.multinomial(n_o, weight / weight.sum())
    o_cust = np.repeat(np.arange(n_c), orders_per)
    u = t0[o_cust] + (t1 - t0)[o_cust] * rng.random(n_o)
    n_days = (end - start).days + 1
    day = np.minimum(np.searchsorted(_day_cdf(start, n_days), u, side="right"), n_days - 1)
    hour = _draw(rng, _HOUR_W / _HOUR_W.sum(), n_o)
    start_sec = (start - _EPOCH).days * 86400
    o_sec = day * 86400 + hour * 3600 + rng.integers(0, 3600, n_o)  # seconds after start
    del u, day, hour

    # rank of each order within its customer's history -> active core categories
    # (o_cust is already sorted, so a stable sort of this key is fast and well defined)
    by_cust = np.argsort(o_cust * np.int64(n_days * 86400) + o_sec, kind="stable")
    o_ts = start_sec + o_sec
    del o_sec
    o_cust, o_ts = o_cust[by_cust], o_ts[by_cust]
    first_o = np.concatenate(([0], np.cumsum(orders_per)[:-1]))
    rel = (np.arange(n_o) - first_o[o_cust]) / orders_per[o_cust]
    o_active = 1 + (adopt[o_cust] <= rel[:, None].astype(np.float32)).sum(axis=1)
    o_channel = np.where(
        rng.random(n_o) < _PREFERRED_CHANNEL_SHARE, pref_channel[o_cust], _draw(rng, _CHANNEL_P, n_o)
    )
    has_orders = orders_per > 0
    first_ts = np.zeros(n_c, dtype=np.int64)
    first_ts[has_orders] = o_ts[first_o[has_orders]]
    del rel, by_cust

    # order_id follows time; the key is unique, so any sort algorithm gives one result
    chrono = np.argsort((o_ts - start_sec) * np.int64(n_o) + np.arange(n_o))
    o_cust, o_ts = o_cust[chrono], o_ts[chrono]
    o_active, o_channel = o_active[chrono], o_channel[chrono]
    del chrono

    # ---- order lines -------------------------------------------------------------
    rng = rngs["lines"]
    l_order = np.repeat(np.arange(n_o, dtype=np.int32), lines_per)
    l_cust = o_cust[l_order]
    src = rng.random(n_l)
    l_cat = fav[l_cust]
    pick = np.flatnonzero(src < _P_CORE)  # one of the currently adopted core categories
    slot = (rng.random(pick.size) * o_active[l_order[pick]]).astype(np.int64)
    l_cat[pick] = core.reshape(-1)[l_cust[pick].astype(np.int64) * _MAX_CORES + slot]
    pick = np.flatnonzero(src >= _P_CORE + _P_FAV)  # baseline popularity
    l_cat[pick] = _draw(rng, cats.popularity, pick.size)
    del src, pick, slot
    l_prod = np.searchsorted(p_key, l_cat + rng.random(n_l), side="right")
    # Avoid the same product twice in one order: move a repeat to the next product of
    # the same category.  Lines of an order are adjacent, so comparing each line with
    # the up to 5 lines before it finds repeats; later passes only revisit the
    # affected orders.
    o_first_line = np.cumsum(lines_per) - lines_per
    todo = np.arange(n_l)
    for _ in range(8):
        sub_o, sub_p = l_order[todo], l_prod[todo]
        dup = np.zeros(todo.size, dtype=bool)
        for lag in range(1, len(_LINES_PER_ORDER_P)):
            dup[lag:] |= (sub_p[lag:] == sub_p[:-lag]) & (sub_o[lag:] == sub_o[:-lag])
        if not dup.any():
            break
        fix = todo[dup]
        cat = p_cat[l_prod[fix]]
        l_prod[fix] = np.where(l_prod[fix] + 1 > cat_end[cat], cat_start[cat], l_prod[fix] + 1)
        redo = np.unique(l_order[fix])
        lens = lines_per[redo]
        todo = np.repeat(o_first_line[redo] - (np.cumsum(lens) - lens), lens) + np.arange(lens.sum())
    del todo, sub_o, sub_p, dup
    quantity = (1 + _draw(rng, _QUANTITY_P, n_l)).astype(np.int16)
    discount = np.where(rng.random(n_l) < 0.12, 0.05 * rng.integers(1, 7, n_l), 0.0)
    amount = np.round(p_price[l_prod] * quantity * (1.0 - discount), 2)
    del discount

    # ---- customer attributes -----------------------------------------------------
    rng = rngs["pii"]
    start_day = (start - _EPOCH).days
    end_day = (end - _EPOCH).days
    first_day = first_ts // 86400
    signup = np.where(
        existing,
        start_day - 1 - rng.integers(0, 1461, n_c),
        first_day - 1 - np.minimum(np.exp(rng.normal(2.5, 1.2, n_c)), 1000).astype(np.int64),
    )
    signup = np.minimum(signup, first_day - 1)
    signup = np.where(has_orders, signup, rng.integers(start_day - 1460, end_day + 1, n_c))
    signup_year = (signup.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970)
    birth = np.round(rng.normal(segs.birth_mean[seg], 11.0)).astype(np.int64)
    birth = np.clip(birth, 1940, np.minimum(2006, np.maximum(signup_year - 18, 1940)))
    edu = _draw(rng, np.array([0.05, 0.09, 0.50, 0.17, 0.19]), n_c)
    marital = _draw(rng, np.array([0.22, 0.38, 0.26, 0.10, 0.04]), n_c)
    income = segs.income_mult[seg] * np.array([0.55, 0.8, 1.0, 1.1, 1.2])[edu]
    income = np.round(50_000.0 * income * np.exp(rng.normal(0.0, 0.4, n_c)))
    income_null = rng.random(n_c) < 0.03
    country = _draw(rng, np.array([0.55, 0.12, 0.10, 0.07, 0.06, 0.04, 0.03, 0.03]), n_c)
    first_name = _draw(rng, _zipf(len(_FIRST_NAMES), 0.4), n_c)
    last_name = _draw(rng, _zipf(len(_LAST_NAMES), 0.4), n_c)
    by_signup = np.lexsort((np.arange(n_c), signup))  # customer_id follows signup date
    c_no = np.empty(n_c, dtype=np.int64)
    c_no[by_signup] = np.arange(1, n_c + 1)
    phone = (c_no * 7_368_787 + int(rng.integers(0, 10_000_000))) % 10_000_000  # bijective

    # ---- assemble --------------------------------------------------------------
    customer_df = pd.DataFrame(
        {
            "no": c_no[by_signup],
            "fn": first_name[by_signup].astype(np.int16),
            "ln": last_name[by_signup].astype(np.int16),
            "phone": phone[by_signup],
            "birth_year": birth[by_signup].astype(np.int32),
            "edu": edu[by_signup].astype(np.int16),
            "marital": marital[by_signup].astype(np.int16),
            "income": income[by_signup],
            "income_null": income_null[by_signup],
            "country": country[by_signup].astype(np.int16),
            "signup": signup[by_signup].astype(np.int32),
        },
        copy=False,
    )
    by_no = np.argsort(p_no)
    product_df = pd.DataFrame(
        {"no": p_no[by_no], "cat": p_cat[by_no].astype(np.int16), "price": p_price[by_no]},
        copy=False,
    )
    purchase_df = pd.DataFrame(
        {
            "line_no": np.arange(1, n_l + 1, dtype=np.int64),
            "order_no": l_order + 1,
            "cust_no": c_no[l_cust],
            "prod_no": p_no[l_prod],
            "ts_us": o_ts[l_order] * 1_000_000,
            "quantity": quantity.astype(np.int32),
            "amount": amount,
            "channel": o_channel[l_order].astype(np.int16),
        },
        copy=False,
    )
    del l_order, l_cust, l_prod, l_cat, quantity, amount
    segment = np.empty(n_c, dtype=np.int64)
    segment[c_no - 1] = seg
    return _Simulation(
        customer=customer_df,
        product=product_df,
        purchase=purchase_df,
        category_names=cats.names,
        id_widths={"C": _width(n_c, 7), "P": _width(n_p, 5), "O": _width(n_o, 8), "L": _width(n_l, 9)},
        segment=segment,
        segment_cores=segs.cores,
    )


def _write(sim: _Simulation, out_dir: Path, fmt: str) -> dict[str, Path]:
    """Format ids and labels with DuckDB and write one file per table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cw, pw, ow, lw = (sim.id_widths[x] for x in "CPOL")
    names = _sql_list(sim.category_names)
    first_list, last_list = _sql_list(_FIRST_NAMES), _sql_list(_LAST_NAMES)
    queries = {
        "customer": f"""
            SELECT printf('C%0{cw}d', no) AS customer_id,
                   {first_list}[fn + 1] AS first_name,
                   {last_list}[ln + 1] AS last_name,
                   lower({first_list}[fn + 1]) || '.' || lower({last_list}[ln + 1])
                       || no || '@example.com' AS email,
                   '+1-555-' || printf('%03d', phone // 10000) || '-'
                       || printf('%04d', phone % 10000) AS phone,
                   birth_year,
                   {_sql_list(EDUCATION)}[edu + 1] AS education,
                   {_sql_list(MARITAL_STATUS)}[marital + 1] AS marital_status,
                   CASE WHEN income_null THEN NULL ELSE income END AS income,
                   {_sql_list(COUNTRIES)}[country + 1] AS country,
                   CAST(DATE '1970-01-01' + signup AS DATE) AS signup_date
            FROM customer_df""",
        "product": f"""
            SELECT printf('P%0{pw}d', no) AS product_id,
                   {names}[cat + 1] || ' #'
                       || row_number() OVER (PARTITION BY cat ORDER BY no) AS product_name,
                   {names}[cat + 1] AS product_category,
                   price
            FROM product_df ORDER BY no""",
        "purchase": f"""
            SELECT printf('L%0{lw}d', line_no) AS purchase_id,
                   printf('O%0{ow}d', order_no) AS order_id,
                   printf('C%0{cw}d', cust_no) AS customer_id,
                   printf('P%0{pw}d', prod_no) AS product_id,
                   make_timestamp(ts_us) AS purchase_date,
                   quantity,
                   amount,
                   {_sql_list(CHANNELS)}[channel + 1] AS channel
            FROM purchase_df""",
    }
    import duckdb  # imported lazily: keeps `import cross_sell.generate` cheap

    options = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT csv, HEADER"
    written: dict[str, Path] = {}
    with duckdb.connect(":memory:") as con:
        con.execute("SET preserve_insertion_order = true")
        con.register("customer_df", sim.customer)
        con.register("product_df", sim.product)
        con.register("purchase_df", sim.purchase)
        for name, sql in queries.items():
            path = out_dir / f"{name}.{fmt}"
            if path.exists():
                path.unlink()
            target = str(path).replace("'", "''")
            con.execute(f"COPY ({sql}) TO '{target}' ({options})")
            written[name] = path
    return written


def generate(
    out_dir: Path,
    *,
    customers: int,
    purchases: int,
    products: int,
    categories: int,
    seed: int,
    fmt: str = "parquet",
    start: date | None = None,
    end: date | None = None,
) -> dict[str, Path]:
    """Generate the sample data and write ``customer``, ``product`` and ``purchase`` files.

    ``start``/``end`` default to the two years that end yesterday.  Returns a mapping
    from table name to the written file.
    """
    if end is None:
        end = date.today() - timedelta(days=1)
    if start is None:
        start = end - timedelta(days=729)
    _validate(customers, purchases, products, categories, fmt, start, end)
    sim = _simulate(
        customers=customers,
        purchases=purchases,
        products=products,
        categories=categories,
        seed=seed,
        start=start,
        end=end,
    )
    return _write(sim, out_dir, fmt)


def _parse_date(text: str) -> date:
    """argparse type for ISO dates."""
    return date.fromisoformat(text)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m cross_sell.generate",
        description="Generate seeded sample retail data (customer, product, purchase).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--purchases", type=int, default=50000, help="number of order lines")
    parser.add_argument("--products", type=int, default=240)
    parser.add_argument("--categories", type=int, default=12, help="8..50")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="parquet")
    parser.add_argument("--start", type=_parse_date, default=None, help="default: end - 729 days")
    parser.add_argument("--end", type=_parse_date, default=None, help="default: yesterday")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    try:
        paths = generate(
            args.out,
            customers=args.customers,
            purchases=args.purchases,
            products=args.products,
            categories=args.categories,
            seed=args.seed,
            fmt=args.fmt,
            start=args.start,
            end=args.end,
        )
    except ValueError as exc:
        parser.error(str(exc))
    rows = {"customer": args.customers, "product": args.products, "purchase": args.purchases}
    for name, path in paths.items():
        print(f"{name:<9} {rows[name]:>12,} rows {path.stat().st_size:>14,} bytes  {path}")
    print(f"done in {time.perf_counter() - t0:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
