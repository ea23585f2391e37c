"""Per-instance statistics and scale-shift on torch's native batch-norm kernels.

IEBN needs, for every (instance, channel) pair, the mean and variance of the input and a
multiply-add ``y = x * scale + shift``; so do instance norm and the SE gate. Written with
``torch.var_mean`` and broadcasting, those are generic kernels, and in bf16 they are an order of
magnitude slower than BN's own. But a batch-norm kernel whose "channels" are the (instance, channel) pairs computes exactly these
per-instance quantities, in fp32 and in one pass:

- ``torch.batch_norm_update_stats`` gives mean and biased variance;
- ``torch.native_batch_norm`` in eval mode, with running mean ``c``, running variance 1 and
  eps 0, gives ``(x - c) * weight + bias``;
- ``native_batch_norm_backward`` in eval mode gives ``sum(g)`` and ``sum(g * (x - c))``.

A contiguous (N, C, H, W) tensor is viewed as (1, N*C, H, W); a channels_last one is taken an
instance at a time, each slice already being one contiguous channels_last image. The two
autograd functions below keep the big tensors on these kernels in both directions; the small
(N, C) tensors in between go through ordinary autograd.

That is the CPU's route. On CUDA (and any other device) the same quantities come from plain
torch ops (``torch.var_mean`` and broadcasting), which are faster there; see
``NATIVE_KERNEL_DEVICES``.
"""

from __future__ import annotations

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

__all__ = ["instance_moments", "instance_scale_shift", "use_native_kernels"]


def _param_dtype(x: torch.Tensor) -> torch.dtype:
    """The kernels take fp32 statistics and affine parameters for fp32, bf16 and fp16 input."""
    return torch.promote_types(x.dtype, torch.float32)


def _instances(x: torch.Tensor) -> list[torch.Tensor]:
    """Views of ``x`` whose channels are its (instance, channel) pairs, in order."""
    n, c, h, w = x.shape
    if x.is_contiguous():
        return [x.view(1, n * c, h, w)]
    return [x[i : i + 1] for i in range(n)]


def _layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a layout that :func:`_instances` can slice without copying."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of every (instance, channel), shape (N, C), in fp32."""
    parts = _instances(x)
    # Scratch running statistics in fp32: with them the kernel also returns fp32 for bf16 input.
    scratch = torch.empty(parts[0].shape[1], dtype=_param_dtype(x), device=x.device)
    stats = [torch.batch_norm_update_stats(part, scratch, scratch.clone(), 1.0) for part in parts]
    mean = torch.cat([m for m, _ in stats]).view(x.shape[:2])
    var = torch.cat([v for _, v in stats]).view(x.shape[:2])
    return mean, var


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``(x - centre) * weight + bias`` with (N, C) parameters, in x's dtype and layout."""
    dtype = _param_dtype(x)
    weight, bias, centre = (t.to(dtype).reshape(-1) for t in (weight, bias, centre))
    ones = torch.ones_like(weight)
    out = torch.empty_like(x)
    parts = _instances(x)
    size = weight.numel() // len(parts)
    unused = [torch.empty(0, dtype=dtype, device=x.device) for _ in range(2)]  # the kernel's saved statistics
    for i, (part, out_part) in enumerate(zip(parts, _instances(out))):
        own = slice(i * size, (i + 1) * size)
        torch.native_batch_norm(
            part, weight[own], bias[own], centre[own], ones[own], False, 0.0, 0.0, out=(out_part, *unused)
        )
    return out


