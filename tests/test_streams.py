"""Pipes and scripts: ``-`` for standard input and output, ``--json`` records, and the combinations refused."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styletransfer.errors import StyleTransferError
from styletransfer.streams import check_stream_options, read_stdin_image, write_stdout_image

from .conftest import make_photo, run_cli, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"), "stripes", "in", seed=2)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return make_photo(tmp_path_factory.mktemp("photo") / "photo.png", size=(72, 48), seed=4)


def styletransfer(*args, **kwargs) -> subprocess.CompletedProcess:
    """The real command in its own process, as a shell script runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "styletransfer", *map(str, args)], env=env, timeout=120, **kwargs)


def test_stdin_to_stdout_in_a_real_pipe(model, photo, tmp_path):
    """styletransfer stylize - -m CKPT -o - < photo.png > out.png"""
    with open(photo, "rb") as stdin, open(tmp_path / "out.png", "wb") as stdout:
        proc = styletransfer("stylize", "-", "-m", model, "-o", "-", "--device", "cpu", "--strength", "0.5",
                             stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "wrote 1 image(s) to standard output"
    assert run_cli("stylize", photo, "-m", model, "-o", tmp_path / "file.png", "--device", "cpu", "--strength", "0.5") == 0
    with Image.open(tmp_path / "out.png") as piped, Image.open(tmp_path / "file.png") as from_file:
        assert piped.format == "PNG" and piped.size == (72, 48)
        assert np.array_equal(np.asarray(piped), np.asarray(from_file))  # the same result as from files


def test_format_sets_the_type_on_stdout(model, photo):
    proc = styletransfer("stylize", photo, "-m", model, "-o", "-", "--format", "jpg", "--device", "cpu",
                         capture_output=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert Image.open(io.BytesIO(proc.stdout)).format == "JPEG"


def test_json_prints_one_record_per_output_and_keeps_messages_on_stderr(model, photo, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        make_photo(folder / f"p{i}.png", size=(40 + 8 * i, 32), seed=i)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    proc = styletransfer("stylize", folder, "-m", model, "-o", tmp_path / "out", "--json", "--device", "cpu",
                         "--preserve-color", "--stroke-scale", "1.5", capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1  # one file was bad
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["input"]).name for r in records] == ["broken.jpg", "p0.png", "p1.png"]
    bad, *good = records
    assert bad["output"] is None and bad["size"] is None and "broken.jpg" in bad["error"]
    for r, width in zip(good, (40, 48)):
        assert r["error"] is None and Path(r["output"]).is_file() and r["size"] == f"{width}x32"
        assert Image.open(r["output"]).size == (width, 32)
        assert r["model"] == r["model_path"] == str(model) and (r["style"], r["norm"]) == ("stripes", "in")
        assert r["seconds"] > 0 and r["max_size"] == 1024
        assert (r["strength"], r["preserve_color"], r["stroke_scale"], r["grain"]) == (1.0, True, 1.5, 4.0)
    assert "broken.jpg" in proc.stderr and "wrote 2 image(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_stdin_to_a_folder_is_named_after_stdin(model, photo, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(photo.read_bytes())))
    assert run_cli("stylize", "-", "-m", model, "-o", tmp_path / "out", "--device", "cpu") == 0
    assert Image.open(tmp_path / "out" / "stdin-stripes-in.png").size == (72, 48)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-", "PHOTO", "-o", "OUT/x.png"], "- (standard input) holds one image: give it as the only input"),
        (["PHOTO", "PHOTO2", "-o", "-"], "-o - writes one image to standard output: give one input image"),
        (["FOLDER", "-o", "-"], "-o - writes one image to standard output: give one input image"),
        (["VIDEO", "-o", "-"], "-o - writes one image to standard output: give one input image"),
        (["PHOTO", "-o", "-", "--json"], "--json prints its records to standard output, which -o - fills with the image"),
        (["PHOTO", "-o", "-", "--format", "gif"], "--format 'gif' is not one of: png, jpg, webp"),
        (["PHOTO", "-o", "OUT/x.png", "--format", "jpg"], "--format is for -o - (standard output)"),
    ],
)
def test_combinations_that_make_no_sense_are_one_line_errors(model, photo, tmp_path, capsys, args, message):
    second = make_photo(tmp_path / "second.png", seed=9)
    names = {"PHOTO": photo, "PHOTO2": second, "FOLDER": tmp_path, "OUT/x.png": tmp_path / "out" / "x.png",
             "VIDEO": tmp_path / "clip.mp4"}  # fmt: skip
    assert run_cli("stylize", *[names.get(a, a) for a in args], "-m", model) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_stdout_that_is_a_terminal_is_refused(model, photo):
    primary, secondary = os.openpty()
    try:
        proc = styletransfer("stylize", photo, "-m", model, "-o", "-", stdout=secondary, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(secondary)
        os.close(primary)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: -o -: standard output is a terminal; redirect it to a file (> out.png) or a pipe"


def test_a_reader_that_goes_away_is_one_line(model, photo):
    """styletransfer stylize photo -o - | (exits at once): an error line, no traceback."""
    read, write = os.pipe()
    os.close(read)  # nobody will read: writing gets EPIPE
    try:
        proc = styletransfer("stylize", photo, "-m", model, "-o", "-", "--device", "cpu", stdout=write,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: -o -: standard output was closed before the image was written"
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_empty_or_bad_stdin_is_that_inputs_one_line_error(model, tmp_path, capsys, monkeypatch):
    for data, message in ((b"", "- (standard input): is empty"), (b"hello\n", "- (standard input): not an image file")):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        assert run_cli("stylize", "-", "-m", model, "-o", tmp_path / "o.png") == 1
        assert capsys.readouterr().err.splitlines()[0] == f"error: {message}" + (
            "; redirect an image to it (< photo.jpg) or pipe one" if not data else " (or a format Pillow cannot read)"
        )


def test_stream_helpers_directly(photo):
    img = read_stdin_image(64, io.BytesIO(photo.read_bytes()))
    assert img.size == (64, 43) and img.mode == "RGB"
    out = io.BytesIO()
    write_stdout_image(img, "WEBP", out)
    assert Image.open(io.BytesIO(out.getvalue())).format == "WEBP"
    with pytest.raises(StyleTransferError, match="standard output is a terminal"):
        check_stream_options([photo], Path("-"), None, False, stdout=TerminalLike())


class TerminalLike(io.BytesIO):
    def isatty(self) -> bool:
        return True
