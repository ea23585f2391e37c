"""Web demo: stylise a photo with every normalisation trained for a style, side by side.

    styletransfer demo [--checkpoints FOLDER] [--port 7860] [--listen] [--share]

(``python app.py ...`` from a checkout does the same.) Models are found as
:mod:`styletransfer.models` says: the ``--checkpoints`` folder (or ``$STYLETRANSFER_MODELS``),
then the shipped models.

The page's stylise function is also the API endpoint ``/stylize`` (see the README's "Web demo").
Tests build the page with :func:`build_app` and call :meth:`StyleDemo.stylize` and
:meth:`StyleDemo.live_frame` (the live camera tab's stream function) directly.
"""

from __future__ import annotations

import argparse
import atexit
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from .controls import STROKE_SCALE_MAX, STROKE_SCALE_MIN, Controls
from .data import load_image, resize_long_side
from .devices import pick_device
from .errors import StyleTransferError
from .models import find_models, find_style_image, model_folders, shipped_folder
from .norms import NORMS, norm_label
from .plot import Run, draw_loss_curves, load_run
from .runs import logs_beside_model, train_hint
from .stylize import Stylizer
from .video import stylize_frames

__all__ = ["StyleDemo", "StyleLibrary", "build_app", "launch", "main"]

EXAMPLES = shipped_folder("examples")
SIZE_MIN, SIZE_MAX, SIZE_DEFAULT = 256, 1024, 512
MAX_FILE_SIZE = "20mb"
QUEUE_SIZE = 32  # requests waiting beyond this are turned away with "queue full"
CURVE_TERMS = ("content", "style", "total")
RESULT_MAX_AGE_S = 3600
STYLE_PREVIEW_SIZE = 512
LIVE_SIZE_MIN, LIVE_SIZE_MAX, LIVE_SIZE_DEFAULT = 128, 512, 256
LIVE_EVERY_S = 0.2  # the browser sends the newest camera frame this often
LIVE_TIME_LIMIT_S = 120  # one viewer's stream; the next viewer waits in the queue until it ends
LIVE_DEFAULT_NORM = "in"

INTRO = """# Style transfer: BN, IN, BN+SE and IEBN side by side
Upload a photo or pick an example, choose a style and press **Stylise**. Every normalisation trained
on that style renders the photo; each result is captioned with its final training losses and the time
it took. The **Training curves** tab shows how the models of the style learned; **Live camera**
stylises your webcam with one model."""

LIVE_HELP = f"""Allow the camera, then press **Record** to start: a frame is sent every {LIVE_EVERY_S:g} s and
stylised by the chosen model. Frames that arrive while one is being stylised are dropped, so the picture
stays current on a slow machine. One viewer streams at a time, for up to {LIVE_TIME_LIMIT_S} s."""


def user_error(message: str) -> gr.Error:
    """A one-line message shown in the page; the server log gets no traceback for bad input."""
    return gr.Error(message, print_exception=False)


