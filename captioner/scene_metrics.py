"""Shapes-world measurements: what a generated caption says about a scene whose objects are known.

This module owns:

* the caption parser. `parse_objects` (the (colour, shape) objects a caption names, with
  counts) and `object_mentions` (which tokens name them) read noun phrases
  "[a|an|the|one|two|..|a single] [small|large] colour shape(s)"; `noun_phrases` also returns the
  colourless ones ("a circle"), which only the hallucination metrics use. `relation_statements`
  reads every relation template of captioner.shapes (direct "A [is] REL B", the 3-object "... and C
  REL it" and "B is REL A and REL C", pronoun "B with A to its left [and C above it]", positional
  "A on the left [B in the middle] and C on the right") and `position_statements` the position of
  a lone noun phrase ("there is a red circle in the top left"). The vocabulary (SHAPES, COLOURS,
  SIZES, NUMBER_WORDS, RELATIONS, the pronoun phrases) and the rules statements are checked with
  (`relation`, `position`) come from captioner.shapes, defined there once.
* the metrics: `scene_accuracy`, `hallucination` (CHAIR_i, CHAIR_s of Rohrbach et al. 2018,
  object_recall, count_error_rate), `relation_accuracy`, `position_accuracy`,
  `box_coverage_grid` and `attention_grounding`; per caption, `truth_counts` (true and false
  relation statements, absent objects named, objects missed, numbers stated wrong: self-critical
  training's truth reward).
* `shapes_scores`, the one entry that computes every shapes-world score with its description
  (what evaluation reports), and `SHAPES_METRICS`, the ones training can select best.pt by.

Nothing here raises on a junk caption or token list. No IO at import; numpy only (no Java, no
pycocoevalcap: captioner.metrics holds the COCO scorers).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from .shapes import (
    _PRONOUN,
    COLOURS,
    IMAGE_SIZE,
    NUMBER_WORDS,
    RELATIONS,
    SHAPES,
    SIZES,
    _centre,
    plural,
    position,
    relation,
)

# The scores `shapes_scores` returns that training can select best.pt by: higher is better (not
# grounding_chance, a baseline, nor CHAIR_i, CHAIR_s and count_error_rate, where lower is better).
# Each needs the objects of every image: only the shapes world has them.
SHAPES_METRICS = ("scene_accuracy", "grounding", "relation_accuracy", "relation_rate", "object_recall")

# What `shapes_scores` puts in its info dict, one entry per measurement (under its main key).
DESCRIPTIONS = {
    "scene_accuracy": "share of images whose caption names exactly the colour-shape objects present",
    "grounding": ("mean share of a colour/shape word's attention inside the named object's box; "
                  "grounding_chance: mean share of the image those boxes cover"),
    "relation_accuracy": ("share of stated relations (direct 'A [is] left of/right of/above/below B', pronoun "
                          "'B with A to its left', positional 'A on the left and B on the right') that are true; "
                          "relation_rate: share of multi-object images whose caption states one"),
    "position_accuracy": "share of true 'in the top left'/'on the left'/'in the centre' claims about a lone object",
    "CHAIR_i": "share of object mentions (colour-shape, or shape alone) naming no object of the image (lower: better)",
    "CHAIR_s": "share of captions with at least one mention of an absent object (lower: better)",
    "object_recall": "share of the scenes' objects the captions name with their colour and shape (with multiplicity)",
    "count_error_rate": ("share of captions stating a number ('three shapes', 'two red circles', 'a single ...', "
                         "'no objects') that state a wrong one (lower: better)"),
}

ParseFn = Callable[[Any], Counter]
MentionsFn = Callable[[list[str]], list[tuple[int, tuple[str, str]]]]


# --------------------------------------------------------------------------------------------
# Caption parser
# --------------------------------------------------------------------------------------------

_SHAPE_FORMS = {**{s: s for s in SHAPES}, **{plural(s): s for s in SHAPES}}
_ARTICLES = {"a", "an", "the", "another"}
_TOTAL_NOUNS = {"shapes", "objects", "shape", "object"}  # "three shapes", "no objects": a total count
# Orderings along one axis (shapes._positional): phrase -> (axis or None, rank along it).
_ORDER = {"on the left": (0, 0), "in the middle": (None, 1), "on the right": (0, 2),
          "at the top": (1, 0), "at the bottom": (1, 2)}
# Every phrase shapes.position can return ("in the top left", "on the left", "in the centre", ...).
_POSITIONS = frozenset(position({"bbox": [IMAGE_SIZE * (2 * x + 1) / 6, IMAGE_SIZE * (2 * y + 1) / 6, 0, 0]})
                       for x in range(3) for y in range(3))
# Multi-word phrases -> (symbol, value), longest first: "above it" is a pronoun form, "above" a relation.
_PHRASES = sorted([*((tuple(r.split()), ("r", r)) for r in RELATIONS),
                   *((tuple(p.split()), ("p", r)) for r, p in _PRONOUN.items()),
                   *((tuple(p.split()), ("o" if p in _ORDER else "x", p)) for p in set(_ORDER) | _POSITIONS)],
                  key=lambda item: -len(item[0]))
_WORDS = {"is": "i", "and": "a", "it": "t", "with": "w"}


class Phrase(NamedTuple):
    """A noun phrase: tokens [start, end); colour None when the caption gives none."""
    start: int
    end: int
    colour: str | None
    shape: str
    size: str | None
    count: int
    counted: bool  # a number states the count ("two", "one", "a single"), not just an article
    colour_idx: int  # -1 without a colour

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.colour, self.shape)


class Statement(NamedTuple):
    """subject `relation` object. form: "direct" or "pronoun" (checked with shapes.relation) or
    "positional" (relation "to the left of" or "above": the subject's centre is left of / above the
    object's along that axis)."""
    form: str
    subject: Phrase
    relation: str
    object: Phrase


def _tokens(caption: str | Sequence[Any]) -> list[str]:
    """Lower-case word tokens; a token list keeps its indices (junk becomes "")."""
    if isinstance(caption, str):
        return re.findall(r"[a-z]+", caption.lower())
    try:
        return [re.sub(r"[^a-z]", "", str(t).lower()) for t in caption]
    except TypeError:  # not iterable
        return []


def noun_phrases(caption: str | Sequence[Any]) -> list[Phrase]:
    """Every noun phrase [article | number | a single] [size words] [colour] [size words] shape.

    Any other word ends a phrase, so a colour only binds to a shape in the same phrase; a shape
    without a colour in its phrase is a colourless phrase ("a circle", "red and a circle").
    """
    toks = _tokens(caption)
    found = []
    start = count = colour = size = None
    counted, colour_idx = False, -1
    for i, tok in enumerate(toks):
        if tok in NUMBER_WORDS or tok in _ARTICLES or tok == "single":
            if not (tok == "single" and i and toks[i - 1] in ("a", "an")):  # "a single": one phrase
                start = i
            count, colour, size = NUMBER_WORDS.get(tok, 1), None, None
            counted = tok in NUMBER_WORDS or tok == "single"
        elif tok in SIZES:
            start, size = i if start is None else start, tok
        elif tok in COLOURS:
            start, colour, colour_idx = i if start is None else start, tok, i
        else:
            if tok in _SHAPE_FORMS:
                found.append(Phrase(i if start is None else start, i + 1, colour, _SHAPE_FORMS[tok], size,
                                    count or 1, counted, colour_idx if colour else -1))
            start = count = colour = size = None
            counted = False
    return found


def _scan(tokens: Sequence[str]) -> list[tuple[int, int, tuple[str, str], int]]:
    """(colour_idx, shape_idx, (colour, shape), count) of every noun phrase with a colour."""
    return [(p.colour_idx, p.end - 1, p.key, p.count) for p in noun_phrases(tokens) if p.colour]


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


def _symbols(toks: list[str]) -> list[tuple[str, Any]]:
    """The caption as symbols: n noun phrase, r relation, p pronoun relation ("to its left"),
    o ordering place ("on the left", "in the middle"), x other position ("in the top left"),
    i "is", a "and", t "it", w "with", _ anything else."""
    starts = {p.start: p for p in noun_phrases(toks)}
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(toks):
        if i in starts:
            out.append(("n", starts[i]))
            i = starts[i].end
            continue
        for words, sym in _PHRASES:
            if tuple(toks[i: i + len(words)]) == words:
                out.append(sym)
                i += len(words)
                break
        else:
            out.append((_WORDS.get(toks[i], "_"), toks[i]))
            i += 1
    return out


# Templates over the symbol string. _IT and _SECOND continue the statement before them.
_DIRECT, _WITH = re.compile(r"ni?rn"), re.compile(r"nwnp")  # "A [is] REL B", "B with A to its left"
_IT = re.compile(r"an(?:p|i?rt)")  # "and C above it", "and C [is] to the left of it": C REL the last referent
_SECOND = re.compile(r"ai?rn")  # "(B is REL A) and REL C": the last subject REL C
_ORDERING = re.compile(r"no(?:a?no)+")  # "A on the left [B in the middle] and C on the right"


def _ordering(items: list[tuple[Phrase, str]]) -> list[Statement]:
    """Consecutive pairs of an ordering along one axis, as positional statements."""
    axes = {_ORDER[place][0] for _, place in items} - {None}
    if len(axes) != 1:  # all "in the middle", or left/right mixed with top/bottom: no order stated
        return []
    rel = "to the left of" if axes.pop() == 0 else "above"
    ranked = sorted(items, key=lambda item: _ORDER[item[1]][1])
    return [Statement("positional", a, rel, b) for (a, pa), (b, pb) in zip(ranked, ranked[1:])
            if _ORDER[pa][1] < _ORDER[pb][1]]


def relation_statements(caption: str | Sequence[Any]) -> list[Statement]:
    """Every relation a caption states, in any template of the world's captions; never raises."""
    syms = _symbols(_tokens(caption))
    kinds = "".join(k for k, _ in syms)
    out: list[Statement] = []
    last: tuple[str, Phrase, Phrase] | None = None  # (form, subject, what "it"/"its" refers to)
    i = 0
    while i < len(syms):
        m = (_DIRECT.match(kinds, i) or _WITH.match(kinds, i) or (last and _IT.match(kinds, i))
             or (last and last[0] == "direct" and _SECOND.match(kinds, i)) or _ORDERING.match(kinds, i))
        if not m:
            last, i = None, i + 1
            continue
        span, i = syms[m.start(): m.end()], m.end()
        nps = [v for k, v in span if k == "n"]
        rel = next((v for k, v in span if k in "rp"), "")
        if m.re is _DIRECT:
            last = ("direct", nps[0], nps[1])
            out.append(Statement("direct", nps[0], rel, nps[1]))
        elif m.re is _WITH:  # "B with A to its left": A is to the left of B
            last = ("pronoun", nps[1], nps[0])
            out.append(Statement("pronoun", nps[1], rel, nps[0]))
        elif m.re is _IT:
            out.append(Statement(last[0], nps[0], rel, last[2]))
        elif m.re is _SECOND:
            out.append(Statement("direct", last[1], rel, nps[0]))
        else:
            last = None
            out += _ordering([(v, span[j + 1][1]) for j, (k, v) in enumerate(span) if k == "n"])
    return out


def stated_relations(tokens: str | Sequence[Any]) -> list[tuple[tuple[str | None, str], str, tuple[str | None, str]]]:
    """(subject, relation, object), each (colour, shape), of the direct and pronoun statements of
    relation_statements (the first parser's answer; relation_statements also has the forms)."""
    return [(s.subject.key, s.relation, s.object.key) for s in relation_statements(tokens) if s.form != "positional"]


def position_statements(caption: str | Sequence[Any]) -> list[tuple[Phrase, str]]:
    """(phrase, position) for each shapes.position phrase of a caption naming exactly one noun phrase."""
    syms = _symbols(_tokens(caption))
    nps = [v for k, v in syms if k == "n"]
    if len(nps) != 1:
        return []
    return [(nps[0], v) for k, v in syms if k in "ox" and v in _POSITIONS]


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


def _matches(phrase: Phrase, objs: Sequence[Mapping]) -> list[int]:
    """Indices of the objects a phrase can name: its colour (if given) and shape; its size too
    when the phrase states one and some of those objects have it."""
    found = [j for j, o in enumerate(objs) if o["shape"] == phrase.shape and phrase.colour in (None, o["colour"])]
    sized = [j for j in found if phrase.size is not None and objs[j].get("size") == phrase.size]
    return sized or found


def statement_holds(st: Statement, objs: Sequence[Mapping]) -> bool:
    """True when some assignment of distinct matching objects makes the statement true (so a
    statement about an absent object is false)."""
    for a in _matches(st.subject, objs):
        for b in _matches(st.object, objs):
            if a == b:
                continue
            if st.form == "positional":
                axis = 0 if st.relation == "to the left of" else 1
                if _centre(objs[a])[axis] < _centre(objs[b])[axis]:
                    return True
            elif relation(objs[a], objs[b]) == st.relation:
                return True
    return False


def truth_counts(caption: str | Sequence[Any], objs: Sequence[Mapping]) -> tuple[int, int, int, int, int, int]:
    """(true relation statements, false relation statements, mentions of absent objects, objects
    not named, numbers stated wrong, objects named more often than they are there) of one caption
    about a scene with objects `objs`: what a reward that pays for the truth counts
    (objectives.SelfCritical's --scst-true-relation, --scst-false-relation, --scst-phantom,
    --scst-missed, --scst-wrong-count, --scst-repeat). They are the statements relation_accuracy
    checks, the mentions CHAIR_i counts, the objects object_recall misses (by colour and shape), the
    numbers count_error_rate finds wrong ("three shapes" before two objects named; "two red circles"
    where there is one) and, per colour-shape the scene has, how many more of it the caption names
    than there are (scene_accuracy's multiplicity: "a red circle ... and a red circle" before one
    red circle, the third object of a scene named as the first again; "two red circles" before one
    counts here as well as a wrong number)."""
    toks = _tokens(caption)
    held = [statement_holds(st, objs) for st in relation_statements(toks)]
    _, absent, named, errors, repeated = _object_truth(toks, objs)
    return sum(held), len(held) - sum(held), absent, len(objs) - named, sum(errors), repeated


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


def _count_errors(toks: list[str], phrases: list[Phrase], objs: Sequence[Mapping]) -> list[bool]:
    """One entry per number the caption states, True when it is wrong. A total ("three shapes",
    "no objects") must equal the number of objects; a group ("two red circles", "a single red
    circle") the number of objects of its colour-shape (or of its colour-shape-size when the phrase
    has a size); groups naming no object of the image are skipped (CHAIR counts them)."""
    wrong = [(0 if t == "no" else NUMBER_WORDS[t]) != len(objs) for t, nxt in zip(toks, toks[1:])
             if (t in NUMBER_WORDS or t == "no") and nxt in _TOTAL_NOUNS]
    for p in phrases:
        same = [o for o in objs if o["shape"] == p.shape and p.colour in (None, o["colour"])]
        if p.counted and same:
            sized = sum(o.get("size") == p.size for o in same)
            wrong.append(p.count != len(same) and not (p.size and p.count == sized))
    return wrong


def _object_truth(toks: list[str], objs: Sequence[Mapping]) -> tuple[list[Phrase], int, int, list[bool], int]:
    """What one tokenised caption says of a scene's objects, as hallucination and truth_counts both
    count it: its noun phrases, how many of them match no object, how many of the objects it names
    by colour and shape (min(objects, number named) per colour-shape), _count_errors, and how many
    mentions of the scene's colour-shapes go beyond their number (the rest of those named)."""
    phrases = noun_phrases(toks)
    stated, truth = parse_objects(toks), Counter(_object_key(o) for o in objs)
    named = sum(min(k, stated[key]) for key, k in truth.items())
    repeated = sum(stated[key] for key in truth) - named
    return phrases, sum(not _matches(p, objs) for p in phrases), named, _count_errors(toks, phrases, objs), repeated


def hallucination(predictions: Mapping[Any, Any], objects: Mapping[Any, Sequence[Mapping]]) -> dict[str, Any]:
    """What captions name that is not there, and what they leave out or miscount.

    CHAIR_i: mentions (noun phrases, by colour and shape, or by shape alone when they give no
    colour) matching no object of the image, over all mentions (NaN without mentions).
    CHAIR_s: captions with such a mention, over all captions. object_recall: per image and
    (colour, shape), min(objects, number named), summed, over all objects (NaN without objects).
    count_error_rate: captions stating a wrong number (_count_errors) over captions stating one
    (counts_stated; NaN when none). Also object_mentions and hallucinated_mentions.
    """
    _check_same_ids(predictions, objects, "predictions", "objects")
    n: Counter = Counter()
    for img_id, objs in objects.items():
        phrases, absent, named, errors, _ = _object_truth(_tokens(predictions[img_id]), objs)
        n.update(mentions=len(phrases), hallucinated=absent, bad_captions=absent > 0, objects=len(objs),
                 named=named, stating=bool(errors), miscounting=any(errors))
    nan = float("nan")
    return {"CHAIR_i": n["hallucinated"] / n["mentions"] if n["mentions"] else nan,
            "CHAIR_s": n["bad_captions"] / len(objects) if objects else nan,
            "object_recall": n["named"] / n["objects"] if n["objects"] else nan,
            "count_error_rate": n["miscounting"] / n["stating"] if n["stating"] else nan,
            "object_mentions": n["mentions"], "hallucinated_mentions": n["hallucinated"], "counts_stated": n["stating"]}


def relation_accuracy(predictions: Mapping[Any, Any], objects: Mapping[Any, Sequence[Mapping]]) -> dict[str, Any]:
    """How often generated captions state a spatial relation, and how often it is right.

    Reads every relation statement (relation_statements): direct and pronoun forms are checked
    with the rule the world's captions were written with (captioner.shapes.relation, the dominant
    axis of the centres), positional ones by the order of the centres along their axis; true when
    some assignment of distinct matching objects makes it true (statement_holds). Returns
    relation_accuracy (true over all statements; NaN when none), relations_checked,
    relations_by_form ({"direct", "pronoun", "positional"}: statements of each) and relation_rate:
    the share of multi-object images whose caption states at least one relation.
    """
    _check_same_ids(predictions, objects, "predictions", "objects")
    by_form = dict.fromkeys(("direct", "pronoun", "positional"), 0)
    right = multi = stating = 0
    for img_id, objs in objects.items():
        stated = relation_statements(predictions[img_id])
        if len(objs) > 1:
            multi, stating = multi + 1, stating + bool(stated)
        for st in stated:
            by_form[st.form] += 1
            right += statement_holds(st, objs)
    checked = sum(by_form.values())
    return {"relation_accuracy": right / checked if checked else float("nan"), "relations_checked": checked,
            "relation_rate": stating / multi if multi else float("nan"), "relations_by_form": by_form}


def position_accuracy(predictions: Mapping[Any, Any], objects: Mapping[Any, Sequence[Mapping]]) -> dict[str, Any]:
    """Share of position claims about a lone noun phrase ("a single red circle in the top left")
    that shapes.position confirms for some matching object; position_accuracy (NaN when none)
    and positions_checked."""
    _check_same_ids(predictions, objects, "predictions", "objects")
    checked = right = 0
    for img_id, objs in objects.items():
        for phrase, place in position_statements(predictions[img_id]):
            checked += 1
            right += any(position(objs[j]) == place for j in _matches(phrase, objs))
    return {"position_accuracy": right / checked if checked else float("nan"), "positions_checked": checked}


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


# Words that decide a relation ("to the LEFT of", "ABOVE it", "on the RIGHT", "in the MIDDLE").
_DECIDING = frozenset({"left", "right", "above", "below", "top", "bottom", "middle"})
# The words of a relation's phrase before its deciding word ("TO THE left of", "TO ITS left", "ON THE right"):
# the first of them already chooses the axis ("to" against "above").
_LEADING = frozenset({"to", "the", "its", "on", "at", "in"})


def attention_targets(caption: str | Sequence[Any], objs: Sequence[Mapping],
                      span: bool = False) -> list[tuple[int, tuple[int, ...]]]:
    """Where a reference caption's words should look: (token index, indices of objs) pairs.

    The supervision `train.py --att-supervision` gives the attention (shapes world only):
    - each colour and shape word of a noun phrase that names exactly one object looks at it;
    - the word that decides a stated relation looks at the *other* argument: in "A is to the left
      of B" the word "left" looks at B, which is not yet named (so that the context then holds B's
      place, to compare with A's, seen a few words before); in "B with A to its left" and "and C
      above it" at the referent of "its"/"it"; in "A on the left and B on the right" each place
      word at the object(s) it is ordered against.
    With `span` every word of the relation's phrase up to the deciding one looks there too ("to the left",
    "to its left", "on the left"; not "is", "of"): the first of them already chooses the axis.
    Statements whose arguments match several objects, or none, give no target.
    """
    toks = _tokens(caption)
    out: dict[int, set[int]] = {}
    for p in noun_phrases(toks):
        found = _matches(p, objs) if p.colour else []
        if len(found) == 1:
            for t in (p.colour_idx, p.end - 1):
                out.setdefault(t, set()).add(found[0])
    for k, _, other in _relation_words(toks, objs, span):
        out.setdefault(k, set()).add(other)
    return [(k, tuple(sorted(v))) for k, v in sorted(out.items())]


def _relation_words(toks: Sequence[str], objs: Sequence[Mapping], span: bool = False):
    """(deciding word's index, the phrase it places, index in objs of the object it is placed against) for each
    stated relation whose two arguments each match exactly one object (and not the same one); with `span` also
    each word of _LEADING right before the deciding word, with the same phrase and object."""
    for k, phrase, other in _deciding_words(toks, objs):
        j = k
        while span and j - 1 >= phrase.end and toks[j - 1] in _LEADING:
            j -= 1
        for i in range(j, k + 1):
            yield i, phrase, other


def _deciding_words(toks: Sequence[str], objs: Sequence[Mapping]):
    """_relation_words' deciding words alone."""
    deciding = [k for k, w in enumerate(toks) if w in _DECIDING]
    for st in relation_statements(toks):
        a, b = _matches(st.subject, objs), _matches(st.object, objs)
        if len(a) != 1 or len(b) != 1 or a == b:
            continue
        if st.form == "positional":  # each phrase's place word, right after it, looks at the other
            for phrase, other in ((st.subject, b[0]), (st.object, a[0])):
                k = next((k for k in deciding if k >= phrase.end), None)
                if k is not None and k - phrase.end <= 2:  # "on the left": the place word follows the phrase
                    yield k, phrase, other
        elif st.object.start > st.subject.start:  # "A [is] to the left of B": the last deciding word before B
            k = next((k for k in reversed(deciding) if st.subject.end <= k < st.object.start), None)
            if k is not None:
                yield k, st.subject, b[0]
        else:  # "B with A to its left", "and C above it": the first deciding word after the subject
            k = next((k for k in deciding if k >= st.subject.end), None)
            if k is not None:
                yield k, st.subject, b[0]


def recall_targets(caption: str | Sequence[Any], objs: Sequence[Mapping], span: bool = False) -> list[tuple[int, int]]:
    """What a relation's deciding word should read back from the decoder's recall memory
    (`train.py --recall-supervision`, shapes world only): (token index, memory entry) pairs. The entry is
    the one written for the shape word of the phrase the word places ("circle" in "a red circle is to the
    left of ..."): entry j holds token j of <start> w0 w1 ..., so word i's entry is i + 1, and with it the
    context read when the model wrote that word, i.e. where it looked when it named the subject. The
    attention meanwhile looks at the other object (attention_targets): "left" compares the two places.
    `span`: as attention_targets'.
    """
    toks = _tokens(caption)
    return sorted({k: phrase.end for k, phrase, _ in _relation_words(toks, objs, span)}.items())


def attention_target_masks(caption: str | Sequence[Any], objs: Sequence[Mapping], image_size: tuple[int, int],
                           grid: tuple[int, int], span: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """attention_targets as (token indices (k,) int64, masks (k, h*w) bool): each target's cells are those its
    objects' boxes touch (coverage > 0) on the decoder's grid, rows in the features' order."""
    targets = attention_targets(caption, objs, span)
    masks = np.zeros((len(targets), int(grid[0]) * int(grid[1])), dtype=bool)
    for r, (_, which) in enumerate(targets):
        for j in which:
            masks[r] |= box_coverage_grid(objs[j]["bbox"], image_size, grid).reshape(-1) > 0
    return np.array([k for k, _ in targets], dtype=np.int64), masks


# --------------------------------------------------------------------------------------------
# All of them: what evaluation reports
# --------------------------------------------------------------------------------------------

def shapes_scores(
    predictions: Mapping[Any, str],
    words: Mapping[Any, list[str]] | None,
    alphas: Mapping[Any, np.ndarray] | None,
    objects: Mapping[Any, list[dict]],
    image_sizes: Mapping[Any, tuple[int, int]] | None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Every shapes-world score of a set of generated captions, and what they mean.

    predictions: image id -> caption, for every image scored ("" for one that could not be read):
        every score but grounding is computed over all of them.
    words, alphas: image id -> the caption's words and their attention ((T, h, w), or (T, h*w)
        with a square grid), for the images that have an output (a subset of predictions):
        grounding is computed over those. None (either of them): captions without attention, such
        as a results file's; grounding is not measured: grounding and grounding_chance are absent
        from the scores, grounding_words from info, and info["grounding"] says why.
    objects: image id -> the image's objects ({"colour", "shape", "size", "bbox", ...}); it may hold
        other images too, and an image of predictions without an entry has no objects.
    image_sizes: image id -> (W, H), the frame of the boxes; needed for every id of words (unused without them).

    Returns (scores, info). scores: scene_accuracy, grounding, grounding_chance,
    relation_accuracy, relation_rate, position_accuracy, object_recall, CHAIR_i, CHAIR_s,
    count_error_rate (NaN where nothing could be measured). info: the counts relations_checked,
    relations_by_form, positions_checked, grounding_words, object_mentions, hallucinated_mentions
    and counts_stated, and DESCRIPTIONS (keyed by score; an entry may describe a paired score too).
    """
    objs = {i: objects.get(i, []) for i in predictions}
    g = None
    if words is not None and alphas is not None:
        seen = list(words)  # attention exists only for images that were read
        g = attention_grounding({i: words[i] for i in seen}, {i: alphas[i] for i in seen},
                                {i: objs[i] for i in seen}, {i: (image_sizes or {})[i] for i in seen})
    rel, pos, hal = relation_accuracy(predictions, objs), position_accuracy(predictions, objs), \
        hallucination(predictions, objs)
    scores = {"scene_accuracy": scene_accuracy(predictions, objs),
              **({"grounding": g["grounding"], "grounding_chance": g["grounding_chance"]} if g is not None else {}),
              "relation_accuracy": rel["relation_accuracy"], "relation_rate": rel["relation_rate"],
              "position_accuracy": pos["position_accuracy"], "object_recall": hal["object_recall"],
              "CHAIR_i": hal["CHAIR_i"], "CHAIR_s": hal["CHAIR_s"], "count_error_rate": hal["count_error_rate"]}
    by_count: dict[int, dict] = {}
    for i, o in objs.items():
        by_count.setdefault(len(o), {})[i] = o
    info = {"scene_accuracy_by_objects": {n: scene_accuracy({i: predictions[i] for i in group}, group)
                                          for n, group in sorted(by_count.items())},
            "relations_checked": rel["relations_checked"], "relations_by_form": rel["relations_by_form"],
            "positions_checked": pos["positions_checked"],
            **({"grounding_words": g["grounding_words"]} if g is not None else {}),
            **{k: hal[k] for k in ("object_mentions", "hallucinated_mentions", "counts_stated")}, **DESCRIPTIONS}
    if g is None:
        info["grounding"] = f"not measured: the captions came without attention maps ({DESCRIPTIONS['grounding']})"
    return scores, info
