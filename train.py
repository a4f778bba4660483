"""Train a Show, Attend and Tell captioner.

    python train.py --preset shapes                                  # the demo model (+ 2 self-critical epochs
                                                                     # in runs/shapes/scst), on the shapes worlds
    python train.py --karpathy-json data/coco/dataset_coco.json --images data/coco --out runs/coco
    python train.py --coco-captions train=data/coco/annotations/captions_train2014.json \\
        --coco-captions val=data/coco/annotations/captions_val2014.json \\
        --images train=data/coco/train2014 --images val=data/coco/val2014 --out runs/coco2014
    python train.py --config my.yaml --epochs 3                      # YAML sets defaults, flags override
    python train.py --resume runs/coco/last.pt                       # continue a killed run
    python train.py --preset shapes --then-scst 0                    # its cross-entropy stage alone
    python train.py --preset shapes-base                             # the earlier demo recipe (bench/ builds on it)
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
from captioner.training import DECODER_OPTIONS, ENCODER_OPTIONS, TRUTH_WEIGHTS, TrainConfig
from cli import DEFAULT_SHAPES_DIR, add_data_args, add_options, data_source_rank0_first, setup_logging

# References that state where things are: relations, positions, "to its left" (--prefer-captions).
_WHERE_WORDS = "left|right|above|below|top|bottom|middle|centre|its"
RELATIONAL = rf"\b({_WHERE_WORDS})\b"
# References that state where things are in scenes of one or two objects (fewer than three singular shape nouns),
# and the lists of three-object scenes (no position word; "three" or three shape nouns): relations where they are
# easy, the objects named first where they are not (README, "What was tried": the relation-where-easy recipe).
_WHERE = rf"\b(?:{_WHERE_WORDS})\b"
_SHAPE = r"\b(?:circle|square|triangle|star|cross|hexagon)"
RELATIONAL_BELOW_THREE = (rf"^(?!.*{_WHERE})(?=.*\bthree\b|(?:.*{_SHAPE}s?\b){{3}})"
                          rf"|^(?!(?:.*{_SHAPE}\b){{3}}).*{_WHERE}")
# The words of the world's relation and position references, none of its colours, shapes, sizes or numbers: what the
# demo recipe's cross-entropy term of the self-critical stage covers (--scst-xe-words).
RELATION_WORDS = "to|the|of|left|right|above|below|with|its|it|is|at|in|on|top|bottom|middle|centre"
PRESETS = {
    # The recipe of the demo model before the relation work (stop 34's README): 12 cross-entropy epochs, then two
    # self-critical epochs in runs/shapes-base/scst at 5e-4 whose reward also pays for the truth (README, "What was
    # tried": SCST halves hallucination, the truth terms lower it again, the wrong-number one keeps it from saying
    # "three shapes" before two); under 30 minutes on a 2-core CPU. The base the ablation table and the sweeps in
    # bench/ measure their variants on. --then-scst 0 stops after the cross-entropy run.
    "shapes-base": {"data": "shapes", "out": "runs/shapes-base", "epochs": 12, "batch_size": 64, "lr": 2e-3,
                    "attention_dim": 128, "dropout": 0.1, "patience": 0, "coords": True, "then_scst": 2,
                    "then_scst_lr": 5e-4, "scst_true_relation": 1.0, "scst_false_relation": 2.0, "scst_phantom": 1.0,
                    "scst_missed": 2.0, "scst_wrong_count": 2.0},
}
# A model that states where things are (README, "What was tried"): the base recipe with attention and recall
# supervised by the world's boxes, the decoder given the difference of the two places it compares (--compare),
# relation-stating references drawn twice as often, and a self-critical stage that pays for a true relation what it
# charges for a false one (2 / 2), whose epoch is chosen by val scene accuracy, not CIDEr. 23 minutes on a 2-core CPU.
PRESETS["shapes-relations"] = {
    **PRESETS["shapes-base"], "out": "runs/shapes-relations", "att_supervision": 1.0, "recall": True,
    "recall_supervision": 1.0, "compare": True, "prefer_captions": RELATIONAL, "prefer_weight": 2.0,
    "scst_true_relation": 2.0, "scst_false_relation": 2.0, "then_scst_val_metric": "scene_accuracy"}
# The bundled demo model (README, "Results: the demo model"): the relation recipe's cross-entropy stage on the wider
# world (generated into data/shapes-wide by the run itself: more background families, JPEG artefacts, noise),
# references drawn to state relations in scenes of one or two objects and to list the objects of three-object scenes;
# then its self-critical stage on the default world (data/shapes, whose images look like the test splits'), paying 1
# for a true relation (in scenes of one or two objects only) and charging 1 for a false one, held to the references'
# relation words by their cross-entropy (x2). Seed 1: the better of two seeds by val scene accuracy (0.876 / 0.874).
# 26.5-30.5 minutes on a 2-core CPU (three runs), both worlds and their features included: at the 30-minute limit.
PRESETS["shapes"] = {
    **PRESETS["shapes-relations"], "out": "runs/shapes",
    "shapes_dir": str(DEFAULT_SHAPES_DIR.parent / "shapes-wide"), "shapes_wide_train": [],
    "prefer_captions": RELATIONAL_BELOW_THREE, "scst_true_relation": 1.0, "scst_false_relation": 1.0,
    "scst_relation_objects": 2, "scst_xe": 2.0, "scst_xe_words": RELATION_WORDS,
    "then_scst_shapes_dir": str(DEFAULT_SHAPES_DIR), "seed": 1}
# The self-critical stage's learning rate unless --then-scst-lr (or a preset) says otherwise.
SCST_LR = 2e-4
# Weights of self-critical terms: a --then-scst run gives them to its second stage, not its first.
SCST_TERMS = (*TRUTH_WEIGHTS, "scst_relation_objects", "scst_xe", "scst_xe_words")
# The base preset's self-critical stage as it was before the truth reward: CIDEr-D alone at 2e-4. What the ablation
# table and the quality sweep measured (bench/), and keep measuring, on top of --preset shapes-base.
CIDER_D_STAGE = ["--then-scst-lr", "2e-4", *(x for k in TRUTH_WEIGHTS for x in ("--" + k.replace("_", "-"), "0"))]

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file whose keys (the long option names, with _) set the defaults")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of defaults")
    add_data_args(p)
    p.set_defaults(shapes_dir=None)  # data/shapes unless a preset names its own world (parse_args)
    t = p.add_argument_group("training (TrainConfig in captioner/training.py; a --preset or --config can change "
                             "the defaults shown)")
    add_options(t, TrainConfig, defaults=False)
    t.add_argument("--export", metavar="PATH",
                   help="after training, write best.pt (the last stage's) stripped to an fp16 inference checkpoint "
                        "here")
    s = p.add_argument_group("a self-critical stage after this run, in the same command")
    s.add_argument("--then-scst", type=int, metavar="EPOCHS",
                   help="after the run, this many epochs of self-critical training (--scst) from its best.pt, in "
                        "OUT/scst: the same options otherwise, at --then-scst-lr, no warm-up, no early stop; "
                        "--resume auto continues whichever stage was cut short (default 0: none)")
    s.add_argument("--then-scst-lr", type=float, metavar="LR",
                   help="learning rate of that stage (default 2e-4; the shapes presets: 5e-4)")
    s.add_argument("--then-scst-shapes-dir", metavar="DIR",
                   help="the shapes world that stage trains on (default: the run's; generated when missing, as the "
                        "default world is; --preset shapes: data/shapes, while its cross-entropy run trains on "
                        "the wider world, data/shapes-wide)")
    s.add_argument("--then-scst-val-metric", metavar="METRIC",
                   help="validation metric that chooses that stage's best.pt (default: the run's --val-metric; "
                        "--preset shapes / shapes-relations: scene_accuracy)")
    return p


def second_stage(args: argparse.Namespace, cfg: TrainConfig) -> TrainConfig | None:
    """The --then-scst stage's config: self-critical training from the first stage's best.pt, in OUT/scst."""
    if not args.then_scst:
        return None
    if cfg.scst:
        raise ValueError("--then-scst follows a cross-entropy run: drop --scst (or run the stage alone with "
                         "--scst true --init-from RUN/best.pt)")
    out = Path(cfg.out) / "scst"
    return replace(cfg, out=str(out), init_from=str(Path(cfg.out) / "best.pt"), scst=True, epochs=args.then_scst,
                   lr=args.then_scst_lr or SCST_LR, warmup_steps=0, patience=0,
                   val_metric=args.then_scst_val_metric or cfg.val_metric,
                   att_supervision=0.0, recall_supervision=0.0,  # terms of the cross-entropy stage
                   **{k: getattr(args, k) for k in SCST_TERMS if getattr(args, k, None) is not None},
                   resume="auto" if cfg.resume else None)  # a resumed command continues the stage cut short


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = {}
    stated = args.then_scst is not None  # said on the command line or in --config, not by the preset
    given = {k for k, v in vars(args).items() if v is not None}  # on the command line
    if args.preset:
        defaults.update(PRESETS[args.preset])
    loaded = {}
    if args.config:
        with open(args.config) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            parser.error(f"{args.config} must hold a mapping of option names to values")
        unknown = set(loaded) - set(vars(args))
        if unknown:
            parser.error(f"{args.config}: unknown keys {sorted(unknown)}")
        defaults.update(loaded)
        stated = stated or "then_scst" in loaded
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.shapes_dir is None:
        args.shapes_dir = str(DEFAULT_SHAPES_DIR)
    elif "shapes_dir" in given | set(loaded):  # a preset's worlds go with its folder: another is used as it is
        for k in {"shapes_wide_train", "then_scst_shapes_dir"} - given - set(loaded):
            setattr(args, k, None)
    if args.scst and not stated:
        args.then_scst = 0  # a self-critical run on the preset's options: the preset's own stage is this run
        if args.val_metric is None:
            args.val_metric = args.then_scst_val_metric  # chosen as that stage's epochs are
        if args.preset:  # terms of the cross-entropy stage (second_stage leaves them out too)
            for k in {"att_supervision", "recall_supervision"} & (set(PRESETS[args.preset]) - set(loaded) - given):
                setattr(args, k, None)
            # ... and its schedule, as second_stage gives it: the stage's rate, no warm-up (unless said)
            if "lr" not in given | set(loaded):
                args.lr = args.then_scst_lr or SCST_LR
            if "warmup_steps" not in given | set(loaded):
                args.warmup_steps = 0
    if args.preset:
        # The preset's self-critical terms belong to its self-critical stage, and its truth weights to that stage on
        # the shapes world: without the stage, or (truth weights) on other data, they are left out (the same
        # options given by the user are still checked).
        left_out = set(SCST_TERMS) if not args.scst and not args.then_scst else \
            {*TRUTH_WEIGHTS, "scst_relation_objects"} if args.data not in (None, "shapes") else set()
        for k in left_out & (set(PRESETS[args.preset]) - set(loaded) - given):
            setattr(args, k, None)
    if args.then_scst is not None and args.then_scst < 0:
        parser.error(f"--then-scst must be 0 or more epochs, not {args.then_scst}")
    shapes = args.data in (None, "shapes")
    if args.then_scst_shapes_dir and (not shapes or not args.then_scst):  # no shapes stage after this run
        if "then_scst_shapes_dir" in given | set(loaded):
            parser.error("--then-scst-shapes-dir names the shapes world of a --then-scst stage: "
                         + ("give --then-scst N too" if shapes else f"not with --data {args.data}"))
        if args.scst and shapes and "shapes_dir" not in given | set(loaded):  # the preset's stage, run alone
            args.shapes_dir, args.shapes_wide_train = args.then_scst_shapes_dir, None
        args.then_scst_shapes_dir = None
    try:  # refuse a bad option value now, before any data is read
        second_stage(args, train_config(args))
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    return args


def train_config(args: argparse.Namespace) -> TrainConfig:
    kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.then_scst and not kw.get("scst"):  # a cross-entropy stage: second_stage gives these to the next one
        for k in SCST_TERMS:
            kw.pop(k, None)
    return TrainConfig(**kw)


def run_stage(args: argparse.Namespace, cfg: TrainConfig, source, dist) -> dict:
    """One run in cfg.out: its resolved config.yaml, then `training.train`."""
    from captioner.training import train

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
        return train(cfg, source, dist)


def main(argv: list[str] | None = None) -> dict:
    from captioner import distributed

    args = parse_args(argv)
    cfg = train_config(args)
    dist, device = distributed.setup(cfg.device)
    setup_logging(logging.INFO if dist.main else logging.WARNING)  # one process speaks for the run
    cfg = replace(cfg, device=device)
    try:
        source = data_source_rank0_first(args, dist)
        stages = [cfg] + ([second_stage(args, cfg)] if args.then_scst else [])
        for stage in stages:
            if stage is not cfg and args.then_scst_shapes_dir:  # the stage's own world (its own feature cache)
                source = data_source_rank0_first(argparse.Namespace(**{
                    **vars(args), "shapes_dir": args.then_scst_shapes_dir, "shapes_wide_train": None}), dist)
            summary = run_stage(args, stage, source, dist)
        if len(stages) > 1:
            summary["first_stage"] = str(stages[0].out)
        out = Path(stages[-1].out)
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
