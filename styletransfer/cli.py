"""The ``styletransfer`` command: train, stylize, compare, plot, list, export."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import StyleTransferError, TrainingDiverged, TrainingInterrupted

app = typer.Typer(
    help="Real-time neural style transfer, and a side-by-side comparison of BN, IN, BN+SE and IEBN.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)
DEFAULT_CHECKPOINTS = Path("checkpoints")


def main(argv: list[str] | None = None) -> None:
    """Entry point: every StyleTransferError becomes one line on stderr and exit code 1."""
    previous_format, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        app(args=argv, prog_name="styletransfer")
    except TrainingInterrupted as e:
        if process_rank() == 0:  # all processes stop together; the main one reports
            err.print(f"[yellow]stopped:[/yellow] {e}", highlight=False, soft_wrap=True)
        sys.exit(130)
    except StyleTransferError as e:
        rank = process_rank()
        if rank == 0 or not isinstance(e, TrainingDiverged):
            where = f"rank {rank}: " if rank else ""
            err.print(f"[red]error:[/red] {where}{e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    finally:
        warnings.formatwarning = previous_format


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings (such as a skipped training photo) as one line, without the source line."""
    return f"warning: {' '.join(str(message).split())}\n"


def process_rank() -> int:
    """This process's rank under torchrun, 0 otherwise: rank 0 reports what all processes share."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoint.safetensors and losses.jsonl go here.")],
    style: Annotated[Optional[Path], typer.Option(help="Style image (a painting).")] = None,
    content_dir: Annotated[
        Optional[Path], typer.Option(help="Folder of training photos, searched recursively.")
    ] = None,
    norm: Annotated[Optional[str], typer.Option(help="Normalisation: bn, in, se (BN+SE) or iebn.")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Total training steps. \\[default: 2000]")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of the square training crops. \\[default: 256]")] = None,
    style_size: Annotated[
        Optional[int], typer.Option(help="Long side the style image is scaled to. \\[default: 512]")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step. \\[default: 4]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate. \\[default: 1e-3]")] = None,
    content_weight: Annotated[Optional[float], typer.Option(help="Weight of the content loss. \\[default: 1]")] = None,
    style_weight: Annotated[Optional[float], typer.Option(help="Weight of the style loss. \\[default: 10]")] = None,
    tv_weight: Annotated[
        Optional[float], typer.Option(help="Weight of the total-variation loss. \\[default: 1]")
    ] = None,
    vgg: Annotated[Optional[str], typer.Option(help="Loss network: vgg16 (Johnson) or vgg19. \\[default: vgg16]")] = None,
    vgg_weights: Annotated[
        Optional[str],
        typer.Option(
            envvar="STYLETRANSFER_VGG_WEIGHTS",
            help="Local VGG weights file (torchvision state dict, full or features.* only), for offline use. "
            "Without it torchvision's ImageNet weights are downloaded once.",
        ),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for initialisation and batch order. \\[default: 0]")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Save every N steps. \\[default: 500]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (CUDA if available), cpu, cuda or cuda:N.")] = None,
    precision: Annotated[
        Optional[str],
        typer.Option(help="auto (bf16 where the hardware is fast at it), fp32, bf16, or fp16 (CUDA). \\[default: auto]"),
    ] = None,
    channels_last: Annotated[
        Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC memory layout. \\[default: on]")
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="Data loading processes. \\[default: 0 on CPU, 4 on CUDA]")
    ] = None,
    style_name: Annotated[Optional[str], typer.Option(help="Name stored in the checkpoint. \\[default: file name]")] = None,
    style_credit: Annotated[
        Optional[str], typer.Option(help='Credit stored in the checkpoint, e.g. "Vincent van Gogh, The Starry Night, 1889".')
    ] = None,
    sync_bn: Annotated[
        Optional[bool],
        typer.Option(
            "--sync-bn/--no-sync-bn",
            help="Under torchrun: take BN, BN+SE and IEBN batch statistics over the global batch of all "
            "processes, as on one GPU. \\[default: on]",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
) -> None:
    """Train a transformation network for one style with one normalisation.

    Example: styletransfer train --style starry.jpg --content-dir photos/ --norm iebn --out runs/starry-iebn

    On several GPUs or machines, start it with torchrun (--batch-size is then per process):
    torchrun --nproc_per_node=4 -m styletransfer train ...
    """
    given = {k: v for k, v in locals().items() if v is not None and k != "resume"}
    from .train import TrainConfig, config_for_resume
    from .train import train as run_training

    # Absolute paths, so a run can be resumed from any working directory.
    given = {k: str(v.resolve()) if isinstance(v, Path) and k != "out" else v for k, v in given.items()}
    if "out" in given:
        given["out"] = str(out)
    run_dir = Path(out)
    if resume and (run_dir / "checkpoint.safetensors").exists():
        cfg = config_for_resume(run_dir, given)
    else:
        missing = [f"--{n.replace('_', '-')}" for n in ("style", "content_dir") if n not in given]
        if missing:
            raise StyleTransferError(f"train needs {' and '.join(missing)}")
        cfg = TrainConfig(**given)
    ckpt = run_training(cfg, resume=resume, console=err)
    if process_rank() == 0:
        err.print(f"done: {ckpt}")


@app.command()
def stylize(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Checkpoint file (.safetensors) or exported .onnx model.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Output file (.png/.jpg/.webp) for one input, else a folder (PNG files)."
        ),
    ] = Path("stylized"),
    max_size: Annotated[int, typer.Option(help="Scale down so the long side is at most this; 0 keeps the size.")] = 1024,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16 (CUDA).")] = "auto",
) -> None:
    """Stylise images with a trained checkpoint, keeping each image's size and aspect ratio."""
    from rich.progress import track

    from .onnx_export import open_model
    from .stylize import stylize_files

    if max_size < 0:
        raise StyleTransferError("--max-size must be 0 (no limit) or positive")
    stylizer = open_model(model, device, precision)  # a .onnx model runs on onnxruntime
    written = []
    errors = stylize_files(stylizer, inputs, output, max_size or None, on_done=lambda src, dst: written.append(dst))
    for line in errors:
        err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
    ok = [p for p in written if p.exists()]
    where = f" to {output}" if len(written) > 1 else f": {ok[0]}" if ok else ""
    err.print(f"wrote {len(written) - len(errors)} image(s){where}", soft_wrap=True, highlight=False)
    if errors:
        raise typer.Exit(1)


