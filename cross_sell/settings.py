"""Where the product reads its inputs and keeps its warehouse.

Everything is resolved when called (never at import time), from environment variables with
defaults relative to the project root, so the same code runs from the shell, the UI and tests.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "CROSS_SELL_DATA_DIR"
DUCKDB_PATH_ENV = "CROSS_SELL_DUCKDB_PATH"
INPUT_FORMAT_ENV = "CROSS_SELL_INPUT_FORMAT"
LANDING_DIR_ENV = "CROSS_SELL_LANDING_DIR"
PRODUCT_LEVEL_ENV = "CROSS_SELL_PRODUCT_LEVEL"
LOCK_WAIT_ENV = "CROSS_SELL_LOCK_WAIT_SECONDS"
DEFAULT_LOCK_WAIT_SECONDS = 120.0
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

DEFAULT_DATA_DIR = Path("data") / "sample"
DEFAULT_DUCKDB_PATH = Path("data") / "warehouse" / "cross_sell.duckdb"
DEFAULT_LANDING_DIR = Path("data") / "landing"


def project_root() -> Path:
    """The checkout root when the package lives in one (editable install), else the working dir."""
    package_parent = Path(__file__).resolve().parent.parent
    if (package_parent / "pyproject.toml").is_file():
        return package_parent
    return Path.cwd()


def _resolve(value: str | os.PathLike[str]) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_root() / path


def data_dir() -> Path:
    """Folder (or single file) the inputs are read from: ``$CROSS_SELL_DATA_DIR`` or data/sample."""
    return _resolve(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def duckdb_path() -> Path:
    """The warehouse file: ``$CROSS_SELL_DUCKDB_PATH`` or data/warehouse/cross_sell.duckdb."""
    return _resolve(os.environ.get(DUCKDB_PATH_ENV) or DEFAULT_DUCKDB_PATH)


def input_format() -> str:
    """Layout of the inputs: ``$CROSS_SELL_INPUT_FORMAT`` or ``canonical``."""
    return os.environ.get(INPUT_FORMAT_ENV) or "canonical"


def landing_dir() -> Path:
    """Folder watched for new purchase files: ``$CROSS_SELL_LANDING_DIR`` or data/landing."""
    return _resolve(os.environ.get(LANDING_DIR_ENV) or DEFAULT_LANDING_DIR)


def product_level() -> bool | None:
    """Whether every run computes product-level affinity rules unless its config says otherwise:
    ``$CROSS_SELL_PRODUCT_LEVEL`` (true/false, 1/0, yes/no, on/off), ``None`` when unset. A
    deployment setting, so the schedule, the sensors and automation keep it, not only one run."""
    value = os.environ.get(PRODUCT_LEVEL_ENV, "").strip().lower()
    if not value:
        return None
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"${PRODUCT_LEVEL_ENV} is {value!r}: use true or false")


def lock_wait_seconds() -> float:
    """How long a step waits for another process to let go of the warehouse file before it fails:
    ``$CROSS_SELL_LOCK_WAIT_SECONDS`` or 120 s (long enough for another run's step to finish)."""
    value = os.environ.get(LOCK_WAIT_ENV, "").strip()
    if not value:
        return DEFAULT_LOCK_WAIT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"${LOCK_WAIT_ENV} is {value!r}: use a number of seconds, 0 or more")
    return seconds
