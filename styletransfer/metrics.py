"""Quality measures that are not the training loss: content and style distance (Gatys et al. 2016).

Both are relative squared errors of VGG19 features, so they are scale free: 0 means equal.
"""

from __future__ import annotations

import math

import torch

from .loss import gram_matrix

__all__ = [
    "BLOTCH_DETAIL", "BLOTCH_WINDOW", "CONTENT_DISTANCE_LAYER", "METRIC_VGG", "STYLE_DISTANCE_LAYERS", "blotch_area", "blotch_window",
    "box_mean", "content_distance", "fine_detail", "mean_and_stderr", "quantise",
    "relative_error", "style_distance",
]  # fmt: skip

METRIC_VGG = "vgg19"
CONTENT_DISTANCE_LAYER = "relu4_2"
STYLE_DISTANCE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# A blotch is a patch with no strokes: its fine detail (luminance minus its 5x5 local mean) has an
# RMS below BLOTCH_DETAIL (on a 0-1 scale) over a whole BLOTCH_WINDOW-pixel square.
BLOTCH_WINDOW = 31
BLOTCH_DETAIL = 0.01
BLOTCH_WINDOW_AT = 512  # the long side (pixels) at which the window is BLOTCH_WINDOW


def relative_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image ``||x - target||^2 / ||target||^2``, the squared Frobenius norms over all but dim 0.

    ``x`` and ``target``: (B, ...) of the same shape, any scale. Returns (B,) float32 values
    >= 0: 0 when equal, 1 when ``x`` is 0 or twice ``target``. A zero target counts as 1e-12.
    """
    x, target = x.float().flatten(1), target.float().flatten(1)
    return (x - target).pow(2).sum(1) / target.pow(2).sum(1).clamp_min(1e-12)


def content_distance(output_features: torch.Tensor, photo_features: torch.Tensor) -> torch.Tensor:
    """Content distance: ``||F(out) - F(photo)||^2 / ||F(photo)||^2`` per image.

    F is VGG19's relu4_2 activation, shape (B, 512, H/8, W/8) for both arguments: the content
    layer of Gatys et al. 2016 ("Image Style Transfer Using Convolutional Neural Networks",
    Eq. 1), here divided by the photo's own energy so the value is scale free. Returns (B,)
    values >= 0; 0 for the photo itself, about 1 or more for an image that keeps nothing of
    it (an unrelated photo scores about 1.4 with ImageNet weights).
    """
    return relative_error(output_features, photo_features)


def style_distance(output_features: dict[str, torch.Tensor], style_grams: dict[str, torch.Tensor]) -> torch.Tensor:
    """Style distance: ``mean over l of ||G_l(out) - G_l(style)||^2 / ||G_l(style)||^2`` per image.

    ``output_features``: VGG19 activations (B, C_l, H_l, W_l) at each layer l of
    :data:`STYLE_DISTANCE_LAYERS` (relu1_1 ... relu5_1 with equal weights, as in Gatys et al.
    2016, Eq. 3-5, whose per-layer normalisation 1/(4 N^2 M^2) is replaced here by the style
    Gram's own energy, so the value is scale free). ``style_grams``: the style image's Gram matrices
    (1, C_l, C_l) at the same layers, from :func:`gram_matrix` (normalised by C*H*W, so the
    image sizes need not match). Returns (B,) values >= 0; 0 when the Grams are equal.
    """
    per_layer = [
        relative_error(gram_matrix(output_features[n]), style_grams[n].expand(output_features[n].shape[0], -1, -1))
        for n in STYLE_DISTANCE_LAYERS
    ]
    return torch.stack(per_layer).mean(0)


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as they would be saved: clamped and rounded to 8 bits (same shape)."""
    return images.clamp(0, 1).mul(255).round().div(255)


def mean_and_stderr(values: list[float | None]) -> dict[str, float | None]:
    """Mean and standard error of the mean (sample sd / sqrt(n)); None where undefined.

    Summed with :func:`math.fsum` (exactly rounded), so the result does not depend on order.
    """
    if not values or any(v is None for v in values):
        return {"mean": None, "stderr": None}
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return {"mean": mean, "stderr": None}
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return {"mean": mean, "stderr": math.sqrt(var / n)}


def fine_detail(images: torch.Tensor, window: int = BLOTCH_WINDOW) -> torch.Tensor:
    """How much fine detail surrounds each pixel: the RMS of the luminance's fine detail (the
    luminance minus its 5x5 mean) over the ``window`` x ``window`` square around it (in pixels,
    odd). ``images``: (B, 3, H, W) RGB in [0, 1]; returns (B, 1, H, W) values in [0, 1] (about
    0.01 for the faintest strokes, 0 for a flat or smoothly shaded patch). Raises ValueError for
    an even or non-positive ``window``."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd number of pixels, not {window}")
    r, g, b = images.float().unbind(1)
    luminance = (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)  # ITU-R BT.601 luma
    fine = luminance - box_mean(luminance, 5)
    return box_mean(fine.pow(2), window).sqrt()


def box_mean(images: torch.Tensor, window: int) -> torch.Tensor:
    """The mean of (B, C, H, W) ``images`` over the ``window`` x ``window`` square (odd, pixels)
    around each pixel, the part inside the image only; same shape and dtype. Separable (a column
    pass, then a row pass), each a difference of running sums, so the cost does not grow with the
    window (avg_pool2d's does: over 31 pixels it took 3x as long)."""
    # Running sums run fast along memory only: the column pass runs on the transposed image.
    columns = _box_sums(images.transpose(-1, -2).to(torch.float64, memory_format=torch.contiguous_format), window)
    sums = _box_sums(columns.transpose(-1, -2).contiguous(), window)
    height, width = images.shape[-2:]
    counts = _box_counts(height, window)[:, None] * _box_counts(width, window)[None, :]
    return sums.div_(counts.to(images.device)).to(images.dtype)


def _box_sums(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sums of ``x`` over the ``window`` values centred on each along its last dim, inside only.
    Float64 running sums: in float32, sums over thousands of pixels would lose the fine detail."""
    r, n = window // 2, x.shape[-1]
    running = x.cumsum(-1)  # running[k]: the sum of values 0..k
    sums = torch.empty_like(running)
    sums[..., : max(n - r, 0)] = running[..., r:]  # the sum up to the window's last value ...
    sums[..., max(n - r, 0) :] = running[..., -1:]  # ... or the row's, near its end
    sums[..., r + 1 :] -= running[..., : max(n - r - 1, 0)]  # less the sum before the window's first
    return sums


def _box_counts(n: int, window: int) -> torch.Tensor:
    """How many of the ``window`` positions centred on each of ``n`` positions lie inside: (n,)."""
    i, r = torch.arange(n, dtype=torch.float64), window // 2
    return (i + r + 1).clamp(max=n) - (i - r).clamp(min=0)


def blotch_area(images: torch.Tensor, window: int = BLOTCH_WINDOW, detail: float = BLOTCH_DETAIL) -> torch.Tensor:
    """Fraction of each image covered by blotches: patches without brush strokes or texture.

    ``images``: (B, 3, H, W) RGB in [0, 1]. A pixel is in a blotch when its :func:`fine_detail`
    over the ``window`` x ``window`` square around it is below ``detail``. A painted stroke, a
    photo's texture or noise all count as detail; a flat or smoothly shaded patch does not.
    Returns (B,) values in [0, 1]: 0 for an image textured everywhere, 1 for a flat or smoothly
    graded one. The value depends on the image size (a window is a fixed number of pixels), so
    compare images of one size. Raises ValueError for an even or non-positive ``window``.
    """
    return (fine_detail(images, window) < detail).float().mean((1, 2, 3))


def blotch_window(long_side: int) -> int:
    """The blotch window for an image of ``long_side`` pixels: BLOTCH_WINDOW (31) at 512, scaled
    with the image so the same part of a photo is judged at every size; odd, at least 3."""
    return max(3, round(BLOTCH_WINDOW * long_side / BLOTCH_WINDOW_AT) | 1)
