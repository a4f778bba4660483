"""Tests for captioner.scene_metrics: the caption parser, the shapes-world metrics (scene accuracy,
hallucination (CHAIR, recall, counts), relations and positions, box coverage, attention grounding),
shapes_scores, the entry evaluation uses, and the world's own references read back as true."""
from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import pytest

from captioner import scene_metrics as S
from captioner import shapes
from captioner.scene_metrics import object_mentions, parse_objects

# ---------------------------------------------------------------- the caption parser

@pytest.mark.parametrize("caption, expected", [
    ("a red circle", {("red", "circle"): 1}),
    ("a small red circle to the left of a large blue square",
     {("red", "circle"): 1, ("blue", "square"): 1}),
    ("two red circles", {("red", "circle"): 2}),
    ("two small red circles and a green star", {("red", "circle"): 2, ("green", "star"): 1}),
    ("three shapes two small red circles and a large red circle", {("red", "circle"): 3}),
    ("there are two objects a small purple cross and a large green cross",
     {("purple", "cross"): 1, ("green", "cross"): 1}),
    ("A Small Red Circle, and a blue square.", {("red", "circle"): 1, ("blue", "square"): 1}),
    ("two shapes", {}),
    ("a red and a circle", {}),  # the colour is in another noun phrase
    ("red red circle circle blue", {("red", "circle"): 1}),
    ("", {}),
    ("<unk> <unk> the of of", {}),
])
def test_parse_objects(caption, expected):
    assert parse_objects(caption) == Counter(expected)
    assert parse_objects(caption.split()) == Counter(expected)


def test_parse_objects_never_raises_on_junk():
    for junk in ([None, 3, "red", b"circle"], [], ["red", "circles", "<eos>"], 42, None):
        assert isinstance(parse_objects(junk), Counter)
    assert parse_objects(["red", "circles", "<eos>"]) == Counter({("red", "circle"): 1})


def test_object_mentions():
    tokens = ["a", "small", "red", "circle", "above", "a", "blue", "square"]
    assert object_mentions(tokens) == [(2, ("red", "circle")), (3, ("red", "circle")),
                                       (6, ("blue", "square")), (7, ("blue", "square"))]
    assert object_mentions(["two", "green", "stars", "and", "circles"]) == [
        (1, ("green", "star")), (2, ("green", "star"))]
    assert object_mentions(["a", "red", "of", "square", "<pad>"]) == []


# ---------------------------------------------------------------- stand-ins for the parser

COLOURS = {"red", "green", "blue", "yellow"}
SHAPES = {"circle", "square", "triangle", "star"}
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and word[:-1] in SHAPES else word


def fake_mentions(tokens: list[str]) -> list[tuple[int, tuple[str, str]]]:
    """Stand-in for shapes.object_mentions: colour word directly followed by a shape word."""
    out = []
    for i in range(len(tokens) - 1):
        shape = _singular(tokens[i + 1])
        if tokens[i] in COLOURS and shape in SHAPES:
            out += [(i, (tokens[i], shape)), (i + 1, (tokens[i], shape))]
    return out


def fake_parse(caption: str) -> Counter:
    """Stand-in for shapes.parse_objects: "[number] [size] colour shape[s]"."""
    words = _words(caption)
    found: Counter = Counter()
    for i, key in fake_mentions(words)[::2]:
        j = i - 1
        if j >= 0 and words[j] in {"small", "large", "big"}:
            j -= 1
        found[key] += NUMBERS.get(words[j], 1) if j >= 0 else 1
    return found


def obj(colour: str, shape: str, bbox: list[float], size: str = "small") -> dict:
    return {"colour": colour, "shape": shape, "size": size, "bbox": bbox}


def test_fake_parse_sanity():
    assert fake_parse("a small red circle and two blue squares.") == Counter(
        {("red", "circle"): 1, ("blue", "square"): 2})
    assert fake_parse("garbage !!") == Counter()


# ---------------------------------------------------------------- scene accuracy

SCENES = {
    1: [obj("red", "circle", [0, 0, 10, 10]), obj("blue", "square", [20, 20, 10, 10]),
        obj("blue", "square", [40, 40, 10, 10])],
    2: [obj("red", "circle", [0, 0, 10, 10]), obj("blue", "square", [20, 20, 10, 10])],
    3: [obj("red", "circle", [0, 0, 10, 10])],
    4: [obj("red", "circle", [0, 0, 10, 10]), obj("blue", "square", [20, 20, 10, 10]),
        obj("blue", "square", [40, 40, 10, 10])],
}
SCENE_PREDS = {
    1: "a small red circle and two blue squares",  # exact
    2: "a red circle",  # missing the blue square
    3: "a red circle and a green star",  # extra object
    4: "a red circle and a blue square",  # wrong multiplicity
}


@pytest.mark.parametrize("img_id, expected", [(1, 1.0), (2, 0.0), (3, 0.0), (4, 0.0)])
def test_scene_accuracy_cases(img_id, expected):
    acc = S.scene_accuracy({img_id: SCENE_PREDS[img_id]}, {img_id: SCENES[img_id]},
                           parse_fn=fake_parse)
    assert acc == expected


def test_scene_accuracy_share_and_ids():
    assert S.scene_accuracy(SCENE_PREDS, SCENES, parse_fn=fake_parse) == 0.25
    assert S.scene_accuracy({5: "nothing here"}, {5: []}, parse_fn=fake_parse) == 1.0
    with pytest.raises(ValueError):
        S.scene_accuracy({1: "a red circle"}, SCENES, parse_fn=fake_parse)


# ---------------------------------------------------------------- box coverage


