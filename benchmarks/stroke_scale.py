"""What the stroke scale does, and where it stops working: the measurement behind STROKE_SCALE_MIN/MAX.

    python benchmarks/stroke_scale.py --photos ../shared/assets/content/urban100_x2HR --limit 6 \
        --vgg-weights ../shared/assets/vgg/vgg19-imagenet-features.pth --style-dir ../shared/assets/styles

For each model, output size and stroke scale S (also outside the allowed range), over the photos:

- stroke width, in output pixels: the power-weighted mean wavelength of the luminance of the
  stylisation of a smooth colour field (no edges of its own, so all fine structure is the
  network's strokes), high-passed by subtracting a Gaussian blur of sigma 48 px. It should grow
  in proportion to S; it cannot fall much below 3 px (a pixel grid shows no period under 2 px).
- content distance: ``styletransfer evaluate``'s, VGG19 relu4_2 of the output against the photo's.
- style distance: ``styletransfer evaluate``'s, VGG19 Grams against the painting at 512 px.
- seconds for one stylisation, and the size the network ran at.

Prints one table (medians over the photos) and, with --sheet, writes a contact sheet per model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from styletransfer.compare import comparison_grid  # noqa: E402
from styletransfer.controls import apply_controls, network_size  # noqa: E402
from styletransfer.data import find_images, image_to_tensor, load_image, resize_long_side, tensor_to_image  # noqa: E402
from styletransfer.evaluate import Scorer  # noqa: E402
from styletransfer.metrics import CONTENT_DISTANCE_LAYER, content_distance, quantise, style_distance  # noqa: E402
from styletransfer.models import resolve_model  # noqa: E402
from styletransfer.stylize import Stylizer  # noqa: E402

SCALES = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 4.0, 6.0)
BLUR_SIGMA = 48.0


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H, W), BT.601 luma."""
    return torch.einsum("j,bjhw->bhw", torch.tensor([0.299, 0.587, 0.114], device=images.device), images)


