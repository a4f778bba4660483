"""Build the feature caches that decoder training reads, before training (COCO: ~123k images).

    python extract_features.py --karpathy-json data/coco/dataset_coco.json --images data/coco \\
        --splits train,val --device cuda --batch-size 256 --workers 8
    torchrun --nproc_per_node=4 extract_features.py ...       # the GPUs share the chunks

Writes one fp16 cache per split and encoder config under --cache-dir, exactly where train.py
looks (same options, same cache key), with a progress bar. Kill it and run the same command
again: finished chunks are kept and it goes on from the first unfinished one. Unreadable images
are reported, listed in the cache's index.json and skipped. The encoder options must match the
ones training will use (train.py's defaults are these defaults).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict

from captioner.training import ENCODER_OPTIONS, TrainConfig
from cli import add_data_args, add_options, data_source_rank0_first, setup_logging

log = logging.getLogger("extract_features")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--splits", default="train,val", help="comma-separated splits to cache (default: train,val)")
    p.add_argument("--cache-dir", default="cache", help="cache root, shared with train.py --cache-dir")
    e = p.add_argument_group("encoder (train.py's own options: give the values training will use)")
    add_options(e, TrainConfig, list(ENCODER_OPTIONS))
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda (under torchrun: each process its own GPU)")
    r.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
    r.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader processes decoding images (default: 4, or the number of CPUs when fewer)")
    r.add_argument("--chunk-size", type=int, default=1024, help="images per resumable chunk")
    r.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import torch

    from captioner import distributed
    from captioner.encoder import Encoder
    from captioner.features import cached_features
    from captioner.runtime import resolve_device

    args = parse_args(argv)
    dist, device = distributed.setup(args.device)
    setup_logging(logging.INFO if dist.main else logging.WARNING)
    cfg = TrainConfig(**{k: getattr(args, k) for k in ENCODER_OPTIONS}).encoder_config()  # as train.py makes it
    device = resolve_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        source = data_source_rank0_first(args, dist)
        encoder = Encoder(cfg).to(device).eval()
        report = {}
        for split in args.splits.split(","):
            records = source.split(split)
            cache = cached_features(encoder, records, args.cache_dir, source.name, split, batch_size=args.batch_size,
                                    num_workers=args.workers, device=device, progress=args.progress,
                                    chunk_size=args.chunk_size, dist=dist)
            report[split] = {"cache": str(cache.folder), "folders": [str(f) for f in cache.folders],
                             "images": len(cache), "failed": len(cache.failed)}
            log.info("%s: %d images cached in %s (%d unreadable)", split, len(cache),
                     ", ".join(map(str, cache.folders)), len(cache.failed))
    finally:
        distributed.cleanup(dist)
    if dist.main:
        print(json.dumps({"encoder": asdict(cfg), "splits": report}))
    return report


if __name__ == "__main__":
    main()
