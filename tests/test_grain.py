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
from styletransfer.grain import STYLISE_GRAIN, add_grain, grain_field, training_grain
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


def test_add_grain_is_unclipped_noise_of_the_level_asked_for():
    gray = torch.full((2, 3, 128, 128), 0.5)
    grainy = add_grain(gray, 4)
    assert add_grain(gray, 0) is gray
    assert abs((grainy - gray).std().item() * 255 - 4) < 0.1
    assert torch.equal(grainy[0], grainy[1])  # one pattern for every image (video frames)
    # Not clipped: black and white get all of the grain, not the half inside [0, 1].
    black = add_grain(torch.zeros(1, 3, 64, 64), 8)
    assert abs(black.mean().item()) < 0.002 and abs(black.std().item() * 255 - 8) < 0.3


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
    with torch.inference_mode():
        reference = net(add_grain(x, 8))
    tiled = stylize_in_tiles(net, x, 64, grain=8)
    assert (tiled - reference).abs().max() < 1e-4
    img = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    stylizer = Stylizer(net, {"norm": norm}, "cpu", "fp32")
    whole, in_tiles = stylizer.stylize(img, tile="off", grain=8), stylizer.stylize(img, tile=32, grain=8)
    assert np.abs(np.asarray(whole, dtype=int) - np.asarray(in_tiles, dtype=int)).max() <= 1


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
