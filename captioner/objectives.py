"""Training objectives: one optimisation step each, over the batches the training loop hands them.

- `CrossEntropy`: teacher forcing, cross-entropy + the doubly stochastic regulariser (soft
  attention, no attention, and hard attention's expectation at test time all train with it).
- `HardAttention`: section 4.1 of Show, Attend and Tell: teacher forcing with sampled attention
  locations, the REINFORCE term with a moving-average baseline on log p(y|s,a), the entropy
  bonus, and the expectation in place of the sample for a share of the captions.
- `SelfCritical`: Rennie et al. 2017: captions sampled from the model, rewarded with CIDEr-D
  (document frequencies from the training references, computed once) and, on the shapes world,
  optionally a truth term (true relation statements paid; false ones, absent objects named and
  objects left out charged), minus a baseline (the greedy caption's reward, or the mean reward of
  the image's other samples).

Each is made once per run (`make_objective`), is called as `objective(inputs, tokens, step)` and
returns named scalars (detached tensors) that the loop sums and logs; its own state (the hard
attention's baseline) goes into the checkpoint through state_dict / load_state_dict. Random
draws come from sampling.py, keyed by the global step, so resuming and DDP draw what one
uninterrupted process draws. Under DDP every loss is rescaled so that DDP's mean over the ranks
is the global batch's mean (`global_factors`).
"""
from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .decoder import attention_supervision, caption_loss, hard_attention_terms, recall_supervision
from .distributed import ONE_PROCESS, Dist, all_reduce_sum
from .reward import CiderD
from .runtime import autocast
from .sampling import WORDS, SampledCaptions, hard_draws, uniforms, words_of
from .scene_metrics import truth_counts
from .search import search
from .text import END_ID, PAD_ID, START_ID

# TrainConfig's weights of the self-critical truth reward, in the order of scene_metrics.truth_counts' counts,
# and their signs: the first pays, the others charge.
TRUTH_WEIGHTS = ("scst_true_relation", "scst_false_relation", "scst_phantom", "scst_missed", "scst_wrong_count",
                 "scst_repeat")
TRUTH_SIGNS = (1.0, -1.0, -1.0, -1.0, -1.0, -1.0)


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler, trainable: list, grad_clip: float) -> None:
    """Backward, clip the global gradient norm (0 or less: no clipping), step (through the fp16 GradScaler if any)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip > 0:  # max_norm 0 would scale every gradient to 0
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def global_factors(dist: Dist, tokens: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token factor, row factor): local count / (global count / world) for this rank's tokens and rows.

    A term averaged over this rank's tokens (or rows: captions, images) times its factor has, as its
    mean over the ranks (what DDP's gradient average takes), the mean over the global batch.
    """
    rows = tokens.shape[0] if rows is None else rows
    counts = torch.stack([(tokens[:, 1:] != PAD_ID).sum(), torch.tensor(rows, device=tokens.device)])
    local = counts.float()
    glob = all_reduce_sum(dist, counts.clone()).float() / dist.world
    return local[0] / glob[0], local[1] / glob[1]


def optimisation_step(net: nn.Module, optimizer: torch.optim.Optimizer, scaler, trainable: list, inputs: torch.Tensor,
                      tokens: torch.Tensor, cfg: Any, dist: Dist = ONE_PROCESS, dtype: torch.dtype | None = None,
                      targets: torch.Tensor | None = None, entries: torch.Tensor | None = None):
    """One teacher-forced cross-entropy step on a batch already on the device (the schedule steps outside).

    With `targets` (B, T-1, N) bool, cfg.att_supervision x the attention supervision (its mean over the
    global batch's supervised steps) is added; with `entries` (B, T-1) long, cfg.recall_supervision x the
    recall supervision, likewise. Returns the detached (loss, cross-entropy, regulariser, attention
    supervision, recall supervision) of this rank's batch; under DDP rescaled so that their mean over the
    ranks is the global batch's value.
    """
    with autocast(inputs.device, dtype):
        out = net(inputs, tokens, recall_weights=True) if entries is not None else net(inputs, tokens)
        logits, alphas = out[0], out[1]
        loss, ce, reg = caption_loss(logits, alphas, tokens, cfg.att_lambda, cfg.att_reduction, cfg.objective)
    sup = rsup = loss.new_zeros(())
    if targets is not None:
        sup = _per_supervised_step(*attention_supervision(alphas, targets), dist)
    if entries is not None:
        rsup = _per_supervised_step(*recall_supervision(out[2], entries), dist)
    if dist.enabled:
        f_tok, f_row = global_factors(dist, tokens)
        ce = ce * (f_row if cfg.objective == "paper" else f_tok)
        reg = reg * f_row
    loss = ce + cfg.att_lambda * reg + cfg.att_supervision * sup
    if entries is not None:  # (a separate addition: runs without it keep their floats)
        loss = loss + cfg.recall_supervision * rsup
    update(loss, optimizer, scaler, trainable, cfg.grad_clip)
    return loss.detach(), ce.detach(), reg.detach(), sup.detach(), rsup.detach()


