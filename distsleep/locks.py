"""One job at a time per output: an exclusive lock file that says who holds it.

`flock` locks are released by the kernel when the holder dies (even by SIGKILL), so a crashed job never
leaves a stale lock. They are advisory and work across hosts on NFSv4 (Linux maps them to NFS byte-range
locks); on storage without locking (object stores) nothing is locked.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path


class LockHeld(RuntimeError):
    """Another job holds the lock; the message names it and says what to do."""


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no details"


@contextmanager
def exclusive_lock(path: str | Path, what: str, advice: str):
    """Hold an exclusive lock on `path` for the block, or raise LockHeld("<what> is in use by <holder>; <advice>")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"{what} is in use by another job ({describe_holder(path)}); {advice}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
