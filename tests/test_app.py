"""The web demo (styletransfer/demo.py): its stylise and live camera functions, its API through gradio_client,
and the page in a browser (with a fake camera for the live tab)."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from styletransfer.norms import NORMS, norm_label
from styletransfer import demo as demo_app
from .conftest import make_photo, write_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: without these Chromium waits on background connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    """Four norms of one style; IEBN also gets the fuller loss log that ``export`` writes beside it."""
    folder = tmp_path_factory.mktemp("ckpts")
    for seed, norm in enumerate(NORMS):
        write_checkpoint(folder, "stripes", norm, seed)
    rows = [{"step": s, "content": 1 / s, "style": 2 / s, "tv": 0.1, "total": 3 / s} for s in range(1, 301)]
    log = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (folder / "stripes" / "iebn.losses.jsonl.gz").write_bytes(gzip.compress(log))
    return folder


@pytest.fixture(scope="module")
def demo(ckpts) -> demo_app.StyleDemo:
    return demo_app.StyleDemo(ckpts, styles_dir=ckpts / "no-styles", device="cpu", shipped=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return make_photo(tmp_path_factory.mktemp("photo") / "wide photo.png", size=(240, 160), seed=3)


@pytest.fixture(scope="module")
def results(demo, photo) -> list[tuple[str, str]]:
    """The photo stylised at 288 pixels: larger than the photo's long side, so it is scaled up."""
    return demo.stylize(str(photo), "stripes", 288)


def assert_same_aspect(size: tuple[int, int], source: tuple[int, int], long_side: int) -> None:
    assert max(size) == long_side
    assert abs(size[0] / size[1] - source[0] / source[1]) < 0.02, (size, source)


def test_stylize_gives_one_result_per_norm_at_the_chosen_size(results):
    assert [caption.split(" · ")[0] for _, caption in results] == [norm_label(n) for n in NORMS]
    for (path, _), norm in zip(results, NORMS):
        with Image.open(path) as out:
            assert_same_aspect(out.size, (240, 160), 288)
        assert Path(path).name == f"wide_photo-stripes-{norm}.png"


def test_stylize_scales_a_large_photo_down(demo, tmp_path):
    big = make_photo(tmp_path / "big.jpg", size=(600, 900), seed=5)
    for path, _ in demo.stylize(str(big), "stripes", 256):
        with Image.open(path) as out:
            assert_same_aspect(out.size, (600, 900), 256)


def test_captions_carry_each_models_final_losses_and_time(results):
    for seed, (_, caption) in enumerate(results):
        label, style, content, seconds = caption.split(" · ")
        assert (style, content) == (f"style {2.0 + seed:.3g}", f"content {0.5 + seed:.3g}")
        assert seconds.endswith(" s") and float(seconds[:-2]) > 0


def test_norms_give_different_stylisations(results):
    arrays = [np.asarray(Image.open(path)) for path, _ in results]
    assert all(not np.array_equal(arrays[0], other) for other in arrays[1:])


def test_models_are_loaded_once_and_kept(demo, results, photo):
    first = dict(demo.library.loaded)
    demo.stylize(str(photo), "stripes", 256)
    assert len(first) == 4 and all(demo.library.loaded[p] is s for p, s in first.items())


def test_a_tall_grey_rgba_image_works(demo, tmp_path):
    tall = tmp_path / "tall.png"
    Image.new("LA", (40, 130), (120, 200)).save(tall)
    for path, _ in demo.stylize(str(tall), "stripes", 256):
        with Image.open(path) as out:
            assert out.mode == "RGB"
            assert_same_aspect(out.size, (40, 130), 256)


@pytest.mark.parametrize(
    "content, message",
    [
        ("notes.txt", "notes.txt: not an image file"),
        ("broken.jpg", "broken.jpg: "),
        (None, "no content photo"),
    ],
)
def test_bad_content_gives_a_one_line_error(demo, tmp_path, photo, content, message):
    if content == "notes.txt":
        (tmp_path / content).write_text("not a picture\n")
    elif content == "broken.jpg":
        (tmp_path / content).write_bytes(photo.read_bytes()[:300])
    with pytest.raises(gr.Error) as err:
        demo.stylize(str(tmp_path / content) if content else None, "stripes", 256)
    assert message in err.value.message and "\n" not in err.value.message
    assert str(tmp_path) not in err.value.message  # names the upload, not the server's cache


