"""Atomic writes on shared storage: unique temporaries, data and rename flushed to disk, readers never see
half a file (the local cluster's cluster.json is read by `env`/`stop` while `start` rewrites it)."""

from __future__ import annotations

import json
import os
import socket
import threading

from distsleep.atomic import atomic_path, temporary_name, write_json_atomic


def test_temporary_names_are_unique_across_hosts_processes_and_writers(tmp_path):
    target = tmp_path / "manifest.json"
    names = {temporary_name(target) for _ in range(200)}
    assert len(names) == 200  # two writers of one process never share a temporary
    name = next(iter(names)).name
    host = socket.gethostname().split(".")[0]
    assert name.startswith(f".manifest.json.tmp-{host}-{os.getpid()}-") and name.endswith(".json")


def test_atomic_write_flushes_the_file_and_its_folder(tmp_path, monkeypatch):
    """The data reaches the disk before the rename, and the rename before the call returns (observed with the
    real os.fsync, wrapped to record what it flushed)."""
    flushed = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "state.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert len(flushed) == 2 and ".state.json.tmp-" in flushed[0] and flushed[1] == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    except RuntimeError:
        pass
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_cluster_state_is_never_read_half_written(tmp_path):
    from distsleep.cluster.local import LocalCluster, Node

    cluster = LocalCluster(state_dir=str(tmp_path), ray_address="127.0.0.1:1", dashboard_url="http://127.0.0.1:2",
                           mlflow_uri=None, temp_dir="/tmp/dsc-0000beef", nodes=[Node(f"worker{i}", "127.0.0.1", 1) for i in range(50)])
    cluster.save()
    stop = threading.Event()
    errors = []

    def read():
        while not stop.is_set():
            try:
                assert len(LocalCluster.load(tmp_path).nodes) == 50
            except Exception as error:  # a reader that saw an empty or partial file
                errors.append(error)
                return

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(300):
        cluster.save()
    stop.set()
    reader.join()
    assert not errors, errors[0]
