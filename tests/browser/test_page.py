"""The web UI in a real browser: the server (FastAPI + Gradio at "/") on a loopback port with
the tiny random model, driven by headless Chromium through Playwright.

Each test fills a tab, generates, and reads the result image back from the page: a real PNG
of the expected size carrying the parameters. Screenshots go to docs/screenshots/ (for the
README) and to test-artifacts/browser/ (git-ignored, for CI).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kandinsky.pipeline import Kandinsky21
from kandinsky.results import JSON_KEY
from kandinsky.testing import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
WAIT_MS = 60_000  # every wait in the page is bounded by this
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAST = {"steps": "2", "prior-steps": "2"}


def _chromium() -> str:
    """Chromium's path: $KANDINSKY_CHROMIUM, else chromium / chromium-browser on PATH."""
    candidates = [os.environ.get("KANDINSKY_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
    for path in candidates:
        if path and Path(path).is_file():
            return path
    pytest.fail(
        "the browser tests need Chromium: `apt-get install chromium` (or set $KANDINSKY_CHROMIUM "
        "to a Chromium/Chrome binary)",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, deadline_s: float = 60.0) -> None:
    import urllib.request

    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise TimeoutError(f"the server at {url} did not answer within {deadline_s:.0f} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory: pytest.TempPathFactory) -> Kandinsky21:
    folder = write_tiny_model(tmp_path_factory.mktemp("tiny-ui") / "m")
    pipe = Kandinsky21.from_pretrained(folder, inpainting=True)
    pipe.model_id = "tiny-random"  # a stable name in the screenshots (not the tmp path)
    return pipe


@pytest.fixture(scope="module")
def base_url(tiny_pipe: Kandinsky21) -> Iterator[str]:
    """The real server (create_app with the UI at "/") under uvicorn on a free loopback port."""
    import uvicorn

    from kandinsky.server.app import ServerSettings, create_app

    port = _free_port()
    settings = ServerSettings(host="127.0.0.1", port=port, ui=True, api_key=None)
    app = create_app(tiny_pipe, settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="ui-test-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        app.state.worker.close(wait=True, timeout=10)
    assert not thread.is_alive(), "the test server did not stop"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, base_url: str, request: pytest.FixtureRequest):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base_url + "/")
    page.wait_for_selector("#t2i-prompt textarea")
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # the last state, to debug a failure
    try:
        page.screenshot(path=str(ARTIFACTS / f"end-{request.node.name}.png"), full_page=True)
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _screenshot(page, name: str) -> None:
    """Full-page PNG into test-artifacts/browser/ (and docs/screenshots/ when
    KANDINSKY_UPDATE_SCREENSHOTS=1, so a plain test run leaves the repo unchanged)."""
    folders = [ARTIFACTS] + (
        [SCREENSHOTS] if os.environ.get("KANDINSKY_UPDATE_SCREENSHOTS") == "1" else []
    )
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)


def _open_tab(page, name: str, first_field: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_selector(first_field)


def _fast_settings(page, prefix: str, seed: int | None = 0) -> None:
    """Open "Advanced" and set 2 steps / 2 prior steps (and a fixed seed)."""
    page.click(f"#{prefix}-advanced")
    page.wait_for_selector(f"#{prefix}-steps input[type=number]")
    for field, value in FAST.items():
        page.fill(f"#{prefix}-{field} input[type=number]", value)
        page.press(f"#{prefix}-{field} input[type=number]", "Tab")
    if seed is not None:
        page.fill(f"#{prefix}-seed input", str(seed))


def _result_image(page, prefix: str) -> Image.Image:
    """Wait for the gallery's first image and download it the way the browser got it."""
    image = page.locator(f"#{prefix}-gallery img").first
    image.wait_for(state="visible")
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; }",
        arg=f"#{prefix}-gallery img",
        timeout=WAIT_MS,
    )
    src = image.get_attribute("src")
    assert src, "the gallery image has no src"
    response = page.request.get(src)
    assert response.ok, f"GET {src} → {response.status}"
    picture = Image.open(io.BytesIO(response.body()))
    picture.load()
    return picture


def _wait_until_stable(page, selector: str, polls: int = 3, interval_ms: int = 250) -> None:
    """Wait until the element's text has stayed the same over `polls` readings."""
    seen: list[str] = []
    end = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < end:
        seen.append(page.locator(selector).first.inner_text())
        if len(seen) >= polls and len(set(seen[-polls:])) == 1:
            return
        page.wait_for_timeout(interval_ms)
    raise TimeoutError(f"{selector} kept changing: {seen[-5:]}")


