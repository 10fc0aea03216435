"""Scoring by additive tables against the model's own predict_proba, chunk sizes and precomputed
customer codes included, on a model trained by a real Dagster run into a DuckDB file."""

from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest

from cross_sell.definitions import ASSETS, CHECKS
from cross_sell.scoring import model as ml
from cross_sell.scoring.features import pair_features, rule_statistics
from cross_sell_tests.conftest import PROJECT_ROOT, make_resources

SAMPLE = PROJECT_ROOT / "data" / "sample"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    warehouse = tmp_path_factory.mktemp("tables") / "cross_sell.duckdb"
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=dg.AssetSelection.assets("cross_sell_model").upstream(),
        resources=make_resources(SAMPLE, warehouse),
    )
    assert result.success
    return warehouse


def test_table_scores_match_predict_proba_whatever_the_chunking(trained: Path) -> None:
    with duckdb.connect(str(trained), read_only=True) as conn:
        model = ml.load(ml.current_artifact(conn, ml.models_dir(trained)))
        assert model.tables is not None, "the default model scores by tables"
        whole = ml.score(conn, model, chunk_customers=1 << 30)
        chunked = ml.score(conn, model, chunk_customers=97)  # many chunks, a short last one
    np.testing.assert_array_equal(whole.ci, chunked.ci)
    np.testing.assert_array_equal(whole.ki, chunked.ki)
    # Each chunk adds its own most common codes first, so sums may round differently, never more.
    np.testing.assert_allclose(whole.score, chunked.score, rtol=0, atol=1e-12)
    # The matrix form holds the same scores at (ci, ki) and NaN exactly where the customer owns the category.
    for scored in (whole, chunked):
        assert scored.matrix.shape == scored.profiles.shape
        np.testing.assert_array_equal(scored.matrix[scored.ci, scored.ki], scored.score)
        np.testing.assert_array_equal(np.isnan(scored.matrix), scored.profiles.owned)

    profiles = whole.profiles
    pairs = pair_features(profiles, rule_statistics(profiles.owned))
    reference = ml.predict(model, profiles, pairs, whole.ci, whole.ki.astype(np.int64))
    assert np.abs(reference - whole.score).max() <= ml.TABLE_TOLERANCE
    assert whole.score.std() > 0.01, "scores must vary, or the comparison proves little"


def test_precomputed_customer_codes_give_the_same_raw_scores(trained: Path) -> None:
    with duckdb.connect(str(trained), read_only=True) as conn:
        model = ml.load(ml.current_artifact(conn, ml.models_dir(trained)))
        scored = ml.score(conn, model)
    profiles = scored.profiles
    pairs = pair_features(profiles, rule_statistics(profiles.owned))
    codes = model.encoder.customer_codes(profiles)
    assert codes.shape == (profiles.shape[0], len(model.encoder.customer_names))
    rows = np.arange(3, profiles.shape[0], 5)  # an index array, not a slice
    np.testing.assert_array_equal(codes[rows], model.encoder.customer_codes(profiles, rows))
    on_the_fly = model.tables.raw_scores(model.encoder, profiles, pairs, rows)
    given = model.tables.raw_scores(model.encoder, profiles, pairs, rows, codes[rows])
    np.testing.assert_array_equal(on_the_fly, given)
    # Customers at a feature's less common codes exist, so the sparse part is exercised.
    common = np.array([np.bincount(c).argmax() for c in codes[rows].T])
    assert (codes[rows] != common).any(axis=0).sum() >= 10
