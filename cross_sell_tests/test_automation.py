"""Schedule, landing sensor, run-failure sensor and declarative automation, on real runs.

Every run here is a real in-process Dagster run against a DuckDB file under tmp_path, on a real
(temporary, sqlite) instance; sensors and the schedule are evaluated through Dagster's own tick
machinery (``evaluate_tick``), and automation through ``evaluate_automation_conditions``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

from cross_sell import automation, landing_files, slo
from cross_sell.definitions import ASSETS, CHECKS, build_definitions
from cross_sell.resources import InputFiles
from cross_sell_tests.conftest import make_resources, read_table

pytestmark = pytest.mark.filterwarnings("ignore:Starting in dagster 1.11:UserWarning")

HEADER = "purchase_id,order_id,customer_id,product_id,purchase_date,quantity,amount,channel\n"
# One new line (C4, who never bought, buys Meat) and a correction of L1 (amount 10 -> 12).
NEW_LINES = "L7,O6,C4,P2,2025-04-02 10:00:00,1,20,web\nL1,O1,C1,P1,2025-01-01 10:00:00,1,12,web\n"
# An unknown customer and a negative quantity: fails the contract and referential integrity.
BAD_LINES = "L9,O9,C99,P2,2025-04-02 10:00:00,-1,20,web\n"

INGEST = ["audit/customers", "audit/products", "audit/purchases", "customers", "products", "purchases", "audit/landing_files"]
# The whole product (ingest, stages, outputs, SLO report), whatever the stages hold.
PRODUCT = dg.AssetSelection.assets("cross_sell_recommendations", "slo_report").upstream()
DOWNSTREAM_OF_INGEST = PRODUCT - dg.AssetSelection.groups("ingest")
INGEST_GROUP = dg.AssetSelection.groups("ingest")  # what the daily full refresh does for ingest
DOWNSTREAM = [
    "customer_metrics",
    "customer_category_matrix",
    "product_affinity",
    "cross_sell_scores",
    "cross_sell_recommendations",
    "slo_report",
]


def keys(names: list[str]) -> list[dg.AssetKey]:
    return [dg.AssetKey.from_user_string(n) for n in names]


def drop(folder: Path, name: str, text: str, age_seconds: float = 60) -> Path:
    """Put a file in the landing folder as an upstream system would, already older than the
    sensor's minimum age."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    past = time.time() - age_seconds
    os.utime(path, (past, past))
    return path


def write_parquet(path: Path, csv_text: str) -> None:
    """The same lines as Parquet (all columns text, as upstream systems often send them)."""
    source = path.with_suffix(".src.csv")
    source.write_text(csv_text)
    with duckdb.connect() as conn:
        conn.execute(
            f"copy (select * from read_csv('{source}', all_varchar = true)) to '{path}' (format parquet)"
        )
    source.unlink()


@dataclass
class Env:
    """A project wired to temporary inputs, landing folder, warehouse and instance."""

    data: Path
    landing: Path
    warehouse: Path
    resources: dict
    defs: dg.Definitions
    instance: dg.DagsterInstance

    def materialize(self, selection: list[str] | dg.AssetSelection, **kwargs) -> dg.ExecuteInProcessResult:
        if isinstance(selection, list):
            selection = keys(selection)
        return dg.materialize(
            [*ASSETS, *CHECKS], selection=selection, resources=self.resources, instance=self.instance,
            raise_on_error=False, **kwargs,
        )

    def run_job(self, name: str, request: dg.RunRequest | None = None) -> dg.ExecuteInProcessResult:
        """Execute a job of the definitions as a run request from a sensor would launch it."""
        return self.defs.resolve_job_def(name).execute_in_process(
            instance=self.instance,
            run_config=request.run_config if request else None,
            tags=request.tags if request else None,
            raise_on_error=False,
        )

    def landing_tick(self, cursor: str | None):
        sensor = self.defs.get_sensor_def("purchase_landing_sensor")
        context = dg.build_sensor_context(
            instance=self.instance, cursor=cursor, resources=self.resources, definitions=self.defs
        )
        return sensor.evaluate_tick(context)

    def failure_sensor(self, result: dg.ExecuteInProcessResult) -> None:
        self._failure_sensor(result.dagster_run, result.get_run_failure_event())

    def failure_sensor_for(self, run_id: str) -> None:
        """The failure sensor on a run marked failed from outside (its process died)."""
        [entry] = self.instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        self._failure_sensor(self.instance.get_run_by_id(run_id), entry.dagster_event)

    def _failure_sensor(self, run: dg.DagsterRun, event: dg.DagsterEvent) -> None:
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert_sensor",
            dagster_instance=self.instance,
            dagster_run=run,
            dagster_event=event,
            resources=self.resources,
        ).for_run_failure()
        self.defs.get_sensor_def("run_failure_alert_sensor")(context)

    def table(self, name: str, order_by: str | None = None) -> pd.DataFrame:
        return read_table(self.warehouse, name, order_by)


@pytest.fixture
def env(tmp_path: Path, tiny_data: Path, warehouse_path: Path) -> Iterator[Env]:
    landing = tmp_path / "landing"
    resources = make_resources(tiny_data, warehouse_path)
    resources["input_files"] = InputFiles(location=str(tiny_data), landing_location=str(landing))
    with dg.instance_for_test() as instance:
        yield Env(tiny_data, landing, warehouse_path, resources, build_definitions(resources), instance)


