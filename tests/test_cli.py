"""The `distsleep` console script as a user runs it: help, exit codes, messages naming file and problem."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distsleep.synth.cohort import CohortConfig, generate_cohort, record_paths

from edf_factory import signal, truncate, write_edf


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # The installed console script when there is one (as a user runs it), else the module.
    script = shutil.which("distsleep", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "distsleep.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cli-cohort")
    generate_cohort(out, CohortConfig(n_records=1, hours=0.5, seed=3), progress=False)
    return record_paths(out, "shhs1-300001")


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "synth" in result.stdout and "inspect" in result.stdout
    sub = run_cli("inspect", "--help")
    assert sub.returncode == 0 and "--annotations" in sub.stdout and "--json" in sub.stdout


def test_inspect_json_contract(record):
    result = run_cli("inspect", str(record["edf"]), "--annotations", str(record["nsrr"]), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["stages"]) == {"W", "N1", "N2", "N3", "REM", "unscored"}
    assert sum(report["stages"].values()) == 60
    roles = {c["label"]: (c["role"], c["rate"]) for c in report["channels"]}
    assert roles["EEG"] == ("eeg_c4", 125.0) and roles["EEG(sec)"] == ("eeg_c3", 125.0)
    assert roles["EOG(L)"] == ("eog_l", 50.0) and roles["ECG"] == ("ecg", 250.0)
    assert report["problems"] == []


def test_inspect_text_report(record):
    result = run_cli("inspect", str(record["edf"]), "--annotations", str(record["profusion"]))
    assert result.returncode == 0, result.stderr
    assert "eeg_c4" in result.stdout and "problems: none" in result.stdout


def test_missing_file_exit_2(tmp_path):
    missing = tmp_path / "nope.edf"
    result = run_cli("inspect", str(missing))
    assert result.returncode == 2
    assert "nope.edf" in result.stderr and "not found" in result.stderr.lower()


def test_truncated_edf_exit_2(record, tmp_path):
    broken = tmp_path / "broken.edf"
    shutil.copy(record["edf"], broken)
    truncate(broken, broken.stat().st_size // 2)
    result = run_cli("inspect", str(broken))
    assert result.returncode == 2
    assert "broken.edf" in result.stderr and "truncated" in result.stderr.lower()


def test_missing_c4_is_a_problem_not_a_substitution(tmp_path):
    path = tmp_path / "c3only.edf"
    write_edf(path, [signal("EEG(sec)", 125, np.zeros(125 * 60)), signal("EMG", 125, np.zeros(125 * 60))])
    result = run_cli("inspect", str(path), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert any("C4-A1" in p for p in report["problems"])
    assert {c["label"]: c["role"] for c in report["channels"]}["EEG(sec)"] == "eeg_c3"
    assert "c3only.edf" in result.stderr


def test_bad_stage_concept_is_reported(record, tmp_path):
    xml = tmp_path / "bad-nsrr.xml"
    xml.write_bytes(record["nsrr"].read_bytes().replace(b"Wake|0", b"Stage 7 sleep|7", 1))
    result = run_cli("inspect", str(record["edf"]), "--annotations", str(xml))
    assert result.returncode == 1
    assert "bad-nsrr.xml" in result.stdout and "Stage 7 sleep|7" in result.stdout
