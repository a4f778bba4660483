"""The COCO dress rehearsal: the README's COCO commands, run end to end on a dataset of COCO's size.

    python bench/coco_scale.py --scale 0.1                 # a tenth of COCO (about 12k images)
    python bench/coco_scale.py --scale 1.0                 # full size: several hours on 2 CPU cores
    python bench/coco_scale.py --scale 1.0 --device cuda --workers 12 --batch-size 256
    python bench/coco_scale.py --scale 0.1 --stages extract,train   # some stages only

The dataset is bench/coco_world.py's COCO-shaped stand-in (generated under ROOT/data first, unless
it is there already). Then every stage runs as its own process, with the command line a user
types (printed), and is measured from outside, polling /proc every second: wall time; the peak
resident memory (RSS) of its main process and the anonymous part of it (its own memory: RSS also
counts file pages, such as a memory-mapped feature cache, that are the kernel's page cache), and
the peak of the memory all its processes hold together (main, DataLoader workers, the Java
scorers), as the sum of their proportional set sizes (PSS: a page shared by forked workers counts
once, not once per process) and of its anonymous part; disk added under ROOT (cache, runs).
Stages:

  setup     reading the annotation files and building the vocabulary (what every run pays first)
  extract   extract_features.py --karpathy-json ... --splits train,val,test (resumable: run again)
  train     train.py --karpathy-json ... --epochs 1: one epoch on all of Karpathy train, then
            validation by beam search on Karpathy val (5,000 x scale images)
  evaluate  evaluate.py --split test on Karpathy test (5,000 x scale images)
  caption   caption.py ROOT/data/val2014 --format coco --image-ids captions_val2014.json
  score     evaluate.py --results on that results file (the val2014 references)
  official  train.py --coco-captions train=... val=... --images ...: the official files' path,
            with its own feature cache (--official-max-train-images to bound it)

Results go to ROOT/rehearsal.json as each stage ends (a killed rehearsal keeps what it measured;
run it again with --stages to redo some) and a table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import coco_world  # noqa: E402

from captioner.atomic import atomic_write_json  # noqa: E402
from machine import cpu_name  # noqa: E402

STAGES = ("setup", "extract", "train", "evaluate", "caption", "score", "official")
POLL_S = 1.0  # reading /proc costs: every 0.2 s took a fifth of a core from the stage it measured


# --------------------------------------------------------------------------- measuring

def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _kib_fields(path: str, names: tuple[str, ...]) -> list[int]:
    """The "Name:  N kB" fields of a /proc file, in bytes (0 for a process that has gone)."""
    found = dict.fromkeys(names, 0)
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in found:
                    found[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return [found[n] for n in names]


def _rss(pid: int) -> list[int]:
    """(resident bytes, of which anonymous: the process's own memory, not file pages such as a memory-mapped
    feature cache, which count in RSS but are the kernel's page cache, dropped under pressure)."""
    return _kib_fields(f"/proc/{pid}/status", ("VmRSS", "RssAnon"))


def _pss(pid: int) -> list[int]:
    """(proportional set size, its anonymous part): pages shared by n processes count 1/n in each, so a
    sum over processes is the memory they hold together (forked DataLoader workers share most of their
    parent's pages)."""
    return _kib_fields(f"/proc/{pid}/smaps_rollup", ("Pss", "Pss_Anon"))


def tree_memory(pid: int) -> tuple[int, int, int, int]:
    """(resident bytes of pid, its anonymous part; proportional bytes of pid and all its descendants
    together, their anonymous part)."""
    children, total, anon, todo = _children(), 0, 0, [pid]
    while todo:
        p = todo.pop()
        pss, pss_anon = _pss(p)
        total, anon = total + pss, anon + pss_anon
        todo.extend(children.get(p, []))
    return (*_rss(pid), total, anon)


def disk_bytes(*paths: Path) -> int:
    """Bytes allocated on disk under these paths (st_blocks, so sparse and partial files count as written)."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_blocks * 512
            continue
        for folder, _, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_blocks * 512
                except OSError:
                    pass
    return total


def run_measured(cmd: list[str], log_path: Path, watch: list[Path], env: dict | None = None) -> dict:
    """Run cmd (its output to log_path), polling its memory; returns time, memory, disk and exit status."""
    before = disk_bytes(*[p for p in watch if p.exists()])
    peak = {"main": 0, "anon": 0, "tree": 0, "tree_anon": 0}
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                for key, value in zip(("main", "anon", "tree", "tree_anon"), tree_memory(proc.pid)):
                    peak[key] = max(peak[key], value)
                done.wait(POLL_S)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        rc = proc.wait()
        done.set()
        watcher.join()
    seconds = time.monotonic() - start
    after = disk_bytes(*[p for p in watch if p.exists()])
    return {"seconds": round(seconds, 1), "peak_rss_main_mb": round(peak["main"] / 2**20),
            "peak_anon_main_mb": round(peak["anon"] / 2**20),
            "peak_pss_all_mb": round(peak["tree"] / 2**20), "peak_pss_anon_all_mb": round(peak["tree_anon"] / 2**20),
            "disk_added_mb": round((after - before) / 2**20),
            "exit_code": rc}


def last_json_line(path: Path) -> dict | None:
    """The last line of a log that is a JSON object (evaluate.py's metrics line)."""
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


# --------------------------------------------------------------------------- the stages

def _setup_costs(data: str) -> None:
    """Run in its own process (--setup-only): what reading the files and building the vocabulary cost."""
    from captioner import sources
    from captioner.text import Vocab, tokenize

    timings = {}
    t = time.monotonic()
    karpathy = sources.karpathy_source(f"{data}/dataset_coco.json", data)
    timings["read dataset_coco.json (Karpathy, image files checked)"] = time.monotonic() - t
    t = time.monotonic()
    coco = sources.coco_source({s: f"{data}/annotations/captions_{s}2014.json" for s in ("train", "val")},
                               {s: f"{data}/{s}2014" for s in ("train", "val")})
    timings["read captions_{train,val}2014.json (image files checked)"] = time.monotonic() - t
    t = time.monotonic()
    tokens = [tokenize(c) for r in karpathy.split("train") for c in r.captions]
    timings["tokenize Karpathy train captions"] = time.monotonic() - t
    t = time.monotonic()
    vocab = Vocab.build(tokens, min_count=5)
    timings["build the vocabulary (min_count 5)"] = time.monotonic() - t
    print(json.dumps({"timings_s": {k: round(v, 2) for k, v in timings.items()},
                      "karpathy_train_images": len(karpathy.split("train")), "karpathy_train_captions": len(tokens),
                      "coco_train_images": len(coco.split("train")), "vocabulary": len(vocab)}))


def stage_commands(args: argparse.Namespace, root: Path) -> dict[str, list[str]]:
    """Each stage's command lines, as a user types them (python = this interpreter)."""
    py, data, cache, runs = sys.executable, root / "data", root / "cache", root / "runs"
    karpathy = ["--karpathy-json", f"{data}/dataset_coco.json", "--images", str(data)]
    common = ["--cache-dir", str(cache), "--device", args.device, "--no-progress"]
    official_extra = (["--max-train-images", str(args.official_max_train_images)]
                      if args.official_max_train_images else [])
    batch = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    extract_batch = ["--batch-size", str(args.extract_batch_size)] if args.extract_batch_size else []
    return {
        "setup": [py, "bench/coco_scale.py", "--setup-only", str(data)],
        "extract": [py, "extract_features.py", *karpathy, "--splits", "train,val,test", *common,
                     *extract_batch, "--workers", str(args.workers)],
        "train": [py, "train.py", *karpathy, "--out", f"{runs}/karpathy", *common, "--epochs", "1",
                   *batch, "--workers", str(args.workers)],
        "evaluate": [py, "evaluate.py", "--checkpoint", f"{runs}/karpathy/best.pt", *karpathy, "--split", "test",
                      "--out", f"{runs}/eval", *common, "--workers", str(args.workers)],
        "caption": [py, "caption.py", f"{data}/val2014", "--checkpoint", f"{runs}/karpathy/best.pt",
                     "--format", "coco", "--image-ids", f"{data}/annotations/captions_val2014.json",
                     "--out", f"{runs}/results_val2014.json", "--overwrite", "--device", args.device,
                     "--workers", str(args.workers), "--no-progress"],
        "score": [py, "evaluate.py", "--results", f"{runs}/results_val2014.json",
                   "--coco-captions", f"val={data}/annotations/captions_val2014.json",
                   "--images", f"val={data}/val2014", "--split", "val", "--out", f"{runs}/score"],
        "official": [py, "train.py", "--coco-captions", f"train={data}/annotations/captions_train2014.json",
                      "--coco-captions", f"val={data}/annotations/captions_val2014.json",
                      "--images", f"train={data}/train2014", "--images", f"val={data}/val2014",
                      "--out", f"{runs}/coco2014", *common, "--epochs", "1", *official_extra,
                      *batch, "--workers", str(args.workers)],
    }


def _fresh(path: Path) -> None:
    """A stage that writes a run folder starts it afresh (only this rehearsal's own folders)."""
    if path.exists():
        shutil.rmtree(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--scale", type=float, default=0.1, help="share of COCO's size (default 0.1)")
    p.add_argument("--root", help="folder for the data, caches and runs (default runs/coco-scale-<scale>)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of every stage (default 2)")
    p.add_argument("--batch-size", type=int, help="training's global batch (default: train.py's)")
    p.add_argument("--extract-batch-size", type=int, help="extract_features.py's batch (default: its own)")
    p.add_argument("--official-max-train-images", type=int, default=0,
                   help="bound the official path's training images (its own cache): 0 = all")
    p.add_argument("--seed", type=int, default=0, help="the dataset's seed")
    p.add_argument("--table", nargs="+", metavar="ROOT",
                   help="only print the stage x scale table of these rehearsals' ROOT/rehearsal.json")
    p.add_argument("--setup-only", metavar="DATA", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.setup_only:
        _setup_costs(args.setup_only)
        return 0
    if args.table:
        print(scale_table([json.loads((Path(r) / "rehearsal.json").read_text()) for r in args.table]))
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        p.error(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    root = Path(args.root or f"runs/coco-scale-{args.scale:g}").resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    report_path = root / "rehearsal.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report.update({"scale": args.scale, "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                                                    "python": platform.python_version()},
                   "device": args.device, "workers": args.workers})
    report.setdefault("stages", {})

    world = coco_world.load(root / "data")
    if not world or (world.get("version"), world.get("seed"), world.get("scale")) != (
            coco_world.VERSION, args.seed, args.scale):
        cmd = [sys.executable, "bench/coco_world.py", "--out", str(root / "data"), "--scale", str(args.scale),
               "--seed", str(args.seed)]
        print("$", shlex.join(cmd), flush=True)
        result = run_measured(cmd, root / "logs" / "generate.log", [root / "data"])
        world = coco_world.load(root / "data")
        if result["exit_code"] or not world:
            print(f"generation failed: see {root / 'logs' / 'generate.log'}", file=sys.stderr)
            return 1
        report["stages"]["generate"] = {**result, "command": shlex.join(cmd)}
        atomic_write_json(report_path, report, indent=1)
    report["dataset"] = {"images": world["images"], "stats": world["stats"]}

    commands = stage_commands(args, root)
    fresh = {"train": root / "runs" / "karpathy", "official": root / "runs" / "coco2014"}
    for stage in stages:
        if stage in fresh:
            _fresh(fresh[stage])
        cmd = commands[stage]
        print("$", shlex.join(cmd), flush=True)
        log = root / "logs" / f"{stage}.log"
        result = run_measured(cmd, log, [root / "cache", root / "runs"])
        result["command"] = shlex.join(cmd)
        # a stage continued after a kill (extract_features.py resumes its chunks) took less than a whole run
        result["resumed"] = "resuming" in log.read_text(errors="replace")
        line = last_json_line(log)
        if line is not None:
            result["output"] = line
        report["stages"][stage] = result
        atomic_write_json(report_path, report, indent=1)
        print(f"  {stage}: {result['seconds']:.0f} s, peak RSS {result['peak_rss_main_mb']} MB "
              f"(anonymous {result['peak_anon_main_mb']} MB) "
              f"(all its processes together {result['peak_pss_all_mb']} MB, anonymous "
              f"{result['peak_pss_anon_all_mb']} MB), disk +{result['disk_added_mb']} MB, "
              f"exit {result['exit_code']}{', resumed' if result['resumed'] else ''}", flush=True)
        if result["exit_code"]:
            print(f"stage {stage} failed: see {log}", file=sys.stderr)
            return 1
    print(scale_table([report]))
    return 0


def scale_table(reports: list[dict]) -> str:
    """Stage x scale: wall time; main process RSS (anonymous) / all processes' PSS (anonymous); disk added."""
    reports = sorted(reports, key=lambda r: r["scale"])
    head = "| stage | " + " | ".join(f"scale {r['scale']:g}: time, memory, disk" for r in reports) + " |"
    rows = [head, "|---|" + "---|" * len(reports)]
    for stage in ("generate", *STAGES):
        cells = []
        for r in reports:
            m = r["stages"].get(stage)
            if not m:
                cells.append("not run")
                continue
            anon = f" ({m['peak_anon_main_mb'] / 1024:.1f})" if "peak_anon_main_mb" in m else ""
            all_anon = f" ({m['peak_pss_anon_all_mb'] / 1024:.1f})" if "peak_pss_anon_all_mb" in m else ""
            resumed = " (resumed: partial)" if m.get("resumed") else ""
            cells.append(f"{m['seconds'] / 60:.1f} min{resumed}, {m['peak_rss_main_mb'] / 1024:.1f}{anon} / "
                         f"{m['peak_pss_all_mb'] / 1024:.1f}{all_anon} GB, +{m['disk_added_mb'] / 1024:.2f} GB")
        rows.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
