"""The settings of a training run: one field each, with its meaning and unit.

The ``train`` command's options are derived from these fields (name, help text, default),
the whole config is saved in every checkpoint (so a run can be resumed and reproduced), and
:meth:`TrainConfig.validate` checks every value before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from .devices import PRECISIONS
from .errors import StyleTransferError
from .grain import GRAIN_MAX
from .loss import CONTENT_LAYER, STYLE_LAYERS, VGG_LAYERS, LossWeights
from .norms import NORMS, norm_spec

__all__ = ["TrainConfig", "option_name"]


def setting(default=MISSING, help: str = "", **cli) -> field:
    """A config field with its help text and how the command line and validation treat it.

    ``cli`` keys: ``resumable`` (may change when a run is resumed), ``minimum`` and ``maximum``
    (smallest and largest allowed value), ``positive`` (must be > 0), ``choices``, ``path`` (a file or folder, made
    absolute by the CLI), ``flags`` (option names), ``envvar``, ``default_text`` (the default
    as shown in ``--help``), ``cli=False`` (not a command-line option).
    """
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything that defines a training run (Johnson et al. 2016's recipe, with our norms)."""

    # What to learn from, and where the run lives.
    style: str = setting(help="Style image (a painting).", path=True)
    content_dir: str = setting(help="Folder of training photos, searched recursively.", path=True)
    out: str = setting(help="Run folder: checkpoint.safetensors and losses.jsonl go here.",
                       flags=("--out", "-o"), resumable=True)  # fmt: skip
    norm: str = setting("iebn", "Normalisation layer: " + ", ".join(f"{n} ({s.label})" for n, s in NORMS.items()) + ".",
                        choices=tuple(NORMS))  # fmt: skip
    # How long and on what.
    iterations: int = setting(2000, "Total training steps (optimiser updates).", minimum=1, resumable=True)
    image_size: int = setting(256, "Side of the square training crops, in pixels.", minimum=16)
    style_size: int = setting(512, "Long side the style image is scaled to (up or down), in pixels.", minimum=16)
    batch_size: int = setting(4, "Images per step (per process under torchrun).", minimum=1)
    lr: float = setting(1e-3, "Adam learning rate.", positive=True)
    # The perceptual loss (each term is relative to its target's energy, so weights are unitless).
    content_weight: float = setting(LossWeights.content, "Weight of the content loss (VGG features).", minimum=0)
    style_weight: float = setting(LossWeights.style, "Weight of the style loss (Gram matrices).", minimum=0)
    tv_weight: float = setting(LossWeights.tv, "Weight of the total-variation loss (smoothness).", minimum=0)
    # What the network sees: each photo plus fresh noise (styletransfer.grain; the content target stays clean).
    grain: float = setting(0.0, "Grain added to each training photo: the standard deviation of Gaussian noise, in "
                           "8-bit steps (0: none). The network learns to remove it, so it does not prevent "
                           "blotches; stylise's --grain does.", minimum=0, maximum=GRAIN_MAX)  # fmt: skip
    vgg: str = setting("vgg16", "Loss network: vgg16 (Johnson et al.) or vgg19.", choices=tuple(VGG_LAYERS))
    vgg_weights: str | None = setting(
        None, "Local VGG weights file (torchvision state dict, full or features.* only), for offline use. "
        "Without it torchvision's ImageNet weights are downloaded once.",
        envvar="STYLETRANSFER_VGG_WEIGHTS", resumable=True, default_text="download",
    )  # fmt: skip
    content_layer: str = setting(CONTENT_LAYER, "VGG layer of the content loss.", cli=False)
    style_layers: tuple[str, ...] = setting(STYLE_LAYERS, "VGG layers of the style loss.", cli=False)
    seed: int = setting(0, "Seed for initialisation and batch order.", minimum=0)
    # Saving and speed: none of these change what is learned.
    checkpoint_every: int = setting(500, "Save a checkpoint every N steps.", minimum=1, resumable=True)
    device: str = setting("auto", "auto (CUDA if available), cpu, cuda or cuda:N.", resumable=True)
    precision: str = setting("auto", "auto (bf16 where the hardware is fast at it), fp32, bf16, or fp16 (CUDA).",
                             choices=PRECISIONS, resumable=True)  # fmt: skip
    channels_last: bool = setting(True, "NHWC memory layout.", flags=("--channels-last/--no-channels-last",),
                                  resumable=True)  # fmt: skip
    compile: bool = setting(
        False, "Compile the perceptual loss (torch.compile: VGG and Gram matrices, forward and backward; one "
        "process only), 10-40 s before the first step. Off by default: no gain held (0.87x-1.29x a step in four "
        "runs on a Xeon with AMX).", flags=("--compile/--no-compile",), resumable=True,
    )  # fmt: skip
    workers: int | None = setting(None, "Data loading processes.", minimum=0, resumable=True,
                                  default_text="0 on CPU, 4 on CUDA")  # fmt: skip
    # Stored in the checkpoint for people to read.
    style_name: str | None = setting(None, "Name stored in the checkpoint.", default_text="the style image's file name")
    style_credit: str | None = setting(
        None, 'Credit stored in the checkpoint, e.g. "Vincent van Gogh, The Starry Night, 1889".', default_text="none"
    )
    norm_options: dict = field(default_factory=dict, metadata={"help": "Options of the norm layer.", "cli": False})
    # Several processes (torchrun).
    sync_bn: bool | None = setting(
        None, "Under torchrun: take BN, BN+SE and IEBN batch statistics over the global batch of all processes, "
        "as on one GPU.", flags=("--sync-bn/--no-sync-bn",), resumable=True, default_text="on",
    )  # fmt: skip
    world_size: int = setting(1, "Processes training together (set from torchrun's environment).",
                              cli=False, resumable=True)  # fmt: skip

    def validate(self) -> None:
        """Raise StyleTransferError (one line naming the option) for the first value out of range."""
        norm_spec(self.norm)
        for f in fields(self):
            _check_value(f, getattr(self, f.name))
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Settings that are valid alone but not together."""
        if not any(w > 0 for w in (self.content_weight, self.style_weight, self.tv_weight)):
            raise StyleTransferError("the loss weights are all 0: give --content-weight, --style-weight or --tv-weight > 0")
        if self.compile and self.world_size > 1:
            raise StyleTransferError("--compile trains in one process; drop it under torchrun")
        batch = self.batch_size * (self.world_size if self.sync_bn and self.world_size > 1 else 1)
        if NORMS[self.norm].batch_statistics and batch < 2:
            across = " (or, under torchrun, --sync-bn)" if self.world_size > 1 else ""
            raise StyleTransferError(f"--norm {self.norm} uses batch statistics: --batch-size must be at least 2{across}")

    def to_metadata(self) -> dict:
        """The config as JSON-able values, as stored in checkpoints."""
        saved = asdict(self)
        saved["style_layers"] = list(self.style_layers)
        return saved

    @classmethod
    def from_metadata(cls, saved: dict) -> TrainConfig:
        """The config stored in a checkpoint (see :meth:`to_metadata`)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        if "style_layers" in values:
            values["style_layers"] = tuple(values["style_layers"])
        return cls(**values)

    def resumed_with(self, given: dict) -> TrainConfig:
        """This (saved) config with the options the user ``given`` when resuming.

        Settings marked resumable take the new value; any other that differs is a
        StyleTransferError, since the run would no longer be the run that was started.
        """
        values = asdict(self)
        for name, value in given.items():
            if _field(name).metadata.get("resumable"):
                values[name] = value
            elif _normalised(value) != _normalised(values[name]):
                raise StyleTransferError(
                    f"{values['out']} was trained with {option_name(name)} {values[name]}; "
                    "drop that option to resume, or start a new run with another --out"
                )
        return TrainConfig(**values)


