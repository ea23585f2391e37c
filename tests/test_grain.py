"""Grain: noise the network sees, in training (fresh per step) and stylising (a fixed pattern)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from styletransfer.checkpoint import load_checkpoint, save_checkpoint
from styletransfer.config import TrainConfig
from styletransfer.controls import Controlled, Controls
from styletransfer.errors import StyleTransferError
from styletransfer.grain import (
    FLAT_CONTEXT, FLAT_GRAIN_FACTOR, GRAIN_MAX, STYLISE_GRAIN, add_grain, flatness, grain_field, grain_levels, training_grain,
)
from styletransfer.network import TransformerNet
from styletransfer.stylize import Stylizer
from styletransfer.tiling import stylize_in_tiles

from .conftest import TINY, run_cli
from .test_tiling import SMALL, picture, randomised


def test_the_stylising_grain_of_a_pixel_depends_only_on_its_position():
    whole = grain_field(40, 50)
    assert torch.equal(grain_field(12, 17, top=20, left=30), whole[:, 20:32, 30:47])
    assert not torch.equal(grain_field(40, 50, seed=1), whole)
    assert not torch.equal(whole[0], whole[1])  # each channel its own noise


def test_the_stylising_grain_is_standard_normal_and_uncorrelated():
    noise = grain_field(256, 256).double()
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1) < 0.01
    assert abs(np.percentile(noise.numpy(), 97.725) - 2) < 0.05  # a Gaussian tail, not a uniform one
    right, down = (noise[:, :, 1:] * noise[:, :, :-1]).mean(), (noise[:, 1:] * noise[:, :-1]).mean()
    assert abs(right.item()) < 0.01 and abs(down.item()) < 0.01


def half_flat(height: int = 128, width: int = 256, value: float = 0.5) -> torch.Tensor:
    """(1, 3, H, W): the left half plain ``value``, the right half random texture (seeded)."""
    image = torch.full((1, 3, height, width), value)
    image[..., width // 2 :] = torch.rand(1, 3, height, width - width // 2, generator=torch.Generator().manual_seed(0))
    return image


def test_flatness_is_one_on_a_plain_region_and_zero_on_texture():
    flat = flatness(half_flat())
    assert flat.shape == (1, 1, 128, 256)
    assert flat[..., : 128 - FLAT_CONTEXT].min() == 1 and flat[..., 128 + FLAT_CONTEXT :].max() == 0
    assert flatness(torch.zeros(1, 3, 8, 8)).min() == 1  # smaller than the window: still defined
    # A smooth gradient has no fine detail: a sky or a blurred background counts as flat.
    ramp = torch.linspace(0, 1, 200).expand(1, 3, 100, 200)
    assert flatness(ramp).min() == 1


def test_flatness_looks_no_further_than_its_context():
    image = half_flat()
    top, left, height, width = 40, 100, 30, 60
    window = image[..., top - FLAT_CONTEXT : top + height + FLAT_CONTEXT, left - FLAT_CONTEXT : left + width + FLAT_CONTEXT]
    inner = flatness(window)[..., FLAT_CONTEXT : FLAT_CONTEXT + height, FLAT_CONTEXT : FLAT_CONTEXT + width]
    torch.testing.assert_close(inner, flatness(image)[..., top : top + height, left : left + width], atol=1e-6, rtol=0)


def test_grain_is_stronger_where_the_photo_is_flat():
    levels = grain_levels(half_flat(), 4)
    assert levels[..., :100].min() == levels[..., :100].max() == 4 * FLAT_GRAIN_FACTOR
    assert levels[..., 160:].min() == levels[..., 160:].max() == 4
    assert grain_levels(half_flat(), GRAIN_MAX).max() == GRAIN_MAX  # never beyond the maximum
    assert grain_levels(half_flat(), 0).max() == 0


def test_add_grain_is_unclipped_noise_of_the_level_asked_for():
    image = half_flat()
    grainy = add_grain(image, 4)
    assert add_grain(image, 0) is image
    noise = (grainy - image) * 255
    assert abs(noise[..., 160:].std().item() - 4) < 0.15  # textured: the level itself
    assert abs(noise[..., :100].std().item() - 4 * FLAT_GRAIN_FACTOR) < 0.5  # flat: stronger
    batch = add_grain(image.expand(2, -1, -1, -1), 4)
    assert torch.equal(batch[0], batch[1])  # one pattern for every image (video frames)
    # Not clipped: black gets all of the grain, not the half inside [0, 1].
    black = add_grain(torch.zeros(1, 3, 64, 64), 8)
    assert abs(black.mean().item()) < 0.01 and abs(black.std().item() * 255 - 8 * FLAT_GRAIN_FACTOR) < 1


def test_training_grain_is_a_pure_function_of_seed_step_and_place_in_the_batch():
    content = torch.rand(4, 3, 16, 16)
    first = training_grain(content, 4, seed=0, step=7)
    assert torch.equal(first, training_grain(content, 4, seed=0, step=7))
    assert not torch.equal(first, training_grain(content, 4, seed=0, step=8))
    assert not torch.equal(first, training_grain(content, 4, seed=1, step=7))
    # Two processes with two images each add what one process with four adds.
    halves = [training_grain(content[i : i + 2], 4, seed=0, step=7, first=i) for i in (0, 2)]
    assert torch.equal(torch.cat(halves), first)
    assert training_grain(content, 0, 0, 7) is content


def test_training_with_grain_changes_what_is_learned_and_is_recorded(tmp_path, photos, style_image):
    def train(level: str):
        out = tmp_path / level
        args = ("train", "--style", style_image, "--content-dir", photos, "--norm", "in", "--out", out, *TINY)
        assert run_cli(*args, "--grain", level, "--precision", "fp32") == 0
        return load_checkpoint(out / "checkpoint.safetensors")

    plain, grainy = train("0"), train("8")
    assert plain.meta["grain"] == 0 and grainy.meta["grain"] == 8
    assert grainy.meta["config"]["grain"] == 8
    assert plain.meta["losses"]["total"] != grainy.meta["losses"]["total"]


def test_runs_from_before_grain_resume_without_it():
    saved = TrainConfig(style="s.jpg", content_dir="photos", out="run").to_metadata()
    del saved["grain"]
    assert TrainConfig.from_metadata(saved).grain == 0


@pytest.mark.parametrize("value", ["-1", "33", "nan"])
def test_a_grain_out_of_range_is_a_one_line_error(tmp_path, capsys, photos, style_image, value):
    code = run_cli("train", "--style", style_image, "--content-dir", photos, "--out", tmp_path / "run", *TINY, "--grain", value)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "--grain" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(StyleTransferError, match="--grain"):
        Controls(grain=float(value))
    with pytest.raises(StyleTransferError, match="grain"):  # the Python API checks it too
        Stylizer(TransformerNet("in"), {"norm": "in"}, "cpu", "fp32").stylize_tensor(torch.rand(1, 3, 16, 16), float(value))


def test_stylising_adds_the_default_grain_unless_told_otherwise():
    stylizer, x = Stylizer(randomised("in"), {"norm": "in"}, "cpu", "fp32"), picture(*SMALL)
    with torch.inference_mode():
        expected = stylizer.model(add_grain(x, STYLISE_GRAIN))
        plain = stylizer.model(x)
    assert STYLISE_GRAIN > 0 and Controls().grain == STYLISE_GRAIN
    torch.testing.assert_close(stylizer.stylize_tensor(x), expected)
    torch.testing.assert_close(stylizer.stylize_tensor(x, grain=0), plain)
    # Through the controls, as stylize, compare and video frames take them.
    torch.testing.assert_close(Controlled(stylizer, Controls(grain=0)).stylize_tensor(x), plain)
    torch.testing.assert_close(Controlled(stylizer, Controls()).stylize_tensor(x), expected)
    img = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    with_grain, without = stylizer.stylize(img, tile="off"), stylizer.stylize(img, tile="off", grain=0)
    assert np.abs(np.asarray(with_grain, dtype=int) - np.asarray(without, dtype=int)).max() > 2


@pytest.mark.parametrize("norm", ["bn", "iebn"])
def test_tiles_get_the_whole_images_grain(norm):
    net, x = randomised(norm), picture()
    x[..., 20:70, 30:90] = torch.rand(1, 3, 50, 60, generator=torch.Generator().manual_seed(1))  # texture beside flat
    with torch.inference_mode():
        reference = net(add_grain(x, 8))
    tiled = stylize_in_tiles(net, x, 64, grain=8)
    assert (tiled - reference).abs().max() < 1e-4
    img = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    stylizer = Stylizer(net, {"norm": norm}, "cpu", "fp32")
    whole, in_tiles = stylizer.stylize(img, tile="off", grain=8), stylizer.stylize(img, tile=32, grain=8)
    assert np.abs(np.asarray(whole, dtype=int) - np.asarray(in_tiles, dtype=int)).max() <= 1


def test_each_tile_gets_the_grain_the_whole_image_gets_there():
    # A pointwise model and the least halo: the tiled output is the grained input itself, so a tile's
    # flatness seen without the context beyond its edges would show at the cuts.
    identity = torch.nn.Conv2d(3, 3, 1).eval()
    with torch.no_grad():
        identity.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        identity.bias.zero_()
    x = picture()
    x[..., 20:70, 30:90] = torch.rand(1, 3, 50, 60, generator=torch.Generator().manual_seed(1))
    tiled = stylize_in_tiles(identity, x, 16, halo=16, grain=8)
    torch.testing.assert_close(tiled, add_grain(x, 8), atol=1e-6, rtol=0)


def test_cli_grain_option(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "in.safetensors", TransformerNet("in"), {"norm": "in"})
    photo = tmp_path / "photo.png"
    Image.fromarray((picture(*SMALL)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(photo)
    for name, extra in (("default", ()), ("none", ("--grain", "0"))):
        assert run_cli("stylize", photo, "-m", ckpt, "-o", tmp_path / f"{name}.png", "--precision", "fp32", *extra) == 0
    default, none = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=int) for n in ("default", "none"))
    assert np.abs(default - none).max() > 0
    capsys.readouterr()
    assert run_cli("stylize", photo, "-m", ckpt, "-o", tmp_path / "bad.png", "--grain", "40") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--grain must be between 0 and 32" in err
    assert not (tmp_path / "bad.png").exists()


def test_evaluate_scores_the_grain_asked_for(trained_runs, photos):
    from styletransfer.evaluate import run

    ckpt = str(trained_runs["in"] / "checkpoint.safetensors")
    default, grainy = (run(photos, [ckpt], [], size=64, limit=2, vgg_weights="random", device="cpu", **g)
                       for g in ({}, {"grain": 16}))  # fmt: skip
    assert default.settings["grain"] == STYLISE_GRAIN and grainy.settings["grain"] == 16
    label = default.rows[0].label
    assert default.scores[(label, "photo0.png")]["content_distance"] != grainy.scores[(label, "photo0.png")]["content_distance"]
    with pytest.raises(StyleTransferError, match="--grain"):
        run(photos, [ckpt], [], size=64, vgg_weights="random", device="cpu", grain=99)
