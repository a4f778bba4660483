"""Tests for captioner.shapes: the synthetic shapes world (its captions are read back with
captioner.scene_metrics's parser; the parser itself is tested in test_scene_metrics.py)."""
from __future__ import annotations

import colorsys
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner import shapes
from captioner.scene_metrics import parse_objects
from captioner.shapes import (
    COLOURS,
    NUMBER_WORDS,
    SHAPES,
    SIZES,
    ensure_world,
    generate_world,
    load_objects,
    load_world,
    plural,
)

TINY = {"train": 30, "val": 5, "test": 5, "test_novel": 10, "test_shift": 10}
SPLITS = shapes.SPLITS


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), seed=0, sizes=TINY, workers=1)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _captions(root: Path, split: str) -> dict[int, list[str]]:
    data = json.loads((root / "annotations" / f"captions_{split}.json").read_text())
    out: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        out[ann["image_id"]].append(ann["caption"])
    return out


# ------------------------------------------------------------------ generation

def test_layout_and_world_json(world):
    info = load_world(world)
    assert info["seed"] == 0 and info["sizes"] == TINY and info["version"] == shapes.VERSION
    ids = []
    for split in SPLITS:
        files = sorted((world / "images" / split).glob("*.jpg"))
        assert len(files) == TINY[split]
        ids += [int(f.stem) for f in files]
    assert len(ids) == len(set(ids)) == sum(TINY.values())
    with Image.open(files[0]) as im:
        assert im.size == (224, 224) and im.mode == "RGB" and im.format == "JPEG"


def test_deterministic_across_worker_counts(world, tmp_path):
    again = generate_world(tmp_path / "again", seed=0, sizes=TINY, workers=2)
    assert _files(world) == _files(again)


def test_different_seed_gives_different_images(world, tmp_path):
    other = generate_world(tmp_path / "other", seed=1, sizes={"train": 3}, workers=1)
    first = "images/train/000001.jpg"
    assert (world / first).read_bytes() != (other / first).read_bytes()


def test_ensure_world_regenerates_only_on_change(world, tmp_path):
    stamp = (world / "world.json").stat().st_mtime_ns
    assert ensure_world(world, seed=0, sizes=TINY) == world
    assert (world / "world.json").stat().st_mtime_ns == stamp
    out = ensure_world(tmp_path / "w", seed=3, sizes={"train": 2, "val": 1})
    assert load_world(out)["sizes"] == {"train": 2, "val": 1, "test": 0, "test_novel": 0, "test_shift": 0}


def test_held_out_pairs(world):
    held = {tuple(p) for p in load_world(world)["held_out"]}
    assert len(held) >= 4
    assert len({c for c, _ in held}) >= 4 and len({s for _, s in held}) >= 4
    for split in SPLITS:
        objects = load_objects(world / "annotations" / f"instances_{split}.json")
        captions = _captions(world, split)
        for image_id, objs in objects.items():
            in_boxes = {(o["colour"], o["shape"]) for o in objs} & held
            in_caps = set().union(*(parse_objects(c) for c in captions[image_id])) & held
            assert in_boxes == in_caps
            assert bool(in_boxes) == (split == "test_novel"), (split, image_id)


def _overlap(a, b) -> bool:
    return not (a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1])


def test_objects_and_captions_agree(world):
    for split in SPLITS:
        objects = load_objects(world / "annotations" / f"instances_{split}.json")
        captions = _captions(world, split)
        for image_id, objs in objects.items():
            assert 0 <= len(objs) <= 3 and (objs or split != "test_novel")
            want = Counter((o["colour"], o["shape"]) for o in objs)
            caps = captions[image_id]
            assert len(caps) == 5 and len(set(caps)) == 5
            for cap in caps:
                assert cap == cap.lower().strip() and all(w.isalpha() for w in cap.split()), cap
                assert parse_objects(cap) == want, (cap, want)
            for i, o in enumerate(objs):
                x, y, w, h = o["bbox"]
                assert 0 <= x and 0 <= y and x + w <= 224 and y + h <= 224
                side = max(w, h)  # cells: small 30-42, large 64-84 px (test_shift: 22-52, 53-100)
                small, large = (52, 40) if split == "test_shift" else (42, 55)
                assert (side <= small) if o["size"] == "small" else (side >= large), o
                assert all(not _overlap(o["bbox"], p["bbox"]) for p in objs[i + 1:])


