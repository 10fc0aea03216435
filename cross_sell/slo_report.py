"""The SLO report: the measured values (SLIs) behind every SLO of :mod:`cross_sell.slo`.

* **freshness** per product asset: the state the freshness daemon last recorded (PASS, WARN, FAIL;
  UNKNOWN when it has not evaluated the asset yet), since when it holds (the daemon checks every
  30 s but records only changes), and the age of the last update;
* **gate pass rate** over the last 7 days, from the instance's asset check history: passed
  evaluations of every blocking check divided by all its evaluations;
* **last run duration**: the latest finished run, and the run that produced the current scores;
* **rows per input**: published rows, rows of the latest load, and landing files accepted/rejected.

Print it with ``DAGSTER_HOME=... python -m cross_sell.slo_report`` (the instance that ``dagster
dev`` uses); the ``slo_report`` asset publishes the same figures in the UI and in ``main.slo_report``.
"""


import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb import DuckDBResource

from cross_sell import landing_files, settings, slo
from cross_sell.warehouse import (
    AUDIT_SCHEMA,
    ColumnDef,
    column_schema,
    connect,
    markdown,
    replace_with_frame,
    row_count,
    table_exists,
    uri,
)

INPUTS = ("customers", "products", "purchases")
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
HISTORY_PAGE = 500


def gate_keys(definitions: Iterable[dg.AssetsDefinition | dg.AssetChecksDefinition]) -> list[dg.AssetCheckKey]:
    """Every blocking check (gate) declared by the given assets and checks."""
    keys = {spec.key for item in definitions for spec in getattr(item, "check_specs", []) if spec.blocking}
    return sorted(keys, key=lambda k: (k.asset_key.to_user_string(), k.name))


def project_gate_keys() -> list[dg.AssetCheckKey]:
    from cross_sell.definitions import ASSETS, CHECKS  # imported late: definitions import this module

    return gate_keys([*ASSETS, *CHECKS])


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None, microsecond=0)


def freshness_slis(instance: dg.DagsterInstance, now: float) -> pd.DataFrame:
    """The daemon's freshness state of every asset with an SLO (and since when it holds), and the
    age of its last update."""
    keys = [dg.AssetKey.from_user_string(a) for s in slo.FRESHNESS_SLOS for a in s.assets]
    records = instance.get_freshness_state_records(keys)
    rows = []
    for key in keys:
        record = records.get(key)
        event = instance.get_latest_materialization_event(key)
        rows.append(
            {
                "asset": key.to_user_string(),
                "slo": slo.slo_for_asset(key.to_user_string()).name,
                "state": record.freshness_state.value if record else "UNKNOWN",
                "state_since": record.updated_at.replace(tzinfo=None, microsecond=0) if record else None,
                "last_updated": _utc(event.timestamp) if event else None,
                "age_hours": round((now - event.timestamp) / 3600, 2) if event else None,
            }
        )
    return pd.DataFrame(rows, columns=["asset", "slo", "state", "state_since", "last_updated", "age_hours"])


def _check_history(instance: dg.DagsterInstance, key: dg.AssetCheckKey, since: float) -> tuple[int, int]:
    """(passed, evaluated) for one check since ``since``, paging newest first."""
    passed = evaluated = 0
    cursor = None
    while True:
        page = instance.event_log_storage.get_asset_check_execution_history(key, limit=HISTORY_PAGE, cursor=cursor)
        for record in page:
            at = record.event.timestamp if record.event else record.create_timestamp
            if at < since:
                return passed, evaluated
            status = record.status.value
            if status in ("SUCCEEDED", "FAILED"):
                evaluated += 1
                passed += status == "SUCCEEDED"
        if len(page) < HISTORY_PAGE:
            return passed, evaluated
        cursor = page[-1].id


