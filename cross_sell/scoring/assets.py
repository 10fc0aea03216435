"""Scoring stage: a learned model of who buys which category next, its scores, and what to offer."""

import copy
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from cross_sell import contracts
from cross_sell.quality import (
    OUTPUT_CONTRACT,
    GateFailedError,
    GateReport,
    check_result,
    frame_contract,
    gated_publish,
    output_contract_spec,
    output_gate,
    validate_frame,
)
from cross_sell.scoring import evaluation as ev
from cross_sell.scoring import model as ml
from cross_sell.scoring.logic import reason_rules_at, recommendation_reasons, rule_matrices, top_n
from cross_sell.warehouse import PUBLISHED_SCHEMA, column_schema, connect, markdown, transaction, uri

OWNER = "team:customer-analytics"
GROUP = "scoring"
BEATS_POPULARITY = "beats_popularity"
# Below this many held-out customers who bought a new category, recall@k is too noisy to compare.
MIN_EVIDENCE = 20


class ModelConfig(dg.Config):
    """How the cross-sell model is trained and evaluated (every field enters the model version)."""

    cutoff_quantile: float = 0.75
    """Time split: the cutoff sits at this fraction of the span from oldest to newest purchase."""
    min_span_days: int = 28
    """Purchase dates must span at least this many days for a time split."""
    min_positives: int = 20
    """A time split needs at least this many first purchases of a category after the cutoff."""
    holdout_share: float = 0.25
    """Share of customers held out of training, to evaluate on."""
    max_train_rows: int = 300_000
    """Training (customer, category) rows are subsampled to this many (seeded)."""
    max_eval_customers: int = 100_000
    """Held-out customers are subsampled to this many (seeded)."""
    estimator: Literal["gradient_boosting", "logistic"] = "gradient_boosting"
    calibration: Literal["sigmoid", "isotonic"] = "sigmoid"
    eval_k: int = 3
    """k of recall@k and precision@k."""
    seed: int = 42
    force_retrain: bool = False
    """Retrain even when an artifact of this exact version (same data and parameters) exists."""

    def params(self) -> ml.ModelParams:
        """The model parameters this run config sets (every field but ``force_retrain``)."""
        return ml.ModelParams(**self.model_dump(exclude={"force_retrain"}))


class RecommendationConfig(dg.Config):
    """How many categories to recommend per customer."""

    top_n: int = 3


def _category_rules(conn) -> pd.DataFrame:
    return conn.execute(
        "select antecedent, consequent, confidence, lift from product_affinity where level = 'category'"
    ).df()


def _base_rate(owned: np.ndarray) -> np.ndarray:
    buyers = int(owned.any(axis=1).sum())
    return owned.sum(axis=0) / buyers if buyers else np.zeros(owned.shape[1])


def model_metadata(model: ml.TrainedModel) -> dict:
    """Materialization metadata of the model: how it was trained and how it compares."""
    m, evaluation = model.metadata, model.evaluation
    summary = evaluation.summary.set_index("scorer")
    headline = {
        f"{scorer}_{metric}": float(summary.loc[scorer, metric])
        for scorer in ev.SCORERS
        for metric in ("roc_auc", "recall_at_k", "precision_at_k")
    }
    by_category = evaluation.by_category.rename(columns=lambda c: c.removeprefix("auc_"))
    return {
        "version": model.version,
        "strategy": m["strategy"],
        **({"fallback_reason": m["fallback_reason"]} if m.get("fallback_reason") else {}),
        "how_trained": "\n".join(ml.iter_metadata_lines(model)),
        "estimator": m["estimator"],
        "calibration": m["calibration"],
        "cutoff": m["cutoff"] or "none (cross-sectional)",
        "label_window_days": float(m["label_window_days"] or 0.0),
        "training_rows": m["training_rows"],
        "training_positives": m["training_positives"],
        "evaluation_customers": m["evaluation_customers"],
        "evaluation_positives": m["evaluation_positives"],
        "k": evaluation.k,
        **headline,
        "model_brier": float(summary.loc[ev.MODEL, "brier"]),
        "model_calibration_error": float(summary.loc[ev.MODEL, "calibration_error"]),
        "evaluation": dg.MetadataValue.md(markdown(ev.summary_table(evaluation), 3)),
        "roc_auc_by_category": dg.MetadataValue.md(markdown(by_category, 3)),
        "features": dg.MetadataValue.json(m["features"]),
        "params": dg.MetadataValue.json(m["params"]),
        "artifact": dg.MetadataValue.path(str(model.artifact)),
        "reused_artifact": model.reused,
        "timings_s": dg.MetadataValue.json(m["timings"]),
    }


