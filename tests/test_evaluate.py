"""``styletransfer evaluate``: content and style distance on held-out photos, for models and other tools' outputs.

Everything runs on an untrained VGG (``random``, seeded inside the evaluation) and tiny images.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from styletransfer.errors import StyleTransferError
from styletransfer.evaluate import METRICS, Scorer, evaluate, model_rows, run
from styletransfer.metrics import relative_error, style_distance
from styletransfer.photos import Photo, find_photos, match_outputs
from styletransfer.loss import gram_matrix

from .conftest import make_photo, run_cli

QUALITY = [m for m in METRICS if m != "seconds_per_image"]  # everything but the clock


def score(*args, **kwargs):
    kwargs.setdefault("vgg_weights", "random")
    kwargs.setdefault("device", "cpu")
    return run(*args, **kwargs)


def values(ev, label, key):
    return ev.scores[(label, key)]


@pytest.fixture()
def ckpts(trained_runs):
    return [trained_runs[n] / "checkpoint.safetensors" for n in ("bn", "iebn")]


# --- the formulas ----------------------------------------------------


def test_relative_error_is_the_ratio_of_squared_norms_per_image():
    t = torch.randn(3, 4, 5, 6)
    torch.testing.assert_close(relative_error(t, t), torch.zeros(3))
    torch.testing.assert_close(relative_error(2 * t, t), torch.ones(3))
    torch.testing.assert_close(relative_error(torch.zeros_like(t), t), torch.ones(3))
    x = torch.randn(3, 4, 5, 6)
    by_hand = torch.stack([((x[i] - t[i]) ** 2).sum() / (t[i] ** 2).sum() for i in range(3)])
    torch.testing.assert_close(relative_error(x, t), by_hand)
    torch.testing.assert_close(relative_error(10 * x, 10 * t), relative_error(x, t))  # scale free


def test_style_distance_averages_the_five_layers():
    layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    feats = {n: torch.rand(2, 4, 6, 6) for n in layers}
    grams = {n: gram_matrix(feats[n][:1]) for n in layers}
    d = style_distance(feats, grams)
    assert d[0].item() == pytest.approx(0, abs=1e-7)  # the first image is the style image itself
    per_layer = [relative_error(gram_matrix(feats[n][1:]), grams[n]) for n in layers]
    assert d[1].item() == pytest.approx(torch.cat(per_layer).mean().item(), rel=1e-6)


# --- scoring images ------------------------------------------------------------------------


def test_identical_images_score_zero(tmp_path):
    photo = make_photo(tmp_path / "photos" / "p.png", size=(72, 56), seed=3)
    shutil.copytree(tmp_path / "photos", tmp_path / "same")
    ev = score(tmp_path / "photos", [], [tmp_path / "same"], style=photo, style_size=72)
    v = values(ev, "same", "p.png")
    assert v["content_distance"] == pytest.approx(0, abs=1e-9)
    assert v["style_distance"] == pytest.approx(0, abs=1e-9)
    # without checkpoints there is no training objective to report for a folder
    assert v["content_loss"] is None and v["total_loss"] is None
    assert v["seconds_per_image"] is None  # another tool's images: no time to report


def test_a_flat_output_is_all_blotch(tmp_path):
    photo = make_photo(tmp_path / "photos" / "p.png", size=(72, 56), seed=3)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (72, 56), (200, 180, 150)).save(tmp_path / "flat" / "p.png")
    ev = score(tmp_path / "photos", [], [tmp_path / "flat"], style=photo, style_size=72)
    assert values(ev, "flat", "p.png")["blotch_area"] == 1


def test_identical_images_have_zero_training_content_and_style_loss(ckpts, tmp_path):
    photo = make_photo(tmp_path / "photos" / "p.png", size=(72, 56), seed=3)
    shutil.copytree(tmp_path / "photos", tmp_path / "same")
    # the folder takes the checkpoint's training settings; its style image is the photo itself
    ev = score(tmp_path / "photos", [str(ckpts[0])], [tmp_path / "same"], style=photo, style_size=72)
    v = values(ev, "same", "p.png")
    assert ev.rows[1].loss.describe() == ev.rows[0].loss.describe() and ev.rows[1].loss.style_size == 64
    assert v["content_loss"] == pytest.approx(0, abs=1e-9) and v["content_distance"] == pytest.approx(0, abs=1e-9)
    assert v["style_distance"] == pytest.approx(0, abs=1e-9)
    assert v["style_loss"] > 0  # the training loss sees the style image at the training size, 64 px
    assert v["tv_loss"] > 0
    assert v["total_loss"] == pytest.approx(10 * v["style_loss"] + v["tv_loss"], rel=1e-5)


def test_a_different_image_is_further_than_a_perturbed_one(tmp_path):
    photo = make_photo(tmp_path / "photos" / "p.png", size=(80, 64), seed=1)
    a = np.asarray(Image.open(photo)).astype(np.int16)
    rng = np.random.default_rng(0)
    for name, noise in (("slight", 3), ("strong", 40)):
        (tmp_path / name).mkdir()
        noisy = np.clip(a + rng.integers(-noise, noise + 1, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(tmp_path / name / "p.png")
    make_photo(tmp_path / "other" / "p.png", size=(80, 64), seed=9)
    folders = [tmp_path / n for n in ("slight", "strong", "other")]
    ev = score(tmp_path / "photos", [], folders, style=photo)
    slight, strong, other = (values(ev, f.name, "p.png") for f in folders)
    for m in ("content_distance", "style_distance"):
        # more noise, further; a different picture, further than a slightly perturbed one (strong
        # noise against another smooth picture has no expected order: noise is texture, i.e. style)
        assert 0 < slight[m] < strong[m] and slight[m] < other[m], m


def test_scores_do_not_depend_on_photo_or_model_order(ckpts, photos):
    found = find_photos(photos)
    rows = model_rows([str(c) for c in ckpts], photos, None, "cpu", "auto")
    first = evaluate(rows, found, Scorer("random", 64, torch.device("cpu")), size=64)
    shuffled_photos, shuffled_rows = found[:], rows[::-1]
    random.Random(1).shuffle(shuffled_photos)
    assert [p.key for p in shuffled_photos] != [p.key for p in found]
    second = evaluate(shuffled_rows, shuffled_photos, Scorer("random", 64, torch.device("cpu")), size=64)
    assert first.scores.keys() == second.scores.keys() and len(first.scores) == 2 * 6
    for key, v in first.scores.items():
        for m in QUALITY:
            assert second.scores[key][m] == pytest.approx(v[m], rel=1e-6), (key, m)
    summary = {s["model"]: s for s in second.summary()}
    for s in first.summary():
        for m in QUALITY:
            for stat in ("mean", "stderr"):
                assert summary[s["model"]]["metrics"][m][stat] == pytest.approx(s["metrics"][m][stat], rel=1e-6)
    # and the two models really differ, so the comparison above could fail
    labels = [r.label for r in rows]
    assert first.scores[(labels[0], "photo0.png")] != first.scores[(labels[1], "photo0.png")]


def test_a_folder_of_the_models_own_outputs_scores_as_the_model(ckpts, photos, tmp_path):
    model = ckpts[1]
    assert run_cli("stylize", photos, "-m", model, "-o", tmp_path / "out", "--max-size", "64") == 0
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert names[0] == "photo0-stripes-iebn.png" and "sub/photo1-stripes-iebn.png" in names
    ev = score(photos, [str(model)], [tmp_path / "out"], size=64)
    label = ev.rows[0].label
    assert [r.kind for r in ev.rows] == ["model", "folder"] and len(ev.photos) == 6
    for p in ev.photos:
        mine, theirs = values(ev, label, p.key), values(ev, "out", p.key)
        for m in QUALITY:
            assert theirs[m] == pytest.approx(mine[m], rel=1e-5, abs=1e-7), (p.key, m)
        assert mine["seconds_per_image"] > 0 and theirs["seconds_per_image"] is None


def test_outputs_are_matched_by_stem(tmp_path):
    photos = [Photo(k, tmp_path / k) for k in ("a.jpg", "a-b.jpg", "sub/c.png", "10.png")]
    out = tmp_path / "out"
    for name in ("a-starry.png", "a-b-starry.png", "deep/c.jpg", "ab.png", "1-x.png", "zzz.png"):
        make_photo(out / name, size=(20, 20))
    matched, missing = match_outputs(photos, out)
    assert {k: v.relative_to(out).as_posix() for k, v in matched.items()} == {
        "a.jpg": "a-starry.png", "a-b.jpg": "a-b-starry.png", "sub/c.png": "deep/c.jpg",
    }  # fmt: skip
    assert missing == ["10.png"]  # "1-x" is not "10", "ab" is not "a"
    make_photo(out / "a_second.png", size=(20, 20))
    with pytest.raises(StyleTransferError, match="both"):
        match_outputs(photos, out)
    with pytest.raises(StyleTransferError, match="share the name"):
        match_outputs([Photo("x/a.png", tmp_path), Photo("y/a.jpg", tmp_path)], out)


def test_a_photo_without_an_output_is_left_out_of_every_row(ckpts, photos, tmp_path):
    out = tmp_path / "out"
    assert run_cli("stylize", photos, "-m", ckpts[0], "-o", out, "--max-size", "64") == 0
    (out / "photo2-stripes-bn.png").unlink()
    with pytest.warns(UserWarning, match="1 of 6 photos.*photo2.png"):
        ev = score(photos, [str(ckpts[0])], [out], size=64)
    assert len(ev.photos) == 5 and all(s["n"] == 5 for s in ev.summary())
    assert all(key != "photo2.png" for _, key in ev.scores)


def test_an_output_of_another_shape_is_an_error_and_of_another_size_is_resized(tmp_path):
    photo = make_photo(tmp_path / "photos" / "p.png", size=(80, 60))
    Image.open(photo).resize((160, 120)).save(tmp_path / "big.png")
    (tmp_path / "twice").mkdir()
    shutil.move(tmp_path / "big.png", tmp_path / "twice" / "p.png")
    ev = score(tmp_path / "photos", [], [tmp_path / "twice"], style=photo)
    assert values(ev, "twice", "p.png")["content_distance"] < 0.05  # the same picture at twice the size
    make_photo(tmp_path / "square" / "p.png", size=(60, 60))
    with pytest.raises(StyleTransferError, match="aspect ratio"):
        score(tmp_path / "photos", [], [tmp_path / "square"], style=photo)


def test_the_progress_bar_counts_photos_times_models(ckpts, photos):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    score(photos, [str(c) for c in ckpts], [], size=48, limit=2, console=console)
    assert "4/4" in buf.getvalue()  # 2 photos x 2 models


# --- the command ----------------------------------------------------------------------------


def test_cli_prints_the_table_and_writes_csv_json_and_grid(ckpts, photos, tmp_path, capsys):
    files = {k: tmp_path / f"scores.{k}" for k in ("csv", "json")} | {"grid": tmp_path / "grid.png"}
    args = ["evaluate", photos, "-m", ckpts[0], "-m", ckpts[1], "--vgg-weights", "random", "--size", "64"]
    assert run_cli(*args, "--csv", files["csv"], "--json", files["json"], "--grid", files["grid"]) == 0
    out, err = capsys.readouterr()
    assert "content distance" in out and "style distance" in out and "BN · stripes" in out and "IEBN · stripes" in out
    assert "Traceback" not in err

    rows = list(csv.DictReader(files["csv"].open()))
    per_photo = [r for r in rows if r["stat"] == "value"]
    assert len(per_photo) == 12 and len([r for r in rows if r["stat"] == "mean"]) == 2
    doc = json.loads(files["json"].read_text())
    assert [s["n"] for s in doc["summary"]] == [6, 6] and len(doc["photos"]) == 12
    for s in doc["summary"]:
        mine = [float(r["content_distance"]) for r in per_photo if r["model"] == s["model"]]
        mean = s["metrics"]["content_distance"]["mean"]
        assert mean == pytest.approx(math.fsum(mine) / 6, rel=1e-6)
        sd = np.std(mine, ddof=1)
        assert s["metrics"]["content_distance"]["stderr"] == pytest.approx(sd / math.sqrt(6), rel=1e-5)
        csv_mean = next(r for r in rows if r["stat"] == "mean" and r["model"] == s["model"])
        assert float(csv_mean["style_distance"]) == pytest.approx(s["metrics"]["style_distance"]["mean"], rel=1e-9)
        assert s["loss_settings"]["vgg"] == "vgg16" and s["loss_settings"]["style_size"] == 64
    grid = Image.open(files["grid"])
    assert grid.width > 3 * 64 and grid.height > 4 * 64  # photo + 2 models, 4 photos


def test_cli_help_shows_an_example(capsys):
    assert run_cli("evaluate", "--help") == 0
    out = capsys.readouterr().out
    assert "Example: styletransfer evaluate" in out and "--outputs" in out and "--style-size" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["MISSING", "-m", "MODEL"], "no such folder of photos"),
        (["EMPTY", "-m", "MODEL"], "no images"),
        (["BROKEN", "-m", "MODEL"], "unreadable image"),
        (["PHOTOS", "-m", "NOT_A_MODEL"], "not a styletransfer checkpoint"),
        (["PHOTOS", "-m", "nosuchstyle", "--checkpoints", "EMPTY"], "neither a checkpoint file nor a model name"),
        (["PHOTOS"], "nothing to evaluate"),
        (["PHOTOS", "--outputs", "PHOTOS"], "needs the style image"),
        (["PHOTOS", "--outputs", "MISSING", "--style", "STYLE"], "no such folder of stylised images"),
        (["PHOTOS", "--outputs", "EMPTY", "--style", "STYLE"], "no image here is named after a photo"),
        (["PHOTOS", "-m", "MODEL", "--style", "MISSING"], "no such style image"),
        (["PHOTOS", "-m", "MODEL", "--grid", "GIF"], "unknown output type"),
        (["PHOTOS", "-m", "MODEL", "--size", "8"], "at least 16"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, ckpts, photos, style_image, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    make_photo(tmp_path / "broken" / "good.png")
    (tmp_path / "broken" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    subst = {
        "MODEL": ckpts[0], "PHOTOS": photos, "STYLE": style_image, "MISSING": tmp_path / "nope",
        "EMPTY": tmp_path / "empty", "BROKEN": tmp_path / "broken", "NOT_A_MODEL": tmp_path / "bad.safetensors",
        "GIF": tmp_path / "g.gif",
    }  # fmt: skip
    args = [subst.get(a, a) for a in args]
    assert run_cli("evaluate", "--vgg-weights", "random", "--size", "32", *args) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_cli_without_vgg_weights_offline_is_the_loaders_one_line_error(ckpts, photos, tmp_path, capsys):
    assert run_cli("evaluate", photos, "-m", ckpts[0], "--vgg-weights", tmp_path / "nope.pth") == 1
    err = capsys.readouterr().err.strip()
    assert "nope.pth" in err and "does not exist" in err and len(err.splitlines()) == 1


def test_cli_scores_another_tools_folder_beside_the_model_and_warns_in_one_line(ckpts, photos, tmp_path, capsys):
    out = tmp_path / "other_tool"
    assert run_cli("stylize", photos, "-m", ckpts[0], "-o", out, "--max-size", "48") == 0
    (out / "sub" / "photo3-stripes-bn.png").unlink()
    # no --style: the folder takes the style image the model was trained on
    args = ["evaluate", photos, "-m", ckpts[0], "--outputs", out, "--vgg-weights", "random", "--size", "48"]
    proc = subprocess.run([sys.executable, "-m", "styletransfer", *map(str, args)], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "COLUMNS": "300"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "other_tool" in proc.stdout and "BN · stripes" in proc.stdout and "5 photo(s)" in proc.stdout
    assert "Traceback" not in proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "photo3" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "sub/photo3.png" in warning[0], proc.stderr


def test_blotch_area_counts_patches_without_strokes():
    from styletransfer.metrics import blotch_area

    torch.manual_seed(0)
    noise = torch.rand(1, 3, 64, 128)
    flat = torch.full((1, 3, 64, 128), 0.4)
    ramp = torch.linspace(0, 1, 128).expand(1, 3, 64, 128)  # smooth shading is no stroke
    half = noise.clone()
    half[..., 64:] = 0.7  # the right half is a blotch
    areas = blotch_area(torch.cat([noise, flat, ramp, half]))
    assert areas[0] == 0 and areas[1] == 1 and areas[2] == 1
    # 64 flat columns, less the 16 whose window (radius 15, plus the 5x5 mean) reaches the noise
    assert areas[3] == pytest.approx((64 - 16) / 128, abs=0.01)
    with pytest.raises(ValueError, match="odd"):
        blotch_area(noise, window=30)


def test_the_blotch_window_scales_with_the_picture():
    from styletransfer.metrics import BLOTCH_WINDOW, blotch_area, blotch_window

    assert blotch_window(512) == BLOTCH_WINDOW == 31 and blotch_window(1024) == 63
    for n in range(1, 3000, 7):  # odd, at least 3, and within 1.5 px of proportional
        w = blotch_window(n)
        assert w % 2 == 1 and w >= 3 and (w == 3 or abs(w - 31 * n / 512) <= 1.5)
    # One blotch, the same part of the picture at two sizes, gets the same area with the scaled window.
    torch.manual_seed(0)
    small = torch.rand(1, 3, 256, 256)
    small[..., 64:192, 64:192] = 0.5
    large = torch.nn.functional.interpolate(small, scale_factor=2, mode="nearest")
    large[..., 128:384, 128:384] = 0.5
    at_256, at_512 = blotch_area(small, blotch_window(256)).item(), blotch_area(large, blotch_window(512)).item()
    assert at_256 == pytest.approx(at_512, abs=0.02) and at_256 > 0.1


@pytest.mark.parametrize("shape", [(2, 3, 37, 50), (1, 1, 1, 1), (1, 2, 3, 70), (1, 1, 300, 9)])
@pytest.mark.parametrize("window", [1, 5, 31])
def test_box_mean_is_the_mean_over_the_window_inside_the_image(shape, window):
    from styletransfer.metrics import box_mean

    torch.manual_seed(0)
    images = torch.rand(shape, dtype=torch.float64)
    r = window // 2
    counts = torch.nn.functional.pad(torch.ones(1, 1, *shape[-2:], dtype=torch.float64), (r, r, r, r))
    padded = torch.nn.functional.pad(images, (r, r, r, r))
    # The definition, written out: a sum over the square's pixels, those inside the image only.
    ones = torch.ones(1, 1, window, window, dtype=torch.float64)
    sums = torch.nn.functional.conv2d(padded.flatten(0, 1)[:, None], ones).view(shape)
    expected = sums / torch.nn.functional.conv2d(counts, ones)
    assert torch.allclose(box_mean(images, window), expected, rtol=0, atol=1e-12)
    as_float = box_mean(images.float(), window)
    assert as_float.dtype == torch.float32 and torch.allclose(as_float.double(), expected, rtol=0, atol=1e-6)
