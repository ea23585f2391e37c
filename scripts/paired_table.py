"""A Markdown table comparing the same norms in two `styletransfer evaluate --json` results (e.g.
models trained without and with grain), paired over the photos both scored: each norm's mean
before and after, and the mean ± standard error of the per-photo differences (after - before).

    python scripts/paired_table.py before.json after.json
    python scripts/paired_table.py before.json after.json --before-row "(steps/2000" --after-row "(grain/2000"

Rows are matched by their norm (the label's first part, e.g. "BN"). When a file has several rows
of one norm, ``--before-row`` / ``--after-row`` pick those whose label contains the given text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from styletransfer.metrics import mean_and_stderr
from styletransfer.norms import NORMS

METRICS = {"blotch_area": "blotch %", "style_distance": "style dist.", "content_distance": "content dist.",
           "total_loss": "total loss"}  # fmt: skip
NORM_ORDER = tuple(norm.label for norm in NORMS.values())


def scores_by_norm(path: Path, must_contain: str | None) -> dict[str, dict[str, dict]]:
    """norm label -> photo -> that photo's scores, for the rows whose label contains ``must_contain``."""
    try:
        records = json.loads(path.read_text())["photos"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {path}: not an evaluate --json result ({e})")
    found: dict[str, dict[str, dict]] = {}
    models: dict[str, str] = {}
    for r in records:
        norm = r["model"].split(" · ")[0]
        if norm not in NORM_ORDER or (must_contain and must_contain not in r["model"]):
            continue
        if models.setdefault(norm, r["model"]) != r["model"]:
            sys.exit(f"error: {path}: several {norm} rows ({models[norm]}, {r['model']}); pick one with --before-row/--after-row")
        found.setdefault(norm, {})[r["photo"]] = r
    return found


def cell(values: list[float], scale: float) -> str:
    stat = mean_and_stderr([scale * v for v in values])
    return f"{stat['mean']:.3g}" if stat["stderr"] is None else f"{stat['mean']:.3g} ± {stat['stderr']:.2g}"


def table(before: dict, after: dict) -> str:
    lines = ["| norm | metric | before | after | after - before | photos |", "|---|---|---|---|---|---|"]
    for norm in (n for n in NORM_ORDER if n in before and n in after):
        photos = sorted(set(before[norm]) & set(after[norm]))
        for metric, title in METRICS.items():
            scale = 100 if metric == "blotch_area" else 1
            b = [before[norm][p][metric] for p in photos]
            a = [after[norm][p][metric] for p in photos]
            diff = [y - x for x, y in zip(b, a)]
            lines.append(f"| {norm} | {title} | {cell(b, scale)} | {cell(a, scale)} | {cell(diff, scale)} | {len(photos)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--before-row", help="Only rows of BEFORE whose label contains this text.")
    parser.add_argument("--after-row", help="Only rows of AFTER whose label contains this text.")
    args = parser.parse_args()
    before, after = scores_by_norm(args.before, args.before_row), scores_by_norm(args.after, args.after_row)
    if not set(before) & set(after):
        sys.exit("error: the two files share no norm")
    print(table(before, after))


if __name__ == "__main__":
    main()
