"""cross_sell: product affinity and cross-sell opportunity scores as a Dagster data product."""

__version__ = "0.1.0"
