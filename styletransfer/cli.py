"""The ``styletransfer`` command: train, stylize, compare, plot, list, export, evaluate, demo.

The ``train`` options are derived from :class:`styletransfer.config.TrainConfig`'s fields
(names, help text, defaults); the other commands import their modules only when they run.
"""

from __future__ import annotations

import inspect
import os
import sys
import typing
import warnings
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import TrainConfig
from .errors import StyleTransferError, TrainingDiverged, TrainingInterrupted, one_line, one_line_warning
from .grain import FLAT_GRAIN_FACTOR, GRAIN_MAX, STYLISE_GRAIN

__all__ = ["app", "main"]

app = typer.Typer(
    help="Real-time neural style transfer, and a side-by-side comparison of BN, IN, BN+SE and IEBN.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)
MODEL_HELP = ("Checkpoint file, exported .onnx model, or a model name (see `styletransfer list`): STYLE/NORM, or STYLE alone for "
              "its IEBN model, the paper's norm.")  # fmt: skip
MODELS_HELP = "Checkpoint files or model names, STYLE/NORM, or STYLE meaning all its models. Repeatable."
CHECKPOINTS_HELP = ("Folder searched for model names before the shipped models. "
                    "\\[default: $STYLETRANSFER_MODELS if set]")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Entry point: every StyleTransferError becomes one line on stderr and exit code 1, a
    command line that does not parse (an unknown option, a value of the wrong type) one line and
    exit code 2."""
    previous_format, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        _run_app(argv)
    except TrainingInterrupted as e:
        if _process_rank() == 0:  # all processes stop together; the main one reports
            err.print(f"[yellow]stopped:[/yellow] {e}", highlight=False, soft_wrap=True)
        sys.exit(130)
    except StyleTransferError as e:
        rank = _process_rank()
        if rank == 0 or not isinstance(e, TrainingDiverged):
            where = f"rank {rank}: " if rank else ""
            err.print(f"[red]error:[/red] {where}{e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    finally:
        warnings.formatwarning = previous_format


def _run_app(argv: list[str] | None) -> None:
    """The command line run; one that does not parse (typer's usage errors) is one line, exit code 2."""
    try:
        code = app(args=argv, prog_name="styletransfer", standalone_mode=False)
    except typer.TyperException as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # that one has shown the help already
            ctx = getattr(e, "ctx", None)
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            err.print(f"[red]error:[/red] {one_line(e.format_message())}{where}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        raise KeyboardInterrupt from None  # reported as an interrupt, as Ctrl-C anywhere else
    if code:  # --help and the like return their exit code
        sys.exit(code)


def _process_rank() -> int:
    """This process's rank under torchrun, 0 otherwise: rank 0 reports what all processes share."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def _option_type(f) -> type:
    """The command-line type of config field ``f``: its type without None; paths as Path."""
    if f.metadata.get("path"):
        return Path
    hint = typing.get_type_hints(TrainConfig)[f.name]
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def _option_help(f) -> str:
    default = f.metadata.get("default_text")
    if default is None and f.default is not MISSING:
        default = ("on" if f.default else "off") if isinstance(f.default, bool) else f.default
    return f.metadata["help"] + (f" \\[default: {default}]" if default is not None else "")


def _config_option(f) -> inspect.Parameter:
    """A ``train`` option for config field ``f``: None (not given) unless the user gives it; the
    run folder, which even a resumed run needs, is required."""
    option = typer.Option(*f.metadata.get("flags", ()), help=_option_help(f), envvar=f.metadata.get("envvar"),
                          show_default=False)  # fmt: skip
    if f.name == "out":
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[Path, option])
    annotation = Annotated[Optional[_option_type(f)], option]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def train(resume: bool = False, **given) -> None:
    """Train a transformation network for one style with one normalisation.

    Example: styletransfer train --style starry.jpg --content-dir photos/ --norm iebn --out runs/starry-iebn

    On several GPUs or machines, start it with torchrun (--batch-size is then per process):
    torchrun --nproc_per_node=4 -m styletransfer train ...
    """
    from .train import train_run

    options = {name: value for name, value in given.items() if value is not None}
    for f in fields(TrainConfig):  # absolute paths, so a run can be resumed from any working folder
        if f.metadata.get("path") and f.name in options:
            options[f.name] = str(options[f.name].resolve())
    options["out"] = str(options["out"])
    ckpt = train_run(options, resume=resume, console=err)
    if _process_rank() == 0:
        err.print(f"done: {ckpt}")


_RESUME = inspect.Parameter(
    "resume", inspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")],
)  # fmt: skip
train.__signature__ = inspect.Signature(
    [_config_option(f) for f in fields(TrainConfig) if f.metadata.get("cli", True)] + [_RESUME]
)
app.command()(train)


# The stylisation controls, shared by stylize and compare (styletransfer.controls.Controls).
Strength = Annotated[float, typer.Option(
    help="Mix of stylisation and photo, 0 to 1: 1 is the stylisation, 0 the photo back, 0.5 half of each "
    "(a linear blend of the RGB values).")]  # fmt: skip
PreserveColor = Annotated[bool, typer.Option(
    "--preserve-color", help="Keep the photo's colours: the stylisation's luminance with the photo's chrominance "
    "(YIQ; Gatys et al. 2016, luminance-only transfer).")]  # fmt: skip
StrokeScale = Annotated[float, typer.Option(
    help="Brush strokes this many times as big (0.5 to 3) at the same output size: the network runs on the "
    "image scaled by 1/S. Below 1 costs 1/S² the time and memory.")]  # fmt: skip
Grain = Annotated[float, typer.Option(
    help="Noise added to the photo the network sees, 0 to 32 (standard deviation in 8-bit steps; 0: none), so "
    f"flat regions such as a clipped sky get strokes instead of a blotch of one colour. Flat regions get "
    f"{FLAT_GRAIN_FACTOR:g} times this (at most {GRAIN_MAX:g}), textured ones this.")]  # fmt: skip


@app.command()
def stylize(
    inputs: Annotated[
        list[Path], typer.Argument(help="Image and video files, and/or folders of them; - reads one image from standard input.")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Output file for one input (.png/.jpg/.webp for an image; .mp4/.mov/.mkv (H.264) or .webm (VP9) for a "
            "video), else a folder (images as PNG, videos in their own container, or MP4); - writes the image to "
            "standard output.",
        ),
    ] = Path("stylized"),
    max_size: Annotated[
        int, typer.Option(help="Scale images and video frames down so the long side is at most this; 0 keeps the size.")
    ] = 1024,
    strength: Strength = 1.0,
    preserve_color: PreserveColor = False,
    stroke_scale: StrokeScale = 1.0,
    grain: Grain = STYLISE_GRAIN,
    format_name: Annotated[
        Optional[str], typer.Option("--format", help="Image type for -o -: png, jpg or webp. \\[default: png]")
    ] = None,
    json_records: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON record per image or video to standard output (input, output, "
                     "model, size, seconds, controls; or error); messages stay on standard error."),
    ] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16 (CUDA).")] = "auto",
    tile: Annotated[
        str,
        typer.Option(
            help="Stylise in overlapping tiles, with the statistics of the whole image (same result, less "
            "memory, extra passes): auto (only images over the memory budget, 1.5 GiB on the CPU), off, "
            "or a tile side in pixels.",
        ),
    ] = "auto",
    compile_choice: Annotated[
        str,
        typer.Option(
            "--compile",
            help="Compile the network (torch.compile): 1.06x-1.19x faster per image on an AMD EPYC, 1.04x-1.6x on a Xeon "
            "with AMX; compiling takes 20-40 s "
            "per image size the first time, 10-15 s once cached. auto: on the CPU when the pictures of "
            "one size add up to 300 x 2^20 pixels (300 of 1024x1024, or 530 video frames of 1024x576; "
            "on a GPU it was measured no faster); on; off.",
        ),
    ] = "auto",
    checkpoints: Annotated[Optional[Path], typer.Option(help=CHECKPOINTS_HELP, show_default=False)] = None,
) -> None:
    """Stylise images and videos with a trained model, keeping each one's aspect ratio.

    Videos keep their frame rate and sound, are turned upright if the file says they are rotated,
    and show a progress bar (frames, frames per second, time left).

    Examples: styletransfer stylize photo.jpg -m starry_night/iebn -o photo-starry.jpg
              styletransfer stylize clip.mp4 -m wave/in -o clip-wave.mp4

    In a pipe: styletransfer stylize - -m starry_night/iebn -o - < photo.jpg > stylised.png
    """
    from .controls import Controls
    from .streams import check_stream_options, stream_format
    from .stylize import stylize_files
    from .tiling import parse_tile, tile_progress
    from .video import video_progress

    if max_size < 0:
        raise StyleTransferError("--max-size must be 0 (no limit) or positive")
    if compile_choice not in ("auto", "on", "off"):
        raise StyleTransferError(f"--compile {compile_choice!r} is not one of: auto, on, off")
    tile = parse_tile(tile)
    controls = Controls(strength, preserve_color, stroke_scale, grain)
    check_stream_options(inputs, output, format_name, json_records)
    path, stylizer = _open_stylizer(model, checkpoints, device, precision)
    if _should_compile(compile_choice, stylizer, inputs, max_size or None):
        stylizer.compile()
        err.print("compiling the network: the first picture of each size takes longer (--compile off skips this)",
                  highlight=False, soft_wrap=True)  # fmt: skip
    progress = video_progress(err)
    try:
        with tile_progress(err) as tiles:
            results = stylize_files(stylizer, inputs, output, max_size or None, progress, controls=controls,
                                    stream_format=stream_format(format_name), tile=tile, tile_progress=tiles)  # fmt: skip
    finally:
        if progress.live.is_started:  # only a run with videos started it
            progress.stop()
    _report(results, output)
    if json_records:
        _print_records(results, {"model": model, "model_path": str(path)}, stylizer, controls, max_size)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _open_stylizer(model: str, checkpoints: Path | None, device: str, precision: str):
    """The model's file and its stylizer (a .onnx model runs on onnxruntime); a note if a name picked a norm."""
    from .models import resolve_model
    from .onnx_export import open_model

    path, note = resolve_model(model, checkpoints)
    if note:
        err.print(note, highlight=False, soft_wrap=True)
    return path, open_model(path, device, precision)


def _should_compile(choice: str, stylizer, inputs: list[Path], max_size: int | None) -> bool:
    """``on``, or ``auto`` where compiling pays: enough images of one size, on a device where the
    compiled network is faster (torch models only)."""
    if choice == "off" or not hasattr(stylizer, "compile"):
        return False
    from .compiled import worth_compiling
    from .stylize import expand_inputs

    return choice == "on" or worth_compiling(expand_inputs(inputs), max_size, device=stylizer.device.type)


def _print_records(results: list, model: dict, stylizer, controls, max_size: int) -> None:
    """One JSON object per line on standard output for each result (see the README's "Stylise");
    ``model``: the model as given and the file it resolved to."""
    import json

    for r in results:
        record = {
            "input": str(r.source), "output": str(r.output) if r.ok else None, **model,
            "style": stylizer.style, "norm": stylizer.norm, "size": f"{r.size[0]}x{r.size[1]}" if r.ok else None,
            "seconds": round(r.seconds, 4) if r.ok else None, **controls.as_dict(), "max_size": max_size, "error": r.error,
        }  # fmt: skip
        print(json.dumps(record), flush=True)


def _report(results: list, output: Path) -> None:
    """One line per video written and per failed file, then how many images (and videos) were
    written, and where (not after the error of a single input)."""
    for r in results:
        if not r.ok:
            err.print(f"[red]error:[/red] {r.error}", highlight=False, soft_wrap=True)
        elif r.summary:
            err.print(f"{r.output}: {r.summary}", highlight=False, soft_wrap=True)
    written = [r.output for r in results if r.ok]
    if not written and len(results) == 1:
        return  # one input that failed: its error line says it all
    err.print(f"wrote {_written_counts(results)}{_where(written, len(results), output)}", soft_wrap=True,
              highlight=False)  # fmt: skip


def _where(written: list[Path], count: int, output: Path) -> str:
    if str(output) == "-":
        return " to standard output" if written else ""
    return f" to {output}" if count > 1 else f": {written[0]}" if written else ""


def _written_counts(results: list) -> str:
    """E.g. "3 image(s)", "1 video(s)", "2 image(s) and 1 video(s)"; "0 image(s)" when none."""
    videos = sum(1 for r in results if r.ok and r.summary)
    images = sum(1 for r in results if r.ok) - videos
    counts = [f"{n} {kind}(s)" for n, kind in ((images, "image"), (videos, "video")) if n]
    return " and ".join(counts) or "0 image(s)"


@app.command()
def compare(
    contents: Annotated[list[Path], typer.Argument(help="Content image(s): one row each.")],
    models: Annotated[list[str], typer.Option("--models", "-m", help=MODELS_HELP)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Grid image to write.")] = Path("compare.png"),
    size: Annotated[int, typer.Option(help="Side of each square cell in pixels.")] = 384,
    strength: Strength = 1.0,
    preserve_color: PreserveColor = False,
    stroke_scale: StrokeScale = 1.0,
    grain: Grain = STYLISE_GRAIN,
    checkpoints: Annotated[Optional[Path], typer.Option(help=CHECKPOINTS_HELP, show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Write one labelled grid: each content image, then its stylisation by each model."""
    from .compare import compare as make_grid
    from .controls import Controls
    from .data import load_image
    from .models import resolve_models
    from .stylize import Stylizer, output_format, refuse_overwriting_inputs, save_image

    output_format(output)
    refuse_overwriting_inputs(output, contents)
    if size < 16:
        raise StyleTransferError("--size must be at least 16")
    controls = Controls(strength, preserve_color, stroke_scale, grain)
    stylizers = [Stylizer.from_checkpoint(p, device) for p in resolve_models(models, checkpoints)]
    images = [load_image(p, max_size=4 * size) for p in contents]
    save_image(make_grid(images, stylizers, size, controls), output)
    err.print(f"wrote {output} ({len(images)} x {len(stylizers)} stylisations)")


@app.command()
def plot(
    runs: Annotated[
        list[str],
        typer.Argument(help="Run folders, loss logs (.jsonl/.jsonl.gz), checkpoints, or model names (STYLE/NORM, or "
                       "STYLE for all its models), each with the full loss log beside it if there is one."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Figure to write (.png, .svg, .pdf).")] = Path(
        "curves.png"
    ),
    smoothing: Annotated[float, typer.Option(help="EMA smoothing between 0 (none) and 0.99.")] = 0.9,
    title: Annotated[Optional[str], typer.Option(help="Figure title.")] = None,
    checkpoints: Annotated[Optional[Path], typer.Option(help=CHECKPOINTS_HELP, show_default=False)] = None,
) -> None:
    """Plot content, style, tv and total loss against iteration for several runs, one colour per norm.

    Example: styletransfer plot starry_night -o curves.png
    """
    from .plot import load_run, plot_runs

    if not 0 <= smoothing < 1:
        raise StyleTransferError("--smoothing must be in [0, 1)")
    plot_runs([load_run(r) for r in _plot_sources(runs, checkpoints)], output, smoothing, title)
    err.print(f"wrote {output}")


def _plot_sources(runs: list[str], checkpoints: Path | None) -> list[Path]:
    """Paths as given; a model name becomes the loss log shipped beside each of its models, else the model."""
    from .models import resolve_models
    from .runs import logs_beside_model

    sources = []
    for run in runs:
        if Path(run).exists():
            sources.append(Path(run))
            continue
        sources += [next(iter(logs_beside_model(m)), m) for m in resolve_models([run], checkpoints)]
    return sources


@app.command("list")
def list_checkpoints(
    folder: Annotated[
        Optional[Path],
        typer.Argument(help="Only the checkpoints in this folder (searched recursively). "
                       "\\[default: the models -m can name: $STYLETRANSFER_MODELS, then the shipped ones]",
                       show_default=False),
    ] = None,
) -> None:
    """Show the models -m can name, or the checkpoints in FOLDER: name, norm, iterations, training size, final losses."""
    from .models import find_models, model_folders, scan_folder
    from .runs import train_hint

    folders = [folder] if folder is not None else model_folders()
    found, skipped = scan_folder(folder) if folder is not None else find_models()
    if not found:
        why = f" (skipped {len(skipped)} file(s): {skipped[0]})" if skipped else ""
        where = ", ".join(str(f) for f in folders)
        err.print(f"no checkpoints in {where}{why}; train one with: {train_hint()[0]}", soft_wrap=True,
                  highlight=False)  # fmt: skip
        raise typer.Exit(1)
    _print_models(folders, found, skipped)


def _print_models(folders: list[Path], found: list, skipped: list[str]) -> None:
    """A warning per file left out, then one table per folder that has models."""
    for line in skipped:
        err.print(f"[yellow]warning:[/yellow] skipped {line}", soft_wrap=True, highlight=False)
    for source in folders:
        models = [m for m in found if m.path.is_relative_to(source)]
        if models:
            Console(width=None if Console().is_terminal else 160).print(_models_table(source, models))


def _models_table(folder: Path, models: list) -> Table:
    """One row per model of ``folder``: the name -m takes, its file there, and what it was trained with."""
    from .models import SHIPPED_MODELS
    from .norms import norm_label

    table = Table(title=f"{'shipped models' if folder == SHIPPED_MODELS else 'checkpoints'} in {folder}")
    for col in ("name", "file", "norm", "iterations", "image size", "content", "style loss", "VGG"):
        table.add_column(col)
    for m in models:
        losses = m.meta.get("losses") or {}
        table.add_row(
            m.name,
            str(m.path.relative_to(folder)),
            norm_label(m.norm),
            str(m.meta.get("step", "?")),
            str(m.meta.get("image_size", "?")),
            f"{losses['content']:.3f}" if "content" in losses else "-",
            f"{losses['style']:.3f}" if "style" in losses else "-",
            m.meta.get("vgg", "?").split(" ")[0],
        )
    return table


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="A training checkpoint, or a model name (STYLE/NORM).", show_default=False)],
    output: Annotated[
        Path, typer.Argument(help="Where to write the compact model (.safetensors), or an ONNX model (.onnx).")
    ],
    half: Annotated[bool, typer.Option("--half/--full", help="Store weights as float16 (half the size).")] = True,
    checkpoints: Annotated[Optional[Path], typer.Option(help=CHECKPOINTS_HELP, show_default=False)] = None,
) -> None:
    """Write a compact copy of a checkpoint for sharing: weights and metadata, no optimiser state.

    The run's losses.jsonl, if beside the checkpoint, is copied next to it as NAME.losses.jsonl.gz.
    An output ending in .onnx gets instead an fp32 ONNX model for onnxruntime (needs the onnx extra).

    Example: styletransfer export runs/starry-iebn/checkpoint.safetensors models/starry/iebn.safetensors
    """
    import torch

    from .checkpoint import load_checkpoint, save_checkpoint
    from .models import resolve_model
    from .onnx_export import export_onnx, is_onnx_path
    from .runs import export_log, exported_log_path
    from .stylize import refuse_overwriting_inputs

    checkpoint, note = resolve_model(model, checkpoints)
    if note:
        err.print(note, highlight=False, soft_wrap=True)
    refuse_overwriting_inputs(output, [checkpoint])
    if is_onnx_path(output):
        export_onnx(checkpoint, output)
        err.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
        return
    if output.suffix != ".safetensors":
        raise StyleTransferError(f"{output}: the exported file must end in .safetensors or .onnx")
    refuse_overwriting_inputs(exported_log_path(output), [checkpoint.parent / "losses.jsonl"])
    ckpt = load_checkpoint(checkpoint)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "version", "optimizer")}
    save_checkpoint(output, ckpt.build_model(), meta, dtype=torch.float16 if half else None)
    err.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
    log_out = export_log(checkpoint, output)  # the full curve beside the model, compressed
    if log_out:
        err.print(f"wrote {log_out}")


@app.command()
def evaluate(
    photos: Annotated[Path, typer.Argument(help="Folder of held-out photos (searched recursively) the models never trained on.")],
    models: Annotated[Optional[list[str]], typer.Option("--models", "-m", help=MODELS_HELP)] = None,
    outputs: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--outputs",
            help="Folder of images stylised by any other tool, scored the same way. Matched by file name: the photo's "
            "stem, alone or followed by - _ . or a space (100007.png or 100007-starry.jpg for 100007.jpg). Photos "
            "without a match are left out of every row, with a warning. Repeatable.",
        ),
    ] = None,
    style: Annotated[
        Optional[Path],
        typer.Option(
            help="Style image. \\[default: each model's training style image; for --outputs, the one the models share]"
        ),
    ] = None,
    checkpoints: Annotated[Optional[Path], typer.Option(help=CHECKPOINTS_HELP, show_default=False)] = None,
    size: Annotated[int, typer.Option(help="Photos are scaled down to this long side (at most).")] = 512,
    style_size: Annotated[int, typer.Option(help="Long side of the style image for the style distance.")] = 512,
    limit: Annotated[int, typer.Option(help="Only the first N photos (in path order); 0 means all.")] = 0,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write per-photo scores and the summary as CSV.")] = None,
    json: Annotated[Optional[Path], typer.Option("--json", help="Write per-photo scores and the summary as JSON.")] = None,
    grid: Annotated[
        Optional[Path], typer.Option(help="Write a comparison grid of the first 4 photos (.png/.jpg/.webp).")
    ] = None,
    vgg_weights: Annotated[
        Optional[str],
        typer.Option(
            envvar="STYLETRANSFER_VGG_WEIGHTS",
            help="Local VGG19 weights file, as for train. Without it torchvision's ImageNet weights are downloaded once.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="Precision of the models: auto, fp32, bf16 or fp16 (CUDA).")] = "auto",
    grain: Annotated[float, typer.Option(
        help="Noise the models add to each photo, as stylize's --grain (0 to 32; 0: none). --outputs folders are "
        "scored as they are.")] = STYLISE_GRAIN,  # fmt: skip
) -> None:
    """Score stylisation quality on held-out photos, one table row per model or folder.

    Example: styletransfer evaluate photos/test -m starry_night -m wave --size 256 --csv scores.csv

    Another tool's results, beside the model's: styletransfer evaluate photos/test -m starry_night --outputs other/

    Metrics (mean ± standard error over photos): content distance, ||F(out) - F(photo)||² / ||F(photo)||²
    with F the VGG19 relu4_2 features; style distance, the same relative error between Gram matrices
    of the output and of the style image, averaged over relu1_1 ... relu5_1 (Gatys et al. 2016);
    blotch area, the fraction of the output in patches without strokes (31 px squares whose fine
    detail has an RMS under 1 % of the range); the training loss terms (content, style, tv, total)
    with each model's own training settings (a folder: those the models share, else none); seconds
    per image, the model alone, after a warm-up.
    """
    from .evaluate import GRID_CELL, run
    from .evaluate_report import grid_image, summary_table, write_csv, write_json
    from .stylize import save_image

    ev = run(photos, models or [], outputs or [], style, checkpoints, size, style_size, limit or None,
             vgg_weights, device, precision, grid, console=err, grain=grain)  # fmt: skip
    Console(width=None if Console().is_terminal else 200).print(summary_table(ev))
    for path, write in ((csv, write_csv), (json, write_json)):
        if path is not None:
            write(ev, path)
            err.print(f"wrote {path}", highlight=False)
    if grid is not None:
        save_image(grid_image(ev, min(GRID_CELL, size)), grid)
        err.print(f"wrote {grid}", highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def demo(ctx: typer.Context) -> None:
    """Start the web demo: stylise a photo with every norm of a style, side by side (--help lists its options).

    Example: styletransfer demo --port 7860, then open http://127.0.0.1:7860
    """
    from .demo import main as serve

    serve(ctx.args, prog="styletransfer demo")
