"""Reliability and security: broken images, unsafe checkpoints, killed, diverging and full-disk training.

Bad input must end in one line naming the file and a non-zero exit code: never a traceback, a
hang or a memory blow-up. Nothing a checkpoint or weights file holds may ever run code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from safetensors.torch import save_file

from styletransfer import demo as demo_app
from styletransfer import data as data_module
from styletransfer.checkpoint import load_checkpoint, read_metadata
from styletransfer.data import MAX_PIXELS, ContentImages, load_image
from styletransfer.errors import StyleTransferError
from styletransfer.loss import PerceptualLoss, load_vgg_features
from styletransfer.stylize import Stylizer
from styletransfer.config import TrainConfig
from styletransfer.runs import LossLog, read_log
from styletransfer.train import train

from .conftest import TINY, Exploit, make_photo, run_cli, write_checkpoint

# ---------------------------------------------------------------- 1. bad images

# Each file of the corpus, and its size once loaded; None: it must be refused.
CORPUS = {
    "photo.png": (90, 60),
    "truncated.jpg": None,
    "truncated.png": None,
    "random-bytes.jpg": None,
    "empty.png": None,
    "one-pixel.png": (1, 1),
    "sixteen-bit.png": (90, 60),
    "cmyk.jpg": (90, 60),
    "palette.png": (90, 60),
    "grey-alpha.png": (90, 60),
    "animated.gif": (90, 60),
    "exif-rotated.jpg": (60, 90),
    "bomb.png": None,  # 30000 x 30000 declared in a file of a few hundred bytes
    "bomb-just-over.png": None,  # just over the limit, where Pillow itself only warns
}
BAD = sorted(name for name, size in CORPUS.items() if size is None)
GOOD = sorted(name for name, size in CORPUS.items() if size is not None)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width`` x ``height`` RGB pixels, with one small data chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(4096))) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write_corpus(folder: Path) -> Path:
    photo = Image.open(make_photo(folder / "photo.png", size=(90, 60))).convert("RGB")
    (folder / "truncated.jpg").write_bytes(encoded(photo, "JPEG")[:600])
    (folder / "truncated.png").write_bytes(encoded(photo, "PNG")[:-2000])
    (folder / "random-bytes.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (folder / "empty.png").write_bytes(b"")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one-pixel.png")
    Image.fromarray(np.linspace(0, 65535, 90 * 60, dtype=np.uint16).reshape(60, 90)).save(folder / "sixteen-bit.png")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    photo.convert("P").save(folder / "palette.png")
    photo.convert("LA").save(folder / "grey-alpha.png")
    photo.save(folder / "animated.gif", save_all=True, append_images=[photo.rotate(180)], duration=50)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    photo.save(folder / "exif-rotated.jpg", exif=exif.tobytes())
    (folder / "bomb.png").write_bytes(png_declaring(30000, 30000))
    (folder / "bomb-just-over.png").write_bytes(png_declaring(10000, MAX_PIXELS // 10000 + 1))
    assert sorted(p.name for p in folder.iterdir()) == sorted(CORPUS)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    """Random-initialised networks of all four norms for one style, as the web app expects them."""
    folder = tmp_path_factory.mktemp("ckpts")
    for seed, norm in enumerate(("bn", "in", "se", "iebn")):
        write_checkpoint(folder, "stripes", norm, seed)
    return folder


@pytest.fixture(scope="module")
def model(ckpts) -> Path:
    return ckpts / "stripes" / "in.safetensors"


def within(seconds: float, fn, *args):
    """Call ``fn`` in a thread and fail, rather than hang, if it takes longer than ``seconds``."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result(timeout=seconds)


def test_load_image_on_the_corpus(corpus):
    for name, size in CORPUS.items():
        if size is None:
            with pytest.raises(StyleTransferError) as e:
                load_image(corpus / name)
            assert name in str(e.value) and "\n" not in str(e.value)
        else:
            img = load_image(corpus / name)
            assert (img.mode, img.size) == ("RGB", size), name


