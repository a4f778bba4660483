"""The training loop: one process or many (DDP under torchrun), CPU or CUDA, from cached features or end to end.

`train(cfg, source, dist)` is what train.py calls. It owns the optimiser (Adam, its own learning
rate for a fine-tuned encoder), the cosine learning-rate schedule, gradient clipping, the GPU
path (autocast bf16/fp16, GradScaler for fp16 only, cudnn.benchmark, pinned memory and
non-blocking copies, optional torch.compile of the fixed-shape parts), validation by real
beam-search decoding (sharded over the ranks, scored on rank 0) with early stopping, the
`last.pt` / `best.pt` checkpoints (the unwrapped model, with everything needed to resume
bit-for-bit on CPU; rank 0 writes them), TensorBoard scalars and one summary line per epoch.

Under DDP the global batch stays `batch_size` whatever the number of processes: each takes
batch_size / world of it, DistributedSampler (seeded, set_epoch) splits a permutation that does
not depend on the world size, and the loss is normalised by the global token and image counts,
so N processes compute the gradient that one process computes on the same global batch.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .atomic import atomic_write_json
from .checkpoint import load_checkpoint, save_checkpoint
from .decoder import ATTENTIONS, OBJECTIVES
from .distributed import (
    ONE_PROCESS,
    Dist,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
)
from .encoder import EncoderConfig
from .evaluation import VAL_METRICS, decode_split, score_outputs, split_features
from .features import (
    CaptionFeatureDataset,
    ImageCaptionDataset,
    cached_features,
    collate_captions,
)
from .metrics import METRIC_KEYS
from .model import Captioner
from .objectives import (  # noqa: F401 (optimisation_step: bench)
    TRUTH_WEIGHTS,
    make_objective,
    optimisation_step,
    policy_net,
)
from .options import option
from .runtime import (
    amp_dtype,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from .scene_metrics import SHAPES_METRICS, attention_target_masks, recall_targets
from .search import DEFAULT_MAX_LEN
from .sources import DataSource
from .text import Vocab, tokenize

log = logging.getLogger(__name__)


ENCODER_OPTIONS = ("backbone", "encoder_weights", "image_size", "stages", "grid_size")  # what encoder_config() reads
DECODER_OPTIONS = ("embed_dim", "attention_dim", "hidden_dim", "dropout", "gate", "pos_embed", "feature_norm",
                   "coords", "layout", "refine", "recall", "compare", "attention")


@dataclass
class TrainConfig:
    """Everything a training run is made of; train.py's flags are built from these fields (name, type, help)."""
    out: str = option("runs/shapes", "run directory (config.yaml, last.pt, best.pt, history.json, TensorBoard events)")
    cache_dir: str = option("cache", "where feature caches live (per dataset, split and encoder config; "
                                     "shared by runs, never deleted)")
    # model: the encoder (its defaults are EncoderConfig's: a test checks they agree) ...
    backbone: str = option("tf_efficientnet_lite0", "timm model name of the encoder (the package weights fit "
                                                    "tf_efficientnet_lite0, as trained, or efficientnet_lite0)")
    encoder_weights: str = option("package", "'package' (offline ImageNet EfficientNet-Lite0 weights), a state_dict "
                                             "path, or 'none'")
    image_size: int = option(224, "images are resized (no crop) to this many pixels square")
    stages: tuple[int, ...] = option((2, 3), "encoder feature stages concatenated into the grid, e.g. 2,3 "
                                             "(the last sets the grid's size)")
    grid_size: int | None = option(None, "pool the feature grid to this size (default: native, 14 at 224 px)")
    # ... and the decoder (defaults: DecoderConfig's)
    embed_dim: int = option(256, "word embedding size m (also the deep-output size)")
    attention_dim: int = option(256, "hidden size of the attention MLP")
    hidden_dim: int = option(512, "LSTM size n")
    dropout: float = option(0.5, "dropout on h_t and on the deep output's sum")
    gate: str = option("scalar", "attention gate beta: scalar (paper), channel, none")
    pos_embed: bool = option(True, "add a learned row+column position embedding to the features (true/false)")
    feature_norm: bool = option(True, "LayerNorm each annotation vector before attention (true/false)")
    coords: bool = option(False, "append each cell's (x, y) to its annotation vector, so attention and the context "
                                 "carry the attended location (true/false)")
    layout: int = option(0, "the LSTM's initial state also reads a g x g average-pooled grid of the annotation "
                            "vectors (g = this; 0: only their mean, as the paper), so it starts knowing where things "
                            "are")
    refine: int = option(0, "self-attention layers over the annotation vectors before the decoder attends (0: "
                            "none, as the paper), so that each cell carries what lies around it and where")
    recall: bool = option(False, "a memory of where the decoder looked: each word's step writes (the word, the "
                                 "context it read) and later steps attend over those entries, so a relation word can "
                                 "compare where it looks with where an object it named lay (true/false)")
    compare: bool = option(False, "with --recall and --coords: the deep output also sees the attended centre minus "
                                  "the centre its recall reads back (gated by h_t), so a relation word reads where "
                                  "the object it looks at lies against the one it named; with it the attention and "
                                  "recall supervision cover each relation's whole phrase ('to the left'), not only "
                                  "its deciding word (true/false)")
    attention: str = option("soft", "soft (the expectation, section 4.2), hard (a sampled location per word in "
                                    "training, section 4.1; the expectation at test time), none (the mean annotation "
                                    "vector every step: no attention)")
    hard_lambda_r: float = option(0.1, "hard attention: weight lambda_r of the REINFORCE term "
                                       "(log p(y|s,a) - b) d log p(s|a)")
    hard_lambda_e: float = option(0.01, "hard attention: weight lambda_e of the attention entropy bonus")
    hard_expectation_p: float = option(0.5, "hard attention: share of captions that read the expected context "
                                            "instead of a sampled location (the paper's 0.5)")
    att_lambda: float = option(1.0, "weight lambda of the doubly stochastic attention regulariser")
    att_reduction: str = option("mean", "regulariser over the N locations: mean (the sum / N) or sum (as the paper "
                                        "writes it); used by --objective token")
    objective: str = option("token", "token: cross-entropy averaged per token + lambda x the regulariser "
                                     "(--att-reduction); paper: Xu et al.'s objective, each caption's cross-entropy "
                                     "summed over its words + lambda x sum_i (1 - sum_t alpha_ti)^2, both averaged "
                                     "over captions (see the README's table)")
    att_supervision: float = option(0.0, "weight of attention supervision from the objects' boxes (shapes world, "
                                         "cached features, soft attention): -log of the attention mass that a "
                                         "colour/shape word puts on its object and a relation word on the other "
                                         "object of the relation (0: off, as the paper)")
    recall_supervision: float = option(0.0, "weight of recall supervision (with --recall, shapes world, cached "
                                            "features): -log of the recall weight that a relation word puts on "
                                            "the memory entry of the shape word it places (0: off)")
    # vocabulary and captions
    min_count: int = option(5, "words seen fewer times in training captions become <unk>")
    max_caption_len: int = option(30, "training captions are cut to this many words")
    captions_per_image: str = option("one", "per epoch: one random reference per image ('one') or every reference "
                                            "('all')")
    prefer_captions: str | None = option(None, "with --captions-per-image one: a regular expression; references it "
                                               "finds something in are drawn --prefer-weight times as often")
    prefer_weight: float = option(1.0, "how much likelier a --prefer-captions reference is to be drawn")
    # self-critical sequence training (a stage after cross-entropy training)
    scst: bool = option(False, "self-critical training: sample captions, reward each with CIDEr-D against the "
                               "image's references, baseline --scst-baseline (start it from --init-from)")
    init_from: str | None = option(None, "start from this checkpoint's model (weights, vocabulary, model config); "
                                         "the optimiser, schedule and epochs start afresh")
    scst_samples: int = option(5, "self-critical training: captions sampled per image")
    scst_baseline: str = option("greedy", "self-critical training's baseline: greedy (the reward of the greedy "
                                          "caption, Rennie et al.) or mean (the mean reward of the image's other "
                                          "samples)")
    sample_max_len: int = option(DEFAULT_MAX_LEN, "self-critical training: most tokens per sampled or greedy caption, "
                                                  "<end> included")
    scst_true_relation: float = option(0.0, "self-critical training on the shapes world: added to a caption's "
                                            "reward per relation statement true of its scene (0: CIDEr-D alone)")
    scst_false_relation: float = option(0.0, "self-critical training on the shapes world: taken from a caption's "
                                             "reward per relation statement false of its scene")
    scst_phantom: float = option(0.0, "self-critical training on the shapes world: taken from a caption's reward per "
                                      "mention of an object its scene does not have (CHAIR_i's mentions)")
    scst_missed: float = option(0.0, "self-critical training on the shapes world: taken from a caption's reward per "
                                     "object of its scene it does not name by colour and shape (object_recall's "
                                     "misses)")
    scst_wrong_count: float = option(0.0, "self-critical training on the shapes world: taken from a caption's reward "
                                          "per number it states wrong ('three shapes' before two objects; "
                                          "count_error_rate's errors)")
    scst_repeat: float = option(0.0, "self-critical training on the shapes world: taken from a caption's reward per "
                                     "mention of an object of its scene beyond how many of it there are ('a red "
                                     "circle ... and a red circle' before one: a third object named as the first "
                                     "again costs this on top of --scst-missed)")
    scst_relation_objects: int = option(0, "with --scst-true-relation: pay for true relations only in scenes of at "
                                           "most this many objects (false ones are charged in every scene), so "
                                           "that the model states relations where they are easy and lists the "
                                           "objects of the others; 0: in every scene")
    scst_xe: float = option(0.0, "self-critical training: add this weight x the cross-entropy loss of one reference "
                                 "per image (drawn as the cross-entropy stage draws it, --prefer-captions too) to "
                                 "the policy-gradient loss, the mixed objective of Paulus et al. 2018 (0: off)")
    scst_xe_words: str | None = option(None, "with --scst-xe: that cross-entropy over only the reference words this "
                                             "regular expression matches whole (e.g. the words that state a "
                                             "relation), their mean; default: every word")
    # optimisation
    epochs: int = option(20, "epochs to train")
    batch_size: int = option(64, "global batch size: under torchrun each of the N processes takes batch_size / N")
    lr: float = option(1e-3, "Adam's learning rate for the decoder")
    lr_min_ratio: float = option(0.05, "cosine decays the learning rate to lr x this")
    warmup_steps: int = option(100, "steps of linear learning-rate warm-up")
    weight_decay: float = option(0.0, "Adam's weight decay")
    grad_clip: float = option(5.0, "clip the global gradient norm to this value; 0 (or less): no clipping")
    fine_tune_encoder: bool = option(False, "train the top encoder blocks end to end (no feature cache)")
    fine_tune_blocks: int = option(2, "top encoder blocks trained when fine-tuning")
    encoder_lr: float = option(1e-4, "learning rate of the fine-tuned encoder blocks")
    # validation / early stopping
    val_split: str = option("val", "the split validation decodes")
    val_metric: str = option("CIDEr", "validation metric for best.pt and early stopping, from beam-search decoding: "
                                      "BLEU-1..4, METEOR, ROUGE-L, CIDEr, nltk_BLEU-1..4, or on the shapes world "
                                      "scene_accuracy, grounding, relation_accuracy, relation_rate, object_recall")
    val_beam: int = option(3, "beam width of validation decoding")
    val_max_len: int = option(DEFAULT_MAX_LEN, "most tokens decoded per validation caption, <end> included")
    patience: int = option(5, "stop after this many epochs without improvement (0: never)")
    # GPU path (each is a no-op on CPU)
    compile: bool = option(False, "torch.compile the encoder (when fine-tuning) and the decoder's one-word step; "
                                  "never the decode loop")
    cudnn_benchmark: bool = option(True, "let cuDNN time and pick convolution kernels for the fixed input size "
                                         "(CUDA only)")
    # smoke-size switches
    max_train_images: int | None = option(None, "smoke-size switch: use only the first N training images")
    max_val_images: int | None = option(5000, "validate on the first N images of the val split (default 5000: a "
                                              "fixed subset of COCO's 40,504 val2014 images; Karpathy's val has "
                                              "5,000); 0: all")
    # runtime
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option("auto", "CUDA autocast dtype: auto (bf16 where supported), bf16, fp16, fp32 "
                                    "(CPU is always fp32)")
    workers: int = option(0, "DataLoader worker processes")
    seed: int = option(0, "seed of every random draw (initial weights, data order, dropout)")
    resume: str | None = option(None, "continue the run saved in this last.pt (same config); 'auto': OUT/last.pt "
                                      "if it exists, else start afresh (what torchrun's --max-restarts needs)")
    progress: bool = option(True, "tqdm progress bars", flag="--no-progress")

    def __post_init__(self) -> None:
        self.stages = tuple(int(s) for s in self.stages)
        if self.val_metric not in VAL_METRICS:
            raise ValueError(f"unknown validation metric {self.val_metric!r}; choose one of {', '.join(VAL_METRICS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.att_reduction not in ("mean", "sum"):
            raise ValueError(f"att_reduction must be 'mean' or 'sum', not {self.att_reduction!r}")
        if self.captions_per_image not in ("one", "all"):
            raise ValueError(f"captions_per_image must be 'one' or 'all', not {self.captions_per_image!r}")
        if self.prefer_captions:
            re.compile(self.prefer_captions)  # a bad expression fails here, with re's message
        if self.prefer_weight <= 0:
            raise ValueError(f"prefer_weight must be positive, not {self.prefer_weight}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, not {self.attention!r}")
        if not 0 <= self.hard_expectation_p <= 1:
            raise ValueError(f"hard_expectation_p must be in [0, 1], not {self.hard_expectation_p}")
        if self.scst_baseline not in ("greedy", "mean"):
            raise ValueError(f"scst_baseline must be 'greedy' or 'mean', not {self.scst_baseline!r}")
        if self.scst and self.scst_samples < (2 if self.scst_baseline == "mean" else 1):
            raise ValueError(f"scst_samples must be at least {2 if self.scst_baseline == 'mean' else 1} with the "
                             f"{self.scst_baseline} baseline, not {self.scst_samples}")
        if self.scst and self.fine_tune_encoder:
            raise ValueError("self-critical training runs on cached features: it does not fine-tune the encoder "
                             "(drop --fine-tune-encoder)")
        if self.att_supervision < 0:
            raise ValueError(f"att_supervision must be 0 (off) or positive, not {self.att_supervision}")
        if self.att_supervision and (self.scst or self.fine_tune_encoder):
            raise ValueError("--att-supervision weighs a term of the cross-entropy stage on cached features: "
                             "not with --scst or --fine-tune-encoder")
        if self.recall_supervision < 0:
            raise ValueError(f"recall_supervision must be 0 (off) or positive, not {self.recall_supervision}")
        if self.recall_supervision and not self.recall:
            raise ValueError("--recall-supervision supervises the recall memory: add --recall true")
        if self.recall_supervision and (self.scst or self.fine_tune_encoder):
            raise ValueError("--recall-supervision weighs a term of the cross-entropy stage on cached features: "
                             "not with --scst or --fine-tune-encoder")
        for name in TRUTH_WEIGHTS:
            w = getattr(self, name)
            if w < 0:
                raise ValueError(f"{name} must be 0 (off) or positive, not {w}")
            if w and not self.scst:
                raise ValueError(f"--{name.replace('_', '-')} weighs a self-critical reward: add --scst true "
                                 "(or use --then-scst)")
        if self.scst_relation_objects < 0:
            raise ValueError(f"scst_relation_objects must be 0 (every scene) or positive, not "
                             f"{self.scst_relation_objects}")
        if self.scst_relation_objects and not self.scst_true_relation:
            raise ValueError("--scst-relation-objects limits where --scst-true-relation pays: give it too")
        if self.scst_xe < 0:
            raise ValueError(f"scst_xe must be 0 (off) or positive, not {self.scst_xe}")
        if self.scst_xe and not self.scst:
            raise ValueError("--scst-xe weighs a term of self-critical training: add --scst true (or use --then-scst)")
        if self.scst_xe_words is not None:
            if not self.scst_xe:
                raise ValueError("--scst-xe-words chooses the words of the --scst-xe term: give --scst-xe too")
            re.compile(self.scst_xe_words)  # a bad expression fails here, with re's message
        if self.sample_max_len < 1:
            raise ValueError(f"sample_max_len must be >= 1, not {self.sample_max_len}")

    @property
    def truth_reward(self) -> bool:
        """Whether self-critical training's reward also pays for the truth (scene_metrics.truth_counts)."""
        return any(getattr(self, name) for name in TRUTH_WEIGHTS)

    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(backbone=self.backbone, image_size=self.image_size, stages=self.stages,
                             grid_size=self.grid_size, weights=self.encoder_weights)

    def decoder_kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in DECODER_OPTIONS}


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
    return records if not n else records[:n]


