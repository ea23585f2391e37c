"""Stylising images with a trained checkpoint."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import load_checkpoint, model_label
from .controls import Controlled, Controls, apply_controls
from .data import IMAGE_SUFFIXES, find_images, image_to_tensor, load_image, tensor_to_image
from .devices import KEEP_FREED_MEMORY_UP_TO, autocast, is_out_of_memory, keep_freed_memory, pick_device, release_memory, resolve_precision
from .errors import OutOfMemory, StyleTransferError, cannot_write
from .grain import STYLISE_GRAIN, add_grain
from .streams import is_stdio, read_stdin_image, write_stdout_image
from .tiling import ProgressCallback, stylize_image_in_tiles, tile_side
from .video import VIDEO_SUFFIXES, check_video_output, find_videos, is_video, stylize_video, video_output_suffix

__all__ = [
    "FileResult", "OUTPUT_FORMATS", "Stylizer", "expand_inputs", "output_format", "plan_outputs",
    "refuse_overwriting_inputs", "save_image", "stylize_files",
]  # fmt: skip

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


class Stylizer:
    """A network loaded once, ready to stylise any number of images.

    ``model``: a :class:`~styletransfer.network.TransformerNet` (or any module mapping
    (B, 3, H, W) in [0, 1] to the same); ``meta``: its checkpoint metadata (at least
    ``norm``); ``device``: auto, cpu, cuda or cuda:N; ``precision``: auto, fp32, bf16 or fp16.
    Raises StyleTransferError for an unavailable device or unknown precision.

    On the CPU, passes over up to :data:`~styletransfer.devices.KEEP_FREED_MEMORY_UP_TO` pixels
    have the process keep freed memory for the next (:func:`~styletransfer.devices.keep_freed_memory`):
    each then runs without page faults; larger ones give it back.
    """

    def __init__(self, model: torch.nn.Module, meta: dict, device: str = "auto", precision: str = "auto") -> None:
        self.meta = meta
        self.device = pick_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.network = self.model  # what runs: the model itself, or its compiled form

    def compile(self) -> Stylizer:
        """Run a compiled form of the network from now on (see :mod:`styletransfer.compiled`):
        each new image size costs seconds of compilation once, then runs faster. Returns self."""
        from .compiled import compile_for_inference

        self.network = compile_for_inference(self.model)
        return self

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
    def stylize_tensor(self, images: torch.Tensor, grain: float = STYLISE_GRAIN) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] to stylised (B, 3, H, W) in [0, 1] (float32, on the stylizer's
        device), any H and W >= 1.

        ``grain``: the level of :func:`~styletransfer.grain.add_grain` the network sees, 8-bit
        steps (0: none). Raises :class:`~styletransfer.errors.OutOfMemory` (a
        StyleTransferError) when the device runs out of memory; the memory is released, so
        smaller images still work.
        """
        with self._memory_is_an_error(images.shape):
            self._set_allocator(images.shape[0] * images.shape[-2] * images.shape[-1])
            x = add_grain(images.to(self.device), grain)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.dtype):
                y = self.network(x)
            return y.float()

    def stylize(
        self,
        image: Image.Image,
        strength: float = 1.0,
        preserve_color: bool = False,
        stroke_scale: float = 1.0,
        tile: str | int = "auto",
        tile_progress: ProgressCallback | None = None,
        grain: float = STYLISE_GRAIN,
    ) -> Image.Image:
        """An RGB image in, its stylisation (same size) out, under the controls of
        :class:`~styletransfer.controls.Controls` (``strength`` 0 to 1, ``preserve_color``,
        ``stroke_scale``, ``grain``); the defaults give the network's output for the photo with its
        default grain. ``tile``: ``auto`` (tiles when the image is over the memory budget), ``off``,
        or a tile side in pixels (see
        :mod:`styletransfer.tiling`; ``tile_progress`` is its callback).

        Raises StyleTransferError (one line naming the option) for a control out of range, and
        OutOfMemory as :meth:`stylize_tensor`.
        """
        return self.render(image, Controls(strength, preserve_color, stroke_scale, grain), tile, tile_progress)

    def render(
        self, image: Image.Image, controls: Controls = Controls(), tile: str | int = "auto",
        tile_progress: ProgressCallback | None = None,
    ) -> Image.Image:  # fmt: skip
        """As :meth:`stylize`, with the controls already checked in one :class:`Controls`."""
        with self._memory_is_an_error((1, 3, image.height, image.width)):
            self._set_allocator(image.height * image.width)
            # A tiled image under plain controls stays in 8 bits, never a float copy, so huge images fit.
            if controls.plain and (side := tile_side(tile, image.height, image.width, self.device)):
                return stylize_image_in_tiles(self.model, image, side, self.dtype, tile_progress, controls.grain)
            photo = image_to_tensor(image)[None].to(self.device)
            network = partial(self._network_pass, tile=tile, tile_progress=tile_progress, grain=controls.grain)
            return tensor_to_image(apply_controls(network, photo, controls)[0])

    def _network_pass(self, x: torch.Tensor, tile, tile_progress, grain: float) -> torch.Tensor:
        """The network on (1, 3, H, W), in tiles with whole-image statistics when ``tile`` says so."""
        side = tile_side(tile, x.shape[-2], x.shape[-1], self.device)
        if side is None:
            return self.stylize_tensor(x, grain)
        tiled = stylize_image_in_tiles(self.model, tensor_to_image(x[0]), side, self.dtype, tile_progress, grain)
        return image_to_tensor(tiled)[None].to(self.device)

    def _set_allocator(self, pixels: int) -> None:
        """Keep freed memory for a CPU pass over up to KEEP_FREED_MEMORY_UP_TO pixels, else give it back."""
        if self.device.type == "cpu":
            keep_freed_memory(pixels <= KEEP_FREED_MEMORY_UP_TO)

    @contextmanager
    def _memory_is_an_error(self, shape):
        try:
            yield
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            release_memory(self.device)
            raise OutOfMemory(
                f"out of memory stylising {shape[0]} image(s) of {shape[-1]}x{shape[-2]} pixels on {self.device}; "
                "choose a smaller size (--max-size), smaller tiles (--tile) or a larger --stroke-scale"
            ) from None


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


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders replaced by the images and videos inside them (recursively)."""
    files = []
    for p in inputs:
        if p.is_dir() and not is_stdio(p):
            found = sorted(find_images(p) + find_videos(p))
            if not found:
                raise StyleTransferError(f"{p}: no images or videos in this folder")
            files.extend(found)
        else:
            files.append(p)
    return files


def _names_a_file(out: Path) -> bool:
    return out.suffix.lower() in OUTPUT_FORMATS or out.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def _check_output_type(src: Path, out: Path) -> None:
    """An image's output must be an image type, a video's a video type."""
    if is_video(src):
        check_video_output(out)
    else:
        output_format(out)


def _output_suffix(src: Path) -> str:
    return video_output_suffix(src) if is_video(src) else ".png"


def plan_outputs(inputs: list[Path], given: list[Path], out: Path, suffix: str) -> list[Path]:
    """Where each input image goes, decided before anything is written.

    ``out`` itself for one file given and ``out`` named like an image or video (or ``-``, standard
    output, for one image); else ``out/<sub-folder>/<name>-<suffix>.png`` (videos keep their
    container, or become ``.mp4``; ``-``, standard input, is named ``stdin``), keeping the
    sub-folders of a given folder. The
    paths returned are distinct and none is an input: inputs that would share a name keep their
    extension in it (``photo-jpg-...``, ``photo-png-...``), and a name still taken gets ``-2``,
    ``-3``, ... Raises StyleTransferError for an output file name with several inputs, or an
    output that is the input itself.
    """
    if is_stdio(out):
        if len(inputs) != 1 or is_video(inputs[0]):
            raise StyleTransferError("-o - writes one image to standard output: give one input image")
        return [out]
    if len(inputs) == 1 and len(given) == 1 and not given[0].is_dir() and _names_a_file(out):
        _check_output_type(inputs[0], out)
        refuse_overwriting_inputs(out, inputs)
        return [out]
    if _names_a_file(out):
        raise StyleTransferError(f"{out}: several inputs need an output folder, not a file name")
    wanted = [out / _relative_folder(p, given) / f"{_stem(p)}-{suffix}{_output_suffix(p)}" for p in inputs]
    return _distinct(inputs, wanted, suffix)


def _stem(path: Path) -> str:
    return "stdin" if is_stdio(path) else path.stem


def _distinct(inputs: list[Path], wanted: list[Path], suffix: str) -> list[Path]:
    """``wanted`` made distinct from each other and from every input."""
    shared = {w for w, count in Counter(wanted).items() if count > 1}
    taken = {_same_file_key(p) for p in inputs}
    planned = []
    for p, w in zip(inputs, wanted):
        if w in shared:
            w = w.with_name(f"{p.stem}-{p.suffix.lstrip('.').lower()}-{suffix}{w.suffix}")
        w = _first_free(w, taken)
        taken.add(_same_file_key(w))
        planned.append(w)
    return planned


def _first_free(path: Path, taken: set[Path]) -> Path:
    """``path``, or ``path`` with ``-2``, ``-3``, ... before its extension, whichever is not taken."""
    candidate, n = path, 1
    while _same_file_key(candidate) in taken:
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _same_file_key(path: Path) -> Path:
    """A key equal for two paths to the same file (relative or absolute, through links)."""
    return Path(path).resolve()


def refuse_overwriting_inputs(output: Path, inputs: list[Path]) -> None:
    """StyleTransferError if writing ``output`` would replace one of the command's own ``inputs``."""
    if _same_file_key(output) in {_same_file_key(p) for p in inputs}:
        raise StyleTransferError(f"{output}: is also an input; choose another output name")