def _write_input(tmp_path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 128)], axis=-1)
    pixels = (pixels + rng.integers(0, 40, pixels.shape)).clip(0, 255).astype(np.uint8)
    path = tmp_path / f"input-{width}x{height}.png"
    Image.fromarray(pixels).save(path)
    return path


def test_text2img_generates_a_64px_png_and_reuses_its_seed(page):
    # the model's own size is the default (512 for this tiny model, 64 for the demo model)
    assert page.is_checked('#t2i-size-preset input[value="Model\'s size"]')
    assert page.input_value("#t2i-width input") == "512"
    page.fill("#t2i-prompt textarea", "a red circle on the left of a blue square")
    page.fill("#t2i-width input", "64")
    page.fill("#t2i-height input", "64")
    page.press("#t2i-height input", "Tab")
    page.wait_for_function(
        "() => document.querySelector('#t2i-size-preset input[value=\"Custom\"]').checked"
    )
    _fast_settings(page, "t2i", seed=1234)
    page.fill("#t2i-negative-prompt textarea", "blurry")
    page.click("#t2i-generate")

    picture = _result_image(page, "t2i")
    assert picture.format == "PNG"
    assert picture.size == (64, 64)
    params = json.loads(picture.text[JSON_KEY])
    assert params["seed"] == 1234 and params["num_steps"] == 2 and params["prior_steps"] == 2
    assert params["negative_prompt"] == "blurry"
    page.wait_for_function("() => document.querySelector('#t2i-params textarea').value.length > 0")
    assert page.input_value("#t2i-params textarea").startswith("Seeds: 1234")

    page.click("#t2i-seed-random")
    page.wait_for_function("() => document.querySelector('#t2i-seed input').value === '-1'")
    page.click("#t2i-seed-reuse")
    page.wait_for_function("() => document.querySelector('#t2i-seed input').value === '1234'")
    _screenshot(page, "text2img.png")


def test_invalid_input_shows_the_message_not_a_traceback(page):
    page.fill("#t2i-prompt textarea", "a cat")
    page.fill("#t2i-width input", "65")
    page.fill("#t2i-height input", "64")
    page.press("#t2i-height input", "Tab")
    page.wait_for_function(
        "() => document.querySelector('#t2i-size-preset input[value=\"Custom\"]').checked"
    )
    page.click("#t2i-generate")
    toast = page.get_by_text("multiple of 8", exact=False).first
    toast.wait_for(state="visible")
    assert "Traceback" not in page.content()


def test_inpaint_with_a_painted_stroke(page, tmp_path: Path):
    source = _write_input(tmp_path, 128, 96)
    _open_tab(page, "Inpaint", "#inpaint-editor")
    # the editor's drawing surface must exist before a picture arrives: on a loaded machine
    # an upload into a half-mounted editor fails inside Gradio ("reset_layers" of undefined)
    page.locator("#inpaint-editor .pixi-target canvas").first.wait_for(state="attached")
    page.locator("#inpaint-editor input[type=file]").set_input_files(str(source))
    page.wait_for_selector("#inpaint-editor button[aria-label='Undo']")
    # the "input image size" preset shows the picture's own size
    page.wait_for_function("() => document.querySelector('#inpaint-width input').value === '128'")
    assert page.input_value("#inpaint-height input") == "96"
    canvas = page.locator("#inpaint-editor .pixi-target canvas").first
    canvas.wait_for(state="visible")
    _wait_until_stable(page, "#inpaint-editor .zoom-number")  # the picture is fitted in
    box = canvas.bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy - 10)
    page.mouse.down()
    for i in range(1, 5):  # few moves: each one repaints the (software-rendered) canvas
        page.mouse.move(cx - 40 + 20 * i, cy - 10 + 5 * i)
    page.mouse.up()

    page.fill("#inpaint-prompt textarea", "a yellow star")
    _fast_settings(page, "inpaint")
    page.click("#inpaint-generate")

    picture = _result_image(page, "inpaint")
    assert picture.format == "PNG"
    assert picture.size == (128, 96)
    params = json.loads(picture.text[JSON_KEY])
    assert params["mode"] == "inpaint" and params["mask_polarity"] == "white_repaints"
    # paste-back keeps the unpainted corners exactly; the painted middle is new
    original = np.asarray(Image.open(source).convert("RGB")).astype(int)
    result = np.asarray(picture.convert("RGB")).astype(int)
    assert np.array_equal(result[:4, :4], original[:4, :4])
    assert np.abs(result[44:52, 60:68] - original[44:52, 60:68]).mean() > 5
    _screenshot(page, "inpaint.png")


