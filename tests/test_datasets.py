"""Tests for captioner.datasets: COCO and Karpathy readers and their errors."""

import json
import logging
import os
import re

import pytest
from PIL import Image

from captioner.datasets import (
    DatasetError,
    ImageRecord,
    read_coco_captions,
    read_karpathy,
    split_summary,
)


def _jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (10, 20, 30)).save(path, "JPEG")


def _write_json(path, data):
    path.write_text(json.dumps(data, indent=1))
    return path


# --- COCO -------------------------------------------------------------------


@pytest.fixture
def coco(tmp_path):
    image_dir = tmp_path / "val2014"
    for i in (42, 7, 9):
        _jpeg(image_dir / f"COCO_val2014_{i:012d}.jpg")
    data = {
        "info": {},
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 4, "height": 3},
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 4, "height": 3},
            {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "width": 4, "height": 3},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "caption": "A dog on a couch.\n"},
            {"id": 2, "image_id": 7, "caption": " Two cats."},
            {"id": 3, "image_id": 42, "caption": "A brown dog sleeping."},
        ],
    }
    ann = _write_json(tmp_path / "captions_val2014.json", data)
    return ann, image_dir, data


def test_read_coco_records(coco, caplog, capsys):
    ann, image_dir, _ = coco
    with caplog.at_level(logging.WARNING, logger="captioner.datasets"):
        recs = read_coco_captions(ann, image_dir, split="val")
    assert [r.image_id for r in recs] == [7, 42]  # sorted; 9 has no caption
    assert recs[1] == ImageRecord(
        image_id=42,
        path=str(image_dir / "COCO_val2014_000000000042.jpg"),
        split="val",
        captions=("A dog on a couch.", "A brown dog sleeping."),
    )
    assert os.path.isabs(recs[0].path) and recs[0].captions == ("Two cats.",)
    assert "1 images have no caption" in caplog.text and "[9]" in caplog.text
    # pycocotools' progress prints are silenced.
    assert capsys.readouterr().out == ""


def test_read_coco_annotations_without_id(coco):
    ann, image_dir, data = coco
    for a in data["annotations"]:
        del a["id"]
    _write_json(ann, data)
    recs = read_coco_captions(ann, image_dir, "val")
    assert recs[1].captions == ("A dog on a couch.", "A brown dog sleeping.")


def test_read_coco_missing_images(coco):
    ann, image_dir, _ = coco
    os.remove(image_dir / "COCO_val2014_000000000007.jpg")
    with pytest.raises(DatasetError) as exc:
        read_coco_captions(ann, image_dir, "val")
    msg = str(exc.value)
    assert str(ann) in msg
    assert "1 of 2 image files are missing" in msg
    assert "COCO_val2014_000000000007.jpg" in msg
    assert f"image_dir={image_dir}" in msg and "Fix the image_dir argument" in msg
    # check_images=False skips the check
    assert len(read_coco_captions(ann, image_dir, "val", check_images=False)) == 2


def test_read_coco_wrong_image_dir(coco, tmp_path):
    ann, _, _ = coco
    with pytest.raises(DatasetError, match=r"2 of 2 image files are missing.*that folder does not exist"):
        read_coco_captions(ann, tmp_path / "nope", "val")