def gate_slis(instance: dg.DagsterInstance, gates: Sequence[dg.AssetCheckKey], now: float) -> pd.DataFrame:
    """Per gate: evaluations, passes and pass rate over the quality SLO's window."""
    since = now - slo.QUALITY.window.total_seconds()
    rows = []
    for key in gates:
        passed, evaluated = _check_history(instance, key, since)
        rows.append(
            {
                "gate": f"{key.asset_key.to_user_string()}:{key.name}",
                "evaluations": evaluated,
                "passed": passed,
                "failed": evaluated - passed,
                "pass_rate": round(passed / evaluated, 4) if evaluated else None,
            }
        )
    return pd.DataFrame(rows, columns=["gate", "evaluations", "passed", "failed", "pass_rate"])


def _run_row(which: str, record) -> dict:
    run = record.dagster_run
    start, end = record.start_time, record.end_time
    return {
        "run": which,
        "run_id": run.run_id,
        "job": run.job_name,
        "status": run.status.value,
        "started": _utc(start),
        "duration_s": round(end - start, 1) if start and end else None,
    }


def _duration_text(run) -> str:
    """A run's duration, or, for one still going, that it has not finished and since when."""
    if pd.notna(run.duration_s):
        return f"{run.duration_s} s ({run.status}, {run.job})"
    return f"not finished: {run.status} since {run.started} ({run.job})"


def run_slis(instance: dg.DagsterInstance, own_run_id: str | None = None) -> pd.DataFrame:
    """The latest finished run, and the run that produced the current cross_sell_scores (which,
    when the report is written by the run that also refreshed the scores, is that run, still
    going: it says so)."""
    rows = []
    latest = instance.get_run_records(filters=dg.RunsFilter(statuses=FINISHED), limit=1)
    if latest:
        rows.append(_run_row("latest finished run", latest[0]))
    event = instance.get_latest_materialization_event(dg.AssetKey("cross_sell_scores"))
    record = instance.get_run_record_by_id(event.run_id) if event and event.run_id else None
    if record is not None:
        own = record.dagster_run.run_id == own_run_id
        rows.append(_run_row("run behind the current cross_sell_scores" + (" (this report's own run)" if own else ""), record))
    return pd.DataFrame(rows, columns=["run", "run_id", "job", "status", "started", "duration_s"])


def input_slis(conn: duckdb.DuckDBPyConnection | None) -> pd.DataFrame:
    """Rows per input: published, in the latest load, and the landing files behind purchases."""
    columns = ["input", "published_rows", "latest_load_rows", "latest_load_at", "detail"]
    if conn is None:
        return pd.DataFrame(columns=columns)
    loads: dict[str, tuple] = {}
    if table_exists(conn, "load_log", AUDIT_SCHEMA):
        loads = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                f"select dataset, arg_max(row_count, loaded_at), max(loaded_at) from {AUDIT_SCHEMA}.load_log group by 1"
            ).fetchall()
        }
    rows = []
    for table in INPUTS:
        detail = ""
        if table == "purchases" and table_exists(conn, "purchases"):
            newest = conn.execute("select max(purchase_date) from purchases").fetchall()[0][0]
            detail = f"newest purchase {newest}"
            if table_exists(conn, landing_files.LOG_TABLE, AUDIT_SCHEMA):
                status = landing_files.status_counts(conn)
                detail += (
                    f"; landing files accepted {status.get(landing_files.ACCEPTED, 0)}, "
                    f"rejected {status.get(landing_files.REJECTED_STATUS, 0)}"
                )
        load_rows, load_at = loads.get(table, (None, None))
        rows.append(
            {
                "input": table,
                "published_rows": row_count(conn, table),
                "latest_load_rows": load_rows,
                "latest_load_at": load_at,
                "detail": detail,
            }
        )
    return pd.DataFrame(rows, columns=columns)


