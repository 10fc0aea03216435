"""Ingest: land new input in the audit schema, gate it, and publish only what passed.

Write, audit, publish: ``audit/<dataset>`` lands the files as received; blocking pandera gates
check them; ``publish_inputs`` then replaces ``customers``, ``products`` and ``purchases`` in one
transaction, and only when every gate of the current load passed (without a copy where the load
landed typed: see :mod:`cross_sell.ingest.publication`). A failed gate therefore leaves every
published table and every output as it was.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import duckdb
import pandas as pd
import pandera.pandas as pa
from dagster_duckdb import DuckDBResource
from duckdb import Error as DuckDBError

from cross_sell import alerts, audit_log, contracts, landing_files
from cross_sell.ingest import publication
from cross_sell.ingest.formats import FORMAT_TABLE, get_format, publish_format_sql, published_capabilities
from cross_sell.ingest.landing import InputAmbiguousError, InputMissingError, find_files, find_source_files, land, rejects_as_failure_cases_sql
from cross_sell.ingest.source import SourceLayoutError, source_table
from cross_sell.quality import build_gate_check, check_result, GateReport, require_own_load, validate_table
from cross_sell.resources import InputFiles
from cross_sell.warehouse import (
    AUDIT_SCHEMA, PUBLISHED_SCHEMA, connect, markdown, quoted, replace_table, row_count, table_columns, table_exists,
    rule_failure, transaction, uri,
)

OWNER = "team:data-platform"
GROUP = "ingest"
CONTRACT_GATE = "contract"
REFERENCES_GATE = "referential_integrity"
SOURCE_RULES_GATE = "source_rules"
ROW_COUNT_DROP = "row_count_drop"
MAX_ROW_COUNT_DROP = 0.5


@dataclass(frozen=True)
class Dataset:
    """One input of the data product."""

    table: str
    contract: type[pa.DataFrameModel]
    meaning: str

    @property
    def audit_key(self) -> dg.AssetKey:
        return dg.AssetKey([AUDIT_SCHEMA, self.table])

    @property
    def gates(self) -> list[str]:
        return [CONTRACT_GATE, REFERENCES_GATE, SOURCE_RULES_GATE] if self.table == "purchases" else [CONTRACT_GATE]


CUSTOMERS = Dataset("customers", contracts.Customer, "Everyone who can buy from the shop, with demographics and PII.")
PRODUCTS = Dataset("products", contracts.Product, "The catalogue: every product and the category it is sold under.")
PURCHASES = Dataset("purchases", contracts.Purchase, "Every order line: who bought what, when, how many and for how much.")
DATASETS = (CUSTOMERS, PRODUCTS, PURCHASES)


class LandingConfig(dg.Config):
    """Purchase files from the landing folder to add to this load (the landing sensor sets it)."""

    landing_files: list[str] = []
    delta: bool = False
    """Incremental: land only ``landing_files`` (not the sources and earlier files) and publish
    them as an upsert by purchase_id into the published purchases. Purchases only."""
    withdraw_missing_landing_files: bool = False
    """A full purchase load fails when files this warehouse accepted are missing from the landing
    archive (their published lines would be dropped). True drops them on purpose, recorded as
    ``withdrawn`` in ``audit.landing_files``."""
    withdraw_accepted_landing_files: bool = False
    """True drops every accepted landing file from this full load and every later one (recorded
    ``withdrawn``): after upstream extracted the source files again with their lines, corrected or
    cancelled, which the landing files would otherwise override."""


def _landing_asset(ds: Dataset) -> dg.AssetsDefinition:
    @dg.asset(
        key=ds.audit_key,
        group_name=GROUP,
        owners=[OWNER],
        kinds={"duckdb", "csv", "parquet"},
        pool="duckdb",
        tags={"layer": "audit"},
        description=(
            f"New {ds.table} input exactly as received, waiting for its quality gates. {ds.meaning} "
            "Nothing reads this table except the gates and the publish step."
        ),
        metadata={"dagster/column_schema": contracts.table_schema(ds.contract)},
    )
    def _land(
        context: dg.AssetExecutionContext, config: LandingConfig, duckdb: DuckDBResource, input_files: InputFiles
    ) -> dg.MaterializeResult:
        try:
            input_format = input_files.checked_format()
        except ValueError as exc:
            raise rule_failure("input_format_supported", str(exc)) from exc
        adapter = input_format.land[ds.table] if input_format.land else None
        try:
            if config.delta and ds is PURCHASES and not adapter:
                files = []  # an increment reads its landing files only, never the sources
            else:
                files = find_source_files(input_files.path()) if adapter else find_files(input_files.path(), ds.table)
        except InputMissingError as exc:
            raise rule_failure("input_present", f"Input missing for {ds.table}: {exc}") from exc
        except InputAmbiguousError as exc:
            raise rule_failure("one_input_per_dataset", f"{ds.table}: {exc}") from exc
        if adapter and config.landing_files:
            raise rule_failure(
                "landing_files_canonical_only",
                f"landing files hold canonical purchase lines; the input format is {input_format.name}",
            )
        if config.delta and (ds is not PURCHASES or not config.landing_files):
            raise rule_failure(
                "delta_needs_landing_files",
                "an incremental (delta) load adds landing files to the purchases; "
                f"give landing_files and select audit/purchases (this is {ds.table})",
            )
        findings = []
        if ds is PURCHASES and not adapter:
            # Published files whose archiving was interrupted: archived now, so this load reads them.
            with connect(duckdb) as conn:
                landing_files.archive_published(conn, input_files.landing_path(), context.run.run_id)
        with connect(duckdb) as conn, transaction(conn):
            try:
                if adapter:
                    report, findings = adapter(conn, files, input_files.adapter_options())
                elif config.delta:
                    report = landing_files.land_delta(
                        conn, input_files.landing_path(), config.landing_files,
                        contracts.column_names(ds.contract), context.run.run_id, contract_types=contract_types(ds),
                        required_columns=contracts.required_column_names(ds.contract),
                    )
                else:
                    report = land(conn, ds.table, files, contracts.column_names(ds.contract), contract_types=contract_types(ds))
                if ds is PURCHASES and not adapter and not config.delta:  # plus accepted and new landing-folder files, upserted by purchase_id
                    report = landing_files.add_landed_files(
                        conn, report, input_files.landing_path(), config.landing_files,
                        contracts.column_names(ds.contract), context.run.run_id, contract_types=contract_types(ds),
                        withdraw_missing=config.withdraw_missing_landing_files,
                        required_columns=contracts.required_column_names(ds.contract),
                        withdraw_accepted=config.withdraw_accepted_landing_files,
                    )
                elif config.landing_files and ds is not PURCHASES:
                    raise ValueError(f"landing files hold purchase lines only, not {ds.table}")
            except landing_files.LandingColumnsMissingError as exc:
                raise rule_failure(
                    "schema:column_present", f"{ds.table}: {exc}", {"file": exc.file, "missing": exc.missing}
                ) from exc
            except landing_files.AcceptedFilesMissingError as exc:
                raise rule_failure(
                    "accepted_landing_files_present", f"{ds.table}: {exc}",
                    {"missing": exc.missing, "archive": str(exc.archive or "")},
                ) from exc
            except SourceLayoutError as exc:
                raise rule_failure(
                    "source_layout", f"{ds.table}: {exc}",
                    {"input_format": input_format.name, "files": [str(f) for f in files]},
                ) from exc
            except (InputMissingError, DuckDBError, ValueError) as exc:
                raise rule_failure(
                    "readable_input",
                    f"Could not read {ds.table} input "
                    f"({', '.join(f.name for f in files) or ', '.join(config.landing_files)}): {exc}",
                    {"files": [str(f) for f in files]},
                ) from exc
            mode = audit_log.DELTA if config.delta else audit_log.FULL
            audit_log.record_load(
                conn, ds.table, report.rows, ", ".join(map(str, report.files)), context.run.run_id, input_format.name, mode,
                fingerprint=audit_log.files_fingerprint(report.files),
            )
            preview = conn.execute(f"select * from {AUDIT_SCHEMA}.{ds.table} limit 5").df()
        if report.extra_columns:
            context.log.warning(f"{ds.table}: columns outside the contract are kept in audit only: {report.extra_columns}")
        for warning in report.warnings:
            context.log.warning(f"{ds.table}: {warning}")
        for finding in findings:
            context.log.info(f"{ds.table}: {finding.rule} on {finding.column}: {finding.count} ({finding.action})")
        adapter_metadata = {
            "source_rules_applied": dg.MetadataValue.json([f.as_dict() for f in findings]),
            "source_rules_table": dg.MetadataValue.md(markdown(pd.DataFrame([f.as_dict() for f in findings]))),
        } if adapter else {}
        return dg.MaterializeResult(
            metadata={
                "input_format": input_format.name,
                "load_mode": mode,
                **adapter_metadata,
                "dagster/row_count": report.rows,
                "dagster/uri": uri(duckdb, ds.table, AUDIT_SCHEMA),
                "source_files": [str(f) for f in report.files],
                "columns_received": report.columns,
                "columns_not_in_contract": report.extra_columns,
                "contract_columns_missing": report.missing_columns,
                "rejected_lines": report.rejected_lines,
                "warnings": report.warnings,
                "preview": dg.MetadataValue.md(markdown(preview)),
            }
        )

    return _land


def purchase_contract_for_load(conn: duckdb.DuckDBPyConnection) -> pa.DataFrameSchema:
    """The purchase contract for the format of the current purchase load: the columns that
    format cannot fill (e.g. ``amount`` in a basket log) may be null; every other rule holds."""
    input_format = get_format(audit_log.current_format(conn, PURCHASES.table))
    return contracts.purchase_contract(input_format.capabilities.unknown_purchase_columns())


def _contract_gate(ds: Dataset) -> dg.AssetChecksDefinition:
    return build_gate_check(
        asset=ds.audit_key,
        name=CONTRACT_GATE,
        dataset=ds.table,
        contract=purchase_contract_for_load if ds is PURCHASES else ds.contract,
        table=f"{AUDIT_SCHEMA}.{ds.table}",  # validated in the warehouse: one scan, any size
        extra_failures_sql=rejects_as_failure_cases_sql(ds.table),
        description=(
            f"Blocking gate: {ds.table} meets its contract (required columns and types, no null or blank "
            "keys, unique keys, valid values, every line parseable)."
        ),
    )


PURCHASE_REFERENCES = pa.DataFrameSchema(
    {"customer_id": pa.Column(str, nullable=True), "product_id": pa.Column(str, nullable=True)},
    name="purchase_references",
)


def is_delta_load(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the current purchase load is an incremental (delta) load."""
    return audit_log.current_mode(conn, PURCHASES.table) == audit_log.DELTA


