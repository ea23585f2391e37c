"""Photo | stylised | stylised after adding grain to the photo, one row per model and photo.

    python scripts/grain_figure.py docs/figures/blotch-grain.jpg composition_vii/in:examples/astronaut.jpg \\
        wave/bn:examples/rocket.jpg --size 512 --grain 4

The grain is Gaussian, ``--grain`` levels of 255 (standard deviation), seeded, added to the photo
in [0, 1] and clipped; rows are labelled with each picture's blotch area
(:func:`styletransfer.metrics.blotch_area`).
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw

from styletransfer.data import image_to_tensor, load_image, resize_long_side, tensor_to_image
from styletransfer.errors import StyleTransferError
from styletransfer.metrics import blotch_area
from styletransfer.models import resolve_model
from styletransfer.stylize import Stylizer

from blotch_causes import with_grain  # scripts/, beside this one


def row(model: str, photo: str, size: int, levels: float) -> list[tuple[Image.Image, str]]:
    stylizer = Stylizer.from_checkpoint(resolve_model(model)[0], "cpu")
    x = image_to_tensor(resize_long_side(load_image(photo), size))[None]
    plain, grained = stylizer.stylize_tensor(x), stylizer.stylize_tensor(with_grain(x, levels))
    area = lambda y: f"blotch area {100 * blotch_area(y).item():.1f} %"  # noqa: E731
    return [(tensor_to_image(x[0]), photo.split("/")[-1]), (tensor_to_image(plain[0]), f"{model}: {area(plain)}"),
            (tensor_to_image(grained[0]), f"grain {levels:g}/255: {area(grained)}")]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("rows", nargs="+", help="MODEL:PHOTO, e.g. wave/bn:examples/rocket.jpg")
    parser.add_argument("--size", type=int, default=512, help="long side, pixels")
    parser.add_argument("--grain", type=float, default=4, help="grain, levels of 255")
    args = parser.parse_args()
    rows = [row(*spec.split(":", 1), args.size, args.grain) for spec in args.rows]
    width, caption = max(img.width for cells in rows for img, _ in cells), 18
    heights = [max(img.height for img, _ in cells) + caption for cells in rows]
    sheet = Image.new("RGB", (3 * width, sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, cells in enumerate(rows):
        top = sum(heights[:r])
        for c, (img, label) in enumerate(cells):
            draw.text((c * width + 4, top + 3), label, fill="black")
            sheet.paste(img, (c * width, top + caption))
    sheet.save(args.out, quality=85)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except StyleTransferError as e:  # a bad folder, model or photo: one line, no traceback
        raise SystemExit(f"error: {e}") from None
