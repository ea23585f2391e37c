"""The native-kernel per-instance operations behind IEBN, checked against plain torch."""

import pytest
import torch
import torch.nn.functional as F

from styletransfer.instance_ops import instance_moments, instance_scale_shift, use_native_kernels
from styletransfer.norms import IEBN2d, SqueezeExcite, make_norm
from .conftest import DEVICES, iebn_by_formula, randomised_iebn

LAYOUTS = {
    "nchw": lambda x: x.contiguous(),
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "strided": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),  # neither of the two
}


def sample(shape=(3, 4, 5, 6), dtype=torch.float64, layout="nchw", device="cpu"):
    torch.manual_seed(0)
    return LAYOUTS[layout]((torch.randn(shape) * 2 + 3).to(device, dtype)).requires_grad_()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_moments_equal_var_mean_over_each_instance(layout):
    x = sample(layout=layout, dtype=torch.float32)
    mean, var = instance_moments(x)
    ref_var, ref_mean = torch.var_mean(x, dim=(2, 3), correction=0)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var, ref_var)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scale_shift_equals_broadcast_multiply_add(layout):
    x = sample(layout=layout, dtype=torch.float32)
    scale, shift = torch.randn(3, 4), torch.randn(3, 4)
    y = instance_scale_shift(x, scale, shift)
    torch.testing.assert_close(y, x * scale[:, :, None, None] + shift[:, :, None, None])
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_moments_gradient_passes_gradcheck(layout):
    x = sample(layout=layout)
    assert torch.autograd.gradcheck(instance_moments, (x,))
    assert torch.autograd.gradcheck(lambda t: instance_moments(t)[1], (x,))  # only the variance used


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scale_shift_gradient_passes_gradcheck(layout):
    x = sample(layout=layout)
    scale, shift, centre = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(instance_scale_shift, (x, scale, shift))
    assert torch.autograd.gradcheck(instance_scale_shift, (x, scale, shift, centre))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_iebn_gradients_equal_the_formulas(layout, training, device):
    """Input and parameter gradients of IEBN2d equal autograd through the paper's equations."""
    layer = randomised_iebn(4).train(training).to(device)
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
    x = sample((3, 4, 5, 6), torch.float32, layout, device)
    if training:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    else:
        mean, var = layer.running_mean, layer.running_var
    params = (layer.weight, layer.bias, layer.gate_weight, layer.gate_bias)
    expected = iebn_by_formula(x, mean, var, *params)
    upstream = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, *params), upstream)
    grads = torch.autograd.grad(layer(x), (x, *params), upstream)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_iebn_gradients_for_bf16_input_track_fp32(layout, device):
    layer = randomised_iebn(8).train().to(device)
    x = sample((4, 8, 16, 16), torch.float32, layout, device)
    upstream = torch.randn(4, 8, 16, 16, device=device)
    expected = torch.autograd.grad(layer(x), (x, layer.weight, layer.gate_weight), upstream)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    got = torch.autograd.grad(y, (x, layer.weight, layer.gate_weight), upstream.bfloat16())
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        assert (g - e).norm() < 0.02 * e.norm()


def test_constant_channels_give_finite_output_and_gradients():
    layer = IEBN2d(3).train()
    x = torch.ones(2, 3, 4, 4, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_plain_torch_fallback_gives_the_same_layer(monkeypatch, layout):
    """Devices without the native kernels take plain torch ops; both give the same IEBN."""
    layer = randomised_iebn(4).train()
    x = sample((3, 4, 5, 6), torch.float32, layout)
    upstream = torch.randn(3, 4, 5, 6)
    native = layer(x)
    native_grads = torch.autograd.grad(native, (x, layer.weight, layer.gate_weight), upstream)
    monkeypatch.setattr("styletransfer.instance_ops.NATIVE_KERNEL_DEVICES", ())
    plain = layer(x)
    assert plain.grad_fn.name() != native.grad_fn.name()  # the other path was taken
    torch.testing.assert_close(plain, native)
    plain_grads = torch.autograd.grad(plain, (x, layer.weight, layer.gate_weight), upstream)
    for p, n in zip(plain_grads, native_grads):
        torch.testing.assert_close(p, n, rtol=1e-4, atol=1e-5)


def test_second_derivatives_are_refused_rather_than_wrong():
    layer = randomised_iebn(4).train()
    x = sample((2, 4, 5, 5), torch.float32)
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("offset", [0.0, 1000.0])  # also far from zero mean
def test_instance_norm_equals_torch_instance_norm_in_float64(layout, device, offset):
    layer = make_norm("in", 4).to(device)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = (sample((3, 4, 5, 6), torch.float32, layout, device) + offset).detach().requires_grad_()
    params = (x, layer.weight, layer.bias)
    exact = [p.detach().double().requires_grad_() for p in params]
    expected = F.instance_norm(exact[0], weight=exact[1], bias=exact[2], eps=layer.eps)
    y = layer(x)
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=1e-4)
    upstream = torch.randn_like(y)
    wanted = torch.autograd.grad(expected, exact, upstream.double())
    for got, want in zip(torch.autograd.grad(y, params, upstream), wanted):
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_squeeze_excite_equals_its_formula(layout, device):
    torch.manual_seed(0)
    se = SqueezeExcite(16).to(device)
    x = sample((3, 16, 5, 6), torch.float32, layout, device)
    expected = x * torch.sigmoid(se.fc2(F.relu(se.fc1(x.mean(dim=(2, 3))))))[:, :, None, None]
    y = se(x)
    torch.testing.assert_close(y, expected)
    upstream = torch.randn_like(expected)
    params = (x, se.fc1.weight, se.fc2.bias)
    for got, want in zip(torch.autograd.grad(y, params, upstream), torch.autograd.grad(expected, params, upstream)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_gradient_in_another_layout_than_the_input_gives_the_same_result():
    layer = randomised_iebn(4).train()
    x = sample((3, 4, 5, 6), torch.float32, "channels_last")
    upstream = torch.randn(3, 4, 5, 6)  # contiguous, unlike x and the output
    expected = torch.autograd.grad(layer(x), (x, layer.weight), upstream.contiguous(memory_format=torch.channels_last))
    for got, want in zip(torch.autograd.grad(layer(x), (x, layer.weight), upstream), expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("shape", [(1, 4, 5, 6), (3, 1, 5, 6), (2, 4, 1, 2)])
def test_instance_norm_small_shapes_equal_torch(shape):
    layer = make_norm("in", shape[1])
    x = sample(shape, torch.float32)
    torch.testing.assert_close(layer(x), F.instance_norm(x, weight=layer.weight, bias=layer.bias))


def test_instance_norm_keeps_torchs_checks():
    layer = make_norm("in", 4)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        layer(torch.randn(2, 4, 1, 1))
    with pytest.raises(ValueError, match="expected input's size at dim=1 to match num_features"):
        layer(torch.randn(2, 5, 3, 3))


def test_compiled_graphs_with_gradients_take_plain_ops_and_inference_graphs_the_kernels():
    """The route is chosen while torch.compile traces: plain ops where gradients flow (inductor
    fuses them into the backward it generates), the batch-norm kernels for inference graphs."""
    x = torch.rand(1, 2, 3, 3)
    native_flag = torch.compile(lambda t: t * 0 + float(use_native_kernels(t)), fullgraph=True)
    assert use_native_kernels(x)  # eager, on the CPU
    assert native_flag(x).eq(0).all()  # traced with gradients enabled
    with torch.inference_mode():
        assert native_flag(x).eq(1).all()
