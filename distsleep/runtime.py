"""Connecting to Ray the same way from every job: $RAY_ADDRESS / --address, else an embedded cluster.

A cluster this process starts itself (`ray.init()` without an address: the demo, the tests, a job run on a
laptop) gets Ray's token authentication, always (an inherited RAY_AUTH_MODE=disabled is overridden; the
token is Ray's default ~/.ray/auth_token, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH when set), and keeps every
server on 127.0.0.1: Ray binds its GCS, raylet and agents to loopback exactly when the node address is
127.0.0.1, which it otherwise rewrites to the host's outward address. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is
Ray's own switch for that ("this machine is the whole cluster"); child processes inherit it, so job drivers
resolve 127.0.0.1 addresses the same way.

The console is quiet unless verbose (`--verbose`, or DISTSLEEP_VERBOSE=1 in the environment, which Ray job
drivers and training workers inherit): our progress bars, rank-0 progress lines and summaries reach it,
framework chatter stays in Ray's log files (the session's logs/ folder): what Ray Train's controller actors
print (`quiet_framework_actors`), Ray Train's INFO lines (`distsleep.train.driver`), what Ray's and
DeepSpeed's code logs or prints on a training worker (`quiet_worker_console`: the per-report "Reporting
training result" lines, DeepSpeed's op-build lines; `framework_output` for those printed while an engine is
built) and MLflow's store-setup lines.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys

AUTH_MODE = "RAY_AUTH_MODE"
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
VERBOSE_ENV = "DISTSLEEP_VERBOSE"
# Ray Train's own actors; what they print is about its machinery (e.g. the preemption watcher's constructor
# warning, the placement-group cleaner's state-API errors).
FRAMEWORK_ACTORS = frozenset({"TrainController", "PlacementGroupCleaner", "PreemptionWatcher"})


def secure_local_ray() -> None:
    """Token auth on and servers on 127.0.0.1 for a Ray cluster this process is about to start with
    `ray.init()`. Call it before ray.init(), preferably before `import ray` (it also updates the values Ray
    already read at import)."""
    os.environ[AUTH_MODE] = "token"
    os.environ[LOOPBACK_SWITCH] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
    raylet = sys.modules.get("ray._raylet")
    if raylet is not None:
        raylet.Config.initialize("")  # RayConfig caches RAY_AUTH_MODE from the environment


def verbose() -> bool:
    """Whether framework logs go to the console too (module docstring)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure_console(verbose_console: bool = False) -> None:
    """Our (distsleep.*) INFO lines on the console; with `verbose_console` the frameworks' too (inherited by Ray
    job drivers and workers through the environment)."""
    if verbose_console:
        os.environ[VERBOSE_ENV] = "1"
    ours = logging.getLogger("distsleep")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False
    if not verbose():
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."


@contextlib.contextmanager
def framework_output():
    """What a framework prints to stdout inside the block (DeepSpeed's op-build lines) goes to the log at DEBUG
    level instead of the console, unless verbose."""
    if verbose():
        yield
        return
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        yield
    for line in captured.getvalue().splitlines():
        logging.getLogger("distsleep.framework").debug("%s", line)


class _NotFramework(logging.Filter):
    """Drops records written from the frameworks' own code (below ERROR): Ray Train's per-report "Reporting
    training result ..." lines (logged under a file-path logger name, so Ray Train's LoggingConfig level does
    not reach them) and DeepSpeed's op-build prints (Ray Train turns a worker's print into root-logger
    records)."""

    PACKAGES = (f"{os.sep}ray{os.sep}", f"{os.sep}deepspeed{os.sep}")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(p in record.pathname for p in self.PACKAGES)


_NOT_FRAMEWORK = _NotFramework()


def quiet_worker_console() -> None:
    """On a Ray Train worker, unless verbose: the console handlers Ray Train set up skip the frameworks'
    records (`_NotFramework`); its log files (the session's logs/train/) still get them. Our own lines
    (distsleep.* loggers) pass."""
    if verbose():
        return
    for logger in (logging.getLogger(), logging.getLogger("ray.train")):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(_NOT_FRAMEWORK)  # once: addFilter skips a filter already there


def quiet_framework_actors() -> None:
    """Keep the output of Ray Train's controller actors (FRAMEWORK_ACTORS) off this driver's console; it stays
    in their log files. Wraps the driver's log printer (Ray's internal dispatcher: if a Ray version lacks it,
    the output is left as it is)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    with dispatcher._lock:
        for i, (name, handler) in enumerate(dispatcher.handlers):
            if name == "ray_print_logs" and not getattr(handler, "keeps_framework_quiet", False):
                def printer(data, _print=handler):
                    if data.get("actor_name") not in FRAMEWORK_ACTORS:
                        _print(data)

                printer.keeps_framework_quiet = True
                dispatcher.handlers[i] = (name, printer)


def connect_ray(address: str | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS); without one, start a local cluster (token auth on,
    servers on 127.0.0.1, see the module docstring).

    The local cluster keeps Ray's dashboard (bound to 127.0.0.1): Ray Train V2 uses the state API it
    serves to clean up after trials and workers.
    """
    import ray  # here, not at the top: secure_local_ray must set what Ray reads when it is imported

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if not address or address == "local":  # "local": Ray starts a new cluster, as without an address
            secure_local_ray()
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    if not verbose():
        quiet_framework_actors()
