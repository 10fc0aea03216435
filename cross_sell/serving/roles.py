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

import math
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
from cross_sell.warehouse import quoted

MASKING_KEY_ENV = "CROSS_SELL_MASKING_KEY"
KEY_TABLE = "audit.masking_key"
ANALYST, MARKETING = "analyst", "marketing"
# A column carries a personal attribute (name, birth year, income) when it equals the customer's own
# value on more than LINKED_LEAK_SHARE of its rows, and on more than CARRIER_SHARE of the rows where
# it holds anybody's value of that attribute. Chance coincidences stay far below either: a tenure
# of 1984 days next to a birth year of 1984 in a large table, or, in a small shop, the one customer
# called Sherry among the thirty who have not bought Sherry yet. A column that carries the
# attribute matches on nearly every row.
LINKED_LEAK_SHARE = 0.01
CARRIER_SHARE = 0.5
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
    (``select * from total_spend``) in both roles.

    The role's file is attached (as database ``<role>``) to a new in-memory connection rather
    than opened with ``duckdb.connect(path)``: while any connection of the process still has the
    file open, DuckDB hands ``connect(path)`` that same database, which goes on reading the
    marketing file a refresh has since replaced by a rename. Attached, every connection reads the
    file as it is now."""
    chosen = role(role_name)
    database = chosen.database(warehouse if warehouse is not None else settings.duckdb_path())
    if not database.exists():
        raise FileNotFoundError(f"No {chosen.name} database at {database} yet: materialize the serving assets first.")
    conn = duckdb.connect()
    try:
        conn.execute(f"attach {_literal(str(database))} as {chosen.name} (read_only)")
        conn.execute(f"use {chosen.name}")
        conn.execute(f"set search_path = '{chosen.name}.{chosen.schema},{chosen.name}.main'")
    except BaseException:
        conn.close()
        raise
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
    # Phone numbers written differently: compare the digits (7 or more, never of an e-mail). The
    # digits are computed once per customer (a materialized CTE): a regular expression per row is
    # the costly part, and an inlined expression would be evaluated again by every filter on it.
    digits = [
        f"""_digits_{i} as materialized (select regexp_replace("{c}"::varchar, '[^0-9]', '', 'g') as value from {source}
                                          where "{c}"::varchar not like '%@%')"""
        for i, c in enumerate(pii.identifiers)
    ]
    parts += [f"select '{c} (digits)', value from _digits_{i} where length(value) >= 7" for i, c in enumerate(pii.identifiers)]
    if len(pii.full_name) > 1:
        full = " || ' ' || ".join(f'trim("{c}")' for c in pii.full_name)
        parts.append(f"select 'full name', {full} from {source}")
    parts.append("select 'masking key', $masking_key")
    # Not deduplicated: the table is only ever probed (semi joins, and the kinds a value equals).
    conn.execute(
        f"""create or replace temp table _pii_identifiers as
            {'with ' + ', '.join(digits) if digits else ''}
            select kind, value, case when regexp_full_match(value, '[0-9]+') then try_cast(value as double) end as number
            from ({' union all '.join(parts)}) t(kind, value)
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


@dataclass(frozen=True)
class _Scanned:
    """One relation of the file being scanned."""

    relation: str  # schema.name, as reported
    qualified: str  # how to read it from the warehouse connection
    columns: dict[str, str]  # column name -> 'text', 'number' or 'other'


