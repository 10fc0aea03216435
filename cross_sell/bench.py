"""Benchmark the whole data product at scale: ``python -m cross_sell.bench --purchases 1000000``.

What it does, in order:

1. generates a dataset of the requested size with :mod:`cross_sell.generate` in a child process
   (so its memory does not count against the graph);
2. materializes the whole asset graph the way users do, with ``dagster.materialize`` on a fresh
   DuckDB file, and records each step's wall time and output rows (with its rows per second)
   from the run's events, and its CPU seconds and peak memory from samples of the process (the
   CPU time says how many cores a step kept busy, and the whole run's CPU time divided by the
   cores is the least wall time this work could take on this machine, however well it
   overlapped);
3. measures the floor: one DuckDB aggregation pass over the same purchase file;
4. optionally runs mlxtend's ``apriori`` + ``association_rules`` on the same customer x category
   data, checks that both give the same support, confidence and lift for every pair (to 1e-9),
   and prints the time ratios: rules from the same input, rules from the warehouse (reading and
   preparing the input included on both sides), and mlxtend against the whole ``product_affinity``
   step (which also gates, renders the heatmap and writes);
5. prints the performance targets of the project next to what this run measured, and whether
   each is met (the 60 s / 4 GiB target applies at 10 million lines and more).

Figures are printed, never asserted: tests check correctness, this command measures speed. The
command fails (exit status 1) only when the graph fails or the two affinities disagree.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from cross_sell.affinity.assets import category_level_rules
from cross_sell.affinity.logic import association_rules
from cross_sell.resources import InputFiles

GIB = 1024**3


@dataclass(frozen=True)
class StepTiming:
    step: str
    seconds: float
    start: float = 0.0  # epoch seconds
    end: float = 0.0
    cpu: float | None = None  # process CPU seconds during the step (sampled), when known


class ProcessSampler:
    """Samples this process's resident set size and CPU time every ``interval`` seconds in a
    thread, so each step's peak memory and CPU seconds can be read off afterwards (ru_maxrss and
    the run's total only know the whole run). The CPU time is the whole process's, every thread
    included: DuckDB's and the BLAS/OpenMP workers run in it."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (epoch seconds, RSS bytes)
        self.cpu: list[tuple[float, float]] = []  # (epoch seconds, process CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self, attempts: int = 3) -> None:
        # The clock and the CPU time count as one pair only when nothing came between the two
        # reads: another thread holding the GIL in between would date the CPU time too early, and
        # a short step's cores busy would read more than the machine has. A sample that never gets
        # a close pair keeps its memory figure and leaves the CPU time to its neighbours.
        for _ in range(attempts):
            before = time.time()
            cpu = time.process_time()
            now = time.time()
            if now - before <= 0.002:
                self.cpu.append((now, cpu))
                break
        try:
            self.samples.append((now, self.current()))
        except OSError:  # not Linux: no memory figures
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "ProcessSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(attempts=100)  # the last one: whatever ended inside the block is covered

    def peak(self, start: float, end: float) -> int | None:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside) if inside else None

    def cpu_seconds(self, start: float, end: float) -> float | None:
        """Process CPU seconds between two epoch times, interpolated between the samples around
        them (None when the samples do not cover the span)."""
        if len(self.cpu) < 2 or start < self.cpu[0][0] or end > self.cpu[-1][0]:
            return None
        times, cpus = np.array(self.cpu).T
        return float(np.interp(end, times, cpus) - np.interp(start, times, cpus))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generate_in_child(out: Path, *, purchases: int, customers: int, products: int, categories: int, seed: int) -> float:
    """Generate the dataset in a separate process and return its wall time."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cross_sell.generate", "--out", str(out), "--purchases", str(purchases),
         "--customers", str(customers), "--products", str(products), "--categories", str(categories),
         "--seed", str(seed), "--format", "parquet"],
        check=True, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def step_timings(instance: dg.DagsterInstance, run_id: str) -> list[StepTiming]:
    """Wall time per step, from the run's STEP_START and STEP_SUCCESS/FAILURE event log entries."""
    starts: dict[str, float] = {}
    timings: list[StepTiming] = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in starts:
            timings.append(
                StepTiming(event.step_key, entry.timestamp - starts[event.step_key], starts[event.step_key], entry.timestamp)
            )
    return timings


