"""The web UI in a real browser: `python serve.py` as a person starts it, driven by headless Chromium.

Playwright's Python package drives Debian's chromium (`apt-get install chromium`; .ci/run
installs it), since `playwright install` cannot download browsers here. The screenshot of the
captioned page is kept in test-artifacts/browser/ (git-ignored).
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
import pytest
from procs import free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]


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
def page(server):
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM) or Path(CHROMIUM).is_file(), \
        f"no browser at {CHROMIUM}: apt-get install chromium (bash .ci/run does), or set CHROMIUM"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.goto(server)
        page.wait_for_selector("#caption-button")
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