def test_unknown_style_and_size_out_of_range_are_refused(demo, photo):
    with pytest.raises(gr.Error, match="unknown style 'waves'; choose one of: stripes"):
        demo.stylize(str(photo), "waves", 256)
    with pytest.raises(gr.Error, match="out of range"):
        demo.stylize(str(photo), "stripes", 5000)


def pixels(path_or_image) -> np.ndarray:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_strength_0_gives_the_photo_back_and_0_5_half_of_each(demo, photo, results):
    photo_256 = pixels(demo_app.load_content(photo, 288))
    for path, _ in demo.stylize(str(photo), "stripes", 288, 0.0):
        assert np.array_equal(pixels(path), photo_256)
    plain = [pixels(path) for path, _ in demo.stylize(str(photo), "stripes", 288, 1.0)]
    assert all(np.array_equal(a, pixels(path)) for a, (path, _) in zip(plain, results))  # 1: as without controls
    for full, (path, _) in zip(plain, demo.stylize(str(photo), "stripes", 288, 0.5)):
        assert np.abs(pixels(path) - (full + photo_256) / 2).max() <= 1.0


def test_preserve_color_and_stroke_scale(demo, photo, results):
    ycc = lambda path: np.asarray(Image.open(path).convert("YCbCr"), dtype=np.float64)  # noqa: E731
    photo_ycc = np.asarray(demo_app.load_content(photo, 288).convert("YCbCr"), dtype=np.float64)
    kept = demo.stylize(str(photo), "stripes", 288, 1.0, True)
    in_plain, in_kept = ycc(results[1][0]), ycc(kept[1][0])  # IN: random BN-type networks give flat images
    assert np.abs(in_plain[..., 1:] - photo_ycc[..., 1:]).mean() > 15
    assert np.abs(in_kept[..., 1:] - photo_ycc[..., 1:]).mean() < 4
    assert np.corrcoef(in_kept[..., 0].ravel(), in_plain[..., 0].ravel())[0, 1] > 0.9
    bigger = demo.stylize(str(photo), "stripes", 288, 1.0, False, 2.0)
    with Image.open(bigger[1][0]) as out:
        assert_same_aspect(out.size, (240, 160), 288)
    assert np.abs(pixels(bigger[1][0]) - pixels(results[1][0])).mean() > 2


@pytest.mark.parametrize(
    "controls, message",
    [
        ((1.5, False, 1.0), "strength must be between 0 and 1, not 1.5"),
        (("much", False, 1.0), "strength must be a finite number, not 'much'"),
        ((1.0, "yes", 1.0), "preserve_color must be true or false"),
        ((1.0, False, 9), "stroke_scale must be between"),
        ((1.0, False, float("nan")), "stroke_scale must be a finite number"),
    ],
)
def test_controls_out_of_range_are_one_line_errors(demo, photo, controls, message):
    with pytest.raises(gr.Error) as err:
        demo.stylize(str(photo), "stripes", 256, *controls)
    assert err.value.message.startswith(message) and "\n" not in err.value.message


def test_style_panel_shows_name_credit_and_painting(ckpts, tmp_path):
    styles = tmp_path / "styles"
    styles.mkdir()
    Image.new("RGB", (900, 600), (200, 30, 30)).save(styles / "stripes.jpg")
    text, painting = demo_app.StyleDemo(ckpts, styles, "cpu", shipped=False).style_panel("stripes")
    assert "### stripes" in text and "Test Painter, Stripes, 2024" in text
    assert "BN, IN, BN+SE, IEBN (100 iterations each)" in text
    assert painting.size == (512, 341)


def test_style_panel_without_a_style_image(demo):
    text, painting = demo.style_panel("stripes")
    assert "Test Painter" in text and painting is None


