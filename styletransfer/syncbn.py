"""Batch statistics over the global batch of several processes (distributed training).

With DistributedDataParallel each process sees only its own slice of the batch, so BN,
BN+SE and IEBN would normalise with statistics of that slice, and their "batch noise"
would change with the number of processes. :func:`use_global_batch_statistics` makes
their statistics span the whole batch instead, keeping every parameter and buffer name,
so checkpoints trained with and without it are interchangeable. IEBN's gate still
looks at each instance alone.

``nn.SyncBatchNorm`` is not used: its conversion would turn IEBN2d into a plain
SyncBatchNorm (losing the gate), and it refuses tensors on the CPU.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient is summed back the same way."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllReduceSum.apply(grad, ctx.group), None


def global_batch_stats(x: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean, biased variance and element count of ``x`` over every process's batch.

    Each process puts its (count, mean, sum of squared deviations) in its own row and one
    all_reduce shares the rows; combining them (Chan et al.) is exact and, unlike a sum of
    squares, does not cancel. Gradients flow back to every process's input.
    """
    dims = [0, *range(2, x.dim())]
    x = x.float()
    count = x.numel() // x.shape[1]
    mean = x.mean(dims)
    m2 = (x - mean.view(1, -1, *[1] * (x.dim() - 2))).square().sum(dims)
    own = torch.stack([torch.full_like(mean, count, dtype=torch.float64), mean.double(), m2.double()])
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    rows = torch.stack([own if r == rank else torch.zeros_like(own) for r in range(world)])
    counts, means, m2s = _AllReduceSum.apply(rows, group).unbind(1)
    total = counts.sum(0)
    global_mean = (counts * means).sum(0) / total
    global_var = (m2s.sum(0) + (counts * (means - global_mean).square()).sum(0)) / total
    return global_mean.float(), global_var.float(), total.float()


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    process_group=None,
) -> torch.Tensor:
    """``F.batch_norm``, with training statistics over every process of ``process_group`` when given."""
    if process_group is None or not training:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    mean, var, count = global_batch_stats(x, process_group)
    if running_mean is not None:
        with torch.no_grad():  # the running variance is unbiased, as in F.batch_norm
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * count / (count - 1).clamp_min(1)).to(running_var.dtype), momentum)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = (1, -1, *[1] * (x.dim() - 2))
    return (x.float() * scale.view(shape) + shift.view(shape)).to(x.dtype)


def update_factor(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """The running-statistics momentum of a training step, counting the step (as nn.BatchNorm2d does)."""
    if bn.num_batches_tracked is None:
        return 0.0 if bn.momentum is None else bn.momentum
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics span the batches of a process group.

    Same parameters and buffers as ``nn.BatchNorm2d``; in eval mode, or without a group,
    it is exactly ``nn.BatchNorm2d``.
    """

    process_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.process_group is None:
            return super().forward(x)
        self._check_input_dim(x)
        momentum = update_factor(self) if self.track_running_stats else 0.0
        return batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps, self.process_group
        )


def use_global_batch_statistics(module: nn.Module, process_group) -> nn.Module:
    """Make every BatchNorm2d in ``module`` (IEBN2d included) normalise over the global batch.

    Plain ``nn.BatchNorm2d`` layers become :class:`GlobalBatchNorm2d` with the same state;
    layers that already take a ``process_group`` (IEBN2d) are given it. Call it before
    building the optimiser: replaced layers get new parameter objects. Returns the
    converted module (a new one when ``module`` itself is a plain BatchNorm2d).
    """
    if type(module) is nn.BatchNorm2d:
        converted = GlobalBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        converted.load_state_dict(module.state_dict())
        tensors = [*module.parameters(), *module.buffers()]
        if tensors:
            converted.to(tensors[0].device)
        converted.train(module.training)
        module = converted
    if isinstance(module, nn.BatchNorm2d) and hasattr(module, "process_group"):
        module.process_group = process_group
        return module
    for name, child in module.named_children():
        module.add_module(name, use_global_batch_statistics(child, process_group))
    return module
