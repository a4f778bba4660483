"""bench/scst_sweep.py end to end on a tiny shapes world: real train.py / evaluate.py processes, two stages at
once from one cross-entropy model, each with its variant's weights and the seed given with the model, the table,
and a second invocation that trains and scores nothing again."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import scst_sweep  # noqa: E402

import train  # noqa: E402
from tiny import make_world, train_args  # noqa: E402


def test_sweep_runs_each_variant_from_the_model_once_and_reports_it(tmp_path):
    world = make_world(tmp_path / "world", seed=4)
    cache = tmp_path / "cache"
    train.main(train_args(world, tmp_path / "xe", cache, 1, max_train_images=24, max_val_images=6))
    out = tmp_path / "sweep"
    argv = ["--xe", f"3={tmp_path / 'xe' / 'best.pt'}", "--variants", "t2f2", "t1f2-mean", "--splits", "test",
            "--jobs", "2", "--out", str(out), "--shapes-dir", str(world), "--cache-dir", str(cache),
            "--extra", "--epochs", "1", "--batch-size", "8", "--max-train-images", "16",
            "--max-val-images", "6", "--val-beam", "1", "--scst-samples", "2", "--sample-max-len", "12"]
    table = scst_sweep.main(argv)
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    assert set(rows) == {"t2f2", "t1f2-mean"}, table
    for cells in rows.values():
        assert cells[1] == "1" and cells[2] != "n/a" and cells[4] != "n/a", cells  # BLEU-4, scene accuracy
    for name, weights, baseline in (("t2f2", (2.0, 2.0), "greedy"), ("t1f2-mean", (1.0, 2.0), "mean")):
        cfg = yaml.safe_load((out / f"{name}-s3" / "config.yaml").read_text())
        assert (cfg["scst_true_relation"], cfg["scst_false_relation"]) == weights and cfg["scst"]
        assert cfg["scst_baseline"] == baseline and cfg["seed"] == 3 and cfg["epochs"] == 1
        assert cfg["init_from"] == str(tmp_path / "xe" / "best.pt")
        assert cfg["scst_missed"] == train.PRESETS["shapes-base"]["scst_missed"]  # the preset's other terms
    # run again: everything is on disk, nothing is trained or scored again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.pt")} | {p: p.stat().st_mtime_ns
                                                                     for p in out.glob("*/eval/*.json")}
    assert len(stamps) >= 6
    assert scst_sweep.main(argv) == table
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    with pytest.raises(SystemExit):  # a model that is not there
        scst_sweep.main(["--xe", f"1={tmp_path / 'missing.pt'}", "--out", str(out)])
