"""The real command line, as a user runs it: stylize, compare, plot, list, export, --help."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from styletransfer.checkpoint import read_metadata

from .conftest import make_photo, run_cli


@pytest.fixture()
def model(trained_runs):
    return trained_runs["iebn"] / "checkpoint.safetensors"


def test_stylize_one_image_keeps_size_and_aspect(model, tmp_path):
    src = make_photo(tmp_path / "odd.png", size=(61, 37))
    assert run_cli("stylize", src, "-m", model, "-o", tmp_path / "out.png") == 0
    out = Image.open(tmp_path / "out.png")
    assert out.size == (61, 37) and out.mode == "RGB"


@pytest.mark.parametrize("ext,fmt", [(".jpg", "JPEG"), (".webp", "WEBP"), (".png", "PNG")])
def test_output_format_follows_the_extension(model, tmp_path, ext, fmt):
    src = make_photo(tmp_path / "p.png")
    assert run_cli("stylize", src, "-m", model, "-o", tmp_path / f"out{ext}") == 0
    assert Image.open(tmp_path / f"out{ext}").format == fmt


def test_max_size_bounds_the_long_side(model, tmp_path):
    src = make_photo(tmp_path / "big.png", size=(200, 120))
    assert run_cli("stylize", src, "-m", model, "-o", tmp_path / "o.png", "--max-size", "50") == 0
    assert Image.open(tmp_path / "o.png").size == (50, 30)


def test_stylize_a_folder_writes_every_good_file_and_reports_the_bad(model, photos, tmp_path, capsys):
    folder = tmp_path / "in"
    for p in photos.rglob("*.png"):
        dst = folder / p.relative_to(photos)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    code = run_cli("stylize", folder, "-m", model, "-o", tmp_path / "out")
    assert code == 1
    written = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.png"))
    assert len(written) == 6 and any(p.parent.name == "sub" for p in written)
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err


def test_stylize_several_files_into_a_folder(model, photos, tmp_path):
    files = sorted(photos.glob("*.png"))[:2]
    assert run_cli("stylize", *files, "-m", model, "-o", tmp_path / "out") == 0
    assert len(list((tmp_path / "out").glob("*-iebn.png"))) == 2


def test_grey_rgba_and_exif_inputs(model, tmp_path):
    base = Image.open(make_photo(tmp_path / "p.png", size=(40, 24)))
    base.convert("LA").save(tmp_path / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    base.convert("RGB").save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert run_cli("stylize", tmp_path / "grey.png", "-m", model, "-o", tmp_path / "g.png") == 0
    assert run_cli("stylize", tmp_path / "rot.jpg", "-m", model, "-o", tmp_path / "r.png") == 0
    assert Image.open(tmp_path / "r.png").size == (24, 40)


@pytest.mark.parametrize(
    "args,message",
    [
        (["MISSING_IMG", "-m", "MODEL"], "no such file"),
        (["IMG", "-m", "NOT_A_MODEL"], "not a styletransfer checkpoint"),
        (["IMG", "-m", "MODEL", "-o", "OUT/x.gif"], "unknown output type"),
        (["IMG", "-m", "MODEL", "--max-size", "-3"], "max-size"),
        (["TEXT_AS_JPG", "-m", "MODEL", "-o", "OUT/out.jpg"], "not an image file"),
    ],
)
def test_stylize_bad_input_is_one_line(model, tmp_path, capsys, args, message):
    img = make_photo(tmp_path / "p.png")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    (tmp_path / "notes.jpg").write_text("not a photo\n")
    subst = {"MODEL": model, "IMG": img, "MISSING_IMG": tmp_path / "nope.png", "NOT_A_MODEL": tmp_path / "bad.safetensors",
             "TEXT_AS_JPG": tmp_path / "notes.jpg"}  # fmt: skip
    args = [subst.get(a, a) for a in args]
    args = [str(a).replace("OUT", str(tmp_path)) for a in args]
    assert run_cli("stylize", *args) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1  # the error alone: one input, nothing to sum up


def test_compare_writes_a_labelled_grid(trained_runs, photos, tmp_path):
    models = [trained_runs[n] / "checkpoint.safetensors" for n in ("bn", "iebn")]
    contents = sorted(photos.glob("*.png"))[:2]
    args = ["compare", *contents, "-o", tmp_path / "grid.png", "--size", "40"]
    for m in models:
        args += ["-m", m]
    assert run_cli(*args) == 0
    grid = Image.open(tmp_path / "grid.png")
    # 3 columns (content + 2 models) of 40 px and 2 rows, with gaps and a caption band
    assert 3 * 40 < grid.width < 3 * 40 + 40 and 2 * 40 < grid.height < 2 * 40 + 60
    caption = np.asarray(grid.convert("L"))[:30]
    assert caption.min() < 100  # some text was drawn


def test_compare_by_style_name_uses_all_norms_of_that_style(trained_runs, photos, tmp_path):
    folder = tmp_path / "ckpts"
    for norm, run in trained_runs.items():
        assert run_cli("export", run / "checkpoint.safetensors", folder / "stripes" / f"{norm}.safetensors") == 0
    out = tmp_path / "grid.png"
    content = next(photos.glob("*.png"))
    assert run_cli("compare", content, "-m", "stripes", "--checkpoints", folder, "-o", out, "--size", "32") == 0
    assert Image.open(out).width > 5 * 32
    assert run_cli("compare", content, "-m", "nosuchstyle", "--checkpoints", folder, "-o", out) == 1


def test_plot_draws_several_runs(trained_runs, tmp_path):
    assert run_cli("plot", *trained_runs.values(), "-o", tmp_path / "curves.png") == 0
    img = Image.open(tmp_path / "curves.png")
    assert img.width > 600
    colours = np.asarray(img.convert("RGB")).reshape(-1, 3)
    # the norm colours (red BN, green IEBN) appear in the figure
    assert ((colours[:, 0] > 180) & (colours[:, 1] < 80)).any()
    assert ((colours[:, 1] > 130) & (colours[:, 0] < 80) & (colours[:, 2] < 80)).any()


def test_plot_from_a_checkpoint_history_and_bad_inputs(trained_runs, tmp_path, capsys):
    assert run_cli("plot", trained_runs["bn"] / "checkpoint.safetensors", "-o", tmp_path / "c.svg") == 0
    assert run_cli("plot", tmp_path, "-o", tmp_path / "c.png") == 1
    assert run_cli("plot", trained_runs["bn"], "-o", tmp_path / "c.txt") == 1
    assert "Traceback" not in capsys.readouterr().err


def test_list_and_export(trained_runs, tmp_path, capsys):
    out = tmp_path / "ck" / "stripes" / "se.safetensors"
    assert run_cli("export", trained_runs["se"] / "checkpoint.safetensors", out) == 0
    meta = read_metadata(out)
    assert meta["norm"] == "se" and "optimizer" not in meta
    assert out.stat().st_size < (trained_runs["se"] / "checkpoint.safetensors").stat().st_size / 4
    assert out.with_name("se.losses.jsonl.gz").exists()
    capsys.readouterr()
    assert run_cli("list", tmp_path / "ck") == 0
    listed = capsys.readouterr().out
    assert "BN+SE" in listed and "stripes" in listed
    assert run_cli("list", tmp_path / "empty") == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["stylize", "IMG", "-m", "MODEL", "--grain", "abc"], "Invalid value for '--grain'"),
        (["stylize", "IMG", "-m", "MODEL", "--bogus"], "No such option: --bogus"),
        (["stylize"], "Missing argument"),
        (["bogus"], "No such command 'bogus'"),
    ],
)
def test_a_command_line_that_does_not_parse_is_one_line(model, tmp_path, capsys, args, message):
    subst = {"MODEL": model, "IMG": make_photo(tmp_path / "p.png")}
    out = tmp_path / "out.png"
    assert run_cli(*[subst.get(a, a) for a in args], "-o", out) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "--help" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_no_command_shows_the_help(capsys):
    assert run_cli() == 2
    assert "Usage" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "stylize", "compare", "plot", "list", "export", "demo"])
def test_every_command_explains_itself(command, capsys):
    assert run_cli(command, "--help") == 0
    assert "--help" in capsys.readouterr().out


def test_console_script_runs_as_installed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "styletransfer", "list", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "no checkpoints" in proc.stderr and "Traceback" not in proc.stderr
