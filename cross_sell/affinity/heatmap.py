"""The affinity heatmap: category-to-category lift as a picture people can read at a glance.

Rows are what a customer already has (A), columns what the rule suggests (B), and each cell is
the lift of A -> B: red above 1 (A raises the odds of B), blue below 1, blank where the pair is
under the support floor. The picture is attached to the ``product_affinity`` materialization in
two forms: an inline PNG inside a markdown metadata value (open-source Dagster has no image
metadata type, and its markdown renderer shows ``data:image/png`` images), and a PNG file beside
the warehouse linked as a path.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

FIGURES_DIR = "figures"
HEATMAP_FILE = "product_affinity_heatmap.png"
MAX_CATEGORIES = 25
"""More categories than this would be unreadable: the heatmap keeps the most common ones."""
ANNOTATE_UP_TO = 14
"""Cells carry their lift value as text up to this many categories."""


def lift_matrix(rules: pd.DataFrame, max_categories: int = MAX_CATEGORIES) -> pd.DataFrame:
    """Square antecedent x consequent lift matrix of category rules (NaN: no rule for the pair).

    ``rules`` has the ``product_affinity`` columns. Categories are ordered by how many
    transactions hold them, most common first, and cut to ``max_categories``.
    """
    if rules.empty:
        return pd.DataFrame(dtype=float)
    counts = pd.concat(
        [
            rules[["antecedent", "antecedent_count"]].set_axis(["category", "count"], axis=1),
            rules[["consequent", "consequent_count"]].set_axis(["category", "count"], axis=1),
        ]
    ).drop_duplicates("category")
    order = counts.sort_values(["count", "category"], ascending=[False, True])["category"].head(max_categories).tolist()
    matrix = rules.pivot_table(index="antecedent", columns="consequent", values="lift", aggfunc="first")
    return matrix.reindex(index=order, columns=order).astype(float)


def render_lift_heatmap(rules: pd.DataFrame, title: str = "Category affinity (lift of A \u2192 B)") -> bytes:
    """The heatmap of :func:`lift_matrix` as PNG bytes (a few tens of KB)."""
    # matplotlib is imported here, not at module level, so loading the code location stays fast.
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    matrix = lift_matrix(rules)
    n = len(matrix)
    side = min(3.2 + 0.38 * n, 11.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    if n == 0:
        ax.text(0.5, 0.5, "No category pair reaches the support floor", ha="center", va="center")
        ax.set_axis_off()
    else:
        values = matrix.to_numpy()
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(top, 1.0 + 1e-6))
        image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", norm=norm)
        ax.set_xticks(range(n), matrix.columns, rotation=45, ha="right")
        ax.set_yticks(range(n), matrix.index)
        ax.set_xlabel("B: category suggested")
        ax.set_ylabel("A: category already bought")
        ax.set_facecolor("#eeeeee")
        fig.colorbar(image, ax=ax, shrink=0.8, label="lift (1 = chance)")
        if n <= ANNOTATE_UP_TO:
            rows, cols = np.nonzero(np.isfinite(values))
            dark = np.abs(norm(values[rows, cols]) - 0.5) > 0.3
            for r, c, on_dark in zip(rows, cols, dark):  # at most ANNOTATE_UP_TO² cell labels, not data rows
                colour = "white" if on_dark else "black"
                ax.text(c, r, f"{values[r, c]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(title)
    return _small_png(fig)


def _small_png(fig) -> bytes:
    """The figure as a palette PNG: a few tens of KB instead of a few hundred, same look."""
    from PIL import Image  # Pillow comes with matplotlib

    rendered = io.BytesIO()
    fig.savefig(rendered, format="png")
    rendered.seek(0)
    with Image.open(rendered) as image:
        palette = image.convert("RGB").quantize(colors=224, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


def figure_path(database: str) -> Path | None:
    """Where the heatmap file lives: ``figures/`` beside the warehouse file (None for in-memory)."""
    if database == ":memory:":
        return None
    return Path(database).resolve().parent / FIGURES_DIR / HEATMAP_FILE


def metadata(png: bytes, path: Path | None) -> dict[str, dg.MetadataValue]:
    """Materialization metadata showing the picture inline, and linking the file when there is one."""
    inline = base64.b64encode(png).decode("ascii")
    entries: dict[str, dg.MetadataValue] = {
        "affinity_heatmap": dg.MetadataValue.md(f"![affinity heatmap](data:image/png;base64,{inline})"),
    }
    if path is not None:
        entries["affinity_heatmap_file"] = dg.MetadataValue.path(str(path))
    return entries


@contextmanager
def staged_file(content: bytes, path: Path | None) -> Iterator[None]:
    """Write ``content`` to a temporary file next to ``path`` and move it into place only if the
    body succeeds, so a failed gate leaves the previous picture, matching the previous table."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_bytes(content)
    try:
        yield
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
