"""The README's "Useful selections from the shell", run exactly as documented.

The commands are read from the README's code block (so the documentation cannot drift from what
works), run in order as subprocesses against a temporary instance and warehouse, and each
materialization is checked against the assets its selection should cover, computed independently
with ``AssetSelection`` from the definitions.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from cross_sell.definitions import build_definitions
from cross_sell_tests.conftest import PROJECT_ROOT, cli_env, dagster_cli, read_table

pytestmark = pytest.mark.slow

SECTION = "### Useful selections from the shell"

# What each documented selection must cover. A selection added to the README without an entry here
# fails the test, so every documented command is checked.
EXPECTED = {
    "group:ingest": dg.AssetSelection.groups("ingest"),
    "*cross_sell_recommendations": dg.AssetSelection.assets("cross_sell_recommendations").upstream(),
    "cross_sell_model*": dg.AssetSelection.assets("cross_sell_model").downstream(),
    "product_affinity": dg.AssetSelection.assets("product_affinity"),
}


def documented_commands(readme: str) -> list[list[str]]:
    """The ``dagster`` commands of the first bash block in the section, continuation lines joined."""
    section = readme.split(SECTION, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"no bash block under {SECTION!r}"
    text = block.group(1).replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in text.splitlines()]
    return [c for c in commands if c and c[0] == "dagster"]


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def _materialized_by_last_run(instance: dg.DagsterInstance) -> set[str]:
    [record] = instance.get_run_records(limit=1)
    assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    entries = instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return {e.dagster_event.asset_key.to_user_string() for e in entries}


def test_readme_shell_selections_run_as_documented(
    tiny_data: Path, warehouse_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = documented_commands((PROJECT_ROOT / "README.md").read_text())
    materialize = [c for c in commands if c[1:3] == ["asset", "materialize"]]
    assert {_option(c, "--select") for c in materialize} == set(EXPECTED)
    assert all(_option(c, "-m") == "cross_sell.definitions" for c in materialize)

    env = cli_env(tiny_data, warehouse_path, dagster_home)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    graph = build_definitions().resolve_asset_graph()
    for command in commands:
        proc = subprocess.run(
            [*dagster_cli(), *command[1:]], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{shlex.join(command)}\n{proc.stderr[-3000:]}"
        selection = _option(command, "--select")
        if selection is None:
            continue
        expected = {k.to_user_string() for k in EXPECTED[selection].resolve(graph)}
        if command[1:3] == ["asset", "list"]:
            assert set(proc.stdout.split()) == expected, shlex.join(command)
            continue
        with dg.DagsterInstance.get() as instance:
            assert _materialized_by_last_run(instance) == expected, shlex.join(command)

    # The documented --config-json really reached the asset: product-level rules were computed.
    levels = set(read_table(warehouse_path, "product_affinity")["level"])
    config = next((_option(c, "--config-json") for c in materialize if _option(c, "--config-json")), None)
    assert config and '"product_level": true' in config
    assert levels == {"category", "product"}
