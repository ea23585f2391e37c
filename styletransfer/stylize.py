"""Stylising images with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .checkpoint import load_checkpoint
from .data import IMAGE_SUFFIXES, find_images, image_to_tensor, load_image, tensor_to_image
from .devices import autocast, pick_device, resolve_precision
from .errors import StyleTransferError
from .norms import NORM_LABELS

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


class Stylizer:
    """A checkpoint loaded once, ready to stylise any number of images."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", precision: str = "auto") -> None:
        ckpt = load_checkpoint(checkpoint)
        self._setup(ckpt.build_model(), ckpt.meta, device, precision)

    @classmethod
    def from_model(cls, model: torch.nn.Module, meta: dict, device: str = "auto", precision: str = "auto"):
        """A stylizer for a network in memory (``meta`` needs at least ``norm``)."""
        stylizer = cls.__new__(cls)
        stylizer._setup(model, meta, device, precision)
        return stylizer

    def _setup(self, model: torch.nn.Module, meta: dict, device: str, precision: str) -> None:
        self.meta = meta
        self.device = pick_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()

    @property
    def norm(self) -> str:
        return self.meta["norm"]

    @property
    def style(self) -> str:
        return self.meta.get("style", "?")

    @property
    def label(self) -> str:
        return f"{NORM_LABELS[self.norm]} · {self.style.replace('_', ' ')}"

    @torch.inference_mode()
    def stylize_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] to stylised (B, 3, H, W) in [0, 1], any H and W."""
        x = images.to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            y = self.model(x)
        return y.float()

    def stylize(self, image: Image.Image) -> Image.Image:
        """An RGB image in, its stylisation (same size) out."""
        return tensor_to_image(self.stylize_tensor(image_to_tensor(image)[None])[0])


def output_format(path: Path) -> str:
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise StyleTransferError(f"{path}: unknown output type; use .png, .jpg or .webp")
    return fmt


def save_image(img: Image.Image, path: Path) -> None:
    """Save by the extension of ``path`` (PNG, JPEG or WebP), creating the folder."""
    fmt = output_format(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        img.save(path, fmt, **options)
    except OSError as e:
        raise StyleTransferError(f"{path}: cannot write ({e.strerror or e})") from None


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders replaced by the images inside them (recursively)."""
    files = []
    for p in inputs:
        if p.is_dir():
            found = find_images(p)
            if not found:
                raise StyleTransferError(f"{p}: no images in this folder")
            files.extend(found)
        else:
            files.append(p)
    return files


def plan_outputs(inputs: list[Path], given: list[Path], out: Path, suffix: str) -> list[Path]:
    """Where each input goes: ``out`` itself for one file named with an image extension,
    else ``out/<name>-<suffix>.png``, keeping sub-folders of a given folder."""
    names_a_file = out.suffix.lower() in OUTPUT_FORMATS or is_image_name(out)
    if len(inputs) == 1 and len(given) == 1 and not given[0].is_dir() and names_a_file:
        output_format(out)
        return [out]
    if names_a_file:
        raise StyleTransferError(f"{out}: several inputs need an output folder, not a file name")
    outputs = []
    for p in inputs:
        root = next((g for g in given if g.is_dir() and p.is_relative_to(g)), None)
        rel = p.relative_to(root).parent if root else Path()
        outputs.append(out / rel / f"{p.stem}-{suffix}.png")
    return outputs


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def stylize_files(stylizer: Stylizer, inputs: list[Path], out: Path, max_size: int | None, on_done=None) -> list[str]:
    """Stylise every input; returns one error line per input that failed (the rest are written)."""
    files = expand_inputs(inputs)
    outputs = plan_outputs(files, inputs, out, f"{stylizer.style}-{stylizer.norm}")
    errors = []
    for src, dst in zip(files, outputs):
        try:
            save_image(stylizer.stylize(load_image(src, max_size)), dst)
        except StyleTransferError as e:
            errors.append(str(e))
        if on_done:
            on_done(src, dst)
    return errors
