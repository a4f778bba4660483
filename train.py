"""Train a Show, Attend and Tell captioner.

    python train.py --preset shapes                                  # the demo model, on the shapes world
    python train.py --karpathy-json data/coco/dataset_coco.json --images data/coco --out runs/coco
    python train.py --coco-captions train=data/coco/annotations/captions_train2014.json \\
        --coco-captions val=data/coco/annotations/captions_val2014.json \\
        --images train=data/coco/train2014 --images val=data/coco/val2014 --out runs/coco2014
    python train.py --config my.yaml --epochs 3                      # YAML sets defaults, flags override
    python train.py --resume runs/coco/last.pt                       # continue a killed run
    torchrun --nproc_per_node=4 train.py --karpathy-json ... --resume auto   # DDP on 4 GPUs (see README)

Precedence: built-in defaults < --preset < --config YAML < command-line flags. The resolved
configuration is written to OUT/config.yaml.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
from dataclasses import asdict, fields, replace
from pathlib import Path

import yaml

from captioner.atomic import atomic_write_text, exclusive
from captioner.checkpoint import load_checkpoint
from captioner.training import DECODER_OPTIONS, ENCODER_OPTIONS, TrainConfig
from cli import add_data_args, add_options, data_source_rank0_first, setup_logging

PRESETS = {
    # The bundled demo model: about 26 minutes on a 2-core CPU, world generation and features included.
    "shapes": {"data": "shapes", "out": "runs/shapes", "epochs": 16, "batch_size": 64, "lr": 2e-3,
               "attention_dim": 128, "dropout": 0.1, "patience": 0, "coords": True},
}

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file whose keys (the long option names, with _) set the defaults")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of defaults")
    add_data_args(p)
    t = p.add_argument_group("training (TrainConfig in captioner/training.py; a --preset or --config can change "
                             "the defaults shown)")
    add_options(t, TrainConfig, defaults=False)
    t.add_argument("--export", metavar="PATH",
                   help="after training, write best.pt stripped to an fp16 inference checkpoint here")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = {}
    if args.preset:
        defaults.update(PRESETS[args.preset])
    if args.config:
        with open(args.config) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            parser.error(f"{args.config} must hold a mapping of option names to values")
        unknown = set(loaded) - set(vars(args))
        if unknown:
            parser.error(f"{args.config}: unknown keys {sorted(unknown)}")
        defaults.update(loaded)
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    try:  # refuse a bad option value now, before any data is read
        train_config(args)
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    return args


def train_config(args: argparse.Namespace) -> TrainConfig:
    kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    return TrainConfig(**kw)


def main(argv: list[str] | None = None) -> dict:
    from captioner import distributed

    args = parse_args(argv)
    cfg = train_config(args)
    dist, device = distributed.setup(cfg.device)
    setup_logging(logging.INFO if dist.main else logging.WARNING)  # one process speaks for the run
    cfg = replace(cfg, device=device)
    try:
        source = data_source_rank0_first(args, dist)
        out = Path(cfg.out)
        with contextlib.ExitStack() as hold:
            if dist.main:
                out.mkdir(parents=True, exist_ok=True)
                hold.enter_context(exclusive(out, "training run"))  # two runs must not share a run folder
                resolved = {k: v for k, v in vars(args).items() if k not in ("config",)}
                resolved.update(asdict(cfg))
                resolved["stages"] = list(cfg.stages)
                resolved["world_size"] = dist.world
                if cfg.init_from:  # the model, its config and vocabulary come from that checkpoint, not these options
                    for k in (*ENCODER_OPTIONS, *DECODER_OPTIONS):
                        resolved.pop(k, None)
                    model_cfg = load_checkpoint(cfg.init_from)["model"]["config"]
                    resolved["model"] = json.loads(json.dumps(model_cfg))  # tuples as lists: what YAML can write
                atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))

            from captioner.training import train

            summary = train(cfg, source, dist)
            if args.export and dist.main:
                from captioner.checkpoint import export_inference

                export_inference(out / "best.pt", args.export)
                logging.getLogger("train").info("exported %s -> %s", out / "best.pt", args.export)
    finally:
        distributed.cleanup(dist)
    if dist.main:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return summary


if __name__ == "__main__":
    main()
