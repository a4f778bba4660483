"""The attention LSTM decoder of Show, Attend and Tell (Xu et al. 2015, sections 3 and 4).

Owns the attention (the additive scores alpha_t; the context read from them: soft, hard or none),
the LSTM step, the gating scalar beta, the deep output layer, the teacher-forced forward pass
and the training losses: cross-entropy with the doubly stochastic regulariser, and the hard
attention's REINFORCE terms (section 4.1). Search (greedy / beam) lives in search.py and only
calls `prepare`, `init_state` and `step`; sampling lives in sampling.py.

Attention kinds (`DecoderConfig.attention`):
- "soft": z_t = beta * sum_i alpha_ti a_i, the expectation (section 4.2).
- "hard": in training, a location s_t ~ Multinoulli(alpha_t) is drawn and z_t = beta * a_{s_t};
  with probability 0.5 per caption the expectation is used instead (the paper's variance
  trick). At test time (search, and the teacher-forced forward without draws) the context is
  the expectation, as for soft attention: see `step`.
- "none": z_t = beta * the mean annotation vector at every step (alpha uniform): the same decoder
  without attention, a Show-and-Tell-like baseline.

The state search carries is a tuple of tensors with the batch first, (h, c), and with `recall` (a
memory of where the decoder looked; not in the paper) also the memory's keys and values, the context
read for the previous word and the last recall weights; search reorders and repeats it as a whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .text import PAD_ID


@dataclass
class DecoderConfig:
    vocab_size: int  # size of the Vocab, specials included
    feature_dim: int  # C, channels of each annotation vector
    grid: tuple[int, int] = (14, 14)  # (h, w) of the annotation grid, N = h * w
    embed_dim: int = 256  # word embedding size m (also the deep-output size)
    attention_dim: int = 256  # hidden size of the attention MLP
    hidden_dim: int = 512  # LSTM size n
    dropout: float = 0.5  # on h_t before the deep output layer
    gate: str = "scalar"  # beta = sigmoid(f_beta(h)): "scalar" as in the paper, "channel" (per-channel), "none"
    pos_embed: bool = True  # learned row + column embedding added to the annotation vectors (not in the paper)
    feature_norm: bool = True  # LayerNorm over the channels of each annotation vector (not in the paper)
    # Append each cell's normalised (x, y) in [-1, 1] to its annotation vector (not in the paper): attention
    # sees where a cell is, and the context z_t = sum_i alpha_ti a_i then carries the attended location.
    coords: bool = False
    # h_0, c_0 from the mean annotation vector (0, the paper) or also from a layout x layout average-pooled
    # grid of them, each cell projected to LAYOUT_DIM channels (not in the paper): the LSTM then starts
    # knowing where things are, which a relation to an object not yet named needs.
    layout: int = 0
    # Self-attention layers (pre-norm Transformer encoder layers) over the annotation vectors, after the
    # position embedding and before the decoder attends (0, the paper): each cell can then carry what lies
    # around it and where ("a blue square to my right"), which a relation between two objects needs.
    refine: int = 0
    # A memory of where the decoder has looked (not in the paper): every step writes one entry, a key and a value
    # made of the word it read and the context it attended when it wrote that word, and the next steps read it back
    # with an attention of their own (query: h_{t-1}). The LSTM and the deep output then see a recalled context
    # r_t beside z_t: "left" can compare the place of the object it looks at with that of the one it named before.
    recall: bool = False
    # With recall and coords (not in the paper): the deep output also sees the difference between the place this
    # step attends to and the place its recall reads back, delta_t = xy(alpha_t) - sum_j w_tj xy(alpha_j), where
    # xy(alpha) = sum_i alpha_i (x_i, y_i) is the attended centre (exact, not learned), and |delta_t|, gated by h_t.
    # "left of" is then a read-out of two numbers, where the other object lies against the subject it named before;
    # and which axis to state ("to" or "above") of |dx| - |dy|, which a tanh layer cannot make of dx, dy (odd).
    compare: bool = False
    attention: str = "soft"  # "soft" (section 4.2), "hard" (section 4.1: sampled locations in training), "none"

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)
        if self.gate not in ("scalar", "channel", "none"):
            raise ValueError(f"gate must be 'scalar', 'channel' or 'none', not {self.gate!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, not {self.attention!r}")
        if not 0 <= self.layout <= min(self.grid):
            raise ValueError(f"layout must be 0 (off) or a pooled grid size up to {min(self.grid)}, not {self.layout}")
        if self.refine < 0:
            raise ValueError(f"refine must be 0 (off) or a number of self-attention layers, not {self.refine}")
        if self.compare and not (self.recall and self.coords):
            raise ValueError("compare reads the attended places back from the recall memory: needs recall and coords")
        if self.refine and not self.pos_embed:
            raise ValueError("refine needs pos_embed: without positions, self-attention cannot tell where a cell is")


ATTENTIONS = ("soft", "hard", "none")
LAYOUT_DIM = 32  # channels of each pooled cell that the initial state reads (DecoderConfig.layout)
RECALL_DIM = 64  # size of the recall memory's keys and values (DecoderConfig.recall)


class SoftAttention(nn.Module):
    """e_ti = w^T tanh(W_a a_i + W_h h_{t-1} + b);  alpha_t = softmax_i(e_ti).

    One bias b (in feat_proj): a second one in hidden_proj would only add to it, and a bias on
    the score would shift every e_ti alike, which the softmax ignores.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.feat_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim, bias=False)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def weights(self, feat_proj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """alpha_t (B, N) from feat_proj (B, N, A), precomputed once per image, and h_{t-1} (B, n)."""
        e = self.score(torch.tanh(feat_proj + self.hidden_proj(h).unsqueeze(1))).squeeze(2)  # (B, N)
        return e.softmax(dim=1)

    def forward(self, feats: torch.Tensor, feat_proj: torch.Tensor, h: torch.Tensor):
        """(context (B, C), alpha (B, N)): the soft attention's expectation; feats (B, N, C)."""
        alpha = self.weights(feat_proj, h)
        return torch.bmm(alpha.unsqueeze(1), feats).squeeze(1), alpha


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        C, n, m = cfg.feature_dim, cfg.hidden_dim, cfg.embed_dim
        D = C + 2 * cfg.coords  # annotation vector size as attention and the context see it
        if cfg.pos_embed:
            self.row_embed = nn.Parameter(torch.zeros(cfg.grid[0], C))
            self.col_embed = nn.Parameter(torch.zeros(cfg.grid[1], C))
            nn.init.normal_(self.row_embed, std=0.02)
            nn.init.normal_(self.col_embed, std=0.02)
        if cfg.feature_norm:
            self.feature_norm = nn.LayerNorm(C)
        if cfg.refine:
            heads = next(k for k in (4, 2, 1) if C % k == 0)
            layer = nn.TransformerEncoderLayer(C, heads, dim_feedforward=2 * C, dropout=cfg.dropout,
                                               batch_first=True, norm_first=True)
            self.refiner = nn.TransformerEncoder(layer, cfg.refine, enable_nested_tensor=False)
        self.embed = nn.Embedding(cfg.vocab_size, m)
        if cfg.attention != "none":  # no unused parameters (DDP would refuse them)
            self.attention = SoftAttention(D, n, cfg.attention_dim)
        # Paper: c0, h0 are predicted from the mean annotation vector by two separate MLPs.
        init_in = C
        if cfg.layout:
            self.layout_proj = nn.Linear(C, LAYOUT_DIM)
            init_in += cfg.layout ** 2 * LAYOUT_DIM
        self.init_h = nn.Linear(init_in, n)
        self.init_c = nn.Linear(init_in, n)
        if cfg.gate != "none":
            self.f_beta = nn.Linear(n, 1 if cfg.gate == "scalar" else D)
        R = RECALL_DIM if cfg.recall else 0
        if cfg.recall:
            self.recall_key = nn.Linear(m + D, R)  # from (E y_s, context read for y_s)
            self.recall_value = nn.Linear(m + D, R)
            self.recall_query = nn.Linear(n, R, bias=False)  # from h_{t-1}
            self.L_r = nn.Linear(R, m, bias=False)
        if cfg.compare:
            self.L_d = nn.Linear(4, m, bias=False)  # (delta_t, |delta_t|) (B, 4) -> the deep output
            self.f_delta = nn.Linear(n, 1)  # its gate, from h_t: a place difference matters at relation words
        self.lstm = nn.LSTMCell(m + D + R, n)
        self.dropout = nn.Dropout(cfg.dropout)
        # Deep output: p(y_t) ∝ exp(L_o(E y_{t-1} + L_h h_t + L_z z_t))  (eq. 7); one bias (L_h's) inside.
        self.L_h = nn.Linear(n, m)
        self.L_z = nn.Linear(D, m, bias=False)
        self.L_o = nn.Linear(m, cfg.vocab_size)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also reads weights saved before the redundant biases were removed (see fold_redundant_biases)."""
        return super().load_state_dict(fold_redundant_biases(state_dict), strict=strict, assign=assign)

    # --- the stages search.py calls -------------------------------------------------------
    def prepare(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image work done once: normalise, add positions, project for attention.

        (B,N,C) -> feats (B,N,D), (B,N,A); D = C, or C + 2 with coords (x, y appended last).
        """
        if self.cfg.feature_norm:
            feats = self.feature_norm(feats)
        if self.cfg.pos_embed:
            h, w = self.cfg.grid
            if feats.shape[1] != h * w:
                raise ValueError(f"features have {feats.shape[1]} cells, decoder expects {h}x{w}")
            pos = (self.row_embed[:, None, :] + self.col_embed[None, :, :]).reshape(h * w, -1)  # (N, C)
            feats = feats + pos
        if self.cfg.refine:
            feats = self.refiner(feats)  # (B, N, C): each cell has read every other one
        if self.cfg.coords:
            feats = torch.cat([feats, cell_coords(self.cfg.grid, feats).expand(feats.shape[0], -1, -1)], dim=2)
        if self.cfg.attention == "none":
            return feats, feats[:, :, :0]  # (B, N, 0): nothing to project
        return feats, self.attention.feat_proj(feats)

    def init_state(self, feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The decoder's state before the first word, from prepared feats (B, N, D): a tuple of tensors whose
        first dimension is the batch (search reorders and repeats each of them alike). (h_0, c_0), each
        (B, n); with recall also the memory's keys and values, (B, 0, R) each, and the context read for the
        previous word, (B, D) (zeros before <start>), and the last step's recall weights (B, t) (none yet); with
        compare also each entry's attended centre (B, 0, 2)."""
        x = feats[:, :, : self.cfg.feature_dim]  # (B, N, C): the coordinates' mean says nothing
        summary = x.mean(dim=1)  # (B, C)
        if self.cfg.layout:
            (h, w), g = self.cfg.grid, self.cfg.layout
            cells = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(x.shape[0], -1, h, w), g)  # (B, C, g, g)
            cells = self.layout_proj(cells.flatten(2).transpose(1, 2))  # (B, g*g, LAYOUT_DIM)
            summary = torch.cat([summary, cells.flatten(1)], dim=1)  # (B, C + g*g*LAYOUT_DIM)
        h0, c0 = torch.tanh(self.init_h(summary)), torch.tanh(self.init_c(summary))
        if not self.cfg.recall:
            return h0, c0
        B, empty = feats.shape[0], feats.new_zeros(feats.shape[0], 0, RECALL_DIM)
        state = h0, c0, empty, empty, feats.new_zeros(B, feats.shape[2]), feats.new_zeros(B, 0)
        if self.cfg.compare:  # and the attended centre of each entry, (B, 0, 2)
            state += (feats.new_zeros(B, 0, 2),)
        return state

    def step(self, prev_tokens: torch.Tensor, state: tuple[torch.Tensor, ...], feats: torch.Tensor,
             feat_proj: torch.Tensor):
        """One word. prev_tokens (B,), state (see init_state) -> logits (B, V), the next state, alpha (B, N).

        The context is the expectation under alpha_t for every attention kind. For hard attention
        this is the test-time rule this project uses: training has seen it (the expectation
        replaces the sample for half of the captions) and it makes search deterministic. The
        authors' arctic-captions keeps sampling at test time (its sampler draws a location with
        probability 0.5 per step), so repeated runs there give different captions.
        """
        logits, state, alpha, _ = self.draw_step(prev_tokens, state, feats, feat_proj)
        return logits, state, alpha

    def draw_step(self, prev_tokens: torch.Tensor, state: tuple[torch.Tensor, ...], feats: torch.Tensor,
                  feat_proj: torch.Tensor, u: torch.Tensor | None = None, sampled: torch.Tensor | None = None):
        """`step` with hard attention's draw: u (B,) uniforms choose s_t ~ alpha_t (inverse CDF) for the rows
        where `sampled` (B,) is true; the other rows read the expectation. Returns logits, state, alpha and
        the locations (B,) long, -1 where the expectation was read (or without u)."""
        h, c = state[0], state[1]
        emb = self.embed(prev_tokens)  # (B, m)
        if self.cfg.attention == "none":
            alpha = feats.new_full(feats.shape[:2], 1.0 / feats.shape[1])  # (B, N): uniform, no parameters
        else:
            alpha = self.attention.weights(feat_proj, h)  # attention uses h_{t-1}
        context = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)  # (B, D): the expectation
        loc = torch.full_like(prev_tokens, -1)
        if u is not None and self.cfg.attention == "hard":
            loc = torch.where(sampled, categorical(alpha.detach(), u), loc)  # (B,)
            picked = feats[torch.arange(feats.shape[0], device=feats.device), loc.clamp(min=0)]  # (B, D): a_{s_t}
            context = torch.where(sampled.unsqueeze(1), picked, context)
        read = context  # what this word's step read, before the gate: the recall memory keeps it
        if self.cfg.gate != "none":
            context = torch.sigmoid(self.f_beta(h)) * context  # z_t = beta * context
        inputs = [emb, context]
        if self.cfg.recall:
            keys, values, recalled, w = self.recall(emb, state)
            inputs.append(recalled)
        h, c = self.lstm(torch.cat(inputs, dim=1), (h, c))
        # tanh on the sum as in the authors' reference code (arctic-captions); dropout on h_t and on the sum.
        pre = emb + self.L_h(self.dropout(h)) + self.L_z(context)  # this order: the same floats as before recall
        if self.cfg.recall:
            pre = pre + self.L_r(recalled)
        if self.cfg.compare:
            places = torch.cat([state[6], state[4][:, -2:].unsqueeze(1)], dim=1)  # (B, t + 1, 2): entries' centres
            delta = read[:, -2:] - torch.bmm(w.unsqueeze(1), places).squeeze(1)  # (B, 2): here - recalled place
            pre = pre + torch.sigmoid(self.f_delta(h)) * self.L_d(torch.cat([delta, delta.abs()], dim=1))
        logits = self.L_o(self.dropout(torch.tanh(pre)))
        state = (h, c, keys, values, read, w) if self.cfg.recall else (h, c)
        if self.cfg.compare:
            state += (places,)
        return logits, state, alpha, loc

    def recall(self, emb: torch.Tensor, state: tuple[torch.Tensor, ...]):
        """The recall memory's part of a step: write the entry of the word just read, emb (B, m), with the
        context its own step read (state[4]), then read the memory with h_{t-1}'s query.
        Returns keys, values (B, t + 1, R), the recalled vector (B, R) and its weights (B, t + 1)."""
        h, keys, values, prev_read = state[0], state[2], state[3], state[4]
        entry = torch.cat([emb, prev_read], dim=1)  # (B, m + D): the previous word and where it looked
        keys = torch.cat([keys, self.recall_key(entry).unsqueeze(1)], dim=1)  # (B, t + 1, R)
        values = torch.cat([values, self.recall_value(entry).unsqueeze(1)], dim=1)
        q = self.recall_query(h).unsqueeze(2)  # (B, R, 1)
        w = (torch.bmm(keys, q).squeeze(2) / RECALL_DIM ** 0.5).softmax(dim=1)  # (B, t + 1)
        return keys, values, torch.bmm(w.unsqueeze(1), values).squeeze(1), w

    def compile_step(self, **kwargs) -> None:
        """torch.compile the one-word step that teacher forcing repeats (fixed shapes within a batch).

        Only the training forward uses it: search keeps the eager step, since beam search changes
        the batch as images finish and the decode loop itself is never compiled. The module and its
        state_dict are unchanged (the compiled function is not a submodule).
        """
        self._compiled_step = torch.compile(self.step, **kwargs)

    # --- teacher forcing ----------------------------------------------------------------
    def forward(self, feats: torch.Tensor, tokens: torch.Tensor,
                draws: tuple[torch.Tensor, torch.Tensor] | None = None, recall_weights: bool = False):
        """feats (B, N, C); tokens (B, T) = <start> w1 .. <end> <pad>.. -> logits (B, T-1, V), alphas (B, T-1, N).

        With `draws` = (u (B, T-1) uniforms, sampled (B,) bool), hard attention reads sampled
        locations (see draw_step) and a third output, the locations (B, T-1) (-1: expectation), is
        returned. With `recall_weights` (a recall decoder) the last output is the recall weights
        (B, T-1, T-1): row t over the memory's entries 0..t (entry j: token j and the context read
        for it), zeros beyond. The whole batch runs every step (padding is masked in the loss), so
        nothing is sorted and outputs stay in the caller's order.
        """
        if recall_weights and not self.cfg.recall:
            raise ValueError("recall_weights: this decoder has no recall memory (DecoderConfig.recall)")
        feats, proj = self.prepare(feats)
        state = self.init_state(feats)
        step = self.__dict__.get("_compiled_step", self.step)
        logits, alphas, locs, recalls = [], [], [], []
        for t in range(tokens.shape[1] - 1):
            if draws is None:
                lt, state, at = step(tokens[:, t], state, feats, proj)
            else:
                lt, state, at, st = self.draw_step(tokens[:, t], state, feats, proj, draws[0][:, t], draws[1])
                locs.append(st)
            logits.append(lt)
            alphas.append(at)
            if recall_weights:
                recalls.append(F.pad(state[5], (0, tokens.shape[1] - 2 - t)))  # (B, T-1)
        out = (torch.stack(logits, 1), torch.stack(alphas, 1))
        if draws is not None:
            out += (torch.stack(locs, 1),)
        if recall_weights:
            out += (torch.stack(recalls, 1),)
        return out


