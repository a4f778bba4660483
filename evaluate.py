"""Decode a split with beam search and score it with the COCO caption metrics, or score a results file.

    python evaluate.py                                   # the bundled demo model on the shapes test split
    python evaluate.py --split test_novel --beam 3
    python evaluate.py --split test_shift                # rendering settings training never saw
    python evaluate.py --checkpoint runs/coco/best.pt --karpathy-json data/coco/dataset_coco.json --images data/coco
    python evaluate.py --results results.json --coco-captions val=data/coco/annotations/captions_val2014.json \\
        --images val=data/coco/val2014 --split val       # score captions made already (caption.py --format coco)

--results FILE scores a COCO results file ([{"image_id": int, "caption": str}, ...], what
caption.py --format coco writes) against the split's references, as the COCO evaluation server
would: no checkpoint is loaded and nothing is decoded (so --checkpoint and --beam are refused and
--max-len, --batch-size, --workers, --cache-dir, --device and --unreadable do not matter). An
image of the split without a caption in the file is scored as an empty caption (missing_images in
the metrics); an id that is not in the split is an error. Grounding needs attention, which a
results file has not: it is not reported.

Scores come from pycocoevalcap's scorers (BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE cannot run
offline) on PTB-tokenised text, on pycocoevalcap's 0-1 scale. On the shapes world it also
reports scene accuracy, hallucination (CHAIR_i, CHAIR_s, object recall, count errors), relations
and attention grounding (captioner.scene_metrics); on COCO, --coco-instances adds CHAIR. Writes
the predictions in COCO results format (not with --results: the file is that) and the metrics with
how they were made as JSON; the last line on stdout is one JSON object.
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
DEFAULT_BEAM = 3
RESULTS_SEARCH = "not decoded here: captions read from the results file"
RESULTS_FORMAT = '[{"image_id": int, "caption": str}, ...] (the COCO results format)'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # --checkpoint and --beam default to None so that parse_args can tell them given (refused with --results).
    p.add_argument("--checkpoint", default=None, help="model to evaluate (default: the demo model)")
    p.add_argument("--results", metavar="FILE",
                   help="score this COCO results file ([{\"image_id\": int, \"caption\": str}, ...], e.g. from "
                        "caption.py --format coco) instead of decoding: no checkpoint is loaded; split images "
                        "without a caption in it score as empty captions")
    p.add_argument("--split", default="test", help="split to decode or score: test, test_novel, test_shift, val, ...")
    p.add_argument("--beam", type=int, default=None,
                   help=f"beam width (default {DEFAULT_BEAM}; 1 = greedy, at most {MAX_BEAM})")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN,
                   help="most tokens decoded per caption, <end> included")
    p.add_argument("--batch-size", type=int, default=100, help="images decoded at once")
    p.add_argument("--max-images", type=int, default=None, help="smoke-size switch: first N images of the split")
    p.add_argument("--out", default="runs/eval",
                   help="folder for predictions and metrics JSON (metrics_SPLIT_beamN.json, or with --results "
                        "metrics_SPLIT_results.json)")
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
    if args.results is not None:
        given = [flag for flag, v in (("--checkpoint", args.checkpoint), ("--beam", args.beam)) if v is not None]
        if given:
            parser.error(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --results: "
                         "a results file is scored as it is, no model is loaded and nothing is decoded")
    args.checkpoint = str(DEFAULT_CHECKPOINT) if args.checkpoint is None else args.checkpoint
    args.beam = DEFAULT_BEAM if args.beam is None else args.beam
    if not 1 <= args.beam <= MAX_BEAM:
        parser.error(f"--beam must be between 1 and {MAX_BEAM}")
    if args.max_len < 1:
        parser.error("--max-len must be at least 1")
    return args


def read_results(path: str | Path) -> dict[int, str]:
    """A COCO results file -> {image_id: caption}; SystemExit naming the file (and the entry) when it is not one."""
    from captioner.datasets import DatasetError, read_json_file

    try:
        data = read_json_file(path, "--results", f"a results file, {RESULTS_FORMAT}")
    except DatasetError as e:
        raise SystemExit(str(e)) from None
    if not isinstance(data, list):
        hint = (" (it looks like a COCO annotations file: give that with --coco-captions, the captions to score "
                "with --results)" if isinstance(data, dict) and "annotations" in data else "")
        raise SystemExit(f"{path}: a JSON {type(data).__name__}, expected a list {RESULTS_FORMAT}{hint}")
    if not data:
        raise SystemExit(f"{path}: an empty list, no captions to score")
    captions: dict[int, str] = {}
    entry_of: dict[int, int] = {}
    for k, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise SystemExit(f"{path}: entry {k} is a JSON {type(entry).__name__}, expected an object "
                             '{"image_id": int, "caption": str}')
        iid, caption = entry.get("image_id"), entry.get("caption")
        if "image_id" not in entry or not isinstance(iid, int) or isinstance(iid, bool):
            got = f"has image_id {iid!r}" if "image_id" in entry else "has no image_id"
            raise SystemExit(f"{path}: entry {k} {got}, expected an integer image_id")
        if "caption" not in entry or not isinstance(caption, str):
            got = f"has caption {caption!r}" if "caption" in entry else "has no caption"
            raise SystemExit(f"{path}: entry {k} (image_id {iid}) {got}, expected a string caption")
        if iid in captions:
            raise SystemExit(f"{path}: image_id {iid} appears more than once (entries {entry_of[iid]} and {k}); "
                             "a results file holds one caption per image")
        captions[iid], entry_of[iid] = caption, k
    return captions


def results_for_split(results: dict[int, str], path: str | Path, split: str, dataset: str,
                      split_ids: list[int], scored_ids: list[int]) -> tuple[dict[int, str], int]:
    """The captions of the images to score (scored_ids, the first --max-images of split_ids) and how
    many captions of the split's other images were left out; SystemExit for ids not in the split."""
    in_split = set(split_ids)
    foreign = sorted(i for i in results if i not in in_split)
    if foreign:
        shown = ", ".join(map(str, foreign[:5])) + (", ..." if len(foreign) > 5 else "")
        raise SystemExit(f"{path}: {len(foreign)} of its {len(results)} image ids are not in the {split} split of "
                         f"{dataset} ({len(split_ids)} images): {shown}; the wrong --split or the wrong results file?")
    scored = set(scored_ids)
    return {i: c for i, c in results.items() if i in scored}, sum(i not in scored for i in results)


