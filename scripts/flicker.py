"""Temporal flicker of the four norms, on a clip with known motion.

    python scripts/flicker.py starry_night wave [--photo examples/coffee.jpg] [--save flicker/]

Makes a clip from one photo of ``examples/``: a slow pan from left to right with a slow zoom in
(sub-pixel steps, no cuts), encoded as H.264 with PyAV. Then, for each style named and each
norm shipped for it (``styletransfer/checkpoints/<style>/{bn,in,se,iebn}.safetensors``), stylises the clip's
decoded frames through the same pipeline as ``styletransfer stylize`` and reports

    flicker = mean over t, pixels of |out[t] - out[t-1]|  /  mean over t, pixels of |in[t] - in[t-1]|

(8-bit values, all channels; the output's frames are compared before any video encoding, so the
codec adds nothing). 1 means the stylisation changes from frame to frame as much as the photo
does; above 1 the stylisation adds temporal change of its own (flicker, crawling strokes).
What to expect: IN normalises every frame with that frame's own statistics, BN and BN+SE use
fixed running statistics at inference (BN+SE's gate still looks at each frame's channel means),
and IEBN's gate follows each frame's channel means.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

from styletransfer.data import load_image
from styletransfer.norms import NORMS, norm_label
from styletransfer.stylize import Stylizer
from styletransfer.video import stylize_video, stylized_frames

ROOT = Path(__file__).resolve().parents[1]


def pan_and_zoom(photo: Image.Image, frames: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``frames`` views of ``photo`` at ``size`` (width, height): the window starts at the left
    showing 80 % of the photo's height and ends at the right showing 64 % of it (a 1.25x zoom),
    moving and shrinking linearly; Lanczos resampling of a float box, so steps are sub-pixel."""
    W, H = photo.size
    aspect = size[0] / size[1]
    views = []
    for t in np.linspace(0, 1, frames):
        h = H * (0.8 - 0.16 * t)
        w = min(W, h * aspect)
        x0, y0 = (W - w) * t, (H - h) * (0.3 + 0.4 * t)
        box = (x0, y0, x0 + w, y0 + h)
        views.append(np.asarray(photo.resize(size, Image.Resampling.LANCZOS, box=box)))
    return views


def write_clip(views: list[np.ndarray], path: Path, fps: int = 24) -> Path:
    """The views as an H.264 clip, near-lossless (crf 10), yuv420p."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "10"})
        stream.height, stream.width = views[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for view in views:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(view, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def flicker(stylizer: Stylizer, clip: Path) -> tuple[float, float, int]:
    """(mean |out[t] - out[t-1]|, mean |in[t] - in[t-1]|, frames) over the clip, in 8-bit units."""
    out_change = in_change = 0.0
    previous, pairs = None, 0
    for source, out in stylized_frames(stylizer, clip, None):
        source, out = source.astype(np.float32), out.astype(np.float32)
        if previous is not None:
            in_change += float(np.abs(source - previous[0]).mean())
            out_change += float(np.abs(out - previous[1]).mean())
            pairs += 1
        previous = (source, out)
    return out_change / pairs, in_change / pairs, pairs + 1


def style_rows(style: str, clip: Path, args) -> list[tuple[str, float, float, float]]:
    """(norm label, flicker ratio, mean output change, mean input change) per shipped norm of ``style``."""
    rows = []
    for norm in NORMS:
        path = ROOT / "styletransfer" / "checkpoints" / style / f"{norm}.safetensors"
        if not path.exists():
            continue
        stylizer = Stylizer.from_checkpoint(path, args.device, args.precision)
        out_change, in_change, frames = flicker(stylizer, clip)
        rows.append((norm_label(norm), out_change / in_change, out_change, in_change))
        print(f"{style} {norm_label(norm)}: {out_change / in_change:.3f} ({frames} frames)", file=sys.stderr, flush=True)
        if args.save:
            stylize_video(stylizer, clip, args.save / f"{style}-{norm}.mp4", None)
    return rows


def table(results: dict[str, list[tuple[str, float, float, float]]]) -> str:
    labels = [row[0] for row in next(iter(results.values()))]
    lines = ["| style | " + " | ".join(labels) + " | input change |", "|---" * (len(labels) + 2) + "|"]
    for style, rows in results.items():
        cells = [f"{ratio:.2f} ({out:.1f})" for _, ratio, out, _ in rows]
        lines.append(f"| {style.replace('_', ' ')} | " + " | ".join(cells) + f" | {rows[0][3]:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Temporal flicker of each shipped norm of the given styles.")
    p.add_argument("styles", nargs="+", help="shipped styles, e.g. starry_night wave")
    p.add_argument("--photo", type=Path, default=ROOT / "examples" / "coffee.jpg", help="photo the clip pans over")
    p.add_argument("--frames", type=int, default=72, help="frames in the clip (24 per second)")
    p.add_argument("--width", type=int, default=320, help="clip width in pixels")
    p.add_argument("--height", type=int, default=240, help="clip height in pixels")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", help="fp32 (default: no bf16 rounding in the measure), auto, bf16")
    p.add_argument("--save", type=Path, help="also write the clip and each stylised clip (H.264) into this folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    views = pan_and_zoom(load_image(args.photo), args.frames, (args.width, args.height))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.save or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        clip = write_clip(views, folder / f"pan-{args.photo.stem}.mp4")
        results = {style: style_rows(style, clip, args) for style in args.styles}
    print(f"{args.frames} frames of {args.width}x{args.height}, a pan and 1.25x zoom over {args.photo.name}; "
          "flicker = mean |out[t] - out[t-1]| / mean |in[t] - in[t-1]| (in brackets: mean |out[t] - out[t-1]|, 8-bit)\n")  # fmt: skip
    print(table(results))


if __name__ == "__main__":
    main()
