"""Feature cache and the torch Datasets that feed training and evaluation.

With a frozen encoder the CNN runs once per image: its (N, C) grid is stored in fp16 in a cache
folder (feats.npy + index.json) per (dataset, split, encoder config) and set of images,
memory-mapped and opened lazily in each DataLoader worker (no open file handle is pickled into
a worker). A finished folder is immutable: a run reads the images it needs by id from the
folders that hold them and computes only the missing ones, into a new folder beside them; no
run rewrites or deletes a cache another run wrote. Images that cannot be read are reported,
listed in the cache's index and skipped; they never stop a run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .atomic import atomic_write_json, exclusive
from .datasets import ImageRecord
from .distributed import ONE_PROCESS, Dist, barrier, broadcast_object
from .encoder import Encoder, EncoderConfig
from .images import ImageLoadError, load_image
from .runtime import autocast
from .text import PAD_ID, Vocab, tokenize

log = logging.getLogger(__name__)


def encoder_key(cfg: EncoderConfig) -> str:
    """A short stable hash of everything that changes the features."""
    blob = json.dumps(asdict(cfg), sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


class ImageFileDataset(Dataset):
    """Decodes images with the one safe loader + transform; a bad file yields its error, not a crash."""

    def __init__(self, paths: Sequence[str], transform: Callable, image_size: int):
        self.paths = list(paths)
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(load_image(self.paths[i])), ""
        except ImageLoadError as e:
            return i, torch.zeros(3, self.image_size, self.image_size), str(e)


CACHE_FORMAT = 2  # index.json's "format": 2 maps each image id to its row ("rows"); 1 (no "format") had one
#                  row per id, in order, and is still read


class FeatureCache:
    """A finished cache folder: feats.npy (M, N, C) fp16 + index.json (image ids, their rows, failures).

    A finished folder is never rewritten or deleted: later runs only read it (see FeatureView).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        with open(self.folder / "index.json") as f:
            self.index = json.load(f)
        fmt = self.index.get("format", 2 if "rows" in self.index else 1)
        if fmt > CACHE_FORMAT:
            raise ValueError(f"{self.folder}: feature cache format {fmt} is newer than this release reads "
                             f"({CACHE_FORMAT}); update captioner or use another --cache-dir")
        self.image_ids: list[int] = self.index["image_ids"]
        rows = self.index["rows"] if fmt >= 2 else range(len(self.image_ids))
        self.row_of = dict(zip(self.image_ids, rows))
        self._arr: np.ndarray | None = None

    def __getstate__(self):
        # Workers reopen the memory map themselves.
        return {**self.__dict__, "_arr": None}

    @property
    def array(self) -> np.ndarray:
        if self._arr is None:
            self._arr = np.load(self.folder / "feats.npy", mmap_mode="r")
        return self._arr

    @property
    def failed(self) -> list[dict]:
        return self.index.get("failed", [])

    def __len__(self) -> int:
        return len(self.image_ids)

    def features(self, image_id: int) -> np.ndarray:
        return self.array[self.row_of[image_id]]  # (N, C) fp16


class FeatureView:
    """The features of the requested images, read by id from one or more finished cache folders.

    What `cached_features` returns, with FeatureCache's reading interface: `image_ids` (the
    readable requested images, in the order of the records), `row_of` (image id -> its row in
    the array of the folder that holds it: `i in view.row_of` says whether image i has features),
    `features(image_id)`, `failed` (the requested images that could not be read), `folder` (the
    first of `folders`) and len(). It pickles without memory maps, like FeatureCache. `array`
    exists when a single folder serves the view. An image held by several folders is read from
    the first that holds it readable.
    """

    def __init__(self, parts: Sequence[FeatureCache], records: Sequence[ImageRecord]):
        failures = [{f["image_id"]: f for f in c.failed} for c in parts]
        self.image_ids: list[int] = []
        self.row_of: dict[int, int] = {}
        self.failed: list[dict] = []
        part_of: dict[int, int] = {}
        seen: set[int] = set()
        for r in records:
            i = r.image_id
            if i in seen:
                continue
            seen.add(i)
            p = next((k for k, c in enumerate(parts) if i in c.row_of), None)
            if p is not None:
                self.image_ids.append(i)
                self.row_of[i] = parts[p].row_of[i]
                part_of[i] = p
                continue
            p = next((k for k, f in enumerate(failures) if i in f), None)
            if p is None:
                raise KeyError(f"image {i} is in none of the feature caches {[str(c.folder) for c in parts]}")
            self.failed.append(failures[p][i])
            part_of[i] = p
        used = sorted(set(part_of.values()))  # only the folders that serve something
        self.parts = [parts[k] for k in used]
        new = {k: j for j, k in enumerate(used)}
        self._part_of = {i: new[p] for i, p in part_of.items() if i in self.row_of}

    @property
    def folders(self) -> list[Path]:
        return [c.folder for c in self.parts]

    @property
    def folder(self) -> Path | None:
        return self.parts[0].folder if self.parts else None

    @property
    def array(self) -> np.ndarray:
        if len(self.parts) != 1:
            raise ValueError(f"these features are in {len(self.parts)} cache folders {self.folders}: "
                             "read them with features(image_id)")
        return self.parts[0].array

    def __len__(self) -> int:
        return len(self.image_ids)

    def features(self, image_id: int) -> np.ndarray:
        return self.parts[self._part_of[image_id]].array[self.row_of[image_id]]  # (N, C) fp16


