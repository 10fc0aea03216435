"""The SLOs: the table, the policies on the graph, their states over time, and the SLO report.

The pass/warn/fail tests call Dagster's own freshness evaluators (the code the freshness daemon
runs) at frozen points in time, after a real run of the graph stamped at a frozen time. That needs
private Dagster APIs (``freeze_time``, the evaluator registry, ``LoadingContext``): acceptable in
tests only, never in project code. ``test_dev_server.py`` checks the same policies through the real
daemon.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.freshness import FreshnessState  # private: tests only
from dagster._core.definitions.freshness_evaluator import FRESHNESS_EVALUATORS_BY_POLICY_TYPE  # private
from dagster._core.loader import LoadingContext  # private: tests only
from dagster._core.test_utils import freeze_time  # private: tests only

from cross_sell import slo
from cross_sell.definitions import ASSETS, CHECKS, build_definitions
from cross_sell.slo_report import gate_keys
from cross_sell_tests.conftest import PROJECT_ROOT, cli_env, make_resources, read_table, write_tiny_dataset

pytestmark = pytest.mark.filterwarnings("ignore:Starting in dagster 1.11:UserWarning")

PRODUCT = ["purchases", "product_affinity", "cross_sell_scores", "cross_sell_recommendations"]
# Everything the product outputs are computed from, whatever the stages hold.
UPSTREAM_OF_PRODUCT = dg.AssetSelection.assets("cross_sell_recommendations").upstream()
T0 = datetime(2025, 1, 10, 5, 0, tzinfo=timezone.utc)  # the daily refresh, Friday 05:00 UTC


def asset_keys(names: list[str]) -> list[dg.AssetKey]:
    return [dg.AssetKey.from_user_string(n) for n in names]


# --- the table and the policies on the graph ----------------------------------------------------


def test_slo_table_is_what_the_graph_and_the_readme_say() -> None:
    graph = build_definitions(make_resources(Path("unused"), Path("unused.duckdb"))).resolve_asset_graph()
    policies = {k.to_user_string(): graph.get(k).freshness_policy for k in graph.get_all_asset_keys()}
    time_window = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=24), warn_window=timedelta(hours=12))
    deadline = dg.FreshnessPolicy.cron("0 6 * * *", lower_bound_delta=timedelta(hours=24), timezone="UTC")
    default = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=48), warn_window=timedelta(hours=26))
    assert policies["purchases"] == time_window
    for name in ("product_affinity", "cross_sell_scores", "cross_sell_recommendations"):
        assert policies[name] == deadline
    others = {name: p for name, p in policies.items() if name not in PRODUCT}
    assert others and all(p == default for p in others.values())  # the project default, everywhere else

    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("\n## SLOs\n", 1)[1].split("\n## ", 1)[0]
    assert slo.markdown_table() in section  # the README table is the module, verbatim
    for s in slo.SLOS:
        assert s.name in slo.markdown_table()


def test_default_never_overwrites_a_policy_and_the_table_must_match_the_graph() -> None:
    own = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2))
    assets = dg.map_asset_specs(
        lambda s: dg.apply_freshness_policy(s, own) if s.key == dg.AssetKey("customer_metrics") else s, ASSETS
    )
    applied = {s.key.to_user_string(): s.freshness_policy for a in slo.apply_slos(assets) for s in a.specs}
    assert applied["customer_metrics"] == own  # an asset's own policy survives the default
    assert applied["customer_category_matrix"] == slo.DEFAULT_FRESHNESS.freshness.policy()

    clash = dg.map_asset_specs(
        lambda s: dg.apply_freshness_policy(s, own) if s.key == dg.AssetKey("cross_sell_scores") else s, ASSETS
    )
    with pytest.raises(ValueError, match="differ from the SLO table.*cross_sell_scores"):
        slo.apply_slos(clash)
    without_scores = [a for a in ASSETS if dg.AssetKey("cross_sell_scores") not in a.keys]
    with pytest.raises(ValueError, match="do not exist.*cross_sell_scores"):
        slo.apply_slos(without_scores)


# --- states over time, with Dagster's own evaluators ---------------------------------------------


class _Loading(LoadingContext):
    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._instance, self._loaders = instance, {}

    @property
    def instance(self) -> dg.DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict:
        return self._loaders


def state_at(instance: dg.DagsterInstance, graph, name: str, when: datetime) -> FreshnessState:
    node = graph.get(dg.AssetKey.from_user_string(name))
    policy = node.freshness_policy
    with freeze_time(when):
        evaluator = FRESHNESS_EVALUATORS_BY_POLICY_TYPE[type(policy)]()
        return asyncio.run(evaluator.evaluate_freshness(_Loading(instance), node))


@pytest.fixture(scope="module")
def refreshed_at_t0(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """The graph up to the recommendations, really run at T0 (frozen), on a temporary instance."""
    root = tmp_path_factory.mktemp("slo")
    resources = make_resources(write_tiny_dataset(root / "input"), root / "warehouse.duckdb")
    graph = build_definitions(resources).resolve_asset_graph()
    with dg.instance_for_test() as instance:
        assert state_at(instance, graph, "purchases", T0) == FreshnessState.UNKNOWN  # never materialized
        with freeze_time(T0):
            result = dg.materialize(
                [*ASSETS, *CHECKS], selection=UPSTREAM_OF_PRODUCT, resources=resources, instance=instance
            )
        assert result.success
        yield instance, graph, resources


def test_purchase_freshness_passes_then_warns_then_fails(refreshed_at_t0) -> None:
    instance, graph, _ = refreshed_at_t0
    hours = [1, 11.99, 12.01, 23.99, 24.01, 72]
    states = [state_at(instance, graph, "purchases", T0 + timedelta(hours=h)) for h in hours]
    assert states == [FreshnessState.PASS, FreshnessState.PASS, FreshnessState.WARN, FreshnessState.WARN,
                      FreshnessState.FAIL, FreshnessState.FAIL]


def test_outputs_pass_until_the_06_utc_deadline_they_miss(refreshed_at_t0) -> None:
    instance, graph, resources = refreshed_at_t0
    day = T0.replace(hour=0)
    checkpoints = {
        "same day 05:30, before the deadline": (day + timedelta(hours=5, minutes=30), FreshnessState.PASS),
        "same day 06:30, deadline met": (day + timedelta(hours=6, minutes=30), FreshnessState.PASS),
        "next day 05:59, next deadline not reached": (day + timedelta(days=1, hours=5, minutes=59), FreshnessState.PASS),
        "next day 06:01, next deadline missed": (day + timedelta(days=1, hours=6, minutes=1), FreshnessState.FAIL),
    }
    for name in ("product_affinity", "cross_sell_scores", "cross_sell_recommendations"):
        seen = {label: state_at(instance, graph, name, when) for label, (when, _) in checkpoints.items()}
        assert seen == {label: expected for label, (_, expected) in checkpoints.items()}, name

    # A late refresh (07:00, after the missed deadline) makes it pass again until the day after.
    late = day + timedelta(days=1, hours=7)
    with freeze_time(late):
        assert dg.materialize(
            [*ASSETS, *CHECKS], selection=[dg.AssetKey("product_affinity")], resources=resources, instance=instance
        ).success
    assert state_at(instance, graph, "product_affinity", late + timedelta(minutes=1)) == FreshnessState.PASS
    assert state_at(instance, graph, "product_affinity", late + timedelta(days=1)) == FreshnessState.PASS
    assert state_at(instance, graph, "cross_sell_scores", late + timedelta(minutes=1)) == FreshnessState.FAIL


# --- the SLO report --------------------------------------------------------------------------------


def test_slo_report_asset_and_command_publish_the_slis(
    tmp_path: Path, tiny_data: Path, warehouse_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    resources = make_resources(tiny_data, warehouse_path)
    gates = set(gate_keys([*ASSETS, *CHECKS]))
    with dg.DagsterInstance.get() as instance:
        good = dg.materialize([*ASSETS, *CHECKS], selection=UPSTREAM_OF_PRODUCT, resources=resources,
                              instance=instance)
        assert good.success
        # A load that fails its gates: a purchase of an unknown customer.
        (tiny_data / "purchase.csv").write_text(
            (tiny_data / "purchase.csv").read_text() + "L9,O9,C99,P1,2025-04-02 10:00:00,1,10,web\n"
        )
        bad = dg.materialize([*ASSETS, *CHECKS], selection=UPSTREAM_OF_PRODUCT, resources=resources,
                             instance=instance, raise_on_error=False)
        assert not bad.success
        evaluations = [
            e for r in (good, bad) for e in r.get_asset_check_evaluations()
            if dg.AssetCheckKey(e.asset_key, e.check_name) in gates
        ]
        expected_rate = sum(e.passed for e in evaluations) / len(evaluations)
        assert 0 < expected_rate < 1

        report = dg.materialize([*ASSETS, *CHECKS], selection=[dg.AssetKey("slo_report")], resources=resources,
                                instance=instance)
        assert report.success
        [event] = report.get_asset_materialization_events()
        metadata = event.materialization.metadata
        assert metadata["gate_pass_rate_7d"].value == pytest.approx(expected_rate)
        assert metadata["gate_evaluations_7d"].value == len(evaluations)
        assert metadata["quality_slo"].value == "MISSED"
        bad_record = instance.get_run_record_by_id(bad.run_id)
        assert metadata["last_run_duration_s"].value == pytest.approx(
            bad_record.end_time - bad_record.start_time, abs=0.06
        )
        for name in PRODUCT:
            assert f"| {name} " in metadata["freshness"].value
        table = read_table(warehouse_path, "slo_report")
        assert set(table.sli) == {"freshness", "gate pass rate, 7 days", "run duration", "rows per input"}

    env = cli_env(tiny_data, warehouse_path, dagster_home)
    proc = subprocess.run([sys.executable, "-m", "cross_sell.slo_report", "--json"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)
    assert printed["gate_pass_rate_7d"] == pytest.approx(expected_rate)
    assert {f["asset"]: f["state"] for f in printed["freshness"]} == dict.fromkeys(PRODUCT, "UNKNOWN")  # no daemon ran
    rows = {i["input"]: i["published_rows"] for i in printed["inputs"]}
    assert rows == {"customers": 4, "products": 3, "purchases": 6}  # the good load; the bad one was not published
    runs = {r["run"]: r for r in printed["runs"]}
    assert runs["run behind the current cross_sell_scores"]["run_id"] == good.run_id
    assert runs["latest finished run"]["run_id"] == report.run_id

    text = subprocess.run([sys.executable, "-m", "cross_sell.slo_report"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr[-2000:]
    assert "Gate pass rate, last 7 days" in text.stdout and "MISSED" in text.stdout
    assert "audit/purchases:referential_integrity" in text.stdout
