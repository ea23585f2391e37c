"""Where do blotches come from? Four measurements on a style's models, on a folder of photos.

    python scripts/blotch_causes.py wave PHOTOS/ --count 20 --norms bn in
    python scripts/blotch_causes.py composition_vii PHOTOS/ --models runs-2000/   # other checkpoints

A blotch pixel is one :func:`styletransfer.metrics.blotch_area` counts (no fine detail around it).
For each norm, over the first ``--count`` photos of the folder (sorted by name):

1. **bound**: the share of blotch pixels where the output's sigmoid is saturated (some channel
   under 0.02 or over 0.98), which would stop gradients there during training;
2. **flat photo**: the share of blotch pixels where the photo itself has no fine detail (the same
   test), the share of the photo's flat area that became a blotch, and the photo's median
   luminance (0-1) in its flat areas that became blotches and in those that did not;
3. **scale**: the blotch area at long sides from 192 to 1024 pixels, with the window scaled with
   the image (31 pixels at 512), so the same part of a photo is judged at every size. The models
   are trained on crops of photos whose short side is scaled to 128 pixels, about 192 pixels on
   the long side: if blotches came from stylising at a larger scale than that, they would grow
   with the size;
4. **grain**: the blotch area at 512 pixels after adding Gaussian grain of 1, 2 and 4 levels (of
   255) to the photo (seeded): whether a photo's missing texture alone leaves the network nothing
   to paint strokes from.

Means over the photos, in % (± standard error over photos for the areas).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from styletransfer.controls import YIQ_FROM_RGB
from styletransfer.data import find_images, image_to_tensor, load_image, scaled_size
from styletransfer.errors import StyleTransferError
from styletransfer.metrics import BLOTCH_DETAIL, blotch_window, fine_detail, mean_and_stderr
from styletransfer.models import SHIPPED_MODELS
from styletransfer.stylize import Stylizer

SCALES = (192, 256, 384, 512, 1024)  # long side, pixels
GRAIN = (1, 2, 4)  # standard deviation, levels of 255
SATURATED = 0.02  # sigmoid output this close to 0 or 1: its gradient is under 2 % of the largest


def photo_at(path: Path, long_side: int) -> torch.Tensor:
    img = load_image(path)
    return image_to_tensor(img.resize(scaled_size(img.size, long_side), Image.Resampling.BICUBIC))[None]


def with_grain(x: torch.Tensor, levels: float) -> torch.Tensor:
    """``x`` in [0, 1] plus seeded Gaussian grain of ``levels`` (of 255) standard deviation, clipped.

    Fresh noise per photo (the numbers in docs/results.md were measured with it); stylising uses
    :func:`styletransfer.grain.add_grain`, the same distribution as a fixed pattern by position."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * levels / 255
    return (x + noise).clamp(0, 1)


def percent(values: list[float]) -> str:
    stat = mean_and_stderr([100 * v for v in values])
    return f"{stat['mean']:.1f}" if stat["stderr"] is None else f"{stat['mean']:.1f} ± {stat['stderr']:.1f}"


def share(part: torch.Tensor, whole: torch.Tensor) -> float | None:
    n = whole.sum().item()
    return None if n == 0 else (part & whole).sum().item() / n


def pooled(pairs: list[tuple[float | None, float]]) -> str:
    """A share pooled over photos, each weighted by the size of its whole (blotch area, flat area)."""
    weight = sum(w for s, w in pairs if s is not None)
    return "-" if weight == 0 else f"{100 * sum(s * w for s, w in pairs if s is not None) / weight:.0f}"


def median_luminance(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> str:
    """The median BT.601 luminance of the photos' pixels under the masks, pooled over photos."""
    values = [(YIQ_FROM_RGB[0] @ x[0].flatten(1))[mask[0, 0].flatten()] for x, mask in parts]
    pixels = torch.cat(values)
    return "-" if pixels.numel() == 0 else f"{pixels.median().item():.2f}"


def measure(stylizer: Stylizer, photos: list[Path]) -> dict[str, str]:
    row, at_512 = {}, []
    for size in SCALES:
        window, areas = blotch_window(size), []
        for path in photos:
            x = photo_at(path, size)
            y = stylizer.stylize_tensor(x, grain=0)  # the network alone: no grain unless asked below
            blotch = fine_detail(y, window) < BLOTCH_DETAIL
            areas.append(blotch.float().mean().item())
            if size == 512:
                flat = fine_detail(x, window) < BLOTCH_DETAIL
                saturated = ((y < SATURATED) | (y > 1 - SATURATED)).any(1, keepdim=True)
                at_512.append((x, blotch, flat, saturated))
        row[f"{size} px"] = percent(areas)
    row["saturated in blotch"] = pooled([(share(s, b), b.sum().item()) for _, b, _, s in at_512])
    row["photo flat in blotch"] = pooled([(share(f, b), b.sum().item()) for _, b, f, _ in at_512])
    row["photo flat -> blotch"] = pooled([(share(b, f), f.sum().item()) for _, b, f, _ in at_512])
    row["luma: flat, blotch"] = median_luminance([(x, f & b) for x, b, f, _ in at_512])
    row["luma: flat, strokes"] = median_luminance([(x, f & ~b) for x, b, f, _ in at_512])
    for sigma in GRAIN:
        areas = []
        for x, *_ in at_512:
            y = stylizer.stylize_tensor(with_grain(x, sigma), grain=0)
            areas.append((fine_detail(y) < BLOTCH_DETAIL).float().mean().item())
        row[f"grain {sigma}/255"] = percent(areas)
    return row


def markdown(rows: dict[str, dict[str, str]]) -> str:
    columns = list(next(iter(rows.values())))
    lines = ["| norm | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {norm} | " + " | ".join(row[c] for c in columns) + " |" for norm, row in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("style", help="style name: the models are MODELS/STYLE/NORM.safetensors")
    parser.add_argument("photos", type=Path, help="folder of photos (ideally ones the models never trained on)")
    parser.add_argument("--models", type=Path, default=SHIPPED_MODELS, help="folder of styles (default: the shipped)")
    parser.add_argument("--norms", nargs="+", default=["bn", "in"])
    parser.add_argument("--count", type=int, default=20, help="photos used (the first, by name)")
    args = parser.parse_args()
    photos = find_images(args.photos)[: args.count]
    if not photos:
        parser.error(f"{args.photos}: no photos found (or --count below 1)")
    rows = {}
    for norm in args.norms:
        stylizer = Stylizer.from_checkpoint(args.models / args.style / f"{norm}.safetensors", "cpu")
        rows[f"{norm} (step {stylizer.meta.get('step')})"] = measure(stylizer, photos)
        print(f"{norm} done", flush=True)
    print(f"{args.style}, {len(photos)} photos from {args.photos}; blotch area in % (window scaled with the image):")
    print(markdown(rows))


if __name__ == "__main__":
    try:
        main()
    except StyleTransferError as e:  # a bad folder, model or photo: one line, no traceback
        raise SystemExit(f"error: {e}") from None
