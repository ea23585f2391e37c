"""Normalisation layers and the one factory that maps a name to a layer.

The four normalisations compared by the project:

- ``bn``   BatchNorm2d: batch statistics in training, running statistics in eval.
- ``in``   InstanceNorm2d (affine), the usual choice for style transfer.
- ``se``   BatchNorm2d followed by a squeeze-and-excitation gate (Hu et al. 2018).
- ``iebn`` Instance Enhancement Batch Normalization (Liang et al., AAAI 2020).

IEBN keeps BN's batch statistics but rescales BN's gamma per instance and channel
with a sigmoid gate of the instance's own channel mean (taken before normalisation)::

    m[b,c]     = mean_{h,w} x[b,c]
    delta[b,c] = sigmoid(m[b,c] * gamma_hat[c] + beta_hat[c])     gamma_hat=0, beta_hat=-1 at init
    y[b,c]     = (x[b,c] - mu_B[c]) / sigma_B[c] * (gamma[c] * delta[b,c]) + beta[c]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import StyleTransferError
from .instance_ops import instance_moments, instance_scale_shift
from .syncbn import global_batch_stats, update_running_stats

__all__ = [
    "NORMS", "BatchNormSE", "IEBN2d", "InstanceNorm2d", "InstanceStatistics", "Norm", "SqueezeExcite",
    "convert_bn_to_iebn", "make_norm", "norm_label", "norm_spec",
]  # fmt: skip

SE_REDUCTION = 16
SE_MIN_HIDDEN = 8


class InstanceStatistics:
    """Mixin of the layers that use per-instance statistics of their input (IN, IEBN's gate, SE).

    They take their statistics from :meth:`moments`, which is ``instance_moments(x)`` unless
    ``moments_override`` is set: a callable ``x -> (mean, var)``, each (N, C) in fp32, used in
    their place. Tiling (:mod:`styletransfer.tiling`) sets it to hand every tile the statistics
    of the whole image; it is None otherwise, which costs one attribute read.
    """

    moments_override = None

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and biased variance over (H, W) of every (instance, channel), (N, C) each, fp32."""
        if self.moments_override is None:
            return instance_moments(x)
        return self.moments_override(x)


class IEBN2d(InstanceStatistics, nn.BatchNorm2d):
    """Instance Enhancement Batch Normalization, a drop-in for ``nn.BatchNorm2d``.

    BN without its own affine step is applied on batch statistics (training) or running
    statistics (eval); the affine step uses ``gamma * gate`` where ``gate`` depends on each
    instance's raw channel mean. The ablation knobs of the paper are options, not copies:

    - ``excite``: which affine parameter the gate rescales: ``"gamma"`` (IEBN), ``"beta"``
      or ``"both"``.
    - ``squeeze``: how the squeezed mean becomes the gate's input: ``"linear"`` (IEBN, one
      weight and bias per channel), ``"identity"`` (only a bias), or ``"fc"`` (an SE-like
      bottleneck across channels).
    - ``activation``: ``"sigmoid"`` (IEBN) or ``"tanh"``.
    """

    process_group = None  # set by syncbn.use_global_batch_statistics for distributed training

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        *,
        excite: str = "gamma",
        squeeze: str = "linear",
        activation: str = "sigmoid",
        reduction: int = SE_REDUCTION,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine=True, track_running_stats=True)
        if excite not in ("gamma", "beta", "both"):
            raise ValueError(f"excite must be gamma, beta or both, not {excite!r}")
        if squeeze not in ("linear", "identity", "fc"):
            raise ValueError(f"squeeze must be linear, identity or fc, not {squeeze!r}")
        if activation not in ("sigmoid", "tanh"):
            raise ValueError(f"activation must be sigmoid or tanh, not {activation!r}")
        self.excite, self.squeeze, self.activation = excite, squeeze, activation
        # The paper's two extra parameters per channel (gamma_hat, beta_hat).
        self.gate_weight = nn.Parameter(torch.zeros(num_features))
        self.gate_bias = nn.Parameter(torch.full((num_features,), -1.0))
        if squeeze == "identity":
            self.gate_weight.requires_grad_(False)
            self.gate_weight.data.fill_(1.0)
        self.gate_fc = None
        if squeeze == "fc":
            hidden = max(num_features // reduction, SE_MIN_HIDDEN)
            self.gate_fc = nn.Sequential(
                nn.Linear(num_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_features)
            )

    def gate(self, m: torch.Tensor) -> torch.Tensor:
        """The gate ``delta[b, c]`` from the per-instance channel means ``m[b, c]`` of the raw input."""
        if self.gate_fc is not None:
            m = self.gate_fc(m)
        z = m * self.gate_weight + self.gate_bias
        return torch.sigmoid(z) if self.activation == "sigmoid" else torch.tanh(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BN with the gate folded into one per-(instance, channel) scale and shift.

        ``x_hat * g + b`` with ``x_hat = (x - mean) / sqrt(var + eps)`` is computed as
        ``(x - mean) * s + t``: one reduction pass for the statistics and one fused
        multiply-add, both on native batch-norm kernels (see :mod:`styletransfer.instance_ops`).
        """
        self._check_input_dim(x)
        inst_mean, inst_var = self.moments(x)  # fp32, shape (N, C)
        if self.training:
            # The batch's statistics follow from the instances' by the law of total variance.
            mean = inst_mean.mean(0)
            var = inst_var.mean(0) + (inst_mean - mean).pow(2).mean(0)
            count = x.numel() // x.shape[1]
            if self.process_group is not None:  # distributed training: over the global batch
                mean, var, count = global_batch_stats(mean, var, count, self.process_group)
            update_running_stats(self, mean, var, count)
        else:
            mean, var = self.running_mean, self.running_var
        gate = self.gate(inst_mean)
        gamma, beta = self.weight.expand_as(gate), self.bias.expand_as(gate)
        if self.excite in ("gamma", "both"):
            gamma = gamma * gate
        if self.excite in ("beta", "both"):
            beta = beta * gate
        scale = gamma * torch.rsqrt(var + self.eps)
        return instance_scale_shift(x, scale, beta, mean.expand_as(scale))


    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, excite={self.excite}, squeeze={self.squeeze}, activation={self.activation}"


class InstanceNorm2d(InstanceStatistics, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` computed on the per-instance kernels of IEBN.

    Same parameters and results; faster in bf16 and channels_last, where torch's own
    instance norm first copies the input into a contiguous layout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unusual = self.track_running_stats or x.dim() != 4 or x.shape[1] != self.num_features
        if self.moments_override is None and (unusual or x.shape[2] * x.shape[3] < 2):
            return super().forward(x)  # torch's own layer, and its checks, for everything unusual
        mean, var = self.moments(x)
        scale = torch.rsqrt(var + self.eps)
        if not self.affine:
            return instance_scale_shift(x, scale, torch.zeros_like(scale), mean)
        return instance_scale_shift(x, scale * self.weight, self.bias.expand_as(scale), mean)


class SqueezeExcite(InstanceStatistics, nn.Module):
    """Squeeze-and-excitation: avg-pool, FC C->C/r, ReLU, FC C/r->C, sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(channels // reduction, SE_MIN_HIDDEN)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed, _ = self.moments(x)  # the channel means, on the same fast kernel as IEBN's
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(squeezed))))
        return instance_scale_shift(x, s, torch.zeros_like(s))


