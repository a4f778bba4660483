"""Batch-captioning throughput on this machine: caption.py's pipeline against its ceiling and a naive loop.

    python bench/caption_throughput.py                      # 200 shapes-world test images
    python bench/caption_throughput.py --images DIR --n 500 --device cuda

On the same images and the same model it measures images/s of
  * the encoder alone, through the same DataLoader (the ceiling of the pipeline),
  * caption.py's batch function (DataLoader + encoder + batched search + records written and
    fsync'd to a temp file) at beam 1, 3 and 5,
  * caption.main end to end at beam 3 (model loading included),
  * one image at a time: model.caption([path]) per image, beam 3,
and prints them with the ratios the batch script aims for. It asserts nothing about time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from torch.utils.data import DataLoader

import caption
from captioner.evaluation import caption_files
from captioner.features import ImageFileDataset
from captioner.model import Captioner
from captioner.runtime import resolve_device
from cli import DEFAULT_CHECKPOINT, DEFAULT_SHAPES_DIR
from machine import cpu_name

TARGET_ENCODER, TARGET_LOOP = 0.75, 5.0


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def pipeline(model, paths, beam, batch_size, workers, out) -> None:
    journal = caption.Journal(out, "jsonl")
    for batch in caption_files(model, paths, beam_size=beam, batch_size=batch_size, num_workers=workers):
        journal.append([caption.make_record(p, o, e, False) for p, o, e in batch])
    journal.close()
    os.remove(out)


def encoder_only(model, paths, batch_size, workers) -> None:
    ds = ImageFileDataset(paths, model.transform(), model.cfg.encoder.image_size)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, generator=torch.Generator(),
                        pin_memory=model.device.type == "cuda")
    for _, images, _ in loader:
        model.encode(images)


def one_at_a_time(model, paths, beam) -> None:
    for p in paths:
        model.caption([p], beam_size=beam)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", help="folder of images (default: the shapes world's test split)")
    p.add_argument("--n", type=int, default=200, help="images to caption")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=caption.build_parser().get_default("workers"))
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    if args.images:
        paths = caption.expand_inputs([args.images])[: args.n]
    else:
        from captioner import shapes

        shapes.ensure_world(DEFAULT_SHAPES_DIR)
        paths = caption.expand_inputs([str(DEFAULT_SHAPES_DIR / "images" / "test")])[: args.n]
    device = resolve_device(args.device)
    model = Captioner.from_checkpoint(args.checkpoint, device)
    n, bs, w = len(paths), args.batch_size, args.workers
    tmp = tempfile.mkdtemp(prefix="caption_bench")
    out = os.path.join(tmp, "captions.jsonl")

    pipeline(model, paths[:bs], 3, bs, w, out)  # warm-up: first-call allocations, lazy imports
    rows = [("encoder only (same DataLoader): the ceiling", timed(lambda: encoder_only(model, paths, bs, w)))]
    for beam in (1, 3, 5):
        rows.append((f"caption.py pipeline, beam {beam}", timed(lambda b=beam: pipeline(model, paths, b, bs, w, out))))
    end_to_end = ["--out", out, "--beam", "3", "--batch-size", str(bs), "--workers", str(w), "--device", str(device),
                  "--checkpoint", args.checkpoint, "--no-progress", "--overwrite"]
    rows.append(("caption.main end to end, beam 3 (+ model load)", timed(lambda: caption.main(paths + end_to_end))))
    rows.append(("one at a time: model.caption([path]), beam 3", timed(lambda: one_at_a_time(model, paths, 3))))
    os.remove(out)
    os.rmdir(tmp)

    rate = {name: n / s for name, s in rows}
    print(f"\nmachine: {os.cpu_count()} CPU cores ({cpu_name()}), torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"images: {n} from {Path(paths[0]).parent}; batch {bs}, {w} DataLoader workers, max_len 30")
    print(f"\n{'':50s} {'images/s':>9s} {'seconds':>8s}")
    for name, s in rows:
        print(f"{name:50s} {n / s:9.1f} {s:8.2f}")
    r_enc = rate["caption.py pipeline, beam 3"] / rate["encoder only (same DataLoader): the ceiling"]
    r_loop = rate["caption.py pipeline, beam 3"] / rate["one at a time: model.caption([path]), beam 3"]
    print(f"\nbeam 3 / encoder-only   = {r_enc:.2f}  (target >= {TARGET_ENCODER:.2f}: "
          f"{'met' if r_enc >= TARGET_ENCODER else 'NOT met'})")
    print(f"batch / one-at-a-time   = {r_loop:.1f}x  (target >= {TARGET_LOOP:.0f}x: "
          f"{'met' if r_loop >= TARGET_LOOP else 'NOT met'})")


if __name__ == "__main__":
    main()
