"""Distributed training: two processes on the CPU (Gloo) train one model.

The launcher test goes through the real ``torchrun -m styletransfer train``; the others fork
two workers that set torchrun's environment variables themselves, which is much faster
than starting two fresh interpreters.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp

from styletransfer.checkpoint import load_checkpoint
from styletransfer.data import StepBatches
from styletransfer.distributed import Processes, device_for, from_environment
from styletransfer.errors import StyleTransferError
from styletransfer.network import TransformerNet
from styletransfer.config import TrainConfig
from styletransfer.runs import read_log
from styletransfer.train import train

from .conftest import run_cli

SMALL = dict(image_size=32, style_size=64, vgg_weights="random", precision="fp32")
SMALL_ARGS = ["--image-size", "32", "--style-size", "64", "--vgg-weights", "random", "--precision", "fp32"]
# Step 1 is a forward pass of the same weights: only summation order differs. Later steps
# go through Adam, whose first update is about lr * sign(grad), so float noise in tiny
# gradients moves the loss by a few 1e-4 even between two single-process runs.
FIRST_STEP, LATER_STEPS = 1e-5, 2e-3


def config(photos, style_image, out, **kw):
    return TrainConfig(**{**dict(style=str(style_image), content_dir=str(photos), out=str(out), **SMALL), **kw})


def totals(run_dir):
    return [r["total"] for r in read_log(run_dir / "losses.jsonl")]


def relative_gaps(a, b):
    assert len(a) == len(b)
    return [abs(x - y) / abs(y) for x, y in zip(a, b)]


def same_losses(a, b) -> bool:
    gaps = relative_gaps(a, b)
    return gaps[0] < FIRST_STEP and max(gaps[1:], default=0) < LATER_STEPS


def torchrun(*args, timeout=240):
    """``torchrun --standalone --nproc_per_node=2 -m styletransfer ARGS`` (torchrun is torch.distributed.run)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "styletransfer", *map(str, args)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_torchrun_trains_one_model_like_one_process_with_the_whole_batch(photos, style_image, tmp_path):
    out = tmp_path / "ddp"
    run = torchrun("train", "--style", style_image, "--content-dir", photos, "--norm", "bn", "--out", out,
                   "--batch-size", "2", "--iterations", "3", "--checkpoint-every", "3", *SMALL_ARGS)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors", "losses.jsonl"]
    assert run.stderr.count("done:") == 1 and "Traceback" not in run.stderr
    ckpt = load_checkpoint(out / "checkpoint.safetensors")
    assert ckpt.meta["step"] == 3
    assert ckpt.meta["config"]["world_size"] == 2 and ckpt.meta["config"]["sync_bn"] is True
    assert set(ckpt.model_state) == set(TransformerNet("bn").state_dict())  # no "module." prefix
    ckpt.build_model()

    resumed = torchrun("train", "--out", out, "--resume", "--iterations", "5")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("resuming") == 1
    assert [r["step"] for r in read_log(out / "losses.jsonl")] == [1, 2, 3, 4, 5]
    assert load_checkpoint(out / "checkpoint.safetensors").meta["step"] == 5

    # 2 processes x 2 images = 1 process x 4 images, resume included.
    train(config(photos, style_image, tmp_path / "single", norm="bn", batch_size=4, iterations=5, checkpoint_every=5))
    assert same_losses(totals(out), totals(tmp_path / "single")), relative_gaps(totals(out), totals(tmp_path / "single"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, configs: tuple, port: int, outcome_dir, resume: bool) -> None:
    """One of two training processes, set up as torchrun would; records how its training ended."""
    torch.set_num_threads(1)  # as torchrun does (OMP_NUM_THREADS=1); also keeps the forked child safe
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        train(configs[rank], resume=resume)
        outcome = "finished"
    except StyleTransferError as e:
        outcome = f"{type(e).__name__}: {e}"
    (outcome_dir / f"rank{rank}").write_text(outcome)


def two_processes(cfg: TrainConfig, outcome_dir, join=True, resume=False, rank1_cfg=None):
    """Train ``cfg`` on two forked processes; returns their context (already finished if ``join``)."""
    outcome_dir.mkdir(exist_ok=True)
    configs = (cfg, rank1_cfg or cfg)
    context = mp.start_processes(worker, (configs, free_port(), outcome_dir, resume), nprocs=2, join=False,
                                 start_method="fork")  # fmt: skip
    if join:
        finish(context)
    return context


def finish(context, timeout=120) -> None:
    """Wait for both processes; processes that wait on each other forever fail the test."""
    deadline = time.time() + timeout
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the training processes did not finish: one is waiting for the other")


def outcomes(outcome_dir) -> list[str]:
    return [(outcome_dir / f"rank{r}").read_text() for r in range(2)]


def test_sync_bn_makes_the_statistics_span_the_global_batch(photos, style_image, tmp_path):
    runs = {}
    for norm, sync_bn in [("iebn", None), ("bn", False)]:
        single, double = tmp_path / f"{norm}-single", tmp_path / f"{norm}-{sync_bn}"
        train(config(photos, style_image, single, norm=norm, batch_size=4, iterations=3, checkpoint_every=3))
        two_processes(config(photos, style_image, double, norm=norm, batch_size=2, iterations=3, checkpoint_every=3,
                             sync_bn=sync_bn), tmp_path / "outcomes")  # fmt: skip
        runs[norm] = totals(double), totals(single)
    assert same_losses(*runs["iebn"]), relative_gaps(*runs["iebn"])  # IEBN by default spans the global batch
    no_sync = relative_gaps(*runs["bn"])  # without --sync-bn each process normalises its own 2 images
    assert no_sync[0] > 10 * FIRST_STEP and max(no_sync) > 5 * LATER_STEPS, no_sync


def test_ctrl_c_in_one_process_stops_all_at_the_same_step(photos, style_image, tmp_path):
    out, outcome_dir = tmp_path / "run", tmp_path / "outcomes"
    cfg = config(photos, style_image, out, norm="iebn", batch_size=2, iterations=100_000, checkpoint_every=100_000)
    context = two_processes(cfg, outcome_dir, join=False)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_log(out / "losses.jsonl") if (out / "losses.jsonl").exists() else []) < 2:
        time.sleep(0.2)
    os.kill(context.processes[1].pid, signal.SIGINT)  # rank 1 only: rank 0 must learn it from the step exchange
    finish(context)
    ends = outcomes(outcome_dir)
    assert all(e.startswith("TrainingInterrupted") for e in ends), ends
    step = load_checkpoint(out / "checkpoint.safetensors").meta["step"]
    assert step >= 2 and read_log(out / "losses.jsonl")[-1]["step"] == step
    assert f"at step {step};" in ends[0] and "--resume" in ends[0]


