"""bench/foreign_scenes.py: its renderer is deterministic, its boxes are right, the project reads what it
writes, and its scoring is right on hand-made captions (no model is run)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageColor

from captioner.datasets import read_karpathy
from captioner.shapes import COLOURS, SHAPES, load_objects
from captioner.sources import shapes_source

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("foreign_scenes", ROOT / "bench" / "foreign_scenes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("foreign_scenes", module)
    spec.loader.exec_module(module)
    return module


fs = _load_bench()
N = 16


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("foreign") / "scenes"
    opts = fs.RenderOptions(max_objects=3, blur_p=0.5, outline_p=0.5, tint=True)
    return out, fs.write_scenes(out, N, seed=3, opts=opts), opts


def test_renderer_is_deterministic_per_seed_and_index():
    opts = fs.RenderOptions(max_objects=3, tint=True)
    for index in (0, 7):
        (a, sa), (b, sb) = fs.render_scene(5, index, opts), fs.render_scene(5, index, opts)
        assert sa == sb and np.array_equal(np.asarray(a), np.asarray(b))
    scenes = [fs.render_scene(6, i, opts)[1] for i in range(N)]
    assert scenes != [fs.render_scene(7, i, opts)[1] for i in range(N)]  # another seed, other scenes


@pytest.mark.parametrize("size", [(224, 224), (320, 240)])
def test_boxes_inside_and_apart_and_vocabulary(size):
    opts = fs.RenderOptions(width=size[0], height=size[1], max_objects=3, outline_p=1.0)
    counts = set()
    for i in range(N):
        image, scene = fs.render_scene(0, i, opts)
        assert image.size == size and image.mode == "RGB"
        objs = scene["objects"]
        counts.add(len(objs))
        boxes = []
        for o in objs:
            assert o["colour"] in COLOURS and o["shape"] in SHAPES and o["size"] in ("small", "large")
            x, y, w, h = o["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= size[0] and y + h <= size[1]
            assert 0 < o["area"] <= w * h
            assert 28 * 0.6 <= max(w, h) <= 90  # cells of 28-90 px; a star or triangle fills less
            boxes.append((x, y, x + w, y + h))
        for j, a in enumerate(boxes):
            for b in boxes[j + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (i, a, b)
    assert counts <= {1, 2, 3} and len(counts) > 1


def test_standard_shades_unless_tinted():
    opts = fs.RenderOptions(blur_p=0.0)
    for i in range(N):
        image, scene = fs.render_scene(1, i, opts)
        for o in scene["objects"]:
            assert tuple(o["rgb"]) == ImageColor.getrgb(o["colour"])
            x, y, w, h = o["bbox"]
            centre = np.asarray(image)[y + h // 2, x + w // 2]  # every shape is filled at its box's centre
            assert np.abs(centre.astype(int) - o["rgb"]).max() <= 2


def test_written_folder_is_read_by_the_project(written):
    out, records, opts = written
    splits = read_karpathy(out / "dataset_shapes.json", out / "images")
    assert list(splits) == ["test"] and [r.image_id for r in splits["test"]] == list(range(1, N + 1))
    assert all(Path(r.path).is_file() and r.captions for r in splits["test"])
    objects = load_objects(out / "annotations" / "instances_test.json")
    assert objects == {r["id"]: [{k: o[k] for k in ("colour", "shape", "size", "bbox")} for o in r["objects"]]
                       for r in records}
    # what evaluate.py --data shapes --shapes-dir reads
    source = shapes_source(out, generate=False)
    assert source.objects["test"] == objects
    assert set(source.image_sizes["test"].values()) == {(opts.width, opts.height)}
    # writing again gives the same folder contents
    again = fs.write_scenes(out, N, seed=3, opts=opts)
    assert again == records


def test_refuses_a_folder_of_another_world(tmp_path):
    (tmp_path / "world.json").write_text('{"version": 2, "seed": 0}')
    with pytest.raises(ValueError, match="did not write"):
        fs.write_scenes(tmp_path, 2)


def test_score_on_hand_made_captions(written):
    _, records, _ = written
    objects = {r["id"]: r["objects"] for r in records}
    truth = {i: fs.describe(objs) for i, objs in objects.items()}
    perfect = fs.score(truth, objects)
    assert perfect["object_recall"] == 1.0 and perfect["scene_accuracy"] == 1.0
    assert perfect["phantom_rate"] == 0.0 and perfect["colour_confusions"] == []
    assert perfect["one_object_multi"] == 0
    assert perfect.get("object_recall_project", 1.0) == 1.0

    # one object of one image named with a wrong colour
    i = next(i for i, objs in objects.items() if len(objs) == 1)
    obj = objects[i][0]
    wrong = COLOURS[(COLOURS.index(obj["colour"]) + 1) % len(COLOURS)]
    bad = {**truth, i: f"a {wrong} {obj['shape']}"}
    figures = fs.score(bad, objects)
    n_obj = sum(len(o) for o in objects.values())
    assert figures["object_recall"] == pytest.approx((n_obj - 1) / n_obj) and figures["object_recall"] < 1
    assert figures["scene_accuracy"] == pytest.approx((N - 1) / N)
    assert figures["phantom_rate"] == pytest.approx(1 / N) and figures["phantom_objects"] == 1
    assert figures["colour_confusions"] == [[obj["colour"], wrong, 1]]
    assert figures["recall_by_colour"][obj["colour"]] < 1
    if "object_recall_project" in figures:
        assert figures["object_recall_project"] == pytest.approx(figures["object_recall"])

    # a 1-object image described with two objects
    extra = next(c for c in COLOURS if c != obj["colour"])
    two = {**truth, i: f"a {obj['colour']} {obj['shape']} and a {extra} square"}
    figures = fs.score(two, objects)
    assert figures["object_recall"] == 1.0 and figures["one_object_multi"] == 1
    assert figures["phantom_rate"] == pytest.approx(1 / N)


def test_compare_pairs_confusions():
    objs = [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"},
            {"colour": "blue", "shape": "square"}]
    c = fs.compare("a purple circle and a blue star and a blue square", objs)
    assert c["named"] == 1 and c["stated"] == 3
    assert c["phantoms"] == [("blue", "star"), ("purple", "circle")]
    assert c["missed"] == [("blue", "square"), ("red", "circle")]
    assert c["colour_confusions"] == [("red", "purple")] and c["shape_confusions"] == [("square", "star")]
    assert fs.named_flags("two blue squares", objs) == [False, True, True]
    assert fs.describe(objs) == "a red circle and two blue squares"
