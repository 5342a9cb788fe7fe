"""Driver of a sweep: checks, the parent MLflow run, the Ray Tune run (new or restored), clean-up of
stopped trials, the YASA baseline, and the comparison logged to the parent run.

Layout under the storage path (a shared filesystem on clusters):
    STORAGE/NAME/                Ray Tune experiment (trial state; relaunching NAME restores it after checking
                                 it against checksums-tune-state.json, see state.py)
    STORAGE/NAME/.launch.lock    held by the sweep's driver: a second launch of NAME at once is refused
    STORAGE/NAME/sweep_identity.json  the sweep's identity hash, written before Tune's first state: a restore
                                 with another grid or training config is refused whatever MLflow holds
    STORAGE/NAME/train/          Ray Train runs of every trial's stages (checkpoints)
Every trial reads the same shards (one manifest); nothing is copied per trial.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from distsleep import store
from distsleep.baselines.score import yasa_baseline
from distsleep.cluster.preflight import ClusterCheckError, allow_pending, check_resources, resource_shortfall
from distsleep.errors import first_line
from distsleep.integrity import IntegrityError
from distsleep.locks import LockHeld, exclusive_lock
from distsleep.metrics import pooled_metrics
from distsleep.runtime import connect_ray
from distsleep.shards.folds import FoldError, fold_location, write_fold_manifests
from distsleep.sweep.config import FOLD_KEY, SweepConfig
from distsleep.sweep.console import TrialLines, tune_console, tune_verbosity
from distsleep.sweep.state import StateChecksums, verify_tune_state
from distsleep.sweep.trial import sweep_trial
from distsleep.tracking import (ENDED_BY_TAG, KIND_TAG, RUN_NAME_TAG, SWEEP_TAG, TRIAL_TAG, RunLogger, check_reachable,
                                client, compare, experiment_id, find_run, tag_filter, with_tag)
from distsleep.tracking.compare import BASELINE_PREFIX, point_label
from distsleep.tracking.sweeps import SELECTED_RUN_TAG, SELECTED_SEED_TAG
from distsleep.train.driver import LaunchError, cluster_preflight
from distsleep.train.launch import preflight

log = logging.getLogger("distsleep.sweep")
TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes reserved for each trial's driver process


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    tracking_uri: str
    resumed: bool
    trials: list[dict]  # trial_id, point, state (completed | stopped | failed), error
    rows: list = field(default_factory=list)  # compare.Row
    files: dict = field(default_factory=dict)  # comparison files written locally
    text: str = ""
    recorded: bool = True  # False when the store did not take the parent run's comparison and selection whole


def concurrency(cfg: SweepConfig, capacity: dict[str, float]) -> int:
    """How many trials run at once: the user's cap, else what the cluster's resources hold (at least 1).

    Raises LaunchError when one trial alone needs more than the whole cluster has: its trainer would
    wait for resources forever (unless an autoscaler may add nodes: DISTSLEEP_ALLOW_PENDING=1).
    """
    demand = cfg.train.demand()
    if allow_pending() and resource_shortfall(demand, capacity):
        return cfg.max_concurrent_trials or 1
    try:
        check_resources(demand, "one trial", capacity)
    except ClusterCheckError as error:
        raise LaunchError(str(error)) from error
    fit = min(math.floor(capacity.get(k, 0.0) / v + 1e-9) for k, v in demand.items() if v > 0)
    fit = max(1, fit)
    return min(fit, cfg.max_concurrent_trials) if cfg.max_concurrent_trials else fit


def reports_per_trial(cfg: SweepConfig) -> int:
    """Results one trial reports to Tune (validations + the final report of each stage, + the summary)."""
    t = cfg.train
    pre = math.ceil(t.max_steps / t.val_every) + 1
    fine = math.ceil((cfg.finetune_steps or t.max_steps) / t.val_every) + 1 if cfg.finetune else 0
    return pre + fine + 1


def param_space(cfg: SweepConfig) -> dict:
    if cfg.search == "grid":
        space = {"mask_ratio": tune.grid_search(list(cfg.mask_ratios))}
        space.update({k: tune.grid_search(v) for k, v in cfg.knobs.items()})
        if cfg.folds:
            space[FOLD_KEY] = tune.grid_search(list(range(1, cfg.folds + 1)))
    else:
        space = {"mask_ratio": tune.uniform(*cfg.mask_ratio_range)}
        space.update({k: tune.choice(v) for k, v in cfg.knobs.items()})
    return space


def identity_hash(cfg: SweepConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:16]


def _parent_run(cfg: SweepConfig, uri: str) -> tuple[str, bool]:
    """The sweep's MLflow run: the existing one for this name (any status), else a new one."""
    run_name = f"sweep/{cfg.name}"
    existing = find_run(uri, cfg.train.experiment, run_name)
    digest = identity_hash(cfg)
    if existing is not None:
        logged = existing.data.params.get("sweep.identity")
        if logged and logged != digest:
            raise LaunchError(f"a sweep named {cfg.name!r} already exists with a different grid or training config "
                              f"(MLflow run {existing.info.run_id}); relaunch it unchanged to resume, or pick a new --name")
        client(uri).update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id, True
    c = client(uri)
    run = c.create_run(experiment_id(uri, cfg.train.experiment), run_name=f"sweep {cfg.name}",
                       tags={RUN_NAME_TAG: run_name, SWEEP_TAG: cfg.name, KIND_TAG: "sweep", "model": cfg.train.model})
    logger = RunLogger(uri, run.info.run_id)
    logger.params({
        "sweep.identity": digest, "sweep.mask_ratios": json.dumps(list(cfg.mask_ratios)),
        "sweep.knob_names": json.dumps(sorted(cfg.knobs)), "sweep.knobs": json.dumps(cfg.knobs, sort_keys=True),
        "sweep.search": cfg.search, "sweep.num_samples": cfg.num_samples, "sweep.n_trials": cfg.n_trials,
        "sweep.scheduler": cfg.scheduler, "sweep.finetune": cfg.finetune, "sweep.finetune_steps": cfg.finetune_steps,
        "sweep.finetune_lr": cfg.finetune_lr, "sweep.folds": cfg.folds, "sweep.fold_seed": cfg.fold_seed,
        **cfg.train.params("train"),
    })
    return run.info.run_id, False


