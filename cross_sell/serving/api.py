"""The HTTP API: the semantic views as read-only JSON, for the tools that cannot speak SQL.

``python -m cross_sell.serving.api`` serves one role per process: ``marketing`` (the default)
reads the masked marketing database, so no personal data can ever leave through it; ``analyst``
reads the warehouse's semantic views. Every endpoint derives from the semantic model, so a view
added to the spec is served without code here:

* ``GET /``: what the product is and where to go next;
* ``GET /health``: whether the role's database exists, and when it was last rebuilt;
* ``GET /views``: every view with its grain and columns (as this role sees them);
* ``GET /views/<view>``: its rows. ``<column>=<value>`` filters on equality (repeat it for any of
  several values), ``min_<column>`` / ``max_<column>`` bound a number or a date, ``order_by`` sorts
  (``-score`` for descending; the view's grain always breaks ties, so pages are stable),
  ``limit`` (default 100, at most 10,000) and ``offset`` page through; ``next`` is the URL of the
  next page while there is one;
* ``GET /customers/<customer_id>``: one customer's card: profile, total spend, purchase
  frequency, lifetime value and top offers with their reasons (the three key metrics and the
  cross-sell score on one page, what a CRM or a campaign tool asks for);
* ``GET /manifest``: the data product manifest.

Each request opens its own read-only connection (:func:`cross_sell.serving.roles.connect`, which
attaches the file, so it never reuses a database another request still has open: that one may be
a marketing file a refresh has since replaced) and closes it. The marketing database is
replaced by an atomic rename on every refresh, so the next request sees the new one and no
request ever holds a refresh up. The warehouse (``analyst``) is locked while a refresh step writes
it; a request then gets 503 with ``Retry-After``. Every page names the version of the data it was
read from (``data_version``, the file's modification time); ``next`` carries it, and a page asked
for after the data changed gets 409 instead of rows that might repeat or skip. Every value from the
URL is a bound parameter, and only the spec's views and the role's own columns can be named. A
server bound to a loopback address answers only requests addressed to a loopback name, so a web
page cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import duckdb

from cross_sell import settings
from cross_sell.serving import locations, roles
from cross_sell.serving.semantic import MODEL, SemanticModel, View
from cross_sell.warehouse import is_lock_error

DEFAULT_PORT = 8765
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
RETRY_AFTER_SECONDS = 5
NUMBER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE")
RANGE_TYPES = (*NUMBER_TYPES, "DATE", "TIMESTAMP")
PAGING = ("order_by", "limit", "offset", "data_version")
MAX_OFFSET = 2**62
INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
REQUEST_TIMEOUT_SECONDS = 30
ENDPOINTS = {
    "/health": "whether the data is there, and when it was rebuilt",
    "/views": "every view with its grain and columns",
    "/views/<view>": "rows: <column>=<value>, min_<column>, max_<column>, order_by=[-]<column>, limit, offset",
    "/customers/<customer_id>": "one customer: profile, total spend, purchase frequency, lifetime value, top offers",
    "/manifest": "the data product manifest",
}


class ApiError(Exception):
    """A request the API refuses, with the HTTP status to answer and a message for the caller."""

    def __init__(self, status: HTTPStatus, message: str, **details: object):
        super().__init__(message)
        self.status = status
        self.details = details

    def body(self) -> dict[str, object]:
        return {"error": str(self), "status": int(self.status), **self.details}


@dataclass(frozen=True)
class Page:
    """One page of a view's rows."""

    view: str
    rows: list[dict[str, object]]
    limit: int
    offset: int
    more: bool
    data_version: str


