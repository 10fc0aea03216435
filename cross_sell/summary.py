"""Print where the results are and what they hold: ``python -m cross_sell.summary``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

from cross_sell import settings

TABLES = (
    "customers", "products", "purchases", "customer_metrics", "customer_category_matrix",
    "product_affinity", "cross_sell_scores", "cross_sell_recommendations",
)


def summarize(database: Path) -> str:
    """A short human-readable report of the warehouse's published tables."""
    if not database.exists():
        return f"No warehouse at {database} yet: materialize the assets first (see README)."
    lines = [f"Warehouse: {database}", "Tables (schema main):"]
    with duckdb.connect(str(database), read_only=True) as conn:
        present = {r[0] for r in conn.execute("select table_name from information_schema.tables where table_schema = 'main'").fetchall()}
        for table in TABLES:
            count = conn.execute(f"select count(*) from {table}").fetchone()[0] if table in present else "not built"
            lines.append(f"  {table:<28} {count}")
        if "product_affinity" in present:
            top = conn.execute(
                "select antecedent || ' -> ' || consequent, round(lift, 2), round(confidence, 2) from product_affinity "
                "where level = 'category' order by lift desc, antecedent, consequent limit 5"
            ).fetchall()
            lines.append("Top category pairs (lift, confidence):")
            lines += [f"  {pair}  lift {lift}  confidence {conf}" for pair, lift, conf in top]
        if "cross_sell_recommendations" in present:
            recs = conn.execute(
                "select customer_id, product_category, round(score, 3), reason from cross_sell_recommendations "
                "where rank = 1 order by score desc, customer_id limit 5"
            ).fetchall()
            lines.append("Strongest next offers:")
            lines += [f"  {c}: {cat} (score {s}) because {reason}" for c, cat, s, reason in recs]
    lines.append(
        "Query it: python -c \"import duckdb; print(duckdb.connect('"
        + str(database)
        + "', read_only=True).sql('select * from cross_sell_recommendations limit 10'))\""
    )
    lines.append("Serve it over HTTP (masked, for the marketing role): python -m cross_sell.serving.api")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", type=Path, default=None, help="warehouse file (default: $CROSS_SELL_DUCKDB_PATH)")
    args = parser.parse_args(argv)
    database = args.database or settings.duckdb_path()
    print(summarize(database))
    return 0 if database.exists() else 1  # scripts can tell "nothing built yet" apart


if __name__ == "__main__":
    sys.exit(main())
