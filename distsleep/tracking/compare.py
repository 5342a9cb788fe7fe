"""The comparison of runs: a Table-4-style table read from MLflow, written as text, CSV and Markdown,
and the plots (metrics vs masking ratio, per-class F1 vs ratio, confusion matrices side by side).

Values are MLflow's logged metrics, never recomputed, so the table is the same from any machine that
reaches the tracking server; a cross-validation sweep's row pools its folds from their logged test
confusion matrices and per-night results (`pool_folds`), and a sweep repeated over training seeds (`--knob
seed=0,1,2`) shows each point as the mean over its seeds with the SD between them (`pool_seeds`). Rows are the
trials of a sweep (or any runs with test metrics), plus the YASA baseline scored on the same test records when
a sweep holds one.

Selection is on validation only: the run with the best validation metric (`val_best_<select metric>`,
of its final stage, the one whose test metrics the row shows) is marked "selected (validation)"; test
metrics are reported for every run and never pick anything. A point pooled over folds or seeds is selected on
its mean validation value, and only when every fold and seed finished. The stars on test columns show the best value
of each column, for reading the table, not a choice.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distsleep.metrics import pooled_metrics
from distsleep.night_metrics import (mean_over_nights, mean_over_nights_and_seeds, paired_difference_over_seeds,
                                    per_night_values)
from distsleep.plots import confusion_grid_png, metric_curves_png, paired_differences_png
from distsleep.shards.folds import FOLD_KEY
from distsleep.stages import STAGE_NAMES
from distsleep.tracking import (ENDED_BY_TAG, KIND_TAG, PER_NIGHT_ARTIFACTS, SWEEP_TAG, TRIAL_SUMMARY, client, download_json,
                               download_text, final_stage_run, sweep_runs)

BASELINE_PREFIX = "baseline_yasa_"
COLUMNS = [  # (header, metric key); accuracies and F1 shown in %, kappa as is (as in the paper)
    ("pre-train acc", "pretrain_test_accuracy"),
    ("accuracy", "test_accuracy"),
    ("macro-F1", "test_macro_f1"),
    ("kappa", "test_kappa"),
    *[(f"F1 {name}", f"test_f1_{name}") for name in STAGE_NAMES],
]
# Per-night kappa: mean over nights and its 95 % subject-bootstrap CI (a row over seeds: people and seeds
# resampled), from the run's per-night summary.json
# (a training run's per_night/ artifacts, an evaluation run's evaluation/, a sweep trial's last stage's per_night/);
# shown when some row has one.
NIGHT_FOLDERS = (PER_NIGHT_ARTIFACTS, "evaluation")
NIGHT_COLUMN = "kappa/night [95% CI]"
# Paired against a reference run on the same test nights (the run selected on validation, or the one the user
# names): mean over nights of this run's kappa minus the reference's, with its subject-bootstrap CI (a CI that
# holds 0: no difference these nights show; rows over seeds resample their seeds too).
DIFF_COLUMN = "Δkappa/night vs reference [95% CI]"
WINDOWS_COLUMN = "windows L/stride"  # shown when rows' test epochs were scored from different windows
# Shown only when some row has them: the binary tasks (apnea, hypopnea).
EVENT_COLUMNS = [("F1 event", "test_f1_positive"), ("AUROC", "test_auroc"), ("majority acc", "test_majority_accuracy")]


VALIDATION_PREFIX = "val_best_"
SELECTED = "selected (validation)"
SEED_KEY = "seed"  # the sweep knob that repeats every point with another training seed
SEED_SD = "_seed_sd"  # suffix of a seed-pooled row's metric: the SD of that metric between its seeds
SPREAD_COLUMNS = ("pretrain_test_accuracy", "test_accuracy", "test_macro_f1", "test_kappa")  # shown with their SD


def selection_key(rows) -> str | None:
    """The validation metric the runs were selected on ("val_best_macro_f1"...): the one every run that has one
    shares (failed runs without metrics do not count)."""
    keys = [{k for k in r.metrics if k.startswith(VALIDATION_PREFIX)} for r in rows if not r.baseline]
    keys = [k for k in keys if k]
    common = set.intersection(*keys) if keys else set()
    return min(common) if common else None


def columns(rows) -> list[tuple[str, str]]:
    key = selection_key(rows)
    validation = [(f"val {key.removeprefix(VALIDATION_PREFIX).replace('_', '-')}", key)] if key else []
    return validation + COLUMNS + [(h, k) for h, k in EVENT_COLUMNS if any(k in r.metrics for r in rows)]


@dataclass
class Row:
    label: str
    run_id: str
    model: str
    params: dict  # the swept knobs (mask_ratio, ...)
    metrics: dict
    status: str = "FINISHED"
    task: str = "staging"
    baseline: bool = False
    confusion: list | None = None
    extra: dict = field(default_factory=dict)
    night_kappa: dict | None = None  # {"mean", "ci_mean": [low, high]} over the test nights
    nights: dict | None = None  # record -> (subject, kappa of that night), from the run's per_night.csv
    night_kappa_diff: dict | None = None  # paired_difference_over_seeds(this row's nights, the reference's)
    reference: bool = False  # the run the others are paired with (pair_with_reference)
    windows: tuple[int | None, int] | None = None  # (L, stride) of the windows that scored its test epochs


    @property
    def partial(self) -> bool:
        """A pooled row missing a fold or a seed: shown, never selected, its test figures never starred."""
        return bool(self.extra.get("partial"))

    def night_interval(self) -> tuple[float | None, float | None, float | None]:
        """(mean, CI low, CI high) of kappa per test night; Nones without a per-night summary."""
        return _interval(self.night_kappa)

    def diff_interval(self) -> tuple[float | None, float | None, float | None]:
        """(mean, CI low, CI high) of the paired per-night difference to the reference run; Nones where there is none."""
        return _interval(self.night_kappa_diff)

    @property
    def mask_ratio(self) -> float | None:
        value = self.params.get("mask_ratio")
        return None if value in (None, "") else float(value)


class CompareError(ValueError):
    pass


def test_windows(run) -> tuple[int | None, int] | None:
    """(L, stride) of the windows whose predictions scored a run's test epochs, from its params: a training run
    or trial scores non-overlapping windows by default (`val_stride` None = L: each epoch once), `distsleep
    evaluate` every window (`--stride 1`: each epoch the mean of the L windows holding it). The two differ a
    little (README: about 0.015 kappa on the demo sweep), so rows say which they are. None: not logged."""
    params = run.data.params
    if run.data.tags.get(KIND_TAG) == "evaluation":
        seq_len, stride = params.get("seq_len"), params.get("stride")
    else:
        seq_len, stride = params.get("train.seq_len"), params.get("train.val_stride")
        stride = seq_len if stride in (None, "None") else stride
    try:
        return (None if seq_len in (None, "None") else int(seq_len)), int(stride)
    except (TypeError, ValueError):
        return None


def _shared_windows(members: list[Row]) -> tuple[int | None, int] | None:
    """The windows of a pooled row: its members', when they all agree."""
    found = {m.windows for m in members}
    return found.pop() if len(found) == 1 else None


