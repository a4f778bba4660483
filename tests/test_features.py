"""The feature cache on real files with the real encoder: a run reuses every finished cache that
holds its images (a subset is read by id), extends them with a folder of the missing images only,
and never deletes or rewrites a cache, or another job's unfinished one, that another run wrote."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from captioner import features
from captioner.encoder import Encoder, EncoderConfig
from captioner.features import CaptionFeatureDataset, FeatureCache, build_feature_cache, cached_features
from captioner.sources import shapes_source
from captioner.text import Vocab, tokenize
from tiny import make_world

N = 32  # train images; batches of 8 and halves of 16, so a half is whole batches of the full run
KW = dict(batch_size=8, progress=False)


class Interrupted(Exception):
    """Stands in for a kill: raised by the encoder hook in the middle of a build."""


class Counted:
    """The encoder with a forward pre-hook: how many images it encoded, and an optional action per call."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.images = 0
        self.action = None
        encoder.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.images += args[0].shape[0]
        if self.action is not None:
            self.action(self)

    def reset(self) -> Encoder:
        self.images, self.action = 0, None
        return self.encoder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sizes = {"train": N, "val": 2, "test": 2, "test_novel": 2}
    return make_world(tmp_path_factory.mktemp("world"), seed=4, sizes=sizes)


@pytest.fixture(scope="module")
def records(world):
    recs = shapes_source(world).split("train")
    assert len(recs) == N
    return recs


@pytest.fixture(scope="module")
def enc():
    return Counted(Encoder(EncoderConfig()).eval())


@pytest.fixture(scope="module")
def one_go(enc, records, tmp_path_factory):
    """The cache of all N images built in one go: the reference features."""
    view = cached_features(enc.reset(), records, tmp_path_factory.mktemp("ref"), "shapes", "train", **KW)
    assert enc.images == N
    return view


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: content hash, size, mtime and inode."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (digest, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def ids(recs) -> list[int]:
    return [r.image_id for r in recs]


def same_features(view, ref, image_ids) -> bool:
    return all(np.array_equal(view.features(i), ref.features(i)) for i in image_ids)


