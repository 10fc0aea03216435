"""The Dagster UI's server, driven headless the way the UI drives it: ``dagster dev`` + GraphQL.

Each test starts a real ``dagster dev`` on a free loopback port with a temporary DAGSTER_HOME
(the project's instance config, so the ``duckdb`` pool limit applies) and a temporary warehouse,
and checks that it shuts down cleanly, leaving no process behind.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from cross_sell.definitions import build_definitions
from cross_sell_tests.conftest import cli_env, read_table
from cross_sell_tests.devserver import LOCATION, DevServer, dagster_dev

pytestmark = pytest.mark.slow

LISTING_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } }
  repositoriesOrError { ... on RepositoryConnection { nodes { name location { name }
      schedules { name cronSchedule } sensors { name } } } }
  assetNodes { assetKey { path } groupName isExecutable
    owners { __typename ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
    internalFreshnessPolicy { __typename
      ... on TimeWindowFreshnessPolicy { failWindowSeconds warnWindowSeconds }
      ... on CronFreshnessPolicy { deadlineCron lowerBoundDeltaSeconds timezone } }
    assetChecksOrError { __typename ... on AssetChecks { checks { name blocking } } } } }
"""
LAUNCH_MUTATION = """
mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message } ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }
"""
RUN_LOGS_QUERY = """
query($id: ID!, $cursor: String) { logsForRun(runId: $id, afterCursor: $cursor) { __typename
  ... on EventConnection { cursor hasMore events { __typename
    ... on MaterializationEvent { assetKey { path } metadataEntries { label __typename
        ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
        ... on MarkdownMetadataEntry { mdStr } ... on PathMetadataEntry { path } } }
    ... on AssetCheckEvaluationEvent { evaluation { checkName success severity assetKey { path } } } } } } }
"""
DATA_URI = "](data:image/png;base64,"


def _env(data_dir: Path, tmp_path: Path, home: Path) -> dict[str, str]:
    env = cli_env(data_dir, tmp_path / "warehouse" / "cross_sell.duckdb", home)
    env["CROSS_SELL_LANDING_DIR"] = str(tmp_path / "landing")  # nothing lands during the test
    return env


def _seconds(delta) -> float:
    return delta.days * 86400 + delta.seconds + delta.microseconds / 1e6


def _expected_listing(defs: dg.Definitions) -> tuple[dict, dict, dict]:
    """What the UI should show, from the definitions: per asset (group, owners, checks, freshness),
    schedules (name -> cron) and sensor names."""
    graph = defs.resolve_asset_graph()
    checks: dict[str, set[tuple[str, bool]]] = {}
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        checks.setdefault(key.asset_key.to_user_string(), set()).add((key.name, spec.blocking))
    assets = {}
    for spec in defs.resolve_all_asset_specs():
        name = spec.key.to_user_string()
        policy = spec.freshness_policy
        if policy is None:
            freshness = None
        elif type(policy).__name__ == "TimeWindowFreshnessPolicy":
            warn = policy.warn_window
            freshness = ("TimeWindowFreshnessPolicy", _seconds(policy.fail_window), warn and _seconds(warn))
        else:
            freshness = ("CronFreshnessPolicy", policy.deadline_cron, _seconds(policy.lower_bound_delta))
        assets[name] = {
            "group": spec.group_name,
            "owners": set(spec.owners),
            "checks": checks.get(name, set()),
            "freshness": freshness,
        }
    repo = defs.get_repository_def()
    schedules = {s.name: s.cron_schedule for s in repo.schedule_defs}
    sensors = {s.name for s in repo.sensor_defs}
    return assets, schedules, sensors


def _served_listing(server: DevServer) -> tuple[dict, dict, dict, list, list, list]:
    data = server.graphql(LISTING_QUERY)
    assets, executable = {}, []
    for node in data["assetNodes"]:
        policy = node["internalFreshnessPolicy"]
        if policy is None:
            freshness = None
        elif policy["__typename"] == "TimeWindowFreshnessPolicy":
            freshness = (policy["__typename"], policy["failWindowSeconds"], policy["warnWindowSeconds"])
        else:
            freshness = (policy["__typename"], policy["deadlineCron"], policy["lowerBoundDeltaSeconds"])
        owners = {f"team:{o['team']}" if "team" in o else o["email"] for o in node["owners"]}
        assets[dg.AssetKey(node["assetKey"]["path"]).to_user_string()] = {
            "group": node["groupName"],
            "owners": owners,
            "checks": {(c["name"], c["blocking"]) for c in node["assetChecksOrError"]["checks"]},
            "freshness": freshness,
        }
        if node["isExecutable"]:
            executable.append(node["assetKey"]["path"])
    repos = data["repositoriesOrError"]["nodes"]
    schedules = {s["name"]: s["cronSchedule"] for r in repos for s in r["schedules"]}
    sensors = {s["name"] for r in repos for s in r["sensors"]}
    return assets, schedules, sensors, data["workspaceOrError"]["locationEntries"], repos, executable


