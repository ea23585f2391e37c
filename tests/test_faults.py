"""Five kinds of fault that users of style-transfer tools report, each fixed as a kind.

1. No run writes two results to one path, or over one of its own inputs.
2. Every resize handles extreme sizes and aspect ratios.
3. Running out of memory on one input is that input's one-line error.
4. Checkpoint metadata is untrusted input, checked against one schema.
5. Every numeric option is checked before any work starts.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import gradio as gr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from styletransfer import demo as demo_app
from styletransfer.checkpoint import read_metadata
from styletransfer.compare import compare
from styletransfer.config import TrainConfig
from styletransfer.data import (
    MIN_STYLE_SIDE,
    ContentImages,
    _random_crop,
    load_image,
    load_style_image,
    scaled_size,
)
from styletransfer.errors import OutOfMemory, StyleTransferError
from styletransfer.models import SHIPPED_MODELS
from styletransfer.network import TransformerNet
from styletransfer.stylize import Stylizer, plan_outputs, stylize_files
from styletransfer.train import train

from .conftest import TINY, make_photo, run_cli, write_checkpoint


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("model"), "stripes", "in", seed=0)


# 1. Outputs never overwrite each other or an input ----------------------------------------------


def test_a_jpg_and_a_png_of_one_name_both_keep_their_result(model, tmp_path, capsys):
    folder = tmp_path / "photos"
    make_photo(folder / "photo.jpg", seed=1)
    make_photo(folder / "photo.png", seed=2)
    capsys.readouterr()
    assert run_cli("stylize", folder, "-m", model, "-o", tmp_path / "out") == 0
    written = sorted((tmp_path / "out").glob("*.png"))
    assert len(written) == 2, written
    assert "wrote 2 image(s)" in capsys.readouterr().err
    first, second = (Image.open(p).tobytes() for p in written)
    assert first != second  # two different pictures, two different results


def test_files_of_one_name_from_two_folders_both_keep_their_result(model, tmp_path, capsys):
    a, b = make_photo(tmp_path / "a" / "img.jpg", seed=1), make_photo(tmp_path / "b" / "img.jpg", seed=2)
    capsys.readouterr()
    assert run_cli("stylize", a, b, "-m", model, "-o", tmp_path / "out") == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    assert "wrote 2 image(s)" in capsys.readouterr().err


def test_an_output_named_like_its_input_is_refused_before_anything_is_written(model, tmp_path, capsys):
    photo = make_photo(tmp_path / "photo.png")
    before = photo.read_bytes()
    for args in (["stylize", photo, "-m", model, "-o", photo], ["compare", photo, "-m", model, "-o", photo]):
        capsys.readouterr()
        assert run_cli(*args) == 1
        lines = stderr_lines(capsys)
        assert len(lines) == 1 and "is also an input" in lines[0], lines
    assert photo.read_bytes() == before


def test_export_never_writes_over_its_own_checkpoint(trained_runs, tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.safetensors"
    ckpt.write_bytes((trained_runs["in"] / "checkpoint.safetensors").read_bytes())
    before = ckpt.read_bytes()
    assert run_cli("export", ckpt, ckpt) == 1
    assert "is also an input" in capsys.readouterr().err and ckpt.read_bytes() == before


NAMES = st.sampled_from(["photo", "img", "a", "photo-stripes-in", "img-stripes-in-2"])
EXTENSIONS = st.sampled_from([".jpg", ".png", ".PNG", ".webp"])
FOLDERS = st.sampled_from(["", "x", "x/y", "out"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(FOLDERS, NAMES, EXTENSIONS), min_size=1, max_size=12), st.sampled_from(["out", "", "x"]))
def test_planned_outputs_are_distinct_and_never_an_input(tmp_path, files, out):
    inputs = [tmp_path / folder / f"{name}{ext}" for folder, name, ext in files]
    planned = plan_outputs(inputs, inputs, tmp_path / out, "stripes-in")
    resolved = [p.resolve() for p in planned]
    assert len(set(resolved)) == len(planned)
    assert not set(resolved) & {p.resolve() for p in inputs}


def test_the_api_returns_one_distinct_result_per_file(model, tmp_path):
    folder = tmp_path / "photos"
    for i, name in enumerate(["p.jpg", "p.png", "sub/p.jpg", "p-stripes-in.png"]):
        make_photo(folder / name, seed=i)
    results = stylize_files(Stylizer.from_checkpoint(model, "cpu"), [folder], folder, 64)
    assert all(r.ok for r in results) and len({r.output for r in results}) == 4
    assert not {r.output for r in results} & {r.source for r in results}


# 2. Every resize handles extreme sizes ------------------------------------------------------------


@given(st.integers(1, 10_000), st.integers(1, 5000), st.booleans(), st.integers(1, 10_000))
def test_scaled_sizes_keep_the_long_side_and_never_reach_zero(short, ratio, wide, long_side):
    size = (short * ratio, short) if wide else (short, short * ratio)
    w, h = scaled_size(size, long_side)
    assert min(w, h) >= 1 and max(w, h) == long_side
    expected_short = min(size) * long_side / max(size)
    assert abs(min(w, h) - max(1, expected_short)) <= 0.5 + 1e-9


@pytest.mark.parametrize("size", [(4, 4), (1, 1), (7, 5), (15, 15)])
def test_a_tiny_style_image_is_scaled_up_to_the_style_size(tmp_path, size):
    path = tmp_path / "style.png"
    Image.new("RGB", size, (200, 40, 40)).save(path)
    assert max(load_style_image(path, 64).size) == 64


def test_a_style_image_too_thin_for_the_loss_network_names_the_file_and_minimum(tmp_path):
    path = tmp_path / "thin.png"
    Image.new("RGB", (3, 400)).save(path)
    with pytest.raises(StyleTransferError, match=f"thin.png: .*at least {MIN_STYLE_SIDE}"):
        load_style_image(path, 512)


@pytest.mark.parametrize("size", [(4, 4), (1, 1), (7, 5)])
def test_training_with_a_tiny_style_image_works(photos, tmp_path, capsys, size):
    style = tmp_path / "tiny.png"
    Image.new("RGB", size, (250, 200, 0)).save(style)
    assert run_cli("train", "--style", style, "--content-dir", photos, "--out", tmp_path / "run", "--norm", "in", *TINY) == 0


def test_training_with_a_thin_style_image_is_one_line(photos, tmp_path, capsys):
    style = tmp_path / "thin.png"
    Image.new("RGB", (3, 400)).save(style)
    capsys.readouterr()
    assert run_cli("train", "--style", style, "--content-dir", photos, "--out", tmp_path / "run", *TINY) == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "thin.png" in lines[0] and str(MIN_STYLE_SIDE) in lines[0], lines


@pytest.mark.parametrize("size", [(5000, 1), (1, 5000), (1, 1), (2, 3)])
def test_extreme_photos_load_stylise_and_crop(model, tmp_path, size):
    path = tmp_path / "odd.png"
    Image.new("RGB", size, (10, 120, 200)).save(path)
    image = load_image(path, max_size=64)
    assert min(image.size) >= 1 and max(image.size) == min(64, max(size))
    out = Stylizer.from_checkpoint(model, "cpu").stylize(image)
    assert out.size == image.size
    crop = _random_crop(load_image(path, max_size=4 * 32), 32, random.Random(0))
    assert crop.size == (32, 32)
    grid = compare([load_image(path, 64)], [Stylizer.from_checkpoint(model, "cpu")], cell=32)
    assert grid.width > 64
    assert max(demo_app.load_content(path, 256).size) == 256


def test_training_crops_of_an_elongated_photo_stay_small(tmp_path):
    make_photo(tmp_path / "photos" / "wide.png", size=(4000, 2))
    data = ContentImages(tmp_path / "photos", 32)
    assert tuple(data[(0, 1)].shape) == (3, 32, 32)


# 3. Out of memory on one input is that input's error ---------------------------------------------

OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 24000000000 bytes"


@pytest.fixture
def big_images_run_out_of_memory(monkeypatch):
    """The network runs out of memory on images over 100,000 pixels, as a real one would on huge ones."""
    forward = TransformerNet.forward

    def limited(self, x):
        if x.shape[-1] * x.shape[-2] > 100_000:
            raise RuntimeError(OOM)
        return forward(self, x)

    monkeypatch.setattr(TransformerNet, "forward", limited)


def test_a_folder_run_goes_on_past_an_image_too_big_for_memory(model, tmp_path, capsys, big_images_run_out_of_memory):
    folder = tmp_path / "photos"
    make_photo(folder / "a.png", size=(40, 30))
    make_photo(folder / "b-big.png", size=(600, 400))
    make_photo(folder / "c.png", size=(40, 30))
    capsys.readouterr()
    assert run_cli("stylize", folder, "-m", model, "-o", tmp_path / "out", "--max-size", "0") == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 2 and "b-big.png" in lines[0] and "out of memory" in lines[0] and "--max-size" in lines[0]
    assert lines[1].startswith("wrote 2 image(s)")
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_compare_and_the_api_report_running_out_of_memory_in_one_line(model, tmp_path, capsys, big_images_run_out_of_memory):
    photo = make_photo(tmp_path / "big.png", size=(600, 400))
    capsys.readouterr()
    assert run_cli("compare", photo, "-m", model, "-o", tmp_path / "grid.png", "--size", "400") == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "out of memory" in lines[0], lines
    with pytest.raises(OutOfMemory):
        Stylizer.from_checkpoint(model, "cpu").stylize(Image.open(photo).convert("RGB"))


def test_the_web_demo_reports_running_out_of_memory_and_keeps_serving(tmp_path, big_images_run_out_of_memory):
    write_checkpoint(tmp_path / "ckpts", "stripes", "in", seed=0)
    demo = demo_app.StyleDemo(tmp_path / "ckpts", device="cpu", shipped=False)
    photo = make_photo(tmp_path / "photo.png", size=(600, 400))
    with pytest.raises(gr.Error, match="out of memory"):
        demo.stylize(str(photo), "stripes", 512)
    assert len(demo.stylize(str(photo), "stripes", 256)) == 1  # 256 x 171 fits


# 4. Checkpoint metadata is checked against one schema --------------------------------------------

BAD_FIELDS = {
    "norm_options": 1.0,
    "style": 5,
    "style_credit": ["a"],
    "step": -1,
    "image_size": "128",
    "vgg": None,
    "losses": {"content": "low"},
    "history": {"step": [1, 2], "total": [1.0]},
    "config": "fast",
    "optimizer": 3,
    "version": True,
    "colour": "blue",
}


def tampered(source: Path, dest: Path, edit) -> Path:
    """A copy of checkpoint ``source`` whose metadata ``edit(meta)`` has changed; tensors kept."""
    with safe_open(str(source), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["styletransfer"])
    meta = edit(meta)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dest, metadata={"styletransfer": json.dumps(meta)})
    return dest


@pytest.mark.parametrize("field", sorted(BAD_FIELDS))
def test_a_metadata_field_of_the_wrong_type_is_named(model, tmp_path, field):
    bad = tampered(model, tmp_path / "bad.safetensors", lambda m: {**m, field: BAD_FIELDS[field]})
    with pytest.raises(StyleTransferError, match=f"bad.safetensors: not a valid styletransfer checkpoint: {field}"):
        read_metadata(bad)


def test_metadata_that_is_not_an_object_is_one_line_everywhere(model, tmp_path, capsys):
    folder = tmp_path / "ckpts"
    good = write_checkpoint(folder, "stripes", "in", seed=0)
    odd = tampered(good, folder / "odd" / "iebn.safetensors", lambda m: 1.0)
    capsys.readouterr()
    assert run_cli("stylize", make_photo(tmp_path / "p.png"), "-m", odd, "-o", tmp_path / "o.png") == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "not a valid styletransfer checkpoint: metadata" in lines[0], lines
    assert run_cli("list", folder) == 0
    out = capsys.readouterr()
    assert "stripes" in out.out and "in.safetensors" in out.out
    warnings = [line for line in out.err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped") and "odd" in warnings[0], warnings
    app = demo_app.build_app(folder, device="cpu", shipped=False)
    assert app.demo.library.styles == ["stripes"] and len(app.demo.library.skipped) == 1


def test_norm_option_values_a_layer_refuses_are_one_line(model, tmp_path):
    bad = tampered(model, tmp_path / "bad.safetensors", lambda m: {**m, "norm": "iebn", "norm_options": {"excite": "x"}})
    with pytest.raises(StyleTransferError, match="not a valid styletransfer checkpoint: norm_options"):
        Stylizer.from_checkpoint(bad, "cpu")


def test_a_saved_config_that_is_not_valid_stops_resuming_with_one_line(trained_runs, tmp_path, capsys):
    run = tmp_path / "run"
    tampered(trained_runs["in"] / "checkpoint.safetensors", run / "checkpoint.safetensors",
             lambda m: {**m, "config": {**m["config"], "iterations": "many"}})  # fmt: skip
    capsys.readouterr()
    assert run_cli("train", "--out", run, "--resume") == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "not a valid styletransfer checkpoint: config" in lines[0], lines


# 5. Numeric options are checked before any work starts -------------------------------------------

BAD_NUMBERS = [
    (["--tv-weight", "-1"], "--tv-weight"),
    (["--tv-weight", "-1e30"], "--tv-weight"),
    (["--content-weight", "nan"], "--content-weight"),
    (["--style-weight", "inf"], "--style-weight"),
    (["--lr", "inf"], "--lr"),
    (["--content-weight", "0", "--style-weight", "0", "--tv-weight", "0"], "weights are all 0"),
    (["--image-size", "8"], "--image-size"),
    (["--style-size", "4"], "--style-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--iterations", "0"], "--iterations"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--workers", "-1"], "--workers"),
    (["--seed", "-3"], "--seed"),
]


@pytest.mark.parametrize("args,option", BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_a_bad_number_stops_training_before_any_work(photos, style_image, tmp_path, capsys, args, option):
    out = tmp_path / "run"
    capsys.readouterr()
    assert run_cli("train", "--style", style_image, "--content-dir", photos, "--out", out, *TINY, *args) == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and option in lines[0], lines
    assert not out.exists()


def test_the_api_checks_numbers_too(photos, style_image, tmp_path, model):
    cfg = TrainConfig(style=str(style_image), content_dir=str(photos), out=str(tmp_path / "run"), tv_weight=math.nan)
    with pytest.raises(StyleTransferError, match="--tv-weight must be a finite number"):
        train(cfg)
    with pytest.raises(StyleTransferError, match="max_size"):
        stylize_files(Stylizer.from_checkpoint(model, "cpu"), [make_photo(tmp_path / "p.png")], tmp_path / "o", 0)
    with pytest.raises(StyleTransferError, match="16"):
        compare([Image.new("RGB", (20, 20))], [], cell=8)


@pytest.mark.parametrize("size", [math.nan, math.inf, -math.inf, "big", 10**9])
def test_the_web_demo_checks_the_output_size(tmp_path, size):
    write_checkpoint(tmp_path / "ckpts", "stripes", "in", seed=0)
    demo = demo_app.StyleDemo(tmp_path / "ckpts", device="cpu", shipped=False)
    with pytest.raises(gr.Error, match="output size"):
        demo.stylize(str(make_photo(tmp_path / "p.png")), "stripes", size)


def test_stylize_and_compare_check_their_sizes(model, tmp_path, capsys):
    photo = make_photo(tmp_path / "p.png")
    for args, option in ((["stylize", photo, "-m", model, "--max-size", "-1"], "--max-size"),
                         (["compare", photo, "-m", model, "--size", "4"], "--size"),
                         (["plot", tmp_path, "--smoothing", "nan"], "--smoothing")):  # fmt: skip
        capsys.readouterr()
        assert run_cli(*args) == 1
        lines = stderr_lines(capsys)
        assert len(lines) == 1 and option in lines[0], lines


def test_a_real_memory_limit_stops_only_the_big_photo(tmp_path):
    """As a user would meet it: ``ulimit -v 4000000`` and a 3000x2000 photo between two small ones,
    untiled (tiled, it fits: torch alone takes about 3.3 of those 4 GB of address space)."""
    import resource
    import subprocess
    import sys

    folder = tmp_path / "photos"
    for name, size in (("a.png", (80, 60)), ("b.png", (3000, 2000)), ("c.png", (80, 60))):
        make_photo(folder / name, size=size)
    model = SHIPPED_MODELS / "wave" / "in.safetensors"
    limit = 4_000_000 * 1024

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    run = subprocess.run([sys.executable, "-m", "styletransfer", "stylize", str(folder), "-m", str(model), "-o",
                          str(tmp_path / "out"), "--max-size", "0", "--tile", "off", "--device", "cpu"], capture_output=True, text=True,
                         preexec_fn=limit_memory, timeout=300)  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert len(lines) == 2 and "b.png" in lines[0] and "out of memory" in lines[0], lines
    assert lines[1].startswith("wrote 2 image(s)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-wave-in.png", "c-wave-in.png"]
