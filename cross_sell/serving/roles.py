"""Roles: who sees what. ``analyst`` sees everything; ``marketing`` sees personal data masked.

* **analyst** reads the warehouse itself: the published tables (schema ``main``) and the semantic
  views (schema ``semantic``).
* **marketing** gets its own DuckDB file (``cross_sell_marketing.duckdb`` beside the warehouse).
  It holds only tables, one per semantic view, materialized from the masked projection of that
  view (the spec's :class:`~cross_sell.serving.semantic.Mask` per column). It never holds a base
  table, and a DuckDB file cannot reach another file unless someone ATTACHes it, so handing out
  this file hands out masked data and nothing else.

Masking (SQL in :func:`mask_sql`):

* e-mail and phone: keyed SHA-256 pseudonym, ``sha256(key || '|' || lower(trim(value)))`` as 64 hex
  characters. The key is ``$CROSS_SELL_MASKING_KEY`` when set; otherwise a random 256-bit key made
  once per warehouse and kept in ``audit.masking_key`` (analyst-only, never copied to marketing).
  Without the key nobody can confirm a guessed address by hashing it; the same address always gives
  the same pseudonym, so marketing can still count and join. Changing the key changes every pseudonym.
* names: the first letter and a dot (``'A.'``);
* income: a band (``'50k-75k'``); birth year: an age band as of the build date (``'35-44'``).

The marketing file is built under a temporary name, scanned by :func:`find_pii_leaks`, and only a
clean file replaces the published one (``os.replace``, atomic): consumers see the old file or the
new one, never a half-built or leaking one.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

from cross_sell import contracts, settings
from cross_sell.serving import locations
from cross_sell.serving.semantic import (
    AGE_BAND_EDGES,
    INCOME_BAND_EDGES,
    MODEL,
    SCHEMA,
    Column,
    Mask,
    SemanticModel,
    View,
    age_band_labels,
    comment_statements,
    income_band_labels,
)

MASKING_KEY_ENV = "CROSS_SELL_MASKING_KEY"
KEY_TABLE = "audit.masking_key"
ANALYST, MARKETING = "analyst", "marketing"
# A column carries a personal attribute (name, birth year, income) when it equals the customer's own
# value on more than this share of rows. Chance coincidences (a tenure of 1984 days next to a birth
# year of 1984) stay far below it; a column that carries the attribute matches on nearly every row.
LINKED_LEAK_SHARE = 0.01
# Identifiers shorter than this cannot single anyone out and would match ordinary values.
MIN_IDENTIFIER_LENGTH = 5
EMAIL_PATTERN = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    masked: bool
    schema: str  # where the role's views or tables live in its database

    def database(self, warehouse: str | os.PathLike[str]) -> Path:
        return Path(warehouse) if not self.masked else locations.marketing_database(warehouse)


ROLES = {
    ANALYST: Role(
        ANALYST,
        "Full access: the published tables (schema main) and the semantic views (schema semantic) of the warehouse.",
        masked=False,
        schema=SCHEMA,
    ),
    MARKETING: Role(
        MARKETING,
        "Personal data masked: its own database file with one table per semantic view, e-mail and phone "
        "as keyed hashes, names as initials, income and age as bands. No base table, no raw personal data.",
        masked=True,
        schema="main",
    ),
}


def role(name: str) -> Role:
    try:
        return ROLES[name]
    except KeyError:
        raise ValueError(f"unknown role {name!r}; choose one of {', '.join(ROLES)}") from None


def connect(role_name: str, warehouse: str | os.PathLike[str] | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection for a consumer in ``role_name``; the views resolve by bare name
    (``select * from total_spend``) in both roles."""
    chosen = role(role_name)
    database = chosen.database(warehouse if warehouse is not None else settings.duckdb_path())
    if not database.exists():
        raise FileNotFoundError(f"No {chosen.name} database at {database} yet: materialize the serving assets first.")
    conn = duckdb.connect(str(database), read_only=True)
    conn.execute(f"set search_path = '{chosen.schema},main'")
    return conn


# ---------------------------------------------------------------------------------------------
# Masking


