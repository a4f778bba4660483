"""The self-critical stage's weights, measured: variants of it from the same cross-entropy models.

    python bench/scst_sweep.py --xe 0=runs/cand/s0/best.pt --xe 1=runs/cand/s1/best.pt
    python bench/scst_sweep.py --xe 0=A.pt --xe 1=B.pt --variants t3f3 t2f3 --jobs 16 --device cuda
    python bench/scst_sweep.py --xe 0=A.pt --report-only

The preset's last stage is `train.py --scst true --init-from XE`: two epochs of self-critical
training whose reward is CIDEr-D plus the truth terms (--scst-true-relation, --scst-false-relation,
--scst-phantom, --scst-missed, --scst-wrong-count). Which weights make a model that states
relations and is right about them without losing the objects is what this measures: each variant
starts from each given cross-entropy model (SEED=PATH, the seed the stage itself runs with) in
OUT/<variant>-s<seed>, and its best.pt (by val CIDEr, beam 3) is scored by `evaluate.py` on each
--splits split. --jobs runs that many stages at once, each in its own process with cores / jobs
threads (on a GPU they share it), through bench/ablations.py's runner (logs: train.log,
eval.log). Resumable: finished stages and evaluations are kept. Prints a markdown table per split,
mean ± std over the models, and writes it to --report when given.
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ablations import Ablations  # noqa: E402
from bench.quality_sweep import table_lines  # noqa: E402
from train import PRESETS, RELATION_WORDS, RELATIONAL, RELATIONAL_BELOW_THREE  # noqa: E402

# The stage as --preset shapes-base runs it after its cross-entropy epochs (train.second_stage: its epochs and rate, no
# warm-up, no early stop; the preset's truth weights and val CIDEr unless a variant or --extra sets them;
# --preset shapes-relations's stage is t2f2 chosen by val scene accuracy).
STAGE = ["--preset", "shapes-base", "--scst", "true", "--epochs", str(PRESETS["shapes-base"]["then_scst"]),
         "--lr", str(PRESETS["shapes-base"]["then_scst_lr"]), "--warmup-steps", "0", "--patience", "0", "--no-progress"]
VARIANTS = {  # name -> the weights it varies (t: true relation, f: false relation, m: missed, p: phantom)
    "t1f2": ["--scst-true-relation", "1", "--scst-false-relation", "2"],  # the base preset's stage
    "t2f2": ["--scst-true-relation", "2", "--scst-false-relation", "2"],
    "t2f3": ["--scst-true-relation", "2", "--scst-false-relation", "3"],
    "t2f4": ["--scst-true-relation", "2", "--scst-false-relation", "4"],
    "t3f3": ["--scst-true-relation", "3", "--scst-false-relation", "3"],
    "t3f3-m3p2": ["--scst-true-relation", "3", "--scst-false-relation", "3", "--scst-missed", "3",
                  "--scst-phantom", "2"],
    "t2f3-m3p2": ["--scst-true-relation", "2", "--scst-false-relation", "3", "--scst-missed", "3",
                  "--scst-phantom", "2"],
    "t3f3-lr3": ["--scst-true-relation", "3", "--scst-false-relation", "3", "--lr", "3e-4"],
    "t3f3-e3": ["--scst-true-relation", "3", "--scst-false-relation", "3", "--epochs", "3"],
    "t2f2-m3p2": ["--scst-true-relation", "2", "--scst-false-relation", "2", "--scst-missed", "3",
                  "--scst-phantom", "2"],
}
# With the mixed objective (--scst-xe gamma, Paulus et al. 2018): gamma x the cross-entropy of one reference per
# image, drawn as --preset shapes-relations draws them (relation-stating references twice as likely), holds the
# model to the references' relation statements while the reward moves it.
MIXED = ["--prefer-captions", RELATIONAL, "--prefer-weight", "2"]
VARIANTS.update({f"t2f2-x{g}": [*VARIANTS["t2f2"], "--scst-xe", g, *MIXED] for g in ("1", "4", "8")})
VARIANTS["t2f2-m3p2-x4"] = [*VARIANTS["t2f2-m3p2"], "--scst-xe", "4", *MIXED]
VARIANTS.update({f"{w}-x1": [*VARIANTS[w], "--scst-xe", "1", *MIXED] for w in ("t2f3", "t2f4")})
# ... with the cross-entropy over only the words that state where things are (the words of the world's relation
# and position references, none of its colours, shapes, sizes or numbers): the habit of stating relations without
# the colour-shape pairs' priors (train.RELATION_WORDS).
VARIANTS["t2f2-x4r"] = [*VARIANTS["t2f2-x4"], "--scst-xe-words", RELATION_WORDS]
VARIANTS["t2f2-x2r"] = [*VARIANTS["t2f2"], "--scst-xe", "2", *MIXED, "--scst-xe-words", RELATION_WORDS]
VARIANTS["t2f2-m3p2-x2r"] = [*VARIANTS["t2f2-m3p2"], "--scst-xe", "2", *MIXED, "--scst-xe-words", RELATION_WORDS]
# ... with the relation terms halved (1 / 1): the reward left to the objects, the relation words held by gamma.
VARIANTS["t1f1-x2r"] = ["--scst-true-relation", "1", "--scst-false-relation", "1", "--scst-xe", "2", *MIXED,
                        "--scst-xe-words", RELATION_WORDS]
# ... and t2f2-x2r with its references drawn as the world writes them (no preference for the relational ones,
# which state a relation in 40% of the references): a relation rate nearer the references' than the 0.99 above.
VARIANTS["t2f2-x2r-u"] = [*VARIANTS["t2f2"], "--scst-xe", "2", "--scst-xe-words", RELATION_WORDS]
# ... and t1f1-x2r charging a present object named more often than it is there (--scst-repeat W: on top of the
# object it leaves out, a third object named as the first again costs more than a wrong guess at it).
VARIANTS.update({f"t1f1-x2r-r{w}": [*VARIANTS["t1f1-x2r"], "--scst-repeat", w] for w in ("2", "4")})
# ... and t1f1-x2r drawing twice as often only the relation-stating references without "with" (the direct and the
# ordering forms, not the pronoun form "B with A to its left and C to its right", whose captions named the objects
# of the scene less often: 0.64-0.77 of three-object scenes against 0.76-0.79 in the direct form).
NO_PRONOUN = r"^(?!.*\bwith\b).*\b(left|right|above|below|top|bottom|middle|centre)\b"
VARIANTS["t1f1-x2r-np"] = [*VARIANTS["t1f1-x2r"], "--prefer-captions", NO_PRONOUN]
# ... and t1f1-x2r stating relations only where they are easy: true relations paid only in scenes of one or two
# objects (--scst-relation-objects 2; false ones charged everywhere), the relation-stating references of those
# scenes and the lists of three-object scenes drawn twice as often (from a cross-entropy stage drawn so too).
VARIANTS["t1f1-x2r-o2"] = [*VARIANTS["t1f1-x2r"], "--prefer-captions", RELATIONAL_BELOW_THREE,
                           "--scst-relation-objects", "2"]
VARIANTS.update({f"t3f3-x{g}": [*VARIANTS["t3f3"], "--scst-xe", g, *MIXED] for g in ("1", "4")})
# The same with the mean of the other samples of the image as the baseline instead of the greedy caption's
# reward: each image then weighs a caption that states a relation against one that does not.
VARIANTS.update({f"{k}-mean": [*v, "--scst-baseline", "mean"] for k, v in list(VARIANTS.items())})


def _job(ab: Ablations, name: str, seed: int, xe: str) -> None:
    """Train the variant's stage from xe (unless done) and score it on every split not yet scored."""
    a, out = ab.a, ab.folder(name, seed)
    if not (out / "summary.json").is_file():
        ab.run([sys.executable, "train.py", *STAGE, "--init-from", xe, "--seed", str(seed), "--out", str(out),
                "--device", a.device, "--resume", "auto", "--cache-dir", a.cache_dir,
                *(["--shapes-dir", a.shapes_dir] if a.shapes_dir else []), *VARIANTS[name], *a.extra],
               out / "train.log")
    ab.evaluate(name, seed)


