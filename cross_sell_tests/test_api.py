"""The HTTP API, for real: ``python -m cross_sell.serving.api`` in its own process over a
warehouse the whole graph built, asked over HTTP the way a CRM or a campaign tool asks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cross_sell.definitions import ASSETS, CHECKS
from cross_sell.serving import locations, roles
from cross_sell.serving.api import MAX_LIMIT, Api
from cross_sell.serving.semantic import MODEL
from cross_sell_tests.conftest import PROJECT_ROOT, make_resources


@dataclass(frozen=True)
class Reply:
    status: int
    body: object
    headers: dict[str, str]


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen

    def get(self, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
        request = urllib.request.Request(self.url + path, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Reply(response.status, json.load(response), dict(response.headers))
        except urllib.error.HTTPError as error:
            return Reply(error.code, json.load(error), dict(error.headers))


def _start(warehouse: Path, role: str, env: dict[str, str] | None = None) -> Server:
    process = subprocess.Popen(
        [sys.executable, "-m", "cross_sell.serving.api", "--role", role, "--port", "0", "--warehouse", str(warehouse)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, **(env or {})},
    )
    line = process.stdout.readline()
    assert "http://" in line, line
    return Server(line[line.index("http://"):].strip().rstrip("/"), process)


def _stop(server: Server) -> None:
    server.process.terminate()
    assert server.process.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory, generated_data: Path) -> Path:
    path = tmp_path_factory.mktemp("api") / "warehouse" / "cross_sell.duckdb"
    result = dg.materialize([*ASSETS, *CHECKS], resources=make_resources(generated_data, path), raise_on_error=False)
    assert result.success
    return path


@pytest.fixture(scope="module")
def marketing(warehouse: Path) -> Iterator[Server]:
    server = _start(warehouse, roles.MARKETING)
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def analyst(warehouse: Path) -> Iterator[Server]:
    server = _start(warehouse, roles.ANALYST)
    yield server
    _stop(server)


def _sql(warehouse: Path, role: str, sql: str, params: list | None = None) -> list[dict]:
    conn = roles.connect(role, warehouse)
    try:
        cursor = conn.execute(sql, params or [])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        conn.close()


def _strings(value: object) -> Iterator[str]:
    """Every text anywhere in a JSON document, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _jsonable(rows: list[dict]) -> list[dict]:
    return json.loads(json.dumps(rows, default=lambda v: v.isoformat()))


def test_index_health_and_views_say_what_is_served(marketing: Server) -> None:
    index = marketing.get("/")
    assert index.status == 200 and index.body["role"] == "marketing"
    assert index.body["views"] == [f"/views/{v.name}" for v in MODEL.views]
    health = marketing.get("/health")
    assert health.status == 200 and health.body["status"] == "ok" and health.body["views"] == len(MODEL.views)
    assert health.body["database"].endswith("cross_sell_marketing.duckdb")
    views = marketing.get("/views")
    assert [v["name"] for v in views.body] == [v.name for v in MODEL.views]
    for listed in views.body:
        view = MODEL.view(listed["name"])
        assert [c["name"] for c in listed["columns"]] == roles.marketing_columns(view)
        assert all(c["type"] and c["description"] for c in listed["columns"])
        assert listed["grain"] == list(view.grain)
    manifest = marketing.get("/manifest")
    assert manifest.status == 200 and manifest.body["name"] == "cross_sell"
    assert "http" in [port["name"] for port in manifest.body["ports"]]


def test_a_campaign_list_filters_sorts_and_pages_like_sql(marketing: Server, warehouse: Path) -> None:
    [(category,)] = [tuple(r.values()) for r in _sql(
        warehouse, "marketing", "select product_category from cross_sell_opportunities group by 1 order by count(*) desc limit 1"
    )]
    expected = _jsonable(_sql(
        warehouse, "marketing",
        "select * from cross_sell_opportunities where product_category = ? and score >= 0.05 "
        "order by score desc nulls last, customer_id, product_category",
        [category],
    ))
    assert len(expected) > 50
    first = marketing.get(f"/views/cross_sell_opportunities?product_category={category}&min_score=0.05&order_by=-score&limit=7")
    assert first.status == 200 and first.body["rows"] == expected[:7] and first.body["returned"] == 7
    # Following "next" walks every row exactly once, in order.
    rows, path = [], f"/views/cross_sell_opportunities?product_category={category}&min_score=0.05&order_by=-score&limit=50"
    while path:
        page = marketing.get(path)
        assert page.status == 200
        rows += page.body["rows"]
        path = page.body["next"]
    assert rows == expected
    # Several values of one filter: any of them.
    two = marketing.get("/views/total_spend?customer_id=C0000001&customer_id=C0000002")
    assert [r["customer_id"] for r in two.body["rows"]] == ["C0000001", "C0000002"]


