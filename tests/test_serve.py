"""serve.py through a launched server: gradio_client against the real gr.Blocks app and the demo model.

One server (module scope) serves every test; it is launched by serve.launch() with the same
arguments a person's `python serve.py` would get, except a 1 MB upload limit (cheap to exceed).
"""
from __future__ import annotations

import io
import struct
import threading
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageOps

import serve
from cli import DEFAULT_CHECKPOINT
from procs import free_port

UPLOAD_MB = 1

# Gradio's queue builds its statistics with pandas calls that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    from captioner import shapes

    root = tmp_path_factory.mktemp("world")
    shapes.generate_world(root, seed=2, sizes={"train": 0, "val": 0, "test": 8, "test_novel": 0}, workers=1)
    return sorted((root / "images" / "test").glob("*.jpg"))


@pytest.fixture(scope="module")
def model():
    from captioner.model import Captioner

    return Captioner.from_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def expected(model, images) -> dict[Path, str]:
    """The captions evaluation decodes for the same files (batched, through its DataLoader)."""
    from captioner.datasets import ImageRecord
    from captioner.evaluation import decode_records

    records = [ImageRecord(i, str(p), "test", ()) for i, p in enumerate(images)]
    outs = decode_records(model, records, beam_size=3, batch_size=4)
    return {p: outs[i].text for i, p in enumerate(images)}


@pytest.fixture(scope="module")
def server(model):
    args = serve.parse_args(["--port", str(free_port()), "--max-upload-mb", str(UPLOAD_MB), "--concurrency", "2"])
    demo = serve.build_demo(model, serve.limits_from(args), demo_model=True)
    _, url, _ = serve.launch(demo, args, block=False)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server, verbose=False, download_files=False)


def caption(client: Client, path, beam: int = 3, max_len: int = 30) -> dict:
    return client.predict(handle_file(str(path)), beam, max_len, api_name="/caption")


# --- the round trip -----------------------------------------------------------------------------

def test_round_trip_matches_evaluation(client, model, images, expected):
    for path in images[:3]:
        r = caption(client, path)
        alone = model.caption([path], beam_size=3)[0]
        assert r["caption"] == expected[path] == alone.text
        assert r["tokens"] == alone.words == r["caption"].split()
        h, w = r["grid"]
        assert (h, w) == model.grid
        att = np.array(r["attention"])
        assert att.shape == (len(r["tokens"]), h, w)  # one h x w grid per token
        np.testing.assert_allclose(att, alone.alphas, atol=1e-4)
        np.testing.assert_allclose(att.sum(axis=(1, 2)), 1.0, atol=1e-3)  # each is a distribution
        assert r["beams"][0] == {"caption": r["caption"], "score": pytest.approx(r["score"])}
        assert [b["caption"] for b in r["beams"]] == [t for t, _ in alone.beams]
        assert r["score"] == pytest.approx(alone.score, abs=1e-3)
        assert r["image_size"] == [224, 224] and r["finished"] is True and r["seconds"] > 0


def test_beam_and_length_controls(client, model, images):
    r = caption(client, images[0], beam=1, max_len=4)
    greedy = model.caption([images[0]], beam_size=1, max_len=4)[0]
    assert r["tokens"] == greedy.words and len(r["tokens"]) <= 4 and len(r["beams"]) == 1
    assert r["finished"] is greedy.finished


# --- bad input: a specific message each, and the server stays up --------------------------------

def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that only declares its size: a decompression bomb costs nothing to make."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _corrupt_png(image: Path) -> bytes:
    data = bytearray(_encode(Image.open(image), "PNG"))
    mid = len(data) // 2
    data[mid: mid + 64] = bytes(64)  # zeros in the middle of the compressed pixels
    return bytes(data)


def _png(size: tuple[int, int]) -> bytes:
    return _encode(Image.new("RGB", size, "red"), "PNG")


