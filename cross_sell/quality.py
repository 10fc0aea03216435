"""Quality gates: pandera contracts evaluated as Dagster asset checks that explain themselves.

:func:`validate_frame` runs a contract lazily and turns pandera's failure cases into a
:class:`GateReport`: the failing count per rule and column, and a sample of the offending rows.
:func:`check_result` renders a report as an ``AssetCheckResult``. :func:`build_gate_check` is the
factory that turns a contract into a blocking, ERROR-severity asset check over a warehouse table;
it always returns a result, so an unexpected exception blocks instead of slipping through.
:func:`validate_table` runs the same contract inside DuckDB (:mod:`cross_sell.quality_sql`), which
is how the input gates scale to millions of rows. :func:`gated_publish` is write-audit-publish
for computed outputs.

Rules are named ``<family>:<rule>`` so a reader sees at once what kind of promise was broken:
``schema:column_present``, ``type:number``, ``completeness:not_null``, ``completeness:not_blank``,
``uniqueness:unique``, ``validity:greater_than(0)``, ``referential_integrity:exists_in_customer``,
``parse:invalid_encoding`` (a CSV line that could not be read), ``completeness:not_empty``.

In :func:`validate_frame`, text is typed before pandera sees it, column by column with vectorised
pandas parsers (``to_numeric``, ``to_datetime`` with the contract's own format), so a value that
is not a number or a date is reported once, as ``type:<kind>``, without pandera's
element-by-element fallback (which costs about a millisecond per row for dates).
"""


from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pa
from dagster_duckdb import DuckDBResource

from cross_sell import audit_log, quality_sql
from cross_sell.contracts import NON_BLANK
from cross_sell.warehouse import connect, markdown, replace_with_frame, rule_failure

MAX_SAMPLE_ROWS = 20
TABLE_LEVEL = "<table>"

Contract = type[pa.DataFrameModel] | pa.DataFrameSchema
ContractFactory = Callable[[duckdb.DuckDBPyConnection], Contract]

# pandera dtype -> the word a reader of a failed gate understands.
TYPE_NAMES = {
    "float64": "number",
    "int64": "integer",
    "Int64": "integer",
    "datetime64[ns]": "timestamp",
    "str": "text",
    "bool": "boolean",
}
_FAMILY_MEANINGS = {
    "schema": "a required column is missing",
    "type": "the value cannot be read as the contracted type",
    "completeness": "a required value is missing",
    "uniqueness": "the key appears more than once (every copy is counted)",
    "validity": "the value breaks a business rule",
    "referential_integrity": "the referenced record does not exist",
    "parse": "the CSV line could not be parsed; it is kept in the audit rejects table",
}
_RULE_MEANINGS = {
    "completeness:not_null": "required value is null",
    "completeness:not_blank": "value is empty or only spaces",
    "completeness:not_empty": "the input has no rows",
    "schema:column_in_contract": "column is not in the contract (strict contract)",
    "validity:finite": "must be a finite number (not NaN, infinity or minus infinity)",
    "validity:not_in_future": "must not be in the future",
    "validity:not_after_this_year": "must not be after this year",
    "validity:no_surrounding_spaces": "has spaces before or after it ('Wines ' would be a second category beside 'Wines')",
    "validity:symmetric_pair_counts": "every A -> B needs a B -> A with the same pair count",
}


def _type_name(dtype: str) -> str:
    return TYPE_NAMES.get(dtype, dtype)


def rule_name(check: str) -> str:
    """The readable rule id of a pandera check name, e.g. ``validity:greater_than(0)``."""
    check = str(check)
    if check.split(":", 1)[0] in _FAMILY_MEANINGS or check.startswith("gate:"):
        return check  # already a rule id
    if check == "column_in_dataframe":
        return "schema:column_present"
    if check == "column_in_schema":
        return "schema:column_in_contract"
    for prefix in ("coerce_dtype(", "dtype("):
        if check.startswith(prefix):
            return "type:" + _type_name(check[len(prefix):].rstrip(")").strip("'\""))
    if check == "not_nullable":
        return "completeness:not_null"
    if check == f"str_matches('{NON_BLANK}')":
        return "completeness:not_blank"
    if check in ("field_uniqueness", "multiple_fields_uniqueness", "unique"):
        return "uniqueness:unique"
    if check.startswith("exists_in"):
        return f"referential_integrity:{check}"
    if check == "not_empty":
        return "completeness:not_empty"
    return f"validity:{check}"


