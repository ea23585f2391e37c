"""Stylisation quality on held-out photos, measured with metrics that are not the training loss.

Every row of an evaluation is one model (a checkpoint, stylising the photos here) or one
folder of images stylised by any other tool. Each row is scored on every photo with:

- **content distance**: how far the stylised image's VGG19 relu4_2 features are from the
  photo's, relative to the photo's (the content layer of Gatys et al. 2016);
- **style distance**: how far its Gram matrices at relu1_1, relu2_1, relu3_1, relu4_1 and
  relu5_1 (Gatys et al.'s style layers) are from the style image's, relative to the style
  image's, averaged over the five layers;
- the **training loss terms** (content, style, tv, total) as :class:`PerceptualLoss` computes
  them (in float32) with the model's own training settings; a folder gets the settings the
  checkpoints evaluated with it share, or no loss terms;
- the **seconds per image** the model took to stylise it (models only; the forward pass alone).

Models run in eval mode (BN uses its running statistics), one photo at a time, so a photo's
scores do not depend on which other photos or models are evaluated, nor on their order.

The two distances always use VGG19 with ImageNet weights and fixed layers, whatever network,
layers and weights a model was trained with, so models trained differently and other tools
are measured with the same ruler. Stylised images are scored as they would be saved: clamped
to [0, 1] and rounded to 8 bits, so a model scores exactly as a folder of its saved PNGs does.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .checkpoint import atomic_write
from .compare import comparison_grid, fit, resolve_models
from .data import find_images, image_to_tensor, load_image, readable_header, tensor_to_image
from .devices import pick_device
from .errors import StyleTransferError
from .loss import (
    RANDOM_WEIGHTS,
    LossWeights,
    PerceptualLoss,
    VGGFeatures,
    gram_matrix,
    load_vgg_features,
)
from .stylize import Stylizer, output_format, save_image

METRIC_VGG = "vgg19"
CONTENT_DISTANCE_LAYER = "relu4_2"
STYLE_DISTANCE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_SIZE = 512
DEFAULT_STYLE_SIZE = 512
MIN_SIDE = 16  # VGG19 halves the image four times before relu5_1
GRID_PHOTOS = 4
GRID_CELL = 256
# Two shapes whose aspect ratios differ by less than this are taken as the same picture.
ASPECT_TOLERANCE = 0.02
# After the photo's stem in an output's name: "photo-starry.png", "photo_out.jpg", "photo.styled.png".
STEM_SEPARATORS = ("-", "_", ".", " ")

METRICS = (
    "content_distance", "style_distance", "content_loss", "style_loss", "tv_loss", "total_loss", "seconds_per_image",
)  # fmt: skip
METRIC_TITLES = {
    "content_distance": "content distance",
    "style_distance": "style distance",
    "content_loss": "content loss",
    "style_loss": "style loss",
    "tv_loss": "tv loss",
    "total_loss": "total loss",
    "seconds_per_image": "s / image",
}


# --- the metrics -------------------------------------------------------------------------


def relative_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image ``||x - target||^2 / ||target||^2``, the squared Frobenius norms over all but dim 0.

    ``x`` and ``target``: (B, ...) of the same shape, any scale. Returns (B,) float32 values
    >= 0: 0 when equal, 1 when ``x`` is 0 or twice ``target``. A zero target counts as 1e-12.
    """
    x, target = x.float().flatten(1), target.float().flatten(1)
    return (x - target).pow(2).sum(1) / target.pow(2).sum(1).clamp_min(1e-12)


def content_distance(output_features: torch.Tensor, photo_features: torch.Tensor) -> torch.Tensor:
    """Content distance: ``||F(out) - F(photo)||^2 / ||F(photo)||^2`` per image.

    F is VGG19's relu4_2 activation, shape (B, 512, H/8, W/8) for both arguments: the content
    layer of Gatys et al. 2016 ("Image Style Transfer Using Convolutional Neural Networks",
    Eq. 1), here divided by the photo's own energy so the value is scale free. Returns (B,)
    values >= 0; 0 for the photo itself, about 1 or more for an image that keeps nothing of
    it (an unrelated photo scores about 1.4 with ImageNet weights).
    """
    return relative_error(output_features, photo_features)


