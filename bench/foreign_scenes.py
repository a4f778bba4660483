"""Foreign scenes: how the shapes-world model reads shapes drawn by a renderer the project did not write.

    python bench/foreign_scenes.py                                # 300 scenes, seed 0, the demo model, beam 3
    python bench/foreign_scenes.py --n 200 --max-objects 3 --size 320x240 --tint --out runs/foreign_320
    python bench/foreign_scenes.py --n 50 --render-only           # only write the scenes
    python evaluate.py --data shapes --shapes-dir runs/foreign/scenes --split test --no-meteor   # the same images

The demo model is trained on scenes of captioner/shapes.py (shade ranges, textured backgrounds,
supersampled shapes). Users show it scenes drawn otherwise. This script draws its own scenes, on
purpose independently of shapes.py (it imports only the vocabulary: SHAPES, COLOURS, SIZES, plural),
with PIL.ImageDraw and no supersampling:

* a canvas of --size (224x224; the model resizes without cropping, so 320x240 works too);
* a flat light background (white, light grey, beige, pale blue, ...) or a vertical/horizontal
  linear gradient between two light tones;
* 1..--max-objects objects (default 2), never overlapping, cells of 28-90 px; colours are PIL's
  standard shades of the six names (PIL.ImageColor.getrgb: green is (0, 128, 0), purple
  (128, 0, 128)), with --tint a small random brightness/tint change; circle (ellipse), square
  (rectangle), triangle, star (10-point polygon), hexagon, cross (12-point polygon); a black or
  darker outline on some objects (--outline-p);
* a mild Gaussian blur (radius 0.3-1) on some scenes (--blur-p).

The scenes are written as a shapes-world folder (OUT/scenes: images/test/NNNNNN.jpg,
annotations/{captions,instances}_test.json, dataset_shapes.json, world.json) that
captioner.sources.shapes_source, and so evaluate.py --shapes-dir, can read; the reference
captions ("a red circle and a blue square") only fill the format. Then every scene is captioned
(--checkpoint, default the demo model; --beam 3) and the script prints:

* object_recall: objects named with the right colour and shape, over all objects;
* scene_accuracy: captions naming exactly the colour-shape objects present;
* phantom_rate: images whose caption names a colour-shape pair that is not in the image (with
  CHAIR_i / CHAIR_s of captioner.scene_metrics.shapes_scores when it reports them);
* the most frequent colour confusions (true colour -> said colour, same shape) and shape confusions;
* the 1-object images described with 2 or more objects;
* object recall by background, blur, outline, object size and colour.

It writes OUT/metrics.json (figures, breakdowns, settings) and OUT/predictions.json (caption,
objects, phantoms and misses of every scene). Nothing is asserted about the model's quality.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFilter

from captioner.scene_metrics import parse_objects
from captioner.shapes import COLOURS, SHAPES, SIZES, plural

RENDERER = "bench/foreign_scenes.py"
RENDERER_VERSION = 1
SPLIT = "test"
JPEG_QUALITY = 90
# Light tones for backgrounds (PIL colour names): white, greys, beige, pale blue, ...
BACKGROUND_TONES = ("white", "whitesmoke", "gainsboro", "lightgray", "beige", "linen", "ivory",
                    "aliceblue", "lavender", "honeydew")
MARGIN, GAP = 4, 8  # px: from the border, between the cells of two objects
# "size" as the shapes world writes it: its small cells are 30-42 px, its large ones 64-84 px.
SIZE_SPLIT = 53


@dataclass(frozen=True)
class RenderOptions:
    width: int = 224
    height: int = 224
    max_objects: int = 2
    min_side: int = 28
    max_side: int = 90
    gradient_p: float = 0.5  # share of gradient backgrounds (the others are flat)
    blur_p: float = 0.4  # share of blurred scenes
    blur: tuple[float, float] = (0.3, 1.0)  # Gaussian blur radius range
    outline_p: float = 0.3  # share of objects with an outline
    tint: bool = False  # small random brightness / tint change of the standard shades


# --------------------------------------------------------------------------------------------
# Renderer (independent of captioner.shapes' rendering)
# --------------------------------------------------------------------------------------------

def _polygon(shape: str, x: float, y: float, s: float) -> list[tuple[float, float]] | None:
    """Vertices of a shape drawn in the square cell (x, y, side s); None for the circle."""
    cx, cy, r = x + (s - 1) / 2, y + (s - 1) / 2, (s - 1) / 2

    def ring(radii: Sequence[float], n: int) -> list[tuple[float, float]]:
        return [(cx + radii[k % len(radii)] * math.cos(-math.pi / 2 + 2 * math.pi * k / n),
                 cy + radii[k % len(radii)] * math.sin(-math.pi / 2 + 2 * math.pi * k / n)) for k in range(n)]

    e = s - 1
    if shape == "circle":
        return None
    if shape == "square":
        return [(x, y), (x + e, y), (x + e, y + e), (x, y + e)]
    if shape == "triangle":  # isosceles, as tall as wide, point up
        return [(x, y + e), (x + e, y + e), (x + e / 2, y)]
    if shape == "star":  # five points: 10 vertices, inner radius 0.4
        return ring((r, 0.4 * r), 10)
    if shape == "hexagon":  # pointy top
        return ring((r,), 6)
    if shape == "cross":  # a plus sign, arms a third of the side
        a, b = e / 3, 2 * e / 3
        return [(x + a, y), (x + b, y), (x + b, y + a), (x + e, y + a), (x + e, y + b), (x + b, y + b),
                (x + b, y + e), (x + a, y + e), (x + a, y + b), (x, y + b), (x, y + a), (x + a, y + a)]
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cell: tuple[int, int, int], fill: Any,
                outline: Any = None, width: int = 0) -> None:
    x, y, s = cell
    pts = _polygon(shape, x, y, s)
    if pts is None:
        draw.ellipse([x, y, x + s - 1, y + s - 1], fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle([x, y, x + s - 1, y + s - 1], fill=fill, outline=outline, width=width)
    else:
        draw.polygon(pts, fill=fill, outline=outline, width=width)


def _background(rng: np.random.Generator, opts: RenderOptions) -> tuple[Image.Image, dict]:
    a, b = (ImageColor.getrgb(BACKGROUND_TONES[i]) for i in rng.choice(len(BACKGROUND_TONES), 2, replace=False))
    image = Image.new("RGB", (opts.width, opts.height), a)
    if rng.random() >= opts.gradient_p:
        return image, {"kind": "flat", "tones": [a]}
    draw = ImageDraw.Draw(image)
    vertical = bool(rng.random() < 0.5)  # colour changes from top to bottom
    steps = opts.height if vertical else opts.width
    for i in range(steps):
        t = i / max(1, steps - 1)
        c = tuple(round(u + (v - u) * t) for u, v in zip(a, b))
        draw.line([(0, i), (opts.width - 1, i)] if vertical else [(i, 0), (i, opts.height - 1)], fill=c)
    return image, {"kind": "gradient", "direction": "vertical" if vertical else "horizontal", "tones": [a, b]}


def _place(rng: np.random.Generator, sides: list[int], opts: RenderOptions) -> list[tuple[int, int]] | None:
    """Top-left corners of non-overlapping cells (GAP apart), or None when random tries fail."""
    cells: list[tuple[int, int, int]] = []
    for s in sides:
        for _ in range(200):
            x = int(rng.integers(MARGIN, opts.width - MARGIN - s + 1))
            y = int(rng.integers(MARGIN, opts.height - MARGIN - s + 1))
            if all(x + s + GAP <= px or px + ps + GAP <= x or y + s + GAP <= py or py + ps + GAP <= y
                   for px, py, ps in cells):
                cells.append((x, y, s))
                break
        else:
            return None
    return [(x, y) for x, y, _ in cells]


def _colour(rng: np.random.Generator, name: str, tint: bool) -> tuple[int, int, int]:
    rgb = np.array(ImageColor.getrgb(name), dtype=float)
    if tint:
        rgb = rgb * rng.uniform(0.85, 1.1) + rng.uniform(-12, 12, size=3)
    return tuple(int(v) for v in np.clip(np.round(rgb), 0, 255))


def render_scene(seed: int, index: int, opts: RenderOptions | None = None) -> tuple[Image.Image, dict]:
    """(image, scene) of scene `index`: it depends only on (seed, index, opts), not on how many are drawn.

    scene: {"background": {...}, "blur": radius or 0, "objects": [{"colour", "shape", "size", "bbox",
    "area", "side", "rgb", "outline"}]}; bbox [x, y, w, h] is the tight box of the object's pixels.
    """
    opts = opts or RenderOptions()
    rng = np.random.default_rng([seed, index])
    image, background = _background(rng, opts)
    n = int(rng.integers(1, opts.max_objects + 1))
    colours = [COLOURS[i] for i in rng.integers(len(COLOURS), size=n)]
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=n)]
    hi = min(opts.max_side, opts.width - 2 * MARGIN, opts.height - 2 * MARGIN)
    sides = [int(v) for v in rng.integers(opts.min_side, hi + 1, size=n)]
    corners = _place(rng, sides, opts)
    while corners is None:  # crowded: shrink every object a little and try again
        sides = [max(opts.min_side, int(s * 0.85)) for s in sides]
        corners = _place(rng, sides, opts)
    draw = ImageDraw.Draw(image)
    objects = []
    for colour, shape, s, (x, y) in zip(colours, shapes, sides, corners):
        rgb = _colour(rng, colour, opts.tint)
        outline, width = None, 0
        if rng.random() < opts.outline_p:
            width = int(rng.integers(1, 4))
            outline = (0, 0, 0) if rng.random() < 0.5 else tuple(int(v * 0.6) for v in rgb)
        _draw_shape(draw, shape, (x, y, s), rgb, outline, width)
        mask = Image.new("L", image.size, 0)  # the same drawing alone: its exact pixels
        _draw_shape(ImageDraw.Draw(mask), shape, (x, y, s), 255, 255 if width else None, width)
        x0, y0, x1, y1 = mask.getbbox()
        objects.append({"colour": colour, "shape": shape, "size": SIZES[0] if s < SIZE_SPLIT else SIZES[1],
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(np.count_nonzero(np.asarray(mask))),
                        "side": s, "rgb": list(rgb), "outline": bool(width)})
    blur = 0.0
    if rng.random() < opts.blur_p:
        blur = round(float(rng.uniform(*opts.blur)), 3)
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return image, {"background": background, "blur": blur, "objects": objects}


def describe(objects: Sequence[Mapping[str, Any]], order: Sequence[int] | None = None) -> str:
    """A plain reference caption: "a red circle and two blue squares"."""
    groups = Counter((objects[i]["colour"], objects[i]["shape"]) for i in (order or range(len(objects))))
    words = {1: "a", 2: "two", 3: "three"}
    items = [f"{words.get(k, str(k))} {c} {s if k == 1 else plural(s)}" for (c, s), k in groups.items()]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _captions(objects: list[dict]) -> list[str]:
    first = describe(objects)
    caps = [first, "there is " + first]
    if len(objects) > 1:
        caps.append(describe(objects, order=list(range(len(objects)))[::-1]))
    return caps


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    tmp.replace(path)


def write_scenes(out_dir: str | Path, n: int = 300, seed: int = 0, opts: RenderOptions | None = None) -> list[dict]:
    """Draw n scenes into out_dir as a shapes-world folder with one split, "test" (image ids 1..n).

    Returns the scene records ({"id", "path", "width", "height", "background", "blur", "objects"}).
    Refuses a folder holding something else than scenes of this script (a real shapes world).
    """
    opts, out = opts or RenderOptions(), Path(out_dir)
    world_file = out / "world.json"
    if world_file.exists() and json.loads(world_file.read_text()).get("renderer") != RENDERER:
        raise ValueError(f"{out} holds a world this script did not write; choose another --out")
    world_file.unlink(missing_ok=True)  # incomplete until written again at the end
    shutil.rmtree(out / "images" / SPLIT, ignore_errors=True)
    (out / "images" / SPLIT).mkdir(parents=True)
    records, karpathy, caps, insts = [], [], [], []
    categories = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    for index in range(n):
        image_id = index + 1
        image, scene = render_scene(seed, index, opts)
        path = out / "images" / SPLIT / f"{image_id:06d}.jpg"
        image.save(path, quality=JPEG_QUALITY)
        records.append({"id": image_id, "path": str(path), "width": opts.width, "height": opts.height, **scene})
        sentences = []
        for caption in _captions(scene["objects"]):
            sent_id = len(caps) + 1
            caps.append({"id": sent_id, "image_id": image_id, "caption": caption})
            sentences.append({"raw": caption, "tokens": caption.split(), "imgid": index, "sentid": sent_id})
        for obj in scene["objects"]:
            insts.append({"id": len(insts) + 1, "image_id": image_id, "category_id": SHAPES.index(obj["shape"]) + 1,
                          "iscrowd": 0, **obj})
        karpathy.append({"filepath": SPLIT, "filename": path.name, "imgid": index, "cocoid": image_id,
                         "split": SPLIT, "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
    images = [{"id": r["id"], "file_name": f"{SPLIT}/{r['id']:06d}.jpg", "width": r["width"], "height": r["height"]}
              for r in records]
    info = {"description": f"foreign scenes ({RENDERER}), split {SPLIT}", "version": RENDERER_VERSION, "seed": seed}
    _write_json(out / "annotations" / f"captions_{SPLIT}.json", {"info": info, "images": images, "annotations": caps})
    _write_json(out / "annotations" / f"instances_{SPLIT}.json",
                {"info": info, "images": images, "categories": categories, "annotations": insts})
    _write_json(out / "dataset_shapes.json", {"dataset": "shapes", "images": karpathy})
    # What the images depend on is in world.json: shapes_source names the feature cache by its hash.
    _write_json(world_file, {"renderer": RENDERER, "renderer_version": RENDERER_VERSION, "seed": seed,
                             "sizes": {SPLIT: n}, "image_size": [opts.width, opts.height], "options": asdict(opts),
                             "shapes": list(SHAPES), "colours": {c: list(ImageColor.getrgb(c)) for c in COLOURS},
                             "backgrounds": list(BACKGROUND_TONES), "num_images": n})
    return records


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (obj["colour"], obj["shape"])


def named_flags(caption: str, objects: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Per object: named with its colour and shape (of n objects of a pair, the first k are, when the
    caption names k of them)."""
    budget = parse_objects(caption)
    flags = []
    for o in objects:
        flags.append(budget[_key(o)] > 0)
        budget[_key(o)] -= 1
    return flags