def _per_supervised_step(total: torch.Tensor, count: torch.Tensor, dist: Dist) -> torch.Tensor:
    """A supervision term's sum over this rank's supervised steps, as its share of the mean over the global
    batch's supervised steps (under DDP the ranks' values average to that mean)."""
    steps = all_reduce_sum(dist, count.float().clone())  # supervised steps of the global batch
    return total / (steps / dist.world).clamp(min=1)


class CrossEntropy:
    """Teacher-forced cross-entropy + lambda x the doubly stochastic regulariser."""

    stage = "xe"

    def __init__(self, run: Any):
        self.run = run

    def __call__(self, inputs: torch.Tensor, tokens: torch.Tensor, step: int, targets: torch.Tensor | None = None,
                 entries: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        r = self.run
        loss, ce, reg, sup, rsup = optimisation_step(r.net, r.optimizer, r.scaler, r.trainable, inputs, tokens,
                                                     r.cfg, r.dist, r.dtype, targets, entries)
        return {"loss": loss, "ce": ce, "reg": reg, **({"sup": sup} if targets is not None else {}),
                **({"rsup": rsup} if entries is not None else {})}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class HardAttention(CrossEntropy):
    """Section 4.1: sampled locations, REINFORCE with the moving-average baseline, the entropy bonus.

    b <- 0.9 b + 0.1 mean log p(y|s~,a) after each step (over the global batch); b starts at 0,
    as in the authors' code.
    """

    def __init__(self, run: Any):
        super().__init__(run)
        self.baseline = 0.0

    def __call__(self, inputs: torch.Tensor, tokens: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        r, cfg, dist = self.run, self.run.cfg, self.run.dist
        draws = hard_draws(cfg.seed, step, tokens.shape[0], tokens.shape[1] - 1, cfg.hard_expectation_p, dist,
                           inputs.device)
        with autocast(inputs.device, r.dtype):
            logits, alphas, locations = r.net(inputs, tokens, draws)
            _, ce, reg = caption_loss(logits, alphas, tokens, cfg.att_lambda, cfg.att_reduction, cfg.objective)
            reinforce, entropy, logp_y = hard_attention_terms(logits, alphas, locations, tokens, self.baseline,
                                                              cfg.objective)
        if dist.enabled:
            f_tok, f_row = global_factors(dist, tokens)
            f_ce = f_row if cfg.objective == "paper" else f_tok
            ce, reinforce, entropy, reg = ce * f_ce, reinforce * f_ce, entropy * f_ce, reg * f_row
        loss = ce + cfg.att_lambda * reg + cfg.hard_lambda_r * reinforce - cfg.hard_lambda_e * entropy
        update(loss, r.optimizer, r.scaler, r.trainable, cfg.grad_clip)
        mean_logp = all_reduce_sum(dist, torch.stack([logp_y.sum(), logp_y.new_tensor(logp_y.numel())]))
        used = self.baseline
        self.baseline = 0.9 * self.baseline + 0.1 * float(mean_logp[0] / mean_logp[1])
        return {"loss": loss.detach(), "ce": ce.detach(), "reg": reg.detach(), "reinforce": reinforce.detach(),
                "entropy": entropy.detach(), "baseline": loss.new_tensor(used).detach(),
                "sampled": draws[1].float().mean().to(loss.device)}

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = float(state.get("baseline", 0.0))


class SelfCritical:
    """Rennie et al. 2017: minimise -(r(w^s) - b) log p(w^s) over K sampled captions w^s per image.

    r is CIDEr-D against the image's training references (document frequencies from all training
    references, once); b is the reward of the greedy caption (decoded in eval mode, no gradient:
    the model at test time) or, with baseline "mean", the mean reward of the image's other K-1
    samples. With --scst-true-relation / --scst-false-relation / --scst-phantom / --scst-missed /
    --scst-wrong-count / --scst-repeat (shapes world), r also adds w_t x the caption's true relation
    statements and subtracts w_f x its false ones, w_p x its mentions of absent objects, w_m x the
    scene's objects it does not name, w_c x the numbers it states wrong and w_r x its mentions of
    present objects beyond their number (scene_metrics.truth_counts), for
    samples and greedy caption alike. The loss is averaged over the sampled captions. With --scst-xe
    gamma, gamma x the cross-entropy loss of one reference per image (teacher-forced, with the attention
    regulariser; the reference drawn as the cross-entropy stage draws it in this epoch, --prefer-captions
    included) is added: the mixed objective of Paulus et al. 2018, which holds the model to the
    references' language (here: their relation statements) while the reward moves it. With
    --scst-xe-words REGEX that term is the cross-entropy of only the reference words the expression
    matches whole (its mean over them, no regulariser): e.g. the words that state a relation. With hard
    attention the sampled locations are part of the policy: log p(w^s) includes their log
    alpha_t(s_t).
    The batch's `tokens` are dataset indices (one row per image), from which the references come.
    """

    stage = "scst"

    def __init__(self, run: Any):
        self.run = run
        # Word ids without <start>/<end>. The references' tf-idf vectors are made per step (once per image
        # for its K samples and its greedy caption), not kept: on COCO they would hold gigabytes.
        self.refs = [[_words(c) for c in caps] for caps in run.train_ds.captions]
        self.cider = CiderD(self.refs)
        cfg = run.cfg
        # With a truth reward (shapes world): each image's objects, and the signed weights of truth_counts' counts.
        self.truth_weights = np.array([getattr(cfg, k) for k in TRUTH_WEIGHTS]) * np.array(TRUTH_SIGNS)
        self.relation_objects = cfg.scst_relation_objects
        self.objects = None
        self.xe_ids = None  # --scst-xe-words: the vocabulary ids its cross-entropy term covers
        if cfg.scst_xe and cfg.scst_xe_words:
            itos = run.model.vocab.itos
            self.xe_ids = torch.tensor([i for i, w in enumerate(itos) if re.fullmatch(cfg.scst_xe_words, w)],
                                       dtype=torch.long)
            if not len(self.xe_ids):
                raise ValueError(f"--scst-xe-words {cfg.scst_xe_words!r} matches no word of the vocabulary")
        if cfg.truth_reward:
            objects = run.source.objects["train"]
            self.objects = [objects.get(i, []) for i in run.train_ds.ds.image_ids]
            self.vocab = run.model.vocab

    def __call__(self, inputs: torch.Tensor, index: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        r, cfg, dist = self.run, self.run.cfg, self.run.dist
        t0 = time.perf_counter()
        B, K, L = inputs.shape[0], cfg.scst_samples, cfg.sample_max_len
        images = index[:, 0].tolist()
        # search() decodes in eval mode and gives the decoder back in the mode it found (training here)
        greedy = search(r.model.decoder, inputs.float(), 1, L) if cfg.scst_baseline == "greedy" else None
        u = uniforms(cfg.seed, step, WORDS, B, (K, L), dist, inputs.device).reshape(B * K, L)
        locs = None
        if r.model.cfg.decoder.attention == "hard":
            locs = hard_draws(cfg.seed, step, B, L, cfg.hard_expectation_p, dist, inputs.device, samples=K)
        teacher = (inputs, self.references(images, inputs.device)) if cfg.scst_xe else None
        with autocast(inputs.device, r.dtype):
            tokens, logp, loc_logp, _, *forced = r.net(inputs.repeat_interleave(K, dim=0), u, locs, teacher)
            if forced:  # --scst-xe-words: the other words are <pad> to the loss (a per-word mean, no regulariser)
                refs, lam, objective = teacher[1], cfg.att_lambda, cfg.objective
                if self.xe_ids is not None:
                    refs = refs.masked_fill(~torch.isin(refs, self.xe_ids.to(refs.device)), PAD_ID)
                    lam, objective = 0.0, "token"
                _, ce, reg = caption_loss(*forced, refs, lam, cfg.att_reduction, objective)
        t1 = time.perf_counter()
        greedy_words = [g.best.tokens for g in greedy] if greedy is not None else []
        captions = words_of(tokens) + greedy_words  # the K samples of each image, then its greedy caption

        def per_caption(per_image: list) -> list:  # one entry per image -> one per caption above
            return [x for x in per_image for _ in range(K)] + (per_image if greedy_words else [])

        scores = self.cider.score_batch(captions, per_caption([self.refs[k] for k in images]))
        truth = None
        if self.objects is not None:  # truth_counts' six counts, weighted and signed (TRUTH_WEIGHTS, TRUTH_SIGNS)
            scenes = per_caption([self.objects[k] for k in images])
            counts = np.array([truth_counts(self.vocab.decode_tokens(c), o) for c, o in zip(captions, scenes)],
                              dtype=np.float64).reshape(-1, len(TRUTH_WEIGHTS))
            if self.relation_objects:  # --scst-relation-objects: no pay for true relations in larger scenes
                counts[[len(o) > self.relation_objects for o in scenes], 0] = 0
            truth = counts @ self.truth_weights
            scores = scores + truth
        sample_r = scores[: B * K].reshape(B, K)
        if greedy is not None:
            base = scores[B * K:][:, None].repeat(K, axis=1)
        else:
            base = (sample_r.sum(axis=1, keepdims=True) - sample_r) / (K - 1)
        reward_s = time.perf_counter() - t1
        reward = torch.as_tensor(sample_r, dtype=torch.float32, device=inputs.device)
        adv = (reward - torch.as_tensor(base, dtype=torch.float32, device=inputs.device)).reshape(B * K)
        loss = -(adv * (logp + loc_logp).sum(dim=1)).mean()
        if dist.enabled:
            _, f_row = global_factors(dist, index, rows=B)
            loss = loss * f_row
        if teacher is not None:  # (a separate addition: runs without it keep their floats)
            if dist.enabled:  # means over this rank's tokens (or captions) and captions -> the global batch's
                f_tok, f_ref = global_factors(dist, refs)
                ce, reg = ce * (f_ref if objective == "paper" else f_tok), reg * f_ref
            xe = ce + lam * reg
            loss = loss + cfg.scst_xe * xe
        update(loss, r.optimizer, r.scaler, r.trainable, cfg.grad_clip)
        lengths = (tokens != PAD_ID).sum(dim=1).float()  # <end> included
        step_s = time.perf_counter() - t0
        out = {"loss": loss.detach(), "reward": reward.mean(), "baseline": reward.new_tensor(base.mean()),
               "greedy_reward": reward.new_tensor(base.mean() if greedy is not None else float("nan")),
               "sample_len": lengths.mean(), "reward_seconds": reward.new_tensor(reward_s),
               "step_seconds": reward.new_tensor(step_s)}
        if truth is not None:  # the samples' mean truth term (part of "reward")
            out["truth"] = reward.new_tensor(truth[: B * K].mean())
        if teacher is not None:  # the references' cross-entropy term (with its regulariser), unweighted
            out["xe"] = xe.detach()
        return out

    def references(self, images: list[int], device: torch.device) -> torch.Tensor:
        """(B, T) the reference each image's cross-entropy term reads: the one the cross-entropy stage's
        dataset draws for it in this epoch (seed, epoch, index; --prefer-captions weights), <pad>-filled."""
        ds = self.run.train_ds.ds
        refs = [ds.captions[k][ds.reference_of(k)] for k in images]
        out = torch.full((len(refs), max(map(len, refs))), PAD_ID, dtype=torch.long)
        for row, ref in enumerate(refs):
            out[row, : len(ref)] = torch.as_tensor(ref)
        return out.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _words(encoded: list[int]) -> tuple[int, ...]:
    return tuple(w for w in encoded if w not in (START_ID, END_ID, PAD_ID))


def make_objective(run: Any):
    """The run's objective: SelfCritical with --scst, HardAttention for a hard-attention model, else CrossEntropy."""
    if run.cfg.scst:
        return SelfCritical(run)
    if run.model.cfg.decoder.attention == "hard":
        return HardAttention(run)
    return CrossEntropy(run)


def policy_net(model: nn.Module, scst: bool) -> nn.Module | None:
    """What DDP wraps for self-critical training: the sampler over the model's decoder (None otherwise)."""
    return SampledCaptions(model.decoder) if scst else None
