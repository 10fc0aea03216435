"""Bad-input corpus: one mutation of a good tiny dataset per case, run after a good run.

Every case asserts a clear failure (the failing step or gate, and in the gate's metadata the
rule, the column and the failing count) and that nothing downstream changed: every published
table and every output is row-for-row what the good run left.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from cross_sell.definitions import ASSETS, CHECKS
from cross_sell_tests.conftest import (
    PROJECT_ROOT,
    RunGraph,
    cli_env,
    dagster_cli,
    make_resources,
    read_table,
    write_tiny_dataset,
)

PUBLISHED = [
    "customers",
    "products",
    "purchases",
    "customer_metrics",
    "customer_category_matrix",
    "product_affinity",
    "cross_sell_scores",
    "cross_sell_recommendations",
]
INPUTS = ["customers", "products", "purchases"]
INGEST = ["audit/customers", "audit/products", "audit/purchases", "customers", "products", "purchases"]
PURCHASE_HEADER = "purchase_id,order_id,customer_id,product_id,purchase_date,quantity,amount,channel"


def published_tables(warehouse: Path) -> dict[str, pd.DataFrame]:
    return {table: read_table(warehouse, table, "all") for table in PUBLISHED}


def assert_unchanged(warehouse: Path, before: dict[str, pd.DataFrame], tables: list[str] = PUBLISHED) -> None:
    after = published_tables(warehouse)
    for table in tables:
        pd.testing.assert_frame_equal(after[table], before[table], obj=table)


@pytest.fixture(scope="module")
def good_warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pd.DataFrame]]:
    """A warehouse after a good whole-graph run on the tiny dataset, and its published tables."""
    root = tmp_path_factory.mktemp("good")
    warehouse = root / "warehouse" / "cross_sell.duckdb"
    result = dg.materialize(
        [*ASSETS, *CHECKS], resources=make_resources(write_tiny_dataset(root / "input"), warehouse), raise_on_error=False
    )
    assert result.success
    tables = published_tables(warehouse)
    assert all(len(t) for t in tables.values())
    return warehouse, tables


@pytest.fixture
def after_good_run(good_warehouse, warehouse_path: Path, tmp_path: Path) -> tuple[Path, dict[str, pd.DataFrame]]:
    """This test's own copy of the good warehouse, and a fresh good input folder to mutate."""
    source, tables = good_warehouse
    warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copy(f"{source}{suffix}", f"{warehouse_path}{suffix}")
    return write_tiny_dataset(tmp_path / "input"), tables


# ---------------------------------------------------------------------------------------------
# Mutations


def edit(file: str, change: Callable[[str], str]) -> Callable[[Path], None]:
    def _apply(folder: Path) -> None:
        path = folder / file
        path.write_text(change(path.read_text()))

    return _apply


