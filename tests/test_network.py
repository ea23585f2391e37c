import pytest
import torch

from styletransfer.network import TransformerNet
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