def describe_rule(rule: str) -> str:
    """One line a person understands: what the rule promises was broken."""
    if rule in _RULE_MEANINGS:
        return _RULE_MEANINGS[rule]
    family, _, detail = rule.partition(":")
    if family == "type":
        return f"value is not a valid {detail}"
    if family == "referential_integrity" and detail.startswith("exists_in_"):
        kind = detail.removeprefix("exists_in_")
        return (f"no such {kind} in the {kind} input of the same load "
                f"(for an incremental load: among the published {kind}s)")
    if family == "parse":
        return f"CSV line could not be parsed ({detail.replace('_', ' ')}); kept in the audit rejects table"
    if family == "validity":
        return _validity_meaning(detail)
    return _FAMILY_MEANINGS.get(family, rule)


_COMPARISONS = {
    "greater_than": "must be > {}",
    "greater_than_or_equal_to": "must be >= {}",
    "less_than": "must be < {}",
    "less_than_or_equal_to": "must be <= {}",
    "equal_to": "must equal {}",
    "isin": "must be one of {}",
    "notin": "must not be one of {}",
    "in_range": "must be between {}",
    "str_matches": "must match the pattern {}",
}


def _validity_meaning(check: str) -> str:
    name, _, argument = check.partition("(")
    if name in _COMPARISONS and argument:
        return _COMPARISONS[name].format(argument.removesuffix(")"))
    return f"must satisfy {name.replace('_', ' ')}"


# How many offending rows a failed gate writes into the run's log (the metadata holds up to
# MAX_SAMPLE_ROWS), and which of their columns identify them there.
LOGGED_SAMPLE_ROWS = 5
SAMPLE_KEY_COLUMNS = ("purchase_id", "order_id", "customer_id", "product_id", "_source_file")


@dataclass(frozen=True)
class GateReport:
    """What a contract found in one table."""

    contract: str
    rows_checked: int
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)  # rule, column, failing_count, meaning
    sample: pd.DataFrame = field(default_factory=pd.DataFrame)  # offending rows with rule and column
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.failures.empty

    @property
    def failing_count(self) -> int:
        return int(self.failures["failing_count"].sum()) if not self.failures.empty else 0

    def counts(self) -> dict[str, dict[str, int]]:
        """Machine-readable counts: ``{rule: {column: failing_count}}``."""
        out: dict[str, dict[str, int]] = {}
        for r in self.failures.itertuples():  # one row per rule and column, never per data row
            out.setdefault(r.rule, {})[r.column] = int(r.failing_count)
        return out

    def summary(self) -> str:
        if self.error is not None:
            return f"contract {self.contract} could not be evaluated ({self.rows_checked} rows): {self.error}"
        if self.passed:
            return f"contract {self.contract}: all {self.rows_checked} rows passed"
        parts = [f"{r.rule} on {r.column}: {r.failing_count}" for r in self.failures.itertuples()]
        return f"contract {self.contract} failed ({self.rows_checked:,} rows checked): " + "; ".join(parts)

    def sample_text(self, rows: int = LOGGED_SAMPLE_ROWS) -> str:
        """The first offending rows as a small table for logs and terminals: the rule, the column,
        the value, the row, and the row's keys and source file where it has them (the whole rows
        are in the ``failing_rows_sample`` metadata)."""
        if self.sample.empty:
            return ""
        columns = [c for c in ("rule", "column", "value", "row", *SAMPLE_KEY_COLUMNS) if c in self.sample.columns]
        shown = self.sample[columns].head(rows)
        if "_source_file" in shown.columns:
            shown = shown.assign(_source_file=shown["_source_file"].str.rsplit("/", n=1).str[-1])
        more = len(self.sample) - len(shown)
        note = f"\n({more} more sample rows in the failing_rows_sample metadata)" if more > 0 else ""
        return markdown(shown) + note

    def with_sample(self, message: str) -> str:
        """``message`` followed by the first offending rows, when there are any."""
        sample = self.sample_text()
        return f"{message}\n{sample}" if sample else message


# ---------------------------------------------------------------------------------------------
# Typing text before validation (vectorised).