def test_box_covering_one_cell():
    grid = S.box_coverage_grid([25, 50, 25, 25], (100, 100), (4, 4))
    expected = np.zeros((4, 4))
    expected[2, 1] = 1.0
    np.testing.assert_allclose(grid, expected)
    # Non-square image, (W, H) = (200, 100), 2 rows x 4 columns of 50 x 50 cells.
    grid = S.box_coverage_grid([50, 0, 50, 50], (200, 100), (2, 4))
    expected = np.zeros((2, 4))
    expected[0, 1] = 1.0
    np.testing.assert_allclose(grid, expected)


def test_box_half_and_quarter_cells():
    np.testing.assert_allclose(
        S.box_coverage_grid([0, 0, 12.5, 25], (100, 100), (4, 4))[0], [0.5, 0, 0, 0])
    grid = S.box_coverage_grid([12.5, 12.5, 25, 25], (100, 100), (4, 4))
    expected = np.zeros((4, 4))
    expected[:2, :2] = 0.25
    np.testing.assert_allclose(grid, expected)


def test_box_whole_image_and_outside():
    np.testing.assert_allclose(S.box_coverage_grid([0, 0, 64, 48], (64, 48), (7, 7)), 1.0)
    np.testing.assert_allclose(S.box_coverage_grid([-50, -50, 500, 500], (64, 48), (3, 5)), 1.0)
    assert S.box_coverage_grid([100, 100, 10, 10], (64, 48), (3, 5)).sum() == 0.0


def test_box_coverage_conserves_area():
    rng = np.random.default_rng(0)
    W, H, rows, cols = 120, 80, 6, 5
    cell_area = (W / cols) * (H / rows)
    for _ in range(20):
        x, y = rng.uniform(0, W - 1), rng.uniform(0, H - 1)
        w, h = rng.uniform(0, W - x), rng.uniform(0, H - y)
        grid = S.box_coverage_grid([x, y, w, h], (W, H), (rows, cols))
        assert grid.shape == (rows, cols)
        assert grid.sum() * cell_area == pytest.approx(w * h)


# ---------------------------------------------------------------- attention grounding

SIZE = {1: (100, 100)}
RED_TOP_LEFT = {1: [obj("red", "circle", [0, 0, 50, 50])]}  # cell (0, 0) of a 2 x 2 grid
TOKENS = {1: ["a", "red", "circle"]}


def test_grounding_all_attention_inside():
    alphas = np.zeros((3, 2, 2))
    alphas[:, 0, 0] = 1.0
    out = S.attention_grounding(TOKENS, {1: alphas}, RED_TOP_LEFT, SIZE,
                                mentions_fn=fake_mentions)
    assert out == {"grounding": 1.0, "grounding_chance": 0.25, "grounding_words": 2}


def test_grounding_uniform_attention_equals_chance():
    objects = {1: [obj("red", "circle", [10, 10, 30, 60]), obj("red", "circle", [60, 60, 40, 40])]}
    alphas = np.full((3, 7, 7), 1 / 49)
    out = S.attention_grounding(TOKENS, {1: alphas}, objects, SIZE, mentions_fn=fake_mentions)
    assert out["grounding_words"] == 2
    assert out["grounding"] == pytest.approx(out["grounding_chance"])
    # The boxes share no grid cell, so the union mask covers 0.18 + 0.16 of the image.
    assert out["grounding_chance"] == pytest.approx(0.34)


def test_grounding_ignores_absent_objects_and_accepts_flat_alphas():
    tokens = {1: ["a", "red", "circle", "and", "a", "blue", "square"]}
    alphas = np.zeros((7, 4))
    alphas[:, 3] = 1.0  # everything on the bottom-right cell, flattened (T, h*w)
    out = S.attention_grounding(tokens, {1: alphas}, RED_TOP_LEFT, SIZE, mentions_fn=fake_mentions)
    assert out == {"grounding": 0.0, "grounding_chance": 0.25, "grounding_words": 2}

    only_absent = S.attention_grounding({1: ["a", "blue", "square"]}, {1: np.full((3, 2, 2), .25)},
                                        RED_TOP_LEFT, SIZE, mentions_fn=fake_mentions)
    assert only_absent["grounding_words"] == 0
    assert math.isnan(only_absent["grounding"]) and math.isnan(only_absent["grounding_chance"])

    with pytest.raises(ValueError, match="expected"):
        S.attention_grounding(TOKENS, {1: np.zeros((4, 2, 2))}, RED_TOP_LEFT, SIZE,
                              mentions_fn=fake_mentions)


# ---------------------------------------------------------------- with the real parser (the defaults)


def test_with_real_shapes_module():
    scenes = {1: SCENES[1], 3: SCENES[3]}
    preds = {1: "a small red circle and two blue squares", 3: "a red circle and a green star"}
    assert S.scene_accuracy(preds, scenes) == 0.5

    alphas = np.zeros((3, 2, 2))
    alphas[:, 0, 0] = 1.0
    out = S.attention_grounding(TOKENS, {1: alphas}, RED_TOP_LEFT, SIZE)
    assert out["grounding_words"] >= 1
    assert out["grounding"] == pytest.approx(1.0)
    assert out["grounding_chance"] == pytest.approx(0.25)


