"""Caption metrics on text: the COCO caption scores, and BLEU as nltk computes it.

This module owns:

* `coco_caption_scores`: BLEU-1..4, METEOR, ROUGE-L and CIDEr computed by pycocoevalcap's own
  scorers (instantiated one by one, never `COCOEvalCap`, which would also start SPICE), on
  pycocoevalcap's 0-1 scale (CIDEr can exceed 1). Both sides are tokenised with pycocoevalcap's
  PTBTokenizer (Java); without Java a pure-Python PTB-like tokenisation is used and METEOR is
  skipped. The second return value records how the numbers were made.
* `nltk_corpus_bleu`: BLEU-1..4 as nltk's corpus_bleu computes them, labelled "nltk_BLEU-n",
  to compare with tutorials (not a COCO metric).

The shapes world's measurements (scene accuracy, grounding, relations), which need the objects
of every image, are in captioner.scene_metrics.

No IO at import. The METEOR scorer is a long-lived Java process: it is started on first use,
kept for later calls (validation runs every epoch) and stopped at exit or by `close_meteor()`.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import io
import logging
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

PTB_TOKENIZER_NAME = "PTBTokenizer (Stanford CoreNLP 3.4.1, Java)"
_TEXT_TOKENIZER_NAME = "captioner.text.tokenize (pure-Python PTB-like)"


# --------------------------------------------------------------------------------------------
# Java and tokenisation
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _java_runs(java_path: str) -> bool:
    # Cached per resolved path: a broken `java` shim on PATH (e.g. macOS's stub) must count as
    # "no Java", but we do not want to spawn a JVM on every evaluation call.
    try:
        proc = subprocess.run([java_path, "-version"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("java at %s does not run: %s", java_path, exc)
        return False
    return proc.returncode == 0


def java_available() -> bool:
    """True when a working `java` is on PATH (PTBTokenizer and METEOR need it)."""
    path = shutil.which("java")
    return path is not None and _java_runs(path)


def _pycocoevalcap_version() -> str:
    try:
        from importlib.metadata import version

        return version("pycocoevalcap")
    except Exception:  # metadata missing (vendored copy): still say which library it was
        return "unknown"


def _python_tokenizer() -> tuple[Callable[[str], list[str]], str]:
    # Without Java: the project's own PTB-like tokenizer (the one the vocabulary is built with).
    from .text import tokenize

    return tokenize, _TEXT_TOKENIZER_NAME


def _one_line(text: str) -> str:
    # PTBTokenizer runs with -preserveLines: any line break inside a caption (\r, \u2028, ...)
    # would shift every later caption onto the wrong image.
    return " ".join(text.split())


def _tokenize_corpus(
    captions: Mapping[Any, Sequence[str]], use_java: bool
) -> tuple[dict[Any, list[str]], str]:
    """Tokenise {key: [caption, ...]} into {key: ["tok tok ...", ...]} (one Java start for all)."""
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        payload = {k: [{"caption": _one_line(c)} for c in caps] for k, caps in captions.items()}
        out = PTBTokenizer().tokenize(payload)
        result = {k: [_one_line(s) for s in out.get(k, [])] for k in captions}
        bad = [k for k, caps in captions.items() if len(result[k]) != len(caps)]
        if bad:  # PTBTokenizer pairs output lines with inputs by position: fail loudly on drift
            raise RuntimeError(f"PTBTokenizer returned the wrong number of lines for {bad[:5]}")
        return result, PTB_TOKENIZER_NAME
    tokenize, name = _python_tokenizer()
    return {k: [" ".join(tokenize(c)) for c in caps] for k, caps in captions.items()}, name


# --------------------------------------------------------------------------------------------
# METEOR: one cached Java process
# --------------------------------------------------------------------------------------------

_meteor_lock = threading.Lock()
_meteor_scorer: Any = None
_meteor_atexit_registered = False


def _discard_meteor_locked() -> None:
    global _meteor_scorer
    scorer, _meteor_scorer = _meteor_scorer, None
    if scorer is None:
        return
    # pycocoevalcap's Meteor.__del__ takes its own lock; if compute_score raised while holding
    # it, garbage collection would deadlock. Release it and stop the JVM ourselves.
    if scorer.lock.locked():
        with contextlib.suppress(RuntimeError):
            scorer.lock.release()
    proc = scorer.meteor_p
    with contextlib.suppress(Exception):
        proc.stdin.close()
    with contextlib.suppress(Exception):
        proc.kill()
        proc.wait(timeout=10)


def close_meteor() -> None:
    """Stop the cached METEOR Java process, if one is running (a later call starts a new one)."""
    with _meteor_lock:
        _discard_meteor_locked()


def _meteor_score(gts: dict[Any, list[str]], res: dict[Any, list[str]]) -> float:
    global _meteor_scorer, _meteor_atexit_registered
    # METEOR's protocol is "|||"-separated lines; pycocoevalcap strips "|||" from hypotheses only.
    gts = {k: [r.replace("|||", " ") for r in v] for k, v in gts.items()}
    res = {k: [h.replace("|||", " ") for h in v] for k, v in res.items()}
    with _meteor_lock:
        try:
            if _meteor_scorer is None or _meteor_scorer.meteor_p.poll() is not None:
                from pycocoevalcap.meteor.meteor import Meteor

                log.info("starting METEOR (Java)")
                _meteor_scorer = Meteor()
                if not _meteor_atexit_registered:
                    atexit.register(close_meteor)
                    _meteor_atexit_registered = True
            score, _ = _meteor_scorer.compute_score(gts, res)
        except Exception as exc:
            _discard_meteor_locked()
            raise RuntimeError(f"METEOR scorer failed: {exc!r}") from exc
    return float(score)


# --------------------------------------------------------------------------------------------
# COCO caption scores
# --------------------------------------------------------------------------------------------

def _resolve_metrics(metrics: Iterable[str] | None) -> list[str]:
    if metrics is None:
        return list(METRIC_KEYS)
    if isinstance(metrics, str):  # a lone "CIDEr" would otherwise iterate its letters
        metrics = [metrics]
    asked = list(metrics)
    unknown = [m for m in asked if m not in METRIC_KEYS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(METRIC_KEYS)}")
    if not asked:
        raise ValueError("metrics is empty")
    return [m for m in METRIC_KEYS if m in asked]


def _check_ids(predictions: Mapping, references: Mapping) -> None:
    pred_ids, ref_ids = set(predictions), set(references)
    if pred_ids != ref_ids:
        missing = sorted(ref_ids - pred_ids, key=repr)
        extra = sorted(pred_ids - ref_ids, key=repr)
        raise ValueError(
            "predictions must cover exactly the reference ids: "
            f"{len(missing)} missing (e.g. {missing[:10]}), {len(extra)} extra (e.g. {extra[:10]})"
        )
    if not ref_ids:
        raise ValueError("no images to score")


def coco_caption_scores(
    predictions: dict[int, str],
    references: dict[int, list[str]],
    *,
    meteor: bool | None = None,
    metrics: Iterable[str] | None = None,
) -> tuple[dict[str, float], dict]:
    """Corpus-level COCO caption metrics with pycocoevalcap's scorers.

    predictions: image id -> generated caption (raw text; "" allowed, it scores 0).
    references: image id -> reference captions (raw text). The id sets must be equal.
    meteor: None = compute METEOR when Java is available; True = require it (RuntimeError
        without Java); False = never.
    metrics: subset of METRIC_KEYS to compute (default all); only the scorers needed run.

    Returns (scores, info): scores maps each computed key of METRIC_KEYS to a float;
    info = {"scorer", "tokenizer", "metrics_computed", "skipped", "n_images",
    "references_per_image"} (+ "empty_references_dropped" when references tokenised to nothing).
    Note that CIDEr's idf is computed over the scored corpus: on a single image it is always 0.
    """
    wanted = _resolve_metrics(metrics)
    if meteor is True and metrics is not None and "METEOR" not in wanted:
        raise ValueError("meteor=True contradicts a metrics= selection without METEOR")
    _check_ids(predictions, references)
    for img_id, caption in predictions.items():
        if not isinstance(caption, str):
            raise TypeError(f"prediction for {img_id!r} is {type(caption).__name__}, not str")
    for img_id, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references for {img_id!r} must be a non-empty list of str")

    have_java = java_available()
    skipped: dict[str, str] = {}
    if "METEOR" in wanted:
        if meteor is False:
            skipped["METEOR"] = "disabled (meteor=False)"
        elif not have_java:
            if meteor is True:
                raise RuntimeError("METEOR requested (meteor=True) but java was not found on PATH")
            skipped["METEOR"] = "java not found"
    compute = [m for m in wanted if m not in skipped]
    if not have_java:
        log.warning("java not found: pure-Python PTB-like tokenisation, METEOR skipped")

    ids = list(references)
    corpus: dict[Any, list[str]] = {("res", i): [predictions[i]] for i in ids}
    corpus.update({("gts", i): list(references[i]) for i in ids})

    captured = io.StringIO()
    scores: dict[str, float] = {}
    # The scorers print progress ("tokenization...", BLEU ratios) to stdout; callers print JSON
    # as their last stdout line, so swallow it here and log it instead.
    with contextlib.redirect_stdout(captured):
        tokenized, tokenizer_name = _tokenize_corpus(corpus, use_java=have_java)
        res = {i: tokenized[("res", i)] for i in ids}
        gts: dict[Any, list[str]] = {}
        dropped = 0
        for i in ids:
            refs = [r for r in tokenized[("gts", i)] if r]
            dropped += len(tokenized[("gts", i)]) - len(refs)
            if not refs:
                raise ValueError(f"all references for image {i!r} are empty after tokenisation")
            gts[i] = refs
        # Empty hypotheses (empty caption, or only punctuation) are passed on as "": every
        # pycocoevalcap 1.2 scorer scores that 0 (the tests pin this), whereas a placeholder
        # token would change BLEU's corpus length statistics. Empty *references* are what
        # crash CIDEr, hence the check above.
        n_empty = sum(1 for i in ids if not res[i][0])
        if n_empty:
            log.info("%d of %d predictions are empty after tokenisation", n_empty, len(ids))

        if any(m.startswith("BLEU-") for m in compute):
            from pycocoevalcap.bleu.bleu import Bleu

            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(1, 5):
                if f"BLEU-{n}" in compute:
                    scores[f"BLEU-{n}"] = float(bleu[n - 1])
        if "METEOR" in compute:
            scores["METEOR"] = _meteor_score(gts, res)
        if "ROUGE-L" in compute:
            from pycocoevalcap.rouge.rouge import Rouge

            scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        if "CIDEr" in compute:
            from pycocoevalcap.cider.cider import Cider

            scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if captured.getvalue().strip():
        log.debug("scorer output: %s", captured.getvalue().strip())

    info: dict[str, Any] = {
        "scorer": f"pycocoevalcap {_pycocoevalcap_version()}",
        "tokenizer": tokenizer_name,
        "metrics_computed": [m for m in METRIC_KEYS if m in scores],
        "skipped": skipped,
        "n_images": len(ids),
        "references_per_image": sum(len(gts[i]) for i in ids) / len(ids),
    }
    if dropped:
        info["empty_references_dropped"] = dropped
        log.warning("%d references were empty after tokenisation and were dropped", dropped)
    log.info("caption scores (%d images): %s", len(ids), scores)
    return scores, info


# --------------------------------------------------------------------------------------------
# BLEU as nltk computes it (to compare with tutorials; not a COCO metric)
# --------------------------------------------------------------------------------------------

NLTK_BLEU_KEYS = ("nltk_BLEU-1", "nltk_BLEU-2", "nltk_BLEU-3", "nltk_BLEU-4")
# BLEU-n: the geometric mean of the 1..n-gram precisions, as pycocoevalcap's BLEU-n.
NLTK_BLEU_WEIGHTS = ((1.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.0, 0.0), (1 / 3, 1 / 3, 1 / 3, 0.0), (0.25,) * 4)


def _nltk_bleu_tokens(
    list_of_references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]]
) -> dict[str, float]:
    """nltk_BLEU-1..4 of already tokenised text: one hypothesis and its references per entry."""
    import warnings

    from nltk.translate.bleu_score import corpus_bleu

    with warnings.catch_warnings():
        # An n-gram order without a single match makes nltk warn (once per call) and use
        # sys.float_info.min as that precision; the score is then ~0, which is what we report.
        warnings.filterwarnings("ignore", message=r"\s*The hypothesis contains 0 counts", category=UserWarning)
        scores = corpus_bleu([list(map(list, refs)) for refs in list_of_references],
                             [list(h) for h in hypotheses], weights=list(NLTK_BLEU_WEIGHTS))
    return {key: float(s) for key, s in zip(NLTK_BLEU_KEYS, scores)}


def nltk_corpus_bleu(predictions: dict[Any, str], references: dict[Any, list[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 computed with ``nltk.translate.bleu_score.corpus_bleu``, labelled "nltk_BLEU-n".

    Reported next to pycocoevalcap's BLEU (``coco_caption_scores``) so that numbers from tutorials
    that use nltk can be compared; it is not the COCO metric and must not be reported as "BLEU-4".

    How it is computed: both sides are tokenised with ``captioner.text.tokenize`` (the project's
    tokenizer, the one the vocabulary is built with: nltk's TreebankWordTokenizer, lower-cased,
    punctuation removed as pycocoevalcap does). References that tokenise to nothing are dropped
    (ValueError if all of an image's are). Each image is one entry of ``corpus_bleu``: its
    prediction against all its references, once (no duplication). One ``corpus_bleu`` call with
    weights (1,0,0,0), (1/2,1/2,0,0), (1/3,1/3,1/3,0), (1/4,1/4,1/4,1/4), no smoothing
    (``SmoothingFunction().method0``), ``auto_reweigh=False``. nltk's corpus BLEU is Papineni's:
    clipped n-gram matches and n-gram counts are summed over the corpus before dividing, and the
    brevity penalty, exp(1 - r/c) when c < r (else 1), uses c = total prediction length and
    r = the sum over images of the reference length closest to the prediction's (ties: the
    shorter).

    Compared with pycocoevalcap's BLEU (``Bleu(4)``, option "closest"), the definition is the
    same (summed counts, closest reference length per image, geometric mean of 1..n precisions);
    the numbers differ only by
      * tokens: pycocoevalcap's BLEU in ``coco_caption_scores`` scores Java PTBTokenizer output,
        this function ``tokenize()`` output. These agree on ordinary captions, but not
        everywhere: pycocoevalcap keeps "-lrb-"/"-rrb-" for brackets and "?!"-style runs, which
        ``tokenize()`` drops (bench/tokenizer_compare.py lists the differences);
      * short predictions: nltk counts at least one n-gram per prediction and order
        (``max(1, count)``), so a 3-word prediction adds 1 to the 4-gram denominator; pycocoevalcap
        counts ``max(0, len - n + 1)``, i.e. 0;
      * an n-gram order with no match in the whole corpus: nltk uses ``sys.float_info.min`` as
        its precision, so BLEU-n for n >= that order is effectively 0 (BLEU-4 ~1e-77), and every
        score is exactly 0.0 when no unigram matches; pycocoevalcap uses
        (0 + 1e-15) / (count + 1e-9), a small non-zero BLEU (BLEU-4 ~1e-5 when only the
        4-grams never match);
      * rounding: pycocoevalcap adds 1e-15 / 1e-9 to every ratio (relative effect ~1e-9) and
        applies a brevity penalty of ~1 - 1e-9/c even when c == r (nltk: exactly 1).

    Compared with the most-used PyTorch Show-Attend-Tell tutorial (sgrvinod's
    a-PyTorch-Tutorial-to-Image-Captioning, ``eval.py``, whose "test BLEU-4 33.29" is
    ``corpus_bleu(references, hypotheses)`` x 100): the tutorial scores word ids built from
    Karpathy's pre-tokenised ``tokens`` (not PTB-tokenised), keeps ``<unk>`` in both hypothesis
    and references (a generated ``<unk>`` matches any reference word that was rare in training),
    keeps only 5 references per image (sampled when COCO has more), and appends every image once
    per reference caption, i.e. 5 times; that duplication scales every sum by 5 and so does not
    change corpus BLEU. Its brevity penalty is nltk's, with the closest reference length, as
    here and as in pycocoevalcap (``Bleu.compute_score`` passes option "closest"). This function
    uses real words (no ``<unk>``), all references and the project's tokens, and reports 0-1
    (not x 100).
    """
    _check_ids(predictions, references)
    from .text import tokenize

    hypotheses: list[list[str]] = []
    list_of_references: list[list[list[str]]] = []
    for img_id in references:
        caption, refs = predictions[img_id], references[img_id]
        if not isinstance(caption, str):
            raise TypeError(f"prediction for {img_id!r} is {type(caption).__name__}, not str")
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references for {img_id!r} must be a non-empty list of str")
        ref_tokens = [t for t in map(tokenize, refs) if t]
        if not ref_tokens:
            raise ValueError(f"all references for image {img_id!r} are empty after tokenisation")
        hypotheses.append(tokenize(caption))
        list_of_references.append(ref_tokens)
    return _nltk_bleu_tokens(list_of_references, hypotheses)
