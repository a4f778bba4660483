"""The COCO dress rehearsal, tiny: bench/coco_world.py writes a few hundred images in COCO 2014's layout,
and the README's COCO sequence runs on it through each script's main(argv), as a user runs them:
extract_features.py, one epoch of train.py --karpathy-json, evaluate.py on Karpathy test, caption.py
--format coco over val2014 scored by evaluate.py --results, and train.py --coco-captions.
bench/coco_scale.py runs the same sequence at COCO's size and measures it (README)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import caption
import evaluate
import extract_features
import train
from captioner.datasets import read_coco_captions, read_karpathy

ROOT = Path(__file__).resolve().parents[1]
SCALE = 0.002  # 166 train2014 + 81 val2014 images; Karpathy val and test 10 each


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


coco_world = _load("coco_world")
coco_scale = _load("coco_scale")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coco") / "data"
    coco_world.generate(out, scale=SCALE, seed=0, workers=2)
    return out


def _digest(folder: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "coco_world.json":  # it records the time taken
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_counts_follow_coco_at_any_scale():
    full = coco_world.counts(1.0)
    assert (full["train2014"], full["val2014"]) == (82_783, 40_504)
    assert (full["train"], full["val"], full["test"], full["restval"]) == (113_287, 5_000, 5_000, 30_504)
    tenth = coco_world.counts(0.1)
    assert (tenth["train2014"], tenth["val2014"], tenth["val"], tenth["test"]) == (8_278, 4_050, 500, 500)
    with pytest.raises(ValueError, match="scale"):
        coco_world.counts(0)


def test_layout_and_formats(world):
    n = coco_world.counts(SCALE)
    made = json.loads((world / "coco_world.json").read_text())
    assert made["scale"] == SCALE and made["images"] == n
    for part in coco_world.PARTS:
        files = sorted((world / part).iterdir())
        assert len(files) == n[part]
        assert all(f.name.startswith(f"COCO_{part}_") and len(f.stem.split("_")[-1]) == 12 for f in files)
    # The official caption files, read by the project's reader and by pycocotools
    for part, split in (("train2014", "train"), ("val2014", "val")):
        ann = world / "annotations" / f"captions_{part}.json"
        records = read_coco_captions(ann, world / part, split)
        assert len(records) == n[part]
        per_image = Counter(len(r.captions) for r in records)
        assert set(per_image) <= {5, 6, 7} and per_image[5] >= 0.9 * len(records)
        coco = COCO(str(ann))
        assert len(coco.getImgIds()) == n[part]
        inst = COCO(str(world / "annotations" / f"instances_{part}.json"))
        for img in inst.loadImgs(inst.getImgIds()[:20]):  # boxes inside the image, in its pixels
            for a in inst.loadAnns(inst.getAnnIds(imgIds=img["id"])):
                x, y, w, h = a["bbox"]
                assert 0 <= x and 0 <= y and x + w <= img["width"] + 0.5 and y + h <= img["height"] + 0.5
            with Image.open(world / part / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) and im.mode in ("RGB", "L")
    # Karpathy's file: restval merged into train by the reader, as for COCO
    splits = read_karpathy(world / "dataset_coco.json", world)
    assert {s: len(r) for s, r in splits.items()} == {"train": n["train"], "val": n["val"], "test": n["test"]}
    raw = json.loads((world / "dataset_coco.json").read_text())["images"]
    assert Counter(e["split"] for e in raw)["restval"] == n["restval"]
    assert {e["filepath"] for e in raw if e["split"] in ("val", "test", "restval")} == {"val2014"}
    for e in raw[:50]:
        for s in e["sentences"]:
            assert s["tokens"] == s["raw"].lower().rstrip(" .").split()
    ids = [e["cocoid"] for e in raw]
    assert len(set(ids)) == len(ids) and max(ids) <= coco_world.MAX_COCO_ID


def test_caption_statistics(world):
    stats = json.loads((world / "coco_world.json").read_text())["stats"]
    assert 9.8 <= stats["caption_length_mean"] <= 11.2  # COCO: about 10.5
    assert 1.8 <= stats["caption_length_sd"] <= 3.2
    assert stats["karpathy_train_words_min5"] > 100  # shapes words + the commonest fillers
    # COCO's Karpathy train has about 9,500 words seen 5 times: what the filler words give at full size,
    # from this small world's filler words per caption (version 2 changed that share and fell to 7,077)
    shapes_words = coco_world.shapes_vocabulary()
    train = [s["tokens"] for e in json.loads((world / "dataset_coco.json").read_text())["images"]
             if e["split"] in ("train", "restval") for s in e["sentences"]]
    per_caption = sum(t not in shapes_words for c in train for t in c) / len(train)
    assert 8_800 <= coco_world.expected_words_min5(per_caption) + len(shapes_words) <= 10_200, per_caption


def test_a_caption_too_short_for_the_scene_still_names_its_objects():
    coco_world._init_worker(coco_world.filler_words(1000, set()))
    objects = [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "star"}]
    too_long = [" ".join(["word"] * 40)]  # no caption of the scene fits any drawn length
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(200):
        raw, tokens = coco_world._caption(rng, too_long, coco_world._compact(objects))
        lengths.add(len(tokens))
        if len(tokens) >= 7:  # the list fits: it is said (version 1 said only "two shapes")
            assert tokens[:7] == "a red circle and a blue star".split(), raw
        else:
            assert tokens[:2] == ["two", "shapes"], raw
    assert min(lengths) == 6 and max(lengths) > 7


def test_deterministic_whatever_the_workers(world, tmp_path):
    again = coco_world.generate(tmp_path / "again", scale=SCALE, seed=0, workers=1)
    assert again["stats"] == json.loads((world / "coco_world.json").read_text())["stats"]
    assert _digest(tmp_path / "again") == _digest(world)
    # and ensure() reuses a complete dataset instead of writing it again
    before = (tmp_path / "again" / "coco_world.json").stat().st_mtime_ns
    coco_world.ensure(tmp_path / "again", scale=SCALE, seed=0, workers=1)
    assert (tmp_path / "again" / "coco_world.json").stat().st_mtime_ns == before


def test_readme_sequence_end_to_end(world, tmp_path, capsys):
    cache, runs = str(tmp_path / "cache"), tmp_path / "runs"
    karpathy = ["--karpathy-json", str(world / "dataset_coco.json"), "--images", str(world)]
    n = coco_world.counts(SCALE)

    report = extract_features.main([*karpathy, "--splits", "train,val,test", "--cache-dir", cache,
                                    "--device", "cpu", "--no-progress"])
    assert {s: (r["images"], r["failed"]) for s, r in report.items()} == {
        "train": (n["train"], 0), "val": (n["val"], 0), "test": (n["test"], 0)}

    summary = train.main([*karpathy, "--out", str(runs / "karpathy"), "--cache-dir", cache, "--epochs", "1",
                          "--batch-size", "32", "--device", "cpu", "--no-progress"])
    assert summary["epochs_run"] == 1 and (runs / "karpathy" / "best.pt").exists()
    config = (runs / "karpathy" / "config.yaml").read_text()
    assert "karpathy_json" in config

    best = str(runs / "karpathy" / "best.pt")
    evaluated = evaluate.main(["--checkpoint", best, *karpathy, "--split", "test", "--cache-dir", cache,
                               "--out", str(runs / "eval"), "--no-meteor", "--no-progress"])
    assert evaluated["info"]["images"] == n["test"] and evaluated["info"]["unreadable_images"] == 0
    assert 0 <= evaluated["metrics"]["CIDEr"] and 0 <= evaluated["metrics"]["BLEU-4"] <= 1

    results = runs / "results_val2014.json"
    assert caption.main([str(world / "val2014"), "--checkpoint", best, "--format", "coco", "--image-ids",
                         str(world / "annotations" / "captions_val2014.json"), "--out", str(results),
                         "--workers", "0", "--no-progress"]) == 0
    made = json.loads(results.read_text())
    val_ids = {r.image_id for r in read_coco_captions(world / "annotations" / "captions_val2014.json",
                                                      world / "val2014", "val")}
    assert sorted(r["image_id"] for r in made) == sorted(val_ids)
    # One model, one transform: the captions caption.py makes from the images are the ones
    # evaluate.py made from the cached (fp16) features, for the Karpathy test images among them.
    decoded = {p["image_id"]: p["caption"] for p in
               json.loads((runs / "eval" / "predictions_test_beam3.json").read_text())}
    from_images = {r["image_id"]: r["caption"] for r in made}
    same = sum(from_images[i] == c for i, c in decoded.items())
    assert same >= 0.8 * len(decoded), (same, len(decoded))

    capsys.readouterr()
    scored = evaluate.main(["--results", str(results), "--coco-captions",
                            f"val={world / 'annotations' / 'captions_val2014.json'}",
                            "--images", f"val={world / 'val2014'}", "--split", "val",
                            "--out", str(runs / "score"), "--no-meteor"])
    assert scored["info"]["images"] == n["val2014"] and scored["info"]["missing_images"] == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["CIDEr"] == pytest.approx(
        scored["metrics"]["CIDEr"], abs=1e-4)

    official = train.main(["--coco-captions", f"train={world / 'annotations' / 'captions_train2014.json'}",
                           "--coco-captions", f"val={world / 'annotations' / 'captions_val2014.json'}",
                           "--images", f"train={world / 'train2014'}", "--images", f"val={world / 'val2014'}",
                           "--out", str(runs / "coco2014"), "--cache-dir", cache, "--epochs", "1",
                           "--batch-size", "32", "--device", "cpu", "--no-progress"])
    assert official["epochs_run"] == 1 and (runs / "coco2014" / "best.pt").exists()


def test_rehearsal_measures_memory_and_disk(tmp_path):
    """bench/coco_scale.py's measurement: a child that holds 300 MB and writes 5 MB is seen doing so."""
    script = ("import time, numpy as np\n"
              "a = np.ones(300 * 2**20, dtype=np.uint8)\n"
              f"open({str(tmp_path / 'w' / 'f.bin')!r}, 'wb').write(bytes(5 * 2**20))\n"
              "time.sleep(1.0)\n")
    (tmp_path / "w").mkdir()
    result = coco_scale.run_measured([sys.executable, "-c", script], tmp_path / "log.txt", [tmp_path / "w"])
    assert result["exit_code"] == 0
    assert result["peak_rss_main_mb"] >= 300 and result["peak_anon_main_mb"] >= 290 and result["peak_pss_all_mb"] >= 290
    assert result["peak_pss_anon_all_mb"] >= 290
    assert result["disk_added_mb"] == 5
    failed = coco_scale.run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log2.txt", [])
    assert failed["exit_code"] == 3
