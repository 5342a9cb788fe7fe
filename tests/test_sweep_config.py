"""Sweep configuration, resource planning and the comparison table (no cluster needed)."""

from __future__ import annotations

import csv
import json

import matplotlib.image
import numpy as np
import pytest

from distsleep.cli.sweep import parse_knobs
from distsleep.sweep.config import PAPER_MASK_RATIOS, SweepConfig
from distsleep.sweep.run import concurrency, reports_per_trial
from distsleep.tracking.compare import Row, format_markdown, format_text, ordered_point, point_label, table, write_comparison
from distsleep.train.config import TrainConfig
from distsleep.train.driver import LaunchError


def sweep(**changes) -> SweepConfig:
    base = dict(name="s", train=TrainConfig(shards="/x/manifest.json", max_steps=100, val_every=25, lr=1e-3))
    base.update(changes)
    return SweepConfig(**base)


def test_default_grid_is_table_4():
    cfg = sweep()
    assert cfg.mask_ratios == PAPER_MASK_RATIOS == (0.0, 0.15, 0.25, 0.30, 0.40, 0.50, 0.60, 0.70, 0.75, 0.85)
    assert [p["mask_ratio"] for p in cfg.grid_points()] == list(PAPER_MASK_RATIOS)
    assert cfg.n_trials == 10


def test_knobs_cross_the_ratios_and_reach_the_right_config():
    cfg = sweep(mask_ratios=(0.15, 0.5), knobs={"lr": [1e-3, 1e-4], "infonce_temperature": [0.07]})
    points = cfg.grid_points()
    assert len(points) == 4 and cfg.n_trials == 4
    assert {(p["mask_ratio"], p["lr"]) for p in points} == {(0.15, 1e-3), (0.15, 1e-4), (0.5, 1e-3), (0.5, 1e-4)}
    pre = cfg.trial_train_config({"mask_ratio": 0.15, "lr": 1e-4, "infonce_temperature": 0.07}, "pretrain")
    assert pre.stage == "pretrain" and pre.lr == 1e-4
    assert pre.model_overrides == {"mask_ratio": 0.15, "infonce_temperature": 0.07}
    fine = sweep(finetune_steps=30, finetune_lr=5e-5).trial_train_config({"mask_ratio": 0.5}, "finetune", init_from="r1")
    assert (fine.stage, fine.max_steps, fine.lr, fine.init_from) == ("finetune", 30, 5e-5, "r1")
    assert cfg.train.lr == 1e-3, "the base config is not modified"


@pytest.mark.parametrize("changes, message", [
    ({"mask_ratios": (0.5, 1.0)}, "must lie in"),
    ({"knobs": {"mask_ratio": [0.1]}}, "swept by mask_ratios"),
    ({"knobs": {"lr": []}}, "without values"),
    ({"name": "a/b"}, "use letters"),
    ({"scheduler": "pbt"}, "scheduler"),
    ({"num_samples": 2}, r"same seed; repeat each point with other seeds with --knob seed"),
    ({"knobs": {"seed": [0, 1]}, "scheduler": "asha"}, "stop single seeds of a point"),
    ({"train": TrainConfig(shards="/x", stage="finetune")}, "pre-training stage"),
])
def test_bad_sweeps_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        sweep(**changes)


def test_identity_ignores_what_may_change_on_relaunch():
    a, b = sweep(max_concurrent_trials=1), sweep(max_concurrent_trials=4, baseline=False)
    assert a.identity() == b.identity()
    assert sweep(mask_ratios=(0.5,)).identity() != a.identity()
    assert SweepConfig.from_dict(json.loads(json.dumps(a.to_dict()))).to_dict() == a.to_dict()


def test_concurrency_from_cluster_resources():
    cfg = sweep(train=TrainConfig(shards="/x", num_workers=2, cpus_per_worker=1.0))
    assert concurrency(cfg, {"CPU": 2.0}) == 1
    assert concurrency(cfg, {"CPU": 9.0}) == 4
    assert concurrency(sweep(train=TrainConfig(shards="/x", num_workers=2), max_concurrent_trials=2), {"CPU": 16.0}) == 2
    with pytest.raises(LaunchError, match="CPU: needs 3, cluster has 2"):
        concurrency(sweep(train=TrainConfig(shards="/x", num_workers=3, batch_size=48)), {"CPU": 2.0})
    with pytest.raises(LaunchError, match="GPU: needs 2, cluster has 0"):
        concurrency(sweep(train=TrainConfig(shards="/x", num_workers=2, use_gpu=True)), {"CPU": 32.0})


