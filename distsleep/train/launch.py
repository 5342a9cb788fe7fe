"""Driver side of a model's training run: the checks of its data and options before launch, then the Ray Train
job (`driver.launch`: MLflow run, TorchTrainer over `loop.train_loop_per_worker`, fit).

`identity.py` makes sure a relaunch under a run's --name is the same run (same data and config), that one
launch of a name runs at a time, that its checkpoints are what was written, and that an --init-from source
never trained on this run's validation or test records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ray.train import CheckpointConfig

from distsleep.shards.augmented import AugmentationError, load_augmentation
from distsleep.shards.loader import labelled_records
from distsleep.tracking import INIT_SOURCES_TAG, check_reachable
from distsleep.train.config import TrainConfig
from distsleep.train.driver import LaunchError, launch, open_manifest
from distsleep.train.identity import RunMismatch, check_init_sources
from distsleep.train.inputs import augmented_urls, check_parts, input_roles, model_config
from distsleep.train.loop import train_loop_per_worker


@dataclass
class TrainingOutcome:
    run_id: str
    tracking_uri: str
    resumed: bool
    metrics: dict
    checkpoint: str | None
    best_checkpoint: str | None
    storage: str
    trained: bool = True  # False: the run had already finished and was returned as it was


def preflight(cfg: TrainConfig) -> dict:
    """Checks of the run's data and options before anything starts; returns the shard manifest."""
    manifest = open_manifest(cfg.shards, cfg.allow_shard_commands)
    try:
        check_parts(cfg)
        roles = input_roles(cfg, manifest, model_config(cfg))
    except ValueError as error:
        raise LaunchError(f"{cfg.shards}: {error}") from error
    try:  # a stale or foreign augmentation is refused here, not by every worker after start-up
        augmented_urls(cfg, manifest, roles)
    except AugmentationError as error:
        raise LaunchError(str(error)) from error
    counts = {s: sum(1 for r in manifest["records"].values() if r["split"] == s) for s in ("train", "val", "test")}
    missing = [s for s, n in counts.items() if n == 0]
    if missing:
        raise LaunchError(f"{cfg.shards}: no {'/'.join(missing)} records in the manifest ({counts}); "
                          "preprocess more recordings or change the split (--n-val, --train-fraction)")
    needed = cfg.num_workers * max(1, cfg.loader_workers)
    if cfg.label_fraction < 1:
        labelled = len(labelled_records(manifest, cfg.label_fraction, cfg.seed))
        if labelled < needed:
            raise LaunchError(f"{cfg.shards}: --label-fraction {cfg.label_fraction} keeps {labelled} of {counts['train']} "
                              f"training records, fewer than {cfg.num_workers} workers x {cfg.loader_workers} loader "
                              f"workers (need {needed}); raise the fraction or lower --loader-workers/--num-workers")
    if counts["train"] < needed:
        raise LaunchError(f"{cfg.shards}: {counts['train']} training records for {cfg.num_workers} workers x "
                          f"{cfg.loader_workers} loader workers (need {needed}); lower --loader-workers or --num-workers")
    return manifest


def init_sources(cfg: TrainConfig, manifest: dict, tracking_uri: str) -> tuple[dict[str, str], list[str], list[str]]:
    """The --init-from/--init-part sources checked against this run's splits: (their MLflow tags, the records
    they learned from, the records that chose them). LaunchError if a source learned from a person of this
    run's validation or test records or was chosen on a person of its test records."""
    try:
        found, learned, selected = check_init_sources(cfg, manifest, tracking_uri)
    except RunMismatch as error:
        raise LaunchError(str(error)) from error
    return ({INIT_SOURCES_TAG: json.dumps(found, sort_keys=True)} if found else {}), learned, selected


def run_training(cfg: TrainConfig, address: str | None = None, *, callbacks: list | None = None,
                 display_name: str | None = None, check_cluster: bool = True) -> TrainingOutcome:
    """Preflight, the MLflow run, then `TorchTrainer.fit()`. `callbacks` are Ray Train user callbacks
    (a sweep passes Tune's report callback); `display_name` names the MLflow run in the UI."""
    tracking_uri = cfg.resolved_tracking_uri
    check_reachable(tracking_uri)
    manifest = preflight(cfg)
    tags = {"model": cfg.model, "stage": cfg.stage, "task": cfg.task, **{k: str(v) for k, v in cfg.run_tags.items()}}
    source_tags, trained_before, selected_before = init_sources(cfg, manifest, tracking_uri)
    tags.update(source_tags)
    augmentations = [load_augmentation(path, cfg.allow_shard_commands)[0] for path in cfg.augment_shards]
    run = launch(cfg, manifest, train_loop_per_worker, "train", tracking_uri=tracking_uri, tags=tags, address=address,
                 check_cluster=check_cluster, inputs=cfg.augment_shards, augmentations=augmentations,
                 checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=f"val_{cfg.select_metric}",
                                                    checkpoint_score_order="max"),
                 callbacks=callbacks, display_name=display_name, trained_before=trained_before,
                 selected_before=selected_before)
    best = None
    if run.result.best_checkpoints:
        best = max(run.result.best_checkpoints,
                   key=lambda pair: pair[1].get(f"val_{cfg.select_metric}", float("-inf")))[0].path
    # The run's final numbers (test metrics of the best checkpoint) as logged by rank 0.
    return TrainingOutcome(run_id=run.run_id, tracking_uri=tracking_uri, resumed=run.resumed, metrics=run.metrics,
                           checkpoint=run.checkpoint, best_checkpoint=best, storage=run.storage,
                           trained=run.trained)
