"""The data product manifest: what the product is, who owns it, where to get it, what it promises.

The manifest (``data_product.yaml`` in the export folder, and the materialization metadata of
``data_product_manifest`` in the UI) is assembled from the sources of truth, never typed in twice:

* name, owner, domain, use-case tags and description: :data:`PRODUCT`;
* inputs and output tables: the asset graph that is actually deployed (groups, descriptions,
  owners, column schemas), with row counts from the warehouse;
* views: the semantic model spec; marketing tables: the marketing database; files: the export index;
* SLOs: the SLO table (:mod:`cross_sell.slo`) and the freshness policies attached to the assets;
* quality: the latest evaluation of every asset check from the Dagster instance, and the gate
  history of the last days from ``audit.gate_log``.

``version`` is the package version plus a fingerprint of the interface (views, columns, types,
masking, files), so it changes whenever what consumers rely on changes; ``data_fingerprint``
changes whenever the served data changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import yaml

from cross_sell import __version__
from cross_sell.ingest.formats import published_capabilities
from cross_sell.metrics.logic import unavailable_metrics
from cross_sell.serving import api, locations
from cross_sell.serving import exports as exports_module
from cross_sell.serving.roles import ROLES, marketing_columns
from cross_sell.serving.semantic import MODEL, SemanticModel
from cross_sell.warehouse import table_exists

MANIFEST_NAME = locations.MANIFEST_NAME
REFERENCE_NAME = "semantic_model.md"
INPUT_GROUP = "ingest"
SERVING_GROUP = "serving"
GATE_HISTORY_DAYS = 7


@dataclass(frozen=True)
class ProductInfo:
    name: str
    title: str
    owner: str
    domain: str
    use_cases: tuple[str, ...]
    description: str


PRODUCT = ProductInfo(
    name="cross_sell",
    title="Product Affinity & Cross-Sell Opportunity",
    owner="team:customer-analytics",
    domain="customer-analytics",
    use_cases=("cross-sell", "next-best-offer", "campaign-targeting", "bundling", "customer-value"),
    description=(
        "Which product categories each customer is likely to buy next, and why. Serves the product "
        "affinity matrix (support, confidence, lift), a cross-sell opportunity score per customer and "
        "category not bought yet, top-N recommendations with reasons, and the customer metrics behind "
        "them (total spend, purchase frequency, lifetime value). Inputs pass blocking quality gates "
        "before anything is published; marketing reads a copy with personal data masked."
    ),
)


# ---------------------------------------------------------------------------------------------
# Plain values for YAML


def plain(value: Any) -> Any:
    """A YAML/JSON-safe copy: timedeltas as readable text, tuples as lists, dataclasses as dicts."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if seconds % 86400 == 0:
            return f"{seconds / 86400:g} d"
        return f"{seconds / 3600:g} h"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        describe = getattr(value, "describe", None)
        if callable(describe):
            return str(describe()).strip("`")
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


# ---------------------------------------------------------------------------------------------
# The deployed asset graph


def project_repository() -> dg.RepositoryDefinition:
    """The project's definitions as deployed (freshness policies and automation attached).

    Built from :func:`cross_sell.definitions.build_definitions` rather than read from the run
    context, because a run started with ``dagster.materialize`` carries no repository."""
    from cross_sell.definitions import build_definitions  # late: the definitions import this package

    return build_definitions().get_repository_def()


def _specs(repository: dg.RepositoryDefinition) -> dict[dg.AssetKey, dg.AssetSpec]:
    specs: dict[dg.AssetKey, dg.AssetSpec] = {}
    for assets_def in repository.assets_defs_by_key.values():
        for spec in assets_def.specs:
            specs[spec.key] = spec
    return specs


def _column_names(spec: dg.AssetSpec) -> list[str]:
    schema = (spec.metadata or {}).get("dagster/column_schema")
    return [c.name for c in schema.columns] if isinstance(schema, dg.TableSchema) else []


def _pii_columns(spec: dg.AssetSpec) -> list[str]:
    schema = (spec.metadata or {}).get("dagster/column_schema")
    if not isinstance(schema, dg.TableSchema):
        return []
    return [c.name for c in schema.columns if (c.tags or {}).get("pii") == "true"]


