"""Where the served outputs live: next to the warehouse unless configured otherwise.

Resolved when called, never at import time. Everything the product serves sits beside the
warehouse file by default (``data/warehouse/`` for the default warehouse):

* ``cross_sell_marketing.duckdb``: the masked database of the marketing role;
* ``exports/``: Parquet files, their index, the manifest (``data_product.yaml``) and the semantic
  model reference page.

``$CROSS_SELL_EXPORT_DIR`` and ``$CROSS_SELL_MARKETING_DUCKDB_PATH`` move these for the configured
warehouse (``$CROSS_SELL_DUCKDB_PATH``) only. Any other warehouse (the API's ``--warehouse``, a
benchmark's or a test's) serves from beside its own file, so one process never pairs one data
product's tables with another's marketing database or manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

from cross_sell import settings

EXPORT_DIR_ENV = "CROSS_SELL_EXPORT_DIR"
MARKETING_DB_ENV = "CROSS_SELL_MARKETING_DUCKDB_PATH"
MARKETING_DB_NAME = "cross_sell_marketing.duckdb"
EXPORT_DIR_NAME = "exports"
MANIFEST_NAME = "data_product.yaml"  # in the export folder


def _warehouse_file(warehouse: str | os.PathLike[str]) -> Path:
    path = Path(warehouse)
    if str(warehouse) == ":memory:":
        raise ValueError("Serving needs a warehouse file; an in-memory DuckDB database has no place to serve from.")
    return path


def _configured(name: str, warehouse: Path) -> Path | None:
    """The location ``$name`` sets, if set and ``warehouse`` is the configured warehouse."""
    value = os.environ.get(name)
    if not value or warehouse.resolve() != settings.duckdb_path().resolve():
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else settings.project_root() / path


def export_dir(warehouse: str | os.PathLike[str]) -> Path:
    """``$CROSS_SELL_EXPORT_DIR`` for the configured warehouse, else an ``exports`` folder beside
    the warehouse file."""
    path = _warehouse_file(warehouse)
    return _configured(EXPORT_DIR_ENV, path) or path.parent / EXPORT_DIR_NAME


def marketing_database(warehouse: str | os.PathLike[str]) -> Path:
    """``$CROSS_SELL_MARKETING_DUCKDB_PATH`` for the configured warehouse, else
    ``cross_sell_marketing.duckdb`` beside the warehouse file."""
    path = _warehouse_file(warehouse)
    return _configured(MARKETING_DB_ENV, path) or path.parent / MARKETING_DB_NAME
