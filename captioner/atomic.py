"""The one way the project writes a file that others read: atomically.

Checkpoints, the shapes world's annotation files, feature-cache markers and indexes, batch
captioning's outputs, and the run files (config.yaml, history.json, summary.json, metrics and
predictions) all go through `atomic_write`: the bytes go to a hidden temporary file in the same
folder, are flushed and fsynced, get an ordinary file's permissions (as `open()` would give,
following the umask; mkstemp's are owner-only), and the file is renamed over the target in one
step. A reader (or a run killed half-way) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(f)` on a binary temp file beside `path`, then move it over `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, newlines as given."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kw: Any) -> Path:
    """`json.dumps(obj, **dumps_kw)` as UTF-8 (serialised before the file is opened: a bad object writes nothing)."""
    return atomic_write_text(path, json.dumps(obj, **dumps_kw))
