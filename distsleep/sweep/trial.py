"""One sweep trial, run by Ray Tune: pre-training, fine-tuning from its own best checkpoint, test metrics.

Each stage is an ordinary training run (Ray Train TorchTrainer + DeepSpeed, `run_training`) whose
validation reports reach Tune through `TuneReportCallback`, so a scheduler such as ASHA can stop the
trial. MLflow: the trial's run is a child of the sweep's run and the two stage runs are children of the
trial's run; the trial's run carries the swept knobs as params and the summary metrics the comparison
reads (`pretrain_test_*` and `test_*`).

Every piece is idempotent: a trial whose MLflow run has FINISHED only re-reports its results, a stage
whose run has FINISHED is not trained again, and an unfinished stage resumes from its Ray Train
checkpoint (same storage path and name).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from distsleep.sweep.config import SweepConfig
from distsleep.tracking import (FINETUNE_RUN_TAG, KIND_TAG, PRETRAIN_RUN_TAG, SWEEP_TAG, TRIAL_SUMMARY, TRIAL_TAG, RunLogger,
                               download_json, find_or_create_run, find_run, run_lacks)
from distsleep.tracking.compare import ordered_point, point_label
from distsleep.train.launch import run_training

log = logging.getLogger("distsleep.sweep")


def trial_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}/{trial_id}"


def stage_run_name(sweep: str, trial_id: str, stage: str) -> str:
    return f"{sweep}-{trial_id}-{stage}"


def trial_storage(sweep: SweepConfig) -> str:
    return f"{sweep.train.storage_path.rstrip('/')}/{sweep.name}/train"


def _test_metrics(metrics: dict, prefix: str = "") -> dict:
    return {prefix + k: v for k, v in metrics.items() if k.startswith("test_") or k.startswith("val_best_")}


def _run_stage(sweep: SweepConfig, point: dict, stage: str, trial_id: str, parent_run_id: str, **changes) -> tuple[str, dict]:
    """(MLflow run id, its metrics) of one stage, training it unless its run already FINISHED."""
    name = stage_run_name(sweep.name, trial_id, stage)
    cfg = sweep.trial_train_config(point, stage, name=name, storage_path=trial_storage(sweep),
                                   parent_run_id=parent_run_id, tracking_uri=sweep.train.tracking_uri,
                                   run_tags={SWEEP_TAG: sweep.name, TRIAL_TAG: trial_id, KIND_TAG: "stage"}, **changes)
    done = find_run(cfg.tracking_uri, cfg.experiment, name, status="FINISHED")
    if done is not None:
        log.info("%s: %s already finished (MLflow run %s); not trained again", point_label(point), stage, done.info.run_id)
        return done.info.run_id, dict(done.data.metrics)
    outcome = run_training(cfg, callbacks=[TuneReportCallback()], display_name=f"{point_label(point)} {stage}",
                           check_cluster=False)
    return outcome.run_id, outcome.metrics


def _confusion(tracking_uri: str, run_id: str) -> list | None:
    metrics = download_json(tracking_uri, run_id, "test_metrics.json")
    if metrics is None:  # an artifact store that went away must not fail a finished trial
        log.warning("no test confusion matrix for run %s", run_id)
        return None
    return metrics["confusion"]


def sweep_trial(point: dict, *, sweep: dict, parent_run_id: str) -> None:
    """The Tune function: `point` is the trial's knobs (mask_ratio, ...) chosen by Tune."""
    cfg = SweepConfig.from_dict(sweep)
    uri, experiment = cfg.train.tracking_uri, cfg.train.experiment
    trial_id = ray.tune.get_context().get_trial_id()
    point = ordered_point(point)
    run_name = trial_run_name(cfg.name, trial_id)

    finished = find_run(uri, experiment, run_name, status="FINISHED")
    if finished is not None:  # a relaunched sweep whose Tune state missed this trial's end
        ray.tune.report({**finished.data.metrics, "trial_complete": 1})
        return

    run_id, resumed = find_or_create_run(
        uri, experiment, run_name, parent_run_id,
        tags={SWEEP_TAG: cfg.name, KIND_TAG: "trial", TRIAL_TAG: trial_id, "model": cfg.train.model},
        display_name=point_label(point),
    )
    tracker = RunLogger(uri, run_id)
    if not resumed:
        tracker.params({**{k: str(v) for k, v in point.items()}, "sweep": cfg.name, "trial_id": trial_id,
                        **cfg.trial_train_config(point, "pretrain").params("train")})

    pre_id, pre = _run_stage(cfg, point, "pretrain", trial_id, run_id)
    summary = _test_metrics(pre, "pretrain_")
    if "mask_ratio_effective" in pre:  # the fraction really masked at this L (MC²SleepNet: L − int(L·(1−r)))
        summary["pretrain_mask_ratio_effective"] = pre["mask_ratio_effective"]
    tags = {PRETRAIN_RUN_TAG: pre_id}
    final_id, final = pre_id, pre
    if cfg.finetune:
        final_id, final = _run_stage(cfg, point, "finetune", trial_id, run_id, init_from=pre_id)
        tags[FINETUNE_RUN_TAG] = final_id
    summary.update(_test_metrics(final))
    summary = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    confusion = {"pretrain": _confusion(uri, pre_id), "final": _confusion(uri, final_id) if cfg.finetune else None}
    record_trial(tracker, point, summary, tags, confusion)
    # The last result Tune sees for this trial: its test metrics (the scheduler's metric included).
    ray.tune.report({**summary, "trial_complete": 1})


class TrialNotRecorded(RuntimeError):
    """A trial whose stages finished but whose own MLflow run the store did not take whole."""


def record_trial(tracker: RunLogger, point: dict, summary: dict, tags: dict, confusion: dict) -> None:
    """The trial run's summary metrics, stage-run tags and trial_summary.json (what `compare` reads), then the run
    FINISHED, only once the store is seen to hold them all. Otherwise TrialNotRecorded, and the run is not FINISHED:
    Tune counts the trial failed, and a relaunch of the sweep runs it again, which finds its stages finished and
    records it without training (a trial that Tune counted complete would never be recorded)."""
    tracker.metrics(summary, step=0)
    tracker.tags(tags)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / TRIAL_SUMMARY
        path.write_text(json.dumps({"point": point, "metrics": summary, **tags, "confusion": confusion}, indent=1))
        tracker.artifact(path)
    tracker.flush()
    lacks = run_lacks(tracker.uri, tracker.run_id, metrics=summary, tags=tags, artifacts=[TRIAL_SUMMARY])
    if not lacks and not tracker.finish("FINISHED"):
        lacks = ["its FINISHED status"]
    if lacks:
        raise TrialNotRecorded(f"{point_label(point)}: its stages finished, but MLflow at {tracker.uri} lacks "
                               f"{', '.join(lacks[:4])}{' ...' if len(lacks) > 4 else ''} of its trial run "
                               f"{tracker.run_id}. Relaunch the sweep once the store works: this trial is run again "
                               "from its finished stages, without training them again.")