def find_pii_leaks(
    conn: duckdb.DuckDBPyConnection, database: Path, model: SemanticModel = MODEL
) -> list[Leak]:
    """Scan every column of every table and view in ``database`` for the warehouse's personal data.

    * anything not in the spec's marketing projection (a base table, an extra column) is a leak;
    * a direct identifier (e-mail, phone, full name) or the masking key anywhere is a leak, and so
      is any value shaped like an e-mail address;
    * a name, birth year or income next to the customer it belongs to is a leak (see
      :data:`LINKED_LEAK_SHARE` and :data:`CARRIER_SHARE`).

    ``conn`` is a warehouse connection (the published customers are the reference). Values are
    compared where their type can hold them: identifiers and names in text columns (and phone
    digits in number columns), birth year and income in text and number columns; booleans and
    timestamps cannot carry any of them. Set-based, no row loops, and each rule reads as little
    as proves it:

    * every text column of every relation is read once into one table of its distinct values with
      their row counts; each per-value rule (identifiers, e-mail shapes, and whether a value equals
      any customer's attribute at all) is then one join or one pass over that table, for all
      columns at once, instead of one query per column;
    * a number column is read once for its smallest and largest value; where that range cannot
      meet the personal numbers (phone digits, birth years, incomes) no value of it can equal
      one, and the column is clean for that rule; otherwise it is compared value by value;
    * only (column, attribute) pairs whose values meet the attribute's anywhere are joined to the
      customers to count the rows that equal the customer's own value.

    Same findings and counts as comparing every row."""
    alias = "pii_scan"
    pii = personal_data(conn, model)
    _reference_sets(conn, pii, masking_key(conn))
    expected = {v.name: marketing_columns(v) for v in model.views}
    found: list[tuple[tuple[int, ...], Leak]] = []  # (order, leak): per relation, rule family, column
    conn.execute(f"attach {_literal(str(database))} as {alias} (read_only)")
    try:
        scanned: list[_Scanned] = []
        for i, (schema, name, kind) in enumerate(_relations(conn, alias)):
            relation = f"{schema}.{name}"
            columns = _columns(conn, alias, schema, name)
            if schema != "main" or name not in expected:
                found.append(((i, 0), Leak(relation, "*", "not_in_spec", 0, f"{kind} {relation} is not a masked semantic view")))
            elif list(columns) != expected[name]:
                found.append(((i, 0), Leak(relation, "*", "not_in_spec", 0, f"columns {list(columns)}, expected {expected[name]}")))
            found += [
                ((i, 1, j), Leak(relation, c, "personal column", 0, f"column named like the personal column {c}"))
                for j, c in enumerate(columns) if c in pii.columns
            ]
            scanned.append(_Scanned(relation, f"{alias}.{quoted(schema)}.{quoted(name)}", columns))
        _value_table(conn, scanned)
        ranges = _number_ranges(conn, scanned)
        found += _identifier_leaks(conn, scanned, ranges)
        found += _linked_leaks(conn, scanned, pii.linked, ranges)
    finally:
        conn.execute(f"detach {alias}")
        for table in _SCAN_TABLES:
            conn.execute(f"drop table if exists {table}")
    return [leak for _, leak in sorted(found, key=lambda item: item[0])]


_SCAN_TABLES = ("_pii_identifiers", "_pii_linked", "_pii_values", "_pii_attribute_texts", "_pii_attribute_numbers")


def _value_table(conn: duckdb.DuckDBPyConnection, scanned: list[_Scanned]) -> None:
    """``_pii_values``: every distinct value of every text column with its row count, keyed by
    relation and column position (one grouped pass per column, all in one statement)."""
    parts = [
        f"select {i} as rel, {j} as col, r.{quoted(c)} as value, count(*) as n from {s.qualified} r "
        f"where r.{quoted(c)} is not null group by all"
        for i, s in enumerate(scanned)
        for j, (c, kind) in enumerate(s.columns.items())
        if kind == "text"
    ]
    if parts:
        conn.execute("create or replace temp table _pii_values as " + " union all ".join(parts))
    else:
        conn.execute("create or replace temp table _pii_values (rel integer, col integer, value varchar, n bigint)")


Range = tuple[float | None, float | None]


def _number_ranges(conn: duckdb.DuckDBPyConnection, scanned: list[_Scanned]) -> dict[tuple[int, int], Range]:
    """(relation, column) -> smallest and largest value of every number column, as doubles (one
    pass per relation; ``(None, None)`` when the column holds no value)."""
    ranges: dict[tuple[int, int], Range] = {}
    for i, s in enumerate(scanned):
        numbers = [(j, c) for j, (c, kind) in enumerate(s.columns.items()) if kind == "number"]
        if not numbers:
            continue
        aggregates = ", ".join(f"min(cast(r.{quoted(c)} as double)), max(cast(r.{quoted(c)} as double))" for _, c in numbers)
        row = conn.execute(f"select {aggregates} from {s.qualified} r").fetchone()
        for k, (j, _) in enumerate(numbers):
            ranges[(i, j)] = (row[2 * k], row[2 * k + 1])
    return ranges


def _may_meet(a: Range, b: Range) -> bool:
    """Whether a value in range ``a`` can equal one in range ``b``. Proven only by disjoint ranges:
    NaN (which DuckDB orders above every number and compares equal to itself) never proves it."""
    if a[0] is None or b[0] is None:
        return False  # one side holds no number at all
    if any(math.isnan(x) for x in (*a, *b)):
        return True
    return not (a[1] < b[0] or b[1] < a[0])


