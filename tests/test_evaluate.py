"""`distsleep evaluate` end to end on a generated cohort: real shards, a real local Ray cluster (one task per record),
a real MLflow store. The model is untrained (small MC²SleepNet), so the checks are on contracts, not on accuracy:
one row per test night whose sleep statistics are YASA's on the same hypnograms, the files, the MLflow evaluation
run naming the model run, a registered model by models:/ URI, and cross-dataset role substitution."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yasa

from distsleep.bundle import MODEL
from distsleep.cli import main as cli_main
from distsleep.night_metrics import SLEEP_STATISTICS, paired_difference, per_night_values
from distsleep.tracking import KIND_TAG, MODEL_RUN_TAG, MODEL_SOURCE_TAG

from bundle_factory import register_bundle, write_bundle

YASA_LABELS = np.array(["WAKE", "N1", "N2", "N3", "REM"])


@pytest.fixture(scope="module")
def cohort(staging_cohort) -> Path:
    return staging_cohort


@pytest.fixture(scope="module")
def shards(staging_shards) -> Path:
    return staging_shards


def yasa_stats(stages: np.ndarray) -> dict:
    labels = np.where(stages < 0, "UNS", YASA_LABELS[np.clip(stages, 0, 4)])
    stats = yasa.Hypnogram(list(labels), n_stages=5).sleep_statistics()
    return {**stats, "Lat_REM - SOL": stats["Lat_REM"] - stats["SOL"]}  # AASM's REM latency, per YASA's docs


def test_evaluate_one_row_per_test_night_with_yasa_statistics_and_an_mlflow_run(shards, tmp_path, capsys):
    bundle = write_bundle(tmp_path / "model" / "model.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "eval"
    status = cli_main(["evaluate", "--model", str(bundle), "--shards", str(shards), "--out", str(out),
                       "--tracking-uri", uri, "--n-boot", "200", "--no-progress"])
    console = capsys.readouterr().out
    assert status == 0, console
    manifest = json.loads(shards.read_text())
    test_records = sorted(r for r, e in manifest["records"].items() if e["split"] == "test")

    rows = list(csv.DictReader(open(out / "per_night.csv")))
    assert [r["record"] for r in rows] == test_records
    for row in rows:
        entry = manifest["records"][row["record"]]
        saved = np.load(out / "probabilities" / f"{row['record']}.npz")
        labels, probabilities = saved["labels"], saved["probabilities"]
        assert len(labels) == entry["n_epochs"] and probabilities.shape == (len(labels), 5)
        assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
        assert (saved["predicted"] == probabilities.argmax(axis=1)).all()
        assert row["subject"] == entry["subject"] and int(row["epochs"]) == int((labels >= 0).sum())
        for side, stages in (("true", labels), ("pred", np.where(labels >= 0, saved["predicted"], -1))):
            expected = yasa_stats(stages)
            for name, (key, _) in SLEEP_STATISTICS.items():
                value = float(row[f"{name}_{side}"]) if row[f"{name}_{side}"] else float("nan")
                assert value == pytest.approx(expected[key], rel=1e-5, nan_ok=True), (row["record"], name, side)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["nights"] == len(test_records) and summary["complete"] and summary["failed"] == []
    assert summary["channels"] == {"model": ["eeg_c4"], "read": ["eeg_c4"], "substituted": {}}
    low, high = summary["pooled"]["ci"]["kappa"]
    assert low <= summary["pooled"]["kappa"] <= high
    for name in ("per_night_kappa.png", "bland_altman_tst_min.png", "bland_altman_waso_min.png",
                 "bland_altman_se_pct.png", "confusion_pooled.png"):
        assert (out / name).stat().st_size > 0, name
    assert "substituted" not in console and f"{len(test_records)} nights" in console

    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("distsleep-evaluate").experiment_id])
    assert run.data.tags[KIND_TAG] == "evaluation" and run.data.tags[MODEL_SOURCE_TAG] == str(bundle)
    assert MODEL_RUN_TAG not in run.data.tags  # a bundle file names no training run
    assert run.data.metrics["test_kappa"] == pytest.approx(summary["pooled"]["kappa"])
    assert run.data.metrics["nights"] == len(test_records) and run.info.status == "FINISHED"
    artifacts = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"per_night.csv", "summary.json", "per_night_kappa.png", "probabilities"} <= artifacts


def test_an_evaluation_run_the_store_did_not_take_whole_is_not_finished(shards, tmp_path, capsys):
    """The store takes the metrics but not the files (its artifact folder cannot be made): the files in --out are
    complete, the MLflow run is FAILED and not FINISHED, the console says so and the exit status is 1."""
    bundle = write_bundle(tmp_path / "model" / "model.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "not-a-folder").write_text("")
    client = mlflow.MlflowClient(uri)
    client.create_experiment("broken", artifact_location=(tmp_path / "not-a-folder" / "x").as_uri())
    out = tmp_path / "eval"
    status = cli_main(["evaluate", "--model", str(bundle), "--shards", str(shards), "--out", str(out), "--tracking-uri",
                       uri, "--experiment", "broken", "--n-boot", "50", "--stride", "5", "--no-progress"])
    console = capsys.readouterr().out
    assert status == 1, console
    [run] = client.search_runs([client.get_experiment_by_name("broken").experiment_id])
    assert run.info.status == "FAILED" and "test_kappa" in run.data.metrics
    assert f"MLflow evaluation run {run.info.run_id}: FAILED, the store did not take all of it" in console
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and (out / "per_night.csv").stat().st_size > 0


def test_a_model_from_another_dataset_is_evaluated_through_the_substituted_role(shards, tmp_path, capsys):
    # A model trained on Sleep-EDF's Fpz-Cz, evaluated on SHHS shards: read through C4-A1, which fills its input slot.
    bundle = write_bundle(tmp_path / "sleep-edf-model.pt", source="sleep-edf", role="eeg_fpz_cz")
    out = tmp_path / "cross"
    status = cli_main(["evaluate", "--model", str(bundle), "--shards", str(shards), "--out", str(out), "--no-tracking",
                       "--n-boot", "50", "--no-progress", "--stride", "5"])
    console = capsys.readouterr().out
    assert status == 0, console
    summary = json.loads((out / "summary.json").read_text())
    assert summary["channels"] == {"model": ["eeg_fpz_cz"], "read": ["eeg_c4"], "substituted": {"eeg_fpz_cz": "eeg_c4"}}
    assert summary["model"]["trained_on"] == "sleep-edf" and summary["data"]["source"] == "shhs"
    assert "the model's eeg_fpz_cz was read from the shards' eeg_c4" in console


def test_a_model_whose_role_has_no_stand_in_is_refused(shards, tmp_path, capsys):
    bundle = write_bundle(tmp_path / "emg-model.pt", role="emg")
    status = cli_main(["evaluate", "--model", str(bundle), "--shards", str(shards), "--out", str(tmp_path / "x"),
                       "--no-tracking", "--no-progress"])
    assert status == 2 and "'emg'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_people_the_model_learned_from_are_never_scored_and_metrics_name_their_split(shards, tmp_path, capsys):
    manifest = json.loads(shards.read_text())
    by_split = {s: sorted(r for r, e in manifest["records"].items() if e["split"] == s) for s in ("train", "val", "test")}
    # Trained on this manifest's training nights and on another visit (SHHS2) of a test person.
    person = manifest["records"][by_split["test"][0]]["subject"]
    leaky = write_bundle(tmp_path / "leaky.pt", trained_on=[*by_split["train"], f"shhs2-{person}"])
    status = cli_main(["evaluate", "--model", str(leaky), "--shards", str(shards), "--out", str(tmp_path / "x"),
                       "--no-tracking", "--no-progress"])
    error = capsys.readouterr().err
    assert status == 2 and f"1 of its test records (e.g. {by_split['test'][0]};" in error and "memorisation" in error
    assert not (tmp_path / "x").exists()
    # Selected on this manifest's validation nights and on another visit of a test person: that person would judge
    # the model they chose. Its own validation people may be scored (as validation figures, below).
    chosen = write_bundle(tmp_path / "chosen.pt", trained_on=by_split["train"], validated_on=[*by_split["val"], f"shhs2-{person}"])
    status = cli_main(["evaluate", "--model", str(chosen), "--shards", str(shards), "--out", str(tmp_path / "x"),
                       "--no-tracking", "--no-progress"])
    error = capsys.readouterr().err
    assert status == 2 and f"selected (its best checkpoint, early stop) on the people of 1 of its test records (e.g. " \
                           f"{by_split['test'][0]})" in error, error
    assert not (tmp_path / "x").exists()

    # Its validation people it never saw: scored, and logged as validation figures, never as test ones.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "val"
    assert cli_main(["evaluate", "--model", str(leaky), "--shards", str(shards), "--out", str(out), "--split", "val",
                     "--tracking-uri", uri, "--n-boot", "50", "--no-progress", "--stride", "5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["trained_records"] == len(by_split["train"]) + 1 and summary["nights"] == len(by_split["val"])
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("distsleep-evaluate").experiment_id])
    assert run.data.metrics["val_kappa"] == pytest.approx(summary["pooled"]["kappa"])
    assert not [k for k in run.data.metrics if k.startswith("test_")]


def test_a_registered_model_is_evaluated_by_models_uri(shards, tmp_path):
    uri, run_id = register_bundle(write_bundle(tmp_path / "model.pt"), tmp_path)
    client = mlflow.MlflowClient(uri)

    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--model", "models:/stager@best", "--shards", str(shards), "--out", str(out),
                     "--tracking-uri", uri, "--n-boot", "50", "--no-progress", "--stride", "5"]) == 0
    [run] = client.search_runs([client.get_experiment_by_name("distsleep-evaluate").experiment_id])
    assert run.data.tags[MODEL_RUN_TAG] == run_id and run.data.tags[MODEL_SOURCE_TAG] == "models:/stager@best"
    assert json.loads((out / "summary.json").read_text())["model"]["run_id"] == run_id


def test_training_registers_its_bundle_for_predict_and_evaluate(shards, cohort, tmp_path, monkeypatch, capsys):
    """--register on a (very short) real training run; the registered version is then used by models:/ URI."""
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    status = cli_main(["pretrain", "--shards", str(shards), "--model-size", "small", "--seq-len", "5", "--batch-size", "8",
                       "--max-steps", "4", "--val-every", "2", "--num-workers", "1", "--loader-workers", "0",
                       "--storage-path", str(tmp_path / "runs"), "--name", "registered", "--tracking-uri", uri,
                       "--experiment", "tests", "--register", "stager", "--alias", "candidate"])
    console = capsys.readouterr().out
    assert status == 0, console
    assert "registered as models:/stager/1, models:/stager@candidate" in console
    client = mlflow.MlflowClient(uri)
    [training] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    version = client.get_model_version_by_alias("stager", "candidate")
    assert (str(version.version), version.run_id) == ("1", training.info.run_id)
    # its model card: the training run's own test figures and data, for a reader of the registry
    assert version.tags["test_kappa"] == f"{training.data.metrics['test_kappa']:.4f}"
    assert version.tags["data.manifest_hash"] == training.data.params["data.manifest_hash"]
    assert f"κ {training.data.metrics['test_kappa']:.3f}" in version.description
    assert "κ per night: mean" in version.description and "models:/stager/1" in version.description

    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--model", "models:/stager/1", "--shards", str(shards), "--out", str(out),
                     "--tracking-uri", uri, "--n-boot", "50", "--no-progress", "--stride", "5"]) == 0
    [evaluation] = client.search_runs([client.get_experiment_by_name("distsleep-evaluate").experiment_id])
    assert evaluation.data.tags[MODEL_RUN_TAG] == training.info.run_id

    # The training run's own test evaluation carries the same per-night files; compare shows kappa per night +- CI.
    logged = {Path(a.path).name for a in client.list_artifacts(training.info.run_id, "per_night")}
    assert {"per_night.csv", "summary.json", "per_night_kappa.png", "bland_altman_tst_min.png"} <= logged
    assert cli_main(["compare", training.info.run_id, evaluation.info.run_id, "--tracking-uri", uri,
                     "--out", str(tmp_path / "compare")]) == 0
    text = (tmp_path / "compare" / "comparison.txt").read_text()
    assert "kappa/night [95% CI]" in text
    table = {row["run_id"]: row for row in csv.DictReader(open(tmp_path / "compare" / "comparison.csv"))}
    # Both were scored from the same windows (--stride 5 = L), read from each run's own params, and say so.
    assert {(row["test_seq_len"], row["test_stride"]) for row in table.values()} == {("5", "5")}
    assert "each epoch scored once, from non-overlapping windows of 5 epochs" in text
    assert "windows L/stride" not in text
    evaluated = json.loads((out / "summary.json").read_text())["per_night"]["kappa"]
    assert float(table[evaluation.info.run_id]["night_kappa_mean"]) == pytest.approx(evaluated["mean"])
    assert float(table[evaluation.info.run_id]["night_kappa_ci_low"]) == pytest.approx(evaluated["ci_mean"][0])
    assert table[training.info.run_id]["night_kappa_mean"] != ""
    # The same model on the same test nights, evaluated twice: paired per night with the training run (selected on
    # validation, the only run with a validation metric), or the other way round with --reference.
    trained_nights = per_night_values(Path(client.download_artifacts(training.info.run_id, "per_night/per_night.csv",
                                                                     str(tmp_path))).read_text())
    evaluated_nights = per_night_values((out / "per_night.csv").read_text())
    paired = paired_difference(evaluated_nights, trained_nights)
    assert float(table[evaluation.info.run_id]["night_kappa_diff_vs_reference"]) == pytest.approx(paired["mean"])
    assert table[training.info.run_id]["night_kappa_diff_vs_reference"] == ""
    assert cli_main(["compare", training.info.run_id, evaluation.info.run_id, "--tracking-uri", uri,
                     "--reference", evaluation.info.run_id, "--out", str(tmp_path / "compare-ref")]) == 0
    table = {row["run_id"]: row for row in csv.DictReader(open(tmp_path / "compare-ref" / "comparison.csv"))}
    assert float(table[training.info.run_id]["night_kappa_diff_vs_reference"]) == pytest.approx(-paired["mean"])
    assert float(table[training.info.run_id]["night_kappa_diff_ci_high"]) == pytest.approx(
        paired_difference(trained_nights, evaluated_nights)["ci_mean"][1])

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # predict reads models:/ from the default store
    edf = sorted(cohort.rglob("*.edf"))[0]
    assert cli_main(["predict", "--model", "models:/stager@candidate", str(edf), "--out", str(tmp_path / "pred"),
                     "--stride", "5"]) == 0
    report = json.loads((tmp_path / "pred" / f"{edf.stem}_input_report.json").read_text())
    assert report["model"]["requested"] == "models:/stager@candidate"


def test_cross_validation_folds_are_pooled_each_night_judged_by_the_model_that_never_saw_it(shards, tmp_path, capsys):
    from distsleep.metrics import staging_metrics
    from distsleep.shards.folds import write_fold_manifests
    from distsleep.shards.manifest import split_records

    folds = write_fold_manifests(shards, 3, seed=0)  # beside the cohort's manifest, over the same shards
    fold_splits = [split_records(json.loads(Path(f).read_text())) for f in folds]
    # Each fold's model as if trained on its fold's training people and selected on its validation people.
    models = [str(write_bundle(tmp_path / f"fold{i}" / "model.pt", trained_on=s["train"], validated_on=s["val"]))
              for i, s in enumerate(fold_splits, 1)]
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cv"
    status = cli_main(["evaluate", "--model", *models, "--shards", *folds, "--out", str(out), "--tracking-uri", uri,
                       "--n-boot", "100", "--stride", "5", "--no-progress"])
    console = capsys.readouterr().out
    assert status == 0, console
    assert "3 folds pooled" in console

    # Every night of the cohort once, scored by the model of the fold that tests its person.
    everyone = sorted(r for records in split_records(json.loads(shards.read_text())).values() for r in records)
    rows = list(csv.DictReader(open(out / "per_night.csv")))
    assert sorted(r["record"] for r in rows) == everyone
    assert {r["record"]: int(r["fold"]) for r in rows} == {r: i for i, s in enumerate(fold_splits, 1) for r in s["test"]}
    summary = json.loads((out / "summary.json").read_text())
    assert [f["records"] for f in summary["folds"]] == [s["test"] for s in fold_splits]
    assert [f["manifest"] for f in summary["folds"]] == folds and summary["nights"] == len(everyone)
    # The pooled figures are those of all nights' epochs together.
    saved = [np.load(out / "probabilities" / f"{r}.npz") for r in everyone]
    expected = staging_metrics(np.concatenate([s["labels"] for s in saved]), np.concatenate([s["predicted"] for s in saved]))
    assert summary["pooled"]["kappa"] == pytest.approx(expected["kappa"])
    # Each fold's own figures, from its nights alone (the spread between folds)
    for fold in summary["folds"]:
        mine = [np.load(out / "probabilities" / f"{r}.npz") for r in fold["records"]]
        alone = staging_metrics(np.concatenate([s["labels"] for s in mine]), np.concatenate([s["predicted"] for s in mine]))
        assert fold["kappa"] == pytest.approx(alone["kappa"], nan_ok=True) and fold["accuracy"] == pytest.approx(alone["accuracy"])
    assert "per fold: kappa " in console
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("distsleep-evaluate").experiment_id])
    assert run.data.params["folds"] == "3" and run.data.tags[MODEL_SOURCE_TAG].split() == models
    assert run.info.run_name == "evaluate-mc2sleepnet-test-3-folds"
    assert run.data.metrics["test_kappa"] == pytest.approx(expected["kappa"])

    # Refused before scoring: a fold's model on another fold's test people (fold 1's model learned fold 3's
    # people; fold 1's validation people, who chose its checkpoint, are fold 2's test people), a night in two
    # folds, and models without a manifest each.
    assert fold_splits[0]["val"] == fold_splits[1]["test"]
    refusals = {"memorisation": (models, [folds[2], folds[0], folds[1]]),
                "would then judge the model they chose": (models, [folds[1], folds[2], folds[0]]),
                "pooled folds must not score a night twice": ([models[0]] * 2, [folds[0]] * 2),
                "one manifest per model": (models, folds[:2])}
    for expected_error, (given_models, given_folds) in refusals.items():
        status = cli_main(["evaluate", "--model", *given_models, "--shards", *given_folds, "--out", str(tmp_path / "no"),
                           "--no-tracking", "--no-progress"])
        error = capsys.readouterr().err
        assert status == 2 and expected_error in error, error
    assert not (tmp_path / "no").exists()


def test_an_unusable_manifest_is_an_error_naming_it_and_nothing_runs(shards, tmp_path, capsys):
    """A cut manifest, one whose entry is a `pipe:` command, or one naming a shard twice: exit 2 with the
    manifest named (not a traceback), the command never run, nothing written."""
    bundle = write_bundle(tmp_path / "model.pt")
    manifest = json.loads(Path(shards).read_text())
    base = Path(shards).resolve().parent
    for entry in manifest["records"].values():
        entry["shard"] = str(base / entry["shard"])
    marker = tmp_path / "ran"
    test_ids = sorted(r for r, e in manifest["records"].items() if e["split"] == "test")
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(manifest)[:200])
    piped = json.loads(json.dumps(manifest))
    piped["records"][test_ids[0]]["shard"] = f"pipe:touch {marker}"
    twice = json.loads(json.dumps(manifest))
    twice["records"][test_ids[1]]["shard"] = twice["records"][test_ids[0]]["shard"]
    for name, content, problem in (("cut.json", None, "cannot use this shard manifest"),
                                   ("piped.json", piped, "pipe:"),
                                   ("twice.json", twice, "of the manifest name this one shard")):
        path = tmp_path / name
        if content is not None:
            path.write_text(json.dumps(content))
        out = tmp_path / f"eval-{name}"
        status = cli_main(["evaluate", "--model", str(bundle), "--shards", str(path), "--out", str(out),
                           "--no-tracking", "--no-progress"])
        error = capsys.readouterr().err
        assert status == 2 and f"distsleep evaluate: error: {path}: cannot use this shard manifest" in error, error
        assert problem in error and "Traceback" not in error and not out.exists()
    assert not marker.exists()
