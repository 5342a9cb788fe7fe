"""The Ray Train job steps that model training (`launch.py`) and Physio-GAN training (`distsleep.gan.train`)
share, on the driver and in the workers.

Driver: the manifest opened (or a LaunchError saying what is wrong), resources and shared paths checked
against the connected cluster, the run's storage folder, one launch of a name at a time with its identity
and checkpoints verified (`identity.py`), the MLflow run found or created, the TorchTrainer built from the
config's cluster section, `fit()` with the MLflow run marked FINISHED or FAILED (`launch`). Workers: their
rank, device and rank-0 MLflow logger (`worker_context`).

A run is identified by its name under the storage path. Launching a name whose run directory already
holds checkpoints resumes from the latest one (Ray Train V2 restores the run from
RunConfig(storage_path, name)); the MLflow run of an unfinished launch is reused too, and a run that has
already finished (its max steps reached, its MLflow run FINISHED) is returned as it is, not trained again.

Console: Ray Train's own INFO lines (every report of every rank, checkpoint and worker-group messages) stay
in Ray's log files (ray-train-sys-*.log under the session's logs/train/) unless the console is verbose
(`distsleep.runtime.verbose`); our rank-0 progress lines and warnings still reach it.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray.train
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from distsleep import store
from distsleep.bundle import CHECKPOINT_GLOB
from distsleep.cluster.preflight import ClusterCheckError, check_paths_visible, check_resources
from distsleep.errors import first_line
from distsleep.integrity import IntegrityError
from distsleep.locks import LockHeld
from distsleep.runtime import VERBOSE_ENV, connect_ray, quiet_worker_console, verbose
from distsleep.shards.augmented import generator_records
from distsleep.shards.loader import load_manifest, shard_identities
from distsleep.shards.storage import UnsafeEntryError
from distsleep.store import CredentialsInLocation, check_no_credentials
from distsleep.tracking import BUNDLE_TAG, CLIENT_ENV, RunLogger, client, find_or_create_run, sqlite_file
from distsleep.train.identity import RunMismatch, launch_guard
from distsleep.train.rendezvous import LocalRendezvousConfig
from distsleep.train.step import device_of

log = logging.getLogger("distsleep.train")


class LaunchError(RuntimeError):
    """A problem found before any worker starts, with what to do about it."""


class TrainingFailed(RuntimeError):
    """Training stopped with an error (after any --max-failures restarts); the message says how to resume."""


# ------------------------------------------------------------------------------------------------ failures

# A dead node shows up as the dead rank's actor error and/or the survivors' broken collectives.
_LOST_WORKER_SIGNS = ("ActorDiedError", "ActorUnavailableError", "node has died", "NodeDiedError", "node died",
                      "unexpected system error", "worker died", "SYSTEM_ERROR", "Connection closed by peer",
                      "Connection reset by peer", "connectFullMesh")


# A shard that no longer matches its manifest (changed or cut bytes, another record or preprocessing): relaunching
# reads it again, so the message sends people to the data first.
_DATA_SIGNS = ("ShardChecksumError", "EmptyShardError", "inconsistent shard", "but the manifest lists it as record",
               "one dataset must not mix two preprocessings")


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


def last_checkpoint_state(storage: str) -> dict | None:
    """The trainer_state.json of the run's latest readable checkpoint (Ray names them by time), or None."""
    for name in reversed(store.children(storage, CHECKPOINT_GLOB)):
        try:
            return store.read_json(store.join(storage, name, "trainer_state.json"))
        except (OSError, ValueError):
            continue
    return None


def _last_checkpoint_step(storage: str) -> int | None:
    state = last_checkpoint_state(storage)
    return None if state is None else state.get("step")


def failure_message(cfg, error: BaseException, storage: str) -> str:
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
    if any(sign in text for sign in _DATA_SIGNS):
        return (f"training run {cfg.name!r} failed: {cause}; {where}. The data is at fault, not the run: a shard no "
                f"longer matches the manifest {cfg.shards}, and a relaunch would read it again. Rebuild the shards "
                "(`distsleep preprocess` into the same --out redoes changed ones), then relaunch with the same --name")
    return (f"training run {cfg.name!r} failed: {cause}; {retries}; {where}. Relaunch with the same --name to resume "
            f"from the last checkpoint, or set --max-failures N to restart automatically while the cluster has room.")


# ------------------------------------------------------------------------------------------------ checks


def open_manifest(shards: str, allow_commands: bool = False) -> dict:
    """The shard manifest of a job about to launch, or a LaunchError saying what is wrong with it."""
    if not shards:
        raise LaunchError("no shards given: pass --shards PATH/TO/manifest.json (the output of `distsleep preprocess`)")
    try:
        manifest, base = load_manifest(shards, allow_commands=allow_commands)
    except UnsafeEntryError as error:
        raise LaunchError(str(error)) from error
    except Exception as error:
        raise LaunchError(f"cannot read the shard manifest {shards}: {error}") from error
    try:
        shard_identities(manifest, base)  # two records naming one shard: refused before launch, not mid-run
    except ValueError as error:
        raise LaunchError(f"{shards}: {error}") from error
    return manifest