def masking_key(conn: duckdb.DuckDBPyConnection) -> str:
    """``$CROSS_SELL_MASKING_KEY``, else this warehouse's own random key (created on first use)."""
    configured = os.environ.get(MASKING_KEY_ENV)
    if configured:
        if len(configured) < 16:
            raise ValueError(f"{MASKING_KEY_ENV} must be at least 16 characters long")
        return configured
    conn.execute("create schema if not exists audit")
    conn.execute(f"create table if not exists {KEY_TABLE} (key varchar not null, created_at timestamp)")
    row = conn.execute(f"select key from {KEY_TABLE} order by created_at limit 1").fetchone()
    if row:
        return row[0]
    key = secrets.token_hex(32)
    conn.execute(f"insert into {KEY_TABLE} values (?, current_timestamp)", [key])
    return key


def _band_case(value: str, edges: tuple[int, ...], labels: list[str]) -> str:
    whens = [f"when {value} is null then '{labels[-1]}'"]
    whens += [f"when {value} < {edge} then '{label}'" for edge, label in zip(edges, labels)]
    return f"case {' '.join(whens)} else '{labels[-2]}' end"


def mask_sql(column: Column, value: str | None = None) -> str:
    """SQL for the marketing role's view of one personal-data column (``$masking_key`` is bound)."""
    value = value or f'"{column.name}"'
    if column.mask is Mask.HASH:
        return f"case when nullif(trim({value}), '') is null then null else sha256($masking_key || '|' || lower(trim({value}))) end"
    if column.mask is Mask.INITIAL:
        return f"case when trim({value}) = '' then null else upper(left(trim({value}), 1)) || '.' end"
    if column.mask is Mask.INCOME_BAND:
        return _band_case(value, INCOME_BAND_EDGES, income_band_labels())
    if column.mask is Mask.AGE_BAND:
        return _band_case(f"(year(current_date) - {value})", AGE_BAND_EDGES, age_band_labels())
    raise ValueError(f"{column.name} has no mask")


def marketing_columns(view: View) -> list[str]:
    return [c.mask.masked_name(c.name) if c.mask else c.name for c in view.columns]


def masked_select(view: View, source_schema: str = SCHEMA) -> str:
    """The marketing projection of a semantic view."""
    parts = [f'{mask_sql(c)} as "{c.mask.masked_name(c.name)}"' if c.mask else f'"{c.name}"' for c in view.columns]
    return f"select {', '.join(parts)} from {source_schema}.{view.name}"


# ---------------------------------------------------------------------------------------------
# The marketing database


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}.wal")):
        p.unlink(missing_ok=True)


def build_marketing_database(
    conn: duckdb.DuckDBPyConnection, target: Path, model: SemanticModel = MODEL
) -> tuple[Path, dict[str, int]]:
    """Write the masked tables into a new file beside ``target`` (not yet published).

    Returns the staging file and the row count of each table. ``conn`` is a warehouse connection
    on which the semantic views exist."""
    key = masking_key(conn)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.building.duckdb")
    alias = "marketing_build"
    counts: dict[str, int] = {}
    conn.execute(f"attach {_literal(str(staging))} as {alias}")
    try:
        for view in model.views:
            table = f"{alias}.main.{view.name}"
            sql = f"create table {table} as {masked_select(view)}"
            conn.execute(sql, {"masking_key": key} if any(c.mask is Mask.HASH for c in view.columns) else None)
            for statement in comment_statements(view, table, kind="table", masked=True):
                conn.execute(statement)
            counts[view.name] = int(conn.execute(f"select count(*) from {table}").fetchone()[0])
        conn.execute(f"checkpoint {alias}")
    except BaseException:
        conn.execute(f"detach {alias}")
        _remove(staging)
        raise
    conn.execute(f"detach {alias}")
    return staging, counts


def publish_marketing_database(staging: Path, target: Path) -> None:
    """Atomically replace the published marketing file with a scanned staging file."""
    Path(f"{target}.wal").unlink(missing_ok=True)  # a stale log of the old file must never replay onto the new one
    os.replace(staging, target)


def discard(staging: Path) -> None:
    _remove(staging)


# ---------------------------------------------------------------------------------------------
# The PII scan


@dataclass(frozen=True)
class Leak:
    """Personal data found where it must not be."""

    relation: str
    column: str
    kind: str
    matches: int
    detail: str = ""


