"""The cross-sell model: P(customer buys category b | what we know about them now), learned with
scikit-learn, calibrated, evaluated against two baselines, persisted and versioned.

**Training examples.** Where the purchase dates allow (a span of at least ``min_span_days`` and at
least ``min_positives`` first purchases of a category after the cutoff), a *time split*:

* cutoff = oldest purchase + ``cutoff_quantile`` x (newest - oldest purchase), 0.75 by default,
  where a handful of stray dates long before the rest do not count as the oldest purchase
  (:func:`cross_sell.scoring.features.history_span`);
* features from purchases on or before the cutoff (:mod:`cross_sell.scoring.features`);
* one row per (customer who existed at the cutoff, category they had not bought by then);
* label = they bought that category after the cutoff, i.e. in the *label window* that runs to
  the newest purchase.

Otherwise (e.g. a spend-summary dataset with one as-of date) a *cross-sectional fallback*: for
every customer with a purchase, one bought category is hidden at random (seeded), the features
are computed as if it had never been bought, and the label is "this is the hidden category"
among all the categories the visible profile lacks.

**One pooled model for all categories**, with the candidate category as a feature, rather than
one model per category: categories share what is common to all of them (active customers adopt
more categories, at any time), rare categories borrow strength from frequent ones, one
calibration is fitted on every positive there is, and there is one artifact to version. The
category-specific signal enters through the candidate category and the pair features (how
strongly the customer's categories point at the candidate), and gradient-boosted trees learn the
interactions between them and the profile.

**Pipeline.** The feature encoder (:mod:`cross_sell.scoring.design`) turns every feature into a
small integer code, then ``HistGradientBoostingClassifier`` fits trees on the codes (native
categorical splits for the candidate category and the demographics, missing values as such, early
stopping on large data), each tree pairing the candidate category with at most one other feature
so that the model scores by table lookups; or, on request, ``logistic`` regression on one-hot
codes and median-imputed (with missing-value flags), scaled numbers. Wrapped in ``CalibratedClassifierCV`` (sigmoid by default: it is
monotone, so it keeps the model's ranking and fixes only the probability scale; isotonic on
request). On small training sets it is fitted on 3-fold out-of-fold predictions, with the base
model refit on all training rows (``ensemble=False``); from 50,000 rows on, on a stratified 20 %
of the training rows the model did not see. Either way scoring runs one model.

**Evaluation.** A seeded ``holdout_share`` of the customers is held out of training entirely; the
model and the baselines (:mod:`cross_sell.scoring.evaluation`) are scored on their rows. The
artifact that is evaluated is the artifact that scores.

**Versioning.** version = hash(data fingerprint, parameters, feature code version, scikit-learn
version). Training is seeded, so the same input and parameters give the same model; a version
whose artifact already exists is reused, not retrained.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from cross_sell.parallel import for_each_slice
from cross_sell.scoring import evaluation as ev
from cross_sell.scoring.design import AdditiveTables, FeatureEncoder
from cross_sell.scoring.features import (
    PairFeatures,
    Profiles,
    RuleStatistics,
    data_fingerprint,
    load_profiles,
    history_span,
    metrics_unusable,
    pair_features,
    profiles_from_metrics,
    purchase_span,
    rule_statistics,
)
from cross_sell.scoring.logic import rule_scores
from cross_sell.warehouse import ColumnDef, column_ddl, table_exists, transaction

# Bump when the features or the training procedure change, so old artifacts are not reused.
MODEL_CODE_VERSION = "6"
TIME_SPLIT = "time_split"
CROSS_SECTIONAL = "cross_sectional"
ARTIFACT_PREFIX = "cross_sell_model-"
REGISTRY_TABLE = "model_registry"
EVALUATION_TABLE = "model_evaluation"


@dataclass(frozen=True)
class ModelParams:
    """Everything that decides the model (all of it enters the version)."""

    cutoff_quantile: float = 0.75
    min_span_days: int = 28
    min_positives: int = 20
    holdout_share: float = 0.25
    max_train_rows: int = 300_000
    max_eval_customers: int = 100_000
    estimator: str = "gradient_boosting"  # or "logistic"
    calibration: str = "sigmoid"  # or "isotonic"
    max_iter: int = 50
    learning_rate: float = 0.2
    max_leaf_nodes: int = 31
    l2_regularization: float = 1.0
    eval_k: int = 3
    rule_min_support: float = 0.01
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 < self.cutoff_quantile < 1:
            raise ValueError("cutoff_quantile must be between 0 and 1")
        if not 0 < self.holdout_share < 1:
            raise ValueError("holdout_share must be between 0 and 1")
        if self.estimator not in ("gradient_boosting", "logistic"):
            raise ValueError("estimator must be 'gradient_boosting' or 'logistic'")
        if self.calibration not in ("sigmoid", "isotonic"):
            raise ValueError("calibration must be 'sigmoid' or 'isotonic'")
        if self.max_train_rows < 100 or self.max_eval_customers < 10 or self.eval_k < 1:
            raise ValueError("max_train_rows >= 100, max_eval_customers >= 10 and eval_k >= 1 are required")


@dataclass(frozen=True)
class TrainingSet:
    """Labelled (customer, candidate category) rows with the features they are built from.

    The rows are kept as two (customers, categories) masks, not as a list: ``candidate`` marks the
    cells that are rows and ``label`` the positives among them. Tens of millions of candidate rows
    are never listed, only the ones that training and evaluation draw (:func:`split_customers`)."""

    strategy: str
    profiles: Profiles
    rules: RuleStatistics
    pairs: PairFeatures
    candidate: np.ndarray  # (n, k) bool: the (customer, category) cells that are rows
    label: np.ndarray  # (n, k) bool: the positive rows (False outside ``candidate``)
    newest_purchase: pd.Timestamp
    cutoff: pd.Timestamp | None
    label_window_days: float | None
    fallback_reason: str | None
    stray_lines: int = 0  # purchases dated before the history's start, left out of the span


@dataclass
class TrainedModel:
    """A fitted, calibrated model and everything known about how it came to be."""

    estimator: object
    version: str
    metadata: dict
    encoder: FeatureEncoder | None = None
    tables: AdditiveTables | None = None
    evaluation: ev.Evaluation | None = None
    artifact: Path | None = None
    reused: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def categories(self) -> list[str]:
        return list(self.metadata["categories"])


# ---------------------------------------------------------------------------------------------
# Training data


def _seed(params: ModelParams, stream: str) -> np.random.Generator:
    return np.random.default_rng([params.seed, sum(stream.encode())])


def _candidates(profiles: Profiles, label: np.ndarray, customers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidate mask (every category each customer in ``customers`` lacks) and the label
    restricted to it."""
    mask = np.zeros(profiles.shape[0], dtype=bool)
    mask[customers] = True
    candidate = ~profiles.owned & mask[:, None]
    return candidate, label & candidate


