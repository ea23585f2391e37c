"""The transformation network of Johnson et al. (2016), as in pytorch/examples.

Reflection-padded convolutions, 9x9 32 -> 3x3/2 64 -> 3x3/2 128, five residual blocks of
128 channels, two nearest-upsample + conv stages and a 9x9 conv back to RGB. Two layers compute
the paper's function in a faster way: each upsampling and its conv run as one transposed conv
with 4/9 of the multiplications (:func:`upsample_conv`), and the last conv puts its kernel rows
on separate output channels (:class:`RowSplitConv2d`). Every norm layer comes from one
``norm_layer(channels)`` callable, built from the norm table by
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

__all__ = ["ReflectionPad2d", "RowSplitConv2d", "TransformerNet", "upsample_conv"]

NormLayer = Callable[[int], nn.Module]


class ReflectionPad2d(nn.ReflectionPad2d):
    """nn.ReflectionPad2d that keeps its input's dtype under CPU autocast.

    Padding copies values, exact in any dtype, but CPU autocast lists it among its fp32 ops: a
    bf16 activation would be written out in fp32 and cast back to bf16 by the next conv, twice
    the bytes and a copy more around every conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return super().forward(x)


class ConvNormReLU(nn.Sequential):
    """Reflection pad, conv, norm, and (unless ``relu=False``) ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm_layer: NormLayer, relu: bool = True):
        layers = [ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride), norm_layer(cout)]
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


def _nearest_taps(kernel: torch.Tensor) -> torch.Tensor:
    """A 3-tap kernel (last dim) on a 2x nearest-upsampled signal as the 4-tap kernel of a stride-2
    transposed conv on the signal itself: ``[w2, w1 + w2, w0 + w1, w0]``."""
    w0, w1, w2 = kernel.unbind(-1)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], -1)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """2x nearest-neighbour upsampling, reflection padding of 1 and a 3x3 conv, in one op.

    ``x`` (B, Cin, H, W); ``weight`` (Cout, Cin, 3, 3) and ``bias`` (Cout,) of the 3x3 conv;
    returns (B, Cout, 2H, 2W), equal to the three steps up to rounding (``tests/test_network.py``).

    Each output pixel of the upsampled conv sees only 2x2 distinct input pixels, so it is a
    stride-2 transposed conv with 4x4 kernels made of sums of the 3x3 weights: 16 multiply-adds
    per input pixel and channel pair instead of 36, and no 4x larger upsampled copy. The
    reflection padding of the upsampled image equals a replication padding of 1 of the input.
    """
    rows = _nearest_taps(weight.transpose(-1, -2)).transpose(-1, -2)  # (Cout, Cin, 4, 3)
    kernel = _nearest_taps(rows)  # (Cout, Cin, 4, 4)
    return F.conv_transpose2d(_replicate_border(x), kernel.transpose(0, 1), bias, stride=2, padding=3)


def _replicate_border(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its first and last rows and columns repeated once: F.pad's "replicate" mode of 1.
    While torch.compile traces with gradients it is written as concatenations instead, because
    inductor's backward of replication padding fails on channels_last input (wrong strides in torch
    2.14); elsewhere F.pad, one kernel, took half the time of the concatenations."""
    if not (torch.compiler.is_compiling() and torch.is_grad_enabled()):
        with torch.autocast("cpu", enabled=False):  # in x's dtype, as ReflectionPad2d (CPU autocast pads in fp32)
            return F.pad(x, (1, 1, 1, 1), mode="replicate")
    x = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
    return torch.cat([x[:, :, :, :1], x, x[:, :, :, -1:]], dim=3)


class Upsample(nn.Sequential):
    """Nearest-neighbour upsampling then a conv: avoids the checkerboard of transposed convs.

    The layers read as the paper's; ``forward`` runs the upsampling, padding and conv as one
    transposed conv of the same function (:func:`upsample_conv`), then the norm and ReLU.
    """

    def __init__(self, cin: int, cout: int, norm_layer: NormLayer) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvNormReLU(cin, cout, 3, 1, norm_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _upsample, (_pad, conv, *norm_relu) = self
        x = upsample_conv(x, conv.weight, conv.bias)
        for layer in norm_relu:
            x = layer(x)
        return x


class RowSplitConv2d(nn.Conv2d):
    """A stride-1, unpadded conv with few output channels (the 9x9 conv back to RGB), computed as
    a 1 x k conv with one output channel per (kernel row, output channel), then a k x 1 conv of
    zeros and ones that sums each output channel's rows, shifted into place.

    Nearly the same multiply-adds: CPU conv kernels vectorise over output channels, so 3 of them
    leave most lanes idle (about 75 GFLOP/s against over 400 for wide convs in bf16 on an AMD
    EPYC); the 27 of the row conv run about 2.4x faster, and the summing conv costs a fifth of
    that. Input (B, Cin, H, W); output (B, Cout, H - k + 1, W - k + 1). Weights and state dict as
    nn.Conv2d's. Off the CPU it runs as the plain conv.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        if stride != 1:
            raise ValueError(f"RowSplitConv2d takes stride 1, not {stride}")
        super().__init__(cin, cout, kernel)
        # row_sum[o, r * cout + o, r, 0] = 1: output o adds its row r's partial result, r rows down
        row_sum = torch.zeros(cout, kernel * cout, kernel, 1)
        for row in range(kernel):
            row_sum[range(cout), [row * cout + o for o in range(cout)], row, 0] = 1
        self.register_buffer("row_sum", row_sum, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # the lane argument is the CPU's; elsewhere the plain conv
            return super().forward(x)
        cout, cin, rows, cols = self.weight.shape
        per_row = self.weight.permute(2, 0, 1, 3).reshape(rows * cout, cin, 1, cols)  # (row, cout) pairs
        partial = self._conv_forward(x, per_row, None)
        return self._conv_forward(partial, self.row_sum.to(partial.dtype), self.bias)


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
            ReflectionPad2d(4),
            RowSplitConv2d(32, 3, 9, 1),
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
