"""Stylising huge images in overlapping tiles, with the statistics of the whole image.

The transformation network is local except for its per-instance statistics: IN normalises each
channel with the mean and variance of the whole image, IEBN's gate and the SE gate look at its
per-channel mean. Cut naively into tiles, those become per-tile statistics and show as blocks.
Here every tile is computed with the statistics of the whole image, so the tiled result equals
the untiled one up to floating-point rounding:

1. The image is padded as :class:`~styletransfer.network.TransformerNet` pads it (to a multiple
   of 4, at least 16, by reflection), and that padded image is cut into *cores*, a partition of
   it into rectangles whose corners lie on multiples of 4, so the grids of the two stride-2
   stages and of the two 2x upsamplings line up with the untiled network's. Each core is
   computed with a *halo* of ``halo`` pixels around it (clipped at the image's border, where the
   network's own reflection padding then matches the untiled one's).
2. One streaming pass per per-instance layer k (in the order the network runs them): every tile
   goes through the network, layers 1..k-1 using their already fixed whole-image statistics,
   until it reaches layer k; there the mean and variance of layer k's input over the tile's
   core (only the core: the cores partition the image, so nothing is counted twice) are kept,
   and the tile stops. After the last tile, they are combined in float64 into layer k's
   whole-image mean and variance, which are then fixed. The per-core moments come from the same
   kernel as the untiled network's (:func:`~styletransfer.instance_ops.instance_moments`, fp32
   results of float64 sums on the CPU); they combine exactly (Chan, Golub and LeVeque 1979):
   ``mean = sum(n_t mean_t) / n`` and ``var = sum(n_t (var_t + (mean_t - mean)**2)) / n``.
3. A last pass runs every tile through the whole network and pastes its core.

A pixel's output depends on the input within the network's receptive field; a tile's own
(wrong) reflection padding at a cut therefore reaches at most that far into the tile. Counting
for TransformerNet, in input pixels: 9x9 conv 4, two 3x3 stride-2 convs 2 + 4 (with the
stride-2 rounding), ten 3x3 convs at 1/4 resolution 40, two upsample + 3x3 conv stages 2 + 1
(plus rounding), the last 9x9 conv 4: 55 pixels. :data:`HALO` = 64 covers it with a margin, so
the cores match without blending; the fast tests check that a halo of 16 does not.

Batch norm in eval mode is pointwise and needs no pass of its own: a BN network takes one pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .devices import autocast
from .errors import StyleTransferError
from .grain import FLAT_CONTEXT, add_grain
from .instance_ops import instance_moments
from .norms import InstanceStatistics

__all__ = [
    "HALO", "MEMORY_BUDGET", "PEAK_BYTES_FIXED", "PEAK_BYTES_PER_PIXEL", "ProgressCallback", "Tile", "auto_tile_side", "parse_tile",
    "per_instance_layers", "plan_tiles", "stylize_image_in_tiles", "stylize_in_tiles", "tile_progress", "tile_side",
]  # fmt: skip

HALO = 64  # pixels around each core; at least the receptive-field radius (55 pixels), a multiple of 4
ALIGN = 4  # the two stride-2 stages: tile corners on multiples of 4 keep every grid aligned
MIN_SIDE = 16  # the smallest side the network takes without padding it further

# Peak memory of one untiled forward pass, as a fixed part plus a part per pixel of the image:
# resident memory above the idle process, measured on the CPU with channels_last
# (benchmarks/tiling.py memory) at 463 MiB in fp32 and 344 in bf16 at 1024x1024, 1471 and 767 at
# 2048x2048. fp32, the larger: 336 bytes per added pixel over 127 MiB; rounded up. Passes as large
# as the budget leave freed memory to the system (devices.KEEP_FREED_MEMORY_UP_TO): a 2048x2048
# one still peaked at 1467 MiB in fp32 and 829 in bf16 with that in place.
PEAK_BYTES_FIXED = 128 * 2**20
PEAK_BYTES_PER_PIXEL = 340
MEMORY_BUDGET = 3 * 2**29  # 1.5 GiB: what one forward pass may take on the CPU before ``auto`` tiles

# progress(pass number (1-based), number of passes, what the pass does, tiles done, tiles in all)
ProgressCallback = Callable[[int, int, str, int, int], None]


@dataclass(frozen=True)
class Tile:
    """One tile, in pixels of the padded image: ``(top, bottom, left, right)``, ends exclusive.

    ``core`` is the part this tile contributes (the cores partition the padded image);
    ``region`` is the core with its halo, what the network computes.
    """

    core: tuple[int, int, int, int]
    region: tuple[int, int, int, int]

    def core_in_region(self, scale: int = 1) -> tuple[slice, slice]:
        """Row and column slices of the core within the region, at 1/``scale`` of the input resolution."""
        top, bottom, left, right = self.core
        region_top, _, region_left, _ = self.region
        rows = slice((top - region_top) // scale, (bottom - region_top) // scale)
        return rows, slice((left - region_left) // scale, (right - region_left) // scale)


def padded_size(height: int, width: int) -> tuple[int, int, str]:
    """Height, width and mode of the padding TransformerNet applies (multiple of 4, at least 16)."""
    padded_h, padded_w = max(MIN_SIDE, height + -height % ALIGN), max(MIN_SIDE, width + -width % ALIGN)
    mode = "reflect" if padded_h - height < height and padded_w - width < width else "replicate"
    return padded_h, padded_w, mode


def _spans(length: int, side: int) -> list[tuple[int, int]]:
    """``[0, length)`` cut into spans of at most ``side``, nearly equal, starting on multiples of 4."""
    count = math.ceil(length / side)
    step = math.ceil(length / count / ALIGN) * ALIGN
    bounds = [*range(0, length, step), length]
    return list(zip(bounds[:-1], bounds[1:]))


def plan_tiles(height: int, width: int, side: int, halo: int = HALO) -> list[Tile]:
    """The tiles of an image of ``height`` x ``width`` pixels, row by row.

    ``side``: the largest core side in pixels (a multiple of 4, at least 16); ``halo``: pixels
    of context on each side of a core (a multiple of 4, at least 16). Raises ValueError otherwise.
    """
    if side % ALIGN or side < MIN_SIDE or halo % ALIGN or halo < MIN_SIDE:
        raise ValueError(f"side and halo must be multiples of {ALIGN}, at least {MIN_SIDE}: {side}, {halo}")
    padded_h, padded_w, _ = padded_size(height, width)
    return [
        Tile((top, bottom, left, right),
             (max(0, top - halo), min(padded_h, bottom + halo), max(0, left - halo), min(padded_w, right + halo)))
        for top, bottom in _spans(padded_h, side) for left, right in _spans(padded_w, side)
    ]  # fmt: skip


def per_instance_layers(model: nn.Module) -> list[InstanceStatistics]:
    """The layers of ``model`` that use per-instance statistics, in the order the network runs them."""
    return [m for m in model.modules() if isinstance(m, InstanceStatistics)]


class _LayerReached(Exception):
    """Ends a statistics pass's tile at the layer being measured: the rest is not needed."""