def replace_line(file: str, old: str, new: str) -> Callable[[Path], None]:
    def change(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    return edit(file, change)


def append_bytes(file: str, data: bytes) -> Callable[[Path], None]:
    def _apply(folder: Path) -> None:
        with (folder / file).open("ab") as handle:
            handle.write(data)

    return _apply


def write_bytes(file: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / file).write_bytes(data)


def drop_column(file: str, column: str) -> Callable[[Path], None]:
    def change(text: str) -> str:
        frame = pd.read_csv(pd.io.common.StringIO(text), dtype=str, keep_default_na=False)
        return frame.drop(columns=[column]).to_csv(index=False)

    return edit(file, change)


L1 = "L1,O1,C1,P1,2025-01-01 10:00:00,1,10,web"
L6 = "L6,O5,C3,P3,2025-04-01 09:00:00,1,15,other"
C4 = "C4,Dee,Ng,dee@example.com,,2001,,,,DE,2024-03-05"


@dataclass(frozen=True)
class Case:
    """One bad input: what to break, which steps must fail, and what the gate must report."""

    name: str
    mutate: Callable[[Path], None]
    failed_steps: set[str]
    # (asset, check) -> exact failure_counts of that gate's evaluation
    counts: dict[tuple[str, str], dict[str, dict[str, int]]] = field(default_factory=dict)
    message: str | None = None  # for steps that fail before any gate: text the failure must contain
    rejected_lines: int = 0


PURCHASE_GATE = ("audit/purchases", "contract")
CUSTOMER_GATE = ("audit/customers", "contract")
REFERENCES = ("audit/purchases", "referential_integrity")
PURCHASE_CONTRACT_STEP = "audit__purchases_contract"

CASES = [
    Case(
        "missing_required_column",
        drop_column("purchase.csv", "amount"),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"schema:column_present": {"amount": 1}}},
    ),
    Case(
        "missing_reference_column",  # the reference gate says which column it lacks, not a binder error
        drop_column("purchase.csv", "customer_id"),
        {PURCHASE_CONTRACT_STEP, "audit__purchases_referential_integrity"},
        {
            PURCHASE_GATE: {"schema:column_present": {"customer_id": 1}},
            REFERENCES: {"schema:column_present": {"customer_id": 1}},
        },
    ),
    Case(
        "text_in_amount",
        replace_line("purchase.csv", L1, L1.replace(",10,web", ",ten,web")),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"type:number": {"amount": 1}}},
    ),
    Case(
        "null_customer_id_in_customers",
        replace_line("customer.csv", C4, C4.replace("C4,", ",", 1)),
        {"audit__customers_contract"},
        {CUSTOMER_GATE: {"completeness:not_null": {"customer_id": 1}}},
    ),
    Case(
        "blank_customer_id_in_customers",
        replace_line("customer.csv", C4, C4.replace("C4,", "   ,", 1)),
        {"audit__customers_contract"},
        {CUSTOMER_GATE: {"completeness:not_blank": {"customer_id": 1}, "validity:no_surrounding_spaces": {"customer_id": 1}}},
    ),
    Case(
        "null_customer_id_in_purchases",
        replace_line("purchase.csv", L6, L6.replace(",C3,", ",,")),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"completeness:not_null": {"customer_id": 1}}},
    ),
    Case(
        "blank_customer_id_in_purchases",
        replace_line("purchase.csv", L6, L6.replace(",C3,", ", ,")),
        {PURCHASE_CONTRACT_STEP, "audit__purchases_referential_integrity"},
        {
            PURCHASE_GATE: {"completeness:not_blank": {"customer_id": 1}},
            REFERENCES: {"referential_integrity:exists_in_customer": {"customer_id": 1}},
        },
    ),
    Case(
        "duplicate_customer_id",
        edit("customer.csv", lambda text: text + "C1,Zed,Doe,zed@example.com,,1970,,,,US,2024-05-01\n"),
        {"audit__customers_contract"},
        {CUSTOMER_GATE: {"uniqueness:unique": {"customer_id": 2}}},  # both copies are listed
    ),
    Case(
        "duplicate_purchase_id",
        replace_line("purchase.csv", "L2,O1,", "L1,O1,"),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"uniqueness:unique": {"purchase_id": 2}}},
    ),
    Case(
        "negative_amount",
        replace_line("purchase.csv", L1, L1.replace(",10,web", ",-10,web")),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"validity:greater_than_or_equal_to(0)": {"amount": 1}}},
    ),
    Case(
        "nan_and_infinite_amounts",  # DuckDB reads both as numbers, and NaN >= 0 holds in SQL
        edit("purchase.csv", lambda text: text.replace(",1,10,web", ",1,NaN,web").replace(",1,15,other", ",1,inf,other")),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"validity:finite": {"amount": 2}}},
    ),
    Case(
        "infinite_price_and_nan_income",  # a NaN income would reach marketing as the top income band
        lambda folder: (
            edit("product.csv", lambda text: text.replace("P2,Steak,Meat,20", "P2,Steak,Meat,-Infinity"))(folder),
            edit("customer.csv", lambda text: text.replace(",30000,GB,", ",nan,GB,"))(folder),
        ),
        {"audit__products_contract", "audit__customers_contract"},
        {("audit/products", "contract"): {"validity:finite": {"price": 1}, "validity:greater_than_or_equal_to(0)": {"price": 1}},
         CUSTOMER_GATE: {"validity:finite": {"income": 1}}},
    ),
    Case(
        "fractional_quantity",
        replace_line("purchase.csv", L1, L1.replace(",1,10,", ",1.5,10,")),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"type:integer": {"quantity": 1}}},  # never rounded to 2 on its way in
    ),
    Case(
        "zero_quantity",
        replace_line("purchase.csv", L1, L1.replace(",1,10,", ",0,10,")),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"validity:greater_than(0)": {"quantity": 1}}},
    ),
    Case(
        "unknown_customer",
        replace_line("purchase.csv", L6, L6.replace(",C3,", ",C9,")),
        {"audit__purchases_referential_integrity"},
        {PURCHASE_GATE: {}, REFERENCES: {"referential_integrity:exists_in_customer": {"customer_id": 1}}},
    ),
    Case(
        "unknown_product",
        replace_line("purchase.csv", L6, L6.replace(",P3,", ",P9,")),
        {"audit__purchases_referential_integrity"},
        {REFERENCES: {"referential_integrity:exists_in_product": {"product_id": 1}}},
    ),
    Case(
        "future_purchase_date",
        replace_line("purchase.csv", L6, L6.replace("2025-04-01", "2099-04-01")),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"validity:not_in_future": {"purchase_date": 1}}},
    ),
    Case(
        "unparseable_purchase_date",
        replace_line("purchase.csv", L6, L6.replace("2025-04-01 09:00:00", "01/04/2025")),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"type:timestamp": {"purchase_date": 1}}},
    ),
    Case(
        "purchase_dates_not_iso",  # DuckDB's cast would read both, the second with its offset dropped
        edit("purchase.csv", lambda text: text.replace("2025-01-01 10:00:00", "2025/01/01 10:00:00")
             .replace("2025-04-01 09:00:00", "2025-04-01 09:00:00+02")),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"type:timestamp": {"purchase_date": 3}}},
    ),
    Case(
        "header_only_file",
        write_bytes("purchase.csv", (PURCHASE_HEADER + "\n").encode()),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"completeness:not_empty": {"<table>": 1}}, REFERENCES: {}},
    ),
    Case(
        "missing_file",
        lambda folder: (folder / "purchase.csv").unlink(),
        {"audit__purchases"},
        message="Input missing for purchases: no input for 'purchases'",
    ),
    Case(
        "zero_byte_file",
        write_bytes("purchase.csv", b""),
        {"audit__purchases"},
        message="input file is empty (0 bytes): purchase.csv",
    ),
    Case(
        "header_not_utf8",
        lambda folder: (folder / "purchase.csv").write_bytes(
            b"purchase_id,order_id,customer_id,product_id,purchase_date,quantity,amo\xffunt,channel\n"
            + (folder / "purchase.csv").read_bytes().split(b"\n", 1)[1]
        ),
        {"audit__purchases"},
        message="purchase.csv: the header line is not UTF-8 text",
    ),
    Case(
        "customer_id_with_a_trailing_space",  # 'C4 ' would be published as a customer no purchase can join
        replace_line("customer.csv", C4, C4.replace("C4,", "C4 ,", 1)),
        {"audit__customers_contract"},
        {CUSTOMER_GATE: {"validity:no_surrounding_spaces": {"customer_id": 1}}},
    ),
    Case(
        "purchase_and_order_ids_with_spaces",  # 'L2 ' re-sent beside 'L2' would be counted twice
        replace_line("purchase.csv", "L2,O1,", "L2 , O1,"),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"validity:no_surrounding_spaces": {"purchase_id": 1, "order_id": 1}}},
    ),
    Case(
        "category_with_a_trailing_space",  # 'Fish ' beside 'Fish' would be a second category
        replace_line("product.csv", "P3,Salmon,Fish,15", "P3,Salmon,Fish ,15"),
        {"audit__products_contract"},
        {("audit/products", "contract"): {"validity:no_surrounding_spaces": {"product_category": 1}}},
    ),
    Case(
        "semicolon_separated",
        edit("purchase.csv", lambda text: text.replace(",", ";")),
        {"audit__purchases"},
        message="purchase.csv: the header is one column, 'purchase_id;order_id;",
    ),
    Case(
        "unbalanced_quote",
        append_bytes("purchase.csv", b'L7,O6,C1,"P1,2025-01-01,1,10,web\n'),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"parse:unquoted_value": {"product_id": 1}}},
        rejected_lines=1,
    ),
    Case(
        "ragged_row_too_short",
        append_bytes("purchase.csv", b"L7,O6,C1,P1,2025-01-01,1,10\n"),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"parse:missing_columns": {"channel": 1}}},
        rejected_lines=1,
    ),
    Case(
        "ragged_row_too_long",
        append_bytes("purchase.csv", b"L7,O6,C1,P1,2025-01-01,1,10,web,surplus\n"),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"parse:too_many_columns": {"<line>": 1}}},
        rejected_lines=1,
    ),
    Case(
        "a_stale_input_beside_the_new_one",  # purchases.csv (new) beside purchase.csv (stale): never guess
        lambda folder: (folder / "purchases.csv").write_text((folder / "purchase.csv").read_text()),
        {"audit__purchases"},
        message="more than one input for 'purchases' in",
    ),
    Case(
        "a_stale_input_differing_only_in_case",  # Purchase.CSV beside purchase.csv: two inputs, never guess
        lambda folder: (folder / "Purchase.CSV").write_text((folder / "purchase.csv").read_text()),
        {"audit__purchases"},
        message="more than one input for 'purchases' in",
    ),
    Case(
        "bytes_not_utf8",
        append_bytes("purchase.csv", b"L7,O6,C1,P1,2025-01-01,1,10,w\xff\xfeb\n"),
        {PURCHASE_CONTRACT_STEP},
        {PURCHASE_GATE: {"parse:invalid_encoding": {"channel": 1}}},
        rejected_lines=1,
    ),
]


