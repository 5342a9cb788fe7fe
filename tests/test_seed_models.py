"""The seed models through the same jobs as MC²SleepNet, on multimodal synthetic shards and a real local Ray
cluster: 2 Ray Train workers x DeepSpeed (gloo), MLflow tracking, checkpoints, sweeps and `distsleep compare`.

All runs of this module log to one MLflow store, so the last test compares them side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from distsleep.tracking import compare
from distsleep.train.config import TrainConfig
from distsleep.train.launch import run_training

pytestmark = pytest.mark.slow

RUNS: dict[str, str] = {}  # name -> MLflow run id, filled by the tests in file order


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("seed-models")


def cfg(shards: Path, store: Path, **changes) -> TrainConfig:
    base = dict(shards=str(shards), model_size="small", seq_len=1, batch_size=64, loader_workers=1, max_steps=40,
                val_every=20, num_workers=2, lr=2e-3, storage_path=str(store / "runs"),
                tracking_uri=f"sqlite:///{store / 'mlflow.db'}", experiment="seed-models")
    base.update(changes)
    return TrainConfig(**base)


def majority(manifest_path: Path, split: str = "test") -> float:
    stages = json.loads(manifest_path.read_text())["totals"][split]["stages"]
    scored = {k: v for k, v in stages.items() if k != "unscored"}
    return max(scored.values()) / sum(scored.values())


def history(tracking_uri: str, run_id: str, key: str) -> list[float]:
    return [m.value for m in mlflow.MlflowClient(tracking_uri).get_metric_history(run_id, key)]


def fell(values: list[float], window: int = 5) -> bool:
    return len(values) >= 2 * window and np.mean(values[-window:]) < 0.9 * np.mean(values[:window])


@pytest.mark.parametrize("model, seq_len, steps", [
    ("isatsleepnet", 1, 40),
    ("crossfusionsleepnet", 5, 40),
    ("mc2sleepnet", 5, 40),
])
def test_supervised_models_train_and_beat_majority(multimodal_shards, store, model, seq_len, steps, request, tmp_path):
    # ISATSleepNet trains with its Physio-GAN augmentation: synthetic N1 epochs join the training stream only.
    augment = [str(request.getfixturevalue("gan_augmentation"))] if model == "isatsleepnet" else []
    c = cfg(multimodal_shards, store, model=model, name=model, seq_len=seq_len, max_steps=steps, val_every=steps // 2,
            batch_size=64 if seq_len == 1 else 16, augment_shards=augment)
    outcome = run_training(c)
    RUNS[model] = outcome.run_id
    m = outcome.metrics
    assert m["test_accuracy"] > majority(multimodal_shards) + 0.05, (model, m)
    assert fell(history(c.tracking_uri, outcome.run_id, "loss")), model
    client = mlflow.MlflowClient(c.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.data.tags["model"] == model and int(run.data.tags["parameters"]) > 0
    assert run.data.params["world_size"] == "2"
    # Test metrics cover exactly the manifest's scored test epochs of real records, with or without augmentation.
    manifest = json.loads(multimodal_shards.read_text())
    data = json.loads(Path(client.download_artifacts(outcome.run_id, "data.json", str(tmp_path))).read_text())
    test_records = sorted(r for r, e in manifest["records"].items() if e["split"] == "test")
    assert data["evaluated_test_records"] == test_records == data["records"]["test"]
    test_metrics = json.loads(Path(client.download_artifacts(outcome.run_id, "test_metrics.json", str(tmp_path))).read_text())
    scored = sum(v for k, v in manifest["totals"]["test"]["stages"].items() if k != "unscored")
    assert np.asarray(test_metrics["confusion"]).sum() == scored
    listed = json.loads(Path(augment[0]).read_text())["shards"] if augment else []
    assert run.data.params["data.augmentation_shards"] == str(len(listed))
    assert data["augmentation"]["manifests"] == augment and len(data["augmentation"]["shards"]) == len(listed)
    # The generator's people are people the model learned from (through its synthetic epochs): carried on, so that
    # evaluating it or a model started from it on them is refused like its own training people.
    generator = json.loads(Path(augment[0]).read_text())["generator"]["train_records"] if augment else []
    assert data["trained_before"] == sorted(generator) and (not augment or generator)


def latest_state(storage: Path) -> dict:
    checkpoints = sorted(c for c in storage.glob("checkpoint_*") if c.is_dir())
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text())


def unimodal(shards: Path, store: Path, role: str, **changes) -> TrainConfig:
    """A NeuroNet on one modality, with the encoder shape SynthSleepNet's small preset expects."""
    base = dict(model="neuronet", model_size="synthsleepnet_unimodal_small", channels=[role], name=f"neuronet-{role}",
                seq_len=5, batch_size=16, max_steps=20, val_every=10)
    return cfg(shards, store, **{**base, **changes})


