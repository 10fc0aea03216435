"""Resources the assets share: the warehouse (DuckDB) and the input files."""

from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from cross_sell import settings
from cross_sell.ingest.formats import InputFormat, get_format
from cross_sell.ingest.source import AdapterOptions


class InputFiles(dg.ConfigurableResource):
    """Where the product reads its customer, product and purchase inputs, and in which layout."""

    location: str
    """Folder of the inputs; for an adapter format also a single file (see :mod:`cross_sell.ingest.formats`)."""
    input_format: str = "canonical"
    """Layout of the inputs: ``canonical``, ``spend_summary`` or ``basket_log``."""
    landing_location: str | None = None
    """Folder where new purchase files are dropped between full refreshes (None: no landing folder)."""
    date_format: str = "%d-%m-%Y"
    """strptime format of the dates in an adapter format's source (canonical inputs are ISO 8601)."""
    as_of_date: str | None = None
    """spend_summary: the date the summary was taken (default: the newest signup date in it)."""
    allow_dropped_categories: bool = False
    """spend_summary: accept a file that lacks a spend column the published catalogue has (a
    category retired on purpose). Off, such a file fails its landing: a renamed or dropped column
    would otherwise drop the category and its spend without a word."""

    def path(self) -> Path:
        return Path(self.location)

    def landing_path(self) -> Path | None:
        return Path(self.landing_location) if self.landing_location else None

    def checked_format(self) -> InputFormat:
        """The configured input format; raises ValueError naming the supported ones."""
        return get_format(self.input_format)

    def adapter_options(self) -> AdapterOptions:
        return AdapterOptions(
            date_format=self.date_format, as_of_date=self.as_of_date, allow_dropped_categories=self.allow_dropped_categories
        )



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
