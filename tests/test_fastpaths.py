"""The fast paths (bf16 autocast, channels_last, fused IEBN) compute what the plain fp32 path does."""

import json
import math
import platform
import subprocess
import sys

import pytest
import torch
from PIL import Image

from styletransfer.checkpoint import load_checkpoint
from styletransfer.devices import cpu_has_fast_bf16, resolve_precision
from styletransfer.errors import StyleTransferError
from styletransfer.network import TransformerNet
from styletransfer.norms import NORMS
from styletransfer.stylize import Stylizer
from styletransfer.config import TrainConfig
from styletransfer.runs import read_log
from styletransfer.train import train

from .conftest import DEVICES


def psnr(a, b):
    mse = (a - b).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def trained_like(norm):
    """A network with non-trivial weights and statistics, so its output is not flat grey."""
    torch.manual_seed(0)
    model = TransformerNet(norm)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.train()(torch.rand(4, 3, 48, 48))  # running statistics for the BN-based norms
    return model.eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", NORMS)
def test_bf16_stylisation_is_within_35_db_of_fp32(norm, device):
    x = torch.rand(1, 3, 64, 80)
    reference = trained_like(norm)(x)  # fp32 on the CPU
    fast = Stylizer(trained_like(norm), {"norm": norm}, device, "bf16").stylize_tensor(x, grain=0).cpu()  # the network alone
    assert fast.shape == reference.shape
    assert psnr(fast, reference) > 35


@pytest.mark.parametrize("norm", NORMS)
def test_channels_last_changes_nothing_in_fp32(norm):
    x = torch.rand(2, 3, 40, 36)
    reference = trained_like(norm)(x)
    cl = trained_like(norm).to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, reference, rtol=1e-4, atol=1e-5)


def test_bf16_training_tracks_fp32(photos, style_image, tmp_path):
    curves = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(style=str(style_image), content_dir=str(photos), out=str(tmp_path / precision),
                          image_size=32, style_size=64, batch_size=2, vgg_weights="random", iterations=30,
                          checkpoint_every=30, precision=precision, lr=3e-3)  # fmt: skip
        train(cfg)
        curves[precision] = [r["total"] for r in read_log(tmp_path / precision / "losses.jsonl")]
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert bf16[0] == pytest.approx(fp32[0], rel=0.02)  # same weights, same batch
    # Afterwards the runs drift apart step by step, but must still land together; the benchmark
    # (benchmarks/bench.py) measures the gap over 200 steps at a realistic size.
    assert sum(bf16[-10:]) == pytest.approx(sum(fp32[-10:]), rel=0.10)
    assert sum(bf16[-10:]) < 0.8 * sum(bf16[:10])


# Allocates a 64 MiB tensor 10 times, before and after keep_freed_memory: the page faults of the last 3.
PAGE_FAULTS = """
import json, resource, torch
from styletransfer.devices import keep_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(2**24)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([[faults() for _ in range(10)][-3:], keep_freed_memory(), [faults() for _ in range(10)][-3:]]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc")
def test_kept_memory_serves_the_next_tensors_without_page_faults():
    run = subprocess.run([sys.executable, "-c", PAGE_FAULTS], capture_output=True, text=True, check=True)
    default, took, kept = json.loads(run.stdout)
    assert took
    assert min(default) > 10_000  # a fresh mmap each time: 16384 pages of 4 KiB faulted in
    assert max(kept) < 1_000


def test_the_cpu_stylizer_keeps_freed_memory_for_small_passes_only(monkeypatch):
    calls = []
    monkeypatch.setattr("styletransfer.stylize.keep_freed_memory", calls.append)
    monkeypatch.setattr("styletransfer.stylize.KEEP_FREED_MEMORY_UP_TO", 2 * 16 * 16)
    stylizer = Stylizer(TransformerNet("bn"), {"norm": "bn"}, "cpu")
    stylizer.stylize_tensor(torch.rand(2, 3, 16, 16))  # a batch counts all its pixels
    stylizer.stylize_tensor(torch.rand(2, 3, 16, 17))
    stylizer.stylize(Image.new("RGB", (17, 16)))
    assert calls == [True, False, True, True]


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    expected = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    assert resolve_precision("auto", cpu) == expected
    with pytest.raises(StyleTransferError, match="CUDA"):
        resolve_precision("fp16", cpu)
    with pytest.raises(StyleTransferError, match="unknown precision"):
        resolve_precision("int8", cpu)


def test_stylize_precision_flag_reaches_the_model(trained_runs, tmp_path):
    path = trained_runs["iebn"] / "checkpoint.safetensors"
    assert Stylizer.from_checkpoint(path, "cpu", "fp32").dtype == torch.float32
    assert Stylizer.from_checkpoint(path, "cpu", "bf16").dtype == torch.bfloat16
    assert load_checkpoint(path).meta["config"]["precision"] == "auto"
