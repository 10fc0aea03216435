"""The gate factory and the report behind it: pass, fail with exact counts, exceptions, samples,
severity and blocking; and the output gates (scores, lift, keys, symmetry) before publishing."""

from __future__ import annotations

import io
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from dagster_duckdb import DuckDBResource
from pandera.typing import Series

from cross_sell import contracts
from cross_sell.affinity.logic import association_rules
from cross_sell.ingest.assets import gate_checks
from cross_sell.quality import (
    MAX_SAMPLE_ROWS,
    GateFailedError,
    GateReport,
    build_gate_check,
    check_result,
    frame_contract,
    gated_publish,
    output_contract_spec,
    validate_frame,
    validate_table,
)
from cross_sell.warehouse import connect
from cross_sell_tests.conftest import TINY_PURCHASES


def _purchases_text() -> pd.DataFrame:
    """The tiny purchase input as it sits in the audit table: every value text."""
    return pd.read_csv(io.StringIO(TINY_PURCHASES), dtype=str, keep_default_na=False)


ENGINES = ["pandas", "duckdb"]


def _validate(engine: str, contract, df: pd.DataFrame, **kwargs) -> GateReport:
    """The same frame through either engine: pandera in pandas, or the contract compiled to SQL
    over a DuckDB table holding the frame as text."""
    if engine == "pandas":
        return validate_frame(contract, df, **kwargs)
    with duckdb.connect() as conn:
        conn.register("frame", df)
        columns = ", ".join(f'"{c}"::varchar as "{c}"' for c in df.columns)
        conn.execute(f"create table audit_frame as select {columns} from frame")
        return validate_table(conn, "audit_frame", contract, **kwargs)


# ---------------------------------------------------------------------------------------------
# validate_frame


@pytest.mark.parametrize("engine", ENGINES)
def test_clean_input_passes(engine: str) -> None:
    report = _validate(engine, contracts.Purchase, _purchases_text())
    assert report.passed, report.summary()
    assert report.rows_checked == 6 and report.failing_count == 0 and report.counts() == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_failures_are_counted_per_rule_and_column(engine: str) -> None:
    df = _purchases_text()
    df.loc[1, "purchase_id"] = "L1"  # duplicate: both copies count
    df.loc[2, "quantity"] = "0"
    df.loc[3, "amount"] = "-5"
    df.loc[4, "amount"] = "abc"
    df.loc[5, "purchase_date"] = "01/02/2025"  # not ISO 8601: refused, never guessed
    df.loc[0, "purchase_date"] = "2099-01-01 00:00:00"
    df.loc[2, "customer_id"] = "   "
    df.loc[3, "product_id"] = None
    df.loc[4, "quantity"] = "1.5"  # not an integer (DuckDB alone would round it to 2)
    report = _validate(engine, contracts.Purchase, df)
    assert not report.passed
    assert report.counts() == {
        "uniqueness:unique": {"purchase_id": 2},
        "validity:greater_than(0)": {"quantity": 1},
        "validity:greater_than_or_equal_to(0)": {"amount": 1},
        "type:number": {"amount": 1},
        "type:timestamp": {"purchase_date": 1},
        "type:integer": {"quantity": 1},
        "validity:not_in_future": {"purchase_date": 1},
        "completeness:not_blank": {"customer_id": 1},
        "completeness:not_null": {"product_id": 1},
    }
    assert report.failing_count == 10
    # The sample names the offending value and shows the whole row it came from.
    [number] = report.sample[report.sample["rule"] == "type:number"].itertuples()
    assert (number.column, number.value, number.purchase_id) == ("amount", "abc", "L5")
    [date] = report.sample[report.sample["rule"] == "type:timestamp"].itertuples()
    assert (date.column, date.value, date.purchase_id) == ("purchase_date", "01/02/2025", "L6")
    assert "purchase_id" in report.summary() and "uniqueness:unique" in report.summary()


