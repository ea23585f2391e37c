"""Blotches before and after grain: one row per photo, the photo then one column per model, each
cell labelled with its blotch area (:func:`styletransfer.metrics.blotch_area`).

    python scripts/grain_figure.py docs/figures/blotch-grain.jpg examples/chelsea.jpg examples/rocket.jpg \\
        --model "no grain=composition_vii/in@0" --model "grain 4 at stylising=composition_vii/in@4"

``--model LABEL=MODEL[@GRAIN[xFLAT]]``: a model name or checkpoint, stylising with grain GRAIN
(8-bit steps, :func:`styletransfer.grain.add_grain`; without @, stylise's default), FLAT times
that where the photo is flat (default :data:`styletransfer.grain.FLAT_GRAIN_FACTOR`; x1: the same
grain everywhere, as before flat regions got more). Photos are scaled to ``--size`` on the long
side; stylised in fp32 on the CPU.
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw

from styletransfer.data import image_to_tensor, load_image, resize_long_side, tensor_to_image
from styletransfer.errors import StyleTransferError
from styletransfer.grain import FLAT_GRAIN_FACTOR, STYLISE_GRAIN, add_grain, check_grain
from styletransfer.metrics import blotch_area
from styletransfer.models import resolve_model
from styletransfer.stylize import Stylizer

CAPTION = 18  # pixels above each cell


def parse_model(spec: str) -> tuple[str, Stylizer, float, float]:
    """``LABEL=MODEL[@GRAIN[xFLAT]]`` as (label, its stylizer, grain, flat factor)."""
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise StyleTransferError(f"--model {spec!r}: expected LABEL=MODEL or LABEL=MODEL@GRAIN[xFLAT]")
    model, at, grain = rest.rpartition("@") if "@" in rest else (rest, "", "")
    level, flat = STYLISE_GRAIN, FLAT_GRAIN_FACTOR
    if at:
        level_text, x, flat_text = grain.partition("x")
        try:
            level, flat = check_grain(float(level_text), "@GRAIN"), float(flat_text) if x else flat
        except ValueError:
            raise StyleTransferError(f"--model {spec!r}: @{grain} is not GRAIN or GRAINxFLAT (numbers)") from None
    return label, Stylizer.from_checkpoint(resolve_model(model)[0], "cpu", "fp32"), level, flat


def cells(photo: str, models: list[tuple[str, Stylizer, float, float]], size: int) -> list[tuple[Image.Image, str]]:
    x = image_to_tensor(resize_long_side(load_image(photo), size))[None]
    row = [(tensor_to_image(x[0]), photo.split("/")[-1])]
    for label, stylizer, grain, flat in models:
        y = stylizer.stylize_tensor(add_grain(x, grain, flat_factor=flat), grain=0)  # the grain asked for, added here
        row.append((tensor_to_image(y[0]), f"{label}: blotch area {100 * blotch_area(y).item():.1f} %"))
    return row


def sheet(rows: list[list[tuple[Image.Image, str]]]) -> Image.Image:
    width = max(img.width for row in rows for img, _ in row)
    heights = [max(img.height for img, _ in row) + CAPTION for row in rows]
    out = Image.new("RGB", (len(rows[0]) * width, sum(heights)), "white")
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        top = sum(heights[:r])
        for c, (img, label) in enumerate(row):
            draw.text((c * width + 4, top + 3), label, fill="black")
            out.paste(img, (c * width, top + CAPTION))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("photos", nargs="+")
    parser.add_argument("--model", action="append", required=True, help="LABEL=MODEL[@GRAIN[xFLAT]], one per column")
    parser.add_argument("--size", type=int, default=512, help="long side, pixels")
    args = parser.parse_args()
    models = [parse_model(spec) for spec in args.model]
    sheet([cells(photo, models, args.size) for photo in args.photos]).save(args.out, quality=85)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except StyleTransferError as e:  # a bad model, photo or option: one line, no traceback
        raise SystemExit(f"error: {e}") from None