def _interval(summary: dict | None) -> tuple[float | None, float | None, float | None]:
    if not summary or summary.get("mean") is None:
        return None, None, None
    low, high = summary["ci_mean"]
    return tuple(None if v is None else float(v) for v in (summary["mean"], low, high))


def _csv_cells(values) -> tuple[str, ...]:
    return tuple("" if v is None else repr(v) for v in values)


def ordered_point(point: dict) -> dict:
    """A trial's knobs in the order every label and table shows them: the masking ratio first, the rest by name."""
    return {k: point[k] for k in ["mask_ratio", *sorted(k for k in point if k != "mask_ratio")] if k in point}


def _knob_params(run, sweep_params: set[str]) -> dict:
    """The swept values of a trial run (and its cross-validation fold, if any), in `ordered_point` order."""
    return ordered_point({k: run.data.params[k] for k in sweep_params | {FOLD_KEY} if k in run.data.params})


def point_label(point: dict) -> str:
    """Short human name of a trial, e.g. 'mask=0.50 lr=0.001'."""
    parts = []
    for key, value in point.items():
        shown = f"{value:.2f}" if key == "mask_ratio" else (f"{value:g}" if isinstance(value, float) else str(value))
        parts.append(f"{'mask' if key == 'mask_ratio' else key}={shown}")
    return " ".join(parts)


def _logged_point_label(params: dict) -> str:
    """`point_label` of a trial's knobs as MLflow logged them (strings): the masking ratio read back as a number."""
    return point_label({key: (float(v) if key == "mask_ratio" else v) for key, v in params.items()})


def _trial_row(tracking_uri: str, run, knobs: set[str], with_confusion: bool) -> Row:
    params = _knob_params(run, knobs | {"mask_ratio"})
    confusion = None
    stages = {}
    if with_confusion:
        summary = download_json(tracking_uri, run.info.run_id, TRIAL_SUMMARY) or {}
        stages = summary.get("confusion") or {}
        confusion = stages.get("final") or stages.get("pretrain")
    label = _logged_point_label(params) or run.info.run_name
    ended_by = run.data.tags.get(ENDED_BY_TAG)
    status = "stopped by scheduler" if ended_by == "scheduler" else run.info.status
    # The trial's test nights are those of its last stage (fine-tuning, else pre-training): its per-night summary.
    stage_id = final_stage_run(run)
    night, nights = _night_data(tracking_uri, stage_id) if with_confusion and stage_id else (None, None)
    return Row(label=label, run_id=run.info.run_id, model=run.data.tags.get("model", "?"), params=params,
               metrics=dict(run.data.metrics), status=status, confusion=confusion, task=run.data.tags.get("task", "staging"),
               night_kappa=night, nights=nights, extra={"stage_confusion": stages}, windows=test_windows(run))