# --- landing sensor ------------------------------------------------------------------------------


def test_landing_sensor_requests_each_file_exactly_once(env: Env) -> None:
    # Before the first full load a file waits (an increment adds to published purchases).
    drop(env.landing, "a.csv", HEADER + NEW_LINES)
    drop(env.landing, "readme.txt", "not purchases")
    before = env.landing_tick(None)
    assert before.run_requests == [] and "1 file(s)" in before.skip_message
    assert "wait for the first full load" in before.skip_message and (env.landing / "a.csv").exists()
    assert before.skip_message.endswith("ignored (not .csv, .csv.gz, .parquet): readme.txt")
    (env.landing / "a.csv").unlink()
    (env.landing / "readme.txt").unlink()
    assert env.materialize(INGEST_GROUP).success

    first = env.landing_tick(before.cursor)
    assert first.run_requests == [] and first.skip_message  # empty folder: nothing to do

    drop(env.landing, "a.csv", HEADER + NEW_LINES)
    tick1 = env.landing_tick(first.cursor)
    assert [r.tags[automation.LANDING_FILE_TAG] for r in tick1.run_requests] == ["a.csv"]
    request = tick1.run_requests[0]
    assert request.run_config == {"ops": {"audit__purchases": {"config": {"landing_files": ["a.csv"], "delta": True}}}}
    dg.validate_run_config(env.defs.resolve_job_def("ingest_landed_purchases"), request.run_config)

    # Evaluated again with the new cursor: no duplicate request while the file still waits.
    tick2 = env.landing_tick(tick1.cursor)
    assert tick2.run_requests == [] and "no new files" in tick2.skip_message

    # A second file: only it is requested. A file still being written (too young) waits a tick.
    write_parquet(env.landing / "b.parquet", HEADER + BAD_LINES)
    past = time.time() - 60
    os.utime(env.landing / "b.parquet", (past, past))
    (env.landing / "c.csv").write_text(HEADER + NEW_LINES)
    tick3 = env.landing_tick(tick2.cursor)
    assert [r.tags[automation.LANDING_FILE_TAG] for r in tick3.run_requests] == ["b.parquet"]
    os.utime(env.landing / "c.csv", (past, past))
    tick4 = env.landing_tick(tick3.cursor)
    assert [r.tags[automation.LANDING_FILE_TAG] for r in tick4.run_requests] == ["c.csv"]
    run_keys = [r.run_key for t in (tick1, tick3, tick4) for r in t.run_requests]
    assert len(set(run_keys)) == 3

    # Files that left the folder (settled by their runs) leave the cursor, so it stays small;
    # a file dropped again later under the same name is a new file and gets its own run.
    for name in ("a.csv", "b.parquet", "c.csv"):
        (env.landing / name).unlink()
    tick5 = env.landing_tick(tick4.cursor)
    assert json.loads(tick5.cursor)["requested"] == []
    drop(env.landing, "a.csv", HEADER + NEW_LINES, age_seconds=30)
    tick6 = env.landing_tick(tick5.cursor)
    assert [r.tags[automation.LANDING_FILE_TAG] for r in tick6.run_requests] == ["a.csv"]
    assert tick6.run_requests[0].run_key not in run_keys

    # A Windows export's upper-case suffix is a purchase file too; anything else is named as ignored.
    drop(env.landing, "EXPORT.CSV", HEADER + NEW_LINES)
    drop(env.landing, "notes.txt", "not purchases")
    tick7 = env.landing_tick(tick6.cursor)
    assert [r.tags[automation.LANDING_FILE_TAG] for r in tick7.run_requests] == ["EXPORT.CSV"]
    tick8 = env.landing_tick(tick7.cursor)
    assert tick8.run_requests == [] and tick8.skip_message.endswith("ignored (not .csv, .csv.gz, .parquet): notes.txt")


