"""The gate benchmark runs end to end at a small scale: every engine that is installed finds exactly
the broken lines it plants (or says which it misses), and its table is printed. Figures are never
asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb
import pytest

from cross_sell import bench_gates


def test_the_project_gate_and_pandas_find_exactly_the_planted_failures(tmp_path: Path) -> None:
    database = bench_gates.prepare(tmp_path, purchases=5000, seed=3)
    with duckdb.connect(str(database)) as conn:
        bench_gates.plant_failures(conn)
    results = bench_gates.run_engines(database, ["duckdb_sql", "pandas"])
    assert [r.engine for r in results] == ["duckdb_sql", "pandas"]
    for r in results:
        assert r.seconds is not None and r.seconds > 0, r.note
        assert r.by_column == bench_gates.PLANTED
    assert bench_gates.disagreements(results, bench_gates.PLANTED) == {}


def test_a_missed_or_extra_finding_is_reported() -> None:
    found = bench_gates.EngineResult("x", 1.0, 0.1, {**bench_gates.PLANTED, "purchase_id": 0, "amount": 3})
    del found.by_column["purchase_id"]
    assert bench_gates.disagreements([found], bench_gates.PLANTED) == {
        "x": "purchase_id: found 0, planted 4; amount: found 3, planted 2"
    }
    clean = bench_gates.EngineResult("y", 1.0, 0.1, {"channel": 1})
    assert bench_gates.disagreements([clean], None) == {"y": "channel: found 1, planted 0"}


def test_command_prints_every_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_gates.main(["--purchases", "3000", "--workdir", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    for engine in bench_gates.ENGINES:
        assert f"| {engine} " in output
    for backend in ("polars", "ibis"):
        if importlib.util.find_spec(backend) is None:  # the optional bench extra is not installed
            assert "not installed" in output
