"""caption.py end to end: real files on disk, the bundled demo model, a real SIGKILL."""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

import caption
from cli import DEFAULT_CHECKPOINT
from procs import kill_when

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from captioner import shapes

    root = tmp_path_factory.mktemp("world")
    shapes.generate_world(root, seed=1, sizes={"train": 0, "val": 0, "test": 10, "test_novel": 0}, workers=1)
    return root


@pytest.fixture(scope="module")
def images(world) -> list[Path]:
    return sorted((world / "images" / "test").glob("*.jpg"))


@pytest.fixture(scope="module")
def model():
    from captioner.model import Captioner

    return Captioner.from_checkpoint(DEFAULT_CHECKPOINT)


def run(*args) -> int:
    return caption.main([str(a) for a in args] + ["--no-progress"])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def good_run(images, tmp_path_factory):
    """The first 6 images as a folder, with beams and attention figures."""
    base = tmp_path_factory.mktemp("good")
    folder = base / "in"
    folder.mkdir()
    for p in images[:6]:
        shutil.copy(p, folder / p.name)
    out = base / "captions.jsonl"
    rc = run(folder, "--out", out, "--beams-out", "--attention-dir", base / "att",
             "--batch-size", "4", "--workers", "1")
    return rc, out, base / "att", sorted(folder.glob("*.jpg"))


def test_all_good_exit_0_and_same_captions_as_one_at_a_time(good_run, model):
    rc, out, _, paths = good_run
    assert rc == 0
    recs = read_jsonl(out)
    assert [r["path"] for r in recs] == [str(p) for p in paths]  # sorted, absolute
    for r, p in zip(recs, paths):
        alone = model.caption([p], beam_size=3)[0]
        assert r["caption"] == alone.text and r["score"] == pytest.approx(alone.score, abs=1e-3)
        assert r["beams"][0][0] == r["caption"] and len(r["beams"]) <= 3


def test_attention_dir_has_one_png_per_image(good_run):
    from PIL import Image

    _, _, att, paths = good_run
    pngs = sorted(att.glob("*.png"))
    assert len(pngs) == len(paths) and {p.name for p in pngs} == {caption.attention_png(str(p)) for p in paths}
    with Image.open(pngs[0]) as im:
        assert im.format == "PNG" and im.width > 160


def test_refuses_to_overwrite(good_run, capsys):
    _, out, _, paths = good_run
    before = out.read_bytes()
    assert run(paths[0], "--out", out) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    other = out.with_name("again.jsonl")
    other.write_text("old\n")
    assert run(paths[0], "--out", other, "--overwrite") == 0
    assert [r["path"] for r in read_jsonl(other)] == [str(paths[0])]


def test_mixed_folder_errors_are_records(images, tmp_path, capsys):
    folder = tmp_path / "mixed"
    (folder / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(images[0], folder / "a.jpg")
    shutil.copy(images[1], folder / "nested" / "deeper" / "b.JPG")
    data = images[2].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.md").write_text("ignored: not an image extension")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n\nmissing.jpg\n{images[3]}\nmixed/a.jpg\n")  # a.jpg again: kept once
    out = tmp_path / "out.jsonl"
    rc = run(folder, listing, "--out", out, "--workers", "1", "--batch-size", "3", "--attention-dir", tmp_path / "att")
    assert rc == 2
    recs = {Path(r["path"]).name: r for r in read_jsonl(out)}
    assert len(read_jsonl(out)) == len(recs) == 7
    assert {n for n, r in recs.items() if "caption" in r} == {"a.jpg", "b.JPG", images[3].name}
    assert "truncated" in recs["truncated.jpg"]["error"]
    assert "text.jpg" in recs["text.jpg"]["error"] and "not a recognised image" in recs["text.jpg"]["error"]
    assert "empty" in recs["empty.png"]["error"]
    assert "file not found" in recs["missing.jpg"]["error"]
    assert recs["missing.jpg"]["path"] == str(tmp_path / "missing.jpg")  # relative to the list file
    assert len(list((tmp_path / "att").glob("*.png"))) == 3  # one figure per captioned image
    err = capsys.readouterr().err
    assert "3 captioned, 4 failed" in err and "images/s" in err and err.count("failed: ") == 4


