"""Atomic file writes: write a temporary sibling `.<name>.tmp-<pid>`, rename it onto the final name.

A file under its final name is therefore always complete, and a temporary left by a killed process is
recognisable by its name (the preprocessing job deletes such leftovers before it starts).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | Path, payload, lines: bool = False) -> None:
    """`payload` as indented, key-sorted JSON (or one JSON object per line with `lines=True`)."""
    if lines:
        text = "".join(json.dumps(item, sort_keys=True) + "\n" for item in payload)
    else:
        text = json.dumps(payload, indent=1, sort_keys=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