def test_landed_file_is_upserted_once_and_survives_full_refresh(env: Env) -> None:
    assert env.materialize(INGEST_GROUP).success  # what the daily refresh does for ingest
    assert len(env.table("purchases")) == 6

    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    tick = env.landing_tick(None)
    result = env.run_job("ingest_landed_purchases", tick.run_requests[0])
    assert result.success
    purchases = env.table("purchases", "purchase_id").set_index("purchase_id")
    assert len(purchases) == 7  # L7 added, L1 replaced (upsert by purchase_id), nothing duplicated
    assert purchases.loc["L1", "amount"] == 12 and purchases.loc["L7", "customer_id"] == "C4"
    processed = sorted((env.landing / landing_files.PROCESSED).iterdir())
    assert [p.name.split("__")[-1] for p in processed] == ["new.csv"] and not (env.landing / "new.csv").exists()
    assert processed[0].read_text() == HEADER + NEW_LINES  # archived byte for byte

    # The same lines again, as Parquet under another name (upper-case suffix): still 7 rows.
    write_parquet(env.landing / "same_again.PARQUET", HEADER + NEW_LINES)
    past = time.time() - 60
    os.utime(env.landing / "same_again.PARQUET", (past, past))
    tick2 = env.landing_tick(tick.cursor)
    assert [r.tags[automation.LANDING_FILE_TAG] for r in tick2.run_requests] == ["same_again.PARQUET"]
    assert env.run_job("ingest_landed_purchases", tick2.run_requests[0]).success
    assert len(env.table("purchases")) == 7

    # A later full refresh re-reads the source folder and keeps every accepted landed row.
    assert env.materialize(INGEST_GROUP).success
    purchases = env.table("purchases", "purchase_id").set_index("purchase_id")
    assert len(purchases) == 7 and purchases.loc["L1", "amount"] == 12

    log = env.table("audit.landing_files", "recorded_at")
    assert log.groupby("file")["status"].apply(list).to_dict() == {
        "new.csv": ["landed", "published", "accepted"],
        "same_again.PARQUET": ["landed", "published", "accepted"],
    }
    landed = log[log.status == "landed"].set_index("file").detail
    assert landed["new.csv"].startswith("2 rows read, 1 of them replace")  # L1 corrected
    assert landed["same_again.PARQUET"].startswith("2 rows read, 2 of them replace")  # all seen before
    new = log[(log.file == "new.csv") & (log.status == "accepted")].iloc[0]
    assert new.rows == 2 and new.sha256 == landing_files.file_sha256(processed[0])
    assert new.run_id == result.run_id

    # Another warehouse sharing the landing folder (another dataset, a test copy) never reads the
    # files this one accepted: its full refresh publishes its own source lines only.
    other = env.warehouse.with_name("other.duckdb")
    resources = {**env.resources, "duckdb": DuckDBResource(database=str(other))}
    assert dg.materialize([*ASSETS, *CHECKS], selection=INGEST_GROUP, resources=resources, raise_on_error=False).success
    assert len(read_table(other, "purchases")) == 6
    assert len(env.table("purchases")) == 7  # and this one still has them


def test_a_full_load_missing_an_accepted_file_fails_instead_of_dropping_its_lines(env: Env) -> None:
    """An accepted file's archive is not where the full refresh looks (another landing folder
    configured, an archive clean-up): the load fails, naming the files, and nothing published
    changes. Dropping their lines is possible, on purpose only, and recorded."""
    assert env.materialize(INGEST_GROUP).success
    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    assert env.run_job("ingest_landed_purchases", env.landing_tick(None).run_requests[0]).success
    before = env.table("purchases", "purchase_id")
    assert len(before) == 7
    [archived] = (env.landing / landing_files.PROCESSED).iterdir()
    elsewhere = env.landing.parent / "elsewhere"
    elsewhere.mkdir()
    archived.rename(elsewhere / archived.name)

    failed = env.materialize(INGEST_GROUP)
    assert not failed.success and "audit__purchases" in failed.get_failed_step_keys()
    [failure] = [e for e in failed.all_events if e.is_step_failure and e.step_key == "audit__purchases"]
    data = failure.step_failure_data.user_failure_data
    assert data.metadata["rule"].value == "accepted_landing_files_present"
    assert archived.name in data.description and "would drop their published purchase lines" in data.description
    assert data.description.endswith("(rule accepted_landing_files_present)")  # what the shell and the alerts show
    pd.testing.assert_frame_equal(env.table("purchases", "purchase_id"), before)
    # No landing folder configured at all: the same refusal, saying so.
    unconfigured = {**env.resources, "input_files": InputFiles(location=str(env.data))}
    blind = dg.materialize([*ASSETS, *CHECKS], selection=INGEST_GROUP, resources=unconfigured,
                           instance=env.instance, raise_on_error=False)
    [failure] = [e for e in blind.all_events if e.is_step_failure and e.step_key == "audit__purchases"]
    assert "no landing folder is configured" in failure.step_failure_data.user_failure_data.description

    config = {"ops": {"audit__purchases": {"config": {"withdraw_missing_landing_files": True}}}}
    assert env.materialize(INGEST_GROUP, run_config=config).success
    purchases = env.table("purchases", "purchase_id").set_index("purchase_id")
    assert len(purchases) == 6 and purchases.loc["L1", "amount"] == 10  # the source lines only
    log = env.table("audit.landing_files", "recorded_at")
    assert log.status.tolist() == ["landed", "published", "accepted", "withdrawn"]
    assert env.materialize(INGEST_GROUP).success  # withdrawn: no longer expected


def test_a_published_file_taken_away_before_it_was_archived_fails_the_next_full_load(env: Env) -> None:
    """A file whose lines were published but whose move to the archive failed, then taken out of
    the landing folder by hand: the next full load must not drop its lines without a word."""
    assert env.materialize(INGEST_GROUP).success
    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    (env.landing / landing_files.PROCESSED).write_text("")  # a file where the archive folder goes: the move fails
    result = env.run_job("ingest_landed_purchases", env.landing_tick(None).run_requests[0])
    assert not result.success and result.get_failed_step_keys() == {"publish_inputs"}
    before = env.table("purchases", "purchase_id")
    assert len(before) == 7  # published before the move failed
    (env.landing / landing_files.PROCESSED).unlink()
    (env.landing / "new.csv").rename(env.landing.parent / "new.csv")  # taken away by hand

    failed = env.materialize(INGEST_GROUP)
    [failure] = [e for e in failed.all_events if e.is_step_failure and e.step_key == "audit__purchases"]
    data = failure.step_failure_data.user_failure_data
    assert data.metadata["rule"].value == "accepted_landing_files_present" and "new.csv" in data.description
    pd.testing.assert_frame_equal(env.table("purchases", "purchase_id"), before)

    config = {"ops": {"audit__purchases": {"config": {"withdraw_missing_landing_files": True}}}}
    assert env.materialize(INGEST_GROUP, run_config=config).success
    assert len(env.table("purchases")) == 6  # dropped on purpose, and recorded
    log = env.table("audit.landing_files", "recorded_at")
    assert log.status.tolist() == ["landed", "published", "withdrawn"]


