"""Models by name: where ``-m NAME``, ``list`` and the web demo find checkpoints and paintings.

The one lookup order, for every command:

1. a path: a file that exists, or a name with a file extension (``runs/x/checkpoint.safetensors``);
2. the folder given with ``--checkpoints``, else the folder in ``$STYLETRANSFER_MODELS``;
3. the models shipped with the package (``styletransfer/checkpoints/<style>/<norm>.safetensors``).

A model's name is ``STYLE/NORM`` (``starry_night/iebn``), from its metadata. Where one model is
wanted (``stylize``) a style alone means its IEBN model, the paper's norm; where several are
(``compare``, ``evaluate``) it means all the style's models. A style comes whole from the first
folder that has it, so a folder's own ``starry_night`` hides the shipped one.

Paintings (``<style>.jpg`` etc.) are looked up the same way: a ``--styles`` folder, then the
shipped ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import read_metadata
from .data import IMAGE_SUFFIXES
from .errors import StyleTransferError
from .norms import NORMS, norm_label

__all__ = [
    "MODELS_ENV",
    "PREFERRED_NORM",
    "SHIPPED_MODELS",
    "SHIPPED_STYLES",
    "Model",
    "find_models",
    "find_style_image",
    "is_path",
    "model_folders",
    "pick_norm",
    "resolve_model",
    "resolve_models",
    "scan_folder",
    "shipped_folder",
    "style_folders",
]

PACKAGE = Path(__file__).resolve().parent
MODELS_ENV = "STYLETRANSFER_MODELS"
PREFERRED_NORM = "iebn"  # the paper's norm: what a style name alone picks


def shipped_folder(name: str) -> Path:
    """A data folder shipped with the package: ``styletransfer/<name>`` when installed from a
    wheel, else ``<name>`` beside the package in a checkout (an editable install included)."""
    inside = PACKAGE / name
    return inside if inside.is_dir() else PACKAGE.parent / name


SHIPPED_MODELS = PACKAGE / "checkpoints"
SHIPPED_STYLES = shipped_folder("styles")


@dataclass(frozen=True)
class Model:
    """One checkpoint found by name: its style, norm, file and metadata."""

    style: str
    norm: str
    path: Path
    meta: dict = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        """What ``-m`` takes: ``STYLE/NORM``."""
        return f"{self.style}/{self.norm}"


def model_folders(checkpoints: str | Path | None = None, shipped: bool = True) -> list[Path]:
    """The folders model names are looked up in, in order: ``checkpoints`` if given, else
    ``$STYLETRANSFER_MODELS`` if set, then (unless ``shipped`` is False) the shipped models."""
    given = checkpoints if checkpoints is not None else os.environ.get(MODELS_ENV) or None
    folders = [Path(given)] if given is not None else []
    if shipped and SHIPPED_MODELS not in folders:
        folders.append(SHIPPED_MODELS)
    return folders


def scan_folder(folder: str | Path) -> tuple[list[Model], list[str]]:
    """Every valid checkpoint under ``folder`` (searched recursively), ordered by style, then
    norm in the order of the norm table, the first file of a (style, norm) only; and one error
    line for each ``.safetensors`` file left out. A folder that does not exist holds none."""
    folder = Path(folder)
    found, skipped = {}, []
    for path in sorted(folder.rglob("*.safetensors")) if folder.is_dir() else []:
        try:
            meta = read_metadata(path)
        except StyleTransferError as e:
            skipped.append(str(e))
            continue
        model = Model(meta.get("style") or path.parent.name, meta["norm"], path, meta)
        found.setdefault(model.name, model)
    order = {n: i for i, n in enumerate(NORMS)}
    return sorted(found.values(), key=lambda m: (m.style, order[m.norm])), skipped


def find_models(checkpoints: str | Path | None = None, shipped: bool = True) -> tuple[list[Model], list[str]]:
    """The models names can mean, folder by folder in lookup order (see :func:`model_folders`),
    a style taken whole from the first folder that has it; and one line per file left out."""
    models, skipped, styles = [], [], set()
    for folder in model_folders(checkpoints, shipped):
        found, bad = scan_folder(folder)
        models += [m for m in found if m.style not in styles]
        styles.update(m.style for m in found)
        skipped += bad
    return models, skipped


def is_path(name: str | Path) -> bool:
    """Whether ``-m name`` means a file: one that exists, or a name with a file extension."""
    path = Path(name)
    return path.suffix != "" or path.is_file()


def resolve_model(name: str | Path, checkpoints: str | Path | None = None) -> tuple[Path, str | None]:
    """The file of one model: a path as given, ``STYLE/NORM``, or ``STYLE`` alone for its IEBN model
    (another of its norms if it has no IEBN one).

    Returns the file and, when a norm was picked for a style name, a one-line note saying which.
    Raises StyleTransferError for an unknown name, listing the names there are.
    """
    if is_path(name):
        return Path(name), None
    models = find_models(checkpoints)[0]
    for model in models:
        if model.name == name:
            return model.path, None
    of_style = [m for m in models if m.style == name]
    if not of_style:
        raise unknown_name(str(name), models, checkpoints)
    return pick_norm(of_style)


def pick_norm(of_style: list[Model]) -> tuple[Path, str]:
    """The IEBN model of a style's models (else the last in the norm table), and a note saying so."""
    chosen = next((m for m in of_style if m.norm == PREFERRED_NORM), of_style[-1])
    why = "the paper's norm" if chosen.norm == PREFERRED_NORM else f"there is no {norm_label(PREFERRED_NORM)} model"
    others = ", ".join(m.name for m in of_style if m is not chosen)
    note = f"{chosen.style}: using {chosen.name} ({norm_label(chosen.norm)}, {why})"
    return chosen.path, note + (f"; the others: {others}" if others else "")


def resolve_models(names: list[str], checkpoints: str | Path | None = None) -> list[Path]:
    """Files for several names: paths as given, ``STYLE/NORM``, or ``STYLE`` for all its models
    (in the order of the norm table). Raises StyleTransferError for an unknown name."""
    paths, models = [], None
    for name in names:
        if is_path(name):
            paths.append(Path(name))
            continue
        models = find_models(checkpoints)[0] if models is None else models
        matches = [m.path for m in models if name in (m.name, m.style)]
        if not matches:
            raise unknown_name(name, models, checkpoints)
        paths += matches
    return paths


def unknown_name(name: str, models: list[Model], checkpoints: str | Path | None) -> StyleTransferError:
    """The one-line error for a name no folder has, listing the names there are."""
    missing = [f for f in model_folders(checkpoints, shipped=False) if not Path(f).is_dir()]
    where = f"; {missing[0]} does not exist" if missing else ""
    if not models:
        return StyleTransferError(f"{name}: neither a checkpoint file nor a model name; no models found{where}")
    names = ", ".join(m.name for m in models)
    return StyleTransferError(f"{name}: neither a checkpoint file nor a model name; models: {names}{where}")


def style_folders(styles: str | Path | None = None) -> list[Path]:
    """The folders paintings are looked up in: ``styles`` if given, then the shipped ones."""
    return ([Path(styles)] if styles is not None else []) + [SHIPPED_STYLES]


def find_style_image(style: str, styles: str | Path | None = None) -> Path | None:
    """The painting of ``style``, ``<style>.jpg`` (or another image type), from the first folder
    of :func:`style_folders` that has one; None if none has."""
    for folder in style_folders(styles):
        if folder.is_dir():
            found = [p for p in folder.iterdir() if p.stem == style and p.suffix.lower() in IMAGE_SUFFIXES]
            if found:
                return min(found)
    return None