@dataclass(frozen=True)
class Api:
    """What one API process serves: a role's database and the semantic model behind it."""

    role: roles.Role
    warehouse: Path
    model: SemanticModel = MODEL

    @property
    def database(self) -> Path:
        return self.role.database(self.warehouse)

    def data_version(self) -> str:
        """Changes whenever the role's database file does (its modification time, in ns)."""
        return str(self.database.stat().st_mtime_ns)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A fresh read-only connection to the role's database (closed by the caller): the file as
        it is now, never a replaced one still open in this process (see :func:`roles.connect`)."""
        if not self.database.exists():
            raise ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"no {self.role.name} database yet: materialize the serving assets first",
            )
        try:
            return roles.connect(self.role.name, self.warehouse)
        except duckdb.Error as exc:
            if is_lock_error(exc):
                raise ApiError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"the {self.role.name} database is locked by a process writing it (a refresh step, most likely); "
                    "retry in a few seconds",
                    retry_after=RETRY_AFTER_SECONDS,
                ) from exc
            raise ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the {self.role.name} database cannot be read ({type(exc).__name__}); rebuild the serving assets",
            ) from exc

    def column_names(self, view: View) -> list[str]:
        """The spec's columns of ``view`` as this role sees them (marketing: the masked names)."""
        return roles.marketing_columns(view) if self.role.masked else [c.name for c in view.columns]

    def fixed_values(self, view: View) -> dict[str, list[str]]:
        """Columns this role sees as a fixed list of labels (the marketing role's bands), by name."""
        if not self.role.masked:
            return {}
        return {c.mask.masked_name(c.name): labels for c in view.columns if c.mask and (labels := c.mask.labels())}

    def view(self, name: str) -> View:
        try:
            return self.model.view(name)
        except KeyError:
            raise ApiError(
                HTTPStatus.NOT_FOUND, f"no view {name!r}", views=[v.name for v in self.model.views]
            ) from None


def column_types(conn: duckdb.DuckDBPyConnection, schema: str, view: View) -> dict[str, str]:
    """The view's columns as the role whose ``schema`` it is sees them (the marketing role: masked
    names), in order, with their DuckDB types."""
    rows = conn.execute(
        """select column_name, data_type from duckdb_columns()
           where database_name = current_database() and schema_name = ? and table_name = ?
           order by column_index""",
        [schema, view.name],
    ).fetchall()
    if not rows:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"view {view.name!r} is not built yet: materialize the serving assets")
    return dict(rows)


def served_columns(api: Api, conn: duckdb.DuckDBPyConnection, view: View) -> dict[str, str]:
    """The spec's columns of ``view`` as this role sees them (masked names for marketing), in spec
    order, with their types in the database: only these are served, whatever else a file holds."""
    types = column_types(conn, api.role.schema, view)
    names = api.column_names(view)
    missing = [n for n in names if n not in types]
    if missing:
        raise ApiError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"view {view.name!r} lacks the spec's columns {missing}: rebuild the serving assets",
        )
    return {n: types[n] for n in names}


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _single(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"give {name} once")
    return values[0]


def _count(query: Mapping[str, list[str]], name: str, default: int, smallest: int = 0, largest: int | None = None) -> int:
    text = _single(query, name)
    if text is None:
        return default
    value = int(text) if text.isascii() and text.isdigit() else smallest - 1
    if value < smallest or (largest is not None and value > largest):
        bound = f"{smallest} to {largest:,}" if largest is not None and largest < MAX_OFFSET else f"{smallest} or more"
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} must be a whole number, {bound}; got {text!r}")
    return value


