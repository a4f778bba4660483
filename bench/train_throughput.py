"""Training throughput on this machine, through the training loop's own code, at COCO-like sizes.

    python bench/train_throughput.py                                 # CPU, small counts
    python bench/train_throughput.py --device cuda --precision bf16  # GPU sizes by default
    python bench/train_throughput.py --device cuda --compile          # + torch.compile of the fixed-shape parts

Measures, each with its batch size, device and precision:
  (a) decoder training from a feature cache: caption pairs/s (CaptionFeatureDataset on a real
      memory-mapped fp16 cache -> DataLoader -> training.optimisation_step),
  (b) end-to-end training with the top encoder blocks fine-tuned: images/s (JPEG decoding in
      DataLoader workers -> encoder -> decoder -> backward -> Adam),
  (c) feature extraction: images/s (features.build_feature_cache, the path extract_features.py runs).
Inputs are COCO-shaped: 640x480 JPEGs (made from scikit-image's sample photos), a 10,000-word
vocabulary (COCO's Karpathy train split with min_count 5 has about 9.5k), captions of 8-16 words
(COCO's mean is about 10.5), the 14x14x152 grid of the default encoder. Contents are synthetic, so
the numbers are throughput, not learning. It asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from captioner.datasets import ImageRecord
from captioner.encoder import EncoderConfig
from captioner.features import (
    CaptionFeatureDataset,
    FeatureCache,
    ImageCaptionDataset,
    build_feature_cache,
    collate_captions,
)
from captioner.model import Captioner
from captioner.runtime import amp_dtype, resolve_device
from captioner.text import Vocab
from captioner.training import TeacherForced, TrainConfig, optimisation_step
from machine import cpu_name

CPU_SIZES = {"decoder_batch": 64, "decoder_steps": 15, "e2e_batch": 16, "e2e_steps": 4, "extract_batch": 16,
             "extract_images": 128}
GPU_SIZES = {"decoder_batch": 256, "decoder_steps": 60, "e2e_batch": 128, "e2e_steps": 20, "extract_batch": 256,
             "extract_images": 4096}


def machine(device: torch.device) -> str:
    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{os.cpu_count()} CPU cores ({cpu}){gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_images(folder: Path, n: int) -> list[str]:
    """n distinct 640x480 JPEGs cut from scikit-image's sample photos (decoding cost like COCO's)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB")
              for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")]
    folder.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> str:
        rng = random.Random(i)
        im = photos[i % len(photos)]
        w, h = im.size
        s = rng.uniform(0.6, 1.0)
        x, y = rng.randint(0, int(w * (1 - s))), rng.randint(0, int(h * (1 - s)))
        path = str(folder / f"{i:06d}.jpg")
        im.crop((x, y, x + int(w * s), y + int(h * s))).resize((640, 480)).save(path, quality=rng.randint(75, 95))
        return path

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL releases the GIL while it encodes
        return list(pool.map(one, range(n)))


def make_captions(n_images: int, vocab_size: int) -> tuple[list[tuple[str, ...]], Vocab]:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(vocab_size - 4)]
    p = 1.0 / np.arange(1, len(words) + 1)  # Zipf-like word frequencies
    p /= p.sum()
    caps = [tuple(" ".join(rng.choice(words, size=rng.integers(8, 17), p=p)) for _ in range(5))
            for _ in range(n_images)]
    return caps, Vocab(["<pad>", "<start>", "<end>", "<unk>", *words])


def fake_cache(folder: Path, n: int, cells: int, channels: int) -> FeatureCache:
    folder.mkdir(parents=True)
    arr = np.lib.format.open_memmap(folder / "feats.npy", mode="w+", dtype=np.float16, shape=(n, cells, channels))
    rng = np.random.default_rng(0)
    for s in range(0, n, 256):
        arr[s: s + 256] = rng.standard_normal((min(256, n - s), cells, channels), dtype=np.float32)
    arr.flush()
    (folder / "index.json").write_text(json.dumps({"image_ids": list(range(n)), "failed": []}))
    return FeatureCache(folder)


