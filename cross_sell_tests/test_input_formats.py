"""The spend-summary and basket-log adapters on the two real public files, read in place.

Each test runs the whole graph (a real Dagster materialization into a DuckDB file) and checks
real properties of what came out: rows in and out, the categories found, an affinity complete for
those categories, a score for every customer and category they lack, and every quirk of the
file either cleaned with its count or rejected by a gate.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from dagster_duckdb import DuckDBResource

from cross_sell import contracts
from cross_sell.definitions import ASSETS, CHECKS
from cross_sell.ingest.landing import land, rejects_as_failure_cases_sql
from cross_sell.resources import InputFiles
from cross_sell.scoring.design import MAX_SHARE_CATEGORIES
from cross_sell_tests.conftest import SHARED_DATASETS, read_table

SPEND_SUMMARY = SHARED_DATASETS / "marketing_campaign.csv"
BASKET_LOG = SHARED_DATASETS / "Groceries_dataset.csv"
SPEND_COLUMNS = ["MntFishProducts", "MntFruits", "MntGoldProds", "MntMeatProducts", "MntSweetProducts", "MntWines"]

pytestmark = pytest.mark.skipif(
    not (SPEND_SUMMARY.is_file() and BASKET_LOG.is_file()), reason="the shared datasets are not beside the checkout"
)


def materialize(
    location: Path, input_format: str, warehouse: Path, selection: str | dg.AssetSelection = "*", **options: object
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*ASSETS, *CHECKS],
        selection=selection,
        resources={
            "duckdb": DuckDBResource(database=str(warehouse)),
            "input_files": InputFiles(location=str(location), input_format=input_format, **options),
        },
        raise_on_error=False,
    )


def materialization_metadata(result: dg.ExecuteInProcessResult, key: str | list[str]) -> dict:
    asset_key = dg.AssetKey(key)
    found = [
        e.event_specific_data.materialization.metadata
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.event_specific_data.materialization.asset_key == asset_key
    ]
    assert found, f"no materialization of {asset_key.to_user_string()}"
    return found[-1]


def check_evaluation(result: dg.ExecuteInProcessResult, check: str, key: list[str]):
    evaluations = [
        e for e in result.get_asset_check_evaluations()
        if e.check_name == check and e.asset_key == dg.AssetKey(key)
    ]
    assert evaluations, f"no evaluation of {check} on {key}"
    return evaluations[-1]


def findings(metadata: dict) -> dict[str, dict]:
    return {f["rule"]: f for f in metadata["source_rules_applied"].value}


def expected_affinity(owned: pd.DataFrame, min_support: float = 0.01) -> pd.DataFrame:
    """Category rules computed independently from (customer, category) ownership, in pandas:
    every ordered pair whose share of buying customers reaches ``min_support``."""
    x = pd.crosstab(owned["customer_id"], owned["product_category"]).clip(upper=1)
    together = x.T.to_numpy() @ x.to_numpy()
    a, b = np.nonzero(together / len(x) >= min_support)
    keep = a != b
    names = x.columns.to_numpy()
    return pd.DataFrame({
        "antecedent": names[a[keep]], "consequent": names[b[keep]], "support": together[a[keep], b[keep]] / len(x),
        "confidence": together[a[keep], b[keep]] / np.diag(together)[a[keep]],
    })


def assert_affinity_and_scores_complete(warehouse: Path, owned: pd.DataFrame, categories: set[str]) -> None:
    """The affinity holds exactly the category pairs bought together by at least 1% of buying
    customers, with the same support and confidence; every buying customer has one score per
    category they lack, and none for a category they own."""
    affinity = read_table(warehouse, "product_affinity where level = 'category'")
    expected = expected_affinity(owned)
    merged = expected.merge(affinity, on=["antecedent", "consequent"], how="outer", suffixes=("", "_published"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged.loc[merged["_merge"] != "both", ["antecedent", "consequent", "_merge"]]
    np.testing.assert_allclose(merged["support_published"], merged["support"], rtol=1e-12)
    np.testing.assert_allclose(merged["confidence_published"], merged["confidence"], rtol=1e-12)
    assert set(affinity["antecedent"]) <= categories

    scores = read_table(warehouse, "cross_sell_scores")
    buyers = owned["customer_id"].nunique()
    assert len(scores) == buyers * len(categories) - len(owned)
    assert scores.merge(owned, on=["customer_id", "product_category"]).empty, "a customer was scored for a category they own"
    assert scores["score"].between(0, 1).all()


def test_spend_summary_runs_the_whole_graph_on_the_published_file(tmp_path: Path) -> None:
    warehouse = tmp_path / "spend.duckdb"
    result = materialize(SPEND_SUMMARY, "spend_summary", warehouse)
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    raw = pd.read_csv(SPEND_SUMMARY, sep="\t")
    customers = read_table(warehouse, "customers")
    assert len(customers) == len(raw) == 2240
    assert set(customers["customer_id"]) == set(raw["ID"].astype(str))

    products = read_table(warehouse, "products", order_by="product_id")
    assert list(products["product_id"]) == SPEND_COLUMNS
    categories = set(products["product_category"])
    assert categories == {"Fish Products", "Fruits", "Gold Prods", "Meat Products", "Sweet Products", "Wines"}

    purchases = read_table(warehouse, "purchases")
    spend = raw.melt(id_vars="ID", value_vars=SPEND_COLUMNS)
    assert len(purchases) == int((spend["value"] > 0).sum())
    assert purchases["amount"].sum() == pytest.approx(float(raw[SPEND_COLUMNS].to_numpy().sum()))
    assert purchases["quantity"].isna().all()
    assert (purchases["order_id"] == purchases["customer_id"] + ":summary").all()
    assert purchases["purchase_date"].nunique() == 1
    assert str(purchases["purchase_date"].iloc[0].date()) == "2014-06-29"  # newest Dt_Customer

    # Quirks: cleaned by a documented rule, each with its count.
    rules = findings(materialization_metadata(result, ["audit", "customers"]))
    assert rules["income_missing"]["count"] == int(raw["Income"].isna().sum()) == 24
    assert rules["implausible_birth_year"]["count"] == 3
    assert rules["marital_status_synonym"]["count"] == 3  # Alone -> Single
    assert rules["marital_status_not_a_status"]["count"] == 4  # YOLO x2, Absurd x2
    assert {r["column"] for r in rules.values() if r["rule"] == "constant_column"} <= {"Z_CostContact", "Z_Revenue"}
    constant = [f for f in materialization_metadata(result, ["audit", "customers"])["source_rules_applied"].value
                if f["rule"] == "constant_column"]
    assert sorted(f["column"] for f in constant) == ["Z_CostContact", "Z_Revenue"]
    assert rules["date_to_iso"]["count"] == 2240
    assert customers["income"].isna().sum() == 24
    assert customers["birth_year"].min() >= 1901 and customers["birth_year"].isna().sum() == 3
    assert set(customers["marital_status"].dropna()) == {"Married", "Together", "Single", "Divorced", "Widow"}
    signup = dict(zip(raw["ID"].astype(str), pd.to_datetime(raw["Dt_Customer"], format="%d-%m-%Y").dt.date))
    assert dict(zip(customers["customer_id"], customers["signup_date"].dt.date)) == signup

    gate = check_evaluation(result, "source_rules", ["audit", "purchases"])
    assert gate.passed
    assert {k: v.value for k, v in gate.metadata.items() if k.startswith("invalid_count")} == {
        f"invalid_count({c})": 0 for c in raw.columns if c.startswith("Mnt")
    }

    metrics = read_table(warehouse, "customer_metrics")
    assert metrics["total_spend"].sum() == pytest.approx(float(raw[SPEND_COLUMNS].to_numpy().sum()))
    for unavailable in ("orders", "purchase_frequency", "avg_order_value", "recency_days", "clv"):
        assert metrics[unavailable].isna().all(), unavailable
    assert read_table(warehouse, "input_format").iloc[0].to_dict()["input_format"] == "spend_summary"

    owned = spend.loc[spend["value"] > 0, ["ID", "variable"]].rename(columns={"ID": "customer_id", "variable": "product_id"})
    owned["customer_id"] = owned["customer_id"].astype(str)
    owned = owned.merge(products[["product_id", "product_category"]])[["customer_id", "product_category"]]
    assert_affinity_and_scores_complete(warehouse, owned, categories)
    assert len(read_table(warehouse, "product_affinity where level = 'category'")) == 30  # every ordered pair of 6
    model = materialization_metadata(result, "cross_sell_model")
    assert model["strategy"].value == "cross_sectional"

    # The manifest tells consumers what the outputs stand on: the metrics this format cannot
    # give (null for everyone) and why, and that the scores come from the cross-sectional fallback.
    data = yaml.safe_load((warehouse.parent / "exports" / "data_product.yaml").read_text())["data"]
    assert data["input_format"] == "spend_summary"
    assert set(data["unavailable_metrics"]) == {"orders", "purchase_frequency", "avg_order_value", "recency_days", "clv"}
    assert data["unavailable_metrics"]["clv"].startswith("the inputs have no orders")
    assert str(data["as_of"]).startswith("2014-06-29")
    assert data["model"]["strategy"] == "cross_sectional" and "purchase dates span 0.0 days" in data["model"]["fallback_reason"]
    assert "cutoff" not in data["model"]


def test_a_bad_spend_value_blocks_publishing_and_names_the_column(tmp_path: Path) -> None:
    warehouse = tmp_path / "spend.duckdb"
    assert materialize(SPEND_SUMMARY, "spend_summary", warehouse).success
    published = read_table(warehouse, "purchases")

    lines = SPEND_SUMMARY.read_bytes().split(b"\r\n")
    header = lines[0].split(b"\t")
    wines = header.index(b"MntWines")
    for row in (1, 2, 3):
        cells = lines[row].split(b"\t")
        cells[wines] = [b"n/a", b"-5", b""][row - 1]
        lines[row] = b"\t".join(cells)
    broken = tmp_path / "broken.tsv"
    broken.write_bytes(b"\r\n".join(lines))

    result = materialize(broken, "spend_summary", warehouse)
    assert not result.success
    gate = check_evaluation(result, "source_rules", ["audit", "purchases"])
    assert not gate.passed
    assert gate.metadata["invalid_count(MntWines)"].value == 3
    assert gate.metadata["invalid_count(MntFruits)"].value == 0
    assert "MntWines" in gate.description and "n/a" in gate.metadata["failing_rows_sample"].value
    pd.testing.assert_frame_equal(read_table(warehouse, "purchases"), published)  # nothing overwritten

    # A renamed spend column ('Wines' for 'MntWines', as edited copies of the file have) would drop
    # the category and its spend without a word: the landing fails, naming it.
    renamed = tmp_path / "renamed.tsv"
    renamed.write_bytes(SPEND_SUMMARY.read_bytes().replace(b"\tMntWines\t", b"\tWines\t", 1))
    result = materialize(renamed, "spend_summary", warehouse, dg.AssetSelection.groups("ingest"))
    assert not result.success and "audit__products" in result.get_failed_step_keys()
    [failure] = [e for e in result.all_events if e.is_step_failure and e.step_key == "audit__products"]
    data = failure.step_failure_data.user_failure_data
    assert data.metadata["rule"].value == "source_layout"
    assert "lacks spend column(s) the published catalogue has: MntWines (category Wines)" in data.description
    pd.testing.assert_frame_equal(read_table(warehouse, "purchases"), published)
    # Retired on purpose: allowed for that run, and the category is gone from the catalogue.
    allowed = materialize(renamed, "spend_summary", warehouse, dg.AssetSelection.groups("ingest"), allow_dropped_categories=True)
    assert allowed.success
    assert "Wines" not in set(read_table(warehouse, "products")["product_category"])


def test_basket_log_runs_the_whole_graph_on_the_published_file(tmp_path: Path) -> None:
    warehouse = tmp_path / "baskets.duckdb"
    result = materialize(BASKET_LOG, "basket_log", warehouse)
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    raw = pd.read_csv(BASKET_LOG)
    raw["item"] = raw["itemDescription"].str.strip().str.lower()
    raw["day"] = pd.to_datetime(raw["Date"], format="%d-%m-%Y")

    purchases = read_table(warehouse, "purchases")
    distinct_lines = raw.drop_duplicates(["Member_number", "day", "item"])
    assert len(purchases) == len(distinct_lines) == len(raw) - 759
    assert purchases["quantity"].sum() == len(raw) == 38765
    assert purchases["order_id"].nunique() == 14963
    assert purchases["amount"].isna().all()
    assert purchases["purchase_date"].min() == raw["day"].min() and purchases["purchase_date"].max() == raw["day"].max()

    rules = findings(materialization_metadata(result, ["audit", "purchases"]))
    assert rules["duplicate_rows"]["count"] == 759
    assert rules["date_to_iso"]["count"] == len(raw)
    product_rules = findings(materialization_metadata(result, ["audit", "products"]))
    assert product_rules["item_name_whitespace"]["count"] == int((raw["itemDescription"] != raw["itemDescription"].str.strip()).sum())
    assert "cream cheese " in product_rules["item_name_whitespace"]["examples"]

    products = read_table(warehouse, "products")
    assert len(products) == raw["item"].nunique() == 167
    # 167 categories: the model keeps share features for the most bought only (see design.share_categories).
    features = materialization_metadata(result, "cross_sell_model")["features"].value
    spend_shares = [f for f in features if f.startswith("spend_share[")]
    assert len(spend_shares) == len([f for f in features if f.startswith("order_share[")]) == MAX_SHARE_CATEGORIES
    assert {f[len("spend_share["):-1] for f in spend_shares} <= set(products["product_category"])
    assert (products["product_category"] == products["product_name"]).all()
    assert not products["product_name"].str.endswith(" ").any()
    customers = read_table(warehouse, "customers")
    assert len(customers) == raw["Member_number"].nunique() == 3898

    metrics = read_table(warehouse, "customer_metrics")
    for unavailable in ("total_spend", "avg_order_value", "clv"):
        assert metrics[unavailable].isna().all(), unavailable
    expected_orders = raw.groupby("Member_number")["day"].nunique()
    assert metrics.set_index("customer_id")["orders"].sort_index().to_list() == expected_orders.sort_index().to_list()
    unavailable = materialization_metadata(result, "customer_metrics")["unavailable_metrics"].value
    assert set(unavailable) == {"total_spend", "avg_order_value", "clv"}
    assert "no prices" in unavailable["total_spend"]

    raw["product_id"] = raw["itemDescription"].str.strip().str.replace(r"\s+", " ", regex=True).str.lower()
    owned = raw[["Member_number", "product_id"]].drop_duplicates().rename(columns={"Member_number": "customer_id"})
    owned["customer_id"] = owned["customer_id"].astype(str)
    owned = owned.merge(products[["product_id", "product_category"]])[["customer_id", "product_category"]]
    assert_affinity_and_scores_complete(warehouse, owned, set(products["product_category"]))


def test_input_format_from_the_environment_and_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CROSS_SELL_INPUT_FORMAT picks the adapter; CROSS_SELL_DATA_DIR may name a folder holding the file."""
    from cross_sell.resources import default_resources

    folder = tmp_path / "baskets"
    folder.mkdir()
    (folder / "2015.csv").symlink_to(BASKET_LOG)
    monkeypatch.setenv("CROSS_SELL_INPUT_FORMAT", "basket_log")
    monkeypatch.setenv("CROSS_SELL_DATA_DIR", str(folder))
    monkeypatch.setenv("CROSS_SELL_DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    resources = default_resources()
    assert resources["input_files"].input_format == "basket_log"
    result = dg.materialize([*ASSETS, *CHECKS], selection="group:ingest", resources=resources, raise_on_error=False)
    assert result.success
    assert len(read_table(tmp_path / "w.duckdb", "purchases")) == 38765 - 759

    monkeypatch.setenv("CROSS_SELL_INPUT_FORMAT", "wide")
    result = dg.materialize([*ASSETS, *CHECKS], selection="group:ingest", resources=default_resources(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "canonical, spend_summary, basket_log" in failure.step_failure_data.error.message


def test_a_file_of_the_wrong_layout_fails_landing_with_the_columns_it_needs(tmp_path: Path) -> None:
    result = materialize(BASKET_LOG, "spend_summary", tmp_path / "w.duckdb", selection="group:ingest")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert "spend_summary input needs" in message and "itemDescription" in message


def test_basket_log_options_category_column_iso_dates_and_a_bad_date(tmp_path: Path) -> None:
    """Another basket log: semicolons, ISO dates (date_format), its own category column; then a
    date that does not match the format fails the contract gate with its value, never guessed."""
    log = tmp_path / "log.csv"
    log.write_text(
        "customer;order_date;item;category\n"
        "A;2025-03-01;Brie;Cheese\nA;2025-03-01;Brie;Cheese\nA;2025-03-02;Merlot ;Wine\nB;2025-03-02;merlot;Wine\n"
    )
    warehouse = tmp_path / "w.duckdb"
    resources = {
        "duckdb": DuckDBResource(database=str(warehouse)),
        "input_files": InputFiles(location=str(log), input_format="basket_log", date_format="%Y-%m-%d"),
    }
    result = dg.materialize([*ASSETS, *CHECKS], selection="group:ingest", resources=resources, raise_on_error=False)
    assert result.success
    products = read_table(warehouse, "products", order_by="product_id")
    assert products[["product_id", "product_category"]].values.tolist() == [["brie", "Cheese"], ["merlot", "Wine"]]
    purchases = read_table(warehouse, "purchases", order_by="purchase_id")
    assert purchases[["order_id", "quantity"]].values.tolist() == [
        ["A|2025-03-01", 2], ["A|2025-03-02", 1], ["B|2025-03-02", 1]
    ]

    log.write_text("customer;order_date;item\nA;01/03/2025;Brie\n")
    result = dg.materialize([*ASSETS, *CHECKS], selection="group:ingest", resources=resources, raise_on_error=False)
    assert not result.success
    gate = check_evaluation(result, "contract", ["audit", "purchases"])
    assert gate.metadata["failure_counts"].value == {"type:timestamp": {"purchase_date": 1}}
    assert "01/03/2025 (not %Y-%m-%d)" in gate.metadata["failing_rows_sample"].value
    assert len(read_table(warehouse, "purchases")) == 3  # the last good load stays published

    # A date in another format fails even when it would read as ISO: 2025-03-01 in a dd-mm-yyyy log.
    log.write_text("customer;order_date;item\nA;02-03-2025;Brie\nB;2025-03-01;Brie\n")
    day_first = {**resources, "input_files": InputFiles(location=str(log), input_format="basket_log", date_format="%d-%m-%Y")}
    result = dg.materialize([*ASSETS, *CHECKS], selection="group:ingest", resources=day_first, raise_on_error=False)
    assert not result.success
    gate = check_evaluation(result, "contract", ["audit", "purchases"])
    assert gate.metadata["failure_counts"].value == {"type:timestamp": {"purchase_date": 1}}
    assert "2025-03-01 (not %d-%m-%Y)" in gate.metadata["failing_rows_sample"].value
    assert len(read_table(warehouse, "purchases")) == 3


def test_a_last_line_cut_short_in_a_crlf_file_is_reported_as_it_is(tmp_path: Path) -> None:
    """A CRLF file whose last line was cut short: the rejected line is shown as written, with no
    talk of an unclosed quote (DuckDB hands the record back starting with the previous LF)."""
    path = tmp_path / "purchase.csv"
    path.write_bytes(
        b"purchase_id,order_id,customer_id,product_id,purchase_date,quantity,amount,channel\r\n"
        b"L1,O1,C1,P1,2025-01-01 10:00:00,1,10,web\r\n"
        b"L2,O2,C1"
    )
    with duckdb.connect() as conn:
        land(conn, "purchases", [path], contracts.column_names(contracts.Purchase))
        cases = conn.execute(rejects_as_failure_cases_sql("purchases")).fetchall()
    assert {(check, value) for check, _, value, _ in cases} == {("parse:missing_columns", "purchase.csv line 3: L2,O2,C1")}
    assert [column for _, column, _, _ in cases][0] == "product_id"


def test_spend_summary_dates_in_another_format_say_which_setting_to_change(tmp_path: Path) -> None:
    dotted = tmp_path / "dotted.tsv"
    lines = SPEND_SUMMARY.read_bytes().split(b"\r\n")
    header = lines[0].split(b"\t")
    signup = header.index(b"Dt_Customer")
    for i in range(1, len(lines)):
        cells = lines[i].split(b"\t")
        if len(cells) > signup:
            cells[signup] = cells[signup].replace(b"-", b".")
            lines[i] = b"\t".join(cells)
    dotted.write_bytes(b"\r\n".join(lines))
    result = materialize(dotted, "spend_summary", tmp_path / "w.duckdb", dg.AssetSelection.assets(dg.AssetKey(["audit", "purchases"])))
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure and e.step_key == "audit__purchases"]
    description = failure.step_failure_data.user_failure_data.description
    assert "no Dt_Customer value reads as a date with date_format '%d-%m-%Y'" in description
    assert "set input_files.date_format" in description and "04.09.2012" in description
