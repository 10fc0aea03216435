"""Alerts on failed runs: which run failed, in which step, and which gate stopped it.

The run-failure sensor (:mod:`cross_sell.automation`) calls :func:`describe_failure` with the
failed run, writes the result to ``audit.run_alerts`` (one row per failed step, idempotent per run,
so a retried sensor tick never alerts twice) and to the sensor's log. A gate is a blocking,
ERROR-severity asset check; its name is written as ``<asset>:<check>``, e.g.
``audit/purchases:contract``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg
import duckdb

from cross_sell import audit_log
from cross_sell.warehouse import AUDIT_SCHEMA, open_warehouse

ALERTS_TABLE = "run_alerts"
MAX_MESSAGE = 2000

_DDL = f"""
create schema if not exists {AUDIT_SCHEMA};
create table if not exists {AUDIT_SCHEMA}.{ALERTS_TABLE} (
    alerted_at timestamp, run_id varchar, job_name varchar, failed_step varchar, gate varchar,
    message varchar, landing_files varchar)
"""


@dataclass(frozen=True)
class Alert:
    """One failed step of a failed run (or the run itself when no step failed)."""

    run_id: str
    job_name: str
    failed_step: str | None
    gate: str | None
    message: str
    landing_files: tuple[str, ...] = ()

    def text(self) -> str:
        where = f"step {self.failed_step}" if self.failed_step else "the run"
        gate = f", gate {self.gate} failed" if self.gate else ""
        files = f", landing files {', '.join(self.landing_files)}" if self.landing_files else ""
        return f"Run {self.run_id} ({self.job_name}) failed in {where}{gate}{files}: {self.message}"


@dataclass(frozen=True)
class FailedGate:
    """A failed blocking check: ``<asset>:<check>`` and what it found (rule, column, count)."""

    name: str
    finding: str | None

    def text(self) -> str:
        return f"{self.name}: {self.finding}" if self.finding else self.name


def failed_gates_by_step(instance: dg.DagsterInstance, run_id: str) -> dict[str, list[FailedGate]]:
    """Failed ERROR-severity check evaluations of a run, by the step that produced them."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    gates: dict[str, list[FailedGate]] = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.asset_check_evaluation_data
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            finding = (evaluation.description or "").strip() or None
            gates.setdefault(event.step_key or "", []).append(FailedGate(name, finding))
    return gates


def landing_files_of(run: dg.DagsterRun, op_name: str) -> tuple[str, ...]:
    """The landing files a run was asked to ingest (from its run config)."""
    config = (run.run_config or {}).get("ops", {}).get(op_name, {}).get("config", {}) or {}
    return tuple(config.get("landing_files", []) or [])


def failure_message(event: dg.DagsterEvent) -> str:
    """What made a step fail, in the words meant for people: a ``dg.Failure``'s description, else
    the innermost error of the chain (not Dagster's wrapper, "Error occurred while executing op")."""
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description.strip()
    error = data.error
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else "step failed"


def describe_failure(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    step_failures: Sequence[dg.DagsterEvent],
    landing_files: Sequence[str] = (),
    run_message: str | None = None,
) -> list[Alert]:
    """One alert per failed step, naming the gate when a failed gate made the step fail. The
    message of a gate's failure is what the gate found (its rule, column and count), not Dagster's
    "blocking asset check failed". A run that failed outside any step (killed, marked failed after
    its process died) is alerted with the run failure's own message."""
    gates = failed_gates_by_step(instance, run.run_id)
    alerts = []
    for event in step_failures:
        step_gates = gates.get(event.step_key or "", [])
        message = "; ".join(g.text() for g in step_gates) if step_gates else failure_message(event)
        alerts.append(
            Alert(run.run_id, run.job_name, event.step_key, ", ".join(g.name for g in step_gates) or None,
                  message[:MAX_MESSAGE], tuple(landing_files))
        )
    if not alerts:  # the run failed outside any step (e.g. it could not start)
        failed = [g for found in gates.values() for g in found]
        alerts.append(Alert(run.run_id, run.job_name, None, ", ".join(g.name for g in failed) or None,
                            ("; ".join(g.text() for g in failed) or (run_message or "").strip() or "run failed")[:MAX_MESSAGE],
                            tuple(landing_files)))
    return alerts


# Failures that say nothing about the data: the run may simply be tried again.
TRANSIENT_RULES = frozenset({"warehouse_unlocked", audit_log.OWN_LOAD_RULE})


def failure_rule(event: dg.DagsterEvent) -> str | None:
    """The ``rule`` a step's ``dg.Failure`` names in its metadata, if any."""
    data = event.step_failure_data.user_failure_data
    rule = (data.metadata or {}).get("rule") if data is not None else None
    return getattr(rule, "value", rule) if rule is not None else None


def no_verdict_on_inputs(step_failures: Sequence[dg.DagsterEvent], alerts: Sequence[Alert]) -> bool:
    """Whether a run failed without anything having found fault with its input: no gate failed,
    and no step failed except for a transient reason (the warehouse was locked) or none failed at
    all (the process was killed, the run was marked failed after its process died)."""
    if any(a.gate for a in alerts):
        return False
    return all(failure_rule(event) in TRANSIENT_RULES for event in step_failures)


@contextmanager
def connect_within(database: str, seconds: float = 40.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection, waiting at most ``seconds`` for another writer to let go (a sensor
    tick must finish well inside its 60 s budget; a failed tick is simply retried)."""
    conn = open_warehouse(database, seconds)
    try:
        yield conn
    finally:
        conn.close()


def write_alerts(conn: duckdb.DuckDBPyConnection, alerts: Sequence[Alert]) -> int:
    """Append the alerts not written yet (one per run, step and gate: a retried sensor tick never
    alerts twice); returns rows written."""
    conn.execute(_DDL)
    if not alerts:
        return 0
    written = {
        (step or "", gate or "")
        for step, gate in conn.execute(
            f"select failed_step, gate from {AUDIT_SCHEMA}.{ALERTS_TABLE} where run_id = ?", [alerts[0].run_id]
        ).fetchall()
    }
    new = [a for a in alerts if (a.failed_step or "", a.gate or "") not in written]
    if not new:
        return 0
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    conn.executemany(
        f"insert into {AUDIT_SCHEMA}.{ALERTS_TABLE} values (?, ?, ?, ?, ?, ?, ?)",
        [[now, a.run_id, a.job_name, a.failed_step, a.gate, a.message, ", ".join(a.landing_files) or None] for a in new],
    )
    return len(new)
