"""A sweep repeated over training seeds (`--knob seed=0,1,2`): `distsleep compare` shows each point as the mean
over its seeds ± the SD between them, selects on the mean validation value (never on a lucky seed), and the
sweep's selection names the point's best seed for `distsleep evaluate --sweep`. Real MLflow store, no Ray."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from distsleep.night_metrics import (mean_over_nights, mean_over_nights_and_seeds, paired_difference,
                                    paired_difference_over_seeds, staging_metrics)
from distsleep.sweep.run import record_selection
from distsleep.tracking import KIND_TAG, SWEEP_TAG, RunLogger
from distsleep.tracking.compare import (Row, best_seed, collect, format_text, notes, pair_with_reference, pool_seeds,
                                        pool_sweep, selected_run, table, write_comparison)
from distsleep.tracking.sweeps import selected_trials

SEEDS = ["0", "1", "2"]
# Validation macro-F1 per (ratio, seed): mask 0.25 has one lucky seed, the best single value of the sweep, but
# mask 0.5 is better on average; mask 0.75 would be best on average, but its seed 2 failed.
VALIDATION = {"0.25": [0.60, 0.61, 0.80], "0.5": [0.70, 0.71, 0.72], "0.75": [0.75, 0.78, None]}
NIGHTS = {f"shhs1-20000{n}": f"20000{n}" for n in range(4)}  # every seed is tested on the same nights


def _seed_rows(rng) -> list[Row]:
    rows = []
    for ratio, values in VALIDATION.items():
        for seed, val in zip(SEEDS, values):
            if val is None:
                rows.append(Row(f"mask={ratio} seed={seed}", f"run-{ratio}-{seed}", "mc2sleepnet",
                                {"mask_ratio": ratio, "seed": seed}, {}, status="FAILED"))
                continue
            true = rng.integers(0, 5, 300)
            final = staging_metrics(true, np.where(rng.random(300) < 0.8, true, rng.integers(0, 5, 300)))
            metrics = {"val_best_macro_f1": val, "test_accuracy": final["accuracy"], "test_kappa": final["kappa"],
                       "test_macro_f1": final["macro_f1"], **{f"test_f1_{k}": v for k, v in final["f1"].items()}}
            rows.append(Row(f"mask={ratio} seed={seed}", f"run-{ratio}-{seed}", "mc2sleepnet",
                            {"mask_ratio": ratio, "seed": seed}, metrics, confusion=final["confusion"],
                            nights={r: (s, float(rng.random())) for r, s in NIGHTS.items()}))
    return rows


def test_seed_rows_are_means_with_their_spread_and_the_point_is_selected_on_its_mean():
    rows = _seed_rows(np.random.default_rng(3))
    # Seed by seed, validation would pick mask 0.25's lucky seed.
    assert selected_run(rows).run_id == "run-0.25-2"
    # A seed that failed once and was retried (Tune gives the retry a new trial id): the finished run counts.
    rows.append(Row("mask=0.5 seed=1", "run-0.5-1-failed", "mc2sleepnet", {"mask_ratio": "0.5", "seed": "1"}, {},
                       status="FAILED"))
    pooled = pool_seeds(rows, SEEDS)
    assert [r.label for r in pooled] == ["mask=0.25 (3 seeds)", "mask=0.50 (3 seeds)", "mask=0.75 (3 seeds)"]
    lucky, steady, partial = pooled
    members = [r for r in rows if r.params["mask_ratio"] == "0.5" and r.status == "FINISHED"]
    assert steady.run_id.split() == ["run-0.5-0", "run-0.5-1", "run-0.5-2"] and steady.params == {"mask_ratio": "0.5"}
    for key in ("test_accuracy", "test_kappa", "test_macro_f1", "test_f1_N1"):
        values = [r.metrics[key] for r in members]
        assert steady.metrics[key] == pytest.approx(np.mean(values))
        assert steady.metrics[key + "_seed_sd"] == pytest.approx(np.std(values, ddof=1))
    assert steady.metrics["val_best_macro_f1"] == pytest.approx(0.71)
    assert lucky.metrics["val_best_macro_f1"] == pytest.approx(0.67)
    assert steady.confusion == np.sum([r.confusion for r in members], axis=0).tolist()
    # Per-night kappa: each night averaged over the seeds, then over the nights; its CI draws people and seeds.
    assert steady.nights == {rec: (subj, pytest.approx(np.mean([r.nights[rec][1] for r in members])))
                             for rec, subj in NIGHTS.items()}
    assert steady.night_kappa == mean_over_nights_and_seeds([r.nights for r in members])
    assert steady.night_kappa["mean"] == pytest.approx(mean_over_nights(steady.nights)["mean"])

    # Selected on the mean: mask 0.5, not the lucky seed's point; mask 0.75 lacks a seed, so it has no validation
    # value and is never selected, and its test figures, over fewer runs, get no stars.
    assert partial.status == "2/3 seeds finished" and partial.partial and "val_best_macro_f1" not in partial.metrics
    assert partial.metrics["seeds_done"] == 2
    assert selected_run(pooled) is steady
    header, cells = table(pooled)
    assert not any(cell.endswith("*") for cell in cells[2]), cells[2]
    accuracy = header.index("accuracy")
    assert cells[1][accuracy].startswith(f"{100 * steady.metrics['test_accuracy']:.2f}±"
                                         f"{100 * steady.metrics['test_accuracy_seed_sd']:.2f}")
    assert cells[1][-1].endswith("selected (validation)")
    assert "±" in cells[1][header.index("val macro-f1")] and "±" not in cells[1][header.index("F1 N1")]
    # The model evaluate --sweep judges for the point: its seed with the best validation value.
    seed, row = best_seed(steady, "val_best_macro_f1")
    assert seed == "2" and row.run_id == "run-0.5-2"
    assert any(line.startswith("seeds: ") for line in notes(pooled))
    # Paired per night with the selected point on its seed-averaged nights.
    pair_with_reference(pooled)
    lucky_runs = [r.nights for r in rows if r.params["mask_ratio"] == "0.25"]
    assert lucky.night_kappa_diff == paired_difference_over_seeds(lucky_runs, [r.nights for r in members])
    assert lucky.night_kappa_diff["mean"] == pytest.approx(paired_difference(lucky.nights, steady.nights)["mean"])
    # --reference names a pooled row by any of its trial runs.
    pair_with_reference(pooled, reference="run-0.25-1")
    assert lucky.reference and steady.night_kappa_diff == paired_difference_over_seeds([r.nights for r in members],
                                                                                       lucky_runs)


def test_cross_validation_with_seeds_pools_folds_then_seeds():
    rng = np.random.default_rng(5)
    rows, expected = [], {}
    for seed in ("0", "1"):
        true, predicted = [], []
        for fold in (1, 2):
            t = rng.integers(0, 5, 200)
            p = np.where(rng.random(200) < 0.7, t, rng.integers(0, 5, 200))
            final = staging_metrics(t, p)
            true.append(t), predicted.append(p)
            rows.append(Row(f"f{fold}s{seed}", f"run-{fold}-{seed}", "mc2sleepnet",
                            {"mask_ratio": "0.5", "fold": str(fold), "seed": seed},
                            {"val_best_macro_f1": 0.5 + fold / 10, "test_accuracy": final["accuracy"]},
                            nights={f"shhs1-{fold}{n}": (f"{fold}{n}", float(rng.random())) for n in range(2)},
                            extra={"stage_confusion": {"final": final["confusion"]}}))
        expected[seed] = staging_metrics(np.concatenate(true), np.concatenate(predicted))["accuracy"]
    row, = pool_sweep(rows, 2, ["0", "1"])
    assert row.label == "mask=0.50 (2-fold CV, 2 seeds)" and row.status == "FINISHED"
    # Each seed's accuracy is that of its folds' pooled test nights; the row is their mean over seeds.
    assert row.metrics["test_accuracy"] == pytest.approx(np.mean(list(expected.values())))
    assert row.metrics["test_accuracy_seed_sd"] == pytest.approx(np.std(list(expected.values()), ddof=1))
    assert row.metrics["val_best_macro_f1"] == pytest.approx(0.65)
    assert len(row.nights) == 4
    assert any("cross-validation by person" in line for line in notes([row]))
    seed, best = best_seed(row, "val_best_macro_f1")
    assert best.run_id.split() == [f"run-1-{seed}", f"run-2-{seed}"]  # the fold trials of one seed


def _log_sweep(uri: str, name: str, search: str = "grid") -> dict[str, str]:
    """A finished sweep as `distsleep sweep` logs it (sweep run, trial runs with knob params and metrics)."""
    c = mlflow.MlflowClient(uri)
    experiment = c.create_experiment(f"exp-{name}")
    parent = c.create_run(experiment, tags={KIND_TAG: "sweep", SWEEP_TAG: name}).info.run_id
    for key, value in {"sweep.knob_names": json.dumps(["seed"]), "sweep.knobs": json.dumps({"seed": [0, 1, 2]}),
                       "sweep.search": search, "sweep.folds": "0"}.items():
        c.log_param(parent, key, value)
    ids = {}
    for ratio, values in VALIDATION.items():
        for seed, val in zip(SEEDS, values):
            run = c.create_run(experiment, tags={KIND_TAG: "trial", SWEEP_TAG: name, "mlflow.parentRunId": parent,
                                                 "model": "mc2sleepnet"}).info.run_id
            c.log_param(run, "mask_ratio", ratio)
            c.log_param(run, "seed", seed)
            if val is not None:
                for key, value in {"val_best_macro_f1": val, "test_accuracy": val - 0.1, "test_kappa": val - 0.2}.items():
                    c.log_metric(run, key, value)
            c.set_terminated(run, "FINISHED" if val is not None else "FAILED")
            ids[ratio, seed] = run
    ids["parent"] = parent
    return ids


def test_a_seed_sweep_read_from_mlflow_selects_its_best_point_and_evaluates_its_best_seed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = _log_sweep(uri, "seeds")
    rows = collect(uri, sweep="seeds", with_confusion=False)
    assert [r.label for r in rows] == ["mask=0.25 (3 seeds)", "mask=0.50 (3 seeds)", "mask=0.75 (3 seeds)"]
    assert rows[1].metrics["test_accuracy"] == pytest.approx(0.61)
    assert rows[1].metrics["test_accuracy_seed_sd"] == pytest.approx(0.01)
    # Read back by experiment, the trials are pooled the same way.
    by_experiment = collect(uri, experiment="exp-seeds", with_confusion=False)
    assert [r.label for r in by_experiment] == [r.label for r in rows]
    record_selection(RunLogger(uri, ids["parent"]), rows)
    tags = mlflow.MlflowClient(uri).get_run(ids["parent"]).data.tags
    assert tags["selected_trial"] == "mask=0.50 (3 seeds)" and tags["selected_seed"] == "2"
    assert tags["selected_point_run_ids"].split() == [ids["0.5", s] for s in SEEDS]
    label, trials = selected_trials(uri, "seeds")
    assert trials == [ids["0.5", "2"]] and "its seed 2 (the best of its seeds on validation)" in label
    files = write_comparison(rows, tmp_path / "out")
    text = files["text"].read_text()
    assert "61.00±1.00" in text and "seeds: " in text, text
    assert "test_accuracy_seed_sd" in files["csv"].read_text().splitlines()[0]
    assert format_text(rows) == text.rstrip("\n")


def test_a_random_search_with_seeds_is_not_pooled(tmp_path):
    """A random search draws another ratio for every trial: its seeds share no point, so each trial is its own row."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _log_sweep(uri, "random", search="random")
    rows = collect(uri, sweep="random", with_confusion=False)
    assert len(rows) == 9 and all("seeds" not in r.label for r in rows)


