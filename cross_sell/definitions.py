"""The code location: every asset, check and resource of the cross_sell data product.

Project-wide policy lives here: resources bound from the environment when the location loads
(never at import), and the in-process executor, because DuckDB has a single writer: steps
would run one at a time anyway, and in-process saves a Python start-up per step. Pools still
apply: every step that writes the warehouse is in pool ``duckdb``, limited to 1 by the
instance configuration in ``data/dagster_home/dagster.yaml``, so runs started from the shell, the UI
and sensors never collide on the file lock.
"""

from __future__ import annotations

import dagster as dg

from cross_sell import automation, slo
from cross_sell.affinity.assets import product_affinity
from cross_sell.ingest.assets import gate_checks, landing_assets, publish_inputs, soft_checks
from cross_sell.landing_files import landing_files_log
from cross_sell.metrics.assets import customer_category_matrix, customer_metrics
from cross_sell.resources import default_resources
from cross_sell.scoring.assets import cross_sell_model, cross_sell_scoring
from cross_sell.serving.assets import serving_assets, serving_checks
from cross_sell.slo_report import slo_report

ASSETS = [
    *landing_assets,
    publish_inputs,
    landing_files_log,
    customer_metrics,
    customer_category_matrix,
    product_affinity,
    cross_sell_model,
    cross_sell_scoring,
    slo_report,
    *serving_assets,
]
CHECKS = [*gate_checks, *soft_checks, *serving_checks]


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """All definitions, with resources from the environment unless given (tests pass their own).

    The SLOs (freshness policies, :mod:`cross_sell.slo`) and the automation conditions
    (:mod:`cross_sell.automation`) are attached here, so each lives in one module.
    """
    return dg.Definitions(
        assets=slo.apply_slos(automation.apply_automation(ASSETS)),
        asset_checks=CHECKS,
        jobs=automation.JOBS,
        schedules=automation.SCHEDULES,
        sensors=automation.SENSORS,
        resources=resources if resources is not None else default_resources(),
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