def test_neuronet_pretrains_and_resumes_from_its_checkpoint(multimodal_shards, store):
    c = unimodal(multimodal_shards, store, "eeg_c4")
    first = run_training(c)
    assert fell(history(c.tracking_uri, first.run_id, "loss"))
    run = mlflow.MlflowClient(c.tracking_uri).get_run(first.run_id)
    for key in ("loss_recon", "loss_contrastive", "loss_probe", "val_macro_f1", "test_accuracy"):
        assert key in run.data.metrics, key
    assert run.data.params["model.mask_ratio"] == "0.8" and run.data.tags["model"] == "neuronet"
    # Relaunching the finished name with a longer budget continues from its step-20 checkpoint (Ray Train
    # restores the run by name); MLflow gets a new run for the continuation, with its own params.
    second = run_training(unimodal(multimodal_shards, store, "eeg_c4", max_steps=30))
    assert not second.resumed and second.run_id != first.run_id
    state = latest_state(store / "runs" / "neuronet-eeg_c4")
    assert state["step"] == 30 and state["resumes"] >= 1
    client = mlflow.MlflowClient(c.tracking_uri)
    assert sorted(m.step for m in client.get_metric_history(second.run_id, "loss")) == list(range(21, 31))
    assert client.get_run(second.run_id).data.params["train.max_steps"] == "30"
    RUNS["neuronet-eeg_c4"] = second.run_id


def test_synthsleepnet_fusion_and_downstream_tasks(multimodal_shards, store):
    airflow = run_training(unimodal(multimodal_shards, store, "airflow"))
    parts = {"eeg_c4": RUNS["neuronet-eeg_c4"], "airflow": airflow.run_id}
    modalities = {"modalities": ["eeg_c4", "airflow"]}
    fusion = cfg(multimodal_shards, store, model="synthsleepnet", name="synthsleepnet-fusion", seq_len=5, batch_size=16,
                 max_steps=20, val_every=10, model_overrides=modalities, init_parts=parts)
    fused = run_training(fusion)
    assert fell(history(fusion.tracking_uri, fused.run_id, "loss"))
    client = mlflow.MlflowClient(fusion.tracking_uri)
    tags = client.get_run(fused.run_id).data.tags
    # The unimodal encoders stay frozen in fusion pre-training.
    assert int(tags["trainable_parameters"]) < int(tags["parameters"])
    RUNS["synthsleepnet-fusion"] = fused.run_id

    # Apnea detection from the pre-trained airflow NeuroNet, fully fine-tuned (encoder + Mamba context + head).
    apnea = cfg(multimodal_shards, store, model="neuronet", model_size="synthsleepnet_unimodal_small", channels=["airflow"],
                name="neuronet-airflow-apnea", stage="finetune", task="apnea", init_from=airflow.run_id, seq_len=5,
                batch_size=16, max_steps=60, val_every=20, select_metric="auroc")
    out = run_training(apnea)
    m = out.metrics
    assert m["test_majority_accuracy"] < 0.97, "the cohort must hold apneas for this test to mean anything"
    assert m["test_accuracy"] > m["test_majority_accuracy"], m
    assert m["test_auroc"] > 0.8 and m["test_f1_positive"] > 0.4, m
    run = client.get_run(out.run_id)
    assert run.data.tags["task"] == "apnea" and "test_f1_N1" not in run.data.metrics
    bundle = torch.load(client.download_artifacts(out.run_id, "model/model.pt", str(store)), weights_only=True)
    assert bundle["task"] == "apnea" and bundle["normalization"] == "robust" and bundle["channels"] == ["airflow"]
    RUNS["neuronet-airflow-apnea"] = out.run_id

    # SynthSleepNet downstream, semi-supervised: LoRA on the frozen encoders + fusion + Mamba context + head,
    # hypopnea detection with the labels of 2 of the 5 training nights.
    hypopnea = cfg(multimodal_shards, store, model="synthsleepnet", name="synthsleepnet-hypopnea", stage="finetune",
                   task="hypopnea", label_fraction=0.4, init_from=fused.run_id, seq_len=5, batch_size=16, max_steps=10,
                   val_every=10, model_overrides=modalities)
    out = run_training(hypopnea)
    run = client.get_run(out.run_id)
    assert run.data.params["data.labelled_records"] == "2"
    trainable, total = int(run.data.tags["trainable_parameters"]), int(run.data.tags["parameters"])
    assert 0 < trainable < total  # the unimodal base weights stay frozen; LoRA adapters, fusion and heads train
    assert {"test_auroc", "test_f1_positive", "test_accuracy"} <= set(out.metrics)
    RUNS["synthsleepnet-hypopnea"] = out.run_id


