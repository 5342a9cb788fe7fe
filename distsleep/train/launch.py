"""Driver side of a training run: checks before launch, the MLflow run, and the Ray Train TorchTrainer.

A run is identified by its name under the storage path. Launching a name whose run directory already
holds checkpoints resumes from the latest one (Ray Train V2 restores the run from
RunConfig(storage_path, name)); the MLflow run of an unfinished launch is reused too. `identity.py` makes
sure such a relaunch is the same run (same data and config), that one launch of a name runs at a time,
that its checkpoints are what was written, and that an --init-from source never trained on this run's
validation or test records.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from distsleep.train.config import TrainConfig, default_tracking_uri


class LaunchError(RuntimeError):
    """A problem found before any worker starts, with what to do about it."""


class TrainingFailed(RuntimeError):
    """Training stopped with an error (after any --max-failures restarts); the message says how to resume."""


log = logging.getLogger("distsleep.train")


# A dead node shows up as the dead rank's actor error and/or the survivors' broken collectives.
_LOST_WORKER_SIGNS = ("ActorDiedError", "ActorUnavailableError", "node has died", "NodeDiedError", "node died",
                      "unexpected system error", "worker died", "SYSTEM_ERROR", "Connection closed by peer",
                      "Connection reset by peer", "connectFullMesh")


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:200]


def _describe(error: BaseException) -> str:
    """Per-rank causes of a Ray Train failure (WorkerGroupError carries them), else the error itself."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        return "; ".join(f"rank {rank}: {type(e).__name__}: {_first_line(e)}" for rank, e in sorted(failures.items()))
    inner = getattr(error, "controller_failure", None)
    if inner is not None:
        return _describe(inner)
    return f"{type(error).__name__}: {_first_line(error)}"


def _last_checkpoint_step(storage: str) -> int | None:
    from distsleep import store

    for name in reversed(store.children(storage, "checkpoint_*")):
        try:
            return store.read_json(store.join(storage, name, "trainer_state.json")).get("step")
        except (OSError, ValueError):
            continue
    return None


def failure_message(cfg: TrainConfig, error: BaseException, storage: str) -> str:
    """One paragraph for people: what failed, where the last checkpoint is, and how to go on."""
    failures = getattr(error, "worker_failures", None) or {}
    text = " ".join([f"{type(error).__name__}: {error}", *(f"{type(e).__name__}: {e}" for e in failures.values())])
    lost = any(sign in text for sign in _LOST_WORKER_SIGNS)
    detail = _describe(error)
    cause = f"a Ray Train worker died (its node was lost or its process was killed) [{detail}]" if lost else detail
    step = _last_checkpoint_step(storage)
    where = f"the last checkpoint (step {step}) is in {storage}" if step is not None else f"no checkpoint was committed in {storage}"
    retries = (f"it was restarted up to --max-failures {cfg.max_failures} time(s)" if cfg.max_failures
               else "--max-failures 0: no automatic restart")
    return (f"training run {cfg.name!r} failed: {cause}; {retries}; {where}. Relaunch with the same --name to resume "
            f"from the last checkpoint, or set --max-failures N to restart automatically while the cluster has room.")


@dataclass
class TrainingOutcome:
    run_id: str
    tracking_uri: str
    resumed: bool
    metrics: dict
    checkpoint: str | None
    best_checkpoint: str | None
    storage: str


def open_manifest(shards: str, allow_commands: bool = False) -> dict:
    """The shard manifest of a job about to launch, or a LaunchError saying what is wrong with it."""
    from distsleep.shards.loader import load_manifest
    from distsleep.shards.storage import UnsafeEntryError

    if not shards:
        raise LaunchError("no shards given: pass --shards PATH/TO/manifest.json (the output of `distsleep preprocess`)")
    try:
        manifest, _ = load_manifest(shards, allow_commands=allow_commands)
    except UnsafeEntryError as error:
        raise LaunchError(str(error)) from error
    except Exception as error:
        raise LaunchError(f"cannot read the shard manifest {shards}: {error}") from error
    return manifest


