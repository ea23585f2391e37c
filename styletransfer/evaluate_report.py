"""Reporting an evaluation (see :mod:`styletransfer.evaluate`): a rich table, JSON, CSV and a grid."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from PIL import Image

from .checkpoint import atomic_write
from .compare import comparison_grid, fit_square
from .evaluate import GRID_CELL, METRIC_TITLES, METRICS, Evaluation
from .metrics import CONTENT_DISTANCE_LAYER, STYLE_DISTANCE_LAYERS

__all__ = ["grid_image", "summary_table", "write_csv", "write_json"]


def format_stat(stat: dict[str, float | None], metric: str) -> str:
    mean, se = stat["mean"], stat["stderr"]
    if mean is None:
        return "-"
    if metric == "seconds_per_image":
        text = f"{mean:.3f}"
        return text if se is None else f"{text} ± {se:.3f}"
    if metric == "blotch_area":  # a fraction, shown as a percentage (CSV and JSON keep the fraction)
        text = f"{100 * mean:.2f}"
        return text if se is None else f"{text} ± {100 * se:.2f}"
    return f"{mean:.4g}" if se is None else f"{mean:.4g} ± {se:.2g}"


def summary_table(ev: Evaluation):
    """A rich table: one row per model or folder, mean ± standard error over photos per metric."""
    from rich.table import Table

    n = len(ev.photos)
    table = Table(
        title=f"{n} photo(s) at {ev.settings['size']} px long side (at most); mean ± standard error",
        caption=(
            f"content distance: VGG19 {CONTENT_DISTANCE_LAYER}; style distance: Grams at "
            f"{', '.join(STYLE_DISTANCE_LAYERS)}, style image at {ev.settings['style_size']} px; "
            f"VGG weights: {ev.settings['vgg_weights']}. Loss terms: each model's training settings "
            "(a folder: those the checkpoints share)."
        ),
    )
    table.add_column("model")
    table.add_column("style")
    for m in METRICS:
        table.add_column(METRIC_TITLES[m], justify="right")
    for s in ev.summary():
        table.add_row(s["model"], Path(s["style"]).stem, *(format_stat(s["metrics"][m], m) for m in METRICS))
    return table


def json_value(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def per_photo_rows(ev: Evaluation) -> list[dict]:
    """One dict per (row, photo), photos in path order."""
    out = []
    for row in ev.rows:
        desc = {"model": row.label, "kind": row.kind, "source": str(row.source), "style": str(row.style)}
        for p in sorted(ev.photos, key=lambda p: p.key):
            out.append({**desc, "photo": p.key, **{m: json_value(ev.scores[(row.label, p.key)][m]) for m in METRICS}})
    return out


def write_json(ev: Evaluation, path: Path) -> None:
    """``{"settings": {...}, "summary": [per row: n, loss settings, metrics: {mean, stderr}], "photos": [...]}``."""
    summary = [{**s, "metrics": {m: {k: json_value(v) for k, v in st.items()} for m, st in s["metrics"].items()}}
               for s in ev.summary()]  # fmt: skip
    doc = {"settings": ev.settings, "summary": summary, "photos": per_photo_rows(ev)}
    atomic_write(Path(path), (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())


def write_csv(ev: Evaluation, path: Path) -> None:
    """Per-photo rows (``stat`` = value), then per model a ``mean`` and a ``stderr`` row (photo empty)."""
    columns = ["model", "kind", "source", "style", "photo", "stat", "n", *METRICS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for r in per_photo_rows(ev):
        writer.writerow({**r, "stat": "value", "n": 1})
    for s in ev.summary():
        base = {k: s[k] for k in ("model", "kind", "source", "style")} | {"photo": "", "n": s["n"]}
        for stat in ("mean", "stderr"):
            writer.writerow({**base, "stat": stat, **{m: s["metrics"][m][stat] for m in METRICS}})
    atomic_write(Path(path), buf.getvalue().encode())


def grid_image(ev: Evaluation, cell: int = GRID_CELL) -> Image.Image:
    """The kept photos, one per grid row: the photo, then each row's stylisation (square cells)."""
    rows = [[fit_square(img, cell) for img in cells] for cells in ev.grid]
    return comparison_grid(rows, ["photo"] + [r.label for r in ev.rows])
