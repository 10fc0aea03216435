"""Resources the assets share: the warehouse (DuckDB) and the input files."""

from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from cross_sell import settings

INPUT_FORMATS = ("canonical",)


class InputFiles(dg.ConfigurableResource):
    """Where the product reads its customer, product and purchase inputs, and in which layout."""

    location: str
    input_format: str = "canonical"
    landing_location: str | None = None
    """Folder where new purchase files are dropped between full refreshes (None: no landing folder)."""

    def path(self) -> Path:
        return Path(self.location)

    def landing_path(self) -> Path | None:
        return Path(self.landing_location) if self.landing_location else None

    def checked_format(self) -> str:
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(
                f"input_format {self.input_format!r} is not supported; choose one of {', '.join(INPUT_FORMATS)}"
            )
        return self.input_format


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources bound from the environment (see :mod:`cross_sell.settings`); called at load time."""
    return {
        "duckdb": DuckDBResource(database=str(settings.duckdb_path())),
        "input_files": InputFiles(
            location=str(settings.data_dir()),
            input_format=settings.input_format(),
            landing_location=str(settings.landing_dir()),
        ),
    }
