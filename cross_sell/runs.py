"""Runs left behind by a crash, and how to recover from them without losing history.

A run whose process dies (SIGKILL, an out-of-memory kill, a machine reboot) stays ``STARTED`` in
the instance forever: nothing in Dagster notices when the process was started from the shell or by
the default run launcher. It keeps its slot in pool ``duckdb``, so every later step of every run on
the instance waits for it; and the asset checks it had planned stay unevaluated, so declarative
automation will not refresh past them.

``python -m cross_sell.runs`` lists the runs in progress (and any run holding a pool slot), with the
process that runs each and whether it is still alive on this machine. ``python -m cross_sell.runs
fail <run id>`` marks a run whose process is gone as failed and frees its pool slots, keeping its
events (the gate history the SLO report and the manifest count), and prints the command that
materializes what it left undone. Deleting the run (``dagster run delete``) also frees the slot
but erases that history.

The process check reads this machine's process table: run this on the machine that ran the run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

POOL = "duckdb"
IN_PROGRESS = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


@dataclass(frozen=True)
class RunState:
    """One run in progress, or holding a pool slot."""

    run_id: str
    job: str
    status: str
    started: datetime | None
    pid: int | None
    alive: bool | None  # None: no process recorded
    slots: tuple[str, ...]  # the steps holding a slot of pool duckdb

    @property
    def dead(self) -> bool:
        return self.alive is False


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this machine that can be a Python run worker (a
    reused pid of some other program counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            words = cmdline.read_bytes().replace(b"\0", b" ").lower()
        except OSError:
            return True
        return b"python" in words or b"dagster" in words
    return True


def run_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The process that last wrote an event of the run (the run worker, or the shell command that
    ran it in process)."""
    records = instance.get_records_for_run(run_id, ascending=False, limit=50).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.pid:
            return int(event.pid)
    return None


def _started(record: dg.RunRecord) -> datetime | None:
    return datetime.fromtimestamp(record.start_time, tz=timezone.utc) if record.start_time else None


def slot_holders(instance: dg.DagsterInstance, pool: str = POOL) -> dict[str, list[str]]:
    """Run id -> the steps holding a slot of ``pool``."""
    holders: dict[str, list[str]] = {}
    for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots:
        holders.setdefault(slot.run_id, []).append(slot.step_key)
    return holders


def run_states(instance: dg.DagsterInstance) -> list[RunState]:
    """Every run in progress and every run holding a slot of pool duckdb, oldest first."""
    holders = slot_holders(instance)
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(filters=dg.RunsFilter(statuses=list(IN_PROGRESS)))}
    for run_id in holders.keys() - records.keys():
        record = instance.get_run_record_by_id(run_id)
        if record is not None:
            records[run_id] = record
    states = []
    for run_id, record in records.items():
        pid = run_pid(instance, run_id)
        states.append(
            RunState(
                run_id=run_id,
                job=record.dagster_run.job_name,
                status=record.dagster_run.status.value,
                started=_started(record),
                pid=pid,
                alive=process_alive(pid) if pid is not None else None,
                slots=tuple(holders.get(run_id, ())),
            )
        )
    orphans = [RunState(r, "(deleted run)", "UNKNOWN", None, None, False, tuple(s)) for r, s in holders.items() if r not in records]
    return sorted(states, key=lambda s: s.started or datetime.min.replace(tzinfo=timezone.utc)) + orphans


def unfinished_assets(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The assets the run planned to materialize and did not, and those it materialized whose
    planned checks it never evaluated (their gates must run again, and only materializing the
    asset runs them), as user strings."""

    def events(event_type: dg.DagsterEventType) -> list[dg.DagsterEvent]:
        records = instance.get_records_for_run(run_id, of_type=event_type).records
        return [r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event]

    planned = {e.asset_key for e in events(dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)}
    done = {e.asset_key for e in events(dg.DagsterEventType.ASSET_MATERIALIZATION)}

    def check_keys(event_type: dg.DagsterEventType, data: str) -> set[tuple[dg.AssetKey, str]]:
        return {(getattr(e, data).asset_key, getattr(e, data).check_name) for e in events(event_type)}

    checks_planned = check_keys(dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, "asset_check_planned_data")
    checks_done = check_keys(dg.DagsterEventType.ASSET_CHECK_EVALUATION, "asset_check_evaluation_data")
    unchecked = {asset for asset, _ in checks_planned - checks_done}
    return sorted(k.to_user_string() for k in (planned - done) | unchecked)


class RunStillAliveError(RuntimeError):
    """The run's process is alive on this machine: it is running, not dead."""


@dataclass(frozen=True)
class Recovery:
    run_id: str
    marked_failed: bool
    slots_freed: int
    unfinished: list[str]

    def rerun_command(self, settings: Mapping[str, str] | None = None) -> str | None:
        """The command that materializes what the run left undone, with ``settings`` (the
        ``CROSS_SELL_*`` variables that point it at a warehouse and inputs) in front."""
        if not self.unfinished:
            return None
        prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in sorted((settings or {}).items()))
        return f"{prefix}dagster asset materialize -m cross_sell.definitions --select '{','.join(self.unfinished)}'"


