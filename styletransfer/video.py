"""Stylising videos: decode, stylise in small batches, encode, with the sound kept (PyAV).

Frames stream through: at most ``batch_size`` decoded frames, plus the encoder's own look-ahead,
are held at once, so memory does not grow with the length of a clip. Each frame keeps its
presentation time, so the frame rate (constant or variable) and the sync with the sound are those
of the source. A rotated clip (a phone's display matrix, or the older ``rotate`` tag, which FFmpeg
reads as one) has the rotation baked in: the frames are turned upright before stylising, as
``load_image`` does with a photo's EXIF orientation, and the output carries no rotation. The
sound is copied packet for packet when the output container accepts its codec, else re-encoded
(AAC, or Opus in WebM). Other streams (subtitles, data) are left out.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np
import torch

from .errors import StyleTransferError, cannot_write, one_line

__all__ = [
    "DEFAULT_BATCH_SIZE", "OUTPUT_CONTAINERS", "VIDEO_SUFFIXES", "VideoInfo", "VideoSummary", "check_video_output",
    "find_videos", "frame_size", "is_video", "probe", "stylize_frames", "stylize_video", "stylized_frames",
    "video_output_suffix", "video_progress",
]  # fmt: skip

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp"}


@dataclass(frozen=True)
class _Container:
    format: str  # FFmpeg's muxer
    video_codec: str
    audio_codec: str  # for sound that cannot be copied as it is
    video_options: dict
    container_options: dict


_X264 = {"crf": "18", "preset": "medium"}  # visually close to lossless; stylisations have fine texture
_VP9 = {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}  # constant quality, faster than the default
_FASTSTART = {"movflags": "+faststart"}  # the index first, so browsers play while downloading
OUTPUT_CONTAINERS = {
    ".mp4": _Container("mp4", "libx264", "aac", _X264, _FASTSTART),
    ".mov": _Container("mov", "libx264", "aac", _X264, _FASTSTART),
    ".mkv": _Container("matroska", "libx264", "aac", _X264, {}),
    ".webm": _Container("webm", "libvpx-vp9", "libopus", _VP9, {}),
}
DEFAULT_BATCH_SIZE = 4
MISSING_FRAMES_ALLOWED = 2
OPUS_RATE = 48_000  # the one rate libopus takes for every input


def is_video(path: str | Path) -> bool:
    """Whether ``path`` is named like a video file (by its extension)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def find_videos(folder: str | Path) -> list[Path]:
    """All files with a video suffix under ``folder``, recursively, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if is_video(p) and p.is_file())


def video_output_suffix(src: Path) -> str:
    """The output extension for a video found in a folder: its own when it can be written, else ``.mp4``."""
    suffix = src.suffix.lower()
    return suffix if suffix in OUTPUT_CONTAINERS else ".mp4"


def check_video_output(path: Path) -> None:
    """StyleTransferError unless ``path`` ends in a video extension this module writes."""
    if path.suffix.lower() not in OUTPUT_CONTAINERS:
        raise StyleTransferError(f"{path}: a video's output must be {', '.join(OUTPUT_CONTAINERS)}")


@dataclass(frozen=True)
class VideoInfo:
    """What the first pass over a file learns: the picture as displayed, timing and sound.

    ``width`` x ``height``: pixels after the rotation; ``quarter_turns``: counterclockwise turns
    applied to each decoded frame (0 to 3); ``rate``: frames per second; ``frames``: the count the
    file declares (``declared``), else estimated from its duration (None when unknown); ``audio``:
    the sound's codec, or None.
    """

    width: int
    height: int
    quarter_turns: int
    rate: Fraction
    frames: int | None
    declared: bool
    audio: str | None


def _open_input(src: Path):
    if not src.is_file():
        raise StyleTransferError(f"{src}: no such file" if not src.exists() else f"{src}: is a folder, not a video")
    try:
        return av.open(str(src), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise StyleTransferError(f"{src}: not a video file, or damaged ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    """FFmpeg's words for an error, without the file name it appends."""
    return getattr(e, "strerror", None) or one_line(e)


def _video_stream(container, src: Path):
    if not container.streams.video:
        raise StyleTransferError(f"{src}: no video stream in this file")
    return container.streams.video[0]


