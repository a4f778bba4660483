"""train.main and evaluate.main end to end on a tiny shapes world, and resume after a real kill."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

import evaluate
import train
from captioner.checkpoint import load_checkpoint
from captioner.metrics import METRIC_KEYS, NLTK_BLEU_KEYS
from procs import kill_when
from tiny import TINY, train_args

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(world: Path, out: Path, cache: Path, epochs: int = 5) -> list[str]:
    return train_args(world, out, cache, epochs)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    out = base / "a"
    summary = train.main(tiny_args(world, out, base / "cache"))
    return out, base / "cache", summary


def test_train_main_loss_falls_and_writes_the_run(trained):
    out, cache, summary = trained
    losses = [h["loss"] for h in summary["history"]]
    ce = [h["ce"] for h in summary["history"]]
    assert len(losses) == 5
    assert losses[-1] < 0.8 * losses[0] and ce[-1] < 0.7 * ce[0], summary["history"]
    for name in ("config.yaml", "last.pt", "best.pt", "history.json", "summary.json"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())  # TensorBoard events
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["epochs"] == 5 and cfg["hidden_dim"] == 64
    ck = load_checkpoint(out / "last.pt")
    assert ck["train"]["epoch"] == 4 and ck["model"]["encoder"] is None
    # the checkpoint names the world by its content, not its folder (a clone elsewhere writes the same file)
    from captioner.sources import shapes_source
    assert ck["meta"]["dataset"] == shapes_source(cfg["shapes_dir"], generate=False).identity
    assert cfg["shapes_dir"] not in ck["meta"]["dataset"]
    assert {"BLEU-4", "CIDEr"} <= set(summary["history"][-1]["val"])
    assert summary["history"][-1]["val_images"] == TINY["val"]  # the default subset, 5,000, holds all 12
    # the feature cache was written once, for train and val, and is what a second run reuses
    assert len(list(Path(cache).glob("*/*/feats.npy"))) == 2


def test_yaml_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 9\nlr: 0.5\nhidden_dim: 128\n")
    args = train.parse_args(["--config", str(cfg), "--lr", "0.1", "--preset", "shapes-base"])
    tc = train.train_config(args)
    assert (tc.epochs, tc.lr, tc.hidden_dim) == (9, 0.1, 128)
    cfg.write_text("no_such_option: 1\n")
    with pytest.raises(SystemExit):
        train.parse_args(["--config", str(cfg)])


def test_resume_after_kill_matches_uninterrupted_run(world, trained, tmp_path):
    ref_out, cache, ref = trained
    out = tmp_path / "b"
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_args(world, out, cache)]
    kill_when(cmd, (out / "last.pt").exists, "its first checkpoint")
    done = load_checkpoint(out / "last.pt")["train"]["epoch"] + 1
    assert done < 5, "the run finished before it could be killed"
    resumed = train.main(tiny_args(world, out, cache) + ["--resume", str(out / "last.pt")])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5]
    for a, b in zip(ref["history"], resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (a, b)
        assert a["val"]["CIDEr"] == pytest.approx(b["val"]["CIDEr"], rel=1e-6, abs=1e-7)
    ra = load_checkpoint(ref_out / "last.pt")["model"]["decoder"]
    rb = load_checkpoint(out / "last.pt")["model"]["decoder"]
    assert all(torch.allclose(ra[k], rb[k], atol=1e-6) for k in ra)


def test_evaluate_main_writes_predictions_and_metrics(trained, world, tmp_path, capsys):
    out, cache, _ = trained
    res = evaluate.main(["--checkpoint", str(out / "best.pt"), "--shapes-dir", str(world), "--split", "test_novel",
                         "--out", str(tmp_path), "--cache-dir", str(cache), "--no-progress", "--beam", "2"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    line = json.loads(last)
    expected = set(METRIC_KEYS) | set(NLTK_BLEU_KEYS) | {"scene_accuracy", "grounding", "grounding_chance",
                                                         "relation_accuracy", "relation_rate", "position_accuracy",
                                                         "object_recall", "CHAIR_i", "CHAIR_s", "count_error_rate"}
    if res["info"].get("skipped", {}).get("METEOR"):
        expected.discard("METEOR")
    assert set(line) == expected
    preds = json.loads((tmp_path / "predictions_test_novel_beam2.json").read_text())
    assert len(preds) == TINY["test_novel"] and {"image_id", "caption"} == set(preds[0])
    info = json.loads((tmp_path / "metrics_test_novel_beam2.json").read_text())["info"]
    assert info["split"] == "test_novel" and info["beam"] == 2 and "PTB" in info["tokenizer"]
    if info["grounding_words"]:
        assert 0.0 < line["grounding_chance"] < 1.0 and 0.0 <= line["grounding"] <= 1.0
    else:  # no generated word named an object: reported as null, not a made-up number
        assert line["grounding"] is None and line["grounding_chance"] is None


def test_refuses_to_resume_from_an_exported_model(trained, world, tmp_path):
    from captioner.checkpoint import export_inference

    out, cache, _ = trained
    small = export_inference(out / "best.pt", tmp_path / "small.pt")
    with pytest.raises(ValueError, match="no training state"):
        train.main(tiny_args(world, tmp_path / "c", cache) + ["--resume", str(small)])


def test_fine_tune_encoder_end_to_end(world, tmp_path):
    out = tmp_path / "ft"
    args = tiny_args(world, out, tmp_path / "cache", epochs=1)
    summary = train.main(args + ["--fine-tune-encoder", "--fine-tune-blocks", "1", "--max-train-images", "16",
                                 "--max-val-images", "4", "--batch-size", "8"])
    assert summary["epochs_run"] == 1 and not (tmp_path / "cache").exists()  # no feature cache when fine-tuning
    ck = load_checkpoint(out / "last.pt")
    enc = ck["model"]["encoder"]
    assert enc is not None  # the fine-tuned weights travel with the checkpoint
    from captioner.model import Captioner

    stock = Captioner.from_checkpoint(out / "last.pt")
    assert not stock.encoder.stock_weights  # so evaluation runs the encoder instead of a stale cache
    from captioner.encoder import Encoder

    fresh = Encoder(stock.cfg.encoder).state_dict()
    tuned = stock.encoder.state_dict()
    changed = {k.split(".")[2] for k in fresh if not torch.equal(fresh[k], tuned[k])}
    assert changed == {"4"}  # only the top block trained; frozen blocks kept even their BatchNorm statistics
    res = evaluate.main(["--checkpoint", str(out / "last.pt"), "--shapes-dir", str(world), "--split", "val",
                         "--max-images", "4", "--out", str(tmp_path / "ev"), "--cache-dir", str(tmp_path / "cache"),
                         "--no-progress", "--no-meteor", "--beam", "1"])
    assert res["info"]["images"] == 4 and not (tmp_path / "cache").exists()


def test_gpu_path_flags_run_on_cpu_and_compile_trains_the_same(world, tmp_path):
    """--compile, --precision and --cudnn-benchmark parse and run on CPU (autocast and cuDNN are no-ops
    there); the compiled decoder step trains what the eager one trains, and the checkpoint holds
    the plain module's keys."""
    small = ["--max-train-images", "32", "--max-val-images", "4", "--val-beam", "1", "--dropout", "0"]
    eager = train.main(tiny_args(world, tmp_path / "eager", tmp_path / "cache", epochs=1) + small)
    compiled = train.main(tiny_args(world, tmp_path / "compiled", tmp_path / "cache", epochs=1) + small
                          + ["--compile", "--precision", "bf16", "--cudnn-benchmark", "false"])
    assert compiled["history"][0]["loss"] == pytest.approx(eager["history"][0]["loss"], rel=1e-4)
    a = load_checkpoint(tmp_path / "eager" / "last.pt")["model"]["decoder"]
    b = load_checkpoint(tmp_path / "compiled" / "last.pt")["model"]["decoder"]
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a if k != "attention.score.bias")
    cfg = yaml.safe_load((tmp_path / "compiled" / "config.yaml").read_text())
    assert cfg["compile"] is True and cfg["cudnn_benchmark"] is False and cfg["precision"] == "bf16"