@pytest.mark.parametrize("engine", ENGINES)
def test_timestamps_in_text_must_be_iso_8601(engine: str) -> None:
    """Both engines read only ISO 8601 dates: not 2025/01/01, not 2025-1-5, and not a time zone
    offset, which DuckDB's cast would drop without a word."""
    df = _purchases_text()
    df.loc[0, "purchase_date"] = "2025/01/01 10:00:00"
    df.loc[1, "purchase_date"] = "2025-1-5"
    df.loc[2, "purchase_date"] = "2025-02-01 11:00:00+02"
    df.loc[3, "purchase_date"] = "2025-03-01T12:00:00.250"  # ISO with a T and a fraction: fine
    df.loc[4, "purchase_date"] = "2025-03-02"  # a date alone: fine
    report = _validate(engine, contracts.Purchase, df)
    assert report.counts() == {"type:timestamp": {"purchase_date": 3}}
    assert sorted(report.sample["value"]) == ["2025-02-01 11:00:00+02", "2025-1-5", "2025/01/01 10:00:00"]


@pytest.mark.parametrize("engine", ENGINES)
def test_missing_column_and_empty_frame(engine: str) -> None:
    missing = _validate(engine, contracts.Purchase, _purchases_text().drop(columns=["amount"]))
    assert missing.counts() == {"schema:column_present": {"amount": 1}}
    optional = _validate(engine, contracts.Purchase, _purchases_text().drop(columns=["channel"]))
    assert optional.passed  # channel is optional: it may be absent
    empty = _validate(engine, contracts.Purchase, _purchases_text().head(0))
    assert empty.counts() == {"completeness:not_empty": {"<table>": 1}}
    assert _validate(engine, contracts.Purchase, _purchases_text().head(0), require_rows=False).passed


@pytest.mark.parametrize("engine", ENGINES)
def test_sample_is_capped_and_shows_every_broken_rule(engine: str) -> None:
    n = 500
    df = pd.DataFrame(
        {
            "purchase_id": [f"L{i}" for i in range(n)],
            "order_id": "O1",
            "customer_id": "C1",
            "product_id": "P1",
            "purchase_date": "2025-01-01",
            "quantity": ["0"] * 3 + ["1"] * (n - 3),
            "amount": "-1",
            "channel": "web",
        }
    )
    report = _validate(engine, contracts.Purchase, df)
    assert report.counts() == {"validity:greater_than_or_equal_to(0)": {"amount": n}, "validity:greater_than(0)": {"quantity": 3}}
    assert report.rows_checked == n
    assert len(report.sample) == MAX_SAMPLE_ROWS
    assert set(report.sample["rule"]) == {"validity:greater_than_or_equal_to(0)", "validity:greater_than(0)"}
    result = check_result(report)
    assert result.metadata["failing_rows_sample"].value.count("\n") == MAX_SAMPLE_ROWS + 1  # header, rule line, rows


def test_unreadable_dates_do_not_fall_back_to_row_by_row_parsing() -> None:
    # pandera alone re-parses every value one by one when a single date is bad (~1 ms per row);
    # the gate types text with vectorised parsers first, so 200,000 rows stay quick.
    n = 200_000
    df = pd.DataFrame(
        {
            "purchase_id": np.char.add("L", np.arange(n).astype(str)),
            "order_id": "O1",
            "customer_id": "C1",
            "product_id": "P1",
            "purchase_date": "2025-01-01 10:00:00",
            "quantity": "1",
            "amount": "2.5",
            "channel": "web",
        }
    )
    df.loc[12_345, "purchase_date"] = "2025-13-01"
    df.loc[54_321, "amount"] = "ten"
    started = time.perf_counter()
    report = validate_frame(contracts.Purchase, df)
    elapsed = time.perf_counter() - started
    assert report.counts() == {"type:timestamp": {"purchase_date": 1}, "type:number": {"amount": 1}}
    assert elapsed < 30, f"validation took {elapsed:.1f}s"


def test_not_blank_shortcut_agrees_with_the_regex() -> None:
    # The SQL engine proves "not blank" by a byte comparison before it runs the regex; on every
    # kind of leading character the verdict must be the regex's own.
    from cross_sell.quality_sql import REGEX_SHORTCUTS

    values = ["", " ", "  ", "\t", "\n", "\r", "\f", "\v", "\xa0", "\u2003", "\x01", " \t\n", "!", "a", " a",
              "\ta", "\n\nx", "\x01a", "\u00e9", " \u00e9", "\u2003x", "\x7f", "0", "~", "\U0001f600"]
    shortcut = REGEX_SHORTCUTS[contracts.NON_BLANK].format("v")
    with duckdb.connect() as conn:
        rows = conn.execute(
            f"select v, regexp_matches(v, ?), (case when {shortcut} then true else regexp_matches(v, ?) end) "
            "from (select unnest(?::varchar[]) as v)",
            [contracts.NON_BLANK, contracts.NON_BLANK, values],
        ).fetchall()
    assert len(rows) == len(values)
    assert [(v, regex) for v, regex, _ in rows] == [(v, fast) for v, _, fast in rows]


