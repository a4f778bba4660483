"""The "shapes world": a synthetic, deterministic captioning dataset in COCO format.

This module owns the generator: rendering scenes of 0-3 coloured shapes on muted
backgrounds, writing their captions and boxes (COCO captions/instances files plus a
Karpathy-style split file), choosing the held-out (colour, shape) pairs used for the
compositional ``test_novel`` split, and reading a generated world back (``load_world`` /
``load_objects``).

Every split but one is drawn from the training style (``STYLES["train"]``): each colour name
is a range of shades, shapes are slightly rotated and blurred now and then (hexagons flat-topped
or pointed up, stars of varied depth), six background families (flat among them) from dark
grey to near white, and a few scenes hold no object at all ("an empty striped
background"), so that a model learns colour names as ranges and the background as
background. ``test_shift`` is drawn from rendering settings no other split uses
(``STYLES["shift"]``): four other background families, shades further from each colour's
centre, stronger blur, JPEG artefacts, image noise, object sizes between and beyond the
trained ones, and larger rotations. A world generated with ``wide_train`` draws its train
split (and only it) wider, with ``STYLES["wide"]``: more background families, milder JPEG
artefacts and noise, all outside test_shift's settings. Its vocabulary (SHAPES, COLOURS, SIZES,
NUMBER_WORDS, RELATIONS) and the rule the captions state relations by (``relation``)
are defined here once; captioner.scene_metrics parses generated captions with them
and scores them against the objects.

Run ``python -m captioner.shapes --out data/shapes`` to generate the default world.
"""
from __future__ import annotations

import argparse
import colorsys
import io
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .atomic import atomic_write_json

log = logging.getLogger(__name__)

VERSION = 2  # bump on ANY change to what is rendered or written: caches know a world by world.json
# (1: fixed shades, five textured families; 2: colour ranges, rotations, blur, empty scenes, flat and light
# backgrounds, shape variants, test_shift)
IMAGE_SIZE = 224
JPEG_QUALITY = 92
SPLITS = ("train", "val", "test", "test_novel", "test_shift")
DEFAULT_SIZES = {"train": 8000, "val": 500, "test": 1000, "test_novel": 1000, "test_shift": 1000}

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOURS = ("red", "yellow", "green", "cyan", "blue", "purple")
SIZES = ("small", "large")
# Each colour name is a range of shades around a centre hue (degrees), far apart in hue
# ("purple" is magenta-like so that it never reads as blue), with its own brightness range
# (a dark yellow would read as olive); saturation is drawn from SATURATION.
COLOUR_HSV = {"red": (0, (0.6, 1.0)), "yellow": (52, (0.82, 1.0)), "green": (129, (0.45, 0.85)),
              "cyan": (183, (0.65, 1.0)), "blue": (230, (0.6, 1.0)), "purple": (300, (0.45, 0.9))}
SATURATION = (0.6, 1.0)
SIDE_RANGE = {"small": (30, 42), "large": (64, 84)}  # side of the object's square cell, px (training)
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
N_HELD_OUT = 4
CAPTIONS_PER_IMAGE = 5
_MARGIN, _GAP, _SUPERSAMPLE = 4, 6, 4
# Background kind -> the adjective captions use. The shift families are never drawn for training.
_BACKGROUNDS = {"noise": "grainy", "stripes": "striped", "checkerboard": "checkered",
                "gradient": "shaded", "blotches": "mottled", "flat": "plain",
                "dots": "dotted", "waves": "wavy", "radial": "glowing", "bricks": "brick",
                "speckles": "speckled", "plaid": "plaid", "scratches": "scratched"}
EMPTY_SHARE = 0.05  # scenes with no object (not in test_novel, whose scenes hold a novel pair)
# The rendering settings of each style. Ranges are (low, high); a shift factor is applied to a
# test_shift scene with probability `shift_p` each (the background always), so that scenes mix them.
STYLES = {
    "train": {"backgrounds": ("noise", "stripes", "checkerboard", "gradient", "blotches", "flat"),
              "hue_offset": (0, 10), "rotation": (0, 8), "blur_p": 0.3, "blur": (0.3, 0.8),
              "sides": {"small": [(30, 42)], "large": [(64, 84)]}, "jpeg": None, "noise": None},
    "shift": {"backgrounds": ("dots", "waves", "radial", "bricks"), "shift_p": 0.5,
              "hue_offset": (10, 15), "rotation": (8, 20), "blur": (1.0, 1.6), "jpeg": (15, 40),
              "noise": (6, 14), "sides": {"small": [(22, 29), (43, 52)], "large": [(53, 62), (86, 100)]}},
    # What a world generated with wide_train adds to its train split only (val, test, test_novel and
    # test_shift stay as above): three more background families, and JPEG artefacts and image noise
    # milder than test_shift's (quality 45-90 against 15-40, sigma 2-5 against 6-14), each on 30% of scenes.
    "wide": {"backgrounds": ("speckles", "plaid", "scratches"), "jpeg_p": 0.3, "jpeg": (45, 90),
             "noise_p": 0.3, "noise": (2, 5)},
}
WIDE_PARTS = ("backgrounds", "jpeg", "noise")  # what wide_train may add; True adds all three


