"""What makes the product refresh by itself: a schedule, three sensors and automation conditions.

* ``daily_refresh_schedule``: the whole graph at 05:00 UTC, one hour before the 06:00 UTC
  deadline of the "product outputs ready" SLO (:mod:`cross_sell.slo`).
* ``purchase_landing_sensor``: one ingest run per new purchase file in the landing folder
  (:mod:`cross_sell.landing_files`); its cursor makes each file trigger exactly one run, and
  another only if that run was cancelled before publishing or rejecting the file.
* ``cross_sell_automation``: declarative automation. Every asset downstream of the published
  inputs refreshes after its upstream assets update, but never past a failed blocking check:
  ``eager()`` alone ignores check results, so it is combined with
  ``all_deps_blocking_checks_passed()``.
* ``run_failure_alert_sensor``: writes an alert (run id, failed step, gate) to
  ``audit.run_alerts`` and its log, and settles the landing files of a failed ingest run.

All four are RUNNING by default when the code location loads (``dagster dev``); each can be
stopped in the UI or with ``dagster schedule|sensor stop`` (see the README).
"""


from collections.abc import Sequence
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from cross_sell import alerts, landing_files
from cross_sell.ingest.assets import PURCHASES
from cross_sell.resources import InputFiles

REFRESH_CRON = "0 5 * * *"
REFRESH_TIMEZONE = "UTC"
INGEST_GROUP = "ingest"
# Assets in these groups read files, not other assets: the landing sensor and the schedule drive them.
NOT_AUTOMATED_GROUPS = frozenset({INGEST_GROUP})
LANDING_OP = PURCHASES.audit_key.to_python_identifier()
LANDING_FILE_TAG = "cross_sell/landing_file"
# The file version (name, size, modification time) a landing run was requested for, and, on a
# request made again after a cancelled run, that run's id.
LANDING_FINGERPRINT_TAG = "cross_sell/landing_fingerprint"
LANDING_RETRY_TAG = "cross_sell/landing_retry_of"
# Set by the run-failure sensor on a landing run that failed without a verdict on its file (killed,
# warehouse locked): the landing sensor lands the file again, as after a cancel.
LANDING_REQUEUE_TAG = "cross_sell/landing_requeue"
# A file whose runs failed this many times without a verdict is rejected all the same.
MAX_LANDING_ATTEMPTS = 3
# Runs that rewrite the purchase input carry this tag; the instance runs at most one of them at a time.
INGEST_TAG = "cross_sell/ingest"

REFRESH_AFTER_UPSTREAM = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("refresh after upstream updates, never past a failed blocking check")


def apply_automation(assets: Sequence[dg.AssetsDefinition | dg.AssetSpec]) -> list:
    """Give every asset outside the ingest group that has upstream assets the project's automation
    condition, unless it declares its own."""

    def _apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.group_name in NOT_AUTOMATED_GROUPS or spec.automation_condition is not None or not spec.deps:
            return spec
        return spec.replace_attributes(automation_condition=REFRESH_AFTER_UPSTREAM)

    return dg.map_asset_specs(_apply, list(assets))


daily_refresh_job = dg.define_asset_job(
    "daily_refresh",
    selection=dg.AssetSelection.all(),
    tags={INGEST_TAG: "true"},
    description="Full refresh: re-read the source files and every accepted landing file, gate, publish "
    "and recompute every output.",
)

landed_purchases_job = dg.define_asset_job(
    "ingest_landed_purchases",
    selection=dg.AssetSelection.assets(PURCHASES.audit_key, PURCHASES.table, landing_files.landing_files_log.key),
    tags={INGEST_TAG: "true"},
    description="Incremental: land one new purchase file from the landing folder (and nothing else), gate it, "
    "upsert it into the published purchases by purchase_id, archive it. Declarative automation then "
    "refreshes everything downstream.",
)

daily_refresh_schedule = dg.ScheduleDefinition(
    name="daily_refresh_schedule",
    job=daily_refresh_job,
    cron_schedule=REFRESH_CRON,
    execution_timezone=REFRESH_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily full refresh at 05:00 UTC, so the outputs meet their 06:00 UTC freshness deadline.",
)