class _WholeImageMoments:
    """The ``moments_override`` of every per-instance layer during tiling.

    For a layer whose whole-image statistics are fixed it returns them; for the layer being
    measured it accumulates the moments of the current tile's core and stops the tile.
    """

    def __init__(self, count: int) -> None:
        self.fixed: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * count
        self.measuring: int | None = None
        self.tile: Tile | None = None
        self.cores: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (pixels, mean, var) of each core
        self.dtype = torch.float32  # of the statistics: fp32 as instance_moments gives, fp64 for a float64 model

    def measure(self, index: int) -> None:
        self.measuring, self.cores = index, []

    def fix(self) -> None:
        """The measured layer's mean and biased variance over the whole image, from its cores'.

        Combined in float64 as Chan, Golub and LeVeque (1979) combine partial moments: the
        squared deviations within the cores plus those of the cores' means from the whole mean.
        (A plain sum of squares would cancel catastrophically for a channel whose mean is large
        against its spread, the per-core means being rounded to fp32.)
        """
        pixels = torch.tensor([n for n, _, _ in self.cores], dtype=torch.float64, device=self.cores[0][1].device)
        weights = (pixels / pixels.sum())[:, None, None]
        means = torch.stack([m for _, m, _ in self.cores]).double()
        variances = torch.stack([v for _, _, v in self.cores]).double()
        mean = (weights * means).sum(0)
        var = (weights * (variances + (means - mean) ** 2)).sum(0)
        self.fixed[self.measuring] = (mean.to(self.dtype), var.to(self.dtype))
        self.measuring, self.cores = None, []

    def __call__(self, index: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fixed[index] is not None:
            return self.fixed[index]
        if index != self.measuring:
            raise RuntimeError(f"per-instance layer {index} ran before its statistics were measured")
        scale = (self.tile.region[1] - self.tile.region[0]) // x.shape[2]
        rows, cols = self.tile.core_in_region(scale)
        core = x[:, :, rows, cols]
        mean, var = instance_moments(core.contiguous())
        self.dtype = mean.dtype
        self.cores.append((core.shape[2] * core.shape[3], mean, var))
        raise _LayerReached


@contextlib.contextmanager
def whole_image_moments(layers: list[InstanceStatistics]) -> Iterator[_WholeImageMoments]:
    """Installs one :class:`_WholeImageMoments` as the override of ``layers``; removes it on exit."""
    state = _WholeImageMoments(len(layers))
    for index, layer in enumerate(layers):
        layer.moments_override = partial(state, index)
    try:
        yield state
    finally:
        for layer in layers:
            del layer.moments_override  # back to the class's None: the layer's own statistics


def _read_region(images: torch.Tensor, tile: Tile, parameter: torch.Tensor, grain: float = 0.0) -> torch.Tensor:
    """The tile's region of the padded image in [0, 1], channels_last, with the device and float
    dtype of the model's ``parameter``; with the whole image's ``grain`` (8-bit steps) at its place."""
    top, bottom, left, right = tile.region
    height, width = images.shape[-2:]
    bottom_in, right_in = min(bottom, height), min(right, width)
    # The grain's strength follows the photo's flatness, which looks FLAT_CONTEXT pixels further.
    above, before = min(top, FLAT_CONTEXT), min(left, FLAT_CONTEXT)
    crop = images[:, :, top - above:min(bottom_in + FLAT_CONTEXT, height),
                  left - before:min(right_in + FLAT_CONTEXT, width)].to(parameter.device)  # fmt: skip
    crop = crop.float().div_(255) if crop.dtype == torch.uint8 else crop.float()
    crop = add_grain(crop, grain, top - above, left - before)
    crop = crop[:, :, above:above + bottom_in - top, before:before + right_in - left].to(parameter.dtype)
    pad_h, pad_w = bottom - bottom_in, right - right_in
    if pad_h or pad_w:  # the padded image's border, as TransformerNet pads it
        crop = F.pad(crop, (0, pad_w, 0, pad_h), mode=padded_size(height, width)[2])
    return crop.contiguous(memory_format=torch.channels_last)


def _paste(out: torch.Tensor, y: torch.Tensor, tile: Tile) -> None:
    """Writes the tile's core (within the unpadded image) of output ``y`` into ``out``."""
    top, bottom, left, right = tile.core
    bottom, right = min(bottom, out.shape[2]), min(right, out.shape[3])
    rows, cols = tile.core_in_region()
    core = y[:, :, rows, cols][:, :, : bottom - top, : right - left]
    if out.dtype == torch.uint8:  # rounded as data.tensor_to_image rounds
        core = core.float().clamp(0, 1).mul(255).round()
    out[:, :, top:bottom, left:right] = core.to("cpu", out.dtype)


def _passes(layers: list[InstanceStatistics]) -> list[str]:
    return [f"statistics of per-instance layer {k + 1}/{len(layers)}" for k in range(len(layers))] + ["stylise"]


@torch.inference_mode()
def stylize_in_tiles(
    model: nn.Module,
    images: torch.Tensor,
    side: int,
    *,
    precision: torch.dtype = torch.float32,
    halo: int = HALO,
    out: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
    grain: float = 0.0,
) -> torch.Tensor:
    """Stylise ``images`` tile by tile with the statistics of the whole image (see the module).

    ``model``: a TransformerNet in eval mode, on any device; ``images``: (B, 3, H, W), float in
    [0, 1] or uint8 in [0, 255], any H and W >= 1, kept where they are (the CPU for huge ones:
    only tiles go to the model's device); ``side``: the largest core side in pixels (a multiple of
    4, >= 16); ``precision``: the autocast dtype (float32: none); ``halo``: as in
    :func:`plan_tiles`; ``out``: where to write the (B, 3, H, W) result, float in [0, 1] or
    uint8 (rounded as :func:`~styletransfer.data.tensor_to_image` rounds), on the CPU (by
    default a new float32 tensor), returned. ``progress`` is called after every tile. ``grain``:
    the level of :func:`~styletransfer.grain.add_grain` the network sees, each tile getting the
    whole image's grain at its place. Takes one pass over the tiles per per-instance layer, plus one.
    Raises ValueError for a model in training mode or a bad side or halo.
    """
    if model.training:
        raise ValueError("tiling needs the model in eval mode (training uses batch statistics)")
    height, width = images.shape[-2:]
    tiles = plan_tiles(height, width, side, halo)
    parameter = next(model.parameters())
    layers = per_instance_layers(model)
    names = _passes(layers)
    report = progress or (lambda *_: None)

    def run(tile: Tile) -> torch.Tensor:
        with autocast(parameter.device, precision):
            return model(_read_region(images, tile, parameter, grain))

    if out is None:
        out = torch.empty((images.shape[0], 3, height, width))
    with whole_image_moments(layers) as moments:
        for index in range(len(layers)):
            moments.measure(index)
            for done, tile in enumerate(tiles, 1):
                moments.tile = tile
                with contextlib.suppress(_LayerReached):
                    run(tile)
                report(index + 1, len(names), names[index], done, len(tiles))
            moments.fix()
        for done, tile in enumerate(tiles, 1):
            _paste(out, run(tile), tile)
            report(len(names), len(names), names[-1], done, len(tiles))
    return out


def stylize_image_in_tiles(
    model: nn.Module, image: Image.Image, side: int, precision: torch.dtype = torch.float32,
    progress: ProgressCallback | None = None, grain: float = 0.0,
) -> Image.Image:  # fmt: skip
    """An RGB image stylised in tiles of ``side`` pixels, as :func:`stylize_in_tiles` (``grain`` too);
    the image stays in 8 bits in memory (3 bytes a pixel in, 3 out) and only tiles become float."""
    pixels = torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8))
    result = torch.empty_like(pixels)
    to_chw = partial(torch.permute, dims=(2, 0, 1))
    stylize_in_tiles(
        model, to_chw(pixels)[None], side, precision=precision, out=to_chw(result)[None], progress=progress, grain=grain
    )
    return Image.fromarray(result.numpy(), "RGB")


