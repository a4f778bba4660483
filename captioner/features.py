"""Feature cache and the torch Datasets that feed training and evaluation.

With a frozen encoder the CNN runs once per image: its (N, C) grid is stored in fp16 in one
.npy per (dataset, split, encoder config), memory-mapped and opened lazily in each DataLoader
worker (no open file handle is pickled into a worker). Images that cannot be read are
reported, listed in the cache's index and skipped; they never stop a run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .datasets import ImageRecord
from .distributed import ONE_PROCESS, Dist, barrier
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


class FeatureCache:
    """A finished cache folder: feats.npy (M, N, C) fp16 + index.json (image ids, failures)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        with open(self.folder / "index.json") as f:
            self.index = json.load(f)
        self.image_ids: list[int] = self.index["image_ids"]
        rows = self.index.get("rows", range(len(self.image_ids)))  # caches written before "rows" existed
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
        tmp = self.marker(k).with_suffix(".tmp")
        tmp.write_text(json.dumps({"failed": failed}))
        os.replace(tmp, self.marker(k))

    def failed(self) -> list[dict]:
        return [f for k in range(self.chunks) for f in json.loads(self.marker(k).read_text())["failed"]]


def _open_work(work: Path, meta: dict, shape: tuple[int, ...]) -> None:
    """Create the partial cache folder, or keep the one a killed run left if it is for the same job."""
    if (work / "meta.json").is_file():
        try:
            same = json.loads((work / "meta.json").read_text()) == json.loads(json.dumps(meta))  # tuples -> lists
        except (OSError, ValueError):
            same = False
        if same and (work / "feats.npy").is_file():
            return
        log.info("%s holds another job's partial features; starting it afresh", work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    np.lib.format.open_memmap(work / "feats.npy", mode="w+", dtype=np.float16, shape=shape).flush()
    (work / "meta.json").write_text(json.dumps(meta))


@torch.no_grad()
def build_feature_cache(encoder: Encoder, records: Sequence[ImageRecord], folder: str | os.PathLike, *,
                        batch_size: int = 16, num_workers: int = 0, device: str | torch.device = "cpu",
                        progress: bool = True, chunk_size: int = 1024, dist: Dist = ONE_PROCESS) -> FeatureCache:
    """Run the encoder over `records` once and store the (N, C) grid of each in fp16.

    Resumable: features go into FOLDER.partial/feats.npy (a memory map), a chunk of
    `chunk_size` images at a time; a chunk is marked done only once its rows are flushed, so
    a killed run picks up at its first unfinished chunk. Under torchrun the ranks share the
    chunks (the cache folder must then be on a filesystem all of them see). The finished
    folder is renamed into place in one step.
    """
    folder = Path(folder)
    work = folder.with_name(folder.name + ".partial")
    n = len(records)
    meta = {"image_ids": [r.image_id for r in records], "paths": [r.path for r in records],
            "encoder": asdict(encoder.cfg), "chunk_size": chunk_size}
    if dist.main:
        _open_work(work, meta, (n, encoder.num_cells, encoder.channels))
    barrier(dist)
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
        _finish(work, folder, records, prog.failed(), encoder)
    barrier(dist)
    return FeatureCache(folder)


def _finish(work: Path, folder: Path, records: Sequence[ImageRecord], failed: list[dict], encoder: Encoder) -> None:
    bad = {f["image_id"] for f in failed}
    ok = [(row, r.image_id) for row, r in enumerate(records) if r.image_id not in bad]
    # Unreadable images keep their (empty) rows; index.json maps each good image id to its row.
    index = {"image_ids": [i for _, i in ok], "rows": [row for row, _ in ok], "failed": failed,
             "encoder": asdict(encoder.cfg), "grid": list(encoder.grid), "channels": encoder.channels}
    for p in work.glob("chunk-*.json"):
        p.unlink()
    (work / "meta.json").unlink()
    with open(work / "index.json", "w") as f:
        json.dump(index, f)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(work, folder)
    if failed:
        log.warning("%d of %d images could not be read and were skipped (listed in %s)",
                    len(failed), len(records), folder / "index.json")


def cached_features(encoder: Encoder, records: Sequence[ImageRecord], cache_root: str | os.PathLike,
                    dataset: str, split: str, **kw) -> FeatureCache:
    """The cache for (dataset, split, encoder config), built on first use and reused after."""
    folder = Path(cache_root) / dataset / f"{split}-{encoder.cfg.backbone}-{encoder_key(encoder.cfg)}"
    if (folder / "index.json").is_file():
        cache = FeatureCache(folder)
        if set(cache.image_ids) | {f["image_id"] for f in cache.failed} == {r.image_id for r in records}:
            return cache
        log.info("feature cache %s is for other images; rebuilding", folder)
    log.info("computing features for %d %s/%s images into %s", len(records), dataset, split, folder)
    return build_feature_cache(encoder, records, folder, **kw)


def _pick(seed: int, epoch: int, index: int, n: int) -> int:
    """Which of n reference captions item `index` uses this epoch: random, but a function of
    (seed, epoch, index) alone, so any worker and any resumed run draws the same one."""
    return random.Random((seed * 1_000_003 + epoch) * 1_000_003 + index).randrange(n)


class CaptionFeatureDataset(Dataset):
    """(features, caption tokens) pairs from a feature cache.

    per_image="one": one item per image and epoch, its caption drawn at random from the
    references (deterministically from seed, epoch and index, so a resumed run sees the same
    data in any worker); "all": one item per reference caption.
    """

    def __init__(self, cache: FeatureCache, records: Sequence[ImageRecord], vocab: Vocab,
                 max_len: int = 30, per_image: str = "one", seed: int = 0):
        if per_image not in ("one", "all"):
            raise ValueError(f"per_image must be 'one' or 'all', not {per_image!r}")
        by_id = {r.image_id: r for r in records}
        self.cache = cache
        self.image_ids = [i for i in cache.image_ids if i in by_id]
        self.captions = [[vocab.encode(tokenize(c), max_len) for c in by_id[i].captions] for i in self.image_ids]
        self.per_image = per_image
        self.pairs = [(k, j) for k, caps in enumerate(self.captions) for j in range(len(caps))]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_ids) if self.per_image == "one" else len(self.pairs)

    def __getitem__(self, i: int):
        if self.per_image == "one":
            k = i
            j = _pick(self.seed, self.epoch, i, len(self.captions[k]))
        else:
            k, j = self.pairs[i]
        feats = torch.from_numpy(np.array(self.cache.features(self.image_ids[k])))  # (N, C) fp16
        return feats, torch.tensor(self.captions[k][j], dtype=torch.long)


class ImageCaptionDataset(Dataset):
    """(image, caption tokens) pairs for end-to-end training with a fine-tuned encoder."""

    def __init__(self, records: Sequence[ImageRecord], vocab: Vocab, transform: Callable, image_size: int,
                 max_len: int = 30, seed: int = 0):
        self.records = list(records)
        self.images = ImageFileDataset([r.path for r in self.records], transform, image_size)
        self.captions = [[vocab.encode(tokenize(c), max_len) for c in r.captions] for r in self.records]
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
        j = _pick(self.seed, self.epoch, i, len(self.captions[i]))
        return image, torch.tensor(self.captions[i][j], dtype=torch.long)


def collate_captions(batch):
    """Stack inputs (as float32) and right-pad the token sequences with <pad>."""
    batch = [b for b in batch if b is not None]  # unreadable images were reported and dropped
    if not batch:
        return None
    inputs = torch.stack([b[0] for b in batch]).float()
    T = max(len(b[1]) for b in batch)
    tokens = torch.full((len(batch), T), PAD_ID, dtype=torch.long)
    for r, (_, t) in enumerate(batch):
        tokens[r, : len(t)] = t
    return inputs, tokens