def test_input_matching_nothing_is_an_error_before_any_work(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "nope.jpg", tmp_path / "empty", str(tmp_path / "*.png")):
        assert run(bad, "--out", tmp_path / "o.jsonl") == 2
        assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_expand_inputs_order_and_dedup(tmp_path):
    for name in ("b/2.png", "b/1.jpg", "a/z.jpeg", "a/.hidden.jpg", "c.txt.jpg", "skip.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("b/1.jpg\na/z.jpeg\n")
    got = caption.expand_inputs([str(tmp_path / "b"), str(tmp_path / "list.txt"), str(tmp_path / "**" / "*.jpg"),
                                 str(tmp_path / "c.txt.jpg")])
    rel = [os.path.relpath(p, tmp_path) for p in got]
    assert rel == ["b/1.jpg", "b/2.png", "a/z.jpeg", "c.txt.jpg"]


def test_image_ids(tmp_path):
    assert caption.image_id("/x/COCO_val2014_000000391895.jpg", None) == 391895
    assert caption.image_id("000123.jpg", None) == 123 and caption.image_id("cat.jpg", None) is None
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 7, "file_name": "val/a.jpg"}], "annotations": []}))
    karpathy = tmp_path / "k.json"
    karpathy.write_text(json.dumps({"images": [{"filename": "b.jpg", "imgid": 0, "cocoid": 42},
                                               {"filename": "c.jpg", "imgid": 3}]}))
    assert caption.load_image_ids(str(coco)) == {"a.jpg": 7}
    assert caption.load_image_ids(str(karpathy)) == {"b.jpg": 42, "c.jpg": 3}
    # the readers' rules and messages: a COCO id that is not an integer, an id given twice
    coco.write_text(json.dumps({"images": [{"id": "7", "file_name": "a.jpg"}]}))
    with pytest.raises(caption.InputError, match=r"images\[0\] field 'id' is '7', expected an integer"):
        caption.load_image_ids(str(coco))
    karpathy.write_text(json.dumps({"images": [{"filename": "b.jpg", "cocoid": 5}, {"filename": "c.jpg", "imgid": 5}]}))
    with pytest.raises(caption.InputError, match="image id 5 appears twice"):
        caption.load_image_ids(str(karpathy))


def test_image_ids_agree_with_the_readers(world):
    from captioner.datasets import read_karpathy

    ids = caption.load_image_ids(str(world / "dataset_shapes.json"))
    records = [r for rs in read_karpathy(world / "dataset_shapes.json", world / "images").values() for r in rs]
    assert ids == {Path(r.path).name: r.image_id for r in records}


def test_every_format_parses_and_coco_scores(world, images, tmp_path):
    from captioner.metrics import coco_caption_scores

    paths = images[:5]
    listing = tmp_path / "l.txt"
    listing.write_text("\n".join(map(str, paths)) + f"\n{tmp_path / 'gone.jpg'}\n")
    assert run(listing, "--out", tmp_path / "c.csv", "--batch-size", "8", "--workers", "0") == 2
    with open(tmp_path / "c.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "caption", "score", "error"] and len(rows) == 6
    assert all(r["caption"] and float(r["score"]) <= 0 and not r["error"] for r in rows[:5])
    assert rows[5]["error"] and not rows[5]["caption"]

    # coco: ids from the world's annotations (file_name "test/000001.jpg" -> basename)
    ann = world / "annotations" / "captions_test.json"
    out = tmp_path / "results.json"
    assert run(listing, "--format", "coco", "--out", out, "--image-ids", ann, "--workers", "0") == 2
    results = json.loads(out.read_text())
    data = json.loads(ann.read_text())
    id_of = {Path(im["file_name"]).name: im["id"] for im in data["images"]}
    assert [r["image_id"] for r in results] == [id_of[p.name] for p in paths]
    journal = read_jsonl(Path(str(out) + ".partial.jsonl"))
    assert len(journal) == 6 and sum("error" in r for r in journal) == 1
    refs = {}
    for a in data["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    preds = {r["image_id"]: r["caption"] for r in results}
    scores, _ = coco_caption_scores(preds, {i: refs[i] for i in preds}, meteor=False, metrics=["BLEU-1", "CIDEr"])
    assert scores["BLEU-1"] > 0.5  # the demo model describes its own world

    # without --image-ids the number in the file name is the id; a name without one is an error record
    shutil.copy(paths[0], tmp_path / "noid.jpg")
    out2 = tmp_path / "r2.json"
    assert run(paths[0], paths[1], tmp_path / "noid.jpg", "--out", out2, "--workers", "0") == 2
    assert [r["image_id"] for r in json.loads(out2.read_text())] == [int(paths[0].stem), int(paths[1].stem)]
    errors = [r for r in read_jsonl(Path(str(out2) + ".partial.jsonl")) if "error" in r]
    assert len(errors) == 1 and "no image id" in errors[0]["error"] and errors[0]["path"].endswith("noid.jpg")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_after_sigkill_and_a_torn_line(images, tmp_path, fmt):
    out = tmp_path / f"caps.{fmt}"
    args = [*map(str, images), "--out", str(out), "--batch-size", "2", "--workers", "0", "--no-progress"]
    header = 1 if fmt == "csv" else 0
    kill_when([sys.executable, "caption.py", *args],
              lambda: out.exists() and out.read_bytes().count(b"\n") > header, "its first record", timeout=120)
    lines = out.read_bytes().count(b"\n") - header
    assert 1 <= lines < len(images), "the run finished before it could be killed"
    first = out.read_text().splitlines()[header:]
    with open(out, "a") as f:
        f.write('{"path": "/x/y.jp' if fmt == "jsonl" else "/x/y.jpg,a red")  # a torn write
    assert run(*images, "--out", out, "--resume", "--workers", "0") == 0
    text = out.read_text()
    assert text.endswith("\n") and "/x/y.jp" not in text
    if fmt == "jsonl":
        recs = read_jsonl(out)  # every line parses
    else:
        with open(out, newline="") as f:
            recs = list(csv.DictReader(f))
    assert sorted(r["path"] for r in recs) == sorted(map(str, images))  # exactly one record per image
    assert text.splitlines()[header: header + len(first)] == first  # finished records were kept as they were
    assert all(r["caption"] for r in recs)
