"""Object storage end to end, against a real S3-compatible server on 127.0.0.1 (moto's server mode, started once
per session by conftest's `object_store`), through the jobs' own code paths: preprocessing into a bucket (one
record bad), a rerun that skips what is there, pre-training with 2 Ray Train workers streaming from the bucket
with checkpoints there, a worker killed and the run resumed from the bucket, a relaunch, MLflow artifacts in
the bucket and `predict` from the run's bundle; then every file written is searched for the credentials."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import s3fs

from distsleep import store
from distsleep.cluster.mlflow_server import start_mlflow_server
from distsleep.locks import LockHeld, exclusive_lock

REPO = Path(__file__).resolve().parents[1]


def fs() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)


# ------------------------------------------------------------------------------------------------- store


def test_a_sweeps_tune_state_in_a_bucket_is_verified_before_a_restore_unpickles_it(bucket, tmp_path):
    """A restore unpickles tuner.pkl, the searcher state and the cloudpickled trials: in a bucket as in a folder,
    the newest of each is checked against the checksums Tune's save recorded beside them."""
    import hashlib

    from distsleep.integrity import IntegrityError
    from distsleep.sweep.state import STATE_CHECKSUMS, verify_tune_state

    for base in (f"{bucket}/runs/table4", str(tmp_path / "table4")):
        files = {"tuner.pkl": b"tuner", "experiment_state-2026-11-29_10-00-00.json": b"old",
                 "experiment_state-2026-11-29_11-00-00.json": b"newest", "searcher-state-2026-11-29_11-00-00.pkl": b"s"}
        for name, data in files.items():
            store.write_bytes(store.join(base, name), data)
        with pytest.raises(IntegrityError, match=rf"{STATE_CHECKSUMS}: no readable checksums"):
            verify_tune_state(base)
        recorded = {n: hashlib.sha256(d).hexdigest() for n, d in files.items() if "10-00-00" not in n}
        store.write_json(store.join(base, STATE_CHECKSUMS), {"sha256": recorded})
        verify_tune_state(base)  # the older state file is not what Tune loads
        newest = store.join(base, "experiment_state-2026-11-29_11-00-00.json")
        store.write_bytes(newest, b"newest, changed")
        with pytest.raises(IntegrityError, match=rf"{newest}: Tune state changed since Tune wrote it"):
            verify_tune_state(base)
        store.write_bytes(newest, b"newest")
        store.write_bytes(store.join(base, "searcher-state-2026-11-29_12-00-00.pkl"), b"unrecorded")
        with pytest.raises(IntegrityError, match=r"searcher-state-2026-11-29_12-00-00.pkl: Tune state file without a "
                                                 r"recorded checksum"):
            verify_tune_state(base)


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
    # Folder placeholders (the zero-byte "folder/" keys pyarrow writes, as for Ray Train's checkpoints) are neither
    # files nor a folder's own child.
    for folder in ("out/", "out/sub/"):
        fs().pipe_file(f"{bucket.removeprefix('s3://')}/{folder}", b"")
    assert store.files(f"{bucket}/out") == ["sub/b.bin"]
    assert store.children(f"{bucket}/out") == ["sub"] and store.children(f"{bucket}/out/sub") == ["b.bin"]


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


# ------------------------------------------------------------------------------------------ end to end

TRAIN = dict(model_size="small", seq_len=5, batch_size=32, loader_workers=1, num_workers=2, lr=1e-3,
             max_steps=40, val_every=10, max_failures=1, experiment="s3")


