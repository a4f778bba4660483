"""Decode a split and score it: shared by training's validation and evaluate.py.

Decoding is real search (beam or greedy), never teacher-forced argmax. Features come from
the cache when the encoder is frozen, from the images through the encoder when it is not.
"""
from __future__ import annotations

import logging
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .datasets import ImageRecord
from .features import FeatureView, ImageFileDataset, cached_features
from .metrics import METRIC_KEYS, NLTK_BLEU_KEYS, coco_caption_scores, nltk_corpus_bleu
from .model import Captioner, CaptionOutput
from .scene_metrics import SHAPES_METRICS, shapes_scores
from .search import DEFAULT_MAX_LEN

log = logging.getLogger(__name__)


def decode_cache(model: Captioner, cache: FeatureView, image_ids: Sequence[int], *, beam_size: int = 3,
                 max_len: int = DEFAULT_MAX_LEN, batch_size: int = 100,
                 progress: bool = False) -> dict[int, CaptionOutput]:
    out = {}
    ids = [i for i in image_ids if i in cache.row_of]
    for s in tqdm(range(0, len(ids), batch_size), desc="decode", unit="batch", disable=not progress):
        chunk = ids[s: s + batch_size]
        feats = torch.from_numpy(np.stack([cache.features(i) for i in chunk]).astype(np.float32))
        for iid, o in zip(chunk, model.decode(feats, beam_size, max_len)):
            out[iid] = o
    return out


def split_features(model: Captioner, records: Sequence[ImageRecord], cache_dir: str, dataset: str, split: str,
                   **kw) -> FeatureView | None:
    """Where a split's features come from: the feature cache (built on first use) when the encoder
    has the stock weights its config names; None when it was fine-tuned, whose cached features
    would be stale, so decode_split runs the encoder on the images. `kw` goes to cached_features."""
    if not model.encoder.stock_weights:
        return None
    return cached_features(model.encoder, records, cache_dir, dataset, split, **kw)


def decode_split(model: Captioner, records: Sequence[ImageRecord], features: FeatureView | None, *,
                 beam_size: int = 3, max_len: int = DEFAULT_MAX_LEN, batch_size: int | None = None,
                 num_workers: int = 0, progress: bool = False) -> dict[int, CaptionOutput]:
    """Search every record, from `features` (split_features) or, when None, from its image;
    unreadable images get no output. batch_size None: each path's default."""
    kw = {} if batch_size is None else {"batch_size": batch_size}
    if features is not None:
        return decode_cache(model, features, [r.image_id for r in records], beam_size=beam_size, max_len=max_len,
                            progress=progress, **kw)
    return decode_records(model, records, beam_size=beam_size, max_len=max_len, num_workers=num_workers,
                          progress=progress, **kw)


def caption_files(model: Captioner, paths: Sequence[str], *, beam_size: int = 3, max_len: int = DEFAULT_MAX_LEN,
                  batch_size: int = 32, num_workers: int = 0) -> Iterator[list[tuple[str, CaptionOutput | None, str]]]:
    """Images decoded in DataLoader workers, encoded and searched a batch at a time.

    Yields, per batch and in input order, (path, output or None, error message); an unreadable
    image carries its loader error instead of stopping the run. Used by evaluation of
    fine-tuned encoders and by caption.py.
    """
    ds = ImageFileDataset(list(paths), model.transform(), model.cfg.encoder.image_size)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator(),
                        pin_memory=model.device.type == "cuda")
    for idx, images, errors in loader:
        good = [j for j, e in enumerate(errors) if not e]
        outs = iter(model.decode(model.encode(images if len(good) == len(errors) else images[good]),
                                 beam_size, max_len)) if good else iter(())
        yield [(paths[int(i)], None if e else next(outs), e) for i, e in zip(idx, errors)]


