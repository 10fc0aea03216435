"""The service level objectives (SLOs) of the cross_sell data product, all in one place.

This module is the SLO table: the README's table is rendered from it (:func:`markdown_table`, and a
test keeps the two identical), the freshness SLOs become Dagster ``FreshnessPolicy`` objects on the
assets (:func:`apply_slos`, called when the definitions are built), and the SLO report
(:mod:`cross_sell.slo_report`) measures every SLO here.

Freshness policies are evaluated by Dagster's freshness daemon (part of ``dagster dev`` and
``dagster-daemon``), which shows the state (pass, warn, fail) on each asset in the UI:

* a **time window** passes while the last materialization is younger than the warn window, warns
  until the fail window, then fails;
* a **cron deadline** passes when the asset was materialized at or after (last deadline tick minus
  the lower bound), and fails otherwise; it has no warn state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

DEADLINE_CRON = "0 6 * * *"
DEADLINE_TIMEZONE = "UTC"


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} h"


@dataclass(frozen=True)
class TimeWindow:
    """Fresh while the last update is younger than ``warn``; failing once it is older than ``fail``."""

    fail: timedelta
    warn: timedelta | None = None

    def policy(self) -> dg.FreshnessPolicy:
        return dg.FreshnessPolicy.time_window(fail_window=self.fail, warn_window=self.warn)

    def describe(self) -> str:
        warn = f", warn_window={_hours(self.warn)}" if self.warn else ""
        return f"`FreshnessPolicy.time_window(fail_window={_hours(self.fail)}{warn})`"


@dataclass(frozen=True)
class CronDeadline:
    """At every tick of ``cron``, the asset must have been updated within ``lower_bound`` before it."""

    cron: str
    lower_bound: timedelta
    timezone: str = "UTC"

    def policy(self) -> dg.FreshnessPolicy:
        return dg.FreshnessPolicy.cron(
            deadline_cron=self.cron, lower_bound_delta=self.lower_bound, timezone=self.timezone
        )

    def describe(self) -> str:
        return (
            f'`FreshnessPolicy.cron("{self.cron}", lower_bound_delta={_hours(self.lower_bound)}, '
            f'timezone="{self.timezone}")`'
        )


@dataclass(frozen=True)
class SLO:
    """One objective: what is promised, for which assets, and how it is measured."""

    name: str
    objective: str
    applies_to: str
    measured_by: str
    freshness: TimeWindow | CronDeadline | None = None
    assets: tuple[str, ...] = ()
    target: float | None = None
    window: timedelta | None = None


PURCHASE_FRESHNESS = SLO(
    name="purchase data freshness",
    objective="published purchases updated within 24 h (warn at 12 h)",
    applies_to="`purchases`",
    freshness=TimeWindow(fail=timedelta(hours=24), warn=timedelta(hours=12)),
    assets=("purchases",),
    measured_by="freshness daemon → asset health in the UI; SLO report",
)
OUTPUTS_READY = SLO(
    name="product outputs ready",
    objective="refreshed daily by 06:00 UTC: at each deadline, updated within the 24 h before it",
    applies_to="`product_affinity`, `cross_sell_scores`, `cross_sell_recommendations`",
    freshness=CronDeadline(cron=DEADLINE_CRON, lower_bound=timedelta(hours=24), timezone=DEADLINE_TIMEZONE),
    assets=("product_affinity", "cross_sell_scores", "cross_sell_recommendations"),
    measured_by="freshness daemon → asset health in the UI; SLO report",
)
DEFAULT_FRESHNESS = SLO(
    name="everything else (project default)",
    objective="updated within 48 h (warn at 26 h): at most one daily refresh missed",
    applies_to="every other asset, unless it declares its own policy",
    freshness=TimeWindow(fail=timedelta(hours=48), warn=timedelta(hours=26)),
    measured_by="freshness daemon → asset health in the UI",
)
QUALITY = SLO(
    name="quality",
    objective="100% of gate evaluations pass over the last 7 days",
    applies_to="every blocking check (gate)",
    target=1.0,
    window=timedelta(days=7),
    measured_by="the instance's asset check history → SLO report",
)
PERFORMANCE = SLO(
    name="performance",
    objective="full refresh of 10 M purchase lines in under a minute on 2 cores",
    applies_to="the whole graph",
    target=60.0,
    measured_by="benchmark `python -m cross_sell.bench`; the SLO report shows the last run's duration",
)

SLOS: tuple[SLO, ...] = (PURCHASE_FRESHNESS, OUTPUTS_READY, DEFAULT_FRESHNESS, QUALITY, PERFORMANCE)
FRESHNESS_SLOS: tuple[SLO, ...] = tuple(s for s in SLOS if s.freshness is not None and s.assets)


def policy_by_asset() -> dict[str, dg.FreshnessPolicy]:
    """The per-asset freshness policies of the SLO table, by asset key (user string)."""
    return {asset: slo.freshness.policy() for slo in FRESHNESS_SLOS for asset in slo.assets}


def slo_for_asset(asset: str) -> SLO:
    for slo in FRESHNESS_SLOS:
        if asset in slo.assets:
            return slo
    return DEFAULT_FRESHNESS


def _specs(item: dg.AssetsDefinition | dg.AssetSpec) -> list[dg.AssetSpec]:
    return [item] if isinstance(item, dg.AssetSpec) else list(item.specs)


def apply_slos(assets: Sequence[dg.AssetsDefinition | dg.AssetSpec]) -> list:
    """Attach the SLO table's freshness policies, then the project default to every asset that has
    no policy yet (never overwriting one). An asset named in the table that does not exist, or that
    declares a different policy itself, is a definition error: the table must stay the truth."""
    wanted = policy_by_asset()
    specs = {spec.key.to_user_string(): spec for item in assets for spec in _specs(item)}
    missing = sorted(set(wanted) - set(specs))
    if missing:
        raise ValueError(f"SLO table names assets that do not exist: {missing}")
    conflicts = sorted(
        key for key, policy in wanted.items() if specs[key].freshness_policy not in (None, policy)
    )
    if conflicts:
        raise ValueError(f"assets declare freshness policies that differ from the SLO table: {conflicts}")
    default = DEFAULT_FRESHNESS.freshness.policy()

    def _apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        own = wanted.get(spec.key.to_user_string())
        if own is not None:
            spec = dg.apply_freshness_policy(spec, own, overwrite_existing=False)
        return dg.apply_freshness_policy(spec, default, overwrite_existing=False)

    return dg.map_asset_specs(_apply, list(assets))


def markdown_table() -> str:
    """The SLO table as it appears in the README."""
    lines = [
        "| SLO | objective | applies to | how it is defined and measured |",
        "|---|---|---|---|",
    ]
    for slo in SLOS:
        how = f"{slo.freshness.describe()}; {slo.measured_by}" if slo.freshness else slo.measured_by
        lines.append(f"| {slo.name} | {slo.objective} | {slo.applies_to} | {how} |")
    return "\n".join(lines)