def test_rows_scored_from_other_windows_are_labelled_and_never_paired():
    """A training run's test pass (stride L) beside `distsleep evaluate` (stride 1) of the same model: the table
    shows each row's windows and does not report their difference as a model difference."""
    rng = np.random.default_rng(11)

    def row(name, windows, val=None):
        true = rng.integers(0, 5, 300)
        final = staging_metrics(true, np.where(rng.random(300) < 0.8, true, rng.integers(0, 5, 300)))
        metrics = {"test_accuracy": final["accuracy"], "test_kappa": final["kappa"], "test_macro_f1": final["macro_f1"],
                   **({"val_best_macro_f1": val} if val is not None else {})}
        return Row(name, f"run-{name}", "mc2sleepnet", {}, metrics, windows=windows,
                   nights={r: (s, float(rng.random())) for r, s in NIGHTS.items()})

    trained, evaluated, other = row("trained", (21, 21), 0.7), row("evaluated", (21, 1)), row("other", (21, 21), 0.6)
    rows = pair_with_reference([trained, evaluated, other])
    assert trained.reference and other.night_kappa_diff is not None and evaluated.night_kappa_diff is None
    header, cells = table(rows)
    column = header.index("windows L/stride")
    assert [line[column] for line in cells] == ["21/21", "21/1", "21/21"]
    [note] = [n for n in notes(rows) if "windows" in n]
    assert "pooled over all scored test epochs" in note and "Δkappa/night pairs only rows scored as the reference" in note
    # One kind of windows: no column, one note saying which.
    alike = pair_with_reference([row("a", (21, 1), 0.5), row("b", (21, 1), 0.4)])
    assert "windows L/stride" not in table(alike)[0] and all(r.night_kappa_diff or r.reference for r in alike)
    assert any("each epoch the mean of the windows of 21 epochs holding it, at stride 1" in n for n in notes(alike))