class StyleLibrary:
    """The models by style and norm; each model is loaded on first use and kept.

    ``checkpoints_dir`` (else ``$STYLETRANSFER_MODELS``) is searched first, then, if ``shipped``,
    the shipped models; ``styles_dir``, then the shipped paintings, for each style's painting.
    """

    def __init__(self, checkpoints_dir: str | Path | None = None, styles_dir: str | Path | None = None,
                 device: str = "auto", shipped: bool = True) -> None:  # fmt: skip
        self.folders = model_folders(checkpoints_dir, shipped)
        own = model_folders(checkpoints_dir, shipped=False)
        self.folder = own[0] if own else Path("models")  # where the "train one" hints export to
        self.styles_dir = styles_dir
        self.device = str(pick_device(device))
        self.by_style: dict[str, dict[str, tuple[Path, dict]]] = {}
        found, self.skipped = find_models(checkpoints_dir, shipped)  # files that are not valid checkpoints are skipped
        for model in found:
            self.by_style.setdefault(model.style, {})[model.norm] = (model.path, model.meta)
        self.loaded: dict[Path, Stylizer] = {}
        self.runs: dict[Path, Run] = {}
        self.model_lock, self.run_lock = threading.Lock(), threading.Lock()

    @property
    def styles(self) -> list[str]:
        return sorted(self.by_style)

    def checkpoints(self, style: str) -> list[tuple[Path, dict]]:
        """The style's (path, metadata) pairs in the order BN, IN, BN+SE, IEBN."""
        if style not in self.by_style:
            raise StyleTransferError(f"unknown style {style!r}; choose one of: {', '.join(self.styles)}")
        by_norm = self.by_style[style]
        return [by_norm[norm] for norm in NORMS if norm in by_norm]

    def checkpoint(self, style: str, norm: str) -> Path:
        """The checkpoint of ``style`` trained with ``norm``; StyleTransferError if there is none."""
        for path, meta in self.checkpoints(style):
            if meta["norm"] == norm:
                return path
        raise StyleTransferError(f"no {norm!r} model for the style {style!r}")

    def stylizer(self, path: Path) -> Stylizer:
        with self.model_lock:  # two first requests at once must not load the same model twice
            if path not in self.loaded:
                self.loaded[path] = Stylizer.from_checkpoint(path, self.device)
            return self.loaded[path]

    def run(self, path: Path) -> Run:
        """The loss curve of a checkpoint: the full log beside it if readable, else the checkpoint's history."""
        with self.run_lock:
            if path not in self.runs:
                self.runs[path] = first_readable_run([*logs_beside_model(path), path])
            return self.runs[path]

    def style_image(self, style: str) -> Path | None:
        """The painting ``<style>.<image suffix>`` from the styles folder or the shipped ones, if any."""
        return find_style_image(style, self.styles_dir)


def first_readable_run(sources: list[Path]) -> Run:
    for source in sources[:-1]:
        try:
            return load_run(source)
        except (StyleTransferError, OSError, EOFError):  # a damaged log: fall back to the next source
            continue
    return load_run(sources[-1])


