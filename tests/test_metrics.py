"""Tests for captioner.metrics: COCO caption scores (real pycocoevalcap scorers) and nltk's BLEU.

The shapes-world metrics are tested in test_scene_metrics.py."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from captioner import metrics as M

JAVA = M.java_available()
needs_java = pytest.mark.skipif(not JAVA, reason="java not installed")

# Several images with distinct references: CIDEr's idf is computed over the corpus, so a
# one-image corpus would score 0 whatever the caption.
REFS = {
    1: ["a red circle on the left of a blue square",
        "a blue square to the right of a red circle",
        "a red circle and a blue square"],
    2: ["two green triangles above a yellow star",
        "a yellow star below two green triangles"],
    3: ["a man riding a horse on the beach",
        "a person rides a brown horse along the sea shore"],
    4: ["a plate of food with broccoli and rice",
        "broccoli and rice on a white plate"],
}
GOOD = {i: refs[0] for i, refs in REFS.items()}  # every prediction equals one of its references


@pytest.fixture(scope="module")
def good_scores():
    # Computed once: it starts METEOR's JVM (several seconds), which later calls reuse.
    return M.coco_caption_scores(GOOD, REFS)


# ---------------------------------------------------------------- COCO caption metrics


def test_identical_captions_score_one(good_scores):
    scores, info = good_scores
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0, abs=1e-12)
    assert scores["CIDEr"] > 1.0  # CIDEr is not bounded by 1
    assert info["n_images"] == 4
    assert info["references_per_image"] == pytest.approx(9 / 4)
    assert info["scorer"].startswith("pycocoevalcap ")
    assert all(isinstance(v, float) for v in scores.values())


@needs_java
def test_meteor_and_ptb_with_java(good_scores):
    scores, info = good_scores
    assert "METEOR" in scores and 0.9 < scores["METEOR"] <= 1.0
    assert info["tokenizer"] == M.PTB_TOKENIZER_NAME
    assert info["metrics_computed"] == list(M.METRIC_KEYS)
    assert info["skipped"] == {}


def test_cider_prefers_matching_caption_and_metrics_restriction(good_scores, monkeypatch, capfd):
    def no_meteor(*args, **kwargs):
        raise AssertionError("METEOR must not run when not asked for")

    monkeypatch.setattr(M, "_meteor_score", no_meteor)
    wrong = {1: GOOD[2], 2: GOOD[3], 3: GOOD[4], 4: GOOD[1]}
    scores, info = M.coco_caption_scores(wrong, REFS, metrics=("BLEU-4", "CIDEr"))
    assert set(scores) == {"BLEU-4", "CIDEr"}
    assert info["metrics_computed"] == ["BLEU-4", "CIDEr"]
    assert scores["CIDEr"] < good_scores[0]["CIDEr"]
    assert scores["BLEU-4"] < good_scores[0]["BLEU-4"]
    # The scorers' chatter must not reach stdout (callers print JSON as the last line).
    assert capfd.readouterr().out == ""


def _bleu1_by_hand(hyp: str, refs: list[str]) -> float:
    """Clipped unigram precision times brevity penalty, closest reference length."""
    h = hyp.split()
    ref_tokens = [r.split() for r in refs]
    max_ref = Counter()
    for r in ref_tokens:
        for w, c in Counter(r).items():
            max_ref[w] = max(max_ref[w], c)
    clipped = sum(min(c, max_ref[w]) for w, c in Counter(h).items())
    precision = clipped / len(h)
    r_len = min((abs(len(r) - len(h)), len(r)) for r in ref_tokens)[1]
    bp = 1.0 if len(h) > r_len else math.exp(1 - r_len / len(h))
    return precision * bp


def test_bleu1_matches_hand_computation():
    hyp = "red red red circle"
    refs = ["a red circle on top", "the red circle is very red here"]
    # red: min(3, 2) = 2, circle: 1 -> 3/4; closest reference has 5 words -> BP = exp(1 - 5/4).
    expected = 0.75 * math.exp(1 - 5 / 4)
    assert _bleu1_by_hand(hyp, refs) == pytest.approx(expected)
    scores, _ = M.coco_caption_scores({7: hyp}, {7: refs}, metrics=["BLEU-1"])
    assert scores == {"BLEU-1": pytest.approx(expected, abs=1e-6)}


def test_ids_must_match():
    preds = {i: c for i, c in GOOD.items() if i != 4}
    preds[99] = "a cat"
    with pytest.raises(ValueError, match=r"missing.*\[4\].*extra.*\[99\]"):
        M.coco_caption_scores(preds, REFS)
    with pytest.raises(ValueError, match="unknown metrics"):
        M.coco_caption_scores(GOOD, REFS, metrics=["BLEU"])
    with pytest.raises(ValueError, match="non-empty list"):
        M.coco_caption_scores({1: "a"}, {1: []})


def test_empty_predictions_do_not_crash(good_scores):
    # "" and a caption that is only punctuation (empty once tokenised), with METEOR if Java.
    preds = {**GOOD, 1: "", 2: " . "}
    scores, info = M.coco_caption_scores(preds, REFS)
    assert set(scores) == set(good_scores[0])
    for key, value in scores.items():
        assert math.isfinite(value) and 0.0 <= value < good_scores[0][key], key
    all_empty, _ = M.coco_caption_scores({i: "" for i in REFS}, REFS)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in all_empty.values())


def test_without_java_skips_meteor_and_tokenises_in_python(good_scores, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java anywhere
    assert not M.java_available()
    scores, info = M.coco_caption_scores(GOOD, REFS)
    assert "METEOR" not in scores
    assert info["skipped"] == {"METEOR": "java not found"}
    assert "METEOR" not in info["metrics_computed"]
    assert "Java" not in info["tokenizer"] and "PTB-like" in info["tokenizer"]
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    # These captions tokenise identically either way, so the numbers agree with the Java run.
    assert scores["CIDEr"] == pytest.approx(good_scores[0]["CIDEr"])
    with pytest.raises(RuntimeError, match="java"):
        M.coco_caption_scores(GOOD, REFS, meteor=True)


def test_meteor_false_and_java_available_patch(monkeypatch):
    monkeypatch.setattr(M, "java_available", lambda: False)
    scores, info = M.coco_caption_scores(GOOD, REFS, metrics=("METEOR", "ROUGE-L"))
    assert set(scores) == {"ROUGE-L"} and info["skipped"] == {"METEOR": "java not found"}
    monkeypatch.undo()
    scores, info = M.coco_caption_scores(GOOD, REFS, meteor=False, metrics=("METEOR", "BLEU-1"))
    assert set(scores) == {"BLEU-1"} and "meteor=False" in info["skipped"]["METEOR"]


CAPTIONS_FOR_TOKENISER = [
    "A man's dog, running -- fast!", "Hello   World...", "A small red circle and two blue squares.",
    "A black-and-white photo of a cat sitting on a laptop.", "Two people; one dog: a man's hat.",
    "Isn't it? They're here, we've, I'll I'd I'm cannot", "The clock reads 10:30 on a building's tower.",
    "Kids' toys on the floor", "a 3-d image of 1,000 people in the 1990s",
    "U.S. flag at 5 p.m.", "a man,woman and child", ".",
]


@needs_java
def test_python_tokeniser_matches_ptb_on_ordinary_captions():
    """Without Java, text.tokenize stands in for the PTBTokenizer: on ordinary captions they agree."""
    from captioner.text import tokenize

    ptb, name = M._tokenize_corpus({i: [c] for i, c in enumerate(CAPTIONS_FOR_TOKENISER)}, True)
    assert name == M.PTB_TOKENIZER_NAME
    for i, caption in enumerate(CAPTIONS_FOR_TOKENISER):
        assert " ".join(tokenize(caption)) == ptb[i][0], caption


# ---------------------------------------------------------------- nltk BLEU (tutorial comparison)


def test_nltk_bleu_keys_are_labelled_and_identical_captions_score_one():
    scores = M.nltk_corpus_bleu(GOOD, REFS)
    assert tuple(scores) == M.NLTK_BLEU_KEYS == ("nltk_BLEU-1", "nltk_BLEU-2", "nltk_BLEU-3", "nltk_BLEU-4")
    assert not set(scores) & set(M.METRIC_KEYS)  # never mistaken for the COCO scorer's BLEU
    assert all(type(v) is float for v in scores.values())
    assert scores == {k: pytest.approx(1.0, abs=1e-12) for k in M.NLTK_BLEU_KEYS}


def test_nltk_bleu1_matches_hand_computation():
    hyp = "red red red circle"
    refs = ["a red circle on top", "the red circle is very red here"]
    # Same case as test_bleu1_matches_hand_computation: 3/4 clipped, closest reference 5 words.
    scores = M.nltk_corpus_bleu({7: hyp}, {7: refs})
    assert scores["nltk_BLEU-1"] == pytest.approx(0.75 * math.exp(1 - 5 / 4), rel=1e-12)
    assert scores["nltk_BLEU-1"] == pytest.approx(_bleu1_by_hand(hyp, refs), rel=1e-12)
    # Bigrams: "red red" x2 (no reference has it), "red circle" (1) -> 1/3.
    assert scores["nltk_BLEU-2"] == pytest.approx(math.sqrt(0.75 * 1 / 3) * math.exp(1 - 5 / 4), rel=1e-12)


PARTIAL = {1: "a red circle to the left of a square", 2: "two green triangles below a yellow star",
           3: "a man riding a brown horse on the sand", 4: "a plate of rice and broccoli"}


def test_nltk_bleu_equals_pycocoevalcap_on_the_same_tokens(monkeypatch):
    # Without Java, coco_caption_scores tokenises with text.tokenize too: the same tokens on both
    # sides, predictions of 4+ words with matches at every order -> the two BLEUs agree.
    monkeypatch.setattr(M, "java_available", lambda: False)
    coco, info = M.coco_caption_scores(PARTIAL, REFS, metrics=[f"BLEU-{n}" for n in range(1, 5)])
    assert "PTB-like" in info["tokenizer"]
    nltk_scores = M.nltk_corpus_bleu(PARTIAL, REFS)
    assert 0.3 < coco["BLEU-4"] < 0.9
    for n in range(1, 5):
        assert nltk_scores[f"nltk_BLEU-{n}"] == pytest.approx(coco[f"BLEU-{n}"], rel=1e-7)


def test_nltk_bleu_counts_an_ngram_for_short_predictions(monkeypatch):
    # Two exact matches, of 5 and 3 words. pycocoevalcap: 2 of 2 4-grams match -> BLEU-4 = 1.
    # nltk counts max(1, 0) = 1 4-gram for the 3-word prediction -> p4 = 2/3, BLEU-4 = (2/3)^(1/4).
    preds = {1: "a red circle and square", 2: "a blue star"}
    refs = {1: ["a red circle and square"], 2: ["a blue star"]}
    monkeypatch.setattr(M, "java_available", lambda: False)
    coco, _ = M.coco_caption_scores(preds, refs, metrics=["BLEU-3", "BLEU-4"])
    assert coco["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    nltk_scores = M.nltk_corpus_bleu(preds, refs)
    assert nltk_scores["nltk_BLEU-3"] == pytest.approx(1.0)
    assert nltk_scores["nltk_BLEU-4"] == pytest.approx((2 / 3) ** 0.25, rel=1e-12)


def test_nltk_bleu_zero_matches_empty_and_errors(recwarn):
    assert M.nltk_corpus_bleu({1: "zebra"}, {1: ["a red circle"]}) == {k: 0.0 for k in M.NLTK_BLEU_KEYS}
    # an empty prediction, and one that is only punctuation
    empty = M.nltk_corpus_bleu({1: "", 2: "..."}, {1: REFS[1], 2: REFS[2]})
    assert empty == {k: 0.0 for k in M.NLTK_BLEU_KEYS}
    # No 4-gram match: nltk's unsmoothed BLEU-4 is ~0 (it uses sys.float_info.min), BLEU-1 is not.
    scores = M.nltk_corpus_bleu({1: "a circle red a"}, {1: ["a red circle"]})
    assert scores["nltk_BLEU-1"] == pytest.approx(0.75) and scores["nltk_BLEU-4"] < 1e-70
    assert not [w for w in recwarn if "counts of" in str(w.message)]  # nltk's warning is swallowed
    with pytest.raises(ValueError, match="missing"):
        M.nltk_corpus_bleu({1: "a"}, {1: ["a"], 2: ["b"]})
    with pytest.raises(ValueError, match="empty after tokenisation"):
        M.nltk_corpus_bleu({1: "a"}, {1: ["...", "!"]})
    with pytest.raises(TypeError):
        M.nltk_corpus_bleu({1: ["a"]}, {1: ["a"]})


def test_nltk_corpus_bleu_ignores_repeating_every_image():
    # The tutorial appends each image once per reference caption (5x); corpus BLEU sums counts,
    # so repeating every entry the same number of times leaves every score unchanged.
    refs = [[r.split() for r in REFS[i]] for i in REFS]
    hyps = [PARTIAL[i].split() for i in REFS]
    once = M._nltk_bleu_tokens(refs, hyps)
    five = M._nltk_bleu_tokens([r for r in refs for _ in range(5)], [h for h in hyps for _ in range(5)])
    assert five == once
