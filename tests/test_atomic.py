"""atomic.atomic_write: the one writer of files others read (checkpoints, annotations, run files, outputs)."""
from __future__ import annotations

import json
import os
import threading

import pytest

from captioner.atomic import atomic_write, atomic_write_json, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "history.json"
    atomic_write_json(target, {"epoch": 1})

    def half_then_fail(f):
        f.write(b'{"epoch": 2, "lo')
        raise KeyboardInterrupt  # a Ctrl-C (or any error) in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]
    with pytest.raises(TypeError):  # an object JSON cannot hold: nothing is written
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"epoch": 1}


def test_an_ordinary_file_in_a_new_folder(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "a" / "b" / "config.yaml", "x: 1\r\ny: é\n")
    finally:
        os.umask(old)
    assert path.read_bytes() == "x: 1\r\ny: é\n".encode()  # newlines and UTF-8 as given
    assert path.stat().st_mode & 0o777 == 0o640  # what open() gives under that umask (mkstemp's is 0o600)


def test_a_reader_never_sees_half_a_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"n": 0, "pad": ""})
    stop, bad = threading.Event(), []

    def read():
        while not stop.is_set():
            try:
                json.loads(target.read_text())
            except ValueError as e:
                bad.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(300):
            atomic_write_json(target, {"n": n, "pad": "x" * (n * 500)})  # up to 150 kB: many write calls
    finally:
        stop.set()
        reader.join()
    assert not bad and json.loads(target.read_text())["n"] == 299


def test_exclusive_refuses_a_folder_a_running_process_holds_and_takes_over_a_dead_ones(tmp_path):
    import signal
    import subprocess
    import sys

    from captioner.atomic import exclusive

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from captioner.atomic import exclusive\n"
        f"with exclusive({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"another run \(process {holder.pid} on .*delete .*\.lock"):
            with exclusive(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its lock stays behind
        holder.wait()
    assert (tmp_path / ".lock").is_file()
    with exclusive(tmp_path) as lock:  # its process is gone: taken over
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / ".lock").exists()  # released


def test_two_training_runs_cannot_share_a_run_folder(tmp_path):
    import subprocess

    import train
    from tiny import make_world, train_args

    world = make_world(tmp_path / "w", seed=4, sizes={"train": 8, "val": 2, "test": 0, "test_novel": 0})
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # stands for the other run: a live process of this machine
    try:
        (out / ".lock").write_text(f"{other.pid} {__import__('socket').gethostname()}\n")
        with pytest.raises(RuntimeError, match="being written by another training run"):
            train.main(train_args(world, out, tmp_path / "cache", epochs=1))
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        other.kill()
        other.wait()
    train.main(train_args(world, out, tmp_path / "cache", epochs=1))  # the holder is gone: this run goes ahead
    assert (out / "last.pt").is_file() and not (out / ".lock").exists()