def _table_rows(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> int | None:
    exists = conn.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?", [schema, table]
    ).fetchone()[0]
    return int(conn.execute(f'select count(*) from "{schema}"."{table}"').fetchone()[0]) if exists else None


def _load_sources(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    if _table_rows(conn, "audit", "load_log") is None:
        return {}
    rows = conn.execute("select dataset, arg_max(source, loaded_at) from audit.load_log group by 1").fetchall()
    return {dataset: source for dataset, source in rows}


def catalog(repository: dg.RepositoryDefinition, conn: duckdb.DuckDBPyConnection) -> tuple[list[dict], list[dict]]:
    """(inputs, output tables) of the product, read from the deployed asset graph.

    Inputs are the ingest assets that something outside ingest reads; output tables are the assets
    of every other group except serving."""
    specs = _specs(repository)
    read_outside_ingest = {
        dep.asset_key for spec in specs.values() if spec.group_name != INPUT_GROUP for dep in spec.deps
    }
    sources = _load_sources(conn)
    inputs, outputs = [], []
    for key, spec in sorted(specs.items(), key=lambda kv: kv[0].to_user_string()):
        name = key.to_user_string()
        table = key.path[-1]
        entry: dict[str, Any] = {
            "name": name,
            "description": _first_paragraph(spec.description),
            "owners": list(spec.owners),
            "kinds": sorted(spec.kinds),
        }
        if spec.group_name == INPUT_GROUP and key in read_outside_ingest:
            entry.update(
                table=f"main.{table}",
                rows=_table_rows(conn, "main", table),
                columns=_column_names(spec),
                pii_columns=_pii_columns(spec),
                source=sources.get(table),
            )
            inputs.append(entry)
        elif spec.group_name not in (INPUT_GROUP, SERVING_GROUP):
            rows = _table_rows(conn, "main", table)
            entry.update(group=spec.group_name, columns=_column_names(spec))
            if rows is not None:
                entry.update(table=f"main.{table}", rows=rows)
            outputs.append(entry)
    return inputs, outputs


def data_section(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """What the outputs stand on, for readers who must not misread them: the input format, the
    metrics it cannot give (null for every customer, and why), the as-of date of the metrics, and
    how the current model was trained (a time split, whose scores speak of a purchase window, or
    the cross-sectional fallback, whose scores do not)."""
    input_format, caps = published_capabilities(conn)
    section: dict[str, Any] = {
        "input_format": input_format,
        "unavailable_metrics": unavailable_metrics(caps),
        "as_of": None,
        "model": None,
    }
    if table_exists(conn, "purchases"):
        section["as_of"] = conn.execute("select max(purchase_date) from main.purchases").fetchone()[0]
    if table_exists(conn, "model_registry"):
        row = conn.execute(
            """select version, strategy, estimator, cutoff, newest_purchase, label_window_days,
                      json_extract_string(metadata, '$.fallback_reason')
               from main.model_registry where is_current"""
        ).fetchone()
        if row is not None:
            names = ("version", "strategy", "estimator", "cutoff", "newest_purchase", "label_window_days", "fallback_reason")
            section["model"] = {k: v for k, v in zip(names, row) if v is not None}
    return section


# ---------------------------------------------------------------------------------------------
# SLOs


def describe_policy(policy: Any) -> dict[str, Any]:
    """A Dagster FreshnessPolicy as plain values."""
    if hasattr(policy, "fail_window"):
        warn = getattr(policy, "warn_window", None)
        return {
            "type": "time_window",
            "fail_window": plain(policy.fail_window.to_timedelta()),
            "warn_window": plain(warn.to_timedelta()) if warn is not None else None,
        }
    if hasattr(policy, "deadline_cron"):
        return {
            "type": "cron",
            "deadline_cron": policy.deadline_cron,
            "lower_bound": plain(policy.lower_bound_delta),
            "timezone": policy.timezone,
        }
    return {"type": type(policy).__name__, "policy": str(policy)}


def slo_section(repository: dg.RepositoryDefinition) -> dict[str, Any]:
    """The SLO table (:mod:`cross_sell.slo`) and the freshness policies the deployed assets carry."""
    from cross_sell import slo

    policies = [
        {"asset": key.to_user_string(), **describe_policy(spec.freshness_policy)}
        for key, spec in sorted(_specs(repository).items(), key=lambda kv: kv[0].to_user_string())
        if spec.freshness_policy is not None
    ]
    return {
        "objectives": [plain(s) for s in slo.SLOS],
        "freshness_policies_on_assets": policies,
    }


# ---------------------------------------------------------------------------------------------
# Quality


def _check_specs(repository: dg.RepositoryDefinition) -> dict[dg.AssetCheckKey, dg.AssetCheckSpec]:
    found: dict[dg.AssetCheckKey, dg.AssetCheckSpec] = {}
    defs: Iterable = [*repository.assets_defs_by_key.values(), *repository.asset_checks_defs_by_key.values()]
    for definition in defs:
        for spec in definition.check_specs:
            found[spec.key] = spec
    return found


def latest_check_results(instance: dg.DagsterInstance, repository: dg.RepositoryDefinition) -> list[dict[str, Any]]:
    """The latest evaluation of every asset check of the deployed graph, from the instance's history."""
    results = []
    for key, spec in sorted(_check_specs(repository).items(), key=lambda kv: (kv[0].asset_key.to_user_string(), kv[0].name)):
        record = instance.get_latest_asset_check_evaluation_record(key)
        evaluation = record.event.asset_check_evaluation if record is not None and record.event is not None else None
        entry: dict[str, Any] = {
            "asset": key.asset_key.to_user_string(),
            "check": key.name,
            "blocking": bool(spec.blocking),
            "status": "never evaluated" if record is None else record.status.value.lower(),
        }
        if evaluation is not None:
            entry.update(
                passed=bool(evaluation.passed),
                severity=evaluation.severity.value,
                evaluated_at=datetime.fromtimestamp(record.create_timestamp, tz=timezone.utc).isoformat(timespec="seconds"),
                run_id=record.run_id,
            )
            if evaluation.description:
                entry["description"] = evaluation.description
        results.append(entry)
    return results


def gate_history(conn: duckdb.DuckDBPyConnection, days: int = GATE_HISTORY_DAYS) -> dict[str, Any]:
    """Input gate verdicts of the last ``days`` days from ``audit.gate_log``."""
    if _table_rows(conn, "audit", "gate_log") is None:
        return {"window_days": days, "evaluations": 0, "passed": 0, "pass_rate": None, "latest": []}
    since = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=days)
    total, passed = conn.execute(
        "select count(*), count(*) filter (where passed) from audit.gate_log where evaluated_at >= ?", [since]
    ).fetchone()
    latest = conn.execute(
        """select dataset, gate, arg_max(passed, evaluated_at), arg_max(failing, evaluated_at), max(evaluated_at)
           from audit.gate_log group by 1, 2 order by 1, 2"""
    ).fetchall()
    return {
        "window_days": days,
        "evaluations": int(total),
        "passed": int(passed),
        "pass_rate": round(passed / total, 4) if total else None,
        "latest": [
            {"dataset": d, "gate": g, "passed": bool(p), "failing": int(f or 0), "evaluated_at": plain(t)}
            for d, g, p, f, t in latest
        ],
    }


def quality_section(checks: list[dict[str, Any]], gates: dict[str, Any]) -> dict[str, Any]:
    evaluated = [c for c in checks if "passed" in c]
    failed = [f"{c['asset']}:{c['check']}" for c in evaluated if not c["passed"]]
    blocking_failed = [f"{c['asset']}:{c['check']}" for c in evaluated if not c["passed"] and c["blocking"]]
    return {
        "summary": {
            "checks": len(checks),
            "evaluated": len(evaluated),
            "passed": len(evaluated) - len(failed),
            "failed": failed,
            "all_blocking_checks_passed": not blocking_failed and all(c["status"] != "never evaluated" for c in checks if c["blocking"]),
        },
        "checks": checks,
        "input_gates": gates,
    }


# ---------------------------------------------------------------------------------------------
# Outputs served by the serving group


def views_section(conn: duckdb.DuckDBPyConnection, model: SemanticModel = MODEL) -> list[dict[str, Any]]:
    return [
        {
            "name": view.qualified,
            "kind": view.kind,
            "grain": list(view.grain),
            "description": view.description,
            "rows": _table_rows(conn, "semantic", view.name),
            "columns": [c.name for c in view.columns],
            "roles": ["analyst"],
        }
        for view in model.views
    ]


def interface_fingerprint(model: SemanticModel, output_tables: list[dict], files: list[dict]) -> str:
    """Changes exactly when what consumers rely on changes: views, columns, types, masking, files."""
    interface = {
        "views": [
            {"name": v.name, "columns": [[c.name, c.type, c.mask.value if c.mask else None] for c in v.columns]}
            for v in model.views
        ],
        "marketing": {v.name: marketing_columns(v) for v in model.views},
        "tables": sorted([[t["name"], t.get("columns", [])] for t in output_tables]),
        "files": sorted([[f["file"], [[c["name"], c["type"]] for c in f["columns"]]] for f in files]),
    }
    return hashlib.sha256(json.dumps(interface, sort_keys=True).encode()).hexdigest()


def build_manifest(
    *,
    warehouse: Path,
    marketing_database: Path,
    export_dir: Path,
    inputs: list[dict],
    output_tables: list[dict],
    views: list[dict],
    data: dict | None = None,
    marketing_tables: dict[str, int],
    export_index: dict,
    slos: dict,
    quality: dict,
    run_id: str | None = None,
    model: SemanticModel = MODEL,
) -> dict[str, Any]:
    """The manifest as plain values, in the order a reader wants them."""
    files = export_index["files"]
    fingerprint = interface_fingerprint(model, output_tables, files)
    return plain(
        {
            "name": PRODUCT.name,
            "title": PRODUCT.title,
            "version": f"{__version__}+{fingerprint[:8]}",
            "data_fingerprint": exports_module.data_fingerprint(export_index),
            "owner": PRODUCT.owner,
            "domain": PRODUCT.domain,
            "tags": {"domain": PRODUCT.domain, "use_cases": list(PRODUCT.use_cases)},
            "description": PRODUCT.description,
            "generated_at": datetime.now(timezone.utc),
            "run_id": run_id,
            "inputs": inputs,
            "data": data or {},
            "outputs": {
                "tables": output_tables,
                "views": views,
                "marketing_tables": [
                    {"name": f"main.{name}", "rows": rows, "columns": marketing_columns(model.view(name)), "roles": ["marketing"]}
                    for name, rows in marketing_tables.items()
                ],
                "files": [
                    {k: f[k] for k in ("file", "table", "rows", "bytes", "sha256", "description")} for f in files
                ],
                "documents": [MANIFEST_NAME, REFERENCE_NAME, exports_module.INDEX_NAME],
            },
            "ports": [
                {
                    "name": "sql-analyst",
                    "protocol": "duckdb",
                    "uri": f"duckdb:///{warehouse}",
                    "schemas": ["semantic", "main"],
                    "roles": ["analyst"],
                },
                {
                    "name": "sql-marketing",
                    "protocol": "duckdb",
                    "uri": f"duckdb:///{marketing_database}",
                    "schemas": ["main"],
                    "roles": ["marketing"],
                },
                {"name": "files", "protocol": "parquet", "uri": str(export_dir), "index": exports_module.INDEX_NAME, "roles": ["analyst", "marketing"]},
                {
                    "name": "http",
                    "protocol": "http",
                    "uri": f"http://127.0.0.1:{api.DEFAULT_PORT}/",
                    "start": f"python -m {api.__name__} --role <role>",
                    "endpoints": list(api.ENDPOINTS),
                    "roles": ["marketing", "analyst"],
                },
            ],
            "roles": {r.name: r.description for r in ROLES.values()},
            "slos": slos,
            "quality": quality,
        }
    )


def to_yaml(manifest: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(manifest), sort_keys=False, allow_unicode=True, width=110)
