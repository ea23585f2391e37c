"""Strength, preserve colour and stroke scale: in Python, on the command line (stylize, compare)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from styletransfer.compare import CAPTION_HEIGHT, GAP
from styletransfer.controls import STROKE_SCALE_MAX, STROKE_SCALE_MIN, Controls, keep_photo_colours, match_mean_std
from styletransfer.errors import StyleTransferError
from styletransfer.stylize import Stylizer

from .conftest import make_photo, run_cli, write_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random IN network: instance statistics give its output structure (random BN/IEBN ones are flat)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"), "stripes", "in", seed=1)


@pytest.fixture(scope="module")
def stylizer(model) -> Stylizer:
    return Stylizer.from_checkpoint(model, "cpu")


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory):
    return make_photo(tmp_path_factory.mktemp("photo") / "photo.png", size=(80, 60), seed=3)


@pytest.fixture(scope="module")
def photo(photo_path) -> Image.Image:
    return Image.open(photo_path).convert("RGB")


def pixels(img: Image.Image, mode: str = "RGB") -> np.ndarray:
    return np.asarray(img.convert(mode), dtype=np.float64)


def chroma_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean |Cb, Cr difference| in 8-bit levels (BT.601 YCbCr)."""
    return float(np.abs(pixels(a, "YCbCr")[..., 1:] - pixels(b, "YCbCr")[..., 1:]).mean())


def luma_correlation(a: Image.Image, b: Image.Image) -> float:
    return float(np.corrcoef(pixels(a, "YCbCr")[..., 0].ravel(), pixels(b, "YCbCr")[..., 0].ravel())[0, 1])


# --- Controls: checked once, one line naming the option ---------------------------------------


@pytest.mark.parametrize(
    "values, option",
    [
        ({"strength": -0.1}, "--strength must be between 0 and 1"),
        ({"strength": 1.5}, "--strength must be between 0 and 1"),
        ({"strength": math.nan}, "--strength must be a finite number"),
        ({"strength": math.inf}, "--strength must be a finite number"),
        ({"strength": "0.5"}, "--strength must be a finite number"),
        ({"strength": True}, "--strength must be a finite number"),
        ({"preserve_color": "yes"}, "--preserve-color must be true or false"),
        ({"stroke_scale": 0}, f"--stroke-scale must be between {STROKE_SCALE_MIN:g} and {STROKE_SCALE_MAX:g}"),
        ({"stroke_scale": STROKE_SCALE_MAX + 0.01}, "--stroke-scale must be between"),
        ({"stroke_scale": -math.inf}, "--stroke-scale must be a finite number"),
        ({"grain": -1}, "--grain must be between 0 and 32"),
        ({"grain": "4"}, "--grain must be a finite number"),
    ],
)
def test_controls_refuse_bad_values_in_one_line(values, option):
    with pytest.raises(StyleTransferError) as e:
        Controls(**values)
    assert str(e.value).startswith(option) and "\n" not in str(e.value)


def test_controls_accept_their_whole_range_and_are_frozen():
    for c in (Controls(0, True, STROKE_SCALE_MIN), Controls(1, False, STROKE_SCALE_MAX), Controls(0.25)):
        assert isinstance(c.strength, float) and isinstance(c.stroke_scale, float)
    assert Controls(0.5, True, 2).as_dict() == {"strength": 0.5, "preserve_color": True, "stroke_scale": 2.0, "grain": 4.0}
    assert Controls(grain=3).grain == 3.0 and isinstance(Controls(grain=0).grain, float)
    assert Controls(grain=7).plain and not Controls(0.5).plain and not Controls(stroke_scale=2).plain
    with pytest.raises(AttributeError):
        Controls().strength = 0.5


def test_stylize_checks_its_controls(stylizer, photo):
    with pytest.raises(StyleTransferError, match="--stroke-scale must be between"):
        stylizer.stylize(photo, stroke_scale=10)


# --- strength -------------------------------------------------------------------------------


def test_strength_0_gives_the_photo_back_exactly(stylizer, photo):
    assert np.array_equal(pixels(stylizer.stylize(photo, strength=0)), pixels(photo))


def test_strength_1_is_the_plain_stylisation(stylizer, photo):
    plain = stylizer.stylize(photo)
    assert np.array_equal(pixels(stylizer.stylize(photo, strength=1.0)), pixels(plain))
    from styletransfer.data import image_to_tensor, tensor_to_image

    network_alone = tensor_to_image(stylizer.stylize_tensor(image_to_tensor(photo)[None])[0])
    assert np.array_equal(pixels(plain), pixels(network_alone))


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.8])
def test_strength_blends_stylisation_and_photo_linearly(stylizer, photo, strength):
    full, mixed = pixels(stylizer.stylize(photo)), pixels(stylizer.stylize(photo, strength=strength))
    expected = strength * full + (1 - strength) * pixels(photo)
    assert np.abs(mixed - expected).max() <= 1.0  # each input was rounded to 8 bits once
    assert np.abs(mixed - full).mean() > 1 and np.abs(mixed - pixels(photo)).mean() > 1


