"""Tiled stylising: the tiles computed with whole-image statistics give the untiled result."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from styletransfer.instance_ops import instance_moments
from styletransfer.network import TransformerNet
from styletransfer.norms import NORMS, InstanceStatistics
from styletransfer.stylize import Stylizer
from styletransfer import stylize as stylize_module
from styletransfer import tiling
from styletransfer.errors import StyleTransferError
from styletransfer.tiling import parse_tile, per_instance_layers, plan_tiles, stylize_in_tiles, tile_side

from .conftest import DEVICES, run_cli, write_checkpoint

HEIGHT, WIDTH, SIDE = 150, 201, 64  # odd sizes: the network pads to 152 x 204; 3 x 4 tiles, halos cut
SMALL = (58, 91)  # for the tests of everything else: 2 x 3 tiles of SIDE_SMALL
SIDE_SMALL = 32


def randomised(norm: str, seed: int = 0) -> TransformerNet:
    """A network in eval mode with random affine parameters and gates, and running statistics
    taken from :func:`picture` (so that BN keeps the signal alive through the 15 layers)."""
    torch.manual_seed(seed)
    net = TransformerNet(norm)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
            if hasattr(m, "gate_weight"):
                m.gate_weight.normal_(0.0, 3.0)
                m.gate_bias.normal_(0.0, 1.0)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: after one batch, that batch's statistics
        net.train()(picture(*SMALL))
    return net.eval()


def picture(height: int = HEIGHT, width: int = WIDTH, batch: int = 1) -> torch.Tensor:
    """Smooth colour gradients with a dark block: each tile has different statistics."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    images = []
    for b in range(batch):
        img = torch.stack([xx, yy * (1 - xx), torch.sin(6 * xx + 4 * yy + b) * 0.5 + 0.5])
        img[:, height // 3 :, : width // 2] *= 0.3
        images.append(img)
    return torch.stack(images)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def untiled(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return net(x)


def per_tile_statistics(net: torch.nn.Module, x: torch.Tensor, side: int) -> torch.Tensor:
    """The naive way: each tile stylised on its own, its own statistics, cores pasted."""
    out = torch.empty_like(x)
    height, width = x.shape[-2:]
    for tile in plan_tiles(height, width, side):
        top, bottom, left, right = tile.region
        y = untiled(net, x[:, :, top:bottom, left:right])
        rows, cols = tile.core_in_region()
        t, b, lft, r = tile.core
        out[:, :, t:b, lft:r] = y[:, :, rows, cols][:, :, : height - t, : width - lft]
    return out


@pytest.mark.parametrize("norm", list(NORMS))
def test_tiled_equals_untiled_for_every_norm_in_one_pass_per_statistic(norm):
    net, x = randomised(norm), picture()
    calls = []
    tiled = stylize_in_tiles(net, x, SIDE, progress=lambda *args: calls.append(args))
    reference = untiled(net, x)
    assert psnr(tiled, reference) > 90
    assert (tiled - reference).abs().max() < 1e-4
    # BN in eval mode is pointwise: one pass. The others: one per per-instance layer (3 encoder,
    # 10 residual and 2 upsampling norm layers), then the stylising pass.
    passes = 1 if norm == "bn" else 16
    assert len(plan_tiles(HEIGHT, WIDTH, SIDE)) == 12 and len(calls) == passes * 12
    assert {count for _, count, _, _, _ in calls} == {passes}
    assert [(number, done) for number, _, _, done, _ in calls] == [(p, t) for p in range(1, passes + 1) for t in range(1, 13)]


@pytest.mark.parametrize("norm", ["in", "se", "iebn"])
def test_per_tile_statistics_would_show(norm):
    net, x = randomised(norm), picture()
    assert psnr(per_tile_statistics(net, x, SIDE), untiled(net, x)) < 60


def test_a_halo_under_the_receptive_field_shows_at_the_seams():
    net, x = randomised("in"), picture()
    assert psnr(stylize_in_tiles(net, x, SIDE, halo=16), untiled(net, x)) < 60


def test_each_image_of_a_batch_keeps_its_own_statistics():
    net, x = randomised("in"), picture(*SMALL, batch=2)
    x[1] = x[1].flip(-1) * 0.5
    assert psnr(stylize_in_tiles(net, x, SIDE_SMALL), untiled(net, x)) > 90


def test_per_instance_layers_in_the_order_they_run():
    assert per_instance_layers(TransformerNet("bn")) == []
    for norm in ("in", "se", "iebn"):
        net = TransformerNet(norm)
        order = []
        hooks = [m.register_forward_pre_hook(lambda m, _: order.append(m)) for m in per_instance_layers(net)]
        untiled(net.eval(), picture(*SMALL))
        for hook in hooks:
            hook.remove()
        assert order == per_instance_layers(net) and len(order) == 15


def test_cores_partition_the_padded_image_on_a_grid_of_four():
    for height, width, side in [(150, 201, 64), (17, 1000, 16), (999, 37, 100), (16, 16, 16)]:
        padded_h, padded_w, _ = tiling.padded_size(height, width)
        covered = torch.zeros(padded_h, padded_w, dtype=torch.int)
        for tile in plan_tiles(height, width, side + -side % 4):
            top, bottom, left, right = tile.core
            covered[top:bottom, left:right] += 1
            r_top, r_bottom, r_left, r_right = tile.region
            assert all(c % 4 == 0 for c in tile.core + tile.region)
            assert 0 <= r_top <= top < bottom <= r_bottom <= padded_h and 0 <= r_left <= left < right <= r_right <= padded_w
            assert min(r_bottom - r_top, r_right - r_left) >= 16
        assert (covered == 1).all()


def test_uint8_in_and_out_round_like_the_untiled_image():
    net = randomised("iebn")
    x = (picture(*SMALL) * 255).round().to(torch.uint8)
    out = torch.empty_like(x)
    stylize_in_tiles(net, x, SIDE_SMALL, out=out)
    reference = untiled(net, x.float() / 255).clamp(0, 1).mul(255).round().to(torch.uint8)
    assert (out.int() - reference.int()).abs().max() <= 1


def test_the_override_is_removed_after_tiling_and_changes_nothing_when_unset():
    net, x = randomised("iebn"), picture(*SMALL)
    before = untiled(net, x)
    stylize_in_tiles(net, x, SIDE_SMALL)
    layers = per_instance_layers(net)
    assert all(layer.moments_override is None and "moments_override" not in vars(layer) for layer in layers)
    assert torch.equal(untiled(net, x), before)


def test_layers_use_the_override_when_it_is_set():
    net, x = randomised("in"), picture(*SMALL)
    before = untiled(net, x)
    layers = per_instance_layers(net)
    for layer in layers:
        layer.moments_override = instance_moments  # the layer's own statistics, through the override
    assert torch.equal(untiled(net, x), before)
    for layer in layers:
        layer.moments_override = lambda t: tuple(s + 0.5 for s in instance_moments(t))
    assert psnr(untiled(net, x), before) < 60
    for layer in layers:
        del layer.moments_override
    assert torch.equal(untiled(net, x), before)


def test_every_per_instance_norm_consults_the_override():
    for norm in NORMS:
        kinds = {type(m) for m in per_instance_layers(TransformerNet(norm))}
        assert all(issubclass(k, InstanceStatistics) for k in kinds)
        assert bool(kinds) == (norm != "bn")


def test_tiling_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        stylize_in_tiles(TransformerNet("in"), picture(*SMALL), SIDE_SMALL)


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("OFF", "off"), ("64", 64), ("65", 68), (16, 16), (None, "off")])
def test_parse_tile(text, expected):
    assert parse_tile(text) == expected


