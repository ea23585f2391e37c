"""ONNX export and onnxruntime inference: same pictures as torch for every norm, any size, and one-line errors.

Every norm's network gets random affine parameters, calibrated running statistics and, for
IEBN, a gate that depends on the image; it is saved as a checkpoint, exported once, and the
ONNX model run by onnxruntime is compared with torch's fp32 eval output.
"""

from __future__ import annotations

import io
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from styletransfer.checkpoint import load_checkpoint, save_checkpoint
from styletransfer.errors import StyleTransferError
from styletransfer.network import TransformerNet
from styletransfer.norms import NORMS, IEBN2d, InstanceNorm2d, SqueezeExcite
from styletransfer.onnx_export import ExportableNet, OnnxStylizer, export_onnx, onnx_metadata, open_model
from styletransfer.stylize import Stylizer

from .conftest import run_cli

MIN_PSNR_DB = 40.0
META = {"style": "test_stripes", "style_credit": "generated stripes, for tests", "norm_options": {}, "step": 7}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1]."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def photos(batch: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Smooth random images with some noise, each with its own brightness and contrast."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, h // 4 + 2, w // 4 + 2, generator=g)
    x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(batch, 3, h, w, generator=g)
    contrast = torch.linspace(1.0, 0.3, batch).view(-1, 1, 1, 1)
    offset = torch.linspace(0.0, 0.6, batch).view(-1, 1, 1, 1)
    return (x * contrast + offset).clamp(0, 1)


def randomised_network(norm: str, seed: int = 0) -> TransformerNet:
    """A network whose every norm layer does something: random affine, gate and running statistics."""
    torch.manual_seed(seed)
    net = TransformerNet(norm)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            if isinstance(m, IEBN2d):
                m.gate_weight.normal_(0, 3)  # the gate follows each image's channel means
                m.gate_bias.normal_(0, 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # running statistics: the average over the calibration batches
        net.train()
        for i in range(2):
            net(photos(4, 48, 48, seed=100 + i))
    return net.eval()


@pytest.fixture(scope="module", params=list(NORMS))
def exported(request, tmp_path_factory):
    """(norm, torch network, path of its exported .onnx model), exported once per norm."""
    norm = request.param
    folder = tmp_path_factory.mktemp(f"onnx-{norm}")
    checkpoint = save_checkpoint(folder / f"{norm}.safetensors", randomised_network(norm), {"norm": norm, **META})
    model = load_checkpoint(checkpoint).build_model()
    return norm, model, export_onnx(checkpoint, folder / f"{norm}.onnx")


@pytest.mark.parametrize("size", [(37, 53), (64, 48), (7, 22)])
def test_onnxruntime_matches_torch(exported, size):
    norm, model, path = exported
    images = photos(2, *size, seed=sum(size))
    with torch.no_grad():
        expected = model(images)
    got = OnnxStylizer(path).stylize_tensor(images, grain=0)  # the network alone
    assert got.shape == images.shape and got.dtype == torch.float32
    assert expected.std() > 0.02, "a near-constant output would make the comparison meaningless"
    assert psnr(got, expected) >= MIN_PSNR_DB, f"{norm} {size}: {psnr(got, expected):.1f} dB"
    assert (got - expected).abs().max() < 1e-4  # both fp32: float rounding only


def test_each_image_of_a_batch_is_stylised_on_its_own(exported):
    """Per-instance statistics: an image's result does not depend on the other images of the batch."""
    norm, _, path = exported
    stylizer = OnnxStylizer(path)
    images = photos(2, 29, 41, seed=5)
    together = stylizer.stylize_tensor(images)
    alone = torch.cat([stylizer.stylize_tensor(images[i : i + 1]) for i in range(2)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert psnr(together[0], together[1]) < 30, f"{norm}: two different images gave the same picture"


def test_padding_for_export_equals_the_networks():
    """The gather-based padding of the export reproduces the network's own, reflect and replicate alike."""
    model = randomised_network("iebn")
    portable = ExportableNet(model)
    with torch.no_grad():
        for h, w in [(37, 53), (16, 16), (9, 12), (8, 30), (1, 1), (3, 5)]:
            x = photos(1, h, w, seed=h * w)
            assert torch.allclose(portable(x), model(x), rtol=0, atol=1e-6), (h, w)  # float rounding only


@pytest.mark.filterwarnings("ignore")  # the tracing exporter is deprecated
def test_the_exporters_get_plain_ops_for_the_per_instance_kernels():
    """IN, IEBN and the SE gate under the tracing ONNX exporter: the kernels' autograd functions used
    to be recorded as Python ops, and the exported model was off by up to ~0.5."""
    torch.manual_seed(0)
    iebn = IEBN2d(8)
    with torch.no_grad():
        iebn.gate_weight.normal_(0, 3)
        iebn.running_mean.normal_(0, 0.3)
        iebn.running_var.uniform_(0.5, 2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), InstanceNorm2d(8, affine=True), iebn, SqueezeExcite(8)).eval()
    images = photos(2, 20, 24, seed=3)
    with torch.no_grad():
        expected = net(images)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (images,), buffer, dynamo=False, input_names=["x"])
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": images.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


def test_metadata_round_trip(exported):
    norm, _, path = exported
    stylizer = OnnxStylizer(path)
    meta = {"format": "styletransfer-onnx", "version": 1, "norm": norm, **META}
    assert stylizer.meta == meta
    assert stylizer.norm == norm and stylizer.style == "test_stripes"
    checkpoint = path.with_suffix(".safetensors")
    assert stylizer.label == Stylizer.from_checkpoint(checkpoint, "cpu", "fp32").label
    assert onnx_metadata(load_checkpoint(checkpoint).meta) == meta
    # Plain keys for other ONNX tools, and a model that passes onnx's own checks.
    model = onnx.load(path)
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert (props["norm"], props["style"], props["style_credit"]) == (norm, "test_stripes", META["style_credit"])
    dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] for t in (*model.graph.input, *model.graph.output)]
    assert dims == [["batch", 3, "height", "width"]] * 2