def test_processes_that_find_different_checkpoints_all_stop_with_one_message(photos, style_image, tmp_path):
    seen, unseen = tmp_path / "seen", tmp_path / "unseen"
    train(config(photos, style_image, seen, norm="in", batch_size=2, iterations=1))
    cfg = config(photos, style_image, seen, norm="in", batch_size=2, iterations=2)
    two_processes(cfg, tmp_path / "outcomes", resume=True, rank1_cfg=replace(cfg, out=str(unseen)))
    assert all("only some training processes find" in e for e in outcomes(tmp_path / "outcomes"))
    assert not unseen.exists() and load_checkpoint(seen / "checkpoint.safetensors").meta["step"] == 1


def test_the_global_batch_is_shared_out_among_the_processes():
    whole = list(StepBatches(50, 4, seed=3, start_step=0, total_steps=5))
    halves = [list(StepBatches(50, 2, seed=3, start_step=0, total_steps=5, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*halves)] == whole


@pytest.mark.parametrize(
    "env,message",
    [
        (dict(RANK="0", WORLD_SIZE="2"), "LOCAL_RANK"),
        (dict(RANK="x", LOCAL_RANK="0", WORLD_SIZE="2"), "whole numbers"),
        (dict(RANK="2", LOCAL_RANK="0", WORLD_SIZE="2"), "does not fit"),
    ],
)
def test_a_broken_torchrun_environment_is_refused(env, message):
    with pytest.raises(StyleTransferError, match=message):
        from_environment(env)


def test_plain_runs_are_single_process_and_devices_follow_local_rank():
    assert from_environment({}) == Processes()
    procs = from_environment(dict(RANK="3", LOCAL_RANK="1", WORLD_SIZE="4"))
    assert procs.distributed and not procs.is_main and procs.world_size == 4
    assert device_for(procs, "cpu") == torch.device("cpu")
    with pytest.raises(StyleTransferError, match="LOCAL_RANK"):
        device_for(procs, "cuda:1")


def test_cli_errors_under_torchrun_are_one_line(photos, style_image, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = run_cli("train", "--style", style_image, "--content-dir", photos, "--out", tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: rank 1: ") and "LOCAL_RANK" in err and len(err.splitlines()) == 1


def test_one_image_per_process_needs_sync_bn(photos, style_image, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(StyleTransferError, match="--sync-bn"):
        train(config(photos, style_image, tmp_path / "run", norm="bn", batch_size=1, sync_bn=False))
