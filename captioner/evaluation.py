"""Decode a split and score it: shared by training's validation and evaluate.py.

Decoding is real search (beam or greedy), never teacher-forced argmax. Features come from
the cache when the encoder is frozen, from the images through the encoder when it is not.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .datasets import ImageRecord
from .features import FeatureCache, ImageFileDataset
from .model import CaptionOutput, Captioner
from .search import DEFAULT_MAX_LEN

log = logging.getLogger(__name__)


def decode_cache(model: Captioner, cache: FeatureCache, image_ids: Sequence[int], *, beam_size: int = 3,
                 max_len: int = DEFAULT_MAX_LEN, batch_size: int = 100, progress: bool = False) -> dict[int, CaptionOutput]:
    out = {}
    ids = [i for i in image_ids if i in cache.row_of]
    for s in tqdm(range(0, len(ids), batch_size), desc="decode", unit="batch", disable=not progress):
        chunk = ids[s: s + batch_size]
        feats = torch.from_numpy(np.stack([cache.features(i) for i in chunk]).astype(np.float32))
        for iid, o in zip(chunk, model.decode(feats, beam_size, max_len)):
            out[iid] = o
    return out


def decode_records(model: Captioner, records: Sequence[ImageRecord], *, beam_size: int = 3, max_len: int = DEFAULT_MAX_LEN,
                   batch_size: int = 50, num_workers: int = 0, progress: bool = False) -> dict[int, CaptionOutput]:
    """Run the encoder on the images (fine-tuned encoders); unreadable images are reported and skipped."""
    ds = ImageFileDataset([r.path for r in records], model.transform(), model.cfg.encoder.image_size)
    out = {}
    for idx, images, errors in tqdm(DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                                               generator=torch.Generator()),
                                    desc="decode", unit="batch", disable=not progress):
        good = [j for j, e in enumerate(errors) if not e]
        for j, e in enumerate(errors):
            if e:
                log.warning("skipping unreadable image: %s", e)
        if good:
            outs = model.decode(model.encode(images[good]), beam_size, max_len)
            for j, o in zip(good, outs):
                out[records[int(idx[j])].image_id] = o
    return out


def score_outputs(outputs: dict[int, CaptionOutput], records: Sequence[ImageRecord], *,
                  objects: dict[int, list[dict]] | None = None,
                  image_sizes: dict[int, tuple[int, int]] | None = None,
                  metrics: Sequence[str] | None = None, meteor: bool | None = None) -> tuple[dict, dict]:
    """COCO caption metrics (+ scene accuracy and grounding when objects are known)."""
    from . import metrics as M

    refs = {r.image_id: list(r.captions) for r in records if r.image_id in outputs}
    preds = {i: outputs[i].text for i in refs}
    scores, info = M.coco_caption_scores(preds, refs, meteor=meteor, metrics=metrics)
    if objects is not None:
        objs = {i: objects.get(i, []) for i in refs}
        scores["scene_accuracy"] = M.scene_accuracy(preds, objs)
        g = M.attention_grounding({i: outputs[i].words for i in refs}, {i: outputs[i].alphas for i in refs},
                                  objs, {i: image_sizes[i] for i in refs})
        scores["grounding"] = g["grounding"]
        scores["grounding_chance"] = g["grounding_chance"]
        info["grounding_words"] = g["grounding_words"]
        info["scene_accuracy"] = "share of images whose caption names exactly the colour-shape objects present"
        info["grounding"] = ("mean share of a colour/shape word's attention inside the named object's box; "
                             "grounding_chance: mean share of the image those boxes cover")
    return scores, info