def test_captions_state_counts_and_relations(world):
    relations = ("to the left of", "to the right of", "above", "below", "to its",
                 "on the left", "at the top")
    for split in SPLITS:
        objects = load_objects(world / "annotations" / f"instances_{split}.json")
        for image_id, caps in _captions(world, split).items():
            n = len(objects[image_id])
            count_word = {0: ("no shapes", "no objects"), 1: ("one", "single"), 2: ("two shapes", "two objects"),
                          3: ("three shapes", "three objects")}[n]
            assert any(w in c for c in caps for w in count_word), caps
            if n > 1:
                assert sum(any(r in c for r in relations) for c in caps) >= 2, caps


def test_stated_relations_of_the_references_are_true(world):
    """The relation parser reads the world's own captions back, and every checkable one is true."""
    from captioner.scene_metrics import relation_accuracy

    checked = 0
    for split in SPLITS:
        objects = load_objects(world / "annotations" / f"instances_{split}.json")
        caps = _captions(world, split)
        for k in range(5):
            r = relation_accuracy({i: c[k] for i, c in caps.items()}, objects)
            checked += r["relations_checked"]
            assert r["relations_checked"] == 0 or r["relation_accuracy"] == 1.0
    assert checked >= 10


def _scenes(split: str, n: int = 300):
    held = shapes.choose_held_out(0)
    for i in range(n):
        rng = np.random.default_rng([0, SPLITS.index(split), i])
        yield rng, *shapes.make_scene(rng, split, held)


def test_empty_scenes_are_captioned_as_empty():
    empty = 0
    for rng, _image, objs, kind in _scenes("train"):
        if objs:
            continue
        empty += 1
        caps = shapes.make_captions(rng, objs, kind)
        assert len(set(caps)) == 5 and all(parse_objects(c) == Counter() for c in caps), caps
        assert all({"no", "nothing", "empty"} & set(c.split()) for c in caps), caps
    assert 5 <= empty <= 30  # about EMPTY_SHARE of 300
    assert all(objs for _, _, objs, _ in _scenes("test_novel", 100))  # each holds a novel pair


def test_test_shift_uses_settings_training_never_sees():
    train_kinds = {kind for _, _, _, kind in _scenes("train")}
    shift_kinds = {kind for _, _, _, kind in _scenes("test_shift")}
    assert train_kinds == set(shapes.STYLES["train"]["backgrounds"]) and "flat" in train_kinds
    assert shift_kinds == set(shapes.STYLES["shift"]["backgrounds"]) and not train_kinds & shift_kinds
    # colour names are ranges: training shades stay within 10 degrees of the centre hue, shifted ones 10-15
    for style, (lo, hi) in (("train", (0, 10)), ("shift", (10, 15))):
        rng = np.random.default_rng(1)
        for colour, (centre, _) in shapes.COLOUR_HSV.items():
            for _ in range(50):
                h, s, v = colorsys.rgb_to_hsv(*(shapes.shade(rng, colour, shapes.STYLES[style]["hue_offset"]) / 255))
                off = abs((h * 360 - centre + 180) % 360 - 180)
                assert lo - 1e-6 <= off <= hi + 1e-6, (style, colour, off)
    # the same scene index renders differently in the two styles, and test_shift is blurrier on average
    sharp = [np.abs(np.diff(np.asarray(im.convert("L"), float), axis=1)).mean() for _, im, _, _ in _scenes("train", 40)]
    shifted = [np.abs(np.diff(np.asarray(im.convert("L"), float), axis=1)).mean()
               for _, im, _, _ in _scenes("test_shift", 40)]
    assert np.mean(shifted) != pytest.approx(np.mean(sharp), rel=0.05)


