"""Tests for captioner.reward: CIDEr-D as a training reward, checked by hand and against pycocoevalcap's scorer."""
from __future__ import annotations

import math

import numpy as np
import pytest
from pycocoevalcap.cider.cider_scorer import CiderScorer

from captioner.reward import CiderD

# Plain lower-case words, split on spaces: repeated words, several lengths, shared n-grams.
REFS = [
    ["a man riding a horse on the beach",
     "a person rides a brown horse along the sea shore",
     "a man on a horse",
     "man riding horse near the water"],
    ["a plate of food with broccoli and rice",
     "broccoli and rice on a white plate",
     "a white plate with rice broccoli and meat"],
    ["two dogs playing in the grass",
     "a dog and a dog play on the green grass",
     "two brown dogs run in a park",
     "dogs playing",
     "two dogs are playing together in the grass of a park"],
    ["a red bus parked on the street",
     "a double decker bus on a city street",
     "a red double decker bus"],
    ["a cat sleeping on a couch",
     "a cat is lying on the couch",
     "a grey cat asleep on a red couch in a living room"],
    ["a man riding a wave on a surfboard",
     "a surfer rides a big wave",
     "a person on a surfboard in the ocean",
     "surfer on a wave"],
    ["a plate of pizza on a table",
     "a pizza with cheese and tomato on a wooden table",
     "pizza pizza pizza"],
    ["a woman holding an umbrella in the rain",
     "a woman with a red umbrella walks down the street",
     "person with umbrella"],
]
CANDIDATES = [
    "a man riding a horse on the beach",  # equal to a reference
    "a plate with rice and broccoli",
    "a dog a dog a dog a dog",  # repeated n-grams: clipping matters
    "bus",  # one word: length penalty
    "a cat on a couch in a living room with a zebra and a giraffe standing near a window",  # long, unseen words
    "a surfer on a surfboard riding a big wave in the ocean",
    "",  # empty
    "a woman with an umbrella in the street",
]


def split(refs: list[str]) -> list[list[str]]:
    return [r.split(" ") if r else [] for r in refs]


CORPUS = [split(refs) for refs in REFS]
CAND_TOKENS = [c.split(" ") if c else [] for c in CANDIDATES]


def coco_cider(candidates: list[str], refs: list[list[str]]) -> np.ndarray:
    # pycocoevalcap's scorer on already tokenised, space-joined strings (no PTB tokenizer);
    # its document frequencies come from exactly these references.
    scorer = CiderScorer(n=4, sigma=6.0)
    for cand, r in zip(candidates, refs):
        scorer += (cand, r)
    _, scores = scorer.compute_score()
    return np.asarray(scores, dtype=np.float64)


@pytest.fixture(scope="module")
def cider() -> CiderD:
    return CiderD(CORPUS)


# ---------------------------------------------------------------- hand-checked values


def test_exact_reference_beats_unrelated_and_disjoint_scores_zero(cider):
    refs = CORPUS[0]
    same = cider.score(refs[0], refs)
    unrelated = cider.score("pizza with cheese and tomato".split(), refs)
    assert same > 1.0
    assert unrelated == 0.0  # no n-gram in common with any reference
    assert same > cider.score("a man riding".split(), refs) > 0.0


def test_hand_computed_values():
    # Two images, N = 2: every n-gram has df 1, so idf = log 2 for all of them.
    c = CiderD([[["a", "b"]], [["c", "d"]]])
    assert c.ref_len == pytest.approx(math.log(2))
    # Identical 2-word caption: cosine 1 for unigrams and bigrams, 0 (no n-grams) for 3- and 4-grams.
    assert c.score(["a", "b"], [["a", "b"]]) == pytest.approx(10 * (1 + 1 + 0 + 0) / 4, abs=1e-12)
    # "a" vs "a b": unigram cosine 1/sqrt(2), no bigrams, length difference 1 -> exp(-1 / (2 * 6^2)).
    expected = 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    assert c.score(["a"], [["a", "b"]]) == pytest.approx(expected, abs=1e-12)
    # An n-gram present in every image has idf 0 and earns nothing.
    everywhere = CiderD([[["x", "a"]], [["x", "b"]]])
    assert everywhere.score(["x"], [["x", "a"]]) == 0.0


def test_empty_candidate_scores_zero(cider):
    assert cider.score([], CORPUS[0]) == 0.0
    assert cider.score_batch([[], ()], [CORPUS[1], CORPUS[2]]).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- equality with pycocoevalcap