class ResultFolder:
    """Where results are written as named PNGs for download; folders older than an hour are removed."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="styletransfer-demo-"))
        atexit.register(shutil.rmtree, self.root, True)

    def new_folder(self) -> Path:
        cutoff = time.time() - RESULT_MAX_AGE_S
        for old in self.root.iterdir():
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder


class StyleDemo:
    """What the page does, independent of its layout: stylise, describe a style, plot its curves."""

    def __init__(self, checkpoints_dir: str | Path | None = None, styles_dir: str | Path | None = None,
                 device: str = "auto", shipped: bool = True) -> None:  # fmt: skip
        self.library = StyleLibrary(checkpoints_dir, styles_dir, device, shipped)
        self.results = ResultFolder()
        self.live_lock = threading.Lock()  # one camera frame is stylised at a time; the others are dropped
        self.dropped_frames = 0

    def stylize(
        self,
        content: str | dict | None,
        style: str,
        size: float = SIZE_DEFAULT,
        strength: float = 1.0,
        preserve_color: bool = False,
        stroke_scale: float = 1.0,
    ) -> list[tuple[str, str]]:
        """Stylise the image file ``content`` with each norm trained for ``style``, long side ``size``.

        ``content`` is a path, or the upload record ({"path": ...}) the page passes. ``strength``,
        ``preserve_color`` and ``stroke_scale`` are the controls of
        :class:`~styletransfer.controls.Controls`. Returns one (PNG path, caption) pair per norm,
        in the order BN, IN, BN+SE, IEBN; a bad value is a one-line error.
        """
        if not self.library.styles:
            raise user_error(f"{self.library.folder} holds no checkpoints; " + train_hint_line(self.library.folder))
        path = upload_path(content)
        if path is None:
            raise user_error("no content photo: upload one or pick an example first")
        size = checked_size(size)
        try:
            controls = checked_controls(strength, preserve_color, stroke_scale)
            checkpoints = self.library.checkpoints(style)
            image = load_content(path, size)
            folder, stem = self.results.new_folder(), file_stem(path)
            results = []
            for path, meta in checkpoints:
                out = folder / f"{stem}-{style}-{meta['norm']}.png"  # the name a download gets
                results.append(self.stylize_one(image, path, meta, out, controls))
            return results
        except StyleTransferError as e:
            raise user_error(str(e)) from None

    def stylize_one(
        self, image: Image.Image, checkpoint: Path, meta: dict, out: Path, controls: Controls = Controls()
    ) -> tuple[str, str]:
        stylizer = self.library.stylizer(checkpoint)
        start = time.perf_counter()
        result = stylizer.render(image, controls)
        seconds = time.perf_counter() - start
        result.save(out, "PNG")
        return str(out), result_caption(meta, seconds)

    def live_frame(self, frame: np.ndarray | None, style: str, norm: str, size: float = LIVE_SIZE_DEFAULT):
        """One camera frame, an (H, W, 3) uint8 RGB array, stylised by the ``norm`` model of ``style``,
        scaled so its long side is ``size`` pixels: an (h, w, 3) uint8 array.

        A frame that arrives while another is being stylised is dropped: the call returns
        ``gr.skip()`` at once and the page keeps the last result, so frames never pile up behind a
        slow model. None (no frame yet) is skipped too. Bad choices raise a one-line ``gr.Error``.
        """
        if frame is None:
            return gr.skip()
        if not self.live_lock.acquire(blocking=False):
            self.dropped_frames += 1
            return gr.skip()
        try:
            return self.stylize_frame(frame, style, norm, checked_size(size, LIVE_SIZE_MIN, LIVE_SIZE_MAX))
        finally:
            self.live_lock.release()

    def stylize_frame(self, frame: np.ndarray, style: str, norm: str, size: int) -> np.ndarray:
        try:
            stylizer = self.library.stylizer(self.library.checkpoint(style, norm))
        except StyleTransferError as e:
            raise user_error(str(e)) from None
        image = resize_long_side(Image.fromarray(np.asarray(frame, np.uint8)[..., :3]), size)
        return stylize_frames(stylizer, np.asarray(image)[None])[0]

    def live_norms(self, style: str | None) -> dict:
        """The norm choices of the live tab for ``style`` (its trained norms, IN selected if there), as
        the ``choices`` and ``value`` of a ``gr.Radio``."""
        if style not in self.library.by_style:
            return {"choices": [], "value": None}
        norms = [meta["norm"] for _, meta in self.library.checkpoints(style)]
        value = LIVE_DEFAULT_NORM if LIVE_DEFAULT_NORM in norms else norms[0]
        return {"choices": [(norm_label(n), n) for n in norms], "value": value}

    def style_panel(self, style: str | None) -> tuple[str, Image.Image | None]:
        """The style's name, credit and models as Markdown, and its painting if there is one."""
        if style not in self.library.by_style:
            return "", None
        metas = [meta for _, meta in self.library.checkpoints(style)]
        credit = next((m["style_credit"] for m in metas if m.get("style_credit")), "credit not recorded")
        lines = [f"### {pretty(style)}", f"{credit}", "", f"Models: {trained_models(metas)}"]
        painting, path = None, self.library.style_image(style)
        if path is not None:
            try:
                painting = load_image(path, STYLE_PREVIEW_SIZE)
            except StyleTransferError as e:
                lines.append(f"(style image unreadable: {e})")
        return "\n".join(lines), painting

    def loss_curves(self, style: str | None):
        """A matplotlib figure of the content, style and total loss of the style's models."""
        if style not in self.library.by_style:
            return None
        runs, missing = [], []
        for path, meta in self.library.checkpoints(style):
            try:
                run = self.library.run(path)
                runs.append(Run(norm_label(meta["norm"]), meta["norm"], style, run.curve))
            except StyleTransferError:
                missing.append(norm_label(meta["norm"]))
        return curves_figure(runs, f"training loss · {pretty(style)}", missing)

    def no_checkpoints_text(self) -> str:
        folder = self.library.folder.as_posix()
        commands = "\n".join(f"    {command}" for command in train_hint(folder))
        return NO_CHECKPOINTS.format(folder=folder, commands=commands)


