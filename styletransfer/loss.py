"""Perceptual loss (Johnson et al. 2016): VGG content and style (Gram) terms plus total variation.

Each term is normalised by the magnitude of its target, so the same default weights work
with torchvision's retrained VGG weights and with the original (Caffe) ImageNet weights,
whose activations are about 100x larger.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import StyleTransferError

__all__ = [
    "CONTENT_LAYER", "RANDOM_WEIGHTS", "STYLE_LAYERS", "VGG_LAYERS", "VGG_WEIGHTS_ENV", "LossWeights", "PerceptualLoss",
    "VGGFeatures", "gram_matrix", "load_vgg_features", "relative_mse", "total_variation",
]  # fmt: skip

VGG_WEIGHTS_ENV = "STYLETRANSFER_VGG_WEIGHTS"
# "random" builds an untrained VGG: only for tests and benchmarks, never for real training.
RANDOM_WEIGHTS = "random"

# Index of each named ReLU in torchvision's ``vgg.features``.
# relu<b>_<i> is the i-th ReLU of block b (blocks end at a max-pool), as in Simonyan & Zisserman.
VGG_LAYERS = {
    "vgg16": {
        "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_3": 15,
        "relu4_1": 18, "relu4_2": 20, "relu4_3": 22, "relu5_1": 25,
    },
    "vgg19": {
        "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_3": 15, "relu3_4": 17,
        "relu4_1": 20, "relu4_2": 22, "relu4_3": 24, "relu5_1": 29,
    },
}  # fmt: skip
VGG_CONFIG = {"vgg16": "D", "vgg19": "E"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CONTENT_LAYER = "relu2_2"
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


@dataclass
class LossWeights:
    content: float = 1.0
    style: float = 10.0
    tv: float = 1.0


def load_vgg_features(arch: str = "vgg16", weights: str | None = None) -> nn.Sequential:
    """The convolutional part of torchvision's VGG16/VGG19, frozen, in eval mode.

    ``arch``: vgg16 or vgg19. ``weights``: a local file (full torchvision state dict or only
    its ``features.*`` part, loaded with ``weights_only=True``), ``"random"``, or None for the
    environment variable, else torchvision's ImageNet weights (downloaded once into torch's
    cache). Raises StyleTransferError for an unknown arch, a file that is not such a state
    dict (a pickle is refused unread), or weights that cannot be downloaded.
    """
    if arch not in VGG_CONFIG:
        raise StyleTransferError(f"unknown VGG {arch!r}; choose vgg16 or vgg19")
    from torchvision.models import vgg as tv_vgg  # here: importing torchvision takes seconds

    weights = weights or os.environ.get(VGG_WEIGHTS_ENV) or None
    features = tv_vgg.make_layers(tv_vgg.cfgs[VGG_CONFIG[arch]])
    if weights == RANDOM_WEIGHTS:
        pass
    elif weights:
        features.load_state_dict(_read_features_state_dict(Path(weights), features))
    else:
        features.load_state_dict(_download_features_state_dict(arch))
    for m in features:
        if isinstance(m, nn.ReLU):
            m.inplace = False  # the intermediate activations are kept for the loss
    return features.eval().requires_grad_(False)


def _read_features_state_dict(path: Path, features: nn.Sequential) -> dict:
    if not path.is_file():
        raise StyleTransferError(f"VGG weights file {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise StyleTransferError(
            f"{path}: refused, not a plain tensor file that loads without running code ({_refusal_reason(e)})"
        ) from None
    if not isinstance(sd, dict):
        raise StyleTransferError(f"{path}: expected a VGG state dict, found {type(sd).__name__}")
    sd = {k.removeprefix("features."): v for k, v in sd.items() if not k.startswith("classifier.")}
    expected = features.state_dict()
    if set(sd) != set(expected) or any(sd[k].shape != expected[k].shape for k in expected):
        raise StyleTransferError(
            f"{path}: tensors do not match torchvision's {_describe(features)} features "
            f"(expected keys like features.0.weight ... features.{len(features) - 3}.bias)"
        )
    return sd


def _refusal_reason(e: Exception) -> str:
    """The informative sentence of torch's long, multi-line weights-only refusal."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    marker = "WeightsUnpickler error:"
    detail = next((line for line in lines if line.startswith("Unsupported")), None)
    detail = detail or next((line.split(marker)[1] for line in lines if marker in line and not line.endswith(":")), lines[0])
    return detail.split(". ")[0].strip()[:160]


def _describe(features: nn.Sequential) -> str:
    convs = sum(isinstance(m, nn.Conv2d) for m in features)
    return {13: "VGG16", 16: "VGG19"}.get(convs, "VGG")