def test_bombs_are_refused_before_any_decoding(corpus, monkeypatch):
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spying_load(img):
        decoded.append(img.size)
        return real_load(img)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spying_load)
    for name in ("bomb.png", "bomb-just-over.png"):
        with pytest.raises(StyleTransferError, match=f"{name}: image too large"):
            load_image(corpus / name)
    assert decoded == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the race lets Pillow's through
def test_bomb_is_refused_while_other_threads_change_warning_filters(corpus, monkeypatch):
    """Warning filters are process-wide: a bomb check that relies on them fails under threads.

    Thread B opens the bomb while thread A, which entered ``load_image`` first, leaves it and
    restores the filters it saved. Forced here in that order; in the web app it is a matter of time.
    """
    b_inside, a_done = threading.Event(), threading.Event()
    real_open = Image.open

    def scheduled_open(path, *args, **kwargs):
        if Path(path).name == "photo.png":  # thread A: wait until B is inside load_image too
            b_inside.wait(10)
        else:  # thread B: open only after A has left load_image
            b_inside.set()
            a_done.wait(10)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(data_module.Image, "open", scheduled_open)

    def thread_a():
        load_image(corpus / "photo.png")
        a_done.set()

    a = threading.Thread(target=thread_a)
    a.start()
    with pytest.raises(StyleTransferError, match="too large"):
        within(30, load_image, corpus / "bomb-just-over.png")
    a.join()


def styletransfer_measured(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, int]:
    """Run the command in a fresh interpreter; returns the result and its peak resident memory in MB.

    The peak is VmHWM, which belongs to the new program alone: getrusage's ru_maxrss would also
    count the memory of the forked test process from before the exec.
    """
    code = (
        "import atexit, re, sys\n"
        "from styletransfer.cli import main\n"
        "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024\n"
        "atexit.register(lambda: print('peak-rss-mb', hwm(), file=sys.stderr))\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "300"})  # fmt: skip
    peak = int(proc.stderr.strip().splitlines()[-1].split()[-1])
    return proc, peak


# A decoded 30000 x 30000 bomb alone would take 2.7 GB; the interpreter with torch takes about 0.7.
STYLIZE_PEAK_MB = 1500


def test_stylize_a_folder_of_bad_images(corpus, model, tmp_path):
    out = tmp_path / "out"
    proc, peak = styletransfer_measured("stylize", corpus, "-m", model, "-o", out, "--device", "cpu", timeout=180)
    print(f"stylize on the corpus: exit {proc.returncode}, peak RSS {peak} MB (bound {STYLIZE_PEAK_MB} MB)")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()[:-1]
    assert all(line.startswith(("error: ", "wrote ")) for line in lines), proc.stderr
    for name in BAD:
        assert sum(name in line for line in lines if line.startswith("error: ")) == 1, (name, proc.stderr)
    for name in GOOD:
        with Image.open(out / f"{Path(name).stem}-stripes-in.png") as img:
            assert img.size == CORPUS[name], name
    assert f"wrote {len(GOOD)} image(s)" in proc.stderr
    assert peak < STYLIZE_PEAK_MB


def test_training_content_folder_of_bad_images(corpus):
    """The loader skips each broken photo with a one-line warning naming it, and trains on the rest."""
    data = ContentImages(corpus, 32)
    refused_at_scan = {p.name for p in data.skipped}
    assert {"empty.png", "random-bytes.jpg", "bomb.png", "bomb-just-over.png"} <= refused_at_scan <= set(BAD)
    with pytest.warns(UserWarning) as warned:
        for index in range(len(data)):  # every photo, good or not, gives a crop
            assert data[(index, 7)].shape == (3, 32, 32)
    assert {p.name for p in data.skipped} == set(BAD)
    for name in set(BAD) - refused_at_scan:
        assert any(name in str(w.message) and "\n" not in str(w.message) for w in warned.list), name


def test_train_on_a_folder_of_bad_images(corpus, style_image, tmp_path):
    args = ["train", "--style", style_image, "--content-dir", corpus, "--out", tmp_path / "run", "--norm", "in", *TINY]
    proc = subprocess.run([sys.executable, "-m", "styletransfer", *map(str, args)], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "COLUMNS": "300"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    skipped = next(line for line in proc.stderr.splitlines() if line.startswith("skipped "))
    for name in ("empty.png", "random-bytes.jpg", "bomb.png", "bomb-just-over.png"):
        assert name in skipped
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert all(line.startswith("warning: skipping unreadable image ") for line in warnings), warnings
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").meta["step"] == 4


@pytest.fixture(scope="module")
def demo(ckpts) -> demo_app.StyleDemo:
    return demo_app.build_app(ckpts, ckpts / "no-styles", device="cpu", shipped=False).demo


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_web_app_stylise_on_the_corpus(demo, corpus, name):
    if CORPUS[name] is None:
        with pytest.raises(gr.Error) as e:
            within(60, demo.stylize, str(corpus / name), "stripes", 256)
        assert name in e.value.message and "\n" not in e.value.message
        assert str(corpus) not in e.value.message
        return
    results = within(60, demo.stylize, str(corpus / name), "stripes", 256)
    assert len(results) == 4
    width, height = CORPUS[name]
    for path, _ in results:
        with Image.open(path) as out:
            assert max(out.size) == 256 and abs(out.width / out.height - width / height) < 0.02


IMAGE_MODES = {  # mode -> formats Pillow can write it in
    "1": ("PNG", "BMP", "TIFF", "GIF"),
    "L": ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"),
    "LA": ("PNG", "TIFF"),
    "P": ("PNG", "BMP", "TIFF", "GIF"),
    "RGB": ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"),
    "RGBA": ("PNG", "TIFF", "WEBP", "GIF"),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "I": ("TIFF",),
    "F": ("TIFF",),
}
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x10\x00\x00\x00WEBPVP8 "]


@st.composite
def small_images(draw) -> bytes:
    """A random small image of a random mode, encoded, perhaps damaged by a flipped byte or a cut."""
    mode = draw(st.sampled_from(sorted(IMAGE_MODES)))
    fmt = draw(st.sampled_from(IMAGE_MODES[mode]))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    if mode in ("I;16", "I", "F"):
        img = Image.fromarray(pixels[..., 0].astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]) * 200)
    else:
        img = Image.fromarray(pixels).convert(mode)
    data = bytearray(encoded(img, fmt))
    damage = draw(st.sampled_from(["none", "flip", "cut"]))
    if damage == "flip":
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif damage == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    return bytes(data)


