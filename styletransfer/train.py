"""Training a transformation network for one style: setup, then one readable loop.

A run lives in one folder (see :mod:`styletransfer.runs`): the checkpoint is rewritten
atomically every ``checkpoint_every`` steps, at the end and on Ctrl-C, and the loss log gets
one line per step. Batches are a pure function of (seed, step), so a resumed run sees exactly
the batches an uninterrupted run would have seen.

Per step: content photos -> network -> perceptual loss (VGG) -> Adam.
"""

from __future__ import annotations

import math
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .compiled import compile_loss
from .config import TrainConfig
from .data import ContentImages, StepBatches, image_to_tensor, load_style_image
from .devices import autocast, resolve_precision
from .distributed import (
    Processes,
    device_for,
    from_environment,
    process_group,
    same_everywhere,
    summarise_step,
    wait_for_all,
    wrap,
)
from .errors import StyleTransferError, TrainingDiverged, TrainingInterrupted, one_line
from .grain import training_grain
from .loss import RANDOM_WEIGHTS, LossWeights, PerceptualLoss, load_vgg_features
from .network import TransformerNet
from .norms import NORMS
from .runs import LOG_NAME, LOSS_TERMS, LossLog, checkpoint_path, remove_stale_temporaries
from .syncbn import use_global_batch_statistics

__all__ = ["TrainConfig", "start_run", "train", "train_run"]


def train(cfg: TrainConfig, resume: bool = False, console: Console | None = None) -> Path:
    """Train the run ``cfg`` describes, or with ``resume`` continue it; returns the checkpoint path.

    Raises StyleTransferError (one line) for bad settings or files, TrainingDiverged when the
    loss or weights stop being finite, TrainingInterrupted after Ctrl-C (checkpoint saved).
    """
    return train_run(asdict(cfg), resume, console)


def train_run(options: dict, resume: bool = False, console: Console | None = None) -> Path:
    """Train with the settings in ``options`` (TrainConfig field names; only those the user gave
    when resuming); see :func:`start_run` for how a run starts or continues.

    Under torchrun every process calls this and they train one model together
    (DistributedDataParallel); only the main process writes the log and checkpoints.
    """
    procs = from_environment()
    console = console or Console(stderr=True)
    if not procs.is_main:
        console = Console(stderr=True, quiet=True)
    cfg, checkpoint = start_run(options, resume, console)
    cfg = replace(cfg, world_size=procs.world_size, sync_bn=sync_bn_choice(cfg, procs))
    cfg.validate()
    device = device_for(procs, cfg.device)
    with process_group(procs, device):
        # Agree first, so that all processes go on or all stop with the same error.
        if not same_everywhere(procs, checkpoint is not None, device):
            raise StyleTransferError(
                f"only some training processes find {checkpoint_path(cfg.out)}; "
                "every machine must see the same --out folder"
            )
        return training_loop(setup(cfg, checkpoint, procs, device, console))


def start_run(options: dict, resume: bool, console: Console) -> tuple[TrainConfig, Checkpoint | None]:
    """The one place that decides between a new run and a resumed one.

    ``options``: settings by TrainConfig field name (``out`` required). Returns the run's config
    and, when resuming, its checkpoint (read once, optimiser state included); a new run returns
    None. Raises StyleTransferError when ``out`` already holds a run and ``resume`` is false,
    when resuming would change a setting that must stay, or when a new run lacks style photos.
    """
    run_dir = Path(options["out"])
    ckpt_path = checkpoint_path(run_dir)
    if ckpt_path.exists():
        if not resume:
            raise StyleTransferError(f"{run_dir} already holds a run; add --resume to continue it or choose another --out")
        checkpoint = load_checkpoint(ckpt_path, with_optimizer=True)
        if checkpoint.optimizer_state is None:
            raise StyleTransferError(f"{ckpt_path}: holds no optimiser state, so it cannot be resumed")
        return saved_config(checkpoint).resumed_with(options), checkpoint
    if resume:
        console.print(f"{ckpt_path} not found: starting {run_dir} from step 0")
    missing = [f"--{n.replace('_', '-')}" for n in ("style", "content_dir") if options.get(n) is None]
    if missing:
        raise StyleTransferError(f"train needs {' and '.join(missing)}")
    return TrainConfig(**options), None