def _sums(grad: torch.Tensor, x: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum(grad)`` and ``sum(grad * (x - centre))`` over (H, W), shape (N, C), in fp32."""
    dtype = _param_dtype(x)
    centre = centre.to(dtype).reshape(-1)
    ones = torch.ones_like(centre)
    # Empty saved statistics mean "use the running ones" (CUDA insists on defined tensors), and an
    # fp32 weight selects the mixed-precision kernel for bf16 input; it is 1, so it changes nothing.
    unused = torch.empty(0, dtype=dtype, device=x.device)
    size = centre.numel() // len(_instances(x))
    dots, totals = [], []
    for i, (g, part) in enumerate(zip(_instances(grad), _instances(x))):
        own = slice(i * size, (i + 1) * size)
        _, dot, total = torch.ops.aten.native_batch_norm_backward(
            g, part, ones[own], centre[own], ones[own], unused, unused, False, 0.0, [False, True, True]
        )
        dots.append(dot)
        totals.append(total)
    return torch.cat(totals).view(x.shape[:2]), torch.cat(dots).view(x.shape[:2])


class InstanceMoments(Function):
    """(N, C, H, W) -> per-(instance, channel) mean and biased variance, both (N, C)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        x = _layout(x)
        mean, var = _moments(x)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    @once_differentiable  # the kernels' own backward is not differentiated again
    def backward(ctx, grad_mean: torch.Tensor | None, grad_var: torch.Tensor | None):
        x, mean = ctx.saved_tensors
        count = x.shape[2] * x.shape[3]
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
        # d mean / dx = 1 / count; d var / dx = 2 (x - mean) / count
        return _affine(x, 2 * grad_var / count, grad_mean / count, mean)


class InstanceScaleShift(Function):
    """``y = (x - centre[n, c]) * scale[n, c] + shift[n, c]`` for (N, C) parameters.

    Centring first (with the mean that is subtracted anyway) keeps the scale's gradient
    ``sum(g * (x - centre))`` free of the cancellation that ``sum(g * x) - centre * sum(g)`` has.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, centre: torch.Tensor):
        x = _layout(x)
        ctx.save_for_backward(x, scale, centre)
        return _affine(x, scale, shift, centre)

    @staticmethod
    @once_differentiable  # the kernels' own backward is not differentiated again
    def backward(ctx, grad: torch.Tensor):
        x, scale, centre = ctx.saved_tensors
        grad = grad.contiguous(memory_format=_memory_format(x))
        grad_shift, grad_scale = _sums(grad, x, centre)
        grad_x = None
        if ctx.needs_input_grad[0]:
            zeros = torch.zeros_like(scale)
            grad_x = _affine(grad, scale, zeros, zeros)
        return grad_x, grad_scale, grad_shift, -scale * grad_shift


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


# Devices whose batch-norm kernels take the calls above; elsewhere plain torch ops. Not CUDA: there
# the generic kernels are fast, and on an H200 plain ops made the whole network's forward and
# backward 1.5-2x faster (fewer, larger kernels: channels_last is sliced an instance at a time
# above); CUDA's eval-mode batch norm also folds the centring into the shift, which loses fp32
# digits far from zero mean (benchmarks/instance_ops.py measures both).
NATIVE_KERNEL_DEVICES = ("cpu",)


def use_native_kernels(x: torch.Tensor) -> bool:
    """Whether ``x`` goes through the autograd functions above rather than plain torch ops.

    Exporters get the plain ops: ``torch.onnx.export`` has no ONNX translation for
    ``batch_norm_update_stats`` (nor for the in-place ``out=`` call of :func:`_affine`), and
    its older tracing mode records the functions as opaque Python ops that compute something
    else. So does a compiled graph with gradients, for inductor to fuse the plain ops into the
    backward it generates (``train`` never compiles the network: its compiled backward gave NaN
    gradients in bf16, so the speed once measured for this route does not count). A compiled inference graph keeps the
    kernels, which stylised 1024x1024 about 5 % faster there. All checks are flag reads, so
    eager mode keeps its speed.
    """
    exporting = _torch_export_running() or torch.jit.is_tracing()
    compiled_training = _torch_compiling() and torch.is_grad_enabled()
    return x.device.type in NATIVE_KERNEL_DEVICES and not exporting and not compiled_training


# torch.export's flag; torch versions without it have no torch.export-based ONNX exporter either.
_torch_export_running = getattr(torch.compiler, "is_exporting", lambda: False)
# torch.compile's flag (set while dynamo traces); older versions keep the kernels everywhere.
_torch_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def instance_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over (H, W) of every (instance, channel) of ``x``, in fp32."""
    if use_native_kernels(x):
        return InstanceMoments.apply(x)
    var, mean = torch.var_mean(x.to(_param_dtype(x)), dim=(2, 3), correction=0)
    return mean, var


def instance_scale_shift(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, centre: torch.Tensor | None = None
) -> torch.Tensor:
    """``(x - centre) * scale + shift``, each (N, C) and broadcast over (H, W), in x's dtype and layout.

    ``centre`` defaults to 0, giving ``x * scale + shift``.
    """
    if centre is None:
        centre = torch.zeros_like(scale)
    if use_native_kernels(x):
        return InstanceScaleShift.apply(x, scale, shift, centre)
    return ((x - centre[:, :, None, None]) * scale[:, :, None, None] + shift[:, :, None, None]).to(x.dtype)
