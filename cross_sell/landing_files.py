"""The landing folder: new purchase files dropped between daily full refreshes.

Upstream systems drop extra purchase lines (the canonical purchase columns, as ``.csv``,
``.csv.gz`` or ``.parquet``) into the landing folder (``$CROSS_SELL_LANDING_DIR``, default
``data/landing``). The life of a file, every step recorded in ``audit.landing_files``:

1. the landing sensor sees it and requests exactly one ingest run for it (its cursor remembers
   the file's name, size and modification time), and a new one only if that run is cancelled
   before it published or rejected the file;
2. that run lands it into ``audit.purchases`` together with the source files and every file
   accepted before (status ``landed``), and the gates check the whole load;
3. purchases published: in the publishing transaction itself the file is recorded ``published``
   (whichever run publishes: the one that landed it, a re-execution, a later run), then moved to
   ``<landing>/processed/`` (``accepted``) by the publish step, or, if that move was interrupted, by
   the next step that archives (the landing log asset, the failure sensor, the next purchase load);
   a gate failed: the run-failure sensor moves it to ``<landing>/rejected/`` (``rejected``), and the
   published tables are untouched because publishing refuses a load that failed a gate. A file
   whose lines were published is never rejected, and one rejected before a retried publish is
   taken back out of ``rejected/``.

Accepted files stay part of the purchase input: every later landing of purchases (the daily full
refresh included) reads them after the source files, so re-reading ``$CROSS_SELL_DATA_DIR`` never
loses landed rows. Only the files the warehouse's own log accepted count: another warehouse
sharing the landing folder never reads them. Rows are upserted by ``purchase_id``: for each id
only the rows of the most recent source are kept (the source files first, then the accepted files
in the order they were published, whatever the source files' age), so landing the same lines
twice, even under another file name, never duplicates them, and a later file can correct a line.
A source extract newer than an accepted file is warned about, and ``withdraw_accepted_landing_files``
lets it take over. Duplicates *within* one file are kept, so
the uniqueness gate still sees and reports them.
"""


import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from cross_sell.ingest.landing import LandingReport, land
from cross_sell.resources import InputFiles
from cross_sell.warehouse import (
    AUDIT_SCHEMA,
    ColumnDef,
    column_ddl,
    column_schema,
    connect,
    markdown,
    quoted,
    table_columns,
    transaction,
    uri,
)

SUFFIXES = (".csv", ".csv.gz", ".parquet")
PROCESSED = "processed"
REJECTED = "rejected"
LOG_TABLE = "landing_files"
LANDED, PUBLISHED, ACCEPTED, REJECTED_STATUS = "landed", "published", "accepted", "rejected"
WITHDRAWN = "withdrawn"  # accepted, then its archive was missing and a full load dropped it on purpose
# A file younger than this may still be being written; the sensor looks again on its next tick.
MIN_AGE_SECONDS = 2.0
KEY_COLUMN = "purchase_id"

LOG_COLUMNS = (
    ColumnDef("file", "varchar", "The file's name in the landing folder."),
    ColumnDef("sha256", "varchar", "SHA-256 of the file's bytes: the same name with other contents is another file."),
    ColumnDef("rows", "bigint", "Purchase lines read from the file."),
    ColumnDef("status", "varchar", "landed (gates pending), published (its lines are in the published purchases; archiving pending), accepted (published and archived), rejected (a gate failed) or withdrawn (its archive went missing and a full load dropped its lines on purpose)."),
    ColumnDef("run_id", "varchar", "The Dagster run that recorded this status."),
    ColumnDef("recorded_at", "timestamp", "When the status was recorded (UTC)."),
    ColumnDef("path", "varchar", "Where the file was then: the landing folder, or the archive folder it was moved to."),
    ColumnDef("detail", "varchar", "What happened: rows read and replaced, or the gate that rejected the file."),
)
_DDL = f"""
create schema if not exists {AUDIT_SCHEMA};
create table if not exists {AUDIT_SCHEMA}.{LOG_TABLE} (
    {column_ddl(LOG_COLUMNS)}
)
"""