def saved_config(checkpoint: Checkpoint) -> TrainConfig:
    """The training config stored in a run's checkpoint; StyleTransferError if it is not a valid one."""
    try:
        cfg = TrainConfig.from_metadata(checkpoint.meta.get("config") or {})
        cfg.validate()
    except (TypeError, StyleTransferError) as e:
        raise StyleTransferError(f"{checkpoint.path}: not a valid styletransfer checkpoint: config ({one_line(e)})") from None
    return cfg


@dataclass
class Training:
    """Everything the loop works with, built by :func:`setup`."""

    cfg: TrainConfig
    procs: Processes
    device: torch.device
    console: Console
    model: torch.nn.Module  # the plain network (what is saved)
    net: torch.nn.Module  # the same, wrapped for DistributedDataParallel when distributed
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module  # the PerceptualLoss, compiled or not
    loader: DataLoader
    amp_dtype: torch.dtype
    memory_format: torch.memory_format
    start_step: int

    @property
    def ckpt_path(self) -> Path:
        return checkpoint_path(self.cfg.out)


def setup(cfg: TrainConfig, checkpoint: Checkpoint | None, procs: Processes, device, console: Console) -> Training:
    """Model (restored when resuming), optimiser, loss and data, on ``device``."""
    torch.manual_seed(cfg.seed)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg, checkpoint, procs, device, memory_format)
    optimizer = build_optimizer(cfg, model, checkpoint)
    start_step = checkpoint.meta["step"] if checkpoint else 0
    if checkpoint:  # said once the checkpoint has been restored, not when it fails to fit
        console.print(f"resuming {cfg.out} at step {start_step}")
        note_process_change(checkpoint, procs, console)
    if procs.distributed:
        console.print(describe_processes(cfg, procs, device))
    amp_dtype = resolve_precision(cfg.precision, device)
    loss_fn = build_loss(cfg, device, memory_format)
    if cfg.compile:
        console.print("compiling the loss: the first step takes 10-40 s longer")
        loss_fn = compile_loss(loss_fn)
    return Training(
        cfg, procs, device, console, model, wrap(model, procs, device), optimizer, loss_fn,
        build_loader(cfg, procs, device, start_step, console), amp_dtype, memory_format, start_step,
    )  # fmt: skip


