"""Shapes-world measurements: what a generated caption says about a scene whose objects are known.

This module owns:

* the caption parser: `parse_objects` (the (colour, shape) objects a caption names, with
  counts), `object_mentions` (which tokens name them) and `stated_relations` ("X [is] REL Y"
  statements). It reads the generator's vocabulary (SHAPES, COLOURS, SIZES, NUMBER_WORDS,
  RELATIONS, defined once in captioner.shapes) and checks relations with the generator's own
  rule, `captioner.shapes.relation`.
* the metrics: `scene_accuracy`, `relation_accuracy`, `box_coverage_grid` and
  `attention_grounding`.
* `shapes_scores`, the one entry that computes every shapes-world score with its description
  (what evaluation reports), and `SHAPES_METRICS`, the ones training can select best.pt by.

No IO at import; numpy only (no Java, no pycocoevalcap: captioner.metrics holds the COCO scorers).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .shapes import COLOURS, NUMBER_WORDS, RELATIONS, SHAPES, SIZES, plural, relation

# The scores `shapes_scores` returns that training can select best.pt by (all but grounding_chance,
# a baseline). Each needs the objects of every image: only the shapes world has them.
SHAPES_METRICS = ("scene_accuracy", "grounding", "relation_accuracy", "relation_rate")

# What `shapes_scores` puts in its info dict, one entry per measurement (under its main key).
DESCRIPTIONS = {
    "relation_accuracy": ("share of stated 'X [is] left of/right of/above/below Y' relations that are true; "
                          "relation_rate: share of multi-object images whose caption states one"),
    "scene_accuracy": "share of images whose caption names exactly the colour-shape objects present",
    "grounding": ("mean share of a colour/shape word's attention inside the named object's box; "
                  "grounding_chance: mean share of the image those boxes cover"),
}

ParseFn = Callable[[Any], Counter]
MentionsFn = Callable[[list[str]], list[tuple[int, tuple[str, str]]]]


# --------------------------------------------------------------------------------------------
# Caption parser
# --------------------------------------------------------------------------------------------

_SHAPE_FORMS = {**{s: s for s in SHAPES}, **{plural(s): s for s in SHAPES}}
_ARTICLES = {"a", "an", "the", "another"}


def _tokens(caption: str | Sequence[Any]) -> list[str]:
    """Lower-case word tokens; a token list keeps its indices (junk becomes "")."""
    if isinstance(caption, str):
        return re.findall(r"[a-z]+", caption.lower())
    try:
        return [re.sub(r"[^a-z]", "", str(t).lower()) for t in caption]
    except TypeError:  # not iterable
        return []


def _scan(tokens: Sequence[str]) -> list[tuple[int, int, tuple[str, str], int]]:
    """Find (colour_idx, shape_idx, (colour, shape), count) noun phrases.

    A noun phrase is [article | number] [size words] colour [size words] shape;
    any other word ends it, so a colour only binds to a shape in the same phrase.
    """
    found = []
    count: int | None = None
    colour: str | None = None
    colour_idx = -1
    for i, tok in enumerate(tokens):
        if tok in NUMBER_WORDS or tok in _ARTICLES:
            count, colour = NUMBER_WORDS.get(tok, 1), None
        elif tok in SIZES:
            continue
        elif tok in COLOURS:
            colour, colour_idx = tok, i
        elif tok in _SHAPE_FORMS and colour is not None:
            found.append((colour_idx, i, (colour, _SHAPE_FORMS[tok]), count or 1))
            count, colour = None, None
        else:
            count, colour = None, None
    return found


def parse_objects(caption: str | Sequence[str]) -> Counter:
    """(colour, shape) -> count named in a caption string or token list; never raises."""
    objects: Counter = Counter()
    for _, _, key, count in _scan(_tokens(caption)):
        objects[key] += count
    return objects


def object_mentions(tokens: Sequence[str]) -> list[tuple[int, tuple[str, str]]]:
    """Token index and (colour, shape) of every colour/shape word in a parsed phrase."""
    mentions = []
    for c_idx, s_idx, key, _ in _scan(_tokens(tokens)):
        mentions += [(c_idx, key), (s_idx, key)]
    return mentions


def stated_relations(tokens: str | Sequence[str]) -> list[tuple[tuple[str, str], str, tuple[str, str]]]:
    """(subject, relation, object) for every "X [is] REL Y" in a caption, X and Y (colour, shape).

    Only the direct form is read ("a red circle is to the left of a blue square"); pronoun forms
    ("... with a red circle to its left") are not, so this undercounts stated relations.
    """
    toks = _tokens(tokens)
    spans = [(c_idx, s_idx, key) for c_idx, s_idx, key, _ in _scan(toks)]
    found = []
    for rel in RELATIONS:
        words = rel.split()
        for p in range(len(toks) - len(words) + 1):
            if toks[p: p + len(words)] != words:
                continue
            before = [sp for sp in spans if sp[1] < p]
            after = [sp for sp in spans if sp[0] >= p + len(words)]
            if not before or not after:
                continue
            subj, obj = before[-1], after[0]
            gap = toks[subj[1] + 1: p]
            if gap in ([], ["is"]) and obj[0] <= p + len(words) + 3:  # X [is] REL (a|small ...) Y
                found.append((subj[2], rel, obj[2]))
    return found


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

def _object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (obj["colour"], obj["shape"])


def _check_same_ids(a: Mapping, b: Mapping, name_a: str, name_b: str) -> None:
    if set(a) != set(b):
        missing = sorted(set(b) - set(a), key=repr)[:10]
        extra = sorted(set(a) - set(b), key=repr)[:10]
        raise ValueError(f"{name_a} and {name_b} ids differ: missing {missing}, extra {extra}")


def scene_accuracy(
    predictions: dict[int, str],
    objects: dict[int, list[dict]],
    *,
    parse_fn: ParseFn | None = None,
) -> float:
    """Share of images whose caption names exactly the (colour, shape) objects present.

    Multiplicity counts ("two blue squares" must match two blue squares); sizes and positions
    are ignored. parse_fn defaults to parse_objects. NaN for no images.
    """
    _check_same_ids(predictions, objects, "predictions", "objects")
    if not objects:
        return float("nan")
    parse = parse_fn or parse_objects
    hits = 0
    for img_id, objs in objects.items():
        truth = Counter(_object_key(o) for o in objs)
        # Counter() again: a stand-in parser may return a plain dict; equality compares counts.
        hits += int(Counter(parse(predictions[img_id])) == truth)
    return hits / len(objects)


def relation_accuracy(predictions: dict[int, str], objects: dict[int, list[dict]]) -> dict[str, float]:
    """How often generated captions state a spatial relation, and how often it is right.

    Reads "X [is] REL Y" statements (stated_relations); one is checked when X and Y each name
    exactly one object in the image, against the same centre rule the world's captions were
    written with (captioner.shapes.relation). Returns relation_accuracy (NaN when nothing was checkable),
    relations_checked, and relation_rate: the share of multi-object images whose caption states
    at least one relation in that form.
    """
    _check_same_ids(predictions, objects, "predictions", "objects")
    checked = right = multi = stating = 0
    for img_id, objs in objects.items():
        stated = stated_relations(predictions[img_id])
        if len(objs) > 1:
            multi += 1
            stating += bool(stated)
        for subj, rel, obj in stated:
            a = [o for o in objs if _object_key(o) == subj]
            b = [o for o in objs if _object_key(o) == obj]
            if len(a) == 1 and len(b) == 1 and a[0] is not b[0]:
                checked += 1
                right += relation(a[0], b[0]) == rel
    return {"relation_accuracy": right / checked if checked else float("nan"),
            "relations_checked": checked, "relation_rate": stating / multi if multi else float("nan")}


def box_coverage_grid(
    bbox: Sequence[float], image_size: tuple[int, int], grid: tuple[int, int]
) -> np.ndarray:
    """(h, w) array: the fraction of each grid cell's area covered by bbox.

    bbox = [x, y, w, h] in pixels; image_size = (W, H); grid = (h, w) rows x columns of equal
    cells over the whole image (the encoder resizes without cropping, so cells map linearly).
    Parts of the box outside the image are ignored.
    """
    W, H = (float(v) for v in image_size)
    rows, cols = (int(v) for v in grid)
    if W <= 0 or H <= 0 or rows <= 0 or cols <= 0:
        raise ValueError(f"bad image_size {image_size} or grid {grid}")
    x, y, bw, bh = (float(v) for v in bbox)
    if bw < 0 or bh < 0:
        raise ValueError(f"negative box size in {bbox}")

    def overlap(lo: float, hi: float, extent: float, n: int) -> np.ndarray:
        # The box's 1-D coverage of each of n equal cells; the 2-D coverage of a cell is the
        # product of its row and column coverages because both the box and cells are axis-aligned.
        edges = np.linspace(0.0, extent, n + 1)
        inter = np.minimum(hi, edges[1:]) - np.maximum(lo, edges[:-1])
        return np.clip(inter, 0.0, None) / (extent / n)

    cover_x = overlap(x, x + bw, W, cols)
    cover_y = overlap(y, y + bh, H, rows)
    return np.clip(np.outer(cover_y, cover_x), 0.0, 1.0)


def _as_grid_alphas(alpha: Any, n_tokens: int, img_id: Any) -> np.ndarray:
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim == 2:
        # search.py keeps attention flattened (T, N); accept it when N is a square grid.
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise ValueError(f"alphas[{img_id!r}] is (T, {a.shape[1]}): not a square grid")
        a = a.reshape(a.shape[0], side, side)
    if a.ndim != 3 or a.shape[0] != n_tokens:
        raise ValueError(
            f"alphas[{img_id!r}] has shape {a.shape}; expected ({n_tokens}, h, w), one row per "
            "emitted token (drop the <end> step's attention if it was kept)"
        )
    return a


def attention_grounding(
    tokens: dict[int, list[str]],
    alphas: dict[int, np.ndarray],
    objects: dict[int, list[dict]],
    image_sizes: dict[int, tuple[int, int]],
    *,
    mentions_fn: MentionsFn | None = None,
) -> dict:
    """How much attention colour/shape words put on the boxes of the objects they name.

    For each generated colour or shape word (per mentions_fn, default object_mentions) whose
    (colour, shape) matches at least one object of the image: mask = union of the coverage grids
    of all matching objects; inside = sum(alpha * mask); chance = mean(mask), what uniform
    attention would score. Words naming absent objects are ignored (scene_accuracy already
    penalises them).

    alphas[i]: (T, h, w) (or (T, h*w) with a square grid), T = len(tokens[i]).
    image_sizes[i]: (W, H) of the original image, the frame of the object boxes.
    Returns {"grounding", "grounding_chance", "grounding_words"}; NaNs and 0 when no word counts.
    """
    for other, name in ((alphas, "alphas"), (objects, "objects"), (image_sizes, "image_sizes")):
        missing = [i for i in tokens if i not in other]
        if missing:
            raise ValueError(f"{name} lacks ids {sorted(missing, key=repr)[:10]}")
    mentions = mentions_fn or object_mentions

    inside: list[float] = []
    chance: list[float] = []
    for img_id, toks in tokens.items():
        alpha = _as_grid_alphas(alphas[img_id], len(toks), img_id)
        grid = alpha.shape[1:]
        # One union mask per named (colour, shape); None when no such object is in the image.
        masks: dict[tuple[str, str], np.ndarray | None] = {}
        for t, key in mentions(list(toks)):
            if not 0 <= t < len(toks):
                raise ValueError(f"mention index {t} outside tokens of image {img_id!r}")
            key = tuple(key)
            if key not in masks:
                boxes = [o["bbox"] for o in objects[img_id] if _object_key(o) == key]
                if not boxes:
                    masks[key] = None
                else:
                    size = image_sizes[img_id]
                    masks[key] = np.maximum.reduce(
                        [box_coverage_grid(b, size, grid) for b in boxes]
                    )
            mask = masks[key]
            if mask is None:
                continue
            inside.append(float((alpha[t] * mask).sum()))
            chance.append(float(mask.mean()))

    if not inside:
        return {"grounding": float("nan"), "grounding_chance": float("nan"), "grounding_words": 0}
    return {
        "grounding": float(np.mean(inside)),
        "grounding_chance": float(np.mean(chance)),
        "grounding_words": len(inside),
    }


# --------------------------------------------------------------------------------------------
# All of them: what evaluation reports
# --------------------------------------------------------------------------------------------

def shapes_scores(
    predictions: Mapping[Any, str],
    words: Mapping[Any, list[str]],
    alphas: Mapping[Any, np.ndarray],
    objects: Mapping[Any, list[dict]],
    image_sizes: Mapping[Any, tuple[int, int]],
) -> tuple[dict[str, float], dict[str, Any]]:
    """Every shapes-world score of a set of generated captions, and what they mean.

    predictions: image id -> caption, for every image scored ("" for one that could not be read):
        scene accuracy and relations are computed over all of them.
    words, alphas: image id -> the caption's words and their attention ((T, h, w), or (T, h*w)
        with a square grid), for the images that have an output (a subset of predictions):
        grounding is computed over those.
    objects: image id -> the image's objects ({"colour", "shape", "bbox", ...}); it may hold
        other images too, and an image of predictions without an entry has no objects.
    image_sizes: image id -> (W, H), the frame of the boxes; needed for every id of words.

    Returns (scores, info). scores: scene_accuracy, grounding, grounding_chance,
    relation_accuracy, relation_rate (NaN where nothing could be measured). info: the counts
    relations_checked and grounding_words, and DESCRIPTIONS (keyed scene_accuracy, grounding,
    relation_accuracy; each also describes the score paired with it).
    """
    objs = {i: objects.get(i, []) for i in predictions}
    seen = list(words)  # attention exists only for images that were read
    g = attention_grounding({i: words[i] for i in seen}, {i: alphas[i] for i in seen},
                            {i: objs[i] for i in seen}, {i: image_sizes[i] for i in seen})
    rel = relation_accuracy(predictions, objs)
    scores = {"scene_accuracy": scene_accuracy(predictions, objs),
              "grounding": g["grounding"], "grounding_chance": g["grounding_chance"],
              "relation_accuracy": rel["relation_accuracy"], "relation_rate": rel["relation_rate"]}
    info = {"relations_checked": rel["relations_checked"], "relation_accuracy": DESCRIPTIONS["relation_accuracy"],
            "grounding_words": g["grounding_words"], "scene_accuracy": DESCRIPTIONS["scene_accuracy"],
            "grounding": DESCRIPTIONS["grounding"]}
    return scores, info
