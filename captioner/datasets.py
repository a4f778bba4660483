"""Dataset readers: COCO caption annotations and Karpathy split files.

This module owns turning caption annotation files on disk into one record
type, ``ImageRecord`` (image id, absolute image path, split name, raw
reference captions), and reporting what is wrong with those files
(``DatasetError``) in terms a user can act on.  It does not decode images
(see ``captioner.images``) or tokenize text (see ``captioner.text``).

Supported inputs:

* COCO ``captions_<split>2014.json`` via ``read_coco_captions``;
* Karpathy ``dataset_coco.json`` / ``dataset_flickr8k.json`` /
  ``dataset_flickr30k.json`` (and our synthetic worlds in the same format)
  via ``read_karpathy``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

__all__ = ["ImageRecord", "DatasetError", "read_coco_captions", "read_karpathy", "split_summary"]

# How many missing image paths an error message lists before summarising.
_MAX_LISTED = 5
# Canonical split order for results and summaries; other names follow alphabetically.
_SPLIT_ORDER = ("train", "restval", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image and its reference captions."""

    image_id: int  # COCO id (Karpathy 'cocoid' when present, else 'imgid')
    path: str  # absolute path of the image file
    split: str  # "train", "val", "test", "test_novel", ...
    captions: tuple[str, ...]  # raw reference captions, in file order


class DatasetError(ValueError):
    """An annotation/split file is missing, malformed, or points at missing images."""


# --- shared helpers ---------------------------------------------------------


def _split_key(name: str) -> tuple[int, str]:
    return (_SPLIT_ORDER.index(name) if name in _SPLIT_ORDER else len(_SPLIT_ORDER), name)


def _load_json(path: str | os.PathLike[str], argument: str) -> Any:
    """Read a JSON file, turning every failure into a DatasetError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"{path}: file not found (check the {argument} argument)")
    if os.path.isdir(path):
        raise DatasetError(f"{path}: is a directory, expected a JSON file (check the {argument} argument)")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read file: {e.strerror or e}") from e
    if not raw.strip():
        raise DatasetError(f"{path}: file is empty, expected JSON")
    try:
        # utf-8-sig tolerates a byte-order mark written by some editors.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); is this really a JSON file?") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e


def _require_list(data: Any, key: str, path: str, hint: str) -> list[Any]:
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: top level is a JSON {type(data).__name__}, expected an object with key {key!r} ({hint})"
        )
    if key not in data:
        raise DatasetError(
            f"{path}: missing top-level key {key!r} (found keys: {sorted(data)[:10]}); {hint}"
        )
    value = data[key]
    if not isinstance(value, list):
        raise DatasetError(f"{path}: top-level {key!r} is a {type(value).__name__}, expected a list")
    return value


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but True is never a sensible image id.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_images_exist(records: Sequence[ImageRecord], file: str, folder: str, argument: str, hint: str) -> None:
    missing = [r.path for r in records if not os.path.exists(r.path)]
    if not missing:
        return
    folder_abs = os.path.abspath(folder)
    listed = "\n  ".join(missing[:_MAX_LISTED])
    more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    folder_note = "" if os.path.isdir(folder_abs) else " (that folder does not exist)"
    raise DatasetError(
        f"{file}: {len(missing)} of {len(records)} image files are missing under "
        f"{argument}={folder_abs}{folder_note}:\n  {listed}{more}\n"
        f"Fix the {argument} argument ({hint}), or pass check_images=False to skip this check."
    )


# --- COCO -------------------------------------------------------------------


def _check_coco_images(images: list[Any], file: str) -> None:
    """COCO's images[]: objects with an integer "id" (each once) and a non-empty "file_name"."""
    seen_ids: dict[int, int] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict):
            raise DatasetError(f"{file}: images[{i}] is a {type(img).__name__}, expected an object")
        for field in ("id", "file_name"):
            if field not in img:
                raise DatasetError(f"{file}: images[{i}] (id={img.get('id', '?')}) is missing field {field!r}")
        if not _is_int(img["id"]):
            raise DatasetError(f"{file}: images[{i}] field 'id' is {img['id']!r}, expected an integer")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise DatasetError(f"{file}: images[{i}] (id={img['id']}) field 'file_name' is not a non-empty string")
        if img["id"] in seen_ids:
            raise DatasetError(f"{file}: image id {img['id']} appears twice "
                               f"(images[{seen_ids[img['id']]}] and images[{i}])")
        seen_ids[img["id"]] = i


