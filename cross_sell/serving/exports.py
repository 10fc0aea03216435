"""Parquet exports of the consumer outputs, replaced atomically and listed in an index.

Each export is one published table written by DuckDB (``COPY ... TO`` Parquet, zstd, rows in key
order so unchanged data gives byte-identical files). A table whose rows are already stored in key
order (checked row against next row: :func:`cross_sell.serving.row_order.in_key_order`) is written
as stored, which gives the same file without sorting it again. All files are first written under temporary
names in the export folder; only when every one of them is complete are they renamed over the
published names (``os.replace``, atomic on one file system), and then the index is replaced the
same way. A reader therefore sees the previous file or the new one, never a partial file, and a
failed export leaves every published file as it was.

``index.json`` lists every file with its table, row count, size, columns and SHA-256 checksum, so a
consumer can check what they downloaded: ``sha256sum -c`` style, or :func:`verify_exports`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from cross_sell.serving.row_order import in_key_order

INDEX_NAME = "index.json"
PUBLISHED_SCHEMA = "main"


@dataclass(frozen=True)
class Export:
    """One published table exported as one Parquet file."""

    table: str
    order_by: str
    description: str

    @property
    def file(self) -> str:
        return f"{self.table}.parquet"

    @property
    def keys(self) -> list[str]:
        return [k.strip() for k in self.order_by.split(",")]


EXPORTS: tuple[Export, ...] = (
    Export(
        "cross_sell_recommendations",
        "customer_id, rank",
        "The top-N categories to offer each customer, best first, with the reason.",
    ),
    Export(
        "cross_sell_scores",
        "customer_id, product_category",
        "Cross-sell opportunity score (0..1) per customer and category not bought yet.",
    ),
    Export(
        "product_affinity",
        "level, antecedent, consequent",
        "Affinity rules A -> B with pair count, support, confidence and lift.",
    ),
    Export(
        "customer_metrics",
        "customer_id",
        "Orders, purchase frequency, total spend, average order value, recency, tenure and CLV per customer.",
    ),
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> list[dict[str, str]]:
    rows = conn.execute(
        "select column_name, data_type from information_schema.columns where table_schema = ? and table_name = ? "
        "order by ordinal_position",
        [PUBLISHED_SCHEMA, table],
    ).fetchall()
    if not rows:
        raise ValueError(f"cannot export {table}: table {PUBLISHED_SCHEMA}.{table} does not exist; materialize it first")
    return [{"name": name, "type": dtype} for name, dtype in rows]


def write_text_atomically(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename it over ``path`` (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def export_tables(
    conn: duckdb.DuckDBPyConnection,
    out_dir: Path,
    exports: tuple[Export, ...] = EXPORTS,
    run_id: str | None = None,
) -> dict:
    """Write every export and the index, atomically per file; return the index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Export, Path, int, list[dict[str, str]]]] = []
    try:
        for export in exports:
            columns = _columns(conn, export.table)
            staging = out_dir / f".{export.file}.{uuid.uuid4().hex}.tmp"
            order = "" if in_key_order(conn, export.table, export.keys, schema=PUBLISHED_SCHEMA) else f" order by {export.order_by}"
            written = conn.execute(
                f"copy (select * from {PUBLISHED_SCHEMA}.{export.table}{order}) "
                f"to {_literal(str(staging))} (format parquet, compression zstd)"
            ).fetchone()
            staged.append((export, staging, int(written[0]), columns))
        files = []
        for export, staging, rows, columns in staged:
            files.append(
                {
                    "file": export.file,
                    "table": export.table,
                    "description": export.description,
                    "rows": rows,
                    "bytes": staging.stat().st_size,
                    "sha256": sha256_file(staging),
                    "columns": columns,
                }
            )
        for export, staging, _, _ in staged:
            os.replace(staging, out_dir / export.file)
    finally:
        for _, staging, _, _ in staged:
            staging.unlink(missing_ok=True)
    index = {
        "format": "parquet",
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_id": run_id,
        "files": files,
    }
    write_text_atomically(out_dir / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    return index


def read_index(out_dir: Path) -> dict:
    path = out_dir / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no export index at {path}: materialize parquet_exports first")
    return json.loads(path.read_text(encoding="utf-8"))


def verify_exports(out_dir: Path) -> list[str]:
    """Problems with the exported files against their index (empty when every file checks out)."""
    problems: list[str] = []
    index = read_index(out_dir)
    with duckdb.connect() as conn:
        for entry in index["files"]:
            path = out_dir / entry["file"]
            if not path.is_file():
                problems.append(f"{entry['file']}: missing")
                continue
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                problems.append(f"{entry['file']}: sha256 {digest[:12]}… differs from the index {entry['sha256'][:12]}…")
            try:
                rows = conn.execute(f"select count(*) from read_parquet({_literal(str(path))})").fetchone()[0]
            except duckdb.Error as exc:
                problems.append(f"{entry['file']}: not a readable Parquet file ({type(exc).__name__})")
                continue
            if rows != entry["rows"]:
                problems.append(f"{entry['file']}: {rows} rows, the index says {entry['rows']}")
    return problems


def data_fingerprint(index: dict) -> str:
    """One checksum over every exported file: changes exactly when the served data changes."""
    joined = "\n".join(f"{f['file']}:{f['sha256']}" for f in sorted(index["files"], key=lambda f: f["file"]))
    return hashlib.sha256(joined.encode()).hexdigest()