def step_rows(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    """Rows each step put out: the ``dagster/row_count`` of the assets it materialized, tables,
    views or files (steps without one, such as checks, are absent)."""
    rows: dict[str, int] = {}
    for event in result.get_asset_materialization_events():
        count = event.materialization.metadata.get("dagster/row_count")
        if event.step_key is not None and count is not None:
            rows[event.step_key] = rows.get(event.step_key, 0) + int(count.value)
    return rows


def _rate_cells(rows: int | None, seconds: float) -> list[str]:
    if rows is None:
        return ["", ""]
    return [f"{rows:,}", f"{rows / seconds:,.0f}" if seconds > 0 else "n/a"]


def step_groups() -> dict[str, str]:
    """Each step of the graph (an asset's or a check's node) -> the asset group it belongs to."""
    from cross_sell.definitions import ASSETS, CHECKS

    group_of_key = {key: group for a in ASSETS for key, group in a.group_names_by_key.items()}
    groups = {a.node_def.name: next(iter(a.group_names_by_key.values())) for a in ASSETS}
    for check in CHECKS:
        groups[check.node_def.name] = group_of_key[next(iter(check.check_specs)).asset_key]
    return groups


def _cpu_cell(seconds: float | None) -> str:
    return f"{seconds:.2f}" if seconds is not None else "n/a"


def group_rows(timings: list[StepTiming], total: float, total_cpu: float | None = None) -> list[list[str]]:
    """Wall and CPU time per asset group, in the order the groups first ran, and what no step
    accounts for (Dagster's own work between steps)."""
    groups = step_groups()
    seconds: dict[str, float] = {}
    cpu: dict[str, float | None] = {}
    steps: dict[str, int] = {}
    for t in timings:
        group = groups.get(t.step, "other")
        seconds[group] = seconds.get(group, 0.0) + t.seconds
        known = cpu.get(group, 0.0)
        cpu[group] = known + t.cpu if known is not None and t.cpu is not None else None
        steps[group] = steps.get(group, 0) + 1
    rows = [[g, str(steps[g]), f"{s:.2f}", f"{s / total:.0%}", _cpu_cell(cpu[g])] for g, s in seconds.items()]
    between = total - sum(seconds.values())
    known = [c for c in cpu.values() if c is not None]
    between_cpu = total_cpu - sum(known) if total_cpu is not None and len(known) == len(cpu) else None
    return [*rows, ["(between steps)", "", f"{between:.2f}", f"{between / total:.0%}", _cpu_cell(between_cpu)]]


@dataclass(frozen=True)
class GraphRun:
    result: dg.ExecuteInProcessResult
    seconds: float  # wall time of the materialization
    start: float  # epoch seconds, for reading the samples
    end: float


def run_graph(data_dir: Path, warehouse: Path, instance: dg.DagsterInstance) -> GraphRun:
    """Materialize every asset and check on a fresh warehouse, as a user's run would."""
    from cross_sell.definitions import ASSETS, CHECKS

    start, started = time.time(), time.perf_counter()
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        resources={"duckdb": DuckDBResource(database=str(warehouse)), "input_files": InputFiles(location=str(data_dir))},
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )
    return GraphRun(result, time.perf_counter() - started, start, time.time())


def floor_seconds(data_dir: Path) -> float:
    """One DuckDB aggregation pass over the purchases: the least any full refresh must cost."""
    purchase = data_dir / "purchase.parquet"
    with duckdb.connect() as conn:
        started = time.perf_counter()
        conn.execute(
            f"select customer_id, count(distinct order_id), sum(amount), max(purchase_date) "
            f"from read_parquet('{purchase}') group by customer_id"
        ).fetchall()
        return time.perf_counter() - started


