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
from torch import nn

__all__ = ["GlobalBatchNorm2d", "global_batch_stats", "update_running_stats", "use_global_batch_statistics"]


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


def global_batch_stats(
    mean: torch.Tensor, var: torch.Tensor, count: int, group
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The per-channel mean and biased variance of the global batch, from each process's own.

    ``mean`` and ``var`` are this process's batch statistics over ``count`` elements per
    channel. Each process puts (count, mean, count * var) in its own row and one all_reduce
    shares the rows; combining them (Chan et al.) is exact for any counts and, unlike a sum
    of squares, does not cancel. Gradients flow back to every process's input. The count
    returned assumes every process holds a batch of the same shape, as in DDP training; it
    only serves the N / (N - 1) of the running variance.
    """
    own = torch.stack([torch.full_like(mean, count, dtype=torch.float64), mean.double(), var.double() * count])
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    rows = torch.stack([own if r == rank else torch.zeros_like(own) for r in range(world)])
    counts, means, m2s = _AllReduceSum.apply(rows, group).unbind(1)
    total = counts.sum(0)
    global_mean = (counts * means).sum(0) / total
    global_var = (m2s.sum(0) + (counts * (means - global_mean).square()).sum(0)) / total
    return global_mean.to(mean.dtype), global_var.to(var.dtype), count * world


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
        var, mean = torch.var_mean(x.to(torch.promote_types(x.dtype, torch.float32)), (0, 2, 3), correction=0)
        mean, var, count = global_batch_stats(mean, var, x.numel() // x.shape[1], self.process_group)
        if self.track_running_stats:
            update_running_stats(self, mean, var, count)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        # Centre first: the gradient then needs sum(grad * (x - mean)), not a cancelling difference.
        y = (x.to(mean.dtype) - mean[:, None, None]) * scale[:, None, None]
        return (y + self.bias[:, None, None] if self.affine else y).to(x.dtype)


@torch.no_grad()
def update_running_stats(layer: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Fold a batch's per-channel ``mean`` and biased ``var`` (shape (C,), over ``count`` values
    per channel) into ``layer``'s running statistics, by nn.BatchNorm2d's rule: momentum None is a
    cumulative average, and the running variance is the unbiased one."""
    layer.num_batches_tracked.add_(1)
    factor = 1.0 / float(layer.num_batches_tracked) if layer.momentum is None else layer.momentum
    layer.running_mean.lerp_(mean.to(layer.running_mean.dtype), factor)
    layer.running_var.lerp_((var * count / max(count - 1, 1)).to(layer.running_var.dtype), factor)


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