NO_CHECKPOINTS = """## No checkpoints yet
`{folder}` holds no checkpoints (`{folder}/<style>/<norm>.safetensors`). Train a style on a folder of
photos and export the result, then start the demo again with `--checkpoints {folder}`:

{commands}

Train `--norm bn`, `in` and `se` the same way (each into its own run folder) to compare the four;
`scripts/train_style.sh` does all four with identical settings."""


def train_hint_line(folder: Path) -> str:
    train, export = (f"`{command}`" for command in train_hint(folder))
    return f"train one with {train}, then {export}"


def upload_path(content: str | dict | None) -> Path | None:
    if isinstance(content, dict):
        content = content.get("path")
    return Path(content) if content else None


def checked_size(size: float, smallest: int = SIZE_MIN, largest: int = SIZE_MAX) -> int:
    try:
        size = float(size)
    except (TypeError, ValueError):
        raise user_error(f"output size must be a number of pixels, not {size!r}") from None
    if not smallest <= size <= largest:  # NaN fails this too
        raise user_error(f"output size {size:g} is out of range; choose {smallest} to {largest} pixels")
    return int(round(size))


def checked_controls(strength, preserve_color, stroke_scale) -> Controls:
    """The controls as the page or an API client sends them (numbers may come as text); an error
    names the API parameter (``stroke_scale``) rather than the command-line option."""
    try:
        return Controls(as_number(strength), preserve_color, as_number(stroke_scale))
    except StyleTransferError as e:
        option, _, rest = str(e).partition(" ")
        raise StyleTransferError(f"{option.removeprefix('--').replace('-', '_')} {rest}") from None


def as_number(value):
    """``value`` as a float if it reads as one; otherwise as it is, for Controls to refuse by name."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def load_content(path: Path, size: int) -> Image.Image:
    """The photo scaled (up or down) so that its long side is ``size``, aspect ratio kept."""
    try:
        image = load_image(path, max_size=size)
    except StyleTransferError as e:  # name the upload, not its place in the server's cache
        raise StyleTransferError(str(e).replace(str(path), path.name, 1)) from None
    return resize_long_side(image, size)


def file_stem(path: Path) -> str:
    """The upload's name, safe for a download file name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:40].strip("_") or "image"


def pretty(style: str) -> str:
    return style.replace("_", " ")


def result_caption(meta: dict, seconds: float) -> str:
    losses = meta.get("losses") or {}
    parts = [norm_label(meta["norm"])]
    if "style" in losses and "content" in losses:
        parts.append(f"style {losses['style']:.3g} · content {losses['content']:.3g}")
    parts.append(f"{seconds:.2f} s")
    return " · ".join(parts)


def trained_models(metas: list[dict]) -> str:
    """E.g. "BN, IN, BN+SE, IEBN (2,000 iterations each)"."""
    steps = {m.get("step") for m in metas}
    if len(steps) == 1 and None not in steps:
        return f"{', '.join(norm_label(m['norm']) for m in metas)} ({steps.pop():,} iterations each)"
    return ", ".join(f"{norm_label(m['norm'])} ({m['step']:,} iterations)" if m.get("step") else norm_label(m["norm"]) for m in metas)


def curves_figure(runs: list[Run], title: str, missing: list[str]):
    from matplotlib.figure import Figure  # no pyplot: its global state is not thread-safe

    fig = Figure(figsize=(12, 3.9))
    draw_loss_curves(list(fig.subplots(1, len(CURVE_TERMS), sharex=True)), runs, CURVE_TERMS)
    fig.suptitle(title + (f" (no loss record for {', '.join(missing)})" if missing else "") + " · log scale")
    fig.tight_layout()
    return fig