def _preflight(cfg: TrainConfig) -> dict:
    """Checks of the run's data and options before anything starts; returns the shard manifest."""
    from distsleep.shards.loader import labelled_records
    from distsleep.train.loop import augmented_urls, input_roles, model_config

    manifest = open_manifest(cfg.shards, cfg.allow_shard_commands)
    try:
        roles = input_roles(cfg, manifest, model_config(cfg))
    except ValueError as error:
        raise LaunchError(f"{cfg.shards}: {error}") from error
    if cfg.augment_shards:
        from distsleep.gan.augment import AugmentationError

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


@contextmanager
def guarded_launch(cfg, manifest: dict, storage: str, augmentations=()):
    """`identity.launch_guard` for the block, its refusals (another launch running, another run under this
    name, a changed checkpoint) raised as LaunchErrors."""
    from distsleep.integrity import IntegrityError
    from distsleep.locks import LockHeld
    from distsleep.train.identity import RunMismatch, launch_guard

    with ExitStack() as stack:
        try:
            stack.enter_context(launch_guard(cfg, manifest, storage, augmentations))
        except (LockHeld, RunMismatch, IntegrityError) as error:
            raise LaunchError(str(error)) from error
        yield


def init_source_tags(cfg: TrainConfig, manifest: dict, tracking_uri: str) -> dict[str, str]:
    """The --init-from/--init-part sources checked against this run's splits, as MLflow tags (LaunchError if a
    source trained on this run's validation or test records)."""
    from distsleep.train.identity import RunMismatch, check_init_sources, source_tags

    try:
        return source_tags(check_init_sources(cfg, manifest, tracking_uri))
    except RunMismatch as error:
        raise LaunchError(str(error)) from error


def _augmentations(cfg: TrainConfig) -> list[dict]:
    from distsleep.gan.augment import load_augmentation

    return [load_augmentation(path, cfg.allow_shard_commands)[0] for path in cfg.augment_shards]


def run_demand(cfg: TrainConfig) -> dict[str, float]:
    """Resources one training run's Ray Train worker group asks for."""
    demand = {"CPU": cfg.num_workers * cfg.cpus_per_worker}
    if cfg.use_gpu:
        demand["GPU"] = cfg.num_workers * cfg.gpus_per_worker
    return demand


def cluster_preflight(cfg: TrainConfig, tracking_uri: str, check_demand: bool = True) -> None:
    """Checks against the connected cluster: enough resources for one run (unless the caller checked them),
    and local paths (shards, storage, a SQLite tracking store) visible from every node."""
    from distsleep.cluster.preflight import ClusterCheckError, check_paths_visible, check_resources

    paths = {"the shard manifest": (cfg.shards, False), "the storage path": (cfg.storage_path, True)}
    for augmentation in getattr(cfg, "augment_shards", []):  # GanTrainConfig has none
        paths[f"the augmentation {augmentation}"] = (augmentation, False)
    if tracking_uri.startswith("sqlite:///"):
        paths["the MLflow SQLite store"] = (tracking_uri.removeprefix("sqlite:///"), True)
    try:
        if check_demand:
            check_resources(run_demand(cfg), "the training run")
        check_paths_visible(paths)
    except ClusterCheckError as error:
        raise LaunchError(str(error)) from error


