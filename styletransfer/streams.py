"""Standard input and output as images, for pipes and scripts: ``-`` stands for either.

    styletransfer stylize - -m MODEL -o - < photo.jpg > stylised.png

One image is read from standard input when ``-`` is the input, and the result is written to
standard output when ``-`` is the output (PNG unless ``--format`` says otherwise). Standard
output then carries only the image, and every message goes to standard error.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from .data import load_image
from .errors import StyleTransferError

__all__ = ["STDIO", "STREAM_FORMATS", "check_stream_options", "is_stdio", "read_stdin_image", "stream_format",
           "write_stdout_image"]  # fmt: skip

STDIO = "-"
STREAM_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}  # --format: Pillow's format name


def is_stdio(path: str | Path) -> bool:
    """Whether ``path`` is ``-``: standard input as an input, standard output as an output."""
    return str(path) == STDIO


def stream_format(name: str | None) -> str:
    """Pillow's format for ``--format`` ``name`` (png, jpg, jpeg, webp; any case); None is PNG.

    Raises StyleTransferError for another name.
    """
    fmt = STREAM_FORMATS.get((name or "png").lower())
    if fmt is None:
        raise StyleTransferError(f"--format {name!r} is not one of: png, jpg, webp")
    return fmt


def check_stream_options(inputs: list[Path], output: Path, format_name: str | None, json_records: bool,
                         stdout: BinaryIO | None = None) -> None:  # fmt: skip
    """Refuse, before any work, the uses of ``-`` that cannot work (one line each).

    ``-`` as an input must be the only input; ``-o -`` needs exactly one input image (a file or
    ``-``, not a folder), standard output not a terminal, and no ``--json`` (whose records would
    be mixed with the image); ``--format`` is for ``-o -`` only (a file's extension sets its
    type). ``stdout``: the stream checked for a terminal (default ``sys.stdout``).
    """
    if any(is_stdio(p) for p in inputs) and len(inputs) > 1:
        raise StyleTransferError("- (standard input) holds one image: give it as the only input")
    if is_stdio(output):
        _check_stdout_output(inputs, format_name, json_records, stdout or sys.stdout)
    elif format_name is not None:
        raise StyleTransferError("--format is for -o - (standard output); a file's extension sets its type")


def _check_stdout_output(inputs: list[Path], format_name: str | None, json_records: bool, stdout) -> None:
    stream_format(format_name)
    if len(inputs) != 1 or Path(inputs[0]).is_dir():
        raise StyleTransferError("-o - writes one image to standard output: give one input image, not several or a folder")
    if json_records:
        raise StyleTransferError("--json prints its records to standard output, which -o - fills with the image; "
                                 "write the image to a file instead")  # fmt: skip
    if stdout.isatty():
        raise StyleTransferError("-o -: standard output is a terminal; redirect it to a file (> out.png) or a pipe")


def read_stdin_image(max_size: int | None = None, stdin: BinaryIO | None = None) -> Image.Image:
    """The one image on standard input (any type :func:`~styletransfer.data.load_image` reads),
    as an RGB image with its long side at most ``max_size`` pixels. ``stdin``: default
    ``sys.stdin.buffer``. Raises StyleTransferError for an empty or unreadable input."""
    stdin = stdin or sys.stdin.buffer
    if stdin.isatty():
        raise StyleTransferError("- (standard input): is a terminal; redirect an image to it (< photo.jpg) or pipe one")
    data = stdin.read()
    if not data:
        raise StyleTransferError("- (standard input): is empty; redirect an image to it (< photo.jpg) or pipe one")
    return load_image(io.BytesIO(data), max_size, name="- (standard input)")


def write_stdout_image(img: Image.Image, fmt: str = "PNG", stdout: BinaryIO | None = None) -> None:
    """Write ``img`` to standard output as ``fmt`` (Pillow's format name: PNG, JPEG or WEBP).

    The image is encoded whole first, so a failure never leaves half an image. Raises
    StyleTransferError when the reader has gone (a closed pipe).
    """
    stdout = stdout or sys.stdout.buffer
    buffer = io.BytesIO()
    img.save(buffer, fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    try:
        stdout.write(buffer.getvalue())
        stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        raise StyleTransferError("-o -: standard output was closed before the image was written") from None


def _silence_stdout() -> None:
    """Point the closed standard output at /dev/null, so Python's own flush at exit stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file descriptor (e.g. captured in tests)
        pass
    finally:
        os.close(devnull)