def decode_records(model: Captioner, records: Sequence[ImageRecord], *, beam_size: int = 3,
                   max_len: int = DEFAULT_MAX_LEN, batch_size: int = 50, num_workers: int = 0,
                   progress: bool = False) -> dict[int, CaptionOutput]:
    """Run the encoder on the images (fine-tuned encoders); unreadable images are reported and skipped."""
    out = {}
    id_of = {r.path: r.image_id for r in records}
    batches = caption_files(model, [r.path for r in records], beam_size=beam_size, max_len=max_len,
                            batch_size=batch_size, num_workers=num_workers)
    for batch in tqdm(batches, total=-(-len(records) // batch_size), desc="decode", unit="batch",
                      disable=not progress):
        for path, o, error in batch:
            if error:
                log.warning("skipping unreadable image: %s", error)
            else:
                out[id_of[path]] = o
    return out


# What training can select best.pt by: every score evaluate.py reports except grounding_chance (a baseline).
VAL_METRICS = METRIC_KEYS + NLTK_BLEU_KEYS + SHAPES_METRICS


def score_outputs(outputs: dict[int, CaptionOutput], records: Sequence[ImageRecord], *,
                  objects: dict[int, list[dict]] | None = None,
                  image_sizes: dict[int, tuple[int, int]] | None = None,
                  metrics: Sequence[str] | None = None, meteor: bool | None = None) -> tuple[dict, dict]:
    """COCO caption metrics (+ the shapes-world scores of scene_metrics.shapes_scores when objects are known).

    Every record is scored: an image without an output (it could not be read) counts as an
    empty caption, so an unreadable image lowers the scores instead of leaving the set, and
    `info["unreadable_images"]` says how many there were; grounding, which needs attention, is
    measured on the images that were read. `metrics` names the COCO scorers to run and whether
    to add nltk's BLEU (None: all of them); the shapes-world scores are computed whenever
    `objects` is given. score_captions with the outputs' text, words and attention.
    """
    return score_captions({i: o.text for i, o in outputs.items()}, records,
                          words={i: o.words for i, o in outputs.items()},
                          alphas={i: o.alphas for i, o in outputs.items()},
                          objects=objects, image_sizes=image_sizes, metrics=metrics, meteor=meteor)


def score_captions(captions: Mapping[int, str], records: Sequence[ImageRecord], *,
                   words: Mapping[int, list[str]] | None = None, alphas: Mapping[int, np.ndarray] | None = None,
                   objects: dict[int, list[dict]] | None = None,
                   image_sizes: dict[int, tuple[int, int]] | None = None,
                   metrics: Sequence[str] | None = None, meteor: bool | None = None,
                   absent: str = "unreadable") -> tuple[dict, dict]:
    """The one metrics path: score_outputs for decoded outputs, evaluate.py --results for a results file.

    captions: image id -> caption; ids that are not records are ignored, and a record without a
    caption is scored as an empty caption, counted in `info[absent + "_images"]` (its ids, the
    first 100, in `info[absent + "_image_ids"]`). words and alphas: each captioned image's words
    and their attention, for grounding; None (a caption without attention, e.g. read from a
    results file): grounding is not measured, its scores are absent and info says why.
    """
    refs = {r.image_id: list(r.captions) for r in records}
    preds = {i: captions[i] if i in captions else "" for i in refs}
    missing = [i for i in refs if i not in captions]
    coco = None if metrics is None else [m for m in metrics if m in METRIC_KEYS]
    scores, info = coco_caption_scores(preds, refs, meteor=meteor, metrics=coco)
    if metrics is None or set(metrics) & set(NLTK_BLEU_KEYS):
        scores.update(nltk_corpus_bleu(preds, refs))
        info["nltk_BLEU"] = ("nltk.translate.bleu_score.corpus_bleu on captioner.text.tokenize tokens, each image once "
                             "with all its references, no smoothing: for comparison with tutorials, not the COCO BLEU")
    info["images"] = len(refs)
    info[f"{absent}_images"] = len(missing)
    if missing:
        info[f"{absent}_image_ids"] = sorted(missing)[:100]
        info[f"{absent}_scored_as"] = "an empty caption"
    if objects is not None:
        attention = words is not None and alphas is not None
        seen = [i for i in refs if i in captions]  # attention exists only for images that have a caption
        shapes, shapes_info = shapes_scores(preds, {i: words[i] for i in seen} if attention else None,
                                            {i: alphas[i] for i in seen} if attention else None,
                                            objects, image_sizes)
        scores.update(shapes)
        info.update(shapes_info)
    return scores, info
