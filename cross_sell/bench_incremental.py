"""Benchmark incremental ingest: ``python -m cross_sell.bench_incremental --purchases 1000000``.

What it does, in order:

1. generates a dataset (two years of purchases, :mod:`cross_sell.generate`) in a child process
   and splits off its newest day as a landing file, the way an upstream system drops one;
2. refreshes everything on the history (not timed: the warehouse as it stood yesterday);
3. times the incremental run the landing sensor launches for the new day (job
   ``ingest_landed_purchases``: land that file only, gate it, upsert it, archive it), then the
   refresh of everything downstream that declarative automation requests next;
4. times a full refresh over the same lines on a fresh warehouse (every asset, re-reading the
   history and the accepted day);
5. checks that every published table holds the same rows in both warehouses (keys exact, text
   and integers equal, floating-point values to 1e-9 relative: sums over another row order may
   differ in their last bits).

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from cross_sell.bench import GIB, generate_in_child, peak_rss_bytes, step_timings
from cross_sell.resources import InputFiles

NEW_DAY_FILE = "new_day.parquet"
COMPARED_TABLES = {  # table -> key columns
    "customers": ("customer_id",),
    "products": ("product_id",),
    "purchases": ("purchase_id",),
    "customer_metrics": ("customer_id",),
    "customer_category_matrix": ("customer_id", "product_category"),
    "product_affinity": ("level", "antecedent", "consequent"),
    "cross_sell_scores": ("customer_id", "product_category"),
    "cross_sell_recommendations": ("customer_id", "rank"),
}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def split_newest_day(generated: Path, history: Path, landing: Path) -> tuple[int, int]:
    """Copy the generated inputs to ``history`` without the newest day of purchases, and write
    that day to ``landing``. Returns (history lines, new-day lines)."""
    history.mkdir(parents=True, exist_ok=True)
    landing.mkdir(parents=True, exist_ok=True)
    for name in ("customer.parquet", "product.parquet"):
        shutil.copy(generated / name, history / name)
    source = f"read_parquet('{generated / 'purchase.parquet'}')"
    with duckdb.connect() as conn:
        newest = f"(select max(purchase_date::date) from {source})"
        conn.execute(f"copy (select * from {source} where purchase_date::date < {newest}) to '{history / 'purchase.parquet'}'")
        conn.execute(f"copy (select * from {source} where purchase_date::date = {newest}) to '{landing / NEW_DAY_FILE}'")
        old = conn.execute(f"select count(*) from read_parquet('{history / 'purchase.parquet'}')").fetchall()[0][0]
        new = conn.execute(f"select count(*) from read_parquet('{landing / NEW_DAY_FILE}')").fetchall()[0][0]
    return int(old), int(new)


def _materialize(
    selection, history: Path, landing: Path, warehouse: Path, instance: dg.DagsterInstance, landing_config: dict | None = None
) -> tuple[dg.ExecuteInProcessResult, float]:
    from cross_sell.definitions import ASSETS, CHECKS

    run_config = dict(QUIET)
    if landing_config is not None:
        run_config["ops"] = {"audit__purchases": {"config": landing_config}}
    started = time.perf_counter()
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=selection,
        resources={
            "duckdb": DuckDBResource(database=str(warehouse)),
            "input_files": InputFiles(location=str(history), landing_location=str(landing)),
        },
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
    )
    elapsed = time.perf_counter() - started
    if not result.success:
        raise SystemExit(f"run failed: {[e.message for e in result.all_events if e.is_failure]}")
    return result, elapsed


def differing_tables(left: Path, right: Path, rtol: float = 1e-9) -> dict[str, int]:
    """Published tables whose rows differ between two warehouses, with how many keys differ.
    Keys are matched exactly, text and integers must be equal, and floating-point values equal
    to ``rtol``: sums taken in another row order may differ in their last bits."""
    found: dict[str, int] = {}
    with duckdb.connect(str(left), read_only=True) as conn:
        conn.execute(f"attach '{right}' as other (read_only)")
        for table, keys in COMPARED_TABLES.items():
            columns = conn.execute(f"describe {table}").fetchall()
            tests = ["a.k__ is null or b.k__ is null"]
            for name, sql_type, *_ in columns:
                if name in keys:
                    continue
                a, b = f'a."{name}"', f'b."{name}"'
                if sql_type in ("DOUBLE", "FLOAT"):
                    tests.append(f"({a} is null) <> ({b} is null) or abs({a} - {b}) > {rtol} * greatest(1, abs({b}))")
                else:
                    tests.append(f"{a} is distinct from {b}")
            key = ", ".join(keys)
            n = conn.execute(
                f"select count(*) from (select *, true as k__ from {table}) a "
                f"full outer join (select *, true as k__ from other.{table}) b using ({key}) "
                f"where {' or '.join(f'({t})' for t in tests)}"
            ).fetchall()[0][0]
            if n:
                found[table] = int(n)
    return found


def ingest_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    """Wall time of the ingest steps of a run (landing, gates, publish)."""
    ingest = ("audit__", "publish_inputs")
    return sum(t.seconds for t in step_timings(instance, run_id) if t.step.startswith(ingest))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=None, help="default: purchases / 10, at least 10,000")
    parser.add_argument("--products", type=int, default=5_000)
    parser.add_argument("--categories", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data and warehouses here (default: a temp dir)")
    args = parser.parse_args(argv)
    customers = args.customers or max(10_000, args.purchases // 10)

    with tempfile.TemporaryDirectory(prefix="cross_sell_bench_incremental_") as tmp:
        work = args.workdir or Path(tmp)
        generated, history, landing = work / "generated", work / "history", work / "landing"
        full_landing = work / "full_landing"
        generate_in_child(generated, purchases=args.purchases, customers=customers, products=args.products,
                          categories=args.categories, seed=args.seed)
        old, new = split_newest_day(generated, history, landing)
        full_landing.mkdir(parents=True, exist_ok=True)
        shutil.copy(landing / NEW_DAY_FILE, full_landing / NEW_DAY_FILE)
        # each warehouse in its own folder: model artifacts and exports live beside the warehouse
        incremental_db, full_db = work / "incremental" / "cross_sell.duckdb", work / "full" / "cross_sell.duckdb"
        everything = dg.AssetSelection.all()  # not the string "*", whose parsing warns of a beta parameter
        downstream = everything - dg.AssetSelection.groups("ingest")
        incremental_job = [dg.AssetKey(["audit", "purchases"]), dg.AssetKey("purchases"), dg.AssetKey(["audit", "landing_files"])]

        with dg.instance_for_test() as instance:
            _materialize(everything, history, landing, incremental_db, instance)  # yesterday's state
            ingest, ingest_wall = _materialize(
                incremental_job, history, landing, incremental_db, instance,
                {"landing_files": [NEW_DAY_FILE], "delta": True},
            )
            after, downstream_wall = _materialize(downstream, history, landing, incremental_db, instance)
            full, full_wall = _materialize(
                everything, history, full_landing, full_db, instance, {"landing_files": [NEW_DAY_FILE]}
            )
            delta_ingest_steps = ingest_seconds(instance, ingest.run_id)
            slowest = {
                label: sorted(step_timings(instance, run.run_id), key=lambda t: -t.seconds)[:5]
                for label, run in (("downstream refresh", after), ("full refresh", full))
            }
            full_ingest_steps = ingest_seconds(instance, full.run_id)

        differing = differing_tables(incremental_db, full_db)

    rows = [
        ("history / new day", f"{old:,} / {new:,} purchase lines ({customers:,} customers)"),
        ("incremental ingest run (land, gate, upsert, archive)", f"{ingest_wall:.2f} s wall, {delta_ingest_steps:.2f} s in steps"),
        ("full refresh, ingest steps only", f"{full_ingest_steps:.2f} s"),
        ("incremental ingest / full ingest", f"{delta_ingest_steps / full_ingest_steps:.1%}"),
        ("full refresh, whole graph", f"{full_wall:.2f} s"),
        ("incremental ingest / full refresh", f"{ingest_wall / full_wall:.1%}"),
        ("downstream refresh after the increment", f"{downstream_wall:.2f} s"),
        ("increment + downstream / full refresh", f"{(ingest_wall + downstream_wall) / full_wall:.1%}"),
        ("outputs identical to the full refresh", "yes, all " + str(len(COMPARED_TABLES)) + " tables" if not differing else f"NO: {differing}"),
        ("peak RSS", f"{peak_rss_bytes() / GIB:.2f} GiB"),
        ("machine", f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"),
    ]
    for label, steps in slowest.items():
        rows.append((f"slowest steps, {label}", ", ".join(f"{t.step} {t.seconds:.1f} s" for t in steps)))
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


if __name__ == "__main__":
    main()
