"""Checkpoints: safetensors files whose metadata is enough to rebuild the network.

A checkpoint holds the network's tensors under ``model.*``, optionally the optimiser's
under ``optim.*`` (for resuming), and one JSON metadata entry: norm, style, training
settings, step, final losses, the VGG used. Nothing is unpickled when loading, and files
are written to a temporary name, flushed to disk and renamed, so a crash never leaves a
half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import StyleTransferError, cannot_write, one_line
from .grain import GRAIN_MAX
from .network import TransformerNet
from .norms import NORMS, norm_label

__all__ = [
    "Checkpoint", "atomic_write", "load_checkpoint", "model_label", "read_metadata", "save_checkpoint", "validate_metadata",
]  # fmt: skip

FORMAT = "styletransfer-checkpoint"
FORMAT_VERSION = 1
META_KEY = "styletransfer"


@dataclass
class Checkpoint:
    """A checkpoint read from disk: its metadata, the network's tensors and, for resuming,
    the optimiser's state."""

    meta: dict
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict | None = field(default=None, repr=False)
    path: Path | None = None

    def build_model(self, device: str | torch.device = "cpu") -> TransformerNet:
        """The network described by the metadata, with these weights, in eval mode.

        Raises StyleTransferError when the metadata's norm options or the tensors do not fit.
        """
        try:
            model = TransformerNet(self.meta["norm"], self.meta.get("norm_options"))
        except (ValueError, TypeError) as e:  # the layer's own check of its option values
            raise _invalid(self.path, "norm_options", one_line(e)) from None
        self.load_into(model)
        return model.to(device).eval()

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy the weights into ``model``; tensors missing, extra or of another shape are a one-line error."""
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.model_state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            where = f"{self.path}: " if self.path else ""
            raise StyleTransferError(
                f"{where}checkpoint tensors do not fit a {self.meta['norm']} network: {one_line(e)}"
            ) from None


def model_label(meta: dict) -> str | None:
    """How a model is named in grids, legends and tables: "IEBN · starry night" (None without a norm)."""
    norm, style = meta.get("norm"), meta.get("style")
    if not norm:
        return None
    return f"{norm_label(norm)} · {str(style).replace('_', ' ')}" if style else norm_label(norm)


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    meta: dict,
    optimizer: torch.optim.Optimizer | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (floating tensors cast to ``dtype`` if given), ``meta`` (JSON-able) and
    optionally ``optimizer`` atomically to ``path``; returns ``path``.

    Raises StyleTransferError when the file cannot be written (the previous one is kept).
    """
    path = Path(path)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        tensors[f"model.{k}"] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    meta = {"format": FORMAT, "version": FORMAT_VERSION, **meta}
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_meta
    data = safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata={META_KEY: json.dumps(meta)})
    atomic_write(path, data)
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A failure (disk full, folder not writable) is a one-line error, and leaves the file
    already at ``path``, if any, as it was.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise cannot_write(path, e) from None
    try:
        _write_and_rename(fd, tmp, path, data)
    except OSError as e:
        raise cannot_write(path, e, "; the previous version is kept" if path.exists() else "") from None
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _write_and_rename(fd: int, tmp: str, path: Path, data: bytes) -> None:
    """Fill the temporary file and rename it; on any failure, even Ctrl-C, remove it."""
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser state dict as flat tensors plus JSON-able metadata."""
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def read_metadata(path: str | Path) -> dict:
    """The checkpoint's metadata, without reading its tensors; StyleTransferError if not a checkpoint."""
    path = Path(path)
    with _open_safetensors(path) as f:
        return _parse_metadata(path, f.metadata())