def wide_parts(wide_train: bool | Sequence[str]) -> tuple[str, ...]:
    """The parts of STYLES["wide"] that `wide_train` (False, True for all, or some of WIDE_PARTS) adds."""
    if isinstance(wide_train, bool):
        return WIDE_PARTS if wide_train else ()
    unknown = set(wide_train) - set(WIDE_PARTS)
    if unknown:
        raise ValueError(f"unknown wide_train parts {sorted(unknown)}; expected some of {WIDE_PARTS}")
    return tuple(p for p in WIDE_PARTS if p in wide_train)


_COUNT_WORD = {v: k for k, v in NUMBER_WORDS.items()}


def plural(shape: str) -> str:
    """English plural of a shape word ("cross" -> "crosses")."""
    return shape + "es" if shape.endswith(("s", "x", "sh", "ch")) else shape + "s"


# --------------------------------------------------------------------------- scenes

def choose_held_out(seed: int) -> list[tuple[str, str]]:
    """N_HELD_OUT (colour, shape) pairs with distinct colours and distinct shapes."""
    rng = np.random.default_rng([seed, 4])  # a stream no split uses (4: the splits' count in version 1)
    colours = rng.permutation(len(COLOURS))[:N_HELD_OUT]
    shapes = rng.permutation(len(SHAPES))[:N_HELD_OUT]
    return [(COLOURS[c], SHAPES[s]) for c, s in zip(colours, shapes)]


def _sample_pairs(rng: np.random.Generator, n: int, split: str,
                  held_out: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    everything = [(c, s) for c in COLOURS for s in SHAPES]
    if n == 0:
        return []
    allowed = [p for p in everything if p not in set(held_out)]
    if split == "test_novel":  # one guaranteed novel pair; the others may be anything
        pairs = [tuple(held_out[rng.integers(len(held_out))])]
        pairs += [everything[i] for i in rng.integers(len(everything), size=n - 1)]
    else:
        pairs = [allowed[i] for i in rng.integers(len(allowed), size=n)]
    if n >= 2 and rng.random() < 0.15:  # extra identical pairs so plurals get seen
        pairs[1] = pairs[0]
    return [pairs[i] for i in rng.permutation(n)]


def _place(rng: np.random.Generator, sides: list[int]) -> list[tuple[int, int]] | None:
    """Random non-overlapping top-left corners (with a gap), or None if it fails."""
    placed: list[tuple[int, int, int]] = []
    for side in sides:
        hi = IMAGE_SIZE - _MARGIN - side
        for _ in range(100):
            x, y = (int(v) for v in rng.integers(_MARGIN, hi + 1, size=2))
            if all(x + side + _GAP <= px or px + ps + _GAP <= x or
                   y + side + _GAP <= py or py + ps + _GAP <= y for px, py, ps in placed):
                placed.append((x, y, side))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def _unit_outline(shape: str, inner: float = 0.21) -> list[tuple[float, float]] | None:
    """Polygon of a shape in its unit cell (None for the circle); sized to look balanced.
    inner: a star's inner radius (its points' depth)."""
    def ring(n: int, radii: Sequence[float], start: float, cy: float = 0.5):
        angles = start + np.arange(n) * 2 * np.pi / n
        return [(0.5 + radii[k % len(radii)] * np.cos(a), cy + radii[k % len(radii)] * np.sin(a))
                for k, a in enumerate(angles)]
    if shape == "circle":
        return None
    if shape == "square":
        return [(0.06, 0.06), (0.94, 0.06), (0.94, 0.94), (0.06, 0.94)]
    if shape == "triangle":
        return [(0.0, 0.933), (1.0, 0.933), (0.5, 0.067)]
    if shape == "star":  # centred vertically: top at cy-0.5, bottom points at cy+0.4045
        return ring(10, (0.5, inner), -np.pi / 2, cy=0.5477)
    if shape == "hexagon":
        return ring(6, (0.5,), 0.0)
    if shape == "cross":
        a, lo, hi, b = 0.03, 0.33, 0.67, 0.97
        return [(lo, a), (hi, a), (hi, lo), (b, lo), (b, hi), (hi, hi), (hi, b), (lo, b),
                (lo, hi), (a, hi), (a, lo), (lo, lo)]
    raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(shape: str, side: int, angle: float = 0.0, inner: float = 0.21) -> tuple[np.ndarray, list[float]]:
    """Anti-aliased alpha mask (side x side, 0..1) and tight bbox [x, y, w, h] in the cell.

    angle: rotation in degrees about the cell's centre; a rotated outline is shrunk just enough
    to stay inside its cell (so placement, which keeps cells apart, still keeps objects apart).
    """
    big = side * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    outline = _unit_outline(shape, inner)
    if outline is None:
        draw.ellipse([0, 0, big - 1, big - 1], fill=255)
        box = [0.0, 0.0, float(side), float(side)]
    else:
        if angle:
            c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
            pts = [((x - 0.5) * c - (y - 0.5) * s, (x - 0.5) * s + (y - 0.5) * c) for x, y in outline]
            shrink = min(1.0, 0.5 / max(max(abs(u), abs(v)) for u, v in pts))
            outline = [(0.5 + u * shrink, 0.5 + v * shrink) for u, v in pts]
        draw.polygon([(x * big, y * big) for x, y in outline], fill=255)
        xs, ys = [p[0] * side for p in outline], [p[1] * side for p in outline]
        box = [float(v) for v in (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))]
    mask = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32) / 255.0
    return mask, box