def categorical(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of probs (B, K) by inverse CDF with u (B,) uniform in [0, 1): the one way
    this project samples (locations here, words in sampling.py), so that a draw is a function of u and
    the same u give the same draws in one process or many."""
    cdf = probs.float().cumsum(dim=1)  # (B, K)
    idx = torch.searchsorted(cdf, (u.float() * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return idx.clamp(max=probs.shape[1] - 1)


def cell_coords(grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """(1, h*w, 2): each cell centre's (x, y), scaled to [-1, 1] across the grid, row by row like the features."""
    h, w = grid
    ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) / w * 2 - 1
    return torch.stack([xs.repeat(h), ys.repeat_interleave(w)], dim=1).unsqueeze(0)


# Biases that earlier releases had and that change nothing but their partner's: (removed, partner).
_FOLDED = (("attention.hidden_proj.bias", "attention.feat_proj.bias"), ("L_z.bias", "L_h.bias"))
_DEAD = ("attention.score.bias",)  # shifts every attention score alike: the softmax ignores it


def fold_redundant_biases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A decoder state_dict in the current layout: each removed bias added into its partner.

    hidden_proj's bias and feat_proj's are summed inside the same tanh, as are L_z's and L_h's,
    so folding one into the other gives the same function; the score's bias is dropped (softmax
    is shift-invariant). States already in the current layout are returned unchanged.
    """
    if not any(k in state for k, _ in _FOLDED) and not any(k in state for k in _DEAD):
        return state
    state = dict(state)
    for removed, partner in _FOLDED:
        if removed in state:
            bias = state.pop(removed)
            state[partner] = state[partner] + bias.to(state[partner].dtype)
    for k in _DEAD:
        state.pop(k, None)
    return state


def attention_regularizer(alphas: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Doubly stochastic term sum_i (1 - sum_t alpha_ti)^2 (eq. 14), averaged over the batch.

    alphas (B, T, N); mask (B, T) marks real (non-padding) steps. `reduction="sum"` is the paper's
    sum over the N locations; "mean" divides it by N (the same as lambda / N), which on a
    14x14 grid keeps the term from drowning the word loss and gave far better grounding.
    """
    total = (alphas * mask.unsqueeze(2)).sum(dim=1)  # (B, N)
    per_loc = (1.0 - total) ** 2
    if reduction == "mean":
        return per_loc.mean(dim=1).mean()
    if reduction == "sum":
        return per_loc.sum(dim=1).mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")