def test_neuronet_mask_ratio_sweep(multimodal_shards, store):
    from distsleep.sweep.config import SweepConfig
    from distsleep.sweep.run import run_sweep
    from distsleep.tracking import KIND_TAG, SWEEP_TAG

    train = cfg(multimodal_shards, store, model="neuronet", seq_len=5, batch_size=16, max_steps=10, val_every=10)
    outcome = run_sweep(SweepConfig(name="neuronet-mask", train=train, mask_ratios=(0.5, 0.8), finetune=False,
                                    max_concurrent_trials=1, baseline=False), out_dir=str(store / "sweep-out"))
    assert sorted(t["state"] for t in outcome.trials) == ["completed", "completed"]
    client = mlflow.MlflowClient(train.tracking_uri)
    trials = client.search_runs([client.get_experiment_by_name("seed-models").experiment_id],
                                filter_string=f"tags.`{SWEEP_TAG}` = 'neuronet-mask' and tags.`{KIND_TAG}` = 'trial'")
    assert sorted(float(r.data.params["mask_ratio"]) for r in trials) == [0.5, 0.8]
    assert all(r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id for r in trials)
    assert all("pretrain_test_accuracy" in r.data.metrics for r in trials)
    rows = [r for r in outcome.rows if not r.baseline]
    assert {r.model for r in rows} == {"neuronet"} and sorted(r.mask_ratio for r in rows) == [0.5, 0.8]


def test_compare_lists_seed_models_side_by_side(multimodal_shards, store):
    from distsleep.cli import main as cli_main

    expected = {"mc2sleepnet", "isatsleepnet", "crossfusionsleepnet", "neuronet", "synthsleepnet"}
    tracking = f"sqlite:///{store / 'mlflow.db'}"
    rows = compare.collect(tracking, experiment="seed-models", with_confusion=False)
    assert expected <= {r.model for r in rows}
    apnea = next(r for r in rows if r.task == "apnea")
    assert apnea.model == "neuronet" and "test_auroc" in apnea.metrics
    assert {r.model for r in rows if r.task == "hypopnea"} == {"synthsleepnet"}
    text = compare.format_text(rows)
    for name in expected:
        assert name in text
    assert "AUROC" in text.splitlines()[0]
    out = store / "compare"
    assert cli_main(["compare", "--experiment", "seed-models", "--tracking-uri", tracking, "--out", str(out)]) == 0
    csv_text = (out / "comparison.csv").read_text()
    assert all(name in csv_text for name in expected) and (out / "confusion_matrices.png").exists()