# The columns of main.slo_report, one row per SLI (see SloReport.sli_rows).
REPORT_COLUMNS = (
    ColumnDef("sli", "varchar", "The indicator measured: freshness, gate pass rate, 7 days, run duration or rows per input."),
    ColumnDef("subject", "varchar", "What it was measured on: an asset, a gate (or all gates), a run or an input."),
    ColumnDef("value", "varchar", "The measured value, as text (a freshness state, a rate, seconds, a row count)."),
    ColumnDef("objective", "varchar", "The SLO's objective the value is held against (empty where none applies)."),
    ColumnDef("measured_at", "timestamp_ns", "When the report was built (UTC)."),
)


@dataclass(frozen=True)
class SloReport:
    """The SLIs at one moment."""

    generated_at: datetime
    freshness: pd.DataFrame
    gates: pd.DataFrame
    runs: pd.DataFrame
    inputs: pd.DataFrame

    @property
    def gate_evaluations(self) -> int:
        return int(self.gates["evaluations"].sum()) if len(self.gates) else 0

    @property
    def gate_pass_rate(self) -> float | None:
        total = self.gate_evaluations
        return float(self.gates["passed"].sum()) / total if total else None

    @property
    def quality_status(self) -> str:
        rate = self.gate_pass_rate
        if rate is None:
            return "NO DATA"
        return "MET" if rate >= slo.QUALITY.target else "MISSED"

    def sli_rows(self) -> pd.DataFrame:
        """The report as one table: one row per SLI (what ``main.slo_report`` holds)."""
        rows = [
            {"sli": "freshness", "subject": r.asset, "value": r.state,
             "objective": slo.slo_for_asset(r.asset).objective, "measured_at": self.generated_at}
            for r in self.freshness.itertuples()
        ]
        rate = self.gate_pass_rate
        rows.append({"sli": "gate pass rate, 7 days", "subject": "all gates",
                     "value": "no evaluations" if rate is None else f"{rate:.2%} of {self.gate_evaluations}",
                     "objective": slo.QUALITY.objective, "measured_at": self.generated_at})
        rows += [
            {"sli": "gate pass rate, 7 days", "subject": r.gate,
             "value": "no evaluations" if r.evaluations == 0 else f"{r.passed}/{r.evaluations}",
             "objective": slo.QUALITY.objective, "measured_at": self.generated_at}
            for r in self.gates.itertuples()
        ]
        rows += [
            {"sli": "run duration", "subject": r.run, "value": _duration_text(r),
             "objective": slo.PERFORMANCE.objective, "measured_at": self.generated_at}
            for r in self.runs.itertuples()
        ]
        rows += [
            {"sli": "rows per input", "subject": r.input, "value": str(r.published_rows),
             "objective": "", "measured_at": self.generated_at}
            for r in self.inputs.itertuples()
        ]
        return pd.DataFrame(rows, columns=[c.name for c in REPORT_COLUMNS]).astype(
            {"sli": str, "subject": str, "value": str, "objective": str}
        )

    def text(self) -> str:
        rate = self.gate_pass_rate
        quality = "no gate evaluations" if rate is None else f"{rate:.2%} of {self.gate_evaluations} evaluations"
        return "\n".join(
            [
                f"# cross_sell SLO report ({self.generated_at:%Y-%m-%d %H:%M:%S} UTC)",
                "",
                "## Freshness (state recorded by the freshness daemon)",
                markdown(self.freshness),
                *(
                    ["UNKNOWN: not evaluated yet; the freshness daemon runs inside `dagster dev` / `dagster-daemon`."]
                    if (self.freshness["state"] == "UNKNOWN").any() else []
                ),
                "",
                f"## Gate pass rate, last 7 days: {quality} -> {self.quality_status} "
                f"(objective: {slo.QUALITY.objective})",
                markdown(self.gates),
                "",
                "## Runs",
                markdown(self.runs),
                "",
                "## Rows per input",
                markdown(self.inputs),
            ]
        )

    def metadata(self) -> dict:
        failing = int((self.freshness["state"] == "FAIL").sum())
        durations = self.runs["duration_s"].dropna()
        return {
            "gate_pass_rate_7d": float(self.gate_pass_rate) if self.gate_pass_rate is not None else float("nan"),
            "gate_evaluations_7d": self.gate_evaluations,
            "quality_slo": self.quality_status,
            "freshness_failing": failing,
            "last_run_duration_s": float(durations.iloc[0]) if len(durations) else float("nan"),
            "freshness": dg.MetadataValue.md(markdown(self.freshness)),
            "gates": dg.MetadataValue.md(markdown(self.gates)),
            "runs": dg.MetadataValue.md(markdown(self.runs)),
            "rows_per_input": dg.MetadataValue.md(markdown(self.inputs)),
        }

    def as_json(self) -> str:
        def frame(df: pd.DataFrame) -> list[dict]:
            return json.loads(df.to_json(orient="records", date_format="iso"))

        return json.dumps(
            {
                "generated_at": self.generated_at.isoformat(),
                "gate_pass_rate_7d": self.gate_pass_rate,
                "quality_slo": self.quality_status,
                "freshness": frame(self.freshness),
                "gates": frame(self.gates),
                "runs": frame(self.runs),
                "inputs": frame(self.inputs),
            },
            indent=2,
        )


