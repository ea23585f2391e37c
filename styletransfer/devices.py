"""Choosing the device and the numeric precision of the fast paths."""

from __future__ import annotations

import contextlib
import ctypes
import platform

import torch

from .errors import StyleTransferError

__all__ = [
    "KEEP_FREED_MEMORY_UP_TO", "PRECISIONS", "autocast", "cpu_has_amx", "cpu_has_fast_bf16", "is_out_of_memory", "keep_freed_memory", "pick_device",
    "release_memory", "resolve_precision",
]  # fmt: skip

# How torch's CPU allocator, oneDNN and others say they ran out of memory (CUDA has its own type).
OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "could not create a primitive", "out of memory", "not enough memory")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# glibc's mallopt parameters (malloc.h) and their defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
# Forward passes over up to this many pixels (all images of a batch) keep freed memory
# (keep_freed_memory): photos at stylize's default --max-size 1024, a batch of 4 video frames at
# it (4 x 1024x576), a 1920x1080 photo. Larger ones, which may be near the memory budget of
# tiling, leave it to the system.
KEEP_FREED_MEMORY_UP_TO = 3 * 2**20


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; otherwise the device named (cpu, cuda, cuda:N, mps).

    Raises StyleTransferError for an unknown name or a device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StyleTransferError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StyleTransferError(f"device {name} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise StyleTransferError(f"device {name} asked for, but MPS is not available here; use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and torch.backends.cpu.get_cpu_capability() in (
            "AVX512",
            "AMX",
        )
    except (AttributeError, RuntimeError):
        return False


def cpu_has_amx() -> bool:
    """True on CPUs with AMX bf16 tile instructions (Intel Xeon since Sapphire Rapids): benchmarks
    name them, as their figures differ from AVX-512 BF16 CPUs'."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    try:
        return bool(capabilities().get("amx_bf16")) if capabilities else bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``precision`` (auto, fp32, bf16, fp16) on ``device`` (float32 means
    autocast off). Raises StyleTransferError for an unknown precision, or fp16 off CUDA."""
    if precision not in PRECISIONS:
        raise StyleTransferError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise StyleTransferError("fp16 needs a CUDA device; on the CPU use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for ``dtype``, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says the device (CPU or GPU) ran out of memory."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(text in str(e) for text in OUT_OF_MEMORY_MESSAGES)


def release_memory(device: torch.device) -> None:
    """Give cached memory back after an out-of-memory error, so the next input has it."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def keep_freed_memory(keep: bool = True) -> bool:
    """Have glibc's malloc keep the memory of freed tensors for the next ones (``keep``), or give
    it back to the system at once, its default (``keep=False``, which returns what was kept).
    Process-wide; returns whether it took effect (False where the C library is not glibc).

    By default every allocation over 32 MiB at most is a fresh mmap, unmapped when freed, so each
    forward pass faults in all its large activations again, 4 KiB at a time: about 345,000 page
    faults per 1024x1024 image. Without them the image took a quarter to a half less time, eager
    and compiled, on 2 cores of an Intel Xeon with AMX. The cost: the process holds on to its peak
    memory, and the peak grows as freed blocks are reused less tightly than fresh ones: the whole
    process's by 5-38 % stylising 1024x1024, the pass's up to 2x at 2048x2048
    (:data:`KEEP_FREED_MEMORY_UP_TO` bounds it).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    if keep:  # mmap off: large blocks come from the heap too; trimming off: freed heap is kept
        return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    done = libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX) and libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)
    return bool(done)
