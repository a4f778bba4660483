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
  via ``read_karpathy``;
* the original Flickr8k release (``Flickr8k.token.txt`` plus the
  ``Flickr_8k.{train,dev,test}Images.txt`` split lists; Flickr30k's
  ``results_20130124.token`` has the same format) via ``read_flickr_token_file``;
* the Kaggle ``captions.txt`` CSV (``image,caption``, no split) via
  ``read_captions_csv``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gc
import hashlib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

__all__ = [
    "ImageRecord", "DatasetError", "read_coco_captions", "read_karpathy", "read_flickr_token_file",
    "read_captions_csv", "flickr_image_id", "split_summary", "read_json_file",
]

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


def _read_text(path: str | os.PathLike[str], argument: str, what: str) -> str:
    """A UTF-8 text file's contents, every failure a DatasetError naming the file (`what`: what it should be)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"{path}: file not found (check the {argument} argument)")
    if os.path.isdir(path):
        raise DatasetError(f"{path}: is a directory, expected {what} (check the {argument} argument)")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read file: {e.strerror or e}") from e
    if not raw.strip():
        raise DatasetError(f"{path}: file is empty, expected {what}")
    try:
        # utf-8-sig tolerates a byte-order mark written by some editors.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); is this really {what}?") from e


def _gc_paused(reader):
    """Run a reader with Python's cyclic garbage collector paused. Reading an annotation file builds
    millions of small dicts, lists and records, and each batch of new containers triggers a
    collection that walks all the older ones: reading COCO's 140 MB dataset_coco.json took 19x the
    time of a tenth of it. Nothing a reader builds forms a reference cycle, so pausing loses
    nothing; the collector's previous state is restored however the reader ends."""
    @functools.wraps(reader)
    def paused(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return reader(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return paused


def read_json_file(path: str | os.PathLike[str], argument: str, what: str = "a JSON file") -> Any:
    """Read a JSON file, turning every failure into a DatasetError naming the file (`argument`: the
    option that gave it; `what`: what it should be)."""
    text = _read_text(path, argument, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{os.fspath(path)}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e


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


@_gc_paused
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
    data = read_json_file(file, "annotation_file")
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


@_gc_paused
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
    data = read_json_file(file, "split_file")
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


# --- Flickr8k original release and the Kaggle captions.txt -------------------
#
# Both layouts name images by file name only.  Their records use the same rules, so the same
# captions read from either layout give equal records:
#
# * image id: ``flickr_image_id(name)``, the first 6 bytes of sha1(file name, UTF-8) as a
#   big-endian integer (0 <= id < 2**48, exact in JSON and float64).  It depends on the name
#   alone: not on line order, not on which other images a file lists (Flickr8k.token.txt lists
#   one junk name, ``2258277193_586949ec62.jpg.1``, that the Kaggle file lacks), not on the
#   layout.  The numeric prefix of Flickr names is not used: it is not guaranteed unique.  Two
#   names with one id (never seen; about 1 in 10**6 for 30k names) are a DatasetError.
# * path: ``image_dir/name``; captions in file order, stripped; records sorted by image id.

# Split names of the Kaggle CSV's deterministic split, in the order they are dealt out.
_CSV_EVAL_SPLITS = ("test", "val")
# Karpathy's Flickr8k val and test sizes: the most the CSV split puts in each.
_CSV_EVAL_SIZE = 1000


def flickr_image_id(name: str) -> int:
    """The image id of a Flickr file name (both Flickr layouts): sha1 of the name, first 6 bytes."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:6], "big")


def _read_text_lines(path: str | os.PathLike[str], argument: str, what: str) -> list[str]:
    """A text file's lines (line i+1 is element i), every failure a DatasetError naming the file."""
    text = _read_text(path, argument, what)
    # Not str.splitlines(): it also breaks at \x0b, \x1c, \u2028, ..., so line numbers would
    # disagree with what an editor shows.
    return [line.rstrip("\r") for line in text.split("\n")]


def _flickr_records(
    captions: Mapping[str, Sequence[str]], split_of: Mapping[str, str], image_dir: str | os.PathLike[str], file: str,
    check_images: bool, folder_hint: str, note: str = "",
) -> dict[str, list[ImageRecord]]:
    """Records of the images in split_of, by split (canonical split order), sorted by image id; their
    image files checked (folder_hint: which folder image_dir should be) and the splits logged."""
    image_dir = os.fspath(image_dir)
    seen: dict[int, str] = {}
    for name in captions:
        image_id = flickr_image_id(name)
        if image_id in seen:
            raise DatasetError(f"{file}: image names {seen[image_id]!r} and {name!r} have the same id {image_id} "
                               f"(sha1 prefix); rename one of the two files")
        seen[image_id] = name
    by_split: dict[str, list[ImageRecord]] = {}
    for name, split in split_of.items():
        path = os.path.abspath(os.path.join(image_dir, name))
        by_split.setdefault(split, []).append(
            ImageRecord(image_id=flickr_image_id(name), path=path, split=split, captions=tuple(captions[name]))
        )
    result = {s: sorted(by_split[s], key=lambda r: r.image_id) for s in sorted(by_split, key=_split_key)}
    if check_images:
        _check_images_exist([r for recs in result.values() for r in recs], file, image_dir, "image_dir",
                            f"it should be the folder that directly holds the .jpg files, {folder_hint}")
    log.info("%s: %s%s", file, split_summary(result), note)
    return result


@_gc_paused
def read_flickr_token_file(
    token_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    split_files: Mapping[str, str | os.PathLike[str]],
    check_images: bool = True,
) -> dict[str, list[ImageRecord]]:
    """Read the original Flickr8k release into ``{split: records sorted by image_id}``.

    ``token_file``: ``Flickr8k.token.txt``, lines ``NAME.jpg#N<TAB>caption`` (N = 0..4).
    ``split_files``: split name -> list of image file names, one per line, e.g.
    ``{"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt"}``; the keys name the returned splits.
    ``image_dir``: the folder holding the images (``Flicker8k_Dataset/`` in the release).

    Images with captions but in no list are ignored (counted in a log line); a listed image
    without captions, or one listed in two splits, is an error naming the list file and line.
    Ids and paths follow the rules above (``flickr_image_id``).
    """
    if not isinstance(split_files, Mapping) or not split_files:
        raise ValueError(f"split_files must map split names to list files, got {split_files!r}")
    file = os.fspath(token_file)
    example = "1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress ..."
    captions: dict[str, list[str]] = {}
    for n, line in enumerate(_read_text_lines(file, "token_file", "a Flickr token file (NAME.jpg#N<TAB>caption)"), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise DatasetError(f"{file}: line {n}: no tab; expected NAME#N<TAB>caption (e.g. {example}), "
                               f"found {line[:80]!r}")
        key, caption = line.split("\t", 1)
        name, hash_mark, number = key.strip().rpartition("#")
        if not hash_mark or not name or not (number.isascii() and number.isdigit()):
            raise DatasetError(f"{file}: line {n}: {key.strip()!r} is not NAME#N, the image file name and the "
                               f"caption number (e.g. 1000268201_693b08cb0e.jpg#0)")
        caption = caption.strip()
        if not caption:
            raise DatasetError(f"{file}: line {n}: empty caption for {key.strip()}")
        captions.setdefault(name, []).append(caption)

    split_of: dict[str, str] = {}
    where: dict[str, tuple[str, int]] = {}  # name -> (list file, line) where it was first listed
    for split, list_path in split_files.items():
        if not isinstance(split, str) or not split:
            raise ValueError(f"split names must be non-empty strings, got {split!r}")
        list_file = os.fspath(list_path)
        listed = 0
        lines = _read_text_lines(list_file, f"split_files[{split!r}]", "a list of image file names, one a line")
        for n, line in enumerate(lines, 1):
            name = line.strip()
            if not name:
                continue
            if name not in captions:
                raise DatasetError(f"{list_file}: line {n}: image {name!r} (split {split}) has no captions in {file}")
            if name in split_of:
                first_file, first_line = where[name]
                if split_of[name] != split:
                    raise DatasetError(f"{list_file}: line {n}: image {name!r} is listed in split {split} and in "
                                       f"split {split_of[name]} ({first_file} line {first_line})")
                log.warning("%s: line %d: image %r listed again (first on line %d); ignored",
                            list_file, n, name, first_line)
                continue
            split_of[name] = split
            where[name] = (list_file, n)
            listed += 1
        if not listed:
            raise DatasetError(f"{list_file}: lists no image file names (split {split})")

    unlisted = len(captions) - len(split_of)
    if unlisted:
        log.info("%s: %d of %d images with captions are in no split list; ignored", file, unlisted, len(captions))
    return _flickr_records(captions, split_of, image_dir, file, check_images,
                           "Flicker8k_Dataset/ in the original release")


def _csv_split(names: Iterable[str]) -> dict[str, str]:
    """The Kaggle CSV's split: names in order of sha1(name) (ties, i.e. never, by name); the first k
    go to test, the next k to val, the rest to train, k = min(1000, n // 8) but at least 1 when n >= 3.
    Depends only on the set of names (not on their order): 8091 images (Kaggle's Flickr8k) give
    train 6091 / val 1000 / test 1000, Karpathy's val and test sizes."""
    ordered = sorted(set(names), key=lambda name: (hashlib.sha1(name.encode("utf-8")).hexdigest(), name))
    n = len(ordered)
    k = min(_CSV_EVAL_SIZE, max(1, n // 8)) if n >= 3 else 0
    split_of = {}
    for i, name in enumerate(ordered):
        split_of[name] = _CSV_EVAL_SPLITS[i // k] if i < k * len(_CSV_EVAL_SPLITS) else "train"
    return split_of


@_gc_paused
def read_captions_csv(
    csv_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    check_images: bool = True,
) -> dict[str, list[ImageRecord]]:
    """Read the Kaggle Flickr8k ``captions.txt`` into ``{split: records sorted by image_id}``.

    The file is CSV with the header ``image,caption`` and one row per caption (captions with
    commas or quotes are quoted, CSV-style); ``image_dir`` holds the images (``Images/``).
    The file has no split: ``_csv_split`` deals out a deterministic one (train / val / test,
    by sha1 of the file names).  Ids and paths follow the rules above (``flickr_image_id``).
    """
    file = os.fspath(csv_file)
    lines = _read_text_lines(file, "csv_file", "a CSV file with the header image,caption")
    # csv needs the line ends back (a quoted caption may span lines); it numbers lines itself.
    reader = csv.reader(io.StringIO("\n".join(lines), newline=""))
    captions: dict[str, list[str]] = {}
    header_seen = False
    first_line = 1
    try:
        for row in reader:
            n, first_line = first_line, reader.line_num + 1  # n: the line this row starts on
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if not header_seen:
                if [c.strip().lower() for c in row] != ["image", "caption"]:
                    raise DatasetError(f"{file}: line {n}: expected the header 'image,caption' (Kaggle's Flickr8k "
                                       f"captions.txt), found {','.join(row)[:80]!r}")
                header_seen = True
                continue
            if len(row) != 2:
                raise DatasetError(f"{file}: line {n}: {len(row)} columns, expected 2 (image,caption); a caption "
                                   f"with commas must be in double quotes")
            name, caption = row[0].strip(), row[1].strip()
            if not name:
                raise DatasetError(f"{file}: line {n}: empty image file name")
            if not caption:
                raise DatasetError(f"{file}: line {n}: empty caption for {name}")
            captions.setdefault(name, []).append(caption)
    except csv.Error as e:
        raise DatasetError(f"{file}: line {reader.line_num}: not valid CSV: {e}") from e
    if not captions:
        raise DatasetError(f"{file}: has a header but no captions")
    if len(captions) < 3:
        log.warning("%s: only %d images: all go to train (val and test need at least 3 images)", file, len(captions))

    return _flickr_records(captions, _csv_split(captions), image_dir, file, check_images,
                           "Images/ beside captions.txt", " (deterministic split by sha1 of the file names)")


@_gc_paused
def image_ids_by_file_name(path: str | os.PathLike[str]) -> dict[str, int]:
    """File name -> image id, by the readers' own rules, from a COCO captions or instances file
    (images[].file_name / id) or a Karpathy split file (images[].filename / cocoid, else imgid).

    Only the images list is read (no annotations, no image folder): what batch captioning needs
    to write results under the ids a COCO scorer expects.
    """
    file = os.fspath(path)
    images = _require_list(read_json_file(file, "--image-ids"), "images", file,
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