def test_a_source_extract_newer_than_an_accepted_file_is_warned_about_and_can_take_over(env: Env) -> None:
    """Upstream extracts the source again, with a landed line corrected: the accepted landing file
    still wins (the rule), but the load says so, naming the file, and the operator can withdraw
    every accepted file so the new extract alone counts."""
    assert env.materialize(INGEST_GROUP).success
    drop(env.landing, "new.csv", HEADER + NEW_LINES)  # L1 corrected to 12, L7 added
    assert env.run_job("ingest_landed_purchases", env.landing_tick(None).run_requests[0]).success
    source = env.data / "purchase.csv"
    lines = source.read_text().splitlines()
    extract = [line.replace(",1,10,web", ",1,30,web") if line.startswith("L1,") else line for line in lines]
    source.write_text("\n".join([*extract, NEW_LINES.splitlines()[0]]) + "\n")  # L1 at 30 now, L7 included

    def landing_warnings(result: dg.ExecuteInProcessResult) -> list[str]:
        [event] = [e for e in result.get_asset_materialization_events() if e.step_key == "audit__purchases"]
        return event.materialization.metadata["warnings"].value

    kept = env.materialize(INGEST_GROUP)
    assert kept.success
    assert env.table("purchases", "purchase_id").set_index("purchase_id").loc["L1", "amount"] == 12
    [warning] = landing_warnings(kept)
    assert "new.csv (2 lines, published" in warning and "modified after them (purchase.csv" in warning
    assert "withdraw_accepted_landing_files: true" in warning

    config = {"ops": {"audit__purchases": {"config": {"withdraw_accepted_landing_files": True}}}}
    taken_over = env.materialize(INGEST_GROUP, run_config=config)
    assert taken_over.success and landing_warnings(taken_over) == []
    for result in (taken_over, env.materialize(INGEST_GROUP)):  # and every later refresh
        assert result.success
        purchases = env.table("purchases", "purchase_id").set_index("purchase_id")
        assert len(purchases) == 7 and purchases.loc["L1", "amount"] == 30
    log = env.table("audit.landing_files", "recorded_at")
    assert log.status.tolist() == ["landed", "published", "accepted", "withdrawn"]
    assert "withdraw_accepted_landing_files" in log.detail.iloc[-1]


def test_bad_landing_file_fails_at_the_gate_loses_nothing_and_alerts(env: Env) -> None:
    assert env.materialize(dg.AssetSelection.assets("cross_sell_scores").upstream()).success
    before = {t: env.table(t) for t in ("purchases", "customers", "cross_sell_scores")}

    path = drop(env.landing, "bad.csv", HEADER + BAD_LINES)
    tick = env.landing_tick(None)
    result = env.run_job("ingest_landed_purchases", tick.run_requests[0])
    assert not result.success
    assert result.get_failed_step_keys() == {"audit__purchases_contract", "audit__purchases_referential_integrity"}
    assert result.is_node_untouched("publish_inputs")
    for table, frame in before.items():  # published tables and outputs exactly as they were
        pd.testing.assert_frame_equal(env.table(table), frame)

    env.failure_sensor(result)
    alerts = env.table("audit.run_alerts", "failed_step")
    assert alerts.run_id.unique().tolist() == [result.run_id]
    assert alerts.failed_step.tolist() == ["audit__purchases_contract", "audit__purchases_referential_integrity"]
    assert alerts.gate.tolist() == ["audit/purchases:contract", "audit/purchases:referential_integrity"]
    assert (alerts.landing_files == "bad.csv").all()
    # What each gate found, not Dagster's "blocking asset check failed": rule, column, count.
    assert alerts.message.tolist() == [
        "audit/purchases:contract: contract purchase failed (1 rows checked): validity:greater_than(0) on quantity: 1",
        "audit/purchases:referential_integrity: contract purchase_references failed (1 rows checked): "
        "referential_integrity:exists_in_customer on customer_id: 1",
    ]

    # The file is kept, byte for byte, under rejected/, and the log says why.
    assert not path.exists()
    [rejected] = list((env.landing / landing_files.REJECTED).iterdir())
    assert rejected.read_text() == HEADER + BAD_LINES
    log = env.table("audit.landing_files", "recorded_at")
    assert log.status.tolist() == ["landed", "rejected"]
    assert log.detail.iloc[-1].startswith("gate failed: audit/purchases:contract: contract purchase failed")
    assert "exists_in_customer on customer_id: 1" in log.detail.iloc[-1]

    env.failure_sensor(result)  # a retried sensor tick alerts once only
    assert len(env.table("audit.run_alerts")) == 2

    # The next ingest does not pick the rejected file up, and the sensor forgets it.
    assert env.materialize(INGEST_GROUP).success
    assert len(env.table("purchases")) == 6
    assert json.loads(env.landing_tick(tick.cursor).cursor)["requested"] == []