def test_equals_pycocoevalcap_when_document_frequencies_coincide(cider):
    expected = coco_cider(CANDIDATES, REFS)
    got = cider.score_batch(CAND_TOKENS, CORPUS)
    assert got.dtype == np.float64 and got.shape == (len(CANDIDATES),)
    # The comparison must be informative: several distinct, non-zero scores.
    assert np.count_nonzero(expected) >= 5 and len(np.unique(np.round(expected, 6))) >= 5
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_equals_pycocoevalcap_for_every_candidate_against_every_image(cider):
    # All 8 x 8 pairs, each scored by a fresh pycocoevalcap scorer whose corpus is the same 8
    # images (the candidate goes to image j, the other images get an empty candidate).
    for j in range(len(REFS)):
        for cand, tokens in zip(CANDIDATES, CAND_TOKENS):
            tests = ["" for _ in REFS]
            tests[j] = cand
            expected = coco_cider(tests, REFS)[j]
            assert cider.score(tokens, CORPUS[j]) == pytest.approx(expected, rel=0, abs=1e-9)


# ---------------------------------------------------------------- document frequencies


def test_document_frequencies_fixed_at_construction(cider):
    before = cider.score(CAND_TOKENS[1], CORPUS[1])
    cider.score_batch(CAND_TOKENS * 3, CORPUS * 3)
    cider.score_batch([["zebra", "giraffe", "zebra"]] * 4, [[["zebra", "giraffe"]]] * 4)
    assert cider.score(CAND_TOKENS[1], CORPUS[1]) == before
    # A scorer built on another corpus (image 1 plus unrelated images) weighs the same n-grams differently.
    other = CiderD([CORPUS[1], [["zebra", "on", "grass"]], [["a", "plate", "of", "rice"]]])
    assert other.ref_len == pytest.approx(math.log(3))
    assert abs(other.score(CAND_TOKENS[1], CORPUS[1]) - before) > 1e-3
    # ... and matches pycocoevalcap computed over that other corpus.
    other_refs = [REFS[1], ["zebra on grass"], ["a plate of rice"]]
    expected = coco_cider([CANDIDATES[1], "", ""], other_refs)[0]
    assert other.score(CAND_TOKENS[1], CORPUS[1]) == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- tokens, prepared references, errors


def test_integer_ids_score_like_words(cider):
    vocab: dict[str, int] = {}
    for refs in CORPUS:
        for ref in refs:
            for w in ref:
                vocab.setdefault(w, len(vocab) + 4)
    ids = lambda words: [vocab.setdefault(w, len(vocab) + 4) for w in words]  # noqa: E731
    id_corpus = [[ids(r) for r in refs] for refs in CORPUS]
    id_cands = [ids(c) for c in CAND_TOKENS]
    by_id = CiderD(id_corpus)
    words = cider.score_batch(CAND_TOKENS, CORPUS)
    np.testing.assert_allclose(by_id.score_batch(id_cands, id_corpus), words, rtol=0, atol=1e-12)
    # numpy id arrays (as sampled by a model) too.
    arrays = [np.asarray(c, dtype=np.int64) for c in id_cands]
    np.testing.assert_allclose(by_id.score_batch(arrays, id_corpus), words, rtol=0, atol=1e-12)


def test_prepared_refs_reused_equal_raw_refs(cider):
    prepared = [cider.prepare(refs) for refs in CORPUS]
    raw = cider.score_batch(CAND_TOKENS, CORPUS)
    np.testing.assert_array_equal(cider.score_batch(CAND_TOKENS, prepared), raw)
    np.testing.assert_array_equal(cider.score_batch(CAND_TOKENS, prepared), raw)  # reused a second time
    # Many candidates against one prepared image, as in self-critical training (k samples per image).
    many = cider.score_batch(CAND_TOKENS, [prepared[2]] * len(CAND_TOKENS))
    assert many.tolist() == [cider.score(c, CORPUS[2]) for c in CAND_TOKENS]


def test_prepared_refs_of_another_scorer_and_mismatched_batch_are_refused(cider):
    other = CiderD(CORPUS[:3])
    with pytest.raises(ValueError, match="another CiderD"):
        cider.score(CAND_TOKENS[0], other.prepare(CORPUS[0]))
    with pytest.raises(ValueError, match="reference sets"):
        cider.score_batch(CAND_TOKENS, CORPUS[:2])
    with pytest.raises(ValueError, match="empty"):
        CiderD([])