def _night_data(tracking_uri: str, run_id: str) -> tuple[dict | None, dict | None]:
    """(the kappa entry of the run's per-night summary.json, record -> (subject, kappa) from its per_night.csv)."""
    for folder in NIGHT_FOLDERS:
        summary = download_json(tracking_uri, run_id, f"{folder}/summary.json")
        if summary:
            text = download_text(tracking_uri, run_id, f"{folder}/per_night.csv")
            try:
                nights = per_night_values(text) if text else None
            except (KeyError, ValueError):  # a per_night.csv of another layout: no paired comparison
                nights = None
            return (summary.get("per_night") or {}).get("kappa"), nights
    return None, None


def _plain_row(tracking_uri: str, run, with_confusion: bool) -> Row:
    confusion = (download_json(tracking_uri, run.info.run_id, "test_metrics.json") or {}).get("confusion") if with_confusion else None
    params = {}
    ratio = run.data.params.get("model.mask_ratio")
    if ratio is not None:
        params["mask_ratio"] = ratio
    night, nights = _night_data(tracking_uri, run.info.run_id) if with_confusion else (None, None)
    return Row(label=run.info.run_name or run.info.run_id[:8], run_id=run.info.run_id, model=run.data.tags.get("model", "?"),
               params=params, metrics=dict(run.data.metrics), status=run.info.status, confusion=confusion,
               task=run.data.tags.get("task", "staging"), night_kappa=night, nights=nights, windows=test_windows(run))


def _baseline_row(tracking_uri: str, parent, with_confusion: bool) -> Row | None:
    metrics = {k.removeprefix(BASELINE_PREFIX): v for k, v in parent.data.metrics.items() if k.startswith(BASELINE_PREFIX)}
    if not metrics:
        return None
    confusion = (download_json(tracking_uri, parent.info.run_id, "baseline_yasa.json") or {}).get("confusion") if with_confusion else None
    return Row(label="YASA (pretrained, off the shelf)", run_id=parent.info.run_id, model="yasa", params={},
               metrics=metrics, baseline=True, confusion=confusion)


def collect(tracking_uri: str, *, sweep: str | None = None, experiment: str | None = None,
            run_ids: list[str] | None = None, with_confusion: bool = True, reference: str | None = None) -> list[Row]:
    """Rows for a sweep (its trials + baseline), an experiment (every run with test metrics), or run ids; each
    paired per night with the `reference` run id (default: the run selected on validation)."""
    c = client(tracking_uri)
    rows: list[Row] = []
    if sweep:
        runs = sweep_runs(c, sweep)
        parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "sweep"]
        trials = [r for r in runs if r.data.tags.get(KIND_TAG) == "trial"]
        if not parents and not trials:
            raise CompareError(f"no sweep named {sweep!r} in {tracking_uri}")
        knobs = _knob_names(parents[0] if parents else None)
        rows = [_trial_row(tracking_uri, r, knobs, with_confusion) for r in trials]
        if parents:
            rows = pool_sweep(rows, *_replicates(parents[0]))
        for parent in parents[:1]:
            baseline = _baseline_row(tracking_uri, parent, with_confusion)
            if baseline:
                rows.append(baseline)
    elif experiment:
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            raise CompareError(f"no experiment named {experiment!r} in {tracking_uri}")
        runs = c.search_runs([exp.experiment_id], max_results=5000)
        sweeps = {r.data.tags.get(SWEEP_TAG): r for r in runs if r.data.tags.get(KIND_TAG) == "sweep"}
        replicates = {name: _replicates(r) for name, r in sweeps.items()}
        pooled: dict[str, list[Row]] = {}  # the trials of a sweep over folds or seeds, pooled below
        for run in runs:
            kind = run.data.tags.get(KIND_TAG)
            if kind == "trial":
                sweep_name = run.data.tags.get(SWEEP_TAG)
                folds, seeds = replicates.get(sweep_name, (0, []))
                row = _trial_row(tracking_uri, run, _knob_names(sweeps.get(sweep_name)), with_confusion)
                (pooled.setdefault(sweep_name, []) if folds or seeds else rows).append(row)
            elif kind == "sweep":
                baseline = _baseline_row(tracking_uri, run, with_confusion)
                if baseline and not any(r.baseline for r in rows):
                    rows.append(baseline)
            elif kind != "stage" and "test_accuracy" in run.data.metrics:
                rows.append(_plain_row(tracking_uri, run, with_confusion))
        for sweep_name, trial_rows in pooled.items():
            rows.extend(pool_sweep(trial_rows, *replicates[sweep_name]))
    else:
        for run_id in run_ids or []:
            run = c.get_run(run_id)
            kind = run.data.tags.get(KIND_TAG)
            if kind == "sweep":
                rows.extend(collect(tracking_uri, sweep=run.data.tags[SWEEP_TAG], with_confusion=with_confusion))
            elif kind == "trial":
                rows.append(_trial_row(tracking_uri, run, set(run.data.params) & {"mask_ratio"}, with_confusion))
            else:
                rows.append(_plain_row(tracking_uri, run, with_confusion))
    if not rows:
        raise CompareError("no runs with test metrics to compare")
    return pair_with_reference(sort_rows(rows), reference)


