"""End to end under the real daemon: ``dagster dev``, a landing file, automation, freshness.

One test, because starting ``dagster dev`` is the expensive part. It seeds a private instance with
a refresh of the whole product stamped 50 hours ago, starts ``dagster dev`` on a free loopback
port, and then checks what runs by default:

* the freshness daemon reads the policies and marks the stale product as failing (DEGRADED);
* a purchase file dropped in the landing folder triggers exactly one ingest run (landing sensor),
  declarative automation then carries the new line into ``cross_sell_scores``;
* the freshness daemon turns the product healthy again, and the SLO report command shows it;
* ``dagster dev`` shuts down cleanly and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.test_utils import freeze_time  # private: tests only (stamps the seed run in the past)

from cross_sell.definitions import ASSETS, CHECKS
from cross_sell.resources import InputFiles
from cross_sell_tests.conftest import PROJECT_ROOT, cli_env, dagster_cli, make_resources
from cross_sell_tests.devserver import DevServer, dagster_dev

pytestmark = pytest.mark.slow

PRODUCT = dg.AssetSelection.assets("cross_sell_recommendations", "slo_report").upstream()
WATCHED = ["purchases", "product_affinity", "cross_sell_scores", "cross_sell_recommendations"]
LANDED = (
    "purchase_id,order_id,customer_id,product_id,purchase_date,quantity,amount,channel\n"
    "L7,O6,C4,P2,2025-04-02 10:00:00,1,20,web\n"  # C4 never bought anything; now buys Meat
)

AUTOMATION_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { name sensorState { status } } schedules { name scheduleState { status } } } } } }
"""
FRESHNESS_QUERY = """
{ assetNodes { assetKey { path } freshnessStatusInfo { freshnessStatus } } }
"""
MATERIALIZATION_QUERY = """
query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { assetMaterializations(limit: 1) { runId timestamp } } } }
"""
RUNS_QUERY = """
query($key: String!, $value: String!) { runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
    ... on Runs { results { runId status } } } }
"""


def wait_for(what: str, probe: Callable[[], object], server: DevServer, timeout: float, every: float = 1.0):
    """Poll ``probe`` until it returns something truthy; fail with the server log after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{server.log_tail()}")
        time.sleep(every)


def freshness(server: DevServer) -> dict[str, str | None]:
    nodes = server.graphql(FRESHNESS_QUERY)["assetNodes"]
    return {
        "/".join(n["assetKey"]["path"]): (n["freshnessStatusInfo"] or {}).get("freshnessStatus") for n in nodes
    }


def all_in(server: DevServer, status: str) -> bool:
    states = freshness(server)
    return all(states[name] == status for name in WATCHED)


def read(warehouse: Path, sql: str, timeout: float = 60) -> list[tuple]:
    """Read the warehouse as a consumer would, waiting while a run holds the write lock."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with duckdb.connect(str(warehouse), read_only=True) as conn:
                return conn.execute(sql).fetchall()
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def readme_stop_commands() -> list[list[str]]:
    """The `dagster ... stop` commands of the README's "Turning things on and off", as arguments."""
    block = (PROJECT_ROOT / "README.md").read_text().split("**Turning things on and off.**", 1)[1].split("```")[1]
    commands = [line.split("#")[0].split()[1:] for line in block.splitlines() if line.startswith(".venv/bin/dagster ")]
    stops = [c for c in commands if "stop" in c]
    assert len(stops) == 4, block
    return stops


