"""The compiled paths (inference with freezing; the training step), and when they are used."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from styletransfer.compiled import worth_compiling
from styletransfer.errors import StyleTransferError
from styletransfer.network import TransformerNet
from styletransfer.runs import read_log
from styletransfer.stylize import Stylizer
from styletransfer.train import train

from .conftest import make_photo, run_cli
from .test_train import config


def test_the_compiled_network_gives_the_eager_result():
    """IEBN: its per-instance kernels must compile too (a tiny size keeps the compile short)."""
    torch.manual_seed(0)
    model = TransformerNet("iebn")
    model.train()(torch.rand(4, 3, 32, 32))  # running statistics
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "gate_weight"):
                layer.gate_weight.normal_()
    x = torch.rand(2, 3, 36, 28)
    eager = Stylizer(model, {"norm": "iebn"}, "cpu", "fp32").stylize_tensor(x)
    compiled = Stylizer(model, {"norm": "iebn"}, "cpu", "fp32").compile().stylize_tensor(x)
    mse = float(((eager - compiled) ** 2).mean())
    assert mse == 0 or 10 * math.log10(1 / mse) > 40


def test_compiling_pays_only_with_many_pixels_of_one_size(tmp_path):
    same = [make_photo(tmp_path / f"same{i}.png", size=(40, 30), seed=i) for i in range(16)]
    pays = 16 * 40 * 30  # pixels
    assert worth_compiling(same, None, pays)
    assert not worth_compiling(same[:15], None, pays)
    mixed = same[:8] + [make_photo(tmp_path / f"other{i}.png", size=(30, 40), seed=i) for i in range(8)]
    assert not worth_compiling(mixed, None, pays)
    # bigger pictures pay sooner: 4 of 80x60 have the pixels of 16 of 40x30
    big = [make_photo(tmp_path / f"big{i}.png", size=(80, 60), seed=i) for i in range(4)]
    assert worth_compiling(big, None, pays) and not worth_compiling(big[:3], None, pays)
    # scaled to one long side, 80x60 and 40x30 photos become one size
    assert not worth_compiling(same[:13] + big[:3], None, pays) and worth_compiling(same[:13] + big[:3], 40, pays)
    assert not worth_compiling([tmp_path / "missing.png"] * 20, None, pays)
    assert not worth_compiling(same, None, pays, device="cuda")  # measured no faster there
    assert not worth_compiling(same, None)  # the default asks for about 140 pictures of 1024x1024


def test_a_video_counts_once_per_frame(tmp_path):
    from .test_video import make_clip

    long_clip = make_clip(tmp_path / "long.mp4", frames=16, audio=False)
    short_clip = make_clip(tmp_path / "short.mp4", frames=8, audio=False)
    width, height = Image.open(make_frame_png(short_clip, tmp_path)).size
    pays = 16 * width * height
    assert worth_compiling([long_clip], None, pays) and not worth_compiling([short_clip], None, pays)
    # frames and photos of the frames' size add up
    photos = [make_photo(tmp_path / f"p{i}.png", size=(width, height), seed=i) for i in range(8)]
    assert worth_compiling([short_clip, *photos], None, pays)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert not worth_compiling([tmp_path / "broken.mp4"] * 20, None, pays)


def make_frame_png(clip: Path, folder: Path) -> Path:
    """The first frame of ``clip`` as a PNG (the size stylize gives its frames)."""
    import av

    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0)).to_image()
    frame.save(folder / "frame.png")
    return folder / "frame.png"


def test_a_bad_compile_choice_is_one_line(tmp_path, capsys):
    from .conftest import write_checkpoint

    model = write_checkpoint(tmp_path, "stripes", "in", seed=0)
    capsys.readouterr()
    assert run_cli("stylize", make_photo(tmp_path / "p.png"), "-m", model, "--compile", "always") == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--compile" in lines[0], lines


def test_the_compiled_loss_trains_as_the_eager_one_in_bf16(photos, style_image, tmp_path):
    """The loss compiled forward and backward, in bf16 as bf16-capable CPUs train: the same losses
    step after step, so the same updates (a compiled network backward gave NaN here)."""
    runs = {}
    for choice in (False, True):
        run = tmp_path / f"compile-{choice}"
        train(config(photos, style_image, run, norm="iebn", precision="bf16", iterations=4, compile=choice))
        runs[choice] = [r["total"] for r in read_log(run / "losses.jsonl")]
    assert all(math.isfinite(v) for v in runs[True])
    assert runs[True] == pytest.approx(runs[False], rel=2e-2)


def test_compile_is_refused_under_torchrun(photos, style_image, tmp_path):
    cfg = config(photos, style_image, tmp_path / "run", compile=True, world_size=2)
    with pytest.raises(StyleTransferError, match="--compile"):
        cfg.validate()
