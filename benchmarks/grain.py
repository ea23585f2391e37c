"""What the grain costs when stylising: the flat-aware grain (the default), the same grain
everywhere, and the network alone, timed in one run on the same images.

    python benchmarks/grain.py                  # 512 and 1024 px, the shipped starry_night/iebn
    python benchmarks/grain.py --sizes 2048 --model wave/se --repeats 7

Prints, per size, the median milliseconds of each and the flatness's share of the network's
time. The noise pattern itself is made once per size and cached, as stylising a folder does.
Run it on an otherwise idle machine: the grain's few milliseconds are easily swamped by another
process's load, and the share then means nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from styletransfer.grain import STYLISE_GRAIN, add_grain
from styletransfer.models import resolve_model
from styletransfer.stylize import Stylizer


def milliseconds(run, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square sides, pixels")
    parser.add_argument("--model", default="starry_night/iebn", help="a model name or checkpoint")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    stylizer = Stylizer.from_checkpoint(resolve_model(args.model)[0])
    print(f"{args.model}, {stylizer.device}, {stylizer.dtype}, {torch.get_num_threads()} thread(s); median of {args.repeats}")
    for side in args.sizes:
        x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
        paths = {
            "grain, flat-aware (default)": lambda: add_grain(x, STYLISE_GRAIN),
            "grain, same everywhere": lambda: add_grain(x, STYLISE_GRAIN, flat_factor=1),
            "network alone": lambda: stylizer.stylize_tensor(x, grain=0),
        }
        for run in paths.values():  # warm up: caches, kernels, the noise pattern
            run()
        ms = {name: milliseconds(run, args.repeats) for name, run in paths.items()}
        for name, value in ms.items():
            print(f"{side}px  {name:28s} {value:9.1f} ms")
        extra = ms["grain, flat-aware (default)"] - ms["grain, same everywhere"]
        print(f"{side}px  finding flat regions: {100 * extra / ms['network alone']:.1f} % of the network's time")


if __name__ == "__main__":
    main()