def _muted_tone(rng: np.random.Generator, hue: float, value: float) -> np.ndarray:
    sat = rng.uniform(0.03, 0.18)  # low saturation keeps object colours unambiguous
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, value), dtype=np.float32) * 255


def _upsample(field: np.ndarray) -> np.ndarray:
    img = Image.fromarray(field.astype(np.float32))  # mode "F"
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))


def _pattern(rng: np.random.Generator, kind: str) -> np.ndarray:
    """The kind's 0..1 mixing field (H x W) between the background's two tones."""
    size = IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == "noise":
        return _upsample(rng.random((int(rng.integers(4, 12)),) * 2))
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(8, 40) + rng.uniform(0, 6.3))
    if kind == "checkerboard":
        cell, (ox, oy) = rng.uniform(10, 40), rng.uniform(0, 40, size=2)
        return ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2).astype(np.float32)
    if kind == "gradient":
        return (along - along.min()) / (np.ptp(along) + 1e-6)
    if kind == "flat":
        return np.zeros((size, size), np.float32)
    if kind in ("speckles", "scratches"):  # wide_train families: scattered small spots, or thin short strokes
        field = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(field)
        for _ in range(int(rng.integers(30, 120) if kind == "speckles" else rng.integers(15, 50))):
            x, y = rng.uniform(0, size, size=2)
            if kind == "speckles":
                r = rng.uniform(1.5, 5)
                draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
            else:
                a, length = rng.uniform(0, 2 * np.pi), rng.uniform(10, 60)
                draw.line([x, y, x + length * np.cos(a), y + length * np.sin(a)], fill=255,
                          width=int(rng.integers(1, 3)))
        return np.asarray(field, dtype=np.float32) / 255.0
    if kind == "plaid":  # two stripe sets across each other
        a = np.sin(2 * np.pi * along / rng.uniform(10, 40) + rng.uniform(0, 6.3))
        b = np.sin(2 * np.pi * across / rng.uniform(10, 40) + rng.uniform(0, 6.3))
        return 0.25 * (2 + a + b)
    if kind == "blotches":  # a few soft blobs, computed coarse then upsampled for speed
        gy, gx = np.mgrid[0:56, 0:56].astype(np.float32)
        t = np.zeros((56, 56), np.float32)
        for _ in range(int(rng.integers(4, 10))):
            cx, cy, sig = rng.uniform(0, 56), rng.uniform(0, 56), rng.uniform(4, 12)
            t += np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * sig * sig))
        return _upsample(np.clip(t, 0, 1))
    # the shift families
    if kind == "dots":
        pitch, r = rng.uniform(14, 30), rng.uniform(0.2, 0.35)
        u, v = (along / pitch) % 1 - 0.5, (across / pitch) % 1 - 0.5
        return np.clip((r - np.sqrt(u * u + v * v)) * pitch, 0, 1)
    if kind == "waves":
        wave = rng.uniform(4, 14) * np.sin(2 * np.pi * across / rng.uniform(40, 90))
        return 0.5 + 0.5 * np.sin(2 * np.pi * (along + wave) / rng.uniform(12, 36))
    if kind == "radial":
        cx, cy = rng.uniform(0, size, size=2)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        return d / d.max()
    if kind == "bricks":
        h, w = rng.uniform(10, 22), rng.uniform(24, 48)
        row = np.floor(yy / h)
        x = xx + (row % 2) * w / 2
        mortar = (yy % h < 2) | (x % w < 2)
        return mortar.astype(np.float32)
    raise ValueError(f"unknown background kind {kind!r}")


