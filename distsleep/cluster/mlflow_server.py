"""The MLflow tracking server that distsleep starts itself (the local cluster's, `distsleep ui`'s, the tests'):
one command line and one environment for all of them.

MLflow 3's `mlflow server` also starts, by default, a job runner and seven huey consumer processes for its
server-side GenAI jobs (prompt optimisation, judges). distsleep submits none: they would cost eight Python
processes and about 30 s of CPU at every start, so `SERVER_ENV` turns them off. The launcher configs in
`cluster/` set the same variable on their servers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from distsleep.cluster.host import free_port, venv_executable

SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    process: subprocess.Popen

    def stop(self) -> None:
        """Kill the server's process group (uvicorn runs in a child process) and reap it; idempotent."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def server_command(store: str | Path, artifacts_destination: str, host: str, port: int) -> list[str]:
    """`mlflow server` on `host:port` with a SQLite store at `store` (a file path). Clients upload and download
    artifacts through the server. Host headers other than the address it listens on, 127.0.0.1 and localhost
    are refused (DNS-rebinding protection)."""
    hosts = sorted({f"{host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"})
    return [venv_executable("mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}",
            "--artifacts-destination", artifacts_destination, "--host", host, "--port", str(port),
            "--workers", "1", "--allowed-hosts", ",".join(hosts)]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _ended_with(parent: int):
    """A preexec function: the child gets SIGTERM when `parent` (the process starting it) dies, even by SIGKILL
    (Linux's parent-death signal; the server passes SIGTERM on to its uvicorn process). It exits at once if
    `parent` died before the signal was set."""
    def set_up() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)
    return set_up


def start_mlflow_server(store: str | Path, artifacts_destination: str | Path, host: str = "127.0.0.1",
                        port: int | None = None, log: str | Path | None = None, env: dict[str, str] | None = None,
                        timeout: float = 120, ends_with_caller: bool = False) -> MlflowServer:
    """Start the server in a process group of its own and wait until it answers /health; its output goes to
    `log` (default: nowhere). `env` is the server's environment (default: this process's). With
    `ends_with_caller` (Linux) the server stops when the calling process dies, however it dies; otherwise it runs
    until `stop` (a cluster's server outlives the command that started it)."""
    port = port or free_port(host)
    tied = ends_with_caller and sys.platform.startswith("linux")
    output = open(log, "ab") if log else subprocess.DEVNULL
    try:
        process = subprocess.Popen(server_command(store, str(artifacts_destination), host, port),
                                   stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**(os.environ if env is None else env), **SERVER_ENV}, start_new_session=True,
                                   preexec_fn=_ended_with(os.getpid()) if tied else None)
    finally:
        if log:
            output.close()
    server = MlflowServer(uri=f"http://{host}:{port}", process=process)
    try:
        _wait_healthy(server, timeout, log)
    except BaseException:  # an interrupted start leaves no server behind either
        server.stop()
        raise
    return server


def _wait_healthy(server: MlflowServer, timeout: float, log: str | Path | None) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{server.uri}/health", timeout=2)
            return
        except OSError:
            code = server.process.poll()
            if code is not None or time.time() > deadline:
                what = f"exited with code {code}" if code is not None else f"did not answer within {timeout:.0f} s"
                where = f"; see {log}" if log else ""
                raise RuntimeError(f"the MLflow server at {server.uri} {what}{where}") from None
            time.sleep(0.5)
