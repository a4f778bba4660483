"""What helps the demo model name only what is there: variants of the shapes-base preset, measured.

    python bench/quality_sweep.py                                 # every variant x seeds 1, 2; 8 epochs each
    python bench/quality_sweep.py --variants base coords --seeds 1 2 3 --epochs 14
    python bench/quality_sweep.py --report-only                   # the table of the runs on disk
    python bench/quality_sweep.py --variants coords lambda0 lambda0+scst --epochs 16   # the preset's budget

Each run is `train.py --preset shapes-base` plus the variant's options, with its own seed and a fixed
number of epochs (EPOCHS-2 in a variant: two fewer, for the self-critical epoch that follows), in
runs/quality/<variant>-s<seed> (its last stage's folder, with --then-scst); its best.pt (by val CIDEr, beam 3) is then
scored by `evaluate.py` on `val` and on `test_shift` (the rendering styles training never sees).
Resumable: finished runs and evaluations (their metrics JSON) are kept, an interrupted run
continues from its last.pt. Prints a markdown table per split: mean ± std over seeds of the
COCO scores (pycocoevalcap, PTB tokens, beam 3) and the shapes-world scores (captioner.scene_metrics).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from train import RELATIONAL  # noqa: E402  (references stating where things are)

VARIANTS = {  # name -> train.py options on top of --preset shapes-base (each says every option it varies)
    "base": ["--coords", "false"],
    "coords": ["--coords", "true"],
    "prefer": ["--coords", "false", "--prefer-captions", RELATIONAL, "--prefer-weight", "3"],
    "coords+prefer": ["--coords", "true", "--prefer-captions", RELATIONAL, "--prefer-weight", "3"],
    # The ablation table's leads (bench/ablations.py): no doubly stochastic regulariser, and a self-critical
    # epoch after fewer cross-entropy ones, so that the preset stays within its 30 minutes.
    "lambda0": ["--coords", "true", "--att-lambda", "0"],
    "lambda0+scst": ["--coords", "true", "--att-lambda", "0", "--epochs", "EPOCHS-2", "--then-scst", "1"],
    # The initial state reads a 3 x 3 pooled grid (bench/relation_probe.py: at a relation word the model looks
    # at neither object, so it cannot know where the one not yet named is).
    "layout": ["--coords", "true", "--layout", "3"],
    "lambda0+layout": ["--coords", "true", "--att-lambda", "0", "--layout", "3"],
    # One self-attention layer over the annotation vectors: the cell under an object also carries the others
    # and where they are, so the decoder can read a relation where it looks at the subject.
    "refine": ["--coords", "true", "--refine", "1"],
    "lambda0+refine": ["--coords", "true", "--att-lambda", "0", "--refine", "1"],
    # Attention supervised with the world's boxes: an object's words look at it, a relation's deciding word at
    # the other object (bench/relation_probe.py: at that word the models looked at neither).
    "attsup": ["--coords", "true", "--att-supervision", "1"],
    # ... with self-attention over the grid: the other object's cell, where the relation word now looks, can then
    # carry where the subject lies relative to it (relation_probe --linear: the LSTM does not keep that place).
    "attsup+refine": ["--coords", "true", "--att-supervision", "1", "--refine", "1"],
    # ... with a memory of where it looked (--recall): a relation word, looking at the other object, can read back
    # the context of the step that named the subject (relation_probe --linear: the LSTM state has lost it).
    "recall": ["--coords", "true", "--recall", "true"],
    "attsup+recall": ["--coords", "true", "--att-supervision", "1", "--recall", "true"],
    # ... and the recall told what to read back at a relation word: the entry of the subject's shape word.
    "attsup+recallsup": ["--coords", "true", "--att-supervision", "1", "--recall", "true",
                         "--recall-supervision", "1"],
    # ... with the references that state a relation drawn 3x as often: more relation words to learn from
    # (relation_probe --linear: with recall supervision the subject's and the other object's places are both
    # there at the relation word, and the word still ignores them).
    "attsup+recallsup+prefer": ["--coords", "true", "--att-supervision", "1", "--recall", "true",
                                "--recall-supervision", "1", "--prefer-captions", RELATIONAL, "--prefer-weight", "3"],
    # ... and the deep output told the difference of the two places exactly (--compare: the attended centre minus
    # the recalled one; relation_probe --linear: the places were there, 0.88 read out linearly, and the model's own
    # captions were right about half the time), with the whole relation phrase supervised ("to" chooses the axis).
    "attsup+recallsup+prefer+compare": ["--coords", "true", "--att-supervision", "1", "--recall", "true",
                                        "--recall-supervision", "1", "--prefer-captions", RELATIONAL,
                                        "--prefer-weight", "3", "--compare", "true"],
}
KEYS = ("BLEU-4", "CIDEr", "scene_accuracy", "object_recall", "CHAIR_i", "CHAIR_s", "count_error_rate",
        "grounding", "relation_rate", "relation_accuracy")
SPLITS = ("val", "test_shift")


def _cell(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and v == v]  # None/NaN: nothing to score
    if not vals:
        return "n/a"
    return f"{statistics.mean(vals):.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")


def table_lines(names, runs_of) -> list[str]:
    """A markdown table, one row per name with runs: `runs_of(name)` gives its runs' metrics dicts."""
    lines = [f"| variant | runs | {' | '.join(KEYS)} |", "|---|---|" + "---|" * len(KEYS)]
    for name in names:
        runs = runs_of(name)
        if runs:
            lines.append(f"| {name} | {len(runs)} | " + " | ".join(_cell([r.get(k) for r in runs]) for k in KEYS)
                         + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--rescore", action="store_true", help="evaluate the finished runs again (new metrics)")
    p.add_argument("--report-only", action="store_true", help="print the table of the runs on disk")
    args = p.parse_args(argv)
    import evaluate

    results: dict[tuple[str, int, str], dict] = {}
    for name in args.variants:
        for seed in args.seeds:
            run = Path(args.out) / f"{name}-s{seed}"
            opts = [o.replace("EPOCHS-2", str(args.epochs - 2)) for o in VARIANTS[name]]
            out = run / "scst" if "--then-scst" in opts else run  # where the model to score is
            if not args.report_only and not (out / "summary.json").is_file():
                train.main(["--preset", "shapes-base", "--out", str(run), "--epochs", str(args.epochs),
                            "--seed", str(seed), "--resume", "auto", "--no-progress", "--then-scst", "0",
                            *train.CIDER_D_STAGE, *opts])
            for split in SPLITS:
                metrics = out / "eval" / f"metrics_{split}_beam3.json"
                if not args.report_only and (out / "best.pt").is_file() and (args.rescore or not metrics.is_file()):
                    evaluate.main(["--checkpoint", str(out / "best.pt"), "--split", split, "--out", str(out / "eval"),
                                   "--no-meteor", "--no-progress"])
                if metrics.is_file():
                    results[(name, seed, split)] = json.loads(metrics.read_text())["metrics"]
    for split in SPLITS:
        print(f"\n{split} (beam 3; {args.epochs} epochs; seeds {' '.join(map(str, args.seeds))})\n")
        runs = {name: [results[(name, s, split)] for s in args.seeds if (name, s, split) in results]
                for name in args.variants}
        print("\n".join(table_lines(args.variants, runs.get)))


if __name__ == "__main__":
    main()