def _log_baseline(cfg: SweepConfig, uri: str, parent_run_id: str) -> None:
    """Score YASA on the sweep's test records once per sweep (kept on the parent run)."""
    if any(k.startswith(BASELINE_PREFIX) for k in client(uri).get_run(parent_run_id).data.metrics):
        return
    try:
        if cfg.folds:  # the nights the trials' pooled rows are tested on: every fold's test people
            folds = [yasa_baseline(fold_location(cfg.train.shards, cfg.folds, f, cfg.fold_seed), "test")
                     for f in range(1, cfg.folds + 1)]
            metrics = pooled_metrics(np.sum([m["confusion"] for m in folds], axis=0))
            metrics["records"] = {r: v for m in folds for r, v in m["records"].items()}
        else:
            metrics = yasa_baseline(cfg.train.shards, "test")
    except Exception as error:  # the comparison is still useful without it
        log.warning("YASA baseline not scored: %s: %s", type(error).__name__, error)
        return
    logger = RunLogger(uri, parent_run_id)
    flat = {f"{BASELINE_PREFIX}test_{k}": metrics[k] for k in ("accuracy", "macro_f1", "kappa")}
    flat.update({f"{BASELINE_PREFIX}test_f1_{k}": v for k, v in metrics["f1"].items()})
    logger.metrics(flat, step=0)
    logger.flush()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "baseline_yasa.json"
        path.write_text(json.dumps(metrics, indent=1))
        logger.artifact(path)


