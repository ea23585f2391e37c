"""Shared fixtures: small generated photos, a style image and a tiny trained run.

Nothing here needs the network or real VGG weights: training uses an untrained VGG built
through the same code path (``--vgg-weights random``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styletransfer.checkpoint import save_checkpoint
from styletransfer.cli import main
from styletransfer.network import TransformerNet
from styletransfer.norms import IEBN2d


# The devices tests run on where a case can take either: CUDA where a GPU is present. CI has none,
# so there these are the CPU cases alone.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_photo(path: Path, size=(80, 60), seed: int = 0) -> Path:
    """A smooth random colour field with some edges: enough structure for VGG to see."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(xx * rng.uniform(3, 12) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(3, 12)) for _ in range(3)]
    img = (np.stack(channels, -1) * 0.5 + 0.5) * 255
    img[rng.integers(0, h // 2) :, : rng.integers(w // 4, w)] *= 0.4
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path


def run_cli(*args: str) -> int:
    """Run the real ``styletransfer`` entry point in-process; returns its exit code."""
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(6):
        make_photo(folder / ("sub" if i % 2 else "") / f"photo{i}.png", size=(72 + 8 * i, 56 + 4 * i), seed=i)
    return folder


@pytest.fixture(scope="session")
def style_image(tmp_path_factory) -> Path:
    """A high-contrast stripe painting: its Gram matrices differ clearly from the photos'."""
    path = tmp_path_factory.mktemp("style") / "stripes.png"
    yy, xx = np.mgrid[0:96, 0:96]
    r = ((xx + yy) // 6 % 2) * 255
    g = ((xx - yy) // 9 % 2) * 200
    b = np.full_like(r, 40)
    Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8)).save(path)
    return path


TINY = ["--iterations", "4", "--image-size", "32", "--style-size", "64", "--batch-size", "2",
        "--vgg-weights", "random", "--checkpoint-every", "2"]  # fmt: skip


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, photos, style_image) -> dict[str, Path]:
    """One tiny run per norm, trained through the real CLI."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for norm in ("bn", "in", "se", "iebn"):
        out = root / norm
        code = run_cli("train", "--style", style_image, "--content-dir", photos, "--norm", norm, "--out", out, *TINY)
        assert code == 0
        runs[norm] = out
    return runs


def write_checkpoint(folder: Path, style: str, norm: str, seed: int) -> Path:
    """A random-initialised network saved as ``folder/<style>/<norm>.safetensors`` with made-up losses."""
    torch.manual_seed(seed)
    steps = list(range(10, 110, 10))
    history = {"step": steps} | {term: [1.0 / (s + seed + 1) for s in steps] for term in ("content", "style", "tv", "total")}
    losses = {"content": 0.5 + seed, "style": 2.0 + seed, "tv": 0.1, "total": 2.6 + 2 * seed}
    meta = {"norm": norm, "style": style, "style_credit": "Test Painter, Stripes, 2024", "step": 100,
            "losses": losses, "history": history}  # fmt: skip
    return save_checkpoint(folder / style / f"{norm}.safetensors", TransformerNet(norm), meta)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def iebn_by_formula(x, mean, var, gamma, beta, gamma_hat, beta_hat, eps=1e-5):
    """The paper's equations written out directly."""
    m = x.mean(dim=(2, 3))  # raw input, before normalisation
    delta = torch.sigmoid(m * gamma_hat + beta_hat)
    x_hat = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + eps)
    return x_hat * (gamma[None, :, None, None] * delta[:, :, None, None]) + beta[None, :, None, None]


def randomised_iebn(channels=5):
    torch.manual_seed(0)
    layer = IEBN2d(channels)
    with torch.no_grad():
        for p in (layer.weight, layer.bias, layer.gate_weight, layer.gate_bias):
            p.normal_()
    return layer
