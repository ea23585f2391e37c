"""Markdown tables of `styletransfer evaluate --json` results: each row's means, and paired
differences to BN and to IN over the same photos (mean ± standard error of the differences).

    python scripts/heldout_table.py eval/wave.json eval/starry_night.json

A row whose label is not one of the norms (another tool's folder) gets its means only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from styletransfer.metrics import mean_and_stderr
from styletransfer.norms import NORMS

METRICS = ("content_distance", "style_distance", "blotch_area", "total_loss")
TITLES = {"content_distance": "content dist.", "style_distance": "style dist.", "blotch_area": "blotch %",
          "total_loss": "total loss"}  # fmt: skip
NORM_ORDER = tuple(norm.label for norm in NORMS.values())
# Paired differences shown: to BN (the paper's baseline) and to IN (its best).
DIFFERENCES = {"BN": ("content_distance", "style_distance", "total_loss"), "IN": ("style_distance", "total_loss")}


def mean_se(values: list[float]) -> tuple[float, float]:
    stat = mean_and_stderr(values)
    return stat["mean"], stat["stderr"]


def scaled(metric: str, value: float) -> float:
    return 100 * value if metric == "blotch_area" else value


def norm_of(label: str) -> str | None:
    head = label.split(" · ")[0]
    return head if head in NORM_ORDER else None


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    per_photo: dict[str, dict[str, dict]] = {}
    for rec in data["photos"]:
        per_photo.setdefault(rec["model"], {})[rec["photo"]] = rec
    rows = sorted(per_photo, key=lambda m: NORM_ORDER.index(norm_of(m)) if norm_of(m) else len(NORM_ORDER))
    by_norm = {norm_of(m): m for m in rows if norm_of(m)}
    diffs = [(ref, m) for ref, ms in DIFFERENCES.items() for m in ms]
    head = ["model"] + [TITLES[m] for m in METRICS] + [f"{TITLES[m]} − {ref}" for ref, m in diffs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in rows:
        photos = per_photo[model]
        cells = [model]
        for m in METRICS:
            mean, se = mean_se([scaled(m, photos[p][m]) for p in photos])
            cells.append(f"{mean:.3f} ± {se:.3f}")
        for ref, m in diffs:
            other = per_photo.get(by_norm.get(ref, ""), {})
            if not norm_of(model) or norm_of(model) == ref or not other:
                cells.append("")
                continue
            mean, se = mean_se([photos[p][m] - other[p][m] for p in photos if p in other])
            cells.append(f"{mean:+.3f} ± {se:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    n = len(next(iter(per_photo.values())))
    return f"{n} photos at {data['settings']['size']} px ({data['settings']['photos']})\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="JSON files written by styletransfer evaluate --json")
    for path in parser.parse_args().results:
        print(f"**{path.stem}**: {table(path)}\n")


if __name__ == "__main__":
    main()