def rows_sql(
    schema: str, view: View, types: Mapping[str, str], query: Mapping[str, list[str]],
    fixed_values: Mapping[str, list[str]] | None = None,
) -> tuple[str, list[object], int, int]:
    """The SELECT for one page of ``view`` (``types``: the columns to serve) under the request's
    ``query`` (name -> values), its parameters, the limit and the offset. A name that is a column
    filters on equality even when it starts with ``min_`` or ``max_``; a column with
    ``fixed_values`` (a band) takes only those. Raises :class:`ApiError` on anything it cannot serve."""
    fixed_values = fixed_values or {}
    where: list[str] = []
    params: list[object] = []
    for name, values in query.items():
        if name in PAGING:
            continue
        bound = name[:4] if name[:4] in ("min_", "max_") and name not in types else ""
        column = name[len(bound):]
        if column not in types:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"{view.name} has no column {column!r}", columns=list(types),
                parameters=["<column>", "min_<column>", "max_<column>", *PAGING],
            )
        if any(value == "" for value in values):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: give a value")
        unknown = [v for v in values if column in fixed_values and not bound and v not in fixed_values[column]]
        if unknown:  # e.g. "150k+" sent unencoded arrives as "150k " and would match nothing, silently
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"{name}: {unknown[0]!r} is not one of its values (URL-encode '+' as %2B)",
                values=fixed_values[column],
            )
        # Integer columns compare as numbers: cast to the column's type, 2.5 would round to 3.
        cast = f"cast(? as {'DOUBLE' if types[column].startswith(INTEGER_TYPES) else types[column]})"
        if bound:
            if not types[column].startswith(RANGE_TYPES):
                raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: {column} is {types[column]}, not a number or a date")
            where += [f"{_quoted(column)} {'>=' if bound == 'min_' else '<='} {cast}" for _ in values]
        else:
            where.append(f"{_quoted(column)} in ({', '.join([cast] * len(values))})")
        params += values
    order = _single(query, "order_by")
    keys = [c for c in view.grain if c in types]
    ordering: list[str] = []
    sort = None
    if order:
        descending = order.startswith("-")
        sort = order[1:] if descending else order
        if sort not in types:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"order_by: {view.name} has no column {sort!r}", columns=list(types))
        ordering.append(f"{_quoted(sort)} {'desc' if descending else 'asc'} nulls last")
    ordering += [_quoted(c) for c in keys if c != sort]
    limit = _count(query, "limit", DEFAULT_LIMIT, smallest=1, largest=MAX_LIMIT)
    offset = _count(query, "offset", 0, largest=MAX_OFFSET)
    sql = f"select {', '.join(map(_quoted, types))} from {_quoted(schema)}.{_quoted(view.name)}"
    if where:
        sql += " where " + " and ".join(where)
    if ordering:
        sql += " order by " + ", ".join(ordering)
    sql += f" limit {limit + 1} offset {offset}"  # one more row says whether there is a next page
    return sql, params, limit, offset


def _records(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, object]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def read_view(api: Api, name: str, query: Mapping[str, list[str]]) -> Page:
    """One page of a view's rows, filtered, sorted and paged by ``query``; 409 when the request
    names a ``data_version`` that is no longer the data's (a page of another listing)."""
    view = api.view(name)
    asked = _single(query, "data_version")
    version = api.data_version() if api.database.exists() else ""
    if asked is not None and asked != version:
        raise ApiError(
            HTTPStatus.CONFLICT,
            "the data changed since this listing began: start again from the first page (without data_version)",
            data_version=version,
        )
    conn = api.connect()
    try:
        schema = api.role.schema
        sql, params, limit, offset = rows_sql(schema, view, served_columns(api, conn, view), query, api.fixed_values(view))
        try:
            rows = _records(conn.execute(sql, params))
        except duckdb.ConversionException as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"a filter value does not fit its column: {str(exc).splitlines()[0]}") from exc
    finally:
        conn.close()
    return Page(name, rows[:limit], limit, offset, more=len(rows) > limit, data_version=version)


CUSTOMER_VIEWS = ("total_spend", "purchase_frequency", "customer_lifetime_value")


def customer_card(api: Api, customer_id: str) -> dict[str, object]:
    """Everything the product knows about one customer, as this role may see it: the profile, the
    three customer metrics and the top offers with their reasons."""
    schema = _quoted(api.role.schema)
    conn = api.connect()
    try:
        def rows(view: str, where: str) -> list[dict[str, object]]:
            columns = ", ".join(map(_quoted, served_columns(api, conn, api.model.view(view))))
            return _records(conn.execute(f"select {columns} from {schema}.{_quoted(view)} where {where}", [customer_id]))

        def one(view: str) -> dict[str, object] | None:
            found = rows(view, "customer_id = ?")
            return found[0] if found else None

        profile = one("customer")
        if profile is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no customer {customer_id!r}")
        card: dict[str, object] = {"customer_id": customer_id, "profile": profile}
        for view in CUSTOMER_VIEWS:
            row = one(view) or {}
            card[view] = {k: v for k, v in row.items() if k != "customer_id"} or None
        card["offers"] = [
            {k: v for k, v in row.items() if k not in ("customer_id", "recommended")}
            for row in rows("cross_sell_opportunities", "customer_id = ? and recommended order by recommendation_rank")
        ]
    finally:
        conn.close()
    return card


