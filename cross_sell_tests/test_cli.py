"""The shell entry points, run for real as subprocesses."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from cross_sell.definitions import build_definitions
from cross_sell_tests.conftest import PROJECT_ROOT, cli_env, dagster_cli, read_table

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_materializes_whole_graph(tiny_data: Path, warehouse_path: Path, dagster_home: Path) -> None:
    env = cli_env(tiny_data, warehouse_path, dagster_home)
    proc = _run([*dagster_cli(), "asset", "materialize", "-m", "cross_sell.definitions", "--select", "*"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RUN_SUCCESS" in proc.stderr
    for table in ["customer_metrics", "product_affinity", "cross_sell_scores", "cross_sell_recommendations"]:
        assert len(read_table(warehouse_path, table)) > 0
    # The run is in the project's instance history (DAGSTER_HOME), not a throwaway one.
    assert any((dagster_home / "history").rglob("*.db"))


def _location(proc: subprocess.CompletedProcess[str]) -> bool:
    return "Validation successful for code location cross_sell." in proc.stdout + proc.stderr


def test_definitions_load_identically_from_pyproject_and_workspace(
    tiny_data: Path, warehouse_path: Path, dagster_home: Path
) -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    workspace = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())["load_from"]
    assert len(workspace) == 1
    module = workspace[0]["python_module"]
    assert module["module_name"] == pyproject["module_name"] == "cross_sell.definitions"
    assert module["location_name"] == pyproject["code_location_name"] == "cross_sell"

    env = cli_env(tiny_data, warehouse_path, dagster_home)
    from_pyproject = _run([*dagster_cli(), "definitions", "validate"], env)
    from_workspace = _run([*dagster_cli(), "definitions", "validate", "-w", "workspace.yaml"], env)
    assert from_pyproject.returncode == 0 and _location(from_pyproject), from_pyproject.stderr[-2000:]
    assert from_workspace.returncode == 0 and _location(from_workspace), from_workspace.stderr[-2000:]

    listed = _run([*dagster_cli(), "asset", "list", "-m", "cross_sell.definitions", "--select", "*"], env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    expected = {k.to_user_string() for k in build_definitions().resolve_asset_graph().get_all_asset_keys()}
    assert set(listed.stdout.split()) == expected


def test_summary_says_where_results_are(tiny_data: Path, warehouse_path: Path, dagster_home: Path, run_graph) -> None:
    before = _run([sys.executable, "-m", "cross_sell.summary"], cli_env(tiny_data, warehouse_path, dagster_home))
    assert before.returncode == 1 and "No warehouse at" in before.stdout  # nothing built yet
    assert run_graph(tiny_data).success
    proc = _run([sys.executable, "-m", "cross_sell.summary"], cli_env(tiny_data, warehouse_path, dagster_home))
    assert proc.returncode == 0, proc.stderr
    assert str(warehouse_path) in proc.stdout
    assert "cross_sell_recommendations" in proc.stdout and "buy Meat; model: 50%" in proc.stdout  # C3's offer, see test_graph