def probe(src: str | Path) -> VideoInfo:
    """Open ``src``, decode its first frame and describe it; StyleTransferError (one line naming the
    file) for a missing, unreadable, damaged or non-video file."""
    src = Path(src)
    with _open_input(src) as container:
        stream = _video_stream(container, src)
        first = _first_frame(container, stream, src)
        turns = round(first.rotation / 90) % 4  # only whole quarter turns; other angles are left as they are
        width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        frames = _frame_count(container, stream, rate)
        return VideoInfo(width, height, turns, Fraction(rate), frames, bool(stream.frames), audio)


def _first_frame(container, stream, src: Path):
    try:
        for frame in container.decode(stream):
            return frame
    except (av.FFmpegError, OSError) as e:
        raise StyleTransferError(f"{src}: damaged video ({_reason(e)})") from None
    raise StyleTransferError(f"{src}: no picture could be decoded (damaged or empty video)")


def _frame_count(container, stream, rate: Fraction) -> int | None:
    if stream.frames:
        return stream.frames
    if stream.duration is not None and stream.time_base:
        return max(1, round(stream.duration * stream.time_base * rate))
    if container.duration:
        return max(1, round(container.duration / av.time_base * rate))
    return None


def frame_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """The output size for a ``width`` x ``height`` picture: scaled down (never up) so its long side
    is at most ``max_size`` (None: no limit), aspect ratio kept, both sides even (H.264 and VP9 in
    yuv420p need that) and at least 2."""
    scale = min(1.0, max_size / max(width, height)) if max_size else 1.0
    return tuple(max(2, int(side * scale + 1e-9) // 2 * 2) for side in (width, height))  # down to even: never over max_size


def stylize_frames(stylizer, frames: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 RGB frames through ``stylizer.stylize_tensor``, to (B, H, W, 3) uint8.

    The one place video frames meet the network.
    """
    frames = frames if frames.flags.writeable else frames.copy()  # torch wants writable memory
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
    y = stylizer.stylize_tensor(x)
    return y.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class _FrameReader:
    """Decoded frames of one video stream as upright RGB arrays of the output size, with their times."""

    def __init__(self, src: Path, stream, info: VideoInfo, size: tuple[int, int]) -> None:
        self.src, self.stream, self.turns = src, stream, info.quarter_turns
        w, h = size
        self.decode_size = (h, w) if self.turns % 2 else (w, h)  # scaled before turning
        self.step = max(1, round(1 / (info.rate * stream.time_base))) if stream.time_base else 1
        self.last_pts: int | None = None

    def frames(self, packet) -> Iterator[tuple[int, np.ndarray]]:
        """(presentation time in the stream's time base, (H, W, 3) uint8) for each frame ``packet`` completes."""
        try:
            decoded = self.stream.decode(packet)
        except (av.FFmpegError, OSError) as e:
            at = f" at {float(packet.pts * packet.time_base):.2f} s" if packet.pts is not None else ""
            raise StyleTransferError(f"{self.src}: damaged video{at} ({_reason(e)})") from None
        for frame in decoded:
            w, h = self.decode_size
            rgb = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
            yield self._pts(frame.pts), np.ascontiguousarray(np.rot90(rgb, self.turns))

    def _pts(self, pts: int | None) -> int:
        """The frame's own time, made strictly increasing (an encoder refuses repeats) and filled in when missing."""
        if pts is None or (self.last_pts is not None and pts <= self.last_pts):
            pts = 0 if self.last_pts is None else self.last_pts + (self.step if pts is None else 1)
        self.last_pts = pts
        return pts


class _Batcher:
    """Collects frames into batches of ``size`` and stylises each full batch."""

    def __init__(self, stylizer, size: int) -> None:
        self.stylizer, self.size = stylizer, size
        self.times: list[int] = []
        self.frames: list[np.ndarray] = []

    def add(self, pts: int, frame: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        self.times.append(pts)
        self.frames.append(frame)
        if len(self.frames) >= self.size:
            yield from self.flush()

    def flush(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(time, input frame, stylised frame) for each frame collected so far."""
        if not self.frames:
            return
        inputs = np.stack(self.frames)
        outputs = stylize_frames(self.stylizer, inputs)
        times, self.times, self.frames = self.times, [], []
        yield from zip(times, inputs, outputs)


def stylized_frames(
    stylizer, src: str | Path, max_size: int | None, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input frame, stylised frame) pairs of ``src``, each (H, W, 3) uint8, upright and scaled as
    :func:`stylize_video` does, in presentation order; the sound is ignored. For measuring, e.g.
    ``scripts/flicker.py``."""
    src = Path(src)
    info = probe(src)
    with _open_input(src) as container:
        stream = _video_stream(container, src)
        reader = _FrameReader(src, stream, info, frame_size(info.width, info.height, max_size))
        batcher = _Batcher(stylizer, batch_size)
        for packet in container.demux(stream):
            for pts, frame in reader.frames(packet):
                for _, source, out in batcher.add(pts, frame):
                    yield source, out
        for _, source, out in batcher.flush():
            yield source, out


class _AudioCopy:
    """The source's sound packets, muxed unchanged."""

    def __init__(self, output, stream) -> None:
        self.output = output
        self.stream = output.add_stream_from_template(stream)
        self.description = f"copied ({stream.codec_context.name})"

    def packet(self, packet) -> None:
        if packet.dts is None:  # the demuxer's end-of-stream marker
            return
        packet.stream = self.stream
        self.output.mux(packet)

    def flush(self) -> None:
        pass


class _AudioEncode:
    """The source's sound decoded and encoded again, for a container that cannot hold its codec."""

    def __init__(self, output, stream, codec: str) -> None:
        self.output, self.source = output, stream
        rate = OPUS_RATE if codec == "libopus" else stream.codec_context.sample_rate
        self.stream = output.add_stream(codec, rate=rate)
        channels = stream.codec_context.layout.nb_channels
        self.stream.layout = "mono" if channels == 1 else "stereo" if codec == "libopus" or channels == 2 else stream.codec_context.layout
        self.description = f"re-encoded ({stream.codec_context.name} to {codec.removeprefix('lib')})"

    def packet(self, packet) -> None:
        try:
            frames = self.source.decode(packet)
        except (av.FFmpegError, OSError) as e:
            raise StyleTransferError(f"{self.source.container.name}: damaged sound ({_reason(e)})") from None
        for frame in frames:
            frame.pts = None  # the encoder counts samples from the start; packets keep their order
            self.output.mux(self.stream.encode(frame))

    def flush(self) -> None:
        self.output.mux(self.stream.encode(None))


def _audio_track(output, stream, container: _Container):
    """Copy the sound when the container accepts its codec, else re-encode it."""
    try:
        return _AudioCopy(output, stream)
    except ValueError:  # PyAV: "format does not support codec"
        return _AudioEncode(output, stream, container.audio_codec)


def _add_video_stream(output, container: _Container, info: VideoInfo, size: tuple[int, int], time_base: Fraction):
    stream = output.add_stream(container.video_codec, rate=info.rate, options=dict(container.video_options))
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = time_base  # the source's own times, so nothing is rounded
    return stream


@dataclass
class VideoSummary:
    """What :func:`stylize_video` wrote: ``frames`` frames of ``size`` (width, height) at ``rate``
    frames per second, ``seconds`` long, and what became of the sound."""

    source: Path
    output: Path
    frames: int
    size: tuple[int, int]
    rate: Fraction
    seconds: float
    audio: str

    def line(self) -> str:
        """E.g. "12 frames, 64x48, 10 fps, 1.20 s, sound copied (aac)"."""
        return (f"{self.frames} frames, {self.size[0]}x{self.size[1]}, {float(self.rate):.4g} fps, "
                f"{self.seconds:.2f} s, sound {self.audio}")  # fmt: skip


class _Transcode:
    """One pass over the source: video packets are decoded, stylised in batches and encoded; sound
    packets are copied or re-encoded as they come. The muxer interleaves the two."""

    def __init__(self, stylizer, src: Path, input_container, output, container: _Container, info: VideoInfo,
                 size: tuple[int, int], batch_size: int, on_frames: Callable[[int], None]) -> None:  # fmt: skip
        self.src, self.input, self.output, self.on_frames, self.info = src, input_container, output, on_frames, info
        self.vin = _video_stream(input_container, src)
        self.ain = input_container.streams.audio[0] if input_container.streams.audio else None
        self.vout = _add_video_stream(output, container, info, size, self.vin.time_base)
        self.audio = _audio_track(output, self.ain, container) if self.ain is not None else None
        self.reader = _FrameReader(src, self.vin, info, size)
        self.batcher = _Batcher(stylizer, batch_size)
        self.frames, self.first_pts, self.last_pts = 0, None, None

    def run(self) -> None:
        streams = [s for s in (self.vin, self.ain) if s is not None]
        for packet in self.input.demux(*streams):
            if packet.stream.index == self.vin.index:
                for pts, frame in self.reader.frames(packet):
                    self._encode(self.batcher.add(pts, frame))
            elif self.audio is not None:
                self.audio.packet(packet)
        self._encode(self.batcher.flush())
        self._refuse_truncated()
        self.output.mux(self.vout.encode(None))
        if self.audio is not None:
            self.audio.flush()

    def _refuse_truncated(self) -> None:
        """A file that ends well before the frame count it declares is damaged: better an error than
        a silently shorter video. (A frame or two less is normal: edit lists drop encoder priming.)"""
        declared = self.info.frames if self.info.declared else None
        if declared and self.frames < declared - MISSING_FRAMES_ALLOWED:
            raise StyleTransferError(f"{self.src}: damaged or truncated video: only {self.frames} of the {declared} "
                                     "frames it declares could be decoded")  # fmt: skip

    def _encode(self, stylised) -> None:
        done = 0
        for pts, _, out in stylised:
            frame = av.VideoFrame.from_ndarray(out, format="rgb24")
            frame.pts, frame.time_base = pts, self.vin.time_base
            self.output.mux(self.vout.encode(frame))
            self.first_pts = pts if self.first_pts is None else self.first_pts
            self.last_pts = pts
            done += 1
        if done:
            self.frames += done
            self.on_frames(done)

    def seconds(self, rate: Fraction) -> float:
        """From the first frame's start to the last frame's end."""
        if self.first_pts is None:
            return 0.0
        return float((self.last_pts - self.first_pts) * self.vin.time_base + 1 / rate)


def _partial_path(dst: Path) -> Path:
    """Where the video is written until it is complete (same folder, so the final rename is atomic)."""
    return dst.with_name(f".{dst.stem}.partial{dst.suffix}")


def stylize_video(
    stylizer,
    src: str | Path,
    dst: str | Path,
    max_size: int | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress=None,
) -> VideoSummary:
    """Stylise every frame of the video ``src`` into ``dst`` (.mp4, .mov, .mkv: H.264; .webm: VP9).

    ``stylizer``: anything with ``stylize_tensor((B, 3, H, W) in [0, 1]) -> (B, 3, H, W)``, e.g.
    :class:`~styletransfer.stylize.Stylizer`; ``max_size``: the long side in pixels the frames are
    scaled down to (None keeps the size; sides are rounded to even numbers); ``batch_size``:
    frames per call of the network; ``progress``: a :func:`video_progress` bar, or None.
    Frame times (so the frame rate) and the sound are kept; see the module's notes on rotation.
    ``dst`` appears only when complete. Raises StyleTransferError (one line naming the file) for a
    file that is not a readable video, an output that cannot be written, or out of memory.
    """
    src, dst = Path(src), Path(dst)
    check_video_output(dst)
    if batch_size < 1:
        raise StyleTransferError(f"batch_size must be at least 1, not {batch_size}")
    info = probe(src)
    size = frame_size(info.width, info.height, max_size)
    container = OUTPUT_CONTAINERS[dst.suffix.lower()]
    if progress is not None:
        progress.start()  # started by the first video, so a run of images shows no bar
    task = progress.add_task(src.name, total=info.frames) if progress is not None else None
    on_frames = (lambda n: progress.advance(task, n)) if progress is not None else (lambda n: None)
    job = _write(stylizer, src, dst, container, info, size, batch_size, on_frames)
    if progress is not None:
        progress.update(task, total=job.frames, completed=job.frames)
    return VideoSummary(src, dst, job.frames, size, info.rate, job.seconds(info.rate),
                        job.audio.description if job.audio else "none")  # fmt: skip


def _write(stylizer, src, dst, container, info, size, batch_size, on_frames) -> _Transcode:
    partial = _partial_path(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with _open_input(src) as source, av.open(str(partial), "w", format=container.format,
                                                 container_options=container.container_options) as output:  # fmt: skip
            job = _Transcode(stylizer, src, source, output, container, info, size, batch_size, on_frames)
            job.run()
        os.replace(partial, dst)
        return job
    except av.FFmpegError as e:  # reading errors are StyleTransferErrors already: this is the writing side
        raise StyleTransferError(f"{dst}: cannot write video ({_reason(e)})") from None
    except OSError as e:
        raise cannot_write(dst, e) from None
    finally:
        with contextlib.suppress(OSError):  # the folder may not even exist
            partial.unlink(missing_ok=True)


def video_progress(console):
    """A rich progress bar for videos on ``console``: name, bar, frames done of total, frames per
    second, time left. :func:`stylize_video` starts it and adds a row per video; stop it when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class FramesPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} fps" if task.speed else "- fps")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                    FramesPerSecond(), TimeRemainingColumn(), console=console)  # fmt: skip