@app.command()
def compare(
    contents: Annotated[list[Path], typer.Argument(help="Content image(s): one row each.")],
    models: Annotated[
        list[str],
        typer.Option("--models", "-m", help="Checkpoint files, or a style name meaning all its checkpoints."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Grid image to write.")] = Path("compare.png"),
    size: Annotated[int, typer.Option(help="Side of each square cell in pixels.")] = 384,
    checkpoints: Annotated[Path, typer.Option(help="Where style names are looked up.")] = DEFAULT_CHECKPOINTS,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Write one labelled grid: each content image, then its stylisation by each model."""
    from .compare import compare as make_grid
    from .compare import resolve_models
    from .data import load_image
    from .stylize import Stylizer, output_format, save_image

    output_format(output)
    if size < 16:
        raise StyleTransferError("--size must be at least 16")
    stylizers = [Stylizer(p, device) for p in resolve_models(models, checkpoints)]
    images = [load_image(p, max_size=4 * size) for p in contents]
    save_image(make_grid(images, stylizers, size), output)
    err.print(f"wrote {output} ({len(images)} x {len(stylizers)} stylisations)")


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, loss logs (.jsonl/.jsonl.gz) or checkpoints.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Figure to write (.png, .svg, .pdf).")] = Path(
        "curves.png"
    ),
    smoothing: Annotated[float, typer.Option(help="EMA smoothing between 0 (none) and 0.99.")] = 0.9,
    title: Annotated[Optional[str], typer.Option(help="Figure title.")] = None,
) -> None:
    """Plot content, style, tv and total loss against iteration for several runs, one colour per norm."""
    from .plot import load_run, plot_runs

    if not 0 <= smoothing < 1:
        raise StyleTransferError("--smoothing must be in [0, 1)")
    plot_runs([load_run(r) for r in runs], output, smoothing, title)
    err.print(f"wrote {output}")


@app.command("list")
def list_checkpoints(
    folder: Annotated[Path, typer.Argument(help="Folder searched for .safetensors checkpoints.")] = DEFAULT_CHECKPOINTS,
) -> None:
    """Show the checkpoints in a folder: style, norm, iterations, training size, final losses."""
    from .compare import find_checkpoints
    from .norms import NORM_LABELS

    found = find_checkpoints(folder)
    if not found:
        hint = "train one with: styletransfer train --style STYLE.jpg --content-dir PHOTOS --out runs/NAME"
        err.print(f"no checkpoints in {folder}; {hint}", soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    table = Table(title=f"checkpoints in {folder}")
    for col in ("file", "style", "norm", "iterations", "image size", "content", "style loss", "VGG"):
        table.add_column(col)
    for path, meta in found:
        losses = meta.get("losses") or {}
        table.add_row(
            str(path.relative_to(folder)),
            meta.get("style", "?"),
            NORM_LABELS[meta["norm"]],
            str(meta.get("step", "?")),
            str(meta.get("image_size", "?")),
            f"{losses['content']:.3f}" if "content" in losses else "-",
            f"{losses['style']:.3f}" if "style" in losses else "-",
            meta.get("vgg", "?").split(" ")[0],
        )
    Console(width=None if Console().is_terminal else 160).print(table)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A training checkpoint.")],
    output: Annotated[
        Path, typer.Argument(help="Where to write the compact model (.safetensors), or an ONNX model (.onnx).")
    ],
    half: Annotated[bool, typer.Option("--half/--full", help="Store weights as float16 (half the size).")] = True,
) -> None:
    """Write a compact copy of a checkpoint for sharing: weights and metadata, no optimiser state.

    The run's losses.jsonl, if beside the checkpoint, is copied next to it as NAME.losses.jsonl.gz.
    An output ending in .onnx gets instead an fp32 ONNX model for onnxruntime (needs the onnx extra).
    """
    import torch

    from .checkpoint import load_checkpoint, save_checkpoint
    from .onnx_export import export_onnx, is_onnx_path

    if is_onnx_path(output):
        export_onnx(checkpoint, output)
        err.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
        return
    if output.suffix != ".safetensors":
        raise StyleTransferError(f"{output}: the exported file must end in .safetensors or .onnx")
    ckpt = load_checkpoint(checkpoint)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "version", "optimizer")}
    save_checkpoint(output, ckpt.build_model(), meta, dtype=torch.float16 if half else None)
    err.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
    log = checkpoint.parent / "losses.jsonl"
    if log.exists():  # keep the full curve beside the model, compressed
        import gzip

        from .checkpoint import atomic_write

        log_out = output.with_name(output.stem + ".losses.jsonl.gz")
        atomic_write(log_out, gzip.compress(log.read_bytes(), mtime=0))
        err.print(f"wrote {log_out}")