def test_gate_on_columns_landed_typed_reports_like_text() -> None:
    # Parquet columns the contract reads exactly land typed; the gate must find the same problems.
    text = _purchases_text()
    text.loc[1, "quantity"] = "0"
    text.loc[2, "amount"] = "-1"
    text.loc[3, "purchase_id"] = text.loc[0, "purchase_id"]
    text.loc[4, "order_id"] = "  "
    expected = _validate("duckdb", contracts.Purchase, text).counts()
    with duckdb.connect() as conn:
        conn.register("frame", text)
        conn.execute(
            "create table audit_typed as select * replace (quantity::integer as quantity, amount::double as amount, "
            "purchase_date::timestamp as purchase_date) from frame"
        )
        typed = validate_table(conn, "audit_typed", contracts.Purchase)
    assert expected == {"validity:greater_than(0)": {"quantity": 1}, "validity:greater_than_or_equal_to(0)": {"amount": 1},
                        "uniqueness:unique": {"purchase_id": 2}, "completeness:not_blank": {"order_id": 1},
                        "validity:no_surrounding_spaces": {"order_id": 1}}
    assert typed.counts() == expected


def test_an_exception_becomes_a_failed_report_carrying_the_error() -> None:
    class Broken(pa.DataFrameModel):
        x: Series[int]

        @pa.dataframe_check
        def explodes(cls, df: pd.DataFrame) -> Series[bool]:
            raise RuntimeError("boom")

    report = validate_frame(Broken, pd.DataFrame({"x": [1]}))
    assert not report.passed
    # pandera reports an exception inside a check as a failure of that check, with the error ...
    assert report.counts() == {"validity:explodes": {"<table>": 1}}
    assert report.sample["value"].tolist() == ['RuntimeError("boom")']
    # ... and anything that breaks validation itself is an error, never a pass.
    broken = validate_frame("not a contract", pd.DataFrame({"x": [1]}))  # type: ignore[arg-type]
    assert not broken.passed and broken.error and "AttributeError" in broken.error
    result = check_result(broken)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert "AttributeError" in result.metadata["error"].value


# ---------------------------------------------------------------------------------------------
# The factory, in real Dagster runs against a real DuckDB file.


class Toy(pa.DataFrameModel):
    """A toy contract: a unique key and a positive amount."""

    key: Series[str] = pa.Field(unique=True)
    amount: Series[float] = pa.Field(gt=0)

    class Config:
        coerce = True
        name = "toy"


def _toy_defs(rows: list[tuple[str, str]], contract, engine: str) -> list:
    @dg.asset(key=["audit", "toys"])
    def toys(duckdb: DuckDBResource) -> None:
        with duckdb.get_connection() as conn:
            conn.execute("create schema if not exists audit")
            conn.execute("create or replace table audit.toys (key varchar, amount varchar)")
            if rows:
                conn.executemany("insert into audit.toys values (?, ?)", rows)

    @dg.asset(deps=[toys])
    def downstream() -> None:
        """Must not run when the gate fails."""

    source = {"table": "audit.toys"} if engine == "duckdb" else {"load_sql": "select * from audit.toys"}
    gate = build_gate_check(
        asset=dg.AssetKey(["audit", "toys"]),
        name="contract",
        dataset="toys",
        contract=contract,
        description="toy gate",
        **source,
    )
    return [toys, downstream, gate]