def _cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(customer, category) indices of the True cells of a (customers, categories) mask, in
    customer then category order. Flat positions split into row and column: half the time of a
    2-D nonzero."""
    ci, ki = np.divmod(np.flatnonzero(mask), mask.shape[1])
    return ci.astype(np.int32), ki.astype(np.int32)


def _nth_cells(mask: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cells of rank ``ranks`` (sorted) among the True cells of ``mask`` in customer then
    category order: ``_cells(mask)`` at ``ranks``, without listing every cell."""
    per_customer = mask.sum(axis=1, dtype=np.int64)
    ends = np.cumsum(per_customer)
    ci = np.searchsorted(ends, ranks, side="right")
    within = ranks - (ends[ci] - per_customer[ci])  # 0-based rank inside the customer's row
    seen = np.cumsum(mask[ci], axis=1, dtype=np.int32)
    ki = np.argmax(seen > within[:, None], axis=1)
    return ci.astype(np.int32), ki.astype(np.int32)


def build_training_set(conn: duckdb.DuckDBPyConnection, params: ModelParams) -> TrainingSet:
    """Time split where the dates allow, else the cross-sectional fallback (see module doc)."""
    first, last, stray = history_span(conn)
    if last is None:
        raise ValueError("there are no purchases: the cross-sell model has nothing to learn from")
    span_days = (last - first).total_seconds() / 86400
    if span_days >= params.min_span_days:
        cutoff = first + (last - first) * params.cutoff_quantile
        profiles = load_profiles(conn, cutoff)
        candidate, label = _candidates(profiles, profiles.bought_after, np.flatnonzero(profiles.active))
        positives = int(np.count_nonzero(label))
        if positives >= params.min_positives:
            rules = rule_statistics(profiles.owned)
            return TrainingSet(
                TIME_SPLIT, profiles, rules, pair_features(profiles, rules), candidate, label, last, cutoff,
                round((last - cutoff).total_seconds() / 86400, 2), None, stray,
            )
        reason = (
            f"only {positives} first purchases of a category after the cutoff {cutoff:%Y-%m-%d} "
            f"(min_positives {params.min_positives})"
        )
    else:
        reason = f"purchase dates span {span_days:.1f} days (min_span_days {params.min_span_days})"

    full = load_profiles(conn, last)
    owners = np.flatnonzero(full.owned.any(axis=1))
    keys = np.where(full.owned, _seed(params, "hide").random(full.shape), -1.0)
    hidden = keys.argmax(axis=1)[owners]
    profiles = load_profiles(conn, last, hidden=(owners, hidden))
    label = np.zeros(profiles.shape, dtype=bool)
    label[owners, hidden] = True
    candidate, label = _candidates(profiles, label, owners)
    rules = rule_statistics(profiles.owned)
    return TrainingSet(
        CROSS_SECTIONAL, profiles, rules, pair_features(profiles, rules), candidate, label, last, None, None, reason
    )