class LandingFileError(ValueError):
    """A landing file named in a run does not exist or is not a plain file in the landing folder."""


class AcceptedFilesMissingError(LandingFileError):
    """Files this warehouse accepted are not in the landing folder's archive: a full load without
    them would silently drop their published lines."""

    def __init__(self, missing: list[str], archive: Path | None):
        self.missing = missing
        self.archive = archive
        where = archive if archive is not None else "any archive (no landing folder is configured)"
        super().__init__(
            f"{len(missing)} landing file(s) whose lines are published are not in {where}: {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}. A full load without them would drop their published "
            "purchase lines. Point CROSS_SELL_LANDING_DIR at the landing folder that holds processed/ "
            "(or put the files back); to drop their lines on purpose, run the load once with "
            "config withdraw_missing_landing_files: true on audit/purchases"
        )


class LandingColumnsMissingError(LandingFileError):
    """A landing file lacks columns of the purchase contract. Its lines cannot be upserted (no
    purchase_id) or would publish nulls, and next to the history, which has the columns, the
    contract gate would not see which file they are missing from."""

    def __init__(self, file: str, missing: list[str], received: Sequence[str]):
        self.file = file
        self.missing = missing
        by_case = {name.lower(): name for name in received}
        notes = [f"{m} (the file has {by_case[m.lower()]!r}: column names are case-sensitive)"
                 if m.lower() in by_case else m for m in missing]
        super().__init__(
            f"landing file {file} lacks the purchase contract's column(s) {', '.join(notes)}; it has "
            f"{', '.join(received) or 'no columns'}. A landing file holds canonical purchase lines, with a header naming "
            "the contract's columns"
        )


def _require_columns(file: Path, received: Sequence[str], required: Sequence[str]) -> None:
    missing = [name for name in required if name not in received]
    if missing:
        raise LandingColumnsMissingError(file.name, missing, [c for c in received if c != "_source_file"])


@dataclass(frozen=True)
class PendingFile:
    """A file waiting in the landing folder, identified by name, size and modification time."""

    name: str
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{self.size}:{self.mtime_ns}"


def is_landing_file(path: Path) -> bool:
    """A purchase file the landing folder takes: ``.csv``, ``.csv.gz`` or ``.parquet`` in any case
    (``.CSV`` from a Windows export too), not hidden (being written under a dot-name)."""
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(SUFFIXES)


def ignored_files(landing_dir: Path) -> list[str]:
    """Names of the plain files in the top level of the landing folder it never ingests (another
    kind of file), so the sensor can say so instead of leaving them there without a word."""
    if not landing_dir.is_dir():
        return []
    return sorted(
        p.name for p in landing_dir.iterdir() if p.is_file() and not p.name.startswith(".") and not is_landing_file(p)
    )


def pending_files(landing_dir: Path, min_age_seconds: float = 0.0, now: float | None = None) -> list[PendingFile]:
    """Files waiting in the top level of the landing folder, oldest first."""
    if not landing_dir.is_dir():
        return []
    now = time.time() if now is None else now
    found = []
    for path in landing_dir.iterdir():
        if not is_landing_file(path):
            continue
        stat = path.stat()
        if now - stat.st_mtime >= min_age_seconds:
            found.append(PendingFile(path.name, stat.st_size, stat.st_mtime_ns))
    return sorted(found, key=lambda f: (f.mtime_ns, f.name))


# Every file version (name and checksum) in the log with its latest rows, status and path.
_LATEST_SQL = f"""select file, sha256, arg_max(rows, recorded_at) as rows, arg_max(status, recorded_at) as status,
        arg_max(path, recorded_at) as path
    from {AUDIT_SCHEMA}.{LOG_TABLE} group by file, sha256"""


def status_counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """How many file versions are in each status now (the log must exist)."""
    return dict(conn.execute(f"select status, count(*) from ({_LATEST_SQL}) group by 1").fetchall())


