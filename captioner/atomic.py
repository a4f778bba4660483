"""The one way the project writes a file that others read: atomically.

Checkpoints, the shapes world's annotation files, feature-cache markers and indexes, batch
captioning's outputs, and the run files (config.yaml, history.json, summary.json, metrics and
predictions) all go through `atomic_write`: the bytes go to a hidden temporary file in the same
folder, are flushed and fsynced, get an ordinary file's permissions (as `open()` would give,
following the umask; mkstemp's are owner-only), and the file is renamed over the target in one
step. A reader (or a run killed half-way) sees the old file or the new one, never half of one.

`exclusive(folder)` keeps two processes from writing the same folder at once (two training runs
given the same --out would overwrite each other's checkpoints).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

log = logging.getLogger(__name__)


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


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        return True
    return True


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, what: str = "run", *, name: str = ".lock",
              wait: float | None = None) -> Iterator[Path]:
    """Hold `folder/<name>` while the block runs; a second process asking for the same lock is refused, or,
    with `wait` (seconds between looks), waits until the first one is done.

    The lock file names its process and machine. One left behind by a process of this machine that
    no longer runs (a killed run) is taken over; one of another machine (a shared file system)
    cannot be checked and is respected: the error says which file to delete if that run is gone.
    """
    path = Path(folder) / name
    here = socket.gethostname()
    me = f"{os.getpid()} {here}"
    tries, told = 0, False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
            break
        except FileExistsError:
            try:
                pid_text, host = path.read_text().split()[:2]
                pid = int(pid_text)
            except (OSError, ValueError):  # being written this instant, or unreadable: look again
                pid, host = None, None
                time.sleep(0.1)
            live_here = pid is not None and host == here and pid != os.getpid() and _running(pid)
            if wait is not None and live_here:
                if not told:
                    log.info("waiting for process %d, which holds %s (another %s)", pid, path, what)
                    told = True
                time.sleep(wait)
                continue
            if pid is not None and (host != here or live_here):
                raise RuntimeError(f"{folder} is being written by another {what} (process {pid} on {host}); "
                                   f"give this one another folder, or delete {path} if that {what} is gone") from None
            if pid is not None:
                path.unlink(missing_ok=True)  # its process is gone: take the folder over
            tries += 1
            if tries >= 3:
                raise RuntimeError(f"could not lock {folder}: {path} keeps reappearing") from None
    with os.fdopen(fd, "w") as f:
        f.write(me + "\n")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
