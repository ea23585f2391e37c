"""ONNX export of a checkpoint, and stylising with an exported model on onnxruntime.

An exported ``.onnx`` file takes ``image``, a float32 (B, 3, H, W) batch in [0, 1] of any
batch size, height and width, and returns ``stylized`` of the same shape, in [0, 1]. The
checkpoint's metadata (norm, style, credit, training settings) travels in the model's
``metadata_props``, so an ONNX model is labelled like the checkpoint it came from.

Exporting needs the ``onnx`` and ``onnxscript`` packages, running needs ``onnxruntime``:
``pip install 'styletransfer[onnx]'``. They are imported only when used.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from .checkpoint import FORMAT, META_KEY, atomic_write, load_checkpoint, model_label, validate_metadata
from .controls import Controls, apply_controls
from .data import image_to_tensor, tensor_to_image
from .errors import StyleTransferError, one_line
from .grain import STYLISE_GRAIN, add_grain
from .norms import norm_label
from .tiling import parse_tile

__all__ = [
    "ExportableNet", "OnnxStylizer", "export_onnx", "is_onnx_path", "onnx_metadata", "open_model", "read_onnx_metadata",
]  # fmt: skip

ONNX_FORMAT = "styletransfer-onnx"
ONNX_FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "stylized"
# 18 is the oldest opset torch's exporter writes natively, and onnxruntime >= 1.14 runs it.
DEFAULT_OPSET = 18
MIN_OPSET = 18
INSTALL_HINT = "pip install 'styletransfer[onnx]'"
# The checkpoint entries that say nothing about the exported network.
TRAINING_ONLY_KEYS = ("format", "version", "optimizer")


class ExportableNet(nn.Module):
    """A :class:`~styletransfer.network.TransformerNet` whose input padding ONNX can run at any size.

    The network pads the input to a multiple of 4, at least 16, by reflection (by replication
    when a side is too short to reflect) with Python branches on the size, which an export
    freezes for the size it traced. Here the same padding is an index gather whose indices are
    computed from the input's shape inside the graph; the network then sees an input that
    needs no padding, and its output is cropped back. In eager mode the results agree to
    float rounding.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows_reflect, rows_replicate = padding_indices(h)
        cols_reflect, cols_replicate = padding_indices(w)
        # As the network: reflect only when both sides can be reflected (pad < side).
        reflect = (rows_reflect.min() >= 0) & (cols_reflect.min() >= 0)
        rows = torch.where(reflect, rows_reflect, rows_replicate)
        cols = torch.where(reflect, cols_reflect, cols_replicate)
        padded = x.index_select(2, rows).index_select(3, cols)
        return self.net(padded)[..., :h, :w]


def padding_indices(size) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows (or columns) that pad a side of ``size`` pixels to the network's size.

    ``size`` is an int, or a symbolic one under export. Returns the reflection indices (some
    negative when the pad is not smaller than ``size``, i.e. reflection is impossible) and the
    replication indices, both int64 of length ``max(16, size rounded up to a multiple of 4)``.
    """
    # max(16, size rounded up to a multiple of 4), in a form that keeps the export's symbolic shapes simple
    padded = 4 * torch.sym_max(4, (size + 3) // 4)
    i = torch.arange(padded)
    return torch.where(i < size, i, 2 * (size - 1) - i), i.clamp(max=size - 1)


def export_onnx(checkpoint_path: str | Path, output_path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export a styletransfer checkpoint to an ONNX model file; returns ``output_path``.

    ``opset``: the ONNX operator set, from 18 up to what the installed ``onnx`` knows. The
    model has a dynamic batch size, height and width (see the module docstring) and carries
    the checkpoint's metadata. The file is written atomically: on failure any earlier file
    at ``output_path`` is left as it was.

    Raises StyleTransferError (one line) when the checkpoint cannot be read, the export
    packages are missing, the opset is out of range, or the output cannot be written.
    """
    output_path = Path(output_path)
    onnx = import_optional("onnx")
    import_optional("onnxscript")  # torch's exporter needs it
    check_opset(onnx, opset)
    ckpt = load_checkpoint(checkpoint_path)
    check_writable(output_path)  # before the export, which takes seconds
    model = network_to_onnx(ckpt.build_model(), opset)
    describe_model(model, ckpt.meta)
    atomic_write(output_path, model.SerializeToString())
    return output_path