def build_app(
    checkpoints_dir: str | Path | None = None,
    styles_dir: str | Path | None = None,
    device: str = "auto",
    max_concurrency: int = 1,
    shipped: bool = True,
) -> gr.Blocks:
    """The page for the models in ``checkpoints_dir`` and (if ``shipped``) the shipped ones, with a bounded queue."""
    demo = StyleDemo(checkpoints_dir, styles_dir, device, shipped)
    with gr.Blocks(title="Style transfer: BN, IN, BN+SE, IEBN", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown(INTRO)
        if demo.library.styles:
            add_tabs(app, demo)
        else:
            gr.Markdown(demo.no_checkpoints_text(), elem_id="no-checkpoints")
    app.demo = demo  # lets tests and embedding code reach the functions behind the page
    return app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=max_concurrency)


def add_tabs(app: gr.Blocks, demo: StyleDemo) -> None:
    """The Stylise and Training curves tabs, and their events."""
    styles = demo.library.styles
    with gr.Tab("Stylise"):
        with gr.Row(equal_height=False):
            with gr.Column():
                content = gr.Image(label="Content photo", type="filepath",
                                       sources=["upload", "clipboard"], height=300, elem_id="content")  # fmt: skip
                examples = sorted(EXAMPLES.glob("*.jpg"))
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=content, label="Example photos")
            with gr.Column():
                style = gr.Dropdown([(pretty(s), s) for s in styles], value=styles[0], label="Style", elem_id="style")
                style_info = gr.Markdown(elem_id="style-info")
                style_image = gr.Image(label="Style image", interactive=False, height=260, buttons=["fullscreen"], elem_id="style-image")
            with gr.Column():
                size = gr.Slider(SIZE_MIN, SIZE_MAX, value=SIZE_DEFAULT, step=32, label="Output size (long side, pixels)",
                                 elem_id="size")
                controls = add_controls()
                run = gr.Button("Stylise", variant="primary", elem_id="stylise")
        results = gr.Gallery(label="Results: norm · final style and content loss · time", columns=4, object_fit="contain",
                             height=380, format="png", buttons=["download", "fullscreen"], elem_id="results")  # fmt: skip
    with gr.Tab("Training curves"):
        curves = gr.Plot(format="png", show_label=False, elem_id="curves")
    add_live_tab(demo)
    # Unpreprocessed, the stylise function reads the upload itself: any file gets its one-line error.
    run.click(demo.stylize, [content, style, size, *controls], results, api_name="stylize", preprocess=False)
    shown = [app.load, style.change]  # the first style is shown as soon as the page opens
    light = {"api_visibility": "private", "concurrency_limit": 2}  # not held up behind a long stylisation
    gr.on(shown, demo.style_panel, style, [style_info, style_image], **light)
    gr.on(shown, demo.loss_curves, style, curves, **light)


def add_live_tab(demo: StyleDemo) -> None:
    """The Live camera tab: the webcam streams through one model, newest frame first."""
    styles = demo.library.styles
    with gr.Tab("Live camera"):
        with gr.Row():
            camera = gr.Image(label="Camera", sources=["webcam"], streaming=True, type="numpy", height=360, elem_id="camera")
            result = gr.Image(label="Stylised", interactive=False, format="jpeg", height=360, elem_id="live-result")
        with gr.Row():
            style = gr.Dropdown([(pretty(s), s) for s in styles], value=styles[0], label="Style", elem_id="live-style")
            norm = gr.Radio(label="Normalisation", elem_id="live-norm", **demo.live_norms(styles[0]))
            size = gr.Slider(LIVE_SIZE_MIN, LIVE_SIZE_MAX, value=LIVE_SIZE_DEFAULT, step=32,
                             label="Size (long side, pixels)", elem_id="live-size")  # fmt: skip
        gr.Markdown(LIVE_HELP)
    # Gradio hands a stream event only the newest frame once the previous call returns; the lock in
    # live_frame drops frames in any other case (another viewer, a raised concurrency limit).
    camera.stream(demo.live_frame, [camera, style, norm, size], result, stream_every=LIVE_EVERY_S,
                  time_limit=LIVE_TIME_LIMIT_S, concurrency_limit=1, trigger_mode="always_last",
                  show_progress="hidden", api_visibility="private")  # fmt: skip
    style.change(lambda s: gr.Radio(**demo.live_norms(s)), style, norm, api_visibility="private", concurrency_limit=2)


