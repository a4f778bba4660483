"""Image loading and the image transform.

This module owns the only two ways pixels enter the project:

* ``load_image`` -- the one safe loader.  It accepts a path, bytes, a binary
  stream or a PIL image, refuses anything dangerous or broken with an
  ``ImageLoadError`` that says what is wrong, and returns a fully decoded
  upright RGB image however unusual the input (EXIF-rotated, 16-bit,
  palette, transparent, CMYK, animated, ...).
* ``build_transform`` -- the one transform (resize whole image, to tensor,
  normalise) used by training, evaluation, serving and batch captioning, so
  that the model always sees images prepared the same way.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from typing import BinaryIO, Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

__all__ = [
    "ImageLoadError",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_BYTES",
    "load_image",
    "to_rgb",
    "ImageTransform",
    "build_transform",
]

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, Image.Image]

# Transparent pixels are shown over white: that is how browsers and viewers
# display such images, so it is what a person captioning them would see
# (black would turn a logo on a transparent background into a dark image).
_BACKGROUND = (255, 255, 255)


class ImageLoadError(ValueError):
    """The input could not be turned into an RGB image; the message says why."""


def _fail(label: str, problem: str) -> ImageLoadError:
    return ImageLoadError(f"{label}: {problem}")


# --- reading the bytes ------------------------------------------------------


def _read_limited(f: BinaryIO, max_bytes: int | None) -> bytes:
    # Read one byte past the limit so "too big" is detected without reading
    # an arbitrarily large stream into memory.
    return f.read() if max_bytes is None else f.read(max_bytes + 1)


def _read_source(source: ImageSource, label: str, max_bytes: int | None) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise _fail(label, "file not found")
        if os.path.isdir(path):
            raise _fail(label, "is a directory, not an image file")
        try:
            with open(path, "rb") as f:
                data = _read_limited(f, max_bytes)
        except OSError as e:
            raise _fail(label, f"cannot read file: {e.strerror or e}") from e
    elif hasattr(source, "read"):
        if isinstance(source, io.TextIOBase):
            # Reading would decode (and likely fail on) binary data as text.
            raise _fail(label, "stream is in text mode; open the file with 'rb'")
        try:
            data = _read_limited(source, max_bytes)
        except OSError as e:
            raise _fail(label, f"cannot read stream: {e}") from e
        if isinstance(data, str):
            raise _fail(label, "stream is in text mode; open the file with 'rb'")
        data = bytes(data)
    else:
        raise TypeError(
            f"load_image() expects a path, bytes, a binary stream or a PIL image, got {type(source).__name__}"
        )
    if not data:
        raise _fail(label, "empty input (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        # Files and streams were read only to max_bytes + 1; report the real
        # size where it is cheaply known.
        if isinstance(source, (str, os.PathLike)):
            size = f"{os.path.getsize(source):,} bytes"
        elif isinstance(source, (bytes, bytearray, memoryview)):
            size = f"{len(data):,} bytes"
        else:
            size = f"at least {len(data):,} bytes"
        raise _fail(label, f"input is {size}, more than the limit max_bytes={max_bytes:,}")
    return data


# --- colour conversion ------------------------------------------------------


def _scale_to_uint8(a: np.ndarray, full_scale: float) -> Image.Image:
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=full_scale, neginf=0.0)
    a = np.clip(a * (255.0 / full_scale), 0, 255)
    return Image.fromarray(np.rint(a).astype(np.uint8), mode="L").convert("RGB")


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to RGB the way a viewer shows it.

    Transparency is composited on white; 16/32-bit and float grayscale are
    scaled into 0..255 (PIL's own convert() clips them, turning most
    16-bit images pure white).
    """
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode == "La":  # PIL cannot convert premultiplied 'La' directly
            img = img.convert("LA")
        return _flatten_alpha(img)
    if mode == "P":
        # Palette images mark transparency in info, not in an alpha band.
        if "transparency" in img.info:
            return _flatten_alpha(img)
        return img.convert("RGB")
    if mode.startswith("I;16"):
        return _scale_to_uint8(np.asarray(img), 65535.0)
    if mode == "I":
        a = np.asarray(img)
        # 'I' holds 32-bit ints; in practice they come from 16-bit files or
        # from 8-bit data widened, so scale as 16-bit unless the values
        # already fit in 8 bits.
        full = 65535.0 if a.size and a.max() > 255 else 255.0
        return _scale_to_uint8(a, full)
    if mode == "F":
        a = np.asarray(img)
        finite = a[np.isfinite(a)]
        # Float images are either 0..1 (most tools) or 0..255 (PIL's own 'F').
        full = 1.0 if finite.size and finite.max() <= 1.0 else 255.0
        return _scale_to_uint8(a, full)
    # '1', 'L', 'CMYK', 'YCbCr', 'LAB', 'HSV' and friends convert directly.
    return img.convert("RGB")


# --- the loader -------------------------------------------------------------


def _bomb_error(label: str, err: Exception, max_pixels: int) -> ImageLoadError:
    """Reword PIL's own decompression-bomb refusal in terms of our limit."""
    # PIL checks its global Image.MAX_IMAGE_PIXELS inside Image.open, before
    # we can see the size; its message carries the pixel count.
    m = re.search(r"\((\d+) pixels\)", str(err))
    if m is None:
        return _fail(label, f"refused as a possible decompression bomb: {err}")
    pixels = int(m.group(1))
    if pixels > max_pixels:
        return _fail(
            label,
            f"image is {pixels:,} pixels, more than the limit max_pixels={max_pixels:,} "
            "(possible decompression bomb)",
        )
    return _fail(
        label,
        f"image is {pixels:,} pixels, more than Pillow's decompression-bomb limit "
        f"(Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS:,}), although within max_pixels={max_pixels:,}",
    )