def _ignored_note(landing_dir: Path) -> str:
    """'; ignored (...): a.txt, b.xlsx' for the files in the landing folder it never ingests, or ''."""
    ignored = landing_files.ignored_files(landing_dir)
    if not ignored:
        return ""
    more = " ..." if len(ignored) > 10 else ""
    return f"; ignored (not {', '.join(landing_files.SUFFIXES)}): {', '.join(ignored[:10])}{more}"


def stopped_landing_runs(instance: dg.DagsterInstance, files: Sequence[landing_files.PendingFile]) -> dict[str, str]:
    """Fingerprint -> run id, for the requested files whose latest landing run ended without a
    verdict on them: cancelled, or failed and marked for requeueing by the run-failure sensor."""
    stopped = {}
    for file in files:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={LANDING_FINGERPRINT_TAG: file.fingerprint}), limit=1)
        if not runs:
            continue
        run = runs[0]
        if run.status == dg.DagsterRunStatus.CANCELED or (
            run.status == dg.DagsterRunStatus.FAILURE and run.tags.get(LANDING_REQUEUE_TAG) == "true"
        ):
            stopped[file.fingerprint] = run.run_id
    return stopped


@dg.sensor(
    name="purchase_landing_sensor",
    job=landed_purchases_job,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="One ingest run per new purchase file (CSV or Parquet) in the landing folder, and a "
    "new one for a file whose run was cancelled before settling it.",
)
def purchase_landing_sensor(
    context: dg.SensorEvaluationContext, input_files: InputFiles, duckdb: DuckDBResource
) -> dg.SensorResult:
    """Request one run per new file; the cursor remembers files already requested.

    The landing folder is a queue: a file that waits in it has a run queued or in progress. A
    run cancelled (or force-terminated after its process died) before it published or rejected
    its file would break that, so the file is requested again. First, any file whose lines that
    run did publish is archived (it must not be landed twice); this is the only time the sensor
    opens the warehouse.
    """
    landing_dir = input_files.landing_path()
    if landing_dir is None:
        return dg.SensorResult(skip_reason=dg.SkipReason("no landing folder configured"), cursor=context.cursor)
    if input_files.input_format != "canonical":
        return dg.SensorResult(
            skip_reason=dg.SkipReason(f"landing files hold canonical purchase lines; the input format is {input_files.input_format}"),
            cursor=context.cursor,
        )
    if context.instance.get_latest_materialization_event(dg.AssetKey(PURCHASES.table)) is None:
        # An increment adds to published purchases; before the first full load its gate would
        # reject the file. It waits instead, and is requested once purchases are published.
        waiting = len(landing_files.pending_files(landing_dir))
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"{waiting} file(s) in {landing_dir} wait for the first full load: purchases were never "
                f"published on this instance (run {daily_refresh_job.name}, or wait for its schedule)"
                + _ignored_note(landing_dir)
            ),
            cursor=context.cursor,
        )
    stopped = stopped_landing_runs(context.instance, landing_files.requested_waiting(landing_dir, context.cursor))
    if stopped:
        with alerts.connect_within(duckdb.database) as conn:
            for item in landing_files.archive_published(conn, landing_dir, next(iter(stopped.values()))):
                context.log.info(f"Landing file {item.file} was published before its run stopped: archived as {item.path}")
    tick = landing_files.next_tick(landing_dir, context.cursor, again=frozenset(stopped))
    if not tick.new:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(f"no new files in {landing_dir}{_ignored_note(landing_dir)}"), cursor=tick.cursor
        )
    for file in tick.new:
        if file.fingerprint in stopped:
            context.log.warning(f"Landing file {file.name}: run {stopped[file.fingerprint]} stopped before settling it; requesting it again")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=landing_files.run_key(context.cursor, i, file),
                run_config={"ops": {LANDING_OP: {"config": {"landing_files": [file.name], "delta": True}}}},
                tags={
                    LANDING_FILE_TAG: file.name,
                    LANDING_FINGERPRINT_TAG: file.fingerprint,
                    **({LANDING_RETRY_TAG: stopped[file.fingerprint]} if file.fingerprint in stopped else {}),
                },
            )
            for i, file in enumerate(tick.new)
        ],
        cursor=tick.cursor,
    )