def report(args: argparse.Namespace, seeds: list[int]) -> str:
    lines = []
    for split in args.splits:
        files = {name: [Path(args.out) / f"{name}-s{s}" / "eval" / f"metrics_{split}_beam3.json" for s in seeds]
                 for name in args.variants}
        runs = {name: [json.loads(f.read_text())["metrics"] for f in fs if f.is_file()] for name, fs in files.items()}
        lines += [f"\n{split} (beam 3; self-critical stage from the cross-entropy models of seeds "
                  f"{' '.join(map(str, seeds))})\n", *table_lines(args.variants, runs.get)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--xe", action="append", required=True, metavar="SEED=PATH",
                   help="a cross-entropy model to start from, and the seed of the stages from it (repeat)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--splits", nargs="+", default=["val", "test", "test_novel"])
    p.add_argument("--jobs", type=int, default=1, help="stages run at once (each gets cores / jobs threads)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(ROOT / "runs" / "scst_sweep"))
    p.add_argument("--shapes-dir", help="the shapes world (default: train.py's, data/shapes)")
    p.add_argument("--cache-dir", default=str(ROOT / "cache"), help="feature cache root")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="train.py options added to every stage (e.g. --max-train-images 64 for a smoke run)")
    p.add_argument("--report", help="also write the tables to this file, after each finished stage")
    p.add_argument("--report-only", action="store_true", help="print the tables of the runs on disk")
    args = p.parse_args(argv)
    xes = {}
    for item in args.xe:
        seed, sep, path = item.partition("=")
        if not sep or not seed.isdigit() or not Path(path).is_file():
            p.error(f"--xe {item!r}: expected SEED=PATH of an existing checkpoint")
        xes[int(seed)] = path
    seeds = sorted(xes)
    failed = []
    if not args.report_only:
        ab = Ablations(args)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(_job, ab, name, seed, xes[seed]): f"{name}-s{seed}"
                       for name in args.variants for seed in seeds}
            for fut, label in futures.items():
                try:
                    fut.result()
                except RuntimeError as exc:  # the runner's: which process failed, and its log
                    failed.append(label)
                    print(f"[{label}] {exc}", flush=True)
                if args.report:
                    Path(args.report).write_text(report(args, seeds) + "\n")
    text = report(args, seeds)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    if failed:
        raise SystemExit(f"failed: {' '.join(failed)}")
    return text


if __name__ == "__main__":
    main()
