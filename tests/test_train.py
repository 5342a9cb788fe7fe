"""Training on a real local Ray cluster: 2 Ray Train workers x DeepSpeed (gloo, CPU), tracked in MLflow."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch

from distsleep.cluster.mlflow_server import start_mlflow_server
from distsleep.predict import predict_recording
from distsleep.synth.cohort import CohortConfig, generate_cohort, record_paths
from distsleep.tracking import BUNDLE_TAG, TrackingUnavailable
from distsleep.train.config import TrainConfig
from distsleep.train.driver import LaunchError
from distsleep.train.identity import RunMismatch, check_init_sources
from distsleep.train.launch import run_training
from session_processes import session_processes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(training_shards) -> Path:
    return training_shards


def tiny(shards: Path, tmp: Path, **changes) -> TrainConfig:
    base = dict(shards=str(shards), model_size="small", seq_len=5, batch_size=32, loader_workers=1, max_steps=60,
                val_every=30, num_workers=2, lr=1e-3, storage_path=str(tmp / "runs"), name="tiny",
                tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="tests")
    base.update(changes)
    return TrainConfig(**base)


def majority_accuracy(manifest_path: Path, split: str) -> float:
    stages = json.loads(manifest_path.read_text())["totals"][split]["stages"]
    scored = {k: v for k, v in stages.items() if k != "unscored"}
    return max(scored.values()) / sum(scored.values())


def checkpoint_dirs(storage: Path) -> list[Path]:
    return sorted(c for c in storage.glob("checkpoint_*") if c.is_dir())


def latest_state(storage: Path) -> dict:
    checkpoints = checkpoint_dirs(storage)
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text())


def test_pretrain_learns_and_is_tracked(shards, tmp_path):
    cfg = tiny(shards, tmp_path)
    outcome = run_training(cfg)
    metrics = outcome.metrics
    assert metrics["test_accuracy"] > majority_accuracy(shards, "test") + 0.05, metrics
    assert metrics["test_kappa"] > 0.3

    client = mlflow.MlflowClient(cfg.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "pretrain"
    params = run.data.params
    assert params["train.lr"] == "0.001" and params["model.mask_ratio"] == "0.5" and params["world_size"] == "2"
    # The global batch of 32 split over the 2 workers, and the learning rate it ran with.
    assert (params["batch.global"], params["batch.per_worker"], params["lr.effective"]) == ("32", "16", "0.001")
    assert json.loads(params["deepspeed"])["train_micro_batch_size_per_gpu"] == 16
    assert json.loads(params["deepspeed"])["zero_optimization"]["stage"] == 0
    loss = [m.value for m in client.get_metric_history(outcome.run_id, "loss")]
    assert len(loss) == 60 and sum(loss[-10:]) / 10 < 0.8 * sum(loss[:10]) / 10, "loss did not fall"
    for name in ("loss_infonce", "loss_seq", "lr", "epochs_per_s", "mask_ratio_effective", "val_macro_f1", "test_f1_N3"):
        assert name in run.data.metrics, name
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)} | {a.path for a in client.list_artifacts(outcome.run_id, "model")}
    for name in ("confusion_matrix.png", "per_class_f1.md", "config.json", "environment.json", "data.json",
                 "checkpoint.json", "test_metrics.json", "model/model.pt"):
        assert name in artifacts, name
    assert any(a.startswith("hypnogram_shhs1-") for a in artifacts)
    local = Path(client.download_artifacts(outcome.run_id, "data.json", str(tmp_path)))
    data = json.loads(local.read_text())
    manifest = json.loads(shards.read_text())
    assert data["manifest_config_hash"] == manifest["config_hash"]
    assert data["records"]["test"] == sorted(r for r, e in manifest["records"].items() if e["split"] == "test")
    assert data["split_source"] == manifest["split"] and data["split_source"]["method"] == "stable-hash"
    bundle_path = client.download_artifacts(outcome.run_id, "model/model.pt", str(tmp_path))
    bundle = torch.load(bundle_path, weights_only=True)
    assert bundle["channels"] == ["eeg_c4"] and bundle["preprocess"]["target_rate"] == 100.0
    assert all(v.dtype == torch.float32 for v in bundle["state_dict"].values() if v.is_floating_point())
    # Checkpoints: two kept (latest and best), each with merged DeepSpeed files from both ranks.
    storage = tmp_path / "runs" / "tiny"
    checkpoints = checkpoint_dirs(storage)
    assert 1 <= len(checkpoints) <= 2
    assert {"trainer_state.json", "best_model.pt", "ds"} <= {p.name for p in checkpoints[-1].iterdir()}
    assert len(list((checkpoints[-1] / "ds").glob("*model_states.pt"))) >= 1
    assert latest_state(storage)["step"] == 60


def _train_workers() -> list[psutil.Process]:
    return session_processes("RayTrainWorker")


def _wait_for_checkpoint(storage: Path, timeout: float = 240) -> None:
    """Until a checkpoint is committed: its directory is written and Ray's run snapshot lists it (a
    checkpoint whose upload is still in flight when the driver dies is, rightly, not resumed from)."""
    deadline = time.time() + timeout
    snapshot = storage / "checkpoint_manager_snapshot.json"
    while time.time() < deadline:
        if snapshot.exists() and any((c / "trainer_state.json").exists() for c in checkpoint_dirs(storage)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint appeared under {storage}")


def test_killed_worker_restarts_from_checkpoint(shards, tmp_path):
    import threading

    cfg = tiny(shards, tmp_path, name="killed", max_steps=80, val_every=20, max_failures=1)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("outcome", run_training(cfg)))
    thread.start()
    storage = tmp_path / "runs" / "killed"
    _wait_for_checkpoint(storage)
    victims = _train_workers()
    assert victims, "no Ray Train worker process found"
    victims[-1].send_signal(signal.SIGKILL)
    thread.join(timeout=600)
    outcome = result["outcome"]
    state = latest_state(storage)
    assert state["step"] == 80 and state["resumes"] >= 1
    history = mlflow.MlflowClient(cfg.tracking_uri).get_metric_history(outcome.run_id, "resumes")
    assert history and history[-1].value >= 1
    assert "test_accuracy" in outcome.metrics


def test_relaunch_resumes_the_run(shards, tmp_path, ray_local):
    cfg = tiny(shards, tmp_path, name="relaunch", max_steps=80, val_every=20)
    env = {**os.environ, "RAY_ADDRESS": ray_local}
    args = [sys.executable, "jobs/pretrain.py", "--shards", str(shards), "--model-size", "small", "--seq-len", "5",
            "--batch-size", "32", "--loader-workers", "1", "--max-steps", "80", "--val-every", "20", "--num-workers", "2",
            "--lr", "0.001", "--storage-path", cfg.storage_path, "--name", "relaunch", "--tracking-uri", cfg.tracking_uri,
            "--experiment", "tests"]
    driver = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[1], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = tmp_path / "runs" / "relaunch"
    try:
        _wait_for_checkpoint(storage)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    first_step = latest_state(storage)["step"]
    assert first_step < 80
    deadline = time.time() + 60  # the killed driver's workers go away with it
    while _train_workers() and time.time() < deadline:
        time.sleep(0.5)
    outcome = run_training(cfg)
    assert outcome.resumed, "the MLflow run of the interrupted launch is reused"
    state = latest_state(storage)
    assert state["step"] == 80 and state["resumes"] >= 1
    steps = [m.step for m in mlflow.MlflowClient(cfg.tracking_uri).get_metric_history(outcome.run_id, "loss")]
    assert min(steps) == 1 and max(steps) == 80


def test_the_training_thread_allocates_from_one_malloc_arena(shards, tmp_path):
    """Ray Train runs the loop in a second thread of the worker, which glibc would give its own arena (page
    faults that slowed steps by up to 20 %: `driver.worker_env`); the trainer's workers get one arena."""
    from ray.train import CheckpointConfig

    from distsleep.train.driver import build_trainer

    def _report_allocator(config: dict) -> dict:  # nested: pickled by value for the worker
        import os
        import threading
        return {"main_thread": threading.current_thread() is threading.main_thread(),
                "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX", "")}

    cfg = tiny(shards, tmp_path, name="allocator", num_workers=1)
    result = build_trainer(_report_allocator, {}, cfg, cfg.tracking_uri, checkpoint_config=CheckpointConfig()).fit()
    assert result.error is None and result.return_value["main_thread"] is False
    assert result.return_value["malloc_arena_max"] == "1"