def compare(caption: str, objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What one caption gets right and wrong about its scene (by colour-shape pair, with counts).

    named: objects named with their colour and shape; phantoms: named pairs that are not in the
    image at all; missed: objects not named; colour_confusions: (true colour, said colour) where a
    missed object's shape is named, more times than the image has it, with another colour;
    shape_confusions: (true shape, said shape) likewise, for the missed objects left (same colour);
    stated: objects the caption names in all.
    """
    truth, stated = Counter(_key(o) for o in objects), parse_objects(caption)
    missed, extra = truth - stated, stated - truth
    lost, spare = Counter(missed), Counter(extra)
    confusions: dict[int, list[tuple[str, str]]] = {1: [], 0: []}
    for fixed in (1, 0):  # same shape, another colour; then same colour, another shape
        vary = 1 - fixed
        for group in sorted({k[fixed] for k in +lost}):
            true_side = sorted(k[vary] for k, m in (+lost).items() if k[fixed] == group for _ in range(m))
            said_side = sorted(k[vary] for k, m in (+spare).items() if k[fixed] == group for _ in range(m))
            for t, s in zip(true_side, said_side):
                confusions[fixed].append((t, s))
                lost[(t, group) if fixed == 1 else (group, t)] -= 1
                spare[(s, group) if fixed == 1 else (group, s)] -= 1
    return {"named": sum((truth & stated).values()), "phantoms": sorted(k for k in extra if k not in truth),
            "missed": sorted(missed.elements()), "colour_confusions": confusions[1],
            "shape_confusions": confusions[0], "stated": sum(stated.values())}


def _recall(rows: Sequence[tuple[str, bool]]) -> dict[str, dict[str, Any]]:
    """{group: {"objects", "object_recall"}} of (group, named) rows, one per object."""
    totals: dict[str, list[int]] = {}
    for group, named in rows:
        t = totals.setdefault(group, [0, 0])
        t[0], t[1] = t[0] + 1, t[1] + bool(named)
    return {g: {"objects": k, "object_recall": hit / k} for g, (k, hit) in sorted(totals.items())}


def score(predictions: Mapping[int, str], objects: Mapping[int, Sequence[Mapping[str, Any]]],
          words: Mapping[int, list[str]] | None = None, alphas: Mapping[int, Any] | None = None,
          image_sizes: Mapping[int, tuple[int, int]] | None = None, top: int = 8) -> dict[str, Any]:
    """The figures of a set of captions (image id -> caption) against the scenes' objects.

    images, objects, object_recall, scene_accuracy, phantom_rate (images naming an absent
    colour-shape pair), phantom_objects, CHAIR_i / CHAIR_s / count_error_rate / grounding where
    captioner.scene_metrics.shapes_scores reports them (grounding needs words and alphas),
    colour_confusions / shape_confusions ([true, said, count], most frequent first),
    one_object_images and one_object_multi (those whose caption names 2+ objects), and
    recall_by_colour / recall_by_shape.
    """
    from captioner.scene_metrics import shapes_scores

    if set(predictions) != set(objects):
        raise ValueError("predictions and objects must have the same image ids")
    n_obj = named = phantom_images = phantom_objects = exact = one = one_multi = 0
    colour_conf: Counter = Counter()
    shape_conf: Counter = Counter()
    by_colour, by_shape = [], []
    for i, objs in objects.items():
        c = compare(predictions[i], objs)
        n_obj, named = n_obj + len(objs), named + c["named"]
        phantom_images += bool(c["phantoms"])
        phantom_objects += len(c["phantoms"])
        exact += parse_objects(predictions[i]) == Counter(_key(o) for o in objs)
        colour_conf.update(c["colour_confusions"])
        shape_conf.update(c["shape_confusions"])
        if len(objs) == 1:
            one, one_multi = one + 1, one_multi + (c["stated"] >= 2)
        for o, flag in zip(objs, named_flags(predictions[i], objs)):
            by_colour.append((o["colour"], flag))
            by_shape.append((o["shape"], flag))
    nan = float("nan")
    figures: dict[str, Any] = {
        "images": len(objects), "objects": n_obj,
        "object_recall": named / n_obj if n_obj else nan,
        "scene_accuracy": exact / len(objects) if objects else nan,
        "phantom_rate": phantom_images / len(objects) if objects else nan,
        "phantom_objects": phantom_objects,
    }
    words = dict(words or {})
    project, _ = shapes_scores(dict(predictions), words, dict(alphas or {}), dict(objects), dict(image_sizes or {}))
    for k in ("CHAIR_i", "CHAIR_s", "count_error_rate") + (("grounding", "grounding_chance") if words else ()):
        if k in project:
            figures[k] = project[k]
    if "object_recall" in project:  # the project's own figure: it should agree with ours
        figures["object_recall_project"] = project["object_recall"]
    figures.update({
        "colour_confusions": [[t, s, k] for (t, s), k in colour_conf.most_common(top)],
        "shape_confusions": [[t, s, k] for (t, s), k in shape_conf.most_common(top)],
        "one_object_images": one, "one_object_multi": one_multi,
        "one_object_multi_rate": one_multi / one if one else nan,
        "recall_by_colour": {g: v["object_recall"] for g, v in _recall(by_colour).items()},
        "recall_by_shape": {g: v["object_recall"] for g, v in _recall(by_shape).items()},
    })
    return figures


def breakdown(records: Sequence[Mapping[str, Any]], predictions: Mapping[int, str]) -> dict[str, Any]:
    """Object recall by background kind, blur, outline and object size."""
    groups: dict[str, list[tuple[str, bool]]] = {"background": [], "blur": [], "outline": [], "size": []}
    for r in records:
        for o, flag in zip(r["objects"], named_flags(predictions[r["id"]], r["objects"])):
            groups["background"].append((r["background"]["kind"], flag))
            groups["blur"].append(("blurred" if r["blur"] else "sharp", flag))
            groups["outline"].append(("outline" if o["outline"] else "no outline", flag))
            groups["size"].append((o["size"], flag))
    return {name: _recall(rows) for name, rows in groups.items()}


# --------------------------------------------------------------------------------------------
# Captioning and CLI
# --------------------------------------------------------------------------------------------

def caption_scenes(checkpoint: str | Path, paths: Sequence[str], beam: int = 3, device: str = "auto",
                   batch_size: int = 32) -> list[Any]:
    """CaptionOutput of every image (in order) with the checkpoint's model, through the project's loader."""
    from captioner.evaluation import caption_files
    from captioner.model import Captioner
    from captioner.runtime import resolve_device

    model = Captioner.from_checkpoint(checkpoint, resolve_device(device))
    outs = []
    for batch in caption_files(model, list(paths), beam_size=beam, batch_size=batch_size):
        for path, o, error in batch:
            if error:
                raise RuntimeError(f"cannot read {path}: {error}")
            outs.append(o)
    return outs


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    try:
        return int(w), int(h or w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size wants WIDTHxHEIGHT, e.g. 320x240, not {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from cli import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300, help="scenes (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-objects", type=int, default=2, choices=(1, 2, 3), help="objects per scene: 1..this")
    p.add_argument("--size", type=_size, default=(224, 224), help="canvas WIDTHxHEIGHT (default 224x224)")
    p.add_argument("--tint", action="store_true", help="vary the standard shades a little (brightness, tint)")
    p.add_argument("--blur-p", type=float, default=RenderOptions.blur_p, help="share of blurred scenes")
    p.add_argument("--outline-p", type=float, default=RenderOptions.outline_p, help="share of outlined objects")
    p.add_argument("--gradient-p", type=float, default=RenderOptions.gradient_p, help="share of gradient backgrounds")
    p.add_argument("--out", default=str(ROOT / "runs" / "foreign"),
                   help="output folder: scenes/ (the images) and metrics.json, predictions.json")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--render-only", action="store_true", help="write the scenes, caption nothing")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    return args


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    opts = RenderOptions(width=args.size[0], height=args.size[1], max_objects=args.max_objects, tint=args.tint,
                         blur_p=args.blur_p, outline_p=args.outline_p, gradient_p=args.gradient_p)
    out = Path(args.out)
    t0 = time.perf_counter()
    records = write_scenes(out / "scenes", args.n, args.seed, opts)
    print(f"wrote {len(records)} scenes ({opts.width}x{opts.height}, seed {args.seed}) to {out / 'scenes'} "
          f"in {time.perf_counter() - t0:.1f}s")
    if args.render_only:
        return {}
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    outputs = caption_scenes(args.checkpoint, [r["path"] for r in records], args.beam, args.device, args.batch_size)
    seconds = time.perf_counter() - t0
    preds = {r["id"]: o.text for r, o in zip(records, outputs)}
    objects = {r["id"]: r["objects"] for r in records}
    figures = score(preds, objects, {r["id"]: o.words for r, o in zip(records, outputs)},
                    {r["id"]: o.alphas for r, o in zip(records, outputs)},
                    {r["id"]: (r["width"], r["height"]) for r in records})
    parts = breakdown(records, preds)

    print(f"checkpoint {args.checkpoint}, beam {args.beam}: captioned in {seconds:.1f}s")
    for k in ("images", "objects", "object_recall", "object_recall_project", "scene_accuracy", "phantom_rate",
              "phantom_objects", "CHAIR_i", "CHAIR_s", "grounding", "grounding_chance"):
        if k in figures:
            print(f"  {k:22s} {_fmt(figures[k])}")
    print(f"  1-object images described with 2+ objects: {figures['one_object_multi']}/{figures['one_object_images']}"
          f" ({_fmt(figures['one_object_multi_rate'])})")
    for name in ("colour_confusions", "shape_confusions"):
        items = ", ".join(f"{t}->{s} {k}" for t, s, k in figures[name]) or "none"
        print(f"  {name} (true->said): {items}")
    for name in ("recall_by_colour", "recall_by_shape"):
        print(f"  {name}: " + ", ".join(f"{g} {v:.2f}" for g, v in figures[name].items()))
    for name, groups in parts.items():
        print(f"  recall by {name}: " + ", ".join(f"{g} {v['object_recall']:.2f} (n={v['objects']})"
                                                for g, v in groups.items()))
    result = {"figures": figures, "breakdown": parts, "checkpoint": str(args.checkpoint), "beam": args.beam,
              "scenes": str(out / "scenes"), "settings": {"n": args.n, "seed": args.seed, **asdict(opts)},
              "caption_seconds": round(seconds, 2)}
    _write_json(out / "metrics.json", result)
    _write_json(out / "predictions.json", [
        {"id": r["id"], "file": r["path"], "caption": preds[r["id"]], "background": r["background"]["kind"],
         "blur": r["blur"], "objects": r["objects"],
         **{k: v for k, v in compare(preds[r["id"]], r["objects"]).items() if k != "stated"}} for r in records])
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.json'}")
    return result


if __name__ == "__main__":
    main()