def _evaluation(result: dg.ExecuteInProcessResult, asset: str, check: str) -> dg.AssetCheckEvaluation:
    [found] = [
        e for e in result.get_asset_check_evaluations() if e.asset_key.to_user_string() == asset and e.check_name == check
    ]
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_clearly_and_changes_nothing(
    case: Case, after_good_run, run_graph: RunGraph, warehouse_path: Path
) -> None:
    data, before = after_good_run
    case.mutate(data)

    result = run_graph(data)

    assert not result.success
    assert result.get_failed_step_keys() == case.failed_steps
    for (asset, check), counts in case.counts.items():
        evaluation = _evaluation(result, asset, check)
        assert evaluation.passed is (not counts)
        assert evaluation.metadata["failure_counts"].value == counts
        if counts:
            assert evaluation.severity == dg.AssetCheckSeverity.ERROR
            by_rule = evaluation.metadata["failures_by_rule"].value
            for rule, columns in counts.items():
                assert rule in by_rule and all(column in by_rule for column in columns)
                assert rule in evaluation.description  # the one-line summary names it too
    if case.message is not None:
        [failure] = result.get_step_failure_events()
        assert case.message in failure.event_specific_data.error.to_string()
    if case.rejected_lines:
        with duckdb.connect(str(warehouse_path), read_only=True) as conn:
            assert conn.execute("select count(*) from audit.purchases_rejects").fetchone()[0] == case.rejected_lines

    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert not materialized & set(PUBLISHED)
    assert_unchanged(warehouse_path, before)


