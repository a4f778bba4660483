"""Encoder weights, decoder shapes / gradients, the gate, the regulariser and search properties."""
from __future__ import annotations

import math

import pytest
import torch

from captioner.decoder import Decoder, DecoderConfig, attention_regularizer, caption_loss
from captioner.encoder import Encoder, EncoderConfig, EncoderWeightsError, imagenet_classifier
from captioner.images import build_transform
from captioner.search import beam_search, greedy_search, search
from captioner.text import END_ID, PAD_ID, START_ID

V, C, GRID = 40, 24, (4, 5)


def make_decoder(seed: int = 0, **kw) -> Decoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=V, feature_dim=C, grid=GRID, embed_dim=16, attention_dim=12, hidden_dim=20, **kw)
    return Decoder(cfg).eval()


def feats(b: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, GRID[0] * GRID[1], C, generator=g)


def test_package_weights_classify_a_cat():
    from PIL import Image
    from skimage import data

    cfg = EncoderConfig()
    model = imagenet_classifier(cfg)
    x = build_transform(cfg.image_size, cfg.mean, cfg.std)(Image.fromarray(data.chelsea()))
    with torch.no_grad():
        probs = model(x[None]).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    cats = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[0] in cats, top5
    assert probs[list(cats)].sum() > 0.5


def test_encoder_grid_and_frozen():
    enc = Encoder(EncoderConfig(weights="none"))
    assert enc.grid == (14, 14) and enc.channels == 40 + 112
    out = enc(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 196, 152)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training  # a frozen encoder keeps BatchNorm statistics fixed
    enc.set_trainable(2)
    assert any(p.requires_grad for p in enc.body.blocks[-1].parameters())
    assert not enc.body.conv_stem.weight.requires_grad
    assert Encoder(EncoderConfig(weights="none", grid_size=7)).grid == (7, 7)


def test_offline_weights_missing_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderWeightsError, match="no offline weights"):
        Encoder(EncoderConfig(backbone="resnet18", stages=(3,)))
    with pytest.raises(EncoderWeightsError, match="not found"):
        Encoder(EncoderConfig(weights=str(tmp_path / "nope.pt")))


def test_decoder_shapes_backward_no_nan():
    dec = make_decoder().train()
    f = feats(3).requires_grad_(True)
    tokens = torch.tensor([[START_ID, 5, 6, 7, END_ID], [START_ID, 8, END_ID, PAD_ID, PAD_ID],
                           [START_ID, 9, 9, END_ID, PAD_ID]])
    logits, alphas = dec(f, tokens)
    assert logits.shape == (3, 4, V) and alphas.shape == (3, 4, 20)
    assert torch.allclose(alphas.sum(-1), torch.ones(3, 4), atol=1e-5)
    loss, ce, reg = caption_loss(logits, alphas, tokens)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in dec.parameters() if p.grad is not None)
    assert dec.f_beta.weight.grad.abs().sum() > 0


def test_padding_does_not_change_loss_and_order_is_kept():
    dec = make_decoder().train()
    dec.dropout.p = 0.0
    f = feats(2)
    short = torch.tensor([[START_ID, 5, END_ID], [START_ID, 6, END_ID]])
    padded = torch.tensor([[START_ID, 5, END_ID, PAD_ID], [START_ID, 6, END_ID, PAD_ID]])
    a = caption_loss(*dec(f, short), short)
    b = caption_loss(*dec(f, padded), padded)
    assert torch.allclose(a[0], b[0], atol=1e-6)
    # outputs stay in the caller's order (nothing sorted by length)
    one = dec(f[1:], short[1:])[0]
    assert torch.allclose(dec(f, short)[0][1], one[0], atol=1e-5)