random_files = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGIC), st.binary(max_size=600)),
    small_images(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=random_files, suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp"]),
       max_size=st.sampled_from([None, 16]))  # fmt: skip
def test_load_image_gives_rgb_or_a_one_line_error(content, suffix, max_size):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(content)
        try:
            img = load_image(path, max_size)
        except StyleTransferError as e:
            assert "upload" in str(e) and "\n" not in str(e)
            return
        assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
        assert max_size is None or max(img.size) <= max_size


# ---------------------------------------------------------------- 2. unsafe checkpoints


def write_exploits(folder: Path, marker: Path) -> dict[str, Path]:
    """Two files that create ``marker`` when unpickled: a plain pickle and torch.save's zip format."""
    plain, zipped = folder / "exploit.pkl", folder / "exploit.pt"
    plain.write_bytes(pickle.dumps({"features.0.weight": Exploit(marker)}))
    torch.save({"features.0.weight": Exploit(marker)}, zipped)
    return {"pickle": plain, "torch.save": zipped}


def test_the_exploits_really_run_code_when_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    files = write_exploits(tmp_path, marker)
    pickle.loads(files["pickle"].read_bytes())["features.0.weight"].close()
    assert marker.exists()
    marker.unlink()
    torch.load(files["torch.save"], weights_only=False)["features.0.weight"].close()
    assert marker.exists()


@pytest.fixture(params=["pickle", "torch.save"])
def exploit(request, tmp_path) -> tuple[Path, Path]:
    """(the exploit file, the marker it would create)."""
    marker = tmp_path / "pwned"
    return write_exploits(tmp_path, marker)[request.param], marker


