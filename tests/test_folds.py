"""K-fold cross-validation by person: fold manifests beside the cohort's, and the comparison that pools a
cross-validation sweep's folds (pure functions and the CLI; the sweep itself runs in test_sweep.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distsleep.metrics import pooled_metrics, staging_metrics
from distsleep.night_metrics import mean_over_nights
from distsleep.shards.folds import (FoldError, assign_folds, fold_location, fold_manifest, manifest_location,
                                    write_fold_manifests)
from distsleep.shards.loader import load_manifest, shard_urls
from distsleep.shards.manifest import seen_people, split_records
from distsleep.stages import STAGE_NAMES
from distsleep.sweep.config import SweepConfig
from distsleep.tracking.compare import Row, notes, pool_folds, selected_run, table
from distsleep.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _cohort(n_people: int = 11, revisits: int = 3) -> dict:
    """A manifest of `n_people` SHHS people, the first `revisits` with a second (SHHS2) night."""
    records = {}
    for i in range(n_people):
        nsrrid = str(200001 + i)
        for visit in ("shhs1", "shhs2")[: 2 if i < revisits else 1]:
            records[f"{visit}-{nsrrid}"] = {
                "split": "train", "subject": nsrrid, "visit": visit, "shard": f"records/{visit}-{nsrrid}.tar",
                "sha256": f"{i:064x}", "bytes": 10, "n_epochs": 100 + i,
                "stages": {**{s: 20 for s in STAGE_NAMES}, "unscored": i}}
    return {"format": "distsleep-shards", "config": {"preprocess": {"source": "shhs"}}, "config_hash": "x",
            "split": {"method": "stable-hash", "seed": 0}, "records": records, "excluded": []}


def test_people_are_dealt_into_balanced_folds_by_seed():
    people = [str(i) for i in range(23)]
    folds = assign_folds(people, 5, seed=0)
    sizes = sorted(np.bincount(list(folds.values()))[1:])
    assert set(folds.values()) == {1, 2, 3, 4, 5} and sizes[-1] - sizes[0] <= 1
    assert assign_folds(list(reversed(people)), 5, seed=0) == folds  # the order given does not matter
    assert assign_folds(people, 5, seed=1) != folds


def test_every_person_is_tested_once_and_never_in_two_splits_of_a_fold():
    cohort, k = _cohort(), 4
    folds = [fold_manifest(cohort, k, f, seed=0) for f in range(1, k + 1)]
    tested, validated = [], []
    for number, fold in enumerate(folds, 1):
        assert fold["split"]["method"] == "k-fold" and fold["split"]["fold"] == number
        assert fold["records"].keys() == cohort["records"].keys()  # same records, same shards
        assert all(fold["records"][r]["shard"] == e["shard"] for r, e in cohort["records"].items())
        by_person: dict[str, set] = {}
        for entry in fold["records"].values():
            by_person.setdefault(entry["subject"], set()).add(entry["split"])
        assert all(len(s) == 1 for s in by_person.values()), "a person's two nights landed in different splits"
        assert all(fold["totals"][s]["records"] > 0 for s in ("train", "val", "test"))
        assert sum(fold["totals"][s]["epochs"] for s in ("train", "val", "test")) == \
            sum(e["n_epochs"] for e in cohort["records"].values())
        tested += [p for p, s in by_person.items() if s == {"test"}]
        validated += [p for p, s in by_person.items() if s == {"val"}]
    people = sorted({e["subject"] for e in cohort["records"].values()})
    assert sorted(tested) == people and sorted(validated) == people
    # Fold i validates on the people fold i+1 tests.
    assert split_records(folds[0])["val"] == split_records(folds[1])["test"]


def test_a_model_of_one_fold_is_refused_on_another_folds_test_people():
    cohort = _cohort()
    first, third = fold_manifest(cohort, 3, 1), fold_manifest(cohort, 3, 3)
    trained = split_records(first)["train"]  # fold 1 trains on fold 3's people
    assert seen_people(first, trained) == {"val": [], "test": []}
    assert seen_people(third, trained)["test"] == split_records(third)["test"]


def test_cohorts_that_cannot_be_cut_are_refused():
    with pytest.raises(FoldError, match="at least 3"):
        fold_manifest(_cohort(), 2, 1)
    with pytest.raises(FoldError, match="11 people, fewer than the 12 folds"):
        fold_manifest(_cohort(), 12, 1)
    with pytest.raises(FoldError, match="already fold 2"):
        fold_manifest(fold_manifest(_cohort(), 3, 2), 3, 1)
    with pytest.raises(FoldError, match="not one of 1..3"):
        fold_manifest(_cohort(), 3, 4)


def test_fold_manifests_sit_beside_the_cohorts_and_read_the_same_shards(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(_cohort()))
    written = write_fold_manifests(tmp_path, 3, seed=0)
    assert written == [str(tmp_path / f"manifest.cv3-seed0-fold0{f}.json") for f in (1, 2, 3)]
    assert manifest_location(tmp_path) == manifest_location(tmp_path / "manifest.json") == str(tmp_path / "manifest.json")
    assert fold_location("s3://bucket/shards/", 3, 2, 0) == "s3://bucket/shards/manifest.cv3-seed0-fold02.json"
    base, base_dir = load_manifest(tmp_path)
    every = sorted(shard_urls(base, "train", base_dir))
    tested = []
    for location in written:
        manifest, folder = load_manifest(location)
        assert folder == base_dir
        tested += shard_urls(manifest, "test", folder)
        assert set(shard_urls(manifest, "train", folder)) < set(every)
    assert sorted(tested) == every
    # Rerunning rewrites nothing; a changed cohort rewrites its folds.
    stamps = [os.stat(p).st_mtime_ns for p in written]
    assert write_fold_manifests(tmp_path / "manifest.json", 3, seed=0) == written
    assert [os.stat(p).st_mtime_ns for p in written] == stamps
    grown = _cohort(n_people=12)
    (tmp_path / "manifest.json").write_text(json.dumps(grown))
    write_fold_manifests(tmp_path, 3, seed=0)
    assert all(json.loads(Path(p).read_text())["records"].keys() == grown["records"].keys() for p in written)


def test_folds_command(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(_cohort()))
    command = [sys.executable, "-m", "distsleep.cli", "folds"]
    ok = subprocess.run([*command, str(tmp_path), "--k", "4", "--seed", "2"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "4 folds (seed 2)" in ok.stdout and ok.stdout.count("manifest.cv4-seed2-fold") == 4
    bad = subprocess.run([*command, str(tmp_path), "--k", "40"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "fewer than the 40 folds" in bad.stderr and "manifest.json" in bad.stderr


def test_pooled_metrics_equal_those_of_the_pooled_labels():
    rng = np.random.default_rng(0)
    parts = []
    for _ in range(3):
        true = rng.integers(0, 5, 300)
        parts.append((true, np.where(rng.random(300) < 0.6, true, rng.integers(0, 5, 300))))
    parts.append((np.zeros(20, int), np.zeros(20, int)))  # a part without N3 in truth or prediction
    expected = staging_metrics(np.concatenate([t for t, _ in parts]), np.concatenate([p for _, p in parts]))
    pooled = pooled_metrics(np.sum([staging_metrics(t, p)["confusion"] for t, p in parts], axis=0))
    for key in ("accuracy", "macro_f1", "kappa"):
        assert pooled[key] == pytest.approx(expected[key])
    assert pooled["f1"] == pytest.approx(expected["f1"], nan_ok=True)
    assert pooled["confusion"] == expected["confusion"] and pooled["n_epochs"] == expected["n_epochs"]
    only_wake = pooled_metrics(staging_metrics(np.zeros(5, int), np.zeros(5, int))["confusion"])
    assert only_wake["macro_f1"] == 1.0 and np.isnan(only_wake["f1"]["N3"])


def test_mean_over_nights_resamples_people():
    values = {"a1": ("a", 0.5), "a2": ("a", 0.7), "b1": ("b", 0.9), "c1": ("c", float("nan"))}
    summary = mean_over_nights(values)
    assert summary["mean"] == pytest.approx(0.7) and summary["nights"] == 3
    assert 0.5 <= summary["ci_mean"][0] <= 0.7 <= summary["ci_mean"][1] <= 0.9
    assert mean_over_nights({"x": ("x", float("nan"))}) is None


def _fold_rows(rng) -> tuple[list[Row], dict]:
    """Fold trials of two points: mask 0.5 complete (3 folds), mask 0.75 with a failed fold but the best
    validation and test values; and the labels each finished fold was tested on."""
    rows, labels = [], {}
    for ratio, val in (("0.5", 0.6), ("0.75", 0.9)):
        for fold in (1, 2, 3):
            true = rng.integers(0, 5, 200)
            # mask 0.75's folds are the more accurate: its incomplete row would top the test columns
            predicted = np.where(rng.random(200) < (0.7 if ratio == "0.5" else 0.9), true, rng.integers(0, 5, 200))
            final, pretrain = staging_metrics(true, predicted), staging_metrics(true, rng.integers(0, 5, 200))
            failed = ratio == "0.75" and fold == 3
            labels[ratio, fold] = (true, predicted)
            nights = {f"shhs1-{ratio}-{fold}-{n}": (f"{fold}{n}", float(rng.random())) for n in range(3)}
            rows.append(Row(f"mask={ratio} fold={fold}", f"run-{ratio}-{fold}", "mc2sleepnet",
                            {"mask_ratio": ratio, "fold": str(fold)},
                            {} if failed else {"val_best_macro_f1": val + fold / 100, "test_kappa": final["kappa"],
                                               "test_accuracy": final["accuracy"]},
                            status="FAILED" if failed else "FINISHED", nights=None if failed else nights,
                            extra={"stage_confusion": {} if failed else {"pretrain": pretrain["confusion"],
                                                                         "final": final["confusion"]}}))
    return rows, labels


def test_cross_validation_rows_pool_their_folds_and_only_complete_points_are_selected():
    rows, labels = _fold_rows(np.random.default_rng(1))
    # A fold that failed once and was retried (Tune gives the retry a new trial id): the finished run counts.
    rows.append(Row("mask=0.5 fold=2", "run-0.5-2-failed", "mc2sleepnet", {"mask_ratio": "0.5", "fold": "2"}, {},
                    status="FAILED"))
    pooled = pool_folds(rows, 3)
    assert [r.label for r in pooled] == ["mask=0.50 (3-fold CV)", "mask=0.75 (3-fold CV)"]
    complete, partial = pooled
    expected = staging_metrics(np.concatenate([labels["0.5", f][0] for f in (1, 2, 3)]),
                               np.concatenate([labels["0.5", f][1] for f in (1, 2, 3)]))
    assert complete.metrics["test_kappa"] == pytest.approx(expected["kappa"])
    assert complete.metrics["test_macro_f1"] == pytest.approx(expected["macro_f1"])
    assert complete.metrics["val_best_macro_f1"] == pytest.approx(0.62)  # the mean over the folds' validations
    assert complete.params == {"mask_ratio": "0.5"} and complete.status == "FINISHED"
    assert complete.run_id.split() == ["run-0.5-1", "run-0.5-2", "run-0.5-3"]
    assert len(complete.nights) == 9 and complete.night_kappa["mean"] == pytest.approx(
        np.mean([v for _, v in complete.nights.values()]))
    # The failed fold leaves mask 0.75 without a validation value, so its better folds cannot win.
    assert partial.status == "2/3 folds finished" and "val_best_macro_f1" not in partial.metrics
    assert partial.metrics["cv_folds_done"] == 2
    assert selected_run(pooled) is complete
    assert any("cross-validation by person" in line for line in notes(pooled))
    # Nor do its test figures, pooled over fewer people, get the stars of the best values.
    header, (complete_cells, partial_cells) = table(pooled)
    assert partial.metrics["test_accuracy"] > complete.metrics["test_accuracy"]
    assert complete_cells[header.index("accuracy")].endswith("*")
    assert not any(cell.endswith("*") for cell in partial_cells), partial_cells


def test_a_cross_validation_sweep_trains_each_fold_on_its_own_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(_cohort()))
    train = TrainConfig(shards=str(tmp_path / "manifest.json"), model_size="small", seq_len=5)
    cfg = SweepConfig(train=train, mask_ratios=(0.0, 0.5), folds=3, fold_seed=1)
    points = cfg.grid_points()
    assert len(points) == cfg.n_trials == 6 and {p["fold"] for p in points} == {1, 2, 3}
    assert cfg.trial_train_config(points[1], "pretrain").shards == str(tmp_path / "manifest.cv3-seed1-fold02.json")
    assert cfg.trial_train_config(points[1], "finetune").shards == str(tmp_path / "manifest.cv3-seed1-fold02.json")
    assert "fold" not in cfg.trial_train_config(points[1], "pretrain").model_overrides
    for changes, message in (({"folds": 2}, "at least 3"), ({"folds": 3, "search": "random"}, "grid search"),
                             ({"folds": 3, "num_samples": 2}, "--knob seed"), ({"knobs": {"fold": [1]}}, "--folds K"),
                             ({"folds": 3, "scheduler": "asha"}, "other people")):
        with pytest.raises(ValueError, match=message):
            SweepConfig(train=train, **changes)