@dataclass(frozen=True)
class PersonalData:
    """What the scan looks for, and where: never taken from the spec alone.

    The personal columns are those the input contract marks as PII plus those the spec masks, so a
    spec that forgets a mask still has its leak caught. Hashed or unmasked ones are direct
    identifiers (forbidden anywhere); all but the hashed ones are also linked attributes (forbidden
    next to their customer), and no column may carry a personal column's name."""

    source: str  # the published customers table
    identifiers: tuple[str, ...]
    full_name: tuple[str, ...]  # columns that together form a full name
    linked: dict[str, bool]  # attribute -> is a number
    columns: tuple[str, ...]  # every personal column


def personal_data(conn: duckdb.DuckDBPyConnection, model: SemanticModel = MODEL) -> PersonalData:
    customer = model.view("customer")
    masks = {c.name: c.mask for c in customer.columns}
    personal = [*contracts.pii_columns(contracts.Customer)]
    personal += [c.name for c in customer.columns if c.mask is not None and c.name not in personal]
    source = customer.source
    schema, table = source.split(".")
    types = dict(
        conn.execute(
            "select column_name, data_type from information_schema.columns where table_schema = ? and table_name = ?",
            [schema, table],
        ).fetchall()
    )
    personal = [p for p in personal if p in types]
    return PersonalData(
        source=source,
        identifiers=tuple(p for p in personal if masks.get(p) in (Mask.HASH, None)),
        full_name=tuple(p for p in personal if masks.get(p) is Mask.INITIAL),
        linked={p: types[p] != "VARCHAR" for p in personal if masks.get(p) is not Mask.HASH},
        columns=tuple(personal),
    )


def _reference_sets(conn: duckdb.DuckDBPyConnection, pii: PersonalData, key: str) -> None:
    """Temp tables of the personal data the marketing file must not contain, from the published
    customers: ``_pii_identifiers`` (direct identifiers as written and, for phone numbers, as digits
    only; full names; the masking key) and ``_pii_linked`` (one row per customer with each linked
    attribute as text and as a number)."""
    source = pii.source
    parts = [f"select '{c}' as kind, \"{c}\"::varchar as value from {source}" for c in pii.identifiers]
    parts += [  # phone numbers written differently: compare the digits (7 or more, never of an e-mail)
        f"""select '{c} (digits)', regexp_replace("{c}"::varchar, '[^0-9]', '', 'g') from {source}
            where "{c}"::varchar not like '%@%'
              and length(regexp_replace("{c}"::varchar, '[^0-9]', '', 'g')) >= 7"""
        for c in pii.identifiers
    ]
    if len(pii.full_name) > 1:
        full = " || ' ' || ".join(f'trim("{c}")' for c in pii.full_name)
        parts.append(f"select 'full name', {full} from {source}")
    parts.append("select 'masking key', $masking_key")
    conn.execute(
        f"""create or replace temp table _pii_identifiers as
            select distinct kind, value, case when regexp_full_match(value, '[0-9]+') then try_cast(value as double) end as number
            from ({' union all '.join(parts)})
            where value is not null and length(trim(value)) >= {MIN_IDENTIFIER_LENGTH}""",
        {"masking_key": key},
    )
    attributes = "".join(
        f", nullif(trim(\"{a}\"::varchar), '') as \"{a}__text\", try_cast(\"{a}\" as double) as \"{a}__number\""
        for a in pii.linked
    )
    conn.execute(
        f"create or replace temp table _pii_linked as select customer_id::varchar as customer_id{attributes} from {source}"
    )


def _relations(conn: duckdb.DuckDBPyConnection, alias: str) -> list[tuple[str, str, str]]:
    return conn.execute(
        """select schema_name, table_name, 'table' from duckdb_tables() where database_name = ?
           union all
           select schema_name, view_name, 'view' from duckdb_views() where database_name = ? and not internal
           order by 1, 2""",
        [alias, alias],
    ).fetchall()