def test_strength_applies_after_the_other_controls(stylizer, photo):
    coloured = pixels(stylizer.stylize(photo, preserve_color=True, stroke_scale=2))
    half = pixels(stylizer.stylize(photo, strength=0.5, preserve_color=True, stroke_scale=2))
    assert np.abs(half - (coloured + pixels(photo)) / 2).max() <= 1.0


# --- preserve colour ------------------------------------------------------------------------


def test_preserve_color_keeps_the_photos_chroma_and_the_stylisations_luminance(stylizer, photo):
    plain = stylizer.stylize(photo)
    kept = stylizer.stylize(photo, preserve_color=True)
    assert chroma_difference(plain, photo) > 15  # the network changes the colours a lot...
    assert chroma_difference(kept, photo) < 4  # ...preserve colour keeps them (up to clipping at the gamut)
    assert luma_correlation(kept, plain) > 0.95  # the luminance follows the stylisation...
    assert luma_correlation(kept, photo) < 0.5  # ...not the photo


def test_preserve_color_matches_the_luminance_mean_and_spread_of_the_photo(stylizer, photo):
    y_kept, y_photo = pixels(stylizer.stylize(photo, preserve_color=True), "L"), pixels(photo, "L")
    assert abs(y_kept.mean() - y_photo.mean()) < 4 and abs(y_kept.std() - y_photo.std()) < 0.15 * y_photo.std()


def test_luminance_transfer_on_known_values():
    torch.manual_seed(0)
    photo = torch.rand(2, 3, 8, 8) * 0.5 + 0.25  # inside the gamut after the swap: no clipping
    stylised = torch.rand(2, 3, 8, 8) * 0.2 + 0.4
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
    yiq = lambda x: torch.einsum("ij,bjhw->bihw", to_yiq, x)  # noqa: E731
    plain, matched = keep_photo_colours(stylised, photo, match_luminance=False), keep_photo_colours(stylised, photo)
    assert torch.allclose(yiq(plain)[:, 1:], yiq(photo)[:, 1:], atol=1e-5)  # I, Q of the photo
    assert torch.allclose(yiq(plain)[:, 0], yiq(stylised)[:, 0], atol=1e-5)  # Y of the stylisation
    y, y_photo = yiq(matched)[:, 0].flatten(1), yiq(photo)[:, 0].flatten(1)
    assert torch.allclose(y.mean(1), y_photo.mean(1), atol=1e-5)
    assert torch.allclose(y.std(1), y_photo.std(1), atol=1e-4)


def test_matching_a_flat_luminance_takes_the_reference_mean():
    flat, ref = torch.full((1, 4, 4), 0.3), torch.linspace(0, 1, 16).view(1, 4, 4)
    assert torch.allclose(match_mean_std(flat, ref), torch.full((1, 4, 4), 0.5))


# --- stroke scale ---------------------------------------------------------------------------


def test_stroke_scale_runs_the_network_at_another_size_and_keeps_the_output_size(stylizer, photo):
    seen = []
    hook = stylizer.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        outputs = {s: stylizer.stylize(photo, stroke_scale=s) for s in (0.5, 1.0, 2.0)}
    finally:
        hook.remove()
    assert seen == [(120, 160), (60, 80), (30, 40)]  # (H, W) for a photo of 80 x 60
    assert all(out.size == photo.size for out in outputs.values())
    assert np.abs(pixels(outputs[2.0]) - pixels(outputs[1.0])).mean() > 2
    assert np.abs(pixels(outputs[0.5]) - pixels(outputs[1.0])).mean() > 2


def test_stroke_scale_on_a_tiny_image_runs_at_one_pixel_at_least(stylizer):
    tiny = Image.new("RGB", (3, 2), (10, 200, 30))
    assert stylizer.stylize(tiny, stroke_scale=STROKE_SCALE_MAX).size == (3, 2)


# --- the command line -----------------------------------------------------------------------


def stylize_cli(model, photo_path, out, *options) -> Image.Image:
    assert run_cli("stylize", photo_path, "-m", model, "-o", out, "--device", "cpu", *options) == 0
    return Image.open(out).convert("RGB")


def test_cli_strength(model, photo_path, photo, tmp_path):
    plain = stylize_cli(model, photo_path, tmp_path / "plain.png")
    assert np.array_equal(pixels(stylize_cli(model, photo_path, tmp_path / "1.png", "--strength", "1")), pixels(plain))
    assert np.array_equal(pixels(stylize_cli(model, photo_path, tmp_path / "0.png", "--strength", "0")), pixels(photo))
    half = pixels(stylize_cli(model, photo_path, tmp_path / "h.png", "--strength", "0.5"))
    assert np.abs(half - (pixels(plain) + pixels(photo)) / 2).max() <= 1.0