def gaussian_blur(y: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=y.device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    z = F.pad(y[:, None], (radius, radius, radius, radius), mode="reflect")
    z = F.conv2d(F.conv2d(z, k), k.transpose(2, 3))
    return z[:, 0]


def smooth_field(size: tuple[int, int]) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: slow colour gradients only, ``size`` = (H, W)."""
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h) / max(h, w), torch.arange(w) / max(h, w), indexing="ij")
    field = [0.5 + 0.3 * torch.sin(2 * xx + 1), 0.5 + 0.3 * torch.cos(3 * yy), 0.5 + 0.2 * torch.sin(2 * (xx + yy))]
    return torch.stack(field)[None]


def stroke_width(images: torch.Tensor) -> float:
    """Power-weighted mean wavelength, in pixels, of the fine structure of (1, 3, H, W) images."""
    y = luminance(images.float())
    h = (y - gaussian_blur(y, BLUR_SIGMA))[0].cpu()
    h = h - h.mean()
    window = torch.outer(torch.hann_window(h.shape[0]), torch.hann_window(h.shape[1]))
    power = (torch.fft.rfft2(h * window).abs() ** 2).flatten()
    f = (torch.fft.fftfreq(h.shape[0])[:, None] ** 2 + torch.fft.rfftfreq(h.shape[1])[None, :] ** 2).sqrt().flatten()
    keep = f > 1 / (4 * BLUR_SIGMA)  # what the blur left of the field's own gradients
    return 1 / ((power[keep] * f[keep]).sum() / power[keep].sum()).item()


def controls(scale: float) -> SimpleNamespace:
    return SimpleNamespace(strength=1.0, preserve_color=False, stroke_scale=scale)  # unchecked: past the range too


def measure(stylizer: Stylizer, scorer: Scorer, style: Path, photo: torch.Tensor, scale: float) -> dict:
    start = time.perf_counter()
    out = apply_controls(stylizer.stylize_tensor, photo, controls(scale))
    if out.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = quantise(out)
    with torch.inference_mode():
        feats = scorer.metric(out.to(scorer.device))
        target = scorer.content_target(photo.to(scorer.device))
        return {
            "content": content_distance(feats[CONTENT_DISTANCE_LAYER], target).item(),
            "style": style_distance(feats, scorer.style_grams(style)).item(),
            "seconds": seconds,
            "image": out,
        }


def unrelated_content_distance(scorer: Scorer, tensors: list[torch.Tensor]) -> float:
    """Median content distance of each photo against the next one (resized to it): "nothing of the photo kept"."""
    values = []
    with torch.inference_mode():
        for a, b in zip(tensors, tensors[1:] + tensors[:1]):
            b = F.interpolate(b, size=a.shape[-2:], mode="bicubic", antialias=True).clamp(0, 1)
            feats = scorer.content_target(b.to(scorer.device))
            values.append(content_distance(feats, scorer.content_target(a.to(scorer.device))).item())
    return statistics.median(values)


def table(stylizer: Stylizer, scorer: Scorer, style: Path, tensors: list[torch.Tensor], scales: list[float]) -> list:
    """Print one row per scale; returns the first photo's stylisation at each scale."""
    field = smooth_field(tuple(tensors[0].shape[-2:])).to(stylizer.device)
    apply_controls(stylizer.stylize_tensor, tensors[0], controls(1.0))  # warm-up, untimed
    base = stroke_width(apply_controls(stylizer.stylize_tensor, field, controls(1.0)))
    print(f"{'S':>5} {'network':>10} {'stroke px':>9} {'/S=1':>6} {'content':>8} {'style':>7} {'seconds':>8}")
    firsts = []
    for scale in scales:
        h, w = network_size(tuple(tensors[0].shape[-2:]), scale)
        stroke = stroke_width(apply_controls(stylizer.stylize_tensor, field, controls(scale)))
        rows = [measure(stylizer, scorer, style, t, scale) for t in tensors]
        med = {k: statistics.median(r[k] for r in rows) for k in ("content", "style", "seconds")}
        print(f"{scale:5.2f} {w:>4}x{h:<5} {stroke:9.1f} {stroke / base:6.2f} {med['content']:8.3f} "
              f"{med['style']:7.3f} {med['seconds']:8.2f}", flush=True)  # fmt: skip
        firsts.append(tensor_to_image(rows[0]["image"][0].cpu()))
    print(f"{'photo':>5} {'':>10} {'':>9} {'':>6} {0.0:8.3f} (the photo itself)")
    print(f"{'other':>5} {'':>10} {'':>9} {'':>6} {unrelated_content_distance(scorer, tensors):8.3f} "
          "(another photo: nothing of this one kept)")
    return firsts


def contact_sheet(photo: torch.Tensor, images: list, scales: list[float], path: Path, columns: int = 4) -> None:
    cells = [tensor_to_image(photo[0].cpu())] + images
    captions = ["photo"] + [f"S={s:g}" for s in scales]
    cells += [cells[0].copy()] * (-len(cells) % columns)
    grid = comparison_grid([cells[i : i + columns] for i in range(0, len(cells), columns)],
                           [" | ".join(captions[i::columns]) for i in range(columns)])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=Path, required=True)
    p.add_argument("--limit", type=int, default=6)
    p.add_argument("--models", nargs="+", default=["starry_night/iebn", "wave/iebn"], help="names or files")
    p.add_argument("--style-dir", type=Path, required=True, help="folder with <style>.jpg of each model")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    p.add_argument("--vgg-weights", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--sheet", type=Path, help="folder for contact sheets (first photo)")
    args = p.parse_args()

    photos = find_images(args.photos)[: args.limit]
    print(f"{len(photos)} photos from {args.photos}; torch {torch.__version__}", flush=True)
    for model in args.models:
        stylizer = Stylizer.from_checkpoint(resolve_model(model)[0], args.device)
        scorer = Scorer(args.vgg_weights, 512, stylizer.device)
        style = args.style_dir / f"{stylizer.style}.jpg"
        for size in args.sizes:
            tensors = [image_to_tensor(resize_long_side(load_image(f), size))[None].to(stylizer.device) for f in photos]
            print(f"\n{stylizer.label} on {stylizer.device}, output long side {size} px (medians over {len(photos)} photos)")
            firsts = table(stylizer, scorer, style, tensors, args.scales)
            if args.sheet:
                contact_sheet(tensors[0], firsts, args.scales, args.sheet / f"{stylizer.style}-{stylizer.norm}-{size}.jpg")


if __name__ == "__main__":
    main()
