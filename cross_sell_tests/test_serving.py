"""Serving: semantic views, the masked marketing database, Parquet exports and the manifest.

Real runs: the whole graph is materialized once per dataset into a DuckDB file under a temporary
folder (module-scoped, read by most tests); tests that break something work on a copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml

from cross_sell import slo
from cross_sell.definitions import ASSETS, CHECKS, build_definitions
from cross_sell.ingest.publication import published_rows
from cross_sell.serving import exports as ex
from cross_sell.serving import locations, roles
from cross_sell.serving.assets import VIEW_CHECK, VIEW_KEYS, view_key
from cross_sell.serving.manifest import MANIFEST_NAME, REFERENCE_NAME, interface_fingerprint
from cross_sell.serving.row_order import in_key_order
from cross_sell.serving.semantic import AGE_BAND_EDGES, MODEL, Column, Relationship, age_band_labels, render_reference, verify_views
from cross_sell_tests.conftest import PROJECT_ROOT, make_resources, write_tiny_dataset

SERVING_ENV = (locations.EXPORT_DIR_ENV, locations.MARKETING_DB_ENV, roles.MASKING_KEY_ENV)
BASE_TABLES = {"customers", "products", "purchases", "customer_metrics", "customer_category_matrix",
               "product_affinity", "cross_sell_scores", "cross_sell_recommendations"}
PII_COLUMNS = ("email", "phone", "first_name", "last_name", "income", "birth_year")


@dataclasses.dataclass(frozen=True)
class Served:
    data: Path
    warehouse: Path
    result: dg.ExecuteInProcessResult
    instance: dg.DagsterInstance

    @property
    def marketing(self) -> Path:
        return self.warehouse.parent / locations.MARKETING_DB_NAME

    @property
    def exports(self) -> Path:
        return self.warehouse.parent / locations.EXPORT_DIR_NAME


@contextlib.contextmanager
def _clean_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name in SERVING_ENV:
            mp.delenv(name, raising=False)
        yield


def _serve(root: Path, data: Path, instance: dg.DagsterInstance | None = None, selection="*") -> Served:
    warehouse = root / "warehouse" / "cross_sell.duckdb"
    instance = instance or dg.DagsterInstance.ephemeral()
    with _clean_env():
        result = dg.materialize(
            [*ASSETS, *CHECKS], selection=selection, resources=make_resources(data, warehouse),
            instance=instance, raise_on_error=False,
        )
    return Served(data, warehouse, result, instance)


def _failures(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        f"{e.step_key}: {e.event_specific_data.error.to_string()[-1500:]}" for e in result.get_step_failure_events()
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("served_tiny")
    served = _serve(root, write_tiny_dataset(root / "input"))
    assert served.result.success, _failures(served.result)
    return served


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, generated_data: Path) -> Served:
    served = _serve(tmp_path_factory.mktemp("served_generated"), generated_data)
    assert served.result.success, _failures(served.result)
    return served


def _copy(served: Served, dest: Path) -> Served:
    """A private copy of a served warehouse folder (warehouse, marketing file, exports)."""
    shutil.copytree(served.warehouse.parent, dest / "warehouse")
    return dataclasses.replace(served, warehouse=dest / "warehouse" / served.warehouse.name)


def _relations(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return conn.execute(
        """select schema_name, table_name from duckdb_tables()
           union all select schema_name, view_name from duckdb_views() where not internal order by 1, 2"""
    ).fetchall()


def _read_all(path: Path) -> dict[str, pd.DataFrame]:
    """Every table and view of a database, as a consumer of that file would see it."""
    with duckdb.connect(str(path), read_only=True) as conn:
        return {f"{s}.{n}": conn.execute(f'select * from "{s}"."{n}"').df() for s, n in _relations(conn)}


def _base_customers(served: Served) -> pd.DataFrame:
    with duckdb.connect(str(served.warehouse), read_only=True) as conn:
        return conn.execute("select * from main.customers").df()


# ---------------------------------------------------------------------------------------------
# Semantic model


def test_spec_is_sound_and_its_validator_can_fail() -> None:
    assert MODEL.problems() == []
    broken = dataclasses.replace(
        MODEL,
        relationships=(*MODEL.relationships, Relationship("total_spend", "nope", "customer", "customer_id", "many_to_one", "x")),
        views=tuple(
            dataclasses.replace(v, columns=(*v.columns, Column("x", "DOUBLE", "a measure without rollup", "measure")))
            if v.name == "product" else v
            for v in MODEL.views
        ),
    )
    problems = broken.problems()
    assert any("nope" in p for p in problems) and any("product.x" in p and "rollup" in p for p in problems)


def test_views_answer_like_the_hand_worked_example(tiny: Served) -> None:
    conn = roles.connect(roles.ANALYST, tiny.warehouse)  # read-only; views by bare name
    try:
        spend = conn.execute("select customer_id, total_spend, orders, avg_order_value from total_spend order by 1").fetchall()
        assert spend == [("C1", 30.0, 1, 30.0), ("C2", 40.0, 2, 20.0), ("C3", 25.0, 2, 12.5), ("C4", 0.0, 0, 0.0)]
        freq = dict(conn.execute("select customer_id, purchase_frequency from purchase_frequency").fetchall())
        assert freq["C2"] == pytest.approx(2.0) and freq["C4"] == 0
        # Opportunities = every score, with the recommendation (rank and reason) where there is one.
        opp = conn.execute("select * from cross_sell_opportunities").df()
        scores = conn.execute("select customer_id, product_category, score from main.cross_sell_scores").df()
        recs = conn.execute("select customer_id, product_category, rank, reason from main.cross_sell_recommendations").df()
        key = ["customer_id", "product_category"]
        pd.testing.assert_frame_equal(
            opp[key + ["score"]].sort_values(key).reset_index(drop=True), scores.sort_values(key).reset_index(drop=True)
        )
        offered = opp[opp.recommended].rename(columns={"recommendation_rank": "rank"})[key + ["rank", "reason"]]
        pd.testing.assert_frame_equal(
            offered.sort_values(key).reset_index(drop=True), recs.sort_values(key).reset_index(drop=True), check_dtype=False
        )
        assert opp[~opp.recommended].recommendation_rank.isna().all() and opp[~opp.recommended].reason.isna().all()
        assert set(opp.customer_id) <= {"C1", "C2", "C3", "C4"}
        assert dict(conn.execute("select product_category, products from product_category").fetchall()) == {"Wines": 1, "Meat": 1, "Fish": 1}
        assert conn.execute("select count(*) from category_affinity").fetchone()[0] == 4
        # Every view exposes exactly the declared columns and types, and documents itself.
        for view in MODEL.views:
            types = conn.execute(
                "select column_name, data_type from information_schema.columns where table_schema = 'semantic' "
                "and table_name = ? order by ordinal_position", [view.name]
            ).fetchall()
            assert types == [(c.name, c.type) for c in view.columns]
        comments = dict(conn.execute("select view_name, comment from duckdb_views() where schema_name = 'semantic'").fetchall())
        assert comments == {v.name: v.description for v in MODEL.views}
    finally:
        conn.close()
    checks = [e for e in tiny.result.get_asset_check_evaluations() if e.check_name == VIEW_CHECK]
    assert len(checks) == len(MODEL.views) and all(e.passed for e in checks)


def test_view_check_fails_on_orphans_and_duplicates(tiny: Served, tmp_path: Path) -> None:
    copy = _copy(tiny, tmp_path)
    with duckdb.connect(str(copy.warehouse)) as conn:
        assert all(r.passed for r in verify_views(conn).values())
        conn.execute("insert into main.cross_sell_scores values ('C99', 'Wines', 0.5)")  # unknown customer
        conn.execute("insert into main.customer_metrics select * from main.customer_metrics where customer_id = 'C1'")
    with _clean_env():
        result = dg.materialize(
            [*ASSETS, *CHECKS], selection=[*VIEW_KEYS, dg.AssetKey("marketing_database")],
            resources=make_resources(copy.data, copy.warehouse), raise_on_error=False,
        )
    assert not result.success
    failed = {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations() if not e.passed}
    assert {"cross_sell_opportunities", "total_spend", "purchase_frequency", "customer_lifetime_value"} <= set(failed)
    assert "C99" not in str(failed)  # the metadata names rule and count, never a customer's data
    assert "customer_id missing from customer.customer_id" in failed["cross_sell_opportunities"].description
    assert "not unique" in failed["total_spend"].description
    assert result.is_node_untouched("marketing_database")  # blocked downstream


@pytest.mark.parametrize(
    "selection",
    [
        pytest.param(dg.AssetSelection.assets("cross_sell_model").downstream(), id="cross_sell_model*"),
        pytest.param(dg.AssetSelection.assets("product_affinity").downstream(depth=1), id="product_affinity+"),
    ],
)
def test_a_selection_may_take_some_of_the_views(tiny: Served, tmp_path: Path, selection: dg.AssetSelection) -> None:
    """Downstream selections take only the views that depend on what changed; the whole layer is
    rebuilt and checked, and exactly the selected views are reported."""
    copy = _copy(tiny, tmp_path)
    definitions = dg.Definitions(assets=[*ASSETS], asset_checks=[*CHECKS], resources=make_resources(copy.data, copy.warehouse))
    wanted = selection.resolve(definitions.resolve_asset_graph())
    views = {k for k in wanted if k in set(VIEW_KEYS)}
    assert views and views != set(VIEW_KEYS)
    served = _serve(tmp_path, copy.data, selection=selection)
    assert served.result.success, _failures(served.result)
    materialized = {e.asset_key for e in served.result.get_asset_materialization_events()}
    assert materialized == wanted
    checked = {e.asset_key for e in served.result.get_asset_check_evaluations() if e.check_name == VIEW_CHECK}
    assert checked == views


def test_view_check_counts_duplicate_and_null_keys_exactly(tiny: Served, tmp_path: Path) -> None:
    """Uniqueness is first counted on a hash of the grain; the reported numbers stay the exact ones
    (customer C1 three times, C2 twice, and a row without a customer; the two-column grain of the
    opportunities repeated once)."""
    copy = _copy(tiny, tmp_path)
    with duckdb.connect(str(copy.warehouse)) as conn:
        conn.execute("insert into main.customer_metrics select * from main.customer_metrics where customer_id in ('C1', 'C2')")
        conn.execute("insert into main.customer_metrics select * from main.customer_metrics where customer_id = 'C1' limit 1")
        conn.execute("insert into main.customer_metrics select * replace (null as customer_id) from main.customer_metrics limit 1")
        conn.execute("insert into main.cross_sell_scores select * from main.cross_sell_scores limit 1")
        reports = verify_views(conn)
        exact = conn.execute("select count(*) - count(distinct customer_id) from semantic.total_spend").fetchone()[0]
    assert exact == 4  # 2 + 1 repeats, and the null key, which a distinct count leaves out
    assert f"grain (\"customer_id\") is not unique: {exact} duplicate rows" in reports["total_spend"].problems
    assert "1 rows have a null key" in reports["total_spend"].problems
    opportunities = reports["cross_sell_opportunities"].problems
    assert 'grain ("customer_id", "product_category") is not unique: 1 duplicate rows' in opportunities

    # A null key alone: every hash distinct, yet the exact count (which leaves the null out) decides.
    only_null = _copy(tiny, tmp_path / "only_null")
    with duckdb.connect(str(only_null.warehouse)) as conn:
        conn.execute("insert into main.customer_metrics select * replace (null as customer_id) from main.customer_metrics limit 1")
        problems = verify_views(conn)["total_spend"].problems
    assert 'grain ("customer_id") is not unique: 1 duplicate rows' in problems
    assert "1 rows have a null key" in problems


def test_view_check_proves_the_opportunity_grain_from_the_scores_order(tiny: Served, tmp_path: Path) -> None:
    """The opportunities' rows are the scores' rows (rows_of): scores stored in strictly increasing
    grain order prove the grain unique without hashing it, unless the recommendations join adds
    rows. A repeated pair stored in order, or a repeated recommendation, is still counted exactly."""
    opportunities = MODEL.view("cross_sell_opportunities")
    assert opportunities.rows_of == "cross_sell_scores" and opportunities.rows_of in opportunities.depends_on
    grain = ["customer_id", "product_category"]
    copy = _copy(tiny, tmp_path)
    with duckdb.connect(str(copy.warehouse)) as conn:
        assert in_key_order(conn, "cross_sell_scores", grain, strict=True)
        assert verify_views(conn)["cross_sell_opportunities"].passed
        # A repeated pair, stored in key order: in order, but not strictly.
        conn.execute(
            "create or replace table main.cross_sell_scores as select * from "
            "(select * from main.cross_sell_scores union all (select * from main.cross_sell_scores limit 1)) order by all"
        )
        assert in_key_order(conn, "cross_sell_scores", grain) and not in_key_order(conn, "cross_sell_scores", grain, strict=True)
        assert 'grain ("customer_id", "product_category") is not unique: 1 duplicate rows' in verify_views(conn)["cross_sell_opportunities"].problems

    copy = _copy(tiny, tmp_path / "repeated_offer")
    with duckdb.connect(str(copy.warehouse)) as conn:
        conn.execute("insert into main.cross_sell_recommendations select * from main.cross_sell_recommendations limit 1")
        assert in_key_order(conn, "cross_sell_scores", grain, strict=True)  # the scores alone prove nothing about the join
        problems = verify_views(conn)["cross_sell_opportunities"].problems
    assert 'grain ("customer_id", "product_category") is not unique: 1 duplicate rows' in problems

    broken = dataclasses.replace(
        MODEL, views=tuple(dataclasses.replace(v, rows_of="customer_metrics") if v is opportunities else v for v in MODEL.views)
    )
    assert any("rows_of 'customer_metrics' is not among the tables it reads" in p for p in broken.problems())


def test_reference_page_is_rendered_from_the_spec(tiny: Served) -> None:
    page = render_reference()
    for view in MODEL.views:
        assert f"## `{view.qualified}`" in page
        for column in view.columns:
            assert f"| `{column.name}` | {column.type} |" in page
    assert "`email_hash`" in page and "age band" in page
    assert (tiny.exports / REFERENCE_NAME).read_text() == page
    committed = PROJECT_ROOT / "cross_sell" / "serving" / "semantic_model.md"
    assert committed.read_text() == page, "regenerate: python -m cross_sell.serving.semantic --out cross_sell/serving/semantic_model.md"


# ---------------------------------------------------------------------------------------------
# Roles and the marketing database


@pytest.mark.parametrize("dataset", ["tiny", "generated"])
def test_marketing_file_holds_only_masked_views(dataset: str, request: pytest.FixtureRequest) -> None:
    served: Served = request.getfixturevalue(dataset)
    relations = _read_all(served.marketing)
    assert set(relations) == {f"main.{v.name}" for v in MODEL.views}
    assert not {name.split(".")[1] for name in relations} & BASE_TABLES
    for name, frame in relations.items():
        assert not set(frame.columns) & set(PII_COLUMNS), name
        assert list(frame.columns) == roles.marketing_columns(MODEL.view(name.split(".")[1]))
    # Same rows as the analyst views: masking removes detail, never rows.
    with duckdb.connect(str(served.warehouse), read_only=True) as conn:
        for view in MODEL.views:
            assert len(relations[f"main.{view.name}"]) == conn.execute(f"select count(*) from {view.qualified}").fetchone()[0]


def _digits(value: str) -> str:
    return re.sub(r"[^0-9]", "", value)


@pytest.mark.parametrize("dataset", ["tiny", "generated"])
def test_no_personal_data_of_the_base_tables_in_the_marketing_file(dataset: str, request: pytest.FixtureRequest) -> None:
    """Every column of every table and view the marketing role can see, against every e-mail,
    phone, name, income and birth year of the published customers."""
    served: Served = request.getfixturevalue(dataset)
    base = _base_customers(served)
    texts = set()
    for column in ("email", "phone", "first_name", "last_name"):
        texts |= set(base[column].dropna().astype(str))
    texts |= set((base.first_name + " " + base.last_name).dropna())
    phone_digits = {_digits(p) for p in base.phone.dropna()}
    numbers = set(base.income.dropna().astype(float)) | set(base.birth_year.dropna().astype(float))
    number_texts = {f"{n:g}" for n in numbers} | {str(n) for n in numbers}  # '1980', '1980.0', '50000.0'
    by_customer = base.set_index("customer_id")
    scanned = 0
    for name, frame in _read_all(served.marketing).items():
        for column in frame.columns:
            values = frame[column].dropna()
            as_text = values.astype(str)
            scanned += len(values)
            assert not set(as_text) & texts, f"{name}.{column} holds names, e-mails or phone numbers"
            assert not as_text.str.contains("@", regex=False).any(), f"{name}.{column} holds an e-mail address"
            assert not set(as_text.map(_digits)) & phone_digits, f"{name}.{column} holds phone numbers"
            is_number = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            numeric = values.astype(float) if is_number else pd.Series(dtype=float)
            if dataset == "tiny":  # small enough that no measure equals an income or birth year by chance
                assert not set(numeric) & numbers, f"{name}.{column} holds incomes or birth years"
                assert not set(as_text) & number_texts, f"{name}.{column} holds incomes or birth years as text"
            elif "customer_id" in frame and len(numeric):
                # Larger data: a number is personal data next to the customer it belongs to. A tenure of
                # 1,984 days may meet a birth year of 1984 by chance on a few rows; a leak meets on all.
                own = by_customer.loc[frame.loc[numeric.index, "customer_id"], ["income", "birth_year"]].astype(float)
                for attribute in ("income", "birth_year"):
                    same = (numeric.to_numpy() == own[attribute].to_numpy()).sum()
                    assert same <= 0.01 * own[attribute].notna().sum(), f"{name}.{column} follows {attribute}"
    assert scanned > 0
    # Names reduced to initials, never the name itself.
    customer = _read_all(served.marketing)["main.customer"].set_index("customer_id")
    for column in ("first_name", "last_name"):
        masked = customer[f"{column}_initial"].dropna()
        assert masked.str.fullmatch(r"[A-Z]\.").all()
        assert (masked == by_customer.loc[masked.index, column].str.strip().str[0].str.upper() + ".").all()
        assert not (masked == by_customer.loc[masked.index, column]).any()


def test_masking_rules(tiny: Served) -> None:
    with duckdb.connect(str(tiny.warehouse), read_only=True) as conn:
        key = conn.execute("select key from audit.masking_key").fetchone()[0]
    customer = _read_all(tiny.marketing)["main.customer"].set_index("customer_id")
    keyed = hashlib.sha256(f"{key}|ann@example.com".encode()).hexdigest()
    assert customer.loc["C1", "email_hash"] == keyed  # sha256(key || '|' || lower(trim(email)))
    assert customer.loc["C1", "email_hash"] != hashlib.sha256(b"ann@example.com").hexdigest()
    assert customer.loc["C1", "phone_hash"] == hashlib.sha256(f"{key}|+1-555-000-0001".encode()).hexdigest()
    assert pd.isna(customer.loc["C4", "phone_hash"])  # no phone stays no phone
    assert customer.email_hash.str.fullmatch("[0-9a-f]{64}").all() and customer.email_hash.is_unique
    assert customer.income_band.to_dict() == {"C1": "50k-75k", "C2": "unknown", "C3": "25k-50k", "C4": "unknown"}
    labels = age_band_labels()
    for cid, year in {"C1": 1980, "C2": 1975, "C3": 1990, "C4": 2001}.items():
        age = date.today().year - year
        band = next((labels[i] for i, edge in enumerate(AGE_BAND_EDGES) if age < edge), labels[-2])
        assert customer.loc[cid, "age_band"] == band
    assert key not in json.dumps(_read_all(tiny.marketing)["main.customer"].astype(str).to_dict())


def test_masking_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with duckdb.connect(":memory:") as conn:
        monkeypatch.setenv(roles.MASKING_KEY_ENV, "short")
        with pytest.raises(ValueError, match="at least 16"):
            roles.masking_key(conn)
        monkeypatch.setenv(roles.MASKING_KEY_ENV, "a-long-secret-from-the-vault")
        assert roles.masking_key(conn) == "a-long-secret-from-the-vault"
        assert conn.execute("select count(*) from duckdb_tables()").fetchone()[0] == 0  # nothing stored


def _scan(served: Served, marketing: Path) -> list[roles.Leak]:
    with duckdb.connect(str(served.warehouse)) as conn:
        return roles.find_pii_leaks(conn, marketing)


def _scan_with_note(served: Served, tmp_path: Path, create_table: str) -> set[tuple[str, str, str, int]]:
    """(relation, column, kind, matches) of every finding in a copy of the marketing file with one
    table planted in schema ``notes`` by ``create_table``."""
    planted = tmp_path / "planted.duckdb"
    shutil.copy(served.marketing, planted)
    with duckdb.connect(str(planted)) as conn:
        conn.execute("create schema notes")
        conn.execute(create_table)
    return {(leak.relation, leak.column, leak.kind, leak.matches) for leak in _scan(served, planted)}


def test_pii_scan_finds_planted_leaks(tiny: Served, tmp_path: Path) -> None:
    copy = _copy(tiny, tmp_path)
    assert _scan(copy, copy.marketing) == []
    planted = tmp_path / "planted.duckdb"
    shutil.copy(copy.marketing, planted)
    with duckdb.connect(str(planted)) as conn:
        conn.execute("create table main.customers as select * from main.customer")  # a base-table name
        conn.execute("create schema notes")
        conn.execute("create view notes.contact as select 'write to ann@example.com' as note")  # e-mail in text
        conn.execute("create table notes.callback as select '15550000002' as number")  # Bob's phone as digits
        conn.execute("create table notes.people as select 'Cid Fox' as who")  # a full name
        conn.execute("create table notes.years as select * from (values ('C1', 1980), ('C2', 1975), ('C3', 1990)) t(customer_id, y)")
    leaks = _scan(copy, planted)
    found = {(leak.relation, leak.column, leak.kind) for leak in leaks}
    assert ("main.customers", "*", "not_in_spec") in found
    assert ("notes.contact", "note", "e-mail address") in found
    assert ("notes.callback", "number", "phone (digits)") in found
    assert ("notes.people", "who", "full name") in found
    assert ("notes.years", "y", "birth_year") in found
    assert not [leak for leak in leaks if leak.relation.startswith("main.") and leak.relation != "main.customers"]


def test_a_customer_named_like_a_category_is_no_leak(tmp_path: Path) -> None:
    """Ann is called Fish and has not bought Fish yet: her opportunity row holds her first name by
    chance, one of the three rows that offer Fish. The marketing file is published. A column that
    does carry the first names next to their customers is still a leak."""
    data = write_tiny_dataset(tmp_path / "input")
    customers = data / "customer.csv"
    customers.write_text(customers.read_text().replace("C1,Ann,", "C1,Fish,"))
    served = _serve(tmp_path, data)
    assert served.result.success, _failures(served.result)
    with duckdb.connect(str(served.marketing), read_only=True) as conn:
        offered_fish = conn.execute(
            "select customer_id from main.cross_sell_opportunities where product_category = 'Fish' order by 1"
        ).fetchall()
    assert [c for (c,) in offered_fish] == ["C1", "C2", "C4"]
    found = _scan_with_note(
        served, tmp_path, "create table notes.names as select * from (values ('C1', 'Fish'), ('C2', 'Bob'), ('C3', 'Cid'), ('C4', 'Sue')) t(customer_id, n)"
    )
    assert ("notes.names", "n", "first_name", 3) in found
    assert not [f for f in found if f[0].startswith("main.")]


def test_pii_scan_compares_numbers_only_where_they_can_meet(tiny: Served, tmp_path: Path) -> None:
    """Number columns are proven clean by their range only when it cannot meet the personal
    numbers; otherwise they are compared value by value (phone digits, incomes, NaN)."""
    copy = _copy(tiny, tmp_path)
    planted = tmp_path / "numbers.duckdb"
    shutil.copy(copy.marketing, planted)
    with duckdb.connect(str(planted)) as conn:
        conn.execute("create schema notes")
        # Bob's phone as a number, among small numbers (the range meets the phone digits).
        conn.execute("create table notes.callback as select * from (values (1), (15550000002)) t(number)")
        # Incomes as decimals next to their customers, and numbers that can never be personal.
        conn.execute(
            """create table notes.incomes as select * from (values
               ('C1', 50000.00::decimal(12, 2), 0.5::double, 'nan'::double),
               ('C3', 30000.00::decimal(12, 2), 0.25::double, 'nan'::double)) t(customer_id, paid, share, missing)"""
        )
        conn.execute('create table notes."odd ""name""" as select \'Ann Lee\' as "who ""is"""')  # quoted names
    found = {(leak.relation, leak.column, leak.kind, leak.matches) for leak in _scan(copy, planted)}
    assert ("notes.callback", "number", "phone (digits)", 1) in found
    assert ("notes.incomes", "paid", "income", 2) in found
    assert not {f for f in found if f[0] == "notes.incomes" and f[1] in ("share", "missing", "customer_id")}
    assert ('notes.odd "name"', 'who "is"', "full name", 1) in found