BAD = {  # file name: (its bytes from a good image, the message the person must see)
    "empty.png": (lambda im: b"", "empty.png: empty input (0 bytes)"),
    "notes.jpg": (lambda im: b"notes, not a photo\n" * 20, "notes.jpg: not a recognised image format"),
    "truncated.jpg": (lambda im: im.read_bytes()[:3000], "truncated.jpg: truncated or corrupt image data"),
    "corrupt.png": (_corrupt_png, "corrupt.png: truncated or corrupt image data"),
    "bomb.png": (lambda im: _png_header_only(20_000, 20_000),
                 "more than the limit max_pixels=40,000,000 (possible decompression bomb)"),
    "dot.png": (lambda im: _png((1, 1)), "dot.png: image is 1x1, smaller than the minimum side min_side=16"),
    "strip.png": (lambda im: _png((1000, 40)), "aspect ratio 25.0:1 is more elongated than max_aspect=10.0"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_its_message_and_the_server_stays_up(client, images, expected, tmp_path, name):
    make, message = BAD[name]
    bad = tmp_path / name
    bad.write_bytes(make(images[1]))
    with pytest.raises(AppError) as err:
        caption(client, bad)
    assert message in str(err.value)
    assert caption(client, images[1])["caption"] == expected[images[1]]


def test_missing_image_and_out_of_range_controls(client, images):
    with pytest.raises(AppError, match="No image"):
        client.predict(None, 3, 30, api_name="/caption")
    for beam, max_len in ((0, 30), (11, 30), (3, 51), (2.5, 30)):
        with pytest.raises(AppError):
            caption(client, images[0], beam=beam, max_len=max_len)
    assert caption(client, images[0])["tokens"]


def test_oversized_upload_refused(client, server, images, expected, tmp_path):
    big = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)  # ~1.5 MB as PNG
    Image.fromarray(noise).save(big, compress_level=0)
    assert big.stat().st_size > UPLOAD_MB * 1024 * 1024
    with pytest.raises(Exception, match="413|[Ff]ile.*(large|size)"):
        caption(client, big)
    with open(big, "rb") as f:  # the raw upload route says why
        res = httpx.post(f"{server}gradio_api/upload", files={"files": ("big.png", f, "image/png")})
    assert res.status_code == 413
    assert caption(client, images[1])["caption"] == expected[images[1]]


def test_inline_image_reaches_the_same_loader(client, images, expected):
    """A data: URL (how a page may send a pasted image) is decoded to its bytes and loaded like an upload."""
    import base64

    inline = "data:image/jpeg;base64," + base64.b64encode(images[1].read_bytes()).decode()
    r = client.predict({"url": inline, "meta": {"_type": "gradio.FileData"}}, 3, 30, api_name="/caption")
    assert r["caption"] == expected[images[1]]
    bad = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    with pytest.raises(AppError, match="inline-image.bin: not a recognised image format"):
        client.predict({"url": bad, "meta": {"_type": "gradio.FileData"}}, 3, 30, api_name="/caption")


def test_a_server_file_the_client_did_not_upload_is_refused(server, images):
    """Only uploads reach the loader: a request naming any other path on the server fails."""
    job = httpx.post(f"{server}gradio_api/call/caption",
                     json={"data": [{"path": str(images[0]), "meta": {"_type": "gradio.FileData"}}, 3, 30]})
    with httpx.stream("GET", f"{server}gradio_api/call/caption/{job.json()['event_id']}", timeout=60) as events:
        text = "".join(events.iter_text())
    assert "event: error" in text and "caption" not in text


# --- valid but unusual images: captioned as the RGB image a viewer shows --------------------------

def _exif_rotated(s: Image.Image, path: Path) -> Image.Image:
    upright = s.crop((0, 0, 224, 160))  # not square, so a missed rotation also shows in the size
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes())
    assert ImageOps.exif_transpose(Image.open(path)).tobytes() == upright.tobytes()
    return upright


def _transparent(s: Image.Image, path: Path) -> Image.Image:
    rgba = s.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, 90, 224))  # the left strip fully transparent (and black beneath)
    rgba.save(path)
    on_white = s.copy()
    on_white.paste((255, 255, 255), (0, 0, 90, 224))
    return on_white


def _sixteen_bit(s: Image.Image, path: Path) -> Image.Image:
    gray = s.convert("L")
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I;16")
    return gray.convert("RGB")


def _cmyk(s: Image.Image, path: Path) -> Image.Image:
    cmyk = s.convert("CMYK")
    cmyk.save(path)
    return cmyk.convert("RGB")


def _palette(s: Image.Image, path: Path) -> Image.Image:
    p = s.quantize(200)
    p.save(path)
    return p.convert("RGB")


def _grayscale(s: Image.Image, path: Path) -> Image.Image:
    gray = s.convert("L")
    gray.save(path)
    return gray.convert("RGB")


def _animated(fmt: str):
    def make(s: Image.Image, path: Path, other: Image.Image) -> Image.Image:
        first = s.quantize(255) if fmt == "GIF" else s
        frames = [first, other.quantize(255) if fmt == "GIF" else other]
        extra = {"lossless": True} if fmt == "WEBP" else {}
        frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
        assert Image.open(path).n_frames == 2
        return first.convert("RGB")
    return make