def test_wide_train_widens_the_train_split_only(tmp_path):
    """--wide-train draws the train split from more background families, with JPEG artefacts and noise
    milder than test_shift's; every other split, and a world without the option, is unchanged byte for byte."""
    sizes = {"train": 60, "val": 3, "test": 3, "test_novel": 3, "test_shift": 3}
    plain = generate_world(tmp_path / "plain", seed=0, sizes=sizes, workers=1)
    wide = generate_world(tmp_path / "wide", seed=0, sizes=sizes, workers=1, wide_train=True)
    for split in SPLITS:
        a = {p.name: p.read_bytes() for p in (plain / "images" / split).glob("*.jpg")}
        b = {p.name: p.read_bytes() for p in (wide / "images" / split).glob("*.jpg")}
        assert len(a) == sizes[split] and a.keys() == b.keys()
        same = sum(a[k] == b[k] for k in a)
        assert same == (0 if split == "train" else len(a)), split
    plain_world, wide_world = load_world(plain), load_world(wide)
    assert "wide_train" not in plain_world and "wide" not in plain_world["styles"]  # as before the option
    assert wide_world["wide_train"] is True and wide_world["styles"]["wide"]["backgrounds"]
    # the new families appear in the train captions; none of test_shift's families does
    words = " ".join(c["caption"] for c in json.loads(
        (wide / "annotations" / "captions_train.json").read_text())["annotations"]).split()
    new_families = shapes.STYLES["wide"]["backgrounds"]
    assert {shapes._BACKGROUNDS[k] for k in new_families} <= set(words)
    assert not {shapes._BACKGROUNDS[k] for k in shapes.STYLES["shift"]["backgrounds"]} & set(words)
    # what it adds stays outside test_shift's settings
    w, shift = shapes.STYLES["wide"], shapes.STYLES["shift"]
    assert not set(new_families) & set(shift["backgrounds"])
    assert w["jpeg"][0] > shift["jpeg"][1] and w["noise"][1] < shift["noise"][0]
    # ensure_world knows the two worlds apart: asking for the other one regenerates
    stamp = (wide / "world.json").stat().st_mtime_ns
    ensure_world(wide, seed=0, sizes=sizes, wide_train=True)
    assert (wide / "world.json").stat().st_mtime_ns == stamp
    assert load_world(ensure_world(tmp_path / "wide", seed=0, sizes=sizes)).get("wide_train") is None


def test_wide_train_parts(tmp_path):
    """A world widened in some parts only: the named parts, recorded in world.json; the rest as training."""
    assert shapes.wide_parts(True) == shapes.WIDE_PARTS and shapes.wide_parts(False) == ()
    assert shapes.wide_parts(["noise", "backgrounds"]) == ("backgrounds", "noise")
    with pytest.raises(ValueError, match="unknown wide_train parts"):
        shapes.wide_parts(["blur"])
    sizes = {"train": 40}
    out = generate_world(tmp_path / "bg", seed=0, sizes=sizes, workers=1, wide_train=["backgrounds"])
    assert load_world(out)["wide_train"] == ["backgrounds"]
    # JPEG artefacts and noise are not drawn: every train scene has the training style's jpeg/noise (none)
    for i in range(40):
        style = shapes._draw_style(np.random.default_rng([0, 0, i]), "train", ["backgrounds"])
        assert style["jpeg"] is None and style["noise"] is None
        assert set(style["backgrounds"]) > set(shapes.STYLES["train"]["backgrounds"])
    every = [shapes._draw_style(np.random.default_rng([0, 0, i]), "train", True) for i in range(40)]
    assert any(st["jpeg"] for st in every) and any(st["noise"] for st in every)
    stamp = (out / "world.json").stat().st_mtime_ns
    ensure_world(out, seed=0, sizes=sizes, wide_train=("backgrounds",))  # the same world: left as it is
    assert (out / "world.json").stat().st_mtime_ns == stamp


def test_factor_style_shifts_exactly_the_named_factors():
    base_keys = ("backgrounds", "hue_offset", "rotation", "jpeg", "noise", "sides")
    for factor in shapes.SHIFT_FACTORS:
        style = shapes.factor_style(np.random.default_rng(0), [factor])
        for key in base_keys:
            expected = shapes.STYLES["shift" if key == factor else "train"][key]
            assert style[key] == expected, (factor, key)
        lo, hi = shapes.STYLES["shift"]["blur"]
        if factor == "blur":
            assert lo <= style["blur"] <= hi
        else:
            assert style["blur"] == 0 or style["blur"] <= shapes.STYLES["train"]["blur"][1]
    everything = shapes.factor_style(np.random.default_rng(0), shapes.SHIFT_FACTORS)
    assert all(everything[k] == shapes.STYLES["shift"][k] for k in base_keys)
    with pytest.raises(ValueError, match="unknown shift factors"):
        shapes.factor_style(np.random.default_rng(0), ["colour"])


def test_regenerated_world_gets_a_new_cache_name(tmp_path):
    """Image ids and files of a regenerated world (other sizes or version) must never be served the
    features another world cached under the same path."""
    from captioner.sources import shapes_source

    first = shapes_source(tmp_path, sizes={"train": 3, "val": 1}).name
    assert shapes_source(tmp_path).name == first  # the same world: the same cache
    assert shapes_source(tmp_path, sizes={"train": 2, "val": 2}).name != first


