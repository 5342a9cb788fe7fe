"""MLflow helpers against real stores: a SQLite file, and a closed port on 127.0.0.1 standing in for a
tracking server that is down."""

from __future__ import annotations

import socket

import mlflow
import pytest

from distsleep.tracking import RunLogger, TrackingUnavailable, check_reachable, find_or_create_run


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
    dead.flush()  # the queued metric fails in MLflow's background thread; nothing reaches the caller
    assert dead.failures >= 2
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