def style_distance(output_features: dict[str, torch.Tensor], style_grams: dict[str, torch.Tensor]) -> torch.Tensor:
    """Style distance: ``mean over l of ||G_l(out) - G_l(style)||^2 / ||G_l(style)||^2`` per image.

    ``output_features``: VGG19 activations (B, C_l, H_l, W_l) at each layer l of
    :data:`STYLE_DISTANCE_LAYERS` (relu1_1 ... relu5_1 with equal weights, as in Gatys et al.
    2016, Eq. 3-5, whose per-layer normalisation 1/(4 N^2 M^2) is replaced here by the style
    Gram's own energy, so the value is scale free). ``style_grams``: the style image's Gram matrices
    (1, C_l, C_l) at the same layers, from :func:`gram_matrix` (normalised by C*H*W, so the
    image sizes need not match). Returns (B,) values >= 0; 0 when the Grams are equal.
    """
    per_layer = [
        relative_error(gram_matrix(output_features[n]), style_grams[n].expand(output_features[n].shape[0], -1, -1))
        for n in STYLE_DISTANCE_LAYERS
    ]
    return torch.stack(per_layer).mean(0)


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as they would be saved: clamped and rounded to 8 bits (same shape)."""
    return images.clamp(0, 1).mul(255).round().div(255)


# --- what is evaluated -------------------------------------------------------------------


@dataclass(frozen=True)
class LossSettings:
    """The settings of the training loss: which VGG, layers, weights and style image size."""

    vgg: str
    content_layer: str
    style_layers: tuple[str, ...]
    weights: tuple[float, float, float]  # content, style, tv
    style_size: int
    vgg_weights: str | None = None  # the weights file the model was trained with, if recorded

    @classmethod
    def from_meta(cls, meta: dict) -> LossSettings:
        """A checkpoint's training settings (``meta["config"]``); ``styletransfer train``'s
        defaults for any it does not record."""
        from .train import TrainConfig

        defaults = {f.name: f.default for f in fields(TrainConfig)}
        config = defaults | (meta.get("config") or {})
        return cls(
            config["vgg"],
            config["content_layer"],
            tuple(config["style_layers"]),
            (float(config["content_weight"]), float(config["style_weight"]), float(config["tv_weight"])),
            int(config["style_size"]),
            config["vgg_weights"],
        )

    def describe(self) -> dict:
        w = self.weights
        return {
            "vgg": self.vgg, "content_layer": self.content_layer, "style_layers": list(self.style_layers),
            "content_weight": w[0], "style_weight": w[1], "tv_weight": w[2], "style_size": self.style_size,
        }  # fmt: skip


@dataclass
class Photo:
    key: str  # path relative to the photo folder, with / separators: unique
    path: Path


@dataclass
class Row:
    """One line of the result: a model stylising the photos here, or a folder of another tool's outputs."""

    label: str
    source: Path
    style: Path
    loss: LossSettings | None  # None: no training loss to report (a folder evaluated without checkpoints)
    stylizer: Stylizer | None = None
    outputs: dict[str, Path] = field(default_factory=dict)  # photo key -> stylised file (folders)

    @property
    def kind(self) -> str:
        return "model" if self.stylizer is not None else "folder"


@dataclass
class Evaluation:
    rows: list[Row]
    photos: list[Photo]
    scores: dict[tuple[str, str], dict[str, float | None]]  # (row label, photo key) -> metric values
    settings: dict
    grid: list[list[Image.Image]] = field(default_factory=list)

    def summary(self) -> list[dict]:
        """Per row: the number of photos and, per metric, the mean and standard error over photos."""
        out = []
        for row in self.rows:
            per_photo = [self.scores[(row.label, p.key)] for p in self.photos]
            stats = {m: mean_and_stderr([v[m] for v in per_photo]) for m in METRICS}
            out.append({**row_description(row), "n": len(per_photo), "metrics": stats})
        return out


def row_description(row: Row) -> dict:
    """What a row is, for the JSON summary: source, style image, loss settings, model precision."""
    loss = row.loss.describe() if row.loss else None
    precision = str(row.stylizer.dtype).removeprefix("torch.") if row.stylizer else None
    return {
        "model": row.label, "kind": row.kind, "source": str(row.source), "style": str(row.style),
        "loss_settings": loss, "precision": precision,
    }  # fmt: skip


