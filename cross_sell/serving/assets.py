"""Serving stage: the semantic views, the masked marketing database, Parquet exports and the manifest.

Thin wiring over :mod:`semantic`, :mod:`roles`, :mod:`exports` and :mod:`manifest`. Every step
reads or writes the warehouse, so every step is in pool ``duckdb``. Where things land is in
:mod:`cross_sell.serving.locations` (beside the warehouse unless configured).
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb as duckdb_lib
import pandas as pd
from dagster_duckdb import DuckDBResource

from cross_sell.serving import exports as ex
from cross_sell.serving import locations
from cross_sell.serving import manifest as mf
from cross_sell.serving import roles
from cross_sell.serving.semantic import MODEL, SCHEMA, View, build_views, render_reference, verify_views, view_sql
from cross_sell.warehouse import connect, markdown, transaction

OWNER = "team:customer-analytics"
GROUP = "serving"
TAGS = {"data_product": "cross_sell"}
VIEW_CHECK = "conforms_to_spec"
PII_CHECK = "no_pii"
EXPORT_CHECK = "checksums_match"
PREVIEW_ROWS = 5


def view_key(view: View) -> dg.AssetKey:
    return dg.AssetKey([SCHEMA, view.name])


VIEW_KEYS = [view_key(v) for v in MODEL.views]


def _column_schema(view: View) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type.lower(),
                description=c.description + (f" Marketing sees {c.mask.masked_name(c.name)}: {c.mask.explain()}." if c.mask else ""),
                constraints=dg.TableColumnConstraints(nullable=c.role != "key"),
                tags={"pii": "true", "role": c.role} if c.mask else {"role": c.role},
            )
            for c in view.columns
        ]
    )


def _view_spec(view: View) -> dg.AssetSpec:
    tags = {**TAGS, "layer": "semantic", "semantic_kind": view.kind}
    if view.has_pii:
        tags["contains_pii"] = "true"
    return dg.AssetSpec(
        key=view_key(view),
        deps=list(view.depends_on),
        group_name=GROUP,
        owners=[OWNER],
        kinds={"duckdb", "sql"},
        tags=tags,
        description=(
            f"{view.description} One row per {', '.join(view.grain)}. The analyst role reads the view "
            f"{view.qualified}; the marketing role reads the masked table main.{view.name} in its own database."
        ),
        metadata={"dagster/column_schema": _column_schema(view), "dagster/table_name": view.qualified},
    )


class ViewsRejectedError(Exception):
    """Raised when the rebuilt views do not match the spec; the previous views stay."""


@dg.multi_asset(
    name="semantic_views",
    specs=[_view_spec(v) for v in MODEL.views],
    check_specs=[
        dg.AssetCheckSpec(
            VIEW_CHECK,
            asset=view_key(v),
            blocking=True,
            description=(
                "Blocking: the view matches the semantic model spec (columns and types), its grain is "
                "unique and never null, and every relationship that starts at it resolves."
            ),
        )
        for v in MODEL.views
    ],
    pool="duckdb",
    can_subset=True,
)
def semantic_views(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The semantic layer: business-named views of the data product (total spend, purchase
    frequency, lifetime value, cross-sell opportunities, category affinity, and the customer,
    product and category dimensions), built from one spec that also documents them. Analysts and
    BI tools query these instead of the raw tables.

    A selection that takes only some views (``cross_sell_model*``, say) rebuilds and checks the
    whole layer, whose views refer to each other, and reports the selected ones."""
    selected = [v for v in MODEL.views if view_key(v) in context.selected_asset_keys]
    reports: dict = {}
    try:
        with connect(duckdb) as conn:
            with transaction(conn):
                build_views(conn)
                reports = verify_views(conn)
                if not all(r.passed for r in reports.values()):
                    raise ViewsRejectedError
            previews = {
                v.name: conn.execute(f"select * from {v.qualified} limit {PREVIEW_ROWS}").df()
                for v in selected
                if not v.has_pii  # personal data never goes into run metadata
            }
    except ViewsRejectedError:
        for v in selected:
            report = reports[v.name]
            yield dg.AssetCheckResult(
                asset_key=view_key(v), check_name=VIEW_CHECK, passed=report.passed,
                metadata={"problems": dg.MetadataValue.json(list(report.problems))},
                description="; ".join(report.problems) or None,
            )
        problems = {name: list(r.problems) for name, r in reports.items() if r.problems}
        raise dg.Failure(description=f"Semantic views not published (previous views kept): {problems}") from None

    page = render_reference()
    reference = locations.export_dir(duckdb.database) / mf.REFERENCE_NAME
    ex.write_text_atomically(reference, page)
    for v in selected:
        report = reports[v.name]
        metadata = {
            "dagster/row_count": report.rows,
            "dagster/uri": f"duckdb:///{duckdb.database}?table={v.qualified}",
            "definition": dg.MetadataValue.md(f"```sql\n{view_sql(v)}\n```"),
            "marketing_columns": roles.marketing_columns(v),
            "reference_page": dg.MetadataValue.path(str(reference)),
        }
        if v.name in previews:
            metadata["preview"] = dg.MetadataValue.md(markdown(previews[v.name]))
        yield dg.MaterializeResult(
            asset_key=view_key(v),
            metadata=metadata,
            check_results=[dg.AssetCheckResult(asset_key=view_key(v), check_name=VIEW_CHECK, passed=True, metadata={"rows": report.rows})],
        )


