"""captioner.coco_chair: the synonym table, the caption parser, the instances reader, CHAIR, evaluate.py's flag."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from captioner.coco_chair import (
    COCO_CATEGORIES,
    SYNONYMS,
    caption_objects,
    chair,
    load_instances,
    phrase_index,
    synonym_forms,
)
from captioner.datasets import DatasetError

DATA = Path(__file__).resolve().parent / "data" / "coco_chair"
INSTANCES = DATA / "instances_tiny.json"

# instances_tiny.json (COCO ids: person 1, dog 18, hot dog 58, dining table 67, cell phone 77, teddy bear 88;
# bear 23 and couch 63 are listed but annotated nowhere):
#   1: person (twice), hot dog, dining table    2: teddy bear    3: dog, cell phone
#   4: person, cell phone                       5: nothing (no annotations)
# Captions, their mentions (H = hallucinated) and the annotated categories they recall:
#   1 "A man eating a hot dog at a table."        person, hot dog, dining table     3 mentions, 0 H; recalls 3 of 3
#   2 "a dog sleeping next to a teddy bear, another dog watches"
#                                                 dog H, teddy bear, dog H          3 mentions, 2 H; recalls 1 of 1
#   3 "A dog and another dog on a couch."         dog, dog, couch H                 3 mentions, 1 H; recalls 1 of 2
#   4 "a woman talking on her cell-phone"         person, cell phone                2 mentions, 0 H; recalls 2 of 2
#   5 "a hot dog and a dog on an empty table"     hot dog H, dog H, dining table H  3 mentions, 3 H; recalls 0 of 0
#  99 "a dog on a bed"                            image 99 is not in the file: skipped
# CHAIR_i = (0+2+1+0+3) / (3+3+3+2+3) = 6/14 = 3/7; CHAIR_s = 3 captions (2, 3, 5) of 5 = 0.6;
# coco_object_recall = (3+1+1+2+0) / (3+1+2+2+0) = 7/8; dog is hallucinated 3 times (twice in caption 2).
PREDICTIONS = {
    1: "A man eating a hot dog at a table.",
    2: "a dog sleeping next to a teddy bear, another dog watches",
    3: "A dog and another dog on a couch.",
    4: "a woman talking on her cell-phone",
    5: "a hot dog and a dog on an empty table",
    99: "a dog on a bed",
}


# --- the synonym table ---------------------------------------------------------------------------


def test_the_table_covers_the_80_categories_each_named_by_itself():
    assert len(COCO_CATEGORIES) == 80 and len(set(COCO_CATEGORIES)) == 80
    assert set(SYNONYMS) == set(COCO_CATEGORIES)
    for category in COCO_CATEGORIES:
        assert category in synonym_forms(category), category
        assert caption_objects(f"there is a {category} here") == [category], category


def test_no_word_or_phrase_names_two_categories():
    owner: dict[str, str] = {}
    for category in COCO_CATEGORIES:
        for form in synonym_forms(category):
            assert owner.setdefault(form, category) == category, f"{form!r}: {owner[form]} and {category}"
    index = phrase_index()  # builds the qualifier and NOT_OBJECTS phrases too: raises on a conflict
    assert all(index[tuple(form.split())] == category for form, category in owner.items())


def test_a_conflict_in_the_table_is_refused(monkeypatch):
    phrase_index.cache_clear()
    monkeypatch.setitem(SYNONYMS, "bear", ("bear", "puppy"))  # puppy is a dog's
    try:
        with pytest.raises(ValueError, match="'puppy' names both 'dog' and 'bear'"):
            phrase_index()
    finally:
        monkeypatch.undo()
        phrase_index.cache_clear()
    assert phrase_index()[("puppy",)] == "dog"


def test_plurals_regular_and_irregular():
    person = synonym_forms("person")
    for word in ("people", "men", "women", "children", "babies", "ladies", "policemen", "players", "guys"):
        assert word in person, word
    assert {"mice"} <= set(synonym_forms("mouse"))
    assert {"knives"} <= set(synonym_forms("knife"))
    assert {"geese", "ponies"} <= set(synonym_forms("bird")) | set(synonym_forms("horse"))
    assert {"oxen", "calves", "cattle"} <= set(synonym_forms("cow"))
    assert {"buses", "busses"} <= set(synonym_forms("bus"))
    assert {"sandwiches", "hamburgers"} <= set(synonym_forms("sandwich"))
    assert {"wine glasses", "glasses of wine"} <= set(synonym_forms("wine glass"))
    assert {"hot dogs", "teddy bears", "dining tables", "cell phones"} <= (
        set(synonym_forms("hot dog")) | set(synonym_forms("teddy bear")) | set(synonym_forms("dining table"))
        | set(synonym_forms("cell phone")))
    assert synonym_forms("sheep") == ("sheep", "lamb", "lambs", "ram", "rams", "ewe", "ewes", "goat", "goats")
    assert "scissorses" not in synonym_forms("scissors") and "skis" in synonym_forms("skis")
    assert caption_objects("Men, women and children feed the puppies") == ["person", "person", "person", "dog"]


# --- the caption parser --------------------------------------------------------------------------


@pytest.mark.parametrize("caption, expected", [
    ("a man eating a hot dog", ["person", "hot dog"]),  # not a dog
    ("two hot dogs on a plate", ["hot dog"]),
    ("a hotdog and a dog", ["hot dog", "dog"]),
    ("a child hugging a teddy bear", ["person", "teddy bear"]),  # not a bear
    ("teddy bears and a real bear", ["teddy bear", "bear"]),
    ("a man riding a motor bike", ["person", "motorcycle"]),  # not a bicycle
    ("a dirt bike next to a bike", ["motorcycle", "bicycle"]),
    ("a catcher's mitt", ["baseball glove"]),  # "catcher" "s" "mitt": the longest phrase wins over catcher
    ("a baseball glove and a baseball bat", ["baseball glove", "baseball bat"]),
    ("a woman wearing gloves", ["person"]),  # a glove alone is not a baseball glove
    ("a baby elephant with its mother", ["elephant", "person"]),
    ("a baby in a high chair", ["person", "chair"]),
    ("a pickup truck and a pit bull terrier", ["truck", "dog"]),  # compounds of two synonyms count once
    ("a microwave oven above the stove top oven", ["microwave", "oven"]),
    ("a toilet seat next to the sink", ["toilet", "sink"]),  # a toilet seat is not a chair
    ("a passenger jet on the runway", ["airplane"]),
    ("a skier on a ski slope, skis on his shoulder", ["person", "skis"]),
    ("HOT-DOG!!! With a Dog.", ["hot dog", "dog"]),  # case, punctuation, hyphen
    ("a dog, a dog and a dog", ["dog", "dog", "dog"]),  # one entry per mention
    ("", []),
    ("a view of the mountains at sunset", []),
])
def test_caption_objects(caption, expected):
    assert caption_objects(caption) == expected


# --- the instances reader ------------------------------------------------------------------------


def test_load_instances_reads_the_categories_of_each_image():
    assert load_instances(INSTANCES) == {
        1: {"person", "hot dog", "dining table"}, 2: {"teddy bear"}, 3: {"dog", "cell phone"},
        4: {"person", "cell phone"}, 5: set(),
    }


def test_load_instances_prints_nothing(capsys):
    load_instances(INSTANCES)
    assert capsys.readouterr().out == ""  # pycocotools' "creating index..." is silenced


def test_load_instances_numbers_annotations_without_ids(tmp_path):
    data = json.loads(INSTANCES.read_text())
    for ann in data["annotations"]:
        del ann["id"]
    path = tmp_path / "no_ids.json"
    path.write_text(json.dumps(data))
    assert load_instances(path) == load_instances(INSTANCES)


def _broken(tmp_path: Path, change) -> Path:
    data = json.loads(INSTANCES.read_text())
    change(data)
    path = tmp_path / "broken_instances.json"
    path.write_text(json.dumps(data))
    return path


def test_load_instances_errors_name_the_file(tmp_path):
    missing = tmp_path / "instances_missing.json"
    with pytest.raises(DatasetError, match=r"instances_missing\.json: file not found"):
        load_instances(missing)
    with pytest.raises(ValueError, match=r"broken_instances\.json: missing top-level key 'annotations'"):
        load_instances(_broken(tmp_path, lambda d: d.pop("annotations")))
    with pytest.raises(ValueError, match=r"broken_instances\.json: missing top-level key 'categories'"):
        load_instances(_broken(tmp_path, lambda d: d.pop("categories")))
    with pytest.raises(ValueError, match=r"broken_instances\.json: annotations\[0\] .*category_id 999"):
        load_instances(_broken(tmp_path, lambda d: d["annotations"][0].update(category_id=999)))
    with pytest.raises(ValueError, match=r"broken_instances\.json: annotations\[1\] .*'image_id'"):
        load_instances(_broken(tmp_path, lambda d: d["annotations"][1].pop("image_id")))
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        load_instances(bad)


# --- CHAIR ---------------------------------------------------------------------------------------


def test_chair_on_hand_computed_captions():
    scores, info = chair(PREDICTIONS, load_instances(INSTANCES))
    assert scores["CHAIR_i"] == pytest.approx(3 / 7)
    assert scores["CHAIR_s"] == pytest.approx(0.6)
    assert scores["coco_object_recall"] == pytest.approx(7 / 8)
    assert {k: info[k] for k in ("captions", "mentions", "hallucinated_mentions", "hallucinated_captions",
                                 "objects_annotated", "objects_recalled", "skipped_no_instances")} == {
        "captions": 5, "mentions": 14, "hallucinated_mentions": 6, "hallucinated_captions": 3,
        "objects_annotated": 8, "objects_recalled": 7, "skipped_no_instances": 1}
    assert info["skipped_image_ids"] == [99]
    assert info["most_hallucinated"] == {"dog": 3, "couch": 1, "hot dog": 1, "dining table": 1}
    assert "every mention counts" in info["description"] and "instance annotations" in info["description"]


def test_chair_references_add_to_the_ground_truth():
    objects = load_instances(INSTANCES)
    scores, info = chair(PREDICTIONS, objects, references={3: ["a dog lying on a couch"]})
    assert info["hallucinated_mentions"] == 5 and info["hallucinated_captions"] == 2  # caption 3's couch is no error
    assert scores["CHAIR_i"] == pytest.approx(5 / 14) and scores["CHAIR_s"] == pytest.approx(0.4)
    assert scores["coco_object_recall"] == pytest.approx(7 / 8)  # recall stays over the annotated categories
    assert "reference captions" in info["description"]


def test_chair_nan_when_nothing_to_divide():
    scores, info = chair({1: "a view of the sky", 7: "a dog"}, {1: set()})
    assert math.isnan(scores["CHAIR_i"]) and math.isnan(scores["coco_object_recall"])
    assert scores["CHAIR_s"] == 0.0 and info["mentions"] == 0 and info["skipped_no_instances"] == 1
    scores, info = chair({7: "a dog"}, {1: {"dog"}})
    assert all(math.isnan(v) for v in scores.values()) and info["captions"] == 0


# --- evaluate.py --coco-instances ----------------------------------------------------------------


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def test_evaluate_coco_instances_flag(tmp_path, capsys):
    """The demo checkpoint on three COCO-format images; image 103 has no entry in the instances file."""
    import numpy as np
    from PIL import Image

    import evaluate
    from cli import DEFAULT_CHECKPOINT

    images = tmp_path / "val2014"
    images.mkdir()
    rng = np.random.default_rng(0)
    ids = [101, 102, 103]
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    captions = tmp_path / "captions_val.json"
    captions.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in ids],
        "annotations": [{"id": n, "image_id": i, "caption": "a red circle above a blue square"}
                        for n, i in enumerate(ids)]}))
    instances = tmp_path / "instances_val.json"
    instances.write_text(json.dumps({
        "images": [{"id": 101, "file_name": "101.jpg"}, {"id": 102, "file_name": "102.jpg"}],
        "annotations": [{"id": 1, "image_id": 101, "category_id": 1}, {"id": 2, "image_id": 102, "category_id": 55}],
        "categories": [{"id": 1, "name": "person"}, {"id": 55, "name": "orange"}]}))
    out = tmp_path / "ev"
    args = ["--checkpoint", str(DEFAULT_CHECKPOINT), "--coco-captions", f"val={captions}", "--images",
            f"val={images}", "--split", "val", "--beam", "1", "--no-meteor", "--device", "cpu", "--no-progress",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache")]

    res = evaluate.main(args + ["--coco-instances", str(instances)])
    metrics, info = res["metrics"], res["info"]
    predictions = {p["image_id"]: p["caption"] for p in json.loads((out / "predictions_val_beam1.json").read_text())}
    assert sorted(predictions) == ids
    expected, expected_info = chair(predictions, load_instances(instances))
    for key in ("CHAIR_i", "CHAIR_s", "coco_object_recall"):
        assert _same(metrics[key], expected[key]), (key, metrics[key], expected[key])
    assert info["chair"] == expected_info
    assert info["chair"]["captions"] == 2 and info["chair"]["skipped_no_instances"] == 1
    assert info["chair"]["skipped_image_ids"] == [103]
    saved = json.loads((out / "metrics_val_beam1.json").read_text())
    assert {"CHAIR_i", "CHAIR_s", "coco_object_recall"} <= set(saved["metrics"]) and "chair" in saved["info"]
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "CHAIR_s" in line and line["CHAIR_s"] == pytest.approx(expected["CHAIR_s"], abs=1e-4)

    # A bad path fails at once, naming the file and the flag (before any model is loaded).
    with pytest.raises(DatasetError, match=r"nope\.json: file not found \(check the --coco-instances argument\)"):
        evaluate.main(args + ["--coco-instances", str(tmp_path / "nope.json")])
    # Without the flag there are no CHAIR scores.
    assert "CHAIR_i" not in evaluate.main(args)["metrics"]


def test_importing_the_module_loads_neither_pycocotools_nor_torch():
    import subprocess
    import sys

    code = "import sys, captioner.coco_chair; print(sorted({'pycocotools', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


def test_evaluate_refuses_coco_instances_on_the_shapes_world(tmp_path):
    """The shapes world measures CHAIR exactly from its objects; COCO's CHAIR would overwrite those keys."""
    import evaluate
    from tiny import make_world

    world = make_world(tmp_path / "w", seed=3, sizes={"train": 0, "val": 0, "test": 2, "test_novel": 0})
    with pytest.raises(SystemExit, match="--coco-instances is for COCO images"):
        evaluate.main(["--shapes-dir", str(world), "--coco-instances", str(INSTANCES), "--no-progress",
                       "--out", str(tmp_path / "ev"), "--cache-dir", str(tmp_path / "cache")])
    assert not (tmp_path / "cache").exists()  # refused before any feature was computed
