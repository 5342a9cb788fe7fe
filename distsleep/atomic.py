"""Atomic file writes: write a temporary sibling, flush it to disk, rename it onto the final name.

A file under its final name is therefore always complete, also after a power loss (the file and then its
folder are fsynced around the rename), and a temporary left by a killed process is recognisable by its name
`.<name>.tmp-<host>-<pid>-<random><suffix>` (the preprocessing job deletes such leftovers under its lock).
Host, pid and a random part make the temporary unique when processes on several hosts write to one shared
filesystem (two hosts can run the same pid); the final suffix stays, so writers that pick a format from the
extension (matplotlib) still work.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path

TEMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    """A sibling of `path` that no other writer on any host picks at the same time."""
    host = socket.gethostname().split(".")[0] or "host"
    return path.with_name(f".{path.name}{TEMP_MARK}{host}-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's) data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; when the block succeeds, fsync it, rename it onto `path` and fsync
    the folder (so the rename itself survives a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(payload, lines: bool = False) -> str:
    """`payload` as indented, key-sorted JSON (or one JSON object per line with `lines=True`)."""
    if lines:
        return "".join(json.dumps(item, sort_keys=True) + "\n" for item in payload)
    return json.dumps(payload, indent=1, sort_keys=True)


def write_json_atomic(path: str | Path, payload, lines: bool = False) -> None:
    write_text_atomic(path, json_text(payload, lines))