def describe(api: Api) -> list[dict[str, object]]:
    """Every view as this role sees it: kind, meaning, grain and columns with types and meaning."""
    conn = api.connect()
    try:
        listed = []
        for view in api.model.views:
            types = column_types(conn, api.role.schema, view)
            spec = zip(api.column_names(view), view.columns)
            listed.append({
                "name": view.name,
                "kind": view.kind,
                "description": view.description,
                "grain": list(view.grain),
                "url": f"/views/{view.name}",
                "columns": [
                    {"name": name, "type": types.get(name), "role": c.role,
                     "description": c.mask.explain() if api.role.masked and c.mask else c.description}
                    for name, c in spec
                ],
            })
    finally:
        conn.close()
    return listed


def health(api: Api) -> dict[str, object]:
    conn = api.connect()
    try:
        views = [v.name for v in api.model.views]
        built = {name for (name,) in conn.execute(
            "select distinct table_name from duckdb_columns() where database_name = current_database() and schema_name = ?",
            [api.role.schema],
        ).fetchall()}
    finally:
        conn.close()
    missing = [v for v in views if v not in built]
    if missing:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"views not built yet: {', '.join(missing)}")
    modified = datetime.fromtimestamp(api.database.stat().st_mtime, tz=timezone.utc)
    return {"status": "ok", "role": api.role.name, "database": str(api.database),
            "database_modified_at": modified.isoformat(timespec="seconds"), "views": len(views)}


def manifest(api: Api) -> dict[str, object]:
    import yaml  # only this endpoint needs it

    path = locations.export_dir(api.warehouse) / locations.MANIFEST_NAME
    if not path.exists():
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"no manifest yet at {path}: materialize data_product_manifest")
    return yaml.safe_load(path.read_text())


def index(api: Api) -> dict[str, object]:
    return {
        "data_product": api.model.name,
        "description": api.model.description,
        "role": api.role.name,
        "role_description": api.role.description,
        "endpoints": ENDPOINTS,
        "views": [f"/views/{v.name}" for v in api.model.views],
    }


def route(api: Api, path: str, query: Mapping[str, list[str]]) -> dict[str, object] | list[dict[str, object]]:
    """The response body of a GET of ``path`` (as sent: each segment is unquoted on its own, so an
    id may hold an encoded ``/``) with ``query``."""
    parts = [unquote(p) for p in path.split("/") if p]
    if query and not (len(parts) == 2 and parts[0] == "views"):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{path} takes no parameters (got {', '.join(sorted(query))})")
    if not parts:
        return index(api)
    if parts == ["health"]:
        return health(api)
    if parts == ["manifest"]:
        return manifest(api)
    if parts == ["views"]:
        return describe(api)
    if len(parts) == 2 and parts[0] == "views":
        page = read_view(api, parts[1], query)
        following = None
        if page.more:
            params = {k: v for k, v in query.items() if k not in ("offset", "limit", "data_version")}
            params.update(limit=[str(page.limit)], offset=[str(page.offset + page.limit)], data_version=[page.data_version])
            following = f"/views/{quote(page.view)}?{urlencode(params, doseq=True)}"
        return {"view": page.view, "data_version": page.data_version, "limit": page.limit, "offset": page.offset,
                "returned": len(page.rows), "next": following, "rows": page.rows}
    if len(parts) == 2 and parts[0] == "customers":
        return customer_card(api, parts[1])
    raise ApiError(HTTPStatus.NOT_FOUND, f"no endpoint {path!r}", endpoints=list(ENDPOINTS))


