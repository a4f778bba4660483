"""Tests for captioner.scene_metrics: the caption parser, the shapes-world metrics (scene accuracy,
relations, box coverage, attention grounding) and shapes_scores, the entry evaluation uses."""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from captioner import scene_metrics as S
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
    preds[1] = "a small purple circle is to the left of a large blue square"  # names an absent object
    r = S.relation_accuracy(preds, objs)
    assert r["relations_checked"] == 0 and math.isnan(r["relation_accuracy"])


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

    assert list(scores) == ["scene_accuracy", "grounding", "grounding_chance", "relation_accuracy", "relation_rate"]
    assert set(S.SHAPES_METRICS) <= set(scores) and "grounding_chance" not in S.SHAPES_METRICS
    assert scores["scene_accuracy"] == S.scene_accuracy(preds, objs) == 0.5
    rel = S.relation_accuracy(preds, objs)
    assert scores["relation_accuracy"] == rel["relation_accuracy"] == 1.0
    assert scores["relation_rate"] == rel["relation_rate"] == pytest.approx(1 / 3)  # images 1, 2 and 4; 4 states one
    g = S.attention_grounding(words, alphas, {i: objs[i] for i in words}, {i: sizes[i] for i in words})
    assert scores["grounding"] == g["grounding"] and scores["grounding_chance"] == g["grounding_chance"]
    assert info == {"relations_checked": 1, "grounding_words": g["grounding_words"], **S.DESCRIPTIONS}
    assert set(S.DESCRIPTIONS) == {"scene_accuracy", "grounding", "relation_accuracy"}


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

    nothing_read, info = S.shapes_scores({1: ""}, {}, {}, RED_TOP_LEFT, {})
    assert nothing_read["scene_accuracy"] == 0.0 and math.isnan(nothing_read["grounding"])
    assert info["grounding_words"] == 0