def test_every_reported_metric_can_pick_best_and_unknown_ones_are_refused_first(world, tmp_path):
    base = tmp_path / "vm"
    for metric in ("METEOR", "ROUGE-L", "BLEU-1", "nltk_BLEU-4", "scene_accuracy", "relation_rate"):
        out = base / metric
        summary = train.main(train_args(world, out, base / "cache", 1, max_train_images=16, val_metric=metric,
                                        max_val_images=6))
        assert (out / "last.pt").is_file() and (out / "best.pt").is_file(), metric
        entry = json.loads((out / "history.json").read_text())[0]
        val = entry["val"]
        assert entry["val_images"] == 6
        assert metric in val and {"BLEU-4", "CIDEr"} <= set(val)
        assert summary[f"best_val_{metric}"] == pytest.approx(val[metric]) or val[metric] != val[metric]  # NaN
    # An unknown name stops train.py before it reads data or writes anything.
    with pytest.raises(SystemExit):
        train.main(train_args(world, tmp_path / "bad", tmp_path / "bad-cache", 1, val_metric="bleu4"))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad-cache").exists()
    # A shapes-world metric on data without objects: refused before any feature is computed.
    with pytest.raises(ValueError, match="needs the objects"):
        train.main(train_args(world, tmp_path / "k", tmp_path / "k-cache", 1, val_metric="scene_accuracy")
                   + ["--karpathy-json", str(world / "dataset_shapes.json"), "--images", str(world / "images")])
    assert not (tmp_path / "k-cache").exists()