def read_coco_captions(
    annotation_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    split: str,
    check_images: bool = True,
) -> list[ImageRecord]:
    """Read a COCO captions file (e.g. ``captions_val2014.json``).

    Every record gets ``split``; paths are ``image_dir/file_name``.  Records
    are sorted by image id; images with no caption are skipped (warning).
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    file = os.fspath(annotation_file)
    data = _load_json(file, "annotation_file")
    hint = "is this a COCO captions_*.json file?"
    images = _require_list(data, "images", file, hint)
    annotations = _require_list(data, "annotations", file, hint)

    # Validate fields ourselves first: pycocotools would fail with a bare
    # KeyError that names neither the file nor the entry.
    _check_coco_images(images, file)
    needs_ids = False
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise DatasetError(f"{file}: annotations[{i}] is a {type(ann).__name__}, expected an object")
        for field in ("image_id", "caption"):
            if field not in ann:
                raise DatasetError(
                    f"{file}: annotations[{i}] (id={ann.get('id', '?')}) is missing field {field!r}"
                )
        if not _is_int(ann["image_id"]):
            raise DatasetError(f"{file}: annotations[{i}] field 'image_id' is {ann['image_id']!r}, expected an integer")
        if not isinstance(ann["caption"], str):
            raise DatasetError(
                f"{file}: annotations[{i}] (image_id={ann['image_id']}) field 'caption' is "
                f"{type(ann['caption']).__name__}, expected a string"
            )
        needs_ids = needs_ids or "id" not in ann

    if needs_ids:
        # pycocotools indexes annotations by 'id'; hand-made files often omit
        # it, so number them in file order rather than reject the file.
        annotations = [dict(ann, id=i) if "id" not in ann else ann for i, ann in enumerate(annotations)]
        data = dict(data, annotations=annotations)

    from pycocotools.coco import COCO  # imported lazily: only this reader needs it

    coco = COCO()
    coco.dataset = data
    # pycocotools prints progress to stdout, which would corrupt any output
    # a caller (e.g. a CLI writing JSON to stdout) is producing.
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()

    unknown = [a["image_id"] for a in annotations if a["image_id"] not in coco.imgs]
    if unknown:
        log.warning(
            "%s: %d captions refer to image ids not listed in 'images' (e.g. %s); ignored",
            file, len(unknown), unknown[:_MAX_LISTED],
        )

    image_dir_s = os.fspath(image_dir)
    records: list[ImageRecord] = []
    no_caption: list[int] = []
    empty_captions = 0
    for image_id in sorted(coco.imgs):
        caps = []
        for ann in coco.imgToAnns.get(image_id, []):
            # COCO captions carry stray leading spaces and trailing newlines.
            cap = ann["caption"].strip()
            if cap:
                caps.append(cap)
            else:
                empty_captions += 1
        if not caps:
            no_caption.append(image_id)
            continue
        path = os.path.abspath(os.path.join(image_dir_s, coco.imgs[image_id]["file_name"]))
        records.append(ImageRecord(image_id=image_id, path=path, split=split, captions=tuple(caps)))
    if empty_captions:
        log.warning("%s: %d empty captions ignored", file, empty_captions)
    if no_caption:
        log.warning(
            "%s: %d images have no caption and are skipped (e.g. ids %s)",
            file, len(no_caption), no_caption[:_MAX_LISTED],
        )
    if check_images:
        _check_images_exist(
            records, file, image_dir_s, "image_dir",
            "it should be the folder that directly holds the files named in 'file_name', e.g. val2014/",
        )
    log.info("%s: %d images, %d captions (split %s)", file, len(records), sum(len(r.captions) for r in records),
                split)
    return records


# --- Karpathy ---------------------------------------------------------------


def _karpathy_label(i: int, entry: dict) -> str:
    return f"images[{i}] (imgid={entry.get('imgid', '?')}, filename={entry.get('filename', '?')!r})"


def _karpathy_id(entry: dict, i: int, file: str, seen_ids: dict[int, int]) -> int:
    """The image id of a Karpathy entry: its COCO id ('cocoid') when present, else 'imgid'; each once."""
    label = _karpathy_label(i, entry)
    if "cocoid" in entry:
        image_id = entry["cocoid"]
    elif "imgid" in entry:
        image_id = entry["imgid"]
    else:
        raise DatasetError(f"{file}: {label} is missing field 'imgid' (and has no 'cocoid')")
    if not _is_int(image_id):
        raise DatasetError(f"{file}: {label} has image id {image_id!r}, expected an integer")
    if image_id in seen_ids:
        raise DatasetError(
            f"{file}: image id {image_id} appears twice (images[{seen_ids[image_id]}] and images[{i}])"
        )
    seen_ids[image_id] = i
    return image_id


def read_karpathy(
    split_file: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    splits: Iterable[str] | None = None,
    merge_restval: bool = True,
    check_images: bool = True,
) -> dict[str, list[ImageRecord]]:
    """Read a Karpathy split file into ``{split: records sorted by image_id}``.

    ``restval`` is merged into ``train`` unless ``merge_restval=False``.
    ``splits`` selects which splits are returned (all when None); asking for
    a split the file does not have is an error, so a typo cannot silently
    produce an empty split.  Only returned records are checked for images.
    """
    file = os.fspath(split_file)
    data = _load_json(file, "split_file")
    entries = _require_list(
        data, "images", file, "is this a Karpathy split file such as dataset_coco.json?"
    )
    root = os.fspath(image_root)

    by_split: dict[str, list[ImageRecord]] = {}
    seen_ids: dict[int, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatasetError(f"{file}: images[{i}] is a {type(entry).__name__}, expected an object")
        label = _karpathy_label(i, entry)
        for field in ("split", "filename", "sentences"):
            if field not in entry:
                raise DatasetError(f"{file}: {label} is missing field {field!r}")
        image_id = _karpathy_id(entry, i, file, seen_ids)
        split = entry["split"]
        if not isinstance(split, str) or not split:
            raise DatasetError(f"{file}: {label} field 'split' is {split!r}, expected a non-empty string")
        if not isinstance(entry["filename"], str) or not entry["filename"]:
            raise DatasetError(f"{file}: {label} field 'filename' is not a non-empty string")
        sentences = entry["sentences"]
        if not isinstance(sentences, list):
            raise DatasetError(f"{file}: {label} field 'sentences' is a {type(sentences).__name__}, expected a list")
        captions: list[str] = []
        for j, sent in enumerate(sentences):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            if raw is None and isinstance(sent, dict) and isinstance(sent.get("tokens"), list):
                # Some derived split files keep only tokens; they are still usable.
                raw = " ".join(str(t) for t in sent["tokens"])
            if not isinstance(raw, str):
                raise DatasetError(f"{file}: {label} sentences[{j}] is missing field 'raw' (a string)")
            raw = raw.strip()
            if raw:
                captions.append(raw)
        if not captions:
            log.warning("%s: %s has no captions; skipped", file, label)
            continue
        if merge_restval and split == "restval":
            split = "train"
        filepath = entry.get("filepath")
        # Flickr files have no 'filepath': images sit directly in image_root.
        parts = [root, filepath, entry["filename"]] if filepath else [root, entry["filename"]]
        path = os.path.abspath(os.path.join(*parts))
        by_split.setdefault(split, []).append(
            ImageRecord(image_id=image_id, path=path, split=split, captions=tuple(captions))
        )

    if splits is None:
        wanted = sorted(by_split, key=_split_key)
    else:
        if isinstance(splits, str):
            # A bare "train" would otherwise be read as the splits t, r, a, i, n.
            splits = [splits]
        wanted = list(dict.fromkeys(splits))
        absent = [s for s in wanted if s not in by_split]
        if absent:
            note = " (restval is merged into train; pass merge_restval=False to keep it separate)" if (
                "restval" in absent and merge_restval) else ""
            raise DatasetError(
                f"{file}: no images in split(s) {absent}; the file has splits "
                f"{sorted(by_split, key=_split_key)}{note}"
            )
    result = {s: sorted(by_split[s], key=lambda r: r.image_id) for s in wanted}

    if check_images:
        _check_images_exist(
            [r for recs in result.values() for r in recs], file, root, "image_root",
            "it should be the folder that entries' filepath/filename are relative to, e.g. the folder "
            "holding train2014/ and val2014/ for COCO, or the folder of the images themselves for Flickr",
        )
    log.info("%s: %s", file, split_summary(result))
    return result


def image_ids_by_file_name(path: str | os.PathLike[str]) -> dict[str, int]:
    """File name -> image id, by the readers' own rules, from a COCO captions or instances file
    (images[].file_name / id) or a Karpathy split file (images[].filename / cocoid, else imgid).

    Only the images list is read (no annotations, no image folder): what batch captioning needs
    to write results under the ids a COCO scorer expects.
    """
    file = os.fspath(path)
    images = _require_list(_load_json(file, "--image-ids"), "images", file,
                           "expected a COCO captions/instances file or a Karpathy split file")
    if images and isinstance(images[0], dict) and "file_name" in images[0]:
        _check_coco_images(images, file)
        return {os.path.basename(im["file_name"]): im["id"] for im in images}
    ids: dict[str, int] = {}
    seen: dict[int, int] = {}
    for i, entry in enumerate(images):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
            raise DatasetError(f"{file}: images[{i}] has no 'file_name' (COCO) or 'filename' (Karpathy)")
        ids[entry["filename"]] = _karpathy_id(entry, i, file, seen)
    if not ids:
        raise DatasetError(f"{file}: its images list is empty")
    return ids


def split_summary(records: Mapping[str, Sequence[ImageRecord]] | Iterable[ImageRecord]) -> str:
    """One line of per-split counts, e.g. ``train: 5 images, 25 captions; val: ...``."""
    images: Counter[str] = Counter()
    captions: Counter[str] = Counter()
    items: Iterable[ImageRecord]
    if isinstance(records, Mapping):
        items = (r for recs in records.values() for r in recs)
    else:
        items = records
    for r in items:
        images[r.split] += 1
        captions[r.split] += len(r.captions)
    if not images:
        return "no images"
    return "; ".join(
        f"{s}: {images[s]} images, {captions[s]} captions" for s in sorted(images, key=_split_key)
    )
