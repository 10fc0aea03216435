"""Quality gates: pandera contracts evaluated as Dagster asset checks that explain themselves.

:func:`validate_frame` runs a contract lazily and turns pandera's failure cases into a report:
failing count per rule and column, and a sample of the offending rows. :func:`check_result`
renders that report as an ``AssetCheckResult``. :func:`build_gate_check` is the factory that
turns a contract into a blocking, ERROR-severity asset check over a warehouse table; it always
returns a result, so an unexpected exception blocks instead of slipping through.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import dagster as dg
import duckdb
import pandas as pd
import pandera.pandas as pa
from dagster_duckdb import DuckDBResource

from cross_sell import audit_log
from cross_sell.warehouse import connect, markdown, replace_with_frame

MAX_SAMPLE_ROWS = 20

Contract = type[pa.DataFrameModel] | pa.DataFrameSchema
ContractFactory = Callable[[duckdb.DuckDBPyConnection], Contract]

_RULE_FAMILIES = (
    ("column_in_dataframe", "schema"),
    ("column_in_schema", "schema"),
    ("coerce_dtype", "type"),
    ("dtype(", "type"),
    ("not_nullable", "completeness"),
    ("str_matches", "completeness"),
    ("uniqueness", "uniqueness"),
    ("exists_in", "referential_integrity"),
    ("not_empty", "completeness"),
)


def rule_name(check: str) -> str:
    """A readable rule id: ``<family>:<pandera check>``, e.g. ``validity:greater_than(0)``."""
    for needle, family in _RULE_FAMILIES:
        if needle in check:
            return f"{family}:{check}"
    return f"validity:{check}"


@dataclass(frozen=True)
class GateReport:
    """What a contract found in one table."""

    contract: str
    rows_checked: int
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)  # rule, column, failing_count
    sample: pd.DataFrame = field(default_factory=pd.DataFrame)  # offending rows with rule and column
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.failures.empty

    @property
    def failing_count(self) -> int:
        return int(self.failures["failing_count"].sum()) if not self.failures.empty else 0

    def counts(self) -> dict[str, int]:
        """Machine-readable counts keyed ``column|rule``."""
        return {f"{r.column}|{r.rule}": int(r.failing_count) for r in self.failures.itertuples()}

    def summary(self) -> str:
        if self.error is not None:
            return f"contract {self.contract}: could not be evaluated: {self.error}"
        if self.passed:
            return f"contract {self.contract}: {self.rows_checked} rows passed"
        parts = [f"{r.rule} on {r.column}: {r.failing_count}" for r in self.failures.itertuples()]
        return f"contract {self.contract} failed on {self.rows_checked} rows: " + "; ".join(parts)


def _failure_table(failure_cases: pd.DataFrame) -> pd.DataFrame:
    fc = failure_cases.copy()
    # A missing or unexpected column is reported with the schema name as "column": name the column.
    schema_level = fc["check"].astype(str).isin(["column_in_dataframe", "column_in_schema"])
    fc.loc[schema_level, "column"] = fc.loc[schema_level, "failure_case"].astype(str)
    fc["column"] = fc["column"].fillna("<table>").astype(str)
    fc["check"] = fc["check"].astype(str)
    # When text cannot be coerced to the contracted type, pandera also reports the dtype mismatch and
    # the value checks that then could not run; the coercion failure alone is the finding.
    coerced = set(fc.loc[fc["check"].str.startswith("coerce_dtype"), "column"])
    noise = fc["column"].isin(coerced) & (
        fc["check"].str.startswith("dtype(") | (fc["index"].isna() & ~fc["check"].str.startswith("coerce_dtype"))
    )
    fc = fc.loc[~noise]
    fc["rule"] = fc["check"].map(rule_name)
    return fc


def report_from_failure_cases(contract: str, df: pd.DataFrame, failure_cases: pd.DataFrame) -> GateReport:
    """Summarise pandera failure cases: counts per rule and column, and a sample of offending rows."""
    fc = _failure_table(failure_cases)
    failures = (
        fc.groupby(["rule", "column"], sort=True).size().rename("failing_count").reset_index()
        .sort_values(["failing_count", "rule"], ascending=[False, True], kind="stable")
        .reset_index(drop=True)
    )
    sample = fc.head(MAX_SAMPLE_ROWS)[["rule", "column", "failure_case", "index"]].rename(
        columns={"failure_case": "value", "index": "row"}
    )
    rows = sample["row"].dropna()
    if len(rows):
        offending = df.loc[df.index.intersection(rows.astype(df.index.dtype))]
        sample = sample.merge(offending.astype("string"), left_on="row", right_index=True, how="left")
    sample = sample.astype("string").fillna("")
    return GateReport(contract=contract, rows_checked=len(df), failures=failures, sample=sample)


def validate_frame(
    contract: Contract, df: pd.DataFrame, extra_failure_cases: pd.DataFrame | None = None
) -> GateReport:
    """Validate ``df`` lazily against a pandera model or schema; never raises.

    ``extra_failure_cases`` (columns check, column, failure_case, index) adds findings made before
    the frame existed, such as CSV lines that could not be parsed.
    """
    schema = contract.to_schema() if isinstance(contract, type) else contract
    name = schema.name or "contract"
    found = [] if extra_failure_cases is None or extra_failure_cases.empty else [extra_failure_cases]
    try:
        if df.empty:
            found.append(_single_failure("not_empty", "<table>", "0 rows"))
        else:
            try:
                schema.validate(df, lazy=True)
            except pa.errors.SchemaErrors as err:
                found.append(err.failure_cases)
        if not found:
            return GateReport(contract=name, rows_checked=len(df))
        return report_from_failure_cases(name, df, pd.concat(found, ignore_index=True))
    except Exception as exc:  # a broken contract must block, not vanish
        return GateReport(contract=name, rows_checked=len(df), error=f"{type(exc).__name__}: {exc}")


def _single_failure(check: str, column: str, value: str) -> pd.DataFrame:
    return pd.DataFrame({"check": [check], "column": [column], "failure_case": [value], "index": [None]})


def check_result(
    report: GateReport,
    *,
    asset_key: dg.AssetKey | None = None,
    check_name: str | None = None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    extra_metadata: dict | None = None,
) -> dg.AssetCheckResult:
    """Render a report as an asset check result whose metadata says exactly what is wrong."""
    metadata: dict = {
        "rows_checked": report.rows_checked,
        "failing_count": report.failing_count,
        "failures_by_rule": dg.MetadataValue.md(markdown(report.failures)),
        "failure_counts": dg.MetadataValue.json(report.counts()),
        "failing_rows_sample": dg.MetadataValue.md(markdown(report.sample)),
        "summary": report.summary(),
    }
    if report.error is not None:
        metadata["error"] = report.error
    metadata.update(extra_metadata or {})
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=report.passed,
        severity=severity,
        metadata=metadata,
        description=report.summary(),
    )


class GateFailedError(Exception):
    """Raised by a step whose output failed its contract, so nothing is published."""


def build_gate_check(
    *,
    asset: dg.AssetKey,
    name: str,
    dataset: str,
    contract: Contract | ContractFactory,
    load_sql: str,
    description: str,
    additional_deps: Sequence[dg.AssetKey] = (),
    extra_failures_sql: str | None = None,
) -> dg.AssetChecksDefinition:
    """Turn a pandera contract into a blocking, ERROR-severity asset check on a warehouse table.

    ``load_sql`` reads the rows to validate; ``contract`` is a model or schema, or a function that
    builds one from the warehouse (for rules that need other tables, such as referential integrity).
    ``extra_failures_sql`` may add findings in pandera's failure-case shape (e.g. unparseable lines).
    The verdict is also recorded in ``audit.gate_log`` against the dataset's current load.
    """

    @dg.asset_check(
        asset=asset,
        name=name,
        description=description,
        blocking=True,
        pool="duckdb",
        additional_deps=list(additional_deps),
    )
    def _gate(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource) -> dg.AssetCheckResult:
        try:
            with connect(duckdb) as conn:
                resolved = contract if isinstance(contract, (type, pa.DataFrameSchema)) else contract(conn)
                df = conn.execute(load_sql).df()
                extra = conn.execute(extra_failures_sql).df() if extra_failures_sql else None
                report = validate_frame(resolved, df, extra)
                audit_log.record_gate(conn, dataset, name, report.passed, report.failing_count, context.run.run_id)
        except Exception as exc:  # always return a result: no result would mean no block
            report = GateReport(contract=f"{dataset}.{name}", rows_checked=0, error=f"{type(exc).__name__}: {exc}")
        if not report.passed:
            context.log.error(f"Gate {asset.to_user_string()}:{name} failed. {report.summary()}")
        return check_result(report)

    return _gate


OUTPUT_CONTRACT = "contract"


def frame_contract(model: type[pa.DataFrameModel], df: pd.DataFrame) -> pa.DataFrameSchema:
    """The model's schema, accepting categorical columns for text (how large outputs are held)."""
    schema = model.to_schema()
    categorical = {c: {"dtype": None} for c in schema.columns if c in df and isinstance(df[c].dtype, pd.CategoricalDtype)}
    return schema.update_columns(categorical) if categorical else schema