def test_a_smaller_run_reads_the_full_cache_and_leaves_it_untouched(enc, records, one_go, tmp_path):
    full = cached_features(enc.reset(), records, tmp_path, "shapes", "train", **KW)
    assert enc.images == N
    # a cache built from scratch serves exactly what its folder holds, in the records' order
    folder = FeatureCache(full.folder)
    assert full.image_ids == folder.image_ids == ids(records) and not full.failed
    assert np.array_equal(full.array, folder.array)
    assert same_features(full, one_go, ids(records))  # the same encoder on the same batches: bit for bit
    before = snapshot(tmp_path)

    half = cached_features(enc.reset(), records[: N // 2], tmp_path, "shapes", "train", **KW)
    assert enc.images == 0  # read, not recomputed
    assert snapshot(tmp_path) == before  # same files, same bytes, same inodes and mtimes, no new folder
    assert half.image_ids == ids(records[: N // 2]) and len(half) == N // 2 and not half.failed
    assert half.folder == full.folder
    assert same_features(half, folder, half.image_ids)
    assert all(i not in half.row_of for i in ids(records[N // 2:]))  # the view holds the requested images only


def test_a_bigger_run_extends_the_smaller_cache_beside_it(enc, records, one_go, tmp_path, caplog):
    small = cached_features(enc.reset(), records[: N // 2], tmp_path, "shapes", "train", **KW)
    assert enc.images == N // 2
    small_folder = small.folder
    before = snapshot(small_folder)

    with caplog.at_level(logging.INFO, logger="captioner.features"):
        full = cached_features(enc.reset(), records, tmp_path, "shapes", "train", **KW)
    assert enc.images == N - N // 2  # only the missing half went through the encoder
    assert snapshot(small_folder) == before  # the smaller cache is untouched
    assert full.image_ids == ids(records) and len(full) == N and not full.failed
    # the second half sits in a new folder beside the first, holding only those images
    folders = sorted(p for p in small_folder.parent.iterdir())
    assert len(folders) == 2 and small_folder in folders, folders
    (extension,) = [p for p in folders if p != small_folder]
    assert FeatureCache(extension).image_ids == ids(records[N // 2:])
    assert f"reusing {small_folder}" in caplog.text and f"computing features for {N // 2} of {N}" in caplog.text
    # Same encoder on the same 8-image batches (the halves are whole batches): bit-identical to one go.
    assert same_features(full, one_go, ids(records))
    # the two-folder view pickles without its memory maps (DataLoader workers) and reads the same
    back = pickle.loads(pickle.dumps(full))
    assert all(p._arr is None for p in back.parts)
    assert same_features(back, one_go, ids(records))
    # and training reads it in the records' order
    vocab = Vocab.build((tokenize(c) for r in records for c in r.captions), min_count=1)
    ds = CaptionFeatureDataset(full, records, vocab)
    assert ds.image_ids == ids(records) and len(ds) == N
    assert np.array_equal(ds[N - 1][0].numpy(), one_go.features(records[N - 1].image_id))

    # a third run of the full set reads both folders and writes nothing
    after = snapshot(tmp_path)
    again = cached_features(enc.reset(), records, tmp_path, "shapes", "train", **KW)
    assert enc.images == 0 and snapshot(tmp_path) == after
    assert again.image_ids == ids(records) and same_features(again, one_go, ids(records))


def test_two_disjoint_subsets_alternating_build_once_each(enc, records, one_go, tmp_path):
    a, b = records[: N // 2], records[N // 2:]
    cached_features(enc.reset(), a, tmp_path, "shapes", "train", **KW)
    cached_features(enc.encoder, b, tmp_path, "shapes", "train", **KW)
    assert enc.images == N
    before = snapshot(tmp_path)
    for recs in (a, b, a, b):
        view = cached_features(enc.reset(), recs, tmp_path, "shapes", "train", **KW)
        assert enc.images == 0, "a cache was rebuilt"
        assert view.image_ids == ids(recs) and same_features(view, one_go, ids(recs))
    assert snapshot(tmp_path) == before


def test_an_unreadable_image_stays_failed_and_is_not_read_again(enc, records, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(Path(records[3].path).read_bytes()[:200])  # truncated JPEG
    recs = list(records[:8])
    recs[3] = dataclasses.replace(recs[3], path=str(bad))
    root = tmp_path / "cache"
    first = cached_features(enc.reset(), recs, root, "shapes", "train", **KW)
    assert enc.images == 7 and [f["image_id"] for f in first.failed] == [recs[3].image_id]
    before = snapshot(root)

    opened = []  # every image file the cache code decodes
    real = features.load_image
    monkeypatch.setattr(features, "load_image", lambda p: (opened.append(p), real(p))[1])
    sub = cached_features(enc.reset(), recs[2:6], root, "shapes", "train", **KW)
    assert enc.images == 0 and not opened  # nothing decoded, nothing encoded
    assert snapshot(root) == before
    assert [f["image_id"] for f in sub.failed] == [recs[3].image_id] and sub.failed[0]["path"] == str(bad)
    assert sub.image_ids == ids([recs[2], recs[4], recs[5]]) and recs[3].image_id not in sub.row_of
    assert same_features(sub, first, sub.image_ids)

    # a bigger set: only the new images are read; the known failure is not tried again
    more = cached_features(enc.reset(), recs + list(records[8:12]), root, "shapes", "train", **KW)
    assert enc.images == 4 and sorted(opened) == sorted(r.path for r in records[8:12])
    assert [f["image_id"] for f in more.failed] == [recs[3].image_id]
    assert more.image_ids == [i for i in ids(recs + list(records[8:12])) if i != recs[3].image_id]


def test_another_jobs_partial_cache_is_left_alone_and_resumed_later(enc, records, one_go, tmp_path, caplog):
    a, b = records[: N // 2], records[N // 2:]
    kw = dict(KW, batch_size=4, chunk_size=4)

    def kill_after_first_batch(c: Counted) -> None:
        if c.images > 4:
            raise Interrupted

    enc.reset()
    enc.action = kill_after_first_batch
    with pytest.raises(Interrupted):
        cached_features(enc.encoder, a, tmp_path, "shapes", "train", **kw)
    (partial,) = (tmp_path / "shapes").glob("*.partial")
    assert (partial / "chunk-000000.json").is_file()  # one chunk of A is done
    before = snapshot(partial)

    other = cached_features(enc.reset(), b, tmp_path, "shapes", "train", **kw)  # another job, meanwhile
    assert enc.images == len(b) and other.image_ids == ids(b)
    assert partial.is_dir() and snapshot(partial) == before  # A's unfinished work is not touched

    with caplog.at_level(logging.INFO, logger="captioner.features"):
        resumed = cached_features(enc.reset(), a, tmp_path, "shapes", "train", **kw)  # A again: it resumes
    assert "1 of 4 chunks already done" in caplog.text
    assert enc.images == len(a) - 4 and not partial.exists()
    assert resumed.image_ids == ids(a)
    # batches of 4 here, of 8 in one_go: equal on this CPU, but kernels may differ by batch size (fp16: 1 ulp)
    for i in ids(a):
        np.testing.assert_allclose(resumed.features(i).astype(np.float32), one_go.features(i).astype(np.float32),
                                   rtol=2e-3, atol=1e-2)
    assert not list((tmp_path / "shapes").glob("*.partial"))


def test_a_finished_folder_is_never_replaced(enc, records, one_go, tmp_path):
    recs = records[:8]
    done = tmp_path / "done"
    build_feature_cache(enc.reset(), recs, done, **KW)
    before = snapshot(done)

    # the same job again: nothing computed, nothing written
    again = build_feature_cache(enc.reset(), recs, done, **KW)
    assert enc.images == 0 and snapshot(done) == before and again.image_ids == ids(recs)

    # other images into that folder: refused, never a rebuild in place
    with pytest.raises(FileExistsError):
        build_feature_cache(enc.reset(), records[8:16], done, **KW)
    assert enc.images == 0 and snapshot(done) == before

    # another process finishes the same job while this one runs: its folder is kept, this work dropped
    dest = tmp_path / "raced"
    enc.reset()
    copied = {}

    def finish_elsewhere(c: Counted) -> None:
        if not dest.exists():
            shutil.copytree(done, dest)
            copied.update(snapshot(dest))

    enc.action = finish_elsewhere
    cache = build_feature_cache(enc.encoder, recs, dest, **KW)
    enc.reset()
    assert copied and snapshot(dest) == copied  # the other process's folder, as it wrote it
    assert sorted(os.listdir(tmp_path)) == ["done", "raced"]  # no work folder left behind
    assert cache.image_ids == ids(recs) and same_features(cache, FeatureCache(done), ids(recs))


def test_a_cache_written_before_folders_were_named_by_their_images_is_reused(enc, records, one_go, tmp_path):
    """A cache an earlier release wrote in the base folder (here, in its oldest format: no
    "rows" in index.json) serves later runs, a subset or the full set, and is never rewritten."""
    built = cached_features(enc.reset(), records, tmp_path, "shapes", "train", **KW).folder
    base = built.with_name(built.name.split("+")[0])
    built.rename(base)
    index = json.loads((base / "index.json").read_text())
    del index["rows"], index["format"]  # as the first releases wrote it: no format, no rows
    (base / "index.json").write_text(json.dumps(index))
    before = snapshot(tmp_path)
    for recs in (records[5:9], records):
        view = cached_features(enc.reset(), recs, tmp_path, "shapes", "train", **KW)
        assert enc.images == 0 and view.folders == [base]
        assert view.image_ids == ids(recs) and same_features(view, one_go, ids(recs))
    assert snapshot(tmp_path) == before


def test_cache_format_is_versioned(tmp_path):
    import json

    from captioner.features import CACHE_FORMAT, FeatureCache

    (tmp_path / "index.json").write_text(json.dumps({"format": CACHE_FORMAT + 1, "image_ids": [], "rows": []}))
    with pytest.raises(ValueError, match="newer than this release reads"):
        FeatureCache(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"image_ids": [5, 9]}))  # format 1: one row per id, in order
    assert FeatureCache(tmp_path).row_of == {5: 0, 9: 1}
    (tmp_path / "index.json").write_text(json.dumps({"format": 2, "image_ids": [5, 9], "rows": [3, 1]}))
    assert FeatureCache(tmp_path).row_of == {5: 3, 9: 1}


def test_preferred_references_are_drawn_as_often_as_weighted():
    from captioner.features import reference_index, reference_weights

    caps = ["a red circle", "a red circle to the left of a blue square", "two shapes", "a blue square above it"]
    w = reference_weights(caps, r"\b(left|above)\b", 3.0)
    assert w == [1.0, 3.0, 1.0, 3.0]
    assert reference_weights(caps, None, 3.0) is None and reference_weights(caps, "left", 1.0) is None
    draws = [reference_index(0, epoch, 7, 4, w) for epoch in range(4000)]
    share = sum(d in (1, 3) for d in draws) / len(draws)
    assert share == pytest.approx(6 / 8, abs=0.03)  # 3 + 3 of 1 + 3 + 1 + 3
    assert draws == [reference_index(0, epoch, 7, 4, w) for epoch in range(4000)]  # a function of its inputs
    # no preference: the draw of every earlier release (seeded runs keep their data order)
    assert [reference_index(5, e, 2, 5) for e in range(50)] == [
        random.Random((5 * 1_000_003 + e) * 1_000_003 + 2).randrange(5) for e in range(50)]


def test_two_processes_asking_for_the_same_features_at_once_build_them_once(tmp_path):
    """Two evaluations of one split started together (bench/ablations.py runs two jobs at a time): the
    second waits for the first's build and reads it; before, the second crashed on the renamed folder."""
    world = make_world(tmp_path / "w", seed=8, sizes={"train": 48, "val": 4, "test": 4, "test_novel": 4})
    cmd = [sys.executable, "extract_features.py", "--shapes-dir", str(world), "--splits", "train", "--cache-dir",
           str(tmp_path / "c"), "--chunk-size", "8", "--batch-size", "4", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    # one computed; the other waited for it (or found it finished) and computed nothing
    assert sum(("waiting for process" in e or "already finished" in e or "reusing" in e) for e in errs) >= 1, errs
    (folder,) = (tmp_path / "c").glob("*/train-*")
    assert len(FeatureCache(folder)) == 48
    assert not list((tmp_path / "c").glob("*/*.partial")) and not list((tmp_path / "c").glob("*/.*.lock"))