def _accepted_rows(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str, datetime]]:
    """(file, sha256, archive path, when its lines were published) of every file version whose
    latest status is ``accepted``, in the order their lines were published."""
    ensure_log(conn)
    return conn.execute(
        f"""with latest as ({_LATEST_SQL})
            select a.file, a.sha256, a.path, coalesce(max(p.recorded_at), a.recorded_at) from {AUDIT_SCHEMA}.{LOG_TABLE} a
            join latest l on l.file = a.file and l.sha256 = a.sha256 and l.status = ?
            left join {AUDIT_SCHEMA}.{LOG_TABLE} p on p.status = ? and p.file = a.file and p.sha256 = a.sha256
                 and p.recorded_at <= a.recorded_at
            where a.status = ? and a.path is not null
            group by a.file, a.sha256, a.path, a.recorded_at
            order by coalesce(max(p.recorded_at), a.recorded_at), a.path""",
        [ACCEPTED, PUBLISHED, ACCEPTED],
    ).fetchall()


@dataclass(frozen=True)
class AcceptedFile:
    """An accepted landing file, as a full load reads it again."""

    path: Path  # in the archive
    published_at: datetime  # UTC


def accepted_files(
    conn: duckdb.DuckDBPyConnection, landing_dir: Path | None, *, withdraw_missing: bool = False,
    withdraw_all: bool = False, run_id: str = "",
) -> list[AcceptedFile]:
    """The files this warehouse accepted, in the order their lines were published (a later file
    wins a purchase_id). Only those its own log records as accepted: a landing folder shared with
    another warehouse (another dataset, a test copy) holds archives that are not this product's
    lines. Matched by archive name, unique per file, so a moved landing folder still works.

    An accepted file that is not in the archive (another landing folder configured, the archive
    cleaned up), or a published one that could not be archived because it left the landing
    folder, raises :class:`AcceptedFilesMissingError`: a full load without it would drop its
    published lines silently. With ``withdraw_missing`` such files are recorded ``withdrawn``
    instead, and are no longer part of the input. With ``withdraw_all`` every one of them is (the
    source files were extracted again and hold their lines). Call :func:`archive_published` first."""
    rows = _accepted_rows(conn)
    # Published but never archived (the move failed, then the file was taken out of the landing
    # folder, which archiving had already tried): its lines are published, and no archive holds them.
    unarchived = [(file, sha, path) for file, sha, _, status, path in _latest(conn) if status == PUBLISHED]
    if not rows and not unarchived:
        return []
    listed = [(file, sha, path) for file, sha, path, _ in rows]
    archive = landing_dir / PROCESSED if landing_dir is not None else None
    archived = {}
    if withdraw_all:
        dropped = listed + unarchived
        why = "withdrawn on request (withdraw_accepted_landing_files): the source files hold its lines now"
    else:
        if archive is not None and archive.is_dir():
            archived = {p.name: p for p in archive.iterdir() if is_landing_file(p)}
        dropped = [(file, sha, path) for file, sha, path in listed if Path(path).name not in archived] + unarchived
        if dropped and not withdraw_missing:
            raise AcceptedFilesMissingError([Path(path).name for _, _, path in dropped], archive)
        why = f"archive not found in {archive or 'any landing folder'}: its lines are no longer part of the purchase input"
    for file, sha, path in dropped:
        _record(conn, file, sha, None, WITHDRAWN, run_id, Path(path), why)
    published = {Path(path).name: at for *_, path, at in rows}
    return [AcceptedFile(archived[name], at) for name, at in published.items() if name in archived]