def test_grad_clip_zero_means_no_clipping(world, tmp_path):
    runs = {}
    for clip in ("0", "1e9"):  # 1e9 never clips: the same run exactly
        runs[clip] = train.main(train_args(world, tmp_path / clip, tmp_path / "cache", 3, grad_clip=clip,
                                           max_train_images=32))["history"]
    losses = [h["loss"] for h in runs["0"]]
    assert losses[-1] < 0.9 * losses[0]  # it trains (max_norm 0 used to scale every gradient to 0)
    assert losses == [h["loss"] for h in runs["1e9"]]


def test_unreadable_evaluation_images_count_as_empty_captions(trained, world, tmp_path, capsys):
    import shutil

    from captioner.metrics import coco_caption_scores
    from captioner.sources import shapes_source

    out, _, _ = trained
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    bad = shapes_source(copy).split("test")[2]
    Path(bad.path).write_bytes(Path(bad.path).read_bytes()[:300])  # truncated JPEG
    args = ["--checkpoint", str(out / "best.pt"), "--shapes-dir", str(copy), "--split", "test", "--out",
            str(tmp_path / "ev"), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--beam", "2", "--no-meteor"]
    res = evaluate.main(args)
    info = res["info"]
    assert info["images"] == TINY["test"] and info["unreadable_images"] == 1
    assert info["unreadable_image_ids"] == [bad.image_id]
    predictions = json.loads((tmp_path / "ev" / "predictions_test_beam2.json").read_text())
    preds = {p["image_id"]: p["caption"] for p in predictions}
    assert len(preds) == TINY["test"] - 1 and bad.image_id not in preds
    refs = {r.image_id: r.captions for r in shapes_source(copy).split("test")}
    expected, _ = coco_caption_scores({**preds, bad.image_id: ""}, refs, meteor=False)
    assert res["metrics"]["CIDEr"] == pytest.approx(expected["CIDEr"])
    assert res["metrics"]["scene_accuracy"] <= (TINY["test"] - 1) / TINY["test"]
    # Or the user asks for the run to be refused, naming the file.
    with pytest.raises(SystemExit, match=Path(bad.path).name):
        evaluate.main(args + ["--unreadable", "error"])


def test_train_config_model_defaults_are_the_model_configs_defaults():
    """TrainConfig states the model options again (they are train.py's flags): their defaults must be the models'."""
    import dataclasses

    from captioner.decoder import DecoderConfig
    from captioner.encoder import EncoderConfig
    from captioner.training import DECODER_OPTIONS, TrainConfig

    cfg = TrainConfig()
    assert cfg.encoder_config() == EncoderConfig()
    dec = {f.name: f.default for f in dataclasses.fields(DecoderConfig)}
    assert {k: getattr(cfg, k) for k in DECODER_OPTIONS} == {k: dec[k] for k in DECODER_OPTIONS}
    # every option has its help, next to its default (train.py's flags are built from these fields)
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))


def test_each_training_caption_is_tokenised_once(world, tmp_path, monkeypatch):
    """The vocabulary and the dataset share one tokenisation (on COCO's 567k captions a pass costs
    about 1.5 minutes of CPU; it used to run twice at every start)."""
    import captioner.features
    import captioner.training
    from captioner.sources import shapes_source

    calls = []

    def counting(module):
        real = module.tokenize
        return lambda text: calls.append(text) or real(text)

    monkeypatch.setattr(captioner.training, "tokenize", counting(captioner.training))
    monkeypatch.setattr(captioner.features, "tokenize", counting(captioner.features))
    train.main(tiny_args(world, tmp_path / "run", tmp_path / "cache", epochs=1))
    captions = [c for r in shapes_source(world, generate=False).split("train") for c in r.captions]
    assert sorted(calls) == sorted(captions)


