"""The transformation network of Johnson et al. (2016), as in pytorch/examples.

Reflection-padded convolutions, 9x9 32 -> 3x3/2 64 -> 3x3/2 128, five residual blocks of
128 channels, two nearest-upsample + conv stages and a 9x9 conv back to RGB. Every norm
layer comes from one ``norm_layer(channels)`` callable, built from the norm table by
:func:`styletransfer.norms.make_norm`, so one ``norm`` argument switches the whole network
between BN, IN, BN+SE and IEBN.

Images go in and come out in [0, 1]. Any height and width work: the input is padded to a
multiple of 4 (the two stride-2 stages), at least 16, by reflection (by replication when the
image is too small to reflect that far), and the output cropped back.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .norms import make_norm

__all__ = ["TransformerNet"]

NormLayer = Callable[[int], nn.Module]


class ConvNormReLU(nn.Sequential):
    """Reflection pad, conv, norm, and (unless ``relu=False``) ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm_layer: NormLayer, relu: bool = True):
        layers = [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride), norm_layer(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """conv-norm-relu-conv-norm plus the identity (He et al. 2016, as Johnson used it)."""

    def __init__(self, channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormReLU(channels, channels, 3, 1, norm_layer),
            ConvNormReLU(channels, channels, 3, 1, norm_layer, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Sequential):
    """Nearest-neighbour upsampling then a conv: avoids the checkerboard of transposed convs."""

    def __init__(self, cin: int, cout: int, norm_layer: NormLayer) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvNormReLU(cin, cout, 3, 1, norm_layer))


class TransformerNet(nn.Module):
    """Feed-forward style transfer network.

    ``norm`` is a name of the norm table (bn, in, se, iebn) and ``norm_options`` that norm's
    options (see :func:`styletransfer.norms.make_norm`, which raises ValueError for unknown
    ones). Input and output: (B, 3, H, W) in [0, 1], any H and W >= 1.
    """

    def __init__(self, norm: str = "in", norm_options: dict | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.norm_options = dict(norm_options or {})
        norm_layer = partial(make_norm, norm, **self.norm_options)
        self.encoder = nn.Sequential(
            ConvNormReLU(3, 32, 9, 1, norm_layer),
            ConvNormReLU(32, 64, 3, 2, norm_layer),
            ConvNormReLU(64, 128, 3, 2, norm_layer),
        )
        self.residuals = nn.Sequential(*[ResidualBlock(128, norm_layer) for _ in range(5)])
        self.decoder = nn.Sequential(
            Upsample(128, 64, norm_layer),
            Upsample(64, 32, norm_layer),
            nn.ReflectionPad2d(4),
            nn.Conv2d(32, 3, 9, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # A multiple of 4, and at least 16 so the 9x9 reflection padding has room.
        pad_h, pad_w = max(16, h + -h % 4) - h, max(16, w + -w % 4) - w
        if pad_h or pad_w:
            # Reflection needs the pad to be smaller than the side; fall back to replicate.
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        y = self.decoder(self.residuals(self.encoder(x)))
        # A bounded output like Johnson's scaled tanh, here directly in [0, 1].
        return torch.sigmoid(y[..., :h, :w])