def _columns(conn: duckdb.DuckDBPyConnection, alias: str, schema: str, name: str) -> dict[str, str]:
    """Column name -> kind ('text', 'number' or 'other') of one relation."""
    rows = conn.execute(
        """select column_name,
                  case when data_type = 'VARCHAR' then 'text'
                       when data_type in ('TINYINT', 'SMALLINT', 'INTEGER', 'BIGINT', 'HUGEINT', 'UTINYINT', 'USMALLINT',
                                          'UINTEGER', 'UBIGINT', 'FLOAT', 'DOUBLE') or data_type like 'DECIMAL%' then 'number'
                       else 'other' end
           from duckdb_columns() where database_name = ? and schema_name = ? and table_name = ? order by column_index""",
        [alias, schema, name],
    ).fetchall()
    return dict(rows)


def find_pii_leaks(
    conn: duckdb.DuckDBPyConnection, database: Path, model: SemanticModel = MODEL
) -> list[Leak]:
    """Scan every column of every table and view in ``database`` for the warehouse's personal data.

    * anything not in the spec's marketing projection (a base table, an extra column) is a leak;
    * a direct identifier (e-mail, phone, full name) or the masking key anywhere is a leak, and so
      is any value shaped like an e-mail address;
    * a name, birth year or income next to the customer it belongs to is a leak (see
      :data:`LINKED_LEAK_SHARE`).

    ``conn`` is a warehouse connection (the published customers are the reference). Each relation is
    read once per rule family, with one aggregate per column: set-based, no row loops. Values are
    compared where their type can hold them: identifiers and names in text columns (and phone
    digits in integer columns), birth year and income in text and number columns; booleans and
    timestamps cannot carry any of them."""
    alias = "pii_scan"
    pii = personal_data(conn, model)
    _reference_sets(conn, pii, masking_key(conn))
    expected = {v.name: marketing_columns(v) for v in model.views}
    attributes = pii.linked
    leaks: list[Leak] = []
    conn.execute(f"attach {_literal(str(database))} as {alias} (read_only)")
    try:
        for schema, name, kind in _relations(conn, alias):
            relation = f"{schema}.{name}"
            columns = _columns(conn, alias, schema, name)
            if schema != "main" or name not in expected:
                leaks.append(Leak(relation, "*", "not_in_spec", 0, f"{kind} {relation} is not a masked semantic view"))
            elif list(columns) != expected[name]:
                leaks.append(Leak(relation, "*", "not_in_spec", 0, f"columns {list(columns)}, expected {expected[name]}"))
            leaks += [
                Leak(relation, c, "personal column", 0, f"column named like the personal column {c}")
                for c in columns if c in pii.columns
            ]
            qualified = f'{alias}."{schema}"."{name}"'
            values = _value_tables(conn, qualified, columns)
            try:
                leaks += _identifier_leaks(conn, qualified, relation, columns, values)
                if "customer_id" in columns:
                    leaks += _linked_leaks(conn, qualified, relation, columns, attributes, values)
            finally:
                for table in values.values():
                    conn.execute(f"drop table if exists {table}")
    finally:
        conn.execute(f"detach {alias}")
        conn.execute("drop table if exists _pii_identifiers")
        conn.execute("drop table if exists _pii_linked")
    return leaks


def _text(column: str, table: str = "r") -> str:
    return f'cast({table}."{column}" as varchar)'


def _value_tables(conn: duckdb.DuckDBPyConnection, qualified: str, columns: dict[str, str]) -> dict[str, str]:
    """For every text column, a temp table of its distinct values with their row counts (one
    grouped pass per column). The rules that look at one value at a time (identifiers, e-mail
    shapes, and whether a value could equal a personal attribute at all) then read each distinct
    value once instead of every row: the same findings and the same counts, far less work on a
    table of millions of rows with few distinct texts (categories, reasons)."""
    tables = {}
    for i, (c, kind) in enumerate(columns.items()):
        if kind != "text":
            continue
        table = f"_pii_values_{i}"
        conn.execute(
            f'create or replace temp table {table} as select r."{c}" as value, count(*) as n '
            f'from {qualified} r where r."{c}" is not null group by 1'
        )
        tables[c] = table
    return tables


