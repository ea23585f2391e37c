"""Training one model on several processes (GPUs or machines) with torchrun.

torchrun starts the processes and tells each who it is through the environment variables
RANK, LOCAL_RANK and WORLD_SIZE; without them a run is a plain single-process run. The
training loop uses torch's own DistributedDataParallel; this module only answers where a
process stands, which device it uses, and the few agreements the training loop needs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .devices import pick_device
from .errors import StyleTransferError

__all__ = [
    "Processes", "device_for", "from_environment", "process_group", "same_everywhere", "summarise_step", "wait_for_all",
    "wrap",
]  # fmt: skip

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes that train one model."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, the progress bar and checkpoints."""
        return self.rank == 0


def from_environment(env=os.environ) -> Processes:
    """The processes torchrun started, or a single process when not under torchrun."""
    found = [name for name in TORCHRUN_VARIABLES if name in env]
    if not found:
        return Processes()
    missing = [name for name in TORCHRUN_VARIABLES if name not in env]
    if missing:
        raise StyleTransferError(
            f"{', '.join(found)} set but not {', '.join(missing)}: start distributed training with torchrun"
        )
    rank, local_rank, world_size = _whole_numbers(env)
    if not (world_size >= 1 and 0 <= rank < world_size and local_rank >= 0):
        raise StyleTransferError(f"RANK {rank} does not fit WORLD_SIZE {world_size}")
    return Processes(rank, local_rank, world_size, distributed=True)


def _whole_numbers(env) -> tuple[int, int, int]:
    """RANK, LOCAL_RANK and WORLD_SIZE as numbers."""
    try:
        return tuple(int(env[name]) for name in TORCHRUN_VARIABLES)
    except ValueError:
        raise StyleTransferError(
            "RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers: start distributed training with torchrun"
        ) from None


def device_for(procs: Processes, name: str) -> torch.device:
    """The device of this process; under torchrun, cuda:LOCAL_RANK or the CPU."""
    if not procs.distributed:
        return pick_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda:"):
        raise StyleTransferError(
            "under torchrun each process uses cuda:LOCAL_RANK: give --device cuda (or auto) "
            "and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    device = pick_device(name)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise StyleTransferError(f"distributed training runs on CUDA (NCCL) or the CPU (Gloo), not on {name}")
    count = torch.cuda.device_count()
    if procs.local_rank >= count:
        raise StyleTransferError(
            f"LOCAL_RANK {procs.local_rank}, but only {count} GPU(s) here: start at most {count} processes per machine"
        )
    return torch.device("cuda", procs.local_rank)


@contextmanager
def process_group(procs: Processes, device: torch.device):
    """Joins the other processes (NCCL on CUDA, Gloo on the CPU) for the block, and always leaves.

    A process group that already exists (set up by the caller's own script) is used as it is.
    """
    if not procs.distributed or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as e:
        raise StyleTransferError(f"could not join the other training processes: {' '.join(str(e).split())[:300]}") from None
    try:
        yield
    finally:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, procs: Processes, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over the processes), or as it is."""
    if not procs.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def summarise_step(
    procs: Processes, losses: dict[str, torch.Tensor], stop: bool
) -> tuple[dict[str, float], bool]:
    """The step's losses averaged over the processes, and whether any process asked to stop.

    One all_reduce: every process gets the same answer, so all log the same numbers and all
    stop (or give up on a NaN) at the same step. Losses are averages per image, so the
    average of the processes' losses is the loss of the global batch.
    """
    values = [v.detach().float() for v in losses.values()]
    packed = torch.stack([*values, torch.tensor(float(stop), device=values[0].device)])
    if procs.distributed:
        dist.all_reduce(packed)
        packed[:-1] /= procs.world_size
    *means, stop_votes = packed.tolist()
    return dict(zip(losses, means)), stop_votes > 0


def same_everywhere(procs: Processes, value: int, device: torch.device) -> bool:
    """Whether every process holds the same ``value`` (e.g. whether a checkpoint exists)."""
    if not procs.distributed:
        return True
    both = torch.tensor([int(value), -int(value)], device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return both[0].item() == -both[1].item()


def wait_for_all(procs: Processes) -> None:
    """Returns once every process has got here."""
    if procs.distributed:
        dist.barrier()
