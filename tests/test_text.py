"""Tests for captioner.text: tokenizer and Vocab."""

import pickle

import pytest
import torch

from captioner.text import (
    END,
    END_ID,
    PAD,
    PAD_ID,
    START,
    START_ID,
    UNK,
    UNK_ID,
    Vocab,
    tokenize,
)


# --- tokenize ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A Man riding a HORSE.", ["a", "man", "riding", "a", "horse"]),
        ("A dog, a cat; and a bird!", ["a", "dog", "a", "cat", "and", "a", "bird"]),
        ("Is it a dog?", ["is", "it", "a", "dog"]),
        ("The man's hat", ["the", "man", "'s", "hat"]),
        ("The man's.", ["the", "man", "'s"]),
        ("don't", ["do", "n't"]),
        ("It can't, won't; they'll go", ["it", "ca", "n't", "wo", "n't", "they", "'ll", "go"]),
        ("we're here and I've been", ["we", "'re", "here", "and", "i", "'ve", "been"]),
        ("I cannot", ["i", "can", "not"]),
        ("  A\tdog \n jumps  ", ["a", "dog", "jumps"]),
        ('he said "no" (twice) -- ok...', ["he", "said", "no", "twice", "ok"]),
        ("the dogs' bowls", ["the", "dogs", "bowls"]),
        ("'Hello' world", ["hello", "world"]),
        ("1,000 people at 10:30 a.m. in the U.S.", ["1,000", "people", "at", "10:30", "a.m.", "in", "the", "u.s."]),
        ("a 3.5 inch black-and-white photo", ["a", "3.5", "inch", "black-and-white", "photo"]),
        ("- - -- ---", []),
        ("", []),
        ("...", []),
    ],
)
def test_tokenize(text, expected):
    assert tokenize(text) == expected


def test_tokenize_unicode():
    # Typographic apostrophes/quotes/dashes/ellipsis behave like ASCII ones.
    assert tokenize("“Don’t” — it’s fine…") == ["do", "n't", "it", "'s", "fine"]
    # Accents are kept and lower-cased; compatibility forms are folded.
    assert tokenize("Café ÉCOLE ﬁsh") == ["café", "école", "fish"]
    # Non-breaking and zero-width spaces do not glue or split words.
    assert tokenize("a\u00a0dog\u200bgie") == ["a", "doggie"]


def test_tokenize_is_idempotent_on_joined_output():
    # Generated captions are joined with spaces and re-tokenized by the
    # evaluation tokenizer; that must give the same tokens back.
    for text in ["The man's dog doesn't bark.", "Two people, and a dog's toy!", "it's 10:30 a.m."]:
        toks = tokenize(text)
        assert tokenize(" ".join(toks)) == toks


def test_tokenize_rejects_non_str():
    with pytest.raises(TypeError):
        tokenize(["a", "list"])


# --- Vocab ------------------------------------------------------------------


def test_specials_have_fixed_ids():
    v = Vocab([PAD, START, END, UNK])
    assert [v.stoi[t] for t in (PAD, START, END, UNK)] == [PAD_ID, START_ID, END_ID, UNK_ID] == [0, 1, 2, 3]


def test_build_min_count_and_order():
    caps = [["a", "dog"], ["a", "cat"], ["a", "dog"], ["b", "zebra"], ["cat", "b"]]
    v = Vocab.build(caps, min_count=2)
    # specials, then count desc (a:3), then alphabetical among ties (b, cat, dog: 2)
    assert v.itos == [PAD, START, END, UNK, "a", "b", "cat", "dog"]
    assert "zebra" not in v and "dog" in v
    assert len(v) == 8
    assert Vocab.build(caps, min_count=1).itos[-1] == "zebra"
    # Deterministic: input order does not matter.
    assert Vocab.build(list(reversed(caps)), min_count=2) == v


def test_build_ignores_special_tokens_in_text_and_validates():
    v = Vocab.build([["<unk>", "a"], ["<pad>", "a"]], min_count=1)
    assert v.itos == [PAD, START, END, UNK, "a"]
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build([["a"]], min_count=0)
    with pytest.raises(TypeError, match="token lists"):
        Vocab.build(["a dog"], min_count=1)


def test_encode_decode_round_trip():
    v = Vocab.build([tokenize("a dog on a couch")] * 5)
    ids = v.encode(tokenize("A dog on a couch."))
    assert ids[0] == START_ID and ids[-1] == END_ID
    assert v.decode(ids) == "a dog on a couch"
    assert v.decode_tokens(ids) == ["a", "dog", "on", "a", "couch"]


def test_encode_unknown_and_truncation():
    v = Vocab([PAD, START, END, UNK, "a", "dog"])
    assert v.encode(["a", "zebra", "dog"]) == [START_ID, 4, UNK_ID, 5, END_ID]
    assert v.encode(["a", "dog", "a", "dog"], max_len=2) == [START_ID, 4, 5, END_ID]
    assert v.encode(["a"], max_len=0) == [START_ID, END_ID]
    assert v.encode([]) == [START_ID, END_ID]
    assert v.decode(v.encode(["a", "zebra"])) == "a <unk>"
    with pytest.raises(ValueError, match="max_len"):
        v.encode(["a"], max_len=-1)


def test_decode_stops_at_end_and_skips_pad_start():
    v = Vocab([PAD, START, END, UNK, "a", "dog"])
    assert v.decode([START_ID, 4, PAD_ID, 5, END_ID, 4, 4]) == "a dog"
    assert v.decode(torch.tensor([START_ID, 5, END_ID, PAD_ID])) == "dog"
    assert v.decode([]) == ""
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.decode([START_ID, 99])


def test_state_dict_round_trip(tmp_path):
    v = Vocab.build([["a", "b", "b"]], min_count=1)
    state = v.state_dict()
    assert state == {"itos": v.itos} and type(state["itos"]) is list
    path = tmp_path / "vocab.pt"
    torch.save({"vocab": state}, path)
    loaded = torch.load(path, weights_only=True)["vocab"]
    v2 = Vocab.from_state_dict(loaded)
    assert v2 == v and v2.stoi == v.stoi
    assert pickle.loads(pickle.dumps(v)) == v
    with pytest.raises(ValueError, match="'itos'"):
        Vocab.from_state_dict({"words": []})


@pytest.mark.parametrize(
    "itos, match",
    [
        ([], "must begin with the special tokens"),
        ([START, PAD, END, UNK], "must begin with the special tokens"),
        ([PAD, START, END], "must begin with the special tokens"),
        ([PAD, START, END, UNK, "a", "a"], "'a' twice"),
        ([PAD, START, END, UNK, "two words"], r"itos\[4\]"),
        ([PAD, START, END, UNK, ""], r"itos\[4\]"),
    ],
)
def test_invalid_itos(itos, match):
    with pytest.raises(ValueError, match=match):
        Vocab(itos)
