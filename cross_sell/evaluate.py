"""Evaluate the cross-sell model on any dataset the project can read: ``python -m cross_sell.evaluate``.

It runs exactly the evaluation of the ``cross_sell_model`` asset (time split where the dates
allow, cross-sectional fallback otherwise; held-out customers; the model next to the popularity
and affinity-rule baselines) and prints the metrics table. Two ways in:

* ``--data-dir DIR`` (default ``$CROSS_SELL_DATA_DIR`` or ``data/sample``) with ``--input-format``
  (default ``$CROSS_SELL_INPUT_FORMAT`` or ``canonical``): the input files go through the project's
  own ingest (landing, blocking quality gates, publishing) into a temporary warehouse, removed
  afterwards; input that fails a gate is reported, not evaluated;
* ``--warehouse FILE``: the published tables of an existing warehouse, opened read-only.

Nothing is persisted: no artifact, no registry row. Exit code 0 on success, 2 on unusable input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from cross_sell import settings
from cross_sell.ingest.source import AdapterOptions
from cross_sell.resources import InputFiles
from cross_sell.scoring import evaluation as ev
from cross_sell.scoring import model as ml

INPUT_TABLES = ("customers", "products", "purchases")
MAX_CATEGORY_ROWS = 40


class UnusableInputError(Exception):
    """The input could not be published (a gate failed, a file is missing or unreadable)."""


# The error Dagster raises in a step whose blocking check failed; the gate's own line says more.
CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"


def ingest(
    data_dir: Path, input_format: str, database: Path, *, verbose: bool = False,
    date_format: str | None = None, as_of_date: str | None = None,
) -> None:
    """Land, gate and publish the inputs into ``database`` with the project's own ingest assets.

    The run's event log is silent unless ``verbose``: the command reports what failed itself, in
    one line per failed gate or step, instead of Dagster's event stream and stack traces."""
    from cross_sell.definitions import ASSETS, CHECKS  # the code location, loaded when needed

    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=dg.AssetSelection.assets(*INPUT_TABLES).upstream(),
        resources={
            "duckdb": DuckDBResource(database=str(database)),
            "input_files": InputFiles(
                location=str(data_dir), input_format=input_format, as_of_date=as_of_date,
                **({"date_format": date_format} if date_format else {}),
            ),
        },
        run_config={"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}}},
        raise_on_error=False,
    )
    if not result.success:
        raise UnusableInputError(f"the input in {data_dir} could not be published:\n  " + "\n  ".join(run_problems(result)))


