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
