import pytest
import torch
from torchvision.models import vgg as tv_vgg
from torchvision.models import vgg16

from styletransfer.errors import StyleTransferError
from styletransfer.loss import (
    VGG_LAYERS,
    VGG_WEIGHTS_ENV,
    PerceptualLoss,
    gram_matrix,
    load_vgg_features,
    relative_mse,
    total_variation,
)


def test_gram_matrix_of_a_known_input():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    g = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)
    gram = gram_matrix(torch.cat([f, g], 1))  # C=2, H*W=4
    expected = torch.tensor([[30.0, 5.0], [5.0, 2.0]]) / (2 * 4)
    torch.testing.assert_close(gram[0], expected)


def test_total_variation_of_a_known_image():
    img = torch.zeros(1, 1, 2, 3)
    img[..., :, 2] = 1.0  # one vertical edge
    # horizontal neighbours differ in 2 of 4 pairs; vertical ones never
    torch.testing.assert_close(total_variation(img), torch.tensor(0.5))


def test_relative_mse_does_not_depend_on_activation_scale():
    a, b = torch.randn(2, 10), torch.randn(2, 10)
    torch.testing.assert_close(relative_mse(a * 100, b * 100), relative_mse(a, b))


def test_relative_mse_of_a_batch_is_the_mean_of_its_halves():
    a, b = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5) * 3
    halves = (relative_mse(a[:2], b[:2]) + relative_mse(a[2:], b[2:])) / 2
    torch.testing.assert_close(relative_mse(a, b), halves)


def save_vgg16(path, features_only):
    sd = vgg16(weights=None).state_dict()
    if features_only:
        sd = {k: v for k, v in sd.items() if k.startswith("features.")}
    torch.save(sd, path)
    return sd


@pytest.mark.parametrize("features_only", [True, False])
def test_loads_local_vgg_weights_full_or_features_only(tmp_path, features_only):
    sd = save_vgg16(tmp_path / "vgg.pth", features_only)
    features = load_vgg_features("vgg16", str(tmp_path / "vgg.pth"))
    torch.testing.assert_close(features[0].weight, sd["features.0.weight"])
    torch.testing.assert_close(features[28].bias, sd["features.28.bias"])
    assert not any(p.requires_grad for p in features.parameters())


def test_weights_file_from_the_environment(tmp_path, monkeypatch):
    sd = save_vgg16(tmp_path / "vgg.pth", True)
    monkeypatch.setenv(VGG_WEIGHTS_ENV, str(tmp_path / "vgg.pth"))
    torch.testing.assert_close(load_vgg_features("vgg16")[2].weight, sd["features.2.weight"])


def test_vgg19_weights_into_vgg16_are_refused(tmp_path):
    save_vgg16(tmp_path / "vgg.pth", True)
    with pytest.raises(StyleTransferError, match="do not match"):
        load_vgg_features("vgg19", str(tmp_path / "vgg.pth"))


def test_offline_without_weights_says_how_to_provide_them(monkeypatch):
    monkeypatch.delenv(VGG_WEIGHTS_ENV, raising=False)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", offline)
    with pytest.raises(StyleTransferError) as e:
        load_vgg_features("vgg16")
    assert "--vgg-weights" in str(e.value) and VGG_WEIGHTS_ENV in str(e.value)


def test_bad_weights_files_give_clear_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(StyleTransferError, match="junk.pth"):
        load_vgg_features("vgg16", str(tmp_path / "junk.pth"))
    with pytest.raises(StyleTransferError, match="does not exist"):
        load_vgg_features("vgg16", str(tmp_path / "missing.pth"))
    with pytest.raises(StyleTransferError, match="unknown VGG"):
        load_vgg_features("vgg11", "random")


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_perceptual_loss_is_zero_for_the_style_image_itself_and_positive_otherwise(arch):
    torch.manual_seed(0)
    style = torch.rand(3, 32, 32)
    loss = PerceptualLoss(load_vgg_features(arch, "random"), style, arch)
    same = loss(style[None], style[None])
    assert same["content"] < 1e-6 and same["style"] < 1e-6
    ramp = torch.linspace(0, 1, 32).expand(1, 3, 32, 32)  # smooth: unlike the noise style
    other = loss(ramp, style[None])
    assert other["content"] > 0.01 and other["style"] > 0.01
    total = loss.weights.content * other["content"] + loss.weights.style * other["style"] + loss.weights.tv * other["tv"]
    torch.testing.assert_close(other["total"], total)


def test_unknown_layer_is_refused():
    with pytest.raises(StyleTransferError, match="relu9_9"):
        PerceptualLoss(load_vgg_features("vgg16", "random"), torch.rand(3, 16, 16), style_layers=("relu9_9",))


@pytest.mark.parametrize("arch,cfg", [("vgg16", "D"), ("vgg19", "E")])
def test_vgg_layer_names_follow_the_architecture(arch, cfg):
    """relu<b>_<i>: the i-th ReLU after the (b-1)-th max-pool of torchvision's VGG."""
    names, block, n = {}, 1, 0
    for i, m in enumerate(tv_vgg.make_layers(tv_vgg.cfgs[cfg])):
        if isinstance(m, torch.nn.MaxPool2d):
            block, n = block + 1, 0
        elif isinstance(m, torch.nn.ReLU):
            n += 1
            names[f"relu{block}_{n}"] = i
    for name, index in VGG_LAYERS[arch].items():
        assert names[name] == index, name
    assert {"relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"} <= set(VGG_LAYERS[arch])


def test_style_grams_are_computed_where_the_style_image_is():
    # Training puts the style image on the GPU before the loss network gets there; the Grams
    # must be computed on the style image's device ("meta" stands in for a GPU here).
    style = torch.rand(3, 32, 32, device="meta")
    loss = PerceptualLoss(load_vgg_features("vgg16", "random"), style)
    assert all(b.device.type == "meta" for b in loss.buffers())