def run_problems(result: dg.ExecuteInProcessResult) -> list[str]:
    """One line per failed blocking gate (rule, column, count, from its description) and per
    failed step that is not just such a gate failing."""
    problems = [
        f"gate {e.asset_key.to_user_string()}:{e.check_name} failed: {e.description}"
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    for failure in result.get_step_failure_events():
        error = failure.event_specific_data.error
        if error is not None and error.cls_name == CHECK_FAILED_ERROR and problems:
            continue
        cause = error.cause.message if error and error.cause else (error.message if error else "")
        first = cause.strip().splitlines()[0] if cause.strip() else "no message"
        problems.append(f"step {failure.step_key} failed: {first}")
    return problems or ["the run failed without a failed gate or step: rerun with --verbose to see its log"]


def evaluate_warehouse(database: Path, params: ml.ModelParams) -> ml.TrainedModel:
    """Train and evaluate on a warehouse's published tables (read-only; nothing is saved)."""
    if not database.is_file():
        raise UnusableInputError(f"no warehouse at {database}")
    with duckdb.connect(str(database), read_only=True) as conn:
        missing = [t for t in INPUT_TABLES if not conn.execute(
            "select count(*) from information_schema.tables where table_schema = 'main' and table_name = ?", [t]
        ).fetchall()[0][0]]
        if missing:
            raise UnusableInputError(f"{database} has no published {', '.join(missing)}: materialize the ingest first")
        return ml.train(conn, params)


def report(model: ml.TrainedModel, source: str, seconds: float) -> str:
    """The printed report: how the model was trained, the metrics table, AUC per category."""
    evaluation = model.evaluation
    m = model.metadata
    lines = [
        f"Cross-sell model evaluation: {source}",
        f"  {m['customers']:,} customers, {len(m['categories'])} categories, model version {model.version}",
        *(f"  {line}" for line in ml.iter_metadata_lines(model)),
        (f"  held-out customers who went on to buy a new category: {evaluation.customers_with_new_category:,}"
         if m["strategy"] == ml.TIME_SPLIT
         else f"  held-out customers with a hidden category to find: {evaluation.customers_with_new_category:,}"),
        "",
        ev.format_table(ev.summary_table(evaluation)),
        "",
    ]
    by_category = evaluation.by_category.rename(columns=lambda c: c.replace("auc_", "AUC "))
    shown = by_category.sort_values(["positives", "category"], ascending=[False, True]).head(MAX_CATEGORY_ROWS)
    note = f" (the {MAX_CATEGORY_ROWS} with most positives)" if len(by_category) > MAX_CATEGORY_ROWS else ""
    lines += [f"ROC AUC per category on held-out rows{note}:", ev.format_table(shown), ""]
    lines.append(f"done in {seconds:.1f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cross_sell.evaluate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-dir", type=Path, default=None, help="input folder (default: $CROSS_SELL_DATA_DIR or data/sample)")
    source.add_argument("--warehouse", type=Path, default=None, help="evaluate an existing warehouse file instead (read-only)")
    parser.add_argument("--input-format", default=None, help="layout of the input (default: $CROSS_SELL_INPUT_FORMAT or canonical)")
    defaults = ml.ModelParams()
    parser.add_argument("--k", type=int, default=defaults.eval_k, help="k of recall@k and precision@k")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--estimator", choices=("gradient_boosting", "logistic"), default=defaults.estimator)
    parser.add_argument("--calibration", choices=("sigmoid", "isotonic"), default=defaults.calibration)
    parser.add_argument("--cutoff-quantile", type=float, default=defaults.cutoff_quantile)
    parser.add_argument("--max-train-rows", type=int, default=defaults.max_train_rows)
    parser.add_argument("--date-format", default=None,
                        help="strptime format of an adapter format's dates, e.g. %%d.%%m.%%Y "
                        f"(default: {AdapterOptions.date_format.replace('%', '%%')})")
    parser.add_argument("--as-of-date", default=None, help="spend_summary: the date the summary was taken (default: its newest signup date)")
    parser.add_argument("--verbose", action="store_true", help="print the ingest run's Dagster event log")
    args = parser.parse_args(argv)
    try:
        params = ml.ModelParams(
            eval_k=args.k, seed=args.seed, estimator=args.estimator, calibration=args.calibration,
            cutoff_quantile=args.cutoff_quantile, max_train_rows=args.max_train_rows,
        )
    except ValueError as exc:
        parser.error(str(exc))

    started = time.perf_counter()
    try:
        if args.warehouse is not None:
            model = evaluate_warehouse(args.warehouse.resolve(), params)
            source = f"warehouse {args.warehouse}"
        else:
            data_dir = (args.data_dir or settings.data_dir()).resolve()
            input_format = args.input_format or settings.input_format()
            with tempfile.TemporaryDirectory(prefix="cross_sell_evaluate_") as tmp:
                database = Path(tmp) / "evaluate.duckdb"
                ingest(data_dir, input_format, database, verbose=args.verbose,
                       date_format=args.date_format, as_of_date=args.as_of_date)
                model = evaluate_warehouse(database, params)
            source = f"{data_dir} ({input_format})"
    except (UnusableInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if "input_files.date_format" in str(exc) or "input_files.as_of_date" in str(exc):
            print("(this command takes them as --date-format and --as-of-date)", file=sys.stderr)
        return 2
    print(report(model, source, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