def test_read_coco_file_errors(tmp_path, coco):
    _, image_dir, data = coco
    missing = tmp_path / "missing.json"
    with pytest.raises(DatasetError, match=re.escape(str(missing)) + ".*file not found.*annotation_file"):
        read_coco_captions(missing, image_dir, "val")
    with pytest.raises(DatasetError, match="is a directory"):
        read_coco_captions(tmp_path, image_dir, "val")

    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + ": not valid JSON.*line 2 column"):
        read_coco_captions(bad, image_dir, "val")

    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty.json: file is empty"):
        read_coco_captions(empty, image_dir, "val")

    no_ann = _write_json(tmp_path / "no_ann.json", {"images": data["images"]})
    with pytest.raises(DatasetError, match="no_ann.json: missing top-level key 'annotations'"):
        read_coco_captions(no_ann, image_dir, "val")

    as_list = _write_json(tmp_path / "list.json", [1, 2])
    with pytest.raises(DatasetError, match="list.json: top level is a JSON list"):
        read_coco_captions(as_list, image_dir, "val")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\] \(id=7\) is missing field 'file_name'"),
        (lambda d: d["images"][0].pop("id"), r"images\[0\] \(id=\?\) is missing field 'id'"),
        (lambda d: d["annotations"][2].pop("caption"), r"annotations\[2\] \(id=3\) is missing field 'caption'"),
        (lambda d: d["annotations"][0].pop("image_id"), r"annotations\[0\] \(id=1\) is missing field 'image_id'"),
        (lambda d: d["annotations"][0].update(caption=5), r"annotations\[0\].*'caption' is int"),
        (lambda d: d["images"].append(dict(d["images"][0])), r"image id 42 appears twice"),
    ],
)
def test_read_coco_bad_entries(coco, mutate, match):
    ann, image_dir, data = coco
    mutate(data)
    _write_json(ann, data)
    with pytest.raises(DatasetError, match=re.escape(str(ann)) + ".*" + match):
        read_coco_captions(ann, image_dir, "val")


# --- Karpathy ---------------------------------------------------------------


def _sent(raw):
    return {"raw": raw, "tokens": raw.lower().strip(".").split()}


@pytest.fixture
def karpathy(tmp_path):
    root = tmp_path / "coco"
    entries = [
        {"filepath": "val2014", "filename": "b.jpg", "imgid": 0, "cocoid": 300, "split": "test",
         "sentences": [_sent("A test image.")]},
        {"filepath": "train2014", "filename": "a.jpg", "imgid": 1, "cocoid": 200, "split": "train",
         "sentences": [_sent("A train image."), _sent("Another one.")]},
        {"filepath": "val2014", "filename": "c.jpg", "imgid": 2, "cocoid": 100, "split": "restval",
         "sentences": [_sent("A restval image.")]},
        {"filepath": "val2014", "filename": "d.jpg", "imgid": 3, "cocoid": 400, "split": "val",
         "sentences": [_sent("A val image.")]},
        {"filepath": "val2014", "filename": "e.jpg", "imgid": 4, "cocoid": 500, "split": "test_novel",
         "sentences": [_sent("A novel image.")]},
    ]
    for e in entries:
        _jpeg(root / e["filepath"] / e["filename"])
    path = _write_json(tmp_path / "dataset_coco.json", {"images": entries, "dataset": "coco"})
    return path, root, entries


def test_read_karpathy_merges_restval(karpathy):
    path, root, _ = karpathy
    out = read_karpathy(path, root)
    assert list(out) == ["train", "val", "test", "test_novel"]
    assert [r.image_id for r in out["train"]] == [100, 200]  # cocoid, sorted
    assert all(r.split == "train" for r in out["train"])
    assert out["train"][1].path == str(root / "train2014" / "a.jpg")
    assert out["train"][1].captions == ("A train image.", "Another one.")
    assert split_summary(out) == (
        "train: 2 images, 3 captions; val: 1 images, 1 captions; "
        "test: 1 images, 1 captions; test_novel: 1 images, 1 captions"
    )


def test_read_karpathy_keep_restval_and_filter(karpathy):
    path, root, _ = karpathy
    out = read_karpathy(path, root, merge_restval=False)
    assert [r.image_id for r in out["restval"]] == [100]
    assert [r.image_id for r in out["train"]] == [200]
    out = read_karpathy(path, root, splits=["test_novel", "val"])
    assert list(out) == ["test_novel", "val"]
    assert read_karpathy(path, root, splits="val")["val"][0].image_id == 400
    with pytest.raises(DatasetError, match=r"no images in split\(s\) \['restval'\].*merge_restval=False"):
        read_karpathy(path, root, splits=["restval"])
    with pytest.raises(DatasetError, match=r"no images in split\(s\) \['valid'\]; the file has splits"):
        read_karpathy(path, root, splits=["valid"])


def test_read_karpathy_flickr_layout(tmp_path):
    # Flickr files have no 'filepath' or 'cocoid': images sit in image_root, ids are imgid.
    root = tmp_path / "flickr"
    _jpeg(root / "123.jpg")
    entries = [{"filename": "123.jpg", "imgid": 7, "split": "val", "sentences": [{"tokens": ["a", "dog"]}]}]
    path = _write_json(tmp_path / "dataset_flickr8k.json", {"images": entries})
    out = read_karpathy(path, root)
    assert out == {"val": [ImageRecord(7, str(root / "123.jpg"), "val", ("a dog",))]}


