"""Held-out photos for evaluation, and other tools' stylised images matched to them by file name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .data import find_images, load_image, readable_header
from .errors import StyleTransferError

__all__ = ["Photo", "find_photos", "match_outputs", "photo_stem", "read_output", "refuse_unreadable"]

# Two shapes whose aspect ratios differ by less than this are taken as the same picture.
ASPECT_TOLERANCE = 0.02
# After the photo's stem in an output's name: "photo-starry.png", "photo_out.jpg", "photo.styled.png".
STEM_SEPARATORS = ("-", "_", ".", " ")


@dataclass
class Photo:
    key: str  # path relative to the photo folder, with / separators: unique
    path: Path


def find_photos(folder: Path, limit: int | None = None) -> list[Photo]:
    """The images under ``folder`` (recursively, sorted by path), the first ``limit`` of them.

    Raises StyleTransferError for a missing folder, a folder without images, or any image
    whose header Pillow cannot read (all such files named in one line).
    """
    folder = Path(folder)
    if not folder.exists():
        raise StyleTransferError(f"{folder}: no such folder of photos")
    paths = find_images(folder)[: limit or None]
    if not paths:
        raise StyleTransferError(f"{folder}: no images in this folder (searched recursively)")
    refuse_unreadable(paths)
    return [Photo(p.relative_to(folder).as_posix(), p) for p in paths]


def refuse_unreadable(paths: list[Path]) -> None:
    bad = [p for p in paths if not readable_header(p)]
    if bad:
        names = ", ".join(str(p) for p in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise StyleTransferError(f"{len(bad)} unreadable image(s): {names}")


def photo_stem(key: str) -> str:
    return Path(key).stem


def match_outputs(photos: list[Photo], folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Pair each photo with its stylised version in ``folder`` (searched recursively) by file stem.

    Rule: an output whose stem equals a photo's stem is that photo's; otherwise it belongs to
    the photo with the longest stem that its stem starts with, followed by one of ``- _ .``
    or a space (so ``100007-starry_night-in.png``, as ``styletransfer stylize`` names it,
    matches ``100007.jpg``, and ``1-x.png`` does not match ``10.jpg``). Case matters; the
    sub-folder a file is in does not; outputs that match no photo are ignored.
    Returns ({photo key: output path}, [keys of photos without an output]).

    Raises StyleTransferError if ``folder`` is missing, if two photos share a stem, or if two
    outputs match the same photo.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StyleTransferError(f"{folder}: no such folder of stylised images")
    by_stem: dict[str, str] = {}
    for p in photos:
        stem = photo_stem(p.key)
        if stem in by_stem:
            raise StyleTransferError(
                f"photos {by_stem[stem]} and {p.key} share the name {stem!r}: outputs are matched by name, rename one"
            )
        by_stem[stem] = p.key
    matched: dict[str, Path] = {}
    for out in find_images(folder):
        key = photo_for_output(out.stem, by_stem)
        if key is None:
            continue
        if key in matched:
            raise StyleTransferError(f"{folder}: both {matched[key].name} and {out.name} match photo {key}; keep one")
        matched[key] = out
    return matched, [p.key for p in photos if p.key not in matched]


def photo_for_output(stem: str, by_stem: dict[str, str]) -> str | None:
    if stem in by_stem:
        return by_stem[stem]
    candidates = [s for s in by_stem if any(stem.startswith(s + sep) for sep in STEM_SEPARATORS)]
    return by_stem[max(candidates, key=len)] if candidates else None


def read_output(path: Path, size: tuple[int, int]) -> Image.Image:
    """Another tool's output, resized to the photo's ``size`` (W, H) if it has another size.

    Raises StyleTransferError if its aspect ratio differs from the photo's (a crop, say).
    """
    img = load_image(path)
    if img.size == size:
        return img
    aspect, want = img.width / img.height, size[0] / size[1]
    if abs(aspect / want - 1) > ASPECT_TOLERANCE:
        raise StyleTransferError(
            f"{path}: {img.width}x{img.height}, but its photo is {size[0]}x{size[1]}; "
            "an output must show the whole photo (same aspect ratio)"
        )
    return img.resize(size, Image.Resampling.LANCZOS)
