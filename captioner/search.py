"""Caption search on tensors: greedy and batched beam search.

Pure functions of (decoder, features): no files, no PIL, no device globals. Evaluation, the
web UI and the batch script all call `search()`.

Scores are length-normalised log-probabilities: the sum of the log-probabilities of the
emitted words and of <end> (when it was emitted), divided by their number. `max_len` bounds
the tokens decoded, <end> included; a hypothesis that has not emitted <end> by then is cut at
max_len words and marked unfinished: not an error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .decoder import Decoder
from .text import END_ID, PAD_ID, START_ID, UNK_ID

BLOCKED = [PAD_ID, START_ID, UNK_ID]  # never emitted: padding, the start symbol and the unknown word
DEFAULT_MAX_LEN = 30  # tokens decoded per caption, <end> included: room for 3-object relation captions


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without <start> / <end>
    score: float  # length-normalised log-probability
    alphas: torch.Tensor  # (len(tokens), N): the attention of every emitted word
    finished: bool  # emitted <end> within max_len tokens


@dataclass
class SearchResult:
    best: Hypothesis
    beams: list[Hypothesis]  # all kept hypotheses, best first (one for greedy)


def _word_logp(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over the vocabulary; <pad>, <start> and <unk> are never emitted.

    The probabilities are those of the full softmax (the blocked words' share is not
    redistributed), so scores stay the model's log-probabilities of the words it wrote.
    """
    logp = logits.float().log_softmax(-1)
    logp[:, BLOCKED] = float("-inf")
    return logp


@torch.no_grad()
def greedy_search(decoder: Decoder, feats: torch.Tensor, max_len: int = DEFAULT_MAX_LEN) -> list[SearchResult]:
    """Argmax decoding for a batch. feats (B, N, C)."""
    B = feats.shape[0]
    feats, proj = decoder.prepare(feats)
    state = decoder.init_state(feats)
    tokens = feats.new_full((B,), START_ID, dtype=torch.long)
    out_tokens, out_logp, out_alpha = [], [], []
    done = torch.zeros(B, dtype=torch.bool, device=feats.device)
    for _ in range(max_len):  # at most max_len tokens, <end> included
        logits, state, alpha = decoder.step(tokens, state, feats, proj)
        logp, tokens = _word_logp(logits).max(-1)  # (B,), (B,)
        out_tokens.append(tokens)
        out_logp.append(logp)
        out_alpha.append(alpha.float())
        done |= tokens == END_ID
        if bool(done.all()):
            break
    toks = torch.stack(out_tokens, 1).cpu()  # (B, T)
    logps = torch.stack(out_logp, 1).cpu()
    alphas = torch.stack(out_alpha, 1).cpu()  # (B, T, N)
    results = []
    for b in range(B):
        seq = toks[b].tolist()
        finished = END_ID in seq
        n_words = seq.index(END_ID) if finished else len(seq)
        n_scored = n_words + (1 if finished else 0)
        score = float(logps[b, :n_scored].sum()) / max(n_scored, 1)
        hyp = Hypothesis(seq[:n_words], score, alphas[b, :n_words], finished)
        results.append(SearchResult(hyp, [hyp]))
    return results


