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


def parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, not {s!r}")


def _int_tuple(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 2,3, not {s!r}") from None


def add_options(group, cls, names: list[str] | None = None, *, defaults: bool = True) -> list[str]:
    """One flag per field of the dataclass `cls` (made with captioner.options.option): --field-name,
    its type from the annotation, its help from the field. defaults=False leaves every default None
    (so that a preset or a YAML file can fill what the command line did not say). Returns the names."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if names is None or f.name in names]
    for f in fields:
        meta = dict(f.metadata)
        help_ = meta.pop("help")
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        default = f.default if defaults else None
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if args and typing.get_origin(kind) is not tuple:  # X | None
            kind = args[0]
        if kind is bool and flag.startswith("--no-"):  # a switch that turns a default-on feature off
            group.add_argument(flag, dest=f.name, action="store_false", default=default, help=help_)
            continue
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        kw: dict = {"default": default, "help": help_ if f.default is None else f"{help_} (default {shown})", **meta}
        if kind is bool:
            kw.update(type=parse_bool, nargs="?", const=True)
        elif typing.get_origin(kind) is tuple:
            kw["type"] = _int_tuple
        elif kind in (int, float):
            kw["type"] = kind
        group.add_argument(flag, **kw)
    return [f.name for f in fields]


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