def cluster_preflight(cfg, tracking_uri: str, check_demand: bool = True, inputs=()) -> None:
    """Checks against the connected cluster: enough resources for one run (unless the caller checked them),
    and local paths (shards, storage, the `inputs` the job reads, a SQLite tracking store) visible from every
    node."""
    paths = {"the shard manifest": (cfg.shards, False), "the storage path": (cfg.storage_path, True)}
    for location in inputs:
        paths[f"the augmentation {location}"] = (location, False)
    store = sqlite_file(tracking_uri)
    if store is not None:
        paths["the MLflow SQLite store"] = (str(store), True)
    try:
        if check_demand:
            check_resources(cfg.demand(), "the training run")
        check_paths_visible(paths)
    except ClusterCheckError as error:
        raise LaunchError(str(error)) from error


def run_storage(storage_path: str, name: str) -> str:
    """Where the run's checkpoints go (STORAGE/NAME); a local storage path is created first."""
    if "://" in storage_path:
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


@contextmanager
def guarded_launch(cfg, manifest: dict, storage: str, augmentations=(), trained_before=(), selected_before=()):
    """`identity.launch_guard` for the block, its refusals (another launch running, another run under this
    name, a changed checkpoint) raised as LaunchErrors."""
    with ExitStack() as stack:
        try:
            stack.enter_context(launch_guard(cfg, manifest, storage, augmentations, trained_before, selected_before))
        except (LockHeld, RunMismatch, IntegrityError) as error:
            raise LaunchError(str(error)) from error
        yield


# ------------------------------------------------------------------------------------------------ the run


# Ray Train runs the training function in a second thread of each worker process, and glibc gives such a
# thread its own malloc arena: 64 MB heaps that are mapped and unmapped as each step's tensors come and go.
# On CPU that was 2-4x the page faults of the same step on a process's main thread and up to 20 % slower
# steps, from run to run (the bimodal Ray rows of `benchmark.py train`). With one arena the training thread
# allocates from the main heap, as a plain script does; small allocations still go through each thread's
# lock-free cache. A MALLOC_ARENA_MAX set where the job is launched wins.
MALLOC_ARENAS = "1"


def worker_env(cfg, tracking_uri: str) -> dict[str, str]:
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1", **CLIENT_ENV,
           "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", MALLOC_ARENAS)}
    if verbose():
        env[VERBOSE_ENV] = "1"
    if not cfg.use_gpu:
        # DeepSpeed on CPU: its CPU accelerator over gloo; one BLAS thread per reserved CPU.
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(max(1, int(cfg.cpus_per_worker)))
    return env


def build_trainer(loop: Callable[[dict], None], loop_config: dict, cfg, tracking_uri: str, *,
                  checkpoint_config: CheckpointConfig, callbacks: list | None = None) -> TorchTrainer:
    """The TorchTrainer of a job: `loop(loop_config)` on `cfg.num_workers` workers (gloo on CPU, NCCL on GPU),
    named `cfg.name` under `cfg.storage_path`, restarted up to `cfg.max_failures` times."""
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        # no rendezvous server on every interface: a file on one node, a store on the cluster network across nodes (rendezvous.py)
        torch_config=LocalRendezvousConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=cfg.worker_resources()),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=checkpoint_config,
            worker_runtime_env={"env_vars": worker_env(cfg, tracking_uri)},
            callbacks=callbacks or [],
            logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
        ),
    )


