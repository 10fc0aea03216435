"""The affinity heatmap: the matrix behind it, the picture, and how it is attached and published."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cross_sell.affinity import heatmap
from cross_sell.affinity.logic import association_rules
from cross_sell_tests.conftest import RunGraph, read_table

DATA_URI = "](data:image/png;base64,"


def _tiny_rules() -> pd.DataFrame:
    # C1: Wines, Meat; C2: Wines, Meat; C3: Wines, Fish (the hand-worked example of test_graph.py).
    tx = np.array([0, 0, 1, 1, 2, 2])
    items = np.array([2, 1, 2, 1, 2, 0])
    return association_rules(tx, items, ["Fish", "Meat", "Wines"])


def test_lift_matrix_orders_by_popularity_and_leaves_missing_pairs_blank() -> None:
    matrix = heatmap.lift_matrix(_tiny_rules())
    assert list(matrix.index) == list(matrix.columns) == ["Wines", "Meat", "Fish"]  # 3, 2, 1 customers
    assert matrix.loc["Meat", "Wines"] == pytest.approx(1.0)  # P(Wines | Meat) = 1 = P(Wines)
    assert np.isnan(matrix.loc["Meat", "Fish"])  # never bought together: no rule, a blank cell
    assert np.isnan(np.diag(matrix.to_numpy())).all()
    assert heatmap.lift_matrix(_tiny_rules(), max_categories=2).shape == (2, 2)
    assert heatmap.lift_matrix(_tiny_rules().iloc[0:0]).empty


def test_heatmap_is_a_small_png_even_without_rules() -> None:
    for rules in [_tiny_rules(), _tiny_rules().iloc[0:0]]:
        png = heatmap.render_lift_heatmap(rules)
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.width >= 300
        assert len(png) < 60_000


def test_staged_file_replaces_the_picture_only_when_the_body_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "figures" / "heatmap.png"
    with heatmap.staged_file(b"first", target):
        assert not target.exists()  # not in place before the body finished
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), heatmap.staged_file(b"second", target):
        raise RuntimeError("gate failed")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["heatmap.png"]  # no temporary left behind


def test_materialization_attaches_the_heatmap_and_writes_it_beside_the_warehouse(
    tiny_data: Path, run_graph: RunGraph, warehouse_path: Path
) -> None:
    result = run_graph(tiny_data)
    assert result.success
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "product_affinity"]
    metadata = event.materialization.metadata
    inline = base64.b64decode(metadata["affinity_heatmap"].value.split(DATA_URI, 1)[1].rstrip(")"))
    path = Path(metadata["affinity_heatmap_file"].value)
    assert path == warehouse_path.parent / "figures" / "product_affinity_heatmap.png"
    assert path.read_bytes() == inline
    # The picture is of the published rules: as many coloured cells as category rules in the table.
    rules = read_table(warehouse_path, "product_affinity")
    assert int(np.isfinite(heatmap.lift_matrix(rules).to_numpy()).sum()) == len(rules) == 4
