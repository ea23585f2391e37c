"""Reading images safely, and the folder of content photos used for training.

Every image the project reads goes through :func:`load_image`, which turns anything a
camera, phone or editor makes (EXIF rotation, grey, RGBA, palette, 16-bit, CMYK, animated)
into an RGB picture, and anything broken into a one-line :class:`StyleTransferError`.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .errors import StyleTransferError, one_line

__all__ = [
    "IMAGE_SUFFIXES", "MAX_PIXELS", "MIN_STYLE_SIDE", "ContentImages", "StepBatches", "find_images", "image_to_tensor",
    "load_image", "load_style_image", "readable_header", "resize_long_side", "scaled_size", "tensor_to_image",
]  # fmt: skip

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
# Pillow's own default (about 89 megapixels); past it a file is refused, not decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# The loss network pools the style image 4 times (VGG19 relu5_1 is 1/16 of it): its short side
# must be at least this many pixels.
MIN_STYLE_SIDE = 16
# Training crops of very elongated photos are taken from a window of at most this aspect ratio,
# so scaling the short side to the crop size never makes a huge intermediate image.
MAX_CROP_ASPECT = 8


def load_image(path: str | Path | BinaryIO, max_size: int | None = None, name: str | None = None) -> Image.Image:
    """Open ``path`` as an RGB image, upright (EXIF), with its long side at most ``max_size`` pixels.

    ``path`` may also be an open binary file (e.g. standard input's bytes in a ``BytesIO``);
    ``name`` is what error messages call the image (default: ``path``). Raises
    StyleTransferError (one line naming the file) for a missing, unreadable, damaged or
    over-large (over :data:`MAX_PIXELS`) image.
    """
    source = path if hasattr(path, "read") else Path(path)
    name = name or str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd files: the image decodes or fails
            with Image.open(source) as img:
                _refuse_too_many_pixels(img)
                return _to_rgb(img, max_size)
    except FileNotFoundError:
        raise StyleTransferError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise StyleTransferError(f"{name}: is a folder, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise StyleTransferError(f"{name}: image too large (over {MAX_PIXELS:,} pixels)") from None
    except Image.UnidentifiedImageError:
        raise StyleTransferError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except MemoryError:
        raise StyleTransferError(f"{name}: out of memory decoding this image; choose a smaller one") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise StyleTransferError(f"{name}: cannot read image ({one_line(e)})") from None


def _refuse_too_many_pixels(img: Image.Image) -> None:
    """Refuse a decompression bomb from its header, before decoding.

    Checked here rather than by turning Pillow's warning into an error: warning filters are
    shared by the whole process, and another thread may change them at any moment.
    """
    if img.width * img.height > MAX_PIXELS:
        raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")


def _to_rgb(img: Image.Image, max_size: int | None = None) -> Image.Image:
    """Convert an open Pillow image to an upright RGB image bounded by ``max_size``."""
    if max_size:
        # JPEG can decode at 1/2, 1/4, 1/8 scale directly: much faster for big photos.
        img.draft("RGB", (max_size, max_size))
    img.seek(0)  # the first frame of an animation
    img.load()
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _high_bit_depth_to_rgb(img)
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    if max_size and max(img.size) > max_size:
        img = resize_long_side(img, max_size)
    return img


def scaled_size(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """``size`` (width, height) scaled so its long side is ``long_side`` pixels (>= 1), the aspect
    ratio kept as closely as whole pixels allow; no side is ever below 1 pixel."""
    w, h = size
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_long_side(img: Image.Image, long_side: int) -> Image.Image:
    """``img`` scaled up or down (Lanczos) so its long side is ``long_side`` pixels."""
    size = scaled_size(img.size, long_side)
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)


def load_style_image(path: str | Path, long_side: int) -> Image.Image:
    """The style image scaled up or down so its long side is ``long_side`` pixels.

    Raises StyleTransferError when the scaled short side would be under :data:`MIN_STYLE_SIDE`
    pixels (a very elongated image), besides :func:`load_image`'s errors.
    """
    img = load_image(path, max_size=long_side)
    w, h = scaled_size(img.size, long_side)
    if min(w, h) < MIN_STYLE_SIDE:
        raise StyleTransferError(
            f"{path}: this style image is {w}x{h} pixels at --style-size {long_side}, and the loss network needs "
            f"at least {MIN_STYLE_SIDE} on the short side; use a less elongated image or a larger --style-size"
        )
    return resize_long_side(img, long_side)


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit or float grey to 8-bit RGB, scaling instead of clipping at 255."""
    a = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if a.max(initial=0) <= 1.0 else 255.0
    else:
        top = 65535.0 if a.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
    a8 = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(a8, "L").convert("RGB")


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image of W x H pixels to a float32 tensor of shape (3, H, W) in [0, 1]."""
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return a.permute(2, 0, 1).float().div_(255)


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] (values outside are clipped) to an RGB image of W x H pixels."""
    a = t.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a, "RGB")