class EpochSampler(DistributedSampler):
    """DistributedSampler whose permutation of (seed, epoch) does not depend on the number of processes.

    The permutation comes from a generator seeded seed * 1000 + epoch, after one discarded 64-bit
    draw (kept so that one-process runs reproduce the runs, and the bundled demo model, of the
    releases where the DataLoader shuffled). Padding and the rank's share (every world-th index)
    are DistributedSampler's own.
    """

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        torch.empty((), dtype=torch.int64).random_(generator=g)
        indices = torch.randperm(len(self.dataset), generator=g).tolist()
        indices += indices[: self.total_size - len(indices)]  # pad to a multiple of the world size
        return iter(indices[self.rank: self.total_size: self.num_replicas])


class TeacherForced(nn.Module):
    """What DDP wraps: (images or cached features, tokens) -> (logits, alphas). Shares the model's modules."""

    def __init__(self, model: Captioner, fine_tune: bool):
        super().__init__()
        self.encoder, self.decoder, self.fine_tune = model.encoder, model.decoder, fine_tune

    def forward(self, inputs: torch.Tensor, tokens: torch.Tensor, draws=None, recall_weights: bool = False):
        feats = self.encoder(inputs) if self.fine_tune else inputs  # (B, N, C)
        return self.decoder(feats, tokens, draws, recall_weights)