def run_steps(net, model, loader, steps: int, warmup: int, cfg: TrainConfig, device, dtype) -> float:
    """Seconds for `steps` optimisation steps after `warmup` (compilation, cuDNN autotuning, allocator)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    model.train()
    it = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t = time.perf_counter()
        inputs, tokens = (x.to(device, non_blocking=True) for x in next(it))
        optimisation_step(net, opt, scaler, trainable, inputs, tokens, cfg, dtype=dtype)
    sync(device)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="CUDA autocast: auto (bf16), bf16, fp16, fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and the decoder step")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--vocab-size", type=int, default=10000)
    p.add_argument("--only", default="a,b,c", help="which measurements: a,b,c")
    for k in CPU_SIZES:
        p.add_argument("--" + k.replace("_", "-"), type=int, help=f"default: CPU {CPU_SIZES[k]}, GPU {GPU_SIZES[k]}")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    dtype = amp_dtype(device, args.precision)
    sizes = {k: getattr(args, k) or (GPU_SIZES if device.type == "cuda" else CPU_SIZES)[k] for k in CPU_SIZES}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    prec = str(dtype).replace("torch.", "") if dtype else "fp32"
    warm = 8 if args.compile else 3
    tmp = Path(tempfile.mkdtemp(prefix="train_bench"))
    rows, only = [], set(args.only.split(","))
    try:
        n_img = (max(sizes["extract_images"], sizes["e2e_batch"] * (sizes["e2e_steps"] + warm))
                 if only & {"b", "c"} else 0)
        paths = make_images(tmp / "images", n_img) if n_img else []
        n_cap = max(n_img, sizes["decoder_batch"] * 8)
        caps, vocab = make_captions(n_cap, args.vocab_size)
        records = [ImageRecord(i, paths[i] if i < len(paths) else "", "train", caps[i]) for i in range(n_cap)]
        enc_cfg = EncoderConfig()
        cfg = TrainConfig()
        if "a" in only:
            model = Captioner.create(enc_cfg, vocab, **cfg.decoder_kwargs()).to(device)
            if args.compile:
                model.decoder.compile_step()
            cache = fake_cache(tmp / "cache", n_cap, model.encoder.num_cells, model.encoder.channels)
            ds = CaptionFeatureDataset(cache, records, vocab, per_image="one")
            b = sizes["decoder_batch"]
            loader = DataLoader(ds, batch_size=b, num_workers=min(args.workers, 4), collate_fn=collate_captions,
                                pin_memory=device.type == "cuda", drop_last=True,
                                sampler=RandomSampler(ds, replacement=True,
                                                      num_samples=b * (warm + sizes["decoder_steps"])))
            s = run_steps(TeacherForced(model, False), model, loader, sizes["decoder_steps"], warm, cfg, device, dtype)
            rows.append(("(a) decoder training from cached features", "caption pairs/s", b,
                         b * sizes["decoder_steps"] / s))
            del model
        if "b" in only:
            model = Captioner.create(enc_cfg, vocab, **cfg.decoder_kwargs()).to(device)
            model.encoder.set_trainable(cfg.fine_tune_blocks)
            if args.compile:
                model.decoder.compile_step()
                model.encoder.compile()
            b = sizes["e2e_batch"]
            ds = ImageCaptionDataset(records[:n_img], vocab, model.transform(), enc_cfg.image_size)
            loader = DataLoader(ds, batch_size=b, num_workers=args.workers, collate_fn=collate_captions,
                                pin_memory=device.type == "cuda", shuffle=True, drop_last=True)
            s = run_steps(TeacherForced(model, True), model, loader, sizes["e2e_steps"], warm, cfg, device, dtype)
            rows.append((f"(b) end to end, top {cfg.fine_tune_blocks} encoder blocks fine-tuned", "images/s", b,
                         b * sizes["e2e_steps"] / s))
            del model
        if "c" in only:
            model = Captioner.create(enc_cfg, vocab).to(device)
            encoder = model.encoder
            if args.compile:
                encoder.compile()
            b = sizes["extract_batch"]
            n = sizes["extract_images"]
            build_feature_cache(encoder, records[: b * 2], tmp / "warm", batch_size=b, num_workers=args.workers,
                                device=device, progress=False)  # warm-up: cuDNN autotuning, workers, compile
            sync(device)
            t = time.perf_counter()
            build_feature_cache(encoder, records[:n], tmp / "extract", batch_size=b, num_workers=args.workers,
                                device=device, progress=False)
            sync(device)
            rows.append(("(c) feature extraction (fp16 cache written)", "images/s", b, n / (time.perf_counter() - t)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nmachine: {machine(device)}")
    print(f"device {device}, precision {prec}, compile {args.compile}, {args.workers} DataLoader workers, "
          f"vocab {args.vocab_size}, 224x224 input, 14x14x152 grid, hidden 512, attention 256")
    print(f"\n{'':58s} {'batch':>6s} {'rate':>9s}")
    for name, unit, b, rate in rows:
        print(f"{name:58s} {b:6d} {rate:9.1f} {unit}")
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "precision": prec, "compile": args.compile, "workers": args.workers,
              **{name.split(")")[0] + ")": {"batch": b, unit: round(rate, 1)} for name, unit, b, rate in rows}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