def test_relation_accuracy_on_hand_made_scenes():
    objs = {1: [{"colour": "red", "shape": "circle", "size": "small", "bbox": [10, 100, 20, 20]},
                {"colour": "blue", "shape": "square", "size": "large", "bbox": [150, 90, 50, 50]}],
            2: [{"colour": "green", "shape": "star", "size": "large", "bbox": [100, 10, 60, 60]},
                {"colour": "cyan", "shape": "cross", "size": "small", "bbox": [110, 160, 30, 30]}],
            3: [{"colour": "red", "shape": "circle", "size": "small", "bbox": [10, 10, 20, 20]}]}
    preds = {1: "a small red circle is to the left of a large blue square",  # true
             2: "a large green star below a small cyan cross",  # false: the star is above
             3: "a small red circle"}  # one object: no relation expected
    r = S.relation_accuracy(preds, objs)
    assert r["relations_checked"] == 2 and r["relation_accuracy"] == pytest.approx(0.5)
    assert r["relation_rate"] == pytest.approx(1.0)
    preds[2] = "a large green star and a small cyan cross"
    r = S.relation_accuracy(preds, objs)
    assert r["relation_accuracy"] == 1.0 and r["relation_rate"] == pytest.approx(0.5)
    preds[1] = "a small purple circle is to the left of a large blue square"  # names an absent object: false
    r = S.relation_accuracy(preds, objs)
    assert r["relations_checked"] == 1 and r["relation_accuracy"] == 0.0
    assert r["relations_by_form"] == {"direct": 1, "pronoun": 0, "positional": 0}
    preds[1] = "a small red circle"
    r = S.relation_accuracy(preds, objs)
    assert r["relations_checked"] == 0 and math.isnan(r["relation_accuracy"]) and r["relation_rate"] == 0.0


# ---------------------------------------------------------------- shapes_scores: all of them


def test_shapes_scores_is_the_metrics_together():
    objs = {1: SCENES[1], 2: SCENES[2], 3: SCENES[3],
            4: [obj("red", "circle", [10, 100, 20, 20]), obj("blue", "square", [150, 90, 50, 50], "large")]}
    preds = {1: "a small red circle and two blue squares", 2: "a red circle", 3: "",
             4: "a small red circle is to the left of a large blue square"}
    words = {i: preds[i].split() for i in (1, 2, 4)}  # image 3 could not be read: no attention
    rng = np.random.default_rng(0)
    alphas = {i: rng.dirichlet(np.ones(16), size=len(w)).reshape(len(w), 4, 4) for i, w in words.items()}
    sizes = {i: (100, 100) for i in (1, 2, 3)} | {4: (224, 224)}
    scores, info = S.shapes_scores(preds, words, alphas, objs, sizes)

    assert list(scores) == ["scene_accuracy", "grounding", "grounding_chance", "relation_accuracy", "relation_rate",
                            "position_accuracy", "object_recall", "CHAIR_i", "CHAIR_s", "count_error_rate"]
    assert set(S.SHAPES_METRICS) <= set(scores) and "object_recall" in S.SHAPES_METRICS
    # best.pt is selected by a higher-is-better score: no baseline, no error rate
    assert not {"grounding_chance", "CHAIR_i", "CHAIR_s", "count_error_rate"} & set(S.SHAPES_METRICS)
    assert scores["scene_accuracy"] == S.scene_accuracy(preds, objs) == 0.5
    rel = S.relation_accuracy(preds, objs)
    assert scores["relation_accuracy"] == rel["relation_accuracy"] == 1.0
    assert scores["relation_rate"] == rel["relation_rate"] == pytest.approx(1 / 3)  # images 1, 2 and 4; 4 states one
    g = S.attention_grounding(words, alphas, {i: objs[i] for i in words}, {i: sizes[i] for i in words})
    assert scores["grounding"] == g["grounding"] and scores["grounding_chance"] == g["grounding_chance"]
    hal = S.hallucination(preds, objs)
    # mentions: 2 + 1 + 0 + 2, none absent; recall: (3 + 1 + 0 + 2) / (3 + 2 + 1 + 2); "two blue squares" is right
    assert hal["CHAIR_i"] == scores["CHAIR_i"] == 0.0 and scores["CHAIR_s"] == 0.0
    assert scores["object_recall"] == hal["object_recall"] == pytest.approx(6 / 8)
    assert scores["count_error_rate"] == 0.0 and math.isnan(scores["position_accuracy"])
    # by number of objects: image 3 (1 object) is wrong; 2 (2 objects) wrong, 4 right; 1 (3 objects) right
    assert info == {"scene_accuracy_by_objects": {1: 0.0, 2: 0.5, 3: 1.0},
                    "relations_checked": 1, "relations_by_form": {"direct": 1, "pronoun": 0, "positional": 0},
                    "positions_checked": 0, "grounding_words": g["grounding_words"], "object_mentions": 5,
                    "hallucinated_mentions": 0, "counts_stated": 1, **S.DESCRIPTIONS}
    assert set(S.DESCRIPTIONS) == {"scene_accuracy", "grounding", "relation_accuracy", "position_accuracy",
                                   "object_recall", "CHAIR_i", "CHAIR_s", "count_error_rate"}
    assert all(isinstance(d, str) and d for d in S.DESCRIPTIONS.values())


def test_shapes_scores_objects_of_other_images_and_images_without_objects():
    # objects may cover a whole split (evaluation of its first N images); an image of predictions
    # without an entry has no objects; image_sizes is needed only for the images with attention.
    preds = {1: "a red circle", 2: "nothing at all"}
    words = {1: ["a", "red", "circle"]}
    alphas = {1: np.full((3, 2, 2), 0.25)}
    scores, info = S.shapes_scores(preds, words, alphas, {**RED_TOP_LEFT, 9: SCENES[1]}, SIZE)
    assert scores["scene_accuracy"] == 1.0
    assert scores["grounding"] == pytest.approx(0.25) and info["grounding_words"] == 2
    assert math.isnan(scores["relation_accuracy"]) and math.isnan(scores["relation_rate"])
    assert info["relations_checked"] == 0
    # image 2 has no objects and names none: nothing hallucinated; image 1's red circle is named
    assert scores["CHAIR_i"] == 0.0 and scores["CHAIR_s"] == 0.0 and scores["object_recall"] == 1.0

    nothing_read, info = S.shapes_scores({1: ""}, {}, {}, RED_TOP_LEFT, {})
    assert nothing_read["scene_accuracy"] == 0.0 and math.isnan(nothing_read["grounding"])
    assert info["grounding_words"] == 0