def test_the_same_run_in_another_folder_exports_the_same_file(world, tmp_path, monkeypatch):
    """What the demo model's reproduction rests on: the preset run from a clone elsewhere (same relative
    options, the world generated afresh there) exports a byte-identical checkpoint."""
    import shutil

    exported = []
    for clone in ("a", "elsewhere/b"):
        here = tmp_path / clone
        shutil.copytree(world, here / "world")
        monkeypatch.chdir(here)
        train.main(train_args(Path("world"), Path("run"), Path("cache"), 1, max_train_images=16, max_val_images=4)
                   + ["--export", "demo.pt"])
        exported.append((here / "demo.pt").read_bytes())
    assert exported[0] == exported[1]


def test_the_preset_ends_with_its_self_critical_epochs_unless_the_run_is_one(tmp_path):
    """`--preset shapes-base` (as `--preset shapes`, the demo model's recipe) is cross-entropy then two
    self-critical epochs; a self-critical run started on the preset's options is that stage itself, and
    --then-scst 0 stops early. Asking for a stage after a self-critical run is still refused."""
    assert train.parse_args(["--preset", "shapes-base"]).then_scst == 2
    assert train.parse_args(["--preset", "shapes"]).then_scst == 2
    assert train.parse_args(["--preset", "shapes-base", "--then-scst", "0"]).then_scst == 0
    args = train.parse_args(["--preset", "shapes-base", "--scst", "true", "--init-from", "x.pt"])
    assert args.then_scst == 0 and train.train_config(args).scst
    # ... at the stage's rate and without warm-up, as the stage runs after the cross-entropy epochs
    stage = train.second_stage(train.parse_args(["--preset", "shapes-base"]), train.train_config(train.parse_args(
        ["--preset", "shapes-base"])))
    alone = train.train_config(args)
    assert (alone.lr, alone.warmup_steps) == (stage.lr, stage.warmup_steps) == (5e-4, 0)
    said = train.train_config(train.parse_args(["--preset", "shapes-base", "--scst", "true", "--init-from", "x.pt",
                                                "--lr", "1e-4", "--warmup-steps", "10"]))
    assert (said.lr, said.warmup_steps) == (1e-4, 10)
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "shapes-base", "--scst", "true", "--then-scst", "1"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("then_scst: 1\n")  # a stage asked for in a config file is asked for too
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "shapes-base", "--config", str(cfg), "--scst", "true"])


