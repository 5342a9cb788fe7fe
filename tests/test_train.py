"""Training on a real local Ray cluster: 2 Ray Train workers x DeepSpeed (gloo, CPU), tracked in MLflow."""

from __future__ import annotations

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

from distsleep.config import PreprocessConfig, SplitConfig
from distsleep.shards.pipeline import run_preprocess
from distsleep.synth.cohort import CohortConfig, generate_cohort
from distsleep.tracking import TrackingUnavailable
from distsleep.train.config import TrainConfig
from distsleep.train.launch import LaunchError, run_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> Path:
    root = tmp_path_factory.mktemp("train-cohort")
    generate_cohort(root, CohortConfig(n_records=8, hours=2.0, seed=4, workers=2), progress=False)
    out = tmp_path_factory.mktemp("train-shards")
    result = run_preprocess(root, out, PreprocessConfig(), SplitConfig(), progress=False)
    assert {k: v["records"] for k, v in result.manifest["totals"].items()} == {"train": 5, "val": 1, "test": 2}
    return out / "manifest.json"


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
    return [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info.get("cmdline") or [])]


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


def test_finetune_from_pretraining(shards, tmp_path):
    pre = run_training(tiny(shards, tmp_path, name="pre", max_steps=30, val_every=30, num_workers=1))
    pre_params = mlflow.MlflowClient(pre.tracking_uri).get_run(pre.run_id).data.params
    assert (pre_params["world_size"], pre_params["batch.global"], pre_params["batch.per_worker"]) == ("1", "32", "32")
    cfg = tiny(shards, tmp_path, name="fine", stage="finetune", init_from=pre.run_id, max_steps=30, val_every=30)
    outcome = run_training(cfg)
    run = mlflow.MlflowClient(cfg.tracking_uri).get_run(outcome.run_id)
    assert run.data.tags["stage"] == "finetune"
    assert int(run.data.tags["trainable_parameters"]) < int(run.data.tags["parameters"])
    assert run.data.params["train.init_from"] == pre.run_id
    assert "mask_ratio_effective" in run.data.metrics and run.data.metrics["mask_ratio_effective"] == 0.0
    assert outcome.metrics["test_accuracy"] > majority_accuracy(shards, "test")


def test_preflight_errors(shards, tmp_path):
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9"):
        run_training(tiny(shards, tmp_path, tracking_uri="http://127.0.0.1:9"))
    with pytest.raises(LaunchError, match="cannot read the shard manifest"):
        run_training(tiny(tmp_path / "missing" / "manifest.json", tmp_path))
    with pytest.raises(LaunchError, match="need 20"):
        run_training(tiny(shards, tmp_path, num_workers=10, loader_workers=2, batch_size=40))