def add_controls() -> list:
    """Strength, preserve colour and stroke scale, in the order of StyleDemo.stylize's parameters."""
    strength = gr.Slider(0, 1, value=1, step=0.05, label="Strength (0: the photo, 1: full stylisation)",
                         elem_id="strength")  # fmt: skip
    preserve = gr.Checkbox(False, label="Preserve colour (the photo's colours, the style's strokes)", elem_id="preserve-color")
    stroke = gr.Slider(STROKE_SCALE_MIN, STROKE_SCALE_MAX, value=1, step=0.1, label="Stroke scale (bigger or finer strokes)",
                       elem_id="stroke-scale")  # fmt: skip
    return [strength, preserve, stroke]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (Gradio itself would print port 0 as the URL)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **options):
    """Serve ``app`` with the demo's limits; returns Gradio's (app, local URL, share URL)."""
    return app.launch(
        server_name=host,
        server_port=port or free_port(host),
        share=share,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(EXAMPLES)],
        **options,
    )


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description="Web demo: stylise a photo with BN, IN, BN+SE and IEBN side by side.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--listen", action="store_true", help="listen on all interfaces (0.0.0.0) so other machines can connect")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link (needs internet)")
    p.add_argument("--checkpoints", type=Path, help="folder of <style>/<norm>.safetensors, shown with the shipped models "
                   "(a style there hides the shipped one of that name; default: $STYLETRANSFER_MODELS if set)")
    p.add_argument("--styles", type=Path, help="folder of style images, <style>.jpg etc., searched before the shipped ones")
    p.add_argument("--max-concurrency", type=int, default=1, help="requests stylised at once; others wait in the queue (default 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    if args.max_concurrency < 1:
        p.error("--max-concurrency must be at least 1")
    if not 0 <= args.port <= 65535:
        p.error("--port must be between 0 and 65535")
    return args


def found_line(library: StyleLibrary) -> str:
    folders = ", ".join(str(f) for f in library.folders)
    if not library.styles:
        return f"no checkpoints in {folders}; the page explains how to train one"
    count = sum(len(norms) for norms in library.by_style.values())
    return f"{count} models of the styles {', '.join(library.styles)} (from {folders})"


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse the demo's flags (``argv``, default the command line's), build the page and serve it until Ctrl-C."""
    args = parse_args(argv, prog)
    try:
        app = build_app(args.checkpoints, args.styles, args.device, args.max_concurrency)
    except StyleTransferError as e:
        sys.exit(f"error: {e}")
    for line in app.demo.library.skipped:
        print(f"warning: skipped {line}", file=sys.stderr, flush=True)
    print(found_line(app.demo.library), flush=True)
    host = "0.0.0.0" if args.listen else args.host
    try:
        _, url, share_url = launch(app, host, args.port, args.share, prevent_thread_lock=True, quiet=True)
    except OSError:  # Gradio's message names its own launch() arguments; say it in this command's terms
        sys.exit(f"error: cannot listen on {host}:{args.port} (in use, or not an address of this machine); "
                 "choose another --port, or --port 0 for a free one")  # fmt: skip
    print(f"Web demo running on {url} (Ctrl-C stops it)", flush=True)
    if share_url:
        print(f"Public link: {share_url}", flush=True)
    app.block_thread()


if __name__ == "__main__":
    main()