def _knob_names(parent) -> set[str]:
    """The knobs a sweep run crossed with the masking ratio (none for a trial whose sweep run is not found)."""
    return set(json.loads(parent.data.params.get("sweep.knob_names", "[]"))) if parent is not None else set()


def _replicates(parent) -> tuple[int, list[str]]:
    """(folds, training seeds) a sweep run repeats each grid point over: K of a K-fold cross-validation (0: none)
    and the values of its `seed` knob, as its trials log them (pooled only in a grid search with two or more
    seeds: a random search draws another ratio for every trial, so its seeds share no point)."""
    params = parent.data.params
    folds = int(params.get("sweep.folds") or 0)
    seeds = json.loads(params.get("sweep.knobs") or "{}").get(SEED_KEY, [])
    grid = params.get("sweep.search", "grid") == "grid"
    return folds, [str(s) for s in seeds] if grid and len(seeds) > 1 else []


def pool_sweep(rows: list[Row], folds: int, seeds: list[str]) -> list[Row]:
    """A sweep's trial rows as one row per grid point: its folds pooled (`pool_folds`), then its seeds (`pool_seeds`)."""
    if folds:
        rows = pool_folds(rows, folds)
    if seeds:
        rows = pool_seeds(rows, seeds, folds)
    return rows


def pool_seeds(rows: list[Row], seeds: list[str], folds: int = 0) -> list[Row]:
    """One row per grid point of a sweep repeated over training seeds (`--knob seed=0,1,2`), from its seeds' rows
    (trials, or in a cross-validation sweep the seeds' fold-pooled rows; params with "seed").

    Every seed is tested on the same nights, so each figure is the mean over the point's seeds, with the SD
    between them as `<metric>_seed_sd`: neighbouring points are told apart against the seed-to-seed spread, not
    by one lucky seed. Per-night kappa: each night's kappa averaged over the seeds, then the mean over the nights,
    its CI drawing people and seeds (`mean_over_nights_and_seeds`; paired with the reference likewise). The
    validation metric is the mean over the seeds, set only when every seed finished: a point is selected on its
    mean, never on its best seed, and a point missing a seed is shown but never selected."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        if not row.baseline:
            groups.setdefault(tuple((key, v) for key, v in row.params.items() if key != SEED_KEY), []).append(row)
    return [_seed_row(dict(point), members, seeds, folds) for point, members in groups.items()] + \
        [r for r in rows if r.baseline]


def _spread_key(key: str) -> bool:
    """Metrics a seed-pooled row gives with their SD between seeds (`<key>_seed_sd`, all in the CSV; the table
    shows those of its headline columns): test, pre-training test and validation metrics."""
    return key.startswith(("test_", "pretrain_test_", VALIDATION_PREFIX)) and not key.endswith("_sd")


def _seed_row(point: dict, members: list[Row], seeds: list[str], folds: int) -> Row:
    def finished(row: Row) -> bool:
        return row.status == "FINISHED" and any(key.startswith("test_") for key in row.metrics)

    # A seed retried after a failure has two trial runs (Tune gives the retry a new id): the finished one counts.
    by_seed = {str(r.params.get(SEED_KEY)): r for r in sorted(members, key=finished)}
    done = {s: by_seed[s] for s in seeds if s in by_seed and finished(by_seed[s])}
    complete = len(done) == len(seeds)
    metrics: dict = {"seeds_done": float(len(done))}
    if done:
        shared = set.intersection(*(set(r.metrics) for r in done.values())) - {"seeds_done"}
        for key in sorted(shared):
            if key.startswith(VALIDATION_PREFIX) and not complete:
                continue  # a mean over fewer seeds is another experiment: no validation value, never selected
            values = [r.metrics[key] for r in done.values()]
            metrics[key] = float(np.mean(values))
            if len(values) > 1 and _spread_key(key):
                metrics[key + SEED_SD] = float(np.std(values, ddof=1))
    nights = None
    night_sets = [r.nights for r in done.values()]
    if night_sets and all(night_sets) and all(n.keys() == night_sets[0].keys() for n in night_sets):
        nights = {record: (subject, float(np.mean([n[record][1] for n in night_sets])))
                  for record, (subject, _) in night_sets[0].items()}
    confusions = [r.confusion for r in done.values()]
    confusion = np.sum(confusions, axis=0).tolist() if confusions and all(c is not None for c in confusions) else None
    first = members[0]
    label = _logged_point_label(point) or first.label
    how = ", ".join([f"{folds}-fold CV"] * bool(folds) + [f"{len(seeds)} seeds"])
    return Row(label=f"{label} ({how})", run_id=" ".join(by_seed[s].run_id for s in seeds if s in by_seed),
               model=first.model, params=point, metrics=metrics,
               status="FINISHED" if complete else f"{len(done)}/{len(seeds)} seeds finished", task=first.task,
               confusion=confusion, night_kappa=mean_over_nights_and_seeds(night_sets) if nights else None,
               nights=nights, extra={"seeds": {s: by_seed[s] for s in seeds if s in by_seed}, "cv_folds": folds,
                                     "partial": not complete, "seed_nights": night_sets if nights else None},
               windows=_shared_windows(members))


def best_seed(row: Row, key: str) -> tuple[str, Row] | None:
    """(seed, its row) of a seed-pooled row's seed with the best validation `key` (ties: the first in the sweep's
    seed order): the model `distsleep evaluate --sweep` judges for the point (the point itself was selected on its
    mean over seeds). None for other rows."""
    seeds = row.extra.get("seeds")
    scored = [(s, r) for s, r in (seeds or {}).items() if math.isfinite(r.metrics.get(key, math.nan))]
    return max(scored, key=lambda item: item[1].metrics[key]) if scored else None


def pool_folds(rows: list[Row], k: int) -> list[Row]:
    """One row per grid point of a K-fold cross-validation sweep from its K fold trials (`rows`, params with
    "fold"). Test figures pool the folds' test nights, each person tested once: the metrics of the summed
    confusion matrices (the pre-training accuracy likewise), the per-night kappa over all nights with its
    subject-bootstrap CI. The validation metric is the mean over the folds' validation sets, and only a point
    whose K folds all finished has one, so a point with a missing fold is shown but never selected."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        if not row.baseline:
            groups.setdefault(tuple((key, v) for key, v in row.params.items() if key != FOLD_KEY), []).append(row)
    return [_pooled_row(dict(point), members, k) for point, members in groups.items()] + [r for r in rows if r.baseline]