class ImageIndex(torch.utils.data.Dataset):
    """One item per image of a CaptionFeatureDataset: (features (N, C), tensor([index])), the index into its
    `captions` (every reference of the image): self-critical training's data."""

    def __init__(self, ds: CaptionFeatureDataset):
        self.ds, self.captions = ds, ds.captions

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.ds.image_ids)

    def __getitem__(self, i: int):
        return self.ds.image_features(i), torch.tensor([i])


def _resume_path(cfg: TrainConfig) -> str | None:
    if cfg.resume == "auto":  # what torchrun's restarts use: continue where the last attempt stopped
        last = Path(cfg.out) / "last.pt"
        return str(last) if last.is_file() else None
    return cfg.resume


def _validate(model: Captioner, cfg: TrainConfig, val_cache, val_records: list, source: DataSource,
              dist: Dist) -> dict[str, float]:
    """Beam-search decoding of this rank's share of the validation images; rank 0 scores all of them.

    Scored: BLEU-4 and CIDEr (the epoch's log line), `cfg.val_metric`, and on the shapes world
    its scene, grounding and relation metrics; unreadable images count as empty captions, as in
    evaluate.py.
    """
    model.eval()
    outputs = decode_split(model, val_records[dist.rank::dist.world], val_cache, beam_size=cfg.val_beam,
                           max_len=cfg.val_max_len, num_workers=cfg.workers)
    objects = source.objects.get(cfg.val_split)
    if dist.enabled:  # attention maps travel only when grounding needs them
        parts = gather_objects(dist, {i: o if objects is not None else replace(o, alphas=np.empty(0), beams=[])
                                      for i, o in outputs.items()})
        outputs = {i: o for part in parts for i, o in part.items()}
    scores = None
    if dist.main:
        scores, _ = score_outputs(outputs, val_records, metrics=("BLEU-4", "CIDEr", cfg.val_metric),
                                  meteor=cfg.val_metric == "METEOR",
                                  objects=objects, image_sizes=source.image_sizes.get(cfg.val_split))
    return broadcast_object(dist, scores)