automation_sensor = dg.AutomationConditionSensorDefinition(
    "cross_sell_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Declarative automation: refresh downstream assets after upstream updates, never past a failed gate.",
)


def _rejection_reason(found: Sequence[alerts.Alert], no_verdict: bool, attempts: int) -> str:
    """Why a landing file is rejected, for ``audit.landing_files``."""
    gated = [a for a in found if a.gate]
    if gated:
        return "gate failed: " + "; ".join(a.message for a in gated)
    if no_verdict:
        return f"run failed ({attempts} attempt(s), none reached a verdict on the file): {found[0].message}"
    return f"run failed: {found[0].message}"


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    # Runs from the shell (`dagster asset materialize -m cross_sell.definitions`) belong to a code
    # location named after the module, not to the UI's `cross_sell`: watch every location of the
    # instance, which is this project's own (DAGSTER_HOME), so their failures are alerted too.
    monitor_all_code_locations=True,
    description="Alert on every failed run (audit.run_alerts and the log) and settle its landing files.",
)
def run_failure_alert_sensor(
    context: dg.RunFailureSensorContext, duckdb: DuckDBResource, input_files: InputFiles
) -> None:
    """Record which step and which gate failed; a landing file whose rows were not published is
    moved to ``rejected/``, one whose rows were published (a later step failed) to ``processed/``.

    A landing run that failed without any verdict on its file (its process was killed, the
    warehouse stayed locked) does not reject it: the run is tagged for requeueing and the landing
    sensor lands the file again, at most :data:`MAX_LANDING_ATTEMPTS` times in all."""
    run = context.dagster_run
    names = alerts.landing_files_of(run, LANDING_OP)
    step_failures = context.get_step_failure_events()
    run_message = context.failure_event.message if context.failure_event is not None else None
    found = alerts.describe_failure(context.instance, run, step_failures, names, run_message)
    landing_dir = input_files.landing_path()
    settled: list[landing_files.Settled] = []
    requeue = False
    with alerts.connect_within(duckdb.database) as conn:
        written = alerts.write_alerts(conn, found)
        if names and landing_dir is not None:
            # Files whose lines were published (by this run or any other) are archived, the rest
            # rejected, unless nothing found fault with them.
            settled = landing_files.archive_published(conn, landing_dir, run.run_id)
            fingerprint = run.tags.get(LANDING_FINGERPRINT_TAG)
            attempts = context.instance.get_runs_count(
                filters=dg.RunsFilter(tags={LANDING_FINGERPRINT_TAG: fingerprint})
            ) if fingerprint else MAX_LANDING_ATTEMPTS
            no_verdict = alerts.no_verdict_on_inputs(step_failures, found)
            requeue = no_verdict and attempts < MAX_LANDING_ATTEMPTS
            if requeue:
                context.instance.add_run_tags(run.run_id, {LANDING_REQUEUE_TAG: "true"})
            else:
                reason = _rejection_reason(found, no_verdict, attempts)
                settled += landing_files.reject(conn, landing_dir, names, run.run_id, reason[:1000])
    for alert in found:
        context.log.error(alert.text() if written else f"(already alerted) {alert.text()}")
    for item in settled:
        context.log.warning(f"Landing file {item.file} {item.status}: moved to {item.path}")
    if requeue:
        context.log.warning(
            f"Landing files {', '.join(names)} left in the landing folder: run {run.run_id} failed without a "
            "verdict on them (process killed, or the warehouse locked); the landing sensor lands them again"
        )


SCHEDULES = [daily_refresh_schedule]
SENSORS = [purchase_landing_sensor, automation_sensor, run_failure_alert_sensor]
JOBS = [daily_refresh_job, landed_purchases_job]