def _pooled_row(point: dict, members: list[Row], k: int) -> Row:
    def stage(row: Row, name: str):  # a trial's test confusion matrix of one stage ("final": its last)
        confusion = row.extra.get("stage_confusion") or {}
        return (confusion.get("final") or confusion.get("pretrain")) if name == "final" else confusion.get(name)

    # A fold retried after a failure has two trial runs (Tune gives the retry a new id): the finished one counts.
    retried_last = sorted(members, key=lambda r: r.status == "FINISHED" and stage(r, "final") is not None)
    by_fold = {int(r.params[FOLD_KEY]): r for r in retried_last if r.params.get(FOLD_KEY) not in (None, "")}
    done = {f: r for f, r in sorted(by_fold.items()) if r.status == "FINISHED" and stage(r, "final")}
    metrics: dict = {"cv_folds_done": float(len(done))}
    final = [stage(r, "final") for r in done.values()]
    pretrain = [stage(r, "pretrain") for r in done.values()]
    pooled = None
    if final:
        pooled = pooled_metrics(np.sum(final, axis=0))
        metrics.update({f"test_{name}": pooled[name] for name in ("accuracy", "macro_f1", "kappa")})
        metrics.update({f"test_f1_{name}": value for name, value in pooled["f1"].items()})
        kappas = [r.metrics["test_kappa"] for r in done.values() if "test_kappa" in r.metrics]
        if len(kappas) > 1:
            metrics["test_kappa_fold_sd"] = float(np.std(kappas, ddof=1))
    if pretrain and all(m is not None for m in pretrain):
        metrics["pretrain_test_accuracy"] = pooled_metrics(np.sum(pretrain, axis=0))["accuracy"]
    if "pretrain_mask_ratio_effective" in members[0].metrics:
        metrics["pretrain_mask_ratio_effective"] = members[0].metrics["pretrain_mask_ratio_effective"]
    complete = sorted(done) == list(range(1, k + 1))
    if complete:  # selection needs every fold's validation: a mean over fewer folds is another experiment
        shared = set.intersection(*({key for key in r.metrics if key.startswith(VALIDATION_PREFIX)} for r in done.values()))
        metrics.update({key: float(np.mean([r.metrics[key] for r in done.values()])) for key in shared})
    nights = None
    if done and all(r.nights for r in done.values()):
        nights = {record: value for r in done.values() for record, value in r.nights.items()}
    label = _logged_point_label(point) or members[0].label
    return Row(label=f"{label} ({k}-fold CV)", run_id=" ".join(r.run_id for _, r in sorted(by_fold.items())),
               model=members[0].model, params=point, metrics=metrics,
               status="FINISHED" if complete else f"{len(done)}/{k} folds finished", task=members[0].task,
               confusion=pooled["confusion"] if pooled else None,
               night_kappa=mean_over_nights(nights) if nights else None, nights=nights,
               extra={"folds": {f: r.run_id for f, r in sorted(by_fold.items())}, "cv_folds": k, "partial": not complete},
               windows=_shared_windows(members))