class _Progress:
    """Which chunks of a partial cache are written: one marker file per finished chunk."""

    def __init__(self, work: Path, n: int, chunk_size: int):
        self.work, self.n, self.size = work, n, chunk_size
        self.chunks = math.ceil(n / chunk_size)

    def marker(self, k: int) -> Path:
        return self.work / f"chunk-{k:06d}.json"

    def done(self, k: int) -> bool:
        return self.marker(k).is_file()

    def rows(self, k: int) -> range:
        return range(k * self.size, min(self.n, (k + 1) * self.size))

    def finish(self, k: int, failed: list[dict]) -> None:
        atomic_write_json(self.marker(k), {"failed": failed})

    def failed(self) -> list[dict]:
        return [f for k in range(self.chunks) for f in json.loads(self.marker(k).read_text())["failed"]]


def _on_rank0(dist: Dist, fn: Callable, *args):
    """fn(*args) computed by rank 0 and handed to every rank; so is the error it raises (no rank is left waiting)."""
    out = None
    if dist.main:
        try:
            out = fn(*args)
        except Exception as e:
            if not dist.enabled:
                raise
            out = e
    out = broadcast_object(dist, out)
    if isinstance(out, Exception):
        raise out
    return out


_SAME_JOB = ("image_ids", "paths", "encoder")  # what a partial folder's meta.json must match to be resumed