def option_name(name: str) -> str:
    """The command-line option of config field ``name``: ``--image-size`` for image_size."""
    return "--" + name.replace("_", "-")


def _field(name: str):
    return next(f for f in fields(TrainConfig) if f.name == name)


def _normalised(value):
    return tuple(value) if isinstance(value, list) else value


def _check_value(f, value) -> None:
    """One field's value against its ``choices``, ``minimum`` and ``positive`` (None means unset)."""
    rules, option = f.metadata, option_name(f.name)
    if value is None:
        return
    if "choices" in rules and value not in rules["choices"]:
        raise StyleTransferError(f"{option} {value!r} is not one of: {', '.join(rules['choices'])}")
    if "minimum" in rules or "maximum" in rules or rules.get("positive"):
        _check_number(option, value, rules.get("minimum"), rules.get("positive", False), rules.get("maximum"))


def _check_number(option: str, value, minimum: float | None, positive: bool, maximum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StyleTransferError(f"{option} must be a finite number, not {value!r}")
    if positive and not value > 0:
        raise StyleTransferError(f"{option} must be positive, not {value:g}")
    if minimum is not None and value < minimum:
        raise StyleTransferError(f"{option} must be at least {minimum}, not {value:g}")
    if maximum is not None and value > maximum:
        raise StyleTransferError(f"{option} must be at most {maximum:g}, not {value:g}")