def build_model(cfg: TrainConfig, checkpoint: Checkpoint | None, procs: Processes, device, memory_format):
    """The network in training mode on ``device``, with the checkpoint's weights when resuming."""
    model = TransformerNet(cfg.norm, cfg.norm_options)
    if procs.distributed and cfg.sync_bn:
        model = use_global_batch_statistics(model, dist.group.WORLD)
    if checkpoint:
        checkpoint.load_into(model)
    return model.to(device, memory_format=memory_format).train()


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, checkpoint: Checkpoint | None):
    """Adam over the model's parameters; when resuming, its state moves to their device as it loads."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if checkpoint:
        try:
            optimizer.load_state_dict(checkpoint.optimizer_state)
            check_optimizer_shapes(optimizer)
        except (ValueError, KeyError, TypeError) as e:
            raise StyleTransferError(f"{checkpoint.path}: its optimiser state does not fit the network ({e})") from None
    return optimizer


def build_loss(cfg: TrainConfig, device, memory_format) -> PerceptualLoss:
    """The perceptual loss against the style image, on ``device``."""
    style_image = load_style_image(cfg.style, cfg.style_size)
    return PerceptualLoss(
        load_vgg_features(cfg.vgg, cfg.vgg_weights),
        image_to_tensor(style_image).to(device),
        cfg.vgg,
        LossWeights(cfg.content_weight, cfg.style_weight, cfg.tv_weight),
        cfg.content_layer,
        tuple(cfg.style_layers),
    ).to(device, memory_format=memory_format)


def build_loader(cfg: TrainConfig, procs: Processes, device, start_step: int, console: Console) -> DataLoader:
    """Content photos in batches that are a pure function of (seed, step), from ``start_step`` on."""
    data = ContentImages(cfg.content_dir, cfg.image_size)
    if data.skipped:
        console.print(skipped_line(data.skipped, cfg.content_dir), soft_wrap=True, highlight=False)
    workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
    batches = StepBatches(len(data), cfg.batch_size, cfg.seed, start_step, cfg.iterations, procs.rank, procs.world_size)
    return DataLoader(data, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda")


def training_loop(t: Training) -> Path:
    """The loop: one optimiser step per batch, logged; checkpoints on schedule, at the end and on Ctrl-C."""
    cfg, run_dir = t.cfg, Path(t.cfg.out)
    scaler = torch.amp.GradScaler(t.device.type, enabled=t.amp_dtype == torch.float16)
    log = LossLog(run_dir / LOG_NAME)
    if t.procs.is_main:
        log.truncate(t.start_step)
        remove_stale_temporaries(run_dir)
    recent = deque(maxlen=max(1, cfg.iterations // 10))  # the final losses are averaged over these
    stop = StopRequest()
    with stop, training_progress(t.console, t.start_step, cfg.iterations) as progress:
        for step, content in enumerate(t.loader, start=t.start_step + 1):
            losses = training_step(t, content, step, scaler)
            # After the update, so the (one) exchange between processes does not stall the GPU.
            values, stop_now = summarise_step(t.procs, losses, stop.requested)
            refuse_non_finite_loss(values, step, t.ckpt_path)
            if t.procs.is_main:
                log.write(step, values)
                recent.append(values)
                progress(step, values)
                if step % cfg.checkpoint_every == 0 or step == cfg.iterations or stop_now:
                    save(t, step, recent, log)
            if stop_now:
                stop_all(t, step)
    if t.start_step >= cfg.iterations:
        t.console.print(f"{run_dir} already trained for {t.start_step} steps; raise --iterations to train further")
    log.close()
    return t.ckpt_path


def training_step(t: Training, content: torch.Tensor, step: int, scaler: torch.amp.GradScaler) -> dict[str, torch.Tensor]:
    """One optimiser update on a batch of content photos (B, 3, S, S) in [0, 1]; returns the loss terms.

    The network sees the photos with grain; the content loss compares its output with the clean photos.
    """
    content = content.to(t.device, non_blocking=True)
    grainy = training_grain(content, t.cfg.grain, t.cfg.seed, step, first=t.procs.rank * content.shape[0])
    grainy, content = (x.contiguous(memory_format=t.memory_format) for x in (grainy, content))
    with autocast(t.device, t.amp_dtype):
        losses = t.loss_fn(t.net(grainy), content)
    t.optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    scaler.step(t.optimizer)
    scaler.update()
    return losses


def save(t: Training, step: int, recent, log: LossLog) -> None:
    refuse_non_finite_weights(t.model, step, t.ckpt_path)
    save_checkpoint(t.ckpt_path, t.model, checkpoint_metadata(t.cfg, step, recent, log), t.optimizer)


def stop_all(t: Training, step: int) -> None:
    """After Ctrl-C: every process stops at this step, once rank 0 has written the checkpoint."""
    # torchrun stops the others as soon as one process exits with an error code.
    wait_for_all(t.procs)
    raise TrainingInterrupted(
        f"interrupted at step {step}; saved {t.ckpt_path}. Continue with: {resume_command(Path(t.cfg.out), t.procs)}"
    )


def note_process_change(checkpoint: Checkpoint, procs: Processes, console: Console) -> None:
    before = checkpoint.meta.get("config", {}).get("world_size", 1)
    if before != procs.world_size:
        console.print(
            f"it was trained on {before} process(es), now on {procs.world_size}: the global batch changes "
            "from here on (--batch-size is per process)"
        )


def skipped_line(skipped: list[Path], folder: str) -> str:
    names = ", ".join(p.name for p in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
    return f"skipped {len(skipped)} unreadable file(s) in {folder}: {names}"


def refuse_non_finite_loss(values: dict[str, float], step: int, ckpt_path: Path) -> None:
    if not all(math.isfinite(v) for v in values.values()):
        raise TrainingDiverged(
            f"loss became {values['total']} at step {step} ({last_good(ckpt_path)}); lower --lr and try again"
        )


def refuse_non_finite_weights(model: torch.nn.Module, step: int, ckpt_path: Path) -> None:
    """A finite loss can still come with a NaN or infinite update: such weights are never saved."""
    if all(torch.isfinite(p).all() for p in model.parameters()):
        return
    raise TrainingDiverged(
        f"weights became NaN or infinite at step {step} ({last_good(ckpt_path)}); lower --lr and try again"
    )


def last_good(ckpt_path: Path) -> str:
    return f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists() else "no checkpoint yet"


def sync_bn_choice(cfg: TrainConfig, procs: Processes) -> bool | None:
    """Under torchrun, whether the batch statistics span the global batch (default: yes, for bn, se, iebn)."""
    if not procs.distributed:
        return cfg.sync_bn
    return NORMS[cfg.norm].batch_statistics and cfg.sync_bn is not False


def describe_processes(cfg: TrainConfig, procs: Processes, device: torch.device) -> str:
    line = (
        f"{procs.world_size} processes ({dist.get_backend()} on {device.type}), {cfg.batch_size} images each, "
        f"global batch {cfg.batch_size * procs.world_size}"
    )
    if not NORMS[cfg.norm].batch_statistics:
        return line
    return line + ("; batch statistics over the global batch" if cfg.sync_bn else "; batch statistics per process")


def resume_command(run_dir: Path, procs: Processes) -> str:
    if procs.distributed:
        return f"torchrun <same options> -m styletransfer train --out {run_dir} --resume"
    return f"styletransfer train --out {run_dir} --resume"


def check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Adam's moments must have their parameter's shape; torch would only notice at the first step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"{name} has shape {tuple(value.shape)}, its parameter {tuple(param.shape)}")


def vgg_description(cfg: TrainConfig) -> str:
    if cfg.vgg_weights == RANDOM_WEIGHTS:
        return f"{cfg.vgg} (random weights)"
    if cfg.vgg_weights:
        return f"{cfg.vgg} ({Path(cfg.vgg_weights).name})"
    return f"{cfg.vgg} (torchvision IMAGENET1K_V1)"


def checkpoint_metadata(cfg: TrainConfig, step: int, recent, log: LossLog) -> dict:
    """What a checkpoint says about itself: enough to rebuild, label, plot and resume the run."""
    losses = {k: sum(r[k] for r in recent) / len(recent) for k in LOSS_TERMS} if recent else {}
    return {
        "norm": cfg.norm,
        "norm_options": cfg.norm_options,
        "style": cfg.style_name or Path(cfg.style).stem,
        "style_credit": cfg.style_credit,
        "step": step,
        "image_size": cfg.image_size,
        "grain": cfg.grain,  # the training photos' grain, 8-bit steps
        "vgg": vgg_description(cfg),
        "losses": losses,
        "history": log.history(),
        "config": cfg.to_metadata(),
    }


class StopRequest:
    """First Ctrl-C asks the loop to save and stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self.handle)
        except ValueError:  # not the main thread: leave Ctrl-C as it is
            self.previous = None
        return self

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class training_progress:
    """A rich progress bar on a terminal; a plain line every 50 steps otherwise (logs)."""

    def __init__(self, console: Console, start: int, total: int) -> None:
        self.console, self.start, self.total = console, start, total
        self.started = time.perf_counter()
        self.bar = None

    def __enter__(self):
        if self.console.is_terminal and not self.console.quiet:
            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"),
                console=self.console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, rate="", losses="")
        return self.update

    def update(self, step: int, values: dict) -> None:
        rate = (step - self.start) / max(time.perf_counter() - self.started, 1e-9)
        losses = "  ".join(f"{k} {values[k]:.4g}" for k in LOSS_TERMS)
        if self.bar is not None:
            self.bar.update(self.task, completed=step, rate=f"{rate:.2f} it/s", losses=losses)
        elif step % 50 == 0 or step == self.total:
            eta = (self.total - step) / max(rate, 1e-9)
            self.console.print(f"step {step}/{self.total}  {rate:.2f} it/s  eta {eta / 60:.1f} min  {losses}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