def test_the_presets_truth_reward_goes_to_its_self_critical_stage_only(tmp_path):
    """The preset's truth weights and learning rate reach its self-critical stage, never its cross-entropy run;
    they are left out where there is no such stage or the data is not the shapes world, while the same options
    given by the user are still checked."""
    from captioner.training import TRUTH_WEIGHTS

    args = train.parse_args(["--preset", "shapes-base"])
    xe = train.train_config(args)
    scst = train.second_stage(args, xe)
    assert not xe.truth_reward and scst.truth_reward and scst.lr == 5e-4
    base = train.PRESETS["shapes-base"]
    assert [getattr(scst, k) for k in TRUTH_WEIGHTS] == [base.get(k, 0.0) for k in TRUTH_WEIGHTS]
    alone = train.train_config(train.parse_args(["--preset", "shapes-base", "--scst", "true", "--init-from", "x.pt"]))
    assert alone.truth_reward  # the preset's stage run on its own
    # shapes-relations: its stage chosen by val scene accuracy, also run alone, without the cross-entropy stage's
    # supervision terms; the base preset's by CIDEr
    assert xe.val_metric == scst.val_metric == alone.val_metric == "CIDEr"
    rel = train.parse_args(["--preset", "shapes-relations"])
    rel_xe, rel_scst = train.train_config(rel), train.second_stage(rel, train.train_config(rel))
    rel_alone = train.train_config(train.parse_args(["--preset", "shapes-relations", "--scst", "true",
                                                     "--init-from", "x.pt"]))
    assert rel_xe.val_metric == "CIDEr" and rel_scst.val_metric == rel_alone.val_metric == "scene_accuracy"
    assert rel_xe.att_supervision and rel_xe.recall_supervision and rel_xe.compare
    assert not (rel_scst.att_supervision or rel_scst.recall_supervision)
    assert not (rel_alone.att_supervision or rel_alone.recall_supervision) and rel_alone.truth_reward
    assert (rel_scst.scst_true_relation, rel_scst.scst_false_relation) == (2.0, 2.0)
    # shapes, the demo model's: the relation recipe on the wider world it generates, its draw, and its
    # stage's terms (relations paid in scenes of one or two objects, the relation words' cross-entropy)
    nxt = train.parse_args(["--preset", "shapes"])
    nxt_xe, nxt_scst = train.train_config(nxt), train.second_stage(nxt, train.train_config(nxt))
    assert nxt.shapes_dir.endswith("shapes-wide") and nxt.shapes_wide_train == [] and nxt_xe.seed == 1
    assert nxt_xe.prefer_captions == nxt_scst.prefer_captions == train.RELATIONAL_BELOW_THREE
    assert nxt_xe.att_supervision and not nxt_xe.truth_reward and not nxt_xe.scst_xe
    assert not nxt_xe.scst_relation_objects and nxt_scst.scst_relation_objects == 2
    assert (nxt_scst.scst_true_relation, nxt_scst.scst_false_relation, nxt_scst.scst_xe) == (1.0, 1.0, 2.0)
    assert nxt_scst.scst_xe_words == train.RELATION_WORDS and nxt_scst.val_metric == "scene_accuracy"
    assert train.parse_args(["--preset", "shapes-base"]).shapes_dir == str(train.DEFAULT_SHAPES_DIR)
    assert train.train_config(train.parse_args(["--preset", "shapes-relations", "--scst", "true", "--init-from",
                                                "x.pt", "--val-metric", "BLEU-4"])).val_metric == "BLEU-4"
    for argv in (["--then-scst", "0"], ["--data", "coco"]):
        args = train.parse_args(["--preset", "shapes-base", *argv])
        stages = [train.train_config(args), train.second_stage(args, train.train_config(args))]
        assert not any(s is not None and s.truth_reward for s in stages), argv
    with pytest.raises(SystemExit):  # asked for by the user: refused as before
        train.parse_args(["--preset", "shapes-base", "--then-scst", "0", "--scst-phantom", "1"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scst_missed: 3\n")
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "shapes-base", "--then-scst", "0", "--config", str(cfg)])


def test_attention_supervision_puts_the_attention_on_the_objects(world, tmp_path, capsys):
    """--att-supervision: the supervised run's attention mass on its targets rises, and beats that of the same
    run with a vanishing weight (which logs the same term without learning from it); the dataset's target rows
    sit at the steps that predict the supervised words; and the option is refused where it cannot apply."""
    sup = {}
    for w in ("1e-9", "5"):
        history = train.main(train_args(world, tmp_path / w, tmp_path / "cache", 3, att_supervision=w,
                                        coords="true"))["history"]
        sup[w] = [h["sup"] for h in history]  # mean -log(attention mass on the target cells)
    assert sup["5"][-1] < 0.8 * sup["5"][0] and sup["5"][-1] < 0.7 * sup["1e-9"][-1], sup

    from captioner.scene_metrics import _DECIDING, COLOURS, SHAPES
    from captioner.training import TrainConfig
    model, ds = _supervised_dataset(world, tmp_path, TrainConfig(att_supervision=1.0))
    words = set()
    for i in range(len(ds)):
        _, ids, rows = ds[i]
        assert rows.shape == (len(ids) - 1, 196)
        words |= {model.vocab.itos[ids[t + 1]] for t in rows.any(dim=1).nonzero().flatten().tolist()}
    assert words <= set(COLOURS) | set(SHAPES) | {s + "s" for s in SHAPES} | _DECIDING
    assert {"left", "right"} <= words and len(words & set(COLOURS)) >= 4

    with pytest.raises(ValueError, match="supervises soft attention"):
        train.main(train_args(world, tmp_path / "hard", tmp_path / "cache", 1, att_supervision="1", attention="hard"))
    with pytest.raises(SystemExit):  # TrainConfig refuses it with --scst: argparse reports it
        train.main(train_args(world, tmp_path / "scst", tmp_path / "cache", 1, att_supervision="1", scst="true",
                              init_from=tmp_path / "5" / "best.pt"))
    assert "--att-supervision weighs a term of the cross-entropy stage" in capsys.readouterr().err
    # a --then-scst stage after a supervised run is a plain self-critical stage
    args = train.parse_args(train_args(world, tmp_path / "x", tmp_path / "cache", 1, att_supervision="1",
                                       then_scst="1"))
    assert train.second_stage(args, train.train_config(args)).att_supervision == 0