@dataclass(frozen=True)
class Rows:
    """(customer, category) rows of a training set, in customer then category order, with labels."""

    ci: np.ndarray  # int32
    ki: np.ndarray  # int32
    label: np.ndarray  # bool

    @classmethod
    def at(cls, training: TrainingSet, ci: np.ndarray, ki: np.ndarray) -> Rows:
        return cls(ci, ki, training.label[ci, ki])

    def __len__(self) -> int:
        return len(self.ci)


def all_rows(training: TrainingSet) -> Rows:
    """Every candidate row of a training set (tens of millions at scale: for small data and tests)."""
    return Rows.at(training, *_cells(training.candidate))


def split_customers(training: TrainingSet, params: ModelParams) -> tuple[Rows, Rows]:
    """Rows for training and for evaluation: a seeded share of customers is held out entirely;
    training rows are subsampled to ``max_train_rows`` (a seeded uniform draw among the candidate
    rows of the other customers), evaluation customers to ``max_eval_customers``. Only the drawn
    rows are listed."""
    n = training.profiles.shape[0]
    rng = _seed(params, "split")
    held_out = rng.random(n) < params.holdout_share
    eval_customers = np.flatnonzero(held_out & training.candidate.any(axis=1))
    if len(eval_customers) > params.max_eval_customers:
        eval_customers = np.sort(rng.choice(eval_customers, params.max_eval_customers, replace=False))
    in_eval = np.zeros(n, dtype=bool)
    in_eval[eval_customers] = True
    evaluation = Rows.at(training, *_cells(training.candidate & in_eval[:, None]))
    trainable = training.candidate & ~held_out[:, None]
    total = int(np.count_nonzero(trainable))
    if total > params.max_train_rows:
        ranks = np.sort(rng.choice(total, params.max_train_rows, replace=False))
        return Rows.at(training, *_nth_cells(trainable, ranks)), evaluation
    return Rows.at(training, *_cells(trainable)), evaluation


# ---------------------------------------------------------------------------------------------
# The pipeline

# Below this many rows the trees fit faster on one thread: OpenMP start-up and hand-offs cost
# more than they save, and far more on a busy machine. Predicting parallelizes over rows and
# pays off much sooner (2 cores: 3,000 rows 25 ms on one thread, 17 ms on two; 30,000 rows
# 389 ms and 142 ms).
SINGLE_THREAD_ROWS = 100_000
PREDICT_SINGLE_THREAD_ROWS = 2_000
CALIBRATION_HOLDOUT_ROWS = 50_000
PREDICT_CHUNK_ROWS = 200_000
SCORE_CHUNK_CUSTOMERS = 131_072
# The tables check: whole customers (every category) up to this many rows, 2,000 customers at 30
# categories; a catalogue of 167 categories (the Groceries basket log) checks 359 customers.
VERIFY_ROWS = 60_000
TABLE_TOLERANCE = 1e-9


def _threads(rows: int, below: int = SINGLE_THREAD_ROWS) -> AbstractContextManager:
    """One OpenMP thread for fewer than ``below`` rows, else all of them."""
    return threadpool_limits(limits=1, user_api="openmp") if rows < below else nullcontext()