def run_storage(storage_path: str, name: str) -> str:
    """Where the run's checkpoints go (STORAGE/NAME); a local storage path is created first."""
    if "://" in storage_path:
        from distsleep.store import CredentialsInLocation, check_no_credentials

        try:
            check_no_credentials(storage_path)
        except CredentialsInLocation as error:
            raise LaunchError(f"--storage-path: {error}") from error
        return f"{storage_path.rstrip('/')}/{name}"
    try:
        Path(storage_path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LaunchError(f"cannot create the storage path {storage_path}: {error.strerror}") from error
    return str(Path(storage_path) / name)


def _set_status(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark the MLflow run; a tracking store that fails now is warned about, never allowed to replace the
    run's own outcome (its result, or its failure message with the resume advice)."""
    from distsleep.tracking import client

    try:
        client(tracking_uri).set_terminated(run_id, status)
    except Exception as error:
        log.warning("could not mark MLflow run %s %s in %s (%s: %s)", run_id, status, tracking_uri,
                    type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")


def fit_tracked(trainer, cfg, run_id: str, tracking_uri: str, storage: str):
    """`trainer.fit()`, then the MLflow run marked FINISHED or FAILED; returns (result, logged metrics).

    A failure raises TrainingFailed with `failure_message` (per-rank causes, last checkpoint, how to resume).
    A run whose bundle (model or generator) is not confirmed uploaded by its tag is not FINISHED either (a
    sweep would take the stage as done): TrainingFailed says to relaunch the name, which re-evaluates and
    uploads without training again.
    """
    from distsleep.tracking import BUNDLE_TAG, client

    try:
        result = trainer.fit()
        error = result.error
    except Exception as raised:  # Ray Train raises worker-group failures from fit()
        error = raised
    if error is not None:
        _set_status(tracking_uri, run_id, "FAILED")
        raise TrainingFailed(failure_message(cfg, error, storage)) from error
    try:
        run = client(tracking_uri).get_run(run_id)
    except Exception as lost:
        log.warning("could not read MLflow run %s back (%s: %s)", run_id, type(lost).__name__, str(lost)[:200])
        run = None
    if run is None or BUNDLE_TAG not in run.data.tags:
        _set_status(tracking_uri, run_id, "FAILED")
        raise TrainingFailed(f"run {cfg.name!r} trained and was evaluated, but its bundle is not confirmed in MLflow at "
                             f"{tracking_uri} (see the warnings above), so the run is not FINISHED. Relaunch with the "
                             f"same --name once the store works: the last checkpoint in {storage} is evaluated and "
                             "uploaded again without training.")
    _set_status(tracking_uri, run_id, "FINISHED")
    return result, dict(run.data.metrics)


def worker_env(cfg: TrainConfig, tracking_uri: str) -> dict[str, str]:
    from distsleep.tracking import HTTP_ENV

    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1", **HTTP_ENV}
    if not cfg.use_gpu:
        # DeepSpeed on CPU: its CPU accelerator over gloo; one BLAS thread per reserved CPU.
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(max(1, int(cfg.cpus_per_worker)))
    return env


def build_trainer(cfg: TrainConfig, run_id: str, tracking_uri: str, callbacks: list | None = None,
                  new_run: bool = True):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from distsleep.train.loop import train_loop_per_worker

    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.to_dict(), "mlflow_run_id": run_id, "tracking_uri": tracking_uri,
                           "mlflow_new_run": new_run},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=f"val_{cfg.select_metric}",
                                               checkpoint_score_order="max"),
            worker_runtime_env={"env_vars": worker_env(cfg, tracking_uri)},
            callbacks=callbacks or [],
        ),
    )


def run_training(cfg: TrainConfig, address: str | None = None, *, callbacks: list | None = None,
                 display_name: str | None = None, check_cluster: bool = True) -> TrainingOutcome:
    """Preflight, the MLflow run, then `TorchTrainer.fit()`. `callbacks` are Ray Train user callbacks
    (a sweep passes Tune's report callback); `display_name` names the MLflow run in the UI."""
    from distsleep.runtime import connect_ray
    from distsleep.tracking import check_reachable, find_or_create_run

    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    check_reachable(tracking_uri)
    manifest = _preflight(cfg)
    tags = {"model": cfg.model, "stage": cfg.stage, "task": cfg.task, **{k: str(v) for k, v in cfg.run_tags.items()}}
    tags.update(init_source_tags(cfg, manifest, tracking_uri))
    connect_ray(address)
    if check_cluster:  # sweep trials pass False: the sweep's driver checked once for all of them
        cluster_preflight(cfg, tracking_uri)
    storage = run_storage(cfg.storage_path, cfg.name)
    with guarded_launch(cfg, manifest, storage, _augmentations(cfg)):
        run_id, resumed = find_or_create_run(tracking_uri, cfg.experiment, cfg.name, cfg.parent_run_id, tags, display_name)
        trainer = build_trainer(cfg, run_id, tracking_uri, callbacks, new_run=not resumed)
        # The run's final numbers (test metrics of the best checkpoint) as logged by rank 0.
        result, logged = fit_tracked(trainer, cfg, run_id, tracking_uri, storage)
    best = None
    if result.best_checkpoints:
        best = max(result.best_checkpoints, key=lambda pair: pair[1].get(f"val_{cfg.select_metric}", float("-inf")))[0].path
    return TrainingOutcome(run_id=run_id, tracking_uri=tracking_uri, resumed=resumed, metrics={**dict(result.metrics or {}), **logged},
                           checkpoint=result.checkpoint.path if result.checkpoint else None, best_checkpoint=best,
                           storage=storage)