def _identifier_leaks(
    conn: duckdb.DuckDBPyConnection, scanned: list[_Scanned], ranges: dict[tuple[int, int], Range]
) -> list[tuple[tuple[int, ...], Leak]]:
    """Direct identifiers and the masking key (text: value by value, weighted by its rows; numbers:
    only against identifiers made of digits, a phone number) and e-mail shapes."""
    found: list[tuple[tuple[int, ...], Leak]] = []
    # Text, all columns at once: rows whose value equals any identifier, and the kinds it equals.
    hits = {(rel, col): n for rel, col, n in conn.execute(
        "select v.rel, v.col, sum(v.n) from _pii_values v semi join _pii_identifiers i on i.value = v.value group by all"
    ).fetchall() if n}
    kinds: dict[tuple[int, int], list[str]] = {}
    if hits:
        for rel, col, kind in conn.execute(
            "select distinct v.rel, v.col, i.kind from _pii_values v join _pii_identifiers i on i.value = v.value order by 1, 2, 3"
        ).fetchall():
            kinds.setdefault((rel, col), []).append(kind)
    # Numbers: only columns whose range meets the range of the identifiers made of digits.
    digits = conn.execute("select min(number), max(number) from _pii_identifiers").fetchone()
    probes = [(key, scanned[key[0]], list(scanned[key[0]].columns)[key[1]]) for key, span in ranges.items() if _may_meet(span, digits)]
    if probes:
        counts = conn.execute("select " + ", ".join(
            f"(select count(*) from {s.qualified} r semi join _pii_identifiers i on cast(r.{quoted(c)} as double) = i.number)"
            for _, s, c in probes
        )).fetchone()  # one round trip
        for (key, s, c), n in zip(probes, counts):
            if n:
                hits[key] = n
                kinds[key] = [k for (k,) in conn.execute(
                    f"select distinct i.kind from {s.qualified} r join _pii_identifiers i on cast(r.{quoted(c)} as double) = i.number order by 1"
                ).fetchall()]
    for (rel, col), n in hits.items():
        s = scanned[rel]
        found.append(((rel, 2, col), Leak(
            s.relation, list(s.columns)[col], ", ".join(kinds[(rel, col)]), int(n),
            f"{n} values equal a customer's {' or '.join(kinds[(rel, col)])}",
        )))
    for rel, col, n in conn.execute(
        f"select rel, col, sum(n) from _pii_values where value like '%@%' and regexp_matches(value, '{EMAIL_PATTERN}') group by all"
    ).fetchall():
        if n:
            found.append(((rel, 3, col), Leak(scanned[rel].relation, list(scanned[rel].columns)[col], "e-mail address", int(n), f"{n} values look like e-mail addresses")))
    return found


def _text(column: str, table: str = "r") -> str:
    return f"cast({table}.{quoted(column)} as varchar)"


# What may start a text that DuckDB reads as a number: after leading whitespace, anything but a
# letter that cannot begin "inf" or "nan" (the digits, sign, dot, i and n, and more than those).
_MAYBE_NUMBER = r"^[\t\n\x0b\f\r ]*[^A-HJ-MO-Za-hj-mo-z\t\n\x0b\f\r ]"


def _as_number(text: str) -> str:
    """``try_cast(text as double)``, skipping the cast where the text cannot be a number: a failed
    cast costs several times a successful one, and most values scanned (identifiers, hashes,
    names) fail it."""
    return f"case when regexp_matches({text}, '{_MAYBE_NUMBER}') then try_cast({text} as double) end"


def _attribute_sets(conn: duckdb.DuckDBPyConnection, attributes: dict[str, bool]) -> dict[str, Range]:
    """``_pii_attribute_texts`` (every customer's attribute values as text, distinct) and
    ``_pii_attribute_numbers`` (the numeric attributes' values as numbers, distinct), from
    ``_pii_linked``; returns each numeric attribute's range."""
    texts = [
        f"select distinct {_literal(a)} as attribute, {quoted(a + '__text')} as text from _pii_linked where {quoted(a + '__text')} is not null"
        for a in attributes
    ] or ["select null::varchar as attribute, null::varchar as text where false"]
    numbers = [
        f"select distinct {_literal(a)} as attribute, {quoted(a + '__number')} as number from _pii_linked where {quoted(a + '__number')} is not null"
        for a, numeric in attributes.items() if numeric
    ] or ["select null::varchar as attribute, null::double as number where false"]
    conn.execute("create or replace temp table _pii_attribute_texts as " + " union all ".join(texts))
    conn.execute("create or replace temp table _pii_attribute_numbers as " + " union all ".join(numbers))
    spans = conn.execute("select attribute, min(number), max(number) from _pii_attribute_numbers group by 1").fetchall()
    return {a: (lo, hi) for a, lo, hi in spans}