def test_outpaint_previews_the_grown_canvas_and_fills_it(page, tmp_path: Path):
    source = _write_input(tmp_path, 64, 64, seed=1)
    _open_tab(page, "Outpaint", "#outpaint-image")
    page.locator("#outpaint-image input[type=file]").set_input_files(str(source))
    for side, value in (("left", "32"), ("right", "32"), ("top", "0"), ("bottom", "16")):
        page.fill(f"#outpaint-{side} input[type=number]", value)
        page.press(f"#outpaint-{side} input[type=number]", "Tab")
    page.get_by_text("Canvas 128 × 80", exact=False).wait_for(state="visible")
    page.wait_for_function(
        "() => { const i = document.querySelector('#outpaint-preview img');"
        " return i && i.complete && i.naturalWidth === 128 && i.naturalHeight === 80; }"
    )
    response = page.request.get(page.locator("#outpaint-preview img").first.get_attribute("src"))
    assert Image.open(io.BytesIO(response.body())).size == (128, 80)

    page.fill("#outpaint-prompt textarea", "a wide landscape")
    _fast_settings(page, "outpaint")
    page.click("#outpaint-generate")
    picture = _result_image(page, "outpaint")
    assert picture.size == (128, 80)
    assert json.loads(picture.text[JSON_KEY])["extend"] == [32, 0, 32, 16]
    _screenshot(page, "outpaint.png")


def test_mix_of_two_texts(page):
    _open_tab(page, "Mix", "#mix-text-1 textarea")
    page.fill("#mix-text-1 textarea", "a red circle")
    page.fill("#mix-text-2 textarea", "a green triangle")
    page.click("#mix-size-preset input[value='Custom']")
    page.fill("#mix-width input", "64")
    page.fill("#mix-height input", "64")
    page.press("#mix-height input", "Tab")
    _fast_settings(page, "mix")
    page.click("#mix-generate")
    picture = _result_image(page, "mix")
    assert picture.size == (64, 64)
    params = json.loads(picture.text[JSON_KEY])
    assert params["items"] == ["a red circle", "a green triangle"]
    assert params["weights"] == [0.5, 0.5]
    text = page.input_value("#mix-params textarea")
    assert "Mix: 0.5 × a red circle + 0.5 × a green triangle" in text
    _screenshot(page, "mix.png")


def test_img2img_at_the_input_size_and_variations(page, tmp_path: Path):
    source = _write_input(tmp_path, 80, 64, seed=2)
    _open_tab(page, "Image to image", "#i2i-image")
    page.locator("#i2i-image input[type=file]").set_input_files(str(source))
    page.wait_for_function("() => document.querySelector('#i2i-width input').value === '80'")
    page.fill("#i2i-prompt textarea", "a watercolor painting")
    _fast_settings(page, "i2i")
    page.click("#i2i-generate")
    picture = _result_image(page, "i2i")
    assert picture.size == (80, 64)
    assert json.loads(picture.text[JSON_KEY])["strength"] == 0.7

    _open_tab(page, "Variations", "#var-image")
    page.locator("#var-image input[type=file]").set_input_files(str(source))
    page.click("#var-size-preset input[value='Custom']")
    page.fill("#var-width input", "64")
    page.fill("#var-height input", "72")
    page.press("#var-height input", "Tab")
    page.fill("#var-num-images input[type=number]", "2")
    page.press("#var-num-images input[type=number]", "Tab")
    _fast_settings(page, "var", seed=7)
    page.click("#var-generate")
    page.wait_for_function("() => document.querySelectorAll('#var-gallery img').length === 2")
    picture = _result_image(page, "var")
    assert picture.size == (64, 72)
    assert page.input_value("#var-params textarea").startswith("Seeds: 7, 8")
    _screenshot(page, "variations.png")


def test_standalone_launch_serves_the_page():
    """`ui.launch` (gradio's own server, no API routes) answers on loopback and stops."""
    import urllib.request

    from kandinsky.server import ui

    class NoWorker:
        def run(self, mode, kwargs, timeout=None):
            raise AssertionError("not called")

    port = _free_port()
    demo = ui.launch(NoWorker(), None, host="127.0.0.1", port=port, block=False)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
            assert "Kandinsky 2.1" in response.read().decode()
    finally:
        demo.close()