def test_leaking_marketing_file_is_never_published(tiny: Served, tmp_path: Path) -> None:
    """Personal data typed into a free-text field (a product name) must not reach marketing."""
    copy = _copy(tiny, tmp_path)
    before = ex.sha256_file(copy.marketing)
    with duckdb.connect(str(copy.warehouse)) as conn:
        products = published_rows(conn, "products")  # the table behind the published view
        conn.execute(f"update {products} set product_name = 'call bob@example.com' where product_id = 'P2'")
    with _clean_env():
        result = dg.materialize(
            [*ASSETS, *CHECKS], selection=["marketing_database", "data_product_manifest"],
            resources=make_resources(copy.data, copy.warehouse), raise_on_error=False,
        )
    assert not result.success
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "no_pii"]
    assert not check.passed and "main.product" in check.metadata["findings"].value
    assert ex.sha256_file(copy.marketing) == before  # the previous file stays
    assert sorted(p.name for p in copy.marketing.parent.iterdir() if p.suffix == ".duckdb") == [
        "cross_sell.duckdb", locations.MARKETING_DB_NAME]  # no staging file left behind
    assert result.is_node_untouched("data_product_manifest")


# ---------------------------------------------------------------------------------------------
# Exports


def test_exports_match_tables_and_index(generated: Served) -> None:
    index = ex.read_index(generated.exports)
    assert [f["table"] for f in index["files"]] == [e.table for e in ex.EXPORTS]
    with duckdb.connect(str(generated.warehouse), read_only=True) as conn:
        for entry in index["files"]:
            path = generated.exports / entry["file"]
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert entry["bytes"] == path.stat().st_size
            table = conn.execute(f"select * from main.{entry['table']}").df()
            exported = duckdb.read_parquet(str(path)).df()
            assert entry["rows"] == len(table) == len(exported) > 0
            keys = [k.strip() for k in next(e for e in ex.EXPORTS if e.table == entry["table"]).order_by.split(",")]
            pd.testing.assert_frame_equal(
                exported.reset_index(drop=True), table.sort_values(keys).reset_index(drop=True), check_dtype=False
            )
            assert not set(exported.columns) & set(PII_COLUMNS)
    assert not [p for p in generated.exports.iterdir() if p.name.startswith(".")]  # no temporary files
    assert ex.verify_exports(generated.exports) == []
    [check] = [e for e in generated.result.get_asset_check_evaluations() if e.check_name == "checksums_match"]
    assert check.passed