@dataclass
class _Run:
    """What the phases of a run share: made once by `_build`, then used by every epoch."""
    cfg: TrainConfig
    source: DataSource
    dist: Dist
    out: Path
    device: torch.device
    dtype: torch.dtype | None  # CUDA autocast dtype (None: fp32)
    local_batch: int  # this process's share of the global batch
    model: Captioner
    net: nn.Module  # what the step calls: TeacherForced, DDP-wrapped under torchrun
    train_ds: Any  # CaptionFeatureDataset (frozen encoder) or ImageCaptionDataset (fine-tuning)
    sampler: EpochSampler
    val_records: list
    val_cache: Any  # the validation features (FeatureView), None when the encoder is fine-tuned
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    scaler: Any = None  # GradScaler for fp16 only
    resume: dict | None = None  # the "train" state of the checkpoint being resumed
    trainable: list = field(default_factory=list)
    steps_per_epoch: int = 0
    objective: Any = None  # objectives.CrossEntropy / HardAttention / SelfCritical: one step, its own state


def train(cfg: TrainConfig, source: DataSource, dist: Dist = ONE_PROCESS) -> dict[str, Any]:
    """Train on `source` ('train' split; validate on cfg.val_split). Returns the run summary.

    Under torchrun, pass the `Dist` from `distributed.setup()` and its device in cfg.device.
    The phases, in the order their random draws must keep: build the data and the model
    (`_build`), the optimiser and schedule (`_optimisation`), restore a killed run (`_restore`),
    then per epoch: train (`train_one_epoch`), validate (`_validate`), checkpoint (`_checkpoint`).
    """
    resume_path = _resume_path(cfg)
    run = _build(cfg, source, dist, resume_path)
    _optimisation(run)
    start_epoch, history, best = _restore(run, resume_path)
    writer = _Writer(run.out) if dist.main else None
    step = start_epoch * run.steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        means, step = train_one_epoch(run, epoch, step, writer)
        train_time = time.time() - t0
        scores = _validate(run.model, cfg, run.val_cache, run.val_records, source, dist)
        value = scores[cfg.val_metric]
        improved = math.isfinite(value) and value > best["value"]  # NaN (e.g. no relation stated) never wins
        if improved:
            best = {"epoch": epoch, "value": value}
        history.append({"epoch": epoch + 1, **means, "stage": run.objective.stage,
                        "lr": run.optimizer.param_groups[0]["lr"], "val": scores,
                        "val_images": len(run.val_records),
                        "train_seconds": round(train_time, 2), "seconds": round(time.time() - t0, 2)})
        _checkpoint(run, epoch, history, best, improved, writer)
        barrier(dist)  # nobody starts the next epoch (or exits) before the checkpoint is on disk
        if cfg.patience and epoch - best["epoch"] >= cfg.patience:
            log.info("early stop: %s has not improved for %d epochs", cfg.val_metric, cfg.patience)
            break
    summary = {"run": str(run.out), "epochs_run": len(history), "best_epoch": best["epoch"] + 1,
               f"best_val_{cfg.val_metric}": best["value"], "history": history}
    if dist.main:
        writer.close()
        atomic_write_json(run.out / "summary.json", summary, indent=2)
    return summary