def _close_unfinished_trials(uri: str, experiment: str, sweep: str, states: dict[str, str]) -> None:
    """Trial and stage runs left RUNNING by trials Tune stopped or that failed: mark them KILLED/FAILED."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = with_tag(c.search_runs([exp.experiment_id], filter_string=f"{tag_filter(SWEEP_TAG, sweep)} and attributes.status = 'RUNNING'",
                                  max_results=5000), SWEEP_TAG, sweep)
    for run in runs:
        trial = run.data.tags.get(TRIAL_TAG)
        state = states.get(trial)
        if state in (None, "completed") or run.data.tags.get(KIND_TAG) == "sweep":
            continue
        c.set_tag(run.info.run_id, ENDED_BY_TAG, "scheduler" if state == "stopped" else "error")
        c.set_terminated(run.info.run_id, "KILLED" if state == "stopped" else "FAILED")


def _trial_states(results, tune_metric: str) -> list[dict]:
    trials = []
    for result in results:
        metrics = result.metrics or {}
        state = "completed" if metrics.get("trial_complete") else ("failed" if result.error else "stopped")
        point = {k: v for k, v in (result.config or {}).items()}
        trials.append({"trial_id": metrics.get("trial_id") or Path(result.path).name, "point": point, "state": state,
                       "iterations": metrics.get("training_iteration"), "error": str(result.error) if result.error else None,
                       tune_metric: metrics.get(tune_metric)})
    return trials


def record_selection(logger, rows) -> None:
    """Tag the parent run with the point chosen on validation (never on test) and log its metrics as
    selected_*: its validation value and the test metrics it is reported with. `SELECTED_RUN_TAG` names the
    trial runs whose models stand for the point (`distsleep evaluate --sweep`): its trial, its K fold trials, or,
    for a point repeated over seeds (selected on its mean), those of its seed with the best validation value."""
    chosen = compare.selected_run(rows)
    if chosen is None:
        logger.tags({"selected_by": "none: no trial has a validation metric"})
        return
    key = compare.selection_key(rows)
    tags = {"selected_trial": chosen.label, SELECTED_RUN_TAG: chosen.run_id, "selected_by": f"validation {key}"}
    seed = compare.best_seed(chosen, key)
    if seed is not None:
        tags.update({SELECTED_RUN_TAG: seed[1].run_id, SELECTED_SEED_TAG: seed[0], "selected_point_run_ids": chosen.run_id})
    logger.tags(tags)
    logger.metrics({f"selected_{k}": v for k, v in chosen.metrics.items() if k.startswith("test_") or k == key}, step=0)


def run_sweep(cfg: SweepConfig, address: str | None = None, out_dir: str | Path | None = None) -> SweepOutcome:
    uri = cfg.train.resolved_tracking_uri
    cfg.train.tracking_uri = uri
    for ratios, n in cfg.indistinct_ratios():
        log.warning("masking ratios %s all make %s mask %d units per sample (MC²SleepNet: epochs of a sequence of "
                    "%d): their trials differ only by chance (a longer --seq-len separates them)",
                    ", ".join(f"{r:g}" for r in ratios), cfg.train.model, n, cfg.train.seq_len)
    check_reachable(uri)
    preflight(cfg.train)
    if cfg.folds:  # before anything runs: a cohort that cannot be cut into K folds is refused here
        try:
            written = write_fold_manifests(cfg.train.shards, cfg.folds, cfg.fold_seed)
        except FoldError as error:
            raise LaunchError(str(error)) from error
        log.info("%d-fold cross-validation by person: fold manifests beside %s (%s ...)", cfg.folds,
                 cfg.train.shards, Path(written[0]).name)
    connect_ray(address)

    max_concurrent = concurrency(cfg, ray.cluster_resources())  # also refuses a trial larger than the cluster
    cluster_preflight(cfg.train, uri, check_demand=False)
    if max_concurrent > 1 and uri.startswith("sqlite"):
        log.warning("%d trials at once write to one SQLite file (%s); on clusters use an MLflow server "
                    "(cluster/local/start.sh starts one)", max_concurrent, uri)
    storage = cfg.train.storage_path
    experiment_dir = f"{storage.rstrip('/')}/{cfg.name}"
    with ExitStack() as stack:
        try:
            stack.enter_context(_sweep_lock(experiment_dir, cfg.name))
        except LockHeld as error:
            raise LaunchError(str(error)) from error
        return _run_locked(cfg, uri, max_concurrent, experiment_dir, out_dir)


def _sweep_lock(experiment_dir: str, name: str):
    """One launch of a sweep name at a time (on s3:// storage a lease object, see locks.py)."""
    return exclusive_lock(store.join(experiment_dir, ".launch.lock"), f"sweep {name!r} ({experiment_dir})",
                          "wait for that launch to end, or give this one another --name")


IDENTITY_FILE = "sweep_identity.json"


def _check_identity(cfg: SweepConfig, experiment_dir: str, restoring: bool) -> None:
    """Record the sweep's identity beside a new Tune state, or refuse to restore a state made for another sweep.

    Tune's restore keeps the grid it was started with, so a relaunch with other ratios would silently run the
    old grid with the new training config. The MLflow parent run's `sweep.identity` catches that only while
    the run is found (same tracking store and experiment); this file travels with the state itself."""
    path = store.join(experiment_dir, IDENTITY_FILE)
    digest = identity_hash(cfg)
    if not restoring:
        store.write_json(path, {"name": cfg.name, "identity": digest, "config": cfg.identity()})
        return
    if not store.exists(path):
        raise LaunchError(f"{experiment_dir} holds a Ray Tune state but no {IDENTITY_FILE}, so this launch cannot be "
                          f"checked to be the same sweep; give a new --name to start a new sweep")
    before = store.read_json(path)
    if before.get("identity") != digest:
        old, new = before.get("config", {}), cfg.identity()
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        raise LaunchError(f"sweep {cfg.name!r} in {experiment_dir} was started with another grid or training config "
                          f"({', '.join(changed) or 'identity'} differ); relaunch it unchanged to resume, or pick a new "
                          "--name")


def _verify_tune_state(experiment_dir: str) -> None:
    """The Tune state a restore would unpickle matches the checksums recorded when Tune wrote it (LaunchError
    if not), in a folder or an s3:// prefix alike."""
    try:
        verify_tune_state(experiment_dir)
    except IntegrityError as error:
        raise LaunchError(str(error)) from error


def _run_locked(cfg: SweepConfig, uri: str, max_concurrent: int, experiment_dir: str, out_dir) -> SweepOutcome:
    restoring = tune.Tuner.can_restore(experiment_dir)
    if restoring:
        _verify_tune_state(experiment_dir)  # before anything is unpickled or changed
    _check_identity(cfg, experiment_dir, restoring)
    parent_run_id, resumed = _parent_run(cfg, uri)
    if cfg.baseline:
        _log_baseline(cfg, uri, parent_run_id)

    tune_metric = f"val_best_{cfg.train.select_metric}"
    # The trial function holds no CPU (its TorchTrainer's worker group asks for what training needs), only
    # some memory: Tune refuses an all-zero request, and a CPU share would make a 2 x 1-CPU trial unplaceable
    # on a 2-CPU machine.
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, sweep=cfg.to_dict(), parent_run_id=parent_run_id),
                                    {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})
    if restoring:
        log.info("sweep %s: resuming from %s (finished trials are kept)", cfg.name, experiment_dir)
        tuner = tune.Tuner.restore(experiment_dir, trainable, resume_unfinished=True, restart_errored=True)
        resumed = True
    else:
        scheduler = None
        if cfg.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=cfg.asha_grace,
                                      reduction_factor=cfg.asha_reduction, max_t=reports_per_trial(cfg))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(metric=tune_metric, mode="max", scheduler=scheduler, num_samples=cfg.num_samples,
                                        max_concurrent_trials=max_concurrent,
                                        trial_dirname_creator=lambda trial: trial.trial_id),
            # Tune's status tables only with --verbose; our lines per trial otherwise (sweep/console.py)
            run_config=tune.RunConfig(name=cfg.name, storage_path=cfg.train.storage_path, verbose=tune_verbosity(),
                                      callbacks=[StateChecksums(), TrialLines(cfg.n_trials, tune_metric)]),
        )
    with tune_console():
        results = tuner.fit()
    trials = _trial_states(results, tune_metric)
    _close_unfinished_trials(uri, cfg.train.experiment, cfg.name, {t["trial_id"]: t["state"] for t in trials})

    rows = compare.collect(uri, sweep=cfg.name)
    text = compare.format_text(rows)
    target = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"sweep-{cfg.name}-"))
    files = compare.write_comparison(rows, target, title=f"sweep {cfg.name} ({cfg.train.model})")
    logger = RunLogger(uri, parent_run_id)
    logger.artifacts([(path, "comparison") for path in files.values()])
    counts = {s: sum(t["state"] == s for t in trials) for s in ("completed", "stopped", "failed")}
    logger.metrics({f"trials_{k}": v for k, v in counts.items()}, step=0)
    record_selection(logger, rows)
    # Not FINISHED unless the store holds the comparison and the selection (`evaluate --sweep` reads the latter);
    # a relaunch of the sweep reuses this run and records them again.
    recorded = logger.finish("FINISHED" if counts["failed"] == 0 else "FAILED")
    for t in trials:
        if t["state"] != "completed":
            log.info("trial %s (%s): %s%s", t["trial_id"], point_label(t["point"]), t["state"],
                     f" ({first_line(t['error'], 200)})" if t["error"] else "")
    return SweepOutcome(name=cfg.name, parent_run_id=parent_run_id, tracking_uri=uri, resumed=resumed, trials=trials,
                        rows=rows, files=files, text=text, recorded=recorded)