def pair_with_reference(rows: list[Row], reference: str | None = None) -> list[Row]:
    """Set each row's `night_kappa_diff`: its per-night kappa minus that of the reference run, paired on the same
    test nights (rows of another task or other nights get none). The reference is the run with id `reference` (a
    pooled row: any of its trial runs), or by default the run selected on validation (a CompareError when
    `reference` is not among the rows or has no per-night results). Rows whose test epochs were scored from
    other windows (`test_windows`: a training pass beside an evaluation) are not paired: their difference would
    mix the model with the way it was scored. Returns `rows`."""
    if reference is None:
        chosen = selected_run(rows)
    else:
        # A row pooled over folds or seeds is named by any of its trial runs.
        chosen = next((r for r in rows if reference in r.run_id.split() and not r.baseline), None)
        if chosen is None:
            raise CompareError(f"--reference {reference}: not one of the runs compared")
        if not chosen.nights:
            raise CompareError(f"--reference {reference}: the run has no per-night results (per_night/ or evaluation/)")
    for row in rows:
        row.night_kappa_diff, row.reference = None, row is chosen
        if (chosen is not None and chosen.nights and row.nights and row is not chosen and row.task == chosen.task
                and row.windows == chosen.windows):
            row.night_kappa_diff = paired_difference_over_seeds(seed_nights(row), seed_nights(chosen))
    return rows


def seed_nights(row: Row) -> list[dict]:
    """A row's per-night values per seed: its seeds' (a seed-pooled row) or its own, as a list of one."""
    return row.extra.get("seed_nights") or [row.nights]


def sort_rows(rows: list[Row]) -> list[Row]:
    def key(row: Row):
        ratio = row.mask_ratio
        return (row.baseline, row.task != "staging", row.task, row.model, math.inf if ratio is None else ratio, row.label)

    return sorted(rows, key=key)


def selected_run(rows: list[Row]) -> Row | None:
    """The run with the best validation metric (ties: the first in table order); None without one."""
    key = selection_key(rows)
    scored = [r for r in rows if not r.baseline and key and math.isfinite(r.metrics.get(key, math.nan))]
    return max(scored, key=lambda r: r.metrics[key]) if scored else None


def _cell(key: str, value: float | None, sd: float | None = None) -> str:
    """A metric as the table shows it; a seed-pooled mean with its SD between seeds ("88.46±0.21")."""
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:.3f}" if key.endswith("kappa") else f"{100 * value:.2f}"
    if sd is not None and math.isfinite(sd):
        text += f"±{sd:.3f}" if key.endswith("kappa") else f"±{100 * sd:.2f}"
    return text


def mask_cell(row: Row) -> str:
    """The swept ratio, and the fraction really masked in pre-training when that differs ("15% (19%)")."""
    if row.mask_ratio is None:
        return "-"
    effective = row.metrics.get("pretrain_mask_ratio_effective")
    shown = f"{100 * row.mask_ratio:.0f}%"
    return shown if effective is None or round(100 * effective) == round(100 * row.mask_ratio) else f"{shown} ({100 * effective:.0f}%)"


def window_kinds(rows: list[Row]) -> set:
    """The distinct test windows (L, stride) of the model rows (the baseline scores epochs, not windows)."""
    return {r.windows for r in rows if not r.baseline}


def windows_cell(row: Row) -> str:
    if row.baseline:
        return "epochs"
    if row.windows is None:
        return "?"
    seq_len, stride = row.windows
    return f"{'?' if seq_len is None else seq_len}/{stride}"


