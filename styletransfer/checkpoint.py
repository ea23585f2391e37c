"""Checkpoints: safetensors files whose metadata is enough to rebuild the network.

A checkpoint holds the network's tensors under ``model.*``, optionally the optimiser's
under ``optim.*`` (for resuming), and one JSON metadata entry: norm, style, training
settings, step, final losses, the VGG used. Nothing is unpickled when loading, and files
are written to a temporary name, flushed to disk and renamed, so a crash never leaves a
half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import StyleTransferError, cannot_write, one_line
from .network import TransformerNet
from .norms import NORMS, norm_label

__all__ = ["Checkpoint", "atomic_write", "load_checkpoint", "model_label", "read_metadata", "save_checkpoint"]

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
        """The network described by the metadata, with these weights, in eval mode."""
        model = TransformerNet(self.meta["norm"], self.meta.get("norm_options"))
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
    try:
        meta = json.loads((raw or {})[META_KEY])
    except (KeyError, json.JSONDecodeError, TypeError):
        raise StyleTransferError(f"{path}: a safetensors file, but not a styletransfer checkpoint (no metadata)") from None
    if meta.get("format") != FORMAT:
        raise StyleTransferError(f"{path}: not a styletransfer checkpoint (format {meta.get('format')!r})")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise StyleTransferError(f"{path}: checkpoint format {meta['version']} is newer than this styletransfer")
    if meta.get("norm") not in NORMS:
        raise StyleTransferError(f"{path}: checkpoint names an unknown norm {meta.get('norm')!r}")
    return meta