def _download_features_state_dict(arch: str) -> dict:
    import torchvision

    enum = {"vgg16": torchvision.models.VGG16_Weights, "vgg19": torchvision.models.VGG19_Weights}[arch]
    try:
        sd = enum.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as e:
        raise StyleTransferError(
            f"could not get torchvision's ImageNet {arch.upper()} weights ({type(e).__name__}); "
            f"offline, give a local weights file with --vgg-weights PATH or {VGG_WEIGHTS_ENV}=PATH "
            f"(a torchvision {arch} state dict, or only its features.* part)"
        ) from None
    return {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}


class VGGFeatures(nn.Module):
    """Runs VGG on images in [0, 1] and returns the named activations."""

    def __init__(self, features: nn.Sequential, arch: str, layers: tuple[str, ...]) -> None:
        super().__init__()
        index = VGG_LAYERS[arch]
        unknown = [name for name in layers if name not in index]
        if unknown:
            raise StyleTransferError(f"{arch} has no layer {', '.join(unknown)}; known: {', '.join(index)}")
        self.at = {index[name]: name for name in layers}
        self.features = features[: max(self.at) + 1]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor, only: str | None = None) -> dict[str, torch.Tensor]:
        """Activations at every layer asked for, or (faster) only at layer ``only``."""
        x = (images - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.at and only in (None, self.at[i]):
                out[self.at[i]] = x
                if only is not None:
                    break
        return out


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix per image of (B, C, H, W) features, normalised by C*H*W as in Johnson et al.
    (2016, eq. 3): float32 (B, C, C).

    The product runs in the features' dtype (bf16 under autocast, which would cast an fp32 copy
    back anyway) on a view of them in their own memory layout: for channels_last features the
    (B, H*W, C) matrix, so no copy of the features is made in either direction.
    """
    b, c, h, w = features.shape
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        f = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
        gram = torch.bmm(f.transpose(1, 2), f)
    else:
        f = features.reshape(b, c, h * w)
        gram = torch.bmm(f, f.transpose(1, 2))
    return gram.float() / (c * h * w)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of (B, C, H, W) images: a scalar."""
    dh = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dw = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dh + dw


def relative_mse(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error relative to the target's own energy (scale free), per image, then averaged.

    Per image, so a batch's loss does not depend on how it is split (across processes, say).
    """
    per_pixel = tuple(range(1, x.dim()))  # reduced in place: flattening channels_last input would copy it
    x, target = x.float(), target.float()
    per_image = (x - target).pow(2).mean(per_pixel) / target.pow(2).mean(per_pixel).clamp_min(1e-8)
    return per_image.mean()


class PerceptualLoss(nn.Module):
    """Content + style + TV loss against one style image, whose Grams are computed once."""

    def __init__(
        self,
        features: nn.Sequential,
        style_image: torch.Tensor,
        arch: str = "vgg16",
        weights: LossWeights | None = None,
        content_layer: str = CONTENT_LAYER,
        style_layers: tuple[str, ...] = STYLE_LAYERS,
    ) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        self.content_layer, self.style_layers = content_layer, tuple(style_layers)
        self.vgg = VGGFeatures(features, arch, tuple(dict.fromkeys((content_layer, *style_layers))))
        self.vgg.to(style_image.device)  # the style's Grams are computed where the style image is
        with torch.no_grad():
            style_features = self.vgg(style_image.unsqueeze(0) if style_image.dim() == 3 else style_image)
        for name in self.style_layers:
            self.register_buffer(f"gram_{name}", gram_matrix(style_features[name])[:1])

    def forward(self, output: torch.Tensor, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for stylised ``output`` of ``content`` images, both (B, 3, H, W) in [0, 1].

        Returns scalar tensors ``content``, ``style`` (mean over the style layers), ``tv`` and
        ``total``, their weighted sum (Johnson et al. 2016, eq. 1-4, each term relative to its
        target's energy).
        """
        with torch.no_grad():
            content_target = self.vgg(content, only=self.content_layer)[self.content_layer]
        feats = self.vgg(output)
        content_loss = relative_mse(feats[self.content_layer], content_target)
        style_loss = sum(
            relative_mse(gram_matrix(feats[n]), getattr(self, f"gram_{n}").expand(output.shape[0], -1, -1))
            for n in self.style_layers
        ) / len(self.style_layers)
        tv_loss = total_variation(output.float())
        w = self.weights
        total = w.content * content_loss + w.style * style_loss + w.tv * tv_loss
        return {"content": content_loss, "style": style_loss, "tv": tv_loss, "total": total}