def parse_tile(text: str | int | None) -> str | int:
    """``auto``, ``off`` or a core side in pixels (an int >= 16, rounded up to a multiple of 4).

    Accepts what ``--tile`` takes, as text or an int (None is ``off``). Raises StyleTransferError
    for anything else.
    """
    if text is None:
        return "off"
    if isinstance(text, str) and text.strip().lower() in ("auto", "off"):
        return text.strip().lower()
    try:
        side = int(text)
    except (TypeError, ValueError):
        side = None
    if side is None or isinstance(text, bool) or side < MIN_SIDE:
        raise StyleTransferError(f"--tile must be auto, off or a tile side in pixels (at least {MIN_SIDE}), not {text!r}")
    return side + -side % ALIGN


def peak_bytes(height: int, width: int) -> int:
    """Estimated peak memory, in bytes, of one untiled forward pass over an image of that size."""
    return PEAK_BYTES_FIXED + height * width * PEAK_BYTES_PER_PIXEL


def memory_budget(device: torch.device) -> int:
    """Bytes a forward pass may take: :data:`MEMORY_BUDGET` on the CPU, half the free memory of a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return MEMORY_BUDGET


def auto_tile_side(height: int, width: int, budget: int) -> int | None:
    """The core side ``auto`` picks: None when the untiled pass fits in ``budget`` bytes, else the
    largest side whose tile (core and halo) fits."""
    if peak_bytes(height, width) <= budget:
        return None
    fits = math.isqrt(max(0, budget - PEAK_BYTES_FIXED) // PEAK_BYTES_PER_PIXEL)
    return max(MIN_SIDE, (fits - 2 * HALO) // ALIGN * ALIGN)


def tile_side(tile: str | int | None, height: int, width: int, device: torch.device) -> int | None:
    """The core side to tile an image of ``height`` x ``width`` with, or None not to tile.

    ``tile`` as :func:`parse_tile` takes it. An image that one tile would cover is not tiled: the
    result would be the same, at the cost of the extra passes.
    """
    tile = parse_tile(tile)
    if tile == "off":
        return None
    side = auto_tile_side(height, width, memory_budget(device)) if tile == "auto" else tile
    if side is None:
        return None
    padded_h, padded_w, _ = padded_size(height, width)
    return side if padded_h > side or padded_w > side else None


@contextlib.contextmanager
def tile_progress(console) -> Iterator[ProgressCallback]:
    """Two rich progress bars on a terminal (nothing otherwise): all passes, and the current one's
    tiles done out of all. Yields the callback for :func:`stylize_in_tiles`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]tiles"), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal,
    ) as bar:  # fmt: skip
        tasks = {}

        def update(number: int, count: int, what: str, done: int, total: int) -> None:
            if not tasks:
                tasks["all"], tasks["pass"] = bar.add_task("all passes"), bar.add_task("")
            if number == 1 and done == 1:  # a new image
                bar.reset(tasks["all"], total=count * total)
            bar.update(tasks["all"], completed=(number - 1) * total + done)
            bar.update(tasks["pass"], total=total, completed=done, description=f"pass {number}/{count}: {what}")

        yield update