def test_a_customer_card_holds_the_metrics_and_the_offers(marketing: Server, analyst: Server, warehouse: Path) -> None:
    [top] = _sql(warehouse, "marketing", "select customer_id from cross_sell_opportunities where recommendation_rank = 1 order by score desc limit 1")
    customer = top["customer_id"]
    card = marketing.get(f"/customers/{customer}")
    assert card.status == 200
    for view in ("total_spend", "purchase_frequency", "customer_lifetime_value"):
        [row] = _jsonable(_sql(warehouse, "marketing", f"select * exclude (customer_id) from {view} where customer_id = ?", [customer]))
        assert card.body[view] == row
    offers = _jsonable(_sql(
        warehouse, "marketing",
        "select product_category, score, recommendation_rank, reason from cross_sell_opportunities "
        "where customer_id = ? and recommended order by recommendation_rank", [customer],
    ))
    assert card.body["offers"] == offers and [o["recommendation_rank"] for o in offers] == list(range(1, len(offers) + 1))
    assert set(card.body["profile"]) == set(roles.marketing_columns(MODEL.view("customer")))
    # The analyst's card is the same customer with the personal data in the clear.
    [base] = _sql(warehouse, "analyst", "select email from customers where customer_id = ?", [customer])
    assert analyst.get(f"/customers/{customer}").body["profile"]["email"] == base["email"]
    missing = marketing.get("/customers/nobody")
    assert missing.status == 404 and "nobody" in missing.body["error"]


def test_the_marketing_api_serves_no_personal_data(marketing: Server, warehouse: Path) -> None:
    base = _sql(warehouse, "analyst", "select first_name, last_name, email, phone, first_name || ' ' || last_name as full_name from customers")
    personal = {value for row in base for value in row.values() if value}
    served = [marketing.get(f"/views/{v.name}?limit={MAX_LIMIT}").body for v in MODEL.views]
    assert all(page["next"] is None for page in served)  # every row was looked at
    served += [marketing.get("/views").body, marketing.get("/customers/C0000001").body]
    assert not personal & set(_strings(served))
    assert marketing.get("/views/customer?email=someone@example.com").status == 400  # not even as a filter


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/views/nope", 404, "no view 'nope'"),
        ("/views/total_spend?spend=1", 400, "has no column 'spend'"),
        ("/views/total_spend?limit=-1", 400, "limit must be a whole number"),
        ("/views/total_spend?limit=0", 400, "limit must be a whole number, 1 to"),
        ("/views/total_spend?offset=x", 400, "offset must be a whole number, 0 or more"),
        (f"/views/total_spend?limit={MAX_LIMIT + 1}", 400, "limit must be a whole number"),
        ("/views/total_spend?min_total_spend=lots", 400, "does not fit its column"),
        ("/views/customer?min_country=A", 400, "not a number or a date"),
        ("/views/total_spend?order_by=-nothing", 400, "order_by"),
        ("/nowhere", 404, "no endpoint"),
        ("/views/total_spend?orders=", 400, "orders: give a value"),
        ("/views/total_spend?order_by=--total_spend", 400, "order_by"),
        ("/views/total_spend?limit=1_0", 400, "limit must be a whole number"),
        ("/health?verbose=1", 400, "takes no parameters"),
        ("/views/total_spend?data_version=1", 409, "the data changed since this listing began"),
    ],
)
def test_a_bad_request_is_refused_with_a_reason(marketing: Server, path: str, status: int, says: str) -> None:
    reply = marketing.get(path)
    assert reply.status == status and says in reply.body["error"]


def test_a_band_filter_takes_only_the_bands(marketing: Server, warehouse: Path) -> None:
    """"150k+" sent unencoded arrives as "150k " and would silently match nothing: refused, with
    the bands; encoded, it filters like SQL."""
    wrong = marketing.get("/views/customer?income_band=150k+")
    assert wrong.status == 400 and "'150k ' is not one of its values" in wrong.body["error"]
    assert "150k+" in wrong.body["values"] and "unknown" in wrong.body["values"]
    served = marketing.get(f"/views/customer?income_band=150k%2B&limit={MAX_LIMIT}").body["rows"]
    expected = _sql(warehouse, "marketing", "select count(*) as n from customer where income_band = '150k+'")[0]["n"]
    assert expected > 0 and len(served) == expected
    assert marketing.get("/views/customer?age_band=99").status == 400


def test_integer_filters_compare_as_numbers_not_rounded(marketing: Server) -> None:
    assert marketing.get("/views/total_spend?orders=2.5").body["rows"] == []
    bounded = marketing.get(f"/views/total_spend?max_orders=1.5&limit={MAX_LIMIT}").body["rows"]
    assert bounded and all(row["orders"] <= 1 for row in bounded)


def test_it_is_read_only_and_answers_only_this_machine(marketing: Server) -> None:
    for method in ("POST", "PUT", "DELETE"):
        refused = marketing.get("/views/total_spend", method=method)
        assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD" and "read-only" in refused.body["error"]
    # A web page that rebinds its own name to 127.0.0.1 sends its own name as Host: refused.
    rebound = marketing.get("/customers/C0000001", headers={"Host": "attacker.example"})
    assert rebound.status == 403 and "addressed to this machine" in rebound.body["error"]
    assert marketing.get("/health", headers={"Host": "localhost:1"}).status == 200