def _open_and_decode(data: bytes | None, pil: Image.Image | None, label: str, max_pixels: int) -> Image.Image:
    """Open, check the declared size against max_pixels, then fully decode."""
    # DecompressionBombWarning is turned into an error here (and only here)
    # so that PIL's own guard can never merely warn.  catch_warnings restores
    # the filters afterwards.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = pil if pil is not None else Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _bomb_error(label, e, max_pixels) from e
        except UnidentifiedImageError as e:
            head = data[:8] if data is not None else b""
            raise _fail(label, f"not a recognised image format (starts with {head!r})") from e
        except Exception as e:  # PIL plugins raise assorted errors on corrupt headers
            raise _fail(label, f"corrupt or truncated image header: {e}") from e

        width, height = img.size
        # Check the declared size before decoding: a tiny file can declare
        # billions of pixels and exhaust memory once decoded.
        if width * height > max_pixels:
            raise _fail(
                label,
                f"image is {width}x{height} = {width * height:,} pixels, more than the limit "
                f"max_pixels={max_pixels:,} (possible decompression bomb)",
            )
        if width < 1 or height < 1:
            raise _fail(label, f"image has no pixels ({width}x{height})")
        try:
            # Animated GIF/WebP/APNG: Image.open leaves frame 0 current; only
            # that frame is decoded.  load() forces the full decode so that
            # truncated or corrupt data fails here, not later in a worker.
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _bomb_error(label, e, max_pixels) from e
        except MemoryError as e:
            raise _fail(label, f"out of memory decoding a {width}x{height} image") from e
        except Exception as e:
            raise _fail(label, f"truncated or corrupt image data ({img.format or 'unknown'} format): {e}") from e
    return img


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    min_side: int = 1,
    max_aspect: float | None = None,
    name: str | None = None,
) -> Image.Image:
    """Load ``source`` as a fully decoded, upright RGB image.

    ``source`` may be a file path, raw bytes, a binary stream or a PIL image.
    ``name`` labels the input in error messages (default: the path, or
    ``"<upload>"`` for bytes/streams, ``"<image>"`` for PIL images).
    ``max_bytes`` does not apply to PIL images (already in memory).

    Raises ImageLoadError (a ValueError) naming the source and the problem.
    """
    if isinstance(source, Image.Image):
        label = name or "<image>"
        data, pil = None, source
    else:
        if name:
            label = name
        elif isinstance(source, (str, os.PathLike)):
            label = os.fspath(source)
        else:
            label = "<upload>"
        data, pil = _read_source(source, label, max_bytes), None

    img = _open_and_decode(data, pil, label, max_pixels)
    try:
        try:
            # Phones store photos sideways plus an orientation tag; captioning
            # a sideways image hurts, so apply the tag.
            upright = ImageOps.exif_transpose(img)
        except Exception as e:  # broken EXIF should not cost us a valid image
            log.warning("%s: ignoring unreadable EXIF orientation (%s)", label, e)
            upright = img
        try:
            rgb = to_rgb(upright)
        except Exception as e:
            raise _fail(label, f"cannot convert {upright.mode!r} image to RGB: {e}") from e
    finally:
        if pil is None:
            img.close()  # we opened it; the caller's own PIL images stay open

    width, height = rgb.size
    if min(width, height) < min_side:
        raise _fail(label, f"image is {width}x{height}, smaller than the minimum side min_side={min_side}")
    if max_aspect is not None and max(width, height) / min(width, height) > max_aspect:
        raise _fail(
            label,
            f"image is {width}x{height}, aspect ratio {max(width, height) / min(width, height):.1f}:1 "
            f"is more elongated than max_aspect={max_aspect}",
        )
    return rgb


# --- the transform ----------------------------------------------------------


class ImageTransform:
    """PIL image -> normalised float tensor (3, H, W).

    A plain class (not a lambda or closure) so DataLoader workers can pickle it.
    """

    def __init__(self, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size  # (height, width)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if not isinstance(img, Image.Image):
            raise TypeError(f"ImageTransform expects a PIL image (use load_image), got {type(img).__name__}")
        if img.mode != "RGB":
            img = to_rgb(img)
        height, width = self.size
        # The whole image is resized (aspect ratio not kept, nothing cropped)
        # so every object stays in view and attention maps line up with the
        # original image.  PIL's bicubic resize antialiases when shrinking.
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return x.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, mean={self.mean}, std={self.std})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageTransform):
            return NotImplemented
        return (self.size, self.mean, self.std) == (other.size, other.mean, other.std)


def build_transform(
    image_size: int | tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """The project's only image transform: resize to ``image_size``, to tensor, normalise.

    ``image_size`` is an int (square) or ``(height, width)``.
    """
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    else:
        size = tuple(image_size)  # type: ignore[arg-type]
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width) of positive ints, got {image_size!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std must have 3 values (R, G, B), got {list(mean)} and {list(std)}")
    if any(float(s) <= 0 for s in std):
        raise ValueError(f"std values must be > 0, got {list(std)}")
    return ImageTransform((size[0], size[1]), mean, std)