def _run_toy(tmp_path: Path, rows: list[tuple[str, str]], contract=Toy, engine: str = "duckdb") -> dg.ExecuteInProcessResult:
    return dg.materialize(
        _toy_defs(rows, contract, engine),
        resources={"duckdb": DuckDBResource(database=str(tmp_path / "toy.duckdb"))},
        raise_on_error=False,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_factory_gate_passes_and_is_blocking_error_severity(tmp_path: Path, engine: str) -> None:
    result = _run_toy(tmp_path, [("a", "1"), ("b", "2.5")], engine=engine)
    assert result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.blocking and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["rows_checked"].value == 2
    assert evaluation.metadata["failure_counts"].value == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_factory_gate_fails_with_counts_and_blocks_downstream(tmp_path: Path, engine: str) -> None:
    result = _run_toy(tmp_path, [("a", "1"), ("a", "-3"), ("c", "x")], engine=engine)
    assert not result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["failure_counts"].value == {
        "uniqueness:unique": {"key": 2},
        "validity:greater_than(0)": {"amount": 1},
        "type:number": {"amount": 1},
    }
    assert evaluation.metadata["failing_count"].value == 4
    table = evaluation.metadata["failures_by_rule"].value
    assert "uniqueness:unique" in table and "| key " in table
    assert "x" in evaluation.metadata["failing_rows_sample"].value
    assert result.get_failed_step_keys() == {"audit__toys_contract"}
    assert result.is_node_untouched("downstream")


@pytest.mark.parametrize("engine", ENGINES)
def test_factory_gate_turns_an_exception_into_a_failed_result(tmp_path: Path, engine: str) -> None:
    def exploding_contract(conn: duckdb.DuckDBPyConnection) -> pa.DataFrameSchema:
        raise RuntimeError("lookup table is gone")

    result = _run_toy(tmp_path, [("a", "1")], contract=exploding_contract, engine=engine)
    assert not result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["error"].value == "RuntimeError: lookup table is gone"
    assert "could not be evaluated" in evaluation.description
    assert result.is_node_untouched("downstream")


def test_project_gates_are_blocking() -> None:
    specs = [spec for check in gate_checks for spec in check.check_specs]
    assert {(s.asset_key.to_user_string(), s.name) for s in specs} == {
        ("audit/customers", "contract"),
        ("audit/products", "contract"),
        ("audit/purchases", "contract"),
        ("audit/purchases", "referential_integrity"),
        ("audit/purchases", "source_rules"),
    }
    assert all(s.blocking for s in specs)
    assert output_contract_spec("cross_sell_scores", contracts.CrossSellScore).blocking


# ---------------------------------------------------------------------------------------------
# Output gates


def _tiny_rules() -> pd.DataFrame:
    # customers 0 and 1 have A and B, customer 2 has A and C.
    return association_rules(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0, 2]), ["A", "B", "C"])


def test_affinity_gate_catches_negative_lift_and_asymmetric_pairs() -> None:
    rules = _tiny_rules()
    assert validate_frame(contracts.ProductAffinity, rules).passed
    bad = rules.copy()
    bad.loc[(bad.antecedent == "A") & (bad.consequent == "B"), "pair_count"] += 1  # A -> B disagrees with B -> A
    bad.loc[(bad.antecedent == "A") & (bad.consequent == "C"), "lift"] = -0.5
    report = validate_frame(contracts.ProductAffinity, bad)
    # Both directions of the A/B pair are reported (each disagrees with its mirror), once per row.
    assert report.counts() == {
        "validity:symmetric_pair_counts": {"<table>": 2},
        "validity:greater_than_or_equal_to(0)": {"lift": 1},
    }


def test_output_gates_catch_infinite_measures() -> None:
    """Infinity passes ">= 0"; the finite rule stops it in the metrics and the affinity."""
    rules = _tiny_rules()
    bad = rules.copy()
    bad.loc[(bad.antecedent == "A") & (bad.consequent == "C"), "lift"] = np.inf
    assert validate_frame(contracts.ProductAffinity, bad).counts() == {"validity:finite": {"lift": 1}}
    metrics = pd.DataFrame({
        "customer_id": ["C1", "C2", "C3"], "orders": [1, 2, 0], "purchase_frequency": [1.0, np.inf, 0.0],
        "total_spend": [10.0, 20.0, 0.0], "avg_order_value": [10.0, 10.0, 0.0], "recency_days": [1.0, 2.0, None],
        "tenure_days": [30.0, 40.0, 50.0], "clv": [np.inf, 5.0, 0.0],
    })
    report = validate_frame(frame_contract(contracts.CustomerMetrics, metrics), metrics)
    assert report.counts() == {"validity:finite": {"purchase_frequency": 1, "clv": 1}}
    assert validate_frame(frame_contract(contracts.CustomerMetrics, metrics.replace(np.inf, 1.0)), metrics.replace(np.inf, 1.0)).passed