def output_contract_spec(asset: str, model: type[pa.DataFrameModel]) -> dg.AssetCheckSpec:
    """Spec of the blocking contract gate an output asset evaluates before it publishes."""
    return dg.AssetCheckSpec(
        OUTPUT_CONTRACT,
        asset=asset,
        blocking=True,
        description=f"Blocking gate: the new {asset} meets its contract ({model.__doc__.strip()}) "
        "before it replaces the published table.",
    )


def output_gate(model: type[pa.DataFrameModel], df: pd.DataFrame) -> dg.AssetCheckResult:
    """Validate a computed output before it is published."""
    return check_result(validate_frame(frame_contract(model, df), df), check_name=OUTPUT_CONTRACT)


def gated_publish(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    model: type[pa.DataFrameModel],
    df: pd.DataFrame,
    metadata: dict,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Write-audit-publish for a computed output: gate the frame, and replace the published table
    only if it passed. On failure the gate's result is reported and the step fails, so the
    previous table stays and nothing downstream runs."""
    gate = output_gate(model, df)
    if not gate.passed:
        yield gate
        raise GateFailedError(f"{table} not published: {gate.description}")
    replace_with_frame(conn, table, df)
    yield dg.MaterializeResult(metadata={"dagster/row_count": len(df), **metadata}, check_results=[gate])
