"""Concurrency and crashes, for real: two whole-graph CLI runs at once on one warehouse, and a
run killed with SIGKILL in the middle of publishing."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from cross_sell.definitions import ASSETS, CHECKS
from cross_sell.generate import generate
from cross_sell.warehouse import WarehouseLockedError, open_warehouse
from cross_sell_tests.conftest import PROJECT_ROOT, cli_env, dagster_cli, make_resources, read_table, write_tiny_dataset
from cross_sell_tests.test_quality_gates import INGEST, PUBLISHED, published_tables

pytestmark = pytest.mark.slow

LOCK_ERRORS = ("Could not set lock", "Conflicting lock", "IOException")
MATERIALIZE_ALL = [*dagster_cli(), "asset", "materialize", "-m", "cross_sell.definitions", "--select", "*"]


def _materialize_in_process(data: Path, warehouse: Path) -> None:
    result = dg.materialize([*ASSETS, *CHECKS], resources=make_resources(data, warehouse), raise_on_error=False)
    assert result.success


def test_two_whole_graph_runs_started_together_both_succeed(
    generated_data: Path, tmp_path: Path, dagster_home: Path
) -> None:
    warehouse = tmp_path / "warehouse" / "cross_sell.duckdb"
    env = cli_env(generated_data, warehouse, dagster_home)
    logs = [tmp_path / "shell_a.log", tmp_path / "shell_b.log"]
    command = shlex.join(MATERIALIZE_ALL)
    # The dagster_home fixture has created Dagster's own storage, as any first command does: two
    # first-ever commands racing to create its SQLite tables is a Dagster limitation (README,
    # "Concurrency and crashes"), not the warehouse lock this test is about.
    shells = [
        subprocess.Popen(["bash", "-c", command], cwd=PROJECT_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        for log in logs
    ]
    codes = [shell.wait(timeout=900) for shell in shells]
    outputs = [log.read_text() for log in logs]

    assert codes == [0, 0], "\n\n".join(out[-3000:] for out in outputs)
    for out in outputs:
        assert "RUN_SUCCESS" in out
        assert not [e for e in LOCK_ERRORS if e in out]
    # They really ran at the same time, and the instance's pool made them take turns on the file.
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    records = instance.get_run_records()
    assert len(records) == 2 and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    assert max(r.start_time for r in records) < min(r.end_time for r in records)
    assert any("blocked by limit for pool duckdb" in out for out in outputs)

    # Consistent: the warehouse holds exactly what one clean run on the same input produces.
    reference = tmp_path / "reference" / "cross_sell.duckdb"
    _materialize_in_process(generated_data, reference)
    expected, got = published_tables(reference), published_tables(warehouse)
    for table in PUBLISHED:
        pd.testing.assert_frame_equal(got[table], expected[table], obj=table, check_exact=False, rtol=1e-9)


def _latest_run_id(instance: dg.DagsterInstance) -> str | None:
    runs = instance.get_runs(limit=1)
    return runs[0].run_id if runs else None


def _steps(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> set[str]:
    return {entry.dagster_event.step_key for entry in instance.all_logs(run_id, of_type=event_type)}


def test_sigkill_while_publishing_leaves_published_tables_as_before(tmp_path: Path, dagster_home: Path) -> None:
    warehouse = tmp_path / "warehouse" / "cross_sell.duckdb"
    _materialize_in_process(write_tiny_dataset(tmp_path / "tiny"), warehouse)
    before = published_tables(warehouse)

    # A load big enough that publishing it takes seconds: CSV, so the three tables are parsed into
    # typed ones in one transaction (a Parquet load is published as is, by renames, in milliseconds).
    big = tmp_path / "big"
    generate(big, customers=50_000, purchases=1_000_000, products=240, categories=12, seed=3, fmt="csv")
    proc = subprocess.Popen(
        MATERIALIZE_ALL,
        cwd=PROJECT_ROOT,
        env=cli_env(big, warehouse, dagster_home),
        stdout=(tmp_path / "run.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, killed as a whole
    )
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    run_id, started, grew = None, None, False
    deadline = time.monotonic() + 600
    try:
        # Wait (polling the run's event log) until the publish step has started ...
        while started is None and time.monotonic() < deadline and proc.poll() is None:
            run_id = run_id or _latest_run_id(instance)
            if run_id and "publish_inputs" in _steps(instance, run_id, dg.DagsterEventType.STEP_START):
                started = time.monotonic()
            else:
                time.sleep(0.05)
        # ... then kill as soon as its uncommitted tables are being written to the file (or 1 s in).
        if started is not None:
            size_at_start = warehouse.stat().st_size
            while time.monotonic() - started < 1.0 and not grew:
                grew = warehouse.stat().st_size > size_at_start
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    log = (tmp_path / "run.log").read_text()
    assert started is not None, f"publish_inputs never started:\n{log[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    # Killed in the middle of the step: it started and never finished.
    assert "publish_inputs" not in _steps(instance, run_id, dg.DagsterEventType.STEP_SUCCESS)
    print(f"killed publish_inputs {time.monotonic() - started:.2f}s in; file grew before the kill: {grew}")

    # The dead run still holds its pool slot; `python -m cross_sell.runs` finds it, and `fail` frees
    # the slot and marks the run failed, keeping its events, and says what to materialize again.
    env = cli_env(big, warehouse, dagster_home)
    listing = subprocess.run([sys.executable, "-m", "cross_sell.runs"], cwd=PROJECT_ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    [row] = [line for line in listing.stdout.splitlines() if line.startswith(run_id)]
    assert "STARTED" in row and "GONE" in row and "publish_inputs" in row
    assert f"python -m cross_sell.runs fail {run_id}" in listing.stdout
    events_before = len(instance.all_logs(run_id))
    recovered = subprocess.run([sys.executable, "-m", "cross_sell.runs", "fail", run_id], cwd=PROJECT_ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
    assert recovered.returncode == 0, recovered.stderr
    assert "marked failed; 1 pool slot(s) freed" in recovered.stdout
    # Carrying the shell's settings, so it finishes the work in the dead run's warehouse.
    assert f"CROSS_SELL_DUCKDB_PATH={warehouse} " in recovered.stdout
    assert "dagster asset materialize -m cross_sell.definitions --select '" in recovered.stdout
    assert "customers" in recovered.stdout and "cross_sell_scores" in recovered.stdout
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info("duckdb").claimed_slots == []
    assert len(instance.all_logs(run_id)) > events_before  # nothing erased: the failure was added
    again = subprocess.run([sys.executable, "-m", "cross_sell.runs"], cwd=PROJECT_ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert "No run in progress and no pool slot held." in again.stdout

    # Every published table is readable and row-for-row what it was before the killed run.
    after = published_tables(warehouse)
    for table in PUBLISHED:
        pd.testing.assert_frame_equal(after[table], before[table], obj=table)
    assert len(read_table(warehouse, "purchases")) == 6

    # And the warehouse takes the next load as usual.
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=INGEST,
        resources=make_resources(write_tiny_dataset(tmp_path / "tiny_again"), warehouse),
        raise_on_error=False,
    )
    assert result.success
    for table in ("customers", "products", "purchases"):
        pd.testing.assert_frame_equal(read_table(warehouse, table, "all"), before[table], obj=table)


HOLD_OPEN = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
time.sleep(120)
"""