UNUSUAL = {
    "exif-rotated.png": _exif_rotated,
    "transparent.png": _transparent,
    "sixteen-bit.png": _sixteen_bit,
    "cmyk.tif": _cmyk,
    "palette.png": _palette,
    "grayscale.png": _grayscale,
    "animated.gif": _animated("GIF"),
    "animated.webp": _animated("WEBP"),
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_image_is_captioned_as_what_a_viewer_shows(client, model, images, tmp_path, name):
    s = Image.open(images[2]).convert("RGB")
    path = tmp_path / name
    make = UNUSUAL[name]
    ref = make(s, path, Image.open(images[3]).convert("RGB")) if name.startswith("animated") else make(s, path)
    want = model.caption([ref], beam_size=3)[0]
    r = caption(client, path)
    assert r["image_size"] == list(ref.size)
    assert r["caption"] == want.text
    np.testing.assert_allclose(np.array(r["attention"]), want.alphas, atol=1e-4)


def test_the_checks_above_can_tell_wrong_decodings_apart(model, images):
    """Alpha composited on black, or the second frame, would give attention the test above rejects."""
    s = Image.open(images[2]).convert("RGB")
    on_white, on_black = s.copy(), s.copy()
    on_white.paste((255, 255, 255), (0, 0, 90, 224))
    on_black.paste((0, 0, 0), (0, 0, 90, 224))
    a, b, other = model.caption([on_white, on_black, Image.open(images[3])], beam_size=3)
    for wrong in (b, other):
        assert wrong.text != a.text or np.abs(wrong.alphas - a.alphas).max() > 1e-3


def test_page_shows_the_exif_rotated_image_upright(client, images, tmp_path):
    """The page's own event (overlays and all): every word's overlay has the upright shape."""
    path = tmp_path / "rotated.png"
    _exif_rotated(Image.open(images[2]).convert("RGB"), path)
    text, timing, big, _, tiles, beams, _ = client.predict(handle_file(str(path)), 3, 30, api_name="/caption_ui")
    words = text.split()
    assert [t["caption"] for t in tiles] == [f"{i}{serve.SEP}{w}" for i, w in enumerate(words, 1)]
    with httpx.Client() as http:
        assert "word 1 of" in big["label"]
        for image, side in [(t["image"], serve.TILE_SIDE) for t in tiles[:2]] + [(big["value"], serve.VIEW_SIDE)]:
            shown = Image.open(io.BytesIO(http.get(image["url"]).content))
            assert shown.size == (side, round(side * 160 / 224))  # landscape, as upright
    assert beams["data"][0][0] == text and "ms" in timing


# --- load ---------------------------------------------------------------------------------------

def test_eight_concurrent_clients_five_requests_each(server, images, expected):
    answers: dict[tuple[int, int], str] = {}
    errors: list[BaseException] = []

    def user(u: int) -> None:
        try:
            c = Client(server, verbose=False, download_files=False)
            for k in range(5):
                path = images[(u + k) % len(images)]
                answers[u, k] = caption(c, path)["caption"]
        except BaseException as e:  # noqa: BLE001 (reported below, with the others)
            errors.append(e)

    threads = [threading.Thread(target=user, args=(u,)) for u in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(answers) == 40
    assert all(answers[u, k] == expected[images[(u + k) % len(images)]] for u, k in answers)


# --- the launch settings and the page -----------------------------------------------------------

def test_safe_defaults():
    args = serve.parse_args([])
    assert (args.host, args.port, args.checkpoint) == ("127.0.0.1", 7860, str(DEFAULT_CHECKPOINT))
    lim = serve.limits_from(args)
    assert lim == serve.Limits() and lim.max_bytes == 10 * 1024 * 1024 and lim.max_pixels == 40_000_000
    assert (lim.max_beam, lim.max_len, args.queue_size, args.concurrency) == (10, 50, 32, 2)
    for bad in (["--max-beam", "0"], ["--max-upload-mb", "-1"], ["--max-aspect", "0.5"], ["--port", "0"]):
        with pytest.raises(SystemExit):
            serve.parse_args(bad)


def test_no_monitoring_no_share_local_only(server):
    assert server.startswith("http://127.0.0.1:")
    assert httpx.get(f"{server}monitoring").status_code == 403  # "Monitoring is not enabled."
    config = httpx.get(f"{server}config").json()
    assert config.get("share_url") in (None, "")


def test_demo_model_note_and_api_listing(server, client, model):
    config = httpx.get(f"{server}config").text
    assert "knows only the shapes world" in config and "--checkpoint runs/coco/best.pt" in config
    other = serve.build_demo(model, demo_model=False).get_config_file()
    assert "knows only the shapes world" not in str(other)
    api = client.view_api(print_info=False, return_format="dict")
    assert "/caption" in api["named_endpoints"]


def test_word_view_follows_the_chosen_word(model, images, tmp_path):
    from captioner.overlay import overlay

    image = Image.open(images[0]).convert("RGB")
    out = model.caption([image])[0]
    image.save(tmp_path / "view.png")  # lossless, so the large view can be compared exactly
    shown = serve.Shown("x.jpg", str(tmp_path / "view.png"), out, {}, image.size)
    n = len(out.words)
    view = serve.word_view(shown, 2)
    assert f"word 2 of {n}" in view["label"] and out.words[1] in view["label"]
    assert view["value"].tobytes() == overlay(image, out.alphas[1]).tobytes()
    assert serve.word_view(shown, 99)["label"].startswith(f"Where the model looked for word {n} of {n}")  # clamped
    (tmp_path / "view.png").unlink()  # swept from the cache
    assert serve.word_view(shown, 1)["value"] is None and serve.word_view(None, 1)["value"] is None
