"""Shared fixtures: small generated photos, a style image and a tiny trained run.

Nothing here needs the network or real VGG weights: training uses an untrained VGG built
through the same code path (``--vgg-weights random``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styletransfer.cli import main



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
