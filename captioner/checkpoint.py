"""Checkpoints: one self-describing file, written atomically, read with weights_only=True.

Layout (plain containers and tensors only, so `torch.load(path, weights_only=True)` reads it):
    {"format": "captioner/1",
     "model": {"config": {...}, "vocab": {"itos": [...]},
               "decoder": state_dict,
               "encoder": state_dict | None},   # None: frozen, weights from EncoderConfig.weights
     "train": {"epoch", "optimizer", "scheduler", "rng", "best", "history", ...} | absent,
     "meta": {...}}
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write

FORMAT = "captioner/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Written atomically (atomic.atomic_write): a kill never leaves half a file."""
    payload = {"format": FORMAT, **payload}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True; refuse pickled objects and foreign files with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled Python objects, which could run "
            "arbitrary code when loaded. captioner checkpoints hold only tensors and plain "
            "containers; if you trust this file, re-save its state_dict and config as such. "
            f"(torch said: {str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                              f"(truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a captioner checkpoint (format {found!r}, expected {FORMAT!r})")
    if "model" not in ckpt or not {"config", "vocab", "decoder"} <= set(ckpt["model"]):
        raise CheckpointError(f"{path} lacks the model config, vocab or decoder weights")
    return ckpt


def export_inference(src: str | os.PathLike, dst: str | os.PathLike, half: bool = True) -> Path:
    """Strip training state (optimizer, RNG); optionally store float weights as fp16 (loaded back as fp32)."""
    ckpt = load_checkpoint(src)
    model = dict(ckpt["model"])
    if half:
        for key in ("decoder", "encoder"):
            if model.get(key) is not None:
                model[key] = {k: v.half() if v.is_floating_point() else v for k, v in model[key].items()}
    meta = dict(ckpt.get("meta", {}), exported_from=str(src), weights_dtype="float16" if half else "float32")
    return save_checkpoint({"model": model, "meta": meta}, dst)
