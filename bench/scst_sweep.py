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
--splits split. --jobs runs that many stages at once, each in its own process with one thread
(on a GPU they share it). Resumable: finished stages and evaluations are kept. Prints a markdown
table per split, mean ± std over the models, and writes it to --report when given.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality_sweep import KEYS, _cell  # noqa: E402

# The stage's options besides the variant's (the demo preset's truth weights and val CIDEr unless a variant sets
# them; --preset shapes-relations's stage is t2f2 chosen by val scene accuracy).
STAGE = ["--preset", "shapes", "--scst", "true", "--epochs", "2", "--warmup-steps", "0", "--lr", "5e-4",
         "--patience", "0", "--no-progress"]
VARIANTS = {  # name -> the weights it varies (t: true relation, f: false relation, m: missed, p: phantom)
    "t1f2": ["--scst-true-relation", "1", "--scst-false-relation", "2"],  # the demo preset's stage
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
# The same with the mean of the other samples of the image as the baseline instead of the greedy caption's
# reward: each image then weighs a caption that states a relation against one that does not.
VARIANTS.update({f"{k}-mean": [*v, "--scst-baseline", "mean"] for k, v in list(VARIANTS.items())})


def _job(name: str, seed: int, xe: str, args: argparse.Namespace, lock: threading.Lock) -> None:
    out = Path(args.out) / f"{name}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(out / "log.txt", "a") as log:
        def run(cmd: list[str]) -> None:
            with lock:
                print(f"[{name}-s{seed}] {' '.join(cmd[1:4])} ...", flush=True)
            subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                           check=True)
        data = [*(["--shapes-dir", args.shapes_dir] if args.shapes_dir else []),
                *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
        if not (out / "summary.json").is_file():
            run(["train.py", *STAGE, "--init-from", xe, "--seed", str(seed), "--out", str(out),
                 "--device", args.device, "--resume", "auto", *data, *VARIANTS[name], *args.extra])
        for split in args.splits:
            if not (out / "eval" / f"metrics_{split}_beam3.json").is_file():
                run(["evaluate.py", "--checkpoint", str(out / "best.pt"), "--split", split, "--out", str(out / "eval"),
                     "--no-meteor", "--no-progress", "--device", args.device, *data,
                     *(["--max-images", str(args.max_images)] if args.max_images else [])])


def report(args: argparse.Namespace, seeds: list[int]) -> str:
    lines = []
    for split in args.splits:
        lines += [f"\n{split} (beam 3; self-critical stage from the cross-entropy models of seeds "
                  f"{' '.join(map(str, seeds))})\n", f"| variant | runs | {' | '.join(KEYS)} |",
                  "|---|---|" + "---|" * len(KEYS)]
        for name in args.variants:
            runs = []
            for s in seeds:
                f = Path(args.out) / f"{name}-s{s}" / "eval" / f"metrics_{split}_beam3.json"
                if f.is_file():
                    runs.append(json.loads(f.read_text())["metrics"])
            if runs:
                lines.append(f"| {name} | {len(runs)} | " + " | ".join(_cell([r.get(k) for r in runs]) for k in KEYS)
                             + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--xe", action="append", required=True, metavar="SEED=PATH",
                   help="a cross-entropy model to start from, and the seed of the stages from it (repeat)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--splits", nargs="+", default=["val", "test", "test_novel"])
    p.add_argument("--jobs", type=int, default=1, help="stages run at once (one process, one thread each)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(ROOT / "runs" / "scst_sweep"))
    p.add_argument("--shapes-dir", help="the shapes world (default: train.py's, data/shapes)")
    p.add_argument("--cache-dir", help="feature cache root (default: train.py's, cache)")
    p.add_argument("--max-images", type=int, help="evaluate on this many images of each split (smoke runs)")
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
        lock = threading.Lock()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(_job, name, seed, xes[seed], args, lock): f"{name}-s{seed}"
                       for name in args.variants for seed in seeds}
            for fut, label in futures.items():
                try:
                    fut.result()
                except subprocess.CalledProcessError as exc:
                    failed.append(label)
                    print(f"[{label}] failed ({exc}); see {Path(args.out) / label / 'log.txt'}", flush=True)
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