def test_loss_curves_prefer_the_full_log(demo):
    fig = demo.loss_curves("stripes")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["content loss", "style loss", "total loss"]
    lines = {line.get_label(): line for line in axes[0].get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {norm_label(n) for n in NORMS}
    assert len(lines["IEBN"].get_xdata()) == 300  # from iebn.losses.jsonl.gz
    assert len(lines["BN"].get_xdata()) == 10  # the history stored in bn.safetensors


def test_no_checkpoints_explains_how_to_train(tmp_path):
    app = demo_app.build_app(tmp_path / "empty", device="cpu", shipped=False)
    texts = [b.value for b in app.blocks.values() if isinstance(b, gr.Markdown)]
    train = "styletransfer train --style STYLE.jpg --content-dir PHOTOS/ --norm iebn --out runs/NAME"
    export = f"styletransfer export runs/NAME/checkpoint.safetensors {(tmp_path / 'empty').as_posix()}/NAME/iebn.safetensors"
    assert any(train in t and export in t for t in texts)
    with pytest.raises(gr.Error, match="holds no checkpoints; train one with `styletransfer train"):
        app.demo.stylize("photo.jpg", "stripes", 512)


@pytest.fixture(scope="module")
def styles(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("styles")
    Image.new("RGB", (300, 200), (200, 30, 30)).save(folder / "stripes.png")
    return folder


@pytest.fixture(scope="module")
def served(ckpts, styles):
    """The app on a free local port, as ``python app.py --port 0`` starts it."""
    app = demo_app.build_app(ckpts, styles, device="cpu", shipped=False)
    _, url, _ = demo_app.launch(app, port=0, prevent_thread_lock=True, quiet=True)
    yield url
    app.close()


def test_api_returns_one_image_per_norm(served, photo):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    results = client.predict(handle_file(str(photo)), "stripes", 320, api_name="/stylize")
    assert [r["caption"].split(" · ")[0] for r in results] == [norm_label(n) for n in NORMS]
    for r in results:
        with Image.open(r["image"]) as out:
            assert_same_aspect(out.size, (300, 200), 320)


def test_api_takes_the_controls_after_the_size(served, photo):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    photo_320 = pixels(demo_app.load_content(photo, 320))
    for r in client.predict(handle_file(str(photo)), "stripes", 320, 0.0, True, 2.0, api_name="/stylize"):
        assert np.array_equal(pixels(r["image"]), photo_320)  # strength 0 whatever the other controls
    by_name = client.predict(handle_file(str(photo)), "stripes", 320, stroke_scale=1.5, api_name="/stylize")
    assert len(by_name) == 4
    with pytest.raises(AppError, match="stroke_scale must be between"):
        client.predict(handle_file(str(photo)), "stripes", 320, 1.0, False, 5.0, api_name="/stylize")


def test_api_reports_a_non_image_and_keeps_serving(served, photo, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    notes = tmp_path / "notes.png"
    notes.write_text("not a picture\n")
    client = Client(served, verbose=False)
    with pytest.raises(AppError, match="notes.png: not an image file"):
        client.predict(handle_file(str(notes)), "stripes", 256, api_name="/stylize")
    assert len(client.predict(handle_file(str(photo)), "stripes", 256, api_name="/stylize")) == 4



def test_uploads_over_20_mb_are_refused(served):
    import httpx

    def upload(megabytes: int) -> int:
        data = bytes(megabytes * 1024 * 1024)
        return httpx.post(served + "gradio_api/upload", files={"files": ("big.png", data)}, timeout=60).status_code

    assert (upload(21), upload(19)) == (413, 200)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_page_in_a_browser(served, photo, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    notes = tmp_path / "notes.png"
    notes.write_text("not a picture\n")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(served)
            expect(page.locator("#style-info")).to_contain_text("Test Painter, Stripes, 2024")
            expect(page.locator("#style-image img")).to_be_visible()
            for control in ("#strength", "#preserve-color", "#stroke-scale"):
                expect(page.locator(control)).to_be_visible()
            upload = page.locator("#content input[type=file]")

            upload.set_input_files(notes)  # a broken upload shows an error, and the page keeps working
            page.click("#stylise")
            expect(page.get_by_text("notes.png: not an image file")).to_be_visible()

            upload.set_input_files(photo)
            page.locator("#size input[type=number]").fill("256")
            page.locator("#size input[type=number]").press("Enter")
            page.click("#stylise")
            images = page.locator("#results .thumbnail-item img")
            expect(images).to_have_count(4)
            expect(page.locator("#results .caption-label").first).to_contain_text("BN · style 2 · content 0.5 · ")
            for img in images.all():
                expect(img).to_have_js_property("complete", True)
                size = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
                assert_same_aspect(tuple(size), (240, 160), 256)
            page.screenshot(path=tmp_path / "stylise.png", full_page=True)

            first = images.first.get_attribute("src")  # the controls reach the models: strength 0 is the photo
            page.locator("#strength input[type=number]").fill("0")
            page.locator("#strength input[type=number]").press("Enter")
            page.locator("#preserve-color input[type=checkbox]").check()
            page.click("#stylise")
            expect(images.first).not_to_have_attribute("src", first)
            shown = page.request.get(images.first.get_attribute("src")).body()
            assert np.array_equal(pixels(Image.open(io.BytesIO(shown))), pixels(demo_app.load_content(photo, 256)))

            page.get_by_role("tab", name="Training curves").click()
            expect(page.locator("#curves img")).to_be_visible()
            page.screenshot(path=tmp_path / "curves.png", full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "stylise.png").stat().st_size > 10_000


def camera_frame(seed: int = 0, size=(640, 480)) -> np.ndarray:
    """A webcam frame as the page's camera hands it over: (H, W, 3) uint8 RGB."""
    with tempfile.TemporaryDirectory() as folder:
        return np.asarray(Image.open(make_photo(Path(folder) / "frame.png", size=size, seed=seed)).convert("RGB"))


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return camera_frame()


def test_a_live_frame_is_stylised_at_the_chosen_size(demo, frame):
    outputs = {norm: demo.live_frame(frame, "stripes", norm, 128) for norm in NORMS}
    for out in outputs.values():
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (96, 128, 3)
    assert not np.array_equal(outputs["bn"], outputs["in"])  # each norm's own model
    portrait = demo.live_frame(np.ascontiguousarray(frame.transpose(1, 0, 2)), "stripes", "in", 160)
    assert portrait.shape == (160, 120, 3)


def test_live_frames_match_the_stylise_tab(demo, frame, tmp_path):
    Image.fromarray(frame).save(tmp_path / "frame.png")
    (path, _), = [r for r in demo.stylize(str(tmp_path / "frame.png"), "stripes", 256) if "IN ·" in r[1]]
    still = np.asarray(Image.open(path)).astype(int)
    assert np.abs(demo.live_frame(frame, "stripes", "in", 256).astype(int) - still).max() <= 1


class Blocking:
    """A stylizer that holds its first call until released, to have a frame "in progress"."""

    def __init__(self) -> None:
        self.started, self.release, self.calls = threading.Event(), threading.Event(), 0

    def stylize_tensor(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.started.set()
        assert self.release.wait(30)
        return 1 - x


def test_a_frame_arriving_while_one_is_stylised_is_dropped(ckpts, frame):
    demo = demo_app.StyleDemo(ckpts, styles_dir=ckpts / "no-styles", device="cpu")
    slow = Blocking()
    demo.library.stylizer = lambda path: slow
    first = {}
    worker = threading.Thread(target=lambda: first.update(out=demo.live_frame(frame, "stripes", "in", 128)))
    worker.start()
    try:
        assert slow.started.wait(30)
        start = time.perf_counter()
        dropped = [demo.live_frame(camera_frame(seed), "stripes", "in", 128) for seed in (1, 2, 3)]
        assert time.perf_counter() - start < 5  # returned at once, not after the frame in progress
        assert dropped == [gr.skip()] * 3 and demo.dropped_frames == 3
    finally:
        slow.release.set()
        worker.join(30)
    assert slow.calls == 1 and first["out"].shape == (96, 128, 3)
    assert isinstance(demo.live_frame(frame, "stripes", "in", 128), np.ndarray)  # free again: the next frame is stylised
    assert slow.calls == 2


def test_live_frame_refuses_bad_choices_in_one_line(demo, frame):
    assert demo.live_frame(None, "stripes", "in", 256) == gr.skip()  # no picture yet
    for args, message in [(("stripes", "xx", 256), "no 'xx' model for the style 'stripes'"),
                          (("waves", "in", 256), "unknown style 'waves'"),
                          (("stripes", "in", 4000), "out of range; choose 128 to 512 pixels")]:  # fmt: skip
        with pytest.raises(gr.Error, match=message) as err:
            demo.live_frame(frame, *args)
        assert "\n" not in err.value.message


def test_live_norm_choices_follow_the_style(demo):
    assert demo.live_norms("stripes") == {"choices": [(norm_label(n), n) for n in NORMS], "value": "in"}
    assert demo.live_norms("waves") == {"choices": [], "value": None}


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_live_camera_in_a_browser(served, tmp_path):
    """Chromium's fake camera (a moving test pattern, 640x480) streams through the IN model."""
    from playwright.sync_api import expect, sync_playwright

    fake_camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + fake_camera)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(served)
            page.get_by_role("tab", name="Live camera").click()
            expect(page.locator("#live-norm input[value=in]")).to_be_checked()
            page.get_by_text("Click to Access Webcam").click()
            page.locator("#camera button", has_text="Record").click()
            result = page.locator("#live-result img")
            expect(result).to_be_visible()
            expect(result).to_have_js_property("complete", True)
            assert result.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [256, 192]
            page.screenshot(path=tmp_path / "live.png", full_page=True)
            page.locator("#camera button", has_text="Stop").click()
        finally:
            browser.close()
    assert (tmp_path / "live.png").stat().st_size > 10_000