def test_a_connection_held_open_elsewhere_fails_the_run_naming_its_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An analyst's read-only session left open on the warehouse blocks every write: the run waits
    ``$CROSS_SELL_LOCK_WAIT_SECONDS``, then fails saying which process holds the file and what to
    do, and loses nothing; once the session is closed the same run goes through."""
    warehouse = tmp_path / "warehouse" / "cross_sell.duckdb"
    data = write_tiny_dataset(tmp_path / "tiny")
    _materialize_in_process(data, warehouse)
    before = published_tables(warehouse)

    monkeypatch.setenv("CROSS_SELL_LOCK_WAIT_SECONDS", "1")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(warehouse)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        result = dg.materialize([*ASSETS, *CHECKS], selection=INGEST, resources=make_resources(data, warehouse),
                                raise_on_error=False)
        took = time.monotonic() - started
        # The whole configured wait is used, not cut short by the back-off's last step.
        with pytest.raises(WarehouseLockedError) as locked:
            open_warehouse(str(warehouse), 2.5)
        assert 2.5 <= locked.value.waited < 4
    finally:
        holder.kill()
        holder.wait(timeout=30)

    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures
    for failure in failures:
        data_ = failure.step_failure_data.user_failure_data
        assert "is locked by another process" in data_.description and f"PID {holder.pid}" in data_.description
        assert "Close that connection" in data_.description
        assert data_.metadata["rule"].value == "warehouse_unlocked"
    assert took < 60, f"the run took {took:.0f} s to give up"  # the configured wait, not dagster-duckdb's 100 s per step
    after = published_tables(warehouse)
    for table in PUBLISHED:
        pd.testing.assert_frame_equal(after[table], before[table], obj=table)

    assert dg.materialize([*ASSETS, *CHECKS], selection=INGEST, resources=make_resources(data, warehouse),
                          raise_on_error=False).success