@pytest.mark.parametrize("text", ["abc", "8", "-64", "", "1.5", True])
def test_parse_tile_refuses_anything_else_in_one_line(text):
    with pytest.raises(StyleTransferError, match="--tile must be auto, off or a tile side"):
        parse_tile(text)


def test_auto_tiles_only_over_the_memory_budget(monkeypatch):
    cpu = torch.device("cpu")
    assert tile_side("auto", 2048, 2048, cpu) is None  # 1.45 GiB estimated: under the 1.5 GiB budget
    side = tile_side("auto", 6000, 8000, cpu)
    assert side is not None and side % 4 == 0
    assert tiling.peak_bytes(side + 2 * tiling.HALO, side + 2 * tiling.HALO) <= tiling.MEMORY_BUDGET
    assert tile_side("off", 6000, 8000, cpu) is None
    assert tile_side(512, 300, 400, cpu) is None  # one tile would cover it: no extra passes
    assert tile_side(64, 300, 400, cpu) == 64
    monkeypatch.setattr(tiling, "MEMORY_BUDGET", tiling.peak_bytes(100, 100))
    assert tile_side("auto", HEIGHT, WIDTH, cpu) == 16  # a budget under a tile's halo: the smallest tiles


@pytest.mark.parametrize("device", DEVICES)
def test_stylizer_tiles_a_picture_with_the_same_result(device):
    stylizer = Stylizer(randomised("se"), {"norm": "se"}, device, "fp32")
    img = Image.fromarray((picture(*SMALL)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    calls = []
    tiled = stylizer.stylize(img, tile=SIDE_SMALL, tile_progress=lambda *args: calls.append(args))
    whole = stylizer.stylize(img, tile="off")
    assert calls and tiled.size == whole.size == SMALL[::-1]
    assert np.abs(np.asarray(tiled, dtype=int) - np.asarray(whole, dtype=int)).max() <= 1


def test_cli_stylize_with_tiles(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = write_checkpoint(tmp_path, "stripes", "in", seed=1)
    photo = tmp_path / "photo.png"
    Image.fromarray((picture(*SMALL)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(photo)
    assert run_cli("stylize", photo, "-m", ckpt, "-o", tmp_path / "tiled.png", "--tile", "32", "--precision", "fp32") == 0
    assert run_cli("stylize", photo, "-m", ckpt, "-o", tmp_path / "whole.png", "--tile", "off", "--precision", "fp32") == 0
    tiled, whole = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=int) for n in ("tiled", "whole"))
    assert np.abs(tiled - whole).max() <= 1


@pytest.mark.parametrize("value", ["abc", "8"])
def test_cli_tile_errors_are_one_line(tmp_path, capsys, value):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(photo)
    code = run_cli("stylize", photo, "-m", tmp_path / "missing.safetensors", "-o", tmp_path / "out.png", "--tile", value)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: --tile must be auto, off or a tile side in pixels")
    assert not (tmp_path / "out.png").exists()


def test_a_tiled_plain_stylisation_never_makes_a_float_copy_of_the_picture(monkeypatch):
    stylizer = Stylizer(randomised("iebn"), {"norm": "iebn"}, "cpu", "fp32")
    img = Image.fromarray((picture(*SMALL)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    whole = stylizer.stylize(img, tile="off")

    def refuse(*args):
        raise AssertionError("the whole picture became a float tensor")

    monkeypatch.setattr(stylize_module, "image_to_tensor", refuse)
    tiled = stylizer.stylize(img, tile=SIDE_SMALL)
    assert np.abs(np.asarray(tiled, dtype=int) - np.asarray(whole, dtype=int)).max() <= 1
    with pytest.raises(AssertionError, match="float tensor"):  # the controls do need one
        stylizer.stylize(img, tile=SIDE_SMALL, strength=0.5)