def test_a_quote_left_open_mid_file_says_the_lines_after_it_were_lost(
    after_good_run, run_graph: RunGraph, warehouse_path: Path
) -> None:
    """In CSV a quoted value may span lines, so a quote never closed swallows the lines after it.
    The gate fails on the line where it opened and says the rest was neither landed nor checked."""
    data, before = after_good_run
    replace_line("purchase.csv", L1, L1.replace(",web", ',"web'))(data)
    result = run_graph(data)
    assert not result.success
    gate = _evaluation(result, *PURCHASE_GATE)
    # Nothing else was read, so the load is empty too.
    assert gate.metadata["failure_counts"].value == {
        "parse:unquoted_value": {"channel": 1}, "completeness:not_empty": {"<table>": 1}
    }
    sample = gate.metadata["failing_rows_sample"].value
    assert "purchase.csv line 2: L1,O1,C1,P1,2025-01-01 10:00:00,1,10," in sample
    assert "none of them was landed or checked" in sample and "L2,O1" not in sample
    assert gate.metadata["rows_checked"].value == 0
    assert_unchanged(warehouse_path, before)


def test_a_value_failing_for_its_spaces_shows_them_in_the_sample(
    after_good_run, run_graph: RunGraph, warehouse_path: Path
) -> None:
    """A table cell drops surrounding whitespace: 'C1 ' would read as C1, an existing customer."""
    data, before = after_good_run
    replace_line("purchase.csv", L1, L1.replace(",C1,", ",C1 ,"))(data)
    result = run_graph(data)
    assert not result.success
    gate = _evaluation(result, "audit/purchases", "referential_integrity")
    assert gate.metadata["failure_counts"].value == {"referential_integrity:exists_in_customer": {"customer_id": 1}}
    assert "'C1 '" in gate.metadata["failing_rows_sample"].value
    assert_unchanged(warehouse_path, before)


