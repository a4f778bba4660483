"""Caption text handling: the tokenizer and the word vocabulary.

This module owns how caption text becomes tokens (``tokenize``) and how
tokens become integer ids and back (``Vocab``).  Everything that turns text
into ids -- dataset preparation, training, evaluation, serving -- goes
through here, so the special tokens and their ids are fixed in one place:

    <pad> = 0, <start> = 1, <end> = 2, <unk> = 3   (in every Vocab)

The tokenizer imitates the Stanford PTBTokenizer that pycocoevalcap runs
before scoring (lower-cased, Penn-Treebank splitting, punctuation tokens
removed) without needing Java or downloaded data, so that the words the
model is trained on are the words the COCO metrics compare.  The splitting
is NLTK's TreebankWordTokenizer; Unicode clean-up, lower-casing, sentence-
final periods and the punctuation removal are done here (see ``tokenize``).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:  # only for the annotation; text handling does not need torch
    import torch

log = logging.getLogger(__name__)

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

# --- Penn-Treebank splitting -------------------------------------------------
# The splitting itself is NLTK's TreebankWordTokenizer (a port of the Penn
# Treebank sed script; it needs no downloaded data).  A few small steps run
# on the lower-cased text before it, each for a case where NLTK alone would
# give other tokens than the previous tokenizer and pycocoevalcap's Java
# PTBTokenizer (bench/tokenizer_compare.py compares all three):
#
# 1. Runs of periods ("..", "....") become "..." and runs of hyphens ("---")
#    become "--": NLTK splits off only exactly "..." and "--", so
#    "a man---wearing" would give the token "-wearing".
# 2. A comma or colon right after a word is split off even before a digit
#    ("a dog,2 cats" -> "dog , 2"; NLTK would keep "dog,2").  Between digits
#    ("1,000", "10:30") it stays, as in NLTK.
# 3. Sentence-final periods.  NLTK treats its input as one sentence and
#    splits only the period at the very end of the string, so in "a dog. it
#    runs." it would keep "dog." whole.  Every word that ends in one period
#    (before any closing brackets or quotes) has it split off here, except
#    abbreviations ("mr.", "etc.", "u.s.", "a.m."), whose period belongs to
#    the word.  A lone " ." is then appended, so that NLTK's end-of-string
#    period rule splits only that and never an abbreviation's period ("in the
#    u.s." keeps "u.s."); "." is dropped as punctuation anyway.
# 4. Opening single quotes.  NLTK has no rule for them, so "'hello'" would
#    keep "'hello".  A quote opening a word is split off as "`", unless it
#    starts an elided word ('90s, 'em, 'tis, 'n) that PTB keeps whole.

# Abbreviations whose final period belongs to the word, as in the PTB
# tokenizer ("u.s." and "a.m." are handled by the pattern below).
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "jr", "sr", "st", "vs", "etc", "inc", "ltd", "co"})
_MULTI_DOT_ABBREV = re.compile(r"^(?:[^\W\d_]\.){2,}$")
# a whitespace-separated chunk: openers, the word, one period, closers
_PERIOD_CHUNK = re.compile(r"""^([(\[{<"'`]*)(.*[^.])\.([)\]}>"']*)$""")
_PRE_RULES = [  # steps 1 and 2
    (re.compile(r"\.{2,}"), " ... "),
    (re.compile(r"-{2,}"), " -- "),
    (re.compile(r"(?<=[^\d\s])[:,](?=\d)"), r" \g<0> "),
]
_OPENING_QUOTE = re.compile(
    r"(?<![^\s(\[{<])'(?!(?:s|m|d|t|ll|re|ve|n|em|tis|twas|cause)\b)(?=[^\W\d_])"
)


@functools.lru_cache(maxsize=1)
def _treebank() -> Any:
    # Imported on first use: importing nltk takes about a second, and most
    # users of this module (loading a checkpoint, serving) never tokenize.
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def _split_final_period(chunk: str) -> str:
    """"dog." -> "dog .", "(dog.)" -> "(dog .)"; abbreviations keep their period."""
    m = _PERIOD_CHUNK.match(chunk)
    if m is None:
        return chunk
    opener, word, closer = m.groups()
    if word in _ABBREVIATIONS or _MULTI_DOT_ABBREV.match(word + "."):
        return chunk
    return f"{opener}{word} .{closer}"


def _normalise_unicode(text: str) -> str:
    # NFKC folds compatibility forms (full-width letters, ligatures, "…",
    # non-breaking spaces) into their plain equivalents.
    text = unicodedata.normalize("NFKC", text).translate(_UNICODE_MAP)
    # Control and format characters (tabs, newlines, bidi marks) become
    # spaces so they separate words rather than join them.
    return "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case PTB-style tokens, punctuation removed.

    Unicode clean-up and lower-casing, the small steps described above,
    NLTK's TreebankWordTokenizer, then the tokens pycocoevalcap's
    PTBTokenizer removes (``PUNCTUATION``) are dropped.

    >>> tokenize("A man's dog doesn't bark, really.")
    ['a', 'man', "'s", 'dog', 'does', "n't", 'bark', 'really']
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize() expects a str, got {type(text).__name__}")
    text = _normalise_unicode(text).lower()
    for pattern, repl in _PRE_RULES:
        text = pattern.sub(repl, text)
    text = " ".join(_split_final_period(chunk) for chunk in text.split()) + " ."
    text = _OPENING_QUOTE.sub(" ` ", text)
    return [tok for tok in _treebank().tokenize(text) if tok not in PUNCTUATION]


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
        log.info(
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