def _relative_folder(path: Path, given: list[Path]) -> Path:
    """The sub-folder of ``path`` inside the given folder it was found in (none for a file given)."""
    root = next((g for g in given if g.is_dir() and path.is_relative_to(g)), None)
    return path.relative_to(root).parent if root else Path()


@dataclass
class FileResult:
    """What happened to one input file: written to ``output``, or ``error`` (one line); for a video,
    ``summary`` says what was written (frames, size, rate, length, sound).

    ``size``: the output's (width, height) in pixels; ``seconds``: wall time for this file
    (reading, stylising, writing). Both are None when the file failed.
    """

    source: Path
    output: Path
    error: str | None = None
    summary: str | None = None
    size: tuple[int, int] | None = None
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def stylize_files(
    stylizer: Stylizer, inputs: list[Path], out: Path, max_size: int | None, progress=None, *,
    controls: Controls = Controls(), stream_format: str = "PNG", **options,
) -> list[FileResult]:
    """Stylise image and video files, and folders of them (searched recursively), into ``out``.

    Images give images, videos give videos (:func:`styletransfer.video.stylize_video`).
    ``max_size``: the long side, in pixels, each image or frame is scaled down to (None keeps its
    size); ``progress``: a :func:`styletransfer.video.video_progress` bar for the videos, or None.
    ``controls``: strength, preserve colour and stroke scale, the same for every image and frame.
    ``-`` as the only input reads one image from standard input; ``out`` ``-`` writes the one
    result to standard output as ``stream_format`` (Pillow's name: PNG, JPEG or WEBP).
    ``options``: tiling options of :meth:`Stylizer.stylize` for the images (``tile``, ``tile_progress``).
    Returns one result per image file, in order; a file that fails does not stop the others.
    Raises StyleTransferError only for problems with the whole call (an empty folder, an
    output file name for several inputs).
    """
    if max_size is not None and max_size < 1:
        raise StyleTransferError(f"max_size must be at least 1 pixel (or None), not {max_size}")
    files = expand_inputs(inputs)
    outputs = plan_outputs(files, inputs, out, f"{stylizer.style}-{stylizer.norm}")
    return [_stylize_file(stylizer, src, dst, max_size, progress, controls, stream_format, options)
            for src, dst in zip(files, outputs)]  # fmt: skip


def _stylize_file(
    stylizer: Stylizer, src: Path, dst: Path, max_size: int | None, progress, controls: Controls, stream_format: str,
    options: dict,
) -> FileResult:  # fmt: skip
    try:
        start = time.perf_counter()
        if is_video(src):
            video = stylize_video(Controlled(stylizer, controls), src, dst, max_size, progress=progress)
            return FileResult(src, dst, summary=video.line(), size=video.size, seconds=time.perf_counter() - start)
        result = stylizer.render(_read(src, max_size), controls, **options)
        _write(result, dst, stream_format)
        return FileResult(src, dst, size=result.size, seconds=time.perf_counter() - start)
    except OutOfMemory as e:
        return FileResult(src, dst, f"{src}: {e}")
    except StyleTransferError as e:
        return FileResult(src, dst, str(e))


def _read(src: Path, max_size: int | None) -> Image.Image:
    return read_stdin_image(max_size) if is_stdio(src) else load_image(src, max_size)


def _write(img: Image.Image, dst: Path, stream_format: str) -> None:
    if is_stdio(dst):
        write_stdout_image(img, stream_format)
    else:
        save_image(img, dst)