def build_report(
    instance: dg.DagsterInstance,
    conn: duckdb.DuckDBPyConnection | None,
    gates: Sequence[dg.AssetCheckKey],
    now: float | None = None,
    own_run_id: str | None = None,
) -> SloReport:
    now = time.time() if now is None else now
    return SloReport(
        generated_at=_utc(now),
        freshness=freshness_slis(instance, now),
        gates=gate_slis(instance, gates, now),
        runs=run_slis(instance, own_run_id),
        inputs=input_slis(conn),
    )


# The report follows every output of the product: the assets with an SLO, the key customer
# metrics, and the manifest, the last serving asset, so that in a whole-graph run every gate of the
# run (the serving ones included) has been evaluated before the report counts them.
REPORT_DEPS = [*(a for s in slo.FRESHNESS_SLOS for a in s.assets), "customer_metrics", "data_product_manifest"]


@dg.asset(
    deps=REPORT_DEPS,
    group_name="slo",
    owners=["team:data-platform"],
    kinds={"duckdb"},
    pool="duckdb",
    tags={"data_product": "cross_sell"},
    metadata={"dagster/column_schema": column_schema(REPORT_COLUMNS)},
)
def slo_report(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """How the data product is doing against its promises (SLOs): freshness of purchases and of
    the outputs, the share of quality-gate evaluations that passed over the last 7 days, how long
    the last runs took, and how many rows each input holds. Consumers check it before trusting
    the outputs; the team watches it to keep the SLOs."""
    with connect(duckdb) as conn:
        report = build_report(context.instance, conn, project_gate_keys(), own_run_id=context.run.run_id)
    with connect(duckdb) as conn:
        replace_with_frame(conn, "slo_report", report.sli_rows())
    return dg.MaterializeResult(
        metadata={**report.metadata(), "dagster/uri": uri(duckdb, "slo_report"), "dagster/row_count": len(report.sli_rows())}
    )


def _read_only(path: str, seconds: float = 30.0) -> duckdb.DuckDBPyConnection | None:
    """A read-only connection to the warehouse, waiting for a writer to finish; None if there is none."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return duckdb.connect(path, read_only=True)
        except duckdb.IOException as exc:
            if "No such file" in str(exc) or "does not exist" in str(exc):
                return None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the SLIs of the cross_sell data product.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        print("Set DAGSTER_HOME to the instance the product runs on (e.g. data/dagster_home).", file=sys.stderr)
        return 2
    path = settings.duckdb_path()
    conn = _read_only(str(path)) if path.exists() else None
    try:
        with dg.DagsterInstance.get() as instance:
            report = build_report(instance, conn, project_gate_keys())
    finally:
        if conn is not None:
            conn.close()
    print(report.as_json() if args.json else report.text())
    if conn is None:
        print(f"\n(no warehouse at {path}: rows per input unavailable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
