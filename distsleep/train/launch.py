"""Driver side of a training run: checks before launch, the MLflow run, and the Ray Train TorchTrainer.

A run is identified by its name under the storage path. Launching a name whose run directory already
holds checkpoints resumes from the latest one (Ray Train V2 restores the run from
RunConfig(storage_path, name)); the MLflow run of an unfinished launch is reused too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distsleep.train.config import TrainConfig, default_tracking_uri


class LaunchError(RuntimeError):
    """A problem found before any worker starts, with what to do about it."""


@dataclass
class TrainingOutcome:
    run_id: str
    tracking_uri: str
    resumed: bool
    metrics: dict
    checkpoint: str | None
    best_checkpoint: str | None
    storage: str


def _preflight(cfg: TrainConfig) -> None:
    from distsleep.models import resolve_channels
    from distsleep.shards.loader import load_manifest

    if not cfg.shards:
        raise LaunchError("no shards given: pass --shards PATH/TO/manifest.json (the output of `distsleep preprocess`)")
    try:
        manifest, _ = load_manifest(cfg.shards)
    except Exception as error:
        raise LaunchError(f"cannot read the shard manifest {cfg.shards}: {error}") from error
    try:
        resolve_channels(cfg.model, manifest["channels"])
    except ValueError as error:
        raise LaunchError(f"{cfg.shards}: {error}") from error
    counts = {s: sum(1 for r in manifest["records"].values() if r["split"] == s) for s in ("train", "val", "test")}
    missing = [s for s, n in counts.items() if n == 0]
    if missing:
        raise LaunchError(f"{cfg.shards}: no {'/'.join(missing)} records in the manifest ({counts}); "
                          "preprocess more recordings or change the split (--n-val, --train-fraction)")
    needed = cfg.num_workers * max(1, cfg.loader_workers)
    if counts["train"] < needed:
        raise LaunchError(f"{cfg.shards}: {counts['train']} training records for {cfg.num_workers} workers x "
                          f"{cfg.loader_workers} loader workers (need {needed}); lower --loader-workers or --num-workers")


def worker_env(cfg: TrainConfig, tracking_uri: str) -> dict[str, str]:
    from distsleep.tracking import HTTP_ENV

    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1", **HTTP_ENV}
    if not cfg.use_gpu:
        # DeepSpeed on CPU: its CPU accelerator over gloo; one BLAS thread per reserved CPU.
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(max(1, int(cfg.cpus_per_worker)))
    return env


def build_trainer(cfg: TrainConfig, run_id: str, tracking_uri: str):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from distsleep.train.loop import train_loop_per_worker

    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.to_dict(), "mlflow_run_id": run_id, "tracking_uri": tracking_uri},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=f"val_{cfg.select_metric}",
                                               checkpoint_score_order="max"),
            worker_runtime_env={"env_vars": worker_env(cfg, tracking_uri)},
        ),
    )


def run_training(cfg: TrainConfig, address: str | None = None) -> TrainingOutcome:
    from distsleep.runtime import connect_ray
    from distsleep.tracking import client, find_or_create_run, check_reachable

    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    check_reachable(tracking_uri)
    _preflight(cfg)
    if "://" not in cfg.storage_path:
        Path(cfg.storage_path).mkdir(parents=True, exist_ok=True)
    tags = {"model": cfg.model, "stage": cfg.stage, **{k: str(v) for k, v in cfg.run_tags.items()}}
    run_id, resumed = find_or_create_run(tracking_uri, cfg.experiment, cfg.name, cfg.parent_run_id, tags)
    connect_ray(address)
    trainer = build_trainer(cfg, run_id, tracking_uri)
    try:
        result = trainer.fit()
    except Exception:
        client(tracking_uri).set_terminated(run_id, "FAILED")
        raise
    if result.error is not None:
        client(tracking_uri).set_terminated(run_id, "FAILED")
        raise result.error
    client(tracking_uri).set_terminated(run_id, "FINISHED")
    # The run's final numbers (test metrics of the best checkpoint) as logged by rank 0.
    logged = client(tracking_uri).get_run(run_id).data.metrics
    best = None
    if result.best_checkpoints:
        best = max(result.best_checkpoints, key=lambda pair: pair[1].get(f"val_{cfg.select_metric}", float("-inf")))[0].path
    return TrainingOutcome(run_id=run_id, tracking_uri=tracking_uri, resumed=resumed, metrics={**dict(result.metrics or {}), **logged},
                           checkpoint=result.checkpoint.path if result.checkpoint else None, best_checkpoint=best,
                           storage=str(Path(cfg.storage_path) / cfg.name) if "://" not in cfg.storage_path else f"{cfg.storage_path}/{cfg.name}")