def _json_value(value: object) -> object:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)  # UUID, TIME, INTERVAL, ...: their text


def _clean(value: object) -> object:
    """NaN and infinities as null (JSON has neither), everywhere in a response."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _encode(body: object) -> bytes:
    return json.dumps(_clean(body), default=_json_value, ensure_ascii=False, allow_nan=False).encode()


def _host_name(header: str | None) -> str:
    """The name in a Host header, without the port (and without an IPv6 address's brackets)."""
    host = (header or "").strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def handler_for(api: Api, loopback_only: bool) -> type[BaseHTTPRequestHandler]:
    """The request handler class of a server that serves ``api`` (GET and HEAD; any other method
    gets 405). ``loopback_only``: answer only requests whose Host is a loopback name."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "cross_sell-api"
        timeout = REQUEST_TIMEOUT_SECONDS  # an idle connection does not hold a thread for ever

        def _send(self, status: HTTPStatus, payload: bytes, headers: Mapping[str, str], with_body: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if with_body:
                self.wfile.write(payload)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own refusals (a malformed request line, a URL too long), as JSON."""
            status = HTTPStatus(code)
            self.close_connection = True
            self._send(status, _encode({"error": message or status.phrase, "status": code}), {}, self.command != "HEAD")

        def _answer(self, with_body: bool) -> None:
            headers: dict[str, str] = {}
            try:
                if loopback_only and _host_name(self.headers.get("Host")) not in LOOPBACK_NAMES:
                    raise ApiError(HTTPStatus.FORBIDDEN, "this server answers only requests addressed to this machine "
                                   "(Host: localhost or a loopback address)")
                try:
                    target = self.path.encode("latin-1").decode("utf-8")  # http.server reads the line as latin-1
                except UnicodeError:
                    raise ApiError(HTTPStatus.BAD_REQUEST, "the URL is not UTF-8; percent-encode it") from None
                url = urlsplit(target)
                query = parse_qs(url.query, keep_blank_values=True)
                status, payload = HTTPStatus.OK, _encode(route(api, url.path, query))
            except ApiError as exc:
                status, payload = exc.status, _encode(exc.body())
                if "retry_after" in exc.details:
                    headers["Retry-After"] = str(exc.details["retry_after"])
            except Exception as exc:  # a bug or a broken database: say so, keep serving
                self.log_error("%s on %s: %s", type(exc).__name__, self.path, exc)
                status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, _encode({"error": type(exc).__name__, "status": 500})
            self._send(status, payload, headers, with_body)

        def do_GET(self) -> None:  # noqa: N802 (the http.server protocol)
            self._answer(with_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(with_body=False)

        def _read_only(self) -> None:
            body = {"error": f"{self.command} is not allowed: the API is read-only", "status": 405}
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, _encode(body), {"Allow": "GET, HEAD"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _read_only  # noqa: N815

    return Handler


def serve(api: Api, host: str, port: int) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (0: any free port), not yet serving. Bound to a loopback
    address it answers only requests addressed to a loopback name. Closing it waits for the
    requests in flight (each at most :data:`REQUEST_TIMEOUT_SECONDS` idle)."""
    loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback if host else False
    server = ThreadingHTTPServer((host, port), handler_for(api, loopback_only=loopback))
    server.daemon_threads = False  # server_close() joins them: a stop never cuts a response off
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cross_sell.serving.api",
        description="Serve the data product's semantic views as read-only JSON over HTTP, for one role.",
    )
    parser.add_argument("--role", choices=sorted(roles.ROLES), default=roles.MARKETING,
                        help="marketing (default): the masked marketing database; analyst: the warehouse, personal data included")
    parser.add_argument("--warehouse", type=Path, default=None,
                        help="the warehouse file (default: $CROSS_SELL_DUCKDB_PATH or data/warehouse/cross_sell.duckdb)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free port")
    args = parser.parse_args(argv)
    api = Api(roles.role(args.role), args.warehouse or settings.duckdb_path())
    server = serve(api, args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    print(f"cross_sell API, role {api.role.name}, reading {api.database}: http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