@dg.asset(
    deps=["customers", "products", "purchases"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"sklearn", "duckdb"},
    pool="duckdb",
    tags={"data_product": "cross_sell"},
    metadata={"dagster/column_schema": column_schema(ml.REGISTRY_COLUMNS), "dagster/table_name": f"{PUBLISHED_SCHEMA}.{ml.REGISTRY_TABLE}"},
    check_specs=[
        dg.AssetCheckSpec(
            BEATS_POPULARITY,
            asset="cross_sell_model",
            description="Warns when the model's recall@k on held-out customers is not above the popularity baseline's.",
        )
    ],
)
def cross_sell_model(
    context: dg.AssetExecutionContext, config: ModelConfig, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    """The cross-sell model: learns, from each customer's category profile, metrics and
    demographics, the probability that they buy each category they lack. Trained on the past
    (features before a cutoff, purchases after it), calibrated, and evaluated on held-out customers
    against the popularity and affinity-rule baselines. The artifact is versioned by its data and
    parameters (``model_registry``), with its evaluation in ``model_evaluation``."""
    with connect(duckdb, needs=("customers", "products", "purchases")) as conn:
        model = ml.train_or_reuse(conn, config.params(), ml.models_dir(duckdb.database), force=config.force_retrain)
        ml.register(conn, model)
    metadata = model_metadata(model)
    context.log.info("\n".join(ml.iter_metadata_lines(model)))
    return dg.MaterializeResult(
        metadata={"dagster/uri": uri(duckdb, ml.REGISTRY_TABLE), **metadata},
        check_results=[beats_popularity(model)],
        data_version=dg.DataVersion(model.version),
    )


def beats_popularity(model: ml.TrainedModel) -> dg.AssetCheckResult:
    """WARN when the model's recall@k on held-out customers is not above the popularity baseline's.
    With fewer than MIN_EVIDENCE held-out customers who bought a new category there is nothing
    reliable to compare; the check then passes and says so."""
    evaluation = model.evaluation
    model_recall = evaluation.metric(ev.MODEL, "recall_at_k")
    popularity_recall = evaluation.metric(ev.POPULARITY, "recall_at_k")
    evidence = evaluation.customers_with_new_category
    comparable = evidence >= MIN_EVIDENCE and np.isfinite([model_recall, popularity_recall]).all()
    k = evaluation.k
    if comparable:
        passed = bool(model_recall > popularity_recall)
        description = f"recall@{k} on held-out customers: model {model_recall:.3f}, popularity {popularity_recall:.3f}"
    else:
        passed = True
        description = (
            f"not enough evidence to compare: {evidence} held-out customers bought a new category "
            f"(at least {MIN_EVIDENCE} needed)"
        )
    return dg.AssetCheckResult(
        check_name=BEATS_POPULARITY,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "model_recall_at_k": model_recall, "popularity_recall_at_k": popularity_recall, "k": k,
            "held_out_customers_with_new_category": evidence, "comparable": bool(comparable),
        },
        description=description,
    )


SCORES = dg.AssetKey("cross_sell_scores")
RECOMMENDATIONS = dg.AssetKey("cross_sell_recommendations")
SCORING_TAGS = {"data_product": "cross_sell"}


