"""Test helper: a tiny shapes world and train.py options for a model that trains in seconds."""
from __future__ import annotations

from pathlib import Path

TINY = {"train": 64, "val": 12, "test": 12, "test_novel": 12}


def make_world(root: Path, seed: int, sizes: dict[str, int] = TINY) -> Path:
    from captioner import shapes

    return shapes.generate_world(root, seed=seed, sizes=sizes, workers=1)


def train_args(world: Path, out: Path, cache: Path, epochs: int, **overrides) -> list[str]:
    """train.py's options for a tiny model on `world`; overrides use the option names with _ (dropout=0)."""
    opts = {"shapes_dir": world, "out": out, "cache_dir": cache, "epochs": epochs, "batch_size": 16, "min_count": 1,
            "embed_dim": 32, "attention_dim": 32, "hidden_dim": 64, "dropout": 0.1, "lr": 5e-3, "warmup_steps": 2,
            "captions_per_image": "all", "val_beam": 2, "device": "cpu", "seed": 7, "patience": 0, **overrides}
    return [a for k, v in opts.items() for a in ("--" + k.replace("_", "-"), str(v))] + ["--no-progress"]