def _background(rng: np.random.Generator, kinds: Sequence[str]) -> tuple[np.ndarray, str]:
    """A muted background of one of `kinds` (H x W x 3 float32) and its kind."""
    kind = kinds[rng.integers(len(kinds))]
    t = np.clip(_pattern(rng, kind), 0, 1)[..., None]
    hue, value = rng.random(), rng.uniform(0.25, 0.97)  # dark grey to near white
    other = np.clip(value + rng.choice([-1, 1]) * rng.uniform(0.08, 0.22), 0.15, 0.98)
    a, b = _muted_tone(rng, hue, value), _muted_tone(rng, hue + rng.uniform(-0.08, 0.08), other)
    grain = rng.normal(0, rng.uniform(2, 7), size=(IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
    return a * (1 - t) + b * t + grain, kind


def _signed(rng: np.random.Generator, magnitude: tuple[float, float]) -> float:
    """A value whose size is uniform in `magnitude` = (low, high), of random sign."""
    return float(rng.uniform(*magnitude) * rng.choice([-1, 1]))


def shade(rng: np.random.Generator, colour: str, hue_offset: tuple[float, float] = (0, 10)) -> np.ndarray:
    """An RGB shade (0..255) of a colour name: its centre hue moved by hue_offset degrees either way."""
    centre, (v_lo, v_hi) = COLOUR_HSV[colour]
    hue = (centre + _signed(rng, hue_offset)) / 360 % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(*SATURATION), rng.uniform(v_lo, v_hi))
    return np.array(rgb, dtype=np.float32) * 255


def _paint(canvas: np.ndarray, rng: np.random.Generator, rgb: np.ndarray, mask: np.ndarray,
           x: int, y: int) -> None:
    """Composite a softly shaded flat colour through the mask."""
    side = mask.shape[0]
    ramp = np.linspace(-1, 1, side, dtype=np.float32)
    gx, gy = rng.uniform(-1, 1, size=2)  # direction of a soft lighting gradient
    light = 1 + rng.uniform(0.03, 0.1) * (ramp[None, :] * gx + ramp[:, None] * gy)
    fill = rgb * light[..., None]
    alpha = mask[..., None]
    region = canvas[y:y + side, x:x + side]
    canvas[y:y + side, x:x + side] = region * (1 - alpha) + fill * alpha


def _draw_style(rng: np.random.Generator, split: str, wide_train: bool | Sequence[str] = False) -> dict:
    """This scene's rendering settings: the training style, or for test_shift a mix of shifted factors.

    With wide_train, the train split's scenes are drawn from the training style widened by STYLES["wide"]
    (all of it, or the parts named; see wide_parts).
    """
    train = STYLES["train"]
    if split != "test_shift":
        blur = rng.uniform(*train["blur"]) if rng.random() < train["blur_p"] else 0.0
        style = {**train, "blur": blur}
        parts = wide_parts(wide_train)
        if parts and split == "train":
            wide = STYLES["wide"]
            if "backgrounds" in parts:
                style["backgrounds"] = train["backgrounds"] + wide["backgrounds"]
            for part in ("jpeg", "noise"):  # drawn whether used or not: one RNG stream for every choice of parts
                if rng.random() < wide[part + "_p"] and part in parts:
                    style[part] = wide[part]
        return style
    shift = STYLES["shift"]
    use = {k: rng.random() < shift["shift_p"] for k in ("hue_offset", "rotation", "blur", "jpeg", "noise", "sides")}
    style = {k: shift[k] if use[k] else train[k] for k in use}
    style["blur"] = rng.uniform(*shift["blur"]) if use["blur"] else 0.0
    style["backgrounds"] = shift["backgrounds"]
    return style


SHIFT_FACTORS = ("backgrounds", "hue_offset", "rotation", "blur", "jpeg", "noise", "sides")


def factor_style(rng: np.random.Generator, shifted: Sequence[str]) -> dict:
    """The training style with exactly the factors in `shifted` (of SHIFT_FACTORS) taken from test_shift's.

    For measuring which of test_shift's factors a model fails on (bench/shift_factors.py): a factor
    left out keeps the training setting (blur included: blurred 30% of the time, mildly).
    """
    unknown = set(shifted) - set(SHIFT_FACTORS)
    if unknown:
        raise ValueError(f"unknown shift factors {sorted(unknown)}; expected some of {SHIFT_FACTORS}")
    style, shift = _draw_style(rng, "train"), STYLES["shift"]
    for factor in shifted:
        style[factor] = rng.uniform(*shift["blur"]) if factor == "blur" else shift[factor]
    return style


def _side(rng: np.random.Generator, ranges: list[tuple[int, int]]) -> int:
    lo, hi = ranges[rng.integers(len(ranges))]
    return int(rng.integers(lo, hi, endpoint=True))


def make_scene(rng: np.random.Generator, split: str, held_out: Sequence[tuple[str, str]],
               style: dict | None = None,
               wide_train: bool | Sequence[str] = False) -> tuple[Image.Image, list[dict], str]:
    """Render one scene: (image, objects, background kind). Objects have colour/shape/size/bbox/area.

    The split's style is drawn from rng (widened for the train split with wide_train) unless `style` is
    given (see factor_style); the split still decides the colour-shape pairs and whether a scene may be empty.
    """
    style = _draw_style(rng, split, wide_train) if style is None else style
    canvas, kind = _background(rng, style["backgrounds"])
    n = 0 if split != "test_novel" and rng.random() < EMPTY_SHARE else int(rng.integers(1, 4))
    pairs = _sample_pairs(rng, n, split, held_out)
    sizes = [SIZES[i] for i in rng.integers(len(SIZES), size=n)]
    corners = None
    for _ in range(30):
        sides = [_side(rng, style["sides"][s]) for s in sizes]
        corners = _place(rng, sides)
        if corners is not None:
            break
    while corners is None:  # crowded layout (rare): fall back to small objects, which fit easily
        sizes = ["small"] * n
        sides = [int(rng.integers(*SIDE_RANGE["small"], endpoint=True)) for _ in sizes]
        corners = _place(rng, sides)
    objects = []
    for (colour, shape), size, side, (x, y) in zip(pairs, sizes, sides, corners):
        # Shape variants a drawing may use: a hexagon flat-topped or pointed up, stars of different depths.
        angle = _signed(rng, style["rotation"]) + (30 if shape == "hexagon" and rng.random() < 0.5 else 0)
        inner = rng.uniform(0.17, 0.28) if shape == "star" else 0.21
        mask, (bx, by, bw, bh) = _shape_mask(shape, side, angle, inner)
        _paint(canvas, rng, shade(rng, colour, style["hue_offset"]), mask, x, y)
        objects.append({"colour": colour, "shape": shape, "size": size,
                        "bbox": [round(x + bx, 2), round(y + by, 2), round(bw, 2), round(bh, 2)],
                        "area": round(float(mask.sum()), 2)})
    if style["noise"]:
        canvas = canvas + rng.normal(0, rng.uniform(*style["noise"]), size=canvas.shape).astype(np.float32)
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))  # RGB
    if style["blur"]:
        image = image.filter(ImageFilter.GaussianBlur(style["blur"]))
    if style["jpeg"]:  # artefacts of a low quality; the file is then saved at JPEG_QUALITY like every image
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(*style["jpeg"], endpoint=True)))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image, objects, kind


