"""`distsleep ui`: MLflow's web UI over a SQLite tracking store, started the way distsleep starts its servers
(`distsleep.cluster.mlflow_server`): one address (127.0.0.1 unless told), other Host headers refused, and none
of MLflow's GenAI job processes, which plain `mlflow ui` starts."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path

from distsleep.cluster.mlflow_server import start_mlflow_server
from distsleep.config import default_tracking_uri
from distsleep.errors import InputError
from distsleep.tracking import artifacts_beside, sqlite_file

DESCRIPTION = ("Serve MLflow's web UI for the runs in a SQLite tracking store (the demo's demo/mlflow.db, a job's "
               "--tracking-uri) until Ctrl-C. It listens on 127.0.0.1 (this machine only) unless --host says "
               "otherwise, answers only requests addressed to it, and starts none of MLflow's GenAI job runners. "
               "Each run's artifacts are read where the run stored them (distsleep's runs: mlartifacts/ beside the "
               "store). A tracking URI that is already a server (http://...) needs no UI of ours: open it in a browser.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="the store: sqlite:///PATH or a PATH to the .db file (default "
                                          "$MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")


def sqlite_store(uri: str) -> Path:
    """The file of a sqlite:/// URI or a plain path; InputError when it is neither or holds no store."""
    path = sqlite_file(uri) or (Path(uri) if "://" not in uri else None)
    if path is None:
        raise InputError(uri, "distsleep ui serves SQLite tracking stores (sqlite:///PATH or PATH)")
    path = path.expanduser().resolve()
    if not path.is_file():
        raise InputError(path, "no MLflow SQLite store here (has a run been tracked to it?)")
    return path


def _check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as error:
            raise InputError(f"{host}:{port}", f"cannot listen there ({error.strerror}); pass another --port "
                                               "or --host") from None


def run(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is an MLflow server already: open it in a browser")
        return 0
    store = sqlite_store(uri)
    _check_port(args.host, args.port)
    # SIGTERM (a service manager, `kill`) and SIGHUP (its terminal closed) end the server as Ctrl-C does (a start
    # interrupted either way leaves none); a SIGKILL ends it through the parent-death signal.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    try:
        server = start_mlflow_server(store, artifacts_beside(store), host=args.host, port=args.port,
                                     ends_with_caller=True)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as error:  # the server exited or did not answer: say so, without a traceback
        print(f"distsleep ui: error: {error}", file=sys.stderr)
        return 1
    try:
        print(f"MLflow UI for {store}: {server.uri}  (Ctrl-C stops it)", flush=True)
        code = server.process.wait()
        print(f"distsleep ui: error: the MLflow server exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped")
        return 0
    finally:
        server.stop()
