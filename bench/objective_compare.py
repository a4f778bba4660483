"""The training objective, measured: per-token cross-entropy (the default) against the paper's.

    python bench/objective_compare.py                         # 2 objectives x seeds 1, 2; 6 epochs each
    python bench/objective_compare.py --epochs 14 --seeds 1 2 3

Each run is `train.py --preset shapes-base` with `--objective token` or `--objective paper` and its
own seed, in runs/objective/<objective>-s<seed>. Resumable: a finished run (summary.json) is
kept and an interrupted one continues from its last.pt, so re-running the command after a kill
finishes the table. Prints a markdown table of the last epoch's validation scores (beam 3,
pycocoevalcap on PTB tokens, the shapes `val` split): mean ± std over seeds, and each run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEYS = ("BLEU-4", "CIDEr", "scene_accuracy", "grounding", "relation_rate", "relation_accuracy")
OBJECTIVES = {  # name -> train.py options
    "token": ["--objective", "token"],  # the default: CE per token + 1 x mean_i (1 - sum_t alpha_ti)^2
    "paper": ["--objective", "paper"],  # Xu et al.: CE summed per caption + 1 x sum_i (1 - sum_t alpha_ti)^2
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    p.add_argument("--out", default=str(ROOT / "runs" / "objective"))
    p.add_argument("--report-only", action="store_true", help="print the table of the runs on disk")
    args = p.parse_args(argv)
    import train

    rows = {}
    for name in args.objectives:
        for seed in args.seeds:
            out = Path(args.out) / f"{name}-s{seed}"
            if not args.report_only and not (out / "summary.json").is_file():
                train.main(["--preset", "shapes-base", "--out", str(out), "--epochs", str(args.epochs),
                            "--seed", str(seed), "--resume", "auto", "--no-progress", "--then-scst", "0",
                            *OBJECTIVES[name]])
            if (out / "summary.json").is_file():
                hist = json.loads((out / "history.json").read_text())
                rows[(name, seed)] = hist[-1]
    print(f"\n| objective | seeds | epochs | {' | '.join(KEYS)} |")
    print("|---|---|---|" + "---|" * len(KEYS))
    for name in args.objectives:
        runs = [rows[(name, s)] for s in args.seeds if (name, s) in rows]
        if not runs:
            continue
        cells = []
        for k in KEYS:
            vals = [r["val"].get(k) for r in runs if r["val"].get(k) is not None]
            vals = [v for v in vals if v == v]  # NaN: nothing to score (e.g. no relation stated)
            cells.append("n/a" if not vals else f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"
                         if len(vals) > 1 else f"{vals[0]:.3f}")
        print(f"| {name} | {len(runs)} | {runs[0]['epoch']} | {' | '.join(cells)} |")
    print("\nEach run (last epoch): objective, seed, " + ", ".join(KEYS) + ", train seconds per epoch")
    for (name, seed), r in sorted(rows.items()):
        print(name, seed, *(f"{r['val'].get(k, float('nan')):.4f}" for k in KEYS), r["train_seconds"])


if __name__ == "__main__":
    main()