def test_dagster_dev_runs_the_product_by_itself(
    tmp_path: Path, tiny_data: Path, warehouse_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    landing = tmp_path / "landing"
    resources = make_resources(tiny_data, warehouse_path)
    resources["input_files"] = InputFiles(location=str(tiny_data), landing_location=str(landing))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance, freeze_time(datetime.now(timezone.utc) - timedelta(hours=50)):
        assert dg.materialize([*ASSETS, *CHECKS], selection=PRODUCT, resources=resources, instance=instance).success

    env = cli_env(tiny_data, warehouse_path, dagster_home)
    env["CROSS_SELL_LANDING_DIR"] = str(landing)
    env["FRESHNESS_DAEMON_INTERVAL_SECONDS"] = "5"  # the daemon's default is 30 s
    started = time.monotonic()
    with dagster_dev(env, tmp_path / "dagster_dev.log") as server:
        repo = server.graphql(AUTOMATION_QUERY)["repositoriesOrError"]["nodes"][0]
        assert {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]} == {
            "purchase_landing_sensor": "RUNNING", "cross_sell_automation": "RUNNING", "run_failure_alert_sensor": "RUNNING",
        }
        assert {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]} == {"daily_refresh_schedule": "RUNNING"}

        # The freshness daemon judges the 50-hour-old product: every watched asset is failing.
        wait_for("stale product marked DEGRADED", lambda: all_in(server, "DEGRADED"), server, timeout=120)

        # Drop a purchase file the way upstream systems should: write elsewhere, then rename in.
        landing.mkdir(parents=True, exist_ok=True)
        staged = tmp_path / "new_purchases.csv"
        staged.write_text(LANDED)
        dropped_at = time.time()
        os.replace(staged, landing / "new_purchases.csv")

        def scores_after_drop() -> str | None:
            node = server.graphql(MATERIALIZATION_QUERY, {"path": ["cross_sell_scores"]})["assetNodeOrError"]
            latest = node["assetMaterializations"]
            return latest[0]["runId"] if latest and int(latest[0]["timestamp"]) / 1000 > dropped_at else None

        scores_run = wait_for("cross_sell_scores refreshed with the new file", scores_after_drop, server, timeout=360)
        assert server.wait_for_run(scores_run)["status"] == "SUCCESS"

        # Exactly one ingest run for the file, which is not the automation run that refreshed the scores.
        ingest_runs = server.graphql(RUNS_QUERY, {"key": "cross_sell/landing_file", "value": "new_purchases.csv"})
        [ingest] = ingest_runs["runsOrError"]["results"]
        assert ingest["status"] == "SUCCESS" and ingest["runId"] != scores_run

        # The new line reached the scores: C4 bought Meat, so Meat is no longer an opportunity for C4.
        assert read(warehouse_path, "select count(*) from purchases where purchase_id = 'L7'") == [(1,)]
        assert read(warehouse_path, "select product_category from cross_sell_scores where customer_id = 'C4' "
                                    "order by 1") == [("Fish",), ("Wines",)]
        assert [p.name.split("__")[-1] for p in (landing / "processed").iterdir()] == ["new_purchases.csv"]

        # ... and the freshness daemon sees the product healthy again.
        wait_for("product HEALTHY again", lambda: all_in(server, "HEALTHY"), server, timeout=120)
        report = subprocess.run([sys.executable, "-m", "cross_sell.slo_report", "--json"], cwd=PROJECT_ROOT,
                                env=env, capture_output=True, text=True, timeout=120)
        assert report.returncode == 0, report.stderr[-2000:]
        assert {f["asset"]: f["state"] for f in json.loads(report.stdout)["freshness"]} == dict.fromkeys(WATCHED, "PASS")
        # Still one ingest run after more sensor ticks: the cursor holds.
        assert len(server.graphql(RUNS_QUERY, {"key": "cross_sell/landing_file", "value": "new_purchases.csv"})
                   ["runsOrError"]["results"]) == 1

        # The README's commands that turn automation off from the shell turn it off in this server.
        for command in readme_stop_commands():
            done = subprocess.run([*dagster_cli(), *command], cwd=PROJECT_ROOT, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
        repo = server.graphql(AUTOMATION_QUERY)["repositoriesOrError"]["nodes"][0]
        assert {s["sensorState"]["status"] for s in repo["sensors"]} == {"STOPPED"}
        assert {s["scheduleState"]["status"] for s in repo["schedules"]} == {"STOPPED"}
    print(f"dagster dev end to end: {time.monotonic() - started:.0f}s, startup {server.started_in:.1f}s, "
          f"shutdown {server.stopped_in:.1f}s")
    assert server.leftover == [], f"processes left behind: {server.leftover}"
    assert server.exit_code == 0, server.log_tail()
