"""Self-critical sequence training (Rennie et al. 2017): the sampler, the sign of its gradient, a tiny
run whose reward rises, resume and DDP equivalence (a real torchrun, two CPU processes).

The CIDEr-D reward itself is tested against pycocoevalcap in test_reward.py.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from test_ddp import run as run_ok
from test_ddp import torchrun

import train
from captioner.checkpoint import load_checkpoint
from captioner.decoder import Decoder, DecoderConfig
from captioner.objectives import TRUTH_SIGNS, TRUTH_WEIGHTS, SelfCritical
from captioner.sampling import WORDS, SampledCaptions, uniforms, words_of
from captioner.search import BLOCKED, greedy_search
from captioner.text import END_ID, PAD_ID, START_ID
from captioner.training import TrainConfig
from procs import kill_when
from tiny import make_world, train_args

ROOT = Path(__file__).resolve().parents[1]
V, N, C, L = 40, 6, 8, 6


def decoder(seed: int = 0, attention: str = "soft") -> Decoder:
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(vocab_size=V, feature_dim=C, grid=(2, 3), embed_dim=8, attention_dim=8,
                                 hidden_dim=16, dropout=0.0, attention=attention))


def feats(rows: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, N, C, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_sampled_captions_end_never_use_blocked_words_and_are_a_function_of_the_draws(attention):
    dec = decoder(attention=attention)
    f = feats(8)
    u = torch.rand(8, L, generator=torch.Generator().manual_seed(2))
    locs = (torch.rand(8, L, generator=torch.Generator().manual_seed(3)), torch.arange(8) % 2 == 0)
    sampler = SampledCaptions(dec)
    tokens, logp, loc_logp, alphas = sampler(f, u, locs if attention == "hard" else None)
    again = sampler(f, u, locs if attention == "hard" else None)[0]
    assert torch.equal(tokens, again)
    assert tokens.shape == logp.shape == loc_logp.shape and tokens.shape[1] <= L and alphas.shape[2] == N
    assert not any(w in BLOCKED for w in tokens.flatten().tolist() if w != PAD_ID)
    for row, lp in zip(tokens.tolist(), logp):
        if END_ID in row:  # nothing after <end>: <pad>, with log-probability 0
            e = row.index(END_ID)
            assert set(row[e + 1:]) <= {PAD_ID} and (lp[e + 1:] == 0).all()
        assert (lp[: len(row)] <= 0).all()
    assert torch.isfinite(logp).all() and logp.requires_grad
    if attention == "hard":  # captions that drew locations have their log-probabilities; the others none
        assert (loc_logp[1::2] == 0).all() and (loc_logp[0::2] < 0).any()
    else:
        assert (loc_logp == 0).all()
    assert not torch.equal(tokens, sampler(f, torch.rand(8, L, generator=torch.Generator().manual_seed(9)))[0])


def sequence_logp(dec: Decoder, f: torch.Tensor, words: list[int]) -> float:
    """log p(words, <end>) under the sampling distribution (blocked words removed, renormalised)."""
    tokens = torch.tensor([[START_ID, *words, END_ID]])
    with torch.no_grad():
        logits, _ = dec(f, tokens)
    logits[..., BLOCKED] = float("-inf")
    return logits.log_softmax(-1).gather(2, tokens[:, 1:, None]).sum().item()


@pytest.mark.parametrize("better", [True, False])
def test_a_sample_that_beats_the_greedy_caption_becomes_likelier_after_one_step(better):
    dec = decoder(seed=4)
    f = feats(1, seed=5)
    cfg = TrainConfig(scst=True, scst_samples=1, scst_baseline="greedy", sample_max_len=L, seed=6)
    u = uniforms(cfg.seed, 0, WORDS, 1, (1, L)).reshape(1, L)
    sample = words_of(SampledCaptions(dec)(f, u)[0])[0]  # the caption the step will draw
    greedy = greedy_search(dec, f, L)[0].best.tokens
    assert sample != greedy, "choose seeds whose sample differs from the greedy caption"
    target = sample if better else greedy  # the reference: the sample scores above the greedy caption, or below
    fillers = [[[START_ID, 900 + i, 901 + i, 902, END_ID]] for i in range(4)]  # other images: document frequencies
    data = SimpleNamespace(captions=[[[START_ID, *target, END_ID]], *fillers])
    run = SimpleNamespace(cfg=cfg, dist=SimpleNamespace(enabled=False, rank=0, world=1), dtype=None, scaler=None,
                          model=SimpleNamespace(decoder=dec, cfg=SimpleNamespace(decoder=dec.cfg)),
                          net=SampledCaptions(dec), trainable=list(dec.parameters()), train_ds=data,
                          optimizer=torch.optim.SGD(dec.parameters(), lr=0.02))
    objective = SelfCritical(run)
    before = sequence_logp(dec, f, sample)
    stats = objective(f, torch.tensor([[0]]), 0)
    after = sequence_logp(dec, f, sample)
    assert (stats["reward"] > stats["baseline"]).item() == better, stats
    assert (after > before) == better, (before, after)


def test_truth_reward_adds_the_weighted_counts_to_every_sample_and_the_greedy_caption():
    """--scst-true-relation / --scst-false-relation / --scst-phantom / --scst-missed / --scst-wrong-count /
    --scst-repeat: each caption's reward (samples and greedy baseline alike) is its CIDEr-D + w_t x true relations
    - w_f x false ones - w_p x absent objects named - w_m x objects left out - w_c x numbers stated wrong - w_r x
    present objects named too often, counted against its own image's objects. A decoder taught four captions (one
    true relation, one false, one phantom that leaves both objects out, one wrong total that names an object twice)
    samples every kind."""
    from captioner.scene_metrics import truth_counts
    from captioner.text import SPECIALS, Vocab

    itos = [*SPECIALS, *"a red circle blue square green star to the left right of three shapes and".split()]
    vocab = Vocab(itos)
    said = ["a red circle to the left of a blue square", "a red circle to the right of a blue square",
            "a green star", "three shapes a red circle and a red circle"]
    objs = [{"colour": "red", "shape": "circle", "bbox": [10, 50, 20, 20]},  # the red circle is left of the square
            {"colour": "blue", "shape": "square", "bbox": [150, 50, 20, 20]}]
    torch.manual_seed(0)
    dec = Decoder(DecoderConfig(vocab_size=len(itos), feature_dim=C, grid=(2, 3), embed_dim=16, attention_dim=8,
                                hidden_dim=32, dropout=0.0))
    f = feats(1, seed=5)
    taught = torch.tensor([vocab.encode(c.split()) + [PAD_ID] * (10 - len(c.split())) for c in said])
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    for _ in range(150):
        logits, _ = dec(f.expand(len(said), -1, -1), taught)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(itos)), taught[:, 1:].reshape(-1),
                                                 ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    K, L = 12, 16

    def step(weights: tuple[float, ...], relation_objects: int = 0) -> dict:
        cfg = TrainConfig(scst=True, scst_samples=K, sample_max_len=L, seed=6, scst_relation_objects=relation_objects,
                          **dict(zip(TRUTH_WEIGHTS, weights)))
        data = SimpleNamespace(captions=[[vocab.encode(c.split()) for c in said[:1]]], ds=SimpleNamespace(
            image_ids=[42]))
        run = SimpleNamespace(cfg=cfg, dist=SimpleNamespace(enabled=False, rank=0, world=1), dtype=None, scaler=None,
                              model=SimpleNamespace(decoder=dec, cfg=SimpleNamespace(decoder=dec.cfg), vocab=vocab),
                              net=SampledCaptions(dec), trainable=list(dec.parameters()), train_ds=data,
                              source=SimpleNamespace(objects={"train": {42: objs, 7: []}}),
                              optimizer=torch.optim.SGD(dec.parameters(), lr=0.0))  # the decoder stays as it is
        return SelfCritical(run)(f, torch.tensor([[0]]), 0)

    u = uniforms(6, 0, WORDS, 1, (K, L)).reshape(K, L)
    samples = [vocab.decode_tokens(c) for c in words_of(SampledCaptions(dec)(f.expand(K, -1, -1), u)[0])]
    greedy = vocab.decode_tokens(greedy_search(dec, f, L)[0].best.tokens)
    counts = torch.tensor([truth_counts(c, objs) for c in samples], dtype=torch.float64)
    assert (counts.sum(dim=0) > 0).all(), (samples, counts)  # relations true and false, phantoms, misses, numbers,
    w = (1.0, 2.0, 0.5, 0.25, 0.75, 1.5)  # repeats
    plain, paid = step((0.0,) * 6), step(w)
    signed = torch.tensor(w, dtype=torch.float64) * torch.tensor(TRUTH_SIGNS, dtype=torch.float64)
    expected = (counts @ signed).mean().item()
    assert "truth" not in plain and paid["truth"].item() == pytest.approx(expected, abs=1e-6)
    assert (paid["reward"] - plain["reward"]).item() == pytest.approx(expected, abs=1e-5)
    g = truth_counts(greedy, objs)
    assert (paid["baseline"] - plain["baseline"]).item() == pytest.approx(
        (torch.tensor(g, dtype=torch.float64) @ signed).item(), abs=1e-5)
    # --scst-relation-objects N: true relations are paid only in scenes of at most N objects (this one has two),
    # false ones charged in every scene
    assert step(w, relation_objects=2)["truth"].item() == pytest.approx(expected, abs=1e-6)
    unpaid = counts.clone()
    unpaid[:, 0] = 0
    assert step(w, relation_objects=1)["truth"].item() == pytest.approx((unpaid @ signed).mean().item(), abs=1e-6)
    assert counts[:, 0].sum() > 0 and counts[:, 1].sum() > 0  # so both asserts above can tell the difference
    with pytest.raises(ValueError, match="give it too"):
        TrainConfig(scst=True, scst_relation_objects=2)
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(scst=True, scst_true_relation=1.0, scst_relation_objects=-1)


def test_mixed_objective_adds_the_weighted_cross_entropy_of_the_reference_the_epoch_draws():
    """--scst-xe gamma: the step's loss is the policy-gradient loss + gamma x the teacher-forced cross-entropy
    (with the attention regulariser) of the reference the cross-entropy stage's dataset draws for that image in
    that epoch (--prefer-captions weights included), for each image of the batch; 0 leaves the step as it was."""
    from captioner.decoder import caption_loss
    from captioner.features import CaptionFeatureDataset, reference_index

    dec = decoder(seed=3)
    f = feats(2, seed=4)
    refs = [[[START_ID, 5, 6, END_ID], [START_ID, 7, 8, 9, 10, END_ID], [START_ID, 11, END_ID]],
            [[START_ID, 12, 13, 14, END_ID], [START_ID, 15, END_ID]]]
    weights = [[1.0, 5.0, 1.0], None]

    def step(gamma: float, epoch: int, words: str | None = None) -> dict:
        cfg = TrainConfig(scst=True, scst_samples=3, sample_max_len=L, seed=6, scst_xe=gamma, att_lambda=0.5,
                          scst_xe_words=words)
        ds = CaptionFeatureDataset.__new__(CaptionFeatureDataset)  # its reference draw, without a feature cache
        ds.__dict__.update(captions=refs, seed=cfg.seed, epoch=epoch, weights=weights, per_image="one")
        vocab = SimpleNamespace(itos=["<pad>", "<start>", "<end>", "<unk>", *(f"w{i}" for i in range(4, V))])
        run = SimpleNamespace(cfg=cfg, dist=SimpleNamespace(enabled=False, rank=0, world=1), dtype=None, scaler=None,
                              model=SimpleNamespace(decoder=dec, cfg=SimpleNamespace(decoder=dec.cfg), vocab=vocab),
                              net=SampledCaptions(dec), trainable=list(dec.parameters()),
                              train_ds=SimpleNamespace(captions=refs, ds=ds),
                              optimizer=torch.optim.SGD(dec.parameters(), lr=0.0))  # the decoder stays as it is
        return SelfCritical(run)(f, torch.tensor([[0], [1]]), 0)

    drawn = set()
    for epoch in range(3):
        chosen = [refs[k][reference_index(6, epoch, k, len(refs[k]), weights[k])] for k in range(2)]
        drawn.add(tuple(map(tuple, chosen)))
        tokens = torch.full((2, max(map(len, chosen))), PAD_ID, dtype=torch.long)
        for row, ref in enumerate(chosen):
            tokens[row, : len(ref)] = torch.tensor(ref)
        expected, _, _ = caption_loss(*dec(f, tokens), tokens, 0.5, "mean", "token")
        plain, mixed = step(0.0, epoch), step(0.7, epoch)
        assert "xe" not in plain and mixed["xe"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert (mixed["loss"] - plain["loss"]).item() == pytest.approx(0.7 * expected.item(), rel=1e-4, abs=1e-6)
        assert mixed["reward"].item() == plain["reward"].item()  # the same samples: the draws are untouched
        # --scst-xe-words: the mean cross-entropy of only the reference words it matches, no regulariser
        logits, _ = dec(f, tokens)
        per_word = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1),
                                                     reduction="none").view(2, -1)
        chosen_words = torch.isin(tokens[:, 1:], torch.tensor([5, 7, 9, 12, END_ID]))
        some = step(0.7, epoch, words="w(5|7|9|12)|<end>")
        assert some["xe"].item() == pytest.approx(per_word[chosen_words].mean().item(), rel=1e-5)
        assert (some["loss"] - plain["loss"]).item() == pytest.approx(0.7 * some["xe"].item(), rel=1e-4, abs=1e-6)
    assert len(drawn) > 1  # the epochs draw different references
    with pytest.raises(ValueError, match="matches no word"):
        step(0.7, 0, words="nothing")
    with pytest.raises(ValueError, match="give --scst-xe too"):
        TrainConfig(scst=True, scst_xe_words="left")
    with pytest.raises(ValueError, match="add --scst true"):
        TrainConfig(scst_xe=0.5)
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(scst=True, scst_xe=-1)


@pytest.fixture(scope="module")
def xe(world, tmp_path_factory):
    """A tiny cross-entropy model to start self-critical training from."""
    base = tmp_path_factory.mktemp("xe")
    train.main(train_args(world, base / "run", base / "cache", 4, dropout=0))
    return base


def scst_args(world: Path, xe: Path, out: Path, epochs: int = 6, **kw) -> list[str]:
    kw = {"scst": "true", "init_from": xe / "run" / "best.pt", "lr": 2e-3, "warmup_steps": 1, "dropout": 0,
          "scst_samples": 4, "sample_max_len": 16, "seed": 2, **kw}
    return train_args(world, out, xe / "cache", epochs, **kw)


@pytest.fixture(scope="module")
def scst_run(world, xe, tmp_path_factory):
    out = tmp_path_factory.mktemp("scst") / "run"
    return out, train.main(scst_args(world, xe, out))


def test_tiny_self_critical_run_raises_the_reward(scst_run, xe):
    out, summary = scst_run
    hist = summary["history"]
    assert [h["stage"] for h in hist] == ["scst"] * 6
    rewards = [h["reward"] for h in hist]  # the sampled captions' mean CIDEr-D: what the objective raises
    assert min(rewards[-2:]) > 1.15 * rewards[0], rewards
    assert all(h["greedy_reward"] == h["baseline"] for h in hist)
    assert all(0 <= h["reward_seconds"] < h["step_seconds"] for h in hist)
    ck = load_checkpoint(out / "last.pt")
    assert ck["train"]["stage"] == "scst" and ck["meta"]["stage"] == "scst"
    assert any((out / "tb").iterdir())
    # config.yaml states the model that trained: the checkpoint's, not train.py's model options
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    model = json.loads(json.dumps(load_checkpoint(xe / "run" / "best.pt")["model"]["config"]))
    assert "hidden_dim" not in cfg and cfg["model"] == model and model["decoder"]["hidden_dim"] == 64


def test_killed_self_critical_run_resumes_to_the_same_numbers(world, xe, scst_run, tmp_path):
    _, ref = scst_run
    out = tmp_path / "b"
    kill_when([sys.executable, str(ROOT / "train.py"), *scst_args(world, xe, out)], (out / "last.pt").exists,
              "its first checkpoint")
    assert load_checkpoint(out / "last.pt")["train"]["epoch"] + 1 < 6, "the run finished before it could be killed"
    resumed = train.main(scst_args(world, xe, out) + ["--resume", str(out / "last.pt")])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(ref["history"], resumed["history"]):
        for k in ("loss", "reward", "baseline"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (k, a, b)


def test_two_processes_train_what_one_process_trains(world, xe, scst_run, tmp_path):
    one_out, one = scst_run
    run_ok(torchrun(2, "train.py", *scst_args(world, xe, tmp_path / "two")))
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    # Each rank draws its rows of the global batch's uniforms: the same samples as one process.
    for a, b in zip(one["history"], two["history"]):
        for k in ("loss", "reward", "baseline"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (k, a, b)
    wa = load_checkpoint(one_out / "last.pt")["model"]["decoder"]
    wb = load_checkpoint(tmp_path / "two" / "last.pt")["model"]["decoder"]
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


@pytest.mark.parametrize("words", [None, "to|the|left|right|of|above|below|with|its"])
def test_mixed_objective_trains_the_same_in_two_processes_and_goes_to_the_second_stage(world, xe, tmp_path, words):
    """--scst-xe (over every reference word, or --scst-xe-words's) on a real run: the references' cross-entropy
    is logged each epoch, two processes (torchrun) train what one trains, and with --then-scst it is the second
    stage's option, not the first's."""
    extra = {"scst_xe": 0.5, "prefer_captions": "left|right", **({"scst_xe_words": words} if words else {})}
    argv = scst_args(world, xe, tmp_path / "one", 2, **extra)
    one = train.main(argv)
    run_ok(torchrun(2, "train.py", *scst_args(world, xe, tmp_path / "two", 2, **extra)))
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["xe"] > 0 and math.isfinite(a["xe"])
        for k in ("loss", "reward", "baseline", "xe"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (k, a, b)
    wa = load_checkpoint(tmp_path / "one" / "last.pt")["model"]["decoder"]
    wb = load_checkpoint(tmp_path / "two" / "last.pt")["model"]["decoder"]
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    plain = load_checkpoint(xe / "run" / "best.pt")["model"]["decoder"]
    assert max((wa[k] - plain[k]).abs().max().item() for k in wa) > 1e-3  # it trained
    args = train.parse_args(train_args(world, tmp_path / "s", xe / "cache", 1) + ["--then-scst", "1",
                                                                                   "--scst-xe", "0.25"])
    first = train.train_config(args)
    assert first.scst_xe == 0 and train.second_stage(args, first).scst_xe == 0.25
    if words:
        args = train.parse_args(train_args(world, tmp_path / "s", xe / "cache", 1) + [
            "--then-scst", "1", "--scst-xe", "0.25", "--scst-xe-words", words])
        first = train.train_config(args)
        assert first.scst_xe_words is None and train.second_stage(args, first).scst_xe_words == words
    with pytest.raises(SystemExit):  # a cross-entropy run alone has no self-critical term to weigh
        train.parse_args(train_args(world, tmp_path / "x", xe / "cache", 1) + ["--scst-xe", "1"])


def test_a_presets_mixed_objective_goes_to_its_self_critical_stage_only(monkeypatch):
    """A preset's --scst-xe reaches its self-critical stage (run after it, or alone), and is left out of a run of
    the preset without that stage, where the same option given by the user is refused."""
    monkeypatch.setitem(train.PRESETS, "mixed", {**train.PRESETS["shapes-base"], "scst_xe": 2.0})
    args = train.parse_args(["--preset", "mixed"])
    assert train.train_config(args).scst_xe == 0 and train.second_stage(args, train.train_config(args)).scst_xe == 2
    alone = train.parse_args(["--preset", "mixed", "--scst", "true", "--init-from", "x.pt"])
    assert train.train_config(alone).scst_xe == 2
    assert train.train_config(train.parse_args(["--preset", "mixed", "--then-scst", "0"])).scst_xe == 0
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "mixed", "--then-scst", "0", "--scst-xe", "1"])


def test_self_critical_needs_a_model_and_a_matching_stage(world, xe, tmp_path):
    with pytest.raises(SystemExit):  # argparse refuses --scst with --fine-tune-encoder before any data is read
        train.parse_args(scst_args(world, xe, tmp_path / "x") + ["--fine-tune-encoder", "true"])
    with pytest.raises(ValueError, match="--init-from"):
        train.main(train_args(world, tmp_path / "y", xe / "cache", 1, scst="true"))
    with pytest.raises(ValueError, match="is a xe run"):  # resuming a cross-entropy run as self-critical
        train.main(scst_args(world, xe, tmp_path / "z") + ["--resume", str(xe / "run" / "last.pt")])


def test_truth_reward_goes_to_the_self_critical_stage_and_needs_the_scenes(world, xe, tmp_path):
    """The truth weights are self-critical options: refused without --scst, or negative, or on data without
    each image's objects; with --then-scst the cross-entropy stage runs without them and the second with them."""
    import shutil

    for bad, match in ((["--scst-phantom", "1"], "add --scst true"), (["--scst-true-relation", "-1"], "positive")):
        with pytest.raises(SystemExit):
            train.parse_args(train_args(world, tmp_path / "x", xe / "cache", 1) + bad)
        with pytest.raises(ValueError, match=match):
            TrainConfig(**{"scst": bad[0] != "--scst-phantom", bad[0][2:].replace("-", "_"): float(bad[1])})
    karpathy = ["--karpathy-json", str(world / "dataset_shapes.json"), "--images", str(world / "images")]
    # a Karpathy-format file has captions, not the scenes' objects
    with pytest.raises(ValueError, match="each training image.s objects"):
        train.main([a for a in scst_args(world, xe, tmp_path / "k", 1, scst_phantom=1) if a != "--shapes-dir"
                    and a != str(world)] + karpathy)
    out = tmp_path / "one"
    shutil.copytree(xe / "run", out)  # the finished first stage: --resume auto goes on to the second
    argv = train_args(world, out, xe / "cache", 4, scst_samples=4, sample_max_len=16, dropout=0) + [
        "--then-scst", "1", "--scst-true-relation", "1", "--scst-false-relation", "2", "--scst-phantom", "1",
        "--scst-missed", "0.5", "--scst-repeat", "3", "--scst-relation-objects", "2", "--resume", "auto"]
    args = train.parse_args(argv)
    first = train.train_config(args)
    second = train.second_stage(args, first)
    assert [getattr(first, k) for k in TRUTH_WEIGHTS] == [0, 0, 0, 0, 0, 0]
    assert [getattr(second, k) for k in TRUTH_WEIGHTS] == [1, 2, 1, 0.5, 0, 3]
    assert (first.scst_relation_objects, second.scst_relation_objects) == (0, 2)
    summary = train.main(argv)
    (entry,) = summary["history"]
    assert entry["stage"] == "scst" and entry["truth"] != 0 and math.isfinite(entry["truth"])
    assert yaml.safe_load((out / "scst" / "config.yaml").read_text())["scst_false_relation"] == 2


def test_then_scst_is_the_two_commands_in_one(world, xe, tmp_path):
    """`--then-scst N` trains the run, then N self-critical epochs from its best.pt in OUT/scst: the same
    numbers as the self-critical command run after it, and the export is the last stage's. The first stage
    is the `xe` fixture's run, copied: `--resume auto` finds it finished and goes on to the second."""
    import shutil

    stage_opts = {"scst_samples": 4, "sample_max_len": 16, "dropout": 0}
    out = tmp_path / "one"
    shutil.copytree(xe / "run", out)
    argv = train_args(world, out, xe / "cache", 4, **stage_opts) + [
        "--then-scst", "1", "--then-scst-lr", "2e-3", "--resume", "auto", "--export", str(tmp_path / "m.pt")]
    summary = train.main(argv)
    first = load_checkpoint(out / "best.pt")["model"]["decoder"]
    fixture = load_checkpoint(xe / "run" / "best.pt")["model"]["decoder"]
    assert all(torch.equal(first[k], fixture[k]) for k in fixture)  # the finished first stage was left as it was
    two = train.main(train_args(world, tmp_path / "two", xe / "cache", 1, scst="true", init_from=xe / "run" / "best.pt",
                                lr=2e-3, warmup_steps=0, patience=0, **stage_opts))
    assert summary["run"] == str(out / "scst") and summary["first_stage"] == str(out)
    assert [h["stage"] for h in summary["history"]] == ["scst"]
    for k in ("loss", "reward", "baseline"):
        assert summary["history"][0][k] == pytest.approx(two["history"][0][k], rel=1e-6), k
    exported = load_checkpoint(tmp_path / "m.pt")["model"]["decoder"]
    final = load_checkpoint(out / "scst" / "best.pt")["model"]["decoder"]
    assert all(torch.equal(exported[k].float(), final[k].half().float()) for k in final)
    assert yaml.safe_load((out / "scst" / "config.yaml").read_text())["init_from"] == str(out / "best.pt")
    # run again: both stages are found finished, nothing is trained again
    again = train.main(argv)
    assert [(h["epoch"], h["loss"]) for h in again["history"]] == [(h["epoch"], h["loss"]) for h in summary["history"]]
    with pytest.raises(SystemExit):
        train.parse_args(train_args(world, out, xe / "cache", 1, scst="true") + ["--then-scst", "1"])


def test_then_scst_shapes_dir_trains_the_stage_on_another_world(world, xe, tmp_path):
    """`--then-scst-shapes-dir DIR`: the self-critical stage trains on another shapes world (generated when
    missing) from the first stage's best.pt, as the stage run alone on that world would; --preset shapes
    trains its cross-entropy stage on the wider world and its stage on the default one, and gives both to a folder the
    user names."""
    import shutil

    other = make_world(tmp_path / "other", seed=4)
    stage_opts = {"scst_samples": 4, "sample_max_len": 16, "dropout": 0}
    out = tmp_path / "one"
    shutil.copytree(xe / "run", out)
    argv = train_args(world, out, xe / "cache", 4, **stage_opts) + [
        "--then-scst", "1", "--then-scst-lr", "2e-3", "--then-scst-shapes-dir", str(other), "--resume", "auto"]
    summary = train.main(argv)
    alone = train.main(train_args(other, tmp_path / "two", xe / "cache", 1, scst="true",
                                  init_from=out / "best.pt", lr=2e-3, warmup_steps=0, patience=0, **stage_opts))
    same_world = train.main(train_args(world, tmp_path / "three", xe / "cache", 1, scst="true",
                                       init_from=out / "best.pt", lr=2e-3, warmup_steps=0, patience=0, **stage_opts))
    assert summary["history"][0]["loss"] == pytest.approx(alone["history"][0]["loss"], rel=1e-6)
    assert summary["history"][0]["loss"] != pytest.approx(same_world["history"][0]["loss"], rel=1e-6)
    with pytest.raises(SystemExit):  # a world for a stage that is not asked for
        train.parse_args(train_args(world, out, xe / "cache", 1) + ["--then-scst-shapes-dir", str(other)])
    demo = train.parse_args(["--preset", "shapes"])
    assert Path(demo.shapes_dir).name == "shapes-wide" and demo.then_scst_shapes_dir == str(train.DEFAULT_SHAPES_DIR)
    alone = train.parse_args(["--preset", "shapes", "--scst", "true", "--init-from", "x.pt"])  # the stage alone
    assert alone.shapes_dir == str(train.DEFAULT_SHAPES_DIR) and alone.shapes_wide_train is None
    mine = train.parse_args(["--preset", "shapes", "--shapes-dir", str(other)])
    assert mine.shapes_dir == str(other) and mine.shapes_wide_train is None and mine.then_scst_shapes_dir is None