def _assert_serves_the_whole_location(server: DevServer) -> tuple[dict, list]:
    """Checks the served listing against the definitions; returns it and the executable asset paths."""
    assets, schedules, sensors, locations, repos, executable = _served_listing(server)
    assert [(e["name"], e["loadStatus"]) for e in locations] == [(LOCATION, "LOADED")]
    assert [r["location"]["name"] for r in repos] == [LOCATION]
    expected_assets, expected_schedules, expected_sensors = _expected_listing(build_definitions())
    assert assets == expected_assets
    assert schedules == expected_schedules
    assert sensors == expected_sensors
    # The product is not an empty shell: owners and blocking gates are visible in the UI.
    assert all(a["owners"] for a in assets.values())
    assert any(blocking for a in assets.values() for _, blocking in a["checks"])
    return assets, executable


def _run_events(server: DevServer, run_id: str) -> list[dict]:
    events, cursor = [], None
    while True:
        page = server.graphql(RUN_LOGS_QUERY, {"id": run_id, "cursor": cursor})["logsForRun"]
        events += page["events"]
        cursor = page["cursor"]
        if not page["hasMore"]:
            return events


def _assert_stopped_cleanly(server: DevServer) -> None:
    assert server.leftover == [], f"processes left behind: {server.leftover}\n{server.log_tail()}"
    assert server.exit_code == 0, server.log_tail()


def test_dagster_dev_serves_the_product_and_materializes_it_over_graphql(
    generated_data: Path, tmp_path: Path, dagster_home: Path
) -> None:
    warehouse = tmp_path / "warehouse" / "cross_sell.duckdb"
    with dagster_dev(_env(generated_data, tmp_path, dagster_home), tmp_path / "dagster_dev.log") as server:
        assets, executable = _assert_serves_the_whole_location(server)
        launched = server.graphql(
            LAUNCH_MUTATION,
            {
                "p": {
                    "selector": {
                        "repositoryLocationName": LOCATION,
                        "repositoryName": "__repository__",
                        "jobName": "__ASSET_JOB",
                        "assetSelection": [{"path": path} for path in executable],
                    },
                    "runConfigData": {},
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        run = server.wait_for_run(run_id)
        assert run["status"] == "SUCCESS", server.log_tail()
        assert run["stepStats"] and {s["status"] for s in run["stepStats"]} == {"SUCCESS"}

        events = _run_events(server, run_id)
        materialized = {
            dg.AssetKey(e["assetKey"]["path"]).to_user_string(): {m["label"]: m for m in e["metadataEntries"]}
            for e in events
            if e["__typename"] == "MaterializationEvent"
        }
        evaluations = [e["evaluation"] for e in events if e["__typename"] == "AssetCheckEvaluationEvent"]
    _assert_stopped_cleanly(server)

    # Every asset of the graph was materialized by this run, every check ran, and every ERROR-severity
    # check passed (WARN checks report without failing the run).
    executable_names = {dg.AssetKey(path).to_user_string() for path in executable}
    assert set(materialized) == executable_names
    expected_checks = {(a, name) for a in executable_names for name, _ in assets[a]["checks"]}
    assert {(dg.AssetKey(e["assetKey"]["path"]).to_user_string(), e["checkName"]) for e in evaluations} == expected_checks
    assert all(e["success"] or e["severity"] == "WARN" for e in evaluations), evaluations

    # The metadata read back over GraphQL describes the tables actually in the warehouse.
    for table in ["customer_metrics", "product_affinity", "cross_sell_scores", "cross_sell_recommendations"]:
        assert materialized[table]["dagster/row_count"]["intValue"] == len(read_table(warehouse, table)) > 0

    # The affinity heatmap: an inline PNG in markdown, and the same picture as a file beside the warehouse.
    affinity = materialized["product_affinity"]
    markdown = affinity["affinity_heatmap"]["mdStr"]
    assert affinity["affinity_heatmap"]["__typename"] == "MarkdownMetadataEntry" and DATA_URI in markdown
    inline = base64.b64decode(markdown.split(DATA_URI, 1)[1].rstrip(")"))
    picture_file = Path(affinity["affinity_heatmap_file"]["path"])
    assert picture_file == warehouse.parent / "figures" / "product_affinity_heatmap.png"
    assert picture_file.read_bytes() == inline
    with Image.open(io.BytesIO(inline)) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 300
    assert len(inline) < 100_000

    # The top recommendations, as a table people can read in the UI.
    top = materialized["cross_sell_recommendations"]["top_recommendations"]["mdStr"]
    header = top.splitlines()[0]
    assert all(column in header for column in ["customer_id", "product_category", "score", "reason"])
    recommendations = read_table(warehouse, "cross_sell_recommendations")
    best = recommendations[recommendations["rank"] == 1].nlargest(1, "score").iloc[0]
    assert f"{best.score:.4g}" in top


def test_dagster_dev_with_workspace_yaml_serves_the_same_location(
    tiny_data: Path, tmp_path: Path, dagster_home: Path
) -> None:
    env = _env(tiny_data, tmp_path, dagster_home)
    with dagster_dev(env, tmp_path / "dagster_dev.log", args=["-w", "workspace.yaml"]) as server:
        _assert_serves_the_whole_location(server)
    _assert_stopped_cleanly(server)