def _open_work(work: Path, meta: dict, shape: tuple[int, ...]) -> dict:
    """Create the partial cache folder, or resume the one a killed run left for the same images;
    returns the meta.json in force (a resumed folder keeps its own chunk size).

    The folder appears in one rename, already holding feats.npy and meta.json, so a run never
    mistakes another's half-created folder for a broken one. A partial folder for other images
    (another job, which may be running) is never deleted: that is an error here, and
    cached_features names each job's folder by its images so that it does not happen.
    """
    meta = json.loads(json.dumps(meta))  # tuples -> lists, as read back from disk
    if not work.exists():
        tmp = work.with_name(f"{work.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
        tmp.mkdir(parents=True)
        np.lib.format.open_memmap(tmp / "feats.npy", mode="w+", dtype=np.float16, shape=shape).flush()
        atomic_write_json(tmp / "meta.json", meta)
        try:
            os.rename(tmp, work)
            return meta
        except OSError:  # another process created it first
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        theirs = json.loads((work / "meta.json").read_text())
    except (OSError, ValueError):
        theirs = None
    if not (isinstance(theirs, dict) and all(theirs.get(k) == meta[k] for k in _SAME_JOB)
            and isinstance(theirs.get("chunk_size"), int) and (work / "feats.npy").is_file()):
        raise FileExistsError(f"{work} holds another job's unfinished features (a run may be writing them); "
                              "it is left alone: delete it yourself if no run is")
    if theirs["chunk_size"] != meta["chunk_size"]:
        log.info("%s was started with chunks of %d images: resuming it with those", work, theirs["chunk_size"])
    return theirs


def _start(folder: Path, work: Path, meta: dict, shape: tuple[int, ...]) -> int | None:
    """Rank 0, before a build: None when `folder` is already finished for these images, else the
    chunk size of the partial folder it created or resumes. A finished folder is never rebuilt."""
    if (folder / "index.json").is_file():
        done = FeatureCache(folder)
        if set(done.image_ids) | {f["image_id"] for f in done.failed} == set(meta["image_ids"]):
            log.info("%s is already finished; nothing to compute", folder)
            return None
        raise FileExistsError(f"{folder} is a finished feature cache of other images: it is never overwritten")
    return _open_work(work, meta, shape)["chunk_size"]


@torch.no_grad()
def build_feature_cache(encoder: Encoder, records: Sequence[ImageRecord], folder: str | os.PathLike, *,
                        batch_size: int = 16, num_workers: int = 0, device: str | torch.device = "cpu",
                        progress: bool = True, chunk_size: int = 1024, dist: Dist = ONE_PROCESS) -> FeatureCache:
    """Run the encoder over `records` once and store the (N, C) grid of each in fp16.

    Resumable: features go into FOLDER.partial/feats.npy (a memory map), a chunk of
    `chunk_size` images at a time; a chunk is marked done only once its rows are flushed, so
    a killed run picks up at its first unfinished chunk. Under torchrun the ranks share the
    chunks (the cache folder must then be on a filesystem all of them see). The finished
    folder is renamed into place in one step. A finished FOLDER is never replaced: for the same
    images it is returned as it is (also when another process finishes it first), for other
    images this raises FileExistsError; so does a FOLDER.partial of other images.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One builder (one torchrun group: its rank 0 holds the lock) per folder at a time: another process
    # asking for the same features waits, then finds them finished and reads them.
    with (exclusive(folder.parent, "feature-cache build", name=f".{folder.name}.lock", wait=1.0) if dist.main
          else contextlib.nullcontext()):
        return _build(encoder, records, folder, batch_size, num_workers, device, progress, chunk_size, dist)


def _build(encoder: Encoder, records: Sequence[ImageRecord], folder: Path, batch_size: int, num_workers: int,
           device: str | torch.device, progress: bool, chunk_size: int, dist: Dist) -> FeatureCache:
    work = folder.with_name(folder.name + ".partial")
    n = len(records)
    meta = {"image_ids": [r.image_id for r in records], "paths": [r.path for r in records],
            "encoder": asdict(encoder.cfg), "chunk_size": chunk_size}
    shape = (n, encoder.num_cells, encoder.channels)
    chunk_size = _on_rank0(dist, _start, folder, work, meta, shape)
    if chunk_size is None:
        return FeatureCache(folder)
    prog = _Progress(work, n, chunk_size)
    todo = [k for k in range(prog.chunks) if not prog.done(k)]
    mine = todo[dist.rank::dist.world]
    if dist.main and len(todo) < prog.chunks:
        log.info("resuming %s: %d of %d chunks already done", work, prog.chunks - len(todo), prog.chunks)
    pending = [i for k in mine for i in prog.rows(k)]
    left = {k: len(prog.rows(k)) for k in mine}
    failed: dict[int, list[dict]] = {k: [] for k in mine}
    arr = np.load(work / "feats.npy", mmap_mode="r+")
    ds = ImageFileDataset([records[i].path for i in pending], encoder.transform(), encoder.cfg.image_size)
    # Its own generator: iterating a DataLoader draws a seed, which must not move the global RNG
    # (a run that builds the cache must train exactly like one that reuses it).
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda", generator=torch.Generator())
    encoder = encoder.to(device).eval()
    # The cache holds fp16: on CUDA the encoder runs under fp16 autocast too (EfficientNet-Lite's
    # ReLU6 keeps activations far inside fp16's range); on CPU it runs in fp32.
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else None
    bar = tqdm(total=n, initial=n - sum(len(prog.rows(k)) for k in todo),
               desc=f"features {folder.name}", unit="img", disable=not (progress and dist.main))
    for idx, images, errors in loader:
        rows = np.array([pending[int(j)] for j in idx])
        good = [j for j, e in enumerate(errors) if not e]
        for j, e in enumerate(errors):
            if e:
                r = records[rows[j]]
                log.warning("skipping unreadable image: %s", e)
                failed[rows[j] // chunk_size].append({"image_id": r.image_id, "path": r.path, "error": e})
        if good:
            with autocast(device, dtype):
                feats = encoder(images[good].to(device, non_blocking=True))  # (b, N, C)
            arr[rows[good]] = feats.to(torch.float16).cpu().numpy()
        for r in rows:
            k = int(r) // chunk_size
            left[k] -= 1
            if left[k] == 0:
                arr.flush()
                prog.finish(k, failed[k])
        bar.update(len(rows) * dist.world)  # the other ranks go at about the same pace
    bar.close()
    del arr
    barrier(dist)
    if dist.main:
        _finish(work, folder, records, prog, encoder)
    barrier(dist)
    return FeatureCache(folder)


def _finish(work: Path, folder: Path, records: Sequence[ImageRecord], prog: _Progress, encoder: Encoder) -> None:
    """Turn the complete partial folder into the finished one, unless another process finished
    the same job first: then its folder is kept and this work dropped. Never deletes a finished cache."""
    failed = prog.failed()
    bad = {f["image_id"] for f in failed}
    ok = [(row, r.image_id) for row, r in enumerate(records) if r.image_id not in bad]
    # Unreadable images keep their (empty) rows; index.json maps each good image id to its row.
    index = {"format": CACHE_FORMAT, "image_ids": [i for _, i in ok], "rows": [row for row, _ in ok], "failed": failed,
             "encoder": asdict(encoder.cfg), "grid": list(encoder.grid), "channels": encoder.channels}
    for p in work.glob("chunk-*.json"):
        p.unlink()
    (work / "meta.json").unlink()
    atomic_write_json(work / "index.json", index)
    try:
        os.rename(work, folder)  # fails on an existing (non-empty) folder: nothing is replaced
    except OSError:
        if not (folder / "index.json").is_file():
            raise
        log.info("%s was finished by another run meanwhile: keeping it, dropping %s", folder, work)
        shutil.rmtree(work, ignore_errors=True)
        return
    if failed:
        log.warning("%d of %d images could not be read and were skipped (listed in %s)",
                    len(failed), len(records), folder / "index.json")


def _images_key(records: Sequence[ImageRecord]) -> str:
    """Names the folder a job writes: a hash of its images (ids and paths, in order)."""
    blob = json.dumps([[r.image_id, r.path] for r in records]).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def _siblings(base: Path, suffix: str = "") -> list[Path]:
    """`base` and the folders written beside it (`base+<images key>`), with `suffix` (".partial") appended."""
    pattern = re.compile(re.escape(base.name) + r"(\+[0-9a-f]{12})?" + re.escape(suffix))
    if not base.parent.is_dir():
        return []
    return sorted(p for p in base.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir())


def _plan(base: Path, records: list[ImageRecord]) -> tuple[list[str], list[int], str | None]:
    """Rank 0 decides for all: the finished folders that serve `records` (names, in the order a
    FeatureView takes them), the records in none of them (indices) and the folder those go to."""
    caches = [FeatureCache(p) for p in _siblings(base) if (p / "index.json").is_file()]
    want = {r.image_id for r in records}
    caches.sort(key=lambda c: (-len(want.intersection(c.row_of)), c.folder.name))  # fewest folders first
    held = set()
    for c in caches:
        held.update(want.intersection(c.row_of), want.intersection(f["image_id"] for f in c.failed))
    view = FeatureView(caches, [r for r in records if r.image_id in held])
    served = Counter(view._part_of.values())
    for k, c in enumerate(view.parts):
        log.info("reusing %s: %d of the %d images read from it", c.folder, served[k], len(records))
    missing, seen = [], set()
    for k, r in enumerate(records):
        if r.image_id not in held and r.image_id not in seen:
            missing.append(k)
            seen.add(r.image_id)
    name = f"{base.name}+{_images_key([records[k] for k in missing])}" if missing else None
    for p in _siblings(base, ".partial"):
        if p.name != f"{name}.partial":
            log.info("leaving %s alone: another job's unfinished features (delete it if no run is writing it)", p)
    return [c.folder.name for c in view.parts], missing, name


def cached_features(encoder: Encoder, records: Sequence[ImageRecord], cache_root: str | os.PathLike,
                    dataset: str, split: str, *, dist: Dist = ONE_PROCESS, **kw) -> FeatureView:
    """The features of `records` for (dataset, split, encoder config), computed once and reused after.

    Every finished cache folder of (dataset, split, encoder config) is read: the base folder
    `<split>-<backbone>-<encoder key>` and those beside it, `<base>+<images key>`. Records that
    some folder holds (readable or recorded as unreadable) are served from it, by image id;
    only the others go through the encoder, into a new folder `<base>+<key of those images>`
    (so two runs with different images never share a partial folder). No folder is rewritten
    or deleted. `kw` goes to build_feature_cache.
    """
    base = Path(cache_root) / dataset / f"{split}-{encoder.cfg.backbone}-{encoder_key(encoder.cfg)}"
    records = list(records)
    used, missing, name = _on_rank0(dist, _plan, base, records)
    parts = [FeatureCache(base.parent / u) for u in used]
    if missing:
        folder = base.parent / name
        if dist.main:
            log.info("computing features for %d of %d %s/%s images into %s", len(missing), len(records),
                     dataset, split, folder)
        parts.append(build_feature_cache(encoder, [records[k] for k in missing], folder, dist=dist, **kw))
    return FeatureView(parts, records)


def reference_index(seed: int, epoch: int, index: int, n: int, weights: Sequence[float] | None = None) -> int:
    """Which of n reference captions item `index` uses this epoch: random, but a function of
    (seed, epoch, index) alone, so any worker and any resumed run draws the same one.
    weights: relative chances of the n references (None: all alike)."""
    r = random.Random((seed * 1_000_003 + epoch) * 1_000_003 + index)
    if weights is None:
        return r.randrange(n)
    return r.choices(range(n), weights=weights)[0]


def reference_weights(captions: Sequence[str], prefer: str | None, weight: float) -> list[float] | None:
    """Per-reference chances of being drawn: `weight` for a caption the regular expression `prefer`
    finds something in, 1 for the others; None (all alike) when nothing is preferred."""
    if not prefer or weight == 1:
        return None
    pattern = re.compile(prefer)
    return [weight if pattern.search(c) else 1.0 for c in captions]


def _tokens(record: ImageRecord, tokens: Mapping[int, list[list[str]]] | None) -> list[list[str]]:
    """The record's captions tokenised: from `tokens` (image id -> token lists) when the caller has
    tokenised them already (training does, once, for the vocabulary too), else now."""
    return tokens[record.image_id] if tokens is not None else [tokenize(c) for c in record.captions]


class CaptionFeatureDataset(Dataset):
    """(features, caption tokens) pairs from a feature cache.

    per_image="one": one item per image and epoch, its caption drawn at random from the
    references (deterministically from seed, epoch and index, so a resumed run sees the same
    data in any worker), a reference the regular expression `prefer` matches `prefer_weight`
    times as likely as another; "all": one item per reference caption.
    """

    def __init__(self, cache: FeatureCache | FeatureView, records: Sequence[ImageRecord], vocab: Vocab,
                 max_len: int = 30, per_image: str = "one", seed: int = 0, prefer: str | None = None,
                 prefer_weight: float = 1.0, tokens: Mapping[int, list[list[str]]] | None = None,
                 attention_targets: Mapping[int, list[tuple[np.ndarray, np.ndarray]]] | None = None,
                 recall_targets: Mapping[int, list[np.ndarray]] | None = None):
        if per_image not in ("one", "all"):
            raise ValueError(f"per_image must be 'one' or 'all', not {per_image!r}")
        by_id = {r.image_id: r for r in records}
        self.cache = cache
        self.image_ids = [i for i in cache.image_ids if i in by_id]
        self.captions = [[vocab.encode(t, max_len) for t in _tokens(by_id[i], tokens)] for i in self.image_ids]
        self.weights = [reference_weights(by_id[i].captions, prefer, prefer_weight) for i in self.image_ids]
        self.per_image = per_image
        self.pairs = [(k, j) for k, caps in enumerate(self.captions) for j in range(len(caps))]
        # image id -> per reference (word indices, (k, N) bool cell masks): where its words should look
        self.targets = None if attention_targets is None else [attention_targets[i] for i in self.image_ids]
        # image id -> per reference, (k, 2) int64 rows (word index, recall memory entry to read back there)
        if recall_targets is not None and attention_targets is None:
            raise ValueError("recall_targets come with attention_targets (the items carry both)")
        self.recalls = None if recall_targets is None else [recall_targets[i] for i in self.image_ids]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_ids) if self.per_image == "one" else len(self.pairs)

    def reference_of(self, k: int) -> int:
        """Which reference of image k (of image_ids) per_image="one" gives it this epoch."""
        return reference_index(self.seed, self.epoch, k, len(self.captions[k]), self.weights[k])

    def __getitem__(self, i: int):
        if self.per_image == "one":
            k, j = i, self.reference_of(i)
        else:
            k, j = self.pairs[i]
        feats, tokens = self.image_features(k), torch.tensor(self.captions[k][j], dtype=torch.long)
        if self.targets is None:
            return feats, tokens
        masks = self.target_masks(k, j, len(tokens) - 1, feats.shape[0])
        if self.recalls is None:
            return feats, tokens, masks
        return feats, tokens, masks, self.recall_entries(k, j, len(tokens) - 1)

    def recall_entries(self, k: int, j: int, steps: int) -> torch.Tensor:
        """(steps,) long: the recall memory entry step t should read back, -1 where unsupervised."""
        out = torch.full((steps,), -1, dtype=torch.long)
        rows = self.recalls[k][j]
        rows = rows[rows[:, 0] < steps - 1]  # the last step predicts <end>
        out[torch.from_numpy(rows[:, 0])] = torch.from_numpy(rows[:, 1])
        return out

    def target_masks(self, k: int, j: int, steps: int, cells: int) -> torch.Tensor:
        """(steps, N) bool: row t marks where the attention predicting token t + 1 (word t) should look;
        all-False rows are not supervised (words cut by max_len included)."""
        out = torch.zeros(steps, cells, dtype=torch.bool)
        words, masks = self.targets[k][j]
        keep = words < steps - 1  # the last step predicts <end>
        out[torch.from_numpy(words[keep])] = torch.from_numpy(masks[keep])
        return out

    def image_features(self, k: int) -> torch.Tensor:
        """(N, C) fp16 features of image k (of image_ids)."""
        return torch.from_numpy(np.array(self.cache.features(self.image_ids[k])))


class ImageCaptionDataset(Dataset):
    """(image, caption tokens) pairs for end-to-end training with a fine-tuned encoder."""

    def __init__(self, records: Sequence[ImageRecord], vocab: Vocab, transform: Callable, image_size: int,
                 max_len: int = 30, seed: int = 0, prefer: str | None = None, prefer_weight: float = 1.0,
                 tokens: Mapping[int, list[list[str]]] | None = None):
        self.records = list(records)
        self.images = ImageFileDataset([r.path for r in self.records], transform, image_size)
        self.captions = [[vocab.encode(t, max_len) for t in _tokens(r, tokens)] for r in self.records]
        self.weights = [reference_weights(r.captions, prefer, prefer_weight) for r in self.records]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        _, image, error = self.images[i]
        if error:
            log.warning("skipping unreadable image: %s", error)
            return None
        j = reference_index(self.seed, self.epoch, i, len(self.captions[i]), self.weights[i])
        return image, torch.tensor(self.captions[i][j], dtype=torch.long)


def collate_captions(batch):
    """Stack inputs (as float32) and right-pad the token sequences with <pad> (and the attention and recall
    targets, when the items have them, with unsupervised steps)."""
    batch = [b for b in batch if b is not None]  # unreadable images were reported and dropped
    if not batch:
        return None
    inputs = torch.stack([b[0] for b in batch]).float()
    T = max(len(b[1]) for b in batch)
    tokens = torch.full((len(batch), T), PAD_ID, dtype=torch.long)
    for r, b in enumerate(batch):
        tokens[r, : len(b[1])] = b[1]
    if len(batch[0]) == 2:
        return inputs, tokens
    targets = torch.zeros(len(batch), T - 1, batch[0][2].shape[1], dtype=torch.bool)  # attention targets
    for r, b in enumerate(batch):
        targets[r, : len(b[2])] = b[2]
    if len(batch[0]) == 3:
        return inputs, tokens, targets
    entries = torch.full((len(batch), T - 1), -1, dtype=torch.long)  # recall targets
    for r, b in enumerate(batch):
        entries[r, : len(b[3])] = b[3]
    return inputs, tokens, targets, entries