def plant(source: Path, *destinations: Path) -> None:
    for dst in destinations:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(source.read_bytes())


def test_library_loaders_refuse_the_exploit(exploit, photos, style_image, tmp_path):
    source, marker = exploit
    evil, vgg, run = tmp_path / "evil.safetensors", tmp_path / "evil.pth", tmp_path / "run"
    plant(source, evil, vgg, run / "checkpoint.safetensors")
    loaders = [load_checkpoint, read_metadata, Stylizer.from_checkpoint, lambda p: load_checkpoint(p, with_optimizer=True)]
    for load in loaders:
        with pytest.raises(StyleTransferError, match="evil.safetensors: not a styletransfer checkpoint") as e:
            load(evil)
        assert "\n" not in str(e.value)
    with pytest.raises(StyleTransferError, match="evil.pth: refused") as e:
        load_vgg_features("vgg16", str(vgg))
    assert "\n" not in str(e.value)
    cfg = TrainConfig(style=str(style_image), content_dir=str(photos), out=str(run), vgg_weights="random")
    with pytest.raises(StyleTransferError, match="checkpoint.safetensors: not a styletransfer checkpoint"):
        train(cfg, resume=True)
    assert not marker.exists()


def test_every_command_refuses_the_exploit(exploit, photos, style_image, tmp_path, capsys):
    source, marker = exploit
    ckpts, run, vgg = tmp_path / "ckpts", tmp_path / "run", tmp_path / "evil.pth"
    evil = ckpts / "stripes" / "iebn.safetensors"
    plant(source, evil, vgg, run / "checkpoint.safetensors")
    (run / "losses.jsonl").write_text(json.dumps({"step": 1, "content": 1, "style": 1, "tv": 1, "total": 3}) + "\n")
    photo = next(photos.glob("*.png"))
    new_run = ["train", "--style", style_image, "--content-dir", photos, "--out", tmp_path / "new", *TINY]
    new_run[new_run.index("--vgg-weights") + 1] = vgg
    commands = {
        "stylize": ["stylize", photo, "-m", evil, "-o", tmp_path / "out.png"],
        "compare a file": ["compare", photo, "-m", evil, "-o", tmp_path / "grid.png"],
        "compare a style": ["compare", photo, "-m", "stripes", "--checkpoints", ckpts, "-o", tmp_path / "grid.png"],
        "list": ["list", ckpts],
        "plot a checkpoint": ["plot", evil, "-o", tmp_path / "curves.png"],
        "plot a run": ["plot", run, "-o", tmp_path / "curves.png"],
        "export": ["export", evil, tmp_path / "exported.safetensors"],
        "train --resume": ["train", "--out", run, "--resume"],
        "train --vgg-weights": new_run,
    }
    for name, args in commands.items():
        capsys.readouterr()
        assert run_cli(*args) == 1, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (name, err)
    assert not marker.exists()


def test_web_app_scan_skips_the_exploit(exploit, photos, tmp_path):
    source, marker = exploit
    write_checkpoint(tmp_path / "ckpts", "stripes", "in", 0)
    plant(source, tmp_path / "ckpts" / "stripes" / "iebn.safetensors", tmp_path / "ckpts" / "evil" / "bn.safetensors")
    demo = demo_app.build_app(tmp_path / "ckpts", tmp_path / "no-styles", device="cpu", shipped=False).demo
    assert demo.library.styles == ["stripes"] and list(demo.library.by_style["stripes"]) == ["in"]
    assert len(demo.stylize(str(next(photos.glob("*.png"))), "stripes", 256)) == 1
    assert not marker.exists()


