"""Publishing without a copy: a load that landed typed (Parquet) is published as is, a text load
(CSV) is parsed once, and a later load changes nothing consumers read until it passes its gates.
Real Dagster runs on a real DuckDB file."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

from cross_sell.ingest.assets import DATASETS, contract_types
from cross_sell_tests.conftest import RunGraph

INGEST = ["audit/customers", "audit/products", "audit/purchases", "customers", "products", "purchases"]
PUBLISHED = ["customers", "products", "purchases"]


def _published_how(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        e.asset_key.to_user_string(): e.materialization.metadata["published"].value
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() in PUBLISHED
    }


def _relations(conn: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        f"{schema}.{name}:{kind}"
        for schema, name, kind in conn.execute(
            """select schema_name, table_name, 'table' from duckdb_tables() where table_name in ('purchases', 'purchases_published')
               union all select schema_name, view_name, 'view' from duckdb_views() where view_name = 'purchases'"""
        ).fetchall()
    }


def _purchases(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return conn.execute("select * from main.purchases order by purchase_id").df()


def _contract_schema(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    return {name: kind for name, kind, *_ in conn.execute(f"describe main.{table}").fetchall()}


def test_a_typed_load_is_published_as_is_and_outlives_a_bad_load(
    generated_data: Path, tmp_path: Path, run_graph: RunGraph, warehouse_path: Path
) -> None:
    data = Path(shutil.copytree(generated_data, tmp_path / "input"))
    purchase_file = data / "purchase.parquet"
    good = tmp_path / "good_purchase.parquet"
    shutil.copy(purchase_file, good)

    result = run_graph(data, selection=INGEST)
    assert result.success
    assert _published_how(result) == {"customers": "as_is", "products": "as_is", "purchases": "as_is"}
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        # The view reads the gated load itself: no second copy of the lines.
        assert _relations(conn) == {"audit.purchases:table", "main.purchases:view"}
        for ds in DATASETS:
            assert _contract_schema(conn, ds.table) == {n: t.upper() for n, t in contract_types(ds).items()}
        source = conn.execute(f"select count(*) from read_parquet('{good}')").fetchone()[0]
        first = _purchases(conn)
        assert len(first) == source
        assert conn.execute(
            f"select count(*) from (select * from main.purchases except all select * replace (quantity::bigint as quantity) from read_parquet('{good}'))"
        ).fetchone()[0] == 0

    # A bad load (one purchase_id twice) lands over audit.purchases and fails its gate.
    with duckdb.connect() as conn:
        conn.execute(
            f"copy (select * from read_parquet('{good}') union all (select * from read_parquet('{good}') limit 1)) "
            f"to '{purchase_file}' (format parquet)"
        )
    result = run_graph(data, selection=INGEST)
    assert not result.success
    assert not _published_how(result)
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        # The published rows were kept aside by a rename, and consumers read exactly what they read before.
        assert _relations(conn) == {"audit.purchases:table", "audit.purchases_published:table", "main.purchases:view"}
        assert conn.execute("select count(*) from audit.purchases").fetchone()[0] == source + 1
        pd.testing.assert_frame_equal(_purchases(conn), first)

    # The good file again: published as is once more, and the kept-aside rows are gone.
    shutil.copy(good, purchase_file)
    result = run_graph(data, selection=INGEST)
    assert result.success and _published_how(result)["purchases"] == "as_is"
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        assert _relations(conn) == {"audit.purchases:table", "main.purchases:view"}
        pd.testing.assert_frame_equal(_purchases(conn), first)

    # Publishing the same load again (publish alone) changes nothing.
    result = run_graph(data, selection=PUBLISHED)
    assert result.success and _published_how(result)["purchases"] == "as_is"
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        pd.testing.assert_frame_equal(_purchases(conn), first)


def test_a_text_load_is_parsed_once_into_the_published_table(
    tiny_data: Path, run_graph: RunGraph, warehouse_path: Path
) -> None:
    result = run_graph(tiny_data, selection=INGEST)
    assert result.success
    assert _published_how(result) == {"customers": "parsed", "products": "parsed", "purchases": "parsed"}
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        assert _relations(conn) == {"audit.purchases:table", "audit.purchases_published:table", "main.purchases:view"}
        assert {kind for _, kind, *_ in conn.execute("describe audit.purchases").fetchall()} == {"VARCHAR"}
        [ds] = [d for d in DATASETS if d.table == "purchases"]
        published = {n: k for n, k, *_ in conn.execute("describe audit.purchases_published").fetchall()}
        assert published == {n: t.upper() for n, t in contract_types(ds).items()}
        assert conn.execute("select sum(amount), sum(quantity) from main.purchases").fetchone() == (95.0, 7)


def test_a_warehouse_with_published_tables_moves_to_views(
    tiny_data: Path, run_graph: RunGraph, warehouse_path: Path
) -> None:
    """A warehouse written before published views (main.purchases a table) publishes as usual."""
    assert run_graph(tiny_data, selection=INGEST).success
    with duckdb.connect(str(warehouse_path)) as conn:
        for table in PUBLISHED:
            conn.execute(f"drop view main.{table}")
            conn.execute(f"create table main.{table} as select * from audit.{table}_published")
            conn.execute(f"drop table audit.{table}_published")
    assert run_graph(tiny_data, selection=INGEST).success
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        assert _relations(conn) == {"audit.purchases:table", "audit.purchases_published:table", "main.purchases:view"}
        assert conn.execute("select count(*) from main.purchases").fetchone()[0] == 6
