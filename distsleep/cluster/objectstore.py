"""An S3-compatible object store on this machine: moto's server mode (a test dependency, `pip install
".[test]"`), for the local cluster (`start --object-store`), the tests and the storage benchmark.

It listens on 127.0.0.1 only, keeps its objects in memory (they are gone when it stops) and accepts any
credentials; clients still sign their requests, so they need some: `write_aws_files` writes a random key pair
and a region into AWS config files under a state dir (mode 0600), and `client_env` names those files and
the endpoint in the variables every AWS client reads by itself (AWS_ENDPOINT_URL, AWS_SHARED_CREDENTIALS_FILE,
AWS_CONFIG_FILE). The key never appears in a command line, an environment printout or a log.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from distsleep.cluster.host import free_port

CREDENTIALS_FILE = "aws_credentials"
CONFIG_FILE = "aws_config"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    pid: int


def _wait_listening(host: str, port: int, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server (moto) exited at start with code {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the S3 server (moto) did not listen on {host}:{port} within {timeout:.0f} s")


def start_s3_server(log: str | Path | None = None, host: str = "127.0.0.1", port: int | None = None,
                    env: dict[str, str] | None = None, timeout: float = 60) -> S3Server:
    """Start moto's S3 server on `host` in a process group of its own; its requests go to `log` (default: nowhere)."""
    try:
        import moto  # noqa: F401  (only to fail here with a clear message)
    except ImportError as error:
        raise RuntimeError("the local S3 server needs moto, a test dependency: pip install -e '.[test]'") from error
    port = port or free_port(host)
    output = open(log, "ab") if log else subprocess.DEVNULL
    try:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)], stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    finally:
        if log:
            output.close()
    try:
        _wait_listening(host, port, timeout, process)
    except Exception:
        process.kill()
        raise
    return S3Server(endpoint=f"http://{host}:{port}", pid=process.pid)


def stop_s3_server(server: S3Server, grace: float = 5.0) -> None:
    import psutil

    try:
        process = psutil.Process(server.pid)
        process.terminate()
        process.wait(grace)
    except psutil.TimeoutExpired:
        process.kill()
    except psutil.NoSuchProcess:
        pass


def write_aws_files(folder: str | Path) -> tuple[str, str]:
    """(credentials file, config file) with a random key pair and the region, readable by this user only."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = {CREDENTIALS_FILE: f"[default]\naws_access_key_id = local{secrets.token_hex(8)}\n"
                               f"aws_secret_access_key = {secrets.token_hex(20)}\n",
             CONFIG_FILE: f"[default]\nregion = {REGION}\n"}
    for name, text in texts.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
    return str(folder / CREDENTIALS_FILE), str(folder / CONFIG_FILE)


def client_env(endpoint: str, credentials_file: str, config_file: str) -> dict[str, str]:
    """The variables that point boto3, s3fs, pyarrow (Ray Train) and MLflow at this store."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_SHARED_CREDENTIALS_FILE": credentials_file, "AWS_CONFIG_FILE": config_file}


def create_bucket(bucket: str, env: dict[str, str] | None = None) -> None:
    """Create `bucket` (no error when it exists) as a client with the environment `env` (default: this
    process's) would: in a child process, since AWS clients read their settings from the environment."""
    script = "import s3fs, sys; fs = s3fs.S3FileSystem(); fs.exists(sys.argv[1]) or fs.mkdir(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", script, bucket], env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"could not create the bucket {bucket}: {done.stderr.strip().splitlines()[-1:]}")
