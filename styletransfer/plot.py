"""Training-curve figures: the loss terms of each run against iteration, one colour per norm.

Figures are drawn on matplotlib ``Figure`` objects, never through pyplot's global state, so
the web demo can draw from several threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import model_label, read_metadata
from .errors import StyleTransferError, cannot_write
from .norms import NORMS
from .runs import LOSS_TERMS, log_curve, read_log, run_files

__all__ = ["Run", "draw_loss_curves", "load_run", "plot_runs", "smooth"]

FIGURE_TYPES = (".png", ".svg", ".pdf")
# Colours for runs of no known norm: matplotlib's default cycle after the norms' own.
OTHER_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class Run:
    """One training run's loss curve (``{"step": [...], "content": [...], ...}``) and its label."""

    label: str
    norm: str | None
    style: str | None
    curve: dict[str, list]


def load_run(path: str | Path) -> Run:
    """A run folder (``losses.jsonl`` + checkpoint), a loss log, or a checkpoint (its stored curve).

    Raises StyleTransferError for anything else, or for a run with no loss values.
    """
    path = Path(path)
    log, checkpoint = run_files(path)
    meta = read_metadata(checkpoint) if checkpoint else {}
    curve = log_curve(read_log(log)) if log else meta.get("history") or {}
    if not curve.get("step"):
        raise StyleTransferError(f"{path}: holds no loss values to plot")
    return Run(model_label(meta) or path.stem, meta.get("norm"), meta.get("style"), curve)


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average (as TensorBoard's smoothing slider), bias-corrected; weight in [0, 1)."""
    out, avg, norm = [], 0.0, 0.0
    for v in values:
        avg = weight * avg + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(avg / norm)
    return out


def draw_loss_curves(axes, runs: list[Run], terms: tuple[str, ...], smoothing: float = 0.9) -> None:
    """Draw each run's ``terms`` on ``axes`` (one matplotlib Axes per term), log scale.

    Long curves (over 20 points) are drawn faintly as they are and, on top, smoothed with
    :func:`smooth`. A run's colour is its norm's; runs of no known norm take other colours.
    """
    other = iter(OTHER_COLOURS * (1 + len(runs) // len(OTHER_COLOURS)))
    for run in runs:
        colour = NORMS[run.norm].colour if run.norm in NORMS else next(other)
        for ax, term in zip(axes, terms):
            steps, values = run.curve["step"], run.curve.get(term)
            if not values:
                continue
            if len(values) > 20:
                ax.plot(steps, values, color=colour, alpha=0.15, linewidth=0.8)
                values = smooth(values, smoothing)
            ax.plot(steps, values, color=colour, label=run.label)
    for ax, term in zip(axes, terms):
        ax.set_title(f"{term} loss")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.grid(True, which="both", alpha=0.3)
    if runs:
        axes[0].legend()


def plot_runs(runs: list[Run], out: str | Path, smoothing: float = 0.9, title: str | None = None) -> Path:
    """Write a 2x2 figure of the four loss terms for ``runs`` (PNG, SVG or PDF by extension).

    Raises StyleTransferError for another extension or an output that cannot be written.
    """
    from matplotlib.figure import Figure

    out = Path(out)
    if out.suffix.lower() not in FIGURE_TYPES:
        raise StyleTransferError(f"{out}: use a .png, .svg or .pdf file name")
    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2, sharex=True)
    draw_loss_curves(list(axes.flat), runs, LOSS_TERMS, smoothing)
    fig.suptitle(title or "training loss by normalisation")
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise cannot_write(out, e) from None
    return out
