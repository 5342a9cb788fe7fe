"""Processes of this test session's Ray clusters, for tests that kill workers (other sessions on the machine
have their own Ray token path, see conftest.py, so their workers are never hit)."""

from __future__ import annotations

import os

import psutil


def session_processes(fragment: str) -> list[psutil.Process]:
    """Live processes whose command line contains `fragment` and that carry this session's Ray token path."""
    mine = os.environ["RAY_AUTH_TOKEN_PATH"]
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if fragment in " ".join(process.info.get("cmdline") or []) and process.environ().get("RAY_AUTH_TOKEN_PATH") == mine:
                found.append(process)
        except psutil.Error:
            continue
    return found
