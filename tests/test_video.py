"""Videos through `styletransfer stylize`: frames, rate, sound, rotation, damaged files (PyAV)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from styletransfer.errors import StyleTransferError
from styletransfer.stylize import Stylizer
from styletransfer.video import frame_size, probe, stylize_video, stylized_frames

from .conftest import run_cli, write_checkpoint

FRAMES, WIDTH, HEIGHT, FPS = 12, 64, 48, 10


def test_frame(i: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A grey picture with a white block in its top-left corner; the green channel counts frames."""
    frame = np.full((height, width, 3), 60, np.uint8)
    frame[: height // 2, : width // 4] = 255
    frame[:, :, 1] = np.uint8(i * 10 % 256)
    return frame


test_frame.__test__ = False  # a helper, not a test


def make_clip(path: Path, frames: int = FRAMES, size=(WIDTH, HEIGHT), fps: int = FPS, audio: bool = True,
              rotation: int = 0) -> Path:  # fmt: skip
    """An H.264 clip of ``frames`` frames (and a 440 Hz sine in AAC as long as the picture), written
    with PyAV; ``rotation`` is stored in the display matrix, counterclockwise degrees."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=44_100, layout="mono") if audio else None
        for i in range(frames):
            out.mux(video.encode(av.VideoFrame.from_ndarray(test_frame(i, *size), format="rgb24")))
        out.mux(video.encode(None))
        if sound is not None:
            write_sine(out, sound, seconds=frames / fps)
    return path


def write_sine(out, sound, seconds: float) -> None:
    samples = int(sound.rate * seconds)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / sound.rate)).astype(np.float32)
    for start in range(0, samples, 1024):
        frame = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="flt", layout="mono")
        frame.sample_rate, frame.pts = sound.rate, start
        out.mux(sound.encode(frame))
    out.mux(sound.encode(None))


def describe(path: Path) -> dict:
    """Frames decoded, size, rate, duration and sound of a video file, as a player sees them."""
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video)]
    with av.open(str(path)) as c:
        sound = [s.codec_context.name for s in c.streams.audio]
        audio_seconds = sum(f.samples / f.sample_rate for f in c.decode(audio=0)) if sound else 0.0
        return {"frames": len(frames), "size": frames[0].shape[1::-1], "rate": c.streams.video[0].average_rate,
                "seconds": c.duration / av.time_base, "sound": sound, "audio_seconds": audio_seconds,
                "first": frames[0], "codec": c.streams.video[0].codec_context.name}  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"), "stripes", "in", seed=1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


@pytest.fixture
def identity() -> Stylizer:
    """A stylizer that returns its frames, so what the pipeline does to pixels can be seen exactly."""
    return Stylizer(torch.nn.Identity(), {"norm": "in"}, "cpu", "fp32")


def test_a_clip_keeps_frames_rate_length_and_sound(clip, model, tmp_path, capsys):
    out = tmp_path / "clip-stripes.mp4"
    assert run_cli("stylize", clip, "-m", model, "-o", out) == 0
    got = describe(out)
    assert got["codec"] == "h264" and got["frames"] == FRAMES and got["size"] == (WIDTH, HEIGHT)
    assert got["rate"] == FPS
    assert got["seconds"] == pytest.approx(FRAMES / FPS, abs=0.1)
    assert got["sound"] == ["aac"] and got["audio_seconds"] == pytest.approx(FRAMES / FPS, abs=0.1)
    err = capsys.readouterr().err
    assert f"{FRAMES}/{FRAMES} frames" in err and "fps" in err  # the progress bar's last state
    assert f"{out}: {FRAMES} frames, {WIDTH}x{HEIGHT}, {FPS} fps, 1.20 s, sound copied (aac)" in err
    assert f"wrote 1 video(s): {out}" in err
    assert not list(tmp_path.glob(".*partial*"))


def test_the_sound_is_copied_packet_for_packet(clip, model, tmp_path):
    out = tmp_path / "copy.mkv"
    assert run_cli("stylize", clip, "-m", model, "-o", out) == 0

    def packets(path):
        with av.open(str(path)) as c:
            return [bytes(p) for p in c.demux(audio=0) if p.size]

    assert packets(out) == packets(clip)


def test_webm_is_vp9_with_the_sound_re_encoded_as_opus(clip, model, tmp_path, capsys):
    out = tmp_path / "clip.webm"
    assert run_cli("stylize", clip, "-m", model, "-o", out, "--device", "cpu", "--precision", "fp32") == 0
    got = describe(out)
    assert got["codec"] == "vp9" and got["frames"] == FRAMES and got["sound"] == ["opus"]
    assert got["seconds"] == pytest.approx(FRAMES / FPS, abs=0.1)
    assert "sound re-encoded (aac to opus)" in capsys.readouterr().err


def test_a_clip_without_sound_gives_one_without(model, tmp_path, capsys):
    silent = make_clip(tmp_path / "silent.mov", audio=False)
    assert run_cli("stylize", silent, "-m", model, "-o", tmp_path / "out.mov") == 0
    assert describe(tmp_path / "out.mov")["sound"] == []
    assert "sound none" in capsys.readouterr().err


def test_max_size_scales_frames_to_even_sides(clip, model, tmp_path):
    assert run_cli("stylize", clip, "-m", model, "-o", tmp_path / "small.mp4", "--max-size", "35") == 0
    assert describe(tmp_path / "small.mp4")["size"] == (34, 26)


@given(st.integers(1, 5000), st.integers(1, 5000), st.one_of(st.none(), st.integers(2, 4000)))
def test_frame_size_is_even_bounded_and_keeps_the_aspect(width, height, max_size):
    w, h = frame_size(width, height, max_size)
    assert w % 2 == 0 and h % 2 == 0 and w >= 2 and h >= 2
    assert max(w, h) <= max(2, max_size or max(width, height))
    if min(w, h) >= 100:
        assert abs(w / h - width / height) < 0.03 * width / height


def test_a_rotated_clip_is_turned_upright(identity, tmp_path):
    """The display matrix says "turn 90 degrees counterclockwise": the output's pixels are upright
    (as FFmpeg's player shows the source), and it carries no rotation of its own."""
    src = make_clip(tmp_path / "portrait.mp4", rotation=90)
    assert probe(src).quarter_turns == 1
    summary = stylize_video(identity, src, tmp_path / "upright.mp4", None)
    assert summary.size == (HEIGHT, WIDTH)
    with av.open(str(tmp_path / "upright.mp4")) as c:
        first = next(c.decode(video=0))
    assert first.rotation == 0
    expected = np.rot90(test_frame(0), 1)  # the white block goes from top-left to bottom-left
    assert np.abs(first.to_ndarray(format="rgb24").astype(int) - expected).mean() < 6


def test_a_rotated_clip_through_the_cli_is_portrait(model, tmp_path):
    src = make_clip(tmp_path / "portrait.mkv", rotation=-90)
    assert run_cli("stylize", src, "-m", model, "-o", tmp_path / "out.mp4") == 0
    assert describe(tmp_path / "out.mp4")["size"] == (HEIGHT, WIDTH)


def test_frames_stream_through_in_small_batches(tmp_path):
    """The first stylised frame comes out after one batch of 4, not after the whole clip."""
    src = make_clip(tmp_path / "long.mp4", frames=40, audio=False)
    batches = []

    class Recording:
        def stylize_tensor(self, x):
            batches.append(x.shape[0])
            return x

    frames = stylized_frames(Recording(), src, None, batch_size=4)
    source, out = next(frames)
    assert batches == [4] and source.shape == out.shape == (HEIGHT, WIDTH, 3)
    assert 1 + sum(1 for _ in frames) == 40 and batches == [4] * 10


@pytest.mark.parametrize("name, content", [("notes.mp4", b"not a video\n"), ("empty.mkv", b"")])
def test_a_file_that_is_not_a_video_is_a_one_line_error(model, tmp_path, capsys, name, content):
    (tmp_path / name).write_bytes(content)
    assert run_cli("stylize", tmp_path / name, "-m", model, "-o", tmp_path / "out.mp4") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"error: {tmp_path / name}: not a video file, or damaged (Invalid data found when processing input)"
    assert len(lines) == 1  # the error alone: nothing to sum up for one input
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written, not even a partial file


def test_a_truncated_clip_is_a_one_line_error(clip, model, tmp_path, capsys):
    damaged = tmp_path / "cut.mp4"
    damaged.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # the index (at the end) is lost
    assert run_cli("stylize", damaged, "-m", model, "-o", tmp_path / "out.mp4") == 1
    assert f"error: {damaged}: not a video file, or damaged" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def test_a_clip_cut_short_of_the_frames_it_declares_is_an_error(model, tmp_path, capsys):
    src = tmp_path / "indexed.mp4"
    with av.open(str(make_clip(tmp_path / "plain.mp4"))) as c, av.open(str(src), "w", options={"movflags": "+faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in c.streams}
        for packet in c.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])  # the index first, a third of the data lost
    assert run_cli("stylize", cut, "-m", model, "-o", tmp_path / "out.mkv") == 1
    assert f"error: {cut}: damaged or truncated video: only " in capsys.readouterr().err
    assert not (tmp_path / "out.mkv").exists() and not list(tmp_path.glob(".*partial*"))


def test_output_types_must_match_the_input(clip, model, tmp_path, capsys):
    assert run_cli("stylize", clip, "-m", model, "-o", tmp_path / "still.png") == 1
    assert "still.png: a video's output must be .mp4, .mov, .mkv, .webm" in capsys.readouterr().err
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 24), (10, 200, 30)).save(photo)
    assert run_cli("stylize", photo, "-m", model, "-o", tmp_path / "photo.mp4") == 1
    assert "photo.mp4: unknown output type" in capsys.readouterr().err