def _parse_column(values: pd.Series, dtype: object) -> pd.Series | None:
    """``values`` (text) parsed to the contract ``dtype`` with NaN/NaT where unreadable, or None
    when this dtype is left to pandera."""
    name = str(dtype)
    if name == "float64":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if name in ("int64", "Int64"):
        number = pd.to_numeric(values, errors="coerce").astype("float64")
        integral = np.isfinite(number) & (number == np.floor(number))
        return number.where(integral).astype("Int64")
    if name.startswith("datetime64"):
        kwargs = dict(getattr(dtype, "to_datetime_kwargs", None) or {})
        iso = values.astype("string").str.fullmatch(quality_sql.ISO_TIMESTAMP).fillna(False).astype(bool)
        parsed = pd.to_datetime(values.where(iso), errors="coerce", **kwargs)  # pandas' ISO8601 reads 2025/01/01 too
        return parsed if str(parsed.dtype) == name else None  # time zones etc.: pandera decides
    return None


def type_text_columns(schema: pa.DataFrameSchema, df: pd.DataFrame) -> tuple[pa.DataFrameSchema, pd.DataFrame, pd.DataFrame]:
    """Type the text columns of ``df`` to the contract with vectorised parsers.

    Returns the schema to validate with (typed columns need no further coercion), the typed
    frame, and the values that could not be typed as pandera-shaped failure cases
    (``coerce_dtype('<dtype>')``). Columns already typed are left for pandera to check.
    """
    updates: dict[str, dict] = {}
    typed: dict[str, pd.Series] = {}
    cases: list[pd.DataFrame] = []
    for name, column in schema.columns.items():
        if name not in df.columns or column.dtype is None:
            continue
        values = df[name]
        if not (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
            continue
        if str(column.dtype) == "str":
            # Text stays text; pandera's own check of it is element by element, this one is not.
            if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
                updates[name] = {"dtype": None}
            continue
        if not (column.coerce or schema.coerce):
            continue
        try:
            parsed = _parse_column(values, column.dtype)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None:
            continue
        unreadable = values.notna().to_numpy() & parsed.isna().to_numpy()
        if unreadable.any():
            cases.append(
                pd.DataFrame(
                    {
                        "check": f"coerce_dtype('{column.dtype}')",
                        "column": name,
                        "failure_case": values[unreadable].astype(str).to_numpy(),
                        "index": values.index[unreadable],
                    }
                )
            )
        typed[name] = parsed
        updates[name] = {"dtype": None}
    if not updates:
        return schema, df, pd.DataFrame()
    out = df.assign(**typed) if typed else df
    found = pd.concat(cases, ignore_index=True) if cases else pd.DataFrame()
    return schema.update_columns(updates), out, found


# ---------------------------------------------------------------------------------------------
# Failure cases -> report.


def _normalise(failure_cases: pd.DataFrame) -> pd.DataFrame:
    """pandera's failure cases as one row per (rule, column, data row) finding."""
    fc = failure_cases.copy()
    if "count" not in fc:
        fc["count"] = np.nan  # engines that pre-aggregate give each rule's total here
    fc["check"] = fc["check"].astype(str)
    fc["column"] = fc["column"].astype("object")
    context = fc["schema_context"].astype(str) if "schema_context" in fc else pd.Series("", index=fc.index)
    # A missing or unexpected column is reported with the schema name as "column": name the column.
    schema_level = fc["check"].isin(["column_in_dataframe", "column_in_schema"])
    fc.loc[schema_level, "column"] = fc.loc[schema_level, "failure_case"].astype(str)
    # Table-wide checks are listed once per column of a failing row: report the row once.
    table_wide = (context == "DataFrameSchema") & ~schema_level
    if table_wide.any():
        wide = fc.loc[table_wide]
        key_columns = {check: "+".join(map(str, cols)) for check, cols in wide.groupby("check")["column"].unique().items()}
        uniqueness = wide["check"].eq("multiple_fields_uniqueness")
        fc.loc[table_wide, "column"] = wide["check"].map(key_columns).where(uniqueness, TABLE_LEVEL)
        fc.loc[table_wide, "failure_case"] = wide["failure_case"].where(~uniqueness, "").astype(str)
        first = ~fc.loc[table_wide].duplicated(["check", "index"])
        fc = pd.concat([fc.loc[~table_wide], fc.loc[table_wide].loc[first]])
    fc["column"] = fc["column"].fillna(TABLE_LEVEL).astype(str)
    # When text cannot be coerced to the contracted type, pandera also reports the dtype mismatch and
    # the value checks that then could not run; the coercion failure alone is the finding.
    coerced = set(fc.loc[fc["check"].str.startswith("coerce_dtype"), "column"])
    noise = fc["column"].isin(coerced) & (
        fc["check"].str.startswith("dtype(") | (fc["index"].isna() & ~fc["check"].str.startswith("coerce_dtype"))
    )
    fc = fc.loc[~noise]
    fc["rule"] = fc["check"].map(rule_name)
    return fc.reset_index(drop=True)


def _drop_shadowed(found: pd.DataFrame, typed: pd.DataFrame) -> pd.DataFrame:
    """Drop pandera findings on cells that could not be typed (a null there is not a second error)."""
    if typed.empty or found.empty:
        return found
    bad = pd.MultiIndex.from_arrays([typed["column"].astype(str), typed["index"].astype("int64")])
    index = pd.to_numeric(found["index"], errors="coerce").fillna(-1).astype("int64")
    cells = pd.MultiIndex.from_arrays([found["column"].astype(str), index])
    return found.loc[~cells.isin(bad)]


def _whole(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column of a sample (a few rows) as text, whole numbers without a decimal point: a
    year read as a float beside missing values shows as 1850, not 1850.0."""
    out = frame.copy()
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        if pd.api.types.is_float_dtype(column.dtype) or column.dtype == object:
            out.isetitem(i, pd.Series([None if pd.isna(v) else str(_whole(v)) for v in column],
                                      index=column.index, dtype="string"))
    return out.astype("string")


def report_from_failure_cases(
    contract: str, df: pd.DataFrame, failure_cases: pd.DataFrame, rows_checked: int | None = None
) -> GateReport:
    """Summarise failure cases: counts per rule and column, and a sample of offending rows.

    ``failure_cases`` has pandera's columns (check, column, failure_case, index, optionally
    schema_context) and optionally ``count``: the rule's total, for engines that list only a sample.
    ``df`` holds (at least) the offending rows by index; ``rows_checked`` defaults to its length.
    """
    fc = _normalise(failure_cases)
    grouped = fc.groupby(["rule", "column"], sort=True)
    failures = (
        grouped["count"].max().fillna(grouped.size().astype(float)).astype("int64").rename("failing_count").reset_index()
        .sort_values(["failing_count", "rule", "column"], ascending=[False, True, True], kind="stable")
        .reset_index(drop=True)
    )
    failures["meaning"] = failures["rule"].map(describe_rule)
    # A sample that shows every broken rule: round-robin over the rules, at most 20 rows in all.
    turn = fc.groupby(["rule", "column"], sort=False).cumcount()
    picked = fc.iloc[np.lexsort((np.arange(len(fc)), turn.to_numpy()))[:MAX_SAMPLE_ROWS]]
    sample = picked[["rule", "column", "failure_case", "index"]].rename(columns={"failure_case": "value", "index": "row"})
    rows = pd.to_numeric(sample["row"], errors="coerce").dropna()
    if len(rows) and len(df):
        offending = df.loc[df.index.intersection(rows.astype(df.index.dtype))]
        sample = sample.assign(_row=pd.to_numeric(sample["row"], errors="coerce")).merge(
            _as_text(offending), left_on="_row", right_index=True, how="left"
        ).drop(columns="_row")
    sample = _as_text(sample).fillna("").reset_index(drop=True)
    checked = len(df) if rows_checked is None else rows_checked
    return GateReport(contract=contract, rows_checked=checked, failures=failures, sample=sample)


def _single_failure(check: str, column: str, value: str) -> pd.DataFrame:
    return pd.DataFrame({"check": [check], "column": [column], "failure_case": [value], "index": [None]})


def _as_schema(contract: Contract) -> pa.DataFrameSchema:
    return contract.to_schema() if isinstance(contract, type) else contract


def validate_frame(
    contract: Contract,
    df: pd.DataFrame,
    extra_failure_cases: pd.DataFrame | None = None,
    *,
    require_rows: bool = True,
) -> GateReport:
    """Validate ``df`` lazily against a pandera model or schema; never raises.

    ``extra_failure_cases`` (columns check, column, failure_case, index) adds findings made before
    the frame existed, such as CSV lines that could not be parsed. ``require_rows`` makes an
    empty frame a failure (``completeness:not_empty``).
    """
    schema = None
    try:
        schema = _as_schema(contract)
        found = [] if extra_failure_cases is None or extra_failure_cases.empty else [extra_failure_cases]
        if df.empty and require_rows:
            found.append(_single_failure("not_empty", TABLE_LEVEL, "0 rows"))
        gate_schema, typed_df, typed_cases = type_text_columns(schema, df)
        if not typed_cases.empty:
            found.append(typed_cases)
        try:
            gate_schema.validate(typed_df, lazy=True)
        except pa.errors.SchemaErrors as err:
            found.append(_drop_shadowed(err.failure_cases, typed_cases))
        found = [f for f in found if not f.empty]
        if not found:
            return GateReport(contract=schema.name or "contract", rows_checked=len(df))
        return report_from_failure_cases(schema.name or "contract", df, pd.concat(found, ignore_index=True))
    except Exception as exc:  # a broken contract must block, not vanish
        name = getattr(schema, "name", None) or getattr(contract, "__name__", "contract")
        return GateReport(contract=name, rows_checked=len(df), error=f"{type(exc).__name__}: {exc}")


def validate_table(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    contract: Contract,
    extra_failure_cases: pd.DataFrame | None = None,
    *,
    require_rows: bool = True,
) -> GateReport:
    """Validate a warehouse table against a pandera contract inside DuckDB; never raises.

    The model's rules run as SQL over the table (:mod:`cross_sell.quality_sql`: one scan, whatever
    the size), with the same rule names as :func:`validate_frame`; only the offending rows of the
    sample are read into Python.
    """
    schema = None
    try:
        schema = _as_schema(contract)
        rows, cases = quality_sql.failure_cases(conn, table, schema, sample_per_rule=MAX_SAMPLE_ROWS)
        found = [f for f in (cases, extra_failure_cases) if f is not None and not f.empty]
        if rows == 0 and require_rows:
            found.append(_single_failure("not_empty", TABLE_LEVEL, "0 rows"))
        if not found:
            return GateReport(contract=schema.name or "contract", rows_checked=rows)
        found = pd.concat(found, ignore_index=True)
        ids = pd.to_numeric(found["index"], errors="coerce").dropna().astype("int64").unique().tolist()
        offending = conn.execute(
            f"select rowid as __row, * from {table} where rowid in (select unnest(?::bigint[]))", [ids]
        ).df().set_index("__row")
        return report_from_failure_cases(schema.name or "contract", offending, found, rows_checked=rows)
    except Exception as exc:  # a broken contract must block, not vanish
        name = getattr(schema, "name", None) or getattr(contract, "__name__", "contract")
        return GateReport(contract=name, rows_checked=0, error=f"{type(exc).__name__}: {exc}")


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
        "contract": report.contract,
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


def _has_columns(conn: duckdb.DuckDBPyConnection, table: str, schema: pa.DataFrameSchema) -> bool:
    present = {column[0] for column in conn.execute(f"select * from {table} limit 0").description}
    return set(schema.columns) <= present


def build_gate_check(
    *,
    asset: dg.AssetKey,
    name: str,
    dataset: str,
    contract: Contract | ContractFactory,
    description: str,
    table: str | None = None,
    load_sql: str | None = None,
    additional_deps: Sequence[dg.AssetKey] = (),
    extra_failures_sql: str | Callable[[duckdb.DuckDBPyConnection], str] | None = None,
    require_rows: bool = True,
    depends_on: Sequence[str] | Callable[[duckdb.DuckDBPyConnection], Sequence[str]] = (),
) -> dg.AssetChecksDefinition:
    """Turn a pandera contract into a blocking, ERROR-severity asset check on a warehouse table.

    Give either ``table`` (validated inside DuckDB by :func:`validate_table`, for tables of any
    size) or ``load_sql`` (rows read into pandas and validated by pandera itself, for contracts
    the SQL engine cannot express, such as a lookup against a large id list). ``contract`` is a
    model or schema, or a function that builds one from the warehouse (for rules that need other
    tables, such as referential integrity). ``extra_failures_sql`` may add findings in pandera's
    failure-case shape (e.g. unparseable lines). The verdict is recorded in ``audit.gate_log``
    against the dataset's current load and the current loads of the datasets in ``depends_on``,
    so publishing can tell whether it still holds. ``extra_failures_sql`` and ``depends_on`` may
    also be functions of the warehouse, for rules whose lookups depend on the current load (an
    incremental load's references are checked against the published inputs).
    """
    if (table is None) == (load_sql is None):
        raise ValueError("build_gate_check needs exactly one of table= or load_sql=")

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
                require_own_load(conn, dataset, context.run.run_id)
                resolved = contract if isinstance(contract, (type, pa.DataFrameSchema)) else contract(conn)
                extra = None
                # Extra rules read the contract's columns: where one is missing, the contract reports
                # it (schema:column_present) instead of the rules failing on a binder error.
                if extra_failures_sql and (table is None or _has_columns(conn, table, _as_schema(resolved))):
                    sql = extra_failures_sql if isinstance(extra_failures_sql, str) else extra_failures_sql(conn)
                    extra = conn.execute(sql).df()
                if table is not None:
                    report = validate_table(conn, table, resolved, extra, require_rows=require_rows)
                else:
                    report = validate_frame(resolved, conn.execute(load_sql).df(), extra, require_rows=require_rows)
                seen = depends_on(conn) if callable(depends_on) else depends_on
                audit_log.record_gate(conn, dataset, name, report.passed, report.failing_count, context.run.run_id, depends_on=seen)
        except dg.Failure:
            raise  # no verdict: the load this run landed is gone (see require_own_load)
        except Exception as exc:  # always return a result: no result would mean no block
            report = GateReport(contract=f"{dataset}.{name}", rows_checked=0, error=f"{type(exc).__name__}: {exc}")
        if report.passed:
            context.log.info(f"Gate {asset.to_user_string()}:{name} passed: {report.summary()}")
        else:
            context.log.error(report.with_sample(f"Gate {asset.to_user_string()}:{name} FAILED: {report.summary()}"))
        return check_result(report)

    return _gate


def require_own_load(conn: duckdb.DuckDBPyConnection, dataset: str, run_id: str) -> None:
    """Fail the step, with no verdict on the data, when another run has replaced the load of
    ``dataset`` this run landed (:func:`cross_sell.audit_log.check_own_load`). The run-failure
    sensor then lands the run's landing file again instead of rejecting it."""
    try:
        audit_log.check_own_load(conn, dataset, run_id)
    except audit_log.LoadReplacedError as exc:
        raise rule_failure(exc.rule, str(exc), {"dataset": dataset}) from exc


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


def output_report(model: type[pa.DataFrameModel], df: pd.DataFrame) -> GateReport:
    """What the output contract finds in a computed output."""
    return validate_frame(frame_contract(model, df), df, require_rows=False)


def output_gate(model: type[pa.DataFrameModel], df: pd.DataFrame, asset_key: dg.AssetKey | None = None) -> dg.AssetCheckResult:
    """Validate a computed output before it is published (``asset_key``: needed when the step
    materializes more than one asset)."""
    return check_result(output_report(model, df), asset_key=asset_key, check_name=OUTPUT_CONTRACT)


def gated_publish(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    model: type[pa.DataFrameModel],
    df: pd.DataFrame,
    metadata: dict,
    asset_key: dg.AssetKey | None = None,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Write-audit-publish for a computed output: gate the frame, and replace the published table
    only if it passed. On failure the gate's result is reported and the step fails, so the
    previous table stays and nothing downstream runs. ``asset_key``: the asset the results are
    for, when the step materializes more than one."""
    report = output_report(model, df)
    gate = check_result(report, asset_key=asset_key, check_name=OUTPUT_CONTRACT)
    if not gate.passed:
        yield gate
        raise GateFailedError(report.with_sample(f"Gate {table}:{OUTPUT_CONTRACT} FAILED, {table} not published: {gate.description}"))
    replace_with_frame(conn, table, df)
    yield dg.MaterializeResult(asset_key=asset_key, metadata={"dagster/row_count": len(df), **metadata}, check_results=[gate])
