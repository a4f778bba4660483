"""A dataset with COCO 2014's size, layout, file formats and caption statistics, for rehearsals.

    python bench/coco_world.py --out data/coco-world                 # full size: 123,287 images (about 15 min, 2 cores)
    python bench/coco_world.py --out data/coco-world-0.1 --scale 0.1  # a tenth of everything
    python bench/coco_world.py --out /tmp/cw --scale 0.003 --if-missing

COCO cannot be downloaded on this project's machines, so the COCO code paths are rehearsed on this
stand-in, which every reader of the project reads exactly as it reads COCO (`--karpathy-json`,
`--coco-captions`, `caption.py --image-ids`, pycocotools). Deterministic from --seed and --scale.

What it writes under --out (COCO 2014's layout):

* `train2014/COCO_train2014_<12-digit id>.jpg` (82,783 x scale) and `val2014/COCO_val2014_...jpg`
  (40,504 x scale); ids unique, drawn from COCO's id range (1..581,929);
* `annotations/captions_{train,val}2014.json` (COCO's captions format: info, licenses, images with
  file_name/width/height/id, annotations with id/image_id/caption) and
  `annotations/instances_{train,val}2014.json` (the objects' boxes, in image pixels; the
  categories are the shapes world's six shapes);
* `dataset_coco.json`, Karpathy's split file: `filepath`, `filename`, `cocoid`, `imgid`, `split`,
  `sentids`, `sentences` (`tokens`, `raw`, `imgid`, `sentid`); Karpathy's 113,287 / 5,000 / 5,000
  split: train = train2014, val and test = 5,000 x scale val2014 images each, the rest of val2014
  `restval` (which the project's readers merge into train, as Karpathy's users do);
* `coco_world.json`, written last (its presence means the dataset is complete): the settings and
  the measured statistics (caption length, vocabulary, image sizes, bytes, time).

The images are shapes-world scenes (captioner.shapes, training style, no held-out pairs) resized
to COCO-like sizes (mostly 640 px on the long side: 640x480, 640x427, 480x640, ... see
IMAGE_SIZES), with fixed-pattern sensor-like noise (sigma NOISE_SIGMA) so that the JPEGs are
about COCO's weight per image (COCO's average is about 160 KB; these are about 110 KB) and cost
what COCO's cost to decode; GREY_SHARE of them greyscale (COCO has a few hundred).

Captions, five per image (EXTRA_CAPTIONS: a few images have 6 or 7, as in COCO): each has a
length drawn as 6 + a negative binomial (mean about 10.5 words, sd about 2.5, a long tail; COCO's
Karpathy train captions have mean 10.5), is made of one of the scene's shapes-world captions that
fits in it (else the shortest) and filler words to that length, drawn from a Zipf distribution
(exponent FILLER_ZIPF) over pseudo-words (consonant-vowel syllables), so that about 9,500 words
occur at least 5 times in the full-size Karpathy train split, as in COCO. `raw` is written as
COCO's annotators wrote theirs, mostly capitalised, often with a final period; `tokens` are
lower-case words without punctuation, as in Karpathy's file.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner import shapes  # noqa: E402
from captioner.atomic import atomic_write_json  # noqa: E402

log = logging.getLogger("coco_world")

VERSION = 3  # bump on any change to what is written (2: a short caption lists the objects when it can;
#             3: FILLER_ZIPF recalibrated for 2, whose short captions hold fewer filler words)
PARTS = ("train2014", "val2014")
FULL = {"train2014": 82_783, "val2014": 40_504}
KARPATHY_HELD = 5_000  # Karpathy val and test, each, from val2014
MAX_COCO_ID = 581_929
# (width, height, weight): COCO-like, mostly 640 px on the long side; the rest drawn at random
IMAGE_SIZES = ((640, 480, 0.38), (640, 427, 0.18), (640, 426, 0.06), (480, 640, 0.10), (427, 640, 0.06),
               (640, 425, 0.03), (500, 375, 0.03), (640, 360, 0.03), (612, 612, 0.02), (375, 500, 0.02))
GREY_SHARE = 0.003
EXTRA_CAPTIONS = ((7, 0.0003), (6, 0.002))  # P(an image has 7 captions), P(6)
LENGTH = (6, 13.5, 0.75)  # length = 6 + NegBin(n, p): mean 10.5, sd 2.45
FILLER_ZIPF = 1.25  # with LENGTH, 2.99 filler words per caption: about 9,470 filler words >= 5 times in full-size
# Karpathy train (+ about 55 shapes words); see expected_words_min5. (1.31 gave 9,777 in version 1, 7,077 in 2.)
FILLER_WORDS = 250_000
NOISE_SIGMA = 14
JPEG_QUALITY = 90
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"

_COUNT = {v: k for k, v in shapes.NUMBER_WORDS.items()}
_worker: dict = {}  # per process: the filler words, their cdf, the noise tile


def expected_words_min5(filler_per_caption: float, captions: int = 566_757, exponent: float = FILLER_ZIPF,
                        words: int = FILLER_WORDS) -> float:
    """Expected number of filler words seen at least 5 times among `captions` captions (full-size Karpathy
    train: 566,757) holding `filler_per_caption` Zipf(exponent) filler words each: the sum over words of
    P(Poisson(expected count) >= 5). What FILLER_ZIPF is calibrated with."""
    p = np.arange(1, words + 1, dtype=np.float64) ** -exponent
    lam = captions * filler_per_caption * p / p.sum()
    below = np.exp(-lam) * (1 + lam + lam ** 2 / 2 + lam ** 3 / 6 + lam ** 4 / 24)  # P(count <= 4)
    return float((1 - below).sum())


def filler_words(n: int, exclude: set[str]) -> list[str]:
    """n pseudo-words of 2, then 3 consonant-vowel syllables (ranked short first), none in `exclude`."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    words: list[str] = []
    for length in (2, 3):
        for parts in itertools.product(syllables, repeat=length):
            word = "".join(parts)
            if word not in exclude:
                words.append(word)
                if len(words) == n:
                    return words
    raise ValueError(f"only {len(words)} filler words can be made")