def load_checkpoint(path: str | Path, with_optimizer: bool = False) -> Checkpoint:
    """Read a checkpoint; any file that is not one gives a one-line StyleTransferError."""
    path = Path(path)
    with _open_safetensors(path) as f:
        meta = _parse_metadata(path, f.metadata())
        try:
            keys = list(f.keys())
            model_state = {k[len("model."):]: f.get_tensor(k) for k in keys if k.startswith("model.")}
            optim = {k: f.get_tensor(k) for k in keys if k.startswith("optim.")} if with_optimizer else {}
        except (SafetensorError, OSError, ValueError) as e:
            raise StyleTransferError(f"{path}: damaged checkpoint ({one_line(e)})") from None
    optimizer_state = None
    if with_optimizer and "optimizer" in meta:
        try:
            optimizer_state = _unflatten_optimizer(optim, meta["optimizer"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StyleTransferError(f"{path}: damaged optimiser state ({one_line(e)})") from None
    return Checkpoint(meta=meta, model_state=model_state, optimizer_state=optimizer_state, path=path)


class _open_safetensors:
    """``safe_open`` that turns every failure into a one-line error naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        if not self.path.exists():
            raise StyleTransferError(f"{self.path}: no such checkpoint")
        if self.path.is_dir():
            raise StyleTransferError(f"{self.path}: is a folder; give the .safetensors checkpoint file inside it")
        try:
            self.handle = safe_open(str(self.path), framework="pt", device="cpu")
            return self.handle.__enter__()
        except Exception:
            raise StyleTransferError(
                f"{self.path}: not a styletransfer checkpoint (not a complete safetensors file; "
                "truncated, or another format such as a pickle, which is never loaded)"
            ) from None

    def __exit__(self, *exc) -> None:
        self.handle.__exit__(*exc)


def _parse_metadata(path: Path, raw: dict | None) -> dict:
    """The checkpoint's metadata, checked against :data:`METADATA_SCHEMA` (it is untrusted input)."""
    try:
        meta = json.loads((raw or {})[META_KEY])
    except (KeyError, json.JSONDecodeError, TypeError):
        raise StyleTransferError(f"{path}: a safetensors file, but not a styletransfer checkpoint (no metadata)") from None
    if not isinstance(meta, dict):
        raise _invalid(path, "metadata", f"a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise StyleTransferError(f"{path}: not a styletransfer checkpoint (format {meta.get('format')!r})")
    return validate_metadata(path, meta)


def validate_metadata(path: Path, meta: dict) -> dict:
    """Check a model's metadata (a dict) against :data:`METADATA_SCHEMA`; returns it.

    Raises StyleTransferError naming the file and the first field that does not conform.
    """
    version = meta.get("version", 0)
    if _is_int(version) and version > FORMAT_VERSION:
        raise StyleTransferError(f"{path}: checkpoint format {version} is newer than this styletransfer")
    if meta.get("norm") not in NORMS:
        raise StyleTransferError(f"{path}: checkpoint names an unknown norm {meta.get('norm')!r}")
    for name, value in meta.items():
        problem = _field_problem(name, value, meta)
        if problem:
            raise _invalid(path, name, problem)
    return meta


def _invalid(path: Path, field_name: str, problem: str) -> StyleTransferError:
    return StyleTransferError(f"{path}: not a valid styletransfer checkpoint: {field_name} ({problem})")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_text(value) -> bool:
    return isinstance(value, str)


def _is_text_or_none(value) -> bool:
    return value is None or isinstance(value, str)


def _is_count(value) -> bool:
    return _is_int(value) and value >= 0


def _is_size(value) -> bool:
    return _is_int(value) and value >= 1


def _is_losses(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())


def _is_curve(value) -> bool:
    """``{"step": [...], "content": [...], ...}``: lists of numbers of one length, steps whole."""
    if not isinstance(value, dict) or not value:
        return isinstance(value, dict)
    columns = list(value.values())
    return (
        all(isinstance(c, list) and all(_is_number(v) for v in c) for c in columns)
        and len({len(c) for c in columns}) == 1
        and all(_is_int(v) for v in value.get("step", []))
    )


def _is_grain(value) -> bool:
    return _is_number(value) and 0 <= value <= GRAIN_MAX


def _is_object(value) -> bool:
    return isinstance(value, dict)


# Every metadata field a checkpoint may hold: (check, what it must be). Others are refused.
METADATA_SCHEMA = {
    "format": (_is_text, "text"),
    "version": (_is_size, "a whole number >= 1"),
    "norm": (_is_text, "a norm name"),
    "norm_options": (_is_object, "an object of the norm's options"),
    "style": (_is_text, "text"),
    "style_credit": (_is_text_or_none, "text or null"),
    "step": (_is_count, "a whole number >= 0"),
    "image_size": (_is_size, "a whole number of pixels >= 1"),
    "grain": (_is_grain, f"a number from 0 to {GRAIN_MAX:g} (8-bit steps)"),
    "vgg": (_is_text, "text"),
    "losses": (_is_losses, "an object of finite numbers"),
    "history": (_is_curve, "an object of equally long lists of numbers"),
    "config": (_is_object, "an object of training settings"),
    "optimizer": (_is_object, "an object"),
}


def _field_problem(name: str, value, meta: dict) -> str | None:
    """What is wrong with one metadata field, or None."""
    if name not in METADATA_SCHEMA:
        return "not a field of styletransfer checkpoints"
    check, expected = METADATA_SCHEMA[name]
    if not check(value):
        return f"must be {expected}, not {json.dumps(value)[:60]}"
    if name == "norm_options":
        unknown = sorted(set(value) - set(NORMS[meta["norm"]].options))
        if unknown:
            return f"{meta['norm']} takes no option {', '.join(unknown)}"
    return None
