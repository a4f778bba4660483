"""The attention renderer: heat maps peak where attention does; overlays and figures have the right size."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from captioner.overlay import (
    PAD,
    attention_figure,
    attention_heatmap,
    colormap,
    overlay,
)


@pytest.mark.parametrize("grid,size,cell", [((14, 14), (224, 224), (3, 10)), ((5, 7), (300, 200), (4, 0)),
                                            ((14, 14), (640, 480), (0, 13)), ((1, 1), (50, 30), (0, 0))])
def test_heatmap_peaks_in_the_attended_cell(grid, size, cell):
    h, w = grid
    W, H = size
    alpha = np.zeros(grid, np.float32)
    alpha[cell] = 1.0
    heat = attention_heatmap(alpha, size)
    assert heat.shape == (H, W) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    r, c = cell
    assert r * H / h <= y < (r + 1) * H / h and c * W / w <= x < (c + 1) * W / w
    if grid != (1, 1):  # attention far away from the cell is (nearly) zero
        far = heat[int(((h - 1 - r) + 0.5) * H / h), int(((w - 1 - c) + 0.5) * W / w)]
        assert far < 0.05


def test_heatmap_is_normalised_and_guards_degenerate_input():
    rng = np.random.default_rng(0)
    heat = attention_heatmap(rng.random((14, 14)) / 196, (100, 80), smooth=False)
    assert heat.shape == (80, 100) and 0.0 <= heat.min() and heat.max() == pytest.approx(1.0)
    for bad in (np.zeros((14, 14)), np.full((14, 14), np.nan), -np.ones((3, 3))):
        z = attention_heatmap(bad, (32, 16))
        assert z.shape == (16, 32) and not z.any() and np.isfinite(z).all()
    with pytest.raises(ValueError, match="2-D"):
        attention_heatmap(np.zeros(196), (10, 10))


def test_colormap_and_overlay():
    rgb = colormap(np.array([[0.0, 1.0]]), "gray")
    assert rgb.dtype == np.uint8 and rgb.tolist() == [[[0, 0, 0], [255, 255, 255]]]
    img = Image.new("L", (123, 77), 128)
    alpha = np.zeros((14, 14))
    alpha[7, 7] = 1
    out = overlay(img, alpha)
    assert out.mode == "RGB" and out.size == (123, 77)
    a = np.asarray(out).astype(int)
    assert not np.array_equal(a[38, 61], a[0, 0])  # the centre is coloured differently from a corner
    assert np.array_equal(np.asarray(overlay(img, alpha, alpha_strength=0.0)), np.asarray(img.convert("RGB")))
    with pytest.raises(ValueError, match="colour map"):
        overlay(img, alpha, cmap="nope")


def _geometry(fig0: Image.Image, tile: int):
    """Cell height from a figure with no words (one cell)."""
    assert fig0.width == PAD + tile + PAD
    return fig0.height - 2 * PAD


@pytest.mark.parametrize("T,cols", [(0, 5), (3, 5), (4, 5), (9, 5), (7, 3), (2, 1)])
def test_figure_has_one_tile_per_word_plus_the_image(T, cols):
    tile = 96
    img = Image.new("RGB", (200, 120), "gray")  # not square
    words = [f"w{i}" for i in range(T)]
    alphas = np.random.default_rng(T).random((T, 14, 14)).astype(np.float32)
    cell_h = _geometry(attention_figure(img, [], np.zeros((0, 14, 14)), tile=tile), tile)
    fig = attention_figure(img, words, alphas, cols=cols, tile=tile)
    n = T + 1
    ncols, nrows = min(cols, n), -(-n // cols)
    assert fig.mode == "RGB"
    assert fig.size == (PAD + ncols * (tile + PAD), PAD + nrows * (cell_h + PAD))
    # Every tile holds a picture: the pixel at the centre of each tile's box is not background white.
    pix = np.asarray(fig)
    for k in range(n):
        x = PAD + (k % cols) * (tile + PAD) + tile // 2
        y = PAD + (k // cols) * (cell_h + PAD) + tile // 2
        assert pix[y, x].tolist() != [255, 255, 255], k


def test_figure_labels_and_errors():
    img = Image.new("RGB", (60, 200), "white")  # tall and white: only the labels draw dark pixels
    words = ["a", "very", "long", "caption", "that", "needs", "wrapping", "onto", "several", "lines"]
    alphas = np.zeros((len(words), 7, 7), np.float32)
    fig = attention_figure(img, words, alphas, cols=4, tile=80, caption=" ".join(words))
    assert (np.asarray(fig.convert("L")) < 100).any()
    with pytest.raises(ValueError, match="T = 2"):
        attention_figure(img, ["a", "b"], np.zeros((3, 7, 7)))


@pytest.mark.parametrize("cmap", ["jet", "hot", "gray"])
def test_colormap_table_is_within_one_level_of_exact_interpolation(cmap):
    from captioner.overlay import _CMAPS

    heat = np.concatenate([np.linspace(0, 1, 5001), np.random.default_rng(0).random(5000)]).astype(np.float32)
    pos = [p for p, _ in _CMAPS[cmap]]
    exact = np.stack([np.interp(heat, pos, [c[i] for _, c in _CMAPS[cmap]]) for i in range(3)], axis=-1)
    exact = np.rint(exact * 255).astype(int)
    got = colormap(heat[None], cmap)[0].astype(int)
    assert got.shape == exact.shape and np.abs(got - exact).max() <= 1
    assert colormap(np.array([[-0.5, np.nan, 2.0]]), cmap).tolist()[0] == [exact[0].tolist(), exact[0].tolist(),
                                                                         exact[5000].tolist()]  # clamped
