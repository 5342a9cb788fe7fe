"""Shared test fixtures.

Real-data tests read ../shared/data (next to the repository). On a user's clone without it they skip with
the reason shown; with DISTSLEEP_REQUIRE_SHARED=1 (set by .ci/run) its absence is an error instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DISTSLEEP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = f"real fixtures not found at {SHARED_DATA} (set DISTSLEEP_SHARED_DATA or clone next to shared/)"
        if os.environ.get("DISTSLEEP_REQUIRE_SHARED") == "1":
            pytest.fail(message + "; DISTSLEEP_REQUIRE_SHARED=1 makes this an error", pytrace=False)
        pytest.skip(message)
    return SHARED_DATA
