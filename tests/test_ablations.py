"""bench/ablations.py end to end on a tiny shapes world: the real train.py / evaluate.py processes, the
dependent stages (SCST from a base run, cross-entropy for SCST's wall time), the table, and a second
invocation that trains nothing again."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import ablations  # noqa: E402

from captioner.objectives import TRUTH_WEIGHTS  # noqa: E402
from tiny import make_world  # noqa: E402

TINY_MODEL = ("--embed-dim 16 --attention-dim 16 --hidden-dim 32 --min-count 1 --batch-size 16 --val-beam 1 "
              "--max-val-images 6 --sample-max-len 12")


def test_ablation_table_runs_each_stage_once_and_reports_every_variant(tmp_path):
    world = make_world(tmp_path / "world", seed=4)
    argv = ["--variants", "hard+scst", "soft+xe", "--seeds", "1", "--epochs", "2", "--scst-epochs", "1",
            "--scst-samples", "2", "--jobs", "2", "--out", str(tmp_path / "ab"), "--cache-dir", str(tmp_path / "c"),
            "--shapes-dir", str(world), "--train-args", TINY_MODEL, "--splits", "test", "test_novel"]
    table = ablations.main(argv)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) == {"variant", "hard+scst", "soft+xe"}
    for name in ("hard+scst", "soft+xe"):
        cells = rows[name].strip("| ").split(" | ")
        assert cells[1] == "1" and cells[2] != "n/a" and cells[3] != "n/a", rows[name]  # BLEU-4, CIDEr
        assert cells[-3:-1] == ["n/a", "n/a"], rows[name]  # test_shift: not among the splits scored
    # the stages ran from their sources, with the kinds they say
    ab = tmp_path / "ab"
    hard = json.loads((ab / "hard+scst-s1" / "summary.json").read_text())["history"]
    assert [h["stage"] for h in hard] == ["scst"]
    cfg = (ab / "hard+scst-s1" / "config.yaml").read_text()
    assert f"init_from: {ab / 'hard-s1' / 'best.pt'}" in cfg
    truth = {k: v for k, v in yaml.safe_load(cfg).items() if k in TRUTH_WEIGHTS}
    assert truth == dict.fromkeys(TRUTH_WEIGHTS, 0.0), truth  # the table's SCST is CIDEr-D alone, not the preset's
    xe = json.loads((ab / "soft+xe-s1" / "summary.json").read_text())["history"]
    assert [h["stage"] for h in xe] == ["xe"] * len(xe) and len(xe) == ablations.Ablations(
        ablations.argparse.Namespace(out=str(ab), jobs=1))._equal_time_epochs(1)
    assert not (ab / "soft-s1" / "eval").exists()  # a source run only: not a row, not scored
    # run again: everything is on disk, nothing is trained or scored again
    stamps = {p: p.stat().st_mtime_ns for p in ab.glob("*/*.pt")} | {p: p.stat().st_mtime_ns
                                                                    for p in ab.glob("*/eval/*.json")}
    assert ablations.main(argv) == table
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (ab / "table.md").read_text().strip() == table