class BatchNormSE(nn.Sequential):
    """BN followed by an SE gate on its output (the paper's BN+SE)."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__(nn.BatchNorm2d(channels), SqueezeExcite(channels, reduction))


@dataclass(frozen=True)
class Norm:
    """One row of the norm table: everything the project knows about a normalisation."""

    name: str  # the --norm value, and the file name of a shipped model (<style>/<name>.safetensors)
    label: str  # shown in tables, grids, captions and plot legends
    build: Callable[..., nn.Module]  # build(channels, **options) -> layer for (B, C, H, W) input
    batch_statistics: bool  # normalises with the statistics of the batch (needs >= 2 images per batch)
    colour: str  # its colour in every loss-curve figure
    options: tuple[str, ...] = ()  # keyword options ``build`` takes (the paper's ablations)


# The four normalisations compared by the project, in the order they are shown everywhere.
# Adding a normalisation is adding a row.
NORMS: dict[str, Norm] = {norm.name: norm for norm in (
    Norm("bn", "BN", nn.BatchNorm2d, batch_statistics=True, colour="#d62728"),
    Norm("in", "IN", lambda channels: InstanceNorm2d(channels, affine=True), batch_statistics=False, colour="#1f77b4"),
    Norm("se", "BN+SE", BatchNormSE, batch_statistics=True, colour="#ff7f0e", options=("reduction",)),
    Norm("iebn", "IEBN", IEBN2d, batch_statistics=True, colour="#2ca02c",
         options=("excite", "squeeze", "activation", "reduction")),
)}  # fmt: skip


def norm_spec(name: str) -> Norm:
    """The table row of norm ``name``; an unknown name is a one-line StyleTransferError."""
    if name not in NORMS:
        raise StyleTransferError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")
    return NORMS[name]


def norm_label(name: str) -> str:
    """The display label of norm ``name`` (e.g. "BN+SE" for ``se``); unknown names as they are."""
    return NORMS[name].label if name in NORMS else name


def make_norm(name: str, channels: int, **options) -> nn.Module:
    """Build the normalisation layer called ``name`` for ``channels`` channels.

    ``options`` are the row's options (IEBN2d: ``excite``, ``squeeze``, ``activation``,
    ``reduction``; BN+SE: ``reduction``). Raises ValueError for an unknown norm or an
    option the norm does not take (a programming error: user input is checked by
    :func:`norm_spec` and the config first).
    """
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")
    norm = NORMS[name]
    unknown = sorted(set(options) - set(norm.options))
    if unknown:
        takes = f"it takes {', '.join(norm.options)}" if norm.options else "it takes none"
        raise ValueError(f"norm {name} has no option {', '.join(unknown)}; {takes}")
    return norm.build(channels, **options)


def convert_bn_to_iebn(module: nn.Module, **options) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` with an ``IEBN2d`` carrying over its state.

    Running statistics, ``eps``, ``momentum`` and the affine ``weight``/``bias`` are copied;
    the gate starts at its paper initialisation. Works like
    ``nn.SyncBatchNorm.convert_sync_batchnorm``: returns the converted module (a new one
    when ``module`` itself is a BatchNorm2d).
    """
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, IEBN2d):
        iebn = IEBN2d(module.num_features, module.eps, module.momentum, **options)
        with torch.no_grad():
            if module.affine:
                iebn.weight.copy_(module.weight)
                iebn.bias.copy_(module.bias)
            if module.track_running_stats:
                iebn.running_mean.copy_(module.running_mean)
                iebn.running_var.copy_(module.running_var)
                iebn.num_batches_tracked.copy_(module.num_batches_tracked)
        if module.running_mean is not None:
            iebn.to(module.running_mean.device)
        iebn.train(module.training)
        return iebn
    for name, child in module.named_children():
        module.add_module(name, convert_bn_to_iebn(child, **options))
    return module
