"""Object storage end to end, against a real S3-compatible server on 127.0.0.1 (moto's server mode, started once
per session by conftest's `object_store`), through the jobs' own code paths: preprocessing into a bucket (one
record bad), a rerun that skips what is there, pre-training with 2 Ray Train workers streaming from the bucket
with checkpoints there, a worker killed and the run resumed from the bucket, a relaunch, MLflow artifacts in
the bucket and `predict` from the run's bundle; then every file written is searched for the credentials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import s3fs

from distsleep import store
from distsleep.locks import LockHeld, exclusive_lock

REPO = Path(__file__).resolve().parents[1]


def fs() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)


# ------------------------------------------------------------------------------------------------- store


def test_store_writes_reads_and_lists_objects(bucket, tmp_path):
    for base in (f"{bucket}/out", str(tmp_path / "out")):
        store.make_folder(base)
        assert not store.exists(store.join(base, "a.json")) and store.size(store.join(base, "a.json")) is None
        store.write_json(store.join(base, "a.json"), {"x": 1})
        store.write_bytes(store.join(base, "sub", "b.bin"), b"\x00" * 10)
        assert store.read_json(store.join(base, "a.json")) == {"x": 1}
        assert store.size(store.join(base, "sub", "b.bin")) == 10
        assert store.files(base) == ["a.json", "sub/b.bin"] and store.children(base, "*.json") == ["a.json"]
        assert store.sha256(store.join(base, "sub", "b.bin")) == __import__("hashlib").sha256(b"\x00" * 10).hexdigest()
        store.remove(store.join(base, "a.json"))
        assert store.children(base) == ["sub"]
        with pytest.raises(FileNotFoundError, match="a.json: not found"):
            store.read_bytes(store.join(base, "a.json"))
    # Nothing was left under a temporary name in the bucket: an object is written in one PUT.
    assert fs().find(bucket.removeprefix("s3://")) == [f"{bucket.removeprefix('s3://')}/out/sub/b.bin"]


def test_locations_with_credentials_are_refused(tmp_path):
    from distsleep.cli import main
    from distsleep.shards.storage import open_binary

    with pytest.raises(store.CredentialsInLocation, match="carries credentials"):
        store.write_bytes("s3://AKIAEXAMPLE:secret@bucket/x", b"")
    with pytest.raises(store.CredentialsInLocation):
        open_binary("s3://AKIAEXAMPLE:secret@bucket/manifest.json")
    assert main(["preprocess", "--root", str(tmp_path), "--out", "s3://AKIAEXAMPLE:secret@bucket/x", "--quiet"]) == 2


def _hold_lock(location: str, lease: float) -> subprocess.Popen:
    """A process that takes the lease `location` and keeps it (renewing it) until killed."""
    code = ("import sys, time; from distsleep.locks import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], 'the thing', 'wait', lease_seconds=float(sys.argv[2])):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, location, str(lease)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_lock_in_a_bucket_is_a_lease(bucket):
    location = f"{bucket}/out/.preprocess.lock"
    holder = _hold_lock(location, lease=2.0)
    try:
        time.sleep(3)  # longer than the lease: only its renewals keep it
        with pytest.raises(LockHeld, match=rf"the thing is in use by another job \(pid {holder.pid} on .*; wait"):
            with exclusive_lock(location, "the thing", "wait", lease_seconds=2.0):
                pass
    finally:
        holder.kill()  # dies holding it: nobody renews the lease any more
        holder.wait()
    with pytest.raises(LockHeld):  # within its lease it still counts
        with exclusive_lock(location, "the thing", "wait", lease_seconds=2.0):
            pass
    time.sleep(2.5)
    with exclusive_lock(location, "the thing", "wait", lease_seconds=2.0):
        assert json.loads(store.read_bytes(location))["pid"] == os.getpid()  # taken over
    assert not store.exists(location), "released at the end"
