"""Caption search on tensors: greedy and batched beam search.

Pure functions of (decoder, features): no files, no PIL, no device globals. Evaluation, the
web UI and the batch script all call `search()`.

Scores are length-normalised log-probabilities: the sum of the log-probabilities of the
emitted words and of <end> (when it was emitted), divided by their number. `max_len` bounds
the tokens decoded, <end> included; a hypothesis that has not emitted <end> by then is cut at
max_len words and marked unfinished: not an error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .decoder import Decoder
from .text import END_ID, PAD_ID, START_ID

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
    """Log-probabilities over the vocabulary; <pad> and <start> are never emitted."""
    logp = logits.float().log_softmax(-1)
    logp[:, PAD_ID] = float("-inf")
    logp[:, START_ID] = float("-inf")
    return logp


@torch.no_grad()
def greedy_search(decoder: Decoder, feats: torch.Tensor, max_len: int = DEFAULT_MAX_LEN) -> list[SearchResult]:
    """Argmax decoding for a batch. feats (B, N, C)."""
    B = feats.shape[0]
    feats, proj = decoder.prepare(feats)
    h, c = decoder.init_state(feats)
    tokens = feats.new_full((B,), START_ID, dtype=torch.long)
    out_tokens, out_logp, out_alpha = [], [], []
    done = torch.zeros(B, dtype=torch.bool, device=feats.device)
    for _ in range(max_len):  # at most max_len tokens, <end> included
        logits, h, c, alpha = decoder.step(tokens, h, c, feats, proj)
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
def beam_search(decoder: Decoder, feats: torch.Tensor, beam_size: int = 3, max_len: int = DEFAULT_MAX_LEN) -> list[SearchResult]:
    """Beam search for many images at once: B images x K beams run as one (B*K) batch.

    A finished hypothesis keeps its slot and is extended only by <pad> at no cost, so it
    competes with the live ones by its length-normalised score until every beam of its image
    has finished (or max_len tokens were decoded). Then the image leaves the batch, so short
    captions do not pay for the longest one. With K = 1 this is exactly greedy search.
    """
    B, N, _ = feats.shape
    K = beam_size
    V = decoder.cfg.vocab_size
    dev = feats.device
    feats, proj = decoder.prepare(feats)
    h, c = decoder.init_state(feats)
    # (B, ...) -> (B*K, ...): beam k of live image j sits at row j*K + k.
    feats, proj, h, c = (x.repeat_interleave(K, dim=0) for x in (feats, proj, h, c))
    tokens = torch.full((B * K,), START_ID, dtype=torch.long, device=dev)
    cum = torch.zeros(B, K, device=dev)
    cum[:, 1:] = float("-inf")  # all beams start identical: keep only one alive at step 0
    length = torch.zeros(B, K, device=dev)  # scored tokens so far
    finished = torch.zeros(B, K, dtype=torch.bool, device=dev)
    seqs = torch.empty(B, K, 0, dtype=torch.long, device=dev)
    hist = torch.empty(B, K, 0, N, device=dev)
    # A finished beam's only continuation: <pad> at log-probability 0.
    pad_row = torch.full((V,), float("-inf"), device=dev)
    pad_row[PAD_ID] = 0.0
    alive = torch.arange(B, device=dev)  # original index of each live image
    final: list[tuple | None] = [None] * B  # per image: (cum, length, seqs, hist) once it is done

    for _ in range(max_len):  # at most max_len tokens, <end> included
        Ba = alive.numel()
        ar = torch.arange(Ba, device=dev)[:, None]
        logits, h, c, alpha = decoder.step(tokens, h, c, feats, proj)
        logp = _word_logp(logits).view(Ba, K, V)
        logp = torch.where(finished[..., None], pad_row, logp)
        cand = cum[..., None] + logp  # (Ba, K, V)
        new_len = (length + (~finished).float())[..., None]  # (Ba, K, 1)
        norm = (cand / new_len.clamp(min=1.0)).view(Ba, K * V)
        idx = norm.topk(K, dim=1).indices  # (Ba, K)
        beam, tok = idx // V, idx % V
        cum = cand.view(Ba, K * V).gather(1, idx)
        length = new_len.squeeze(2).gather(1, beam)
        was_finished = finished.gather(1, beam)
        finished = was_finished | (tok == END_ID)
        seqs = torch.cat([seqs[ar, beam], tok.unsqueeze(2)], dim=2)
        a = alpha.float().view(Ba, K, N)[ar, beam]  # (Ba, K, N)
        a = torch.where(was_finished[..., None], torch.zeros_like(a), a)
        hist = torch.cat([hist[ar, beam], a.unsqueeze(2)], dim=2)
        rows = (ar * K + beam).view(-1)
        h, c = h[rows], c[rows]
        tokens = tok.view(-1)
        done = finished.all(dim=1)  # (Ba,)
        if bool(done.any()):
            for j in done.nonzero().flatten().tolist():
                final[int(alive[j])] = (cum[j], length[j], seqs[j], hist[j])
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            # Drop the finished images' rows: later steps run only for captions still being written.
            rows = (keep[:, None] * K + torch.arange(K, device=dev)).view(-1)
            feats, proj, h, c, tokens = feats[rows], proj[rows], h[rows], c[rows], tokens[rows]
            cum, length, finished, seqs, hist = cum[keep], length[keep], finished[keep], seqs[keep], hist[keep]
            alive = alive[keep]
    for j, b in enumerate(alive.tolist()):
        if final[b] is None:  # still writing at max_len
            final[b] = (cum[j], length[j], seqs[j], hist[j])

    results = []
    for cum_b, len_b, seqs_b, hist_b in final:
        cum_b, seqs_b, hist_b = cum_b.cpu(), seqs_b.cpu(), hist_b.cpu()
        score = cum_b / len_b.cpu().clamp(min=1.0)
        hyps = []
        for k in sorted(range(K), key=lambda k: -float(score[k])):
            if not torch.isfinite(cum_b[k]):  # fewer than K candidates ever existed
                continue
            seq = seqs_b[k].tolist()
            is_finished = END_ID in seq
            n_words = seq.index(END_ID) if is_finished else len(seq)
            hyps.append(Hypothesis(seq[:n_words], float(score[k]), hist_b[k, :n_words], is_finished))
        results.append(SearchResult(hyps[0], hyps))
    return results


def search(decoder: Decoder, feats: torch.Tensor, beam_size: int = 3, max_len: int = DEFAULT_MAX_LEN) -> list[SearchResult]:
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