def test_a_wide_world_asked_for_is_generated_once_and_a_world_of_another_width_refused(tmp_path):
    """--shapes-wide-train (what a preset trained on the wider world gives): a missing world is generated with
    the train split asked for; an existing world of another width is refused, never regenerated over (another
    run's world and the features cached from it stay as they are); not asking uses any world as it is."""
    import argparse

    import cli
    from captioner.sources import shapes_source

    sizes = {"train": 3, "val": 1}
    wide = shapes_source(tmp_path / "wide", sizes=sizes, wide_train=True)
    assert load_world(tmp_path / "wide")["wide_train"] is True
    stamp = (tmp_path / "wide" / "world.json").stat().st_mtime_ns
    args = argparse.Namespace(data="shapes", shapes_dir=str(tmp_path / "wide"), shapes_wide_train=[],
                              karpathy_json=None, coco_captions=None)
    assert cli.data_source(args).name == wide.name  # found as asked: used, not regenerated
    assert shapes_source(tmp_path / "wide").name == wide.name  # not asked: the world as it is
    assert (tmp_path / "wide" / "world.json").stat().st_mtime_ns == stamp
    for asked, said in ((False, "none"), (["jpeg"], "jpeg")):
        with pytest.raises(ValueError, match=f"widened by: backgrounds, jpeg, noise; this run asks for {said}"):
            shapes_source(tmp_path / "wide", wide_train=asked)
    shapes_source(tmp_path / "plain", sizes=sizes)
    with pytest.raises(ValueError, match="widened by: none; this run asks for backgrounds, jpeg, noise"):
        cli.data_source(argparse.Namespace(**{**vars(args), "shapes_dir": str(tmp_path / "plain")}))
    assert (tmp_path / "wide" / "world.json").stat().st_mtime_ns == stamp


def test_a_copy_of_the_world_keeps_its_identity_but_not_its_cache(tmp_path):
    """Checkpoints record the world's identity, which leaves the folder out (a clone elsewhere trains the
    same file bit for bit); the cache name keeps it, so that an edited copy is never served stale features."""
    import shutil

    from captioner.sources import shapes_source

    here = shapes_source(tmp_path / "a", sizes={"train": 3, "val": 1})
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    there = shapes_source(tmp_path / "b")
    assert there.identity == here.identity and str(tmp_path) not in here.identity
    assert there.name != here.name
    other = shapes_source(tmp_path / "c", sizes={"train": 2, "val": 2})
    assert other.identity != here.identity


def test_relation_follows_centres():
    left = {"colour": "red", "shape": "circle", "size": "small", "bbox": [10, 100, 30, 30]}
    right = {"colour": "blue", "shape": "square", "size": "large", "bbox": [120, 90, 70, 70]}
    top = {"colour": "green", "shape": "star", "size": "small", "bbox": [60, 5, 30, 30]}
    assert shapes.relation(left, right) == "to the left of"
    assert shapes.relation(right, left) == "to the right of"
    assert shapes.relation(top, left) == "above" and shapes.relation(left, top) == "below"


def test_coco_and_karpathy_files(world):
    from pycocotools.coco import COCO
    for split in SPLITS:
        caps = COCO(str(world / "annotations" / f"captions_{split}.json"))
        inst = COCO(str(world / "annotations" / f"instances_{split}.json"))
        assert len(caps.getImgIds()) == TINY[split] and len(caps.getAnnIds()) == 5 * TINY[split]
        assert {c["name"] for c in inst.loadCats(inst.getCatIds())} == set(SHAPES)
        for img in caps.loadImgs(caps.getImgIds()):
            assert img["file_name"] == f"{split}/{img['id']:06d}.jpg"
            assert (world / "images" / img["file_name"]).is_file()
    karpathy = json.loads((world / "dataset_shapes.json").read_text())
    assert karpathy["dataset"] == "shapes" and len(karpathy["images"]) == sum(TINY.values())
    sentids = []
    for i, img in enumerate(karpathy["images"]):
        assert img["imgid"] == i and img["split"] in SPLITS and img["filepath"] == img["split"]
        assert (world / "images" / img["filepath"] / img["filename"]).is_file()
        assert img["filename"] == f"{img['cocoid']:06d}.jpg"
        assert [s["sentid"] for s in img["sentences"]] == img["sentids"]
        for s in img["sentences"]:
            assert s["tokens"] == s["raw"].split() and s["imgid"] == i
        sentids += img["sentids"]
    assert len(sentids) == len(set(sentids))


# ------------------------------------------------------------------ vocabulary

def test_constants():
    assert len(COLOURS) == 6 and len(SIZES) == 2 and len(SHAPES) >= 5
    assert NUMBER_WORDS["one"] == 1 and NUMBER_WORDS["three"] == 3
    assert plural("circle") == "circles" and plural("cross") == "crosses"
