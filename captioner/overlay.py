"""Attention heat maps drawn on images: the one renderer of the batch script and the web UI.

As in the paper's figures: a word's attention grid (h, w) is upsampled to the image, smoothed
with a Gaussian and max-normalised, then shown as a colour map blended over the image.
`attention_figure` lays out the image (with its caption) and one such overlay per word.

Pure numpy + PIL; no IO at import (the default font is loaded on first use).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["attention_figure", "attention_heatmap", "colormap", "overlay", "scaled"]

CELL_PX = 8  # working resolution, pixels per grid cell: smooth enough, and cheap for a batch of figures
SIGMA_CELLS = 0.5  # Gaussian smoothing, in grid cells
PAD = 6  # pixels between and around the tiles of a figure
LABEL_LINES = 3  # text lines under every tile (the image's caption wraps onto up to 3 lines)
LUT_SIZE = 1024  # entries of a colour map's lookup table: steps of 1/1023, below one colour level

# Colour maps as (position, (r, g, b)) control points, linearly interpolated.
_CMAPS: dict[str, list[tuple[float, tuple[float, float, float]]]] = {
    "jet": [(0.0, (0, 0, 0.5)), (0.11, (0, 0, 1)), (0.36, (0, 1, 1)), (0.61, (1, 1, 0)),
            (0.86, (1, 0, 0)), (1.0, (0.5, 0, 0))],
    "hot": [(0.0, (0, 0, 0)), (0.375, (1, 0, 0)), (0.75, (1, 1, 0)), (1.0, (1, 1, 1))],
    "gray": [(0.0, (0, 0, 0)), (1.0, (1, 1, 1))],
}

Cmap = str | Callable[[np.ndarray], np.ndarray]


def attention_heatmap(alpha: np.ndarray, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """(h, w) attention -> (H, W) float32 heat map in [0, 1] for an image of size (W, H).

    The grid covers the whole image (the transform resizes without cropping), so it is
    stretched to the image whatever its aspect ratio. All-zero or non-finite input gives zeros.
    """
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"alpha must be a 2-D (h, w) grid, got shape {a.shape}")
    W, H = int(size[0]), int(size[1])
    a = np.clip(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    if W < 1 or H < 1 or a.size == 0 or a.max() <= 0:
        return np.zeros((max(H, 0), max(W, 0)), np.float32)
    h, w = a.shape
    # Upsample on a fixed grid of CELL_PX pixels per cell, smooth there (cheap whatever the
    # image size), then resize the smooth field to the image.
    work = Image.fromarray(a / a.max()).resize((w * CELL_PX, h * CELL_PX), Image.Resampling.BICUBIC)
    heat = np.clip(np.asarray(work, dtype=np.float32), 0.0, None)  # bicubic overshoots below 0
    if smooth:
        heat = _gaussian_blur(heat, SIGMA_CELLS * CELL_PX)
    heat = np.asarray(Image.fromarray(heat).resize((W, H), Image.Resampling.BILINEAR), dtype=np.float32)
    heat = np.clip(np.nan_to_num(heat), 0.0, None)
    m = float(heat.max())
    return heat / m if m > 0 else np.zeros((H, W), np.float32)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian filter with reflected borders."""
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="reflect")
        x = np.lib.stride_tricks.sliding_window_view(xp, 2 * r + 1, axis=axis) @ k
    return x.astype(np.float32)


@functools.lru_cache(maxsize=len(_CMAPS))
def _lut(cmap: str) -> np.ndarray:
    """(LUT_SIZE, 3) uint8 colours of a named map, sampled evenly over [0, 1]."""
    pos = [p for p, _ in _CMAPS[cmap]]
    x = np.linspace(0.0, 1.0, LUT_SIZE)
    rgb = np.stack([np.interp(x, pos, [c[i] for _, c in _CMAPS[cmap]]) for i in range(3)], axis=-1)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def colormap(heat: np.ndarray, cmap: Cmap = "jet") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    if callable(cmap):
        rgb = np.asarray(cmap(heat), dtype=np.float32)
        return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    if cmap not in _CMAPS:
        raise ValueError(f"unknown colour map {cmap!r}; choose one of {sorted(_CMAPS)} or pass a function")
    # A table lookup instead of interpolating every pixel: 5x faster on a 512x384 map (the web
    # UI draws one per word per request), and within one colour level of the exact colours.
    # (take() with small integer indices is several times faster than fancy indexing here.)
    h = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    idx = np.clip(h * (LUT_SIZE - 1) + 0.5, 0, LUT_SIZE - 1).astype(np.uint16)
    return _lut(cmap).take(idx, axis=0)


