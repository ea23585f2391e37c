"""The run folder's format: what a training run leaves on disk, and how it is read back.

A run folder holds::

    checkpoint.safetensors   the latest model, optimiser state and step (rewritten atomically)
    losses.jsonl             one JSON line per step: {"step", "content", "style", "tv", "total"}

An exported model ``NAME.safetensors`` (no optimiser) keeps the full curve beside it as
``NAME.losses.jsonl.gz``; the checkpoint itself also stores a curve downsampled to
:data:`HISTORY_POINTS` points. Training, export, ``plot`` and the web demo all read and name
these files through this module.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from .checkpoint import atomic_write
from .errors import StyleTransferError, cannot_write

__all__ = [
    "CHECKPOINT_NAME", "HISTORY_POINTS", "LOG_NAME", "LOSS_TERMS", "LossLog", "checkpoint_path", "downsample",
    "export_log", "exported_log_path", "log_curve", "logs_beside_model", "read_log", "remove_stale_temporaries",
    "run_files", "train_hint",
]  # fmt: skip

CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "losses.jsonl"
LOSS_TERMS = ("content", "style", "tv", "total")  # the loss terms logged at every step
HISTORY_POINTS = 200  # loss-curve points kept inside each checkpoint's metadata
EXPORTED_LOG_SUFFIX = ".losses.jsonl.gz"


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where the run in ``run_dir`` keeps its checkpoint."""
    return Path(run_dir) / CHECKPOINT_NAME


def exported_log_path(model: str | Path) -> Path:
    """The compressed loss log kept beside an exported model: ``NAME.losses.jsonl.gz``."""
    model = Path(model)
    return model.with_name(model.stem + EXPORTED_LOG_SUFFIX)


def logs_beside_model(model: str | Path) -> list[Path]:
    """The loss logs that belong to an exported model, existing ones only, compressed first."""
    model = Path(model)
    candidates = [exported_log_path(model), model.with_name(model.stem + ".losses.jsonl")]
    return [p for p in candidates if p.is_file()]


def export_log(run_checkpoint: str | Path, model: str | Path) -> Path | None:
    """Copy the run's ``losses.jsonl`` (beside ``run_checkpoint``) next to the exported ``model``,
    compressed; returns its path, or None when the run has no log."""
    log = Path(run_checkpoint).parent / LOG_NAME
    if not log.exists():
        return None
    out = exported_log_path(model)
    atomic_write(out, gzip.compress(log.read_bytes(), mtime=0))
    return out


def run_files(path: str | Path) -> tuple[Path | None, Path | None]:
    """The (loss log, checkpoint) of a run folder, a loss log or a checkpoint; either may be None.

    A checkpoint given alone comes without a log (its stored curve stands for it). Raises
    StyleTransferError for a folder without a log, or a path that is none of the three.
    """
    path = Path(path)
    if path.is_dir():
        log = next((p for p in (path / LOG_NAME, path / f"{LOG_NAME}.gz") if p.exists()), None)
        if log is None:
            raise StyleTransferError(f"{path}: no {LOG_NAME} in this folder; is it a training run?")
        return log, _existing(path / CHECKPOINT_NAME)
    if path.suffix == ".safetensors":
        return None, path
    if path.name.endswith((".jsonl", ".jsonl.gz")) and path.is_file():
        return path, _existing(_model_of_log(path))
    raise StyleTransferError(f"{path}: give a run folder, a losses .jsonl(.gz) file or a checkpoint")


def _model_of_log(log: Path) -> Path:
    """``losses.jsonl`` belongs to the run's checkpoint, ``NAME.losses.jsonl.gz`` to ``NAME.safetensors``."""
    if log.name in (LOG_NAME, f"{LOG_NAME}.gz"):
        return log.parent / CHECKPOINT_NAME
    return log.with_name(log.name.split(".losses.jsonl")[0] + ".safetensors")


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def read_log(path: str | Path) -> list[dict]:
    """Rows of a loss log (``.jsonl`` or ``.jsonl.gz``), in file order; a torn last line is ignored.

    Raises OSError (or EOFError for a truncated .gz) when the file cannot be read.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def log_curve(rows: list[dict]) -> dict[str, list]:
    """Log rows as columns: ``{"step": [...], "content": [...], ...}``."""
    return {"step": [r["step"] for r in rows]} | {k: [r[k] for r in rows] for k in LOSS_TERMS}


def downsample(rows: list[dict], points: int) -> dict[str, list]:
    """The curve of ``rows`` averaged into at most ``points`` buckets (each tagged with its last step)."""
    if not rows:
        return {}
    size = max(1, math.ceil(len(rows) / points))
    out = {"step": []} | {k: [] for k in LOSS_TERMS}
    for i in range(0, len(rows), size):
        bucket = rows[i : i + size]
        out["step"].append(bucket[-1]["step"])
        for k in LOSS_TERMS:
            out[k].append(round(sum(r[k] for r in bucket) / len(bucket), 7))
    return out


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Half-written files of a run that was killed mid-write: never read, so just removed."""
    for name in (CHECKPOINT_NAME, LOG_NAME):
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


class LossLog:
    """``losses.jsonl``: one JSON line per step, flushed as written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = None

    def truncate(self, last_step: int) -> None:
        """Keep only steps up to ``last_step`` (steps after the last checkpoint are redone), then
        open for appending. Raises StyleTransferError when the log cannot be written."""
        kept = [r for r in read_log(self.path) if r["step"] <= last_step] if self.path.exists() else []
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        try:
            self.file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise cannot_write(self.path, e) from None

    def write(self, step: int, values: dict[str, float]) -> None:
        """Append step ``step``'s loss ``values``; a full disk is a StyleTransferError naming the step."""
        try:
            self.file.write(json.dumps({"step": step, **{k: round(v, 7) for k, v in values.items()}}) + "\n")
            self.file.flush()
        except OSError as e:  # disk full: the checkpoint already written is untouched
            self.close()
            raise cannot_write(self.path, e, f" at step {step}") from None

    def history(self, points: int = HISTORY_POINTS) -> dict[str, list]:
        """The curve so far, averaged into at most ``points`` buckets."""
        return downsample(read_log(self.path), points)

    def close(self) -> None:
        if self.file:
            try:
                self.file.close()
            except OSError:  # the lines it could not write are lost either way
                pass


def train_hint(models: str | Path = "models") -> list[str]:
    """The two commands that train a model and export it into the folder ``models``."""
    models = Path(models).as_posix()
    return [
        "styletransfer train --style STYLE.jpg --content-dir PHOTOS/ --norm iebn --out runs/NAME",
        f"styletransfer export runs/NAME/{CHECKPOINT_NAME} {models}/NAME/iebn.safetensors",
    ]