def shapes_vocabulary() -> set[str]:
    """The words the shapes-world captions use (from 400 scenes: every template and name occurs)."""
    words = set()
    for i in range(400):
        rng = np.random.default_rng([7, i])
        _, objects, background = shapes.make_scene(rng, "train", ())
        for caption in shapes.make_captions(rng, objects, background):
            words.update(caption.split())
    return words


def _init_worker(words: list[str]) -> None:
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -FILLER_ZIPF)
    tile = np.random.default_rng(12345).normal(0, NOISE_SIGMA, size=(704, 704, 3))
    _worker.update(words=words, cdf=cdf / cdf[-1], tile=tile.round().clip(-127, 127).astype(np.int16))


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    weights = np.array([w for _, _, w in IMAGE_SIZES])
    k = rng.choice(len(IMAGE_SIZES) + 1, p=np.append(weights, 1 - weights.sum()))
    if k < len(IMAGE_SIZES):
        return IMAGE_SIZES[k][:2]
    short = int(rng.integers(300, 640))
    return (640, short) if rng.random() < 0.7 else (short, 640)


def _caption(rng: np.random.Generator, choices: Sequence[str], compact: Sequence[list[str]]) -> tuple[str, list[str]]:
    """(raw, tokens): a shapes caption that fits the drawn length (else a compact one), then Zipf filler
    words up to that length."""
    base, n, p = LENGTH
    length = base + int(rng.negative_binomial(n, p))
    fits = [c for c in choices if len(c.split()) <= length]
    if fits:
        core = fits[int(rng.integers(len(fits)))].split()
    else:  # shorter than every caption of the scene: what a short COCO caption does, name less
        core = max(short, key=len) if (short := [c for c in compact if len(c) <= length]) else compact[-1]
    k = max(0, length - len(core))
    filler = [_worker["words"][i] for i in np.searchsorted(_worker["cdf"], rng.random(k))]
    tokens = core + filler
    raw = " ".join(tokens)
    if rng.random() < 0.85:
        raw = raw[0].upper() + raw[1:]
    if rng.random() < 0.6:
        raw += "."
    if rng.random() < 0.05:
        raw += " "
    return raw, tokens


def _compact(objects: list[dict]) -> list[list[str]]:
    """Short ways to say what is there: the colour-shape list without sizes, then the count alone."""
    if not objects:
        return [["no", "shapes"]]
    names = [f"a {o['colour']} {o['shape']}" for o in objects]
    listed = (" and ".join(names) if len(names) < 3 else f"{names[0]} {names[1]} and {names[2]}").split()
    return [listed, ["a", "shape"] if len(objects) == 1 else [_COUNT[len(objects)], "shapes"]]