def test_an_unwritable_output_is_a_one_line_error(clip, model, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert run_cli("stylize", clip, "-m", model, "-o", tmp_path / "file" / "out.mp4") == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'file' / 'out.mp4'}: cannot write" in err and "Traceback" not in err


def test_a_folder_gives_images_for_images_and_videos_for_videos(clip, model, tmp_path, capsys):
    folder = tmp_path / "holiday"
    (folder / "day2").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 100, 30)).save(folder / "beach.jpg")
    (folder / "day2" / "clip.mp4").write_bytes(clip.read_bytes())
    make_clip(folder / "clip.mkv", frames=6, audio=False)  # the same stem as another video
    make_clip(folder / "old.avi", frames=4, audio=False)
    assert run_cli("stylize", folder, "-m", model, "-o", tmp_path / "out") == 0
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["beach-stripes-in.png", "clip-stripes-in.mkv", "day2/clip-stripes-in.mp4", "old-stripes-in.mp4"]
    assert describe(tmp_path / "out" / "clip-stripes-in.mkv")["frames"] == 6
    assert describe(tmp_path / "out" / "old-stripes-in.mp4")["frames"] == 4
    assert "wrote 1 image(s) and 3 video(s)" in capsys.readouterr().err


def test_stylize_video_refuses_a_bad_batch_size_and_output(identity, clip, tmp_path):
    with pytest.raises(StyleTransferError, match="batch_size must be at least 1"):
        stylize_video(identity, clip, tmp_path / "out.mp4", None, batch_size=0)
    with pytest.raises(StyleTransferError, match="out.gif: a video's output must be"):
        stylize_video(identity, clip, tmp_path / "out.gif", None)


def test_probe_reads_rate_frames_and_sound(clip):
    info = probe(clip)
    assert (info.width, info.height, info.quarter_turns, info.frames, info.audio) == (WIDTH, HEIGHT, 0, FRAMES, "aac")
    assert info.rate == Fraction(FPS) and info.declared


def test_frame_times_of_a_variable_rate_clip_are_kept(identity, tmp_path):
    times = [0.0, 0.1, 0.2, 0.4, 0.5, 0.8, 0.85, 0.9]
    src = tmp_path / "vfr.mkv"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=20)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(test_frame(i), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    for suffix in (".mp4", ".webm"):
        stylize_video(identity, src, tmp_path / f"out{suffix}", None)
        with av.open(str(tmp_path / f"out{suffix}")) as c:
            got = [round(f.time, 3) for f in c.decode(video=0)]
        assert got == pytest.approx([t - times[0] + got[0] for t in times], abs=0.002), suffix