def table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells; the best model value of each column carries a '*'. A WINDOWS_COLUMN when rows were
    scored from different windows."""
    cols = columns(rows)
    nightly = any(r.night_kappa for r in rows)
    paired = any(r.night_kappa_diff for r in rows)
    mixed = len(window_kinds(rows)) > 1
    header = ["run", "model", "task", "mask", *([WINDOWS_COLUMN] if mixed else []), *(h for h, _ in cols),
              *([NIGHT_COLUMN] if nightly else []), *([DIFF_COLUMN] if paired else []), "status"]
    chosen = selected_run(rows)
    # Seed SDs in the headline columns (as the paper's table); per-class ones only in the CSV, to keep lines short.
    spread_shown = {key for _, key in cols if key.startswith(VALIDATION_PREFIX)} | set(SPREAD_COLUMNS)
    # Stars compare like with like: rows of the same task (an apnea accuracy is not a staging one), and never a
    # point missing a fold or a seed (its test figures pool fewer people or runs than the others').
    starred = [r for r in rows if not r.baseline and not r.partial]
    starred_ids = {id(r) for r in starred}
    best = {}
    for _, key in cols:
        for task in {r.task for r in rows}:
            values = [r.metrics[key] for r in starred if r.task == task and key in r.metrics and math.isfinite(r.metrics[key])]
            best[key, task] = max(values) if values and key != "test_majority_accuracy" else None
    cells = []
    for row in rows:
        line = [row.label, row.model, row.task, mask_cell(row), *([windows_cell(row)] if mixed else [])]
        for _, key in cols:
            value = row.metrics.get(key)
            text = _cell(key, value, row.metrics.get(key + SEED_SD) if key in spread_shown else None)
            top = best.get((key, row.task))
            if id(row) in starred_ids and value is not None and top is not None and value == top and len(rows) > 1:
                text += "*"
            line.append(text)
        if nightly:
            mean, low, high = row.night_interval()
            line.append("-" if mean is None else f"{mean:.3f} [{low:.3f}, {high:.3f}]")
        if paired:
            mean, low, high = row.diff_interval()
            line.append("(reference)" if row.reference else "-" if mean is None else f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]")
        line.append("baseline" if row.baseline else (f"{row.status}, {SELECTED}" if row is chosen else row.status))
        cells.append(line)
    return header, cells


def selection_note(rows: list[Row]) -> str:
    key, chosen = selection_key(rows), selected_run(rows)
    if chosen is None:
        return "no run has a validation metric: none selected"
    return (f"{SELECTED}: {chosen.label}, the best {key} (validation records only); test metrics are reported "
            "for every run and pick nothing")


# YASA's classifier was trained on NSRR nights, SHHS among them (Vallat & Walker 2021): on SHHS test nights the
# baseline may be scored on nights it learned from, so its row is an optimistic reference, not a held-out result.
BASELINE_NOTE = ("baseline: YASA's published classifier was trained on NSRR nights, SHHS among them, so on SHHS test "
                 "nights it may be scored on nights it learned from (an optimistic reference, not held out)")


def cross_validation_note(rows: list[Row]) -> str | None:
    if not any(r.extra.get("cv_folds") for r in rows):
        return None
    return ("cross-validation by person: each row pools the test nights of its folds (every person tested once; "
            "the metrics of the summed confusion matrices, per-night kappa over all nights); its validation value is "
            "the mean over the folds' validation sets, and a row missing a fold has none and is never selected")


def seeds_note(rows: list[Row]) -> str | None:
    counts = sorted({len(r.extra["seeds"]) for r in rows if r.extra.get("seeds")})
    if not counts:
        return None
    return ("seeds: a row '(N seeds)' is the mean over its seeds' runs, ± the SD between seeds (per-class SDs in the "
            "CSV), all tested on the "
            "same nights (kappa/night: each night's kappa averaged over the seeds; its CIs, and those of the paired "
            "differences, resample people and seeds, so they answer for the configuration, not for these few "
            "models); its validation value is the mean "
            "over its seeds, so a point is selected on its mean, not its luckiest seed, and a row missing a seed has "
            "none; `distsleep evaluate --sweep` judges the selected point's best seed on validation")


def windows_note(rows: list[Row]) -> str | None:
    """How the rows' test epochs were scored: pooled over every scored test epoch, each epoch's prediction from
    the windows of L epochs at the row's stride (one kind for all rows, or the column when they differ)."""
    kinds = window_kinds(rows)
    how = ("accuracy, macro-F1, kappa and per-class F1 are pooled over all scored test epochs (kappa/night: one "
           "kappa per night, then their mean); ")
    if len(kinds) > 1:
        return how + (f"rows were scored from different windows ({WINDOWS_COLUMN}; stride L = each epoch scored once, "
                      "as a training run's test pass; stride 1 = each epoch the mean of the L windows holding it, as "
                      "`distsleep evaluate`): their figures differ a little by that alone, and Δkappa/night pairs only "
                      "rows scored as the reference was")
    if not kinds or None in kinds:
        return how + "the windows that scored them are not logged"
    seq_len, stride = next(iter(kinds))
    if seq_len is not None and stride == seq_len:
        return how + f"each epoch scored once, from non-overlapping windows of {seq_len} epochs"
    return how + (f"each epoch the mean of the windows of {'L' if seq_len is None else seq_len} epochs holding it, "
                  f"at stride {stride}")


