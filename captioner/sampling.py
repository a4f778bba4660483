"""The one sampling path of training: random draws keyed by the global batch, and captions sampled with gradients.

Hard attention (sampled locations) and self-critical training (sampled captions) are both
policy-gradient objectives over the decoder's `draw_step`; every random choice they make is a
function of uniforms drawn here, so that:
- a draw depends on (seed, global step, the row's place in the global batch) only: two processes
  under DDP draw, for their share of the batch, exactly what one process draws for the whole
  batch, and a resumed run draws what the uninterrupted run drew;
- the draws themselves go through one inverse-CDF sampler (`decoder.categorical`).

Row i of rank r's local batch is row i * world + r of the global batch (DistributedSampler hands
rank r every world-th index), so `uniforms` draws for the global batch and keeps rank r's rows.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .decoder import Decoder, categorical
from .distributed import ONE_PROCESS, Dist
from .search import BLOCKED
from .text import END_ID, PAD_ID, START_ID

# What a draw is for: each purpose has its own stream, so adding one never shifts another.
WORDS, LOCATIONS, EXPECTATION = 1, 2, 3


def uniforms(seed: int, step: int, purpose: int, local_rows: int, shape: tuple[int, ...] = (),
             dist: Dist = ONE_PROCESS, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniforms in [0, 1) of shape (local_rows, *shape): this rank's rows of a (local_rows * world, *shape) draw
    made from a generator seeded by (seed, step, purpose) alone."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 8 + purpose) % (2**63))
    u = torch.rand((local_rows * dist.world, *shape), generator=g)
    return u[dist.rank::dist.world].to(device)


def hard_draws(seed: int, step: int, local_rows: int, steps: int, expectation_p: float, dist: Dist = ONE_PROCESS,
               device: torch.device | str = "cpu", samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard attention's draws for a batch: (u (rows, steps) choosing each word's location, sampled (rows,) bool).

    `sampled` is false with probability expectation_p per caption: that caption reads the expected
    context at every step (the paper's trick, section 4.1). With `samples` = K, each image of the
    batch has K captions, rows image-major (b * K + k).
    """
    extra = () if samples is None else (samples,)
    u = uniforms(seed, step, LOCATIONS, local_rows, (*extra, steps), dist, device)
    sampled = uniforms(seed, step, EXPECTATION, local_rows, extra, dist, device) >= expectation_p
    return u.reshape(-1, steps), sampled.reshape(-1)


class SampledCaptions(nn.Module):
    """Captions sampled from the decoder, with the log-probabilities a policy gradient needs.

    forward(feats (B, N, C), u_words (B, L), loc_draws=None | (u (B, L), sampled (B,))) ->
      tokens (B, T) word ids ending with <end> (then <pad>); T <= L, the longest caption's length;
      logp (B, T) log-probability of each emitted token under the sampling distribution (0 after <end>);
      loc_logp (B, T) log alpha_t(s_t) of each sampled location (0 where the expectation was read);
      alphas (B, T, N).
    With `teacher` = (feats (B', N, C), tokens (B', T')), the same call also runs the decoder teacher-forced
    on those references (self-critical training's cross-entropy term, --scst-xe) and appends its logits
    (B', T'-1, V) and alphas (B', T'-1, N): one forward, as DDP needs. Hard attention reads the
    expectation there.
    The sampling distribution is the decoder's softmax without <pad>, <start> and <unk> (the words
    search never emits), renormalised. What DDP wraps in self-critical training: one forward call.
    """

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, feats: torch.Tensor, u_words: torch.Tensor,
                loc_draws: tuple[torch.Tensor, torch.Tensor] | None = None,
                teacher: tuple[torch.Tensor, torch.Tensor] | None = None):
        dec = self.decoder
        forced = () if teacher is None else dec(*teacher)[:2]
        B = feats.shape[0]
        feats, proj = dec.prepare(feats)
        state = dec.init_state(feats)
        prev = torch.full((B,), START_ID, dtype=torch.long, device=feats.device)
        done = torch.zeros(B, dtype=torch.bool, device=feats.device)
        blocked = torch.zeros(dec.cfg.vocab_size, dtype=torch.bool, device=feats.device)
        blocked[BLOCKED] = True
        tokens, logps, loc_logps, alphas = [], [], [], []
        for t in range(u_words.shape[1]):
            u_loc, sampled = (None, None) if loc_draws is None else (loc_draws[0][:, t], loc_draws[1])
            logits, state, alpha, loc = dec.draw_step(prev, state, feats, proj, u_loc, sampled)
            logp = logits.float().masked_fill(blocked, float("-inf")).log_softmax(-1)  # (B, V)
            word = categorical(logp.detach().exp(), u_words[:, t])  # (B,)
            live = ~done
            word = torch.where(live, word, torch.full_like(word, PAD_ID))
            logps.append(logp.gather(1, word.unsqueeze(1)).squeeze(1).masked_fill(~live, 0.0))
            took = live & (loc >= 0)
            loc_p = alpha.float().gather(1, loc.clamp(min=0).unsqueeze(1)).squeeze(1)
            loc_logps.append(torch.where(took, loc_p.clamp(min=1e-12).log(), torch.zeros_like(loc_p)))
            tokens.append(word)
            alphas.append(alpha)
            done = done | (word == END_ID)
            prev = word
            if bool(done.all()):
                break
        return (torch.stack(tokens, 1), torch.stack(logps, 1), torch.stack(loc_logps, 1), torch.stack(alphas, 1),
                *forced)


def words_of(tokens: torch.Tensor) -> list[list[int]]:
    """(B, T) sampled ids -> each caption's word ids, without <end> and <pad>."""
    out = []
    for row in tokens.tolist():
        row = row[: row.index(END_ID)] if END_ID in row else row
        out.append([w for w in row if w != PAD_ID])
    return out