@dg.asset(
    deps=VIEW_KEYS,
    group_name=GROUP,
    owners=[OWNER],
    kinds={"duckdb"},
    pool="duckdb",
    tags={**TAGS, "role": "marketing"},
    check_specs=[
        dg.AssetCheckSpec(
            PII_CHECK,
            asset="marketing_database",
            blocking=True,
            description=(
                "Blocking: every column of every table and view in the new marketing file was scanned; it "
                "holds only the masked semantic views and none of the warehouse's personal data (no e-mail, "
                "phone, full name or masking key anywhere; no name, birth year or income next to its customer). "
                "A file that fails is never published."
            ),
        )
    ],
)
def marketing_database(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The marketing role's own database: every semantic view as a table with personal data masked
    (e-mail and phone as keyed hashes, names as initials, income and age as bands) and no base table.
    Campaign tools and marketing analysts connect to this file; it cannot reach the raw data."""
    target = locations.marketing_database(duckdb.database)
    with connect(duckdb) as conn:
        staging, counts = roles.build_marketing_database(conn, target)
        try:
            leaks = roles.find_pii_leaks(conn, staging)
        except BaseException:
            roles.discard(staging)
            raise
    findings = pd.DataFrame([vars(leak) for leak in leaks], columns=["relation", "column", "kind", "matches", "detail"])
    check = dg.AssetCheckResult(
        check_name=PII_CHECK,
        passed=not leaks,
        metadata={
            "relations_scanned": len(counts),
            "rows_scanned": sum(counts.values()),
            "findings": dg.MetadataValue.md(markdown(findings)),
        },
        description=None if not leaks else f"{len(leaks)} findings; the marketing file was not replaced",
    )
    if leaks:
        roles.discard(staging)
        yield check
        raise dg.Failure(description=f"Marketing database not published: personal data found: {leaks[:5]}")
    roles.publish_marketing_database(staging, target)
    tables = pd.DataFrame(
        {"table": [f"main.{n}" for n in counts], "rows": list(counts.values()),
         "columns": [", ".join(roles.marketing_columns(MODEL.view(n))) for n in counts]}
    )
    yield dg.MaterializeResult(
        metadata={
            "dagster/uri": f"duckdb:///{target}",
            "path": dg.MetadataValue.path(str(target)),
            "dagster/row_count": sum(counts.values()),
            "tables": dg.MetadataValue.md(markdown(tables)),
            "masking": dg.MetadataValue.md(
                "\n".join(
                    f"* `{c.name}` → `{c.mask.masked_name(c.name)}`: {c.mask.explain()}"
                    for v in MODEL.views for c in v.columns if c.mask
                )
            ),
        },
        check_results=[check],
    )


@dg.asset(
    deps=[e.table for e in ex.EXPORTS],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"parquet", "duckdb"},
    pool="duckdb",
    tags=TAGS,
)
def parquet_exports(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """The consumer outputs as Parquet files (recommendations, scores, affinity, customer metrics)
    for tools that read files rather than databases. Each file is replaced atomically, and an index
    lists every file with its row count and SHA-256 checksum. No personal data is exported."""
    out = locations.export_dir(duckdb.database)
    with connect(duckdb) as conn:
        index = ex.export_tables(conn, out, run_id=context.run.run_id)
    files = pd.DataFrame(index["files"])[["file", "rows", "bytes", "sha256"]]
    fingerprint = ex.data_fingerprint(index)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "dagster/row_count": int(files["rows"].sum()),
            "files": dg.MetadataValue.md(markdown(files)),
            "index": dg.MetadataValue.json(index),
            "data_fingerprint": fingerprint,
        },
        data_version=dg.DataVersion(fingerprint),
    )


@dg.asset_check(
    asset=parquet_exports,
    name=EXPORT_CHECK,
    blocking=True,
    # Automation requests a check defined apart from its asset only by the check's own condition:
    # without one, the exports refreshed by automation were never verified, and the manifest, which
    # waits for its inputs' blocking checks, was never refreshed again.
    automation_condition=dg.AutomationCondition.eager(),
    description="Blocking: every exported file exists and matches the row count and SHA-256 checksum in its index.",
)
def exports_match_index(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    out = locations.export_dir(duckdb.database)
    try:
        problems = ex.verify_exports(out)
        checked = len(ex.read_index(out)["files"])
    except Exception as exc:  # an unreadable index fails the check instead of skipping it
        problems, checked = [f"{type(exc).__name__}: {exc}"], 0
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"files_checked": checked, "problems": dg.MetadataValue.json(problems)},
        description="; ".join(problems) or None,
    )


def _marketing_counts(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise FileNotFoundError(f"no marketing database at {path}: materialize marketing_database first")
    with duckdb_lib.connect(str(path), read_only=True) as conn:
        names = [r[0] for r in conn.execute("select table_name from duckdb_tables() order by 1").fetchall()]
        return {n: int(conn.execute(f'select count(*) from main."{n}"').fetchone()[0]) for n in names}


@dg.asset(
    deps=[*VIEW_KEYS, marketing_database, parquet_exports],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"yaml"},
    pool="duckdb",
    tags=TAGS,
)
def data_product_manifest(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """The data product's identity card: name, version, owner, domain and use cases, what it reads,
    what it serves (tables, views, the marketing database, files) and where, its SLOs and its latest
    quality results. Catalogs and new consumers start here."""
    warehouse = Path(duckdb.database)
    out = locations.export_dir(warehouse)
    marketing = locations.marketing_database(warehouse)
    repository = mf.project_repository()
    with connect(duckdb) as conn:
        inputs, output_tables = mf.catalog(repository, conn)
        views = mf.views_section(conn)
        gates = mf.gate_history(conn)
        data = mf.data_section(conn)
    checks = mf.latest_check_results(context.instance, repository)
    manifest = mf.build_manifest(
        warehouse=warehouse,
        marketing_database=marketing,
        export_dir=out,
        inputs=inputs,
        output_tables=output_tables,
        views=views,
        data=data,
        marketing_tables=_marketing_counts(marketing),
        export_index=ex.read_index(out),
        slos=mf.slo_section(repository),
        quality=mf.quality_section(checks, gates),
        run_id=context.run.run_id,
    )
    text = mf.to_yaml(manifest)
    path = out / mf.MANIFEST_NAME
    ex.write_text_atomically(path, text)
    summary = manifest["quality"]["summary"]
    return dg.MaterializeResult(
        metadata={
            "version": manifest["version"],
            "data_fingerprint": manifest["data_fingerprint"],
            "path": dg.MetadataValue.path(str(path)),
            "checks_passed": summary["passed"],
            "checks_failed": len(summary["failed"]),
            "all_blocking_checks_passed": summary["all_blocking_checks_passed"],
            "manifest": dg.MetadataValue.md(f"```yaml\n{text}```"),
        },
    )


serving_assets = [semantic_views, marketing_database, parquet_exports, data_product_manifest]
serving_checks = [exports_match_index]
