"""evaluate.py --results: a COCO results file (caption.py --format coco) scored against a split's
references without loading a model or decoding; real files on disk, real pycocoevalcap scorers
(--no-meteor keeps them fast)."""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluate
from cli import DEFAULT_CHECKPOINT

INSTANCES = Path(__file__).resolve().parent / "data" / "coco_chair" / "instances_tiny.json"  # COCO ids 1..5

# Two references per image; each results file below is a JSON list [{"image_id", "caption"}].
REFS = {
    1: ["a man eating a hot dog at a dining table", "a person eats a hot dog sitting at a table"],
    2: ["a brown teddy bear sitting on a wooden shelf", "a stuffed teddy bear on a shelf next to books"],
    3: ["a dog lying on a couch next to a cell phone", "a small dog rests on the sofa beside a phone"],
    4: ["a woman talking on her cell phone in the street", "a woman holds a phone to her ear outside"],
    5: ["an empty kitchen with white cabinets and a window", "a clean white kitchen with a large window"],
}
UNRELATED = {
    1: "three airplanes flying over snowy mountains at dusk",
    2: "a red double decker bus parked by the river",
    3: "surfers riding big waves under a grey sky",
    4: "a plate of broccoli and rice with a fork",
    5: "giraffes walking across a dry grassland",
}
# Every caption score evaluate.py reports on COCO with --no-meteor.
CAPTION_KEYS = {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr",
                "nltk_BLEU-1", "nltk_BLEU-2", "nltk_BLEU-3", "nltk_BLEU-4"}


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> dict[str, Path]:
    """A COCO-format val split of five images (ids 1..5, those of instances_tiny.json)."""
    root = tmp_path_factory.mktemp("coco")
    images = root / "val2014"
    images.mkdir()
    for i in REFS:
        Image.new("RGB", (8, 6), (10 * i, 20, 30)).save(images / f"COCO_val2014_{i:012d}.jpg")
    captions = root / "captions_val2014.json"
    captions.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in REFS],
        "annotations": [{"id": 10 * i + k, "image_id": i, "caption": c}
                        for i, refs in REFS.items() for k, c in enumerate(refs)]}))
    return {"images": images, "captions": captions}


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """--results loads no checkpoint and decodes nothing: either would fail the test."""
    from captioner import evaluation
    from captioner.model import Captioner

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate.py --results must not load a model or decode")

    monkeypatch.setattr(Captioner, "from_checkpoint", refuse)
    monkeypatch.setattr(evaluation, "decode_split", refuse)
    monkeypatch.setattr(evaluation, "split_features", refuse)


def write_results(path: Path, captions) -> Path:
    """captions: {image_id: caption}; a str is written as it is, anything else as JSON (malformed files)."""
    data = [{"image_id": i, "caption": c} for i, c in captions.items()] if isinstance(captions, dict) else captions
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def run(coco: dict[str, Path], results: Path, out: Path, *extra) -> dict:
    return evaluate.main(["--results", str(results), "--coco-captions", f"val={coco['captions']}",
                          "--images", f"val={coco['images']}", "--split", "val", "--no-meteor", "--no-progress",
                          "--out", str(out), "--cache-dir", str(out / "cache"), *map(str, extra)])


def coco_records(coco: dict[str, Path]):
    from captioner.datasets import read_coco_captions

    return read_coco_captions(coco["captions"], coco["images"], "val")


# --- scores and what is written ----------------------------------------------------------------