@torch.no_grad()
def beam_search(decoder: Decoder, feats: torch.Tensor, beam_size: int = 3,
                max_len: int = DEFAULT_MAX_LEN) -> list[SearchResult]:
    """Beam search for many images at once: B images x K beams run as one (B*K) batch.

    Every step ranks each image's candidates (K live beams x V words) by length-normalised
    score. A candidate ending in <end> that ranks in the top K leaves the beam for the image's
    pool of finished hypotheses; the K best candidates that do not end stay live, so the beam
    keeps K hypotheses in progress and a finished caption can never be pushed out by live ones
    that later fall behind. An image is done once its pool holds K captions (the authors'
    arctic-captions stops the same way), or after max_len tokens; it then leaves the batch, so
    short captions do not pay for the longest one. The result is the best of the pool (and, at
    max_len, of the live beams, cut and marked unfinished) by normalised score; `beams` are its
    K best. With K = 1 this is exactly greedy search.
    """
    B, N, _ = feats.shape
    K = beam_size
    V = decoder.cfg.vocab_size
    dev = feats.device
    feats, proj = decoder.prepare(feats)
    state = decoder.init_state(feats)  # a tuple of (B, ...) tensors
    # (B, ...) -> (B*K, ...): beam k of live image j sits at row j*K + k.
    feats, proj = feats.repeat_interleave(K, dim=0), proj.repeat_interleave(K, dim=0)
    state = tuple(x.repeat_interleave(K, dim=0) for x in state)
    tokens = torch.full((B * K,), START_ID, dtype=torch.long, device=dev)
    cum = torch.zeros(B, K, device=dev)
    cum[:, 1:] = float("-inf")  # all beams start identical: keep only one alive at step 0
    seqs = torch.empty(B, K, 0, dtype=torch.long, device=dev)
    hist = torch.empty(B, K, 0, N, device=dev)
    alive = torch.arange(B, device=dev)  # original index of each live image
    pool: list[list[Hypothesis]] = [[] for _ in range(B)]  # finished hypotheses of each image
    cut: list[list[Hypothesis]] = [[] for _ in range(B)]  # live hypotheses cut at max_len

    for t in range(max_len):  # at most max_len tokens, <end> included
        Ba = alive.numel()
        ar = torch.arange(Ba, device=dev)[:, None]
        logits, state, alpha = decoder.step(tokens, state, feats, proj)
        cand = (cum[..., None] + _word_logp(logits).view(Ba, K, V)).view(Ba, K * V)
        norm = cand / (t + 1)  # every live beam has t words so far; this candidate is token t + 1
        # Finished: candidates ending in <end> among the top K of all candidates.
        top = norm.topk(K, dim=1).indices  # (Ba, K)
        ends = (top % V == END_ID) & torch.isfinite(cand.gather(1, top))
        if bool(ends.any()):
            for j, k in ends.nonzero().tolist():
                beam = int(top[j, k]) // V
                pool[int(alive[j])].append(Hypothesis(seqs[j, beam].tolist(), float(norm[j, top[j, k]]),
                                                      hist[j, beam].cpu(), True))
        # Live: the K best candidates that do not end.
        norm[:, END_ID::V] = float("-inf")
        idx = norm.topk(K, dim=1).indices  # (Ba, K)
        beam, tok = idx // V, idx % V
        cum = cand.gather(1, idx)
        seqs = torch.cat([seqs[ar, beam], tok.unsqueeze(2)], dim=2)
        hist = torch.cat([hist[ar, beam], alpha.float().view(Ba, K, N)[ar, beam].unsqueeze(2)], dim=2)
        rows = (ar * K + beam).view(-1)
        state = tuple(x[rows] for x in state)
        tokens = tok.view(-1)
        done = torch.tensor([len(pool[b]) >= K for b in alive.tolist()], device=dev)
        if t == max_len - 1:  # cut: the live beams of unfinished images join their results, unfinished
            for j in (~done).nonzero().flatten().tolist():
                scores = (cum[j] / (t + 1)).tolist()
                cut[int(alive[j])] = [Hypothesis(seqs[j, k].tolist(), scores[k], hist[j, k].cpu(), False)
                                      for k in range(K) if math.isfinite(scores[k])]
            break
        if bool(done.any()):
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            # Drop the finished images' rows: later steps run only for captions still being written.
            rows = (keep[:, None] * K + torch.arange(K, device=dev)).view(-1)
            feats, proj, tokens = feats[rows], proj[rows], tokens[rows]
            state = tuple(x[rows] for x in state)
            cum, seqs, hist = cum[keep], seqs[keep], hist[keep]
            alive = alive[keep]

    results = []
    for b in range(B):
        hyps = sorted(pool[b] + cut[b], key=lambda hy: -hy.score)[:K]
        results.append(SearchResult(hyps[0], hyps))
    return results


def search(decoder: Decoder, feats: torch.Tensor, beam_size: int = 3,
           max_len: int = DEFAULT_MAX_LEN) -> list[SearchResult]:
    """The one entry point: greedy for beam_size 1, batched beam search otherwise."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, not {beam_size}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, not {max_len}")
    was_training = decoder.training
    decoder.eval()
    try:
        if beam_size == 1:
            return greedy_search(decoder, feats, max_len)
        return beam_search(decoder, feats, beam_size, max_len)
    finally:
        decoder.train(was_training)
