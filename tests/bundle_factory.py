"""Model bundles of an untrained small MC²SleepNet for tests of inference, evaluation and export: the real bundle
format, written by `distsleep.bundle.model_bundle`, weights seeded so that reruns give the same model."""

from __future__ import annotations

from pathlib import Path

import torch

from distsleep.bundle import model_bundle
from distsleep.config import PreprocessConfig
from distsleep.models import build_model
from distsleep.models.mc2sleepnet import MC2SleepNetConfig


def write_bundle(path: Path, source: str = "shhs", role: str = "eeg_c4", trained_on=(), validated_on=()) -> Path:
    """A bundle as if trained on `source` shards of channel `role`, whose training records were `trained_on` and
    validation records (which chose its checkpoint) `validated_on`."""
    torch.manual_seed(0)
    model_cfg = MC2SleepNetConfig.small()
    model = build_model("mc2sleepnet", model_cfg)
    manifest = {"config": {"preprocess": PreprocessConfig(source=source, channels=(role,)).to_dict()}, "records": {r: {"split": "train"} for r in trained_on} | {r: {"split": "val"} for r in validated_on}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model_bundle(model="mc2sleepnet", model_config=model_cfg, weights=model.state_dict(), manifest=manifest,
                            roles=[role], seq_len=model_cfg.seq_len, stage="finetune"), path)
    return path


def register_bundle(bundle: Path, tmp_path: Path, name: str = "stager", alias: str = "best") -> tuple[str, str]:
    """`bundle` logged as the model artifact of a finished run in a fresh SQLite MLflow store under `tmp_path`,
    registered as version 1 of `name` with `alias`, the way training's --register leaves it. (uri, run id)."""
    import mlflow

    from distsleep.bundle import MODEL

    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("bundles", artifact_location=(tmp_path / "artifacts").resolve().as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_artifact(run_id, str(bundle), MODEL.folder)
    client.set_terminated(run_id)
    client.create_registered_model(name)
    client.create_model_version(name, f"runs:/{run_id}/{MODEL.folder}", run_id=run_id)
    client.set_registered_model_alias(name, alias, "1")
    return uri, run_id