@dataclass(frozen=True)
class ScoreMatrix:
    """Every customer's scores as a dense (customers, categories) matrix, NaN where there is no
    score, with what each customer owns; customers and categories sorted as in the profiles."""

    customers: Sequence[str]
    categories: list[str]
    owned: np.ndarray  # (n, k) bool
    score: np.ndarray  # (n, k) float64

    @classmethod
    def from_scored(cls, scored: ml.Scored) -> "ScoreMatrix":
        """The scores just computed, without reading them back from the warehouse (the matrix is
        taken over, not copied: the caller is done with ``scored``)."""
        if scored.matrix is None:
            raise ValueError("these scores were made without their matrix form: rank them with ScoreMatrix.from_tables")
        profiles = scored.profiles
        return cls(profiles.customer_ids, profiles.categories, profiles.owned, scored.matrix)

    @classmethod
    def from_tables(cls, conn) -> "ScoreMatrix":
        """The published scores, with ownership from customer_category_matrix (when the
        recommendations are made without scoring in the same step)."""
        customers = conn.execute("select customer_id from customers order by customer_id").df()["customer_id"].tolist()
        categories = [r[0] for r in conn.execute("select distinct product_category from products order by 1").fetchall()]
        codes = """with c as (select customer_id, (row_number() over (order by customer_id) - 1)::integer as ci from customers),
                        k as (select product_category, (row_number() over (order by product_category) - 1)::integer as ki
                              from (select distinct product_category from products))"""
        pairs = conn.execute(
            f"{codes} select c.ci, k.ki from customer_category_matrix m join c using (customer_id) join k using (product_category)"
        ).fetchnumpy()
        scores = conn.execute(
            f"{codes} select c.ci, k.ki, s.score from cross_sell_scores s join c using (customer_id) join k using (product_category)"
        ).fetchnumpy()
        n, k = len(customers), len(categories)
        owned = np.zeros(n * k, dtype=bool)
        owned[np.asarray(pairs["ci"], dtype=np.int64) * k + np.asarray(pairs["ki"])] = True
        score = np.full(n * k, np.nan)
        score[np.asarray(scores["ci"], dtype=np.int64) * k + np.asarray(scores["ki"])] = np.asarray(scores["score"])
        return cls(customers, categories, owned.reshape(n, k), score.reshape(n, k))


def _output_spec(key: dg.AssetKey, deps: list, kinds: set[str], contract, description: str) -> dg.AssetSpec:
    """One published table of the scoring step, owned, described and with its contract's column schema."""
    return dg.AssetSpec(
        key, deps=deps, description=description, group_name=GROUP, owners=[OWNER], kinds=kinds, tags=SCORING_TAGS,
        metadata={"dagster/column_schema": contracts.table_schema(contract)},
    )