def test_gate_is_a_scalar_sigmoid_of_h():
    dec = make_decoder()
    assert dec.f_beta.out_features == 1
    assert make_decoder(gate="channel").f_beta.out_features == C
    assert not hasattr(make_decoder(gate="none"), "f_beta")
    # Force beta -> 0: the context vanishes, so the step ignores the image entirely.
    with torch.no_grad():
        dec.f_beta.weight.zero_()
        dec.f_beta.bias.fill_(-1e4)
    f1, f2 = dec.prepare(feats(1, seed=1)), dec.prepare(feats(1, seed=2))
    h = torch.zeros(1, 20)
    c = torch.zeros(1, 20)
    tok = torch.tensor([START_ID])
    out1 = dec.step(tok, (h, c), *f1)[0]
    out2 = dec.step(tok, (h, c), *f2)[0]
    assert torch.allclose(out1, out2, atol=1e-6)


def test_regulariser_values():
    # Attention summing to exactly 1 over time at every location gives 0.
    T, N = 4, 4
    alphas = torch.eye(N)[None]  # (1, T=4, N=4): step t looks only at location t
    mask = torch.ones(1, T)
    assert attention_regularizer(alphas, mask).item() == pytest.approx(0.0)
    # Uniform attention for 2 valid steps over 4 locations: each location gets 0.5 -> (0.5)^2.
    alphas = torch.full((1, 3, N), 1 / N)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert attention_regularizer(alphas, mask, "mean").item() == pytest.approx(0.25)
    assert attention_regularizer(alphas, mask, "sum").item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        attention_regularizer(alphas, mask, "max")


RECALL = {"recall": True, "coords": True}  # the decoder whose state also holds a growing memory
COMPARE = {**RECALL, "compare": True}  # ... and the attended centre of each memory entry