def _build(cfg: TrainConfig, source: DataSource, dist: Dist, resume_path: str | None) -> _Run:
    """Check the configuration against the data, then make the model (new, or the resumed run's),
    the training dataset and sampler, the validation features and the module the step calls."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(device, cfg.precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    if cfg.batch_size % dist.world:
        raise ValueError(f"the global batch size {cfg.batch_size} must divide evenly over {dist.world} processes")
    if cfg.truth_reward and "train" not in source.objects:
        given = ", ".join("--" + k.replace("_", "-") for k in TRUTH_WEIGHTS if getattr(cfg, k))
        raise ValueError(f"{given} check captions against each training image's objects (the shapes world); "
                         f"{source.name} has none")
    if cfg.val_metric in SHAPES_METRICS and cfg.val_split not in source.objects:
        raise ValueError(f"--val-metric {cfg.val_metric} needs the objects of each image (the shapes world); "
                         f"{source.name} has none: use a caption metric ({', '.join(METRIC_KEYS)})")
    seed_everything(cfg.seed)
    train_records = _limit(source.split("train"), cfg.max_train_images)
    val_records = _limit(source.split(cfg.val_split), cfg.max_val_images)

    # Tokenised once, for the vocabulary and the dataset (on COCO's 567k captions it takes minutes on a CPU).
    tokens = {r.image_id: [tokenize(c) for c in r.captions] for r in train_records}
    resume = load_checkpoint(resume_path) if resume_path else None
    if resume is not None:
        if "train" not in resume:
            raise ValueError(f"{resume_path} holds no training state (an exported model?): cannot resume from it")
        model = Captioner.from_model_state(resume["model"])
    elif cfg.init_from:  # a later stage (e.g. self-critical) starts from an earlier run's model
        model = Captioner.from_model_state(load_checkpoint(cfg.init_from)["model"])
        log.info("model from %s (%s attention); its model config and vocabulary are kept", cfg.init_from,
                 model.cfg.decoder.attention)
    else:
        if cfg.scst:
            raise ValueError("self-critical training starts from a trained model: give --init-from PATH "
                             "(a cross-entropy run's best.pt)")
        vocab = Vocab.build((t for caps in tokens.values() for t in caps), min_count=cfg.min_count)
        model = Captioner.create(cfg.encoder_config(), vocab, **cfg.decoder_kwargs())
    if model.cfg.decoder.attention == "none" and cfg.att_lambda:
        log.info("no attention: the doubly stochastic regulariser (a constant for uniform weights) is left out")
        cfg = replace(cfg, att_lambda=0.0)
    if cfg.fine_tune_encoder:
        model.encoder.set_trainable(cfg.fine_tune_blocks)
    model.to(device)
    local_batch = cfg.batch_size // dist.world
    log.info("vocab %d words; decoder %.2fM parameters; grid %s x %d channels; device %s%s%s", len(model.vocab),
             sum(p.numel() for p in model.decoder.parameters()) / 1e6, model.grid, model.encoder.channels,
             device, f" ({dtype})" if dtype else "",
             f"; {dist.world} processes x {local_batch} = global batch {cfg.batch_size}" if dist.enabled else "")

    feat_kw = dict(batch_size=16, num_workers=cfg.workers, device=device, progress=cfg.progress, dist=dist)
    if cfg.fine_tune_encoder:  # images decoded in the loader's workers; the encoder trains
        train_ds = ImageCaptionDataset(train_records, model.vocab, model.transform(), cfg.image_size,
                                       cfg.max_caption_len, cfg.seed, cfg.prefer_captions, cfg.prefer_weight,
                                       tokens=tokens)
    else:  # the frozen encoder's features, computed once
        train_cache = cached_features(model.encoder, train_records, cfg.cache_dir, source.name, "train", **feat_kw)
        train_ds = CaptionFeatureDataset(train_cache, train_records, model.vocab, cfg.max_caption_len,
                                         cfg.captions_per_image, cfg.seed, cfg.prefer_captions, cfg.prefer_weight,
                                         tokens=tokens, **_attention_targets(cfg, source, model, train_records,
                                                                             tokens))
    val_cache = split_features(model, val_records, cfg.cache_dir, source.name, cfg.val_split, **feat_kw)
    # The permutation depends on (seed, epoch) only; rank r takes every world-th index of it.
    if cfg.scst:  # one item per image: its features and its index (the references come from train_ds)
        train_ds = ImageIndex(train_ds)
    sampler = EpochSampler(train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)

    if cfg.compile:
        model.decoder.compile_step()
        if cfg.fine_tune_encoder:
            model.encoder.compile()
    net = policy_net(model, cfg.scst) or TeacherForced(model, cfg.fine_tune_encoder)
    if dist.enabled:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                      broadcast_buffers=cfg.fine_tune_encoder)
    run = _Run(cfg, source, dist, out, device, dtype, local_batch, model, net, train_ds, sampler, val_records,
               val_cache, resume=resume["train"] if resume is not None else None)
    run.objective = make_objective(run)
    return run


def _attention_targets(cfg: TrainConfig, source: DataSource, model: Captioner, records: list,
                       tokens: dict[int, list[list[str]]]) -> dict[str, dict[int, list]]:
    """With --att-supervision or --recall-supervision, CaptionFeatureDataset's `attention_targets` (image
    id -> per reference caption, where its words should look: word indices and cell masks on the model's
    grid, from the objects' boxes) and with --recall-supervision its `recall_targets` too; {} without."""
    if not cfg.att_supervision and not cfg.recall_supervision:
        return {}
    what = "--att-supervision" if cfg.att_supervision else "--recall-supervision"
    if model.cfg.decoder.attention != "soft":
        raise ValueError(f"{what} supervises soft attention; this model's is {model.cfg.decoder.attention!r}")
    objects, sizes = source.objects.get("train"), source.image_sizes.get("train")
    if not objects or not sizes:
        raise ValueError(f"{what} needs each training image's objects and their boxes (the shapes "
                         f"world); {source.name} has none")
    grid = model.cfg.decoder.grid
    span = model.cfg.decoder.compare  # the axis is chosen at a relation's first word ("to" / "above")
    out = {r.image_id: [attention_target_masks(t, objects.get(r.image_id, []), sizes[r.image_id], grid, span=span)
                        for t in tokens[r.image_id]] for r in records}
    steps = sum(len(w) for caps in out.values() for w, _ in caps)
    log.info("attention supervision (weight %g): %d supervised words in %d references", cfg.att_supervision, steps,
             sum(len(caps) for caps in out.values()))
    if not cfg.recall_supervision:
        return {"attention_targets": out}
    recalls = {r.image_id: [np.array(recall_targets(t, objects.get(r.image_id, []), span=span),
                                     dtype=np.int64).reshape(-1, 2)
                            for t in tokens[r.image_id]] for r in records}
    log.info("recall supervision (weight %g): %d supervised relation words", cfg.recall_supervision,
             sum(len(x) for caps in recalls.values() for x in caps))
    return {"attention_targets": out, "recall_targets": recalls}