def _set_status(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark the MLflow run; a tracking store that fails now is warned about, never allowed to replace the
    run's own outcome (its result, or its failure message with the resume advice)."""
    try:
        client(tracking_uri).set_terminated(run_id, status)
    except Exception as error:
        log.warning("could not mark MLflow run %s %s in %s (%s: %s)", run_id, status, tracking_uri,
                    type(error).__name__, first_line(error, 200))


def fit_tracked(trainer, cfg, run_id: str, tracking_uri: str, storage: str):
    """`trainer.fit()`, then the MLflow run marked FINISHED or FAILED; returns (result, logged metrics).

    A failure raises TrainingFailed with `failure_message` (per-rank causes, last checkpoint, how to resume).
    A run whose bundle (model or generator) is not confirmed uploaded by its tag is not FINISHED either (a
    sweep would take the stage as done): TrainingFailed says to relaunch the name, which re-evaluates and
    uploads without training again.
    """
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


@dataclass
class Launched:
    """What `launch` returns: the MLflow run, whether it was resumed, Ray Train's result and the logged metrics;
    `trained` is False when the launch found the run already finished and returned it as it was."""

    run_id: str
    resumed: bool
    result: Any  # ray.train.Result
    logged: dict
    storage: str
    trained: bool = True

    @property
    def metrics(self) -> dict:
        return {**dict(self.result.metrics or {}), **self.logged}

    @property
    def checkpoint(self) -> str | None:
        return self.result.checkpoint.path if self.result.checkpoint else None


def finished_launch(cfg, storage: str, tracking_uri: str) -> Launched | None:
    """The run under this name as it stands, when a relaunch has nothing left to do: its latest checkpoint
    reached `cfg.max_steps` (or stopped early) and the MLflow run that wrote it is FINISHED with its bundle.

    Without this, Ray Train would restore that checkpoint, train no step, evaluate the test set again and log
    it all to a new MLflow run (the finished one is never reopened), so that whatever started from the
    first run id (a fine-tuning's --init-from) would no longer match its own identity. A larger --max-steps
    still continues the run, into a new MLflow run; a launch whose last attempt did not finish (its bundle not
    confirmed, say) still resumes and uploads again. Checkpoints written before the MLflow run id was kept in
    trainer_state.json are relaunched as before."""
    state = last_checkpoint_state(storage)
    run_id = (state or {}).get("mlflow_run_id")
    if not run_id or not (state.get("stopped_early") or state.get("step", 0) >= cfg.max_steps):
        return None
    try:
        run = client(tracking_uri).get_run(run_id)
    except Exception:  # another tracking store, or the run deleted: train it as any other launch would
        return None
    if run.info.status != "FINISHED" or BUNDLE_TAG not in run.data.tags:
        return None
    result = ray.train.Result.from_path(storage)
    log.info("run %r already finished at step %s (MLflow run %s): not trained again; raise --max-steps to continue "
             "it, or choose a new --name", cfg.name, state["step"], run_id)
    return Launched(run_id, True, result, dict(run.data.metrics), storage, trained=False)


def launch(cfg, manifest: dict, loop: Callable[[dict], None], config_key: str, *, tracking_uri: str, tags: dict,
           address: str | None = None, check_cluster: bool = True, inputs=(), augmentations=(),
           checkpoint_config: CheckpointConfig, callbacks: list | None = None,
           display_name: str | None = None, trained_before=(), selected_before=()) -> Launched:
    """The driver steps after the job's own preflight: connect, check the cluster (unless the caller did, as a
    sweep does for all of its trials), then, holding the run's launch guard, either the run as it stands when
    it has already finished (`finished_launch`), or the MLflow run (found or created, tagged `tags`) and
    `fit()` of `loop` with `{config_key: cfg.to_dict(), mlflow_run_id, tracking_uri, mlflow_new_run,
    trained_before, selected_before}` as its config, which its bundle and data.json carry on: the records its
    --init-from sources (`trained_before`) and the generators of its synthetic epochs (`augmentations`) learned
    from, and those that chose its sources (`selected_before`)."""
    connect_ray(address)
    if check_cluster:
        cluster_preflight(cfg, tracking_uri, inputs=inputs)
    storage = run_storage(cfg.storage_path, cfg.name)
    # The generators' people count as learned from: the model learns their synthetic epochs.
    learned = sorted(set(trained_before) | {r for a in augmentations for r in generator_records(a)})
    # one launch per name, the same run, verified checkpoints
    with guarded_launch(cfg, manifest, storage, augmentations, learned, selected_before):
        done = finished_launch(cfg, storage, tracking_uri)
        if done is not None:
            return done
        run_id, resumed = find_or_create_run(tracking_uri, cfg.experiment, cfg.name, cfg.parent_run_id, tags,
                                             display_name)
        loop_config = {config_key: cfg.to_dict(), "mlflow_run_id": run_id, "tracking_uri": tracking_uri,
                       "mlflow_new_run": not resumed, "trained_before": learned,
                       "selected_before": sorted(selected_before)}
        trainer = build_trainer(loop, loop_config, cfg, tracking_uri, checkpoint_config=checkpoint_config,
                                callbacks=callbacks)
        result, logged = fit_tracked(trainer, cfg, run_id, tracking_uri, storage)
    return Launched(run_id, resumed, result, logged, storage)


# ------------------------------------------------------------------------------------------------ workers


def worker_context(config: dict, use_gpu: bool):
    """(rank, world size, torch device, rank-0 MLflow logger) of a Ray Train worker; `config` carries the
    MLflow run id and tracking URI (workers log with an explicit URI, so they need no environment of their own)."""
    quiet_worker_console()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    return rank, world, device_of(use_gpu), RunLogger(config["tracking_uri"], config["mlflow_run_id"], enabled=rank == 0)