def _daily_refresh_keeps(env: Env) -> pd.DataFrame:
    assert env.run_job("daily_refresh").success
    return env.table("purchases", "purchase_id").set_index("purchase_id")


def test_a_file_published_by_a_later_run_is_archived_and_kept(env: Env) -> None:
    """The run that landed a file stopped before publishing (cancelled, killed); another run
    publishes the purchases. The file's lines are published, so it is archived as accepted and the
    daily refresh keeps them."""
    assert env.materialize(INGEST_GROUP).success
    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    tick = env.landing_tick(None)
    assert env.materialize(["audit/purchases"], run_config=tick.run_requests[0].run_config).success  # landed, gated
    assert (env.landing / "new.csv").exists()
    published = env.materialize(["purchases"])
    assert published.success
    [archived] = (env.landing / landing_files.PROCESSED).iterdir()
    assert archived.read_text() == HEADER + NEW_LINES and not (env.landing / "new.csv").exists()
    assert env.landing_tick(tick.cursor).run_requests == []
    purchases = _daily_refresh_keeps(env)
    assert len(purchases) == 7 and purchases.loc["L1", "amount"] == 12 and purchases.loc["L7", "customer_id"] == "C4"


def _cancelled_landing(env: Env, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """The requested run lands and gates its file, then is cancelled before publishing (the run
    record is marked cancelled as the UI's force-termination does)."""
    landed = env.materialize(["audit/purchases"], run_config=request.run_config, tags=request.tags)
    assert landed.success
    env.instance.report_run_canceled(landed.dagster_run)
    assert env.instance.get_run_by_id(landed.run_id).status == dg.DagsterRunStatus.CANCELED
    return landed


def test_a_cancelled_landing_run_is_requested_again(env: Env) -> None:
    """The landing folder is a queue: a file whose run was cancelled before settling it gets a
    new run on the sensor's next tick, and only one."""
    assert env.materialize(INGEST_GROUP).success
    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    tick = env.landing_tick(None)
    [request] = tick.run_requests
    assert request.tags[automation.LANDING_FINGERPRINT_TAG].startswith("new.csv:")
    landed = env.materialize(["audit/purchases"], run_config=request.run_config, tags=request.tags)
    assert env.landing_tick(tick.cursor).run_requests == []  # its run ended normally: not requested again
    env.instance.report_run_canceled(landed.dagster_run)

    retry_tick = env.landing_tick(tick.cursor)
    [retry] = retry_tick.run_requests
    assert retry.tags[automation.LANDING_RETRY_TAG] == landed.run_id
    assert retry.run_config == request.run_config and retry.run_key != request.run_key
    result = env.run_job("ingest_landed_purchases", retry)
    assert result.success
    purchases = env.table("purchases", "purchase_id").set_index("purchase_id")
    assert len(purchases) == 7 and purchases.loc["L1", "amount"] == 12
    log = env.table("audit.landing_files", "recorded_at")
    assert log.status.tolist() == ["landed", "landed", "published", "accepted"]
    assert log.run_id.tolist()[1:] == [result.run_id] * 3
    after = env.landing_tick(retry_tick.cursor)
    assert after.run_requests == [] and json.loads(after.cursor)["requested"] == []


def test_a_cancelled_landing_run_whose_lines_were_published_is_archived_not_landed_again(env: Env) -> None:
    """The cancelled run's lines were published (by a later run whose archiving failed): the
    sensor archives the file instead of requesting a second landing of the same lines."""
    assert env.materialize(INGEST_GROUP).success
    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    tick = env.landing_tick(None)
    landed = _cancelled_landing(env, tick.run_requests[0])
    blocker = env.landing / landing_files.PROCESSED
    blocker.write_text("a file where the archive folder should be")  # the publish step cannot archive
    published = env.materialize(["purchases"])
    assert not published.success and len(env.table("purchases")) == 7  # lines published, file still waiting
    assert (env.landing / "new.csv").exists()
    blocker.unlink()

    after = env.landing_tick(tick.cursor)
    assert after.run_requests == [] and json.loads(after.cursor)["requested"] == []
    [archived] = (env.landing / landing_files.PROCESSED).iterdir()
    assert archived.read_text() == HEADER + NEW_LINES
    log = env.table("audit.landing_files", "recorded_at")
    assert log.status.tolist() == ["landed", "published", "accepted"]
    assert log.run_id.tolist() == [landed.run_id, published.run_id, landed.run_id]


def test_a_landing_run_killed_before_a_verdict_is_landed_again_then_rejected_after_three(env: Env) -> None:
    """The landing run's process died (the run is then failed by Dagster or by
    `python -m cross_sell.runs fail`): nothing found fault with the file, so it is not rejected but
    landed again; after three attempts without a verdict it is rejected, saying so."""
    assert env.materialize(INGEST_GROUP).success
    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    cursor, request = None, None
    for attempt in (1, 2, 3):
        tick = env.landing_tick(cursor)
        [request] = tick.run_requests
        cursor = tick.cursor
        if attempt > 1:
            assert request.tags[automation.LANDING_RETRY_TAG] == killed.run_id
        killed = env.materialize(["audit/purchases"], run_config=request.run_config, tags=request.tags)
        env.instance.report_run_failed(killed.dagster_run, "Run worker terminated by signal 9")
        env.failure_sensor_for(killed.run_id)
        if attempt < 3:
            assert (env.landing / "new.csv").exists()
            assert env.instance.get_run_by_id(killed.run_id).tags[automation.LANDING_REQUEUE_TAG] == "true"
    assert not (env.landing / "new.csv").exists()  # the third: rejected
    log = env.table("audit.landing_files", "recorded_at")
    assert log.status.tolist() == ["landed", "landed", "landed", "rejected"]
    assert "3 attempt(s), none reached a verdict on the file" in log.detail.iloc[-1]
    assert "terminated by signal 9" in log.detail.iloc[-1]
    alerts = env.table("audit.run_alerts", "alerted_at")
    assert len(alerts) == 3 and (alerts.message == "Run worker terminated by signal 9").all()
    assert env.landing_tick(cursor).run_requests == []


def test_a_file_rejected_before_its_retried_publish_is_taken_back(env: Env) -> None:
    """The landing run failed after its gates passed (here: its publish was refused for selecting
    too much), so the failure sensor rejected the file; a retry publishes the purchases. The file
    comes back from rejected/ into the archive, and the daily refresh keeps its lines."""
    assert env.materialize(INGEST_GROUP).success
    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    request = env.landing_tick(None).run_requests[0]
    failed = env.materialize(["audit/purchases", "purchases", "customers"], run_config=request.run_config)
    assert not failed.success and "publish_inputs" in failed.get_failed_step_keys()
    env.failure_sensor(failed)
    assert [p.name.split("__")[-1] for p in (env.landing / landing_files.REJECTED).iterdir()] == ["new.csv"]
    # The alert and the file's log say why in the refusal's own words, not Dagster's wrapper's.
    [alert] = env.table("audit.run_alerts").itertuples()
    assert alert.message.startswith("The current purchase load is incremental") and "select purchases alone" in alert.message
    assert "select purchases alone" in env.table("audit.landing_files", "recorded_at").detail.iloc[-1]

    assert env.materialize(["purchases", "audit/landing_files"]).success  # the retry
    assert list((env.landing / landing_files.REJECTED).iterdir()) == []
    [archived] = (env.landing / landing_files.PROCESSED).iterdir()
    assert archived.read_text() == HEADER + NEW_LINES
    log = env.table("audit.landing_files", "recorded_at")
    assert log.status.tolist() == ["landed", "rejected", "published", "accepted"]
    env.failure_sensor(failed)  # a late tick of the failure sensor never rejects published lines
    assert list((env.landing / landing_files.PROCESSED).iterdir()) == [archived]
    purchases = _daily_refresh_keeps(env)
    assert len(purchases) == 7 and purchases.loc["L7", "customer_id"] == "C4"


def test_unreadable_landing_file_fails_its_run_and_is_rejected_unchanged(env: Env) -> None:
    assert env.materialize(INGEST_GROUP).success
    path = drop(env.landing, "empty.csv", "")  # 0 bytes: cannot even be read
    result = env.run_job("ingest_landed_purchases", env.landing_tick(None).run_requests[0])
    assert not result.success and result.get_failed_step_keys() == {"audit__purchases"}
    assert len(env.table("purchases")) == 6

    env.failure_sensor(result)
    [alert] = env.table("audit.run_alerts").itertuples()
    assert alert.failed_step == "audit__purchases" and pd.isna(alert.gate) and "empty" in alert.message
    assert not path.exists()
    [rejected] = list((env.landing / landing_files.REJECTED).iterdir())
    assert rejected.name.endswith("__empty.csv") and rejected.stat().st_size == 0
    [entry] = env.table("audit.landing_files").itertuples()  # never landed, so only the rejection
    assert entry.status == "rejected" and "run failed" in entry.detail


def test_a_landing_file_without_the_contract_columns_is_refused_naming_it(env: Env) -> None:
    """A file in another layout (a basket log: no purchase_id) or with its header in capitals:
    refused at landing, naming the file and the columns, in an increment and in a full load alike
    (a full load used to blame the source file, with an SQL binder error)."""
    assert env.materialize(INGEST_GROUP).success
    drop(env.landing, "basket.csv", "Member_number,Date,itemDescription\nC1,2025-04-02,P2\n")
    drop(env.landing, "shouting.csv", HEADER.upper() + NEW_LINES)

    def refusal(result: dg.ExecuteInProcessResult):
        assert not result.success and result.get_failed_step_keys() == {"audit__purchases"}
        [failure] = [e for e in result.all_events if e.is_step_failure]
        data = failure.step_failure_data.user_failure_data
        assert data.metadata["rule"].value == "schema:column_present"
        return data.description

    for name in ("basket.csv", "shouting.csv"):
        delta = {"ops": {"audit__purchases": {"config": {"landing_files": [name], "delta": True}}}}
        full = {"ops": {"audit__purchases": {"config": {"landing_files": [name]}}}}
        for config, selection in ((delta, ["audit/purchases", "purchases"]), (full, INGEST_GROUP)):
            description = refusal(env.materialize(selection, run_config=config))
            assert f"landing file {name} lacks the purchase contract's column(s) purchase_id" in description
            assert "purchase.csv" not in description
    assert "(the file has 'PURCHASE_ID': column names are case-sensitive)" in description
    assert len(env.table("purchases")) == 6


# --- schedule --------------------------------------------------------------------------------------


def test_daily_schedule_refreshes_everything_before_the_deadline(env: Env) -> None:
    schedule = env.defs.get_schedule_def("daily_refresh_schedule")
    assert schedule.cron_schedule == "0 5 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    tick = datetime(2025, 3, 2, 5, 0, tzinfo=timezone.utc)
    data = schedule.evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=tick, repository_def=env.defs.get_repository_def())
    )
    assert len(data.run_requests) == 1
    job = env.defs.resolve_job_def("daily_refresh")
    dg.validate_run_config(job, data.run_requests[0].run_config)
    # The job refreshes every asset of the product, and the tick comes an hour before the deadline.
    assert set(job.asset_layer.selected_asset_keys) == set(env.defs.resolve_asset_graph().get_all_asset_keys())
    assert int(automation.REFRESH_CRON.split()[1]) < int(slo.DEADLINE_CRON.split()[1])


