"""Training a transformation network for one style: one readable loop.

A run lives in one folder: ``checkpoint.safetensors`` (the latest model, optimiser and
step, rewritten atomically every ``checkpoint_every`` steps, at the end and on Ctrl-C) and
``losses.jsonl`` (one line per step). Batches are a pure function of (seed, step), so a
resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .data import ContentImages, StepBatches, image_to_tensor, load_image
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
from .errors import StyleTransferError, TrainingDiverged, TrainingInterrupted
from .loss import RANDOM_WEIGHTS, STYLE_LAYERS, LossWeights, PerceptualLoss, load_vgg_features
from .network import TransformerNet
from .norms import NORM_NAMES
from .syncbn import use_global_batch_statistics

CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "losses.jsonl"
LOSS_TERMS = ("content", "style", "tv", "total")
HISTORY_POINTS = 200  # loss curve points kept inside each checkpoint's metadata
BATCH_STATISTICS_NORMS = ("bn", "se", "iebn")


@dataclass
class TrainConfig:
    style: str
    content_dir: str
    out: str
    norm: str = "iebn"
    iterations: int = 2000
    image_size: int = 256
    style_size: int = 512
    batch_size: int = 4
    lr: float = 1e-3
    content_weight: float = LossWeights.content
    style_weight: float = LossWeights.style
    tv_weight: float = LossWeights.tv
    vgg: str = "vgg16"
    vgg_weights: str | None = None
    content_layer: str = "relu2_2"
    style_layers: tuple[str, ...] = STYLE_LAYERS
    seed: int = 0
    checkpoint_every: int = 500
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    workers: int | None = None
    style_name: str | None = None
    style_credit: str | None = None
    norm_options: dict = field(default_factory=dict)
    sync_bn: bool | None = None  # under torchrun: None means on for bn, se and iebn
    world_size: int = 1  # processes training together (set from torchrun's environment)

    # Settings that may change when a run is resumed; all others must stay as they were.
    RESUMABLE = (
        "iterations", "checkpoint_every", "device", "precision", "channels_last", "workers", "vgg_weights",
        "sync_bn", "world_size",
    )  # fmt: skip


def train(cfg: TrainConfig, resume: bool = False, console: Console | None = None) -> Path:
    """Train (or resume) the run in ``cfg.out``; returns the checkpoint path.

    Under torchrun every process calls this and they train one model together
    (DistributedDataParallel); only the main process writes the log and checkpoints.
    """
    procs = from_environment()
    console = console or Console(stderr=True)
    if not procs.is_main:
        console = Console(stderr=True, quiet=True)
    cfg = replace(cfg, world_size=procs.world_size, sync_bn=sync_bn_choice(cfg, procs))
    validate(cfg)
    device = device_for(procs, cfg.device)
    with process_group(procs, device):
        return train_model(cfg, resume, console, procs, device)


def train_model(cfg: TrainConfig, resume: bool, console: Console, procs: Processes, device: torch.device) -> Path:
    run_dir = Path(cfg.out)
    ckpt_path = run_dir / CHECKPOINT_NAME
    amp_dtype = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)

    model = TransformerNet(cfg.norm, cfg.norm_options)
    if procs.distributed and cfg.sync_bn:
        model = use_global_batch_statistics(model, dist.group.WORLD)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # Agree first, so that all processes go on or all stop with the same error.
    if not same_everywhere(procs, ckpt_path.exists(), device):
        raise StyleTransferError(
            f"only some training processes find {ckpt_path}; every machine must see the same --out folder"
        )
    start_step = restore(model, optimizer, ckpt_path, resume, console, procs)
    model.to(device).train()
    optimizer_to(optimizer, device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    net = wrap(model, procs, device)
    if procs.distributed:
        console.print(describe_processes(cfg, procs, device))

    style_image = load_image(cfg.style, max_size=cfg.style_size)
    loss_fn = PerceptualLoss(
        load_vgg_features(cfg.vgg, cfg.vgg_weights),
        image_to_tensor(style_image).to(device),
        cfg.vgg,
        LossWeights(cfg.content_weight, cfg.style_weight, cfg.tv_weight),
        cfg.content_layer,
        tuple(cfg.style_layers),
    ).to(device, memory_format=memory_format)
    data = ContentImages(cfg.content_dir, cfg.image_size)
    if data.skipped:
        console.print(skipped_line(data.skipped, cfg.content_dir), soft_wrap=True, highlight=False)
    workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
    loader = DataLoader(
        data,
        batch_sampler=StepBatches(
            len(data), cfg.batch_size, cfg.seed, start_step, cfg.iterations, procs.rank, procs.world_size
        ),
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    log = LossLog(run_dir / LOG_NAME)
    if procs.is_main:
        log.truncate(start_step)
        remove_stale_temporaries(run_dir)
    recent = deque(maxlen=max(1, cfg.iterations // 10))

    def save(step: int) -> None:
        refuse_non_finite_weights(model, step, ckpt_path)
        meta = checkpoint_metadata(cfg, step, recent, log, vgg_description(cfg))
        save_checkpoint(ckpt_path, model, meta, optimizer)

    stop = StopRequest()
    with stop, training_progress(console, start_step, cfg.iterations) as progress:
        for step, content in enumerate(loader, start=start_step + 1):
            content = content.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with autocast(device, amp_dtype):
                losses = loss_fn(net(content), content)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
            # After the update, so the (one) exchange between processes does not stall the GPU.
            values, stop_now = summarise_step(procs, losses, stop.requested)
            if not all(math.isfinite(v) for v in values.values()):
                raise TrainingDiverged(
                    f"loss became {values['total']} at step {step} ({last_good(ckpt_path)}); lower --lr and try again"
                )
            if procs.is_main:
                log.write(step, values)
                recent.append(values)
                progress(step, values)
                if step % cfg.checkpoint_every == 0 or step == cfg.iterations or stop_now:
                    save(step)
            if stop_now:
                # torchrun stops the others as soon as one process exits with an error code:
                # nobody leaves before rank 0 has written the checkpoint.
                wait_for_all(procs)
                raise TrainingInterrupted(
                    f"interrupted at step {step}; saved {ckpt_path}. Continue with: {resume_command(run_dir, procs)}"
                )
    if start_step >= cfg.iterations:
        console.print(f"{run_dir} already trained for {start_step} steps; raise --iterations to train further")
    log.close()
    return ckpt_path


def restore(model, optimizer, ckpt_path: Path, resume: bool, console: Console, procs: Processes) -> int:
    """Load the run's checkpoint into ``model`` and ``optimizer`` when resuming; returns the step."""
    run_dir = ckpt_path.parent
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, with_optimizer=True)
        ckpt.load_into(model)
        if ckpt.optimizer_state is None:
            raise StyleTransferError(f"{ckpt_path}: holds no optimiser state, so it cannot be resumed")
        try:
            optimizer.load_state_dict(ckpt.optimizer_state)
            check_optimizer_shapes(optimizer)
        except (ValueError, KeyError, TypeError) as e:
            raise StyleTransferError(f"{ckpt_path}: its optimiser state does not fit the network ({e})") from None
        start_step = ckpt.meta["step"]
        console.print(f"resuming {run_dir} at step {start_step}")
        before = ckpt.meta.get("config", {}).get("world_size", 1)
        if before != procs.world_size:
            console.print(
                f"it was trained on {before} process(es), now on {procs.world_size}: the global batch changes "
                "from here on (--batch-size is per process)"
            )
        return start_step
    if resume:
        console.print(f"{ckpt_path} not found: starting {run_dir} from step 0")
    elif ckpt_path.exists():
        raise StyleTransferError(f"{run_dir} already holds a run; add --resume to continue it or choose another --out")
    return 0