def test_finetune_from_pretraining(shards, tmp_path):
    # Pre-training compiled (aot_eager: dynamo's graph capture without C++ code generation): its bundle keeps the
    # model's own weight names, so fine-tuning loads every backbone tensor and predict loads it strictly.
    pre = run_training(tiny(shards, tmp_path, name="pre", max_steps=30, val_every=30, num_workers=1, compile=True,
                            compile_backend="aot_eager"))
    pre_params = mlflow.MlflowClient(pre.tracking_uri).get_run(pre.run_id).data.params
    assert (pre_params["world_size"], pre_params["batch.global"], pre_params["batch.per_worker"]) == ("1", "32", "32")
    bundle = Path(mlflow.MlflowClient(pre.tracking_uri).download_artifacts(pre.run_id, "model/model.pt", str(tmp_path)))
    assert not any(k.startswith("_orig_mod.") for k in torch.load(bundle, weights_only=True)["state_dict"])
    night = _one_night(tmp_path)
    predicted = predict_recording(bundle, night["edf"], annotations=night["nsrr"], batch_size=16)
    assert predicted.n_epochs > 0 and predicted.probabilities.shape == (predicted.n_epochs, 5)
    cfg = tiny(shards, tmp_path, name="fine", stage="finetune", init_from=pre.run_id, max_steps=30, val_every=30)
    outcome = run_training(cfg)
    # Relaunching both finished runs (a second `make demo`) returns them as they are: no step trained, no new
    # MLflow run, so the fine-tuning's --init-from still names the pre-training run its identity records.
    tracking = mlflow.MlflowClient(cfg.tracking_uri)
    experiment = tracking.get_run(outcome.run_id).info.experiment_id
    runs_before = tracking.search_runs([experiment])
    pre_again = run_training(tiny(shards, tmp_path, name="pre", max_steps=30, val_every=30, num_workers=1, compile=True,
                                  compile_backend="aot_eager"))
    assert (pre_again.run_id, pre_again.trained) == (pre.run_id, False)
    assert pre_again.metrics["test_accuracy"] == pre.metrics["test_accuracy"]
    assert pre_again.best_checkpoint == pre.best_checkpoint
    again = run_training(cfg)
    assert (again.run_id, again.trained, again.checkpoint) == (outcome.run_id, False, outcome.checkpoint)
    runs_after = tracking.search_runs([experiment])
    assert sorted(r.info.run_id for r in runs_after) == sorted(r.info.run_id for r in runs_before)
    run = mlflow.MlflowClient(cfg.tracking_uri).get_run(outcome.run_id)
    assert run.data.tags["stage"] == "finetune"
    assert int(run.data.tags["trainable_parameters"]) < int(run.data.tags["parameters"])
    assert run.data.params["train.init_from"] == pre.run_id
    # What the pre-training learned from travels on: a run starting from this one is checked against it too.
    learned = sorted(r for r, e in json.loads(shards.read_text())["records"].items() if e["split"] == "train")
    chose = sorted(r for r, e in json.loads(shards.read_text())["records"].items() if e["split"] == "val")
    for folder, name in (("", "data.json"), ("model", "model.pt")):
        path = Path(tracking.download_artifacts(outcome.run_id, f"{folder}/{name}".lstrip("/"), str(tmp_path / "fine-files")))
        data = json.loads(path.read_text()) if name.endswith(".json") else torch.load(path, weights_only=True)["data"]
        assert data["trained_before"] == learned, name
        # ... and so does who chose it: the pre-training's validation people (the fine-tuning's own too)
        assert data["selected_before"] == chose and (data["records"]["val"] == chose), name
    identity = json.loads((tmp_path / "runs" / "fine" / "run_identity.json").read_text())
    assert (identity["trained_before"], identity["selected_before"]) == (learned, chose)
    assert "mask_ratio_effective" in run.data.metrics and run.data.metrics["mask_ratio_effective"] == 0.0
    assert outcome.metrics["test_accuracy"] > majority_accuracy(shards, "test")