def test_reports_per_trial_counts_both_stages():
    assert reports_per_trial(sweep()) == (4 + 1) + (4 + 1) + 1
    assert reports_per_trial(sweep(finetune=False)) == 4 + 1 + 1


def test_parse_knobs_and_labels():
    assert parse_knobs(["lr=0.001,0.0001", "seed=0,1", "schedule=cosine"]) == {
        "lr": [0.001, 0.0001], "seed": [0, 1], "schedule": ["cosine"]}
    assert point_label({"mask_ratio": 0.5, "lr": 0.001}) == "mask=0.50 lr=0.001"
    # one order for the trial's display name, the console line and compare's columns, whatever order Tune gives
    point = ordered_point({"seed": 1, "fold": 2, "lr": 0.001, "mask_ratio": 0.25})
    assert list(point) == ["mask_ratio", "fold", "lr", "seed"]
    assert point_label(point) == "mask=0.25 fold=2 lr=0.001 seed=1"
    assert list(ordered_point({"lr": 0.1, "batch": 8})) == ["batch", "lr"]  # no masking ratio swept


def _rows() -> list[Row]:
    def metrics(acc, f1):
        return {"pretrain_test_accuracy": acc - 0.01, "test_accuracy": acc, "test_macro_f1": f1, "test_kappa": acc - 0.1,
                **{f"test_f1_{s}": f1 for s in ("W", "N1", "N2", "N3", "REM")}}
    confusion = [[5, 1, 0, 0, 0], [1, 2, 1, 0, 0], [0, 1, 9, 1, 0], [0, 0, 1, 4, 0], [0, 1, 0, 0, 5]]
    return [
        Row("mask=0.15", "a", "mc2sleepnet", {"mask_ratio": "0.15"}, metrics(0.80, 0.70), confusion=confusion),
        Row("mask=0.50", "b", "mc2sleepnet", {"mask_ratio": "0.5"}, metrics(0.85, 0.72), confusion=confusion),
        Row("YASA", "p", "yasa", {}, {"test_accuracy": 0.95, "test_macro_f1": 0.9, "test_kappa": 0.9}, baseline=True),
    ]


def test_table_marks_the_best_model_not_the_baseline():
    header, cells = table(_rows())
    acc = header.index("accuracy")
    assert [c[acc] for c in cells] == ["80.00", "85.00*", "95.00"]
    assert cells[0][header.index("mask")] == "15%" and cells[2][-1] == "baseline"
    text = format_text(_rows())
    assert "85.00*" in text and "0.750*" in text
    assert "**85.00**" in format_markdown(_rows())


def test_write_comparison_files(tmp_path):
    files = write_comparison(_rows(), tmp_path, title="t")
    with open(files["csv"]) as stream:
        rows = list(csv.DictReader(stream))
    assert [r["label"] for r in rows] == ["mask=0.15", "mask=0.50", "YASA"]
    assert float(rows[1]["test_accuracy"]) == 0.85 and rows[2]["baseline"] == "1"
    for key in ("metrics_plot", "f1_plot", "confusions"):
        image = matplotlib.image.imread(files[key])
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_ratios_that_mask_the_same_number_of_epochs_are_flagged():
    short = sweep(train=TrainConfig(shards="/x", seq_len=10))
    assert short.indistinct_ratios() == [((0.25, 0.30), 3)]
    assert sweep(train=TrainConfig(shards="/x", seq_len=21)).indistinct_ratios() == []


def _rows_with_validation() -> list[Row]:
    """Trial b has the best validation macro-F1; trial c the best test metrics (it must not be picked)."""
    def metrics(val, acc):
        return {"val_best_macro_f1": val, "pretrain_val_best_macro_f1": val - 0.05, "test_accuracy": acc,
                "test_macro_f1": acc - 0.1, "test_kappa": acc - 0.2}
    return [
        Row("mask=0.15", "a", "mc2sleepnet", {"mask_ratio": "0.15"}, metrics(0.60, 0.80)),
        Row("mask=0.50", "b", "mc2sleepnet", {"mask_ratio": "0.5"}, metrics(0.75, 0.81)),
        Row("mask=0.85", "c", "mc2sleepnet", {"mask_ratio": "0.85"}, metrics(0.70, 0.90)),
        Row("YASA", "p", "yasa", {}, {"test_accuracy": 0.95, "test_macro_f1": 0.9, "test_kappa": 0.9}, baseline=True),
    ]