# ---------------------------------------------------------------- noun phrases (colourless ones too)


def test_noun_phrases_report_colourless_shapes_and_stated_numbers():
    ps = S.noun_phrases("a single small red circle and a circle and two large squares and a red")
    assert [(p.colour, p.shape, p.size, p.count, p.counted) for p in ps] == [
        ("red", "circle", "small", 1, True), (None, "circle", None, 1, False), (None, "square", "large", 2, True)]
    assert [(p.start, p.end) for p in ps] == [(0, 5), (6, 8), (9, 12)]
    # ... while parse_objects and object_mentions still read colour-shape phrases only
    assert parse_objects("a red and a circle and two squares") == Counter()
    assert object_mentions(["a", "circle"]) == []
    for junk in ([None, 3, "red", b"circle"], 42, None, "", "<unk> of of"):
        assert isinstance(S.noun_phrases(junk), list)


# ---------------------------------------------------------------- hallucination: CHAIR, recall, counts

RC = obj("red", "circle", [30, 102, 20, 20])  # small, centre (40, 112)
BS = obj("blue", "square", [87, 87, 50, 50], "large")  # centre (112, 112)
TWO = [RC, BS]
THREE_RC = [obj("red", "circle", [10, 10, 20, 20]), obj("red", "circle", [60, 10, 20, 20]),
            obj("red", "circle", [120, 120, 70, 70], "large")]


@pytest.mark.parametrize("objs, caption, mentions, hallucinated, recall, counted, miscounted", [
    ([], "there are no shapes", 0, 0, None, 1, 0),  # "no shapes": a total of 0, right
    ([], "an empty striped background", 0, 0, None, 0, 0),
    ([], "a red circle", 1, 1, None, 0, 0),
    ([], "two shapes", 0, 0, None, 1, 1),  # a total of 2 in an empty scene
    ([RC], "a single red circle in the top left", 1, 0, 1.0, 1, 0),
    ([RC], "there are two objects a red circle", 1, 0, 1.0, 1, 1),  # total 2 != 1
    ([RC], "a circle", 1, 0, 0.0, 0, 0),  # grounded by shape alone, but names no colour: not recalled
    ([RC], "a blue circle", 1, 1, 0.0, 0, 0),
    ([RC], "a triangle", 1, 1, 0.0, 0, 0),
    (TWO, "a red circle and a green star", 2, 1, 0.5, 0, 0),
    (TWO, "two red circles and a blue square", 2, 0, 1.0, 1, 1),  # group 2 != 1 red circle
    (TWO, "two green stars", 1, 1, 0.0, 0, 0),  # a group of absent objects: CHAIR's, not counted
    (TWO, "three shapes a red circle and a blue square", 2, 0, 1.0, 1, 1),
    (TWO, "there are two objects a red circle and a blue square", 2, 0, 1.0, 1, 0),
    (TWO, "one circle and one square", 2, 0, 0.0, 1, 0),  # colourless groups: by shape
    (THREE_RC, "two small red circles and a large red circle", 2, 0, 1.0, 1, 0),  # 2 small ones: right
    (THREE_RC, "two red circles", 1, 0, 2 / 3, 1, 1),  # 2 != 3 red circles
    (THREE_RC, "three red circles", 1, 0, 1.0, 1, 0),
])
def test_hallucination_cases(objs, caption, mentions, hallucinated, recall, counted, miscounted):
    h = S.hallucination({1: caption}, {1: objs})
    assert (h["object_mentions"], h["hallucinated_mentions"], h["counts_stated"]) == (mentions, hallucinated, counted)
    assert h["CHAIR_i"] == (hallucinated / mentions) if mentions else math.isnan(h["CHAIR_i"])
    assert h["CHAIR_s"] == float(hallucinated > 0)
    assert h["object_recall"] == pytest.approx(recall) if recall is not None else math.isnan(h["object_recall"])
    assert h["count_error_rate"] == miscounted if counted else math.isnan(h["count_error_rate"])


def test_hallucination_over_a_set_and_empty_scenes():
    objs = {1: [], 2: [], 3: TWO, 4: TWO, 5: THREE_RC, 6: THREE_RC}
    preds = {1: "there are no shapes",  # 0 mentions; total 0: right
             2: "a red circle",  # 1 mention, hallucinated
             3: "a red circle and a green star",  # 2 mentions, 1 hallucinated; recalls 1 of 2
             4: "three shapes a circle and a blue square",  # 2 grounded mentions; recalls 1; total 3: wrong
             5: "two small red circles and a large red circle",  # 2 grounded; recalls 3; group right
             6: "two red circles"}  # 1 grounded; recalls 2 of 3; group wrong
    h = S.hallucination(preds, objs)
    assert h["object_mentions"] == 8 and h["hallucinated_mentions"] == 2
    assert h["CHAIR_i"] == pytest.approx(2 / 8) and h["CHAIR_s"] == pytest.approx(2 / 6)
    assert h["object_recall"] == pytest.approx((1 + 1 + 3 + 2) / 10)
    assert h["counts_stated"] == 4 and h["count_error_rate"] == pytest.approx(2 / 4)  # images 1, 4, 5, 6
    # the empty scene captioned as empty counts right in scene accuracy; the hallucinated one does not
    assert S.scene_accuracy({1: preds[1], 2: preds[2]}, {1: [], 2: []}) == 0.5
    nothing = S.hallucination({}, {})
    assert all(math.isnan(nothing[k]) for k in ("CHAIR_i", "CHAIR_s", "object_recall", "count_error_rate"))
    junk = S.hallucination({1: [None, 3, b"x"], 2: 42}, {1: TWO, 2: []})
    assert junk["object_mentions"] == 0 and junk["object_recall"] == 0.0
    with pytest.raises(ValueError):
        S.hallucination({1: "a red circle"}, {1: [], 2: []})