def test_references_outscore_unrelated_captions_and_the_metrics_file(coco, tmp_path, capsys):
    good = write_results(tmp_path / "good.json", {i: refs[0] for i, refs in REFS.items()})
    bad = write_results(tmp_path / "bad.json", UNRELATED)
    res = run(coco, good, tmp_path / "good")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    worse = run(coco, bad, tmp_path / "bad")["metrics"]

    metrics = res["metrics"]
    assert set(metrics) == CAPTION_KEYS and res["info"]["results_file"] == str(good)
    assert metrics["BLEU-4"] > 0.9 and metrics["CIDEr"] > 1.0  # each caption is one of its references
    assert worse["BLEU-4"] < 0.1 and worse["CIDEr"] < 0.2
    assert metrics["BLEU-4"] > worse["BLEU-4"] + 0.8 and metrics["CIDEr"] > worse["CIDEr"] + 1.0

    saved = json.loads((tmp_path / "good" / "metrics_val_results.json").read_text())
    assert saved["metrics"] == pytest.approx(metrics)
    assert saved["info"]["results_file"] == str(good)
    assert saved["info"]["search"] == "not decoded here: captions read from the results file"
    assert saved["info"]["split"] == "val" and saved["info"]["dataset"].startswith("coco-")
    assert saved["info"]["tokenizer"] and saved["info"]["scorer"]
    assert saved["info"]["images"] == 5 and saved["info"]["missing_images"] == 0
    assert not {"checkpoint", "beam", "max_len", "unreadable_images"} & set(saved["info"])
    # no predictions file (the results file is that), no feature cache
    assert sorted(p.name for p in (tmp_path / "good").iterdir()) == ["metrics_val_results.json"]
    # the last stdout line is the metrics, rounded
    assert line == {k: round(v, 4) for k, v in metrics.items()} and list(line)[:4] == ["BLEU-1", "BLEU-2",
                                                                                        "BLEU-3", "BLEU-4"]


def test_results_score_as_score_outputs_does_with_coco_instances(coco, tmp_path):
    """One metrics path: the same captions give the same numbers through --results as through
    score_outputs (decoded outputs); image 4 has no caption in either, scored as empty."""
    from captioner.coco_chair import chair, load_instances
    from captioner.evaluation import score_outputs
    from captioner.model import CaptionOutput

    captions = {1: REFS[1][1], 2: "a teddy bear on a shelf", 3: "a dog on a couch with a phone", 5: UNRELATED[5]}
    res = run(coco, write_results(tmp_path / "r.json", captions), tmp_path / "ev",
              "--coco-instances", INSTANCES)

    outputs = {i: CaptionOutput(text=c, words=c.split(), score=0.0, alphas=np.zeros((len(c.split()), 1, 1)))
               for i, c in captions.items()}
    expected, expected_info = score_outputs(outputs, coco_records(coco), meteor=False)
    caption_scores = {k: v for k, v in res["metrics"].items() if k in CAPTION_KEYS}
    assert caption_scores == expected and set(expected) == CAPTION_KEYS  # the same numbers, exactly
    assert res["info"]["missing_images"] == expected_info["unreadable_images"] == 1
    assert res["info"]["missing_image_ids"] == [4] and res["info"]["missing_scored_as"] == "an empty caption"

    chair_scores, chair_info = chair({**captions, 4: ""}, load_instances(INSTANCES))
    assert {k: res["metrics"][k] for k in chair_scores} == chair_scores and res["info"]["chair"] == chair_info
    assert chair_info["mentions"] > 0


# --- missing images, ids outside the split, --max-images --------------------------------------


def test_missing_images_are_counted_and_scored_as_empty_captions(coco, tmp_path, caplog):
    some = {i: REFS[i][0] for i in (1, 3, 5)}
    with caplog.at_level(logging.WARNING, logger="evaluate"):
        res = run(coco, write_results(tmp_path / "some.json", some), tmp_path / "some")
    assert res["info"]["missing_images"] == 2 and res["info"]["missing_image_ids"] == [2, 4]
    assert res["info"]["images"] == 5
    assert any("2 of 5 images of the val split have no caption in" in r.getMessage() and "e.g. 2, 4" in r.getMessage()
               for r in caplog.records)
    explicit = run(coco, write_results(tmp_path / "empty.json", {**some, 2: "", 4: ""}), tmp_path / "empty")
    assert res["metrics"] == explicit["metrics"] and explicit["info"]["missing_images"] == 0
    full = run(coco, write_results(tmp_path / "all.json", {i: refs[0] for i, refs in REFS.items()}), tmp_path / "all")
    assert res["metrics"]["CIDEr"] < full["metrics"]["CIDEr"] and res["metrics"]["BLEU-4"] < full["metrics"]["BLEU-4"]


