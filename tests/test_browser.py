"""The web UI in a real browser: `python serve.py` as a person starts it, driven by headless Chromium.

Playwright's Python package drives Debian's chromium (`apt-get install chromium`; .ci/run
installs it), since `playwright install` cannot download browsers here. The screenshot of the
captioned page is kept in test-artifacts/browser/ (git-ignored).

Every way a person gives an image: an upload, a pasted image (the clipboard, written by the page
itself), the webcam (Chromium's fake camera playing a shapes-world picture) and a clicked
example; and the page at a phone's width.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from procs import free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a camera, allowed
CAMERA_IMAGE = ROOT / "examples" / "shapes-one.jpg"  # what the fake camera films


def write_y4m(image: Image.Image, path: Path, frames: int = 2) -> None:
    """A still picture as a Y4M video (BT.601 limited range, 4:2:0), which Chromium's fake camera plays."""
    rgb = np.asarray(image.convert("RGB"), np.float64) / 255.0
    h, w = rgb.shape[:2]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    cb, cr = (c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (cb, cr))  # 4:2:0
    planes = b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in (y, cb, cr))
    path.write_bytes(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode() + (b"FRAME\n" + planes) * frames)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python serve.py --port P`: the real main(), model loaded at start, default limits."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "serve.py", "--port", str(port)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180  # a generous bound for a loaded CI machine; ready in ~10 s here
        while True:
            assert proc.poll() is None, f"serve.py exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"serve.py not answering after 180 s:\n{log.read_text()}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM) or Path(CHROMIUM).is_file(), \
        f"no browser at {CHROMIUM}: apt-get install chromium (bash .ci/run does), or set CHROMIUM"
    video = tmp_path_factory.mktemp("camera") / "camera.y4m"
    write_y4m(Image.open(CAMERA_IMAGE), video)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={video}"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.rstrip("/"))
        page = context.new_page()
        page.set_default_timeout(60_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        _fresh(page, server)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def model():
    from captioner.model import Captioner
    from cli import DEFAULT_CHECKPOINT

    return Captioner.from_checkpoint(DEFAULT_CHECKPOINT)


def test_upload_caption_and_one_overlay_per_word(page, model):
    from playwright.sync_api import expect

    image = ROOT / "examples" / "shapes-three.jpg"
    want = model.caption([image], beam_size=3)[0]
    expect(page.locator("#demo-note")).to_contain_text("knows only the shapes world")

    page.locator("#input-image input[type=file]").set_input_files(str(image))
    page.wait_for_selector("#input-image img")  # the upload is shown
    page.click("#caption-button")
    expect(page.locator("#caption-text textarea")).to_have_value(want.text)
    thumbs = page.locator("#word-gallery button.thumbnail-item")
    expect(thumbs).to_have_count(len(want.words))
    for k in (0, len(want.words) - 1):
        expect(thumbs.nth(k)).to_contain_text(want.words[k])
    expect(page.locator("#word-view")).to_contain_text(f"word 1 of {len(want.words)}")

    n = len(want.words)
    thumbs.nth(2).click()  # the large view follows the clicked word
    expect(page.locator("#word-view")).to_contain_text(f"word 3 of {n}: \u201c{want.words[2]}\u201d")
    expect(page.locator("#word-slider input[type=number]")).to_have_value("3")
    page.locator("#word-slider input[type=range]").fill(str(n))  # ... and the word scrubbed to
    expect(page.locator("#word-view")).to_contain_text(f"word {n} of {n}: \u201c{want.words[-1]}\u201d")
    expect(thumbs.nth(n - 1)).to_have_class(re.compile(r"\bselected\b"))  # the gallery's highlight follows
    expect(page.locator("#word-gallery button.thumbnail-item.selected")).to_have_count(1)
    expect(page.locator('#figure a[href$="/shapes-three-attention.png"]')).to_have_count(1)  # the PNG follows
    expect(page.locator("#timing")).to_contain_text("PNG figure")

    page.screenshot(path=str(ARTIFACTS / "serve-ui.png"), full_page=True)


def test_bad_upload_shows_its_message(page, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not a picture\n")
    page.locator("#input-image input[type=file]").set_input_files(str(bad))
    page.click("#caption-button")
    expect(page.locator(".toast-body").first).to_contain_text("notes.png: not a recognised image format")
    page.screenshot(path=str(ARTIFACTS / "serve-ui-error.png"))


def _fresh(page, server: str) -> None:
    """A newly loaded page: no image, no caption."""
    page.goto(server)
    page.wait_for_selector("#caption-button")


def _shown_input(page) -> Path:
    """The picture the input shows, fetched from the server: the very file the handler gets."""
    src = page.locator("#input-image .image-frame img").get_attribute("src")
    path = ARTIFACTS / Path(src).name
    path.write_bytes(httpx.get(src, timeout=30).raise_for_status().content)
    return path


def _caption_and_check(page, model, image: Path) -> None:
    from playwright.sync_api import expect

    want = model.caption([image], beam_size=3)[0]
    page.click("#caption-button")
    expect(page.locator("#caption-text textarea")).to_have_value(want.text)
    expect(page.locator("#word-gallery button.thumbnail-item")).to_have_count(len(want.words))


def test_pasted_image_is_captioned(page, server, model):
    import base64
    import io

    _fresh(page, server)
    png = io.BytesIO()
    Image.open(ROOT / "examples" / "shapes-two.jpg").save(png, "PNG")
    page.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        await navigator.clipboard.write([new ClipboardItem({"image/png": new Blob([bytes], {type: "image/png"})})]);
    }""", base64.b64encode(png.getvalue()).decode())
    page.click("#input-image button[aria-label='Paste from clipboard']")
    page.wait_for_selector("#input-image .image-frame img")
    pasted = _shown_input(page)
    assert np.array_equal(np.asarray(Image.open(pasted).convert("RGB")),
                          np.asarray(Image.open(ROOT / "examples" / "shapes-two.jpg").convert("RGB")))
    _caption_and_check(page, model, pasted)


def test_webcam_photo_is_captioned_unmirrored(page, server, model):
    _fresh(page, server)
    page.click("#input-image button[aria-label='Capture from camera']")
    page.click("#input-image button:has-text('Click to Access Webcam')")
    page.wait_for_selector("#input-image video[data-testid=webcam-video]:not(.hide)")
    page.wait_for_function("document.querySelector('#input-image video').videoWidth > 0")  # a frame to take
    page.click("#input-image button[aria-label='capture photo']")
    page.wait_for_selector("#input-image .image-frame img")
    photo = _shown_input(page)
    shot = np.asarray(Image.open(photo).convert("RGB"), np.float64)
    scene = Image.open(CAMERA_IMAGE).convert("RGB")
    off = np.abs(shot - np.asarray(scene, np.float64)).mean()
    off_mirrored = np.abs(shot - np.asarray(ImageOps.mirror(scene), np.float64)).mean()
    # The photo is the scene (up to the camera's YUV 4:2:0 round trip), not its mirror image.
    assert off < 3 < off_mirrored, (off, off_mirrored)
    _caption_and_check(page, model, photo)
    page.screenshot(path=str(ARTIFACTS / "serve-ui-webcam.png"))


def test_clicked_example_is_captioned(page, server, model):
    _fresh(page, server)
    page.locator("button.gallery-item img[src$='/chelsea.jpg']").click()  # the cat photo among the examples
    page.wait_for_selector("#input-image .image-frame img[src$='/chelsea.jpg']")
    assert _shown_input(page).read_bytes() == (ROOT / "examples" / "chelsea.jpg").read_bytes()
    _caption_and_check(page, model, ROOT / "examples" / "chelsea.jpg")


def test_phone_width_keeps_the_beams_readable(page, server, model):
    """At 390 px the page stacks into one column; the beams' scores stay in view, each on one line."""
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 390, "height": 844})
    try:
        _fresh(page, server)
        page.locator("button.gallery-item img[src$='/shapes-three.jpg']").click()
        _caption_and_check(page, model, ROOT / "examples" / "shapes-three.jpg")
        scores = page.locator("#beams [role=gridcell][data-col='1']")  # Gradio's grid: div rows and cells
        expect(scores).to_have_count(3)
        layout = page.evaluate("""() => {
            const grid = document.querySelector('#beams [role=grid]');
            const cells = [document.querySelector('#beams th[data-heading="1"]'),
                           ...grid.querySelectorAll('[role=gridcell][data-col="1"]')];
            const lines = cell => { const r = document.createRange(); r.selectNodeContents(cell);
                                    return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size; };
            return {page: document.documentElement.scrollWidth, grid: [grid.scrollWidth, grid.clientWidth],
                    right: grid.getBoundingClientRect().right, ends: cells.map(c => c.getBoundingClientRect().right),
                    lines: cells.map(c => lines(c.querySelector('span'))), texts: cells.map(c => c.innerText.trim())};
        }""")
        page.screenshot(path=str(ARTIFACTS / "serve-ui-phone.png"), full_page=True)
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
    assert layout["page"] <= 390 and layout["grid"][0] <= layout["grid"][1], layout  # nothing scrolls sideways
    assert all(end <= layout["right"] + 1 for end in layout["ends"]), layout  # the scores are in view
    assert layout["texts"][0] == "score" and all(n == 1 for n in layout["lines"]), layout  # each on one line