def test_selection_is_on_validation_when_another_trial_has_the_best_test(tmp_path):
    from distsleep.tracking.compare import selected_run, selection_key
    from distsleep.sweep.run import record_selection
    from distsleep.tracking import RunLogger, client, experiment_id

    rows = _rows_with_validation()
    assert selection_key(rows) == "val_best_macro_f1"
    assert selected_run(rows).run_id == "b"
    header, cells = table(rows)
    status = {c[0]: c[-1] for c in cells}
    assert status["mask=0.50"].endswith("selected (validation)")
    assert not any("selected" in status[k] for k in ("mask=0.15", "mask=0.85", "YASA"))
    assert header[4] == "val macro-f1" and [c[4] for c in cells][:3] == ["60.00", "75.00*", "70.00"]
    rows[0].metrics["pretrain_mask_ratio_effective"] = 4 / 21  # L − int(L·(1−r)) at L = 21
    assert table(rows)[1][0][3] == "15% (19%)"
    failed = Row("mask=0.25", "f", "mc2sleepnet", {"mask_ratio": "0.25"}, {}, status="FAILED")
    assert selected_run([*rows, failed]).run_id == "b"  # a failed trial without metrics does not block the choice
    text = format_text(rows)
    assert "selected (validation): mask=0.50, the best val_best_macro_f1 (validation records only)" in text
    assert "selected (validation)" in format_markdown(rows)
    # YASA learned from SHHS nights: its row is marked as an optimistic reference, and only where it is shown.
    assert all("SHHS among them" in f(rows) for f in (format_text, format_markdown))
    assert "SHHS among them" not in format_text([r for r in rows if not r.baseline])
    with open(write_comparison(rows, tmp_path)["csv"]) as stream:
        chosen = {r["run_id"]: r["selected_on_validation"] for r in csv.DictReader(stream)}
    assert chosen == {"a": "0", "b": "1", "c": "0", "p": "0"}

    # The sweep's parent run records the same choice, marked as validation-based (a real MLflow store).
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = client(uri).create_run(experiment_id(uri, "selection"))
    logger = RunLogger(uri, run.info.run_id)
    record_selection(logger, rows)
    logger.flush()
    logged = client(uri).get_run(run.info.run_id).data
    assert logged.tags["selected_by"] == "validation val_best_macro_f1"
    assert logged.tags["selected_run_id"] == "b" and logged.tags["selected_trial"] == "mask=0.50"
    assert logged.metrics["selected_test_accuracy"] == 0.81 and logged.metrics["selected_val_best_macro_f1"] == 0.75
    assert not any(k.startswith("best_") for k in logged.metrics)