# ---------------------------------------------------------------- relations in every form

GS = obj("green", "star", [140, 20, 20, 20])  # centre (150, 30): above the square, right of both in x
THREE = [RC, BS, GS]
# shapes.relation: red circle to the left of the blue square; green star above the blue square (and
# right of the red circle); along x alone: red circle (40) < blue square (112) < green star (150).
RED_PAIR = [obj("red", "circle", [30, 102, 20, 20]), obj("red", "circle", [150, 80, 64, 64], "large")]


_REL = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


@pytest.mark.parametrize("objs, caption, expected", [
    # expected: "form subject-colour relation object-colour truth" per statement
    # direct "A REL B", "A is REL B"; a statement about an absent object is false
    (TWO, "a red circle to the left of a blue square", ["direct red left blue 1"]),
    (TWO, "a small red circle is to the right of a large blue square", ["direct red right blue 0"]),
    (TWO, "a purple circle to the left of a blue square", ["direct purple left blue 0"]),
    # 3 objects: "A REL B and C REL it" ("it" = B)
    (THREE, "a red circle to the left of a blue square and a green star above it",
     ["direct red left blue 1", "direct green above blue 1"]),
    (THREE, "a red circle to the left of a blue square and a green star below it",
     ["direct red left blue 1", "direct green below blue 0"]),
    (THREE, "a red circle to the left of a blue square and a green star is to the right of it",
     ["direct red left blue 1", "direct green right blue 0"]),
    # 3 objects: "B is REL A and REL C" (the second statement's subject is B)
    (THREE, "a blue square is to the right of a red circle and below a green star",
     ["direct blue right red 1", "direct blue below green 1"]),
    (THREE, "a blue square is to the right of a red circle and above a green star",
     ["direct blue right red 1", "direct blue above green 0"]),
    # pronoun: "B with A to its left" = A to the left of B, and "... and C above it"
    (TWO, "a blue square with a red circle to its left", ["pronoun red left blue 1"]),
    (TWO, "a blue square with a red circle to its right", ["pronoun red right blue 0"]),
    (THREE, "a blue square with a red circle to its left and a green star above it",
     ["pronoun red left blue 1", "pronoun green above blue 1"]),
    (THREE, "a blue square with a red circle to its left and a green star below it",
     ["pronoun red left blue 1", "pronoun green below blue 0"]),
    # positional: the order of the centres along one axis, one statement per consecutive pair
    (TWO, "a red circle on the left and a blue square on the right", ["positional red left blue 1"]),
    (TWO, "a blue square on the left and a red circle on the right", ["positional blue left red 0"]),
    (THREE, "a red circle on the left a blue square in the middle and a green star on the right",
     ["positional red left blue 1", "positional blue left green 1"]),
    (THREE, "a red circle on the left a green star in the middle and a blue square on the right",
     ["positional red left green 1", "positional green left blue 0"]),
    (THREE, "a green star at the top and a red circle at the bottom", ["positional green above red 1"]),
    (THREE, "a blue square at the top and a green star at the bottom", ["positional blue above green 0"]),
    # the order along x holds where the dominant-axis rule of the direct form says "below"
    (THREE, "a blue square on the left and a green star on the right", ["positional blue left green 1"]),
    (THREE, "a blue square to the left of a green star", ["direct blue left green 0"]),
    # sizes pick one of two red circles; without a size, some assignment of distinct objects will do
    (RED_PAIR, "a small red circle to the left of a large red circle", ["direct red left red 1"]),
    (RED_PAIR, "a large red circle to the left of a small red circle", ["direct red left red 0"]),
    (RED_PAIR, "a red circle to the right of a red circle", ["direct red right red 1"]),
    (RED_PAIR, "a large red circle with a small red circle to its right", ["pronoun red right red 0"]),
    (RED_PAIR, "a large red circle on the left and a small red circle on the right", ["positional red left red 0"]),
    (RED_PAIR, "a red circle on the left and a red circle on the right", ["positional red left red 1"]),
    ([RC], "a red circle to the left of a red circle", ["direct red left red 0"]),  # one object: no distinct pair
    # a size no matching object has does not decide: the colour-shape does
    (TWO, "a large red circle to the left of a small blue square", ["direct red left blue 1"]),
    # no relation stated
    (TWO, "a red circle and a blue square", []),
    (TWO, "a red circle on the left and a blue square at the top", []),  # no single axis: no order
    (TWO, "and a red circle above it", []),  # "it" with nothing before it
    (TWO, "to the left of a blue square", []),
])
def test_relation_statements_and_their_truth(objs, caption, expected):
    got = S.relation_statements(caption)
    rows = []
    for e in expected:
        form, subj, rel, obj_colour, truth = e.split()
        rows.append((form, subj, _REL[rel], obj_colour, truth == "1"))
    assert [(st.form, st.subject.colour, st.relation, st.object.colour, S.statement_holds(st, objs))
            for st in got] == rows
    assert S.relation_statements(caption.split()) == got
    r = S.relation_accuracy({1: caption}, {1: objs})
    assert r["relations_checked"] == len(rows)
    assert r["relation_rate"] == float(bool(rows)) if len(objs) > 1 else math.isnan(r["relation_rate"])
    if rows:
        assert r["relation_accuracy"] == pytest.approx(sum(row[-1] for row in rows) / len(rows))
    true = sum(row[-1] for row in rows)  # the truth reward's counts: the same statements, the same checks
    h = S.hallucination({1: caption}, {1: objs})
    named = round(h["object_recall"] * len(objs)) if objs else 0
    counts = S.truth_counts(caption, objs)
    assert counts[:4] == (true, len(rows) - true, h["hallucinated_mentions"], len(objs) - named)
    assert bool(counts[4]) == (h["count_error_rate"] == 1.0)  # one caption: wrong numbers make it miscount
    assert not counts[5] or S.scene_accuracy({1: caption}, {1: objs}) == 0.0  # a repeat: the scene named wrong


