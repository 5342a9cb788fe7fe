"""What the cluster modules ask of this machine: a free TCP port, and this environment's executables."""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def venv_executable(name: str) -> str:
    """An executable of this environment (the venv's ray/mlflow), not whatever is first on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