def test_each_trial_is_paired_with_the_selected_one_on_the_same_test_nights(tmp_path):
    from distsleep.night_metrics import paired_difference
    from distsleep.tracking.compare import DIFF_COLUMN, NIGHT_COLUMN, CompareError, pair_with_reference

    rows = _rows_with_validation()  # b is selected on validation
    rng = np.random.default_rng(0)
    base = {f"n{i}": (f"s{i // 2}", float(v)) for i, v in enumerate(rng.uniform(0.5, 0.9, 12))}
    shift = {"a": -0.05, "b": 0.0, "c": 0.01}
    for row in rows[:3]:
        row.nights = {r: (s, v + shift[row.run_id] + float(rng.normal(0, 0.005))) for r, (s, v) in base.items()}
        values = [v for _, v in row.nights.values()]
        row.night_kappa = {"mean": float(np.mean(values)), "ci_mean": [min(values), max(values)]}
    other_nights = Row("other data", "d", "mc2sleepnet", {}, {"test_accuracy": 0.7},
                       nights={f"x{i}": (f"t{i}", 0.5) for i in range(4)})
    rows = pair_with_reference([*rows, other_nights])
    chosen = rows[1]
    assert chosen.night_kappa_diff is None and rows[3].night_kappa_diff is None  # the baseline has no nights
    assert other_nights.night_kappa_diff is None  # other nights: nothing to pair with
    assert rows[0].night_kappa_diff == paired_difference(rows[0].nights, chosen.nights)
    assert rows[0].night_kappa_diff["ci_mean"][1] < 0 < rows[2].night_kappa_diff["mean"]

    header, cells = table(rows)
    assert header[-3:] == [NIGHT_COLUMN, DIFF_COLUMN, "status"]
    diff = {c[0]: c[header.index(DIFF_COLUMN)] for c in cells}
    low, high = rows[0].night_kappa_diff["ci_mean"]
    assert diff["mask=0.50"] == "(reference)" and diff["YASA"] == "-" and diff["other data"] == "-"
    assert diff["mask=0.15"] == f"{rows[0].night_kappa_diff['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"
    assert "minus that of mask=0.50 (the run selected on validation)" in format_text(rows)
    files = write_comparison(rows, tmp_path)
    assert matplotlib.image.imread(files["paired_plot"]).shape[0] > 100
    with open(files["csv"]) as stream:
        table_rows = {r["run_id"]: r for r in csv.DictReader(stream)}
    assert float(table_rows["a"]["night_kappa_diff_vs_reference"]) == rows[0].night_kappa_diff["mean"]
    assert float(table_rows["a"]["night_kappa_diff_ci_high"]) == high
    assert table_rows["b"]["night_kappa_diff_vs_reference"] == "" and table_rows["p"]["night_kappa_diff_ci_low"] == ""
    assert [table_rows[k]["paired_reference"] for k in "abcpd"] == ["0", "1", "0", "0", "0"]

    # Another reference asked for: every run is paired with it instead; the selection stays on validation.
    pair_with_reference(rows, reference="c")
    assert rows[2].reference and rows[2].night_kappa_diff is None and not rows[1].reference
    assert rows[1].night_kappa_diff == paired_difference(rows[1].nights, rows[2].nights)
    assert rows[1].night_kappa_diff["mean"] < 0  # b is 0.01 below c on every night
    header, cells = table(rows)
    assert {c[0]: c[header.index(DIFF_COLUMN)] for c in cells}["mask=0.85"] == "(reference)"
    assert "minus that of mask=0.85 (the reference run asked for)" in format_text(rows)
    assert "selected (validation): mask=0.50" in format_text(rows)
    with pytest.raises(CompareError, match="--reference p: not one of the runs"):
        pair_with_reference(rows, reference="p")  # the baseline row has no per-night results to pair with
    with pytest.raises(CompareError, match="no per-night results"):
        pair_with_reference([*rows[:3], Row("no nights", "e", "mc2sleepnet", {}, {})], reference="e")


def test_a_trial_is_finished_only_once_the_store_holds_its_record(tmp_path):
    """A trial's own run (what `compare` reads) is FINISHED only when the store holds its summary metrics, stage
    tags and trial_summary.json; otherwise the trial fails (so that a relaunched sweep records it) and says why."""
    import socket

    import mlflow

    from distsleep.sweep.trial import TrialNotRecorded, record_trial
    from distsleep.tracking import TRIAL_SUMMARY, RunLogger, find_or_create_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    point, summary, tags = {"mask_ratio": 0.5}, {"test_kappa": 0.8, "val_best_macro_f1": 0.7}, {"pretrain_run_id": "p1"}
    run_id, _ = find_or_create_run(uri, "exp", "s/trial-1")
    record_trial(RunLogger(uri, run_id), point, summary, tags, confusion={"pretrain": None, "final": None})
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == summary and run.data.tags["pretrain_run_id"] == "p1"
    assert [f.path for f in client.list_artifacts(run_id)] == [TRIAL_SUMMARY]

    # Metrics and tags taken, the file not (its artifact folder cannot be made): not FINISHED, the file named.
    (tmp_path / "not-a-folder").write_text("")
    experiment = client.create_experiment("broken-artifacts", artifact_location=(tmp_path / "not-a-folder" / "x").as_uri())
    broken = client.create_run(experiment).info.run_id
    with pytest.raises(TrialNotRecorded, match=rf"mask=0.50: .*lacks artifact {TRIAL_SUMMARY} of its trial run {broken}"
                                               r".*Relaunch the sweep once the store works"):
        record_trial(RunLogger(uri, broken), point, summary, tags, confusion={})
    assert client.get_run(broken).info.status == "RUNNING" and client.get_run(broken).data.metrics == summary

    # The store gone altogether.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(TrialNotRecorded, match=r"lacks the run itself \(the store did not answer"):
        record_trial(RunLogger(dead, run_id), point, summary, tags, confusion={})
