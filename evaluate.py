"""Decode a split with beam search and score it with the COCO caption metrics.

    python evaluate.py                                   # the bundled demo model on the shapes test split
    python evaluate.py --split test_novel --beam 3
    python evaluate.py --split test_shift                # rendering settings training never saw
    python evaluate.py --checkpoint runs/coco/best.pt --karpathy-json data/coco/dataset_coco.json --images data/coco

Scores come from pycocoevalcap's scorers (BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE cannot run
offline) on PTB-tokenised text, on pycocoevalcap's 0-1 scale. On the shapes world it also
reports scene accuracy, hallucination (CHAIR_i, CHAIR_s, object recall, count errors), relations
and attention grounding (captioner.scene_metrics); on COCO, --coco-instances adds CHAIR. Writes
the predictions in COCO results format and the metrics with how they were made as JSON; the last
line on stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from captioner.atomic import atomic_write_json
from captioner.search import DEFAULT_MAX_LEN
from cli import DEFAULT_CHECKPOINT, add_data_args, data_source, setup_logging

log = logging.getLogger("evaluate")

MAX_BEAM = 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model to evaluate (default: the demo model)")
    p.add_argument("--split", default="test", help="split to decode: test, test_novel, test_shift, val, ...")
    p.add_argument("--beam", type=int, default=3, help=f"beam width (1 = greedy, at most {MAX_BEAM})")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN,
                   help="most tokens decoded per caption, <end> included")
    p.add_argument("--batch-size", type=int, default=100, help="images decoded at once")
    p.add_argument("--max-images", type=int, default=None, help="smoke-size switch: first N images of the split")
    p.add_argument("--out", default="runs/eval", help="folder for predictions and metrics JSON")
    p.add_argument("--cache-dir", default="cache", help="feature cache folder (shared with train.py)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for image decoding")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts a Java process)")
    p.add_argument("--unreadable", choices=["empty", "error"], default="empty",
                   help="an image of the split that cannot be read: 'empty' scores it as an empty caption "
                        "(it lowers the scores; the metrics say how many), 'error' refuses the run and names the files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--coco-instances", metavar="PATH",
                   help="COCO instances JSON, e.g. annotations/instances_val2014.json: adds CHAIR_i / CHAIR_s / "
                        "coco_object_recall (object hallucination, captioner.coco_chair)")
    add_data_args(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.beam <= MAX_BEAM:
        parser.error(f"--beam must be between 1 and {MAX_BEAM}")
    if args.max_len < 1:
        parser.error("--max-len must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging()
    from captioner.coco_chair import chair, load_instances
    from captioner.evaluation import decode_split, score_outputs, split_features
    from captioner.metrics import METRIC_KEYS
    from captioner.model import Captioner
    from captioner.runtime import resolve_device

    # Read before decoding, so that a bad path fails at once.
    instances = load_instances(args.coco_instances, "--coco-instances") if args.coco_instances else None
    device = resolve_device(args.device)
    model = Captioner.from_checkpoint(args.checkpoint, device)
    source = data_source(args)
    records = source.split(args.split)
    if instances is not None and source.objects.get(args.split) is not None:
        raise SystemExit("--coco-instances is for COCO images: on the shapes world CHAIR_i and CHAIR_s are measured "
                         "exactly from each scene's objects, without it")
    if args.max_images:
        records = records[: args.max_images]
    progress = not args.no_progress
    # A frozen encoder's features come from the shared cache; a fine-tuned one runs on the images.
    cache = split_features(model, records, args.cache_dir, source.name, args.split, num_workers=args.workers,
                           device=device, progress=progress)
    outputs = decode_split(model, records, cache, beam_size=args.beam, max_len=args.max_len,
                           batch_size=args.batch_size, num_workers=args.workers, progress=progress)
    unreadable = [r for r in records if r.image_id not in outputs]
    if unreadable and args.unreadable == "error":
        reasons = {f["image_id"]: f["error"] for f in (cache.failed if cache is not None else [])}
        listed = "\n  ".join(reasons.get(r.image_id, r.path) for r in unreadable[:20])
        raise SystemExit(f"{len(unreadable)} of {len(records)} images of the {args.split} split cannot be read "
                         f"(--unreadable error):\n  {listed}" + ("\n  ..." if len(unreadable) > 20 else ""))
    scores, info = score_outputs(outputs, records, objects=source.objects.get(args.split),
                                 image_sizes=source.image_sizes.get(args.split),
                                 meteor=False if args.no_meteor else None)
    if instances is not None:
        texts = {r.image_id: outputs[r.image_id].text if r.image_id in outputs else "" for r in records}
        chair_scores, info["chair"] = chair(texts, instances)
        scores.update(chair_scores)
    info.update({"checkpoint": str(args.checkpoint), "dataset": source.name, "split": args.split,
                 "beam": args.beam, "max_len": args.max_len,
                 "search": "greedy" if args.beam == 1 else "batched beam search, length-normalised scores"})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.split}_beam{args.beam}"
    preds = [{"image_id": i, "caption": o.text} for i, o in sorted(outputs.items())]
    atomic_write_json(out / f"predictions_{stem}.json", preds)
    finite = {k: (v if math.isfinite(v) else None) for k, v in scores.items()}
    atomic_write_json(out / f"metrics_{stem}.json", {"metrics": finite, "info": info}, indent=2)
    log.info("%s split, %d images%s, beam %d; scorer %s, tokenizer %s%s; wrote %s", args.split, info["images"],
             f" ({info['unreadable_images']} unreadable, scored as empty captions)"
             if info["unreadable_images"] else "",
             args.beam, info.get("scorer"), info.get("tokenizer"),
             f"; skipped {info['skipped']}" if info.get("skipped") else "", out / f"metrics_{stem}.json")
    keys = [k for k in METRIC_KEYS if k in scores] + [k for k in scores if k not in METRIC_KEYS]
    # NaN (e.g. grounding when no generated word names an object) is written as null: valid JSON.
    line = {k: round(float(scores[k]), 4) if math.isfinite(scores[k]) else None for k in keys}
    print(json.dumps(line), flush=True)
    return {"metrics": scores, "info": info}


if __name__ == "__main__":
    main()