def build_pipeline(encoder: FeatureEncoder, params: ModelParams, *, prior_only: bool = False):
    """The classifier on the encoder's matrix (see :mod:`cross_sell.scoring.design`).

    Gradient boosting: trees on the codes (native categorical splits for the category codes, NaN
    as missing), each tree combining the candidate category with at most one other feature, so
    the model is additive per category and scores by table lookups. Logistic: one-hot codes of
    the categories and median-imputed (with missing-value flags), scaled codes of the numbers."""
    if prior_only:
        return DummyClassifier(strategy="prior")
    categorical = encoder.categorical
    numeric = [i for i in range(len(encoder.names)) if i not in categorical]
    if params.estimator == "logistic":
        encode = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, sparse_output=False)
        numbers = Pipeline(
            [("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
             ("scale", StandardScaler())]
        )
        transform = ColumnTransformer([("categories", encode, categorical), ("numbers", numbers, numeric)], sparse_threshold=0.0)
        return Pipeline([("features", transform), ("classifier", LogisticRegression(C=1.0, max_iter=2000, random_state=params.seed))])
    return HistGradientBoostingClassifier(
        max_iter=params.max_iter,
        learning_rate=params.learning_rate,
        max_leaf_nodes=params.max_leaf_nodes,
        l2_regularization=params.l2_regularization,
        categorical_features=categorical,
        interaction_cst=[[0, j] for j in range(1, len(encoder.names))],
        random_state=params.seed,
    )


def _single_calibration(estimator) -> tuple[object, object] | None:
    """(fitted base model, calibrator) of a calibrated model that scores with one base model."""
    fitted = getattr(estimator, "calibrated_classifiers_", None)
    if not fitted or len(fitted) != 1 or len(fitted[0].calibrators) != 1:
        return None
    base = fitted[0].estimator
    if not hasattr(base, "decision_function"):
        return None
    return base, fitted[0].calibrators[0]


def _calibrate(calibrator, raw: np.ndarray) -> np.ndarray:
    """What CalibratedClassifierCV.predict_proba does with the base model's raw scores (binary)."""
    proba = np.asarray(calibrator.predict(raw.ravel()), dtype=np.float64).reshape(raw.shape)
    proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
    return np.clip(proba, 0.0, 1.0)


def tabulate(estimator, encoder: FeatureEncoder, params: ModelParams) -> AdditiveTables | None:
    """Lookup tables for a calibrated gradient-boosting model (None for other models)."""
    if params.estimator != "gradient_boosting":
        return None
    parts = _single_calibration(estimator)
    if parts is None:
        return None
    base, _ = parts
    return AdditiveTables.tabulate(base.decision_function, encoder)


def predict(
    model: TrainedModel, profiles: Profiles, pairs: PairFeatures, ci: np.ndarray, ki: np.ndarray,
    chunk_rows: int = PREDICT_CHUNK_ROWS,
) -> np.ndarray:
    """Calibrated probabilities for (customer, category) rows with the model itself (predict_proba),
    in memory-bounded chunks of the encoded matrix."""
    out = np.empty(len(ci), dtype=np.float64)
    for start in range(0, len(ci), chunk_rows):
        stop = min(start + chunk_rows, len(ci))
        x = model.encoder.matrix(model.encoder.codes(profiles, pairs, ci[start:stop], ki[start:stop]))
        with _threads(len(x), PREDICT_SINGLE_THREAD_ROWS):
            out[start:stop] = positive_probability(model.estimator, x)
    return np.clip(out, 0.0, 1.0)


def positive_probability(estimator, x: np.ndarray) -> np.ndarray:
    """P(label 1) from ``predict_proba``, also for a model that only ever saw one label (every
    training row bought, or none did): its one column is then the certainty of that label."""
    proba = estimator.predict_proba(x)
    classes = list(estimator.classes_)
    return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(x))


def predict_customers(
    model: TrainedModel, profiles: Profiles, pairs: PairFeatures, rows: np.ndarray | slice,
    customer_codes: np.ndarray | None = None,
) -> np.ndarray:
    """(customers, profile categories) calibrated probabilities for the customers ``rows`` and every
    category (owned ones included; callers drop them). By table lookups when the model has
    tables (``customer_codes``: the rows' customer feature codes, if the caller has them), else
    with predict_proba."""
    parts = _single_calibration(model.estimator) if model.tables is not None else None
    if parts is not None:
        return _calibrate(parts[1], model.tables.raw_scores(model.encoder, profiles, pairs, rows, customer_codes))
    customers = np.arange(profiles.shape[0])[rows]
    k = profiles.shape[1]
    ci = np.repeat(customers, k).astype(np.int32)
    ki = np.tile(np.arange(k, dtype=np.int32), len(customers))
    return predict(model, profiles, pairs, ci, ki).reshape(len(customers), k)


def predict_rows(model: TrainedModel, profiles: Profiles, pairs: PairFeatures, ci: np.ndarray, ki: np.ndarray) -> np.ndarray:
    """Calibrated probabilities for (customer, category) rows, the fast way when the model allows."""
    if model.tables is None:
        return predict(model, profiles, pairs, ci, ki)
    customers, local = np.unique(ci, return_inverse=True)
    out = np.empty(len(ci), dtype=np.float64)
    for start in range(0, len(customers), SCORE_CHUNK_CUSTOMERS):
        stop = min(start + SCORE_CHUNK_CUSTOMERS, len(customers))
        block = predict_customers(model, profiles, pairs, customers[start:stop])
        rows = np.flatnonzero((local >= start) & (local < stop))
        out[rows] = block[local[rows] - start, ki[rows]]
    return out


