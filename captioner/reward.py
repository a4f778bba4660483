"""CIDEr-D as a training reward (self-critical sequence training, Rennie et al. 2017).

This module owns `CiderD`: the CIDEr-D of sampled captions against their image's references,
computed with the same arithmetic as pycocoevalcap's `cider/cider_scorer.py` (which is CIDEr-D:
n-grams 1..4, tf-idf vectors, candidate weights clipped to the reference's, Gaussian length
penalty with sigma 6, mean over references and over n, times 10), with two differences that
make it usable as a reward:

* the document frequencies (and log of the number of documents) are computed ONCE from the
  training references given at construction, not from the batch being scored, so a caption's
  reward does not depend on what else is in the batch;
* tokens are given already split, as any hashables (words or integer word ids).

References of an image can be turned into their tf-idf vectors once (`prepare`) and reused for
the several captions sampled per image and across steps. The evaluation metrics (pycocoevalcap,
PTB tokenisation) stay in captioner.metrics. Pure Python + numpy, no IO.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["CiderD", "PreparedRefs"]


def _tokens(seq: Sequence[Hashable]) -> tuple:
    # numpy arrays / tensors: plain Python ints hash and compare faster than numpy scalars.
    tolist = getattr(seq, "tolist", None)
    return tuple(tolist() if tolist is not None else seq)


def _ngram_counts(tokens: tuple, n: int) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            g = tokens[i:i + k]
            counts[g] = counts.get(g, 0) + 1
    return counts


class PreparedRefs:
    """The references of one image as tf-idf vectors, per-n norms and lengths (made by `CiderD.prepare`)."""

    __slots__ = ("owner", "vecs", "norms", "lengths")

    def __init__(self, owner: CiderD, vecs: tuple[dict[tuple, float], ...],
                 norms: tuple[tuple[float, ...], ...], lengths: tuple[int, ...]):
        self.owner = owner  # the weights depend on that scorer's document frequencies
        self.vecs = vecs  # one dict per reference: n-gram (all orders together) -> tf * idf
        self.norms = norms  # one tuple per reference: the L2 norm of its n-gram vector for n = 1..N
        self.lengths = lengths  # one per reference: number of tokens

    def __len__(self) -> int:
        return len(self.vecs)


class CiderD:
    """CIDEr-D of captions against their references, with document frequencies fixed at construction."""

    def __init__(self, corpus_refs: Sequence[Sequence[Sequence[Hashable]]], n: int = 4, sigma: float = 6.0):
        """corpus_refs: for every training image, its reference captions, each a sequence of tokens.

        The document frequency of an n-gram is the number of images whose references contain it
        (as pycocoevalcap counts it); the "reference length" is log(number of images)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if len(corpus_refs) == 0:
            raise ValueError("corpus_refs is empty: CIDEr-D needs document frequencies")
        self.n = n
        self.sigma = float(sigma)
        self.ref_len = math.log(float(len(corpus_refs)))
        df: dict[tuple, int] = {}
        for refs in corpus_refs:
            seen: set[tuple] = set()
            for ref in refs:
                seen.update(_ngram_counts(_tokens(ref), n))
            for g in seen:
                df[g] = df.get(g, 0) + 1
        # Only the idf is kept (one dict, not two, for a COCO-sized corpus). pycocoevalcap uses
        # ref_len - log(max(1, df)): an n-gram absent from the corpus gets the weight of a df-1
        # n-gram, log(N), the largest there is.
        ref_len = self.ref_len
        self._idf: dict[tuple, float] = {g: ref_len - math.log(max(1.0, float(d))) for g, d in df.items()}
        self._two_sigma_sq = 2.0 * self.sigma ** 2

    def _vector(self, tokens: tuple) -> tuple[dict[tuple, float], list[float]]:
        idf, ref_len = self._idf, self.ref_len
        vec: dict[tuple, float] = {}
        sq = [0.0] * self.n
        for g, tf in _ngram_counts(tokens, self.n).items():
            w = float(tf) * idf.get(g, ref_len)
            vec[g] = w
            sq[len(g) - 1] += w ** 2
        return vec, [math.sqrt(s) for s in sq]

    def prepare(self, refs: Sequence[Sequence[Hashable]]) -> PreparedRefs:
        """The references of one image as tf-idf vectors, norms and lengths (reusable for many candidates)."""
        vecs, norms, lengths = [], [], []
        for ref in refs:
            tokens = _tokens(ref)
            vec, norm = self._vector(tokens)
            vecs.append(vec)
            norms.append(tuple(norm))
            lengths.append(len(tokens))
        return PreparedRefs(self, tuple(vecs), tuple(norms), tuple(lengths))

    def _prepared(self, refs: PreparedRefs | Sequence[Sequence[Hashable]]) -> PreparedRefs:
        if isinstance(refs, PreparedRefs):
            if refs.owner is not self:
                raise ValueError("these PreparedRefs were made by another CiderD (other document frequencies)")
            return refs
        return self.prepare(refs)

    def score(self, candidate: Sequence[Hashable], refs: PreparedRefs | Sequence[Sequence[Hashable]]) -> float:
        """CIDEr-D of one tokenised candidate against one image's references (raw or prepared)."""
        prepared = self._prepared(refs)
        n_refs = len(prepared)
        if n_refs == 0:
            raise ValueError("an image needs at least one reference")
        tokens = _tokens(candidate)
        if not tokens:
            return 0.0  # no n-grams: every cosine is 0 (pycocoevalcap gives 0 too)
        vec, norm_h = self._vector(tokens)
        items = [(g, w, len(g) - 1) for g, w in vec.items()]
        n = self.n
        total = [0.0] * n
        length = len(tokens)
        for vec_r, norm_r, length_r in zip(prepared.vecs, prepared.norms, prepared.lengths):
            val = [0.0] * n
            for g, w, k in items:
                wr = vec_r.get(g)
                if wr:
                    val[k] += min(w, wr) * wr  # CIDEr-D's clipping: a repeated n-gram earns no more than the ref has
            # pycocoevalcap's "length" is the number of bigrams; for two non-empty captions their
            # difference equals the difference of token counts, and with an empty side every val is 0.
            delta = float(length - length_r)
            penalty = math.e ** (-(delta ** 2) / self._two_sigma_sq)
            for k in range(n):
                v = val[k]
                if norm_h[k] != 0 and norm_r[k] != 0:
                    v /= norm_h[k] * norm_r[k]
                total[k] += v * penalty
        return sum(total) / n / n_refs * 10.0

    def score_batch(self, candidates: Sequence[Sequence[Hashable]],
                    refs: Sequence[PreparedRefs | Sequence[Sequence[Hashable]]]) -> np.ndarray:
        """candidates[i] scored against refs[i]; a float64 array of len(candidates)."""
        if len(candidates) != len(refs):
            raise ValueError(f"{len(candidates)} candidates but {len(refs)} reference sets")
        # Several samples per image usually share one references object: prepare it once per call.
        # The object is kept in the cache so that its id cannot be reused by another one meanwhile.
        cache: dict[int, tuple[object, PreparedRefs]] = {}
        out = np.empty(len(candidates), dtype=np.float64)
        for i, (cand, r) in enumerate(zip(candidates, refs)):
            hit = cache.get(id(r))
            if hit is not None and hit[0] is r:
                prepared = hit[1]
            else:
                prepared = self._prepared(r)
                cache[id(r)] = (r, prepared)
            out[i] = self.score(cand, prepared)
        return out
