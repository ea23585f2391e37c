import json
import os
import signal
import subprocess
import sys
import time

import pytest

from styletransfer.checkpoint import load_checkpoint
from styletransfer.errors import StyleTransferError
from styletransfer.config import TrainConfig
from styletransfer.runs import read_log
from styletransfer.train import train

from .conftest import TINY, run_cli


def config(photos, style_image, out, **kw):
    base = dict(style=str(style_image), content_dir=str(photos), out=str(out), image_size=32, style_size=64,
                batch_size=2, vgg_weights="random", iterations=4, checkpoint_every=2)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def losses(run_dir):
    return [r["total"] for r in read_log(run_dir / "losses.jsonl")]


@pytest.mark.parametrize("norm", ["in", "iebn"])
def test_training_lowers_the_loss(photos, style_image, tmp_path, norm):
    train(config(photos, style_image, tmp_path / norm, norm=norm, iterations=40, checkpoint_every=40, lr=3e-3))
    values = losses(tmp_path / norm)
    assert len(values) == 40
    assert sum(values[-8:]) / 8 < 0.8 * sum(values[:8]) / 8


def test_resume_continues_exactly_where_the_run_stopped(photos, style_image, tmp_path):
    train(config(photos, style_image, tmp_path / "straight", iterations=6))
    train(config(photos, style_image, tmp_path / "split", iterations=4))
    train(config(photos, style_image, tmp_path / "split", iterations=6), resume=True)
    straight, split = read_log(tmp_path / "straight/losses.jsonl"), read_log(tmp_path / "split/losses.jsonl")
    assert [r["step"] for r in split] == list(range(1, 7))
    for a, b in zip(straight, split):
        assert a["total"] == pytest.approx(b["total"], rel=1e-4)
    assert load_checkpoint(tmp_path / "split/checkpoint.safetensors").meta["step"] == 6


def test_resume_drops_log_lines_written_after_the_last_checkpoint(photos, style_image, tmp_path):
    run = tmp_path / "run"
    train(config(photos, style_image, run, iterations=4))
    with open(run / "losses.jsonl", "a") as f:  # as if killed at step 5, before its checkpoint
        f.write(json.dumps({"step": 5, "content": 1, "style": 1, "tv": 1, "total": 1}) + "\n")
        f.write('{"step": 6, "cont')  # torn line
    train(config(photos, style_image, run, iterations=6), resume=True)
    assert [r["step"] for r in read_log(run / "losses.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert read_log(run / "losses.jsonl")[4]["total"] != 1


def test_starting_over_an_existing_run_needs_resume(photos, style_image, tmp_path):
    train(config(photos, style_image, tmp_path / "run", iterations=2))
    with pytest.raises(StyleTransferError, match="--resume"):
        train(config(photos, style_image, tmp_path / "run", iterations=2))


def test_checkpoint_metadata_describes_the_run(photos, style_image, tmp_path):
    train(config(photos, style_image, tmp_path / "run", norm="se", style_name="stripes", style_credit="test pattern"))
    meta = load_checkpoint(tmp_path / "run/checkpoint.safetensors").meta
    assert meta["norm"] == "se" and meta["style"] == "stripes" and meta["style_credit"] == "test pattern"
    assert meta["step"] == 4 and meta["image_size"] == 32 and "random" in meta["vgg"]
    assert set(meta["losses"]) == {"content", "style", "tv", "total"}
    assert meta["history"]["step"] == [1, 2, 3, 4]
    assert meta["config"]["batch_size"] == 2


def test_nan_loss_stops_training_with_a_clear_message(photos, style_image, tmp_path):
    with pytest.raises(StyleTransferError, match="loss became"):
        train(config(photos, style_image, tmp_path / "run", style_weight=1e39))


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(norm="gn"), "unknown norm"),
        (dict(batch_size=1, norm="bn"), "batch statistics"),
        (dict(image_size=8), "image-size"),
        (dict(lr=0), "lr"),
    ],
)
def test_bad_settings_are_refused(photos, style_image, tmp_path, change, message):
    with pytest.raises(StyleTransferError, match=message):
        train(config(photos, style_image, tmp_path / "run", **change))


def test_cli_resume_keeps_the_saved_settings_and_refuses_conflicts(photos, style_image, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--style", style_image, "--content-dir", photos, "--norm", "in", "--out", out, *TINY) == 0
    assert run_cli("train", "--out", out, "--resume", "--iterations", "6") == 0
    assert [r["step"] for r in read_log(out / "losses.jsonl")] == list(range(1, 7))
    assert load_checkpoint(out / "checkpoint.safetensors").meta["norm"] == "in"
    capsys.readouterr()
    assert run_cli("train", "--out", out, "--resume", "--norm", "bn") == 1
    assert "--norm in" in capsys.readouterr().err


def test_cli_train_errors(photos, style_image, tmp_path, capsys):
    assert run_cli("train", "--out", tmp_path / "x") == 1
    assert "--style" in capsys.readouterr().err
    code = run_cli("train", "--style", tmp_path / "nope.jpg", "--content-dir", photos, "--out", tmp_path / "y", *TINY)
    assert code == 1 and "nope.jpg" in capsys.readouterr().err
    code = run_cli("train", "--style", style_image, "--content-dir", tmp_path, "--out", tmp_path / "z", *TINY)
    assert code == 1 and "no images found" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(photos, style_image, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--style", style_image, "--content-dir", photos, "--out", out, *TINY]
    args[args.index("--iterations") + 1] = "100000"
    args[args.index("--checkpoint-every") + 1] = "100000"
    proc = subprocess.Popen([sys.executable, "-m", "styletransfer", *map(str, args)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(read_log(out / "losses.jsonl") if (out / "losses.jsonl").exists() else []) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    step = load_checkpoint(out / "checkpoint.safetensors").meta["step"]
    assert step >= 3 and step == read_log(out / "losses.jsonl")[-1]["step"]