def resave(source: Path, dest: Path, change) -> Path:
    """A copy of checkpoint ``source`` whose tensors ``change(tensors)`` has edited, metadata kept."""
    from safetensors import safe_open

    with safe_open(str(source), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    change(tensors)
    save_file(tensors, dest, metadata=metadata)
    return dest


def vgg_as_model(tensors: dict) -> None:
    tensors.clear()
    tensors.update({f"model.{k}": v for k, v in load_vgg_features("vgg16", "random")[:5].state_dict().items()})


MISMATCHES = {
    "another network": vgg_as_model,
    "a missing tensor": lambda t: t.pop("model.encoder.0.1.weight"),
    "an extra tensor": lambda t: t.update({"model.extra.weight": torch.zeros(3)}),
    "a wrong shape": lambda t: t.update({"model.encoder.0.1.weight": torch.zeros(5, 5)}),
}


@pytest.mark.parametrize("mismatch", sorted(MISMATCHES))
def test_checkpoints_that_do_not_fit_the_network_are_one_line_errors(trained_runs, photos, tmp_path, capsys, mismatch):
    """For stylising, and for resuming, which loads the tensors into a network of its own."""
    run = tmp_path / "run"
    run.mkdir()
    bad = resave(trained_runs["in"] / "checkpoint.safetensors", run / "checkpoint.safetensors", MISMATCHES[mismatch])
    with pytest.raises(StyleTransferError, match="checkpoint.safetensors: checkpoint tensors do not fit a in network"):
        Stylizer.from_checkpoint(bad, "cpu")
    for args in (["stylize", next(photos.glob("*.png")), "-m", bad, "-o", tmp_path / "o.png"],
                 ["train", "--out", run, "--resume", "--iterations", "6"]):  # fmt: skip
        capsys.readouterr()
        assert run_cli(*args) == 1
        err = capsys.readouterr().err.strip()
        assert "do not fit" in err and "checkpoint.safetensors" in err and "Traceback" not in err, err
        assert len(err.splitlines()) == 1, err


def wrongly_shaped_moment(tensors: dict) -> None:
    key = next(k for k in sorted(tensors) if k.endswith(".exp_avg"))
    tensors[key] = torch.zeros(7)


def garbled_parameter_index(tensors: dict) -> None:
    key = next(k for k in sorted(tensors) if k.startswith("optim."))
    tensors["optim.x." + key.split(".", 2)[2]] = tensors.pop(key)


OPTIMISER_DAMAGE = {"a wrongly shaped moment": wrongly_shaped_moment, "a garbled parameter index": garbled_parameter_index}


@pytest.mark.parametrize("damage", sorted(OPTIMISER_DAMAGE))
def test_damaged_optimiser_state_stops_resuming_with_one_line(trained_runs, tmp_path, capsys, damage):
    run = tmp_path / "run"
    run.mkdir()
    bad = resave(trained_runs["in"] / "checkpoint.safetensors", run / "checkpoint.safetensors", OPTIMISER_DAMAGE[damage])
    before = bad.read_bytes()
    capsys.readouterr()
    assert run_cli("train", "--out", run, "--resume", "--iterations", "6") == 1
    err = capsys.readouterr().err.strip()
    assert "optimiser" in err and "checkpoint.safetensors" in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert bad.read_bytes() == before


# ---------------------------------------------------------------- 3. killed training

KILL_RUN = ["--norm", "in", "--iterations", "12", "--checkpoint-every", "3", "--image-size", "32", "--style-size", "64",
            "--batch-size", "2", "--vgg-weights", "random"]  # fmt: skip
EVERY = 3
TEMPORARY = ".checkpoint.safetensors.*.tmp"


def start_training(run: Path, photos: Path, style_image: Path, log: Path) -> subprocess.Popen:
    args = ["train", "--style", style_image, "--content-dir", photos, "--out", run, *KILL_RUN, "--resume"]
    with open(log, "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "styletransfer", *map(str, args)], stdout=subprocess.DEVNULL,
                                stderr=stderr, env={**os.environ, "COLUMNS": "300"})  # fmt: skip


def stopped(proc: subprocess.Popen) -> bool:
    with open(f"/proc/{proc.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def kill_while_writing_a_checkpoint(proc: subprocess.Popen, run: Path, timeout: float = 120) -> bool:
    """Freeze the process when a checkpoint's temporary file appears after the first checkpoint; if the
    file is still there once frozen, the write is under way: kill it then. Returns whether it did."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if (run / "checkpoint.safetensors").exists() and any(run.glob(TEMPORARY)):
            proc.send_signal(signal.SIGSTOP)
            while not stopped(proc):
                time.sleep(0.0005)
            if any(run.glob(TEMPORARY)):
                proc.kill()
                proc.wait()
                return True
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    return False


def kill_at_random(proc: subprocess.Popen, run: Path, stderr: Path, delay: float, timeout: float = 120) -> None:
    """Kill ``delay`` seconds after the resumed run has logged its first new step."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and "resuming" not in stderr.read_text():
        time.sleep(0.01)
    saved = checkpoint_step(run)
    while proc.poll() is None and time.time() < deadline and logged_steps(run)[-1:] <= [saved]:
        time.sleep(0.01)
    time.sleep(delay)
    proc.kill()
    proc.wait()


def logged_steps(run: Path) -> list[int]:
    log = run / "losses.jsonl"
    return [r["step"] for r in read_log(log)] if log.exists() else []


def checkpoint_step(run: Path) -> int:
    path = run / "checkpoint.safetensors"
    return load_checkpoint(path, with_optimizer=True).meta["step"] if path.exists() else 0


def assert_at_most_one_interval_lost(run: Path) -> int:
    steps, saved = logged_steps(run), checkpoint_step(run)
    assert steps == list(range(1, len(steps) + 1)), steps  # no gap, no duplicate
    assert saved % EVERY == 0 and 0 <= len(steps) - saved <= EVERY, (saved, steps)
    return saved


def test_training_killed_at_any_moment_resumes_without_loss(photos, style_image, tmp_path):
    run, rng = tmp_path / "run", random.Random()
    proc = start_training(run, photos, style_image, tmp_path / "first.txt")
    assert kill_while_writing_a_checkpoint(proc, run), "never caught a checkpoint being written"
    half_written = list(run.glob(TEMPORARY))
    saved = assert_at_most_one_interval_lost(run)
    assert len(half_written) == 1 and saved >= EVERY

    delay = rng.uniform(0, 1.5)
    proc = start_training(run, photos, style_image, tmp_path / "second.txt")
    kill_at_random(proc, run, tmp_path / "second.txt", delay)
    assert f"resuming {run} at step {saved}" in (tmp_path / "second.txt").read_text()  # not the half-written file
    saved = assert_at_most_one_interval_lost(run)
    print(f"killed mid-write, then {delay:.2f} s into the resumed run; it had saved step {saved}")

    proc = start_training(run, photos, style_image, tmp_path / "last.txt")
    assert proc.wait(timeout=120) == 0, (tmp_path / "last.txt").read_text()
    assert "Traceback" not in (tmp_path / "last.txt").read_text()
    assert logged_steps(run) == list(range(1, 13)) and checkpoint_step(run) == 12
    assert Stylizer.from_checkpoint(run / "checkpoint.safetensors", "cpu").norm == "in"
    assert not list(run.glob(".*.tmp"))  # the half-written file was cleared away on resuming


# ---------------------------------------------------------------- 4. full disk, unwritable folders


def on_a_full_disk(monkeypatch, prefix: str, nth: int, before_write=lambda: None) -> None:
    """The ``nth`` temporary file named ``prefix...`` is written onto /dev/full: every write fails with ENOSPC."""
    real_mkstemp, calls = tempfile.mkstemp, []

    def mkstemp(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        if kwargs.get("prefix", "").startswith(prefix):
            calls.append(tmp)
            if len(calls) == nth:
                before_write()
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, fd)
                os.close(full)
        return fd, tmp

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_disk_full_at_the_second_checkpoint_keeps_the_first(photos, style_image, tmp_path, monkeypatch, capsys):
    run, first = tmp_path / "run", {}
    ckpt = run / "checkpoint.safetensors"
    on_a_full_disk(monkeypatch, ".checkpoint.safetensors.", 2, lambda: first.setdefault("bytes", ckpt.read_bytes()))
    assert run_cli("train", "--style", style_image, "--content-dir", photos, "--out", run, "--norm", "in", *TINY) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {ckpt}: cannot write (No space left on device); the previous version is kept"
    assert ckpt.read_bytes() == first["bytes"] and checkpoint_step(run) == 2
    assert not list(run.glob(".*.tmp"))


def copy_of_a_finished_run(trained_runs, tmp_path) -> Path:
    """The 4-step IN run of the trained_runs fixture, copied so that it can be resumed and broken."""
    return Path(shutil.copytree(trained_runs["in"], tmp_path / "run"))


def test_disk_full_for_the_loss_log_keeps_the_checkpoint(trained_runs, tmp_path, monkeypatch, capsys):
    run = copy_of_a_finished_run(trained_runs, tmp_path)
    before = (run / "checkpoint.safetensors").read_bytes()
    real_truncate = LossLog.truncate

    def truncate_onto_a_full_disk(self, last_step):
        real_truncate(self, last_step)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, self.file.fileno())
        os.close(full)

    monkeypatch.setattr(LossLog, "truncate", truncate_onto_a_full_disk)
    capsys.readouterr()
    assert run_cli("train", "--out", run, "--resume", "--iterations", "6") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {run / 'losses.jsonl'}: cannot write (No space left on device) at step 5"
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_unwritable_outputs_are_one_line_errors(trained_runs, photos, style_image, tmp_path, capsys):
    """A file where the output folder should be stops even root, unlike permissions."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    model, photo = trained_runs["in"] / "checkpoint.safetensors", next(photos.glob("*.png"))
    commands = {
        "stylize one": ["stylize", photo, "-m", model, "-o", blocked / "out.png"],
        "stylize a folder": ["stylize", photos, "-m", model, "-o", blocked / "out"],
        "plot": ["plot", trained_runs["in"], "-o", blocked / "curves.png"],
        "compare": ["compare", photo, "-m", model, "-o", blocked / "grid.png", "--size", "32"],
        "export": ["export", model, blocked / "model.safetensors"],
        "train": ["train", "--style", style_image, "--content-dir", photos, "--out", blocked / "run", *TINY],
    }
    for name, args in commands.items():
        capsys.readouterr()
        assert run_cli(*args) == 1, name
        lines = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert errors and all(str(blocked) in line and "cannot write" in line for line in errors), (name, lines)
        assert all(line.startswith(("error: ", "wrote 0 image(s)")) for line in lines), (name, lines)


# ---------------------------------------------------------------- 6. NaN and inf in training


def poison_the_loss(monkeypatch, at_call: int, poison) -> None:
    """Let ``poison`` change the loss terms of the ``at_call``-th training step of the next run."""
    real_forward, calls = PerceptualLoss.forward, []

    def forward(self, output, content):
        losses = real_forward(self, output, content)
        calls.append(1)
        return poison(losses, output) if len(calls) == at_call else losses

    monkeypatch.setattr(PerceptualLoss, "forward", forward)


def infinite_loss(losses, output):
    return {**losses, "total": losses["total"] * float("inf")}


def nan_gradients(losses, output):
    """The same finite loss, but d sqrt(|x|) at 0 makes every gradient NaN: the update ruins the weights."""
    return {**losses, "total": losses["total"] + (output - output.detach()).abs().sqrt().sum()}


@pytest.mark.parametrize("poison, message", [(infinite_loss, "loss became inf at step 6"),
                                             (nan_gradients, "weights became NaN or infinite at step 6")])  # fmt: skip
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(
    trained_runs, tmp_path, monkeypatch, capsys, poison, message
):
    run = copy_of_a_finished_run(trained_runs, tmp_path)
    good = (run / "checkpoint.safetensors").read_bytes()
    poison_the_loss(monkeypatch, 2, poison)  # the resumed run's second step: step 6, a checkpoint step
    capsys.readouterr()
    assert run_cli("train", "--out", run, "--resume", "--iterations", "8") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {message} (the last good checkpoint {run / 'checkpoint.safetensors'} is kept)")
    assert (run / "checkpoint.safetensors").read_bytes() == good
    assert logged_steps(run)[-1] <= 6