def notes(rows: list[Row]) -> list[str]:
    """The lines under every table: which run was selected and why, how the test epochs were scored, how
    cross-validation and seed rows are pooled, and what the baseline row is."""
    return [selection_note(rows), *filter(None, [windows_note(rows), cross_validation_note(rows), seeds_note(rows)]),
            *([BASELINE_NOTE] if any(r.baseline for r in rows) else [])]


def format_text(rows: list[Row]) -> str:
    header, cells = table(rows)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *cells)]
    lines = ["  ".join(str(x).rjust(w) if i > 2 else str(x).ljust(w) for i, (x, w) in enumerate(zip(line, widths)))
             for line in [header, *cells]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = ("mask: the swept ratio (in brackets the fraction of epochs really masked, where it differs); accuracy, "
            "F1 and AUROC in %, kappa as a fraction; * best value per column and task (for reading, not a selection); "
            "values as logged in MLflow")
    reference = next((r for r in rows if r.reference), None)
    if reference is not None and any(r.night_kappa_diff for r in rows):
        chosen = selected_run(rows)
        how = "the run selected on validation" if reference is chosen else "the reference run asked for"
        note += (f"; Δkappa/night: per test night, the run's kappa minus that of {reference.label} ({how}), mean over "
                 "the nights and its subject-bootstrap 95 % CI (a CI holding 0: no difference these nights show)")
    return "\n".join([*lines, *notes(rows), note])


def format_markdown(rows: list[Row]) -> str:
    header, cells = table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(f"**{c[:-1]}**" if c.endswith("*") else c for c in line) + " |" for line in cells]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes(rows)) + "\n"


def write_csv(rows: list[Row], path: Path) -> Path:
    keys = [k for _, k in columns(rows)]
    keys += [k + SEED_SD for k in keys if any(k + SEED_SD in r.metrics for r in rows)]
    knob_names = sorted({k for r in rows for k in r.params})
    nightly = any(r.night_kappa for r in rows)
    night_keys = ["night_kappa_mean", "night_kappa_ci_low", "night_kappa_ci_high"] if nightly else []
    paired = any(r.night_kappa_diff for r in rows)
    diff_keys = (["paired_reference", "night_kappa_diff_vs_reference", "night_kappa_diff_ci_low", "night_kappa_diff_ci_high"]
                 if paired else [])
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["label", "run_id", "model", "task", "baseline", "status", "selected_on_validation",
                         "test_seq_len", "test_stride", *knob_names, *keys, *night_keys, *diff_keys])
        chosen = selected_run(rows)
        for r in rows:
            seq_len, stride = r.windows or (None, None)
            writer.writerow([r.label, r.run_id, r.model, r.task, int(r.baseline), r.status, int(r is chosen),
                             "" if seq_len is None else seq_len, "" if stride is None else stride,
                             *(r.params.get(k, "") for k in knob_names),
                             *("" if r.metrics.get(k) is None else repr(float(r.metrics[k])) for k in keys),
                             *(_csv_cells(r.night_interval()) if nightly else ()),
                             *((int(r.reference), *_csv_cells(r.diff_interval())) if paired else ())])
    return path


def write_comparison(rows: list[Row], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """comparison.txt/.csv/.md and the plots in `out_dir`; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"text": out / "comparison.txt", "csv": out / "comparison.csv", "markdown": out / "comparison.md"}
    files["text"].write_text(format_text(rows) + "\n")
    files["markdown"].write_text(format_markdown(rows))
    write_csv(rows, files["csv"])
    with_ratio = [r for r in rows if not r.baseline and r.mask_ratio is not None and r.task == "staging"]
    baseline = next((r for r in rows if r.baseline), None)
    if with_ratio:
        files["metrics_plot"] = metric_curves_png(
            with_ratio, [("pretrain_test_accuracy", "pre-training accuracy"), ("test_accuracy", "accuracy"),
                         ("test_macro_f1", "macro-F1"), ("test_kappa", "Cohen's kappa")],
            out / "metrics_vs_mask_ratio.png", title=title or "test metrics vs masking ratio", baseline=baseline,
            spread_suffix=SEED_SD)
        files["f1_plot"] = metric_curves_png(
            with_ratio, [(f"test_f1_{n}", n) for n in STAGE_NAMES], out / "per_class_f1_vs_mask_ratio.png",
            title=(title + ": " if title else "") + "per-class F1 vs masking ratio", baseline=None, spread_suffix=SEED_SD)
    matrices = [(r.label, r.confusion) for r in rows if r.confusion]
    if matrices:
        files["confusions"] = confusion_grid_png(matrices, out / "confusion_matrices.png")
    reference = next((r for r in rows if r.reference), None)
    paired = [(r.label, r.night_kappa_diff["mean"], *r.night_kappa_diff["ci_mean"]) for r in rows if r.night_kappa_diff]
    if reference is not None and paired:
        files["paired_plot"] = paired_differences_png(paired, reference.label, out / "paired_kappa_per_night.png")
    return files