def test_ids_outside_the_split_are_refused_naming_them(coco, tmp_path):
    results = write_results(tmp_path / "train_results.json",
                            {1: "a dog", 2: "a cat", 391895: "a man", 522418: "a woman", 184613: "a boy"})
    pattern = (re.escape(f"{results}: 3 of its 5 image ids are not in the val split of ")
               + r"coco-\w+ \(5 images\): 184613, 391895, 522418; the wrong --split or the wrong results file\?")
    with pytest.raises(SystemExit, match=pattern):
        run(coco, results, tmp_path / "ev")
    with pytest.raises(SystemExit, match=pattern):  # --max-images does not excuse ids of no image of the split
        run(coco, results, tmp_path / "ev", "--max-images", "2")
    assert not (tmp_path / "ev").exists()


def test_max_images_ignores_the_captions_of_the_other_images(coco, tmp_path, caplog):
    results = write_results(tmp_path / "r.json", {i: refs[0] for i, refs in REFS.items()})
    with caplog.at_level(logging.INFO, logger="evaluate"):
        res = run(coco, results, tmp_path / "ev", "--max-images", "2")
    info = res["info"]
    assert info["images"] == 2 and info["missing_images"] == 0 and info["results_not_scored"] == 3
    assert "--max-images 2" in info["results_not_scored_why"]
    assert any("3 captions of" in r.getMessage() and "not scored" in r.getMessage() for r in caplog.records)
    assert res["metrics"]["BLEU-4"] > 0.9


# --- malformed files and flags that do not apply ------------------------------------------------


def test_duplicate_image_id_is_refused(coco, tmp_path):
    results = write_results(tmp_path / "dup.json", [{"image_id": i, "caption": "a dog"} for i in (1, 2, 3, 4, 5, 3)])
    with pytest.raises(SystemExit, match=re.escape(f"{results}: image_id 3 appears more than once (entries 2 and 5)")):
        run(coco, results, tmp_path / "ev")


@pytest.mark.parametrize("content, message", [
    (None, "file not found (check the --results argument)"),
    ("[{\"image_id\": 1, \"caption\": \"a dog\"}", "not valid JSON: Expecting ',' delimiter at line 1 column"),
    (b"\xff\xfe[]", "not UTF-8 text (bad byte at offset 0); is this really a results file"),
    ('{"images": [], "annotations": []}', "a JSON dict, expected a list [{\"image_id\": int, \"caption\": str}, ...] "
                                        "(the COCO results format) (it looks like a COCO annotations file"),
    ('{"1": "a dog"}', "a JSON dict, expected a list"),
    ('"a dog"', "a JSON str, expected a list"),
    ([], "an empty list, no captions to score"),
    ([{"image_id": 1, "caption": "a"}, "a dog"], "entry 1 is a JSON str, expected an object"),
    ([{"image_id": 1, "caption": "a"}, {"caption": "a dog"}], "entry 1 has no image_id, expected an integer image_id"),
    ([{"image_id": "2", "caption": "a dog"}], "entry 0 has image_id '2', expected an integer image_id"),
    ([{"image_id": 2.0, "caption": "a dog"}], "entry 0 has image_id 2.0, expected an integer image_id"),
    ([{"image_id": True, "caption": "a dog"}], "entry 0 has image_id True, expected an integer image_id"),
    ([{"image_id": 1, "caption": "a"}, {"image_id": 2}], "entry 1 (image_id 2) has no caption, expected a string"),
    ([{"image_id": 2, "caption": ["a", "dog"]}], "entry 0 (image_id 2) has caption ['a', 'dog'], expected a string"),
    ([{"image_id": 2, "caption": None}], "entry 0 (image_id 2) has caption None, expected a string caption"),
])
def test_malformed_results_files_are_refused_naming_the_file(coco, tmp_path, content, message):
    path = tmp_path / "results.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write_results(path, content)
    with pytest.raises(SystemExit, match=re.escape(f"{path}: {message}")):
        run(coco, path, tmp_path / "ev")
    assert not (tmp_path / "ev").exists()


