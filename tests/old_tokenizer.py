"""The PREVIOUS pure-Python tokenizer, frozen for comparison (not used by the project).

Until the switch to ``nltk.tokenize.TreebankWordTokenizer``, ``captioner/text.py`` split text
with the hand-ported Penn-Treebank rules below. They are copied verbatim from
``git show 18581876:captioner/text.py`` (with the Unicode clean-up and PUNCTUATION it used, so
that later edits to text.py cannot change this reference) and are used only by
``tests/test_text.py`` and ``bench/tokenizer_compare.py`` to show that the new tokenizer
gives the same tokens, or to list where it does not.
"""
from __future__ import annotations

import re
import unicodedata

__all__ = ["old_tokenize", "PUNCTUATION"]

PUNCTUATION: frozenset[str] = frozenset(
    t.lower()
    for t in (
        "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
        ".", "?", "!", ",", ":", "-", "--", "...", ";",
        "(", ")", "{", "}", "[", "]", '"',
    )
)

# --- unicode clean-up -------------------------------------------------------
# Typographic quotes and dashes are mapped to ASCII so that "don’t" splits
# like "don't" and "“dog”" loses its quotes like '"dog"'.
_UNICODE_MAP = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
        "\u2032": "'", "\u00b4": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
        "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-",
        "\u2212": "-", "\u2014": " -- ", "\u2015": " -- ",
        # zero-width characters would otherwise glue or split words invisibly
        "\u200b": None, "\u200c": None, "\u200d": None, "\u2060": None, "\ufeff": None,
    }
)

# --- Penn-Treebank style splitting ------------------------------------------
# Rules follow NLTK's TreebankWordTokenizer (itself a port of the PTB sed
# script), run on lower-cased text padded with spaces.  They run in two
# passes with sentence-final periods split off in between, because the
# clitic rules need "man's." to have become "man's ." first.
_PUNCT_RULES: list[tuple[re.Pattern[str], str]] = [
    # double quotes: they are dropped later, so only need to stand alone
    (re.compile(r'"'), ' " '),
    # a single quote opening a word ('hello') is a quote, unless it starts an
    # elided word ('90s, 'em, 'tis, 'n') that the PTB tokenizer keeps whole
    (
        re.compile(r"(?<![^\s(\[{<])'(?!(?:s|m|d|t|ll|re|ve|n|em|tis|twas|cause)\b)(?=[^\W\d_])"),
        " ` ",
    ),
    # ellipses and dash runs go before the single-character rules
    (re.compile(r"\.{2,}"), " ... "),
    (re.compile(r"--+"), " -- "),
    # commas and colons, except inside numbers (1,000 / 10:30)
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"(\D)([:,])"), r"\1 \2 "),
    (re.compile(r"[;@#$%&?!]"), r" \g<0> "),
    (re.compile(r"[\]\[(){}<>]"), r" \g<0> "),
    # a quote closing a word (dogs' / 'hello')
    (re.compile(r"([^'\s])' "), r"\1 ' "),
]
_CLITIC_RULES: list[tuple[re.Pattern[str], str]] = [
    # man's -> man 's, don't -> do n't, we'll -> we 'll
    (re.compile(r"([^'\s])('s|'m|'d) "), r"\1 \2 "),
    (re.compile(r"([^'\s])('ll|'re|'ve|n't) "), r"\1 \2 "),
    # PTB splits these fused forms too
    (re.compile(r"\b(can)(not)\b"), r"\1 \2"),
    (re.compile(r"\b(d)('ye)\b"), r"\1 \2"),
    (re.compile(r"\b(gim)(me)\b"), r"\1 \2"),
    (re.compile(r"\b(gon)(na)\b"), r"\1 \2"),
    (re.compile(r"\b(got)(ta)\b"), r"\1 \2"),
    (re.compile(r"\b(lem)(me)\b"), r"\1 \2"),
    (re.compile(r"\b(wan)(na)(?=\s)"), r"\1 \2"),
    (re.compile(r" ('t)(is|was)\b"), r" \1 \2"),
]

# Abbreviations whose final period belongs to the word, as in the PTB
# tokenizer ("u.s." and "a.m." are handled by the pattern below).
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "jr", "sr", "st", "vs", "etc", "inc", "ltd", "co"})
_MULTI_DOT_ABBREV = re.compile(r"^(?:[^\W\d_]\.){2,}$")
_TRAILING_PERIOD = re.compile(r"^(.*[^.])\.$")


def _normalise_unicode(text: str) -> str:
    # NFKC folds compatibility forms (full-width letters, ligatures, "…",
    # non-breaking spaces) into their plain equivalents.
    text = unicodedata.normalize("NFKC", text).translate(_UNICODE_MAP)
    # Control and format characters (tabs, newlines, bidi marks) become
    # spaces so they separate words rather than join them.
    return "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)


def _split_period(token: str) -> list[str]:
    """Split a sentence-final period off a word ("dog." -> "dog", ".")."""
    m = _TRAILING_PERIOD.match(token)
    if m is None:
        return [token]
    word = m.group(1)
    if word in _ABBREVIATIONS or _MULTI_DOT_ABBREV.match(token):
        return [token]
    return [word, "."]


def old_tokenize(text: str) -> list[str]:
    """The previous ``captioner.text.tokenize`` (lower-case PTB-style tokens, punctuation removed)."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize() expects a str, got {type(text).__name__}")
    text = " " + _normalise_unicode(text).lower() + " "
    for pattern, repl in _PUNCT_RULES:
        text = pattern.sub(repl, text)
    text = " " + " ".join(t for raw in text.split() for t in _split_period(raw)) + " "
    for pattern, repl in _CLITIC_RULES:
        text = pattern.sub(repl, text)
    return [tok for tok in text.split() if tok not in PUNCTUATION]