def _supervised_dataset(world, tmp_path, cfg, compare=False):
    """The model of the run in tmp_path/5 and its train split with every reference, carrying the targets
    that training builds for cfg (training._attention_targets: what a supervised run uses); `compare`: as
    for a model with --compare (whose targets cover each relation's phrase)."""
    from captioner.features import CaptionFeatureDataset, FeatureCache
    from captioner.model import Captioner
    from captioner.sources import shapes_source
    from captioner.text import tokenize
    from captioner.training import _attention_targets
    model = Captioner.from_model_state(load_checkpoint(tmp_path / "5" / "best.pt")["model"])
    model.cfg.decoder.compare = compare
    source = shapes_source(world, generate=False)
    records = source.split("train")
    tokens = {r.image_id: [tokenize(c) for c in r.captions] for r in records}
    kw = _attention_targets(cfg, source, model, records, tokens)
    cache = FeatureCache(next((tmp_path / "cache").glob("*/train-*")))
    return model, CaptionFeatureDataset(cache, records, model.vocab, per_image="all", tokens=tokens, **kw)


def test_recall_supervision_reads_back_the_subject(world, tmp_path, capsys):
    """--recall-supervision: the supervised run's recall weight on the subject's entry rises, beyond that of
    the same run with a vanishing weight; the dataset's entries sit at relation words and point at a shape
    word's entry; the option needs --recall and is refused with --scst."""
    rsup = {}
    for w in ("1e-9", "5"):
        history = train.main(train_args(world, tmp_path / w, tmp_path / "cache", 3, recall_supervision=w,
                                        recall="true", coords="true"))["history"]
        rsup[w] = [h["rsup"] for h in history]  # mean -log(recall weight on the target entry)
    assert rsup["5"][-1] < 0.8 * rsup["5"][0] and rsup["5"][-1] < 0.7 * rsup["1e-9"][-1], rsup

    from captioner.features import collate_captions
    from captioner.scene_metrics import _DECIDING, SHAPES
    from captioner.training import TrainConfig
    model, ds = _supervised_dataset(world, tmp_path, TrainConfig(recall=True, recall_supervision=1.0))
    pairs = []
    for i in range(len(ds)):
        _, ids, _, entries = ds[i]
        assert entries.shape == (len(ids) - 1,)
        pairs += [(model.vocab.itos[ids[t + 1]], model.vocab.itos[ids[e]]) for t, e in enumerate(entries.tolist())
                  if e >= 0]
    assert len(pairs) > 20 and all(w in _DECIDING and s in SHAPES for w, s in pairs), pairs[:5]
    batch = collate_captions([ds[0], ds[1], ds[2]])
    assert len(batch) == 4 and batch[3].shape == batch[1][:, 1:].shape and batch[3].dtype == torch.long
    # a --compare model's targets: each relation's phrase reads back the entry its deciding word reads
    _, spanned = _supervised_dataset(world, tmp_path, TrainConfig(recall=True, recall_supervision=1.0), compare=True)
    phrase = []
    for i in range(len(spanned)):
        _, ids, _, entries = spanned[i]
        phrase += [(model.vocab.itos[ids[t + 1]], model.vocab.itos[ids[e]]) for t, e in enumerate(entries.tolist())
                   if e >= 0]
    assert set(pairs) < set(phrase) and {w for w, _ in phrase} - _DECIDING == {"to", "the", "its", "on", "at", "in"}

    with pytest.raises(SystemExit):  # TrainConfig refuses it: argparse reports it
        train.main(train_args(world, tmp_path / "x", tmp_path / "cache", 1, recall_supervision="1"))
    assert "add --recall true" in capsys.readouterr().err
    args = train.parse_args(train_args(world, tmp_path / "x", tmp_path / "cache", 1, recall_supervision="1",
                                       recall="true", then_scst="1"))
    assert train.second_stage(args, train.train_config(args)).recall_supervision == 0