def test_sensors_and_schedule_run_by_default(env: Env) -> None:
    repo = env.defs.get_repository_def()
    status = {s.name: s.default_status for s in repo.sensor_defs}
    assert status == {
        "purchase_landing_sensor": dg.DefaultSensorStatus.RUNNING,
        "cross_sell_automation": dg.DefaultSensorStatus.RUNNING,
        "run_failure_alert_sensor": dg.DefaultSensorStatus.RUNNING,
    }  # and no stopped default_automation_condition_sensor: ours covers every asset
    assert {s.name: s.default_status for s in repo.schedule_defs} == {
        "daily_refresh_schedule": dg.DefaultScheduleStatus.RUNNING
    }


# --- declarative automation ------------------------------------------------------------------------


def requested(result, names: list[str]) -> set[str]:
    return {n for n in names if result.get_num_requested(dg.AssetKey.from_user_string(n))}


def test_automation_refreshes_downstream_after_an_upstream_update(env: Env) -> None:
    assert env.materialize(PRODUCT).success
    first = dg.evaluate_automation_conditions(defs=env.defs, instance=env.instance)
    assert first.total_requested == 0  # everything is up to date
    # A full refresh updates inputs and outputs in one run: nothing is requested a second time.
    assert env.materialize(PRODUCT).success
    first = dg.evaluate_automation_conditions(defs=env.defs, instance=env.instance, cursor=first.cursor)
    assert requested(first, DOWNSTREAM) == set()

    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    assert env.run_job("ingest_landed_purchases", env.landing_tick(None).run_requests[0]).success
    after_update = dg.evaluate_automation_conditions(defs=env.defs, instance=env.instance, cursor=first.cursor)
    assert requested(after_update, DOWNSTREAM) == set(DOWNSTREAM)  # the whole chain, in one tick
    assert requested(after_update, INGEST) == set()  # files drive ingest, not automation

    assert env.materialize(DOWNSTREAM_OF_INGEST).success
    handled = dg.evaluate_automation_conditions(defs=env.defs, instance=env.instance, cursor=after_update.cursor)
    assert requested(handled, DOWNSTREAM) == set()
    assert "C4" in set(env.table("customer_category_matrix").customer_id)  # the new line went through


