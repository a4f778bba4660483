"""The training loop: one process on CPU or CUDA, from cached features or end to end.

`train(cfg)` is what train.py calls. It owns the optimiser (Adam, its own learning rate for a
fine-tuned encoder), the cosine learning-rate schedule, gradient clipping, mixed precision on
CUDA, validation by real beam-search decoding with early stopping, the `last.pt` / `best.pt`
checkpoints (with everything needed to resume bit-for-bit on CPU), TensorBoard scalars and one
summary line per epoch.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .decoder import caption_loss
from .encoder import EncoderConfig
from .evaluation import decode_cache, decode_records, score_outputs
from .features import CaptionFeatureDataset, ImageCaptionDataset, cached_features, collate_captions
from .model import Captioner
from .search import DEFAULT_MAX_LEN
from .runtime import amp_dtype, autocast, resolve_device, rng_state, seed_everything, set_rng_state
from .sources import DataSource
from .text import Vocab, tokenize

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out: str = "runs/shapes"  # run directory: config.yaml, last.pt, best.pt, history.json, TensorBoard events
    cache_dir: str = "cache"  # feature caches, shared by runs
    # model
    backbone: str = "efficientnet_lite0"
    encoder_weights: str = "package"  # "package" (offline ImageNet weights), a state_dict path, or "none"
    image_size: int = 224
    stages: tuple[int, ...] = (2, 3)  # encoder stages concatenated into the grid (the last sets its size)
    grid_size: int | None = None  # pool the grid to grid_size x grid_size (None: native 14x14)
    embed_dim: int = 256
    attention_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.5
    gate: str = "scalar"  # "scalar" (paper), "channel", "none"
    pos_embed: bool = True
    feature_norm: bool = True  # LayerNorm over each annotation vector's channels (not in the paper)
    att_lambda: float = 1.0  # weight of the doubly stochastic regulariser
    att_reduction: str = "mean"  # over the N locations: "mean" (= lambda/N with the paper's sum) or "sum"
    # vocabulary and captions
    min_count: int = 5
    max_caption_len: int = 30  # training captions are cut to this many words
    captions_per_image: str = "one"  # per epoch: "one" random reference per image, or "all"
    # optimisation
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    lr_min_ratio: float = 0.05  # cosine decays the learning rate to lr * lr_min_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    fine_tune_encoder: bool = False
    fine_tune_blocks: int = 2  # top encoder blocks trained when fine-tuning
    encoder_lr: float = 1e-4
    # validation / early stopping
    val_split: str = "val"
    val_metric: str = "CIDEr"
    val_beam: int = 3
    val_max_len: int = DEFAULT_MAX_LEN  # most tokens decoded per caption, <end> included
    patience: int = 5  # epochs without improvement before stopping (0: never stop early)
    # smoke-size switches
    max_train_images: int | None = None
    max_val_images: int | None = None
    # runtime
    device: str = "auto"
    precision: str = "auto"  # CUDA autocast dtype: auto (bf16 if supported), bf16, fp16, fp32
    workers: int = 0
    seed: int = 0
    resume: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.stages = tuple(int(s) for s in self.stages)

    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(backbone=self.backbone, image_size=self.image_size, stages=self.stages,
                             grid_size=self.grid_size, weights=self.encoder_weights)

    def decoder_kwargs(self) -> dict[str, Any]:
        return dict(embed_dim=self.embed_dim, attention_dim=self.attention_dim, hidden_dim=self.hidden_dim,
                    dropout=self.dropout, gate=self.gate, pos_embed=self.pos_embed,
                    feature_norm=self.feature_norm)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Writer:
    """TensorBoard scalars when tensorboard is installed; silent otherwise."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.w = SummaryWriter(str(folder / "tb"))
        except ImportError:  # pragma: no cover
            log.warning("tensorboard is not installed: no TensorBoard events will be written")
            self.w = None

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.w is not None:
            self.w.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


def _limit(records: list, n: int | None) -> list:
    return records if n is None else records[:n]