@dg.multi_asset(
    name="cross_sell_scoring",
    specs=[
        _output_spec(
            SCORES,
            ["cross_sell_model", "customer_metrics", "customer_category_matrix", "customers", "products", "purchases"],
            {"duckdb", "sklearn"},
            contracts.CrossSellScore,
            "The cross-sell opportunity score: for every customer and every category they have not "
            "bought yet, the calibrated probability (0..1) that they buy it in the model's label window, "
            "from the current model applied to everyone's profile as of the newest purchase. Sales and "
            "marketing sort by it to decide whom to offer what. Scoring never retrains the model.",
        ),
        _output_spec(
            RECOMMENDATIONS,
            [SCORES, "cross_sell_model", "product_affinity", "customer_category_matrix"],
            {"duckdb", "numpy"},
            contracts.CrossSellRecommendation,
            "The next best offers: for each customer, the top-N categories they have not bought yet by "
            "the model's score (among the categories somebody has bought), best first, each with a "
            "human-readable reason that names the strongest affinity rule behind it next to the model's "
            "view (\"bought Wines; Wines \u2192 Meat, lift 1.8; model: 42% within 182 days (typical 18%)\"). "
            "Campaign tools and account managers consume it.",
        ),
    ],
    check_specs=[
        output_contract_spec("cross_sell_scores", contracts.CrossSellScore),
        output_contract_spec("cross_sell_recommendations", contracts.CrossSellRecommendation),
    ],
    can_subset=True,
    pool="duckdb",
)
def cross_sell_scoring(
    context: dg.AssetExecutionContext, config: RecommendationConfig, duckdb: DuckDBResource
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Scores everyone, then picks each customer's top offers from those same scores: one step, so
    the tens of millions of scores are ranked where they were computed instead of being read back
    from the warehouse. Either asset can be materialized alone (the offers then read the
    published scores). The scores are gated and published before the offers are made, so a failed
    offers gate leaves the new scores in place and the previous offers as they were."""
    selected = context.selected_asset_keys
    with connect(duckdb) as conn:
        matrix = None
        if SCORES in selected:
            scored = yield from score_everyone(conn, duckdb)
            matrix = ScoreMatrix.from_scored(scored)
            del scored
        if RECOMMENDATIONS in selected:
            yield from recommend(conn, duckdb, matrix if matrix is not None else ScoreMatrix.from_tables(conn), config.top_n)


def score_everyone(conn, duckdb: DuckDBResource) -> Generator[dg.AssetCheckResult | dg.MaterializeResult, None, ml.Scored]:
    """cross_sell_scores: score, gate and publish; returns the scores."""
    model = ml.load(ml.current_artifact(conn, ml.models_dir(duckdb.database)))
    scored = ml.score(conn, model)
    categories = scored.profiles.categories
    counts = np.bincount(scored.ki, minlength=len(categories))
    sums = np.bincount(scored.ki, weights=scored.score, minlength=len(categories))
    by_category = pd.DataFrame(
        {"product_category": categories, "customers_without": counts,
         "mean_score": np.divide(sums, counts, out=np.zeros(len(categories)), where=counts > 0)}
    )
    by_category = by_category[by_category["customers_without"] > 0]
    gate = gate_scores(scored)
    if not gate.passed:
        yield gate
        raise GateFailedError(
            f"Gate cross_sell_scores:{OUTPUT_CONTRACT} FAILED, cross_sell_scores not published: {gate.description}"
        )
    publish_scores(conn, scored)
    yield dg.MaterializeResult(
        asset_key=SCORES,
        metadata={
            "dagster/row_count": len(scored.score),
            "dagster/uri": uri(duckdb, "cross_sell_scores"),
            "model_version": model.version,
            "customers": int(scored.profiles.shape[0]),
            "categories": int(scored.profiles.shape[1]),
            "scored_as_of": scored.profiles.as_of.isoformat(),
            "mean_score": float(scored.score.mean()) if len(scored.score) else 0.0,
            "score_by_category": dg.MetadataValue.md(markdown(by_category)),
            "scoring": model.metadata.get("scoring", "predict_proba"),
            "table_check_max_gap": scored.table_gap,
            "profiles_from": scored.profiles_from,
        },
        check_results=[gate],
    )
    return scored


# The scores' contract is checked this many rows at a time.
GATE_CHUNK_ROWS = 4_000_000


def gate_scores(scored: ml.Scored, chunk_rows: int = GATE_CHUNK_ROWS) -> dg.AssetCheckResult:
    """The output contract gate on the scores, in slices.

    Scoring writes rows in customer order and, within a customer, in strictly increasing category
    order. When one comparison of neighbouring codes confirms that order, no (customer_id,
    product_category) pair can repeat, so the contract's uniqueness rule is proven on the integer
    codes (pandas' duplicate search over 27 M text pairs took most of the gate's time and
    1.8 GiB), and every other rule of the contract runs in pandera, slice by slice. Rows in any
    other order are checked by pandera whole, uniqueness included, so a repeated pair is reported
    exactly as the contract words it. A failing gate reports the first slice with failures."""
    frame = scored.frame
    rows = len(frame)
    ci, ki = scored.ci, scored.ki
    in_order = rows == 0 or bool(((ci[1:] > ci[:-1]) | ((ci[1:] == ci[:-1]) & (ki[1:] > ki[:-1]))).all())
    if rows <= chunk_rows or not in_order:
        return output_gate(contracts.CrossSellScore, frame, SCORES)
    schema = copy.deepcopy(frame_contract(contracts.CrossSellScore, frame))
    schema.unique = None  # proven above on the codes
    for start in range(0, rows, chunk_rows):
        report = validate_frame(schema, frame.iloc[start:start + chunk_rows], require_rows=False)
        if not report.passed:
            return check_result(report, asset_key=SCORES, check_name=OUTPUT_CONTRACT)
    name = contracts.CrossSellScore.to_schema().name or "cross_sell_scores"
    return check_result(GateReport(contract=name, rows_checked=rows), asset_key=SCORES, check_name=OUTPUT_CONTRACT)


def publish_scores(conn, scored: ml.Scored) -> None:
    """Replace main.cross_sell_scores in one transaction, straight from the score arrays: the ids
    and categories travel as Arrow dictionaries (codes plus one copy of each name, no Python
    string per row)."""
    import pyarrow  # imported when scoring, not when the definitions load

    table = pyarrow.table(
        {
            "customer_id": pyarrow.DictionaryArray.from_arrays(
                pyarrow.array(scored.ci, type=pyarrow.int32()),
                pyarrow.array(scored.profiles.customer_ids, type=pyarrow.string()),
            ),
            "product_category": pyarrow.DictionaryArray.from_arrays(
                pyarrow.array(scored.ki.astype(np.int32), type=pyarrow.int32()),
                pyarrow.array(scored.profiles.categories, type=pyarrow.string()),
            ),
            "score": pyarrow.array(scored.score, type=pyarrow.float64()),
        }
    )
    view = "_frame_cross_sell_scores"
    conn.register(view, table)
    try:
        with transaction(conn):
            conn.execute(
                f'create or replace table "{PUBLISHED_SCHEMA}".cross_sell_scores as '
                f"select customer_id::varchar as customer_id, product_category::varchar as product_category, score from {view}"
            )
    finally:
        conn.unregister(view)


def recommend(
    conn, duckdb: DuckDBResource, matrix: ScoreMatrix, top: int
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """cross_sell_recommendations: each customer's ``top`` offers from the score matrix, with
    their reasons, gated and published."""
    customers, categories, owned = matrix.customers, matrix.categories, matrix.owned
    score = matrix.score
    score[owned] = np.nan  # never recommend what the customer already has
    # A category nobody has bought yet (a new one, say) has no evidence behind its scores and
    # no rule or popularity to explain an offer: it is scored, but never offered.
    score[:, ~owned.any(axis=0)] = np.nan
    _, lift = rule_matrices(_category_rules(conn), categories)
    current = conn.execute(f"select label_window_days, version from {ml.REGISTRY_TABLE} where is_current").fetchall()
    horizon = current[0] if current else None
    # "typical": the mean score of a category over the customers it may be offered to (0 if none)
    offerable = (~np.isnan(score)).sum(axis=0)
    typical = np.divide(np.nansum(score, axis=0), offerable, out=np.zeros(len(categories)), where=offerable > 0)
    ci, rank, ki = top_n(score, top)
    behind = reason_rules_at(owned, lift, ci, ki)
    chosen = score[ci, ki]
    frame = pd.DataFrame(
        {
            "customer_id": pd.Categorical.from_codes(ci, categories=customers),
            "rank": rank.astype(np.int64),
            "product_category": pd.Categorical.from_codes(ki, categories=categories),
            "score": chosen,
            "reason": recommendation_reasons(
                behind, ki, chosen, categories, lift, _base_rate(owned), typical, horizon[0] if horizon else None
            ),
        }
    )
    preview = frame[frame["rank"] == 1].nlargest(10, "score")
    yield from gated_publish(
        conn,
        "cross_sell_recommendations",
        contracts.CrossSellRecommendation,
        frame,
        {
            "dagster/uri": uri(duckdb, "cross_sell_recommendations"),
            "top_n": top,
            "model_version": horizon[1] if horizon else "unknown",
            "customers_with_recommendations": int(frame["customer_id"].nunique()),
            "backed_by_a_rule_share": float((behind >= 0).mean()) if len(frame) else 0.0,
            "top_recommendations": dg.MetadataValue.md(
                markdown(preview.astype({"customer_id": str, "product_category": str, "reason": str}))
            ),
        },
        asset_key=RECOMMENDATIONS,
    )
