"""The one exception type a user sees: its message is printed as a one-line error."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "OutOfMemory", "StyleTransferError", "TrainingDiverged", "TrainingInterrupted", "cannot_write", "one_line",
    "one_line_warning",
]  # fmt: skip


class StyleTransferError(Exception):
    """A problem with the user's input (file, checkpoint, option) rather than a bug."""


class TrainingInterrupted(StyleTransferError):
    """Ctrl-C during training: the checkpoint was saved; the exit code is 130."""


class TrainingDiverged(StyleTransferError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class OutOfMemory(StyleTransferError):
    """One input was too big for the memory available; the memory was released and others may go on."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """The text of ``e`` on one line (white space folded), cut to ``limit`` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def cannot_write(path: str | Path, e: OSError, detail: str = "") -> StyleTransferError:
    """The error for an output that could not be written (disk full, no permission, ...).

    ``detail`` is appended as it is, e.g. ``" at step 5"`` or ``"; the previous version is kept"``.
    """
    return StyleTransferError(f"{path}: cannot write ({e.strerror or one_line(e)}){detail}")


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for users: "warning: <message>" on one line, no source line."""
    return f"warning: {' '.join(str(message).split())}\n"