def mean_and_stderr(values: list[float | None]) -> dict[str, float | None]:
    """Mean and standard error of the mean (sample sd / sqrt(n)); None where undefined.

    Summed with :func:`math.fsum` (exactly rounded), so the result does not depend on order.
    """
    if not values or any(v is None for v in values):
        return {"mean": None, "stderr": None}
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return {"mean": mean, "stderr": None}
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return {"mean": mean, "stderr": math.sqrt(var / n)}


# --- gathering photos, models and folders -------------------------------------------------


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


def model_rows(names: list[str], checkpoints: Path, style: Path | None, device: str, precision: str) -> list[Row]:
    """One row per checkpoint (a style name stands for all its checkpoints in ``checkpoints``).

    The style image is ``style`` if given, else the one the model was trained on (recorded in
    its metadata), which must still exist. Raises StyleTransferError for an unknown name, a
    file that is not a checkpoint, or a style image that cannot be found.
    """
    rows = []
    for path in resolve_models(names, checkpoints):
        stylizer = Stylizer(path, device, precision)
        loss = LossSettings.from_meta(stylizer.meta)
        rows.append(Row(stylizer.label, path, style or training_style(path, stylizer.meta), loss, stylizer))
    return rows


def training_style(path: Path, meta: dict) -> Path:
    recorded = (meta.get("config") or {}).get("style")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    where = f" ({recorded} is not here)" if recorded else ""
    raise StyleTransferError(f"{path}: its training style image is not found{where}; give it with --style")


def folder_rows(
    folders: list[Path], photos: list[Photo], style: Path | None, models: list[Row]
) -> tuple[list[Row], set[str]]:
    """One row per folder of another tool's outputs, and the keys of photos some folder lacks.

    The style image is ``style``, else the one all the checkpoints in ``models`` were trained
    on. The training loss terms use the settings all those checkpoints share (so the folder is
    scored on the same objective); without checkpoints, or if they differ, there are none.
    Raises StyleTransferError when there is no style image or a folder matches no photo.
    """
    if not folders:
        return [], set()
    style = style or shared_style(models)
    loss = shared_loss_settings(models)
    rows, missing = [], set()
    for folder in folders:
        matched, lacking = match_outputs(photos, folder)
        if not matched:
            raise StyleTransferError(f"{folder}: no image here is named after a photo (e.g. {photo_stem(photos[0].key)}-*.png)")
        refuse_unreadable(list(matched.values()))
        if lacking:
            names = ", ".join(lacking[:5]) + (", ..." if len(lacking) > 5 else "")
            warnings.warn(
                f"{folder}: no stylised image for {len(lacking)} of {len(photos)} photos ({names}); "
                "those photos are left out of every row",
                stacklevel=1,
            )
        missing.update(lacking)
        rows.append(Row(Path(folder).name or str(folder), Path(folder), style, loss, outputs=matched))  # type: ignore[arg-type]
    return rows, missing


def shared_style(models: list[Row]) -> Path:
    styles = {r.style.resolve() for r in models}
    if len(styles) == 1:
        return styles.pop()
    differ = " (the checkpoints were trained on different ones)" if styles else ""
    raise StyleTransferError(f"scoring a folder of stylised images needs the style image: give --style{differ}")


def shared_loss_settings(models: list[Row]) -> LossSettings | None:
    """The training settings all the checkpoints share (the weights file aside), else None."""
    settings = {replace(r.loss, vgg_weights=None) for r in models if r.loss}
    return settings.pop() if len(settings) == 1 else None


