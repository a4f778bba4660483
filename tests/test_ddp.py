"""DistributedDataParallel under a real torchrun, on CPU with the gloo backend.

Two processes must train what one process trains with the same global batch and seed, the
feature cache must come out the same when two processes share its chunks, and a worker killed
under torchrun's restarts must resume from the last checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import train
from captioner.features import FeatureCache
from procs import free_port, kill_when
from tiny import make_world, train_args

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train": 64, "val": 16, "test": 8, "test_novel": 8}


def torchrun(nproc: int, *args: str) -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"
    launcher = [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", f"--nproc-per-node={nproc}", *args]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), seed=5, sizes=TINY)


def args(world: Path, out: Path, cache: Path, epochs: int = 3, **kw) -> list[str]:
    # dropout 0: the only randomness left is the data order, which DDP must reproduce exactly
    return train_args(world, out, cache, epochs, dropout=0, seed=11, **kw)


@pytest.mark.parametrize("objective", ["token", "paper"])  # normalised per token / per caption over the world
def test_two_processes_train_what_one_process_trains(world, tmp_path, objective):
    one = train.main(args(world, tmp_path / "one", tmp_path / "cache1", objective=objective))
    run(torchrun(2, "train.py", *args(world, tmp_path / "two", tmp_path / "cache2", objective=objective)))
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert [h["epoch"] for h in two["history"]] == [1, 2, 3]
    cfg = (tmp_path / "two" / "config.yaml").read_text()
    assert "world_size: 2" in cfg
    # Same global batches, globally normalised loss, gradients averaged by DDP: the same
    # optimisation up to the order of floating-point sums.
    for a, b in zip(one["history"], two["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
        for k in ("BLEU-4", "CIDEr"):
            assert b["val"][k] == pytest.approx(a["val"][k], abs=0.02), (k, a["val"], b["val"])
    # checkpoints hold the plain module (no "module." prefix from the DDP wrapper), written by rank 0

    from captioner.checkpoint import load_checkpoint
    from captioner.model import Captioner

    wa = load_checkpoint(tmp_path / "one" / "last.pt")["model"]["decoder"]
    wb = load_checkpoint(tmp_path / "two" / "last.pt")["model"]["decoder"]
    assert wa.keys() == wb.keys()
    # Every weight agrees (earlier releases had attention.score.bias, whose zero gradient Adam turned
    # into +-lr steps of float noise: it is gone).
    diffs = {k: (wa[k] - wb[k]).abs().max().item() for k in wa}
    assert max(diffs.values()) < 1e-4, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    Captioner.from_checkpoint(tmp_path / "two" / "last.pt")
    # the two-process run built its feature cache itself: same features as the one-process cache
    for split in ("train", "val"):
        (c1,) = (tmp_path / "cache1").glob(f"*/{split}-*")
        c2 = tmp_path / "cache2" / c1.relative_to(tmp_path / "cache1")
        a, b = FeatureCache(c1), FeatureCache(c2)
        assert a.image_ids == b.image_ids
        np.testing.assert_allclose(a.array.astype(np.float32), b.array.astype(np.float32),
                                   rtol=2e-3, atol=1e-2)  # fp16: 1 ulp


def test_feature_command_resumes_after_kill_and_shares_chunks(world, tmp_path):
    base = ["extract_features.py", "--shapes-dir", str(world), "--splits", "train", "--chunk-size", "8",
            "--batch-size", "4", "--workers", "0", "--no-progress", "--device", "cpu"]
    run([sys.executable, *base, "--cache-dir", str(tmp_path / "a")])
    (ca,) = (tmp_path / "a").glob("*/train-*")
    a = FeatureCache(ca)
    assert len(a) == TINY["train"] and not a.failed

    # killed after its first finished chunk, then the same command again
    partial = tmp_path / "c" / ca.relative_to(tmp_path / "a").parent / (ca.name + ".partial")
    kill_when([sys.executable, *base, "--cache-dir", str(tmp_path / "c")],
              lambda: any(partial.glob("chunk-*.json")), "its first finished chunk")
    kept = len(list(partial.glob("chunk-*.json")))
    assert 0 < kept < TINY["train"] // 8, "the run finished before it could be killed"
    res = run([sys.executable, *base, "--cache-dir", str(tmp_path / "c")])
    assert f"{kept} of 8 chunks already done" in res.stderr
    c = FeatureCache(tmp_path / "c" / ca.relative_to(tmp_path / "a"))
    assert c.image_ids == a.image_ids and not partial.exists()
    np.testing.assert_allclose(c.array.astype(np.float32), a.array.astype(np.float32),
                               rtol=2e-3, atol=1e-2)  # fp16: 1 ulp

    # two processes share the chunks of one cache
    run(torchrun(2, *base, "--cache-dir", str(tmp_path / "b")))
    b = FeatureCache(tmp_path / "b" / ca.relative_to(tmp_path / "a"))
    assert b.image_ids == a.image_ids
    np.testing.assert_allclose(b.array.astype(np.float32), a.array.astype(np.float32),
                               rtol=2e-3, atol=1e-2)  # fp16: 1 ulp


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_killed_worker_restarts_and_resumes_from_last_checkpoint(world, tmp_path):
    out = tmp_path / "run"
    cmd = torchrun(2, "--max-restarts=1", "train.py", *args(world, out, tmp_path / "cache", epochs=4),
                   "--resume", "auto")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 240
        while not (out / "last.pt").exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)  # a worker dies mid-run, as a node or a GPU might
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_text()
    assert proc.returncode == 0, err[err.find("Traceback"):][:6000] if "Traceback" in err else err[-4000:]
    assert "resumed from" in err  # the restarted workers continued from last.pt, not from scratch
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_two_processes_fine_tune_end_to_end_past_a_corrupt_image(tmp_path):
    """DDP with the encoder's top block trained, images decoded in DataLoader workers; a corrupt
    training image is reported and skipped, never a crash of the run."""
    from captioner import shapes
    from captioner.checkpoint import load_checkpoint

    w = shapes.generate_world(tmp_path / "w", seed=9, sizes={"train": 16, "val": 4, "test": 2, "test_novel": 2},
                              workers=1)
    bad = sorted((w / "images" / "train").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    out = tmp_path / "ft"
    res = run(torchrun(2, "train.py", *args(w, out, tmp_path / "cache", epochs=1), "--fine-tune-encoder",
                       "--fine-tune-blocks", "1", "--batch-size", "8", "--workers", "1"))
    assert "skipping unreadable image" in res.stderr and bad.name in res.stderr
    ck = load_checkpoint(out / "last.pt")
    assert ck["model"]["encoder"] is not None and ck["train"]["world"] == 2
    assert not (tmp_path / "cache").exists()  # end to end: no feature cache


def test_two_nodes_rendezvous_like_several_machines(world, tmp_path):
    """The several-machines command of the README: two torchrun agents (here on one host) meet
    through c10d rendezvous, each with one process, and train as one world of two."""
    port = free_port()
    out = tmp_path / "nodes"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*torchrun(1, "train.py", *args(world, out, tmp_path / "cache", epochs=1))]
    cmd = [c for c in cmd if c != "--standalone"]
    at = cmd.index("train.py")
    nodes = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test-nodes"]
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]
    agents = [subprocess.Popen(cmd[:at] + nodes + cmd[at:], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=log) for log in logs]
    try:
        codes = [a.wait(timeout=300) for a in agents]
    finally:
        for a, log in zip(agents, logs):
            if a.poll() is None:
                a.kill()
                a.wait()
            log.close()
    assert codes == [0, 0], [(tmp_path / f"node{i}.log").read_text()[-3000:] for i in range(2)]
    assert "world_size: 2" in (out / "config.yaml").read_text()
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]