def test_a_connection_never_reads_a_replaced_file(warehouse: Path, tmp_path: Path) -> None:
    """DuckDB hands a second connect() of an open file the database already open; the API attaches
    instead, so a request made while another is still reading sees the file a refresh swapped in."""
    folder = tmp_path / "w"
    folder.mkdir()
    for name in ("cross_sell.duckdb", "cross_sell_marketing.duckdb"):
        shutil.copy(warehouse.parent / name, folder / name)
    api = Api(roles.role(roles.MARKETING), folder / "cross_sell.duckdb")
    busy = api.connect()  # a request still reading
    try:
        changed = tmp_path / "changed.duckdb"
        shutil.copy(api.database, changed)
        with duckdb.connect(str(changed)) as conn:
            conn.execute("update total_spend set total_spend = -1 where customer_id = 'C0000001'")
        os.replace(changed, api.database)  # what a refresh does
        fresh = api.connect()
        try:
            [(spend,)] = fresh.execute("select total_spend from total_spend where customer_id = 'C0000001'").fetchall()
        finally:
            fresh.close()
    finally:
        busy.close()
    assert spend == -1


def test_before_the_first_build_the_api_says_what_to_do(tmp_path: Path) -> None:
    server = _start(tmp_path / "warehouse" / "cross_sell.duckdb", roles.MARKETING)
    try:
        reply = server.get("/health")
        assert reply.status == 503 and "materialize the serving assets" in reply.body["error"]
    finally:
        _stop(server)


def test_serving_never_holds_up_a_refresh(tmp_path: Path, generated_data: Path) -> None:
    """The marketing API reads a file that a refresh replaces by a rename: a refresh goes through
    while it serves, and the next request sees the new file. The analyst API reads the warehouse,
    and answers 503 with Retry-After while a writer holds it."""
    path = tmp_path / "warehouse" / "cross_sell.duckdb"
    resources = make_resources(generated_data, path)
    assert dg.materialize([*ASSETS, *CHECKS], resources=resources, raise_on_error=False).success
    marketing_api, analyst_api = _start(path, roles.MARKETING), _start(path, roles.ANALYST)
    try:
        before = marketing_api.get("/health").body["database_modified_at"]
        first = marketing_api.get("/views/cross_sell_opportunities?limit=5")
        assert first.status == 200 and first.body["next"]
        serving = dg.AssetSelection.groups("serving")
        assert dg.materialize([*ASSETS, *CHECKS], selection=serving, resources=resources, raise_on_error=False).success
        assert marketing_api.get("/health").body["database_modified_at"] >= before
        # The listing begun before the refresh cannot go on over other data; a new one starts.
        stale = marketing_api.get(first.body["next"])
        assert stale.status == 409 and stale.body["data_version"] != first.body["data_version"]
        assert marketing_api.get("/views/cross_sell_opportunities?limit=5").status == 200

        writer = duckdb.connect(str(path))  # a refresh step holding the warehouse
        try:
            busy = analyst_api.get("/views/total_spend?limit=1")
            assert busy.status == 503 and busy.headers.get("Retry-After") == "5" and "retry" in busy.body["error"]
            assert marketing_api.get("/views/total_spend?limit=1").status == 200  # never touches the warehouse
        finally:
            writer.close()
        assert analyst_api.get("/views/total_spend?limit=1").status == 200
    finally:
        _stop(marketing_api)
        _stop(analyst_api)


def test_a_warehouse_named_on_the_command_line_is_served_with_its_own_files(warehouse: Path, tmp_path: Path) -> None:
    """The environment configures another data product (its warehouse, marketing database and
    export folder): ``--warehouse`` still serves this warehouse's own marketing database and
    manifest, never a mix of the two."""
    other = tmp_path / "other"
    env = {
        "CROSS_SELL_DUCKDB_PATH": str(other / "cross_sell.duckdb"),
        locations.MARKETING_DB_ENV: str(other / "marketing.duckdb"),
        locations.EXPORT_DIR_ENV: str(other / "exports"),
    }
    server = _start(warehouse, roles.MARKETING, env)
    try:
        assert server.get("/health").body["database"] == str(warehouse.parent / locations.MARKETING_DB_NAME)
        manifest = server.get("/manifest")
        assert manifest.status == 200 and manifest.body["name"] == "cross_sell"
    finally:
        _stop(server)
    # For the configured warehouse itself, the variables do move the files.
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**env, "CROSS_SELL_DUCKDB_PATH": str(warehouse)}.items():
            mp.setenv(name, value)
        assert locations.marketing_database(warehouse) == other / "marketing.duckdb"
        assert locations.export_dir(warehouse) == other / "exports"
        assert locations.export_dir(other / "cross_sell.duckdb") == other / locations.EXPORT_DIR_NAME