def test_cli_preserve_color_and_stroke_scale(model, photo_path, photo, tmp_path):
    plain = stylize_cli(model, photo_path, tmp_path / "plain.png")
    kept = stylize_cli(model, photo_path, tmp_path / "kept.png", "--preserve-color")
    assert chroma_difference(kept, photo) < 4 and luma_correlation(kept, plain) > 0.95
    bigger = stylize_cli(model, photo_path, tmp_path / "big.png", "--stroke-scale", "2.5")
    assert bigger.size == photo.size and np.abs(pixels(bigger) - pixels(plain)).mean() > 2


@pytest.mark.parametrize(
    "options, message",
    [
        (["--strength", "1.2"], "error: --strength must be between 0 and 1, not 1.2"),
        (["--strength", "nan"], "error: --strength must be a finite number, not nan"),
        (["--stroke-scale", "0.2"], f"error: --stroke-scale must be between {STROKE_SCALE_MIN:g} and {STROKE_SCALE_MAX:g}, not 0.2"),
        (["--stroke-scale", "inf"], "error: --stroke-scale must be a finite number, not inf"),
    ],
)
@pytest.mark.parametrize("command", ["stylize", "compare"])
def test_cli_refuses_controls_out_of_range_in_one_line(model, photo_path, tmp_path, capsys, command, options, message):
    assert run_cli(command, photo_path, "-m", model, "-o", tmp_path / "out.png", *options) == 1
    err = capsys.readouterr().err.strip()
    assert err == message
    assert not (tmp_path / "out.png").exists()


def test_compare_with_controls(model, photo_path, tmp_path):
    base = ["compare", photo_path, "-m", model, "--size", "48", "--device", "cpu"]
    assert run_cli(*base, "-o", tmp_path / "photo.png", "--strength", "0") == 0
    assert run_cli(*base, "-o", tmp_path / "kept.png", "--preserve-color", "--stroke-scale", "2") == 0
    def cells(path):  # the content's cell, then the model's
        grid = pixels(Image.open(path))
        top, lefts = CAPTION_HEIGHT, (GAP, 2 * GAP + 48)
        return [grid[top : top + 48, left : left + 48] for left in lefts]

    content, stylised = cells(tmp_path / "photo.png")
    assert np.array_equal(content, stylised) and content.std() > 10  # strength 0: the content itself
    content, stylised = cells(tmp_path / "kept.png")
    assert chroma_difference(Image.fromarray(stylised.astype(np.uint8)), Image.fromarray(content.astype(np.uint8))) < 4
    assert np.abs(stylised - content).mean() > 5


def test_an_onnx_model_takes_the_same_controls(model, photo_path, photo, tmp_path):
    pytest.importorskip("onnxruntime")
    from styletransfer.onnx_export import export_onnx

    onnx_model = export_onnx(model, tmp_path / "in.onnx")
    by_torch = stylize_cli(model, photo_path, tmp_path / "torch.png", "--precision", "fp32", "--preserve-color",
                           "--stroke-scale", "1.5", "--strength", "0.7")  # fmt: skip
    by_onnx = stylize_cli(onnx_model, photo_path, tmp_path / "onnx.png", "--preserve-color", "--stroke-scale", "1.5",
                          "--strength", "0.7")  # fmt: skip
    assert np.abs(pixels(by_onnx) - pixels(by_torch)).max() <= 1
    assert np.array_equal(pixels(stylize_cli(onnx_model, photo_path, tmp_path / "0.png", "--strength", "0")), pixels(photo))


# --- video frames ---------------------------------------------------------------------------


def test_video_frames_get_the_same_controls_as_images(stylizer, photo):
    from styletransfer.controls import Controlled
    from styletransfer.video import stylize_frames

    frames = np.stack([np.asarray(photo), np.asarray(photo)[::-1].copy()])
    assert np.array_equal(stylize_frames(Controlled(stylizer, Controls(strength=0)), frames), frames)
    controls = Controls(0.6, True, 2.0)
    by_frame = stylize_frames(Controlled(stylizer, controls), frames)
    for frame, out in zip(frames, by_frame):
        assert np.abs(out.astype(int) - np.asarray(stylizer.render(Image.fromarray(frame), controls), int)).max() <= 1


def test_cli_controls_reach_a_video(model, tmp_path):
    av = pytest.importorskip("av")
    from .test_video import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=6, audio=False)

    def frames(path):
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)])

    for name, options in (("photo.mp4", ["--strength", "0"]), ("plain.mp4", [])):
        assert run_cli("stylize", clip, "-m", model, "-o", tmp_path / name, "--device", "cpu", *options) == 0
    source = frames(clip)
    assert np.abs(frames(tmp_path / "photo.mp4") - source).mean() < 3  # the clip back, up to H.264's loss
    assert np.abs(frames(tmp_path / "plain.mp4") - source).mean() > 20