def _identifier_leaks(
    conn: duckdb.DuckDBPyConnection, qualified: str, relation: str, columns: dict[str, str], values: dict[str, str]
) -> list[Leak]:
    leaks = []
    probes = {}
    for c, kind in columns.items():
        if kind == "other":
            continue
        # Text is compared as text (value by value, weighted by its rows); a number only with
        # identifiers made of digits (a phone number).
        if kind == "text":
            probes[c] = (f"{values[c]} r", "r.value = i.value", "coalesce(sum(r.n), 0)")
        else:
            probes[c] = (f"{qualified} r", f'cast(r."{c}" as double) = i.number', "count(*)")
    emails = {c: f"(select coalesce(sum(n) filter (where value like '%@%' and regexp_matches(value, '{EMAIL_PATTERN}')), 0) from {t})"
              for c, t in values.items()}
    parts = [f"(select {rows} from {source} semi join _pii_identifiers i on {match})" for source, match, rows in probes.values()]
    if not parts and not emails:
        return leaks
    counts = conn.execute("select " + ", ".join([*parts, *emails.values()])).fetchone()  # one round trip
    for (c, (source, match, _)), identifiers in zip(probes.items(), counts):
        if identifiers:
            kinds = [
                k for (k,) in conn.execute(
                    f"select distinct i.kind from {source} join _pii_identifiers i on {match} order by 1"
                ).fetchall()
            ]
            leaks.append(Leak(relation, c, ", ".join(kinds), int(identifiers), f"{identifiers} values equal a customer's {' or '.join(kinds)}"))
    for c, n in zip(emails, counts[len(parts):]):
        if n:
            leaks.append(Leak(relation, c, "e-mail address", int(n), f"{n} values look like e-mail addresses"))
    return leaks


def _could_match(qualified: str, column: str, kind: str, attribute: str, numeric: bool, values: dict[str, str]) -> str:
    """SQL: whether any value of the column equals anybody's ``attribute`` at all. A necessary
    condition for it to equal its own customer's, and cheap to test (distinct values, or one semi join)."""
    if kind == "text":
        number = (
            f' or try_cast(v.value as double) in (select "{attribute}__number" from _pii_linked where "{attribute}__number" is not null)'
            if numeric else ""
        )
        sql = (
            f'select exists (select 1 from {values[column]} v where v.value in '
            f'(select "{attribute}__text" from _pii_linked where "{attribute}__text" is not null){number})'
        )
    else:
        sql = (
            f'select exists (select 1 from {qualified} r semi join (select distinct "{attribute}__number" as number from _pii_linked '
            f'where "{attribute}__number" is not null) p on cast(r."{column}" as double) = p.number)'
        )
    return f"({sql})"


def _linked_leaks(
    conn: duckdb.DuckDBPyConnection, qualified: str, relation: str, columns: dict[str, str], attributes: dict[str, bool],
    values: dict[str, str] | None = None,
) -> list[Leak]:
    """``attributes``: name -> whether it is numeric (compared as a number too). Only the (column,
    attribute) pairs whose values meet the attribute's values anywhere are joined to the customers."""
    values = values if values is not None else _value_tables(conn, qualified, columns)
    candidates = []
    for c, kind in columns.items():
        for a, numeric in attributes.items():
            if kind == "text":
                number = f' or (p."{a}__number" is not null and try_cast(r."{c}" as double) = p."{a}__number")' if numeric else ""
                condition = f'r."{c}" = p."{a}__text"{number}'
            elif kind == "number" and numeric:
                condition = f'cast(r."{c}" as double) = p."{a}__number"'
            else:
                continue
            candidates.append((c, a, condition, _could_match(qualified, c, kind, a, numeric, values)))
    if not candidates:
        return []
    possible = conn.execute("select " + ", ".join(test for *_, test in candidates)).fetchone()  # one round trip
    pairs = [(c, a, condition) for (c, a, condition, _), hit in zip(candidates, possible) if hit]
    if not pairs:
        return []
    used = list(dict.fromkeys(a for _, a, _ in pairs))
    aggregates = [f'count(p."{a}__text")' for a in used] + [f"count(*) filter (where {cond})" for _, _, cond in pairs]
    counts = conn.execute(
        f"select {', '.join(aggregates)} from {qualified} r join _pii_linked p on p.customer_id = {_text('customer_id')}"
    ).fetchone()
    known = dict(zip(used, counts[: len(used)]))
    return [
        Leak(relation, c, a, int(n), f"{n} of {known[a]} rows equal the customer's own {a}")
        for (c, a, _), n in zip(pairs, counts[len(used):])
        if n and n > LINKED_LEAK_SHARE * known[a]
    ]