@pytest.mark.parametrize("kw", [{}, RECALL, COMPARE], ids=["plain", "recall", "compare"])
def test_beam_one_equals_greedy(kw):
    dec = make_decoder(**kw)
    f = feats(6)
    g = greedy_search(dec, f, max_len=12)
    b = beam_search(dec, f, beam_size=1, max_len=12)
    for x, y in zip(g, b):
        assert x.best.tokens == y.best.tokens
        assert x.best.score == pytest.approx(y.best.score, abs=1e-5)
        assert torch.allclose(x.best.alphas, y.best.alphas, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, RECALL, COMPARE], ids=["plain", "recall", "compare"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_batch_equals_one_at_a_time(k, kw):
    dec = make_decoder(**kw)
    f = feats(5)
    batched = search(dec, f, beam_size=k, max_len=12)
    for i in range(5):
        single = search(dec, f[i: i + 1], beam_size=k, max_len=12)[0]
        assert single.best.tokens == batched[i].best.tokens
        assert single.best.score == pytest.approx(batched[i].best.score, abs=1e-5)
        assert [b.tokens for b in single.beams] == [b.tokens for b in batched[i].beams]


def test_beam_results_are_consistent():
    dec = make_decoder()
    res = search(dec, feats(4), beam_size=4, max_len=12)
    for r in res:
        scores = [b.score for b in r.beams]
        assert scores == sorted(scores, reverse=True) and r.best is r.beams[0]
        assert len({tuple(b.tokens) for b in r.beams}) == len(r.beams)  # no duplicate hypotheses
        for b in r.beams:
            assert b.alphas.shape == (len(b.tokens), 20)
            assert END_ID not in b.tokens and PAD_ID not in b.tokens and START_ID not in b.tokens
            assert torch.allclose(b.alphas.sum(-1), torch.ones(len(b.tokens)), atol=1e-5)
    # wider beams never find a worse best hypothesis on this model
    narrow = search(dec, feats(4), beam_size=1, max_len=12)
    assert all(w.best.score >= n.best.score - 1e-6 for w, n in zip(res, narrow))


@pytest.mark.parametrize("kw", [{}, RECALL, COMPARE], ids=["plain", "recall", "compare"])
def test_score_is_length_normalised_log_prob(kw):
    """Recompute every beam's log-probability by teacher forcing: the state search carried (with recall, the
    memory too) was reordered with its beam at every step."""
    dec = make_decoder(**kw)
    f = feats(2)
    results = search(dec, f, beam_size=3, max_len=12)
    for i, hyp in ((i, hyp) for i, r in enumerate(results) for hyp in r.beams):
        seq = torch.tensor([[START_ID] + hyp.tokens + ([END_ID] if hyp.finished else [])])
        logits, _ = dec(f[i: i + 1], seq)  # predicts seq[1:]
        logp = logits.log_softmax(-1)[0]
        targets = seq[0, 1:]
        total = sum(logp[t, targets[t]].item() for t in range(len(targets)))
        assert hyp.score == pytest.approx(total / len(targets), abs=1e-4)


def test_never_ending_caption_stops_at_max_len():
    dec = make_decoder()
    with torch.no_grad():
        dec.L_o.bias[END_ID] = -1e4  # <end> can never win
    for k in (1, 3):
        for r in search(dec, feats(2), beam_size=k, max_len=7):
            assert len(r.best.tokens) == 7 and not r.best.finished
    with pytest.raises(ValueError):
        search(dec, feats(1), beam_size=0)


def test_other_backbone_from_a_weights_file(tmp_path):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    enc = Encoder(EncoderConfig(backbone="resnet18", stages=(3,), weights=str(tmp_path / "resnet18.pth")))
    assert enc.grid == (14, 14) and enc.channels == 256
    assert torch.equal(enc.body.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert enc(torch.randn(1, 3, 224, 224)).shape == (1, 196, 256)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(EncoderWeightsError, match="does not fit"):
        Encoder(EncoderConfig(backbone="resnet18", stages=(3,), weights=str(tmp_path / "wrong.pth")))


class ScriptedDecoder:
    """A decoder whose next-word distribution is a table keyed by the words so far (search only calls
    prepare, init_state and step). Words not in a row share what is left of the probability."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], vocab_size: int = 10, max_len: int = 12):
        self.table, self.max_len = table, max_len
        self.cfg = DecoderConfig(vocab_size=vocab_size, feature_dim=1, grid=(1, 1))
        self.training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def prepare(self, feats):
        return feats, feats

    def init_state(self, feats):  # h carries the words so far: (B, 1 + max_len), h[:, 0] = length
        return feats.new_zeros(feats.shape[0], 1 + self.max_len), feats.new_zeros(feats.shape[0], 1)

    def step(self, tokens, state, feats, proj):
        h, c = state
        h = h.clone()
        V = self.cfg.vocab_size
        logits = torch.empty(len(tokens), V)
        for i, tok in enumerate(tokens.tolist()):
            n = int(h[i, 0])
            if tok != START_ID:
                h[i, 1 + n] = tok
                h[i, 0] = n = n + 1
            row = self.table.get(tuple(int(x) for x in h[i, 1: 1 + n]), {})
            rest = (1.0 - sum(row.values())) / (V - 3 - len(row))  # over the words that can be emitted (<end> too)
            p = torch.full((V,), max(rest, 1e-9))
            p[[PAD_ID, START_ID, 3]] = 1e-9
            for w, q in row.items():
                p[w] = q
            logits[i] = p.log()
        return logits, (h, c), torch.ones(len(tokens), 1)


A, B_, C_, D_ = 4, 5, 6, 7
SCRIPT = {
    (): {A: 0.5, B_: 0.45},
    (A,): {END_ID: 0.5},  # "a <end>": -0.693 per token
    (B_,): {C_: 0.9, D_: 0.09},  # "b c" -0.452 ranks above it ...
    (B_, C_): {D_: 0.6, C_: 0.39},  # ... then "b c d" and "b c c" both do: two live beams outrank "a <end>"
    (B_, C_, D_): {END_ID: 0.2, C_: 0.1},  # and later all fall behind it
    (B_, C_, C_): {END_ID: 0.2, D_: 0.1},
}


def test_beam_keeps_a_finished_caption_that_live_beams_briefly_outrank():
    """Xu et al.'s reference search moves finished captions out of the beam. Holding them in a beam
    slot instead loses `a <end>` once two live beams outrank it, and returns a worse caption."""
    dec = ScriptedDecoder(SCRIPT)
    for max_len in (4, 5, 12):
        r = search(dec, torch.zeros(1, 1, 1), beam_size=2, max_len=max_len)[0]
        assert r.best.tokens == [A] and r.best.finished
        assert r.best.score == pytest.approx(math.log(0.5), abs=1e-5)
        assert len(r.beams) == 2 and r.beams[1].score < r.best.score
    # K = 1 is greedy: it takes "a" then <end>.
    g = search(dec, torch.zeros(1, 1, 1), beam_size=1, max_len=5)[0]
    assert g.best.tokens == [A]


def test_beams_are_the_best_of_finished_and_live():
    # Nothing ever ends: at max_len the K live beams are the result, cut and unfinished, best first.
    dec = ScriptedDecoder({(): {A: 0.6, B_: 0.3}}, max_len=6)
    r = search(dec, torch.zeros(1, 1, 1), beam_size=3, max_len=3)[0]
    assert len(r.beams) == 3 and not any(b.finished for b in r.beams)
    assert [b.score for b in r.beams] == sorted((b.score for b in r.beams), reverse=True)
    assert r.best.tokens[0] == A


def test_unk_is_never_generated():
    dec = make_decoder()
    with torch.no_grad():
        dec.L_o.bias[3] = 1e3  # <unk> would win every step
    for k in (1, 3):
        for r in search(dec, feats(3), beam_size=k, max_len=8):
            for b in r.beams:
                assert 3 not in b.tokens and len(b.tokens) > 0


def legacy_decoder(cfg: DecoderConfig) -> Decoder:
    """The decoder as earlier releases built it: biases on hidden_proj, score and L_z too."""
    dec = Decoder(cfg)
    dec.attention.hidden_proj = torch.nn.Linear(cfg.hidden_dim, cfg.attention_dim)
    dec.attention.score = torch.nn.Linear(cfg.attention_dim, 1)
    dec.L_z = torch.nn.Linear(cfg.feature_dim, cfg.embed_dim)
    return dec


def test_redundant_biases_are_gone_and_legacy_weights_fold_exactly():
    dec = make_decoder()
    names = {n for n, _ in dec.named_parameters()}
    assert not {"attention.hidden_proj.bias", "attention.score.bias", "L_z.bias"} & names
    assert {"attention.feat_proj.bias", "L_h.bias"} <= names
    # A legacy decoder with non-zero values in every removed bias computes what its folded state computes.
    torch.manual_seed(5)
    old = legacy_decoder(dec.cfg).eval()
    with torch.no_grad():
        for m in (old.attention.hidden_proj, old.attention.score, old.L_z):
            m.bias.uniform_(-1, 1)
    state = old.state_dict()
    new = Decoder(dec.cfg).eval()
    new.load_state_dict(state)  # folds
    tokens = torch.tensor([[START_ID, 5, 6, 7, END_ID], [START_ID, 8, 9, END_ID, PAD_ID]])
    f = feats(2)
    for a, b in zip(old(f, tokens), new(f, tokens)):
        assert torch.allclose(a, b, atol=1e-5)
    for k in (1, 3):
        for x, y in zip(search(old, feats(4), beam_size=k, max_len=12), search(new, feats(4), beam_size=k, max_len=12)):
            assert x.best.tokens == y.best.tokens and x.best.score == pytest.approx(y.best.score, abs=1e-5)


def test_demo_checkpoint_is_in_the_current_layout():
    """The retrained demo model has none of the removed biases, and loads strictly (nothing folded, nothing missing).
    Legacy checkpoints folding exactly is the test above, on random weights."""
    from pathlib import Path

    from captioner.checkpoint import load_checkpoint
    from captioner.decoder import _DEAD, _FOLDED

    path = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_demo.pt"
    ck = load_checkpoint(path)["model"]
    removed = {k for k, _ in _FOLDED} | set(_DEAD)
    assert not removed & set(ck["decoder"])
    dec = Decoder(DecoderConfig(**ck["config"]["decoder"]))
    torch.nn.Module.load_state_dict(dec, {k: v.float() for k, v in ck["decoder"].items()}, strict=True)


def test_paper_objective_is_the_per_caption_sum():
    """objective='paper': each caption's cross-entropy summed over its words, plus lambda * sum_i (1 - sum_t alpha)^2,
    both averaged over captions (capgen.py); the default averages the cross-entropy over tokens."""
    dec = make_decoder()
    f = feats(2)
    tokens = torch.tensor([[START_ID, 5, 6, 7, END_ID], [START_ID, 8, END_ID, PAD_ID, PAD_ID]])
    logits, alphas = dec(f, tokens)
    nll = -logits.log_softmax(-1).gather(2, tokens[:, 1:, None]).squeeze(2)  # (B, T-1)
    mask = (tokens[:, 1:] != PAD_ID).float()
    per_caption = (nll * mask).sum(1)  # 4 and 2 words (+ <end>)
    reg_sum = ((1 - (alphas * mask[..., None]).sum(1)) ** 2).sum(1)  # (B,)
    total, ce, reg = caption_loss(logits, alphas, tokens, att_lambda=0.7, objective="paper")
    assert ce.item() == pytest.approx(per_caption.mean().item(), rel=1e-5)
    assert reg.item() == pytest.approx(reg_sum.mean().item(), rel=1e-5)
    assert total.item() == pytest.approx((per_caption + 0.7 * reg_sum).mean().item(), rel=1e-5)
    total, ce, reg = caption_loss(logits, alphas, tokens, att_lambda=0.7)  # the default: per token, mean over N
    assert ce.item() == pytest.approx(((nll * mask).sum() / mask.sum()).item(), rel=1e-5)
    assert reg.item() == pytest.approx((reg_sum / 20).mean().item(), rel=1e-5)
    with pytest.raises(ValueError):
        caption_loss(logits, alphas, tokens, objective="sentence")


@pytest.mark.parametrize("gate", ["scalar", "channel", "none"])
def test_coords_put_the_attended_location_in_the_context(gate):
    """With coords, each annotation vector ends in its cell's (x, y): attention on one cell gives
    a context whose last two channels are that cell's place (times the gate), row by row."""
    from captioner.decoder import cell_coords

    xy = cell_coords(GRID, torch.zeros(1))[0]  # (N, 2)
    assert xy.shape == (20, 2) and xy.min() > -1 and xy.max() < 1
    assert xy[0].tolist() == pytest.approx([-0.8, -0.75]) and xy[-1].tolist() == pytest.approx([0.8, 0.75])
    assert xy[1, 0] > xy[0, 0] and xy[5, 1] > xy[0, 1]  # cell 1: one column right; cell 5: one row down
    dec = make_decoder(coords=True, gate=gate)
    f, proj = dec.prepare(feats(2))
    assert f.shape == (2, 20, C + 2) and torch.equal(f[0, :, C:], xy) and proj.shape == (2, 20, 12)
    alpha = torch.zeros(2, 20)
    alpha[0, 7], alpha[1, 13] = 1, 1
    context = torch.bmm(alpha.unsqueeze(1), f).squeeze(1)
    assert torch.equal(context[:, C:], xy[[7, 13]])
    tokens = torch.tensor([[START_ID, 5, 6, END_ID]] * 2)
    logits, alphas = dec(feats(2), tokens)
    assert logits.shape == (2, 3, V) and torch.isfinite(logits).all()
    out = beam_search(dec, feats(2), beam_size=2, max_len=6)
    assert len(out) == 2 and all(r.best.alphas.shape == (len(r.best.tokens), 20) for r in out)


def test_coords_off_is_the_decoder_it_was():
    """coords=False (the default, and what older checkpoints load as) builds the same modules and the same outputs."""
    a, b = make_decoder(seed=3), make_decoder(seed=3, coords=False)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert make_decoder(coords=True).lstm.input_size == a.lstm.input_size + 2


def test_layout_lets_the_initial_state_see_where_an_object_is():
    """The paper's h_0 reads the mean annotation vector, which is the same wherever an object lies
    (moving it permutes the cells); with `layout` the initial state also reads a pooled grid, and
    differs. layout=0 (what older checkpoints load as) adds no parameters."""
    blob = torch.randn(C)
    left, right = torch.zeros(1, GRID[0] * GRID[1], C), torch.zeros(1, GRID[0] * GRID[1], C)
    left[0, 0], right[0, GRID[1] - 1] = blob, blob  # top-left cell vs top-right cell
    for layout, moves in ((0, False), (2, True)):
        dec = make_decoder(layout=layout)
        with torch.no_grad():
            h_left, _ = dec.init_state(dec.prepare(left)[0])
            h_right, _ = dec.init_state(dec.prepare(right)[0])
        assert torch.allclose(h_left, h_right, atol=1e-6) != moves, layout
    assert make_decoder(layout=0).state_dict().keys() == make_decoder().state_dict().keys()
    dec = make_decoder(layout=2)
    tokens = torch.tensor([[START_ID, 5, 6, END_ID]] * 3)
    logits, alphas = dec(feats(), tokens)
    assert logits.shape == (3, 3, V) and torch.isfinite(logits).all()
    result = search(dec, feats(), beam_size=2, max_len=6)
    assert len(result) == 3
    with pytest.raises(ValueError, match="layout"):
        make_decoder(layout=GRID[0] + 1)


def test_refine_lets_each_cell_know_what_lies_elsewhere():
    """Without `refine` a cell's annotation vector is its own: moving another object leaves it unchanged.
    With self-attention layers over the cells, the cell under one object changes when another object moves
    (what "A is to the left of B" needs, read at A). refine=0 (what older checkpoints load as) adds nothing."""
    a, b = torch.randn(C), torch.randn(C)
    near, far = torch.zeros(1, GRID[0] * GRID[1], C), torch.zeros(1, GRID[0] * GRID[1], C)
    near[0, 0] = far[0, 0] = a
    near[0, 1], far[0, GRID[0] * GRID[1] - 1] = b, b  # B next to A, or in the far corner
    for refine, moves in ((0, False), (1, True)):
        dec = make_decoder(refine=refine)
        with torch.no_grad():
            at_a_near, at_a_far = dec.prepare(near)[0][0, 0], dec.prepare(far)[0][0, 0]
        assert torch.allclose(at_a_near, at_a_far, atol=1e-6) != moves, refine
    assert make_decoder(refine=0).state_dict().keys() == make_decoder().state_dict().keys()
    dec = make_decoder(refine=2).train()
    tokens = torch.tensor([[START_ID, 5, 6, END_ID]] * 3)
    logits, alphas = dec(feats(), tokens)
    assert logits.shape == (3, 3, V) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dec.refiner.parameters())
    assert len(search(dec.eval(), feats(), beam_size=2, max_len=6)) == 3
    with pytest.raises(ValueError, match="refine"):
        make_decoder(refine=-1)
    with pytest.raises(ValueError, match="pos_embed"):
        make_decoder(refine=1, pos_embed=False)


def test_recall_reads_back_where_an_earlier_word_looked():
    """With recall the state also holds one memory entry per word read (its embedding and the context its step
    read); a later step's output depends on those entries, not only on (h, c): the same h, c with the memory of
    another image's earlier steps give other logits. recall=False (what older checkpoints load as) adds nothing."""
    assert make_decoder(recall=False).state_dict().keys() == make_decoder().state_dict().keys()
    dec = make_decoder(**RECALL)
    f, proj = dec.prepare(feats(2))
    tokens = torch.tensor([[START_ID, 5, 6, 7]] * 2)
    with torch.no_grad():
        state = dec.init_state(f)
        assert [tuple(x.shape) for x in state] == [(2, 20), (2, 20), (2, 0, 64), (2, 0, 64), (2, C + 2), (2, 0)]
        for t in range(3):
            _, state, _ = dec.step(tokens[:, t], state, f, proj)
        assert state[2].shape == (2, 3, 64) and state[3].shape == (2, 3, 64)  # <start>, 5, 6
        assert torch.equal(state[4][:, -2:], (state[4][:, -2:]).clamp(-1, 1))  # the attended (x, y)
        h, c = state[0][:1], state[1][:1]  # image 0's (h, c) ...
        own = dec.step(tokens[:1, 3], (h, c, *(x[:1] for x in state[2:])), f[:1], proj[:1])[0]
        other = dec.step(tokens[:1, 3], (h, c, *(x[1:] for x in state[2:])), f[:1], proj[:1])[0]
    assert not torch.allclose(own, other, atol=1e-4)  # ... with image 1's memory: another word distribution
    dec.train()
    logits, alphas = dec(feats(3), torch.tensor([[START_ID, 5, 6, END_ID]] * 3))
    assert logits.shape == (3, 3, V) and torch.isfinite(logits).all()
    logits.sum().backward()
    for name in ("recall_key", "recall_value", "recall_query", "L_r"):
        grad = getattr(dec, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="no recall memory"):  # asked of a decoder without one
        make_decoder()(feats(3), torch.tensor([[START_ID, 5, 6, END_ID]] * 3), recall_weights=True)


def test_compare_gives_the_output_the_attended_centre_minus_the_recalled_one():
    """delta_t = xy(alpha_t) - sum_j w_tj xy(entry j), where entry j's place is the centre its step attended
    (entry 0, <start>'s, the image centre): recomputed here from the attention and recall weights that forward
    returns, against what the deep output's delta layer receives (delta_t and |delta_t|)."""
    with pytest.raises(ValueError, match="needs recall and coords"):
        make_decoder(compare=True, recall=True)
    with pytest.raises(ValueError, match="needs recall and coords"):
        make_decoder(compare=True, coords=True)
    dec = make_decoder(**COMPARE).eval()
    seen = []
    dec.L_d.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    tokens = torch.tensor([[START_ID, 5, 6, 7, 8]] * 3)
    with torch.no_grad():
        _, alphas, weights = dec(feats(3), tokens, recall_weights=True)  # (B, T-1, N), (B, T-1, T-1)
    h, w = dec.cfg.grid
    xy = torch.tensor([[(2 * c + 1) / w - 1, (2 * r + 1) / h - 1] for r in range(h) for c in range(w)])  # (N, 2)
    centres = alphas @ xy  # (B, T-1, 2): where each step looked
    places = torch.cat([torch.zeros(3, 1, 2), centres], 1)  # (B, T, 2): entry j's place
    for t in range(tokens.shape[1] - 1):
        expected = centres[:, t] - (weights[:, t, : t + 1].unsqueeze(1) @ places[:, : t + 1]).squeeze(1)
        assert torch.allclose(seen[t], torch.cat([expected, expected.abs()], 1), atol=1e-5), t
    assert seen[3].abs().max() > 1e-3  # not trivially zero
    dec.train()
    logits, _ = dec(feats(3), tokens)
    logits.sum().backward()
    for name in ("L_d", "f_delta"):
        grad = getattr(dec, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert "L_d.weight" not in make_decoder(**RECALL).state_dict()  # off: what older checkpoints load as