OBJECTIVES = ("token", "paper")


def caption_loss(logits: torch.Tensor, alphas: torch.Tensor, tokens: torch.Tensor,
                 att_lambda: float = 1.0, att_reduction: str = "mean", objective: str = "token"):
    """Masked cross-entropy over the real words (+ <end>) plus the attention regulariser.

    objective="token": cross-entropy averaged over the batch's tokens, plus
        att_lambda * the regulariser reduced over locations by `att_reduction`, averaged over images.
    objective="paper": Xu et al.'s objective as the authors' capgen.py computes it: each
        caption's cross-entropy summed over its words, averaged over captions, plus
        att_lambda * sum_i (1 - sum_t alpha_ti)^2 averaged over captions (the "sum" reduction;
        `att_reduction` is not used).
    Returns (total, cross_entropy, regulariser) as tensors.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
    targets = tokens[:, 1:]  # (B, T-1)
    mask = targets != PAD_ID
    ce_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                             ignore_index=PAD_ID, reduction="sum")
    # Per caption (paper) or per token, divided by at least 1: an empty share of a batch (DDP) gives 0, not NaN.
    count = mask.new_tensor(tokens.shape[0], dtype=torch.long) if objective == "paper" else mask.sum()
    ce = ce_sum / count.clamp(min=1)
    reduction = "sum" if objective == "paper" else att_reduction
    reg = attention_regularizer(alphas.float(), mask.float(), reduction) if att_lambda else ce.new_zeros(())
    return ce + att_lambda * reg, ce, reg


def attention_supervision(alphas: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of -log(sum of alpha_t over the target cells) over the supervised steps.

    alphas (B, T-1, N); targets (B, T-1, N) bool, all-False rows unsupervised (what
    scene_metrics.attention_targets gives: an object word's box, the other object of a relation).
    Not in the paper; the attention-correctness supervision of Liu et al. 2017 with the boxes the
    shapes world knows.
    """
    rows = targets.any(dim=2)  # (B, T-1)
    mass = (alphas.float() * targets).sum(dim=2).clamp(min=1e-6)
    return -(mass.log() * rows).sum(), rows.sum()