def best_of(repeats: int, work) -> tuple[float, object]:
    """The fastest of ``repeats`` timed calls of ``work`` and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def compare_with_mlxtend(warehouse: Path, min_support: float, repeats: int = 5) -> dict[str, float]:
    """Run mlxtend and our rules on the same customer x category data, check every rule agrees,
    and time both the same way (best of ``repeats``), at two boundaries:

    * same input: our rules from the (customer, category) codes vs mlxtend's ``apriori`` +
      ``association_rules`` from the one-hot frame built from those same codes;
    * from the warehouse: each side reads the same table from DuckDB and prepares its input the
      way it needs: ours counts each customer's categories as one bit mask in DuckDB (what the
      asset does), mlxtend's user reads the pairs and builds the one-hot frame.
    """
    from mlxtend.frequent_patterns import apriori
    from mlxtend.frequent_patterns import association_rules as mlx_rules

    with duckdb.connect(str(warehouse), read_only=True) as conn:
        ours_published = conn.execute(
            "select antecedent, consequent, support, confidence, lift from product_affinity where level = 'category'"
        ).df()

        def read_pairs() -> pd.DataFrame:
            return conn.execute("select customer_id, product_category from customer_category_matrix").df()

        def codes(pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
            customers = pairs["customer_id"].astype("category")
            categories = pairs["product_category"].astype("category")
            return customers.cat.codes.to_numpy(), categories.cat.codes.to_numpy(), list(categories.cat.categories)

        def onehot(tx: np.ndarray, items: np.ndarray, names: list[str]) -> pd.DataFrame:
            matrix = np.zeros((int(tx.max()) + 1, len(names)), dtype=bool)
            matrix[tx, items] = True
            return pd.DataFrame(matrix, columns=names)

        def mlxtend_rules(frame: pd.DataFrame) -> pd.DataFrame:
            itemsets = apriori(frame, min_support=min_support, use_colnames=True, max_len=2)
            return mlx_rules(itemsets, metric="support", min_threshold=min_support)

        tx, items, names = codes(read_pairs())
        frame = onehot(tx, items, names)
        ours_seconds, _ = best_of(repeats, lambda: association_rules(tx, items, names, min_support=min_support))
        mlxtend_seconds, rules = best_of(repeats, lambda: mlxtend_rules(frame))
        source = "select customer_id, product_category from customer_category_matrix"

        ours_e2e, _ = best_of(repeats, lambda: category_level_rules(conn, source, "customer_id", min_support=min_support))
        mlxtend_e2e, _ = best_of(repeats, lambda: mlxtend_rules(onehot(*codes(read_pairs()))))

    rules = rules[(rules["antecedents"].map(len) == 1) & (rules["consequents"].map(len) == 1)]
    theirs = pd.DataFrame(
        {
            "antecedent": rules["antecedents"].map(lambda s: next(iter(s))),
            "consequent": rules["consequents"].map(lambda s: next(iter(s))),
            "support": rules["support"], "confidence": rules["confidence"], "lift": rules["lift"],
        }
    )
    # Our transactions are customers with a purchase, exactly the rows of the one-hot frame.
    merged = ours_published.merge(theirs, on=["antecedent", "consequent"], how="outer", suffixes=("", "_mlxtend"), indicator=True)
    only_one_side = int((merged["_merge"] != "both").sum())
    both = merged[merged["_merge"] == "both"]
    max_diff = max(
        float(np.abs(both[m] - both[f"{m}_mlxtend"]).max()) if len(both) else 0.0 for m in ("support", "confidence", "lift")
    )
    return {"mlxtend_seconds": mlxtend_seconds, "ours_seconds": ours_seconds, "mlxtend_e2e": mlxtend_e2e,
            "ours_e2e": ours_e2e, "rules": float(len(ours_published)), "unmatched_rules": float(only_one_side),
            "max_abs_diff": max_diff}


# The performance targets (the performance issue), checked against each run.
TARGET_LINES = 10_000_000
TARGET_SECONDS = 60.0
TARGET_PEAK_GIB = 4.0
TARGET_SPEEDUP = 20.0
TARGET_FLOOR_RATIO = 10.0
RULE_TOLERANCE = 1e-9
TOLERANCE_TEXT = f"{RULE_TOLERANCE:.0e}".replace("e-0", "e-")  # 1e-9, as the README writes it


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: "n/a"}[met]


def target_rows(purchases: int, seconds: float, peak_bytes: int, floor: float, cmp: dict[str, float] | None) -> list[list[str]]:
    """Each target with what this run measured and whether it is met ("n/a": the target does not
    apply at this scale, or was not measured)."""
    at_scale = purchases >= TARGET_LINES
    scale_note = f" (applies from {TARGET_LINES:,} lines)" if not at_scale else ""
    rows = [
        [f"whole graph in at most {TARGET_SECONDS:.0f} s at {TARGET_LINES:,} lines", f"{seconds:.1f} s{scale_note}",
         _verdict(seconds <= TARGET_SECONDS if at_scale else None)],
        [f"peak RSS at most {TARGET_PEAK_GIB:.0f} GiB at {TARGET_LINES:,} lines", f"{peak_bytes / GIB:.2f} GiB{scale_note}",
         _verdict(peak_bytes <= TARGET_PEAK_GIB * GIB if at_scale else None)],
        [f"whole graph within {TARGET_FLOOR_RATIO:.0f}x the floor", f"{seconds / floor:.1f}x",
         _verdict(seconds / floor <= TARGET_FLOOR_RATIO)],
    ]
    speedup_target = f"affinity at least {TARGET_SPEEDUP:.0f}x faster than mlxtend, same input"
    equality_target = f"affinity equal to mlxtend on every pair (to {TOLERANCE_TEXT})"
    if cmp is None:
        rows += [[speedup_target, "not measured", _verdict(None)], [equality_target, "not measured", _verdict(None)]]
    else:
        speedup = cmp["mlxtend_seconds"] / cmp["ours_seconds"]
        rows += [
            [speedup_target, f"{speedup:.1f}x", _verdict(speedup >= TARGET_SPEEDUP)],
            [equality_target, f"{cmp['unmatched_rules']:.0f} unmatched, largest difference {cmp['max_abs_diff']:.2e}",
             _verdict(rules_agree(cmp))],
        ]
    return rows


def rules_agree(cmp: dict[str, float]) -> bool:
    """Both sides found the same rules, with support, confidence and lift equal to the tolerance."""
    return cmp["unmatched_rules"] == 0 and cmp["max_abs_diff"] <= RULE_TOLERANCE


def _format_row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_format_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join([*lines, *(_format_row(r, widths) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, required=True, help="purchase lines to generate")
    parser.add_argument("--customers", type=int, default=None, help="default: purchases / 10, within 10k..1M")
    parser.add_argument("--products", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and warehouse here (default: temp, deleted)")
    parser.add_argument("--no-mlxtend", action="store_true", help="skip the mlxtend comparison")
    args = parser.parse_args(argv)
    customers = args.customers or min(max(args.purchases // 10, 10_000), 1_000_000)

    with tempfile.TemporaryDirectory(prefix="cross_sell_bench_") as tmp:
        work = args.workdir or Path(tmp)
        data_dir, warehouse = work / "data", work / "bench.duckdb"
        for leftover in (warehouse, Path(f"{warehouse}.wal")):
            leftover.unlink(missing_ok=True)
        # A kept workdir must not hand the run a model trained earlier on the same data (it would
        # be reused, not trained, and the model step would not be measured).
        shutil.rmtree(work / "models", ignore_errors=True)
        print(f"cross_sell benchmark: {args.purchases:,} purchase lines, {customers:,} customers, "
              f"{args.products:,} products, {args.categories} categories")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"dagster {dg.__version__}, duckdb {duckdb.__version__}")
        gen = generate_in_child(data_dir, purchases=args.purchases, customers=customers, products=args.products,
                                categories=args.categories, seed=args.seed)
        print(f"data generated in {gen:.1f} s (not counted)\n")

        rss_before = peak_rss_bytes()
        instance = dg.DagsterInstance.ephemeral()
        with ProcessSampler() as sampler:
            run = run_graph(data_dir, warehouse, instance)
        result, total = run.result, run.seconds
        peak = peak_rss_bytes()
        if not result.success:
            print("the run FAILED:", [e.step_key for e in result.get_step_failure_events()])
            return 1
        timings = [replace(t, cpu=sampler.cpu_seconds(t.start, t.end)) for t in step_timings(instance, result.run_id)]
        total_cpu = sampler.cpu_seconds(run.start, run.end)
        floor = floor_seconds(data_dir)
        written = step_rows(result)
        rows = []
        for t in timings:
            step_peak = sampler.peak(t.start, t.end)
            rows.append([t.step, f"{t.seconds:.2f}", f"{t.seconds / total:.0%}", _cpu_cell(t.cpu),
                         f"{t.cpu / t.seconds:.2f}" if t.cpu is not None and t.seconds > 0 else "n/a",
                         f"{step_peak / GIB:.2f}" if step_peak is not None else "n/a",
                         *_rate_cells(written.get(t.step), t.seconds)])
        print(table(rows, ["step", "wall s", "share", "CPU s", "cores busy", "peak RSS GiB (sampled)", "output rows", "output rows/s"]))
        print()
        print(table(group_rows(timings, total, total_cpu), ["asset group", "steps", "wall s", "share", "CPU s"]))
        print()
        cores = os.cpu_count() or 1
        summary = [
            ["purchase lines", f"{args.purchases:,}"],
            ["whole graph wall time", f"{total:.1f} s"],
            ["throughput", f"{args.purchases / total:,.0f} purchase lines/s"],
            ["peak RSS (process)", f"{peak / GIB:.2f} GiB (before the run: {rss_before / GIB:.2f} GiB)"],
            ["floor: one DuckDB aggregation pass", f"{floor:.2f} s"],
            ["graph / floor", f"{total / floor:.1f}x"],
        ]
        if total_cpu is not None:
            summary += [
                ["CPU time, whole graph (this process, every thread)",
                 f"{total_cpu:.1f} s ({total_cpu / total:.2f} of {cores} cores busy on average)"],
                ["wall time if every core were busy throughout (CPU / cores)", f"{total_cpu / cores:.1f} s"],
            ]
        cmp: dict[str, float] | None = None
        if not args.no_mlxtend:
            affinity_step = next((t.seconds for t in timings if t.step == "product_affinity"), float("nan"))
            try:
                cmp = compare_with_mlxtend(warehouse, min_support=0.01)
            except ImportError:
                summary.append(["mlxtend", "not installed: pip install -e '.[bench]'"])
            else:
                summary += [
                    ["affinity rules, same input (best of 5)", f"{cmp['ours_seconds']:.3f} s"],
                    ["mlxtend apriori + association_rules, same input", f"{cmp['mlxtend_seconds']:.3f} s"],
                    ["speed-up vs mlxtend, same input", f"{cmp['mlxtend_seconds'] / cmp['ours_seconds']:.1f}x"],
                    ["from the warehouse: ours / mlxtend (read, prepare, rules)",
                     f"{cmp['ours_e2e']:.3f} s / {cmp['mlxtend_e2e']:.3f} s ({cmp['mlxtend_e2e'] / cmp['ours_e2e']:.1f}x)"],
                    ["product_affinity asset step (read, rules, gate, heatmap, write)", f"{affinity_step:.2f} s"],
                    ["mlxtend (same input) / asset step", f"{cmp['mlxtend_seconds'] / affinity_step:.2f}x"],
                    ["rules compared", f"{cmp['rules']:.0f} (unmatched: {cmp['unmatched_rules']:.0f})"],
                    ["max |difference| support/confidence/lift", f"{cmp['max_abs_diff']:.2e}"],
                ]
        print(table(summary, ["figure", "value"]))
        print()
        print(table(target_rows(args.purchases, total, peak, floor, cmp), ["target", "this run", "verdict"]))
    if cmp is not None and not rules_agree(cmp):
        print("the affinity DISAGREES with mlxtend: see the rules compared and the largest difference above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
