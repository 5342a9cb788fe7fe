"""MLflow helpers against real stores: a SQLite file, and a closed port on 127.0.0.1 standing in for a
tracking server that is down."""

from __future__ import annotations

import logging
import socket
import time

import mlflow
import pytest

from distsleep.cluster.mlflow_server import start_mlflow_server
from distsleep.tracking import UNSENT_FILE, RunLogger, TrackingUnavailable, check_reachable, find_or_create_run


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


def test_unreachable_server_is_a_clear_error_at_start():
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(TrackingUnavailable, match=r"127\.0\.0\.1.*not reachable.*MLFLOW_TRACKING_URI"):
        check_reachable(uri)


def test_logger_survives_a_lost_server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = find_or_create_run(uri, "exp", "run-a")
    logger = RunLogger(uri, run_id)
    logger.metrics({"loss": 1.0}, step=1)
    logger.flush()
    # The server goes away mid-run: logging calls fail, are counted, and do not raise.
    dead = RunLogger(f"http://127.0.0.1:{closed_port()}", run_id)
    dead.metrics({"loss": 0.5}, step=2)
    dead.params({"a": "1"})
    dead.artifact(tmp_path / "mlflow.db")
    dead.flush()  # the metric fails in the logger's sender thread; nothing reaches the caller
    assert dead.failures >= 2 and dead.down
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0)]
    # Non-zero ranks log nothing at all.
    silent = RunLogger(uri, run_id, enabled=False)
    silent.metrics({"loss": 9.0}, step=3)
    assert len(mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")) == 1


def test_metric_rows_keep_each_steps_values_beyond_one_writes_limit(tmp_path):
    """A window of steps goes to MLflow in as few writes as its 1,000-metric limit allows; every value keeps
    its own step."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = find_or_create_run(uri, "exp", "run-rows")
    logger = RunLogger(uri, run_id)
    logger.metric_rows([(step, {"loss": 1.0 / step, "lr": step * 1e-3, "skipped": None}) for step in range(1, 601)])
    logger.flush()
    store = mlflow.MlflowClient(uri)
    loss = sorted((m.step, m.value) for m in store.get_metric_history(run_id, "loss"))
    assert loss == [(step, 1.0 / step) for step in range(1, 601)]
    assert len(store.get_metric_history(run_id, "lr")) == 600 and logger.failures == 0
    assert store.get_metric_history(run_id, "skipped") == []


def test_unfinished_run_is_resumed_and_finished_run_is_not(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, resumed = find_or_create_run(uri, "exp", "name-x", tags={"k": "v"})
    assert not resumed
    again, resumed = find_or_create_run(uri, "exp", "name-x")
    assert resumed and again == first
    parent, _ = find_or_create_run(uri, "exp", "sweep")
    child, _ = find_or_create_run(uri, "exp", "trial", parent_run_id=parent)
    assert mlflow.MlflowClient(uri).get_run(child).data.tags["mlflow.parentRunId"] == parent
    RunLogger(uri, first).finish()
    fresh, resumed = find_or_create_run(uri, "exp", "name-x")
    assert not resumed and fresh != first


@pytest.mark.parametrize("name", ["o'brien", 'say "hi"', "it's \"quoted\"", "x' or tags.`distsleep.run_name` = 'y"])
def test_run_names_with_quotes_find_their_own_run(tmp_path, name):
    """MLflow's filter grammar has no escapes: a quote in --name must neither break the search nor match
    another run (the last name would match every run of 'y' if pasted into a '...' literal)."""
    from distsleep.tracking import find_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    other, _ = find_or_create_run(uri, "tests", "y")
    run_id, resumed = find_or_create_run(uri, "tests", name)
    again, resumed_again = find_or_create_run(uri, "tests", name)
    assert not resumed and resumed_again and again == run_id != other
    assert find_run(uri, "tests", name).info.run_id == run_id
    assert find_run(uri, "tests", name.replace("'", "_").replace('"', "_")) is None


def test_model_card_reads_a_runs_figures_and_says_only_what_it_has(tmp_path):
    """The registry's model card from a real MLflow run: a staging run with its per-night summary, and a binary-task
    run without one (its AUROC listed as logged, no per-night line, no night count)."""
    from distsleep.tracking.model_card import model_card

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("cards", artifact_location=(tmp_path / "artifacts").as_uri())
    staging = client.create_run(experiment, tags={"model": "mc2sleepnet", "task": "staging", "stage": "finetune",
                                                  "parameters": "6270000", "best_step": "400"}).info.run_id
    params = {"train.model_size": "paper", "train.select_metric": "macro_f1", "train.seq_len": "21",
              "train.shards": "/data/shhs/manifest.json", "data.manifest_hash": "abc123", "data.channels": "eeg_c4"}
    for key, value in params.items():
        client.log_param(staging, key, value)
    metrics = {"val_best_macro_f1": 0.81, "test_accuracy": 0.876, "test_kappa": 0.8234, "test_macro_f1": 0.79,
               **{f"test_f1_{s}": f for s, f in zip(["W", "N1", "N2", "N3", "REM"], [0.9, 0.4, 0.88, 0.85, 0.87])}}
    for key, value in metrics.items():
        client.log_metric(staging, key, value)
    nights = {"nights": 12, "subjects": 11, "per_night": {"kappa": {"mean": 0.8, "median": 0.81, "q25": 0.75,
                                                                    "q75": 0.85, "ci_mean": [0.77, 0.83]}}}
    text, tags = model_card(client.get_run(staging), nights, "stager", "3")
    assert text.startswith("**mc2sleepnet** (preset `paper`, 6,270,000 parameters), finetune stage, staging task.")
    assert "manifest `abc123` (`/data/shhs/manifest.json`), channels `eeg_c4`, windows of 21 epochs" in text
    assert "step 400, the best validation macro_f1 (0.810); the test figures chose nothing" in text
    assert ("Test (12 nights of 11 people outside the training split): accuracy 87.6 %, κ 0.823, macro-F1 79.0 %; "
            "F1 W 90 N1 40 N2 88 N3 85 REM 87.") in text
    assert "κ per night: mean 0.800 (95 % CI 0.770–0.830, people resampled), median 0.810 (IQR 0.750–0.850)" in text
    assert f"Training run `{staging}`. Use it as `models:/stager/3`" in text
    assert tags == {"model": "mc2sleepnet", "task": "staging", "stage": "finetune", "model_size": "paper",
                    "data.manifest_hash": "abc123", "data.channels": "eeg_c4", "test_accuracy": "0.8760",
                    "test_kappa": "0.8234", "test_macro_f1": "0.7900", "test_nights": "12"}

    binary = client.create_run(experiment, tags={"model": "neuronet", "task": "apnea", "stage": "finetune"}).info.run_id
    client.log_metric(binary, "test_auroc", 0.912)
    client.log_metric(binary, "test_f1_positive", 0.7)
    text, tags = model_card(client.get_run(binary), None, "apnea", "1")
    assert "- Test: auroc 0.912, f1_positive 0.700." in text
    assert "per night" not in text and "nights of" not in text and "parameters" not in text
    assert tags == {"model": "neuronet", "task": "apnea", "stage": "finetune"}  # nothing it does not know


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_what_a_lost_server_missed_is_written_when_it_is_back(tmp_path):
    """A tracking server that goes away mid-run and comes back: one warning each way, nothing sent while it
    rests, and the metrics, params and tags logged meanwhile are in the run afterwards."""
    store, artifacts = tmp_path / "mlflow.db", tmp_path / "artifacts"
    server = start_mlflow_server(store, artifacts)
    port = int(server.uri.rsplit(":", 1)[1])
    records = _Records()
    logging.getLogger("distsleep.tracking").addHandler(records)
    try:
        run_id, _ = find_or_create_run(server.uri, "exp", "run-lost")
        logger = RunLogger(server.uri, run_id, retry_after=3.0)
        logger.metrics({"loss": 1.0}, step=1)
        logger.flush()
        server.stop()
        logger.metrics({"loss": 0.9}, step=2)
        logger.params({"lr": "0.001"})  # waits for the metric write in flight, which fails: the store is down
        assert logger.down and len(records.messages) == 1 and "MLflow log metrics failed at" in records.messages[0]
        logger.metric_rows([(3, {"loss": 0.8}), (4, {"loss": 0.7})])
        logger.tags({"note": "kept"})
        assert not logger.artifact(store)  # not held: a run's files are uploaded again by its relaunch
        assert len(records.messages) == 1, records.messages  # one warning per outage, not one per call
        server = start_mlflow_server(store, artifacts, port=port)
        time.sleep(3.0)  # the logger's rest after the last failure
        logger.metrics({"loss": 0.6}, step=5)
        logger.flush()
        assert not logger.down and "answers again" in records.messages[-1], records.messages
        run = mlflow.MlflowClient(server.uri).get_run(run_id)
        history = mlflow.MlflowClient(server.uri).get_metric_history(run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.9), (3, 0.8), (4, 0.7), (5, 0.6)]
        assert run.data.params == {"lr": "0.001"} and run.data.tags["note"] == "kept"
        assert logger.artifact(store)
    finally:
        logging.getLogger("distsleep.tracking").removeHandler(records)
        server.stop()


def test_what_a_store_missed_outlives_the_process_through_a_checkpoint(tmp_path):
    """A run whose store is down when it checkpoints: the checkpoint keeps what was not taken, and a relaunch
    resuming from it writes that to the run, once (the original writer's late copy adds no duplicates); a relaunch
    that continues into a new MLflow run writes it to the run the checkpoint was written for."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = find_or_create_run(uri, "exp", "run-kept")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    store = RunLogger(uri, run_id)
    assert not store.keep_unsent(checkpoint) and not (checkpoint / UNSENT_FILE).exists()  # nothing held: no file
    dead = RunLogger(f"http://127.0.0.1:{closed_port()}", run_id)  # the same run, its server gone
    dead.metric_rows([(1, {"loss": 1.0, "lr": 0.1}), (2, {"loss": float("nan")})])
    dead.params({"a": "1"})
    dead.tags({"note": "kept"})
    assert dead.keep_unsent(checkpoint)

    relaunch = RunLogger(uri, run_id)
    assert relaunch.write_kept(checkpoint) == 3
    relaunch.flush()
    assert RunLogger(uri, run_id).write_kept(tmp_path) == 0  # a checkpoint without the file
    client = mlflow.MlflowClient(uri)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history[0] == (1, 1.0) and history[1][0] == 2 and history[1][1] != history[1][1]  # NaN kept as NaN
    run = client.get_run(run_id)
    assert run.data.params == {"a": "1"} and run.data.tags["note"] == "kept" and run.data.metrics["lr"] == 0.1
    # The same values written again (the first process got through after all, or a second relaunch): no duplicates.
    again = RunLogger(uri, run_id)
    again.write_kept(checkpoint)
    again.flush()
    assert len(client.get_metric_history(run_id, "loss")) == 2
    # Continued into a new MLflow run (a larger --max-steps): what was kept still goes to its own run.
    newer, _ = find_or_create_run(uri, "exp", "run-kept-continued")
    (checkpoint / UNSENT_FILE).write_text(
        (checkpoint / UNSENT_FILE).read_text().replace('"loss", 1.0', '"loss", 0.75'))
    continued = RunLogger(uri, newer)
    assert continued.write_kept(checkpoint) == 3
    continued.flush()
    assert sorted(m.value for m in client.get_metric_history(run_id, "loss") if m.step == 1) == [0.75, 1.0]
    assert client.get_metric_history(newer, "loss") == []


def test_a_run_the_store_did_not_take_whole_never_ends_finished(tmp_path):
    """`finish` ends a run FINISHED only when the store took everything the logger was given; an artifact whose
    upload failed, or values still held, make it FAILED and `finish` says so (False). A later upload of the same
    file makes up for the failed one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    report = tmp_path / "report.json"
    report.write_text("{}")

    whole, _ = find_or_create_run(uri, "exp", "whole")
    logger = RunLogger(uri, whole)
    logger.metrics({"kappa": 0.8}, step=0)
    assert logger.artifact(report, "out") and logger.missing() == []
    assert logger.finish("FINISHED") and client.get_run(whole).info.status == "FINISHED"
    failed, _ = find_or_create_run(uri, "exp", "failed-whole")
    assert RunLogger(uri, failed).finish("FAILED") and client.get_run(failed).info.status == "FAILED"

    # An artifact folder that cannot be made (a file stands where it should go): the file is named, the run FAILED.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    experiment = client.create_experiment("broken", artifact_location=(blocker / "x").as_uri())
    lost = client.create_run(experiment).info.run_id
    logger = RunLogger(uri, lost, retry_after=0)
    logger.metrics({"kappa": 0.8}, step=0)
    assert not logger.artifact(report, "out") and logger.missing() == ["artifact out/report.json"]
    assert not logger.finish("FINISHED")
    run = client.get_run(lost)
    assert run.info.status == "FAILED" and run.data.metrics == {"kappa": 0.8}

    # The same file uploaded again once the folder can be made: nothing missing, FINISHED.
    mended = client.create_run(experiment).info.run_id
    logger = RunLogger(uri, mended, retry_after=0)
    assert not logger.artifact(report, "out")
    blocker.unlink()
    assert logger.artifact(report, "out") and logger.missing() == []
    assert logger.finish() and client.get_run(mended).info.status == "FINISHED"

    # Values the store never took (its server gone): held, named, and the end not written either.
    dead = RunLogger(f"http://127.0.0.1:{closed_port()}", whole, retry_after=0)
    dead.metrics({"late": 1.0}, step=1)
    assert not dead.finish() and dead.missing() == ["1 metrics"]