def unique_labels(rows: list[Row]) -> None:
    """Where several rows would have the same label, add the file or folder to tell them apart."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    for r in rows:
        if counts[r.label] > 1:
            r.label = f"{r.label} ({r.source})"


# --- scoring -------------------------------------------------------------------------------


def vgg_features(arch: str, weights: str | None) -> torch.nn.Sequential:
    """:func:`load_vgg_features`; ``"random"`` weights are seeded, so scores are repeatable."""
    if weights != RANDOM_WEIGHTS:
        return load_vgg_features(arch, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return load_vgg_features(arch, weights)


def describe_vgg_weights(weights: str | None) -> str:
    import os

    from .loss import VGG_WEIGHTS_ENV

    weights = weights or os.environ.get(VGG_WEIGHTS_ENV) or None
    if weights == RANDOM_WEIGHTS:
        return "random (untrained: for tests only)"
    return Path(weights).name if weights else "torchvision IMAGENET1K_V1"


class Scorer:
    """The VGG networks, style Gram matrices and training losses, each built once and shared.

    ``vgg_weights``: as ``--vgg-weights`` (a file, ``"random"``, or None for the environment
    variable / torchvision's download); it serves the VGG19 of the metrics and the loss of
    models trained with VGG19. A model trained with another VGG uses the weights file its
    checkpoint records if that file is here, else the same lookup for that architecture.
    """

    def __init__(self, vgg_weights: str | None, style_size: int, device: torch.device) -> None:
        self.vgg_weights, self.style_size, self.device = vgg_weights, style_size, device
        self.features: dict[str, torch.nn.Sequential] = {}
        layers = (CONTENT_DISTANCE_LAYER, *STYLE_DISTANCE_LAYERS)
        self.metric = VGGFeatures(self.vgg(METRIC_VGG), METRIC_VGG, layers).to(device)
        self.grams: dict[Path, dict[str, torch.Tensor]] = {}
        self.losses: dict[tuple, PerceptualLoss] = {}

    def vgg(self, arch: str, recorded: str | None = None) -> torch.nn.Sequential:
        weights = self.vgg_weights
        if weights != RANDOM_WEIGHTS and arch != METRIC_VGG and recorded and Path(recorded).is_file():
            weights = recorded
        key = f"{arch}:{weights}"
        if key not in self.features:
            self.features[key] = vgg_features(arch, weights)
        return self.features[key]

    def style_image(self, path: Path, size: int) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1], long side at most ``size``; a one-line error if unreadable or tiny."""
        img = load_image(path, max_size=size)
        if min(img.size) < MIN_SIDE:
            raise StyleTransferError(f"{path}: style image of {img.width}x{img.height} is too small (sides of {MIN_SIDE}+ px)")
        return image_to_tensor(img)[None].to(self.device)

    @torch.inference_mode()
    def style_grams(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self.grams:
            feats = self.metric(self.style_image(path, self.style_size))
            self.grams[path] = {n: gram_matrix(feats[n]) for n in STYLE_DISTANCE_LAYERS}
        return self.grams[path]

    def loss_for(self, row: Row) -> PerceptualLoss:
        """The training loss of ``row`` (which has loss settings), its style image at the training size."""
        s = row.loss
        key = (s.vgg, s.content_layer, s.style_layers, s.weights, s.style_size, row.style)
        if key not in self.losses:
            try:
                features = self.vgg(s.vgg, s.vgg_weights)
                style = self.style_image(row.style, s.style_size)
                loss = PerceptualLoss(features, style, s.vgg, LossWeights(*s.weights), s.content_layer, s.style_layers)
            except StyleTransferError as e:
                raise StyleTransferError(f"{row.label}: training loss ({s.vgg}): {e}") from None
            self.losses[key] = loss.to(self.device).eval()
        return self.losses[key]

    @torch.inference_mode()
    def content_target(self, photo: torch.Tensor) -> torch.Tensor:
        return self.metric(photo, only=CONTENT_DISTANCE_LAYER)[CONTENT_DISTANCE_LAYER]

    @torch.inference_mode()
    def score(self, row: Row, output: torch.Tensor, photo: torch.Tensor, target: torch.Tensor) -> dict[str, float | None]:
        """Every metric but time for one stylised image (1, 3, H, W) of ``photo`` (same shape);
        ``target`` is the photo's :meth:`content_target`. Loss terms are None for a row without loss settings."""
        feats = self.metric(output)
        losses = {k: v.item() for k, v in self.loss_for(row)(output, photo).items()} if row.loss else {}
        return {
            "content_distance": content_distance(feats[CONTENT_DISTANCE_LAYER], target).item(),
            "style_distance": style_distance(feats, self.style_grams(row.style)).item(),
            **{f"{k}_loss": losses.get(k) for k in ("content", "style", "tv", "total")},
        }


def load_photo(photo: Photo, size: int) -> Image.Image:
    img = load_image(photo.path, max_size=size)
    if min(img.size) < MIN_SIDE:
        raise StyleTransferError(f"{photo.path}: {img.width}x{img.height} is too small to score (sides of {MIN_SIDE}+ px)")
    return img


def stylised(row: Row, photo: Photo, image: Image.Image, device: torch.device) -> tuple[torch.Tensor, float | None]:
    """The row's stylisation of ``image`` as (1, 3, H, W) in [0, 1], 8-bit, and the seconds it took."""
    if row.stylizer is None:
        return quantise(image_to_tensor(read_output(row.outputs[photo.key], image.size))[None].to(device)), None
    x = image_to_tensor(image)[None]
    start = time.perf_counter()
    y = row.stylizer.stylize_tensor(x)
    if y.device.type == "cuda":
        torch.cuda.synchronize(y.device)
    seconds = time.perf_counter() - start
    return quantise(y.to(device)), seconds


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


def warm_up(rows: list[Row]) -> None:
    """One untimed stylisation per model, so its first photo is not charged for set-up."""
    for row in rows:
        if row.stylizer is not None:
            row.stylizer.stylize_tensor(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))


def evaluate(
    rows: list[Row],
    photos: list[Photo],
    scorer: Scorer,
    size: int = DEFAULT_SIZE,
    grid_photos: int = 0,
    on_step: Callable[[], None] | None = None,
) -> Evaluation:
    """Score every row on every photo (long side at most ``size`` px); the photos are the outer loop,
    so each photo is read and its features computed once. ``on_step`` is called after each pair.
    The first ``grid_photos`` photos and their stylisations are kept for :func:`grid_image`.
    """
    for row in rows:  # problems with a style image or a VGG show up before any work
        scorer.style_grams(row.style)
        if row.loss:
            scorer.loss_for(row)
    warm_up(rows)
    scores: dict[tuple[str, str], dict[str, float | None]] = {}
    grid = []
    for i, photo in enumerate(photos):
        image = load_photo(photo, size)
        x = image_to_tensor(image)[None].to(scorer.device)
        target = scorer.content_target(x)
        cells = [image]
        for row in rows:
            out, seconds = stylised(row, photo, image, scorer.device)
            scores[(row.label, photo.key)] = {**scorer.score(row, out, x, target), "seconds_per_image": seconds}
            if i < grid_photos:
                cells.append(tensor_to_image(out[0]))
            if on_step:
                on_step()
        if i < grid_photos:
            grid.append(cells)
    settings = {"size": size, "style_size": scorer.style_size, "metric_vgg": METRIC_VGG,
                "content_distance_layer": CONTENT_DISTANCE_LAYER, "style_distance_layers": list(STYLE_DISTANCE_LAYERS),
                "vgg_weights": describe_vgg_weights(scorer.vgg_weights), "device": str(scorer.device)}  # fmt: skip
    return Evaluation(rows, photos, scores, settings, grid)


# --- reporting -------------------------------------------------------------------------------


def format_stat(stat: dict[str, float | None], metric: str) -> str:
    mean, se = stat["mean"], stat["stderr"]
    if mean is None:
        return "-"
    if metric == "seconds_per_image":
        text = f"{mean:.3f}"
        return text if se is None else f"{text} ± {se:.3f}"
    return f"{mean:.4g}" if se is None else f"{mean:.4g} ± {se:.2g}"


def summary_table(ev: Evaluation):
    """A rich table: one row per model or folder, mean ± standard error over photos per metric."""
    from rich.table import Table

    n = len(ev.photos)
    table = Table(
        title=f"{n} photo(s) at {ev.settings['size']} px long side (at most); mean ± standard error",
        caption=(
            f"content distance: VGG19 {CONTENT_DISTANCE_LAYER}; style distance: Grams at "
            f"{', '.join(STYLE_DISTANCE_LAYERS)}, style image at {ev.settings['style_size']} px; "
            f"VGG weights: {ev.settings['vgg_weights']}. Loss terms: each model's training settings "
            "(a folder: those the checkpoints share)."
        ),
    )
    table.add_column("model")
    table.add_column("style")
    for m in METRICS:
        table.add_column(METRIC_TITLES[m], justify="right")
    for s in ev.summary():
        table.add_row(s["model"], Path(s["style"]).stem, *(format_stat(s["metrics"][m], m) for m in METRICS))
    return table


def json_value(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def per_photo_rows(ev: Evaluation) -> list[dict]:
    """One dict per (row, photo), photos in path order."""
    out = []
    for row in ev.rows:
        desc = {"model": row.label, "kind": row.kind, "source": str(row.source), "style": str(row.style)}
        for p in sorted(ev.photos, key=lambda p: p.key):
            out.append({**desc, "photo": p.key, **{m: json_value(ev.scores[(row.label, p.key)][m]) for m in METRICS}})
    return out


def write_json(ev: Evaluation, path: Path) -> None:
    """``{"settings": {...}, "summary": [per row: n, loss settings, metrics: {mean, stderr}], "photos": [...]}``."""
    summary = [{**s, "metrics": {m: {k: json_value(v) for k, v in st.items()} for m, st in s["metrics"].items()}}
               for s in ev.summary()]  # fmt: skip
    doc = {"settings": ev.settings, "summary": summary, "photos": per_photo_rows(ev)}
    atomic_write(Path(path), (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())


def write_csv(ev: Evaluation, path: Path) -> None:
    """Per-photo rows (``stat`` = value), then per model a ``mean`` and a ``stderr`` row (photo empty)."""
    columns = ["model", "kind", "source", "style", "photo", "stat", "n", *METRICS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for r in per_photo_rows(ev):
        writer.writerow({**r, "stat": "value", "n": 1})
    for s in ev.summary():
        base = {k: s[k] for k in ("model", "kind", "source", "style")} | {"photo": "", "n": s["n"]}
        for stat in ("mean", "stderr"):
            writer.writerow({**base, "stat": stat, **{m: s["metrics"][m][stat] for m in METRICS}})
    atomic_write(Path(path), buf.getvalue().encode())


def grid_image(ev: Evaluation, cell: int = GRID_CELL) -> Image.Image:
    """The kept photos, one per grid row: the photo, then each row's stylisation (square cells)."""
    rows = [[fit(img, cell) for img in cells] for cells in ev.grid]
    return comparison_grid(rows, ["photo"] + [r.label for r in ev.rows], cell)


@contextlib.contextmanager
def progress_bar(console, total: int):
    """A rich progress bar over photos x rows on a terminal (nothing otherwise); yields ``advance()``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as progress:  # fmt: skip
        task = progress.add_task("evaluate", total=total)
        yield lambda: progress.advance(task)


# --- the command ---------------------------------------------------------------------------------


def run(
    photos_dir: Path,
    models: list[str],
    outputs: list[Path],
    style: Path | None = None,
    checkpoints: Path = Path("checkpoints"),
    size: int = DEFAULT_SIZE,
    style_size: int = DEFAULT_STYLE_SIZE,
    limit: int | None = None,
    vgg_weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    grid: Path | None = None,
    console=None,
) -> Evaluation:
    """Everything ``styletransfer evaluate`` does but printing: check the inputs, score, write the grid.

    Raises StyleTransferError (one line) for any bad input.
    """
    check_options(models, outputs, size, style_size, limit, grid, style)
    photos = find_photos(photos_dir, limit)
    rows = model_rows(models, checkpoints, style, device, precision)
    folders, missing = folder_rows(outputs, photos, style, rows)
    photos = [p for p in photos if p.key not in missing]
    if not photos:
        raise StyleTransferError("no photo has a stylised image in every folder given")
    rows += folders
    unique_labels(rows)
    scorer = Scorer(vgg_weights, style_size, pick_device(device))
    with progress_bar(console, len(photos) * len(rows)) if console else contextlib.nullcontext(None) as advance:
        ev = evaluate(rows, photos, scorer, size, GRID_PHOTOS if grid else 0, advance)
    ev.settings["photos"] = str(photos_dir)
    if grid:
        save_image(grid_image(ev, min(GRID_CELL, size)), grid)
    return ev


def check_options(models, outputs, size, style_size, limit, grid, style) -> None:
    if not models and not outputs:
        raise StyleTransferError("nothing to evaluate: give checkpoints with -m and/or folders of stylised images with --outputs")
    if size < MIN_SIDE or style_size < MIN_SIDE:
        raise StyleTransferError(f"--size and --style-size must be at least {MIN_SIDE}")
    if limit is not None and limit < 0:
        raise StyleTransferError("--limit must be 0 (all photos) or positive")
    if grid is not None:
        output_format(Path(grid))
    if style is not None and not Path(style).is_file():
        raise StyleTransferError(f"{style}: no such style image")