def _linked_leaks(
    conn: duckdb.DuckDBPyConnection, scanned: list[_Scanned], attributes: dict[str, bool],
    ranges: dict[tuple[int, int], Range],
) -> list[tuple[tuple[int, ...], Leak]]:
    """``attributes``: name -> whether it is numeric (compared as a number too). Only the (column,
    attribute) pairs whose values meet the attribute's values anywhere are joined to the customers."""
    linked = [i for i, s in enumerate(scanned) if "customer_id" in s.columns]
    if not linked or not attributes:
        return []
    spans = _attribute_sets(conn, attributes)
    rels = ", ".join(str(i) for i in linked)
    # Text columns, all at once: which (column, attribute) pairs share a value (as text, or as a
    # number for numeric attributes) with anybody's attribute.
    possible = set(conn.execute(
        f"""select distinct v.rel, v.col, a.attribute from _pii_values v join _pii_attribute_texts a on a.text = v.value
            where v.rel in ({rels})
            union
            select distinct v.rel, v.col, a.attribute
            from (select rel, col, {_as_number('value')} as number from _pii_values where rel in ({rels})) v
            join _pii_attribute_numbers a on a.number = v.number"""
    ).fetchall())
    # Number columns: compared value by value only where the ranges meet.
    probes = [
        (i, j, c, a)
        for i in linked
        for j, (c, kind) in enumerate(scanned[i].columns.items())
        if kind == "number"
        for a, numeric in attributes.items()
        if numeric and _may_meet(ranges[(i, j)], spans.get(a, (None, None)))
    ]
    if probes:
        exists = conn.execute("select " + ", ".join(
            f"(select exists (select 1 from {scanned[i].qualified} r semi join _pii_attribute_numbers p "
            f"on p.attribute = {_literal(a)} and cast(r.{quoted(c)} as double) = p.number))"
            for i, j, c, a in probes
        )).fetchone()  # one round trip
        possible |= {(i, j, a) for (i, j, _, a), hit in zip(probes, exists) if hit}
    found: list[tuple[tuple[int, ...], Leak]] = []
    for i in linked:
        s = scanned[i]
        pairs = []
        for j, (c, kind) in enumerate(s.columns.items()):
            for k, (a, numeric) in enumerate(attributes.items()):
                if (i, j, a) not in possible:
                    continue
                texts = f"(select text from _pii_attribute_texts where attribute = {_literal(a)})"
                numbers = f"(select number from _pii_attribute_numbers where attribute = {_literal(a)})"
                if kind == "text":
                    as_number = f"try_cast(r.{quoted(c)} as double)"
                    own = f'r.{quoted(c)} = p."{a}__text"'
                    own += f' or (p."{a}__number" is not null and {as_number} = p."{a}__number")' if numeric else ""
                    anybody = f"r.{quoted(c)} in {texts}" + (f" or {as_number} in {numbers}" if numeric else "")
                else:
                    own = f'cast(r.{quoted(c)} as double) = p."{a}__number"'
                    anybody = f"cast(r.{quoted(c)} as double) in {numbers}"
                pairs.append((j, k, c, a, own, anybody))
        if not pairs:
            continue
        used = list(dict.fromkeys(pair[3] for pair in pairs))
        aggregates = [f'count(p."{a}__text")' for a in used]
        aggregates += [f"count(*) filter (where {own})" for *_, own, _ in pairs]
        aggregates += [f"count(*) filter (where {anybody})" for *_, anybody in pairs]
        counts = conn.execute(
            f"select {', '.join(aggregates)} from {s.qualified} r join _pii_linked p on p.customer_id = {_text('customer_id')}"
        ).fetchone()
        known = dict(zip(used, counts[: len(used)]))
        matches = counts[len(used): len(used) + len(pairs)]
        holding = counts[len(used) + len(pairs):]
        found += [
            ((i, 4, j, k), Leak(s.relation, c, a, int(n), f"{n} of {known[a]} rows equal the customer's own {a} "
                                                          f"({n} of the {held} rows holding anybody's {a})"))
            for (j, k, c, a, *_), n, held in zip(pairs, matches, holding)
            if n and n > LINKED_LEAK_SHARE * known[a] and n > CARRIER_SHARE * held
        ]
    return found