@pytest.mark.parametrize("caption, expected", [
    ("a red circle to the left of a blue square", (1, 0, 0, 0, 0, 0)),
    ("a red circle to the right of a blue square", (0, 1, 0, 0, 0, 0)),
    ("a green star to the left of a blue square", (0, 1, 1, 1, 0, 0)),  # about an absent object: false, a phantom
    ("a red circle and a green star and a purple star", (0, 0, 2, 1, 0, 0)),
    ("a blue square with a red circle to its left and a green star above it", (1, 1, 1, 0, 0, 0)),
    ("a circle and a blue square", (0, 0, 0, 1, 0, 0)),  # a circle without its colour does not name the red circle
    ("", (0, 0, 0, 2, 0, 0)),
    ("two shapes a red circle and a blue square", (0, 0, 0, 0, 0, 0)),
    ("three shapes a red circle and a blue square", (0, 0, 0, 0, 1, 0)),  # the self-critical models' slip
    ("two red circles and a blue square", (0, 0, 0, 0, 1, 1)),  # one red circle: a wrong number and one too many
    ("three shapes two red circles and a blue square", (0, 0, 0, 0, 2, 1)),
    ("one shape a red circle", (0, 0, 0, 1, 1, 0)),
    # the repeat: the second object named as the first again (one statement about one circle: false)
    ("a red circle is to the left of a red circle", (0, 1, 0, 1, 0, 1)),
    ("a red circle and a blue square and a red circle and a red circle", (0, 0, 0, 0, 0, 2)),
    ("a red circle and a green star and a green star", (0, 0, 2, 1, 0, 0)),  # absent twice: phantoms, no repeat
])
def test_truth_counts_pay_true_relations_and_count_false_ones_phantoms_misses_wrong_numbers_and_repeats(caption,
                                                                                                        expected):
    assert S.truth_counts(caption, TWO) == expected
    assert S.truth_counts(caption.split(), TWO) == expected


def test_relation_accuracy_over_a_set():
    objs = {1: TWO, 2: THREE, 3: [RC], 4: THREE, 5: []}
    preds = {1: "a blue square with a red circle to its left",  # pronoun, true
             2: "a red circle to the left of a blue square and a green star below it",  # direct: true, false
             3: "a red circle",  # one object: not in the rate
             4: "a red circle on the left a blue square in the middle and a green star on the right",  # 2 true
             5: "there are no objects"}  # no object: not in the rate
    r = S.relation_accuracy(preds, objs)
    assert r["relations_by_form"] == {"direct": 2, "pronoun": 1, "positional": 2} and r["relations_checked"] == 5
    assert r["relation_accuracy"] == pytest.approx(4 / 5) and r["relation_rate"] == 1.0
    preds[4] = "three shapes a red circle a blue square and a green star"
    assert S.relation_accuracy(preds, objs)["relation_rate"] == pytest.approx(2 / 3)
    # the first parser's answer is still there: (colour, shape) triples of the direct and pronoun forms
    assert S.stated_relations(preds[2]) == [(("red", "circle"), "to the left of", ("blue", "square")),
                                            (("green", "star"), "below", ("blue", "square"))]
    assert S.stated_relations("a red circle on the left and a blue square on the right") == []


def test_relation_parser_never_raises_on_junk():
    for junk in ([None, 3, "red", b"circle"], [], ["to", "its", "left", "<eos>"], 42, None, "it it with and is",
                 "a red circle to the left of", "with a red circle to its left", "on the left on the right"):
        assert S.relation_statements(junk) == [] and S.position_statements(junk) == []
        S.relation_accuracy({1: junk}, {1: TWO})
        S.position_accuracy({1: junk}, {1: TWO})


TOP_LEFT, LEFT, CENTRE, BOTTOM = ([obj("red", "circle", box)] for box in (
    [30, 30, 20, 20], [30, 102, 20, 20], [102, 102, 20, 20], [102, 180, 20, 20]))


@pytest.mark.parametrize("objs, caption, place, truth", [
    (TOP_LEFT, "a single red circle in the top left", "in the top left", True),
    (TOP_LEFT, "there is a red circle on the left", "on the left", False),  # it is in the top left
    (LEFT, "there is a red circle on the left", "on the left", True),
    (CENTRE, "a red circle in the centre", "in the centre", True),
    (BOTTOM, "a single small red circle at the bottom", "at the bottom", True),
    (BOTTOM, "a single small red circle in the bottom right", "in the bottom right", False),
    (BOTTOM, "there is a purple circle at the bottom", "at the bottom", False),  # absent
    (TWO, "a red circle on the left", "on the left", True),  # the caption's one noun phrase, in any scene
    (TWO, "a red circle on the left and a blue square", None, None),  # two noun phrases: no position claim
    (CENTRE, "a red circle in the middle", None, None),  # not a phrase shapes.position writes
    (CENTRE, "an empty striped background", None, None),
])
def test_position_statements(objs, caption, place, truth):
    expected = [] if place is None else [(S.noun_phrases(caption)[0].key, place)]
    assert [(p.key, where) for p, where in S.position_statements(caption)] == expected
    r = S.position_accuracy({1: caption}, {1: objs})
    assert r["positions_checked"] == (place is not None)
    assert r["position_accuracy"] == truth if place else math.isnan(r["position_accuracy"])