@pytest.fixture(scope="module")
def world(tmp_path_factory, object_store, ray_local) -> dict:
    """A cohort of 9 nights (one truncated), a bucket, and an MLflow server keeping its artifacts in the bucket."""
    from distsleep.synth.cohort import CohortConfig, generate_cohort, record_paths

    root = tmp_path_factory.mktemp("s3-cohort")
    generate_cohort(root, CohortConfig(n_records=9, hours=1.5, seed=4, workers=2), progress=False)
    bad = sorted(p.stem for p in (root / "polysomnography" / "edfs" / "shhs1").glob("*.edf"))[-1]
    edf = record_paths(root, bad)["edf"]
    with open(edf, "r+b") as stream:
        stream.truncate(edf.stat().st_size // 3)
    name = f"e2e-{os.getpid()}"
    fs().mkdir(name)
    bucket = f"s3://{name}"
    server_dir = tmp_path_factory.mktemp("s3-mlflow")
    server = start_mlflow_server(server_dir / "mlflow.db", f"{bucket}/mlflow", log=server_dir / "server.log")
    try:
        yield {"root": root, "bad": bad, "bucket": bucket, "out": f"{bucket}/cohort", "mlflow": server.uri}
    finally:
        server.stop()


def _objects(prefix: str) -> dict[str, dict]:
    """key -> info (size, ETag, LastModified) of every object under an s3:// prefix."""
    return {k: v for k, v in fs().find(prefix.removeprefix("s3://"), detail=True).items() if v["type"] == "file"}


@pytest.fixture(scope="module")
def preprocessed(world) -> dict:
    from distsleep.cli import main

    out = world["out"]
    code = main(["preprocess", "--root", str(world["root"]), "--out", out, "--quiet", "--max-failures", "1"])
    first = _objects(out)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code_again = main(["preprocess", "--root", str(world["root"]), "--out", out, "--quiet", "--max-failures", "1"])
    return {"codes": (code, code_again), "first": first, "again": _objects(out), "printed": printed.getvalue()}


@pytest.mark.slow
def test_preprocess_writes_the_dataset_into_the_bucket(world, preprocessed):
    from distsleep.config import PreprocessConfig, SplitConfig
    from distsleep.shards.pipeline import run_preprocess

    out, bad = world["out"], world["bad"]
    assert preprocessed["codes"] == (0, 0)
    manifest = store.read_json(f"{out}/manifest.json")
    assert len(manifest["records"]) == 8 and bad not in manifest["records"]
    failures = [json.loads(line) for line in store.read_bytes(f"{out}/failures.jsonl").decode().splitlines()]
    assert [f["record_id"] for f in failures] == [bad] and f"{bad}.edf" in failures[0]["message"]
    keys = {k.split("/", 2)[2] for k in preprocessed["first"]}  # without the bucket and the prefix
    assert keys == {"manifest.json", "failures.jsonl", *(f"shards/{r}.tar" for r in manifest["records"]),
                    *(f"records/{r}.json" for r in manifest["records"])}, "shards, markers, manifest; no temporaries, no lock"
    for record in manifest["records"].values():
        assert store.sha256(f"{out}/{record['shard']}") == record["sha256"]
    # The rerun skipped every record and rewrote no shard or marker (same ETags and times).
    unchanged = {k: (v["ETag"], v["LastModified"]) for k, v in preprocessed["first"].items() if "/shards/" in k or "/records/" in k}
    assert unchanged == {k: (v["ETag"], v["LastModified"]) for k, v in preprocessed["again"].items()
                         if "/shards/" in k or "/records/" in k}
    assert "(0 converted, 8 already done), 1 failed" in preprocessed["printed"]
    assert f"manifest: {out}/manifest.json" in preprocessed["printed"]
    # Skipped only when verified: a shard changed in the bucket and a marker that never came are redone.
    records = sorted(manifest["records"])
    fs().pipe_file(f"{out}/shards/{records[0]}.tar".removeprefix("s3://"), b"not the shard")
    store.remove(f"{out}/records/{records[1]}.json")
    result = run_preprocess(world["root"], out, PreprocessConfig(), SplitConfig(), progress=False)
    assert (result.converted, result.skipped) == (2, 6) and store.read_json(f"{out}/manifest.json") == result.manifest
    assert store.sha256(f"{out}/shards/{records[0]}.tar") == manifest["records"][records[0]]["sha256"]


def _checkpoint_states(storage: str) -> list[dict]:
    return [store.read_json(f"{storage}/{name}/trainer_state.json") for name in store.children(storage, "checkpoint_*")
            if store.exists(f"{storage}/{name}/trainer_state.json")]


@pytest.fixture(scope="module")
def trained(world, preprocessed) -> dict:
    """A 2-worker pre-training run reading its shards from the bucket and checkpointing there; once its first
    checkpoint is in the bucket, a second launch of the name is tried and one worker is killed."""
    from session_processes import session_processes

    from distsleep.train.config import TrainConfig
    from distsleep.train.launch import LaunchError, run_training

    cfg = TrainConfig(shards=f"{world['out']}/manifest.json", storage_path=f"{world['bucket']}/runs", name="s3run",
                      tracking_uri=world["mlflow"], **TRAIN)
    storage = f"{world['bucket']}/runs/s3run"
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("outcome", run_training(cfg)))
    thread.start()
    deadline = time.time() + 300
    while not (store.exists(f"{storage}/checkpoint_manager_snapshot.json") and _checkpoint_states(storage)):
        assert time.time() < deadline and thread.is_alive(), "no checkpoint appeared in the bucket"
        time.sleep(0.5)
    with pytest.raises(LaunchError) as second:
        run_training(cfg, check_cluster=False)
    victims = session_processes("RayTrainWorker")
    assert victims, "no Ray Train worker process found"
    victims[-1].send_signal(signal.SIGKILL)
    thread.join(timeout=600)
    return {"cfg": cfg, "storage": storage, "outcome": result["outcome"], "second": str(second.value)}