def recall_supervision(weights: torch.Tensor, entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of -log(the recall weight on the target entry) over the supervised steps.

    weights (B, T-1, T-1) (Decoder.forward's recall weights); entries (B, T-1) long, the memory entry
    each step should read back, -1 where unsupervised (what scene_metrics.recall_targets gives: at a
    relation's deciding word, the entry of the subject's shape word, i.e. where the model looked when
    it named the subject). Not in the paper.
    """
    rows = entries >= 0  # (B, T-1)
    mass = weights.float().gather(2, entries.clamp(min=0).unsqueeze(2)).squeeze(2).clamp(min=1e-6)
    return -(mass.log() * rows).sum(), rows.sum()


def hard_attention_terms(logits: torch.Tensor, alphas: torch.Tensor, locations: torch.Tensor, tokens: torch.Tensor,
                         baseline: float, objective: str = "token"):
    """The terms section 4.1 adds to the cross-entropy for hard attention, as losses to minimise.

    The gradient of the variational lower bound L_s, per caption with locations s~ drawn from
    alpha (eq. 12, with the moving-average baseline b and the entropy term of eq. 13):
        d log p(y|s~,a)/dW  +  lambda_r (log p(y|s~,a) - b) d log p(s~|a)/dW  +  lambda_e dH[s~]/dW.
    The first is caption_loss's cross-entropy. Returned:
      reinforce: -(log p(y|s~,a) - b) * sum_t log alpha_t(s~_t), the reward held constant (a score-function
                 surrogate: its gradient is the REINFORCE term's, negated);
      entropy:   sum_t H(alpha_t) over the caption's real steps;
    both summed over captions and divided by caption_loss's count (tokens for "token", captions for
    "paper"), so that lambda_r and lambda_e weigh them against the cross-entropy as in the paper.
    Captions that read the expectation (locations -1) add no REINFORCE term. Also returns
    log p(y|s~,a) (B,), detached: what the baseline averages.
    """
    targets = tokens[:, 1:]  # (B, T-1)
    mask = targets != PAD_ID
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=PAD_ID, reduction="none")  # (B, T-1)
    logp_y = -nll.sum(dim=1)  # (B,): log p(y | s~, a), the caption's log-likelihood
    a = alphas.float()
    took = mask & (locations >= 0)
    logp_s = a.gather(2, locations.clamp(min=0).unsqueeze(2)).squeeze(2).clamp(min=1e-12).log() * took  # (B, T-1)
    entropy = -(a * a.clamp(min=1e-12).log()).sum(dim=2) * mask  # (B, T-1): H(alpha_t)
    count = mask.new_tensor(tokens.shape[0], dtype=torch.long) if objective == "paper" else mask.sum()
    count = count.clamp(min=1)
    reinforce = -((logp_y.detach() - baseline) * logp_s.sum(dim=1)).sum() / count
    return reinforce, entropy.sum() / count, logp_y.detach()