# ---------------------------------------------------------------- the world's own references read back as true


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """(objects, captions) of the training references of a small world: every template is in it."""
    root = tmp_path_factory.mktemp("world")
    shapes.generate_world(root, seed=0, sizes={"train": 300, "val": 0, "test": 0, "test_novel": 0}, workers=1)
    objects = shapes.load_objects(root / "annotations" / "instances_train.json")
    captions = json.loads((root / "annotations" / "captions_train.json").read_text())["annotations"]
    return objects, [(a["image_id"], a["caption"]) for a in captions]


def _template(caption: str, n: int) -> str | None:
    """Which relation-bearing template of shapes.py wrote a reference caption, from its words alone."""
    if n == 1 and re.search(r"\b(in|on|at) the\b", caption):
        return "position"  # "a single red circle in the top left", "there is a red circle on the left"
    if n < 2:
        return None
    if " with " in caption:
        return f"pronoun {n}"
    if re.search(r"\b(on the left|at the top)\b", caption):
        return f"positional {n}"
    if any(f" {rel} " in caption for rel in shapes.RELATIONS):
        if n == 3:
            return "direct it" if caption.endswith(" it") else "direct second subject"
        return "direct is" if " is " in caption else "direct"
    return None


def test_references_read_back_as_true(references):
    objects, captions = references
    templates: Counter = Counter()
    by_form: Counter = Counter()
    multi = stating = 0
    for k, (img_id, caption) in enumerate(captions):
        objs, one = objects[img_id], {k: caption}
        n = len(objs)
        h = S.hallucination(one, {k: objs})
        assert h["hallucinated_mentions"] == 0 and h["CHAIR_s"] == 0.0, caption
        assert h["object_mentions"] == len(S.noun_phrases(caption)) >= min(n, 1), caption
        assert h["object_recall"] == 1.0 if n else math.isnan(h["object_recall"]), caption
        assert h["count_error_rate"] == 0.0 if h["counts_stated"] else math.isnan(h["count_error_rate"]), caption
        assert S.scene_accuracy(one, {k: objs}) == 1.0, caption

        template = _template(caption, n)
        templates[template] += 1
        stated = S.relation_statements(caption)
        assert all(S.statement_holds(st, objs) for st in stated), caption
        assert S.truth_counts(caption, objs) == (len(stated), 0, 0, 0, 0, 0), caption  # the truth reward's best
        # every relation-bearing caption is read in full: n - 1 statements, of its template's form
        expected_form = template.split()[0] if template and template != "position" else None
        assert [st.form for st in stated] == [expected_form] * (n - 1 if expected_form else 0), caption
        by_form.update(st.form for st in stated)
        pos = S.position_accuracy(one, {k: objs})
        assert pos["positions_checked"] == (template == "position"), caption
        assert pos["position_accuracy"] == 1.0 or not pos["positions_checked"], caption
        if n > 1:
            multi, stating = multi + 1, stating + bool(stated)

    for template in ("direct", "direct is", "direct it", "direct second subject", "pronoun 2", "pronoun 3",
                     "positional 2", "positional 3", "position"):
        assert templates[template] > 0, (template, templates)
    assert min(by_form[f] for f in ("direct", "pronoun", "positional")) > 0

    everything = {k: c for k, (_, c) in enumerate(captions)}
    objs = {k: objects[img_id] for k, (img_id, _) in enumerate(captions)}
    r, p, h = S.relation_accuracy(everything, objs), S.position_accuracy(everything, objs), \
        S.hallucination(everything, objs)
    assert r["relation_accuracy"] == 1.0 and r["relations_by_form"] == dict(by_form)
    assert p["position_accuracy"] == 1.0 and h["CHAIR_i"] == 0.0 and h["object_recall"] == 1.0
    assert h["count_error_rate"] == 0.0 and h["counts_stated"] > 0
    assert r["relation_rate"] == pytest.approx(stating / multi)
    empty = sum(not o for o in objects.values())  # scenes without objects (none before shapes.py had them)
    print(f"\nreferences of {len(objects)} images ({empty} empty): relation_rate {r['relation_rate']:.4f} "
          f"({stating} of {multi} multi-object captions), relations {dict(by_form)}, "
          f"positions {p['positions_checked']}, counts stated {h['counts_stated']}, templates {dict(templates)}")


# ---------------------------------------------------------------- where a reference's words should look


SCENE = [obj("red", "circle", [10, 100, 20, 20]), obj("blue", "square", [150, 100, 20, 20]),
         obj("green", "cross", [100, 10, 20, 20])]


@pytest.mark.parametrize("caption, expected", [
    ("a red circle is to the left of a blue square",  # "left" looks at the square, not yet named
     [("red", "red"), ("circle", "red"), ("left", "blue"), ("blue", "blue"), ("square", "blue")]),
    ("a blue square with a red circle to its left",  # "its": the square
     [("blue", "blue"), ("square", "blue"), ("red", "red"), ("circle", "red"), ("left", "blue")]),
    ("a red circle is to the left of a blue square and a green cross above it",
     [("red", "red"), ("circle", "red"), ("left", "blue"), ("blue", "blue"), ("square", "blue"),
      ("green", "green"), ("cross", "green"), ("above", "blue")]),
    ("a blue square is to the right of a red circle and below a green cross",  # the second object of one subject
     [("blue", "blue"), ("square", "blue"), ("right", "red"), ("red", "red"), ("circle", "red"),
      ("below", "green"), ("green", "green"), ("cross", "green")]),
    ("a red circle on the left a green cross in the middle and a blue square on the right",
     [("red", "red"), ("circle", "red"), ("left", "green"), ("green", "green"), ("cross", "green"),
      ("middle", "red+blue"), ("blue", "blue"), ("square", "blue"), ("right", "green")]),
    ("a purple circle is to the left of a blue square",  # an absent subject: its words and the relation unsupervised
     [("blue", "blue"), ("square", "blue")]),
    ("a circle and a blue square", [("blue", "blue"), ("square", "blue")]),  # no colour: no target
])
def test_attention_targets_point_words_at_their_objects_and_relation_words_at_the_other(caption, expected):
    toks = caption.split()
    got = [(toks[k], "+".join(SCENE[j]["colour"] for j in which)) for k, which in S.attention_targets(toks, SCENE)]
    assert got == expected


