import math

import pytest
import torch
from torch import nn

from styletransfer.norms import NORMS, BatchNormSE, IEBN2d, convert_bn_to_iebn, make_norm

from .conftest import iebn_by_formula, randomised_iebn


def test_iebn_training_matches_formula_with_batch_statistics():
    layer = randomised_iebn().train()
    x = torch.randn(4, 5, 7, 6) * 3 + 1
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    expected = iebn_by_formula(x, mean, var, layer.weight, layer.bias, layer.gate_weight, layer.gate_bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_iebn_eval_matches_formula_with_running_statistics():
    layer = randomised_iebn()
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    layer.eval()
    x = torch.randn(3, 5, 4, 4)
    expected = iebn_by_formula(
        x, layer.running_mean, layer.running_var, layer.weight, layer.bias, layer.gate_weight, layer.gate_bias
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_iebn_updates_running_statistics_like_batchnorm():
    torch.manual_seed(1)
    x = torch.randn(4, 5, 6, 6) * 2 + 3
    iebn, bn = IEBN2d(5), nn.BatchNorm2d(5)
    iebn(x), bn(x)
    torch.testing.assert_close(iebn.running_mean, bn.running_mean)
    torch.testing.assert_close(iebn.running_var, bn.running_var)
    assert int(iebn.num_batches_tracked) == 1


def test_gate_starts_at_sigmoid_of_minus_one_for_every_input():
    layer = IEBN2d(8)
    assert torch.all(layer.gate_weight == 0) and torch.all(layer.gate_bias == -1)
    gate = layer.gate(torch.randn(3, 8, 5, 5).mul(10).mean(dim=(2, 3)))
    torch.testing.assert_close(gate, torch.full((3, 8), 1 / (1 + math.e)))


def test_iebn_adds_two_parameters_per_channel():
    bn, iebn = nn.BatchNorm2d(16), IEBN2d(16)
    extra = sum(p.numel() for p in iebn.parameters()) - sum(p.numel() for p in bn.parameters())
    assert extra == 2 * 16


def test_instances_in_one_batch_get_different_gates():
    layer = IEBN2d(4)
    with torch.no_grad():
        layer.gate_weight.fill_(1.0)
    x = torch.randn(2, 4, 6, 6)
    x[1] += 5.0  # the second image is much brighter in every channel
    gate = layer.gate(x.mean(dim=(2, 3)))
    assert torch.all(gate[1] > gate[0])


def test_iebn_gradients_reach_every_parameter():
    layer = randomised_iebn()
    layer(torch.randn(4, 5, 6, 6)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("excite", ["gamma", "beta", "both"])
@pytest.mark.parametrize("squeeze", ["linear", "identity", "fc"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_ablation_options_build_and_run(excite, squeeze, activation):
    layer = IEBN2d(32, excite=excite, squeeze=squeeze, activation=activation)
    y = layer(torch.randn(2, 32, 5, 5))
    assert y.shape == (2, 32, 5, 5) and torch.isfinite(y).all()


def test_exciting_beta_rescales_the_shift_not_the_scale():
    layer = IEBN2d(3, excite="beta").eval()
    with torch.no_grad():
        layer.bias.fill_(2.0)
    x = torch.zeros(1, 3, 2, 2)  # normalised input 0: output is beta * gate
    torch.testing.assert_close(layer(x), torch.full_like(x, 2.0 / (1 + math.e)))


def test_unknown_options_are_refused():
    with pytest.raises(ValueError):
        IEBN2d(4, excite="alpha")
    with pytest.raises(ValueError):
        make_norm("group", 4)


def test_factory_maps_each_name_to_its_layer():
    layers = {name: make_norm(name, 32) for name in NORMS}
    assert type(layers["bn"]) is nn.BatchNorm2d
    assert isinstance(layers["in"], nn.InstanceNorm2d) and layers["in"].affine
    assert isinstance(layers["se"], BatchNormSE)
    assert isinstance(layers["iebn"], IEBN2d)


def test_se_gate_scales_each_channel_of_the_bn_output():
    se = make_norm("se", 32).eval()
    x = torch.randn(2, 32, 4, 4)
    bn_out = se[0](x)
    ratio = se(x) / bn_out
    # one factor per (instance, channel), each in (0, 1)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert torch.all((ratio > 0) & (ratio < 1))


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.2)), nn.ReLU(),
    )  # fmt: skip


def test_convert_bn_to_iebn_replaces_every_batchnorm_and_keeps_its_state():
    torch.manual_seed(0)
    model = small_cnn()
    model.train()
    for _ in range(3):
        model(torch.randn(4, 3, 8, 8))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
    originals = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    converted = convert_bn_to_iebn(model).eval()
    iebns = [m for m in converted.modules() if isinstance(m, IEBN2d)]
    assert len(iebns) == 2 and not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    for old, new in zip(originals, iebns):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(new, name), getattr(old, name))
        assert new.momentum == old.momentum and new.eps == old.eps
    y = converted(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 8, 8, 8) and torch.isfinite(y).all()


def test_converted_model_equals_bn_model_once_gate_is_one():
    torch.manual_seed(0)
    model = small_cnn().eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    converted = convert_bn_to_iebn(model)
    for m in converted.modules():
        if isinstance(m, IEBN2d):
            m.gate_bias.data.fill_(50.0)  # sigmoid(50) == 1: plain BN
    torch.testing.assert_close(converted(x), expected)


def test_convert_keeps_the_train_or_eval_mode():
    model = small_cnn().eval()
    assert not any(m.training for m in convert_bn_to_iebn(model).modules())


def test_iebn_under_bf16_autocast_stays_close_to_fp32():
    layer = randomised_iebn().train()
    x = torch.randn(4, 5, 8, 8) * 2 + 1
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert (y.float() - expected).abs().max() < 0.05 * expected.abs().max()
