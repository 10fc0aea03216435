"""The benchmark commands run end to end at a small scale and print what they promise. Their figures
are printed, never asserted: this only checks that the commands work and their tables add up."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cross_sell import bench, bench_incremental


def _table(output: str, first_header: str) -> list[list[str]]:
    lines = output[output.index(f"| {first_header}"):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_bench_runs_the_whole_graph_and_its_tables_add_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A kept workdir with a model from an earlier run: the benchmark must train again, not reuse it.
    stale = tmp_path / "models" / "cross_sell_model-0000000000000000.joblib"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's model")
    assert bench.main(["--purchases", "20000", "--no-mlxtend", "--workdir", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert not stale.exists()

    steps = {row[0]: float(row[1]) for row in _table(output, "step")}
    assert {"publish_inputs", "cross_sell_model", "cross_sell_scoring", "marketing_database"} <= set(steps)
    groups = {row[0]: float(row[2]) for row in _table(output, "asset group")}
    assert {"ingest", "metrics", "affinity", "scoring", "serving"} <= set(groups)
    total = float(re.search(r"whole graph wall time +\| ([0-9.]+) s", output).group(1))
    assert sum(groups.values()) == pytest.approx(total, abs=0.15)  # the groups and the gap between steps
    assert sum(steps.values()) == pytest.approx(total - groups["(between steps)"], abs=0.15)
    assert re.search(r"graph / floor +\| [0-9.]+x", output)
    # Output rows and rows per second, for every step that has a row count: the published purchases
    # are the input's lines (20,000 generated), and each rate is its rows over its wall time.
    written = {row[0]: (row[6], row[7]) for row in _table(output, "step")}
    assert written["publish_inputs"][0] != "" and int(written["publish_inputs"][0].replace(",", "")) > 20_000
    assert written["cross_sell_scoring"][0] != "" and written["audit__purchases_contract"] == ("", "")
    for step, (rows, rate) in written.items():
        if rows and steps[step] > 0.005:
            # The rate is the rows over the step's wall time, which the table rounds to 0.01 s, and
            # is itself rounded to a whole row per second.
            count, per_second = int(rows.replace(",", "")), float(rate.replace(",", ""))
            assert count / (steps[step] + 0.005) - 0.5 <= per_second <= count / (steps[step] - 0.005) + 0.5, step

    # CPU seconds: every step and group has a figure, the groups add up to the whole run's, and
    # no step kept more cores busy than the machine has.
    cores = os.cpu_count() or 1
    step_rows = _table(output, "step")
    assert all(row[3] != "n/a" and row[4] != "n/a" for row in step_rows), step_rows
    assert all(float(row[4]) <= cores + 0.5 for row in step_rows)  # sampling error: a tenth of a second
    cpu = float(re.search(r"CPU time, whole graph[^|]*\| ([0-9.]+) s", output).group(1))
    group_cpu = [float(row[4]) for row in _table(output, "asset group")]
    assert sum(group_cpu) == pytest.approx(cpu, abs=0.1)  # cells rounded to 0.01 s, the total to 0.1 s
    assert 0 < cpu <= cores * total + 0.5
    bound = float(re.search(r"every core were busy throughout \(CPU / cores\) +\| ([0-9.]+) s", output).group(1))
    assert bound == pytest.approx(cpu / cores, abs=0.1)

    # The targets: the 10 M-line ones do not apply at this scale, the floor ratio is judged on the
    # printed ratio, and the mlxtend ones were not measured.
    targets = {row[0]: row[1:] for row in _table(output, "target")}
    assert len(targets) == 5
    assert [v for t, (_, v) in targets.items() if "10,000,000 lines" in t] == ["n/a", "n/a"]
    ratio = float(re.search(r"graph / floor +\| ([0-9.]+)x", output).group(1))
    assert targets["whole graph within 10x the floor"] == [f"{ratio:.1f}x", "met" if ratio <= 10 else "NOT MET"]
    assert [v for t, (m, v) in targets.items() if "mlxtend" in t] == ["n/a", "n/a"]


def test_targets_are_judged_on_the_measured_figures() -> None:
    agree = {"mlxtend_seconds": 2.0, "ours_seconds": 0.08, "unmatched_rules": 0.0, "max_abs_diff": 8.9e-16}
    verdicts = [row[2] for row in bench.target_rows(10_000_000, 58.0, 3 * bench.GIB, 6.0, agree)]
    assert verdicts == ["met", "met", "met", "met", "met"]
    slow = {**agree, "ours_seconds": 0.5, "max_abs_diff": 1e-6}
    verdicts = [row[2] for row in bench.target_rows(10_000_000, 91.0, 5 * bench.GIB, 3.0, slow)]
    assert verdicts == ["NOT MET"] * 5
    assert not bench.rules_agree({**agree, "unmatched_rules": 1.0}) and bench.rules_agree(agree)
    # Below 10 M lines the wall-time and memory targets do not apply, whatever the figures.
    verdicts = [row[2] for row in bench.target_rows(1_000_000, 500.0, 9 * bench.GIB, 100.0, None)]
    assert verdicts == ["n/a", "n/a", "met", "n/a", "n/a"]


def test_incremental_bench_times_one_new_day_and_finds_the_same_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_incremental.main(["--purchases", "20000", "--workdir", str(tmp_path)])
    output = capsys.readouterr().out
    rows = dict(re.findall(r"^(\S.*?\S)  +(\S.*)$", output, flags=re.MULTILINE))
    old, new = (int(n.replace(",", "")) for n in re.match(r"([0-9,]+) / ([0-9,]+) purchase lines", rows["history / new day"]).groups())
    assert old + new == 20000 and 0 < new < old
    assert rows["outputs identical to the full refresh"] == "yes, all 8 tables"
    for share in ("incremental ingest / full ingest", "incremental ingest / full refresh", "increment + downstream / full refresh"):
        assert re.fullmatch(r"[0-9.]+%", rows[share]), (share, rows[share])
    assert "cross_sell_model" in rows["slowest steps, full refresh"]