def _optimisation(run: _Run) -> None:
    """Adam (the fine-tuned encoder blocks at their own learning rate), warm-up + cosine, GradScaler for fp16."""
    cfg, model = run.cfg, run.model
    params = [{"params": model.decoder.parameters(), "lr": cfg.lr}]
    if cfg.fine_tune_encoder:
        params.append({"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.encoder_lr})
    run.optimizer = torch.optim.Adam(params, weight_decay=cfg.weight_decay)
    run.trainable = [p for p in model.parameters() if p.requires_grad]
    run.steps_per_epoch = math.ceil(len(run.sampler) / run.local_batch)
    run.scheduler = cosine_schedule(run.optimizer, cfg.epochs * run.steps_per_epoch, cfg.warmup_steps,
                                    cfg.lr_min_ratio)
    run.scaler = torch.amp.GradScaler("cuda") if run.dtype == torch.float16 else None


def _restore(run: _Run, resume_path: str | None) -> tuple[int, list, dict]:
    """(first epoch, history, best) of a new run, or of the run saved in resume_path, whose optimiser,
    schedule, scaler and every rank's RNG state are restored so that it continues exactly."""
    t = run.resume
    if t is None:
        if run.dist.enabled:  # same initial weights (DDP broadcasts rank 0's), own dropout draws
            torch.manual_seed(run.cfg.seed + run.dist.rank)
        return 0, [], {"epoch": -1, "value": -math.inf}
    try:
        run.optimizer.load_state_dict(t["optimizer"])
    except ValueError as e:  # e.g. saved before the redundant decoder biases were removed
        raise ValueError(f"cannot resume {resume_path}: its optimiser state does not fit this model's parameters "
                         f"(saved by an earlier release?): {e}. Its weights still load: evaluate or export it, "
                         "or resume it with the release that wrote it") from None
    run.scheduler.load_state_dict(t["scheduler"])
    if t.get("stage", "xe") != run.objective.stage:
        raise ValueError(f"cannot resume {resume_path}: it is a {t.get('stage', 'xe')} run and this one is "
                         f"{run.objective.stage} (start a later stage with --init-from)")
    run.objective.load_state_dict(t.get("objective", {}))
    if run.scaler is not None and t.get("scaler"):
        run.scaler.load_state_dict(t["scaler"])
    start_epoch = t["epoch"] + 1
    ranks = t.get("rng_ranks") or [t["rng"]]
    if len(ranks) == run.dist.world:
        set_rng_state(ranks[run.dist.rank])
    else:
        log.warning("resuming with %d processes a run saved by %d: data order is kept, dropout draws are not",
                    run.dist.world, len(ranks))
        seed_everything(run.cfg.seed * 1000 + start_epoch * 100 + run.dist.rank)
    log.info("resumed from %s at epoch %d", resume_path, start_epoch + 1)
    return start_epoch, list(t["history"]), dict(t["best"])


def train_one_epoch(run: _Run, epoch: int, step: int, writer: _Writer | None) -> tuple[dict[str, float], int]:
    """One pass over this epoch's permutation, one `run.objective` step per batch. Returns the means over
    all ranks' batches of what the objective reports (loss, ...), and the global step count after it."""
    cfg, dist, device = run.cfg, run.dist, run.device
    run.train_ds.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    # Its own generator: drawing the workers' base seed must not move the global RNG (dropout).
    loader = DataLoader(run.train_ds, batch_size=run.local_batch, sampler=run.sampler, num_workers=cfg.workers,
                        collate_fn=collate_captions, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
    run.model.train()
    sums: dict[str, torch.Tensor] = {}  # summed on the device: .item() would wait for the GPU every step
    batches = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not (cfg.progress and dist.main), leave=False)
    for batch in bar:
        if dist.enabled and cfg.fine_tune_encoder:
            # A batch of only unreadable images is dropped; every rank must then skip the step together.
            present = all_reduce_sum(dist, torch.tensor([0.0 if batch is None else 1.0], device=device))
            if present.item() < dist.world:
                log.warning("epoch %d: a batch of unreadable images on some rank; step skipped", epoch + 1)
                continue
        if batch is None:
            continue
        inputs, tokens, *targets = (x.to(device, non_blocking=True) for x in batch)  # targets: --att-supervision
        stats = run.objective(inputs, tokens, step, *targets)
        run.scheduler.step()
        step += 1
        batches += 1
        for k, v in stats.items():
            sums[k] = sums[k] + v.double() if k in sums else v.double().clone()
        if step % 20 == 0 and writer is not None:  # .item() waits for the GPU: not every step
            for k in ("loss", "reward", "baseline"):
                if k in stats:
                    writer.scalar(f"train/{k}", stats[k].item(), step)
            writer.scalar("train/lr", run.optimizer.param_groups[0]["lr"], step)
            bar.set_postfix(loss=f"{stats['loss'].item():.3f}")
    keys = sorted(sums)
    total = torch.stack([sums[k] for k in keys] + [torch.tensor(float(batches), device=device, dtype=torch.float64)]) \
        if keys else torch.zeros(1, device=device, dtype=torch.float64)
    all_reduce_sum(dist, total)
    n = max(total[-1].item(), 1.0)
    return {k: v / n for k, v in zip(keys, total[:-1].tolist())}, step


def _checkpoint(run: _Run, epoch: int, history: list, best: dict, improved: bool, writer: _Writer | None) -> None:
    """Rank 0 writes last.pt (and best.pt when improved), history.json, TensorBoard scalars and the
    epoch's line; every rank gives its RNG state, so a resumed run continues each rank's draws."""
    cfg, dist = run.cfg, run.dist
    rngs = gather_objects(dist, rng_state())
    if not dist.main:
        return
    entry = history[-1]
    scores = entry["val"]
    for k, v in scores.items():
        writer.scalar(f"val/{k}", v, epoch + 1)
    for k in ("loss", "reward", "baseline"):
        if k in entry:
            writer.scalar(f"train/epoch_{k}", entry[k], epoch + 1)
    payload = {"model": run.model.model_state(),
               "train": {"epoch": epoch, "optimizer": run.optimizer.state_dict(),
                         "scheduler": run.scheduler.state_dict(),
                         "scaler": run.scaler.state_dict() if run.scaler is not None else None,
                         "rng": rngs[0], "rng_ranks": rngs, "history": history, "best": best,
                         "config": asdict(cfg), "world": dist.world, "stage": run.objective.stage,
                         "objective": run.objective.state_dict()},
               "meta": {"val_split": cfg.val_split, "val_beam": cfg.val_beam, "dataset": run.source.identity,
                        "stage": run.objective.stage, "attention": run.model.cfg.decoder.attention}}
    if improved:
        save_checkpoint(payload, run.out / "best.pt")
    save_checkpoint(payload, run.out / "last.pt")
    atomic_write_json(run.out / "history.json", history, indent=2)
    parts = " ".join(f"{k} {entry[k]:.4f}" for k in _LOGGED if k in entry)
    log.info("epoch %d/%d  %s  loss %.4f (%s)  val BLEU-4 %.4f CIDEr %.4f%s  lr %.2e  %.0fs",
             epoch + 1, cfg.epochs, entry["stage"], entry["loss"], parts, scores["BLEU-4"],
             scores["CIDEr"], "  *best*" if improved else "", entry["lr"], entry["seconds"])


_LOGGED = ("ce", "reg", "reinforce", "entropy", "baseline", "reward", "greedy_reward", "truth", "sample_len")
