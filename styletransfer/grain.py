"""Grain: seeded Gaussian noise added to the photo before the network, so flat regions get strokes.

A convolutional network maps a uniform region wider than its receptive field (~110 px for
TransformerNet) to one uniform colour: clipped skies and dark backgrounds come out as blotches
without strokes (docs/results.md, "Blotches"). A little noise gives the network something to
paint there, as the noise inputs of Ulyanov et al. 2016 ("Texture Networks") do. Stylising adds
:data:`STYLISE_GRAIN` by default (``--grain`` to choose, 0 for none).

Where the photo is flat, the grain is stronger (:func:`grain_levels`): a region whose fine
detail (:func:`~styletransfer.metrics.fine_detail` over :data:`FLAT_WINDOW` pixels) is below
:data:`FLAT_DETAIL` gets :data:`FLAT_GRAIN_FACTOR` times the level (at most :data:`GRAIN_MAX`),
a textured one the level itself, with a linear ramp between. Textured regions have strokes of
their own to paint, so more noise there only costs content; flat ones have nothing else.
Measured on validation photos (docs/results.md, "Grain where the photo is flat"): fewer
blotches than three times the grain everywhere, for 50 to 60 % of its content cost.

Levels are the noise's standard deviation in 8-bit steps (1/255 of the [0, 1] range). The
stylising grain is not clipped back to [0, 1]: clipping would take away half of it at black and
white, and near-black regions are where the remaining blotches sit (docs/results.md, "The grid
photos at 512 and 1024 px"); the network takes the few values outside [0, 1] as they are.

Two kinds of noise, for two purposes:

* stylising (:func:`add_grain`): a fixed pattern, a pure function of each pixel's position in the
  image (a hash, not a random stream), its strength a function of the photo around the pixel, so
  tiles of a huge image get exactly the grain the whole image would, the frames of a video share
  one pattern (no flicker from the grain itself), and a photo always gives the same result;
* training (:func:`training_grain`, ``train --grain``): fresh noise per step, a pure function of
  (seed, step) like the batches. Measured, it does not help against blotches: with the content
  loss taken against the clean photo, the network learns to remove the grain, flat regions
  included (docs/results.md, "Blotches").
"""

from __future__ import annotations

import functools
import math

import torch

from .errors import StyleTransferError
from .metrics import fine_detail

__all__ = [
    "FLAT_CONTEXT", "FLAT_DETAIL", "FLAT_GRAIN_FACTOR", "FLAT_WINDOW", "GRAIN_MAX", "STYLISE_GRAIN", "add_grain",
    "check_grain", "flatness", "grain_field", "grain_levels", "training_grain",
]  # fmt: skip

GRAIN_MAX = 32.0  # 8-bit steps; beyond this the grain itself shows through the strokes
STYLISE_GRAIN = 4.0  # 8-bit steps added when stylising: removes most blotches, costs little (docs/results.md)
FLAT_GRAIN_FACTOR = 4.0  # a flat region's grain, in multiples of the level: it has nothing else to paint from
FLAT_WINDOW = 31  # pixels (odd) of the network's input over which a region's fine detail is judged
FLAT_DETAIL = (0.005, 0.02)  # fine-detail RMS (0-1 scale): flat below the first, textured above the second
FLAT_CONTEXT = FLAT_WINDOW // 2 + 2  # pixels around a pixel that its flatness depends on (+2: the 5x5 mean)

_CACHED_PIXELS = 1920 * 1080  # fields up to a full-HD frame are kept (4 of them: at most 100 MB)
_MASK = 0xFFFFFFFF
_MIX = 0x45D9F3B  # odd, < 2**31: products of 32-bit values stay below 2**63 in int64


def check_grain(level, option: str = "--grain") -> float:
    """``level`` as a float in [0, :data:`GRAIN_MAX`]; a StyleTransferError naming ``option`` otherwise."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level):
        raise StyleTransferError(f"{option} must be a finite number, not {level!r}")
    if not 0 <= level <= GRAIN_MAX:
        raise StyleTransferError(f"{option} must be between 0 and {GRAIN_MAX:g} (8-bit steps), not {level:g}")
    return float(level)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) of int64 values in [0, 2**32)."""
    x = ((x >> 16) ^ x) * _MIX & _MASK
    x = ((x >> 16) ^ x) * _MIX & _MASK
    return (x >> 16) ^ x


