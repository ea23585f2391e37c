"""Blotch area of the models as a user gets them: every model, on the grid photos, at the sizes
people stylise at, with `stylize`'s defaults (grain included, bf16 where the CPU is fast at it).

    python scripts/grid_blotches.py                                   # shipped models, examples/, 512 and 1024 px
    python scripts/grid_blotches.py PHOTOS... --models steps-3000/ --sizes 512 --grain 0

One row per model, one column per photo and size: the blotch area in % of the picture
(:func:`styletransfer.metrics.blotch_area`, its window scaled with the picture: 31 px at 512,
63 px at 1024, so the same part of a photo is judged at each size), and the row's largest value.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from styletransfer.data import find_images, image_to_tensor, load_image, resize_long_side
from styletransfer.errors import StyleTransferError
from styletransfer.grain import FLAT_GRAIN_FACTOR, STYLISE_GRAIN, check_grain
from styletransfer.metrics import blotch_area, blotch_window
from styletransfer.models import SHIPPED_MODELS, scan_folder
from styletransfer.stylize import Stylizer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def percent(picture: Image.Image) -> float:
    """The blotch area (%) of an 8-bit picture, its window scaled with the picture's long side."""
    return 100 * blotch_area(image_to_tensor(picture)[None], blotch_window(max(picture.size))).item()


def blotch_percent(stylizer: Stylizer | None, photo: Path, size: int, grain: float) -> float:
    """The blotch area (%) of ``photo`` at ``size`` px on the long side, stylised as saved (8-bit),
    or, without a stylizer, of the photo itself: its own flat parts (a clear sky), for comparison."""
    picture = resize_long_side(load_image(photo), size)
    return percent(stylizer.stylize(picture, grain=grain) if stylizer else picture)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="*", type=Path, default=[EXAMPLES], help="photos or folders (default: examples/)")
    parser.add_argument("--models", type=Path, default=SHIPPED_MODELS, help="folder of models (default: the shipped)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="long sides, pixels")
    parser.add_argument("--grain", type=float, default=STYLISE_GRAIN, help="as stylize --grain (default: its default)")
    args = parser.parse_args()
    check_grain(args.grain, "--grain")
    photos = [p for given in args.photos for p in (find_images(given) if given.is_dir() else [given])]
    models, skipped = scan_folder(args.models)
    if not photos or not models:
        raise StyleTransferError(f"nothing to measure: {len(photos)} photo(s), {len(models)} model(s) in {args.models}")
    header = ["model", "step"] + [f"{p.stem} @{s}" for s in args.sizes for p in photos] + ["largest"]
    cells = [(p, s) for s in args.sizes for p in photos]
    photo_row = [blotch_percent(None, p, s, args.grain) for p, s in cells]
    rows = [["the photo itself", "-"] + [f"{v:.1f}" for v in photo_row] + [f"{max(photo_row):.1f}"]]
    for model in models:
        stylizer = Stylizer.from_checkpoint(model.path)
        values = [blotch_percent(stylizer, p, s, args.grain) for p, s in cells]
        rows.append([model.name, str(model.meta.get("step"))] + [f"{v:.1f}" for v in values] + [f"**{max(values):.1f}**"])
        print(f"{model.name} done", flush=True)
    print(f"blotch area, % of the picture; grain {args.grain:g} ({FLAT_GRAIN_FACTOR:g} times that where the photo is flat); "
          f"{len(skipped)} file(s) skipped")
    print(markdown(header, rows))


if __name__ == "__main__":
    try:
        main()
    except (StyleTransferError, ValueError) as e:  # a bad folder, model, photo or grain: one line
        raise SystemExit(f"error: {e}") from None
