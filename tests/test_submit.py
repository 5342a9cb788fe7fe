"""`distsleep submit` checks: working-dir upload size, entrypoint, paths every node can resolve."""

from __future__ import annotations

import subprocess

import pytest

from distsleep.cluster.submit import SubmitError, check_entrypoint, check_working_dir, upload_files


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "pretrain.py").write_text("print('hi')\n")
    (tmp_path / ".gitignore").write_text("/runs/\n")
    return tmp_path


def _sparse(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        stream.truncate(size)  # sparse: counts as size bytes, uses no disk


def test_ignored_files_are_not_uploaded(repo):
    _sparse(repo / "runs" / "checkpoint.pt", 900 * 2**20)
    files = {p.relative_to(repo).as_posix() for p in upload_files(repo)}
    assert "jobs/pretrain.py" in files and "runs/checkpoint.pt" not in files
    total, warnings = check_working_dir(repo)
    assert total < 2**20 and warnings == []


def test_oversized_working_dir_names_the_culprit(repo):
    _sparse(repo / "shards" / "big.tar", 600 * 2**20)
    with pytest.raises(SubmitError, match=r"would upload 600 MiB .*largest: shards \(600 MiB\)"):
        check_working_dir(repo)
    (repo / "shards" / "big.tar").unlink()
    _sparse(repo / "data" / "medium.tar", 150 * 2**20)
    total, warnings = check_working_dir(repo)
    assert total >= 150 * 2**20 and "data (150 MiB)" in warnings[0]


def test_entrypoint_checks(repo):
    check_entrypoint(["python", "jobs/pretrain.py", "--shards", "/shared/shards/manifest.json", "--storage-path", "s3://b/runs",
                      "--init-from", "0123abcd"], repo)
    with pytest.raises(SubmitError, match="jobs/sweep.py is not in the working dir"):
        check_entrypoint(["python", "jobs/sweep.py"], repo)
    with pytest.raises(SubmitError, match="--storage-path runs: a relative path"):
        check_entrypoint(["python", "jobs/pretrain.py", "--storage-path", "runs"], repo)
    with pytest.raises(SubmitError, match="--out shards: a relative path"):
        check_entrypoint(["python", "jobs/pretrain.py", "--out=shards"], repo)
    with pytest.raises(SubmitError, match="no entrypoint"):
        check_entrypoint([], repo)
