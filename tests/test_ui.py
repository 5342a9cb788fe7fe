"""`distsleep ui`: MLflow's web UI over a real SQLite store, served by a real `mlflow server` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import psutil
import pytest

from distsleep.cluster.host import free_port
from distsleep.tracking import experiment_id

REPO = Path(__file__).resolve().parents[1]


def _ui(*args: str) -> list[str]:
    return [sys.executable, "-m", "distsleep.cli", "ui", *args]


@pytest.fixture
def store(tmp_path) -> Path:
    """A store as distsleep's runs leave it: a run with a metric and an artifact under mlartifacts/ beside it."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(experiment_id(uri, "ui-test"), run_name="night-run")
    client.log_metric(run.info.run_id, "test_kappa", 0.8125)
    (tmp_path / "per_class_f1.md").write_text("| W | 0.9 |\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "per_class_f1.md"))
    client.set_terminated(run.info.run_id)
    return db


def _get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextlib.contextmanager
def _serving(store: Path):
    """`distsleep ui` over `store` on a free port: yields (its process, the port, the processes it started) once it
    says it serves; afterwards whatever it started is stopped, also when the test failed (`_clean_up`)."""
    port = free_port()
    ui = subprocess.Popen(_ui("--tracking-uri", f"sqlite:///{store}", "--port", str(port)), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    tree = []
    try:
        line = ui.stdout.readline()
        assert line.startswith(f"MLflow UI for {store}: http://127.0.0.1:{port}"), line + ui.stderr.read()
        tree.extend(psutil.Process(ui.pid).children(recursive=True))
        yield ui, port, tree
    finally:
        _clean_up(ui, tree)


def test_ui_serves_the_store_on_loopback_and_stops_with_everything_it_started(store):
    with _serving(store) as (ui, port, tree):
        base = f"http://127.0.0.1:{port}"
        status, body = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-test")
        assert status == 200, body
        experiment = json.loads(body)["experiment"]["experiment_id"]
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", method="POST",
                                         data=json.dumps({"experiment_ids": [experiment]}).encode(),
                                         headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(request, timeout=10).read())["runs"]
        assert [r["info"]["run_name"] for r in runs] == ["night-run"]
        assert runs[0]["data"]["metrics"][0]["value"] == 0.8125
        # the run's artifact, read from mlartifacts/ beside the store through the server
        status, body = _get(f"{base}/get-artifact?path=per_class_f1.md&run_uuid={runs[0]['info']['run_id']}")
        assert status == 200 and body == b"| W | 0.9 |\n"
        # a request addressed to another name (DNS rebinding) is refused
        by_name = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-test"
        assert _get(by_name, host=f"attacker.example:{port}")[0] == 403

        names = [" ".join(p.cmdline()) for p in tree]
        assert any("uvicorn" in n or "mlflow" in n for n in names), names
        assert not any("huey" in n or "_job_runner" in n for n in names), names  # MLflow's GenAI job processes
        listening = {c.laddr.ip for p in [psutil.Process(ui.pid), *tree] for c in p.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}

        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=30) == 0
        assert "stopped" in ui.stdout.read()
        deadline = time.time() + 10
        while _alive(tree) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(tree)


def _clean_up(ui: subprocess.Popen, tree: list[psutil.Process]) -> None:
    """Whatever a test (passed or failed) left running: SIGTERM lets `distsleep ui` stop its server, which runs in a
    process group of its own (a SIGKILL of the ui's group would leave it behind); what still runs is killed."""
    started = tree + (psutil.Process(ui.pid).children(recursive=True) if ui.poll() is None else [])
    if ui.poll() is None:
        ui.send_signal(signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
    for process in started:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _alive(tree: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGKILL], ids=["its-terminal-closed", "killed"])
def test_ui_leaves_no_server_behind_when_its_terminal_closes_or_it_is_killed(store, how):
    """Closing the terminal (SIGHUP) stops the server as Ctrl-C does; a SIGKILL, which `distsleep ui` cannot
    handle, ends it through the server's parent-death signal. Either way the port is free again."""
    with _serving(store) as (ui, port, tree):
        assert len(tree) >= 2, [" ".join(p.cmdline()) for p in tree]  # `mlflow server` and its uvicorn
        ui.send_signal(how)
        ui.wait(timeout=30)
        deadline = time.time() + 20
        while _alive(tree) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(tree), [" ".join(p.cmdline()) for p in _alive(tree)]
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there any more


def test_ui_refuses_what_it_cannot_serve_and_creates_nothing(tmp_path, store):
    missing = tmp_path / "elsewhere" / "mlflow.db"
    result = subprocess.run(_ui("--tracking-uri", f"sqlite:///{missing}"), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and f"{missing}: no MLflow SQLite store here" in result.stderr
    assert not missing.parent.exists()
    result = subprocess.run(_ui("--tracking-uri", "s3://bucket/mlflow"), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "serves SQLite tracking stores" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(_ui("--tracking-uri", str(store), "--port", str(port)), cwd=REPO, capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 2 and f"127.0.0.1:{port}: cannot listen there" in result.stderr, result.stderr
    result = subprocess.run(_ui("--tracking-uri", "http://127.0.0.1:5000"), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "already" in result.stdout
