"""Serving: how consumers reach the data product.

* :mod:`~cross_sell.serving.semantic`: the semantic model, one spec of the consumer-facing views
  (dimensions, measures, relationships, descriptions), the DuckDB views built from it and the
  reference page rendered from it;
* :mod:`~cross_sell.serving.roles`: the two roles (``analyst`` sees everything, ``marketing`` sees
  personal data masked) and the separate, masked marketing database;
* :mod:`~cross_sell.serving.exports`: Parquet files of the consumer outputs, replaced atomically
  and listed in an index with row counts and checksums;
* :mod:`~cross_sell.serving.manifest`: the data product manifest (who, what, where, SLOs, quality);
* :mod:`~cross_sell.serving.api`: the semantic views as read-only JSON over HTTP, one role per
  process (``python -m cross_sell.serving.api``);
* :mod:`~cross_sell.serving.assets`: the thin Dagster wiring (group ``serving``).
"""