# --------------------------------------------------------------------------- captions

def _centre(obj: dict) -> tuple[float, float]:
    x, y, w, h = obj["bbox"]
    return x + w / 2, y + h / 2


# The phrases `relation` returns: the captions state them, captioner.scene_metrics reads them back.
RELATIONS = ("to the left of", "to the right of", "above", "below")


def relation(a: dict, b: dict) -> str:
    """Where a is relative to b (one of RELATIONS), along the dominant axis of their centres."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


_PRONOUN = {"to the left of": "to its left", "to the right of": "to its right",
            "above": "above it", "below": "below it"}


def _named(obj: dict, size: bool = True, det: str = "a") -> str:
    """The object's noun phrase, "a small red circle"; det="" leaves the article out."""
    words = [det] + ([obj["size"]] if size else []) + [obj["colour"], obj["shape"]]
    return " ".join(w for w in words if w)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else " ".join(items[:-1]) + " and " + items[-1]


def _groups(objs: list[dict], size: bool = True) -> str:
    """List the objects, merging identical colour-shape ones into "two red circles"."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for o in objs:
        groups.setdefault((o["colour"], o["shape"]), []).append(o)
    items = []
    for (colour, shape), members in groups.items():
        same_size = len({m["size"] for m in members}) == 1
        if len(members) == 1 or (size and not same_size):
            items += [_named(m, size) for m in members]
        else:
            words = [_COUNT_WORD[len(members)], members[0]["size"] if size else "", colour, plural(shape)]
            items.append(" ".join(w for w in words if w))
    return _join(items)


def position(obj: dict) -> str:
    """Where obj is in the image: "in the top left", "at the top", "on the left", "in the centre"... (thirds)."""
    cx, cy = _centre(obj)
    third = IMAGE_SIZE / 3
    v = "top" if cy < third else "bottom" if cy > 2 * third else ""
    h = "left" if cx < third else "right" if cx > 2 * third else ""
    if v and h:
        return f"in the {v} {h}"
    return f"at the {v}" if v else f"on the {h}" if h else "in the centre"


def _positional(objs: list[dict]) -> str | None:
    """"x on the left y in the middle and z on the right" if the order is clear."""
    xs, ys = zip(*(_centre(o) for o in objs))
    axis = 0 if np.ptp(xs) >= np.ptp(ys) else 1
    order = sorted(objs, key=lambda o: _centre(o)[axis])
    coords = [_centre(o)[axis] for o in order]
    if min(np.diff(coords)) < 12:  # too close to call one of them "in the middle"
        return None
    ends = ("on the left", "on the right") if axis == 0 else ("at the top", "at the bottom")
    words = [ends[0]] + ["in the middle"] * (len(objs) - 2) + [ends[1]]
    parts = [f"{_named(o)} {w}" for o, w in zip(order, words)]
    return " ".join(parts[:-1]) + " and " + parts[-1]


def _relation_captions(o: list[dict]) -> list[str | None]:
    a, b = o[0], o[1]
    if len(o) == 2:
        return [f"{_named(a)} {relation(a, b)} {_named(b)}",
                f"{_named(a)} is {relation(a, b)} {_named(b)}",
                f"{_named(b)} with {_named(a)} {_PRONOUN[relation(a, b)]}",
                _positional(o)]
    c = o[2]
    return [f"{_named(a)} {relation(a, b)} {_named(b)} and {_named(c)} {relation(c, b)} it",
            f"{_named(b)} is {relation(b, a)} {_named(a)} and {relation(b, c)} {_named(c)}",
            f"{_named(b)} with {_named(a)} {_PRONOUN[relation(a, b)]} and {_named(c)} {_PRONOUN[relation(c, b)]}",
            _positional(o)]


def _choose(rng: np.random.Generator, items: list[str], k: int) -> list[str]:
    """k of the items, at random, without repeats."""
    return [items[i] for i in rng.permutation(len(items))[:k]]


def make_captions(rng: np.random.Generator, objects: list[dict], background: str) -> list[str]:
    """CAPTIONS_PER_IMAGE varied captions, each naming every object with colour and shape (none: saying so)."""
    def shuffled() -> list[dict]:  # a fresh object order per caption
        return [objects[i] for i in rng.permutation(len(objects))]
    bg = _BACKGROUNDS[background]
    if not objects:
        chosen = [f"an empty {bg} background", f"a {bg} background with no shapes", "there are no objects",
                  f"no shapes on a {bg} background", f"nothing but a {bg} background"]
    elif len(objects) == 1:
        o = objects[0]
        counted = [f"one {_named(o, det='')}", f"a single {_named(o, det='')} {position(o)}",
                   f"the image shows one {_named(o, det='')}"]
        other = [_named(o), f"{_named(o)} on a {bg} background", f"there is {_named(o)} {position(o)}",
                 f"an image of {_named(o, size=False)}"]
        n_counted = int(rng.integers(1, 3))
        chosen = _choose(rng, counted, n_counted) + _choose(rng, other, CAPTIONS_PER_IMAGE - n_counted)
    else:
        count = _COUNT_WORD[len(objects)]
        relations = [c for c in _relation_captions(shuffled()) if c]
        counted = [f"{count} shapes {_groups(shuffled())}",
                   f"there are {count} objects {_groups(shuffled())}",
                   f"an image of {count} shapes {_groups(shuffled(), size=False)}"]
        plain = [_groups(shuffled()), f"{_groups(shuffled())} on a {bg} background"]
        # 2-3 relation captions, 1-2 stating the count, plain lists fill the rest
        n_rel, n_counted = int(rng.integers(2, 4)), int(rng.integers(1, 3))
        chosen = (_choose(rng, relations, n_rel) + _choose(rng, counted, n_counted)
                  + _choose(rng, plain, CAPTIONS_PER_IMAGE - n_rel - n_counted))
    return [" ".join(chosen[i].split()) for i in rng.permutation(len(chosen))]


# --------------------------------------------------------------------------- writing

def _render_task(task: tuple[str, int, str, int, int, tuple, tuple]) -> dict:
    """Worker: render, save and caption one image. The RNG depends only on (seed, split, index)."""
    out_dir, seed, split, index, image_id, held_out, wide_train = task
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    image, objects, background = make_scene(rng, split, held_out, wide_train=wide_train)
    image.save(Path(out_dir) / "images" / split / f"{image_id:06d}.jpg", quality=JPEG_QUALITY)
    return {"id": image_id, "split": split, "objects": objects,
            "captions": make_captions(rng, objects, background)}


def _write_json(path: Path, data: Any) -> None:
    """Compact JSON, written atomically: readers never see a half-written file."""
    atomic_write_json(path, data, separators=(",", ":"))


def _image_entry(rec: dict) -> dict:
    return {"id": rec["id"], "file_name": f"{rec['split']}/{rec['id']:06d}.jpg",
            "width": IMAGE_SIZE, "height": IMAGE_SIZE}


def _write_annotations(out: Path, records: list[dict], seed: int) -> None:
    karpathy, cap_id, inst_id = [], 1, 1
    categories = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    for split in SPLITS:
        recs = [r for r in records if r["split"] == split]
        info = {"description": f"shapes world, split {split}", "version": VERSION, "seed": seed}
        caps, insts = [], []
        for rec in recs:
            sentences = []
            for caption in rec["captions"]:
                caps.append({"id": cap_id, "image_id": rec["id"], "caption": caption})
                sentences.append({"raw": caption, "tokens": caption.split(),
                                  "imgid": len(karpathy), "sentid": cap_id})
                cap_id += 1
            for obj in rec["objects"]:
                insts.append({"id": inst_id, "image_id": rec["id"],
                              "category_id": SHAPES.index(obj["shape"]) + 1, "iscrowd": 0, **obj})
                inst_id += 1
            karpathy.append({"filepath": split, "filename": f"{rec['id']:06d}.jpg",
                             "imgid": len(karpathy), "cocoid": rec["id"], "split": split,
                             "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
        images = [_image_entry(r) for r in recs]
        _write_json(out / "annotations" / f"captions_{split}.json",
                    {"info": info, "images": images, "annotations": caps})
        _write_json(out / "annotations" / f"instances_{split}.json",
                    {"info": info, "images": images, "categories": categories, "annotations": insts})
    _write_json(out / "dataset_shapes.json", {"dataset": "shapes", "images": karpathy})


def _render_all(tasks: list[tuple], workers: int) -> Iterator[dict]:
    """Records in task order, whatever the number of worker processes."""
    if workers == 1:
        yield from map(_render_task, tasks)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(_render_task, tasks, chunksize=32)


def _normalise_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
    """All four splits, in SPLITS order; a split left out gets no images."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected {SPLITS}")
    return {s: int(sizes.get(s, 0)) for s in SPLITS}