def overlay(image: Image.Image, alpha: np.ndarray, alpha_strength: float = 0.6, cmap: Cmap = "jet") -> Image.Image:
    """The image (RGB, same size) with the heat map of `alpha` (h, w) blended over it."""
    img = image if image.mode == "RGB" else image.convert("RGB")
    heat = attention_heatmap(alpha, img.size)
    colours = Image.fromarray(colormap(heat, cmap))  # (H, W, 3)
    # PIL blends uint8 in C, without float copies of both images: a third of the time of numpy.
    return Image.blend(img, colours, alpha_strength)


# --- figures ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font, offline
    except TypeError:
        return ImageFont.load_default()


def _line_height(font) -> int:
    box = font.getbbox("Ayjg|")
    return int(box[3] - box[1]) + 3


def _fit(text: str, font, width: int) -> str:
    """Cut `text` with an ellipsis so it fits `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " …"
    return [_fit(line, font, width) for line in lines]


def scaled(image: Image.Image, side: int) -> Image.Image:
    """The image (RGB) scaled to `side` pixels on its long side, aspect ratio kept.

    Overlays cost per pixel: the figure's tiles and the web UI's views are drawn at this size.
    """
    img = image if image.mode == "RGB" else image.convert("RGB")
    s = side / max(img.size)
    size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)


def attention_figure(image: Image.Image, words: Sequence[str], alphas: np.ndarray, cols: int = 5,
                     tile: int = 160, caption: str | None = None) -> Image.Image:
    """A grid: the image first (labelled with the caption), then one overlay tile per word.

    alphas: (T, h, w) with T = len(words). Every cell is `tile` pixels wide and holds a
    tile x tile box plus LABEL_LINES lines of text, so the size depends only on T, cols, tile.
    """
    alphas = np.asarray(alphas, dtype=np.float32)
    if len(words) == 0:
        alphas = alphas.reshape(0, 1, 1) if alphas.size == 0 else alphas
    if alphas.ndim != 3 or alphas.shape[0] != len(words):
        raise ValueError(f"alphas must be (T, h, w) with T = {len(words)} words, got shape {alphas.shape}")
    if cols < 1 or tile < 8:
        raise ValueError(f"cols must be >= 1 and tile >= 8, got cols={cols}, tile={tile}")
    font = _font(max(10, tile // 13))
    line_h = _line_height(font)
    cell_h = tile + LABEL_LINES * line_h
    n = 1 + len(words)
    ncols, nrows = min(cols, n), math.ceil(n / cols)
    fig = Image.new("RGB", (PAD + ncols * (tile + PAD), PAD + nrows * (cell_h + PAD)), "white")
    draw = ImageDraw.Draw(fig)
    thumb = scaled(image, tile)
    text = caption if caption is not None else " ".join(words)
    labels = [_wrap(text, font, tile, LABEL_LINES)] + [[_fit(w, font, tile)] for w in words]
    for k in range(n):
        x0 = PAD + (k % cols) * (tile + PAD)
        y0 = PAD + (k // cols) * (cell_h + PAD)
        pic = thumb if k == 0 else overlay(thumb, alphas[k - 1])
        fig.paste(pic, (x0 + (tile - pic.width) // 2, y0 + (tile - pic.height) // 2))
        for i, line in enumerate(labels[k]):
            draw.text((x0 + (tile - font.getlength(line)) / 2, y0 + tile + 1 + i * line_h), line,
                      fill="black", font=font)
    return fig
