"""The compiled paths: inference (torch.compile, inductor, with freezing) and when it pays, and
the training loss (``train --compile``, opt-in).

Freezing folds the weights into the graph as constants, so inductor can fuse the memory-bound
work around the convolutions (padding, norms, ReLUs, residual adds) into few
kernels. Compiling costs seconds for each new input shape (one graph per shape: dynamic shapes
compile once but ran no faster than eager here), so it pays only when many images of one size
follow: the frames of a video, a folder of same-sized photos, a long-lived server.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

from .data import scaled_size
from .errors import StyleTransferError
from .video import frame_size, is_video, probe

__all__ = [
    "COMPILE_PAYS_AFTER", "COMPILE_PAYS_ON", "compile_for_inference", "compile_loss", "worth_compiling",
]  # fmt: skip

# Pixels stylised at one size after which compiling pays for itself on a CPU: 300 pictures of
# 1024x1024, or 530 video frames of 1024x576 (a 16:9 video at stylize's default --max-size). On 2 cores of a Xeon with AMX, with freed memory kept
# (devices.keep_freed_memory), compiling added 34-36 s cold to a one-picture `stylize` (10-14 s
# with inductor's on-disk cache warm) and saved 0.09-0.16 s per 1024x1024 image (1.34x-1.58x in
# two benchmark runs): it pays after 210-410 such images cold. A third run, slower throughout,
# saved 0.02 s (1.04x). On 2 cores of an AMD EPYC, before
# that change, it took 23 s cold and saved 0.18 s an image (1.19x; 1.06x at 512x512).
# benchmarks/bench.py measures the saving.
COMPILE_PAYS_AFTER = 300 * 2**20
# Device types where the compiled network was measured faster than the eager one: 1.06x and 1.19x
# at 512 and 1024 px on a 2-core CPU; 0.97x and 1.01x on an H200, where cuDNN leaves little to fuse.
COMPILE_PAYS_ON = ("cpu",)


def compile_for_inference(model: torch.nn.Module):
    """``model`` (in eval mode) compiled for inference: a callable with the model's signature.

    Input and output as the model's: (B, 3, H, W) in [0, 1]. The first call with each new
    shape compiles (seconds); inductor's on-disk cache makes later processes start faster.
    """
    # Inductor imports torch's C++-extension module, which warns about a CUDA compiler without a
    # CUDA runtime on GPU-less machines that have one installed: noise for a CPU run.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(model, dynamic=False, options={"freezing": True})


def compile_loss(loss: torch.nn.Module):
    """The perceptual loss (VGG features and Gram matrices) compiled forward and backward: a
    callable with the loss's signature. The first call compiles (10-40 s on 2 cores).

    The transformation network stays eager: inductor's compiled backward of it gave NaN
    gradients in bf16 on the CPU (torch 2.14; vectorised kernels, the unvectorised ones did
    not). ``train --compile`` is opt-in: on a 2-core Intel Xeon with AMX a step with the loss
    compiled was 1.29x, 1.16x, 1.01x and 0.87x the eager one in four runs (bench.py --only train
    and --quick; one in-process interleaved), after about 35 s of compiling cold, so no gain held.
    """
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(loss, dynamic=False)


def worth_compiling(
    files: list[Path], max_size: int | None, threshold: int = COMPILE_PAYS_AFTER, device: str = "cpu"
) -> bool:
    """Whether stylising ``files`` on ``device`` (a device type: cpu, cuda, ...) pays for compiling:
    the device is one of COMPILE_PAYS_ON and the pictures among ``files`` that share one size once
    scaled to ``max_size`` (long side, pixels; None keeps the size) add up to at least
    ``threshold`` pixels. An image counts once, a video once per frame (the frames' size is the one
    ``stylize`` gives them). Reads only headers (and a video's first frame)."""
    if device not in COMPILE_PAYS_ON:
        return False

    def scaled(size: tuple[int, int]) -> tuple[int, int]:
        return scaled_size(size, max_size) if max_size and max(size) > max_size else size

    sizes: Counter = Counter()
    for path in files:
        if is_video(path):
            size, frames = _video_frames(path, max_size)
            sizes[size] += frames
        elif (size := _size_of(path)) is not None:
            sizes[scaled(size)] += 1
    return max((count * size[0] * size[1] for size, count in sizes.items() if size), default=0) >= threshold


def _video_frames(path: Path, max_size: int | None) -> tuple[tuple[int, int] | None, int]:
    """A video's output frame size and frame count; (None, 0) for one that cannot be read
    (it gets its own error when it is stylised)."""
    try:
        info = probe(path)
    except StyleTransferError:
        return None, 0
    return frame_size(info.width, info.height, max_size), info.frames or 0


def _size_of(path: Path) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a decompression bomb: refused when it is stylised
            with Image.open(path) as img:
                return img.size
    except Exception:  # an unreadable file gets its own error when it is stylised
        return None