def test_automation_never_refreshes_past_a_failed_gate(env: Env) -> None:
    # The same graph with plain eager(): it ignores check results.
    plain = dg.Definitions(
        assets=dg.map_asset_specs(
            lambda s: s.replace_attributes(automation_condition=dg.AutomationCondition.eager())
            if s.automation_condition else s,
            automation.apply_automation(ASSETS),
        ),
        asset_checks=CHECKS,
        resources=env.resources,
    )
    graph = env.defs.resolve_asset_graph()
    metrics = dg.AssetKey("customer_metrics")
    # Automated single assets that read customer_metrics (the SLO report among them, whatever else the
    # graph holds). A member of a non-subsettable multi-asset is left out: Dagster runs the whole op
    # whenever any of its members is requested, whatever the condition of the others.
    single = {key for a in ASSETS if len(a.keys) == 1 for key in a.keys}
    readers = sorted(
        k.to_user_string() for k in graph.get_all_asset_keys()
        if k in single and metrics in graph.get(k).parent_keys and graph.get(k).automation_condition is not None
    )
    assert "slo_report" in readers
    assert env.materialize(PRODUCT).success
    ours = dg.evaluate_automation_conditions(defs=env.defs, instance=env.instance)
    eager = dg.evaluate_automation_conditions(defs=plain, instance=env.instance)

    # customer_metrics fails its blocking output gate (a negative CLV horizon gives negative CLV), then
    # product_affinity, another input of the SLO report, is refreshed successfully.
    failed = env.materialize(
        ["customer_metrics"], run_config={"ops": {"customer_metrics": {"config": {"clv_horizon_years": -1.0}}}}
    )
    assert not failed.success
    [gate] = [e for e in failed.get_asset_check_evaluations() if not e.passed]
    assert gate.asset_key == metrics and gate.check_name == "contract"
    assert env.materialize(["product_affinity"]).success

    ours = dg.evaluate_automation_conditions(defs=env.defs, instance=env.instance, cursor=ours.cursor)
    eager = dg.evaluate_automation_conditions(defs=plain, instance=env.instance, cursor=eager.cursor)
    assert "slo_report" in requested(eager, readers)  # eager() alone would run past the failed gate
    assert requested(ours, readers) == set()  # ours waits until customer_metrics passes its gate again
    assert "customer_metrics" not in requested(ours, ["customer_metrics"])  # nothing re-triggers the failed one

    # The run-failure sensor records the failed step and the gate that stopped it.
    env.failure_sensor(failed)
    [alert] = env.table("audit.run_alerts").itertuples()
    assert (alert.run_id, alert.failed_step, alert.gate) == (failed.run_id, "customer_metrics", "customer_metrics:contract")
    assert pd.isna(alert.landing_files)


