"""What the command-line scripts share: data-source options, the default checkpoint, logging.

Kept out of the captioner package on purpose: the library holds no argument parsing.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "shapes_demo.pt"  # the bundled demo model
DEFAULT_SHAPES_DIR = ROOT / "data" / "shapes"


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def add_data_args(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data (default: the shapes world)")
    d.add_argument("--data", choices=["shapes", "karpathy", "coco"], default=None,
                   help="data source; inferred from --karpathy-json / --coco-captions when omitted")
    d.add_argument("--shapes-dir", default=str(DEFAULT_SHAPES_DIR),
                   help="shapes world folder (generated when missing)")
    d.add_argument("--karpathy-json", help="Karpathy split file: dataset_coco.json, dataset_flickr8k.json, ...")
    d.add_argument("--coco-captions", action="append", metavar="SPLIT=JSON",
                   help="COCO caption annotations for a split (repeat: train=..., val=...)")
    d.add_argument("--images", action="append", metavar="[SPLIT=]DIR",
                   help="image root for --karpathy-json, or SPLIT=DIR for each --coco-captions split")
    d.add_argument("--no-restval", action="store_true", help="keep Karpathy's restval split out of train")


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise SystemExit(f"{flag} expects SPLIT=PATH (e.g. train=captions_train2014.json), got {v!r}")
        k, p = v.split("=", 1)
        out[k] = p
    return out


def data_source_rank0_first(args: argparse.Namespace, dist):
    """data_source() under torchrun: rank 0 reads it first (and generates the shapes world if it is
    missing), the others wait, then read what it left on disk. One process: just data_source()."""
    from captioner import distributed

    source = data_source(args) if dist.main else None
    distributed.barrier(dist)
    return source if dist.main else data_source(args)


def data_source(args: argparse.Namespace):
    from captioner import sources

    kind = args.data or ("karpathy" if args.karpathy_json else "coco" if args.coco_captions else "shapes")
    if kind == "shapes":
        return sources.shapes_source(args.shapes_dir)
    if kind == "karpathy":
        if not args.karpathy_json or not args.images or len(args.images) != 1:
            raise SystemExit("--data karpathy needs --karpathy-json FILE and one --images DIR (the image root)")
        return sources.karpathy_source(args.karpathy_json, args.images[0], merge_restval=not args.no_restval)
    caps = _pairs(args.coco_captions, "--coco-captions")
    if not caps:
        raise SystemExit("--data coco needs --coco-captions SPLIT=JSON (at least train and val)")
    return sources.coco_source(caps, _pairs(args.images, "--images"))
