import io

import numpy as np
import pytest
import torch
from PIL import Image

from styletransfer.data import ContentImages, StepBatches, image_to_tensor, load_image, tensor_to_image
from styletransfer.errors import StyleTransferError

from .conftest import make_photo


def save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_grey_rgba_palette_and_cmyk_become_rgb(tmp_path):
    base = Image.open(make_photo(tmp_path / "p.png")).convert("RGB")
    cases = {
        "grey.png": base.convert("L"),
        "la.png": base.convert("LA"),
        "rgba.png": base.convert("RGBA"),
        "palette.png": base.convert("P"),
        "cmyk.jpg": base.convert("CMYK"),
        "bw.png": base.convert("1"),
    }
    for name, img in cases.items():
        out = load_image(save(img, tmp_path / name))
        assert out.mode == "RGB" and out.size == base.size, name


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(save(img, tmp_path / "clear.png")).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    a = np.linspace(0, 65535, 64 * 8, dtype=np.uint16).reshape(8, 64)
    out = np.asarray(load_image(save(Image.fromarray(a), tmp_path / "deep.png")))
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert len(np.unique(out[..., 0])) > 50  # a ramp, not a clipped white image


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    out = load_image(save(img, tmp_path / "rot.jpg", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ("blue", "green")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert load_image(path).getpixel((5, 5))[2] > 200


def test_max_size_bounds_the_long_side_and_keeps_the_aspect(tmp_path):
    out = load_image(make_photo(tmp_path / "wide.png", size=(300, 100)), max_size=90)
    assert out.size == (90, 30)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("zero.jpg", b"", "not an image"),
        ("noise.png", bytes(range(256)) * 8, "not an image"),
        ("text.jpg", b"hello world", "not an image"),
    ],
)
def test_broken_files_give_one_line_errors_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(StyleTransferError, match=message) as e:
        load_image(tmp_path / name)
    assert name in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_refused(tmp_path, fmt):
    buf = io.BytesIO()
    Image.open(make_photo(tmp_path / "p.png", size=(200, 150))).save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(StyleTransferError, match="cut"):
        load_image(path)


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (30000, 30000)).save(path)  # small file, 900 megapixels
    with pytest.raises(StyleTransferError, match="too large"):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(StyleTransferError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(StyleTransferError, match="folder"):
        load_image(tmp_path)


def test_tensor_round_trip_is_exact(tmp_path):
    img = load_image(make_photo(tmp_path / "p.png"))
    t = image_to_tensor(img)
    assert t.shape == (3, img.height, img.width) and 0 <= t.min() and t.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_image(t)), np.asarray(img))


def test_content_images_searches_recursively_and_skips_non_images(tmp_path):
    make_photo(tmp_path / "a.png")
    make_photo(tmp_path / "deep" / "er" / "b.png")
    (tmp_path / "broken.jpg").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("not an image")
    data = ContentImages(tmp_path, 32)
    assert len(data) == 2 and [p.name for p in data.skipped] == ["broken.jpg"]
    assert data[(0, 1)].shape == (3, 32, 32)


def test_truncated_content_image_is_skipped_and_counted(tmp_path):
    good = make_photo(tmp_path / "good.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    data = ContentImages(tmp_path, 16)
    index = data.paths.index(cut)
    with pytest.warns(UserWarning, match="cut.png"):
        assert data[(index, 0)].shape == (3, 16, 16)
    assert cut in data.skipped


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StyleTransferError, match="no images found"):
        ContentImages(tmp_path, 32)
    (tmp_path / "x.jpg").write_bytes(b"junk")
    with pytest.raises(StyleTransferError, match="none readable"):
        ContentImages(tmp_path, 32)
    with pytest.raises(StyleTransferError, match="not a folder"):
        ContentImages(tmp_path / "missing", 32)


def test_small_photos_are_scaled_up_to_the_crop(tmp_path):
    make_photo(tmp_path / "tiny.png", size=(20, 12))
    assert ContentImages(tmp_path, 48)[(0, 3)].shape == (3, 48, 48)


def test_batches_depend_only_on_seed_and_step():
    full = list(StepBatches(50, 4, seed=3, start_step=0, total_steps=10))
    resumed = list(StepBatches(50, 4, seed=3, start_step=6, total_steps=10))
    assert resumed == full[6:]
    assert list(StepBatches(50, 4, seed=4, start_step=0, total_steps=10)) != full


def test_crops_are_reproducible(tmp_path):
    make_photo(tmp_path / "a.png", size=(120, 90))
    data = ContentImages(tmp_path, 32)
    assert torch.equal(data[(0, 42)], data[(0, 42)])
    assert not torch.equal(data[(0, 42)], data[(0, 43)])