def settle(env: Env, cursor, limit: int = 8) -> tuple[object, list[set[str]]]:
    """Tick automation and run what it requests, as the daemon would, until it requests nothing.
    Returns the last cursor and what each tick requested."""
    ticks: list[set[str]] = []
    for _ in range(limit):
        tick = dg.evaluate_automation_conditions(defs=env.defs, instance=env.instance, cursor=cursor)
        cursor = tick.cursor
        wanted = {r.key.to_user_string() for r in tick.results if r.true_subset.size}
        if not wanted:
            return cursor, ticks
        ticks.append(wanted)
        ran = env.materialize(sorted(w for w in wanted if ":" not in w))  # the assets, with their checks
        assert ran.success, [e.step_key for e in ran.get_step_failure_events()]
    raise AssertionError(f"automation still requesting after {limit} ticks: {ticks[-1]}")


def test_automation_recovers_after_a_failed_full_refresh(env: Env) -> None:
    """A full refresh stopped by a gate leaves every later step and check unexecuted. Automation then
    brings the whole product back, the manifest and the Parquet exports' checksum gate included, and
    after a landed file it refreshes everything downstream in one tick."""
    graph = env.defs.resolve_asset_graph()
    # A check defined apart from its asset runs in an automation run only when its own condition
    # requests it (Dagster's daemon does not add it to the asset's run), so every such check on an
    # automated asset has one; the ingest group is driven by jobs, which select their checks.
    separate = {key for c in CHECKS for key in c.check_keys}
    automated = {k for k in separate if graph.get(k.asset_key).automation_condition is not None}
    assert automated and all(graph.get(k).automation_condition is not None for k in automated)
    serving = {"parquet_exports", "parquet_exports:checksums_match", "marketing_database", "data_product_manifest",
               "semantic/cross_sell_opportunities"}
    assert env.materialize(dg.AssetSelection.all()).success
    cursor = dg.evaluate_automation_conditions(defs=env.defs, instance=env.instance).cursor

    failed = env.materialize(
        dg.AssetSelection.all(), run_config={"ops": {"customer_metrics": {"config": {"clv_horizon_years": -1.0}}}}
    )
    assert not failed.success
    after_failure = env.instance.get_latest_materialization_event(dg.AssetKey("purchases")).timestamp
    cursor, ticks = settle(env, cursor)
    assert serving <= set().union(*ticks)
    export_check = dg.AssetCheckKey(dg.AssetKey("parquet_exports"), "checksums_match")
    evaluation = env.instance.event_log_storage.get_latest_asset_check_execution_by_key([export_check])[export_check]
    assert evaluation.status.value == "SUCCEEDED" and evaluation.create_timestamp > after_failure

    drop(env.landing, "new.csv", HEADER + NEW_LINES)
    assert env.run_job("ingest_landed_purchases", env.landing_tick(None).run_requests[0]).success
    cursor, ticks = settle(env, cursor)
    assert len(ticks) == 1 and set(DOWNSTREAM) | serving <= ticks[0]


def test_landing_files_of_one_full_load_keep_their_order_in_every_later_refresh(env: Env) -> None:
    """A full load given several landing files applies them in the order given, a later file
    correcting an earlier one; the daily refreshes after it keep that order (they used to order
    the files, published at one instant, by their archive names)."""
    assert env.materialize(INGEST_GROUP).success
    names = [f"fix_{i}.csv" for i in range(6)]
    for i, name in enumerate(names):
        drop(env.landing, name, HEADER + f"L1,O1,C1,P1,2025-01-01 10:00:00,1,{20 + i},web\n")
    config = {"ops": {"audit__purchases": {"config": {"landing_files": names}}}}
    assert env.materialize(INGEST_GROUP, run_config=config).success
    for _ in range(3):
        assert env.table("purchases", "purchase_id").set_index("purchase_id").loc["L1", "amount"] == 25
        assert env.materialize(INGEST_GROUP).success
    # Recorded published one after the other, in the order given, so no later load depends on
    # which file happened to be archived first (two files published at one instant could swap).
    log = env.table("audit.landing_files", "recorded_at")
    published = log[log.status == "published"]
    assert published.file.tolist() == names and published.recorded_at.is_unique