def generate_world(out_dir: str | os.PathLike, seed: int = 0, sizes: Mapping[str, int] | None = None,
                   workers: int | None = None, wide_train: bool | Sequence[str] = False) -> Path:
    """Generate the world under out_dir (replacing out_dir/images); output depends only on seed, sizes and
    wide_train (the train split drawn from the training style widened by STYLES["wide"], all of it or the
    parts named in WIDE_PARTS; the other splits are the same either way)."""
    parts = wide_parts(wide_train)
    out, sizes = Path(out_dir), _normalise_sizes(sizes)
    (out / "world.json").unlink(missing_ok=True)  # incomplete until written again at the end
    shutil.rmtree(out / "images", ignore_errors=True)  # no stale images from a bigger world
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    held_out = choose_held_out(seed)
    tasks, image_id = [], 1
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for index in range(sizes[split]):
            tasks.append((str(out), seed, split, index, image_id, tuple(held_out), parts))
            image_id += 1
    workers = max(1, workers or os.cpu_count() or 1)
    start, records = time.monotonic(), []
    log.info("generating %d shapes images into %s with %d worker(s)", len(tasks), out, workers)
    for rec in _render_all(tasks, workers):
        records.append(rec)
        if len(records) % max(1, len(tasks) // 10) == 0:
            log.info("%d/%d images (%.0fs)", len(records), len(tasks), time.monotonic() - start)
    _write_annotations(out, records, seed)
    _write_json(out / "world.json", {
        "version": VERSION, "seed": seed, "sizes": sizes, "image_size": IMAGE_SIZE,
        "shapes": list(SHAPES), "colours": {c: {"hue": h, "value": list(v)} for c, (h, v) in COLOUR_HSV.items()},
        # a world without wide_train writes what it wrote before the option existed (caches know it by this file)
        "styles": {k: v for k, v in STYLES.items() if k != "wide" or parts},
        **({"wide_train": True if parts == WIDE_PARTS else list(parts)} if parts else {}), "empty_share": EMPTY_SHARE,
        "object_sizes": list(SIZES), "held_out": [list(p) for p in held_out],
        "num_images": len(tasks)})
    return out


def load_world(out_dir: str | os.PathLike) -> dict:
    """The contents of out_dir/world.json."""
    with open(Path(out_dir) / "world.json") as f:
        return json.load(f)


def ensure_world(out_dir: str | os.PathLike, seed: int = 0, sizes: Mapping[str, int] | None = None,
                 workers: int | None = None, wide_train: bool | Sequence[str] = False) -> Path:
    """Return out_dir, generating the world first unless world.json already matches seed/sizes/wide_train."""
    try:
        world = load_world(out_dir)
        wide = wide_parts(world.get("wide_train", False))
        found = (world.get("version"), world.get("seed"), world.get("sizes"), wide)
        if found == (VERSION, seed, _normalise_sizes(sizes), wide_parts(wide_train)):
            return Path(out_dir)
    except (OSError, ValueError):
        pass
    return generate_world(out_dir, seed=seed, sizes=sizes, workers=workers, wide_train=wide_train)


def load_objects(instances_json_path: str | os.PathLike) -> dict[int, list[dict]]:
    """image_id -> [{"colour", "shape", "size", "bbox"}] from an instances_{split}.json."""
    with open(instances_json_path) as f:
        data = json.load(f)
    objects: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        objects.setdefault(ann["image_id"], []).append(
            {k: ann[k] for k in ("colour", "shape", "size", "bbox")})
    return objects


# --------------------------------------------------------------------------- CLI

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m captioner.shapes", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (e.g. data/shapes)")
    p.add_argument("--seed", type=int, default=0)
    for split, n in DEFAULT_SIZES.items():
        p.add_argument(f"--{split.replace('_', '-')}", type=int, default=n, help=f"images (default {n})")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing if out/world.json already matches seed, sizes and --wide-train")
    p.add_argument("--wide-train", nargs="*", choices=WIDE_PARTS, default=None, metavar="PART",
                   help="draw the train split wider than the other splits: STYLES['wide'] adds background families, "
                        "JPEG artefacts and noise (milder than test_shift's); val/test/test_novel/test_shift "
                        f"unchanged. Alone: all of it; or name the parts ({', '.join(WIDE_PARTS)})")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = {s: getattr(args, s) for s in SPLITS}
    start = time.monotonic()
    make = ensure_world if args.if_missing else generate_world
    wide = False if args.wide_train is None else (args.wide_train or True)
    out = make(args.out, seed=args.seed, sizes=sizes, workers=args.workers, wide_train=wide)
    world = load_world(out)
    held = ", ".join(f"{c} {s}" for c, s in world["held_out"])
    print(f"shapes world in {out}: {world['num_images']} images "
          f"({', '.join(f'{k} {v}' for k, v in world['sizes'].items())}), seed {world['seed']}, "
          f"held out: {held}; {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
