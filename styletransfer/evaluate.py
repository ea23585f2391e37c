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
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .data import MIN_STYLE_SIDE, image_to_tensor, load_image, load_style_image, tensor_to_image
from .devices import pick_device
from .errors import StyleTransferError
from .grain import STYLISE_GRAIN, check_grain
from .loss import (
    RANDOM_WEIGHTS,
    LossWeights,
    PerceptualLoss,
    VGGFeatures,
    gram_matrix,
    load_vgg_features,
)
from .metrics import (
    CONTENT_DISTANCE_LAYER,
    METRIC_VGG,
    STYLE_DISTANCE_LAYERS,
    blotch_area,
    content_distance,
    mean_and_stderr,
    quantise,
    style_distance,
)
from .models import find_style_image, resolve_models
from .photos import Photo, find_photos, match_outputs, photo_stem, read_output, refuse_unreadable
from .stylize import Stylizer, output_format

__all__ = [
    "GRID_CELL", "METRICS", "METRIC_TITLES", "Evaluation", "LossSettings", "Row", "Scorer", "evaluate", "model_rows", "run",
]  # fmt: skip

DEFAULT_SIZE = 512
DEFAULT_STYLE_SIZE = 512
MIN_SIDE = MIN_STYLE_SIDE  # VGG19 halves the image four times before relu5_1
GRID_PHOTOS = 4
GRID_CELL = 256

METRICS = (
    "content_distance", "style_distance", "blotch_area", "content_loss", "style_loss", "tv_loss", "total_loss",
    "seconds_per_image",
)  # fmt: skip
METRIC_TITLES = {
    "content_distance": "content distance",
    "style_distance": "style distance",
    "blotch_area": "blotch area %",
    "content_loss": "content loss",
    "style_loss": "style loss",
    "tv_loss": "tv loss",
    "total_loss": "total loss",
    "seconds_per_image": "s / image",
}


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
        from .config import TrainConfig

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


# --- gathering photos, models and folders -------------------------------------------------


def model_rows(names: list[str], checkpoints: Path | None, style: Path | None, device: str, precision: str) -> list[Row]:
    """One row per checkpoint (names are looked up as :mod:`styletransfer.models` says: a style
    name stands for all its models, ``checkpoints`` is searched before the shipped models).

    The style image is ``style`` if given, else the one the model was trained on (recorded in
    its metadata) if it still exists, else the shipped painting of the same style and file
    name. Raises StyleTransferError for an unknown name, a file that is not a checkpoint, or a
    style image that cannot be found.
    """
    rows = []
    for path in resolve_models(names, checkpoints):
        stylizer = Stylizer.from_checkpoint(path, device, precision)
        loss = LossSettings.from_meta(stylizer.meta)
        rows.append(Row(stylizer.label, path, style or training_style(path, stylizer.meta), loss, stylizer))
    return rows


def training_style(path: Path, meta: dict) -> Path:
    recorded = (meta.get("config") or {}).get("style")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    shipped = find_style_image(meta.get("style") or "?")
    if recorded and shipped is not None and shipped.name == Path(recorded).name:
        return shipped  # the same painting, shipped with the package (as for the shipped models)
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
        """(1, 3, H, W) in [0, 1], long side ``size`` (scaled up or down); a one-line error if unreadable or too thin."""
        return image_to_tensor(load_style_image(path, size))[None].to(self.device)

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
            "blotch_area": blotch_area(output).item(),
            **{f"{k}_loss": losses.get(k) for k in ("content", "style", "tv", "total")},
        }


def load_photo(photo: Photo, size: int) -> Image.Image:
    img = load_image(photo.path, max_size=size)
    if min(img.size) < MIN_SIDE:
        raise StyleTransferError(f"{photo.path}: {img.width}x{img.height} is too small to score (sides of {MIN_SIDE}+ px)")
    return img


def stylised(
    row: Row, photo: Photo, image: Image.Image, device: torch.device, grain: float = STYLISE_GRAIN
) -> tuple[torch.Tensor, float | None]:
    """The row's stylisation of ``image`` as (1, 3, H, W) in [0, 1], 8-bit, and the seconds it took;
    ``grain``: the level models add (8-bit steps)."""
    if row.stylizer is None:
        return quantise(image_to_tensor(read_output(row.outputs[photo.key], image.size))[None].to(device)), None
    x = image_to_tensor(image)[None]
    start = time.perf_counter()
    y = row.stylizer.stylize_tensor(x, grain)
    if y.device.type == "cuda":
        torch.cuda.synchronize(y.device)
    seconds = time.perf_counter() - start
    return quantise(y.to(device)), seconds


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
    grain: float = STYLISE_GRAIN,
) -> Evaluation:
    """Score every row on every photo (long side at most ``size`` px); the photos are the outer loop,
    so each photo is read and its features computed once. ``on_step`` is called after each pair.
    ``grain``: the grain level the models add (8-bit steps, :mod:`styletransfer.grain`).
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
            out, seconds = stylised(row, photo, image, scorer.device, grain)
            scores[(row.label, photo.key)] = {**scorer.score(row, out, x, target), "seconds_per_image": seconds}
            if i < grid_photos:
                cells.append(tensor_to_image(out[0]))
            if on_step:
                on_step()
        if i < grid_photos:
            grid.append(cells)
    settings = {"size": size, "style_size": scorer.style_size, "metric_vgg": METRIC_VGG,
                "content_distance_layer": CONTENT_DISTANCE_LAYER, "style_distance_layers": list(STYLE_DISTANCE_LAYERS),
                "vgg_weights": describe_vgg_weights(scorer.vgg_weights), "device": str(scorer.device),
                "grain": grain}  # fmt: skip
    return Evaluation(rows, photos, scores, settings, grid)


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
    checkpoints: Path | None = None,
    size: int = DEFAULT_SIZE,
    style_size: int = DEFAULT_STYLE_SIZE,
    limit: int | None = None,
    vgg_weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    grid: Path | None = None,
    console=None,
    grain: float = STYLISE_GRAIN,
) -> Evaluation:
    """Everything ``styletransfer evaluate`` does but printing: check the inputs, score, write the grid.

    Raises StyleTransferError (one line) for any bad input.
    """
    check_options(models, outputs, size, style_size, limit, grid, style)
    check_grain(grain)
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
        ev = evaluate(rows, photos, scorer, size, GRID_PHOTOS if grid else 0, advance, grain)
    ev.settings["photos"] = str(photos_dir)
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