def check_writable(path: Path) -> None:
    """A one-line error if ``path`` is a folder or its folder can be neither made nor written."""
    if path.is_dir():
        raise StyleTransferError(f"{path}: is a folder; give the name of the .onnx file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StyleTransferError(f"{path}: cannot write ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK):
        raise StyleTransferError(f"{path}: cannot write (permission denied)")


def check_opset(onnx, opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise StyleTransferError(f"ONNX opset {opset} not supported; choose {MIN_OPSET} to {newest}")


def network_to_onnx(model: nn.Module, opset: int = DEFAULT_OPSET):
    """An ``onnx.ModelProto`` of the eval-mode network ``model``, with dynamic batch, height and width."""
    dim = torch.export.Dim
    dims = {0: dim("batch", min=1), 2: dim("height", min=1), 3: dim("width", min=1)}
    # Two images whose sides differ and are no multiples of 4, so no size is taken as fixed.
    sample = torch.rand(2, 3, 37, 53)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            ExportableNet(model).eval(),
            (sample,),
            dynamo=True,
            dynamic_shapes=(dims,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    written = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written != opset:  # the exporter keeps its own opset when it cannot convert
        raise StyleTransferError(f"torch's ONNX exporter cannot write opset {opset} (it wrote {written})")
    name_output_dims(proto)
    return proto


def name_output_dims(proto) -> None:
    """Give the output the input's dimension names (the exporter writes formulas that equal them)."""
    source = proto.graph.input[0].type.tensor_type.shape.dim
    target = proto.graph.output[0].type.tensor_type.shape.dim
    for dim_in, dim_out in zip(source, target):
        dim_out.CopyFrom(dim_in)


def describe_model(proto, checkpoint_meta: dict) -> None:
    """Store the checkpoint's metadata in ``proto``: all of it as JSON, and a few keys as plain text."""
    meta = onnx_metadata(checkpoint_meta)
    entries = {META_KEY: json.dumps(meta), "norm": meta["norm"], "style": meta.get("style", "?")}
    if "style_credit" in meta:
        entries["style_credit"] = meta["style_credit"]
    for key, value in entries.items():
        prop = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.doc_string = (
        f"Feed-forward style transfer, {norm_label(meta['norm'])}, style {meta.get('style', '?')}. "
        f"Input {INPUT_NAME}: float32 (B, 3, H, W) in [0, 1]; output {OUTPUT_NAME}: the same shape, in [0, 1]."
    )


def onnx_metadata(checkpoint_meta: dict) -> dict:
    """The metadata an exported model carries: the checkpoint's, less what only training needs."""
    kept = {k: v for k, v in checkpoint_meta.items() if k not in TRAINING_ONLY_KEYS}
    return {"format": ONNX_FORMAT, "version": ONNX_FORMAT_VERSION, **kept}


def import_optional(name: str):
    """Import an optional dependency, or a one-line error saying how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise StyleTransferError(f"ONNX support needs the {name} package: {INSTALL_HINT}") from None


class OnnxStylizer:
    """An exported ``.onnx`` model run by onnxruntime on the CPU, in fp32.

    Offers what callers use of :class:`styletransfer.stylize.Stylizer`: ``meta``, ``norm``,
    ``style``, ``label``, ``stylize_tensor``, ``stylize`` and ``render`` (with the controls).
    """

    def __init__(self, path: str | Path, device: str = "auto", precision: str = "auto") -> None:
        self.path = Path(path)
        check_cpu_fp32(self.path, device, precision)
        self.session = open_session(self.path)
        self.meta = read_onnx_metadata(self.path, self.session)

    @property
    def norm(self) -> str:
        return self.meta["norm"]

    @property
    def style(self) -> str:
        return self.meta.get("style", "?")

    @property
    def label(self) -> str:
        return model_label({**self.meta, "style": self.style})

    def stylize_tensor(self, images: torch.Tensor, grain: float = STYLISE_GRAIN) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] to stylised (B, 3, H, W) float32 in [0, 1] on the CPU, any H and W;
        ``grain`` as in :meth:`Stylizer.stylize_tensor <styletransfer.stylize.Stylizer.stylize_tensor>`."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise StyleTransferError(f"expected images of shape (B, 3, H, W), not {tuple(images.shape)}")
        x = add_grain(images.detach().to("cpu", torch.float32), grain)
        x = x.contiguous().numpy()
        (y,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return torch.from_numpy(y)

    def stylize(
        self, image: Image.Image, strength: float = 1.0, preserve_color: bool = False, stroke_scale: float = 1.0,
        tile: str | int = "auto", tile_progress=None, grain: float = STYLISE_GRAIN,
    ) -> Image.Image:  # fmt: skip
        """An RGB image in, its stylisation (same size) out, under the controls of
        :class:`~styletransfer.controls.Controls`, as :meth:`Stylizer.stylize <styletransfer.stylize.Stylizer.stylize>`;
        untiled: ``tile`` may be ``auto`` or ``off`` (tiling needs the checkpoint's network)."""
        return self.render(image, Controls(strength, preserve_color, stroke_scale, grain), tile)

    def render(self, image: Image.Image, controls: Controls = Controls(), tile: str | int = "auto", tile_progress=None):
        """As :meth:`stylize`, with the controls already checked in one :class:`Controls`."""
        if parse_tile(tile) not in ("auto", "off"):
            raise StyleTransferError(f"{self.path}: ONNX models are not tiled; use the .safetensors checkpoint")
        network = partial(self.stylize_tensor, grain=controls.grain)
        return tensor_to_image(apply_controls(network, image_to_tensor(image)[None], controls)[0])


def check_cpu_fp32(path: Path, device: str, precision: str) -> None:
    """ONNX models run here on the CPU in fp32; anything else asked for is a one-line error."""
    if device not in ("auto", "cpu"):
        raise StyleTransferError(f"{path}: ONNX models run on the CPU; use --device cpu, not {device}")
    if precision not in ("auto", "fp32"):
        raise StyleTransferError(f"{path}: ONNX models run in fp32; use --precision fp32, not {precision}")


def open_session(path: Path):
    """An onnxruntime CPU session for the model at ``path``; a file it cannot load is a one-line error."""
    ort = import_optional("onnxruntime")
    if not path.exists():
        raise StyleTransferError(f"{path}: no such ONNX model")
    if path.is_dir():
        raise StyleTransferError(f"{path}: is a folder; give the .onnx model file inside it")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors (InvalidProtobuf, InvalidGraph, Fail...) share no base class
        raise StyleTransferError(f"{path}: not a valid ONNX model ({onnxruntime_reason(e)})") from None


def onnxruntime_reason(e: Exception) -> str:
    """The reason in an onnxruntime load error, without its code and the path repeated."""
    return one_line(e).split(" failed:")[-1].strip()


def read_onnx_metadata(path: Path, session) -> dict:
    """The styletransfer metadata of a loaded model; checks it names a known norm and the expected tensors."""
    stored = session.get_modelmeta().custom_metadata_map
    try:
        meta = json.loads(stored[META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise StyleTransferError(f"{path}: an ONNX model, but not a styletransfer one (no metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT:
        raise StyleTransferError(f"{path}: an ONNX model, but not a styletransfer one (unknown format)")
    validate_metadata(path, {**meta, "format": FORMAT})  # the checkpoint's fields, under the same schema
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise StyleTransferError(f"{path}: ONNX model has tensors {names}, not {INPUT_NAME} -> {OUTPUT_NAME}")
    return meta


def is_onnx_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def open_model(path: str | Path, device: str = "auto", precision: str = "auto"):
    """A stylizer for ``path``: an :class:`OnnxStylizer` for a ``.onnx`` file, else a checkpoint's
    :class:`~styletransfer.stylize.Stylizer` on ``device`` in ``precision``."""
    if is_onnx_path(path):
        return OnnxStylizer(path, device, precision)
    from .stylize import Stylizer

    return Stylizer.from_checkpoint(path, device, precision)
