"""Side-by-side comparison grids: content, then one stylisation per model, labelled."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from .controls import Controls
from .errors import StyleTransferError
from .stylize import Stylizer

__all__ = ["compare", "comparison_grid", "fit_square"]

CAPTION_HEIGHT = 36
GAP = 6
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def _caption_font(size: int = 18) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without a scalable default font
        return ImageFont.load_default()


def comparison_grid(rows: list[list[Image.Image]], captions: list[str]) -> Image.Image:
    """Lay out rows of equally sized images under one row of column captions (one per column)."""
    cols = len(captions)
    w, h = rows[0][0].size
    width = cols * w + (cols + 1) * GAP
    height = CAPTION_HEIGHT + len(rows) * (h + GAP) + GAP
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = _caption_font(max(12, min(22, w // 14)))
    for c, text in enumerate(captions):
        x = GAP + c * (w + GAP) + w // 2
        draw.text((x, CAPTION_HEIGHT // 2 + 2), text, fill=TEXT, font=font, anchor="mm")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid.paste(img, (GAP + c * (w + GAP), CAPTION_HEIGHT + r * (h + GAP)))
    return grid


def compare(
    contents: list[Image.Image], stylizers: list[Stylizer], cell: int = 384, controls: Controls = Controls()
) -> Image.Image:
    """A grid with one row per content image: the content, then each model's stylisation.

    Each cell is the image centre-cropped to a square of ``cell`` pixels (at least 16); every
    model stylises it under the same ``controls`` (strength, preserve colour, stroke scale, grain).
    Raises StyleTransferError for a smaller cell, or a model that runs out of memory.
    """
    if cell < 16:
        raise StyleTransferError(f"cells must be at least 16 pixels, not {cell}")
    rows = []
    for content in contents:
        content = fit_square(content, cell)
        rows.append([content] + [s.render(content, controls) for s in stylizers])
    return comparison_grid(rows, ["content"] + [s.label for s in stylizers])


def fit_square(img: Image.Image, cell: int) -> Image.Image:
    """Centre-crop to a square and scale to ``cell`` so every row lines up."""
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((cell, cell), Image.Resampling.LANCZOS)
