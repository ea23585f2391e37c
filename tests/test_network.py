import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from styletransfer.network import ReflectionPad2d, RowSplitConv2d, TransformerNet, upsample_conv
from styletransfer.norms import NORMS, IEBN2d


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("size", [(33, 47), (16, 16), (5, 9), (1, 3)])
def test_output_matches_input_size_for_any_shape(norm, size):
    model = TransformerNet(norm).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 3, *size))
    assert y.shape == (2, 3, *size)
    assert y.min() >= 0 and y.max() <= 1


def test_every_norm_layer_comes_from_the_norm_argument():
    model = TransformerNet("iebn")
    iebns = [m for m in model.modules() if isinstance(m, IEBN2d)]
    # 3 encoder + 10 residual + 2 decoder convs carry a norm; the last conv does not
    assert len(iebns) == 15
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())


def test_architecture_follows_johnson():
    model = TransformerNet("in")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs]
    assert shapes[:3] == [(3, 32, 9, 1), (32, 64, 3, 2), (64, 128, 3, 2)]
    assert shapes[3:13] == [(128, 128, 3, 1)] * 10
    assert shapes[13:] == [(128, 64, 3, 1), (64, 32, 3, 1), (32, 3, 9, 1)]


def test_norm_options_reach_the_layers():
    model = TransformerNet("iebn", {"excite": "both", "activation": "tanh"})
    layer = next(m for m in model.modules() if isinstance(m, IEBN2d))
    assert layer.excite == "both" and layer.activation == "tanh"


def _upsample_pad_conv(x, conv):
    """The decoder's upsampling stage step by step, as the paper writes it."""
    up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    return conv(torch.nn.functional.pad(up, (1, 1, 1, 1), mode="reflect"))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 12)])
def test_upsample_conv_is_upsampling_padding_and_conv_in_one(size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 4, 3).double()
    x = torch.randn(2, 5, *size, dtype=torch.float64, requires_grad=True)
    fused = upsample_conv(x, conv.weight, conv.bias)
    literal = _upsample_pad_conv(x, conv)
    assert fused.shape == (2, 4, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(fused, literal, rtol=1e-12, atol=1e-12)
    # and the gradients training takes through it
    g = torch.randn_like(fused)
    fused_grads = torch.autograd.grad(fused, (x, conv.weight, conv.bias), g)
    literal_grads = torch.autograd.grad(literal, (x, conv.weight, conv.bias), g)
    for a, b in zip(fused_grads, literal_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_network_equals_its_layers_run_one_by_one(norm):
    torch.manual_seed(0)
    model = TransformerNet(norm).double().eval()
    x = torch.rand(2, 3, 20, 28, dtype=torch.float64)
    h = model.residuals(model.encoder(x))
    for stage in model.decoder[:2]:
        _upsample, (_pad, conv, *norm_relu) = stage
        h = torch.nn.Sequential(*norm_relu)(_upsample_pad_conv(h, conv))
    pad, last = model.decoder[2:]
    expected = torch.sigmoid(torch.nn.functional.conv2d(pad(h), last.weight, last.bias))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size", [(9, 9), (10, 17), (23, 12)])
def test_row_split_conv_is_the_plain_conv(size):
    torch.manual_seed(0)
    conv = RowSplitConv2d(6, 3, 9).double()
    x = torch.randn(2, 6, *size, dtype=torch.float64, requires_grad=True)
    split = conv(x)
    plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
    assert split.shape == plain.shape == (2, 3, size[0] - 8, size[1] - 8)
    torch.testing.assert_close(split, plain, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(split, (x, conv.weight, conv.bias), g),
                    torch.autograd.grad(plain, (x, conv.weight, conv.bias), g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the same parameters as nn.Conv2d's, so checkpoints load unchanged
    assert conv.state_dict().keys() == torch.nn.Conv2d(6, 3, 9).state_dict().keys()


def test_padding_keeps_the_activations_dtype_under_cpu_autocast():
    x = torch.randn(2, 4, 7, 9).to(torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16):
        padded = ReflectionPad2d(3)(x)
    assert padded.dtype == torch.bfloat16
    torch.testing.assert_close(padded, torch.nn.functional.pad(x, (3, 3, 3, 3), mode="reflect"), rtol=0, atol=0)


def test_upsampling_pads_in_the_activations_dtype_under_cpu_autocast():
    """Its replication border, like ReflectionPad2d, must not write a bf16 activation out in fp32."""
    padded = []

    class RecordPadding(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.replication_pad2d, torch.ops.aten.cat):
                padded.append(out.dtype)
            return out

    conv = torch.nn.Conv2d(4, 2, 3)
    with torch.autocast("cpu", torch.bfloat16), RecordPadding():
        upsample_conv(torch.randn(1, 4, 5, 6).to(torch.bfloat16), conv.weight, conv.bias)
    assert padded and set(padded) == {torch.bfloat16}


def test_upsample_conv_compiles_with_gradients_in_channels_last():
    """torch.compile's backward of F.pad's replication padding fails on channels_last bf16 input;
    the upsampling stage must not depend on it (a compiled network with gradients runs it)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 4, 3)
    x = torch.randn(2, 8, 6, 10).to(memory_format=torch.channels_last).requires_grad_()

    def loss(x):
        with torch.autocast("cpu", torch.bfloat16):
            return upsample_conv(x, conv.weight, conv.bias).float().square().mean()

    compiled_grad = torch.autograd.grad(torch.compile(loss)(x), x)[0]
    torch.testing.assert_close(compiled_grad, torch.autograd.grad(loss(x), x)[0], rtol=1e-2, atol=1e-3)
