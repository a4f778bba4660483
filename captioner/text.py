"""Caption text handling: the tokenizer and the word vocabulary.

This module owns how caption text becomes tokens (``tokenize``) and how
tokens become integer ids and back (``Vocab``).  Everything that turns text
into ids -- dataset preparation, training, evaluation, serving -- goes
through here, so the special tokens and their ids are fixed in one place:

    <pad> = 0, <start> = 1, <end> = 2, <unk> = 3   (in every Vocab)

The tokenizer imitates the Stanford PTBTokenizer that pycocoevalcap runs
before scoring (lower-cased, Penn-Treebank splitting, punctuation tokens
removed) without needing Java or downloaded data, so that the words the
model is trained on are the words the COCO metrics compare.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:  # only for the annotation; text handling does not need torch
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "PAD",
    "START",
    "END",
    "UNK",
    "PAD_ID",
    "START_ID",
    "END_ID",
    "UNK_ID",
    "SPECIALS",
    "PUNCTUATION",
    "tokenize",
    "Vocab",
]

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
SPECIALS: tuple[str, ...] = (PAD, START, END, UNK)

# The tokens pycocoevalcap's PTBTokenizer throws away after tokenizing
# (pycocoevalcap/tokenizer/ptbtokenizer.py, PUNCTUATIONS), compared in lower
# case because we lower-case first.  The raw bracket characters are added
# because we never escape them to -LRB- etc. the way the Java tokenizer does.
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


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case PTB-style tokens, punctuation removed.

    >>> tokenize("A man's dog doesn't bark, really.")
    ['a', 'man', "'s", 'dog', 'does', "n't", 'bark', 'really']
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize() expects a str, got {type(text).__name__}")
    text = " " + _normalise_unicode(text).lower() + " "
    for pattern, repl in _PUNCT_RULES:
        text = pattern.sub(repl, text)
    text = " " + " ".join(t for raw in text.split() for t in _split_period(raw)) + " "
    for pattern, repl in _CLITIC_RULES:
        text = pattern.sub(repl, text)
    return [tok for tok in text.split() if tok not in PUNCTUATION]


class Vocab:
    """Bidirectional word <-> id mapping with fixed special tokens.

    ``itos[i]`` is the word with id ``i``; ids 0..3 are always
    ``<pad> <start> <end> <unk>``.
    """

    def __init__(self, itos: Sequence[str]) -> None:
        itos = list(itos)
        if len(itos) < len(SPECIALS) or tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(
                f"Vocab itos must begin with the special tokens {list(SPECIALS)} in that order "
                f"(ids 0..3); got {itos[: len(SPECIALS)]!r}"
            )
        seen: dict[str, int] = {}
        for i, word in enumerate(itos):
            # Whitespace inside a word would make decode() output that does not
            # round-trip through tokenize(), so refuse it here.
            if not isinstance(word, str) or not word or any(ch.isspace() for ch in word):
                raise ValueError(f"Vocab itos[{i}] = {word!r} is not a non-empty word without whitespace")
            if word in seen:
                raise ValueError(f"Vocab itos has {word!r} twice (ids {seen[word]} and {i})")
            seen[word] = i
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = seen

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 5) -> "Vocab":
        """Build from tokenised captions, keeping words seen >= ``min_count`` times.

        Order is deterministic (specials, then count descending, then
        alphabetical) so the same data always gives the same ids.
        """
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
        counts: Counter[str] = Counter()
        for tokens in captions:
            if isinstance(tokens, str):
                # A bare string would be counted character by character.
                raise TypeError("Vocab.build expects token lists (use tokenize()), got a str")
            counts.update(tokens)
        for special in SPECIALS:
            counts.pop(special, None)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        logger.info(
            "vocabulary: %d of %d distinct words kept (min_count=%d)", len(kept), len(counts), min_count
        )
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """``[<start>] + ids + [<end>]``; unknown words -> ``<unk>``.

        ``max_len`` caps the number of words (the result then has at most
        ``max_len + 2`` ids); ``None`` means no cap.
        """
        if isinstance(tokens, str):
            raise TypeError("Vocab.encode expects a token list (use tokenize()), got a str")
        if max_len is not None:
            if max_len < 0:
                raise ValueError(f"max_len must be >= 0 or None, got {max_len}")
            tokens = tokens[:max_len]
        stoi = self.stoi
        return [START_ID] + [stoi.get(t, UNK_ID) for t in tokens] + [END_ID]

    def decode_tokens(self, ids: Sequence[int] | "torch.Tensor") -> list[str]:
        """Words for ``ids``, stopping at ``<end>`` and skipping ``<start>``/``<pad>``."""
        # .tolist() accepts torch tensors and numpy arrays without importing either.
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        words: list[str] = []
        n = len(self.itos)
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (START_ID, PAD_ID):
                continue
            if not 0 <= i < n:
                raise ValueError(f"id {i} is outside the vocabulary (size {n})")
            words.append(self.itos[i])
        return words

    def decode(self, ids: Sequence[int] | "torch.Tensor") -> str:
        """Space-joined words for ``ids`` (see ``decode_tokens``)."""
        return " ".join(self.decode_tokens(ids))

    def state_dict(self) -> dict[str, Any]:
        """Plain-python state, loadable with ``torch.load(weights_only=True)``."""
        return {"itos": list(self.itos)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Vocab":
        if not isinstance(state, dict) or "itos" not in state:
            raise ValueError("Vocab state must be a dict with key 'itos' (as written by Vocab.state_dict())")
        return cls(state["itos"])
