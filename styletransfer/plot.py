"""Training-curve figures: content, style, tv and total loss per run, one colour per norm."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import read_metadata
from .errors import StyleTransferError
from .norms import NORM_LABELS
from .train import CHECKPOINT_NAME, LOG_NAME, LOSS_TERMS, read_log

NORM_COLOURS = {"bn": "#d62728", "in": "#1f77b4", "se": "#ff7f0e", "iebn": "#2ca02c"}


class Run:
    """One training run's loss curve and its label."""

    def __init__(self, label: str, norm: str | None, style: str | None, curve: dict[str, list]) -> None:
        self.label, self.norm, self.style, self.curve = label, norm, style, curve


def load_run(path: str | Path) -> Run:
    """A run folder (``losses.jsonl`` + checkpoint), a log file, or a checkpoint (its stored history)."""
    path = Path(path)
    meta, log = {}, None
    if path.is_dir():
        log = next((p for p in (path / LOG_NAME, path / f"{LOG_NAME}.gz") if p.exists()), None)
        if (path / CHECKPOINT_NAME).exists():
            meta = read_metadata(path / CHECKPOINT_NAME)
        if log is None:
            raise StyleTransferError(f"{path}: no {LOG_NAME} in this folder; is it a training run?")
    elif path.suffix == ".safetensors":
        meta = read_metadata(path)
    elif path.name.endswith((".jsonl", ".jsonl.gz")) and path.is_file():
        log = path
        sibling = next(path.parent.glob(path.name.split(".")[0] + "*.safetensors"), None)
        meta = read_metadata(sibling) if sibling else {}
    else:
        raise StyleTransferError(f"{path}: give a run folder, a losses .jsonl(.gz) file or a checkpoint")
    if log is not None:
        rows = read_log(log)
        curve = {"step": [r["step"] for r in rows]} | {k: [r[k] for r in rows] for k in LOSS_TERMS}
    else:
        curve = meta.get("history") or {}
    if not curve.get("step"):
        raise StyleTransferError(f"{path}: holds no loss values to plot")
    norm, style = meta.get("norm"), meta.get("style")
    label = f"{NORM_LABELS[norm]} · {style.replace('_', ' ')}" if norm and style else path.stem
    return Run(label, norm, style, curve)


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average (as TensorBoard's smoothing slider), bias-corrected."""
    out, avg, norm = [], 0.0, 0.0
    for v in values:
        avg = weight * avg + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(avg / norm)
    return out


def plot_runs(runs: list[Run], out: str | Path, smoothing: float = 0.9, title: str | None = None) -> Path:
    """Write a 2x2 figure of the loss terms for ``runs`` (PNG, SVG or PDF by extension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise StyleTransferError(f"{out}: use a .png, .svg or .pdf file name")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    other_colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"][4:] * 10)
    for run in runs:
        colour = NORM_COLOURS.get(run.norm) or next(other_colours)
        for ax, term in zip(axes.flat, LOSS_TERMS):
            steps, values = run.curve["step"], run.curve[term]
            if len(values) > 20:
                ax.plot(steps, values, color=colour, alpha=0.15, linewidth=0.8)
            ax.plot(steps, smooth(values, smoothing if len(values) > 20 else 0.0), color=colour, label=run.label)
    for ax, term in zip(axes.flat, LOSS_TERMS):
        ax.set_title(f"{term} loss")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("iteration")
    axes[0, 0].legend()
    fig.suptitle(title or "training loss by normalisation")
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise StyleTransferError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return out