def _one_night(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "night"
    generate_cohort(root, CohortConfig(n_records=1, hours=0.5, seed=11), progress=False)
    return record_paths(root, "shhs1-300001")


def test_preflight_errors(shards, tmp_path):
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9"):
        run_training(tiny(shards, tmp_path, tracking_uri="http://127.0.0.1:9"))
    with pytest.raises(LaunchError, match="cannot read the shard manifest"):
        run_training(tiny(tmp_path / "missing" / "manifest.json", tmp_path))
    with pytest.raises(LaunchError, match="need 20"):
        run_training(tiny(shards, tmp_path, num_workers=10, loader_workers=2, batch_size=40))


# ------------------------------------------------- a run is what it was: identity, lock, checksums, bundle


def _swapped_manifest(shards: Path, folder: Path) -> Path:
    """The same shards with the training and test records swapped (another dataset split, same record ids)."""
    manifest = json.loads(shards.read_text())
    swap = {"train": "test", "test": "train", "val": "val"}
    for entry in manifest["records"].values():
        entry["split"] = swap[entry["split"]]
        entry["shard"] = str(shards.parent / entry["shard"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


@pytest.fixture(scope="module")
def bundle_lost(shards, tmp_path_factory, ray_local) -> dict:
    """A run whose MLflow server dies after its first checkpoint: training finishes, its model bundle cannot be
    uploaded. While it runs, a second launch of the same name is tried."""
    import threading

    from distsleep.train.driver import TrainingFailed

    tmp = tmp_path_factory.mktemp("bundle-lost")
    server = start_mlflow_server(tmp / "server" / "mlflow.db", tmp / "server" / "artifacts")
    cfg = tiny(shards, tmp, name="lost", max_steps=60, val_every=10, log_every=10, tracking_uri=server.uri)
    outcome = {}

    def launch():
        try:
            outcome["result"] = run_training(cfg)
        except TrainingFailed as error:
            outcome["error"] = error

    thread = threading.Thread(target=launch)
    thread.start()
    try:
        _wait_for_checkpoint(tmp / "runs" / "lost")
    finally:
        server.stop()
    with pytest.raises(LaunchError) as second:  # the lock is the run's, whatever its tracking store
        run_training(dataclasses.replace(cfg, tracking_uri=f"sqlite:///{tmp / 'local.db'}"), check_cluster=False)
    thread.join(timeout=900)
    return {"cfg": cfg, "tmp": tmp, "outcome": outcome, "second": str(second.value),
            "store": f"sqlite:///{tmp / 'server' / 'mlflow.db'}", "port": int(server.uri.rsplit(":", 1)[1])}


def test_a_run_whose_bundle_was_not_uploaded_is_not_finished(bundle_lost):
    outcome = bundle_lost["outcome"]
    assert "error" in outcome, f"the run ended as {outcome}"
    message = str(outcome["error"])
    # Its own outcome and advice, not the error of the tracking server that went away.
    assert "its bundle is not confirmed in MLflow" in message and "Relaunch with the same --name" in message
    runs = mlflow.MlflowClient(bundle_lost["store"]).search_runs(
        [mlflow.MlflowClient(bundle_lost["store"]).get_experiment_by_name("tests").experiment_id])
    assert [r.info.status for r in runs if r.info.run_name == "lost"] == ["RUNNING"], "never marked FINISHED"
    # The launch that came while the run was going was refused, naming it.
    assert f"run 'lost' ({bundle_lost['tmp'] / 'runs' / 'lost'}) is in use by another job (pid {os.getpid()} on " \
        in bundle_lost["second"]


def test_a_relaunch_under_a_name_must_be_the_same_run(bundle_lost, shards):
    tmp = bundle_lost["tmp"]
    local = dict(tracking_uri=f"sqlite:///{tmp / 'local.db'}", name="lost", max_steps=60, val_every=10)
    other_data = _swapped_manifest(shards, tmp / "swapped")
    with pytest.raises(LaunchError, match=r"run 'lost' in .* was started with other its data: manifest .*"
                                          r"swapped/manifest.json.*give a new --name"):
        run_training(tiny(other_data, tmp, **local), check_cluster=False)
    with pytest.raises(LaunchError, match=r"other its config \(lr: 0.001 -> 0.002\)"):
        run_training(tiny(shards, tmp, **{**local, "lr": 2e-3}), check_cluster=False)
    identity = json.loads((tmp / "runs" / "lost" / "run_identity.json").read_text())
    assert identity["records"]["test"] == sorted(r for r, e in json.loads(shards.read_text())["records"].items()
                                                 if e["split"] == "test")


def test_a_zero_partitioned_run_resumes_only_on_its_number_of_workers(tmp_path):
    """At ZeRO 1/2 each worker's checkpoint holds its partition of the optimizer state, which DeepSpeed loads on
    that number of workers only (it failed on every worker after start-up): another --num-workers is refused
    before launch once the run has checkpoints. At ZeRO 0 any number resumes it."""
    from distsleep.train.driver import guarded_launch
    from distsleep.train.identity import check_identity, run_identity

    manifest = {"config_hash": "c", "records": {"shhs1-1": {"split": "train", "sha256": "a"},
                                                "shhs1-2": {"split": "val", "sha256": "b"}}}

    def launch(name: str, **changes) -> None:
        cfg = tiny(tmp_path / "manifest.json", tmp_path, name=name, **changes)
        (tmp_path / "runs" / name).mkdir(parents=True, exist_ok=True)
        check_identity(str(tmp_path / "runs" / name), run_identity(cfg, manifest))

    launch("zero1", zero_stage=1, num_workers=2)
    recorded = json.loads((tmp_path / "runs" / "zero1" / "run_identity.json").read_text())
    assert (recorded["config"]["zero_stage"], recorded["num_workers"]) == (1, 2), "the first launch records both"
    # No checkpoint yet (a first launch that never got its workers): another count starts the run afresh, and is its count.
    launch("zero1", zero_stage=1, num_workers=4)
    assert json.loads((tmp_path / "runs" / "zero1" / "run_identity.json").read_text())["num_workers"] == 4
    (tmp_path / "runs" / "zero1" / "checkpoint_000000").mkdir()
    launch("zero1", zero_stage=1, num_workers=4)  # its own count resumes it
    storage = tmp_path / "runs" / "zero1"
    cfg = tiny(tmp_path / "manifest.json", tmp_path, name="zero1", zero_stage=1, num_workers=2)
    with pytest.raises(LaunchError, match=rf"run 'zero1' in {storage} trains at ZeRO stage 1 with --num-workers 4, and "
                                          rf"this launch has --num-workers 2: .* Relaunch with --num-workers 4 to resume "
                                          rf"it, or start a new run .* another --name and --init-from {storage} "):
        with guarded_launch(cfg, manifest, str(storage)):
            pass
    with pytest.raises(RunMismatch, match=r"its config \(zero_stage: 1 -> 0\)"):  # the stage cannot change either
        launch("zero1", zero_stage=0, num_workers=4)

    launch("zero0", num_workers=2)  # ZeRO 0, the default: rank 0's one file, loaded by any number of workers
    (tmp_path / "runs" / "zero0" / "checkpoint_000000").mkdir()
    launch("zero0", num_workers=4)
    launch("zero0", num_workers=1, batch_size=32)


def test_a_changed_checkpoint_is_refused_before_loading(bundle_lost, shards):
    import shutil

    tmp = bundle_lost["tmp"]
    copy = tmp / "tampered"
    shutil.copytree(tmp / "runs", copy)
    checkpoint = checkpoint_dirs(copy / "lost")[-1]
    states = sorted((checkpoint / "ds").rglob("*model_states.pt"))
    original = states[0].read_bytes()
    tampered = bytearray(original)
    tampered[-100] ^= 0xFF
    states[0].write_bytes(bytes(tampered))
    cfg = tiny(shards, tmp, name="lost", max_steps=60, val_every=10, storage_path=str(copy),
               tracking_uri=f"sqlite:///{tmp / 'local.db'}")
    with pytest.raises(LaunchError, match=rf"{states[0]}: file of the checkpoint .* changed since it was written"):
        run_training(cfg, check_cluster=False)
    states[0].write_bytes(original)
    (checkpoint / "ds" / "extra.pt").write_bytes(b"not written by the run")
    with pytest.raises(LaunchError, match="extra.pt: file in the checkpoint .* that was not there"):
        run_training(cfg, check_cluster=False)


def test_init_from_a_run_that_trained_on_the_test_records_is_refused(bundle_lost, shards):
    tmp = bundle_lost["tmp"]
    swapped = _swapped_manifest(shards, tmp / "swapped-ft")
    cfg = tiny(swapped, tmp, name="ft-leak", stage="finetune", init_from=str(tmp / "runs" / "lost"),
               tracking_uri=f"sqlite:///{tmp / 'local.db'}")
    with pytest.raises(LaunchError, match=r"--init-from .*runs/lost was trained on the people of 5 test record\(s\)"):
        run_training(cfg, check_cluster=False)
    assert not (tmp / "runs" / "ft-leak").exists(), "refused before anything was created"


def test_a_relaunch_once_the_store_is_back_completes_the_run_and_its_history(bundle_lost):
    """The relaunch the failure message advises, with the server back: no step trained again, the bundle uploaded,
    the run FINISHED, and the metrics of the steps trained while the server was down (kept by the checkpoints)
    in the run's history. Last of the tests on this fixture: it finishes the run they look at."""
    tmp = bundle_lost["tmp"]
    server = start_mlflow_server(tmp / "server" / "mlflow.db", tmp / "server" / "artifacts", port=bundle_lost["port"])
    try:
        outcome = run_training(bundle_lost["cfg"], check_cluster=False)
        tracking = mlflow.MlflowClient(server.uri)
        run = tracking.get_run(outcome.run_id)
        assert run.info.status == "FINISHED" and BUNDLE_TAG in run.data.tags and "test_kappa" in run.data.metrics
        assert run.data.metrics["resumes"] == 1, "resumed from the last checkpoint, not trained again"
        # Validation every 10 steps to 60; the server died after the checkpoint of step 10.
        assert [m.step for m in sorted(tracking.get_metric_history(outcome.run_id, "val_kappa"), key=lambda m: m.step)] \
            == [10, 20, 30, 40, 50, 60]
        assert {m.step for m in tracking.get_metric_history(outcome.run_id, "epochs_per_s")} >= {20, 30, 40, 50, 60}
    finally:
        server.stop()


def test_init_from_is_checked_by_person_and_through_the_sources_own_sources(shards, tmp_path):
    """Another visit of a test person counts as that person, and so does what the source's source learned from
    ("trained_before"), so that neither SHHS2 nights nor a chain of runs carries a test person into training."""
    manifest = json.loads(shards.read_text())
    test_record = sorted(r for r, e in manifest["records"].items() if e["split"] == "test")[0]
    other_visit = "shhs2-" + manifest["records"][test_record]["subject"]
    train_records = sorted(r for r, e in manifest["records"].items() if e["split"] == "train")
    for name, data in (("visit", {"records": {"train": [other_visit]}}),
                       ("chain", {"records": {"train": train_records}, "trained_before": [other_visit]})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run_identity.json").write_text(json.dumps({"manifest_hash": "x", **data}))
        cfg = tiny(shards, tmp_path, stage="finetune", init_from=str(tmp_path / name))
        with pytest.raises(RunMismatch, match=rf"the people of 1 test record\(s\) of .* \(e.g. {test_record};"):
            check_init_sources(cfg, manifest, cfg.tracking_uri)
    # A source chosen on a test person (its validation records, or its own source's) would be judged by them.
    val_records = sorted(r for r, e in manifest["records"].items() if e["split"] == "val")
    for name, data in (("picked", {"records": {"train": train_records, "val": [other_visit]}}),
                       ("picked-chain", {"records": {"train": train_records}, "selected_before": [other_visit]})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run_identity.json").write_text(json.dumps({"manifest_hash": "x", **data}))
        cfg = tiny(shards, tmp_path, stage="finetune", init_from=str(tmp_path / name))
        with pytest.raises(RunMismatch, match=rf"was selected \(its best checkpoint, early stop\) on the people of 1 test "
                                              rf"record\(s\) of .* \(e.g. {test_record}\)"):
            check_init_sources(cfg, manifest, cfg.tracking_uri)
    # Its training people elsewhere and its validation people this run's validation people (fine-tuning on the
    # manifest it was pre-trained on): allowed, and both carried on.
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "run_identity.json").write_text(json.dumps({"records": {"train": train_records, "val": val_records},
                                                                      "trained_before": ["shhs2-999999"],
                                                                      "selected_before": ["shhs2-999998"]}))
    found, learned, selected = check_init_sources(tiny(shards, tmp_path, init_from=str(tmp_path / "clean")), manifest, "")
    assert learned == sorted([*train_records, "shhs2-999999"]) and found[str(tmp_path / "clean")]["train_records"] == len(learned)
    assert selected == sorted([*val_records, "shhs2-999998"])