def _hashed(seed: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """32-bit hashes (3, h, w) int64 of (seed, channel, row, column): one per channel and pixel."""
    key = _hash32(torch.arange(3, dtype=torch.int64).view(3, 1, 1) + 4 * seed & _MASK)
    return _hash32(_hash32(key ^ rows.view(1, -1, 1)) ^ cols.view(1, 1, -1))


def grain_field(height: int, width: int, top: int = 0, left: int = 0, seed: int = 0) -> torch.Tensor:
    """Standard normal noise (3, height, width) float32 for the pixels ``top:top+height`` by
    ``left:left+width`` of an image: the same values for the same pixel whatever the region
    asked for. Box-Muller on the two 16-bit halves of one hash per pixel and channel (so the
    tails stop at 4.9 standard deviations). ``seed``: >= 0. Read-only: the result may be cached."""
    if height * width <= _CACHED_PIXELS:  # a folder of one size, or a video, asks for the same field again
        return _cached_field(height, width, top, left, seed)
    return _field(height, width, top, left, seed)


def _field(height: int, width: int, top: int, left: int, seed: int) -> torch.Tensor:
    rows = torch.arange(top, top + height, dtype=torch.int64)
    cols = torch.arange(left, left + width, dtype=torch.int64)
    key = _hashed(seed, rows, cols)
    u1 = ((key >> 16).float() + 0.5) / 65536  # in (0, 1): the logarithm stays finite
    u2 = (key & 0xFFFF).float() / 65536
    return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


_cached_field = functools.lru_cache(maxsize=4)(_field)


def flatness(images: torch.Tensor) -> torch.Tensor:
    """How flat the photo is around each pixel: (B, 1, H, W) in [0, 1] for ``images`` (B, 3, H, W)
    in [0, 1]; 1 where the fine detail over :data:`FLAT_WINDOW` pixels is below
    ``FLAT_DETAIL[0]`` (a clear sky, a blurred background), 0 above ``FLAT_DETAIL[1]`` (texture),
    linear between. Depends on the pixels within :data:`FLAT_CONTEXT` of each pixel only."""
    low, high = FLAT_DETAIL
    detail = fine_detail(images.float().clamp(0, 1), FLAT_WINDOW)
    return ((high - detail) / (high - low)).clamp_(0, 1)


def grain_levels(images: torch.Tensor, level: float, flat_factor: float = FLAT_GRAIN_FACTOR) -> torch.Tensor:
    """The grain's standard deviation at each pixel, in 8-bit steps: (B, 1, H, W), ``level`` where
    ``images`` (B, 3, H, W in [0, 1]) are textured, ``flat_factor * level`` (at most
    :data:`GRAIN_MAX`, never below ``level``) where they are flat (:func:`flatness`).
    ``flat_factor`` 1 gives ``level`` everywhere, the grain as it was before flat regions got more."""
    flat_level = max(level, min(flat_factor * level, GRAIN_MAX))
    if flat_level == level:
        return torch.full_like(images[:, :1], level, dtype=torch.float32)
    return level + (flat_level - level) * flatness(images)


def add_grain(
    images: torch.Tensor, level: float, top: int = 0, left: int = 0, flat_factor: float = FLAT_GRAIN_FACTOR
) -> torch.Tensor:
    """``images`` (B, 3, h, w) float in [0, 1], the region at (``top``, ``left``) of a larger image
    (0, 0: the whole image), plus the fixed grain of that region at ``level`` 8-bit steps where the
    images are textured and up to ``flat_factor`` times that where they are flat
    (:func:`grain_levels`; 1: the same level everywhere), not clipped (values may leave [0, 1] by
    up to 4.9 times the local level / 255); the same pattern for every image of the batch.
    Level 0 returns ``images``.
    A region's flatness near its edges needs the :data:`FLAT_CONTEXT` pixels beyond them: pass a
    region that many pixels larger (where the image has them) and crop the result.
    Raises StyleTransferError for a level that is not a number from 0 to :data:`GRAIN_MAX`."""
    if check_grain(level, "grain") == 0:
        return images
    noise = grain_field(images.shape[-2], images.shape[-1], top, left).to(images.device, images.dtype)
    return images + noise * (grain_levels(images, level, flat_factor) / 255).to(images.dtype)


def training_grain(content: torch.Tensor, level: float, seed: int, step: int, first: int = 0) -> torch.Tensor:
    """A training batch ``content`` (B, 3, S, S) in [0, 1] plus fresh Gaussian grain of ``level``
    8-bit steps, clipped to [0, 1]. Each image's noise is a pure function of (``seed``, ``step``,
    its place in the global batch: ``first`` + its index), like the batches themselves
    (:class:`~styletransfer.data.StepBatches`), so a resumed or multi-process run adds the same
    grain. Level 0 returns ``content``."""
    if level == 0:
        return content
    noise = torch.stack([
        torch.randn(content.shape[1:], generator=torch.Generator().manual_seed((seed * 1_000_003 + step) * 1024 + first + i))
        for i in range(content.shape[0])
    ])  # fmt: skip
    return (content + noise.to(content.device, content.dtype).mul_(level / 255)).clamp_(0, 1)
