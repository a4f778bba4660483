"""Where the records come from: the shapes world, a Karpathy split file, COCO caption files, or
the Flickr8k layouts people hold (the original token file + split lists, Kaggle's captions.txt).

Every source yields the same thing: named splits of `ImageRecord`s, a name that keys the
feature cache, and (for the shapes world only) the objects with their boxes.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .datasets import ImageRecord, read_captions_csv, read_coco_captions, read_flickr_token_file, read_karpathy


@dataclass
class DataSource:
    name: str  # keys the feature cache: different data must never share a name
    splits: dict[str, list[ImageRecord]]
    objects: dict[str, dict[int, list[dict]]] = field(default_factory=dict)  # split -> image_id -> objects (shapes)
    image_sizes: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)  # split -> id -> (W, H)
    # What the data is, wherever it lies: recorded in checkpoints and metrics files (the name, when empty).
    # The name keeps the folder in it so that two copies never share a cache; the identity leaves it out
    # where the content alone defines the data, so that a run from another clone writes the same file.
    identity: str = ""

    def __post_init__(self) -> None:
        self.identity = self.identity or self.name

    def split(self, name: str) -> list[ImageRecord]:
        if name not in self.splits:
            raise KeyError(f"split '{name}' not in {self.name}; it has {sorted(self.splits)}")
        return self.splits[name]


def _path_tag(*paths: str | os.PathLike) -> str:
    return hashlib.sha1("|".join(os.path.abspath(p) for p in paths).encode()).hexdigest()[:8]


def shapes_source(root: str | os.PathLike = "data/shapes", seed: int = 0, generate: bool = True,
                  sizes: dict[str, int] | None = None, wide_train=None) -> DataSource:
    """The embedded shapes world, generated on first use; read through the Karpathy reader.

    wide_train (shapes.generate_world's: True, or some of shapes.WIDE_PARTS; False for none): the train
    split the world must have; a missing world is generated with it, an existing one made otherwise is
    refused (never regenerated: another run's world, and the features cached from it, stay as they are).
    None: any."""
    from . import shapes

    root = Path(root)
    exists = (root / "world.json").is_file()
    wide = {} if wide_train is None else {"wide_train": wide_train}
    if exists and wide_train is not None:
        found = shapes.wide_parts(shapes.load_world(root).get("wide_train", False))
        if found != shapes.wide_parts(wide_train):
            said = ", ".join(found) or "none"
            raise ValueError(f"the shapes world in {root} has a train split widened by: {said}; this run asks for "
                             f"{', '.join(shapes.wide_parts(wide_train)) or 'none'}. Give another --shapes-dir (it "
                             "is generated there), or leave the world's width unasked")
    if generate and (not exists or sizes is not None):
        # An existing world is used as it is unless other sizes are asked for explicitly.
        shapes.ensure_world(root, seed=seed, **({} if sizes is None else {"sizes": sizes}), **wide)
    elif not exists:
        raise FileNotFoundError(f"no shapes world at {root}: run python -m captioner.shapes --out {root}")
    world = shapes.load_world(root)
    splits = read_karpathy(root / "dataset_shapes.json", root / "images")
    objects, sizes_ = {}, {}
    for s in splits:
        inst = root / "annotations" / f"instances_{s}.json"
        objects[s] = shapes.load_objects(inst)
        sizes_[s] = _image_sizes(inst)
    # The world's identity (world.json: version, seed, sizes, rendering settings) is in the name: image ids
    # and files of a regenerated world at the same path must never be served another world's cached features.
    # The generator is deterministic, so world.json alone identifies the images: the identity leaves the path out.
    ident = hashlib.sha1(json.dumps(world, sort_keys=True).encode()).hexdigest()[:6]
    return DataSource(f"shapes-s{world['seed']}-{_path_tag(root)}-w{ident}", splits, objects, sizes_,
                      identity=f"shapes-s{world['seed']}-w{ident}")


def _image_sizes(coco_json: Path) -> dict[int, tuple[int, int]]:
    with open(coco_json) as f:
        return {im["id"]: (im["width"], im["height"]) for im in json.load(f)["images"]}


def karpathy_source(split_file: str | os.PathLike, image_root: str | os.PathLike,
                    merge_restval: bool = True) -> DataSource:
    splits = read_karpathy(split_file, image_root, merge_restval=merge_restval)
    return DataSource(f"{Path(split_file).stem}-{_path_tag(split_file, image_root)}", splits)


def coco_source(captions: dict[str, str | os.PathLike], images: dict[str, str | os.PathLike]) -> DataSource:
    """captions / images: split -> annotation file / image folder (e.g. train -> captions_train2014.json)."""
    splits = {}
    for split, ann in captions.items():
        if split not in images:
            raise ValueError(f"no image folder given for split '{split}' (use --images {split}=DIR)")
        splits[split] = read_coco_captions(ann, images[split], split)
    tag = _path_tag(*[str(captions[s]) for s in sorted(captions)], *[str(images[s]) for s in sorted(images)])
    return DataSource(f"coco-{tag}", splits)


# The split lists of the original Flickr8k release, looked for beside the token file when none are given.
FLICKR8K_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                        "test": "Flickr_8k.testImages.txt"}


def flickr_source(token_file: str | os.PathLike, image_dir: str | os.PathLike,
                  split_files: dict[str, str | os.PathLike] | None = None) -> DataSource:
    """The original Flickr8k release: Flickr8k.token.txt, the images folder (Flicker8k_Dataset/), and
    split -> list file (default: FLICKR8K_SPLIT_FILES beside the token file, dev read as val)."""
    if split_files is None:
        folder = Path(token_file).parent
        split_files = {s: folder / f for s, f in FLICKR8K_SPLIT_FILES.items()}
    splits = read_flickr_token_file(token_file, image_dir, split_files)
    # Which list feeds which split is part of the identity, not just the list paths.
    lists = "|".join(f"{s}={os.path.abspath(split_files[s])}" for s in sorted(split_files))
    tag = hashlib.sha1(f"{_path_tag(token_file, image_dir)}|{lists}".encode()).hexdigest()[:8]
    return DataSource(f"{Path(token_file).stem}-{tag}", splits)


def captions_csv_source(csv_file: str | os.PathLike, image_dir: str | os.PathLike) -> DataSource:
    """Kaggle's Flickr8k captions.txt (image,caption) and its Images/ folder; split by sha1 of the names."""
    splits = read_captions_csv(csv_file, image_dir)
    return DataSource(f"{Path(csv_file).stem}-csv-{_path_tag(csv_file, image_dir)}", splits)
