"""Ray Tune sweeps on a real local Ray cluster: each trial pre-trains and fine-tunes with 2 Ray Train
workers x DeepSpeed (gloo), tracked as MLflow child runs; the comparison is read back from MLflow."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import mlflow
import numpy as np
import pytest

from distsleep.night_metrics import paired_difference, per_night_values
from distsleep.sweep.config import SweepConfig
from distsleep.sweep.run import run_sweep
from distsleep.tracking import EVALUATED_SWEEP_TAG, KIND_TAG, SWEEP_TAG
from distsleep.tracking import TrackingUnavailable
from distsleep.train.config import TrainConfig
from distsleep.train.driver import LaunchError
from tests.test_train import _train_workers

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RATIOS = (0.0, 0.5, 0.75)


@pytest.fixture(scope="module")
def shards(training_shards) -> Path:
    return training_shards


def _runs(uri: str, query: str) -> list:
    c = mlflow.MlflowClient(uri)
    ids = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(ids, filter_string=query, max_results=1000)


def _sweep_args(shards: Path, tmp: Path, name: str) -> list[str]:
    return ["--shards", str(shards), "--name", name, "--mask-ratios", *map(str, RATIOS), "--model-size", "small",
            "--seq-len", "5", "--batch-size", "32", "--loader-workers", "1", "--max-steps", "20", "--val-every", "10",
            "--finetune-steps", "10", "--num-workers", "2", "--lr", "0.001", "--max-concurrent-trials", "1",
            "--storage-path", str(tmp / "runs"), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--experiment", "sweeps", "--out", str(tmp / "comparison")]


@pytest.fixture(scope="module")
def interrupted_sweep(shards, tmp_path_factory, ray_local) -> dict:
    """A 3-ratio sweep whose driver is killed after its first trial finished, then relaunched to the end."""
    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    args = [sys.executable, "jobs/sweep.py", *_sweep_args(shards, tmp, "table4")]
    env = {**os.environ, "RAY_ADDRESS": ray_local}
    # Create the SQLite store before the driver does: two processes creating its tables at once collide.
    mlflow.MlflowClient(uri).search_experiments()
    driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 420
        while time.time() < deadline and driver.poll() is None:
            done = _runs(uri, f"tags.`{KIND_TAG}` = 'trial' and attributes.status = 'FINISHED'")
            if done:
                break
            time.sleep(1)
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        assert done, "no trial finished in time"
        # A second launch of the same sweep while it runs is refused, naming the running one.
        second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    first = done[0]
    before = {r.info.run_id: r.info.start_time for r in _runs(uri, f"tags.`{SWEEP_TAG}` = 'table4'")}
    deadline = time.time() + 60  # the killed driver's trial and its workers go away with it
    while _train_workers() and time.time() < deadline:
        time.sleep(0.5)
    relaunch = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert relaunch.returncode == 0, relaunch.stdout[-3000:] + relaunch.stderr[-3000:]
    return {"tmp": tmp, "uri": uri, "first": first, "before": before, "stdout": relaunch.stdout, "args": args,
            "stderr": relaunch.stderr,
            "env": env, "second": second, "driver_pid": driver.pid}


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(interrupted_sweep):
    uri, first = interrupted_sweep["uri"], interrupted_sweep["first"]
    assert "resumed and finished sweep 'table4': 3 trials completed" in interrupted_sweep["stdout"]
    # A quiet console: a line of ours per trial (restored with the sweep), not Tune's status tables.
    console = interrupted_sweep["stdout"] + interrupted_sweep["stderr"]
    assert "Trial status:" not in console and "Current best trial" not in console, console[-3000:]
    assert re.search(r"\[[123]/3\] mask=0\.\d\d \(trial \w+\): finished \(val_best_macro_f1 \d\.\d{3}, test kappa "
                     r"-?\d\.\d{3}\)", console), console[-3000:]
    trials = _runs(uri, f"tags.`{SWEEP_TAG}` = 'table4' and tags.`{KIND_TAG}` = 'trial'")
    assert len(trials) == 3 and {t.info.status for t in trials} == {"FINISHED"}
    # The trial that had finished is the same MLflow run, and its stages were not trained again.
    assert first.info.run_id in {t.info.run_id for t in trials}
    stages = _runs(uri, f"tags.`mlflow.parentRunId` = '{first.info.run_id}'")
    assert sorted(s.data.tags["stage"] for s in stages) == ["finetune", "pretrain"]
    before = interrupted_sweep["before"]
    assert all(s.info.run_id in before and before[s.info.run_id] == s.info.start_time for s in stages)
    # Every trial has exactly one run per stage (unfinished ones were resumed, not duplicated).
    for trial in trials:
        stages = _runs(uri, f"tags.`mlflow.parentRunId` = '{trial.info.run_id}'")
        assert sorted(s.data.tags["stage"] for s in stages) == ["finetune", "pretrain"], trial.info.run_name


def test_one_launch_per_sweep_and_its_tune_state_is_verified(interrupted_sweep):
    second = interrupted_sweep["second"]
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"sweep 'table4' ({interrupted_sweep['tmp'] / 'runs' / 'table4'}) is in use by another job " \
           f"(pid {interrupted_sweep['driver_pid']} on " in second.stderr
    # The relaunch above restored Tune's state after checking it; a changed state file is refused before
    # Tune unpickles anything.
    experiment = interrupted_sweep["tmp"] / "runs" / "table4"
    state = sorted(experiment.glob("experiment_state-*.json"))[-1]
    original = state.read_text()
    state.write_text(original + " ")
    relaunch = subprocess.run(interrupted_sweep["args"], cwd=REPO, env=interrupted_sweep["env"], capture_output=True,
                              text=True, timeout=300)
    assert relaunch.returncode == 2
    assert f"{state}: Tune state changed since Tune wrote it" in relaunch.stderr, relaunch.stderr[-2000:]
    # Another grid under the same name is refused by the identity kept beside Tune's state, even where the sweep's
    # MLflow parent run is not found (another experiment): a restore would silently run the old grid.
    state.write_text(original)
    args = [{"0.75": "0.8", "sweeps": "elsewhere"}.get(a, a) for a in interrupted_sweep["args"]]
    relaunch = subprocess.run(args, cwd=REPO, env=interrupted_sweep["env"], capture_output=True, text=True, timeout=300)
    assert relaunch.returncode == 2, relaunch.stdout[-2000:] + relaunch.stderr[-2000:]
    assert "sweep 'table4' in " in relaunch.stderr and "was started with another grid or training config (" \
        in relaunch.stderr and "mask_ratios" in relaunch.stderr, relaunch.stderr[-2000:]


def test_sweep_logs_parent_children_and_the_comparison(interrupted_sweep):
    uri, tmp = interrupted_sweep["uri"], interrupted_sweep["tmp"]
    client = mlflow.MlflowClient(uri)
    parents = _runs(uri, f"tags.`{SWEEP_TAG}` = 'table4' and tags.`{KIND_TAG}` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = _runs(uri, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 3
    assert sorted(float(c.data.params["mask_ratio"]) for c in children) == list(RATIOS)
    for child in children:
        for key in ("test_accuracy", "test_macro_f1", "test_kappa", "pretrain_test_accuracy", "test_f1_N1"):
            assert 0.0 <= child.data.metrics[key] <= 1.0, (child.info.run_name, key)
    assert 0.0 < parent.data.metrics["baseline_yasa_test_accuracy"] <= 1.0
    # The parent run names the trial chosen on the validation metric (of its fine-tuning stage), not on test.
    assert parent.data.tags["selected_by"] == "validation val_best_macro_f1"
    chosen = next(c for c in children if c.info.run_id == parent.data.tags["selected_run_id"])
    assert chosen.data.metrics["val_best_macro_f1"] == max(c.data.metrics["val_best_macro_f1"] for c in children)
    assert parent.data.metrics["selected_test_accuracy"] == chosen.data.metrics["test_accuracy"]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/comparison.csv", "comparison/metrics_vs_mask_ratio.png", "comparison/confusion_matrices.png"} <= logged

    # `distsleep compare` prints MLflow's values: change one logged value and the table follows it.
    target = next(c for c in children if float(c.data.params["mask_ratio"]) == 0.5)
    client.log_metric(target.info.run_id, "test_accuracy", 0.123456)
    out = tmp / "compare-out"
    result = subprocess.run([sys.executable, "-m", "distsleep.cli", "compare", "--sweep", "table4", "--tracking-uri", uri,
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("mask=0.50"))
    assert " 12.35 " in line
    assert any(l.startswith("YASA") for l in result.stdout.splitlines())
    with open(out / "comparison.csv") as stream:
        rows = {r["run_id"]: r for r in csv.DictReader(stream) if r["baseline"] == "0"}
    assert float(rows[target.info.run_id]["test_accuracy"]) == 0.123456
    nights = {}
    for child in children:
        if child.info.run_id != target.info.run_id:
            assert float(rows[child.info.run_id]["test_macro_f1"]) == child.data.metrics["test_macro_f1"]
        # Per-night kappa of a trial: that of its fine-tuning stage's test nights (the stage run's per_night/).
        stage = child.data.tags["finetune_run_id"]
        folder = Path(client.download_artifacts(stage, "per_night", str(tmp / f"n-{stage}")))
        night = json.loads((folder / "summary.json").read_text())
        nights[child.info.run_id] = per_night_values((folder / "per_night.csv").read_text())
        assert float(rows[child.info.run_id]["night_kappa_mean"]) == pytest.approx(night["per_night"]["kappa"]["mean"])
        assert float(rows[child.info.run_id]["night_kappa_ci_low"]) == pytest.approx(night["per_night"]["kappa"]["ci_mean"][0])
    assert "kappa/night [95% CI]" in result.stdout and "Δkappa/night vs reference [95% CI]" in result.stdout
    # Every other trial is paired with the one selected on validation, over the same test nights.
    selected = parent.data.tags["selected_run_id"]
    assert rows[selected]["night_kappa_diff_vs_reference"] == ""
    for child in children:
        if child.info.run_id != selected:
            paired = paired_difference(nights[child.info.run_id], nights[selected])
            assert paired["nights"] == len(nights[selected]) >= 2
            assert float(rows[child.info.run_id]["night_kappa_diff_vs_reference"]) == pytest.approx(paired["mean"])
            assert float(rows[child.info.run_id]["night_kappa_diff_ci_low"]) == pytest.approx(paired["ci_mean"][0])
    for name in ("metrics_vs_mask_ratio.png", "per_class_f1_vs_mask_ratio.png", "confusion_matrices.png"):
        assert matplotlib.image.imread(out / name).shape[0] > 100


def test_asha_stopping_a_trial_frees_its_resources(shards, tmp_path, ray_local):
    import ray

    # lr 0 never learns: at the first rung ASHA compares it with the finished lr 0.003 trial and stops it.
    # One trial fits the 2-CPU cluster at a time, so the third trial can only start once the stopped
    # trial's Ray Train workers and placement group are gone.
    train = TrainConfig(shards=str(shards), model_size="small", seq_len=5, batch_size=32, loader_workers=1, max_steps=40,
                        val_every=20, num_workers=2, storage_path=str(tmp_path / "runs"),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="asha")
    cfg = SweepConfig(name="asha", train=train, mask_ratios=(0.5,), knobs={"lr": [0.003, 0.0, 0.003]}, finetune=False,
                      scheduler="asha", asha_grace=1, asha_reduction=4, max_concurrent_trials=1, baseline=False)
    outcome = run_sweep(cfg)
    states = [t["state"] for t in sorted(outcome.trials, key=lambda t: t["trial_id"])]
    assert states == ["completed", "stopped", "completed"]
    stopped = next(t for t in outcome.trials if t["state"] == "stopped")
    assert stopped["point"]["lr"] == 0.0 and stopped["iterations"] < max(t["iterations"] for t in outcome.trials)
    runs = _runs(train.tracking_uri, f"tags.`{SWEEP_TAG}` = 'asha' and tags.`{KIND_TAG}` = 'trial'")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "KILLED"]
    assert next(r for r in runs if r.info.status == "KILLED").data.tags["distsleep.ended_by"] == "scheduler"
    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def test_sweep_preflight(shards, tmp_path, ray_local):
    train = TrainConfig(shards=str(shards), num_workers=3, batch_size=48, loader_workers=1, storage_path=str(tmp_path / "runs"),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(LaunchError, match="CPU: needs 3, cluster has 2"):
        run_sweep(SweepConfig(name="too-big", train=train))
    assert not (tmp_path / "runs" / "too-big").exists()
    train = TrainConfig(shards=str(shards), tracking_uri="http://127.0.0.1:9", storage_path=str(tmp_path / "runs"))
    with pytest.raises(TrackingUnavailable):
        run_sweep(SweepConfig(name="no-server", train=train))


def test_cross_validation_sweep_tests_every_person_once(shards, tmp_path, ray_local):
    """--folds 3: each fold trial trains on its fold's manifest; the comparison's row pools the three folds' test
    nights (the whole cohort), its figures those of the summed test confusion matrices, and YASA is scored on the
    same nights."""
    from distsleep.metrics import pooled_metrics
    from distsleep.shards.manifest import split_records
    from distsleep.tracking import compare, download_json

    train = TrainConfig(shards=str(shards), model_size="small", seq_len=5, batch_size=32, loader_workers=1, max_steps=20,
                        val_every=10, num_workers=2, lr=0.001, storage_path=str(tmp_path / "runs"),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="cv")
    cfg = SweepConfig(name="cv", train=train, mask_ratios=(0.5,), finetune=False, folds=3, max_concurrent_trials=1)
    outcome = run_sweep(cfg, out_dir=tmp_path / "comparison")
    assert [t["state"] for t in outcome.trials] == ["completed"] * 3
    everyone = sorted(r for records in split_records(json.loads(shards.read_text())).values() for r in records)
    folds = [json.loads((shards.parent / f"manifest.cv3-seed0-fold0{f}.json").read_text()) for f in (1, 2, 3)]
    assert sorted(r for fold in folds for r in split_records(fold)["test"]) == everyone

    c = mlflow.MlflowClient(train.tracking_uri)
    stages = _runs(train.tracking_uri, f"tags.`{SWEEP_TAG}` = 'cv' and tags.`{KIND_TAG}` = 'stage'")
    assert sorted(Path(r.data.params["train.shards"]).name for r in stages) == \
        [f"manifest.cv3-seed0-fold0{f}.json" for f in (1, 2, 3)]
    confusions = [download_json(train.tracking_uri, r.info.run_id, "test_metrics.json")["confusion"] for r in stages]
    expected = pooled_metrics(sum(map(np.asarray, confusions)))

    row, baseline = outcome.rows
    assert row.label == "mask=0.50 (3-fold CV)" and row.status == "FINISHED" and not row.baseline
    assert row.metrics["test_kappa"] == pytest.approx(expected["kappa"], nan_ok=True)
    assert row.metrics["test_accuracy"] == pytest.approx(expected["accuracy"])
    assert sorted(row.nights) == everyone
    parent = c.get_run(outcome.parent_run_id)
    assert parent.data.params["sweep.folds"] == "3" and parent.data.tags["selected_trial"] == row.label
    assert baseline.baseline and sorted(download_json(train.tracking_uri, outcome.parent_run_id,
                                                      "baseline_yasa.json")["records"]) == everyone
    assert "cross-validation by person" in (tmp_path / "comparison" / "comparison.txt").read_text()
    # Read back by experiment, the fold trials are pooled the same way (a fold alone is never selected).
    by_experiment = compare.collect(train.tracking_uri, experiment="cv")
    assert [r.label for r in by_experiment if not r.baseline] == [row.label]
    assert by_experiment[0].metrics["test_accuracy"] == pytest.approx(row.metrics["test_accuracy"])

    # `evaluate --sweep` judges the selected point per night: each fold's model on its own fold's test people,
    # pooled. At stride L it scores the windows the trials' test pass scored, so it gives the row's figures.
    from distsleep.cli import main as cli_main

    out = tmp_path / "cv-evaluation"
    assert cli_main(["evaluate", "--sweep", "cv", "--tracking-uri", train.tracking_uri, "--out", str(out), "--stride", "5",
                     "--n-boot", "100", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    evaluation, = _runs(train.tracking_uri, f"tags.`{EVALUATED_SWEEP_TAG}` = 'cv'")  # the run says what it judged
    assert evaluation.data.tags[KIND_TAG] == "evaluation" and evaluation.data.params["folds"] == str(len(stages))
    assert not [r for r in _runs(train.tracking_uri, f"tags.`{SWEEP_TAG}` = 'cv'") if r.data.tags[KIND_TAG] == "evaluation"]
    stage_of_fold = {Path(r.data.params["train.shards"]).name: r.info.run_id for r in stages}
    assert summary["model"]["run_id"].split() == [run for _, run in sorted(stage_of_fold.items())]
    assert [Path(f["manifest"]).name for f in summary["folds"]] == sorted(stage_of_fold)
    assert sorted(r for fold in summary["folds"] for r in fold["records"]) == everyone
    assert summary["pooled"]["kappa"] == pytest.approx(row.metrics["test_kappa"], abs=1e-6)


def test_a_sweep_over_seeds_shows_each_point_as_its_mean_and_evaluates_its_best_seed(shards, tmp_path, ray_local):
    """--knob seed=0,1: the two trials of the point are one row (mean over seeds ± SD, as logged by the trials),
    the point is selected on its mean validation value, and `evaluate --sweep` judges the seed with the better
    validation value alone (its nights once, not once per seed)."""
    from distsleep.cli import main as cli_main

    train = TrainConfig(shards=str(shards), model_size="small", seq_len=5, batch_size=32, loader_workers=1, max_steps=10,
                        val_every=5, num_workers=2, lr=0.001, storage_path=str(tmp_path / "runs"),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="seeds")
    cfg = SweepConfig(name="seeds", train=train, mask_ratios=(0.5,), knobs={"seed": [0, 1]}, finetune=False,
                      max_concurrent_trials=1, baseline=False)
    outcome = run_sweep(cfg, out_dir=tmp_path / "comparison")
    assert [t["state"] for t in outcome.trials] == ["completed"] * 2
    trials = {t.data.params["seed"]: t for t in _runs(train.tracking_uri, f"tags.`{SWEEP_TAG}` = 'seeds' and "
                                                                          f"tags.`{KIND_TAG}` = 'trial'")}
    assert sorted(trials) == ["0", "1"]
    row, = outcome.rows
    assert row.label == "mask=0.50 (2 seeds)" and row.status == "FINISHED"
    for key in ("test_accuracy", "test_kappa", "val_best_macro_f1"):
        values = [trials[s].data.metrics[key] for s in ("0", "1")]
        assert row.metrics[key] == pytest.approx(np.mean(values))
        assert row.metrics[key + "_seed_sd"] == pytest.approx(np.std(values, ddof=1))
    assert "±" in (tmp_path / "comparison" / "comparison.txt").read_text()
    parent = mlflow.MlflowClient(train.tracking_uri).get_run(outcome.parent_run_id)
    best = parent.data.tags["selected_seed"]  # the first in seed order of those with the best validation value
    assert best == max(("0", "1"), key=lambda s: trials[s].data.metrics["val_best_macro_f1"])
    assert parent.data.tags["selected_trial"] == row.label
    assert parent.data.tags["selected_run_id"] == trials[best].info.run_id

    out = tmp_path / "evaluation"
    assert cli_main(["evaluate", "--sweep", "seeds", "--tracking-uri", train.tracking_uri, "--out", str(out),
                     "--stride", "5", "--n-boot", "50", "--no-progress", "--no-tracking"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["run_id"] == trials[best].data.tags["pretrain_run_id"]
    assert summary["pooled"]["kappa"] == pytest.approx(trials[best].data.metrics["test_kappa"], abs=1e-6)
