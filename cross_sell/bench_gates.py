"""Benchmark the purchase contract on each pandera backend: ``python -m cross_sell.bench_gates --purchases 1000000``.

The gate that blocks a purchase load must scale with it. pandera can validate a pandas frame,
a polars frame, or an ibis table (which runs the checks inside DuckDB); this project compiles the
pandera model to DuckDB SQL itself (:mod:`cross_sell.quality_sql`). This command measures all four
on the same landed purchases, so the choice rests on figures:

1. generates purchases at the requested scale (in a child process) and lands them into
   ``audit.purchases`` of a fresh DuckDB file exactly as the landing step does;
2. plants a known set of broken lines (a repeated purchase_id, blank ids, a quantity of 0, a
   negative amount, an unknown channel, a date in the future) unless ``--clean``;
3. validates the table with each engine and prints its wall time, its peak memory above the
   start (sampled) and the failing rows it found per column, and whether the engines agree.

* ``duckdb_sql``: this project's gate (:func:`cross_sell.quality.validate_table`): the pandera model
  compiled to one SQL scan, only the offending sample read into Python.
* ``pandas``: the table read into a pandas frame, then the same pandera model (the backend every
  output gate of this project uses, on frames it already holds).
* ``polars``: the table read into a polars frame, then the contract as a ``pandera.polars`` model.
* ``ibis``: the contract as a ``pandera.ibis`` model, validated on the DuckDB table through ibis.

The polars and ibis models are the purchase contract written for those backends by hand (the
project's models are pandas models); polars and ibis are the optional ``bench`` extra. Figures are
printed, never asserted.
"""

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from cross_sell import contracts
from cross_sell.bench import GIB, ProcessSampler, generate_in_child, table
from cross_sell.ingest.assets import PURCHASES, contract_types
from cross_sell.ingest.landing import land
from cross_sell.quality import GateReport, validate_frame, validate_table

AUDIT_TABLE = "audit.purchases"

# The broken lines planted by plant_failures: column -> failing rows every engine should find.
PLANTED = {"purchase_id": 4, "order_id": 2, "customer_id": 1, "quantity": 3, "amount": 2, "channel": 5, "purchase_date": 1}


@dataclass
class EngineResult:
    engine: str
    seconds: float | None = None
    peak_gib: float | None = None
    by_column: dict[str, int] = field(default_factory=dict)
    note: str = ""


