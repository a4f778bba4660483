"""Checkpoint round trip, atomic writes, refusal of pickled objects, inference export."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from captioner.checkpoint import CheckpointError, export_inference, load_checkpoint, save_checkpoint
from captioner.encoder import EncoderConfig
from captioner.model import Captioner
from captioner.text import Vocab


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    vocab = Vocab.build([["a", "red", "circle"], ["a", "blue", "square"]], min_count=1)
    return Captioner.create(EncoderConfig(weights="none"), vocab, embed_dim=16, attention_dim=16,
                            hidden_dim=32).eval()


def test_round_trip_gives_the_same_captions(model, tmp_path):
    path = save_checkpoint({"model": model.model_state()}, tmp_path / "m.pt")
    # a person can read it with plain torch.load(weights_only=True)
    raw = torch.load(path, weights_only=True)
    assert raw["model"]["vocab"]["itos"] == model.vocab.itos
    assert raw["model"]["encoder"] is None  # frozen encoder: weights come from its config
    again = Captioner.from_checkpoint(path)
    feats = torch.randn(3, 196, model.encoder.channels)
    a, b = model.decode(feats, 3, 8), again.decode(feats, 3, 8)
    assert [o.text for o in a] == [o.text for o in b]
    assert [o.score for o in a] == pytest.approx([o.score for o in b])
    assert again.cfg == model.cfg


def test_save_is_atomic(tmp_path, model, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint({"model": model.model_state()}, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt  # killed half-way through writing

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": model.model_state()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"format": "captioner/1", "model": Evil()}, f)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)


def test_foreign_and_broken_files(tmp_path, model):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a captioner checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    good = save_checkpoint({"model": model.model_state()}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_export_strips_training_state_and_halves(tmp_path, model):
    src = save_checkpoint({"model": model.model_state(), "train": {"epoch": 3, "optimizer": {"x": torch.ones(3)}}},
                          tmp_path / "last.pt")
    dst = export_inference(src, tmp_path / "small.pt")
    ck = load_checkpoint(dst)
    assert "train" not in ck and ck["meta"]["weights_dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in ck["model"]["decoder"].values() if v.is_floating_point())
    assert dst.stat().st_size < src.stat().st_size
    m = Captioner.from_checkpoint(dst)
    assert next(m.decoder.parameters()).dtype == torch.float32
