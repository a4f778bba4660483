"""bench/relation_probe.py: its reading of the world's relation claims, and the probe on a real model."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import relation_probe  # noqa: E402

from captioner.encoder import EncoderConfig  # noqa: E402
from captioner.model import Captioner  # noqa: E402
from captioner.scene_metrics import _matches, relation_statements  # noqa: E402
from captioner.sources import shapes_source  # noqa: E402
from captioner.text import Vocab, tokenize  # noqa: E402


def test_every_relation_claim_of_the_world_is_found_once(world):
    """On the world's own references, the probe finds one deciding word per direct or pronoun statement
    of the caption parser, caption by caption, and never probes the ordering form's words. (The forms
    are named by what the relation refers to: "and C above it" is the parser's direct form, after a
    direct statement, and the probe's pronoun form: its object is already named.)"""
    source = shapes_source(world, generate=False)
    forms = Counter()
    for split in ("train", "test"):
        for r in source.split(split):
            for c in r.captions:
                toks = tokenize(c)
                found = [relation_probe.claim_form(toks, i) for i, w in enumerate(toks) if w in relation_probe.OPPOSITE]
                found = [f for f in found if f in ("direct", "pronoun")]  # not "position": a place, no relation
                stated = [st for st in relation_statements(toks) if st.form in ("direct", "pronoun")]
                assert len(found) == len(stated), c
                forms.update(found)
                if " it" in c or " its " in c:
                    assert "pronoun" in found, c
    assert forms["direct"] > 20 and forms["pronoun"] > 20
    assert relation_probe.claim_form(tokenize("a red circle on the left and a blue square on the right"), 5) is None


def test_the_probe_reads_a_model_that_only_ever_says_left(world, tmp_path):
    """A decoder whose output layer always prefers "left" prefers the true word exactly when the
    reference says "left" (for "above"/"below" it ties, which is no preference): the probe counts
    every claim and its share is the share of "left" claims. It prefers "to" too: at the word that chooses the
    axis it is right exactly for the left/right claims (one per direct or pronoun statement)."""
    from captioner.evaluation import split_features

    source = shapes_source(world, generate=False)
    vocab = Vocab.build([tokenize(c) for r in source.split("train") for c in r.captions], min_count=1)
    model = Captioner.create(EncoderConfig(), vocab, embed_dim=8, attention_dim=8, hidden_dim=8)
    with torch.no_grad():
        model.decoder.L_o.weight.zero_()
        model.decoder.L_o.bias.zero_()
        model.decoder.L_o.bias[vocab.stoi["left"]] = 5.0
        model.decoder.L_o.bias[vocab.stoi["to"]] = 5.0
    records = source.split("test")
    cache = split_features(model, records, str(tmp_path / "cache"), source.name, "test", progress=False)
    stats = relation_probe.probe(model, records, cache, source.objects["test"], source.image_sizes["test"])
    words, axes = [], []
    for r in records:
        objs = source.objects["test"][r.image_id]
        if len(objs) >= 2:
            for c in r.captions:
                toks = tokenize(c)
                axes += ["left" in st.relation or "right" in st.relation for st in relation_statements(toks)
                         if st.form != "positional" and len(_matches(st.subject, objs)) == 1
                         and len(_matches(st.object, objs)) == 1
                         and _matches(st.subject, objs) != _matches(st.object, objs)]
                words += [(relation_probe.claim_form(toks, i), w) for i, w in enumerate(toks)
                          if w in relation_probe.OPPOSITE and relation_probe.claim_form(toks, i)]
    axis = stats.pop("axis")
    assert len(axis["knows"]) == len(axes) > 5 and sum(axis["knows"]) == sum(axes) < len(axes)
    for form, st in stats.items():
        said = [w for f, w in words if f == form]
        assert len(st["knows"]) == len(said)
        # "above"/"below" claims: neither word is favoured, a tie, which is not a preference
        assert sum(st["knows"]) == sum(w == "left" for w in said), form


@pytest.mark.parametrize("recall", [False, True])
def test_the_linear_read_outs_run_on_a_model_with_coordinates(world, tmp_path, recall):
    """The --linear diagnostic on an untrained decoder with --coords (and --recall): one row per one-claim
    caption of the multi-object scenes, finite scores (a smoke test: what the numbers mean is measured on
    trained models)."""
    import math

    from captioner.evaluation import split_features

    source = shapes_source(world, generate=False)
    vocab = Vocab.build([tokenize(c) for r in source.split("train") for c in r.captions], min_count=1)
    model = Captioner.create(EncoderConfig(), vocab, embed_dim=8, attention_dim=8, hidden_dim=16, coords=True,
                             recall=recall)
    records = source.split("train")
    cache = split_features(model, records, str(tmp_path / "cache"), source.name, "train", progress=False)
    out = relation_probe.linear_readout(model, records, cache, source.objects["train"], source.image_sizes["train"])
    assert out["claims"] >= 20, out
    assert all(math.isfinite(v) for k, v in out.items() if k != "claims"), out
    assert 0 <= out["relation_from_h"] <= 1 and out["other_from_context_R2"] <= 1
    assert ("subject_from_recall_R2" in out) == recall
