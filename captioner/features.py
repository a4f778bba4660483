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
from .encoder import Encoder, EncoderConfig
from .images import ImageLoadError, load_image
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
        self.row_of = {iid: r for r, iid in enumerate(self.image_ids)}
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


@torch.no_grad()
def build_feature_cache(encoder: Encoder, records: Sequence[ImageRecord], folder: str | os.PathLike, *,
                        batch_size: int = 16, num_workers: int = 0, device: str | torch.device = "cpu",
                        progress: bool = True) -> FeatureCache:
    """Run the encoder over `records` once and store the grid; written to a temp folder, then renamed."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ds = ImageFileDataset([r.path for r in records], encoder.transform(), encoder.cfg.image_size)
    # Its own generator: iterating a DataLoader draws a seed, which must not move the global RNG
    # (a run that builds the cache must train exactly like one that reuses it).
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda", generator=torch.Generator())
    encoder = encoder.to(device).eval()
    out = np.lib.format.open_memmap(tmp / "feats.npy", mode="w+", dtype=np.float16,
                                    shape=(len(records), encoder.num_cells, encoder.channels))
    ok = np.zeros(len(records), dtype=bool)
    failed = []
    for idx, images, errors in tqdm(loader, desc=f"features {folder.name}", unit="batch", disable=not progress):
        good = [j for j, e in enumerate(errors) if not e]
        for j, e in enumerate(errors):
            if e:
                r = records[int(idx[j])]
                log.warning("skipping unreadable image: %s", e)
                failed.append({"image_id": r.image_id, "path": r.path, "error": e})
        if good:
            feats = encoder(images[good].to(device, non_blocking=True))  # (b, N, C)
            rows = idx[good].numpy()
            out[rows] = feats.float().cpu().numpy().astype(np.float16)
            ok[rows] = True
    out.flush()
    del out
    if not ok.all():
        # Keep only the rows that hold features, so row r always belongs to image_ids[r].
        arr = np.load(tmp / "feats.npy", mmap_mode="r")[ok]
        np.save(tmp / "feats.npy", arr)
    index = {"image_ids": [r.image_id for r, k in zip(records, ok) if k], "failed": failed,
             "encoder": asdict(encoder.cfg), "grid": list(encoder.grid), "channels": encoder.channels}
    with open(tmp / "index.json", "w") as f:
        json.dump(index, f)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    if failed:
        log.warning("%d of %d images could not be read and were skipped (listed in %s)",
                    len(failed), len(records), folder / "index.json")
    return FeatureCache(folder)


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
