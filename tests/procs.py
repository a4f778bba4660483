"""Test helpers for real processes: SIGKILL one once it has written something; a free port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def kill_when(cmd: list[str], ready: Callable[[], bool], what: str, timeout: float = 240) -> None:
    """Run cmd in the repository root; SIGKILL it (a real, unclean kill) as soon as ready() holds."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"the process exited before {what}"
            assert time.time() < deadline, f"no {what} after {timeout} s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