def skipped_line(skipped: list[Path], folder: str) -> str:
    names = ", ".join(p.name for p in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
    return f"skipped {len(skipped)} unreadable file(s) in {folder}: {names}"


def remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written files of a run that was killed mid-write: never read, so just removed."""
    for name in (CHECKPOINT_NAME, LOG_NAME):
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


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
    return cfg.norm in BATCH_STATISTICS_NORMS and cfg.sync_bn is not False


def describe_processes(cfg: TrainConfig, procs: Processes, device: torch.device) -> str:
    line = (
        f"{procs.world_size} processes ({dist.get_backend()} on {device.type}), {cfg.batch_size} images each, "
        f"global batch {cfg.batch_size * procs.world_size}"
    )
    if cfg.norm not in BATCH_STATISTICS_NORMS:
        return line
    return line + ("; batch statistics over the global batch" if cfg.sync_bn else "; batch statistics per process")


def resume_command(run_dir: Path, procs: Processes) -> str:
    if procs.distributed:
        return f"torchrun <same options> -m styletransfer train --out {run_dir} --resume"
    return f"styletransfer train --out {run_dir} --resume"


def config_for_resume(out: str | Path, given: dict) -> TrainConfig:
    """The saved settings of the run in ``out``, updated with the resumable ones in ``given``."""
    ckpt_path = Path(out) / CHECKPOINT_NAME
    saved = load_checkpoint(ckpt_path).meta["config"]
    for name, value in given.items():
        if name in TrainConfig.RESUMABLE or name == "out":
            saved[name] = value
        elif value != saved.get(name) and not (name == "style_layers" and list(value) == saved.get(name)):
            raise StyleTransferError(
                f"{out} was trained with --{name.replace('_', '-')} {saved.get(name)}; "
                "drop that option to resume, or start a new run with another --out"
            )
    saved["style_layers"] = tuple(saved["style_layers"])
    return TrainConfig(**saved)


def validate(cfg: TrainConfig) -> None:
    if cfg.norm not in NORM_NAMES:
        raise StyleTransferError(f"unknown norm {cfg.norm!r}; choose one of {', '.join(NORM_NAMES)}")
    for name in ("iterations", "image_size", "style_size", "batch_size", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise StyleTransferError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.image_size < 16:
        raise StyleTransferError("--image-size must be at least 16")
    batch = cfg.batch_size * (cfg.world_size if cfg.sync_bn and cfg.world_size > 1 else 1)
    if cfg.norm in BATCH_STATISTICS_NORMS and batch < 2:
        across = " (or, under torchrun, --sync-bn)" if cfg.world_size > 1 else ""
        raise StyleTransferError(f"--norm {cfg.norm} uses batch statistics: --batch-size must be at least 2{across}")
    if not cfg.lr > 0:
        raise StyleTransferError("--lr must be positive")


def check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Adam's moments must have their parameter's shape; torch would only notice at the first step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"{name} has shape {tuple(value.shape)}, its parameter {tuple(param.shape)}")


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)


def vgg_description(cfg: TrainConfig) -> str:
    if cfg.vgg_weights == RANDOM_WEIGHTS:
        return f"{cfg.vgg} (random weights)"
    if cfg.vgg_weights:
        return f"{cfg.vgg} ({Path(cfg.vgg_weights).name})"
    return f"{cfg.vgg} (torchvision IMAGENET1K_V1)"


def checkpoint_metadata(cfg: TrainConfig, step: int, recent, log: LossLog, vgg: str) -> dict:
    config = asdict(cfg)
    config["style_layers"] = list(cfg.style_layers)
    losses = {k: sum(r[k] for r in recent) / len(recent) for k in LOSS_TERMS} if recent else {}
    return {
        "norm": cfg.norm,
        "norm_options": cfg.norm_options,
        "style": cfg.style_name or Path(cfg.style).stem,
        "style_credit": cfg.style_credit,
        "step": step,
        "image_size": cfg.image_size,
        "vgg": vgg,
        "losses": losses,
        "history": log.history(HISTORY_POINTS),
        "config": config,
    }


class LossLog:
    """``losses.jsonl``: one JSON line per step, flushed as written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = None

    def truncate(self, last_step: int) -> None:
        """Keep only steps up to ``last_step``: steps after the last checkpoint are redone."""
        kept = [r for r in read_log(self.path) if r["step"] <= last_step] if self.path.exists() else []
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        try:
            self.file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise StyleTransferError(f"{self.path}: cannot write ({e.strerror or e})") from None

    def write(self, step: int, values: dict) -> None:
        try:
            self.file.write(json.dumps({"step": step, **{k: round(v, 7) for k, v in values.items()}}) + "\n")
            self.file.flush()
        except OSError as e:  # disk full: the checkpoint already written is untouched
            self.close()
            raise StyleTransferError(f"{self.path}: cannot write ({e.strerror or e}) at step {step}") from None

    def history(self, points: int) -> dict:
        """The curve so far, averaged into at most ``points`` buckets."""
        return downsample(read_log(self.path), points)

    def close(self) -> None:
        if self.file:
            try:
                self.file.close()
            except OSError:  # the lines it could not write are lost either way
                pass


def read_log(path: Path) -> list[dict]:
    """Rows of a loss log (``.jsonl`` or ``.jsonl.gz``); a torn last line is ignored."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def downsample(rows: list[dict], points: int) -> dict:
    if not rows:
        return {}
    size = max(1, math.ceil(len(rows) / points))
    out = {"step": []} | {k: [] for k in LOSS_TERMS}
    for i in range(0, len(rows), size):
        bucket = rows[i : i + size]
        out["step"].append(bucket[-1]["step"])
        for k in LOSS_TERMS:
            out[k].append(round(sum(r[k] for r in bucket) / len(bucket), 7))
    return out


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
