"""Tiled stylising: its peak memory, its cost, and how exactly it matches the untiled result.

    python benchmarks/tiling.py memory --size 1024            # peak bytes per pixel, untiled and tiled
    python benchmarks/tiling.py psnr --size 2048              # tiled vs untiled, every norm, fp32
    python benchmarks/tiling.py halo --size 512               # the error against the halo's width

``memory`` runs each measurement in a fresh process and reports the peak resident memory above
the process's memory once the model is loaded (the figure ``tiling.PEAK_BYTES_PER_PIXEL`` holds).
``psnr`` stylises an example photo, upscaled to --size x --size, with the shipped checkpoints of
one style, untiled and in tiles of --tile pixels, reports the PSNR between the two and the times,
and writes a crop around a tile corner (untiled | tiled | 20 x difference) to --figure.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

import torch
from PIL import Image

from styletransfer.data import image_to_tensor, tensor_to_image
from styletransfer.devices import resolve_precision
from styletransfer.models import SHIPPED_MODELS
from styletransfer.norms import NORMS, norm_label
from styletransfer.stylize import Stylizer
from styletransfer.tiling import plan_tiles, stylize_in_tiles

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def photo(size: int, name: str = "chelsea") -> torch.Tensor:
    """An example photo scaled to ``size`` x ``size``, as a (1, 3, H, W) tensor in [0, 1]."""
    img = Image.open(ROOT / "examples" / f"{name}.jpg").convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return image_to_tensor(img)[None]


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _measure_memory(args, precision: str, tile: int | None, queue) -> None:
    torch.set_num_threads(args.threads)
    stylizer = Stylizer.from_checkpoint(args.checkpoint, "cpu", precision)
    x = photo(args.size)
    idle = resident_bytes()
    start = time.perf_counter()
    if tile:
        stylize_in_tiles(stylizer.model, x, tile, precision=stylizer.dtype)
    else:
        stylizer.stylize_tensor(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put((peak - idle, time.perf_counter() - start))


def memory(args) -> None:
    ctx = mp.get_context("spawn")
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, {args.size}x{args.size}")
    for precision in ("fp32", "bf16"):
        if resolve_precision(precision, torch.device("cpu")) != PRECISIONS[precision]:
            continue
        for tile in (None, args.tile):
            queue = ctx.Queue()
            p = ctx.Process(target=_measure_memory, args=(args, precision, tile, queue))
            p.start()
            extra, seconds = queue.get()
            p.join()
            what = f"tiles of {tile}" if tile else "untiled"
            print(f"{precision}  {what:14s} peak {extra / 2**20:7.0f} MiB above idle, "
                  f"{extra / args.size**2:6.0f} bytes/pixel, {seconds:6.1f} s")  # fmt: skip


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def compare(args) -> None:
    torch.set_num_threads(args.threads)
    x = photo(args.size, args.photo)
    crops = {}
    for norm in args.norms:
        stylizer = Stylizer.from_checkpoint(SHIPPED_MODELS / args.style / f"{norm}.safetensors", "cpu", "fp32")
        start = time.perf_counter()
        whole = stylizer.stylize_tensor(x)
        untiled = time.perf_counter() - start
        start = time.perf_counter()
        tiled = stylize_in_tiles(stylizer.model, x, args.tile)
        seconds = time.perf_counter() - start
        print(f"{norm:5s} PSNR tiled vs untiled {psnr(tiled, whole):6.1f} dB, max |diff| "
              f"{(tiled - whole).abs().max().item():.2e}; untiled {untiled:.1f} s, tiled {seconds:.1f} s "
              f"({seconds / untiled:.1f}x)", flush=True)  # fmt: skip
        crops[norm] = seam_crop(whole[0], tiled[0], args.tile, args.size)
    if args.figure:
        seam_figure([(norm_label(n), crops[n]) for n in NORMS if n in crops], args.figure)


def seam_crop(whole: torch.Tensor, tiled: torch.Tensor, side: int, size: int, radius: int = 96) -> list:
    """Untiled, tiled and 20x their difference, around the first inner tile corner."""
    corner = plan_tiles(size, size, side)[0].core
    y, x = corner[1], corner[3]
    window = (slice(None), slice(y - radius, y + radius), slice(x - radius, x + radius))
    diff = ((tiled - whole).abs() * 20).clamp(0, 1)
    return [tensor_to_image(t[window]) for t in (whole, tiled, diff)]


def seam_figure(rows: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)))
    axes = axes.reshape(len(rows), 3)
    for r, (norm, crops) in enumerate(rows):
        for c, (img, title) in enumerate(zip(crops, ("untiled", "tiled", "|difference| x 20"))):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([img.width / 2 - 0.5])  # the cuts between tile cores: ticks, not lines over the pixels
            ax.set_yticks([img.height / 2 - 0.5])
            ax.tick_params(labelbottom=False, labelleft=False, length=6, color="red", width=1.5)
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(norm, fontsize=9)
    fig.suptitle("Around a tile corner (red ticks: the cuts between tile cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def halo(args) -> None:
    """PSNR of the tiled against the untiled output for halos from 16 pixels up, every norm."""
    torch.set_num_threads(args.threads)
    x = photo(args.size, args.photo)
    for norm in args.norms:
        stylizer = Stylizer.from_checkpoint(SHIPPED_MODELS / args.style / f"{norm}.safetensors", "cpu", "fp32")
        whole = stylizer.stylize_tensor(x)
        cells = [f"{h}: {psnr(stylize_in_tiles(stylizer.model, x, args.tile, halo=h), whole):5.1f}"
                 for h in (16, 32, 48, 56, 64)]  # fmt: skip
        print(f"{norm:5s} halo -> PSNR dB  " + "  ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("memory", "psnr", "halo"))
    parser.add_argument("--size", type=int, default=2048, help="side of the square test image")
    parser.add_argument("--tile", type=int, default=512, help="core side of the tiles")
    parser.add_argument("--style", default="starry_night")
    parser.add_argument("--photo", default="chelsea", help="example photo (examples/NAME.jpg)")
    parser.add_argument("--checkpoint", default=str(SHIPPED_MODELS / "starry_night/in.safetensors"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(NORMS))
    parser.add_argument("--figure", default=None, help="where to write the seam crops (psnr)")
    args = parser.parse_args()
    {"memory": memory, "psnr": compare, "halo": halo}[args.what](args)


if __name__ == "__main__":
    main()