def test_exports_are_replaced_atomically(tiny: Served, tmp_path: Path) -> None:
    copy = _copy(tiny, tmp_path)
    first = ex.read_index(copy.exports)
    with duckdb.connect(str(copy.warehouse)) as conn:
        again = ex.export_tables(conn, copy.exports)
        # Unchanged data, byte-identical files: the checksums are a real change signal.
        assert [f["sha256"] for f in again["files"]] == [f["sha256"] for f in first["files"]]
        assert ex.data_fingerprint(again) == ex.data_fingerprint(first)
        # A failure half-way (the last table is gone) replaces nothing: all files are written
        # under temporary names first and renamed only when every one is complete.
        conn.execute("update main.cross_sell_scores set score = score / 2")
        conn.execute("drop table main.customer_metrics")
        with pytest.raises(ValueError, match="customer_metrics does not exist"):
            ex.export_tables(conn, copy.exports)
    assert ex.read_index(copy.exports)["files"] == again["files"]
    assert ex.verify_exports(copy.exports) == []  # the old scores file, still matching the index
    assert not [p for p in copy.exports.iterdir() if p.name.startswith(".")]


def test_exports_sort_only_tables_not_stored_in_key_order(tiny: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table already stored in key order is written as stored; the file is byte-identical to the
    sorted one, and a table out of order is still sorted."""
    copy = _copy(tiny, tmp_path)
    shuffled = "create or replace table main.cross_sell_scores as select * from main.cross_sell_scores order by customer_id desc, product_category desc"
    with duckdb.connect(str(copy.warehouse)) as conn:
        conn.execute(shuffled)
        assert not ex.in_key_order(conn, "cross_sell_scores", ["customer_id", "product_category"])
        as_stored = ex.export_tables(conn, tmp_path / "as_stored")
        conn.execute("create or replace table main.cross_sell_scores as select * from main.cross_sell_scores order by customer_id, product_category")
        assert ex.in_key_order(conn, "cross_sell_scores", ["customer_id", "product_category"])
        in_order = ex.export_tables(conn, tmp_path / "in_order")
        # Several row groups, with ties on the first key.
        conn.execute("create table main.big as select 'k' || lpad((i // 7)::varchar, 6, '0') as k, i % 7 as j, i * 0.5 as x from range(300000) r(i)")
        big = (ex.Export("big", "k, j", "test"),)
        assert ex.in_key_order(conn, "big", ["k", "j"]) and not ex.in_key_order(conn, "big", ["j", "k"])
        fast = ex.export_tables(conn, tmp_path / "fast", big)
        monkeypatch.setattr(ex, "in_key_order", lambda *args, **kwargs: False)
        sorted_big = ex.export_tables(conn, tmp_path / "sorted", big)
        always_sorted = ex.export_tables(conn, tmp_path / "always_sorted")
    assert [f["sha256"] for f in fast["files"]] == [f["sha256"] for f in sorted_big["files"]]
    checksums = [[f["sha256"] for f in index["files"]] for index in (as_stored, in_order, always_sorted)]
    assert checksums[0] == checksums[1] == checksums[2]
    exported = duckdb.read_parquet(str(tmp_path / "as_stored" / "cross_sell_scores.parquet")).df()
    assert list(zip(exported.customer_id, exported.product_category)) == sorted(zip(exported.customer_id, exported.product_category))


def test_checksum_check_detects_a_changed_file(tiny: Served, tmp_path: Path) -> None:
    copy = _copy(tiny, tmp_path)
    path = copy.exports / "cross_sell_scores.parquet"
    path.write_bytes(path.read_bytes() + b"\0")
    (copy.exports / "product_affinity.parquet").unlink()
    problems = ex.verify_exports(copy.exports)
    assert any("cross_sell_scores.parquet: sha256" in p for p in problems)
    assert "cross_sell_scores.parquet: not a readable Parquet file (InvalidInputException)" in problems
    assert "product_affinity.parquet: missing" in problems


# ---------------------------------------------------------------------------------------------
# Manifest


def test_manifest_describes_the_product(tiny: Served) -> None:
    manifest = yaml.safe_load((tiny.exports / MANIFEST_NAME).read_text())
    assert manifest["name"] == "cross_sell" and manifest["owner"].startswith("team:")
    assert re.fullmatch(r"\d+\.\d+\.\d+\+[0-9a-f]{8}", manifest["version"])
    assert manifest["domain"] and manifest["tags"]["use_cases"] and manifest["description"]
    assert {i["name"] for i in manifest["inputs"]} == {"customers", "products", "purchases"}
    customers = next(i for i in manifest["inputs"] if i["name"] == "customers")
    assert customers["rows"] == 4
    # Every personal column the marketing role masks, direct identifiers and income alike.
    assert customers["pii_columns"] == ["first_name", "last_name", "email", "phone", "birth_year", "income"]
    assert customers["source"].endswith("customer.csv")
    data = manifest["data"]
    assert data["input_format"] == "canonical" and data["unavailable_metrics"] == {}
    with duckdb.connect(str(tiny.warehouse), read_only=True) as conn:
        assert data["as_of"] == conn.execute("select max(purchase_date) from purchases").fetchone()[0].isoformat()
        version, strategy = conn.execute("select version, strategy from model_registry where is_current").fetchone()
    assert data["model"]["version"] == version and data["model"]["strategy"] == strategy
    tables = {t["name"]: t for t in manifest["outputs"]["tables"]}
    with duckdb.connect(str(tiny.warehouse), read_only=True) as conn:
        for name in ("customer_metrics", "product_affinity", "cross_sell_scores", "cross_sell_recommendations"):
            assert tables[name]["rows"] == conn.execute(f"select count(*) from main.{name}").fetchone()[0]
    assert [v["name"] for v in manifest["outputs"]["views"]] == [v.qualified for v in MODEL.views]
    assert {t["name"] for t in manifest["outputs"]["marketing_tables"]} == {f"main.{v.name}" for v in MODEL.views}
    index = ex.read_index(tiny.exports)
    assert [(f["file"], f["sha256"]) for f in manifest["outputs"]["files"]] == [(f["file"], f["sha256"]) for f in index["files"]]
    assert manifest["data_fingerprint"] == ex.data_fingerprint(index)
    assert {p["name"] for p in manifest["ports"]} == {"sql-analyst", "sql-marketing", "files", "http"}
    assert set(manifest["roles"]) == {"analyst", "marketing"}
    # SLOs come from the SLO table; the policies are those the deployed assets carry.
    assert [o["name"] for o in manifest["slos"]["objectives"]] == [s.name for s in slo.SLOS]
    policies = {p["asset"]: p for p in manifest["slos"]["freshness_policies_on_assets"]}
    assert policies["purchases"]["type"] == "time_window" and policies["cross_sell_scores"]["type"] == "cron"
    # Quality: the latest result of every check of the definitions, all from this run.
    repo = build_definitions().get_repository_def()
    expected = {k for a in [*repo.assets_defs_by_key.values(), *repo.asset_checks_defs_by_key.values()] for k in a.check_keys}
    checks = manifest["quality"]["checks"]
    assert {(c["asset"], c["check"]) for c in checks} == {(k.asset_key.to_user_string(), k.name) for k in expected}
    evaluated = {(e.asset_key.to_user_string(), e.check_name) for e in tiny.result.get_asset_check_evaluations()}
    assert {(c["asset"], c["check"]) for c in checks if "passed" in c} == evaluated
    assert all(c["passed"] for c in checks if c["blocking"])
    assert manifest["quality"]["summary"]["all_blocking_checks_passed"] is True
    assert manifest["quality"]["input_gates"]["pass_rate"] == 1.0
    # Shown in the UI: the same YAML in the materialization metadata.
    [event] = [e for e in tiny.result.get_asset_materialization_events() if e.asset_key.to_user_string() == "data_product_manifest"]
    metadata = event.materialization.metadata
    assert metadata["version"].value == manifest["version"]
    assert yaml.safe_load(metadata["manifest"].value.removeprefix("```yaml\n").removesuffix("```")) == manifest


def test_manifest_reports_a_failed_gate(tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = _serve(tmp_path, write_tiny_dataset(tmp_path / "good"), instance)
    assert first.result.success, _failures(first.result)
    before = yaml.safe_load((first.exports / MANIFEST_NAME).read_text())
    bad = write_tiny_dataset(tmp_path / "bad")
    purchases = (bad / "purchase.csv").read_text().replace("L6,O5,C3,P3,2025-04-01 09:00:00,1,15,other", "L6,O5,C3,P3,2025-04-01 09:00:00,1,-15,other")
    (bad / "purchase.csv").write_text(purchases)
    failed = _serve(tmp_path, bad, instance, selection="group:ingest")
    assert not failed.result.success
    manifest_only = _serve(tmp_path, bad, instance, selection="data_product_manifest")
    assert manifest_only.result.success
    after = yaml.safe_load((first.exports / MANIFEST_NAME).read_text())
    contract = next(c for c in after["quality"]["checks"] if (c["asset"], c["check"]) == ("audit/purchases", "contract"))
    assert contract["passed"] is False and contract["severity"] == "ERROR"
    assert "audit/purchases:contract" in after["quality"]["summary"]["failed"]
    assert after["quality"]["summary"]["all_blocking_checks_passed"] is False
    assert after["quality"]["input_gates"]["pass_rate"] < 1.0
    # Nothing was published, so the interface and the served data are unchanged.
    assert after["version"] == before["version"] and after["data_fingerprint"] == before["data_fingerprint"]


def test_every_table_asset_documents_the_columns_its_table_has(tiny: Served) -> None:
    """The column schema in the catalog is the table's columns, in order, for every asset backed by
    a table (dagster/table_name, else the asset key as schema.table or main.table). The audit tables
    of the inputs are left out: they hold the files as received, which the contract judges."""
    raw_inputs = {("audit", name) for name in ("customers", "products", "purchases")}
    graph = build_definitions(make_resources(tiny.data, tiny.warehouse)).resolve_asset_graph()
    checked = []
    with duckdb.connect(str(tiny.warehouse), read_only=True) as conn:
        for key in graph.get_all_asset_keys():
            metadata = graph.get(key).metadata or {}
            schema = metadata.get("dagster/column_schema")
            if schema is None or tuple(key.path) in raw_inputs:
                continue
            name = metadata.get("dagster/table_name") or ".".join(key.path if len(key.path) > 1 else ["main", *key.path])
            table_schema, table = name.split(".")
            actual = [r[0] for r in conn.execute(
                "select column_name from information_schema.columns where table_schema = ? and table_name = ? order by ordinal_position",
                [table_schema, table],
            ).fetchall()]
            assert [c.name for c in schema.columns] == actual, key.to_user_string()
            assert all(c.description for c in schema.columns), key.to_user_string()
            checked.append(key.to_user_string())
    assert {"cross_sell_model", "slo_report", "audit/landing_files", "cross_sell_scores", "semantic/customer"} <= set(checked)
    without = [k.to_user_string() for k in graph.get_all_asset_keys() if "dagster/column_schema" not in (graph.get(k).metadata or {})]
    assert sorted(without) == ["data_product_manifest", "marketing_database", "parquet_exports"]  # files, not tables


def test_version_follows_the_interface() -> None:
    files = [{"file": "a.parquet", "columns": [{"name": "x", "type": "DOUBLE"}]}]
    tables = [{"name": "t", "columns": ["x"]}]
    base = interface_fingerprint(MODEL, tables, files)
    assert interface_fingerprint(MODEL, tables, files) == base
    retyped = dataclasses.replace(
        MODEL,
        views=tuple(
            dataclasses.replace(v, columns=tuple(dataclasses.replace(c, type="FLOAT") if c.name == "score" else c for c in v.columns))
            for v in MODEL.views
        ),
    )
    assert interface_fingerprint(retyped, tables, files) != base
    assert interface_fingerprint(MODEL, tables, [{**files[0], "file": "b.parquet"}]) != base


# ---------------------------------------------------------------------------------------------
# Wiring and the README


def test_serving_assets_are_documented_and_owned() -> None:
    defs = build_definitions()
    specs = [s for s in defs.resolve_all_asset_specs() if s.group_name == "serving"]
    keys = {s.key.to_user_string() for s in specs}
    assert keys == {view_key(v).to_user_string() for v in MODEL.views} | {
        "marketing_database", "parquet_exports", "data_product_manifest"}
    for spec in specs:
        assert spec.owners and spec.kinds and spec.description and len(spec.description) > 60, spec.key
    graph = defs.resolve_asset_graph()
    for key in ("marketing_database", "parquet_exports", "data_product_manifest", "semantic/customer"):
        assert graph.get(dg.AssetKey.from_user_string(key)).pools == {"duckdb"}


def _readme_section() -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    start = text.index("## Consuming the data product")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_readme_examples_run_as_pasted(tiny: Served) -> None:
    section = _readme_section()
    [sql] = re.findall(r"```sql\n(.*?)```", section, re.S)
    [python] = re.findall(r"```python\n(.*?)```", section, re.S)
    with duckdb.connect(str(tiny.marketing), read_only=True) as conn:
        offers = conn.execute(sql).df()
    assert len(offers) == 4 and {"age_band", "income_band", "next_best_category", "lifetime_value"} <= set(offers.columns)
    assert offers.score.is_monotonic_decreasing
    code = python.replace("data/warehouse/", f"{tiny.warehouse.parent}{os.sep}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert "product_category" in out.getvalue() and "C1" in out.getvalue()


def test_pii_scan_does_not_trust_the_spec(tiny: Served, tmp_path: Path) -> None:
    """A spec that forgets to mask e-mail and birth year builds a leaking file; the scan, which
    takes its personal columns from the input contract too, still catches both."""
    copy = _copy(tiny, tmp_path)
    unmask = {"email", "birth_year"}
    careless = dataclasses.replace(
        MODEL,
        views=tuple(
            dataclasses.replace(v, columns=tuple(dataclasses.replace(c, mask=None) if c.name in unmask else c for c in v.columns))
            for v in MODEL.views
        ),
    )
    with duckdb.connect(str(copy.warehouse)) as conn:
        staging, _ = roles.build_marketing_database(conn, tmp_path / "careless.duckdb", careless)
        leaks = roles.find_pii_leaks(conn, staging, careless)
    found = {(leak.column, leak.kind) for leak in leaks if leak.relation == "main.customer"}
    assert {("email", "email"), ("email", "e-mail address"), ("email", "personal column")} <= found
    assert {("birth_year", "birth_year"), ("birth_year", "personal column")} <= found


def test_number_guard_never_skips_a_number() -> None:
    """The scan casts text to a number only where it may be one: over every character as a first
    character, after any whitespace, before the tails numbers are written with, the guarded cast
    gives what the plain cast gives, and it does skip texts that start with other letters."""
    with duckdb.connect() as conn:
        conn.execute(
            """create table texts as
               with firsts as (select chr(i::integer) as ch from range(1, 12288) t(i) where i not between 55296 and 57343),
                    leads as (select unnest(['', ' ', '  ', chr(9), chr(10), chr(11), chr(12), chr(13), ' +', ' -']) as lead),
                    tails as (select unnest(['', '1', '1.5', '.5', '5e3', 'nf', 'NF', 'nfinity', 'an', 'AN', '1 ', 'x1']) as tail)
               select lead || ch || tail as value from firsts, leads, tails"""
        )
        differ, numbers, skipped = conn.execute(
            f"""select count(*) filter (where {roles._as_number('value')} is distinct from try_cast(value as double)),
                       count(try_cast(value as double)),
                       count(*) filter (where not regexp_matches(value, '{roles._MAYBE_NUMBER}'))
                from texts"""
        ).fetchone()
    assert differ == 0
    assert numbers > 1000 and skipped > 1000


def test_pii_scan_reads_numbers_written_as_text(tiny: Served, tmp_path: Path) -> None:
    """Birth years written as text the way a number can be ('+1980', ' 1975', ' +1990.0') next to
    their customers are found, though no text equals the customer's own."""
    found = _scan_with_note(
        _copy(tiny, tmp_path), tmp_path, "create table notes.years as select * from (values ('C1', '+1980'), ('C2', ' 1975'), ('C3', ' +1990.0')) t(customer_id, y)"
    )
    assert ("notes.years", "y", "birth_year", 3) in found
