"""Tests for captioner.images: the safe loader and the single transform."""

import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.images import ImageLoadError, build_transform, load_image

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def _close(a, b, tol=12):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width, height):
    """A PNG that only declares its size: enough for Image.open, costs nothing."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --- valid but unusual images ------------------------------------------------


def test_plain_rgb_from_path_bytes_stream_and_pil(tmp_path):
    img = Image.new("RGB", (6, 4), GREEN)
    path = tmp_path / "a.png"
    img.save(path)
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), img):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (6, 4) and out.getpixel((0, 0)) == GREEN
    # The caller's PIL image is not modified or closed.
    assert img.getpixel((0, 0)) == GREEN


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 128 * 257, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = load_image(path)
    assert [out.getpixel((x, 0)) for x in range(4)] == [BLACK, (128,) * 3, WHITE, (4,) * 3]


def test_32bit_int_and_float_grayscale():
    i16 = Image.fromarray(np.array([[0, 65535, 32896]], dtype=np.int32))
    assert i16.mode == "I"
    assert [load_image(i16).getpixel((x, 0)) for x in range(3)] == [BLACK, WHITE, (128,) * 3]
    i8 = Image.fromarray(np.array([[0, 200]], dtype=np.int32))
    assert load_image(i8).getpixel((1, 0)) == (200,) * 3
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert [load_image(f01).getpixel((x, 0)) for x in range(4)] == [BLACK, (128,) * 3, WHITE, BLACK]
    f255 = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32))
    assert [load_image(f255).getpixel((x, 0)) for x in range(3)] == [BLACK, (100,) * 3, WHITE]


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    assert out.mode == "RGB" and _close(out.getpixel((8, 8)), RED)


@pytest.mark.parametrize("mode", ["YCbCr", "HSV"])
def test_other_colour_spaces(mode):
    src = Image.new("RGB", (4, 4), (200, 30, 40)).convert(mode)
    assert _close(load_image(src).getpixel((0, 0)), (200, 30, 40), 6)


def test_lab():
    white = Image.new("LAB", (4, 4), (255, 128, 128))  # L=100, a=b=0
    assert _close(load_image(white).getpixel((0, 0)), WHITE, 3)


def test_palette_with_transparency_becomes_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 1)
    img.info["transparency"] = 0  # colour index 0 (red) is transparent
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    out = load_image(path)
    assert out.getpixel((1, 1)) == WHITE and out.getpixel((0, 0)) == BLUE
    # Without transparency the palette colour is kept.
    plain = Image.new("P", (2, 2), 0)
    plain.putpalette([*RED] + [0] * 765)
    assert load_image(plain).getpixel((0, 0)) == RED


def test_rgba_la_pa_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (255, 0, 0, 128))
    path = tmp_path / "rgba.png"
    rgba.save(path)
    out = load_image(path)
    assert out.getpixel((0, 0)) == WHITE  # fully transparent black -> white, not black
    assert out.getpixel((1, 0)) == RED
    assert _close(out.getpixel((2, 0)), (255, 127, 127), 2)

    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (50, 255))
    out = load_image(_encode(la, "PNG"))
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == (50, 50, 50)

    pa = Image.new("PA", (1, 1))
    pa.putpalette([*BLUE] + [0] * 765)
    pa.putpixel((0, 0), (0, 0))
    assert load_image(pa).getpixel((0, 0)) == WHITE


def test_grayscale_and_bilevel():
    assert load_image(_encode(Image.new("L", (2, 2), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)
    one = Image.new("1", (2, 2), 0)
    one.putpixel((1, 1), 1)
    out = load_image(_encode(one, "PNG"))
    assert out.getpixel((0, 0)) == BLACK and out.getpixel((1, 1)) == WHITE


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame(tmp_path, fmt):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]
    path = tmp_path / f"anim.{fmt.lower()}"
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **extra)
    assert Image.open(path).n_frames == 3
    out = load_image(path)
    assert out.mode == "RGB" and _close(out.getpixel((4, 4)), RED)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 high, with a red block at the stored top-left.
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, quality=95, exif=exif.tobytes())
    out = load_image(path)
    assert out.size == (20, 40)  # width and height swapped
    # Rotating clockwise moves the stored top-left corner to the top-right.
    assert _close(out.getpixel((15, 4)), RED, 30)
    assert _close(out.getpixel((4, 4)), BLUE, 30)
    assert _close(out.getpixel((15, 35)), BLUE, 30)


# --- bad inputs -----------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match=r"nope\.jpg: file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_unreadable_file(tmp_path):
    """A path that exists but cannot be opened: a file without read permission, or (since root
    reads any file) a UNIX socket, which open() refuses for root too."""
    import socket

    if os.geteuid() != 0:
        path = tmp_path / "secret.png"
        Image.new("RGB", (2, 2)).save(path)
        path.chmod(0)
    else:
        path = tmp_path / "secret.png"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
    with pytest.raises(ImageLoadError, match="secret.png: cannot read file"):
        load_image(path)


def test_empty_input(tmp_path):
    with pytest.raises(ImageLoadError, match=r"<upload>: empty input \(0 bytes\)"):
        load_image(b"")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty.jpg: empty input \(0 bytes\)"):
        load_image(empty)
    with pytest.raises(ImageLoadError, match=r"photo.jpg: empty input"):
        load_image(io.BytesIO(b""), name="photo.jpg")


def test_not_an_image():
    rng = np.random.default_rng(0)
    with pytest.raises(ImageLoadError, match="<upload>: not a recognised image format"):
        load_image(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError, match="not a recognised image format.*<html>"):
        load_image(b"<html>Not found</html>")


def test_truncated_jpeg(tmp_path):
    noise = Image.effect_noise((64, 64), 60).convert("RGB")
    data = _encode(noise, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut.jpg: truncated or corrupt image data \(JPEG"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="<upload>: corrupt or truncated image header"):
        load_image(data[:60])


def test_truncated_png():
    data = _encode(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")
    with pytest.raises(ImageLoadError, match="truncated or corrupt image data"):
        load_image(data[: len(data) // 2])


def test_decompression_bomb_checked_before_decoding():
    # A real 1-bit image compresses to almost nothing: 9 Mpixel in a few KB.
    bomb = _encode(Image.new("1", (3000, 3000)), "PNG")
    assert len(bomb) < 10_000
    with pytest.raises(
        ImageLoadError,
        match=r"<upload>: image is 3000x3000 = 9,000,000 pixels, more than the limit max_pixels=1,000,000",
    ):
        load_image(bomb, max_pixels=1_000_000)
    assert load_image(bomb, max_pixels=9_000_000).size == (3000, 3000)


def test_decompression_bomb_beyond_pillows_own_limit():
    # 20000x20000 declared in the header; Pillow's own guard fires inside
    # Image.open, and the message is still in terms of our limit.
    header = _png_header_only(20000, 20000)
    with pytest.raises(ImageLoadError, match=r"image is 400,000,000 pixels, more than the limit max_pixels=40,000,000"):
        load_image(header)
    with pytest.raises(ImageLoadError, match=r"400,000,000 pixels.*more than the limit max_pixels=1,000"):
        load_image(header, max_pixels=1000)
    # Also caught when PIL only warns (between 1x and 2x Image.MAX_IMAGE_PIXELS).
    with pytest.raises(ImageLoadError, match=r"100,000,000 pixels"):
        load_image(_png_header_only(10000, 10000))


def test_too_many_bytes(tmp_path):
    data = _encode(Image.new("RGB", (8, 8), RED), "PNG")
    with pytest.raises(ImageLoadError,
                       match=rf"<upload>: input is {len(data)} bytes, more than the limit max_bytes=10"):
        load_image(data, max_bytes=10)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageLoadError, match=rf"big.png: input is {len(data)} bytes, more than the limit max_bytes=10"):
        load_image(path, max_bytes=10)
    with pytest.raises(ImageLoadError, match="<upload>: input is at least 11 bytes, more than the limit max_bytes=10"):
        load_image(io.BytesIO(data), max_bytes=10)
    assert load_image(data, max_bytes=None).size == (8, 8)


def test_min_side_and_max_aspect():
    with pytest.raises(ImageLoadError, match=r"image is 20x4, smaller than the minimum side min_side=8"):
        load_image(Image.new("RGB", (20, 4)), min_side=8)
    with pytest.raises(ImageLoadError,
                       match=r"tall.png: image is 4x40, aspect ratio 10.0:1 is more elongated than max_aspect=5"):
        load_image(_encode(Image.new("RGB", (4, 40)), "PNG"), max_aspect=5, name="tall.png")
    assert load_image(Image.new("RGB", (4, 20)), min_side=4, max_aspect=5).size == (4, 20)


def test_text_mode_stream_and_bad_type(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello")
    with open(path) as f, pytest.raises(ImageLoadError, match="text mode"):
        load_image(f)
    with pytest.raises(TypeError, match="expects a path, bytes"):
        load_image(12345)


# --- transform -------------------------------------------------------------------


def test_transform_shape_dtype_normalisation():
    t = build_transform(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    white = t(Image.new("RGB", (50, 70), WHITE))
    assert white.shape == (3, 32, 32) and white.dtype == torch.float32
    assert torch.allclose(white, torch.ones_like(white))
    black = t(Image.new("RGB", (10, 10), BLACK))
    assert torch.allclose(black, -torch.ones_like(black))
    imagenet = build_transform((16, 24), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = imagenet(Image.new("RGB", (5, 5), RED))
    assert x.shape == (3, 16, 24)
    assert torch.allclose(x[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def test_transform_resizes_whole_image_without_crop():
    # Left quarter red, rest blue on a wide image: after squashing to a square
    # the red still occupies the left quarter (a centre crop would lose it).
    img = Image.new("RGB", (400, 100), BLUE)
    img.paste(RED, (0, 0, 100, 100))
    x = build_transform(16, (0, 0, 0), (1, 1, 1))(img)
    assert torch.allclose(x[:, 8, 1], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)
    assert torch.allclose(x[:, 8, 14], torch.tensor([0.0, 0.0, 1.0]), atol=0.02)


def test_transform_is_picklable_and_converts_modes():
    t = build_transform(8, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    t2 = pickle.loads(pickle.dumps(t))
    img = Image.new("RGB", (12, 9), (10, 200, 90))
    assert torch.equal(t(img), t2(img))
    # Non-RGB images get the loader's conversion (transparent -> white).
    assert torch.allclose(t(Image.new("RGBA", (4, 4), (0, 0, 0, 0))), t(Image.new("RGB", (4, 4), WHITE)))


@pytest.mark.parametrize(
    "size, mean, std, match",
    [
        (0, (0, 0, 0), (1, 1, 1), "image_size"),
        ((8, 8, 8), (0, 0, 0), (1, 1, 1), "image_size"),
        (8, (0, 0), (1, 1, 1), "3 values"),
        (8, (0, 0, 0), (1, 0, 1), "std"),
    ],
)
def test_build_transform_validates(size, mean, std, match):
    with pytest.raises(ValueError, match=match):
        build_transform(size, mean, std)