def prepare(work: Path, purchases: int, seed: int) -> Path:
    """Generate purchases and land them into a fresh DuckDB file; returns the file."""
    data = work / "data"
    generate_in_child(data, purchases=purchases, customers=min(max(purchases // 10, 10_000), 1_000_000),
                      products=5000, categories=30, seed=seed)
    database = work / "gates.duckdb"
    for leftover in (database, Path(f"{database}.wal")):
        leftover.unlink(missing_ok=True)
    types = contract_types(PURCHASES)
    with duckdb.connect(str(database)) as conn:
        land(conn, PURCHASES.table, [data / "purchase.parquet"], list(types), contract_types=types)
    return database


def plant_failures(conn: duckdb.DuckDBPyConnection) -> None:
    """Break a few known lines (see :data:`PLANTED`): rowids 0 to 15, and copies of rowids 0 and 1."""
    conn.execute(
        f"""insert into {AUDIT_TABLE} by name
            select * replace (purchase_id || '' as purchase_id) from {AUDIT_TABLE} where rowid in (0, 1)"""
    )  # two ids now appear twice: 4 rows
    conn.execute(f"update {AUDIT_TABLE} set order_id = '' where rowid in (2, 3)")  # blank, and no spaces to trim
    conn.execute(f"update {AUDIT_TABLE} set customer_id = '' where rowid = 4")
    conn.execute(f"update {AUDIT_TABLE} set quantity = 0 where rowid in (5, 6, 7)")
    conn.execute(f"update {AUDIT_TABLE} set amount = -1.5 where rowid in (8, 9)")
    conn.execute(f"update {AUDIT_TABLE} set channel = 'fax' where rowid between 10 and 14")
    conn.execute(f"update {AUDIT_TABLE} set purchase_date = timestamp '2099-01-01' where rowid = 15")


def _by_column(failure_cases: pd.DataFrame) -> dict[str, int]:
    """Failing rows per column from pandera's failure cases (one row per failing value)."""
    frame = failure_cases.copy()
    if "failure_case" in frame and (frame["column"] == "failure_case").any():
        # pandera.ibis names the column inside the failure case ({column: value}).
        keys = frame["failure_case"].map(lambda v: next(iter(v)) if isinstance(v, dict) else None)
        frame["column"] = keys.where(frame["column"] == "failure_case", frame["column"])
    frame = frame[frame["index"].notna()]
    return {str(c): int(n) for c, n in frame.groupby("column").size().items()}


def _from_report(engine: str, report: GateReport) -> EngineResult:
    """Failing rows per column from one of this project's gate reports (summed over rules)."""
    by_column: dict[str, int] = {}
    for columns in report.counts().values():
        for column, n in columns.items():
            by_column[column] = by_column.get(column, 0) + n
    return EngineResult(engine, by_column=by_column, note=report.error or "")


def run_duckdb_sql(database: Path) -> EngineResult:
    with duckdb.connect(str(database), read_only=True) as conn:
        return _from_report("duckdb_sql", validate_table(conn, AUDIT_TABLE, contracts.Purchase))


def run_pandas(database: Path) -> EngineResult:
    with duckdb.connect(str(database), read_only=True) as conn:
        frame = conn.execute(f"select * exclude (_source_file) from {AUDIT_TABLE}").df()
    return _from_report("pandas", validate_frame(contracts.Purchase, frame))


def _future() -> dt.datetime:
    """The contract's not-in-future bound (now, UTC, plus its tolerance), as the other engines state it."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + contracts.FUTURE_TOLERANCE


def run_polars(database: Path) -> EngineResult:
    import pandera.polars as pap

    non_blank, channels, future = contracts.NON_BLANK, list(contracts.CHANNELS), _future()

    class PurchasePolars(pap.DataFrameModel):
        purchase_id: str = pap.Field(unique=True, str_matches=non_blank)
        order_id: str = pap.Field(str_matches=non_blank)
        customer_id: str = pap.Field(str_matches=non_blank)
        product_id: str = pap.Field(str_matches=non_blank)
        purchase_date: dt.datetime = pap.Field(le=future)
        quantity: int = pap.Field(gt=0)
        amount: float = pap.Field(ge=0)
        channel: str = pap.Field(nullable=True, isin=channels)

    with duckdb.connect(str(database), read_only=True) as conn:
        frame = conn.sql(f"select * exclude (_source_file) from {AUDIT_TABLE}").pl()
    try:
        PurchasePolars.validate(frame, lazy=True)
    except pap.errors.SchemaErrors as err:
        return EngineResult("polars", by_column=_by_column(err.failure_cases.to_pandas()))
    return EngineResult("polars")


def run_ibis(database: Path) -> EngineResult:
    import ibis
    import ibis.expr.datatypes as idt
    import pandera.ibis as pai

    non_blank, channels, future = contracts.NON_BLANK, list(contracts.CHANNELS), _future()

    class PurchaseIbis(pai.DataFrameModel):
        purchase_id: str = pai.Field(unique=True, str_matches=non_blank)
        order_id: str = pai.Field(str_matches=non_blank)
        customer_id: str = pai.Field(str_matches=non_blank)
        product_id: str = pai.Field(str_matches=non_blank)
        purchase_date: idt.Timestamp(scale=6) = pai.Field(le=future)  # as DuckDB stores it
        quantity: int = pai.Field(gt=0)
        amount: float = pai.Field(ge=0)
        channel: str = pai.Field(nullable=True, isin=channels)

    backend = ibis.duckdb.connect(str(database), read_only=True)
    try:
        purchases = backend.table("purchases", database="audit")
        try:
            PurchaseIbis.validate(purchases, lazy=True)
        except pai.errors.SchemaErrors as err:
            return EngineResult("ibis", by_column=_by_column(err.failure_cases))
        return EngineResult("ibis")
    finally:
        backend.disconnect()


ENGINES: dict[str, Callable[[Path], EngineResult]] = {
    "duckdb_sql": run_duckdb_sql, "pandas": run_pandas, "polars": run_polars, "ibis": run_ibis,
}


# Imported before an engine is timed, so its clock and memory hold validation only.
BACKEND_MODULES = {"polars": ("polars", "pandera.polars"), "ibis": ("ibis", "ibis.expr.datatypes", "pandera.ibis")}


def run_engine_here(name: str, database: Path) -> EngineResult:
    """One engine in this process: backend imported first, then timed; peak memory is the most
    this process held above where it started (sampled)."""
    import importlib

    for module in BACKEND_MODULES.get(name, ()):
        importlib.import_module(module)
    with ProcessSampler(interval=0.05) as sampler:
        start_rss, started = ProcessSampler.current(), time.perf_counter()
        result = ENGINES[name](database)
        result.seconds = time.perf_counter() - started
    peak = max((rss for _, rss in sampler.samples), default=start_rss)
    result.peak_gib = max(peak - start_rss, 0) / GIB
    return result


def run_engines(database: Path, engines: list[str]) -> list[EngineResult]:
    """Each engine in a fresh child process, one after the other, so none inherits another's
    memory or warm caches; a backend that is not installed is reported as such."""
    results = []
    for name in engines:
        done = subprocess.run(
            [sys.executable, "-m", "cross_sell.bench_gates", "--child", name, "--database", str(database)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            missing = re.search(r"No module named '([^']+)'", done.stderr)
            note = f"not installed ({missing.group(1)}): pip install -e '.[bench]'" if missing else done.stderr.strip().splitlines()[-1]
            results.append(EngineResult(name, note=note))
            continue
        found = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(EngineResult(name, found["seconds"], found["peak_gib"], found["by_column"], found["note"]))
    return results


def disagreements(results: list[EngineResult], expected: dict[str, int] | None) -> dict[str, str]:
    """Engine -> how its findings differ from what was planted (or, on clean data, from nothing)."""
    want = expected or {}
    out = {}
    for r in results:
        if r.seconds is None:
            continue
        missing = {c: n for c, n in want.items() if r.by_column.get(c, 0) != n}
        extra = {c: n for c, n in r.by_column.items() if c not in want}
        if missing or extra:
            out[r.engine] = "; ".join(
                [f"{c}: found {r.by_column.get(c, 0)}, planted {n}" for c, n in missing.items()]
                + [f"{c}: found {n}, planted 0" for c, n in extra.items()]
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, help="purchase lines to generate (required)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    parser.add_argument("--clean", action="store_true", help="do not plant broken lines")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and warehouse here (default: temp, deleted)")
    parser.add_argument("--child", choices=list(ENGINES), help=argparse.SUPPRESS)  # one engine, in a child process
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = run_engine_here(args.child, args.database)
        print(json.dumps({"seconds": result.seconds, "peak_gib": result.peak_gib, "by_column": result.by_column, "note": result.note}))
        return 0
    if args.purchases is None:
        parser.error("--purchases is required")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engines: {', '.join(unknown)}")

    with tempfile.TemporaryDirectory(prefix="cross_sell_bench_gates_") as tmp:
        work = args.workdir or Path(tmp)
        print(f"purchase contract gate benchmark: {args.purchases:,} purchase lines")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, duckdb {duckdb.__version__}")
        database = prepare(work, args.purchases, args.seed)
        if not args.clean:
            with duckdb.connect(str(database)) as conn:
                plant_failures(conn)
        with duckdb.connect(str(database), read_only=True) as conn:
            rows = conn.execute(f"select count(*) from {AUDIT_TABLE}").fetchone()[0]
        print(f"landed {rows:,} lines; planted broken lines: {'none' if args.clean else PLANTED}\n")
        results = run_engines(database, engines)
        rows_out = [
            [r.engine, f"{r.seconds:.2f}" if r.seconds is not None else "-",
             f"{rows / r.seconds:,.0f}" if r.seconds else "-",
             f"{r.peak_gib:.2f}" if r.peak_gib is not None else "-",
             ", ".join(f"{c} {n}" for c, n in sorted(r.by_column.items())) or ("none" if r.seconds is not None else "-"),
             r.note]
            for r in results
        ]
        print(table(rows_out, ["engine", "wall s", "rows/s", "peak GiB (sampled)", "failing rows found", "note"]))
        differ = disagreements(results, None if args.clean else PLANTED)
        print()
        if differ:
            for engine, how in differ.items():
                print(f"{engine} does not find what was planted: {how}")
        else:
            print("every engine that ran found exactly the planted failures" if not args.clean else "no engine found a failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