def test_attention_targets_skip_what_names_several_objects_and_become_grid_masks():
    twins = SCENE + [obj("red", "circle", [10, 10, 20, 20])]
    toks = "a red circle is to the left of a blue square".split()
    assert [toks[k] for k, _ in S.attention_targets(toks, twins)] == ["blue", "square"]  # which red circle?
    words, masks = S.attention_target_masks(toks, SCENE, (224, 224), (14, 14))
    assert words.tolist() == [1, 2, 6, 9, 10] and masks.shape == (5, 196) and masks.dtype == bool
    circle = S.box_coverage_grid(SCENE[0]["bbox"], (224, 224), (14, 14)).reshape(-1) > 0
    square = S.box_coverage_grid(SCENE[1]["bbox"], (224, 224), (14, 14)).reshape(-1) > 0
    assert (masks[0] == circle).all() and (masks[2] == square).all() and 1 <= circle.sum() <= 4


def test_attention_targets_of_the_world_references(references):
    objects, captions = references
    related = 0
    for img_id, caption in captions:
        objs, toks = objects[img_id], S._tokens(caption)
        phrases = S.noun_phrases(toks)
        for k, which in S.attention_targets(toks, objs):
            assert len(which) >= 1, caption
            if toks[k] in S.COLOURS or toks[k] in S._SHAPE_FORMS:  # an object word: its own object
                p = next(p for p in phrases if k in (p.colour_idx, p.end - 1))
                assert which == (S._matches(p, objs)[0],), caption
                continue
            assert toks[k] in S._DECIDING, caption
            related += 1
            # a relation word looks at an object the caption names, never the one named just before it
            before = [p for p in phrases if p.end <= k][-1]
            assert set(which).isdisjoint(S._matches(before, objs)), caption
            assert set(which) <= {j for p in phrases for j in S._matches(p, objs)}, caption
    assert related > 100


@pytest.mark.parametrize("caption, expected", [
    ("a red circle is to the left of a blue square", ["to", "the", "left"]),  # not "is", not "of"
    ("a red circle above a blue square", ["above"]),
    ("a blue square with a red circle to its left", ["to", "its", "left"]),
    ("a blue square is to the right of a red circle and below a green cross", ["to", "the", "right", "below"]),
    ("a red circle on the left a green cross in the middle and a blue square on the right",
     ["on", "the", "left", "in", "the", "middle", "on", "the", "right"]),
])
def test_relation_span_targets_cover_the_phrase_up_to_the_deciding_word(caption, expected):
    """With span (train.py --compare) the words before the deciding one look where it looks and read back what it
    reads back: "to" already says the relation is left/right, not above/below."""
    toks = caption.split()
    objects = dict(S.attention_targets(toks, SCENE))
    spanned = dict(S.attention_targets(toks, SCENE, span=True))
    relation_words = [k for k in spanned if toks[k] not in S.COLOURS and toks[k] not in S._SHAPE_FORMS]
    assert [toks[k] for k in sorted(relation_words)] == expected
    recalls = dict(S.recall_targets(toks, SCENE, span=True))
    assert sorted(recalls) == sorted(relation_words)
    for k in relation_words:  # each word of a phrase: its deciding word's object and entry
        deciding = min(j for j in dict(S.recall_targets(toks, SCENE)) if j >= k)
        assert spanned[k] == objects[deciding] and recalls[k] == recalls[deciding]


@pytest.mark.parametrize("caption, expected", [
    ("a red circle is to the left of a blue square", [("left", "circle")]),
    ("a blue square with a red circle to its left", [("left", "circle")]),
    ("a red circle is to the left of a blue square and a green cross above it",
     [("left", "circle"), ("above", "cross")]),
    ("a blue square is to the right of a red circle and below a green cross",
     [("right", "square"), ("below", "square")]),
    ("a red circle on the left a green cross in the middle and a blue square on the right",
     [("left", "circle"), ("middle", "cross"), ("right", "square")]),
    ("a purple circle is to the left of a blue square", []),  # an absent subject: nothing to recall
])
def test_recall_targets_point_relation_words_at_the_entry_of_the_subjects_shape_word(caption, expected):
    """Entry j of the recall memory holds token j of <start> w0 w1 ...: word i's entry is i + 1."""
    toks = caption.split()
    with_start = ["<start>", *toks]
    got = [(toks[k], with_start[e]) for k, e in S.recall_targets(toks, SCENE)]
    assert got == expected
    assert all(e <= k for k, e in S.recall_targets(toks, SCENE))  # written before the step that reads it


def test_recall_targets_of_the_world_references(references):
    objects, captions = references
    n = 0
    for img_id, caption in captions:
        objs, toks = objects[img_id], S._tokens(caption)
        shape_words = {p.end: p for p in S.noun_phrases(toks)}  # entry -> the phrase whose shape word it holds
        for k, e in S.recall_targets(toks, objs):
            assert toks[k] in S._DECIDING and e in shape_words and e <= k, caption
            assert toks[e - 1] in S._SHAPE_FORMS and len(S._matches(shape_words[e], objs)) == 1, caption
            n += 1
    assert n > 100
