"""A quiet console on Ray Train workers: Ray's and DeepSpeed's records stay off the console handlers Ray Train
sets up (they keep going to its log files), ours pass, and --verbose (DISTSLEEP_VERBOSE=1) lets everything
through."""

from __future__ import annotations

import importlib.util
import io
import logging
from pathlib import Path

import pytest

from distsleep.runtime import VERBOSE_ENV, quiet_worker_console


def _installed(package: str, *parts: str) -> str:
    """Where a file of an installed package is (without importing the package)."""
    return str(Path(importlib.util.find_spec(package).submodule_search_locations[0], *parts))


# the files that write these lines on a Ray Train worker
RAY_TRAIN_CONTEXT = _installed("ray", "train", "v2", "_internal", "execution", "context.py")
DEEPSPEED_COMM = _installed("deepspeed", "comm", "torch.py")
OUR_LOOP = str(Path(__file__).resolve().parents[1] / "distsleep" / "train" / "loop.py")


@pytest.fixture
def worker_logging(tmp_path, monkeypatch):
    """The root logger as Ray Train configures it on a worker: a console stream and a log file."""
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    root = logging.getLogger()
    console_text = io.StringIO()
    console = logging.StreamHandler(console_text)
    log_file = logging.FileHandler(tmp_path / "worker.log")
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [console, log_file]
    root.setLevel(logging.INFO)
    yield console_text, tmp_path / "worker.log"
    log_file.close()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def _emit(pathname: str, message: str, level: int = logging.INFO, name: str = "root") -> None:
    """A record as if logged from code in `pathname` (what logging records for the calling line)."""
    logger = logging.getLogger(name)
    logger.handle(logger.makeRecord(name, level, pathname, 1, message, (), None))


def _three_records() -> None:
    # Ray Train logs its report lines under a logger named by its file path; its patched print sends
    # DeepSpeed's prints to the root logger
    _emit(RAY_TRAIN_CONTEXT, "Reporting training result 1: TrainingReport(...)", name=RAY_TRAIN_CONTEXT)
    _emit(DEEPSPEED_COMM, "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
    _emit(OUR_LOOP, "[rank 0] step 50: val acc 0.7", name="distsleep.train")


def test_framework_records_stay_in_the_log_file(worker_logging):
    console, log_file = worker_logging
    quiet_worker_console()
    quiet_worker_console()  # a second worker loop in the same process adds nothing twice
    _three_records()
    _emit(DEEPSPEED_COMM, "a framework error", level=logging.ERROR)
    shown = console.getvalue()
    assert "step 50" in shown and "a framework error" in shown
    assert "Reporting training result" not in shown and "built successfully" not in shown
    kept = log_file.read_text()
    assert "Reporting training result" in kept and "built successfully" in kept and "step 50" in kept


def test_verbose_shows_everything(worker_logging, monkeypatch):
    console, _ = worker_logging
    monkeypatch.setenv(VERBOSE_ENV, "1")
    quiet_worker_console()
    _three_records()
    shown = console.getvalue()
    assert "Reporting training result" in shown and "built successfully" in shown and "step 50" in shown
