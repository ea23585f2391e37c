"""Stylising images with a trained checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import load_checkpoint, model_label
from .data import IMAGE_SUFFIXES, find_images, image_to_tensor, load_image, tensor_to_image
from .devices import autocast, pick_device, resolve_precision
from .errors import StyleTransferError, cannot_write

__all__ = ["FileResult", "OUTPUT_FORMATS", "Stylizer", "output_format", "save_image", "stylize_files"]

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


class Stylizer:
    """A network loaded once, ready to stylise any number of images.

    ``model``: a :class:`~styletransfer.network.TransformerNet` (or any module mapping
    (B, 3, H, W) in [0, 1] to the same); ``meta``: its checkpoint metadata (at least
    ``norm``); ``device``: auto, cpu, cuda or cuda:N; ``precision``: auto, fp32, bf16 or fp16.
    Raises StyleTransferError for an unavailable device or unknown precision.
    """

    def __init__(self, model: torch.nn.Module, meta: dict, device: str = "auto", precision: str = "auto") -> None:
        self.meta = meta
        self.device = pick_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto", precision: str = "auto") -> Stylizer:
        """The network of a ``.safetensors`` checkpoint; a file that is not one is a StyleTransferError."""
        ckpt = load_checkpoint(checkpoint)
        return cls(ckpt.build_model(), ckpt.meta, device, precision)

    @property
    def norm(self) -> str:
        return self.meta["norm"]

    @property
    def style(self) -> str:
        return self.meta.get("style", "?")

    @property
    def label(self) -> str:
        """E.g. "IEBN · starry night"."""
        return model_label({**self.meta, "style": self.style})

    @torch.inference_mode()
    def stylize_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] to stylised (B, 3, H, W) in [0, 1] (float32), any H and W."""
        x = images.to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            y = self.model(x)
        return y.float()

    def stylize(self, image: Image.Image) -> Image.Image:
        """An RGB image in, its stylisation (same size) out."""
        return tensor_to_image(self.stylize_tensor(image_to_tensor(image)[None])[0])


def output_format(path: Path) -> str:
    """Pillow's format name for the extension of ``path``; others are a StyleTransferError."""
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
        raise cannot_write(path, e) from None


def _expand_inputs(inputs: list[Path]) -> list[Path]:
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


def _names_a_file(out: Path) -> bool:
    return out.suffix.lower() in OUTPUT_FORMATS or out.suffix.lower() in IMAGE_SUFFIXES


def _plan_outputs(inputs: list[Path], given: list[Path], out: Path, suffix: str) -> list[Path]:
    """Where each input goes: ``out`` itself for one file named with an image extension,
    else ``out/<name>-<suffix>.png``, keeping sub-folders of a given folder."""
    if len(inputs) == 1 and len(given) == 1 and not given[0].is_dir() and _names_a_file(out):
        output_format(out)
        return [out]
    if _names_a_file(out):
        raise StyleTransferError(f"{out}: several inputs need an output folder, not a file name")
    return [out / _relative_folder(p, given) / f"{p.stem}-{suffix}.png" for p in inputs]


def _relative_folder(path: Path, given: list[Path]) -> Path:
    """The sub-folder of ``path`` inside the given folder it was found in (none for a file given)."""
    root = next((g for g in given if g.is_dir() and path.is_relative_to(g)), None)
    return path.relative_to(root).parent if root else Path()


@dataclass
class FileResult:
    """What happened to one input file: written to ``output``, or ``error`` (one line)."""

    source: Path
    output: Path
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def stylize_files(stylizer: Stylizer, inputs: list[Path], out: Path, max_size: int | None) -> list[FileResult]:
    """Stylise image files and folders of images (searched recursively) into ``out``.

    ``max_size``: the long side, in pixels, each image is scaled down to (None keeps its size).
    Returns one result per image file, in order; a file that fails does not stop the others.
    Raises StyleTransferError only for problems with the whole call (an empty folder, an
    output file name for several inputs).
    """
    files = _expand_inputs(inputs)
    outputs = _plan_outputs(files, inputs, out, f"{stylizer.style}-{stylizer.norm}")
    results = []
    for src, dst in zip(files, outputs):
        try:
            save_image(stylizer.stylize(load_image(src, max_size)), dst)
            results.append(FileResult(src, dst))
        except StyleTransferError as e:
            results.append(FileResult(src, dst, str(e)))
    return results
