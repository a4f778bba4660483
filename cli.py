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
    d.add_argument("--data", choices=["shapes", "karpathy", "coco", "flickr", "csv"], default=None,
                   help="data source; inferred from --karpathy-json / --coco-captions / --flickr-tokens / "
                        "--captions-csv when omitted")
    d.add_argument("--shapes-dir", default=str(DEFAULT_SHAPES_DIR),
                   help="shapes world folder (generated when missing)")
    d.add_argument("--shapes-wide-train", nargs="*", default=None, metavar="PART",
                   help="the shapes world's train split drawn wider than its other splits (python -m captioner.shapes "
                        "--wide-train: background families, JPEG artefacts, noise; alone: all of it, or name the "
                        "parts): a missing world is generated so, an existing one must have been")
    d.add_argument("--karpathy-json", help="Karpathy split file: dataset_coco.json, dataset_flickr8k.json, ...")
    d.add_argument("--coco-captions", action="append", metavar="SPLIT=JSON",
                   help="COCO caption annotations for a split (repeat: train=..., val=...)")
    d.add_argument("--flickr-tokens", metavar="PATH",
                   help="original Flickr8k release: Flickr8k.token.txt (NAME.jpg#N<TAB>caption); "
                        "--images is its image folder (e.g. Flicker8k_Dataset)")
    d.add_argument("--flickr-splits", action="append", metavar="SPLIT=PATH[,SPLIT=PATH...]",
                   help="split lists for --flickr-tokens, one image file name a line, e.g. "
                        "train=Flickr_8k.trainImages.txt,val=Flickr_8k.devImages.txt,test=Flickr_8k.testImages.txt "
                        "(comma-separated or repeated; default: those three files beside the token file)")
    d.add_argument("--captions-csv", metavar="PATH",
                   help="Kaggle's Flickr8k captions.txt (CSV, header image,caption); --images is its Images/ "
                        "folder; split deterministically by sha1 of the file names (see data/README.md)")
    d.add_argument("--images", action="append", metavar="[SPLIT=]DIR",
                   help="image root for --karpathy-json, the image folder for --flickr-tokens / --captions-csv, "
                        "or SPLIT=DIR for each --coco-captions split")
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


def shapes_wide_train(args: argparse.Namespace):
    """--shapes-wide-train as shapes_source takes it: None (not asked: the world as it is), True (all of it) or
    the named parts."""
    parts = getattr(args, "shapes_wide_train", None)
    return None if parts is None else (list(parts) or True)


def data_source_rank0_first(args: argparse.Namespace, dist):
    """data_source() under torchrun: rank 0 reads it first (and generates the shapes world if it is
    missing), the others wait, then read what it left on disk. One process: just data_source()."""
    from captioner import distributed

    source = data_source(args) if dist.main else None
    distributed.barrier(dist)
    return source if dist.main else data_source(args)


def _flickr_splits(values: list[str] | None) -> dict[str, str] | None:
    """--flickr-splits train=A,val=B,test=C (or repeated) -> {split: path}; None when not given."""
    if not values:
        return None
    items = [v for value in values for v in value.split(",") if v.strip()]
    out = _pairs(items, "--flickr-splits")
    if not out:
        raise SystemExit("--flickr-splits expects SPLIT=PATH[,SPLIT=PATH...], e.g. train=Flickr_8k.trainImages.txt")
    return out


def _flickr_data_source(args: argparse.Namespace, kind: str, flickr_tokens: str | None, captions_csv: str | None):
    from captioner import sources

    flag, file = ("--flickr-tokens", flickr_tokens) if kind == "flickr" else ("--captions-csv", captions_csv)
    folder = "Flicker8k_Dataset" if kind == "flickr" else "Images"
    if not file or not args.images or len(args.images) != 1:
        raise SystemExit(f"--data {kind} needs {flag} FILE and one --images DIR (the image folder, e.g. {folder})")
    if kind == "flickr":
        return sources.flickr_source(file, args.images[0], _flickr_splits(getattr(args, "flickr_splits", None)))
    if getattr(args, "flickr_splits", None):
        raise SystemExit("--flickr-splits is for --flickr-tokens: --captions-csv has no split lists")
    return sources.captions_csv_source(file, args.images[0])


def data_source(args: argparse.Namespace):
    from captioner import sources

    flickr_tokens, captions_csv = getattr(args, "flickr_tokens", None), getattr(args, "captions_csv", None)
    if flickr_tokens or captions_csv:
        given = [f for f, v in (("--karpathy-json", args.karpathy_json), ("--coco-captions", args.coco_captions),
                                ("--flickr-tokens", flickr_tokens), ("--captions-csv", captions_csv)) if v]
        if len(given) > 1:
            raise SystemExit(f"give one data source, not {' and '.join(given)}")
    kind = args.data or ("karpathy" if args.karpathy_json else "coco" if args.coco_captions
                         else "flickr" if flickr_tokens else "csv" if captions_csv else "shapes")
    if kind in ("flickr", "csv"):
        return _flickr_data_source(args, kind, flickr_tokens, captions_csv)
    if kind == "shapes":
        return sources.shapes_source(args.shapes_dir, wide_train=shapes_wide_train(args))
    if kind == "karpathy":
        if not args.karpathy_json or not args.images or len(args.images) != 1:
            raise SystemExit("--data karpathy needs --karpathy-json FILE and one --images DIR (the image root)")
        return sources.karpathy_source(args.karpathy_json, args.images[0], merge_restval=not args.no_restval)
    caps = _pairs(args.coco_captions, "--coco-captions")
    if not caps:
        raise SystemExit("--data coco needs --coco-captions SPLIT=JSON (at least train and val)")
    return sources.coco_source(caps, _pairs(args.images, "--images"))