def test_a_folder_is_refused(coco, tmp_path):
    with pytest.raises(SystemExit, match=re.escape(f"{tmp_path}: is a directory, expected a results file")):
        run(coco, tmp_path, tmp_path / "ev")


@pytest.mark.parametrize("flags, named", [
    (["--checkpoint", "runs/x/best.pt"], "--checkpoint does not apply"),
    (["--beam", "1"], "--beam does not apply"),
    (["--checkpoint", str(DEFAULT_CHECKPOINT), "--beam", "3"], "--checkpoint and --beam do not apply"),
])
def test_checkpoint_and_beam_are_refused_with_results(flags, named, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.parse_args(["--results", "r.json", *flags])
    assert e.value.code == 2
    assert f"{named} to --results: a results file is scored as it is" in capsys.readouterr().err


def test_without_results_checkpoint_and_beam_are_as_before(capsys):
    args = evaluate.parse_args([])
    assert args.results is None and args.checkpoint == str(DEFAULT_CHECKPOINT) and args.beam == 3
    args = evaluate.parse_args(["--checkpoint", "runs/x/best.pt", "--beam", "5"])
    assert args.checkpoint == "runs/x/best.pt" and args.beam == 5
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--beam", "0"])
    assert "--beam must be between 1 and 20" in capsys.readouterr().err


# --- the shapes world: its scores from a results file, without grounding -------------------------


def test_shapes_world_scores_from_a_results_file_without_grounding(tmp_path, capsys):
    from captioner.scene_metrics import shapes_scores
    from captioner.sources import shapes_source
    from tiny import make_world

    world = make_world(tmp_path / "w", seed=3, sizes={"train": 0, "val": 0, "test": 4, "test_novel": 0})
    source = shapes_source(world)
    records = source.split("test")
    captions = {r.image_id: r.captions[0] for r in records[:3]}  # the last image has no caption: missing
    results = write_results(tmp_path / "r.json", captions)
    out = tmp_path / "ev"
    res = evaluate.main(["--results", str(results), "--shapes-dir", str(world), "--split", "test", "--no-meteor",
                         "--no-progress", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics, info = res["metrics"], res["info"]

    preds = {r.image_id: captions.get(r.image_id, "") for r in records}
    expected, _ = shapes_scores(preds, None, None, source.objects["test"], source.image_sizes["test"])
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, nan_ok=True)
    assert metrics["scene_accuracy"] == pytest.approx(3 / 4)  # the references name their scenes' objects
    assert metrics["object_recall"] < 1.0 and metrics["CHAIR_i"] == 0.0
    for key in ("relation_accuracy", "relation_rate", "position_accuracy", "CHAIR_s", "count_error_rate"):
        assert key in metrics
    # grounding needs attention, which a results file has not: absent, and info says so
    assert not {"grounding", "grounding_chance"} & set(metrics) and "grounding" not in line
    assert info["grounding"].startswith("not measured: the captions came without attention maps")
    assert "grounding_words" not in info
    assert info["missing_images"] == 1 and info["missing_image_ids"] == [records[3].image_id]
    saved = json.loads((out / "metrics_test_results.json").read_text())
    assert "grounding" not in saved["metrics"] and saved["info"]["scene_accuracy_by_objects"]
    assert all(v is None or math.isfinite(v) for v in saved["metrics"].values())
    assert not (tmp_path / "cache").exists()