def reference_tables(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Where the purchases' customers and products are looked up (qualified tables by id column).

    A full load publishes all three inputs together, so its purchases must name customers and
    products of the same load (``audit``). An incremental load publishes its purchases only, into
    the published history, so they must name published customers and products (``main``): the
    current customer or product load may be one that failed its own gate and will never publish,
    and it must not reject (or admit) the increment."""
    delta = is_delta_load(conn)
    if delta and not (table_exists(conn, CUSTOMERS.table) and table_exists(conn, PRODUCTS.table)):
        raise ValueError("an incremental (delta) load adds to published inputs, and none are published yet: run a full load first")
    schema = PUBLISHED_SCHEMA if delta else AUDIT_SCHEMA
    return {"customer_id": f"{schema}.{CUSTOMERS.table}", "product_id": f"{schema}.{PRODUCTS.table}"}


def reference_basis(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """What a references verdict was reached against (see :func:`reference_tables`): the current
    customer and product loads, or, for an incremental load, the current publish."""
    return [audit_log.PUBLISHED_INPUTS] if is_delta_load(conn) else [CUSTOMERS.table, PRODUCTS.table]


def missing_references_sql(conn: duckdb.DuckDBPyConnection, sample_per_rule: int = 20) -> str:
    """Referential integrity in the warehouse: purchases whose customer or product is not among
    the customers or products they are checked against (:func:`reference_tables`), as
    pandera-shaped failure cases (check ``exists_in_customer`` / ``exists_in_product``, the id, the
    purchase's rowid) with each rule's total in ``count`` and at most ``sample_per_rule`` listed.
    One hash anti-join per reference."""
    tables = reference_tables(conn)
    checks = {"customer_id": "exists_in_customer", "product_id": "exists_in_product"}
    missing = " union all ".join(
        f"select '{checks[column]}' as check, '{column}' as column, p.{column} as failure_case, p.rowid as index "
        f"from {AUDIT_SCHEMA}.purchases p "
        f"where p.{column} is not null and not exists (select 1 from {table} t where t.{column} = p.{column})"
        for column, table in tables.items()
    )
    return (
        f'select "check", "column", failure_case, "index", count(*) over (partition by "check") as count from ({missing}) '
        f'qualify row_number() over (partition by "check" order by "index") <= {sample_per_rule}'
    )


references_gate = build_gate_check(
    asset=PURCHASES.audit_key,
    name=REFERENCES_GATE,
    dataset=PURCHASES.table,
    contract=PURCHASE_REFERENCES,
    table=f"{AUDIT_SCHEMA}.purchases",
    extra_failures_sql=missing_references_sql,
    additional_deps=[CUSTOMERS.audit_key, PRODUCTS.audit_key],
    depends_on=reference_basis,
    require_rows=False,  # an empty purchase input is the contract gate's finding, not a broken reference
    description=(
        "Blocking gate: every purchase names a customer and a product that exist in the same load "
        "(an incremental load: among the published customers and products)."
    ),
)


@dg.asset_check(
    asset=PURCHASES.audit_key,
    name=SOURCE_RULES_GATE,
    blocking=True,
    pool="duckdb",
    description=(
        "Blocking gate: the source file meets the validity rules of its own layout before it is mapped. "
        "spend_summary: invalid_count(<spend column>) = 0 for every Mnt* column (a number, present, >= 0); "
        "basket_log: every row names a customer, a date and an item; canonical: nothing beyond the contract."
    ),
)
def source_rules(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    table = f"{AUDIT_SCHEMA}.{source_table(PURCHASES.table)}"
    extra: dict[str, object] = {}
    try:
        with connect(duckdb) as conn:
            require_own_load(conn, PURCHASES.table, context.run.run_id)
            input_format = get_format(audit_log.current_format(conn, PURCHASES.table))
            extra["input_format"] = input_format.name
            if input_format.source_contract is None:  # canonical: the contract gate is the whole rule set
                report = GateReport(f"{input_format.name}_source", row_count(conn, PURCHASES.table, AUDIT_SCHEMA) or 0)
            else:
                columns = [r[0] for r in conn.execute(f"describe {table}").fetchall()]
                schema = input_format.source_contract(columns)
                report = validate_table(conn, table, schema)
                counts = report.counts()
                extra.update({f"invalid_count({c})": sum(by_column.get(c, 0) for by_column in counts.values())
                              for c in schema.columns})
            audit_log.record_gate(conn, PURCHASES.table, SOURCE_RULES_GATE, report.passed, report.failing_count, context.run.run_id)
    except dg.Failure:
        raise  # no verdict: the load this run landed is gone
    except Exception as exc:  # always return a result: no result would mean no block
        report = GateReport(contract=SOURCE_RULES_GATE, rows_checked=0, error=f"{type(exc).__name__}: {exc}")
    gate = f"Gate {PURCHASES.audit_key.to_user_string()}:{SOURCE_RULES_GATE}"
    if report.passed:
        context.log.info(f"{gate} passed: {report.summary()}")
    else:  # worded as every other gate's failure, with its sample of offending rows
        context.log.error(report.with_sample(f"{gate} FAILED: {report.summary()}"))
    return check_result(report, extra_metadata=extra)


def _row_count_drop_check(ds: Dataset) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=ds.audit_key,
        name=ROW_COUNT_DROP,
        blocking=False,
        pool="duckdb",
        description=(
            f"Soft signal (WARN, never blocks): the new {ds.table} input has fewer than "
            f"{MAX_ROW_COUNT_DROP:.0%} of the rows currently published."
        ),
    )
    def _check(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource) -> dg.AssetCheckResult:
        try:
            with connect(duckdb) as conn:
                require_own_load(conn, ds.table, context.run.run_id)
                new = row_count(conn, ds.table, AUDIT_SCHEMA) or 0
                published = row_count(conn, ds.table)
                delta = audit_log.current_mode(conn, ds.table) == audit_log.DELTA
        except dg.Failure:
            raise  # the load this run landed is gone: no signal about another run's load
        except Exception as exc:
            report = GateReport(contract=ROW_COUNT_DROP, rows_checked=0, error=f"{type(exc).__name__}: {exc}")
            return check_result(report, severity=dg.AssetCheckSeverity.WARN)
        if delta:  # an increment is small by design: it adds to the published rows, it does not replace them
            return dg.AssetCheckResult(
                passed=True, severity=dg.AssetCheckSeverity.WARN,
                metadata={"new_rows": new, "published_rows": published or 0, "load_mode": audit_log.DELTA},
                description=f"{ds.table}: incremental load of {new} rows, added to {published or 0} published rows",
            )
        ratio = None if not published else new / published
        passed = ratio is None or ratio >= MAX_ROW_COUNT_DROP
        if not passed:  # never blocks, so say it where people look: the run's log and the alerts table
            gate = f"{ds.audit_key.to_user_string()}:{ROW_COUNT_DROP}"
            message = (
                f"the new {ds.table} input has {new} rows, {ratio:.0%} of the {published} published; this check "
                "never blocks, so it is published if its gates pass. If the input was cut short, put the full "
                "file back and refresh again."
            )
            context.log.warning(f"{gate}: {message}")
            with connect(duckdb) as conn:
                alerts.write_alerts(conn, [alerts.Alert(
                    context.run.run_id, context.run.job_name, f"{ds.audit_key.to_python_identifier()}_{ROW_COUNT_DROP}",
                    gate, f"WARN: {message}",
                )])
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"new_rows": new, "published_rows": published if published is not None else -1,
                      "ratio": float(ratio) if ratio is not None else 1.0},
            description=None if passed else f"{ds.table}: {new} new rows vs {published} published ({ratio:.0%})",
        )

    return _check


SQL_TYPES = {"string": "varchar", "bigint": "bigint", "double": "double", "timestamp": "timestamp"}


def contract_types(ds: Dataset) -> dict[str, str]:
    """The contract's DuckDB type of each column of ``ds``, as published."""
    return {column.name: SQL_TYPES[column.type] for column in contracts.table_schema(ds.contract).columns}


def typed_select(conn: duckdb.DuckDBPyConnection, ds: Dataset) -> str:
    """Cast the audit table's columns to the contract's types, in contract column order (a no-op
    for a column that landed already typed)."""
    present = {r[0] for r in conn.execute(f"describe {AUDIT_SCHEMA}.{ds.table}").fetchall()}
    parts = []
    for name, sql_type in contract_types(ds).items():
        source = f'"{name}"' if name in present else "null"
        parts.append(f'cast({source} as {sql_type}) as "{name}"')
    return f"select {', '.join(parts)} from {AUDIT_SCHEMA}.{ds.table}"


def _published_spec(ds: Dataset) -> dg.AssetSpec:
    tags = {"layer": "published", "data_product": "cross_sell"}
    if contracts.pii_columns(ds.contract):
        tags["contains_pii"] = "true"
    return dg.AssetSpec(
        key=ds.table,
        deps=[ds.audit_key],
        group_name=GROUP,
        owners=[OWNER],
        kinds={"duckdb"},
        tags=tags,
        description=f"{ds.meaning} Published only after every gate passed; typed to the contract.",
        metadata={"dagster/column_schema": contracts.table_schema(ds.contract)},
    )


def upsert_purchases(conn: duckdb.DuckDBPyConnection) -> int:
    """Publish a delta load, in the caller's transaction: replace the published lines that share a
    purchase_id with the new ones and add the rest, in the table that holds the published rows.
    Returns how many published lines it replaced."""
    target = publication.published_rows(conn, PURCHASES.table)
    replaced = conn.execute(
        f"delete from {target} where purchase_id in (select purchase_id from {AUDIT_SCHEMA}.purchases)"
    ).fetchall()[0][0]
    delta = set(table_columns(conn, PURCHASES.table, AUDIT_SCHEMA))
    # An optional contract column the published rows lack but the new lines hold (a history
    # without `channel`, a delta with it): added, so the new values are kept as a full load keeps them.
    publication.add_contract_columns(conn, PURCHASES.table, target, contract_types(PURCHASES), delta)
    columns = [(name, kind) for name, kind, *_ in conn.execute(f"describe {target}").fetchall() if name in delta]
    select = ", ".join(f"cast({quoted(name)} as {kind}) as {quoted(name)}" for name, kind in columns)
    conn.execute(f"insert into {target} by name select {select} from {AUDIT_SCHEMA}.purchases")
    return int(replaced)


@dg.multi_asset(
    specs=[_published_spec(ds) for ds in DATASETS], name="publish_inputs", pool="duckdb", can_subset=True
)
def publish_inputs(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, input_files: InputFiles
) -> Iterator[dg.MaterializeResult]:
    """Publish the audited inputs together, in one transaction, if and only if all their gates
    passed. A delta load of purchases (an incremental run) is upserted instead, on its own: it
    needs only the purchase gates (its references were checked against the published customers
    and products), so a customer or product load that failed its gate does not hold it back."""
    selected = {key.path[-1] for key in context.selected_asset_keys}
    with connect(duckdb) as conn:
        for ds in DATASETS:  # never another run's load in place of the one this run landed
            require_own_load(conn, ds.table, context.run.run_id)
        delta = is_delta_load(conn)
        if delta and selected != {PURCHASES.table}:
            raise rule_failure(
                "publish_delta_alone",
                "The current purchase load is incremental (delta): it is upserted into the published "
                f"purchases on its own; select purchases alone (selected: {', '.join(sorted(selected))}), "
                "or land all three inputs again for a full load",
            )
        if not delta and selected != {ds.table for ds in DATASETS}:
            retry = (
                ". If this retries the publish of an increment (a landing file): a full load has landed since, "
                "so the increment can no longer be published on its own; touch its landing file (or drop it "
                "again) so the landing sensor lands it anew"
            ) if selected == {PURCHASES.table} else ""
            raise rule_failure(
                "publish_together",
                "A full load publishes customers, products and purchases together, in one transaction; "
                f"select all three (selected: {', '.join(sorted(selected))}){retry}",
            )
        to_publish = [PURCHASES] if delta else list(DATASETS)
        missing = {ds.table: audit_log.gates_not_passed(conn, ds.table, ds.gates) for ds in to_publish}
        missing = {table: gates for table, gates in missing.items() if gates}
        if missing:
            raise dg.Failure(
                description="Refusing to publish: the current audit loads have not passed their gates: "
                + "; ".join(f"{t}: " + ", ".join(f"{g} ({why})" for g, why in gates.items()) for t, gates in missing.items())
                + ". Land and gate the inputs again (--select 'group:ingest'), or fix what failed first.",
                metadata={"gates_not_passed": dg.MetadataValue.json({t: list(g) for t, g in missing.items()}),
                          "why": dg.MetadataValue.json(missing)},
            )
        formats = {ds.table: audit_log.current_format(conn, ds.table) for ds in to_publish}
        if delta:  # the increment joins the published inputs, so it must be in their format
            formats["published"] = published_capabilities(conn)[0]
        if len(set(formats.values())) > 1:
            raise dg.Failure(
                description="Refusing to publish: the loads were read in different input formats: "
                + ", ".join(f"{t}: {f}" for t, f in formats.items()) + ". Land all three again in one format.",
                metadata={"input_formats": dg.MetadataValue.json(formats)},
            )
        input_format = formats[PURCHASES.table]
        full = [] if delta else list(DATASETS)
        extra: dict[str, dict] = {ds.table: {"load_mode": audit_log.FULL} for ds in full}
        with transaction(conn):  # everything this step publishes, or nothing
            published = {
                ds.table: publication.publish_load(conn, ds.table, contract_types(ds), typed_select(conn, ds)) for ds in full
            }
            counts = {table: rows for table, (rows, _) in published.items()}
            for table, (_, how) in published.items():
                extra[table]["published"] = how
            replace_table(conn, FORMAT_TABLE, publish_format_sql(input_format))
            if delta:
                replaced = upsert_purchases(conn)
                counts[PURCHASES.table] = row_count(conn, PURCHASES.table)
                extra[PURCHASES.table] = {"load_mode": audit_log.DELTA, "replaced_rows": replaced,
                                          "delta_rows": row_count(conn, PURCHASES.table, AUDIT_SCHEMA)}
            publish_id = audit_log.record_publish(conn, context.run.run_id)
            # The landing files of the published load are part of the published purchases from now
            # on, whichever run published them; moved to the archive right after.
            landing_files.mark_published(
                conn, audit_log.current_load_run(conn, PURCHASES.table), context.run.run_id, publish_id
            )
        archived = landing_files.archive_published(conn, input_files.landing_path(), context.run.run_id)
        span = conn.execute("select min(purchase_date), max(purchase_date) from purchases").fetchone()
        loads = {ds.table: audit_log.current_load(conn, ds.table) for ds in DATASETS}
    for ds in DATASETS:
        if ds.table not in selected:
            continue
        metadata = {"dagster/row_count": counts[ds.table], "dagster/uri": uri(duckdb, ds.table),
                    "load_id": loads[ds.table], "publish_id": publish_id, **extra[ds.table]}
        if ds is PURCHASES:
            metadata["landing_files_archived"] = [a.file for a in archived]
            metadata["input_format"] = input_format
            metadata["first_purchase"] = str(span[0])
            metadata["newest_purchase"] = str(span[1])
        yield dg.MaterializeResult(asset_key=ds.table, metadata=metadata)


landing_assets = [_landing_asset(ds) for ds in DATASETS]
gate_checks = [_contract_gate(ds) for ds in DATASETS] + [references_gate, source_rules]
soft_checks = [_row_count_drop_check(ds) for ds in DATASETS]