def fail_dead_run(instance: dg.DagsterInstance, run_id: str, force: bool = False) -> Recovery:
    """Mark a run whose process is gone as failed and free its pool slots; its events stay.
    Raises RunStillAliveError when its process is alive here (unless ``force``), KeyError when
    the instance has no such run and it holds no slot."""
    record = instance.get_run_record_by_id(run_id)
    marked = False
    if record is None:
        if run_id not in slot_holders(instance):
            raise KeyError(f"no run {run_id} in this instance (is DAGSTER_HOME the one the product runs on?)")
    else:
        pid = run_pid(instance, run_id)
        if record.dagster_run.status in IN_PROGRESS:
            if pid is not None and process_alive(pid) and not force:
                raise RunStillAliveError(
                    f"run {run_id} is {record.dagster_run.status.value} and its process {pid} is alive on this "
                    "machine: it is running. Cancel it in the UI, or stop that process first"
                )
            instance.report_run_failed(
                record.dagster_run,
                f"marked failed by python -m cross_sell.runs: its process ({pid or 'unknown'}) is gone",
            )
            marked = True
    held = len(slot_holders(instance).get(run_id, []))
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    freed = held - len(slot_holders(instance).get(run_id, []))
    # What it left undone, only for a run stopped now: for one that ended earlier, later runs may
    # have done it since.
    return Recovery(run_id, marked, freed, unfinished_assets(instance, run_id) if marked else [])


def _table(states: Sequence[RunState]) -> str:
    if not states:
        return "No run in progress and no pool slot held."
    lines = [f"{'run id':36}  {'job':24}  {'status':9}  {'started (UTC)':19}  {'process':17}  pool duckdb slot"]
    for s in states:
        process = "none recorded" if s.pid is None else f"{s.pid} {'alive' if s.alive else 'GONE'}"
        started = s.started.strftime("%Y-%m-%d %H:%M:%S") if s.started else ""
        lines.append(f"{s.run_id:36}  {s.job[:24]:24}  {s.status:9}  {started:19}  {process:17}  {', '.join(s.slots) or '-'}")
    dead = [s for s in states if s.dead]
    if dead:
        lines.append("")
        lines += [f"Dead: python -m cross_sell.runs fail {s.run_id}" for s in dead]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cross_sell.runs",
        description="Runs in progress on the instance, and recovery of runs whose process died.",
    )
    sub = parser.add_subparsers(dest="command")
    fail = sub.add_parser("fail", help="mark a run whose process is gone as failed and free its pool slots")
    fail.add_argument("run_id")
    fail.add_argument("--force", action="store_true", help="even if a process with its pid is alive on this machine")
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        print("Set DAGSTER_HOME to the instance the product runs on (e.g. data/dagster_home).", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        if args.command != "fail":
            print(_table(run_states(instance)))
            return 0
        try:
            recovery = fail_dead_run(instance, args.run_id, force=args.force)
        except (RunStillAliveError, KeyError) as exc:
            print(str(exc).strip("'\""), file=sys.stderr)
            return 1
    print(f"Run {recovery.run_id}: {'marked failed' if recovery.marked_failed else 'already ended'}; "
          f"{recovery.slots_freed} pool slot(s) freed; its events are kept.")
    settings = {name: value for name, value in os.environ.items() if name.startswith("CROSS_SELL_")}
    command = recovery.rerun_command(settings)
    if command:
        print(f"It left {len(recovery.unfinished)} asset(s) unmaterialized. To finish its work:\n  {command}")
        print("  (with this shell's CROSS_SELL_* settings: they must be the dead run's, its warehouse and inputs)"
              if settings else "  (no CROSS_SELL_* variable is set here: it targets the default warehouse and inputs; "
              "set the ones the dead run had first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
