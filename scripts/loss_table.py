"""The final-loss table of docs/results.md, from the loss logs shipped beside the checkpoints.

    python scripts/loss_table.py starry_night wave

For each style: the mean of each loss over the last 10 % of steps, per norm, and the paired
difference to BN over the same steps (every norm saw the same batches) +- one standard error.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from styletransfer.models import SHIPPED_MODELS
from styletransfer.norms import NORMS
from styletransfer.runs import LOSS_TERMS, exported_log_path, read_log

DECIMALS = {"content": 3, "style": 4, "tv": 3, "total": 3}


def steps_of(model: Path) -> dict[int, dict]:
    """The rows of the loss log shipped beside ``model``, by step."""
    return {row["step"]: row for row in read_log(exported_log_path(model))}


def mean_and_error(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def table(style: str) -> str:
    logs = {norm: steps_of(SHIPPED_MODELS / style / f"{norm}.safetensors") for norm in NORMS}
    last = min(max(log) for log in logs.values())
    steps = [s for s in range(last - last // 10 + 1, last + 1) if all(s in log for log in logs.values())]
    lines = [
        f"**{style}**, steps {steps[0]}–{steps[-1]}",
        "",
        "| norm | content | style | tv | total | content − BN | style − BN | total − BN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for norm, spec in NORMS.items():
        cells = [f"{mean_and_error([logs[norm][s][t] for s in steps])[0]:.{DECIMALS[t]}f}" for t in LOSS_TERMS]
        for term in ("content", "style", "total"):
            if norm == "bn":
                cells.append("")
                continue
            diff, error = mean_and_error([logs[norm][s][term] - logs["bn"][s][term] for s in steps])
            d = DECIMALS[term]
            cells.append(f"{diff:+.{d}f} ± {error:.{d}f}".replace("-", "−"))
        lines.append(f"| {spec.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(style) for style in sys.argv[1:]))