# ---------------------------------------------------------------------------------------------
# Inputs that are unusual but acceptable, and soft signals.


def test_input_names_in_any_case_are_found(after_good_run, run_graph, warehouse_path) -> None:
    """A Windows export names its files Customer.CSV and so on: found like customer.csv."""
    data, before = after_good_run
    for old, new in (("customer.csv", "Customer.CSV"), ("product.csv", "PRODUCTS.csv"), ("purchase.csv", "Purchase.Csv")):
        (data / old).rename(data / new)
    result = run_graph(data, selection=INGEST)
    assert result.success
    for table in ("customers", "products", "purchases"):
        pd.testing.assert_frame_equal(read_table(warehouse_path, table, "all"), before[table], obj=table)


def test_extra_column_is_kept_in_audit_listed_and_not_published(after_good_run, run_graph, warehouse_path) -> None:
    data, before = after_good_run
    edit("purchase.csv", lambda text: "\n".join(
        line + (",coupon" if i == 0 else ",X1") for i, line in enumerate(text.strip().split("\n"))
    ) + "\n")(data)
    instance = dg.DagsterInstance.ephemeral()

    result = run_graph(data, selection=INGEST, instance=instance)

    assert result.success
    [landing] = [
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "audit/purchases"
    ]
    metadata = landing.materialization.metadata
    assert metadata["columns_not_in_contract"].value == ["coupon"]
    warnings = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.level == logging.WARNING and "coupon" in entry.user_message
    ]
    assert warnings and "kept in audit only" in warnings[0]
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        assert conn.execute("select distinct coupon from audit.purchases").fetchall() == [("X1",)]
    assert "coupon" not in read_table(warehouse_path, "purchases").columns
    assert_unchanged(warehouse_path, before, INPUTS)  # same data otherwise: published exactly as before


def test_columns_are_matched_by_name_across_files(after_good_run, run_graph, warehouse_path) -> None:
    data, before = after_good_run
    # The purchases as a folder of two files whose columns come in different orders.
    frame = pd.read_csv(data / "purchase.csv", dtype=str, keep_default_na=False)
    (data / "purchase.csv").unlink()
    (data / "purchase").mkdir()
    frame.head(3).to_csv(data / "purchase" / "part-1.csv", index=False)
    frame.tail(3)[list(reversed(frame.columns))].to_csv(data / "purchase" / "part-2.csv", index=False)
    assert run_graph(data, selection=INGEST).success
    assert_unchanged(warehouse_path, before, INPUTS)