def _render(task: tuple) -> dict:
    """Worker: draw, save and caption one image. The RNG depends only on (seed, part, index)."""
    out, seed, part, index, image_id = task
    rng = np.random.default_rng([seed, PARTS.index(part), index])
    scene, objects, background = shapes.make_scene(rng, "train", ())
    choices = shapes.make_captions(rng, objects, background)
    width, height = _image_size(rng)
    image = scene.resize((width, height), Image.BILINEAR)
    oy, ox = rng.integers(0, 704 - height + 1), rng.integers(0, 704 - width + 1)
    pixels = np.asarray(image, dtype=np.int16) + _worker["tile"][oy:oy + height, ox:ox + width]
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    grey = bool(rng.random() < GREY_SHARE)
    if grey:
        image = image.convert("L")
    file_name = f"COCO_{part}_{image_id:012d}.jpg"
    image.save(Path(out) / part / file_name, quality=JPEG_QUALITY)
    n = 5
    for count, share in EXTRA_CAPTIONS:
        if rng.random() < share:
            n = count
            break
    captions = [_caption(rng, choices, _compact(objects)) for _ in range(n)]
    sx, sy = width / shapes.IMAGE_SIZE, height / shapes.IMAGE_SIZE
    for o in objects:
        x, y, w, h = o["bbox"]
        o["bbox"] = [round(x * sx, 2), round(y * sy, 2), round(w * sx, 2), round(h * sy, 2)]
        o["area"] = round(o["area"] * sx * sy, 2)
    return {"id": image_id, "part": part, "file_name": file_name, "width": width, "height": height,
            "grey": grey, "objects": objects, "captions": captions,
            "bytes": (Path(out) / part / file_name).stat().st_size}


def counts(scale: float) -> dict[str, int]:
    """Images per part and Karpathy's held-out splits at this scale (at least one each)."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, not {scale}")
    n = {part: max(3, round(FULL[part] * scale)) for part in PARTS}
    held = max(1, round(KARPATHY_HELD * scale))
    if 2 * held >= n["val2014"]:
        held = max(1, (n["val2014"] - 1) // 2)
    return {**n, "val": held, "test": held, "restval": n["val2014"] - 2 * held,
            "train": n["train2014"] + n["val2014"] - 2 * held}


def _tasks(out: Path, seed: int, n: dict[str, int]) -> list[tuple]:
    total = n["train2014"] + n["val2014"]
    ids = np.random.default_rng([seed, 8]).choice(MAX_COCO_ID, size=total, replace=False) + 1
    by_part = {"train2014": sorted(ids[: n["train2014"]].tolist()), "val2014": sorted(ids[n["train2014"]:].tolist())}
    return [(str(out), seed, part, i, int(image_id)) for part in PARTS for i, image_id in enumerate(by_part[part])]


def _render_all(tasks: list[tuple], workers: int, words: list[str]) -> Iterator[dict]:
    if workers == 1:
        _init_worker(words)
        yield from map(_render, tasks)
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(words,)) as pool:
        yield from pool.imap(_render, tasks, chunksize=64)


def _write(out: Path, records: list[dict], seed: int, n: dict[str, int]) -> dict:
    """The annotation files and Karpathy's split file; returns caption statistics."""
    licenses = [{"id": 1, "name": "generated by bench/coco_world.py", "url": ""}]
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(shapes.SHAPES)]
    cap_id, inst_id = 1, 1
    karpathy: list[dict] = []
    val_ids = [r["id"] for r in records if r["part"] == "val2014"]
    order = np.random.default_rng([seed, 7]).permutation(len(val_ids))
    karpathy_split = {val_ids[i]: "val" for i in order[: n["val"]]}
    karpathy_split.update({val_ids[i]: "test" for i in order[n["val"]: n["val"] + n["test"]]})
    for part in ("val2014", "train2014"):  # Karpathy's file lists val2014 first
        recs = [r for r in records if r["part"] == part]
        images, caps, insts = [], [], []
        for r in recs:
            images.append({"license": 1, "file_name": r["file_name"], "coco_url": "", "height": r["height"],
                           "width": r["width"], "date_captured": "2013-11-14 16:28:13", "flickr_url": "",
                           "id": r["id"]})
            sentences = []
            for raw, tokens in r["captions"]:
                caps.append({"image_id": r["id"], "id": cap_id, "caption": raw})
                sentences.append({"tokens": tokens, "raw": raw, "imgid": len(karpathy), "sentid": cap_id})
                cap_id += 1
            for o in r["objects"]:
                insts.append({"id": inst_id, "image_id": r["id"], "category_id": shapes.SHAPES.index(o["shape"]) + 1,
                              "iscrowd": 0, "segmentation": [], **o})
                inst_id += 1
            split = "train" if part == "train2014" else karpathy_split.get(r["id"], "restval")
            karpathy.append({"filepath": part, "sentids": [s["sentid"] for s in sentences],
                             "filename": r["file_name"], "imgid": len(karpathy), "split": split,
                             "sentences": sentences, "cocoid": r["id"]})
        info = {"description": f"COCO-shaped stand-in ({part}), bench/coco_world.py", "version": VERSION,
                "year": 2014, "seed": seed}
        atomic_write_json(out / "annotations" / f"captions_{part}.json",
                          {"info": info, "licenses": licenses, "images": images, "annotations": caps})
        atomic_write_json(out / "annotations" / f"instances_{part}.json",
                          {"info": info, "licenses": licenses, "images": images, "annotations": insts,
                           "categories": categories})
    atomic_write_json(out / "dataset_coco.json", {"images": karpathy, "dataset": "coco"})
    train_tokens = Counter(t for e in karpathy if e["split"] in ("train", "restval")
                           for s in e["sentences"] for t in s["tokens"])
    lengths = np.array([len(s["tokens"]) for e in karpathy for s in e["sentences"]])
    return {"captions": int(lengths.size), "caption_length_mean": round(float(lengths.mean()), 3),
            "caption_length_sd": round(float(lengths.std()), 3),
            "caption_length_percentiles_5_50_95_max": [int(v) for v in np.percentile(lengths, [5, 50, 95, 100])],
            "karpathy_train_words": len(train_tokens),
            "karpathy_train_words_min5": sum(1 for c in train_tokens.values() if c >= 5),
            "karpathy_split_images": {s: sum(1 for e in karpathy if e["split"] == s)
                                      for s in ("train", "restval", "val", "test")}}


