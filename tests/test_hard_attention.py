"""Hard (stochastic) attention, section 4.1 of Show, Attend and Tell, and the no-attention baseline.

The decoder's draw step, the REINFORCE terms and their sign, the moving-average baseline, the
expectation trick, a tiny run whose cross-entropy falls, a killed run that resumes to the same
numbers, and a hard-attention checkpoint that captions through `Captioner` and evaluate.py.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import evaluate
import train
from captioner.checkpoint import load_checkpoint
from captioner.decoder import Decoder, DecoderConfig, categorical, hard_attention_terms
from captioner.model import Captioner
from captioner.objectives import HardAttention
from captioner.sampling import hard_draws, uniforms
from captioner.training import TeacherForced, TrainConfig
from procs import kill_when
from tiny import train_args

ROOT = Path(__file__).resolve().parents[1]
V, N, C, B, T = 11, 6, 8, 5, 7


def decoder(attention: str = "hard", seed: int = 0, **kw) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(vocab_size=V, feature_dim=C, grid=(2, 3), embed_dim=8, attention_dim=8,
                                 hidden_dim=16, dropout=0.0, attention=attention, **kw))


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, N, C, generator=g)
    tokens = torch.randint(4, V, (B, T), generator=g)
    tokens[:, 0] = 1  # <start>
    tokens[:, -1] = 2  # <end>
    tokens[0, 4:] = 0  # a short caption: <end> then <pad>
    tokens[0, 3] = 2
    return feats, tokens


def test_categorical_follows_the_probabilities_and_never_draws_zero():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).expand(40000, 4)
    u = torch.rand(40000, generator=torch.Generator().manual_seed(0))
    idx = categorical(probs, u)
    freq = torch.bincount(idx, minlength=4).float() / len(idx)
    assert freq[1] == 0
    assert torch.allclose(freq, probs[0], atol=0.01), freq
    assert torch.equal(idx, categorical(probs * 7.0, u))  # unnormalised weights draw the same
    assert torch.equal(categorical(probs[:3], torch.zeros(3)), torch.zeros(3, dtype=torch.long))
    assert torch.equal(categorical(probs[:2], torch.full((2,), 0.9999)), torch.full((2,), 3))


def test_draw_step_reads_the_sampled_location_or_the_expectation():
    dec = decoder()
    feats, tokens = batch()
    f, proj = dec.prepare(feats)
    h, c = dec.init_state(f)
    u = torch.rand(B, generator=torch.Generator().manual_seed(3))
    sampled = torch.tensor([True, False, True, True, False])
    _, _, alpha, loc = dec.draw_step(tokens[:, 0], (h, c), f, proj, u, sampled)
    assert loc.tolist()[1] == -1 and loc.tolist()[4] == -1
    assert all(0 <= x < N for x, s in zip(loc.tolist(), sampled.tolist()) if s)
    assert torch.equal(loc[sampled], categorical(alpha[sampled], u[sampled]))
    # the expectation rows give exactly the soft step's outputs; the sampled rows do not
    soft_logits, *_ = dec.step(tokens[:, 0], (h, c), f, proj)
    hard_logits, *_ = dec.draw_step(tokens[:, 0], (h, c), f, proj, u, sampled)
    assert torch.allclose(hard_logits[~sampled], soft_logits[~sampled])
    assert not torch.allclose(hard_logits[sampled], soft_logits[sampled])


def test_forward_with_draws_shapes_no_nan_and_the_expectation_trick():
    dec = decoder()
    feats, tokens = batch()
    u, sampled = hard_draws(seed=0, step=0, local_rows=B, steps=T - 1, expectation_p=0.5)
    logits, alphas, locs = dec(feats, tokens, (u, sampled))
    assert logits.shape == (B, T - 1, V) and alphas.shape == (B, T - 1, N) and locs.shape == (B, T - 1)
    assert torch.isfinite(logits).all() and torch.allclose(alphas.sum(-1), torch.ones(B, T - 1))
    assert ((locs >= 0) == sampled[:, None]).all()
    reinforce, entropy, logp_y = hard_attention_terms(logits, alphas, locs, tokens, baseline=-20.0)
    loss = reinforce - 0.01 * entropy
    loss.backward()
    assert torch.isfinite(loss) and logp_y.shape == (B,)
    assert all(torch.isfinite(p.grad).all() for p in dec.parameters() if p.grad is not None)
    assert dec.attention.score.weight.grad.abs().sum() > 0
    # nobody sampled: the same as soft attention's teacher forcing, and no REINFORCE term
    none = torch.zeros(B, dtype=torch.bool)
    l2, a2, locs2 = dec(feats, tokens, (u, none))
    l1, a1 = dec(feats, tokens)
    assert torch.allclose(l1, l2) and torch.allclose(a1, a2) and (locs2 == -1).all()
    r2, _, _ = hard_attention_terms(l2, a2, locs2, tokens, baseline=-20.0)
    assert r2.item() == 0.0


def test_the_expectation_share_is_the_configured_probability_per_caption():
    for p in (0.0, 0.5, 1.0):
        _, sampled = hard_draws(seed=4, step=9, local_rows=4000, steps=3, expectation_p=p)
        assert abs((1 - sampled.float().mean().item()) - p) < 0.03
    # the same (seed, step) draw the same; another step draws anew
    a = hard_draws(seed=4, step=9, local_rows=50, steps=3, expectation_p=0.5)
    b = hard_draws(seed=4, step=9, local_rows=50, steps=3, expectation_p=0.5)
    c = hard_draws(seed=4, step=10, local_rows=50, steps=3, expectation_p=0.5)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_uniforms_give_each_rank_its_rows_of_the_global_draw():
    whole = uniforms(3, 7, 1, 6, (4,))
    for rank in range(2):
        part = uniforms(3, 7, 1, 3, (4,), SimpleNamespace(rank=rank, world=2))
        assert torch.equal(part, whole[rank::2])


@pytest.mark.parametrize("advantage", [+5.0, -5.0])
def test_reinforce_makes_sampled_locations_likelier_when_the_caption_beats_the_baseline(advantage):
    dec = decoder(seed=2)
    feats, tokens = batch(seed=5)
    tokens = tokens[:, :2]  # one word: its attention depends on the image alone, not on earlier draws
    draws = (torch.rand(B, 1, generator=torch.Generator().manual_seed(1)), torch.ones(B, dtype=torch.bool))

    def location_logp(locs):
        with torch.no_grad():
            _, alphas = dec(feats, tokens)
        return alphas[:, 0].gather(1, locs[:, :1]).log().sum().item()

    logits, alphas, locs = dec(feats, tokens, draws)
    before = location_logp(locs)
    logp_y = hard_attention_terms(logits, alphas, locs, tokens, baseline=0.0)[2]
    # a baseline per caption such that each caption's advantage log p(y|s,a) - b is `advantage`
    loss = sum(hard_attention_terms(logits[b:b + 1], alphas[b:b + 1], locs[b:b + 1], tokens[b:b + 1],
                                    baseline=float(logp_y[b]) - advantage)[0] for b in range(B))
    loss.backward()
    torch.optim.SGD(dec.parameters(), lr=0.05).step()
    after = location_logp(locs)
    assert (after > before) == (advantage > 0), (before, after)


def tiny_run(cfg: TrainConfig, dec: Decoder):
    net = TeacherForced(SimpleNamespace(encoder=None, decoder=dec), fine_tune=False)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    return SimpleNamespace(cfg=cfg, dist=SimpleNamespace(enabled=False, rank=0, world=1), net=net, optimizer=opt,
                           scaler=None, trainable=list(dec.parameters()), dtype=None)


def test_the_baseline_moves_as_the_paper_says_and_is_saved():
    cfg = TrainConfig(attention="hard", seed=3)
    dec = decoder()
    obj = HardAttention(tiny_run(cfg, dec))
    feats, tokens = batch()
    logps = []
    for step in range(3):
        with torch.no_grad():  # the log-likelihood under this step's draws, before the update
            logits, alphas, locs = dec(feats, tokens, hard_draws(3, step, B, T - 1, 0.5))
            logps.append(hard_attention_terms(logits, alphas, locs, tokens, 0.0)[2].mean().item())
        stats = obj(feats, tokens, step)
        assert set(stats) >= {"loss", "ce", "reg", "reinforce", "entropy", "baseline"}
    expected = 0.0
    for lp in logps:
        expected = 0.9 * expected + 0.1 * lp
    assert obj.baseline == pytest.approx(expected, rel=1e-5)
    again = HardAttention(tiny_run(cfg, decoder()))
    again.load_state_dict(obj.state_dict())
    assert again.baseline == obj.baseline


def test_no_attention_reads_the_mean_annotation_vector_and_has_no_attention_weights():
    dec = decoder("none")
    assert not any(k.startswith("attention.") for k in dec.state_dict())
    feats, tokens = batch()
    logits, alphas = dec(feats, tokens)
    assert torch.allclose(alphas, torch.full_like(alphas, 1 / N))
    # the context is the mean of the (normalised, position-embedded) annotation vectors
    f, proj = dec.prepare(feats)
    h, c = dec.init_state(f)
    dec.cfg.gate = "none"  # compare contexts without the gate's scaling
    ctx_logits, *_ = dec.step(tokens[:, 0], (h, c), f, proj)
    emb = dec.embed(tokens[:, 0])
    h2, _ = dec.lstm(torch.cat([emb, f.mean(dim=1)], dim=1), (h, c))
    expect = dec.L_o(torch.tanh(emb + dec.L_h(h2) + dec.L_z(f.mean(dim=1))))
    assert torch.allclose(ctx_logits, expect, atol=1e-6)
    with pytest.raises(ValueError, match="attention must be one of"):
        DecoderConfig(vocab_size=V, feature_dim=C, attention="sharp")


def test_a_run_without_attention_has_no_regulariser_and_captions(world, tmp_path):
    # uniform weights make the doubly stochastic term a constant: it is left out, not logged as a loss
    summary = train.main(train_args(world, tmp_path / "run", tmp_path / "cache", 2, attention="none"))
    assert all(h["reg"] == 0 and h["loss"] == pytest.approx(h["ce"]) for h in summary["history"])
    model = Captioner.from_checkpoint(tmp_path / "run" / "best.pt")
    assert model.cfg.decoder.attention == "none"
    cap = model.caption([next((world / "images" / "test").glob("*.jpg"))], beam_size=2)[0]
    assert cap.words and np.allclose(cap.alphas, 1 / cap.alphas[0].size)


@pytest.fixture(scope="module")
def hard_run(world, tmp_path_factory):
    base = tmp_path_factory.mktemp("hard")
    args = train_args(world, base / "run", base / "cache", 4, attention="hard")
    return base, args, train.main(args)


def test_tiny_hard_attention_run_learns_and_captions_everywhere(hard_run, world, tmp_path, capsys):
    base, _, summary = hard_run
    hist = summary["history"]
    ce = [h["ce"] for h in hist]
    assert ce[-1] < 0.75 * ce[0], ce
    assert all(0.3 < h["sampled"] < 0.7 for h in hist)  # half of the captions read sampled locations
    assert hist[-1]["baseline"] < 0 and all(np.isfinite(h["loss"]) for h in hist)
    ck = load_checkpoint(base / "run" / "best.pt")
    assert ck["model"]["config"]["decoder"]["attention"] == "hard" and ck["meta"]["attention"] == "hard"
    assert "baseline" in ck["train"]["objective"]
    model = Captioner.from_checkpoint(base / "run" / "best.pt")
    image = next((world / "images" / "test").glob("*.jpg"))
    a, b = model.caption([image], beam_size=3)[0], model.caption([image], beam_size=3)[0]
    assert a.text == b.text and a.words  # test-time decoding reads the expectation: deterministic
    assert a.alphas.shape == (len(a.words), *model.grid)
    assert np.allclose(a.alphas.reshape(len(a.words), -1).sum(1), 1, atol=1e-4)
    res = evaluate.main(["--checkpoint", str(base / "run" / "best.pt"), "--shapes-dir", str(world), "--split", "test",
                         "--out", str(tmp_path), "--cache-dir", str(base / "cache"), "--no-progress", "--beam", "2"])
    assert np.isfinite(res["metrics"]["CIDEr"]) and "grounding" in res["metrics"]
    assert res["info"]["attention"] == "hard (test time: the expected context)"


def test_killed_hard_attention_run_resumes_to_the_same_numbers(hard_run, world, tmp_path):
    base, args, ref = hard_run
    out = tmp_path / "b"
    cmd = [sys.executable, str(ROOT / "train.py"), *train_args(world, out, base / "cache", 4, attention="hard")]
    kill_when(cmd, (out / "last.pt").exists, "its first checkpoint")
    assert load_checkpoint(out / "last.pt")["train"]["epoch"] + 1 < 4, "the run finished before it could be killed"
    resumed = train.main(train_args(world, out, base / "cache", 4, attention="hard")
                         + ["--resume", str(out / "last.pt")])
    for a, b in zip(ref["history"], resumed["history"]):
        for k in ("loss", "ce", "reinforce", "baseline"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (k, a, b)
