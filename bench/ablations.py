"""The ablation table: what each part of Show, Attend and Tell (and self-critical training) buys on the shapes world.

    python bench/ablations.py                                   # every variant x seeds 1 2 3 (hours on 2 cores)
    python bench/ablations.py --variants none soft hard --seeds 1 2 3
    python bench/ablations.py --report-only                     # the table of the runs on disk
    python bench/ablations.py --device cuda --jobs 4            # on a GPU

Variants (each `train.py --preset shapes-base` at one fixed budget, --epochs, then its options):
  none          no attention: the context is the mean annotation vector at every step (Show-and-Tell-like)
  soft          soft attention (the preset)
  hard          hard attention, section 4.1 (sampled locations + REINFORCE; the expectation at test time)
  soft-nogate   soft attention without the gate beta
  soft-lambda0  soft attention without the doubly stochastic regulariser (lambda = 0)
  soft+scst     soft's best.pt, then self-critical training for --scst-epochs (CIDEr-D, greedy baseline)
  hard+scst     hard's best.pt, then self-critical training for --scst-epochs
  soft+xe       soft's best.pt, then cross-entropy for as long (wall time) as soft+scst took: what the same
                extra time buys without SCST. Both continuations use --stage-lr.

Every run lives in OUT/<variant>-s<seed> (train.py's run folder, resumed with --resume auto when it
was cut short); its best.pt (by val CIDEr, beam 3) is scored by evaluate.py on test and
test_novel and test_shift (beam 3, pycocoevalcap on PTB tokens; captioner.scene_metrics for the
shapes-world scores). Finished runs and scores are kept: run it again to go on where it stopped. Runs go
--jobs at a time, each with cores / jobs threads; each run is scored as soon as it is trained.
The table (mean ± sd over the seeds) is written to OUT/table.md after every run (the rows so far)
and printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.atomic import atomic_write_text  # noqa: E402
from train import CIDER_D_STAGE  # noqa: E402

BASE = {  # name -> train.py options on top of --preset shapes-base
    "none": ["--attention", "none"],
    "soft": ["--attention", "soft"],
    "hard": ["--attention", "hard"],
    "soft-nogate": ["--attention", "soft", "--gate", "none"],
    "soft-lambda0": ["--attention", "soft", "--att-lambda", "0"],
}
STAGED = {"soft+scst": ("soft", "scst"), "hard+scst": ("hard", "scst"), "soft+xe": ("soft", "xe")}  # (from, how)
VARIANTS = [*BASE, *STAGED]
COLUMNS = (  # (header, split, metric)
    ("BLEU-4", "test", "BLEU-4"), ("CIDEr", "test", "CIDEr"), ("scene acc.", "test", "scene_accuracy"),
    ("scene acc. novel", "test_novel", "scene_accuracy"), ("grounding / chance", "test", "grounding_x"),
    ("object recall", "test", "object_recall"), ("CHAIR_i", "test", "CHAIR_i"), ("CHAIR_s", "test", "CHAIR_s"),
    ("relation rate", "test", "relation_rate"), ("relation acc.", "test", "relation_accuracy"),
    ("scene acc. shift", "test_shift", "scene_accuracy"), ("CHAIR_i shift", "test_shift", "CHAIR_i"),
)
SPLITS = ("test", "test_novel", "test_shift")


def _cell(vals: list) -> str:
    vals = [v for v in vals if v is not None and v == v]  # None / NaN: nothing to score
    if not vals:
        return "n/a"
    return f"{statistics.mean(vals):.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")


class Ablations:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.out = Path(args.out)
        threads = max(1, (os.cpu_count() or 2) // args.jobs)
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.lock = threading.Lock()

    def folder(self, name: str, seed: int) -> Path:
        return self.out / f"{name}-s{seed}"

    def run(self, cmd: list[str], log: Path) -> None:
        """Run one train.py / evaluate.py process with this sweep's threads, its output appended to log."""
        log.parent.mkdir(parents=True, exist_ok=True)
        print("$", " ".join(cmd), flush=True)
        with open(log, "a") as f:
            res = subprocess.run(cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        if res.returncode:
            raise RuntimeError(f"{cmd[1]} failed (exit {res.returncode}); see {log}")

    def _common(self, seed: int) -> list[str]:
        a = self.a
        return ["--preset", "shapes-base", "--seed", str(seed), "--device", a.device, "--resume", "auto",
                "--no-progress", "--then-scst", "0",  # not the preset's own stage: the staged variants do theirs
                *CIDER_D_STAGE,  # ... with CIDEr-D alone, as the table says
                "--cache-dir", a.cache_dir, *(["--shapes-dir", a.shapes_dir] if a.shapes_dir else []),
                *a.train_args.split()]

    def train(self, name: str, seed: int) -> None:
        out = self.folder(name, seed)
        if (out / "summary.json").is_file():
            return
        a = self.a
        if name in BASE:
            opts = ["--epochs", str(a.epochs), *BASE[name]]
        else:
            source, how = STAGED[name]
            init = self.folder(source, seed) / "best.pt"
            opts = ["--init-from", str(init), "--lr", str(a.stage_lr), "--warmup-steps", "0", "--patience", "0"]
            if how == "scst":
                opts += ["--scst", "true", "--epochs", str(a.scst_epochs), "--scst-samples", str(a.scst_samples)]
            else:
                opts += ["--epochs", str(self._equal_time_epochs(seed))]
        self.run([sys.executable, "train.py", "--out", str(out), *self._common(seed), *opts], out / "train.log")

    def _equal_time_epochs(self, seed: int) -> int:
        """Cross-entropy epochs that take what soft+scst's training took (from the runs' own timings)."""
        scst = json.loads((self.folder("soft+scst", seed) / "summary.json").read_text())["history"]
        soft = json.loads((self.folder("soft", seed) / "summary.json").read_text())["history"]
        per_epoch = statistics.mean(h["train_seconds"] for h in soft)
        return max(1, round(sum(h["train_seconds"] for h in scst) / per_epoch))

    def evaluate(self, name: str, seed: int) -> None:
        out = self.folder(name, seed)
        for split in self.a.splits:
            if (out / "eval" / f"metrics_{split}_beam3.json").is_file() or not (out / "best.pt").is_file():
                continue
            world = ["--shapes-dir", self.a.shapes_dir] if self.a.shapes_dir else []
            self.run([sys.executable, "evaluate.py", "--checkpoint", str(out / "best.pt"), "--split", split,
                       "--out", str(out / "eval"), "--no-meteor", "--no-progress", "--device", self.a.device,
                       "--cache-dir", self.a.cache_dir, *world], out / "eval.log")

    def results(self, name: str, seed: int) -> dict | None:
        out = self.folder(name, seed)
        scores = {}
        for split in self.a.splits:
            f = out / "eval" / f"metrics_{split}_beam3.json"
            if not f.is_file():
                return None
            m = json.loads(f.read_text())["metrics"]
            g, chance = m.get("grounding"), m.get("grounding_chance")
            m["grounding_x"] = g / chance if g is not None and chance else None
            scores[split] = m
        hist = json.loads((out / "summary.json").read_text())["history"]
        scores["minutes"] = sum(h["seconds"] for h in hist) / 60
        return scores

    def table(self) -> str:
        a = self.a
        head = ["variant", "runs", *(c[0] for c in COLUMNS), "train min"]
        lines = [f"Shapes world, beam 3, best.pt by val CIDEr; {a.epochs} epochs per base run, SCST "
                 f"{a.scst_epochs} epochs at lr {a.stage_lr} ({a.scst_samples} samples); seeds "
                 f"{' '.join(map(str, a.seeds))}; mean ± sd over seeds.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in a.variants:
            runs = [r for r in (self.results(name, s) for s in a.seeds) if r is not None]
            if runs:
                cells = [_cell([r.get(split, {}).get(key) for r in runs]) for _, split, key in COLUMNS]
                minutes = _cell([r["minutes"] for r in runs])
                lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {minutes} |")
        return "\n".join(lines)

    def go(self) -> None:
        a = self.a
        sources = sorted({STAGED[n][0] for n in a.variants if n in STAGED} - set(a.variants))
        base = [(n, s) for s in a.seeds for n in [*(n for n in a.variants if n in BASE), *sources]]
        scst = [(n, s) for s in a.seeds for n in STAGED if STAGED[n][1] == "scst"
                and (n in a.variants or (n == "soft+scst" and "soft+xe" in a.variants))]
        xe = [("soft+xe", s) for s in a.seeds if "soft+xe" in a.variants]  # needs soft+scst's time
        if base:  # the first run alone: it generates the shapes world and the feature caches the others share
            self.job(*base[0])
        with ThreadPoolExecutor(a.jobs) as pool:
            for jobs in (base[1:], scst, xe):
                list(pool.map(lambda job: self.job(*job), jobs))

    def job(self, name: str, seed: int) -> None:
        """Train one run, score it (when it is a row of the table) and write the table so far."""
        self.train(name, seed)
        if name in self.a.variants:
            self.evaluate(name, seed)
        self.write_table()

    def write_table(self) -> str:
        with self.lock:  # two jobs may finish at once
            table = self.table()
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "table.md", table + "\n")
        return table


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=6, help="cross-entropy epochs of every base run (the budget)")
    p.add_argument("--scst-epochs", type=int, default=2, help="self-critical epochs after the base run")
    p.add_argument("--scst-samples", type=int, default=5, help="captions sampled per image in self-critical training")
    p.add_argument("--stage-lr", type=float, default=2e-4, help="learning rate of the continuations (scst, xe)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores / jobs threads)")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                   help="the splits every run is scored on (a column of a split left out reads n/a)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "runs" / "ablations"))
    p.add_argument("--cache-dir", default=str(ROOT / "cache"))
    p.add_argument("--shapes-dir", default=None, help="the shapes world (default: train.py's)")
    p.add_argument("--train-args", default="", help="more train.py options for every run, e.g. '--hidden-dim 256'")
    p.add_argument("--report-only", action="store_true", help="print the table of the runs on disk")
    args = p.parse_args(argv)
    ab = Ablations(args)
    if not args.report_only:
        ab.go()
    table = ab.write_table()
    print("\n" + table)
    return table


if __name__ == "__main__":
    main()
