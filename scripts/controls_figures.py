"""The figures of docs/controls.md, made with the public API and the shipped checkpoints.

    .venv/bin/python scripts/controls_figures.py      # writes docs/figures/controls-*.jpg
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from styletransfer.compare import comparison_grid  # noqa: E402
from styletransfer.data import load_image  # noqa: E402
from styletransfer.models import resolve_model  # noqa: E402
from styletransfer.stylize import Stylizer  # noqa: E402

PHOTOS = [ROOT / "examples" / name for name in ("chelsea.jpg", "rocket.jpg")]
MODELS = ["starry_night/iebn", "wave/iebn"]  # shipped models, by name
CELL = 360


def photo(path: Path, width: int = CELL):
    """The example (both are 3:2) scaled to ``width`` x 2/3 ``width``."""
    return load_image(path, width).resize((width, width * 2 // 3))


def strength_and_colour(out: Path) -> None:
    rows = []
    for model in MODELS:
        stylizer = Stylizer.from_checkpoint(resolve_model(model)[0], "cpu", "fp32")
        for p in PHOTOS:
            image = photo(p)
            rows.append([image, stylizer.stylize(image), stylizer.stylize(image, strength=0.5),
                         stylizer.stylize(image, preserve_color=True)])  # fmt: skip
    captions = ["photo", "stylised", "--strength 0.5", "--preserve-color"]
    comparison_grid(rows, captions).save(out, quality=88)


def stroke_scales(out: Path, scales=(0.5, 1.0, 2.0, 3.0)) -> None:
    rows = []
    for model in MODELS:
        stylizer = Stylizer.from_checkpoint(resolve_model(model)[0], "cpu", "fp32")
        image = photo(PHOTOS[0], 480)
        rows.append([stylizer.stylize(image, stroke_scale=s) for s in scales])
    comparison_grid(rows, [f"--stroke-scale {s:g}" for s in scales]).save(out, quality=88)


if __name__ == "__main__":
    figures = ROOT / "docs" / "figures"
    strength_and_colour(figures / "controls-strength-colour.jpg")
    stroke_scales(figures / "controls-stroke-scale.jpg")
    print(f"wrote {figures}/controls-*.jpg")
