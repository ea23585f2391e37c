"""Models by name from any working folder: the lookup order, the shipped models and paintings, the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from styletransfer.checkpoint import read_metadata
from styletransfer.errors import StyleTransferError
from styletransfer.evaluate import training_style
from styletransfer.models import (
    MODELS_ENV,
    SHIPPED_MODELS,
    SHIPPED_STYLES,
    find_models,
    find_style_image,
    resolve_model,
    resolve_models,
)
from styletransfer.norms import NORMS

from .conftest import make_photo, run_cli, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_STYLE_NAMES = ["composition_vii", "shipwreck", "starry_night", "wave"]
SHIPPED = [f"{style}/{norm}" for style in SHIPPED_STYLE_NAMES for norm in NORMS]


def styletransfer(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m styletransfer ARGS`` in the folder ``cwd``, importing this checkout's package."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "styletransfer", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(autouse=True)
def no_models_variable(monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)


@pytest.fixture()
def own_models(tmp_path) -> Path:
    """A folder with a ``starry_night`` of its own (IN only) and a style the package lacks."""
    folder = tmp_path / "mine"
    write_checkpoint(folder, "starry_night", "in", seed=3)
    write_checkpoint(folder, "stripes", "bn", seed=4)
    return folder


# --------------------------------------------------------------- from another working folder


def test_list_shows_the_shipped_models_from_any_folder(tmp_path):
    proc = styletransfer("list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in SHIPPED:
        assert name in proc.stdout
    assert "shipped models" in proc.stdout


def test_stylize_by_name_from_any_folder(tmp_path):
    photo = make_photo(tmp_path / "photo.png", size=(64, 48))
    proc = styletransfer("stylize", "photo.png", "-m", "starry_night/iebn", "-o", "out.jpg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (64, 48) and out.format == "JPEG"
    assert "using" not in proc.stderr  # a full name needs no note
    assert Image.open(photo).size == (64, 48)


def test_a_style_alone_picks_iebn_and_says_so(tmp_path):
    make_photo(tmp_path / "photo.png", size=(40, 40))
    proc = styletransfer("stylize", "photo.png", "-m", "starry_night", "-o", "out.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "starry_night: using starry_night/iebn (IEBN, the paper's norm)" in proc.stderr
    assert (tmp_path / "out.png").exists()


def test_an_unknown_name_is_one_line_listing_the_names(tmp_path):
    make_photo(tmp_path / "photo.png", size=(40, 40))
    proc = styletransfer("stylize", "photo.png", "-m", "starry_nite", "-o", "out.png", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: starry_nite: neither a checkpoint file nor a model name; models: ")
    assert all(name in lines[0] for name in SHIPPED)
    assert not (tmp_path / "out.png").exists()


# --------------------------------------------------------------- the lookup order


def test_a_path_comes_first(own_models, tmp_path):
    given = own_models / "stripes" / "bn.safetensors"
    assert resolve_model(str(given), own_models) == (given, None)
    assert resolve_model(str(tmp_path / "missing.safetensors"))[0] == tmp_path / "missing.safetensors"


def test_the_environment_variable_comes_before_the_shipped_models(own_models, monkeypatch):
    assert resolve_model("starry_night/iebn")[0] == SHIPPED_MODELS / "starry_night" / "iebn.safetensors"
    monkeypatch.setenv(MODELS_ENV, str(own_models))
    path, note = resolve_model("starry_night")  # its own starry_night has no IEBN: IN it is
    assert path == own_models / "starry_night" / "in.safetensors"
    assert "there is no IEBN model" in note
    with pytest.raises(StyleTransferError, match="starry_night/iebn: neither"):
        resolve_model("starry_night/iebn")  # a style comes whole from one folder, never mixed
    assert resolve_model("wave/bn")[0] == SHIPPED_MODELS / "wave" / "bn.safetensors"  # the others remain
    assert resolve_models(["stripes", "wave"]) == [own_models / "stripes" / "bn.safetensors"] + [
        SHIPPED_MODELS / "wave" / f"{norm}.safetensors" for norm in NORMS
    ]


def test_checkpoints_option_comes_before_the_environment_variable(own_models, tmp_path, monkeypatch):
    other = tmp_path / "other"
    write_checkpoint(other, "stripes", "iebn", seed=5)
    monkeypatch.setenv(MODELS_ENV, str(own_models))
    assert resolve_model("stripes", other)[0] == other / "stripes" / "iebn.safetensors"
    assert resolve_model("stripes")[0] == own_models / "stripes" / "bn.safetensors"
    assert resolve_model("starry_night", other)[0] == SHIPPED_MODELS / "starry_night" / "iebn.safetensors"


def test_the_commands_take_the_lookup_order(own_models, tmp_path, monkeypatch, capsys):
    photo = make_photo(tmp_path / "photo.png", size=(40, 30))
    monkeypatch.setenv(MODELS_ENV, str(own_models))
    assert run_cli("stylize", photo, "-m", "stripes", "-o", tmp_path / "a.png") == 0
    assert "stripes: using stripes/bn" in capsys.readouterr().err
    assert run_cli("compare", photo, "-m", "starry_night", "-m", "wave/iebn", "-o", tmp_path / "grid.png",
                   "--size", "32") == 0  # fmt: skip
    assert Image.open(tmp_path / "grid.png").width < 4 * 32 + 40  # content, its own starry_night, wave IEBN
    assert run_cli("plot", "stripes", "wave/in", "-o", tmp_path / "curves.png") == 0
    capsys.readouterr()
    assert run_cli("list") == 0
    out = capsys.readouterr().out
    assert out.index("stripes/bn") < out.index("shipped models") < out.index("wave/iebn")
    assert "starry_night/iebn" not in out  # hidden by the folder's own starry_night
    assert run_cli("stylize", photo, "-m", "stripes", "--checkpoints", tmp_path / "empty", "-o", tmp_path / "b.png") == 1
    assert f"{tmp_path / 'empty'} does not exist" in capsys.readouterr().err


def test_export_takes_a_name(tmp_path, capsys):
    out = tmp_path / "mine" / "wave" / "in.safetensors"
    assert run_cli("export", "wave/in", out) == 0
    assert read_metadata(out)["style"] == "wave" and read_metadata(out)["norm"] == "in"
    assert run_cli("export", "wave", tmp_path / "w.safetensors") == 0
    assert "wave: using wave/iebn" in capsys.readouterr().err
    assert read_metadata(tmp_path / "w.safetensors")["norm"] == "iebn"


def test_a_name_with_a_file_extension_is_a_path(tmp_path, capsys):
    photo = make_photo(tmp_path / "photo.png")
    assert run_cli("stylize", photo, "-m", "starry_night.safetensors", "-o", tmp_path / "o.png") == 1
    assert "neither a checkpoint file nor a model name" not in capsys.readouterr().err


# --------------------------------------------------------------- shipped models and paintings


def test_every_shipped_style_has_its_painting_credited():
    models, skipped = find_models(shipped=True)
    assert skipped == [] and [m.name for m in models] == SHIPPED
    credits = (SHIPPED_STYLES / "CREDITS.md").read_text()
    for style in {m.style for m in models}:
        painting = find_style_image(style)
        assert painting is not None and painting.parent == SHIPPED_STYLES, style
        with Image.open(painting) as img:
            assert max(img.size) <= 1024
        assert painting.name in credits and "public domain" in credits
        for m in models:
            assert m.meta["style_credit"].split(",")[0] in credits  # the painter


def test_evaluate_finds_a_shipped_models_painting_when_the_recorded_one_is_gone():
    path = SHIPPED_MODELS / "wave" / "in.safetensors"
    meta = {"style": "wave", "config": {"style": "/nowhere/styles/wave.jpg"}}
    assert training_style(path, meta) == SHIPPED_STYLES / "wave.jpg"
    with pytest.raises(StyleTransferError, match="training style image is not found"):
        training_style(path, {"style": "wave", "config": {"style": "/nowhere/my-own-wave.png"}})


def test_the_demo_shows_the_shipped_styles_with_their_paintings(own_models):
    from styletransfer.demo import EXAMPLES, StyleDemo

    demo = StyleDemo(device="cpu")
    assert demo.library.styles == SHIPPED_STYLE_NAMES
    text, painting = demo.style_panel("wave")
    assert "Katsushika Hokusai" in text and painting is not None and max(painting.size) == 512
    text, painting = demo.style_panel("shipwreck")
    assert "Turner" in text and painting is not None and max(painting.size) == 512
    assert StyleDemo(own_models, device="cpu").library.styles == sorted([*SHIPPED_STYLE_NAMES, "stripes"])
    assert sorted(p.name for p in EXAMPLES.glob("*.jpg")) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]


# --------------------------------------------------------------- the installed package


def _copy_sources(dest: Path) -> Path:
    """What a build reads, copied so that building leaves nothing in the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("styletransfer", "styles", "examples"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _venv_on_top_of_this_one(folder: Path) -> Path:
    """A fresh venv that sees this interpreter's installed packages (torch, ...) but not its
    ``styletransfer``: their folders are added by a ``.pth`` file, which, unlike a site folder,
    does not run the ``.pth`` files in them (among them an editable install's)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    outer |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    (Path(purelib) / "outer_site_packages.pth").write_text("".join(f"{p}\n" for p in sorted(outer)))
    return python


@pytest.mark.slow
def test_the_wheel_holds_the_models_and_works_from_any_folder(tmp_path):
    src = _copy_sources(tmp_path / "src")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", src]
    subprocess.run(list(map(str, build)), check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("styletransfer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SHIPPED:
        assert {f"styletransfer/checkpoints/{name}.safetensors", f"styletransfer/checkpoints/{name}.losses.jsonl.gz"} <= names
    assert {"styletransfer/styles/starry_night.jpg", "styletransfer/styles/wave.jpg", "styletransfer/styles/CREDITS.md",
            "styletransfer/examples/chelsea.jpg", "styletransfer/demo.py"} <= names  # fmt: skip
    assert not any(n.startswith(("tests/", "benchmarks/", "styles/")) for n in names)

    python = _venv_on_top_of_this_one(tmp_path / "venv")
    install = [python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index", "-q", wheel]
    subprocess.run(list(map(str, install)), check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    make_photo(elsewhere / "photo.png", size=(48, 32))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", MODELS_ENV)}
    run = lambda *args: subprocess.run(list(map(str, args)), cwd=elsewhere, env=env, capture_output=True, text=True,
                                       timeout=300)  # fmt: skip

    where = run(python, "-c", "import styletransfer.demo as d; print(d.__file__); print(d.StyleDemo(device='cpu')"
                ".library.style_image('wave')); print(d.EXAMPLES)")  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(Path(line).is_relative_to(tmp_path / "venv") for line in where.stdout.split()), where.stdout
    console_script = python.parent / ("styletransfer.exe" if os.name == "nt" else "styletransfer")
    listed = run(console_script, "list")
    assert listed.returncode == 0 and all(name in listed.stdout for name in SHIPPED), listed.stderr
    made = run(console_script, "stylize", "photo.png", "-m", "wave", "-o", "photo-wave.jpg")
    assert made.returncode == 0 and "wave: using wave/iebn" in made.stderr, made.stderr
    assert Image.open(elsewhere / "photo-wave.jpg").size == (48, 32)
