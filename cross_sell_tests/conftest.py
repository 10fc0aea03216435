"""Shared fixtures: real DuckDB files under tmp_path, real in-process Dagster runs, real inputs."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

from cross_sell.definitions import ASSETS, CHECKS
from cross_sell.resources import InputFiles

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
INSTANCE_CONFIG = PROJECT_ROOT / "data" / "dagster_home" / "dagster.yaml"

# The three-customer example worked out by hand in test_affinity_logic.py / test_foundation.py.
TINY_CUSTOMERS = """customer_id,first_name,last_name,email,phone,birth_year,education,marital_status,income,country,signup_date
C1,Ann,Lee,ann@example.com,+1-555-000-0001,1980,PhD,Single,50000,US,2024-01-01
C2,Bob,Ray,bob@example.com,+1-555-000-0002,1975,Master,Married,,US,2024-02-01
C3,Cid,Fox,cid@example.com,+1-555-000-0003,1990,Basic,Single,30000,GB,2024-03-01
C4,Dee,Ng,dee@example.com,,2001,,,,DE,2024-03-05
"""
TINY_PRODUCTS = """product_id,product_name,product_category,price
P1,Red wine,Wines,10
P2,Steak,Meat,20
P3,Salmon,Fish,15
"""
TINY_PURCHASES = """purchase_id,order_id,customer_id,product_id,purchase_date,quantity,amount,channel
L1,O1,C1,P1,2025-01-01 10:00:00,1,10,web
L2,O1,C1,P2,2025-01-01 10:00:00,1,20,web
L3,O2,C2,P1,2025-02-01 11:00:00,2,20,store
L4,O3,C2,P2,2025-03-01 12:00:00,1,20,store
L5,O4,C3,P1,2025-03-02 09:00:00,1,10,catalog
L6,O5,C3,P3,2025-04-01 09:00:00,1,15,other
"""


def write_tiny_dataset(folder: Path) -> Path:
    """Canonical CSV inputs for 4 customers (C4 never bought), 3 products, 6 order lines."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "customer.csv").write_text(TINY_CUSTOMERS)
    (folder / "product.csv").write_text(TINY_PRODUCTS)
    (folder / "purchase.csv").write_text(TINY_PURCHASES)
    return folder


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "input")


@pytest.fixture(scope="session")
def generated_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset with the planted structure (shared by the session, read-only)."""
    from cross_sell.generate import generate

    out = tmp_path_factory.mktemp("generated")
    generate(out, customers=400, purchases=8000, products=200, categories=10, seed=7, fmt="parquet")
    return out


@pytest.fixture
def warehouse_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse" / "cross_sell.duckdb"


def make_resources(data_dir: Path, warehouse: Path) -> dict:
    return {"duckdb": DuckDBResource(database=str(warehouse)), "input_files": InputFiles(location=str(data_dir))}


RunGraph = Callable[..., dg.ExecuteInProcessResult]


@pytest.fixture
def run_graph(warehouse_path: Path) -> RunGraph:
    """Materialize the whole graph (or a selection) on ``data_dir`` into the test warehouse."""

    def _run(data_dir: Path, selection: str | list[str] = "*", **kwargs) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [*ASSETS, *CHECKS],
            selection=selection,
            resources=make_resources(data_dir, warehouse_path),
            raise_on_error=False,
            **kwargs,
        )

    return _run


def read_table(warehouse: Path, table: str, order_by: str | None = None) -> pd.DataFrame:
    """Read a published table with a separate read-only connection, as a consumer would."""
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        sql = f"select * from {table}" + (f" order by {order_by}" if order_by else "")
        return conn.execute(sql).df()


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    """A temporary DAGSTER_HOME holding the project's instance configuration (pool limit 1)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_CONFIG, home / "dagster.yaml")
    # Create Dagster's own SQLite storage now, as any first command on a real instance does. A test
    # that opens the instance while its CLI subprocess starts would otherwise race it to create the
    # same tables ("table job_ticks already exists"), a Dagster limitation the README names.
    with dg.DagsterInstance.from_config(str(home)):
        pass
    return home


def cli_env(data_dir: Path, warehouse: Path, home: Path) -> dict[str, str]:
    """Environment for running the project's CLI commands in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSS_SELL_")}
    env.update(
        CROSS_SELL_DATA_DIR=str(data_dir),
        CROSS_SELL_DUCKDB_PATH=str(warehouse),
        DAGSTER_HOME=str(home),
        PYTHONWARNINGS="ignore",
    )
    return env


def dagster_cli() -> list[str]:
    """The dagster CLI of the interpreter running the tests."""
    return [sys.executable, "-m", "dagster"]