def generate(out_dir: str | os.PathLike, scale: float = 1.0, seed: int = 0, workers: int | None = None) -> dict:
    """Write the dataset under out_dir (its previous images of these names are replaced); returns coco_world.json."""
    out, n = Path(out_dir), counts(scale)
    (out / "coco_world.json").unlink(missing_ok=True)  # incomplete until written again at the end
    for part in PARTS:
        (out / part).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    tasks = _tasks(out, seed, n)
    words = filler_words(FILLER_WORDS, shapes_vocabulary())
    workers = max(1, workers or os.cpu_count() or 1)
    start, records = time.monotonic(), []
    log.info("writing %d COCO-shaped images into %s with %d worker(s)", len(tasks), out, workers)
    for rec in _render_all(tasks, workers, words):
        records.append(rec)
        if len(records) % max(1, len(tasks) // 10) == 0:
            log.info("%d/%d images (%.0fs)", len(records), len(tasks), time.monotonic() - start)
    stats = _write(out, records, seed, n)
    sizes = Counter(f"{r['width']}x{r['height']}" for r in records)
    world = {"version": VERSION, "seed": seed, "scale": scale, "images": n,
             "settings": {"image_sizes": IMAGE_SIZES, "grey_share": GREY_SHARE, "noise_sigma": NOISE_SIGMA,
                          "jpeg_quality": JPEG_QUALITY, "length": "%d + NegBin(%g, %g)" % LENGTH,
                          "filler_zipf": FILLER_ZIPF, "filler_words": FILLER_WORDS,
                          "shapes_world_version": shapes.VERSION},
             "stats": {**stats, "grey_images": sum(r["grey"] for r in records),
                       "image_bytes": sum(r["bytes"] for r in records),
                       "mean_image_kb": round(sum(r["bytes"] for r in records) / len(records) / 1024, 1),
                       "commonest_sizes": sizes.most_common(5)},
             "seconds": round(time.monotonic() - start, 1), "workers": workers}
    atomic_write_json(out / "coco_world.json", world, indent=1)
    return load(out)  # as a later reader sees it (lists, not tuples)


def load(out_dir: str | os.PathLike) -> dict | None:
    """coco_world.json of a complete dataset, or None."""
    try:
        return json.loads((Path(out_dir) / "coco_world.json").read_text())
    except (OSError, ValueError):
        return None


def ensure(out_dir: str | os.PathLike, scale: float = 1.0, seed: int = 0, workers: int | None = None) -> dict:
    """The dataset under out_dir, generated first unless a complete one of this version, seed and scale is there."""
    world = load(out_dir)
    if world and (world.get("version"), world.get("seed"), world.get("scale")) == (VERSION, seed, scale):
        return world
    return generate(out_dir, scale=scale, seed=seed, workers=workers)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder, e.g. data/coco-world")
    p.add_argument("--scale", type=float, default=1.0, help="share of COCO's size (default 1.0; 0.1: a tenth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing if --out already holds a complete dataset of this seed and scale")
    args = p.parse_args(argv)
    if not args.scale > 0:
        p.error("--scale must be > 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    world = (ensure if args.if_missing else generate)(args.out, scale=args.scale, seed=args.seed, workers=args.workers)
    s = world["stats"]
    print(f"COCO-shaped dataset in {args.out}: {world['images']['train2014']} train2014 + "
          f"{world['images']['val2014']} val2014 images ({s['image_bytes'] / 2**30:.2f} GiB, "
          f"mean {s['mean_image_kb']} KB, "
          f"{s['grey_images']} greyscale), {s['captions']} captions (mean length {s['caption_length_mean']}, "
          f"sd {s['caption_length_sd']}), Karpathy split {s['karpathy_split_images']}, "
          f"{s['karpathy_train_words_min5']} words >= 5 times in Karpathy train; {world['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