def test_affinity_gate_catches_duplicate_keys() -> None:
    rules = _tiny_rules()
    bad = pd.concat([rules, rules[rules.antecedent == "C"]], ignore_index=True)  # C -> A twice
    report = validate_frame(contracts.ProductAffinity, bad)
    assert report.counts()["uniqueness:unique"] == {"level+antecedent+consequent": 2}


def test_score_gate_catches_out_of_range_and_duplicate_keys() -> None:
    scores = pd.DataFrame(
        {
            "customer_id": pd.Categorical(["C1", "C1", "C2", "C3"]),
            "product_category": pd.Categorical(["Fish", "Fish", "Meat", "Meat"]),
            "score": [0.2, 0.3, 1.5, -0.1],
        }
    )
    report = validate_frame(frame_contract(contracts.CrossSellScore, scores), scores)
    assert report.counts() == {
        "uniqueness:unique": {"customer_id+product_category": 2},
        "validity:less_than_or_equal_to(1)": {"score": 1},
        "validity:greater_than_or_equal_to(0)": {"score": 1},
    }


def test_gated_publish_keeps_the_published_table_when_the_gate_fails(tmp_path: Path) -> None:
    good = pd.DataFrame({"customer_id": ["C1", "C2"], "product_category": ["Fish", "Meat"], "score": [0.2, 0.9]})
    bad = good.assign(score=[0.2, 1.7])
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        events = list(gated_publish(conn, "cross_sell_scores", contracts.CrossSellScore, good, {"note": "x"}))
        [materialized] = events
        assert isinstance(materialized, dg.MaterializeResult)
        assert materialized.check_results[0].passed and materialized.metadata["dagster/row_count"] == 2
        before = conn.execute("select * from cross_sell_scores order by all").df()

        seen = []
        with pytest.raises(GateFailedError, match=r"cross_sell_scores not published.*less_than_or_equal_to\(1\) on score: 1"):
            for event in gated_publish(conn, "cross_sell_scores", contracts.CrossSellScore, bad, {}):
                seen.append(event)
        [failed] = seen
        assert isinstance(failed, dg.AssetCheckResult) and not failed.passed
        assert failed.metadata["failure_counts"].value == {"validity:less_than_or_equal_to(1)": {"score": 1}}
        after = conn.execute("select * from cross_sell_scores order by all").df()
    pd.testing.assert_frame_equal(before, after)


def test_gated_publish_in_a_run_fails_the_step_and_records_the_check(tmp_path: Path) -> None:
    database = str(tmp_path / "w.duckdb")
    with duckdb.connect(database) as conn:
        conn.execute("create table cross_sell_scores as select 'C1' as customer_id, 'Fish' as product_category, 0.5 as score")

    @dg.asset(check_specs=[output_contract_spec("cross_sell_scores", contracts.CrossSellScore)])
    def cross_sell_scores(duckdb: DuckDBResource):
        frame = pd.DataFrame({"customer_id": ["C1"], "product_category": ["Fish"], "score": [-2.0]})
        with connect(duckdb) as conn:  # closes the connection even when the gate raises
            yield from gated_publish(conn, "cross_sell_scores", contracts.CrossSellScore, frame, {})

    @dg.asset(deps=[cross_sell_scores])
    def cross_sell_recommendations() -> None:
        """Must not run."""

    result = dg.materialize(
        [cross_sell_scores, cross_sell_recommendations],
        resources={"duckdb": DuckDBResource(database=database)},
        raise_on_error=False,
    )
    assert not result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == "contract" and not evaluation.passed
    assert evaluation.metadata["failure_counts"].value == {"validity:greater_than_or_equal_to(0)": {"score": 1}}
    [failure] = result.get_step_failure_events()
    assert "Gate cross_sell_scores:contract FAILED" in failure.event_specific_data.error.to_string()
    assert result.is_node_untouched("cross_sell_recommendations")
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("select score from cross_sell_scores").fetchall() == [(0.5,)]


def test_a_whole_number_in_a_sample_shows_without_a_decimal_point() -> None:
    # A birth year beside missing ones is a float in pandas: the sample says 1850, as the file does.
    frame = pd.DataFrame({"customer_id": ["C1", "C2", "C3"], "birth_year": [1850.0, None, 1990.0]})
    report = validate_frame(contracts.Customer, frame)
    assert report.counts() == {"validity:greater_than_or_equal_to(1900)": {"birth_year": 1}}
    [row] = report.sample.itertuples()
    assert row.value == "1850" and row.birth_year == "1850" and row.customer_id == "C1"