def test_row_count_drop_warns_without_blocking(after_good_run, run_graph, warehouse_path) -> None:
    data, before = after_good_run
    edit("purchase.csv", lambda text: "\n".join(text.strip().split("\n")[:3]) + "\n")(data)  # 2 of 6 lines

    instance = dg.DagsterInstance.ephemeral()
    result = run_graph(data, selection=INGEST, instance=instance)

    assert result.success
    drop = _evaluation(result, "audit/purchases", "row_count_drop")
    assert not drop.passed and drop.severity == dg.AssetCheckSeverity.WARN
    assert drop.metadata["new_rows"].value == 2 and drop.metadata["published_rows"].value == 6
    assert len(read_table(warehouse_path, "purchases")) == 2  # published: a warning never blocks
    # Said in the run's log at WARNING, not only in the check's DEBUG-level event.
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any("row_count_drop: the new purchases input has 2 rows, 33% of the 6 published" in w for w in warnings), warnings
    # And in the alerts table the on-call person reads, though the run succeeded.
    [alert] = read_table(warehouse_path, "audit.run_alerts").itertuples()
    assert alert.run_id == result.run_id and alert.gate == "audit/purchases:row_count_drop"
    assert alert.failed_step == "audit__purchases_row_count_drop" and alert.message.startswith("WARN: the new purchases input has 2 rows")


def test_publish_refuses_a_load_whose_gates_failed_even_when_run_alone(after_good_run, run_graph, warehouse_path) -> None:
    data, before = after_good_run
    replace_line("purchase.csv", L1, L1.replace(",10,web", ",-10,web"))(data)
    assert not run_graph(data).success
    # Someone selects the publish step on its own: it checks the gate log, and refuses.
    result = run_graph(data, selection=["customers", "products", "purchases"])
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert "Refusing to publish" in failure.event_specific_data.error.to_string()
    assert "purchases: contract (failed)" in failure.event_specific_data.error.to_string()
    assert_unchanged(warehouse_path, before)


def test_references_verdict_expires_when_customers_are_relanded(after_good_run, run_graph, warehouse_path) -> None:
    data, before = after_good_run
    # The good load passed every gate. Now only the customers are re-landed, without C3 (who bought L5, L6):
    # the purchases' referential-integrity verdict was reached against the old customers, so it no longer counts.
    replace_line("customer.csv", "C3,Cid,Fox,cid@example.com,+1-555-000-0003,1990,Basic,Single,30000,GB,2024-03-01\n", "")(data)
    assert run_graph(data, selection=["audit/customers"]).success
    result = run_graph(data, selection=["customers", "products", "purchases"])
    assert not result.success
    said = result.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "purchases: referential_integrity (passed against customers that have been replaced since)" in said
    assert "--select 'group:ingest'" in said
    assert_unchanged(warehouse_path, before)


# ---------------------------------------------------------------------------------------------
# From the shell


@pytest.mark.slow
def test_cli_run_on_bad_data_exits_non_zero_and_names_the_gate(
    tiny_data: Path, warehouse_path: Path, dagster_home: Path
) -> None:
    replace_line("purchase.csv", L1, L1.replace(",10,web", ",-10,web"))(tiny_data)
    proc = subprocess.run(
        [*dagster_cli(), "asset", "materialize", "-m", "cross_sell.definitions", "--select", "*"],
        cwd=PROJECT_ROOT,
        env=cli_env(tiny_data, warehouse_path, dagster_home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Gate audit/purchases:contract FAILED" in output
    assert "validity:greater_than_or_equal_to(0) on amount: 1" in output
    # The offending row itself, in the terminal: rule, column, value, row and the row's keys.
    [row] = [line for line in output.splitlines() if line.startswith("| validity:greater_than_or_equal_to(0)")]
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "validity:greater_than_or_equal_to(0)", "amount", "-10", "0", "L1", "O1", "C1", "P1", "purchase.csv"
    ]
    assert "blocking asset check failed" in output and "audit/purchases: contract" in output
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        published = conn.execute("select table_name from information_schema.tables where table_schema = 'main'").fetchall()
    assert not {name for (name,) in published} & set(PUBLISHED)
