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
import json
import logging
from dataclasses import asdict, fields, replace
from pathlib import Path

import yaml

from captioner.atomic import atomic_write_text
from captioner.training import TrainConfig
from cli import add_data_args, data_source_rank0_first, setup_logging

PRESETS = {
    # The bundled demo model: about 15 minutes on a 2-core CPU, world generation and features included.
    "shapes": {"data": "shapes", "out": "runs/shapes", "epochs": 14, "batch_size": 64, "lr": 2e-3,
               "attention_dim": 128, "dropout": 0.1, "patience": 0},
}

HELP = {
    "out": "run directory (config.yaml, last.pt, best.pt, history.json, TensorBoard events)",
    "cache_dir": "where feature caches live (per dataset, split and encoder config; reused across runs)",
    "backbone": "timm model name of the encoder",
    "encoder_weights": "'package' (offline ImageNet EfficientNet-Lite0 weights), a state_dict path, or 'none'",
    "stages": "encoder feature stages concatenated into the grid, e.g. 2,3",
    "grid_size": "pool the feature grid to this size (default: native, 14 at 224 px)",
    "gate": "attention gate beta: scalar (paper), channel, none",
    "pos_embed": "add a learned row+column position embedding to the features (true/false)",
    "feature_norm": "LayerNorm each annotation vector before attention (true/false)",
    "att_lambda": "weight lambda of the doubly stochastic attention regulariser",
    "att_reduction": "regulariser over the N locations: mean (the sum / N) or sum (as the paper writes it); "
                     "used by --objective token",
    "objective": "token: cross-entropy averaged per token + lambda x the regulariser (--att-reduction); "
                 "paper: Xu et al.'s objective, each caption's cross-entropy summed over its words + lambda x "
                 "sum_i (1 - sum_t alpha_ti)^2, both averaged over captions (see the README's table)",
    "grad_clip": "clip the global gradient norm to this value; 0 (or less): no clipping",
    "min_count": "words seen fewer times in training captions become <unk>",
    "captions_per_image": "per epoch: one random reference per image ('one') or every reference ('all')",
    "fine_tune_encoder": "train the top encoder blocks end to end (no feature cache)",
    "encoder_lr": "learning rate of the fine-tuned encoder blocks",
    "val_metric": "validation metric for best.pt and early stopping, from beam-search decoding: BLEU-1..4, METEOR, "
                  "ROUGE-L, CIDEr, or on the shapes world scene_accuracy, grounding, relation_accuracy, relation_rate",
    "patience": "stop after this many epochs without improvement (0: never)",
    "max_train_images": "smoke-size switch: use only the first N training images",
    "max_val_images": "validate on the first N images of the val split (default 5000: a fixed subset of COCO's "
                      "40,504 val2014 images; Karpathy's val has 5,000); 0: all",
    "device": "auto, cpu, cuda or cuda:N",
    "precision": "CUDA autocast dtype: auto (bf16 where supported), bf16, fp16, fp32 (CPU is always fp32)",
    "workers": "DataLoader worker processes",
    "resume": "continue the run saved in this last.pt (same config); 'auto': OUT/last.pt if it exists, "
              "else start afresh (what torchrun's --max-restarts needs)",
    "batch_size": "global batch size: under torchrun each of the N processes takes batch_size / N",
    "compile": "torch.compile the encoder (when fine-tuning) and the decoder's one-word step; never the decode loop",
    "cudnn_benchmark": "let cuDNN time and pick convolution kernels for the fixed input size (CUDA only)",
}


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, not {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file whose keys (the long option names, with _) set the defaults")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of defaults")
    add_data_args(p)
    t = p.add_argument_group("training (see captioner/training.py: TrainConfig)")
    for f in fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        kw = {"default": None, "help": HELP.get(f.name, f"default: {f.default}")}
        if f.name == "stages":
            kw["type"] = lambda s: tuple(int(x) for x in s.split(","))
        elif isinstance(f.default, bool):
            if f.name == "progress":
                t.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                               help="no tqdm progress bars")
                continue
            kw["type"] = _bool
            kw["nargs"] = "?"
            kw["const"] = True
        elif isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            kw["type"] = type(f.default)
        elif f.name in ("grid_size", "max_train_images", "max_val_images"):
            kw["type"] = int
        t.add_argument(name, **kw)
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
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            resolved = {k: v for k, v in vars(args).items() if k not in ("config",)}
            resolved.update(asdict(cfg))
            resolved["stages"] = list(cfg.stages)
            resolved["world_size"] = dist.world
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