@pytest.mark.slow
def test_pretraining_streams_from_the_bucket_and_resumes_from_its_checkpoints(world, trained):
    import dataclasses

    import mlflow

    from distsleep.train.launch import LaunchError, run_training

    storage, outcome = trained["storage"], trained["outcome"]
    assert outcome.storage == storage and outcome.checkpoint.startswith(storage.removeprefix("s3://"))
    states = _checkpoint_states(storage)
    assert max(s["step"] for s in states) == 40 and max(s["resumes"] for s in states) >= 1, states
    history = mlflow.MlflowClient(world["mlflow"]).get_metric_history(outcome.run_id, "resumes")
    assert history and history[-1].value >= 1 and "test_accuracy" in outcome.metrics
    names = store.files(storage)
    assert "run_identity.json" in names and ".launch.lock" not in names, "identity kept, lease released"
    assert any(n.endswith("/checksums-rank0.json") for n in names) and any(n.endswith("/checksums-rank1.json") for n in names)
    # The launch that came while it ran was refused by the lease in the bucket, naming the running one.
    assert f"run 's3run' ({storage}) is in use by another job (pid {os.getpid()} on " in trained["second"]
    # Launched again as it was, the finished run is read back from the bucket (Ray's checkpoint list, the
    # MLflow run that wrote the last checkpoint) instead of being trained into a new MLflow run.
    again = run_training(trained["cfg"], check_cluster=False)
    assert (again.run_id, again.trained, again.checkpoint) == (outcome.run_id, False, outcome.checkpoint)
    assert again.metrics["test_accuracy"] == outcome.metrics["test_accuracy"]
    # A relaunch of the name with other data is refused by the identity recorded in the bucket.
    manifest = store.read_json(f"{world['out']}/manifest.json")
    for entry in manifest["records"].values():
        entry["split"] = {"train": "test", "test": "train"}.get(entry["split"], entry["split"])
        entry["shard"] = f"{world['out']}/{entry['shard']}"
    store.write_json(f"{world['bucket']}/swapped/manifest.json", manifest)
    with pytest.raises(LaunchError, match=r"run 's3run' in s3://.* was started with other its data"):
        run_training(dataclasses.replace(trained["cfg"], shards=f"{world['bucket']}/swapped/manifest.json"),
                     check_cluster=False)


@pytest.mark.slow
def test_predict_loads_the_bundle_the_run_put_in_the_bucket(world, trained, tmp_path, monkeypatch):
    from distsleep.predict import predict_recording
    from distsleep.synth.cohort import record_paths

    run_id = trained["outcome"].run_id
    bundles = [k for k in _objects(f"{world['bucket']}/mlflow") if k.endswith(f"{run_id}/artifacts/model/model.pt")]
    assert len(bundles) == 1, "MLflow's server kept the bundle in the bucket"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["mlflow"])
    record = sorted(store.read_json(f"{world['out']}/manifest.json")["records"])[0]
    paths = record_paths(world["root"], record)
    result = predict_recording(f"runs:/{run_id}/model", paths["edf"], annotations=paths["nsrr"], out_dir=tmp_path / "pred")
    assert result.metrics["accuracy"] > 0.3 and result.files


@pytest.mark.slow
def test_no_file_written_holds_the_credentials(object_store, world, trained, tmp_path_factory):
    """Every object in every bucket, every file under the session's temporary folders (shard outputs, MLflow's
    store and logs, predictions) and the Ray session's logs: neither half of the key pair. The S3 server's own
    request log may name the key id (a presigned URL MLflow's server handed out carries it, as every S3 access
    log does), never the secret."""
    import ray

    secrets_ = [object_store["key"].encode(), object_store["secret"].encode()]
    scanned, found = 0, []
    for bucket_name in fs().ls(""):
        for key in _objects(f"s3://{bucket_name}"):
            data = fs().cat_file(key)
            scanned += 1
            found += [key for s in secrets_ if s in data]
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    for folder in (tmp_path_factory.getbasetemp(), session):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_socket():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                scanned += 1
                checked = secrets_[1:] if path.name == "moto.log" else secrets_
                found += [str(path) for s in checked if s in data]
    assert scanned > 100 and not found, found


def test_preprocess_into_a_missing_bucket_is_a_clear_error(object_store, tmp_path, capsys):
    from distsleep.cli import main
    from distsleep.synth.cohort import CohortConfig, generate_cohort

    generate_cohort(tmp_path, CohortConfig(n_records=1, hours=0.5, seed=1, workers=1), progress=False)
    assert main(["preprocess", "--root", str(tmp_path), "--out", "s3://no-such-bucket-here/x", "--quiet"]) == 2
    assert "s3://no-such-bucket-here/x/.preprocess.lock: cannot write the lock" in capsys.readouterr().err
