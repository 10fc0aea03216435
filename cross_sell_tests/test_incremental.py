"""Incremental ingest: one new day of purchases upserted into the history gives exactly the
outputs of a full recompute over the same lines."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

from cross_sell import alerts
from cross_sell.definitions import ASSETS, CHECKS
from cross_sell.resources import InputFiles
from cross_sell_tests.conftest import read_table

OUTPUTS = {
    "purchases": "purchase_id",
    "customers": "customer_id",
    "customer_metrics": "customer_id",
    "customer_category_matrix": "customer_id, product_category",
    "product_affinity": "level, antecedent, consequent",
    "cross_sell_scores": "customer_id, product_category",
    "cross_sell_recommendations": "customer_id, rank",
}
DELTA_CONFIG = {"ops": {"audit__purchases": {"config": {"landing_files": ["new_day.parquet"], "delta": True}}}}
DELTA_SELECTION = [dg.AssetKey(["audit", "purchases"]), dg.AssetKey("purchases")]  # land and publish an increment


def _run(data: Path, landing: Path, warehouse: Path, selection, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*ASSETS, *CHECKS],
        selection=selection,
        resources={
            "duckdb": DuckDBResource(database=str(warehouse)),
            "input_files": InputFiles(location=str(data), landing_location=str(landing)),
        },
        run_config=run_config or {},
        raise_on_error=False,
    )


def _full_recompute(history: Path, archived: Path, tmp_path: Path, selection) -> Path:
    """A fresh warehouse from a full load of ``history`` plus the archived landing file."""
    full_landing = tmp_path / "full_landing"
    full_landing.mkdir()
    shutil.copy(archived, full_landing / "new_day.parquet")
    full = tmp_path / "full.duckdb"
    full_config = {"ops": {"audit__purchases": {"config": {"landing_files": ["new_day.parquet"]}}}}
    assert _run(history, full_landing, full, selection, full_config).success
    return full


@pytest.fixture
def history_and_new_day(generated_data: Path, tmp_path: Path) -> tuple[Path, Path, pd.DataFrame]:
    """The generated data without its last day (the history), and that day as a landing file."""
    history = tmp_path / "history"
    history.mkdir()
    for name in ("customers", "products"):
        found = next(generated_data.glob(f"{name[:-1]}*.parquet"))
        shutil.copy(found, history / found.name)
    purchases = pd.read_parquet(next(generated_data.glob("purchase*.parquet")))
    day = pd.to_datetime(purchases["purchase_date"]).dt.normalize()
    newest = day.max()
    purchases[day < newest].to_parquet(history / "purchases.parquet", index=False)
    new_day = purchases[day == newest]
    assert len(new_day) > 0
    landing = tmp_path / "landing"
    landing.mkdir()
    new_day.to_parquet(landing / "new_day.parquet", index=False)
    return history, landing, new_day


def test_one_new_day_upserted_gives_the_outputs_of_a_full_recompute(history_and_new_day, tmp_path: Path) -> None:
    history, landing, new_day = history_and_new_day

    incremental = tmp_path / "incremental.duckdb"
    assert _run(history, landing, incremental, "*").success
    before = len(read_table(incremental, "purchases"))
    ingest = _run(history, landing, incremental, DELTA_SELECTION, DELTA_CONFIG)
    assert ingest.success
    landed = [e for e in ingest.get_asset_materialization_events() if e.asset_key == dg.AssetKey(["audit", "purchases"])]
    assert landed[0].materialization.metadata["dagster/row_count"].value == len(new_day)  # the day only
    published = [e for e in ingest.get_asset_materialization_events() if e.asset_key == dg.AssetKey("purchases")]
    assert published[0].materialization.metadata["load_mode"].value == "delta"
    assert len(read_table(incremental, "purchases")) == before + len(new_day)
    [drop] = [e for e in ingest.get_asset_check_evaluations() if e.check_name == "row_count_drop"]
    assert drop.passed  # a small increment is not a drop
    downstream = dg.AssetSelection.all() - dg.AssetSelection.groups("ingest")  # what automation refreshes
    assert _run(history, landing, incremental, downstream).success

    # Publishing archived the file: its lines are part of every later full load.
    [archived] = (landing / "processed").glob("*__new_day.parquet")
    assert not (landing / "new_day.parquet").exists()
    full = _full_recompute(history, archived, tmp_path, "*")

    for table, key in OUTPUTS.items():
        ours, theirs = read_table(incremental, table, order_by=key), read_table(full, table, order_by=key)
        pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=1e-12, obj=table)
    with duckdb.connect(str(full), read_only=True) as conn:
        assert conn.execute("select count(*) from purchases").fetchall()[0][0] == before + len(new_day)


def test_an_increment_keeps_a_column_the_history_lacks_and_needs_no_source_file(history_and_new_day, tmp_path: Path) -> None:
    """A history without the optional `channel` column, published as is, then a day that has it:
    the increment keeps the day's channels, exactly as a full load of the same lines does; and a
    later increment lands while the source purchase file is away (it reads only its own files)."""
    history, landing, _ = history_and_new_day
    purchases = history / "purchases.parquet"
    pd.read_parquet(purchases).drop(columns=["channel"]).to_parquet(purchases, index=False)
    incremental = tmp_path / "incremental.duckdb"
    assert _run(history, landing, incremental, "group:ingest").success
    assert read_table(incremental, "purchases")["channel"].isna().all()
    assert _run(history, landing, incremental, DELTA_SELECTION, DELTA_CONFIG).success

    [archived] = (landing / "processed").glob("*__new_day.parquet")
    full = _full_recompute(history, archived, tmp_path, "group:ingest")
    ours, theirs = read_table(incremental, "purchases", order_by="purchase_id"), read_table(full, "purchases", order_by="purchase_id")
    assert theirs["channel"].notna().any()
    pd.testing.assert_frame_equal(ours, theirs, obj="purchases")

    # An increment reads only its landing files: the history's source file need not be there.
    purchases.rename(tmp_path / "away.parquet")
    pd.read_parquet(archived).assign(purchase_id=lambda d: d["purchase_id"] + "_next").to_parquet(landing / "new_day.parquet")
    assert _run(history, landing, incremental, DELTA_SELECTION, DELTA_CONFIG).success
    (tmp_path / "away.parquet").rename(purchases)
    assert len(read_table(incremental, "purchases")) == len(read_table(full, "purchases")) + len(pd.read_parquet(archived))


def test_a_delta_that_fails_a_gate_publishes_nothing(history_and_new_day, tmp_path: Path) -> None:
    history, landing, new_day = history_and_new_day
    warehouse = tmp_path / "w.duckdb"
    assert _run(history, landing, warehouse, "group:ingest").success
    published = read_table(warehouse, "purchases", order_by="purchase_id")

    broken = new_day.copy()
    broken["customer_id"] = "nobody"
    broken.to_parquet(landing / "new_day.parquet", index=False)
    result = _run(history, landing, warehouse, DELTA_SELECTION, DELTA_CONFIG)
    assert not result.success
    [gate] = [e for e in result.get_asset_check_evaluations() if e.check_name == "referential_integrity"]
    assert not gate.passed and gate.metadata["failing_count"].value == len(new_day)
    pd.testing.assert_frame_equal(read_table(warehouse, "purchases", order_by="purchase_id"), published)


def test_a_customer_load_that_failed_its_gate_does_not_hold_back_increments(history_and_new_day, tmp_path: Path) -> None:
    """An increment is checked against, and joins, the published customers and products: a later
    customer load that failed its own gate neither rejects it nor lends it customers."""
    history, landing, new_day = history_and_new_day
    warehouse = tmp_path / "w.duckdb"
    assert _run(history, landing, warehouse, "group:ingest").success
    customers = read_table(warehouse, "customers", order_by="customer_id")
    purchases = read_table(warehouse, "purchases", order_by="purchase_id")

    broken = tmp_path / "broken"
    shutil.copytree(history, broken)
    [customer_file] = broken.glob("customer*.parquet")
    listed = pd.read_parquet(customer_file)
    late = listed.iloc[[0]].assign(customer_id="late_customer")
    pd.concat([listed, listed.iloc[[0]], late]).to_parquet(customer_file, index=False)  # a duplicate key
    failed = _run(broken, landing, warehouse, "group:ingest")
    assert not failed.success
    [contract] = [e for e in failed.get_asset_check_evaluations()
                  if e.asset_key == dg.AssetKey(["audit", "customers"]) and e.check_name == "contract"]
    assert not contract.passed
    pd.testing.assert_frame_equal(read_table(warehouse, "customers", order_by="customer_id"), customers)

    increment = _run(broken, landing, warehouse, DELTA_SELECTION, DELTA_CONFIG)
    assert increment.success
    assert len(read_table(warehouse, "purchases")) == len(purchases) + len(new_day)
    pd.testing.assert_frame_equal(read_table(warehouse, "customers", order_by="customer_id"), customers)

    # A customer known only to the failed load is not published, so lines naming them are refused.
    new_day.assign(purchase_id=new_day["purchase_id"] + "_late", customer_id="late_customer").to_parquet(
        landing / "new_day.parquet", index=False
    )
    refused = _run(broken, landing, warehouse, DELTA_SELECTION, DELTA_CONFIG)
    assert not refused.success
    [gate] = [e for e in refused.get_asset_check_evaluations() if e.check_name == "referential_integrity"]
    assert not gate.passed and gate.metadata["failing_count"].value == len(new_day)
    assert len(read_table(warehouse, "purchases")) == len(purchases) + len(new_day)


def test_an_increment_publishes_the_purchases_alone(history_and_new_day, tmp_path: Path) -> None:
    history, landing, _ = history_and_new_day
    warehouse = tmp_path / "w.duckdb"
    assert _run(history, landing, warehouse, "group:ingest").success
    result = _run(history, landing, warehouse, [dg.AssetKey(["audit", "purchases"]), *map(dg.AssetKey, ["customers", "products", "purchases"])], DELTA_CONFIG)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "select purchases alone" in failure.step_failure_data.user_failure_data.description


def test_an_increment_before_any_publish_is_refused_with_a_reason(history_and_new_day, tmp_path: Path) -> None:
    history, landing, _ = history_and_new_day
    warehouse = tmp_path / "w.duckdb"
    result = _run(history, landing, warehouse, DELTA_SELECTION, DELTA_CONFIG)
    assert not result.success
    [gate] = [e for e in result.get_asset_check_evaluations() if e.check_name == "referential_integrity"]
    assert not gate.passed and "run a full load first" in gate.description


def test_a_full_load_cannot_be_published_in_part(history_and_new_day, tmp_path: Path) -> None:
    history, landing, _ = history_and_new_day
    warehouse = tmp_path / "w.duckdb"
    assert _run(history, landing, warehouse, "group:ingest").success
    result = _run(history, landing, warehouse, DELTA_SELECTION)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    description = failure.step_failure_data.user_failure_data.description
    assert "publishes customers, products and purchases together" in description
    assert "touch its landing file" in description  # what to do if this was a retried increment


def _part_of_run(data: Path, landing: Path, warehouse: Path, selection: dg.AssetSelection, run_id: str,
                 run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    """Some steps of the run ``run_id``: two calls with the same id are one run whose steps another
    run came between (as two runs started from the shell at once interleave theirs)."""
    defs = dg.Definitions(
        assets=ASSETS, asset_checks=CHECKS, jobs=[dg.define_asset_job("part", selection=selection)],
        resources={"duckdb": DuckDBResource(database=str(warehouse)),
                   "input_files": InputFiles(location=str(data), landing_location=str(landing))},
    )
    return defs.resolve_job_def("part").execute_in_process(run_config=run_config or {}, run_id=run_id, raise_on_error=False)


def test_a_run_whose_load_another_run_replaced_publishes_nothing_and_its_file_waits(history_and_new_day, tmp_path: Path) -> None:
    """Two increments started from the shell at once are not queued: run A lands a.parquet, run B
    lands b.parquet over it, gates and publishes it, then A's gates and publish step run. They
    must not judge or publish B's lines as A's: A fails without a verdict on its file, which
    waits in the landing folder to be landed again, and nothing is lost."""
    history, landing, new_day = history_and_new_day
    (landing / "new_day.parquet").unlink()
    warehouse = tmp_path / "w.duckdb"
    assert _run(history, landing, warehouse, "group:ingest").success
    history_lines = len(read_table(warehouse, "purchases"))
    half = len(new_day) // 2
    new_day.iloc[:half].to_parquet(landing / "a.parquet", index=False)
    new_day.iloc[half:].to_parquet(landing / "b.parquet", index=False)
    config_a = {"ops": {"audit__purchases": {"config": {"landing_files": ["a.parquet"], "delta": True}}}}
    config_b = {"ops": {"audit__purchases": {"config": {"landing_files": ["b.parquet"], "delta": True}}}}
    land = dg.AssetSelection.assets(dg.AssetKey(["audit", "purchases"])).without_checks()
    gate_and_publish = dg.AssetSelection.checks_for_assets(dg.AssetKey(["audit", "purchases"])) | dg.AssetSelection.assets("purchases")

    run_a = "a" * 8 + "-0000-0000-0000-" + "0" * 12
    assert _part_of_run(history, landing, warehouse, land, run_a, config_a).success
    assert _run(history, landing, warehouse, DELTA_SELECTION, config_b).success  # run B, whole
    after_b = read_table(warehouse, "purchases", order_by="purchase_id")
    assert len(after_b) == history_lines + len(new_day) - half

    rest_of_a = _part_of_run(history, landing, warehouse, gate_and_publish, run_a)
    assert not rest_of_a.success
    failures = [e for e in rest_of_a.all_events if e.is_step_failure]
    assert failures and all(alerts.failure_rule(e) == "own_load_current" for e in failures)
    assert alerts.no_verdict_on_inputs(failures, [])  # the failure sensor lands a.parquet again
    description = failures[0].step_failure_data.user_failure_data.description
    assert "another run" in description and "b.parquet" in description and "a.parquet" in description
    assert not [e for e in rest_of_a.get_asset_check_evaluations()]  # no verdict on anyone's lines
    pd.testing.assert_frame_equal(read_table(warehouse, "purchases", order_by="purchase_id"), after_b)
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        status = dict(conn.execute("select file, arg_max(status, recorded_at) from audit.landing_files group by 1").fetchall())
    assert status == {"a.parquet": "landed", "b.parquet": "accepted"} and (landing / "a.parquet").is_file()

    # Landed again (as the landing sensor does), nothing is lost.
    assert _run(history, landing, warehouse, DELTA_SELECTION, config_a).success
    assert len(read_table(warehouse, "purchases")) == history_lines + len(new_day)
