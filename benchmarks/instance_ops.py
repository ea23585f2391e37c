"""Which route per-instance statistics should take on a device: torch's batch-norm kernels or plain ops.

    python benchmarks/instance_ops.py                  # the CPU: about 7 minutes on 2 cores
    python benchmarks/instance_ops.py --device cuda    # a GPU; --profile adds the busiest kernels

IN, BN+SE and IEBN need each (instance, channel)'s mean and variance and a per-(instance,
channel) multiply-add (``styletransfer/instance_ops.py``). They can run on torch's batch-norm
kernels (the "native" route) or on ``torch.var_mean`` and broadcasting (the "plain" route); the
"torch" route is torch's own layers instead of ours (IN as ``nn.InstanceNorm2d``, IEBN as the
paper's code: BN without affine on cuDNN/oneDNN, then ``* (gamma * gate) + beta``; BN+SE has
none). For each norm, route and memory layout this times forward + backward of the whole
transformation network (256 px, batch 4 unless told, the fast path's precision) in one process,
and prints the time per step against BN's in the same layout. It also prints the largest error of each route's instance
norm against torch's float64 one for input far from zero mean (offset 1000), where folding the
centring into the shift loses fp32 digits.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench import ReferenceIEBN, processor_name, synchronize  # benchmarks/bench.py, beside this file
from styletransfer import instance_ops
from styletransfer.devices import autocast, pick_device, resolve_precision
from styletransfer.errors import StyleTransferError
from styletransfer.network import TransformerNet
from styletransfer.norms import IEBN2d, InstanceNorm2d, make_norm

ROUTES = {"native": ("cpu", "cuda"), "plain": (), "torch": ()}  # the devices that take the batch-norm kernels


def use_route(route: str) -> None:
    instance_ops.NATIVE_KERNEL_DEVICES = ROUTES[route]


def torch_layers(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with IN as torch's ``nn.InstanceNorm2d`` and IEBN as the paper's code."""
    for m in model.modules():
        if isinstance(m, IEBN2d):
            m.__class__ = ReferenceIEBN
        elif isinstance(m, InstanceNorm2d):
            m.__class__ = torch.nn.InstanceNorm2d
    return model


def step_seconds(norm: str, device: torch.device, channels_last: bool, repeats: int, size=256, batch=4,
                 route="plain") -> float:  # fmt: skip
    """Median seconds of one forward + backward of the network (fast-path precision)."""
    torch.manual_seed(0)
    use_route(route)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = TransformerNet(norm).to(device, memory_format=memory_format).train()
    if route == "torch":
        torch_layers(model)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    dtype = resolve_precision("auto", device)

    def step():
        with autocast(device, dtype):
            y = model(x)
        y.float().mean().backward()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def largest_error_far_from_zero(device: torch.device, offset: float = 1000.0) -> float:
    """Max |IN(x) - torch's float64 IN(x)| for fp32 input around ``offset``."""
    torch.manual_seed(0)
    layer = make_norm("in", 4).to(device)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.rand(3, 4, 5, 6, device=device) + offset
    expected = F.instance_norm(x.double(), weight=layer.weight.double(), bias=layer.bias.double(), eps=layer.eps)
    with torch.no_grad():
        return (layer(x).double() - expected).abs().max().item()


def busiest_kernels(norm: str, device: torch.device, rows: int = 10) -> str:
    from torch.profiler import ProfilerActivity, profile

    model = TransformerNet(norm).to(device, memory_format=torch.channels_last).train()
    x = torch.rand(4, 3, 256, 256, device=device).contiguous(memory_format=torch.channels_last)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            with autocast(device, resolve_precision("auto", device)):
                y = model(x)
            y.float().mean().backward()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def layout_times(device, channels_last: bool, repeats: int, rounds: int, batch: int) -> dict[tuple[str, str], float]:
    """Median step seconds of BN and of every (norm, route), interleaved over ``rounds`` so that a
    noisy machine slows them alike."""
    cases = [("bn", "plain")] + [(n, r) for n in ("in", "se", "iebn") for r in ROUTES if (n, r) != ("se", "torch")]
    times: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    for _ in range(rounds):
        for norm, route in cases:
            times[(norm, route)].append(step_seconds(norm, device, channels_last, repeats, batch=batch, route=route))
    return {case: statistics.median(t) for case, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per case and round (default 20 on CUDA, 2 on CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all cases; each case's time is the median")
    parser.add_argument("--profile", action="store_true", help="also print IEBN's busiest kernels for each route")
    parser.add_argument("--batch", type=int, default=4, help="images per step (default 4, the training default)")
    args = parser.parse_args()
    try:
        device = pick_device(args.device)
    except StyleTransferError as e:
        raise SystemExit(f"error: {e}") from None
    in_use = "native" if device.type in instance_ops.NATIVE_KERNEL_DEVICES else "plain"
    repeats = args.repeats if args.repeats is not None else (20 if device.type == "cuda" else 2)
    print(f"torch {torch.__version__} on {device} ({processor_name(device)}); network f+b 256 px, batch {args.batch}, "
          f"{resolve_precision('auto', device)}, median of {args.rounds} rounds of {repeats} steps; "
          f"the library takes the {in_use} route here")  # fmt: skip
    for route in ("native", "plain"):
        use_route(route)
        print(f"instance norm, fp32 input around 1000, {route} route: largest error {largest_error_far_from_zero(device):.1e}")
    for layout, channels_last in (("NCHW", False), ("NHWC", True)):
        times = layout_times(device, channels_last, repeats, args.rounds, args.batch)
        bn = times.pop(("bn", "plain"))
        print(f"\n{layout}: bn {1000 * bn:.2f} ms per step")
        for (norm, route), seconds in times.items():
            print(f"{layout}: {norm:<5} {route:<7} {1000 * seconds:8.2f} ms  {seconds / bn:5.2f}x BN", flush=True)
    if args.profile:
        for route in ("native", "plain"):
            use_route(route)
            print(f"\nIEBN, channels_last, {route} route, three steps:\n{busiest_kernels('iebn', device)}")


if __name__ == "__main__":
    main()