def verify_tables(model: TrainedModel, profiles: Profiles, pairs: PairFeatures, seed: int) -> float:
    """Largest gap between the table scores and the model's own predict_proba on a seeded sample
    of customers (every category); raises when they disagree, so tables can never drift from
    the model they were read from."""
    if model.tables is None or profiles.shape[0] == 0:
        return 0.0
    rng = np.random.default_rng([seed, 11])
    n, k = profiles.shape
    customers = np.sort(rng.choice(n, min(n, max(1, VERIFY_ROWS // max(k, 1))), replace=False))
    fast = predict_customers(model, profiles, pairs, customers)
    ci = np.repeat(customers, k).astype(np.int32)
    ki = np.tile(np.arange(k, dtype=np.int32), len(customers))
    exact = predict(model, profiles, pairs, ci, ki).reshape(len(customers), k)
    gap = float(np.max(np.abs(fast - exact))) if fast.size else 0.0
    if not gap <= TABLE_TOLERANCE:
        raise RuntimeError(f"model tables disagree with the model by {gap:.3g}: retrain with force_retrain")
    return gap


def _fit(training: TrainingSet, rows: Rows, params: ModelParams) -> tuple[object, str, FeatureEncoder]:
    """Encode, fit and calibrate. Small training sets: 3-fold cross-validated calibration (the
    calibrator learns from out-of-fold predictions, the model is then refit on every row).
    From ``CALIBRATION_HOLDOUT_ROWS`` rows on: one fit on 80 % of the rows and the calibrator on
    the other 20 % (stratified), which costs one fit instead of four and still leaves tens of
    thousands of rows for two sigmoid parameters."""
    ci, ki = rows.ci, rows.ki
    encoder = FeatureEncoder.fit(training.profiles, training.pairs, ci, ki, params.seed)
    x = encoder.matrix(encoder.codes(training.profiles, training.pairs, ci, ki))
    y = rows.label.astype(np.int8)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if min(positives, negatives) < 2:
        # Too little to learn from: a calibrated constant (the observed rate) is the honest answer.
        return build_pipeline(encoder, params, prior_only=True).fit(x, y), "prior", encoder
    with _threads(len(x)):
        if len(x) >= CALIBRATION_HOLDOUT_ROWS:
            fit_rows, calibration_rows = train_test_split(
                np.arange(len(x)), test_size=0.2, stratify=y, random_state=params.seed
            )
            base = build_pipeline(encoder, params).fit(x[fit_rows], y[fit_rows])
            model = CalibratedClassifierCV(FrozenEstimator(base), method=params.calibration)
            model.fit(x[calibration_rows], y[calibration_rows])
        else:
            folds = StratifiedKFold(n_splits=min(3, positives, negatives), shuffle=True, random_state=params.seed)
            model = CalibratedClassifierCV(
                build_pipeline(encoder, params), method=params.calibration, cv=folds, ensemble=False
            )
            model.fit(x, y)
    return model, params.estimator, encoder


# ---------------------------------------------------------------------------------------------
# Train, evaluate, version


def model_version(fingerprint: str, params: ModelParams) -> str:
    """Content hash of the training data, the parameters and the code that turns one into a model."""
    payload = json.dumps(
        {"data": fingerprint, "params": asdict(params), "code": MODEL_CODE_VERSION, "sklearn": sklearn.__version__},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def baseline_scores(training: TrainingSet, ci: np.ndarray, ki: np.ndarray, params: ModelParams) -> dict[str, np.ndarray]:
    """Popularity and affinity-rule scores for (customer, category) rows, from the same snapshot."""
    rules = training.rules
    customers, local = np.unique(ci, return_inverse=True)
    confidence = np.where(rules.pair_support >= params.rule_min_support, rules.confidence, 0.0)
    by_rules = rule_scores(training.profiles.owned[customers], confidence, rules.popularity).score
    return {ev.AFFINITY: by_rules[local, ki], ev.POPULARITY: rules.popularity[ki]}


def train(conn: duckdb.DuckDBPyConnection, params: ModelParams, *, fingerprint: str | None = None) -> TrainedModel:
    """Build the training set, fit and calibrate the model, and evaluate it and the baselines on
    held-out customers. Reads the warehouse only."""
    t0 = time.perf_counter()
    fingerprint = fingerprint or data_fingerprint(conn)
    version = model_version(fingerprint, params)
    training = build_training_set(conn, params)
    train_rows, eval_rows = split_customers(training, params)
    t1 = time.perf_counter()
    estimator, kind, encoder = _fit(training, train_rows, params)
    tables = tabulate(estimator, encoder, params) if kind != "prior" else None
    model = TrainedModel(estimator=estimator, version=version, metadata={}, encoder=encoder, tables=tables)
    t2 = time.perf_counter()
    categories = training.profiles.categories
    eci, eki, ey = eval_rows.ci, eval_rows.ki, eval_rows.label
    verify_tables(model, training.profiles, training.pairs, params.seed)
    scores = {ev.MODEL: predict_rows(model, training.profiles, training.pairs, eci, eki)}
    scores.update(baseline_scores(training, eci, eki, params))
    evaluation = ev.evaluate(scores, eci, eki, ey, categories, params.eval_k)
    t3 = time.perf_counter()
    metadata = {
        "version": version,
        "trained_at": datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds"),
        "strategy": training.strategy,
        "fallback_reason": training.fallback_reason,
        "stray_lines": training.stray_lines,
        "estimator": kind,
        "calibration": params.calibration if kind != "prior" else "none",
        "scoring": "additive tables (checked against predict_proba)" if tables is not None else "predict_proba",
        "cutoff": training.cutoff.isoformat() if training.cutoff is not None else None,
        "newest_purchase": training.newest_purchase.isoformat(),
        "label_window_days": training.label_window_days,
        "customers": int(training.profiles.shape[0]),
        "categories": categories,
        "candidate_rows": int(np.count_nonzero(training.candidate)),
        "candidate_positives": int(np.count_nonzero(training.label)),
        "training_rows": len(train_rows),
        "training_positives": int(np.count_nonzero(train_rows.label)),
        "evaluation_customers": evaluation.customers,
        "evaluation_rows": evaluation.rows,
        "evaluation_positives": evaluation.positives,
        "features": encoder.names,
        "params": asdict(params),
        "data_fingerprint": fingerprint,
        "sklearn_version": sklearn.__version__,
        "model_code_version": MODEL_CODE_VERSION,
        "summary": evaluation.summary.to_dict(orient="list"),  # column lists: an empty table keeps its columns
        "by_category": evaluation.by_category.to_dict(orient="list"),
        "eval_k": evaluation.k,
        "customers_with_new_category": evaluation.customers_with_new_category,
    }
    timings = {"features_s": t1 - t0, "fit_s": t2 - t1, "evaluate_s": t3 - t2}
    metadata["timings"] = {k: round(v, 3) for k, v in timings.items()}
    model.metadata, model.evaluation, model.timings = metadata, evaluation, timings
    return model


def evaluation_from_metadata(metadata: dict) -> ev.Evaluation:
    """The evaluation stored with an artifact (for a reused model)."""
    return ev.Evaluation(
        k=int(metadata["eval_k"]),
        summary=pd.DataFrame(metadata["summary"]),
        by_category=pd.DataFrame(metadata["by_category"]),
        customers=int(metadata["evaluation_customers"]),
        customers_with_new_category=int(metadata["customers_with_new_category"]),
        rows=int(metadata["evaluation_rows"]),
        positives=int(metadata["evaluation_positives"]),
    )


# ---------------------------------------------------------------------------------------------
# Artifacts and the registry


def models_dir(database: str | os.PathLike[str]) -> Path:
    """Where artifacts live: ``models/`` beside the warehouse file."""
    if str(database) == ":memory:":
        raise ValueError("the cross-sell model needs a warehouse file to keep its artifacts beside")
    return Path(database).resolve().parent / "models"


def artifact_path(directory: Path, version: str) -> Path:
    return directory / f"{ARTIFACT_PREFIX}{version}.joblib"


def save(model: TrainedModel, directory: Path) -> Path:
    """Persist the model and its metadata atomically (write a temporary file, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = artifact_path(directory, model.version)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    joblib.dump(
        {"estimator": model.estimator, "encoder": model.encoder, "tables": model.tables, "metadata": model.metadata},
        tmp, compress=3,
    )
    os.replace(tmp, path)
    model.artifact = path
    return path


def load(path: Path) -> TrainedModel:
    """A persisted model, ready to score (no training)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"model artifact {path} is missing: materialize cross_sell_model to train and save it"
        )
    payload = joblib.load(path)
    metadata = payload["metadata"]
    if payload.get("encoder") is None or metadata.get("model_code_version") != MODEL_CODE_VERSION:
        raise ValueError(
            f"model artifact {path} was made by another version of the model code: "
            "materialize cross_sell_model to train a current one"
        )
    return TrainedModel(
        estimator=payload["estimator"], version=metadata["version"], metadata=metadata,
        encoder=payload["encoder"], tables=payload.get("tables"),
        evaluation=evaluation_from_metadata(metadata), artifact=path, reused=True,
    )


def train_or_reuse(
    conn: duckdb.DuckDBPyConnection, params: ModelParams, directory: Path, *, force: bool = False
) -> TrainedModel:
    """Reuse the artifact of this exact version if it exists (same data, same parameters, same
    code); otherwise train, evaluate and save a new one."""
    fingerprint = data_fingerprint(conn)
    path = artifact_path(directory, model_version(fingerprint, params))
    if path.is_file() and not force:
        return load(path)
    model = train(conn, params, fingerprint=fingerprint)
    save(model, directory)
    return model


REGISTRY_COLUMNS = (
    ColumnDef("version", "varchar", "Content hash of the training data, the parameters and the code: the model's identity.", primary_key=True),
    ColumnDef("is_current", "boolean", "True for the one model that scores.", nullable=False),
    ColumnDef("trained_at", "timestamp", "When the model was trained (UTC).", nullable=False),
    ColumnDef("registered_at", "timestamp", "When this row was written (UTC).", nullable=False),
    ColumnDef("strategy", "varchar", "time_split, or cross_sectional when the purchase dates do not allow one.", nullable=False),
    ColumnDef("estimator", "varchar", "gradient_boosting or logistic; prior when there was too little to learn from.", nullable=False),
    ColumnDef("calibration", "varchar", "sigmoid or isotonic (none for a prior).", nullable=False),
    ColumnDef("cutoff", "timestamp", "Time split: the features are as of this moment; null for the cross-sectional fallback."),
    ColumnDef("newest_purchase", "timestamp", "The newest purchase in the training data: the end of the label window.", nullable=False),
    ColumnDef("label_window_days", "double", "Days from the cutoff to the newest purchase: the horizon the scores speak of."),
    ColumnDef("customers", "bigint", "Customers in the training snapshot.", nullable=False),
    ColumnDef("categories", "bigint", "Categories the model knows.", nullable=False),
    ColumnDef("training_rows", "bigint", "(customer, category) rows the model was fitted on.", nullable=False),
    ColumnDef("training_positives", "bigint", "Of those, the rows whose customer went on to buy the category.", nullable=False),
    ColumnDef("evaluation_customers", "bigint", "Held-out customers the model and the baselines were evaluated on.", nullable=False),
    ColumnDef("evaluation_positives", "bigint", "Held-out rows whose customer went on to buy the category.", nullable=False),
    ColumnDef("artifact", "varchar", "Path of the persisted model (joblib) in the models folder beside the warehouse.", nullable=False),
    ColumnDef("data_fingerprint", "varchar", "Fingerprint of the inputs the model was trained on.", nullable=False),
    ColumnDef("features", "varchar", "JSON list of the model's features, in matrix order.", nullable=False),
    ColumnDef("params", "varchar", "JSON of every training parameter.", nullable=False),
    ColumnDef("metadata", "varchar", "JSON of the rest of the training metadata (timings, evaluation summary, ...).", nullable=False),
)
_REGISTRY_DDL = f"create table if not exists {REGISTRY_TABLE} (\n    {column_ddl(REGISTRY_COLUMNS)}\n)"
_EVALUATION_DDL = f"""
create table if not exists {EVALUATION_TABLE} (
    version varchar not null,
    scorer varchar not null,
    metric varchar not null,
    category varchar not null,
    k integer not null,
    value double
)"""


def register(conn: duckdb.DuckDBPyConnection, model: TrainedModel) -> None:
    """Record the model (training metadata) and its evaluation in the warehouse and make it the
    current one, in one transaction."""
    m = model.metadata
    rows = model.evaluation.long_format().assign(version=model.version, k=model.evaluation.k)
    rows = rows[["version", "scorer", "metric", "category", "k", "value"]]
    with transaction(conn):
        conn.execute(_REGISTRY_DDL)
        conn.execute(_EVALUATION_DDL)
        conn.execute(f"delete from {REGISTRY_TABLE} where version = ?", [model.version])
        conn.execute(f"delete from {EVALUATION_TABLE} where version = ?", [model.version])
        conn.execute(
            f"insert into {REGISTRY_TABLE} values (?, false, ?, now()::timestamp, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                model.version, m["trained_at"], m["strategy"], m["estimator"], m["calibration"], m["cutoff"],
                m["newest_purchase"], m["label_window_days"], m["customers"], len(m["categories"]),
                m["training_rows"], m["training_positives"], m["evaluation_customers"], m["evaluation_positives"],
                str(model.artifact), m["data_fingerprint"], json.dumps(m["features"]), json.dumps(m["params"]),
                json.dumps({k: v for k, v in m.items() if k not in ("features", "params")}, default=str),
            ],
        )
        conn.execute(f"update {REGISTRY_TABLE} set is_current = (version = ?)", [model.version])
        conn.register("_model_evaluation_rows", rows)
        try:
            conn.execute(f"insert into {EVALUATION_TABLE} select * from _model_evaluation_rows")
        finally:
            conn.unregister("_model_evaluation_rows")


def current_artifact(conn: duckdb.DuckDBPyConnection, directory: Path) -> Path:
    """The artifact of the current model, as registered in the warehouse, looked up in
    ``directory`` (the models folder beside the warehouse, so a moved folder keeps working)."""
    if not table_exists(conn, REGISTRY_TABLE):
        raise LookupError("no cross-sell model is registered yet: materialize cross_sell_model first")
    rows = conn.execute(f"select version from {REGISTRY_TABLE} where is_current").fetchall()
    if not rows:
        raise LookupError("no current cross-sell model in model_registry: materialize cross_sell_model first")
    return artifact_path(directory, rows[0][0])


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class Scored:
    """Scores for every customer and category they lack, as of the newest purchase: row i is
    customer ``ci[i]`` (index into ``profiles.customer_ids``) and category ``ki[i]`` (index into
    ``profiles.categories``), in customer then category order."""

    ci: np.ndarray  # int32
    ki: np.ndarray  # int8/int16
    score: np.ndarray  # float64
    profiles: Profiles
    table_gap: float = 0.0  # largest gap between table scores and predict_proba on the checked sample
    profiles_from: str = "purchases"  # where the profiles were read: see score()
    # The same scores as a (customers, categories) matrix, NaN where the customer owns the category
    # (what ranking the offers needs), when the scorer made it.
    matrix: np.ndarray | None = None

    @property
    def frame(self) -> pd.DataFrame:
        """customer_id (categorical), product_category (categorical), score."""
        return pd.DataFrame(
            {
                "customer_id": pd.Categorical.from_codes(self.ci, categories=self.profiles.customer_ids),
                "product_category": pd.Categorical.from_codes(self.ki, categories=self.profiles.categories),
                "score": self.score,
            }
        )


def score(conn: duckdb.DuckDBPyConnection, model: TrainedModel, chunk_customers: int = SCORE_CHUNK_CUSTOMERS) -> Scored:
    """Score every customer x category not yet bought with a trained model (never trains).

    Features are recomputed on all data, as of the newest purchase: read from the published
    customer metrics and customer x category matrix when those are current (the same numbers, a
    few million rows instead of every purchase line), else aggregated from the purchase lines.
    ``Scored.profiles_from`` says which, and why. Customers are scored in chunks, every category
    at once; owned categories are dropped (``Scored.matrix`` keeps them, as NaN)."""
    _, last = purchase_span(conn)
    if last is None:
        raise ValueError("there are no purchases to score from")
    unusable = metrics_unusable(conn)
    if unusable is None:
        profiles, source = profiles_from_metrics(conn, last), "customer_metrics and customer_category_matrix"
    else:
        profiles, source = load_profiles(conn, last), f"purchases ({unusable})"
    pairs = pair_features(profiles, rule_statistics(profiles.owned))
    gap = verify_tables(model, profiles, pairs, int(model.metadata["params"]["seed"]))
    n, k = profiles.shape
    lacking = ~profiles.owned
    per_customer = lacking.sum(axis=1)
    # Where each customer's rows start in the output: the chunks write disjoint slices of it.
    position = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_customer, out=position[1:])
    total = int(position[-1])
    ci = np.repeat(np.arange(n, dtype=np.int32), per_customer)
    ki = np.empty(total, dtype=np.int8 if k < 128 else np.int16)
    values = np.empty(total, dtype=np.float64)
    matrix = np.empty((n, k), dtype=np.float64)
    # Customer features are coded once for everyone (a few large binning passes, not one per chunk).
    codes = model.encoder.customer_codes(profiles) if model.tables is not None else None
    category_of_cell = np.tile(np.arange(k, dtype=ki.dtype), min(n, chunk_customers))  # a chunk's cells, row by row

    def score_chunk(start: int, stop: int) -> None:
        block = predict_customers(model, profiles, pairs, slice(start, stop), None if codes is None else codes[start:stop])
        mask = lacking[start:stop]
        values[position[start]:position[stop]] = block[mask]
        np.copyto(matrix[start:stop], np.where(mask, block, np.nan))
        ki[position[start]:position[stop]] = category_of_cell[: mask.size][mask.reshape(-1)]

    # Table lookups are plain numpy, so the chunks run on every core. predict_proba is left on
    # one thread: its trees bring their own OpenMP threads and process-wide thread limits.
    for_each_slice(score_chunk, n, chunk_customers, threads=None if model.tables is not None else 1)
    return Scored(ci=ci, ki=ki, score=values, profiles=profiles, table_gap=gap, profiles_from=source, matrix=matrix)


def train_and_score(
    conn: duckdb.DuckDBPyConnection, params: ModelParams, directory: Path, *, force: bool = False
) -> tuple[TrainedModel, Scored, dict[str, float]]:
    """Train (or reuse), save and score, from the warehouse tables: what a benchmark measures.
    Returns the model, the scores and wall-clock seconds per stage. Writes nothing to the warehouse."""
    t0 = time.perf_counter()
    model = train_or_reuse(conn, params, directory, force=force)
    t1 = time.perf_counter()
    scored = score(conn, model)
    t2 = time.perf_counter()
    return model, scored, {"train_s": t1 - t0, "score_s": t2 - t1, **model.timings}


def iter_metadata_lines(model: TrainedModel) -> Iterator[str]:
    """A short human-readable account of how the model was trained."""
    m = model.metadata
    if m["strategy"] == TIME_SPLIT:
        yield (
            f"time split: features as of {m['cutoff'][:10]}, label = first purchase of a category in the "
            f"{m['label_window_days']:.0f} days to {m['newest_purchase'][:10]}"
        )
        if m.get("stray_lines"):
            yield (
                f"{m['stray_lines']:,} purchases dated long before the rest of the history were left out "
                "of the span the cutoff is placed in (stray dates)"
            )
    else:
        yield f"cross-sectional fallback (one bought category hidden per customer): {m['fallback_reason']}"
    yield (
        f"{m['estimator']} + {m['calibration']} calibration on {m['training_rows']:,} rows "
        f"({m['training_positives']:,} positive); evaluated on {m['evaluation_customers']:,} held-out customers "
        f"({m['evaluation_rows']:,} rows, {m['evaluation_positives']:,} positive)"
    )
