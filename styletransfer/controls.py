"""The stylisation controls: strength, preserve colour, stroke scale and grain.

One :class:`Controls` value carries all four, checked once when it is made; the command line
(``stylize``, ``compare``), the Python API (:meth:`styletransfer.stylize.Stylizer.stylize`) and the
web demo all build one and hand it to :func:`apply_controls`, which wraps the network:

1. **stroke scale** S: the photo is resized by 1/S before the network and its output back to the
   photo's size, so the network's strokes, a fixed number of its own pixels wide, come out S times
   as wide (S > 1: bigger strokes, S < 1: finer ones) at the same output size;
2. **preserve colour**: the stylisation's luminance with the photo's chrominance (Gatys, Bethge,
   Hertzmann & Shechtman 2016, "Preserving Color in Neural Artistic Style Transfer", luminance-only
   transfer), see :func:`keep_photo_colours`;
3. **strength** a in [0, 1]: ``a * stylised + (1 - a) * photo``, see :func:`blend`.

**Grain** (noise the network sees, :mod:`styletransfer.grain`) is added by the stylizer itself,
to the network's input (after the stroke scale's resize), so that tiles get the whole image's grain.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F

from .errors import StyleTransferError
from .grain import STYLISE_GRAIN, check_grain

__all__ = [
    "Controls", "RGB_FROM_YIQ", "STROKE_SCALE_MAX", "STROKE_SCALE_MIN", "YIQ_FROM_RGB", "apply_controls", "blend",
    "keep_photo_colours", "match_mean_std", "network_size", "resize_to",
]  # fmt: skip

# Measured on the shipped models (docs/controls.md, benchmarks/stroke_scale.py): below 0.5 their
# strokes are at the pixel grid and only the cost (1/S²) grows; above 3 the network sees too small
# a photo (at a 512-px output, under 171 px) and the result is a blur.
STROKE_SCALE_MIN, STROKE_SCALE_MAX = 0.5, 3.0

# RGB -> YIQ (NTSC 1953, as in Gatys et al. 2016's luminance-only transfer). Y is the BT.601 luma.
YIQ_FROM_RGB = torch.tensor([
    [0.299, 0.587, 0.114],
    [0.595716, -0.274453, -0.321263],
    [0.211456, -0.522591, 0.311135],
])  # fmt: skip
RGB_FROM_YIQ = torch.linalg.inv(YIQ_FROM_RGB)


@dataclass(frozen=True)
class Controls:
    """How to stylise, beyond the model: checked when made.

    ``strength``: 0 (the photo back) to 1 (the network's output), a linear blend (:func:`blend`).
    ``preserve_color``: keep the photo's colours, take only the luminance of the stylisation.
    ``stroke_scale``: :data:`STROKE_SCALE_MIN` to :data:`STROKE_SCALE_MAX`; 2 gives strokes twice as wide.
    ``grain``: 0 to :data:`~styletransfer.grain.GRAIN_MAX` 8-bit steps of noise added to the photo
    the network sees where it is textured, more where it is flat (:func:`~styletransfer.grain.add_grain`).
    Raises StyleTransferError, one line naming the option, for a value that is not a finite
    number in range (or not a bool, for ``preserve_color``).
    """

    strength: float = 1.0
    preserve_color: bool = False
    stroke_scale: float = 1.0
    grain: float = STYLISE_GRAIN

    def __post_init__(self) -> None:
        _check_in_range("--strength", self.strength, 0.0, 1.0)
        if not isinstance(self.preserve_color, bool):
            raise StyleTransferError(f"--preserve-color must be true or false, not {self.preserve_color!r}")
        _check_in_range("--stroke-scale", self.stroke_scale, STROKE_SCALE_MIN, STROKE_SCALE_MAX)
        object.__setattr__(self, "strength", float(self.strength))
        object.__setattr__(self, "stroke_scale", float(self.stroke_scale))
        object.__setattr__(self, "grain", check_grain(self.grain))

    @property
    def plain(self) -> bool:
        """Whether the output is the network's own (strength 1, its colours, stroke scale 1), grain aside."""
        return (self.strength, self.preserve_color, self.stroke_scale) == (1.0, False, 1.0)

    def as_dict(self) -> dict:
        """``{"strength": ..., "preserve_color": ..., "stroke_scale": ..., "grain": ...}``, e.g. for a JSON record."""
        return asdict(self)


def _check_in_range(option: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StyleTransferError(f"{option} must be a finite number, not {value!r}")
    if not low <= value <= high:
        raise StyleTransferError(f"{option} must be between {low:g} and {high:g}, not {value:g}")


def apply_controls(network: Callable[[torch.Tensor], torch.Tensor], photo: torch.Tensor, controls: Controls) -> torch.Tensor:
    """``network`` applied to ``photo`` under ``controls``.

    ``network``: maps (B, 3, h, w) in [0, 1] to the same shape in [0, 1], any h, w >= 1.
    ``photo``: (B, 3, H, W) float in [0, 1], on the network's device. Returns (B, 3, H, W)
    float32 in [0, 1]. With the default controls this is exactly ``network(photo)``; with
    strength 0 it is ``photo`` itself and the network is not run.
    """
    if controls.strength == 0:
        return photo.float().clone()
    size = photo.shape[-2:]
    small = network_size(size, controls.stroke_scale)
    stylised = network(photo if small == size else resize_to(photo, small))
    if small != size:
        stylised = resize_to(stylised, size)
    if controls.preserve_color:
        stylised = keep_photo_colours(stylised, photo)
    return blend(stylised, photo, controls.strength)


class Controlled:
    """``stylizer`` seen through ``controls``: its ``stylize_tensor`` applies them, for code that
    only calls ``stylize_tensor`` (video frames). ``stylizer``: a
    :class:`~styletransfer.stylize.Stylizer` or anything with ``stylize_tensor`` (and, if not on
    the CPU, ``device``)."""

    def __init__(self, stylizer, controls: Controls) -> None:
        self.stylizer, self.controls = stylizer, controls

    def stylize_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] to (B, 3, H, W) float32 in [0, 1], on the stylizer's device."""
        photo = images.to(getattr(self.stylizer, "device", "cpu"))
        network = partial(self.stylizer.stylize_tensor, grain=self.controls.grain)
        return apply_controls(network, photo, self.controls)


def network_size(size: tuple[int, int], stroke_scale: float) -> tuple[int, int]:
    """(H, W) the network runs at for an output of ``size`` (H, W): each side divided by
    ``stroke_scale`` and rounded, at least 1 pixel; ``size`` itself for a scale of 1."""
    if stroke_scale == 1:
        return tuple(size)
    return tuple(max(1, round(side / stroke_scale)) for side in size)


def resize_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, h, w) in [0, 1] resized to (B, 3, H, W), ``size`` = (H, W): bicubic, antialiased when
    shrinking (as Pillow's filters are), in float32, clipped back to [0, 1]."""
    out = F.interpolate(images.float(), size=tuple(size), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(0, 1)


def blend(stylised: torch.Tensor, photo: torch.Tensor, strength: float) -> torch.Tensor:
    """``strength * stylised + (1 - strength) * photo``, per pixel and RGB channel, in float32.

    A linear blend of the sRGB values, as an image editor's layer opacity mixes two layers: the
    values the network was trained on and outputs, and exact at both ends (``torch.lerp``):
    strength 1 is ``stylised`` and 0 is ``photo``. Both (B, 3, H, W) in [0, 1]; strength in [0, 1].
    """
    if strength == 1:
        return stylised.float()
    return torch.lerp(photo.float(), stylised.float(), strength)


def keep_photo_colours(stylised: torch.Tensor, photo: torch.Tensor, match_luminance: bool = True) -> torch.Tensor:
    """The stylisation's luminance Y with the photo's chrominance I, Q (YIQ, Gatys et al. 2016, sec. 2).

    Both (B, 3, H, W) in [0, 1], same size; returns the same, clipped to [0, 1]. With
    ``match_luminance`` (the default) the stylisation's Y is first shifted and scaled to the mean
    and standard deviation of the photo's Y, per image (:func:`match_mean_std`): the paper matches
    the luminance histograms in the same way (before its optimisation, which a trained network
    cannot redo), so the result keeps the photo's brightness and contrast, with the style's
    strokes and texture. Y is the BT.601 luma, so YCbCr would give the same result: both spaces
    have this Y and chroma axes that are combinations of B - Y and R - Y.
    """
    to_yiq = YIQ_FROM_RGB.to(photo.device)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, photo.float())
    luma = torch.einsum("j,bjhw->bhw", to_yiq[0], stylised.float())
    yiq[:, 0] = match_mean_std(luma, yiq[:, 0]) if match_luminance else luma
    return torch.einsum("ij,bjhw->bihw", RGB_FROM_YIQ.to(photo.device), yiq).clamp_(0, 1)


def match_mean_std(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``values`` (B, ...) shifted and scaled per image to the mean and standard deviation of
    ``reference`` (same shape): ``(v - mean_v) / std_v * std_r + mean_r`` (Gatys et al. 2016,
    eq. 1); a flat ``values`` (std 0) just takes the reference's mean."""
    dims = tuple(range(1, values.dim()))
    std_v, mean_v = torch.std_mean(values, dim=dims, keepdim=True, correction=0)
    std_r, mean_r = torch.std_mean(reference, dim=dims, keepdim=True, correction=0)
    gain = torch.where(std_v > 1e-6, std_r / std_v.clamp_min(1e-6), torch.zeros_like(std_v))
    return (values - mean_v) * gain + mean_r