def decode(args: argparse.Namespace, model, device, source, records: list) -> dict:
    """Decode the records (a frozen encoder's features from the shared cache, a fine-tuned one on the
    images); --unreadable error refuses a split with images that cannot be read."""
    from captioner.evaluation import decode_split, split_features

    progress = not args.no_progress
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
    return outputs


def score_results(args: argparse.Namespace, results: dict[int, str], records: list, split_ids: list[int],
                  dataset: str, **kw) -> tuple[dict[int, str], dict, dict]:
    """(captions scored, scores, info) of a results file on the records (the split, or its first
    --max-images); kw goes to score_captions. Split images without a caption score as empty ones."""
    from captioner.evaluation import score_captions

    texts, ignored = results_for_split(results, args.results, args.split, dataset, split_ids,
                                       [r.image_id for r in records])
    if ignored:
        log.info("%d captions of %s are for images of the %s split after the first %d (--max-images): not scored",
                 ignored, args.results, args.split, len(records))
    missing = [r.image_id for r in records if r.image_id not in texts]
    if missing:
        log.warning("%d of %d images of the %s split have no caption in %s (e.g. %s): scored as empty captions",
                    len(missing), len(records), args.split, args.results, ", ".join(map(str, missing[:5])))
    scores, info = score_captions(texts, records, absent="missing", **kw)
    if ignored:
        info["results_not_scored"] = ignored
        info["results_not_scored_why"] = (f"--max-images {args.max_images}: the captions of the split's images "
                                          f"after the first {len(records)} are not scored")
    return texts, scores, info


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging()
    from captioner.coco_chair import chair, load_instances
    from captioner.metrics import METRIC_KEYS

    # Read before decoding, so that a bad path fails at once.
    instances = load_instances(args.coco_instances, "--coco-instances") if args.coco_instances else None
    results = read_results(args.results) if args.results is not None else None
    if results is None:
        from captioner.model import Captioner
        from captioner.runtime import resolve_device

        device = resolve_device(args.device)
        model = Captioner.from_checkpoint(args.checkpoint, device)
    source = data_source(args)
    records = source.split(args.split)
    if instances is not None and source.objects.get(args.split) is not None:
        raise SystemExit("--coco-instances is for COCO images: on the shapes world CHAIR_i and CHAIR_s are measured "
                         "exactly from each scene's objects, without it")
    split_ids = [r.image_id for r in records]
    if args.max_images:
        records = records[: args.max_images]
    objects, sizes = source.objects.get(args.split), source.image_sizes.get(args.split)
    meteor = False if args.no_meteor else None
    if results is None:
        from captioner.evaluation import score_outputs

        outputs = decode(args, model, device, source, records)
        scores, info = score_outputs(outputs, records, objects=objects, image_sizes=sizes, meteor=meteor)
        texts = {i: o.text for i, o in outputs.items()}
        stem = f"{args.split}_beam{args.beam}"
        made = {"checkpoint": str(args.checkpoint), "dataset": source.identity, "split": args.split,
                "beam": args.beam, "max_len": args.max_len,
                "search": "greedy" if args.beam == 1 else "batched beam search, length-normalised scores",
                "attention": model.cfg.decoder.attention + (" (test time: the expected context)"
                                                            if model.cfg.decoder.attention == "hard" else "")}
    else:
        texts, scores, info = score_results(args, results, records, split_ids, source.name, objects=objects,
                                            image_sizes=sizes, meteor=meteor)
        stem = f"{args.split}_results"
        made = {"results_file": str(args.results), "dataset": source.identity, "split": args.split,
                "search": RESULTS_SEARCH}
    if instances is not None:
        chair_scores, info["chair"] = chair({r.image_id: texts.get(r.image_id, "") for r in records}, instances)
        scores.update(chair_scores)
    info.update(made)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if results is None:
        preds = [{"image_id": i, "caption": o.text} for i, o in sorted(outputs.items())]
        atomic_write_json(out / f"predictions_{stem}.json", preds)
    finite = {k: (v if math.isfinite(v) else None) for k, v in scores.items()}
    atomic_write_json(out / f"metrics_{stem}.json", {"metrics": finite, "info": info}, indent=2)
    absent, what, how = (("unreadable_images", "unreadable", f"beam {args.beam}") if results is None else
                         ("missing_images", "without a caption", f"captions from {args.results}"))
    log.info("%s split, %d images%s, %s; scorer %s, tokenizer %s%s; wrote %s", args.split, info["images"],
             f" ({info[absent]} {what}, scored as empty captions)" if info[absent] else "",
             how, info.get("scorer"), info.get("tokenizer"),
             f"; skipped {info['skipped']}" if info.get("skipped") else "", out / f"metrics_{stem}.json")
    keys = [k for k in METRIC_KEYS if k in scores] + [k for k in scores if k not in METRIC_KEYS]
    # NaN (e.g. grounding when no generated word names an object) is written as null: valid JSON.
    line = {k: round(float(scores[k]), 4) if math.isfinite(scores[k]) else None for k in keys}
    print(json.dumps(line), flush=True)
    return {"metrics": scores, "info": info}


if __name__ == "__main__":
    main()