def test_read_karpathy_missing_images_only_checks_requested(karpathy):
    path, root, _ = karpathy
    os.remove(root / "train2014" / "a.jpg")
    read_karpathy(path, root, splits=["val"])  # train not requested: fine
    with pytest.raises(DatasetError) as exc:
        read_karpathy(path, root)
    msg = str(exc.value)
    assert str(path) in msg and "1 of 5 image files are missing" in msg
    assert str(root / "train2014" / "a.jpg") in msg and "Fix the image_root argument" in msg


def test_read_karpathy_lists_first_missing_only(karpathy, tmp_path, monkeypatch):
    import captioner.datasets

    monkeypatch.setattr(captioner.datasets, "_MAX_LISTED", 2)
    path, _, _ = karpathy
    with pytest.raises(DatasetError, match=r"5 of 5 image files are missing") as exc:
        read_karpathy(path, tmp_path / "elsewhere")
    msg = exc.value.args[0]
    assert msg.count(".jpg") == 2 and "... and 3 more" in msg and "that folder does not exist" in msg


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda e: e[1].pop("split"), r"images\[1\] \(imgid=1, filename='a.jpg'\) is missing field 'split'"),
        (lambda e: e[2].pop("filename"), r"images\[2\] \(imgid=2, filename='\?'\) is missing field 'filename'"),
        (lambda e: e[0].pop("sentences"), r"images\[0\].*is missing field 'sentences'"),
        (lambda e: [e[3].pop("cocoid"), e[3].pop("imgid")], r"images\[3\].*missing field 'imgid'"),
        (lambda e: e[3]["sentences"].append({"tokens": "oops"}), r"images\[3\].*sentences\[1\] is missing field 'raw'"),
        (lambda e: e[4].update(cocoid=300), r"image id 300 appears twice"),
    ],
)
def test_read_karpathy_bad_entries(karpathy, mutate, match):
    path, root, entries = karpathy
    mutate(entries)
    _write_json(path, {"images": entries})
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*" + match):
        read_karpathy(path, root)


def test_read_karpathy_file_errors(tmp_path):
    with pytest.raises(DatasetError, match="nope.json: file not found.*split_file"):
        read_karpathy(tmp_path / "nope.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"bad.json: not valid JSON.*line 1 column 13"):
        read_karpathy(bad, tmp_path)
    wrong = _write_json(tmp_path / "wrong.json", {"annotations": []})
    with pytest.raises(DatasetError, match=r"wrong.json: missing top-level key 'images'.*Karpathy"):
        read_karpathy(wrong, tmp_path)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="bin.json: not UTF-8"):
        read_karpathy(binary, tmp_path)


def test_split_summary_on_list():
    recs = [ImageRecord(1, "/x", "val", ("a", "b")), ImageRecord(2, "/y", "train", ("c",))]
    assert split_summary(recs) == "train: 1 images, 1 captions; val: 1 images, 2 captions"
    assert split_summary([]) == "no images"


def test_readers_parse_with_the_garbage_collector_paused_and_restore_it(coco, karpathy, monkeypatch):
    """COCO-sized files were read in superlinear time (the cyclic GC walking millions of new objects
    again and again): the readers pause it while they build, and leave it as they found it."""
    import gc

    import captioner.datasets as datasets

    seen = []
    real_loads = datasets.json.loads
    monkeypatch.setattr(datasets.json, "loads", lambda text: seen.append(gc.isenabled()) or real_loads(text))
    ann, image_dir, _ = coco
    split_file, root, _ = karpathy
    assert gc.isenabled()
    read_coco_captions(ann, image_dir, "val")
    read_karpathy(split_file, root)
    assert seen == [False, False] and gc.isenabled()
    with pytest.raises(DatasetError):  # a failing read restores it too
        read_karpathy(root / "missing.json", root)
    assert gc.isenabled()
    gc.disable()  # and a collector the caller had paused stays paused
    try:
        read_karpathy(split_file, root)
        assert not gc.isenabled()
    finally:
        gc.enable()