def resolve_pending(landing_dir: Path | None, names: Sequence[str]) -> list[Path]:
    """The named files in the top level of the landing folder; raises LandingFileError otherwise."""
    if not names:
        return []
    if landing_dir is None:
        raise LandingFileError(f"landing files {list(names)} were given, but no landing folder is configured")
    paths = []
    for name in names:
        path = landing_dir / name
        if Path(name).name != name or not is_landing_file(path):
            raise LandingFileError(
                f"{name!r} is not a {'/'.join(SUFFIXES)} file in the landing folder {landing_dir}"
            )
        paths.append(path)
    return paths


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_log(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(_DDL)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _record(
    conn: duckdb.DuckDBPyConnection, file: str, sha256: str | None, rows: int | None, status: str, run_id: str,
    path: Path, detail: str, at: datetime | None = None,
) -> None:
    conn.execute(
        f"insert into {AUDIT_SCHEMA}.{LOG_TABLE} values (?, ?, ?, ?, ?, ?, ?, ?)",
        [file, sha256, rows, status, run_id, at or _now(), str(path), detail],
    )


def _in_order(count: int) -> list[datetime]:
    """``count`` distinct, increasing record times from now: files landed by one run are recorded
    in the order they win a purchase_id, and keep that order in every later load."""
    start = _now()
    return [start + timedelta(microseconds=i) for i in range(count)]


def _column_types(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    return {name: column_type for name, column_type, *_ in conn.execute(f"describe {AUDIT_SCHEMA}.{table}").fetchall()}


def add_landed_files(
    conn: duckdb.DuckDBPyConnection,
    report: LandingReport,
    landing_dir: Path | None,
    new_names: Sequence[str],
    contract_columns: list[str],
    run_id: str,
    contract_types: Mapping[str, str] | None = None,
    withdraw_missing: bool = False,
    required_columns: Sequence[str] = (),
    withdraw_accepted: bool = False,
) -> LandingReport:
    """Add the accepted landing files and the new ones to ``audit.<table>`` (already holding the
    source files), upserting by purchase_id, and record the new files as ``landed``. Accepted
    files missing from the archive fail the load unless ``withdraw_missing`` (see
    :func:`accepted_files`).

    Later sources win: for each purchase_id only the rows of the most recent source holding it
    stay (the source files first, then accepted files in the order they were accepted, then the
    new ones); duplicates within one file stay, for the uniqueness gate. The landing files are
    small next to the history, so they are landed on their own and ranked among themselves; the
    history's lines they replace are deleted and their winning lines inserted, instead of
    rewriting the whole table once per file. A column a landing file holds as text where the
    history holds it typed (a CSV file next to Parquet sources) is turned into text first, so
    the gate still reports a value that cannot be typed.

    A new file that lacks a column in ``required_columns`` raises
    :class:`LandingColumnsMissingError`, naming it. Runs in the caller's transaction, so a
    failure leaves the audit tables as they were.
    """
    new = resolve_pending(landing_dir, new_names)
    accepted = accepted_files(conn, landing_dir, withdraw_missing=withdraw_missing, withdraw_all=withdraw_accepted,
                              run_id=run_id)
    sources = [*(a.path for a in accepted), *new]
    if not sources:
        return report
    table = report.table
    parts = [f"_landing_{i}" for i in range(len(sources))]
    for part, path in zip(parts, sources):
        land(conn, part, [path], contract_columns, contract_types=contract_types)  # same reader, same reject handling
        if path in new:
            _require_columns(path, table_columns(conn, part, AUDIT_SCHEMA), required_columns)
        conn.execute(f"insert into {AUDIT_SCHEMA}.{table}_rejects select * from {AUDIT_SCHEMA}.{part}_rejects")
        conn.execute(f"drop table {AUDIT_SCHEMA}.{part}_rejects")

    # One type per column: where the history and a landing file disagree, both hold it as text.
    types = [_column_types(conn, t) for t in (table, *parts)]
    order = list(dict.fromkeys(name for found in types for name in found))
    text = {n for n in order if len({found[n] for found in types if n in found}) > 1}
    for name in (n for n in text if n in types[0] and types[0][n] != "VARCHAR"):
        conn.execute(f"alter table {AUDIT_SCHEMA}.{table} alter {quoted(name)} type varchar")
    for name in (n for n in order if n not in types[0]):  # a column only landing files have
        conn.execute(f"alter table {AUDIT_SCHEMA}.{table} add column {quoted(name)} varchar")

    def select(part: str, found: dict[str, str], rank: int) -> str:
        columns = ", ".join(
            f"{quoted(n)}::varchar as {quoted(n)}" if n in text and found[n] != "VARCHAR" else quoted(n) for n in found
        )
        return f"select {columns}, {rank} as _rank from {AUDIT_SCHEMA}.{part}"

    # The landing files' lines, each with its file's rank (1 for the oldest accepted file).
    conn.execute(
        "create or replace temp table _landed as "
        + " union all by name ".join(select(part, found, i + 1) for i, (part, found) in enumerate(zip(parts, types[1:])))
    )
    for part in parts:
        conn.execute(f"drop table {AUDIT_SCHEMA}.{part}")
    read = dict(conn.execute("select _source_file, count(*) from _landed group by 1").fetchall())
    replaced: dict[str, int] = {}
    if KEY_COLUMN in order:
        key = quoted(KEY_COLUMN)
        # Keys of the history that a landing file holds too (rank 0): a hash join on the few landed keys.
        conn.execute(
            f"create or replace temp table _landed_keys as select distinct {key} as k from _landed where {key} is not null"
        )
        conn.execute(
            f"create or replace temp table _history_keys as select distinct t.{key} as k "
            f"from {AUDIT_SCHEMA}.{table} t join _landed_keys l on t.{key} = l.k"
        )
        replaced = dict(
            conn.execute(
                f"""with ranked as (
                        select {key} as k, _source_file as f, _rank as rank from _landed where {key} is not null
                        union all select k, null, 0 from _history_keys)
                    select f, count(distinct k) from (
                        select k, f, rank, min(rank) over (partition by k) as first_rank from ranked)
                    where first_rank < rank group by 1"""
            ).fetchall()
        )
        conn.execute(f"delete from {AUDIT_SCHEMA}.{table} where {key} in (select k from _history_keys)")
        conn.execute(
            f"insert into {AUDIT_SCHEMA}.{table} by name select * exclude (_rank) from _landed "
            f"qualify {key} is null or _rank = max(_rank) over (partition by {key})"
        )
        conn.execute("drop table _landed_keys; drop table _history_keys")
    else:
        conn.execute(f"insert into {AUDIT_SCHEMA}.{table} by name select * exclude (_rank) from _landed")
    conn.execute("drop table _landed")

    ensure_log(conn)
    for path, at in zip(new, _in_order(len(new))):
        rows = int(read.get(str(path), 0))
        detail = f"{rows} rows read, {replaced.get(str(path), 0)} of them replace earlier lines with the same purchase_id"
        _record(conn, path.name, file_sha256(path), rows, LANDED, run_id, path, detail, at)

    rows = int(conn.execute(f"select count(*) from {AUDIT_SCHEMA}.{table}").fetchall()[0][0])
    rejected = int(conn.execute(f"select count(*) from {AUDIT_SCHEMA}.{table}_rejects").fetchall()[0][0])
    received = [c for c in table_columns(conn, table, AUDIT_SCHEMA) if c != "_source_file"]
    return replace(
        report,
        warnings=[*report.warnings, *_overrides_of_newer_sources(report.files, accepted, replaced)],
        files=[*report.files, *sources],
        rows=rows,
        columns=received,
        extra_columns=[c for c in received if c not in contract_columns],
        missing_columns=[c for c in contract_columns if c not in received],
        rejected_lines=rejected,
    )


def _overrides_of_newer_sources(
    source_files: Sequence[Path], accepted: Sequence[AcceptedFile], replaced: Mapping[str, int]
) -> list[str]:
    """Warnings for accepted landing files whose lines win over source files modified after they
    were published: an upstream re-extract whose corrections and cancellations the older landing
    files would silently undo (accepted landing files always win over the source files)."""
    if not source_files or not accepted:
        return []
    mtime, newest = max((p.stat().st_mtime, p) for p in source_files)
    modified = datetime.fromtimestamp(mtime, timezone.utc).replace(tzinfo=None)
    stale = [(a, replaced[str(a.path)]) for a in accepted if a.published_at < modified and replaced.get(str(a.path))]
    if not stale:
        return []
    files = ", ".join(f"{a.path.name.split('__')[-1]} ({lines} lines, published {a.published_at:%Y-%m-%d %H:%M} UTC)"
                      for a, lines in stale)
    return [
        f"accepted landing files replace lines of the source files, which were modified after them ({newest.name}, "
        f"{modified:%Y-%m-%d %H:%M} UTC): {files}. Accepted landing files always win over the source files. If the "
        "new source extract already holds their lines (corrected or cancelled), withdraw them: run this load once "
        "with config withdraw_accepted_landing_files: true on audit/purchases"
    ]


def land_delta(
    conn: duckdb.DuckDBPyConnection,
    landing_dir: Path | None,
    names: Sequence[str],
    contract_columns: list[str],
    run_id: str,
    contract_types: Mapping[str, str] | None = None,
    required_columns: Sequence[str] = (),
) -> LandingReport:
    """Land only the named new files into ``audit.purchases``: the load of an incremental run,
    which the publish step upserts into the published purchases by purchase_id instead of
    replacing them. Its cost follows the new lines, not the history. Records the files as
    ``landed``; once accepted they are part of every later full refresh, so a full recompute
    reads exactly the same lines."""
    new = resolve_pending(landing_dir, names)
    if not new:
        raise LandingFileError("an incremental (delta) landing needs at least one file from the landing folder")
    report = land(conn, "purchases", new, contract_columns, contract_types=contract_types)
    if len(new) == 1:
        _require_columns(new[0], report.columns, required_columns)
    elif report.missing_columns:  # which file lacks them: each read alone (landing files are small)
        for path in new:
            one = land(conn, "_landing_one", [path], contract_columns, contract_types=contract_types)
            conn.execute(f"drop table {AUDIT_SCHEMA}._landing_one; drop table {AUDIT_SCHEMA}._landing_one_rejects")
            _require_columns(path, one.columns, required_columns)
    published = conn.execute(
        "select count(*) from information_schema.tables where table_schema = 'main' and table_name = 'purchases'"
    ).fetchall()[0][0]
    replacing = (
        f"count(*) filter (where {KEY_COLUMN} in (select {KEY_COLUMN} from main.purchases))" if published else "0"
    )
    read = {
        file: (int(rows), int(replaces))
        for file, rows, replaces in conn.execute(
            f"select _source_file, count(*), {replacing} from {AUDIT_SCHEMA}.purchases group by 1"
        ).fetchall()
    }
    ensure_log(conn)
    for path, at in zip(new, _in_order(len(new))):
        rows, replaces = read.get(str(path), (0, 0))
        _record(conn, path.name, file_sha256(path), rows, LANDED, run_id, path,
                f"{rows} rows read, {replaces} of them replace published lines with the same purchase_id "
                "(incremental upsert)", at)
    return report


@dataclass(frozen=True)
class Settled:
    """Where one landing file went."""

    file: str
    status: str
    path: Path


def _archive_name(status: str, name: str, sha256: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}__{sha256[:12]}__{name}" if status == ACCEPTED else f"{stamp}__{name}"


def _move(
    conn: duckdb.DuckDBPyConnection, source: Path, landing_dir: Path, status: str, file: str, sha: str,
    rows: int | None, run_id: str, detail: str,
) -> Settled:
    """Move one landing file to ``processed/`` (accepted) or ``rejected/`` and record it, together."""
    folder = landing_dir / (PROCESSED if status == ACCEPTED else REJECTED)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / _archive_name(status, file, sha)
    with transaction(conn):
        _record(conn, file, sha, rows, status, run_id, target, detail)
        os.replace(source, target)
    return Settled(file, status, target)


def reject(
    conn: duckdb.DuckDBPyConnection, landing_dir: Path, names: Sequence[str], run_id: str, detail: str = ""
) -> list[Settled]:
    """Move the named files still waiting in the landing folder to ``rejected/``, and record it.
    Idempotent: a file that already left the folder is skipped. A file whose lines were published
    (perhaps by another run) is never rejected: :func:`archive_published` archives it.

    A file whose bytes changed since this run landed it is left waiting (it is a new version, and
    the sensor will request a run for it).
    """
    ensure_log(conn)
    landed = {
        file: (sha, rows)
        for file, sha, rows in conn.execute(
            f"select file, sha256, rows from {AUDIT_SCHEMA}.{LOG_TABLE} where run_id = ? and status = ?",
            [run_id, LANDED],
        ).fetchall()
    }
    published = {(file, sha) for file, sha, _, latest, _ in _latest(conn) if latest in (PUBLISHED, ACCEPTED)}
    settled = []
    for name in names:
        source = landing_dir / name
        if Path(name).name != name or not source.is_file():
            continue
        sha = file_sha256(source)
        landed_sha, rows = landed.get(name, (None, None))
        if (landed_sha is not None and landed_sha != sha) or (name, sha) in published:
            continue
        settled.append(_move(conn, source, landing_dir, REJECTED_STATUS, name, sha, rows, run_id, detail))
    return settled


def mark_published(conn: duckdb.DuckDBPyConnection, landing_run_id: str | None, run_id: str, publish_id: str) -> int:
    """In the publishing transaction: record as ``published`` the files the run that landed the
    published purchase load recorded as ``landed``, whichever run publishes, in the order they
    were landed (the order in which they win a purchase_id, which every later full load keeps).
    Returns how many."""
    if landing_run_id is None:
        return 0
    ensure_log(conn)
    return int(conn.execute(
        f"""insert into {AUDIT_SCHEMA}.{LOG_TABLE}
            select file, sha256, rows, ?, ?, ? + (recorded_at - min(recorded_at) over ()), path, ?
            from {AUDIT_SCHEMA}.{LOG_TABLE} where run_id = ? and status = ?""",
        [PUBLISHED, run_id, _now(), f"lines published (publish {publish_id}); archiving pending", landing_run_id, LANDED],
    ).fetchall()[0][0])


def _latest(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int | None, str, str | None]]:
    """(file, sha256, rows, latest status, latest path) of every file version in the log."""
    return conn.execute(_LATEST_SQL).fetchall()


def archive_published(conn: duckdb.DuckDBPyConnection, landing_dir: Path | None, run_id: str) -> list[Settled]:
    """Move every file whose lines were published but which is not archived yet to
    ``processed/`` and record it ``accepted``: from the landing folder, or from ``rejected/`` when
    the failure sensor rejected it before a retried run published it. Idempotent."""
    if landing_dir is None:
        return []
    ensure_log(conn)
    published = [(file, sha, rows) for file, sha, rows, status, _ in _latest(conn) if status == PUBLISHED]
    rejected_paths = {
        (file, sha): Path(path) for file, sha, path in conn.execute(
            f"select file, sha256, path from {AUDIT_SCHEMA}.{LOG_TABLE} where status = ? and path is not null",
            [REJECTED_STATUS],
        ).fetchall()
    }
    settled = []
    for file, sha, rows in published:
        candidates = [landing_dir / file]
        if (file, sha) in rejected_paths:
            candidates.append(landing_dir / REJECTED / rejected_paths[(file, sha)].name)
        source = next((c for c in candidates if c.is_file() and file_sha256(c) == sha), None)
        if source is None:
            continue  # removed by hand: the next full load fails, naming it (see accepted_files)
        settled.append(_move(conn, source, landing_dir, ACCEPTED, file, sha, rows, run_id, "lines published; archived"))
    return settled


# --- the sensor's bookkeeping: plain functions, wired in cross_sell.automation ----------------


@dataclass(frozen=True)
class LandingTick:
    """What the landing sensor should do on one tick."""

    new: list[PendingFile]
    cursor: str


def _cursor_state(cursor: str | None) -> dict:
    return json.loads(cursor) if cursor else {"seq": 0, "requested": []}


def requested_waiting(landing_dir: Path, cursor: str | None) -> list[PendingFile]:
    """Files the sensor already requested a run for that still wait in the landing folder: their
    run is queued or in progress, or it stopped without settling them (cancelled)."""
    requested = set(_cursor_state(cursor)["requested"])
    return [f for f in pending_files(landing_dir) if f.fingerprint in requested]


def next_tick(
    landing_dir: Path, cursor: str | None, min_age_seconds: float = MIN_AGE_SECONDS, again: frozenset[str] = frozenset()
) -> LandingTick:
    """New files since the cursor, and the next cursor.

    The cursor holds the fingerprints of files already requested that still wait in the folder
    (so it stays small: a file leaves it once its run settled it) and a sequence number that makes
    every run key unique, even for a file moved back into the folder unchanged. Fingerprints in
    ``again`` (requested files whose run was cancelled before settling them) are requested anew.
    """
    state = _cursor_state(cursor)
    requested = set(state["requested"]) - again
    waiting = pending_files(landing_dir, min_age_seconds=0.0)
    present = {f.fingerprint for f in waiting}
    ready = {f.fingerprint for f in pending_files(landing_dir, min_age_seconds=min_age_seconds)}
    new = [f for f in waiting if f.fingerprint not in requested and f.fingerprint in ready]
    seq = int(state["seq"]) + len(new)
    kept = sorted((requested & present) | {f.fingerprint for f in new})
    return LandingTick(new=new, cursor=json.dumps({"seq": seq, "requested": kept}))


def run_key(cursor_before: str | None, index: int, file: PendingFile) -> str:
    seq = _cursor_state(cursor_before)["seq"]
    return f"landing:{seq + index + 1}:{file.fingerprint}"


# --- the asset that archives what a run published ----------------------------------------------


@dg.asset(
    key=[AUDIT_SCHEMA, LOG_TABLE],
    deps=["purchases"],
    group_name="ingest",
    owners=["team:data-platform"],
    kinds={"duckdb"},
    pool="duckdb",
    tags={"layer": "audit"},
    metadata={"dagster/column_schema": column_schema(LOG_COLUMNS)},
)
def landing_files_log(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, input_files: InputFiles
) -> dg.MaterializeResult:
    """The record of every purchase file dropped in the landing folder: its checksum, rows and
    fate (landed, published, accepted into the product, or rejected by a gate). This step runs right
    after purchases are published and archives any published file the publish step could not
    move, so every later refresh keeps their rows. Operations read it to answer "did my file make it, and if not, why?"."""
    landing_dir = input_files.landing_path()
    with connect(duckdb) as conn:
        ensure_log(conn)
        settled = archive_published(conn, landing_dir, context.run.run_id)
        totals = status_counts(conn)
        recent = conn.execute(
            f"select recorded_at, file, status, rows, detail from {AUDIT_SCHEMA}.{LOG_TABLE} order by recorded_at desc limit 10"
        ).df()
    for item in settled:
        context.log.info(f"Landing file {item.file} accepted, archived as {item.path}")
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": uri(duckdb, LOG_TABLE, AUDIT_SCHEMA),
            "accepted_in_this_run": [s.file for s in settled],
            "files_accepted": int(totals.get(ACCEPTED, 0)),
            "files_rejected": int(totals.get(REJECTED_STATUS, 0)),
            "files_waiting": len(pending_files(landing_dir)) if landing_dir else 0,
            "landing_folder": str(landing_dir) if landing_dir else "",
            "recent_events": dg.MetadataValue.md(markdown(recent)),
        }
    )