def train(cfg: TrainConfig, source: DataSource) -> dict[str, Any]:
    """Train on `source` ('train' split; validate on cfg.val_split). Returns the run summary."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(device, cfg.precision)
    seed_everything(cfg.seed)
    train_records = _limit(source.split("train"), cfg.max_train_images)
    val_records = _limit(source.split(cfg.val_split), cfg.max_val_images)

    resume = load_checkpoint(cfg.resume) if cfg.resume else None
    if resume is not None:
        if "train" not in resume:
            raise ValueError(f"{cfg.resume} holds no training state (an exported model?): cannot resume from it")
        model = Captioner.from_model_state(resume["model"])
        vocab = model.vocab
    else:
        vocab = Vocab.build((tokenize(c) for r in train_records for c in r.captions), min_count=cfg.min_count)
        model = Captioner.create(cfg.encoder_config(), vocab, **cfg.decoder_kwargs())
    if cfg.fine_tune_encoder:
        model.encoder.set_trainable(cfg.fine_tune_blocks)
    model.to(device)
    log.info("vocab %d words; decoder %.2fM parameters; grid %s x %d channels; device %s%s", len(vocab),
             sum(p.numel() for p in model.decoder.parameters()) / 1e6, model.grid, model.encoder.channels,
             device, f" ({dtype})" if dtype else "")

    feat_kw = dict(batch_size=16, num_workers=cfg.workers, device=device, progress=cfg.progress)
    if cfg.fine_tune_encoder:
        train_ds = ImageCaptionDataset(train_records, vocab, model.transform(), cfg.image_size,
                                       cfg.max_caption_len, cfg.seed)
        val_cache = None
    else:
        train_cache = cached_features(model.encoder, train_records, cfg.cache_dir, source.name, "train", **feat_kw)
        val_cache = cached_features(model.encoder, val_records, cfg.cache_dir, source.name, cfg.val_split, **feat_kw)
        train_ds = CaptionFeatureDataset(train_cache, train_records, vocab, cfg.max_caption_len,
                                         cfg.captions_per_image, cfg.seed)

    params = [{"params": model.decoder.parameters(), "lr": cfg.lr}]
    if cfg.fine_tune_encoder:
        params.append({"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.encoder_lr})
    optimizer = torch.optim.Adam(params, weight_decay=cfg.weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    scheduler = cosine_schedule(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_steps, cfg.lr_min_ratio)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    start_epoch, history, best = 0, [], {"epoch": -1, "value": -math.inf}
    if resume is not None:
        t = resume["train"]
        optimizer.load_state_dict(t["optimizer"])
        scheduler.load_state_dict(t["scheduler"])
        if scaler is not None and t.get("scaler"):
            scaler.load_state_dict(t["scaler"])
        start_epoch, history, best = t["epoch"] + 1, list(t["history"]), dict(t["best"])
        set_rng_state(t["rng"])
        log.info("resumed from %s at epoch %d", cfg.resume, start_epoch + 1)

    writer = _Writer(out)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        train_ds.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                            collate_fn=collate_captions, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        model.decoder.train()
        model.encoder.train()
        sums = {"loss": 0.0, "ce": 0.0, "reg": 0.0}
        n = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not cfg.progress,
                   leave=False)
        for batch in bar:
            if batch is None:
                continue
            inputs, tokens = (x.to(device, non_blocking=True) for x in batch)
            with autocast(device, dtype):
                feats = model.encoder(inputs) if cfg.fine_tune_encoder else inputs
                logits, alphas = model.decoder(feats, tokens)
                loss, ce, reg = caption_loss(logits, alphas, tokens, cfg.att_lambda, cfg.att_reduction)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            step += 1
            for k, v in (("loss", loss), ("ce", ce), ("reg", reg)):
                sums[k] += v.item()
            n += 1
            if step % 20 == 0:
                writer.scalar("train/loss", loss.item(), step)
                writer.scalar("train/lr", optimizer.param_groups[0]["lr"], step)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        train_time = time.time() - t0

        # Validation: real beam-search decoding, scored with the COCO scorers.
        model.eval()
        if val_cache is not None:
            outputs = decode_cache(model, val_cache, [r.image_id for r in val_records],
                                   beam_size=cfg.val_beam, max_len=cfg.val_max_len)
        else:
            outputs = decode_records(model, val_records, beam_size=cfg.val_beam, max_len=cfg.val_max_len,
                                     num_workers=cfg.workers)
        scores, _ = score_outputs(outputs, val_records, metrics=("BLEU-4", "CIDEr"), meteor=False)
        value = scores[cfg.val_metric]
        improved = value > best["value"]
        if improved:
            best = {"epoch": epoch, "value": value}
        entry = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()},
                 "lr": optimizer.param_groups[0]["lr"], "val": scores,
                 "train_seconds": round(train_time, 2), "seconds": round(time.time() - t0, 2)}
        history.append(entry)
        for k, v in scores.items():
            writer.scalar(f"val/{k}", v, epoch + 1)
        writer.scalar("train/epoch_loss", entry["loss"], epoch + 1)

        payload = {"model": model.model_state(),
                   "train": {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "scaler": scaler.state_dict() if scaler is not None else None,
                             "rng": rng_state(), "history": history, "best": best, "config": asdict(cfg)},
                   "meta": {"val_split": cfg.val_split, "val_beam": cfg.val_beam, "dataset": source.name}}
        if improved:
            save_checkpoint(payload, out / "best.pt")
        save_checkpoint(payload, out / "last.pt")
        (out / "history.json").write_text(json.dumps(history, indent=2))
        log.info("epoch %d/%d  loss %.4f (ce %.4f reg %.4f)  val BLEU-4 %.4f CIDEr %.4f%s  lr %.2e  %.0fs",
                 epoch + 1, cfg.epochs, entry["loss"], entry["ce"], entry["reg"], scores["BLEU-4"],
                 scores["CIDEr"], "  *best*" if improved else "", entry["lr"], entry["seconds"])
        if cfg.patience and epoch - best["epoch"] >= cfg.patience:
            log.info("early stop: %s has not improved for %d epochs", cfg.val_metric, cfg.patience)
            break
    writer.close()
    summary = {"run": str(out), "epochs_run": len(history), "best_epoch": best["epoch"] + 1,
               f"best_val_{cfg.val_metric}": best["value"], "history": history}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