def test_stylize_a_picture_with_the_same_surface_as_stylizer(exported):
    _, model, path = exported
    stylizer = open_model(path)
    assert isinstance(stylizer, OnnxStylizer)
    picture = Image.fromarray((photos(1, 45, 31, seed=9)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    by_onnx = stylizer.stylize(picture)
    by_torch = Stylizer(model, {"norm": stylizer.norm}, "cpu", "fp32").stylize(picture)
    assert by_onnx.size == picture.size and by_onnx.mode == "RGB"
    difference = np.abs(np.asarray(by_onnx, dtype=int) - np.asarray(by_torch, dtype=int))
    assert difference.max() <= 1  # rounding to 8 bits at most one step apart


def test_cli_stylize_with_an_onnx_model(exported, tmp_path, capsys):
    _, _, path = exported
    Image.new("RGB", (30, 20), (200, 80, 40)).save(tmp_path / "in.png")
    assert run_cli("stylize", tmp_path / "in.png", "-m", path, "-o", tmp_path / "out.png") == 0
    assert Image.open(tmp_path / "out.png").size == (30, 20)
    capsys.readouterr()
    assert run_cli("stylize", tmp_path / "in.png", "-m", path, "--device", "cuda", "-o", tmp_path / "x.png") == 1
    assert one_line_error(capsys.readouterr().err).endswith("ONNX models run on the CPU; use --device cpu, not cuda")


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint(tmp_path / "bn.safetensors", TransformerNet("bn").eval(), {"norm": "bn", **META})


def test_not_an_onnx_model_is_a_one_line_error(tmp_path, checkpoint):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model\xff" * 10)
    renamed = tmp_path / "checkpoint.onnx"
    renamed.write_bytes(checkpoint.read_bytes())
    for path in (garbage, renamed, tmp_path / "missing.onnx", tmp_path):
        with pytest.raises(StyleTransferError) as e:
            OnnxStylizer(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_an_onnx_model_that_is_not_ours_is_a_one_line_error(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    path = tmp_path / "identity.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)
    with pytest.raises(StyleTransferError, match="not a styletransfer one"):
        OnnxStylizer(path)


def test_export_errors_are_one_line(tmp_path, checkpoint, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StyleTransferError, match="cannot write"):
        export_onnx(checkpoint, blocker / "model.onnx")
    with pytest.raises(StyleTransferError, match="is a folder"):
        export_onnx(checkpoint, tmp_path)
    with pytest.raises(StyleTransferError, match="not a styletransfer checkpoint"):
        export_onnx(blocker, tmp_path / "model.onnx")
    with pytest.raises(StyleTransferError, match="opset 12 not supported"):
        export_onnx(checkpoint, tmp_path / "model.onnx", opset=12)
    assert not list(tmp_path.glob("*.onnx*"))
    assert run_cli("export", checkpoint, blocker / "model.onnx") == 1
    assert "cannot write" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_export_without_the_onnx_packages_says_how_to_install_them(monkeypatch, tmp_path, checkpoint, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes ``import package`` fail
    with pytest.raises(StyleTransferError, match=r"pip install 'styletransfer\[onnx\]'"):
        export_onnx(checkpoint, tmp_path / "model.onnx")


def test_running_without_onnxruntime_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(StyleTransferError, match=r"needs the onnxruntime package: pip install 'styletransfer\[onnx\]'"):
        OnnxStylizer(tmp_path / "model.onnx")


def test_open_model_keeps_checkpoints_on_torch(checkpoint):
    assert isinstance(open_model(checkpoint, "cpu", "fp32"), Stylizer)


def test_an_exported_model_adds_grain_as_the_checkpoint_does(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "in.safetensors", randomised_network("in"), {"norm": "in", **META})
    stylizer = OnnxStylizer(export_onnx(checkpoint, tmp_path / "in.onnx"))
    by_torch = Stylizer.from_checkpoint(checkpoint, "cpu", "fp32")
    images = photos(1, 40, 36, seed=3)
    torch.testing.assert_close(stylizer.stylize_tensor(images), by_torch.stylize_tensor(images), atol=1e-4, rtol=0)
    torch.testing.assert_close(stylizer.stylize_tensor(images, grain=0), by_torch.stylize_tensor(images, grain=0), atol=1e-4, rtol=0)
    assert (stylizer.stylize_tensor(images) - stylizer.stylize_tensor(images, grain=0)).abs().max() > 0.01