def find_images(folder: str | Path) -> list[Path]:
    """All files with an image suffix under ``folder``, recursively, sorted; StyleTransferError if not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StyleTransferError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _random_crop(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """Scale the short side to ``size``, then take a random ``size`` x ``size`` crop, maybe mirrored."""
    img = _limit_aspect(img, rng)
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    img = img.crop((left, top, left + size, top + size))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    return img


def _limit_aspect(img: Image.Image, rng: random.Random) -> Image.Image:
    """A random window of at most :data:`MAX_CROP_ASPECT` : 1 of a very elongated photo (others as they are)."""
    w, h = img.size
    long = MAX_CROP_ASPECT * min(w, h)
    if max(w, h) <= long:
        return img
    if w > h:
        left = rng.randint(0, w - long)
        return img.crop((left, 0, left + long, h))
    top = rng.randint(0, h - long)
    return img.crop((0, top, w, top + long))


class ContentImages(Dataset):
    """The content photos: random square crops, indexed by ``(photo index, crop seed)``.

    Files that are not images are dropped when the folder is scanned (listed in ``skipped``);
    a file that fails to decode later (truncated, corrupt) is replaced by another photo, with a
    warning the first time each process meets it (data-loading workers are separate processes,
    so ``skipped`` only grows in the process that decoded it).
    """

    def __init__(self, folder: str | Path, image_size: int) -> None:
        self.image_size = image_size
        candidates = find_images(folder)
        readable = {p: readable_header(p) for p in candidates}
        self.paths = [p for p, ok in readable.items() if ok]
        self.skipped: list[Path] = [p for p, ok in readable.items() if not ok]
        if not self.paths:
            found = f" ({len(candidates)} files with image names, none readable)" if candidates else ""
            raise StyleTransferError(
                f"{folder}: no images found{found}; give --content-dir a folder of photos (searched recursively)"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, seed = key
        rng = random.Random(seed)
        for _ in range(len(self.paths)):
            path = self.paths[index]
            try:
                img = load_image(path, max_size=4 * self.image_size)
                return image_to_tensor(_random_crop(img, self.image_size, rng))
            except StyleTransferError as e:
                if path not in self.skipped:
                    self.skipped.append(path)
                    warnings.warn(f"skipping unreadable image {e}", stacklevel=1)
                index = rng.randrange(len(self.paths))
        raise StyleTransferError("no content image could be decoded")


def readable_header(path: Path) -> bool:
    """Cheap check that Pillow recognises the file and its size is sane (decoding happens later)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                _refuse_too_many_pixels(img)
        return True
    except Exception:
        return False


class StepBatches(torch.utils.data.Sampler):
    """Batches of ``(photo index, crop seed)`` that are a pure function of (seed, step).

    Resuming at step ``k`` therefore sees exactly the batches an uninterrupted run would,
    without saving any sampler or RNG state. With ``world_size`` processes the global batch
    of a step holds ``batch_size * world_size`` samples and process ``rank`` takes its own
    slice, so 2 processes x 2 images see exactly the samples of 1 process x 4 images.
    """

    def __init__(
        self, num_images: int, batch_size: int, seed: int, start_step: int, total_steps: int,
        rank: int = 0, world_size: int = 1,
    ) -> None:  # fmt: skip
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for step in range(self.start_step, self.total_steps):
            rng = random.Random(self.seed * 1_000_003 + step)
            size = self.batch_size * self.world_size
            yield [(rng.randrange(self.num_images), rng.getrandbits(32)) for _ in range(size)][mine]
