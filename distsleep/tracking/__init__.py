"""Everything MLflow: reachability checks, one run per training run, logging that never kills training, the
tags that tie runs together, and (`compare.py`) the comparison of runs read back from MLflow.

The driver creates (or, on a relaunch, finds) the MLflow run before training starts and hands its id
to the workers; rank 0 logs through `RunLogger`, which uses the client API with an explicit run id (no
global active run), and turns tracking failures into warnings: losing the tracking server mid-run costs
neither the run nor, once the server answers again, what was logged meanwhile (`RunLogger`)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag

from distsleep.errors import first_line
from distsleep.runtime import verbose

log = logging.getLogger("distsleep.tracking")

# Tags that tie runs together; sweeps, comparisons and the augmentation-effect job search by them.
RUN_NAME_TAG = "distsleep.run_name"  # identifies a run across relaunches of its --name
BUNDLE_TAG = "distsleep.bundle"  # set by the worker once the run's model (or generator) bundle is uploaded
KIND_TAG = "distsleep.kind"  # "sweep", "trial", "stage", "augmentation-effect" or "evaluation"
SWEEP_TAG = "distsleep.sweep"  # the sweep a run belongs to
TRIAL_TAG = "distsleep.trial_id"  # the Tune trial a run belongs to
ENDED_BY_TAG = "distsleep.ended_by"  # "scheduler" or "error": why a trial run did not finish
MODEL_RUN_TAG = "distsleep.model_run"  # an evaluation run: the training run that logged the model it evaluated
MODEL_SOURCE_TAG = "distsleep.model_source"  # an evaluation run: the model as the user named it (path, runs:/, models:/)
EVALUATED_SWEEP_TAG = "distsleep.evaluated_sweep"  # an evaluation run of a sweep's trials (evaluate --sweep)
INIT_SOURCES_TAG = "distsleep.init_sources"  # the --init-from/--init-part sources of a run and their data
# A sweep trial run's stage runs (plain names: they predate the distsleep. prefix and existing stores hold them)
PRETRAIN_RUN_TAG = "pretrain_run_id"
FINETUNE_RUN_TAG = "finetune_run_id"
# The artifact folder of a training run's per-night test evaluation (the files `distsleep evaluate` writes)
PER_NIGHT_ARTIFACTS = "per_night"
# A sweep trial run's artifact: its point, summary metrics, stage runs and confusion matrices (what `compare` reads)
TRIAL_SUMMARY = "trial_summary.json"
# The MLflow client settings of every process that tracks (drivers, trials, training workers): fail fast instead of
# retrying for minutes when a server is unreachable, and keep MLflow's console output off ours.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              # no tqdm bar per downloaded artifact (the comparison fetches one small JSON per run)
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
              # no "🏃 View run NAME at: URL" / "🧪 View experiment at: URL" on stdout whenever a run on a tracking
              # server ends (each stage, trial and sweep of a job): our summaries name the run and its store
              "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached: raised before any training starts."""


def client(uri: str):
    for key, value in CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    return mlflow.MlflowClient(tracking_uri=uri)


def check_reachable(uri: str) -> None:
    """Raise TrackingUnavailable with what to do when `uri` cannot be used."""
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as error:  # connection refused, DNS, permissions, bad URI ...
        hint = ("start it (cluster/local/start.sh does) or point MLFLOW_TRACKING_URI elsewhere"
                if uri.startswith("http") else "check the path and its permissions")
        raise TrackingUnavailable(f"MLflow tracking store {uri} is not reachable ({type(error).__name__}: "
                                  f"{first_line(error, 200)}); {hint}") from error


SQLITE_SCHEME = "sqlite:///"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// tracking URI; None for any other URI."""
    return Path(uri.removeprefix(SQLITE_SCHEME)) if uri.startswith(SQLITE_SCHEME) else None


def artifacts_beside(store: Path) -> str:
    """Where the runs of a SQLite store keep their artifacts: mlartifacts/ beside the file, rather than in whatever
    directory a worker runs in (a file:// URI)."""
    return (store.parent / "mlartifacts").resolve().as_uri()


def experiment_id(uri: str, name: str, artifact_root: str | None = None) -> str:
    c = client(uri)
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    store = sqlite_file(uri)
    if artifact_root is None and store is not None:
        artifact_root = artifacts_beside(store)
    return c.create_experiment(name, artifact_location=artifact_root)


def find_or_create_run(uri: str, experiment: str, run_name: str, parent_run_id: str | None = None,
                       tags: dict | None = None, display_name: str | None = None) -> tuple[str, bool]:
    """(run_id, resumed): the unfinished run tagged with this run name, else a new one.

    `run_name` identifies the run across relaunches (a tag); `display_name` is what the MLflow UI shows.
    """
    c = client(uri)
    exp_id = experiment_id(uri, experiment)
    found = find_run(uri, experiment, run_name)
    if found is not None and found.info.status != "FINISHED":
        c.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id, True
    all_tags = {RUN_NAME_TAG: run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(exp_id, run_name=display_name or run_name, tags=all_tags)
    return run.info.run_id, False


def tag_filter(key: str, value: str) -> str:
    """An MLflow search filter matching runs whose tag `key` is `value`, whatever quotes `value` holds.

    MLflow's filter grammar has no escape inside a quoted string: a ' ends a '...' literal. A value with
    single quotes goes in double quotes (o'brien), and one with both kinds in a LIKE pattern where each quote
    matches any character, so it may match a little more: keep only runs whose tag equals `value`
    (`with_tag`)."""
    value = str(value)
    if "'" not in value:
        return f"tags.`{key}` = '{value}'"
    if '"' not in value:
        return f'tags.`{key}` = "{value}"'
    pattern = value.replace("'", "_").replace('"', "_")
    return f"tags.`{key}` LIKE '{pattern}'"


def with_tag(runs, key: str, value: str) -> list:
    return [run for run in runs if run.data.tags.get(key) == str(value)]


def sweep_runs(c, sweep: str) -> list:
    """Every run of sweep `sweep` (its sweep run, trials and stages), in whichever experiments they were logged."""
    experiments = [e.experiment_id for e in c.search_experiments(max_results=1000)]
    found = c.search_runs(experiments, filter_string=tag_filter(SWEEP_TAG, sweep), max_results=5000)
    return with_tag(found, SWEEP_TAG, sweep)


def final_stage_run(run) -> str | None:
    """The run id of a sweep trial's last stage (fine-tuning, else pre-training): the model the trial tests."""
    return run.data.tags.get(FINETUNE_RUN_TAG) or run.data.tags.get(PRETRAIN_RUN_TAG)


def find_run(uri: str, experiment: str, run_name: str, status: str | None = None):
    """The latest run tagged with this run name (optionally only with this status), or None."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = tag_filter(RUN_NAME_TAG, run_name) + (f" and attributes.status = '{status}'" if status else "")
    found = c.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=50)
    found = with_tag(found, RUN_NAME_TAG, run_name)
    return found[0] if found else None


def run_lacks(uri: str, run_id: str, metrics=(), tags=(), artifacts=()) -> list[str]:
    """What of `metrics`, `tags` (names) and `artifacts` (paths) run `run_id` does not hold in the store at `uri`;
    the whole run when the store cannot be read. Empty when it holds them all."""
    try:
        c = client(uri)
        run = c.get_run(run_id)
        stored = {f.path for f in c.list_artifacts(run_id)} if artifacts else set()
    except Exception as error:
        return [f"the run itself (the store did not answer: {type(error).__name__})"]
    lacks = [f"metric {name}" for name in metrics if name not in run.data.metrics]
    lacks += [f"tag {name}" for name in tags if name not in run.data.tags]
    return lacks + [f"artifact {path}" for path in artifacts if path not in stored]


def download_text(uri: str, run_id: str, artifact: str) -> str | None:
    """A text artifact of a run, or None when it cannot be fetched (missing, store gone)."""
    try:
        with tempfile.TemporaryDirectory() as directory:
            return Path(client(uri).download_artifacts(run_id, artifact, directory)).read_text()
    except Exception:
        return None


def download_json(uri: str, run_id: str, artifact: str) -> dict | None:
    """A JSON artifact of a run, or None when it cannot be fetched (missing, store gone) or read."""
    text = download_text(uri, run_id, artifact)
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


MAX_METRICS_PER_WRITE = 1000  # MLflow's limits on one log_batch
MAX_PARAMS_OR_TAGS_PER_WRITE = 100
# Once the store fails a write, no write is sent for this long: each would cost the HTTP client's retries
# (~3 s with CLIENT_ENV) and a training loop would log into a dead server every few steps.
RETRY_AFTER_S = 30.0
# Metric values kept for a store that does not answer (~100 bytes each); beyond it the oldest are dropped.
MAX_HELD_METRICS = 500_000
# In a checkpoint: what the tracking store had not taken when the checkpoint was written (`RunLogger.keep_unsent`)
UNSENT_FILE = "mlflow_unsent.json"


class RunLogger:
    """Log to one MLflow run from one process; tracking failures never stop the work, and cost little.

    Metrics are written off the caller's thread (one write in flight; what comes meanwhile goes into the next
    write), params and tags at once. When a write fails the store counts as down: one warning, then for
    RETRY_AFTER_S nothing is sent, after which the next write tries again. What could not be written meanwhile
    (metrics, params, tags) is held and written first when the store answers again, at the latest by `flush`.
    Artifacts are not held: while the store is down `artifact` returns False at once (counted in `failures`),
    and a run whose files are not all uploaded is not confirmed (BUNDLE_TAG), so relaunching it uploads them.
    What is held outlives the process only through a checkpoint: `keep_unsent` writes it into one, and
    `write_kept` writes it to its run when a relaunch resumes from that checkpoint.
    """

    def __init__(self, uri: str, run_id: str, enabled: bool = True, retry_after: float = RETRY_AFTER_S):
        self.uri, self.run_id, self.enabled, self.retry_after = uri, run_id, enabled, retry_after
        self._client = client(uri) if enabled else None
        self.failures = 0  # writes that failed or were not sent because the store was down
        self.dropped = 0  # metric values given up beyond MAX_HELD_METRICS
        self._down_since: float | None = None  # when the store last failed a write; None while it answers
        self._held: dict[str, list] = {"params": [], "tags": [], "metrics": []}
        self._not_uploaded: set[str] = set()  # artifact paths in the run whose last upload failed
        self._sender: ThreadPoolExecutor | None = None
        self._in_flight: Future | None = None
        if enabled and not verbose():
            # urllib3 prints a line per retry of every failed request; this logger warns once per outage
            logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

    @property
    def down(self) -> bool:
        """Whether the store failed the last write this logger tried."""
        return self._down_since is not None

    def _may_send(self) -> bool:
        return self._down_since is None or time.time() - self._down_since >= self.retry_after

    def _failed(self, what: str, error: BaseException) -> None:
        if self._down_since is None:
            log.warning("MLflow %s failed at %s (%s: %s); the work goes on, and what is logged meanwhile is kept and "
                        "written when the store answers again (tried every %.0f s)", what, self.uri,
                        type(error).__name__, first_line(error, 200), self.retry_after)
        self._down_since = time.time()

    def _answered(self) -> None:
        if self._down_since is not None:
            log.warning("MLflow at %s answers again; what was kept meanwhile is written", self.uri)
            self._down_since = None

    def _end_rest(self) -> None:
        """Let the next write go out now even if the store is resting (it still counts as down until one lands)."""
        if self._down_since is not None:
            self._down_since = 0.0

    def _hold(self, kind: str, items: list) -> None:
        held = self._held[kind]
        held.extend(items)
        if kind == "metrics" and len(held) > MAX_HELD_METRICS:
            self.dropped += len(held) - MAX_HELD_METRICS
            del held[:len(held) - MAX_HELD_METRICS]

    def _take_held(self) -> dict[str, list]:
        batch, self._held = self._held, {"params": [], "tags": [], "metrics": []}
        return batch

    def _write(self, batch: dict[str, list]) -> tuple[dict[str, list], BaseException | None]:
        """`batch` in MLflow-sized writes, params and tags first; on the first failure, what was not written
        and the error. Runs in the sender thread for metrics: it touches nothing but `batch` and the client."""
        for kind, size in (("params", MAX_PARAMS_OR_TAGS_PER_WRITE), ("tags", MAX_PARAMS_OR_TAGS_PER_WRITE),
                           ("metrics", MAX_METRICS_PER_WRITE)):
            items = batch[kind]
            for i in range(0, len(items), size):
                try:
                    self._client.log_batch(self.run_id, **{kind: items[i:i + size]})
                except Exception as error:
                    batch[kind] = items[i:]
                    return batch, error
            batch[kind] = []
        return batch, None

    def _settle(self, unsent: dict[str, list], error: BaseException | None, what: str) -> None:
        for kind, items in unsent.items():
            self._hold(kind, items)
        if error is not None:
            self._failed(what, error)
        else:
            self._answered()

    def _collect(self, wait: bool = False) -> None:
        """The outcome of the write in flight, if it ended (or, with `wait`, once it ends)."""
        if self._in_flight is None or not (wait or self._in_flight.done()):
            return
        unsent, error = self._in_flight.result()
        self._in_flight = None
        self._settle(unsent, error, "log metrics")

    def _send(self) -> None:
        """Start a write of everything held, unless one is in flight or the store is resting."""
        self._collect()
        if self._in_flight is not None or not any(self._held.values()) or not self._may_send():
            return
        if self._sender is None:
            self._sender = ThreadPoolExecutor(1, thread_name_prefix="distsleep-mlflow")
        self._in_flight = self._sender.submit(self._write, self._take_held())

    def _call(self, what: str, fn, *args, **kwargs):
        """A write that is not held (artifacts, the run's end): tried unless the store is resting."""
        self._collect()
        if not self._may_send():
            self.failures += 1
            return None
        try:
            result = fn(*args, **kwargs)
        except Exception as error:
            self.failures += 1
            self._failed(what, error)
            return None
        self._answered()
        return result

    def _now(self, kind: str, items: list) -> None:
        """Params or tags: written at once (others read them right after) after anything held before them."""
        self._collect(wait=True)
        self._hold(kind, items)
        if not self._may_send():
            self.failures += 1
            return
        unsent, error = self._write(self._take_held())
        if error is not None:
            self.failures += 1
        self._settle(unsent, error, f"log {kind}")

    def params(self, params: dict[str, str]) -> None:
        if self.enabled:
            self._now("params", [Param(k, str(v)[:6000]) for k, v in sorted(params.items())])

    def tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            self._now("tags", [RunTag(k, str(v)) for k, v in tags.items()])

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metric_rows([(step, metrics)])

    def metric_rows(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Metrics of several steps, [(step, {name: value})]: queued, written off this thread.

        A write to a SQLite file or a remote server costs ~10-30 ms, which must not sit inside the training
        step; one write per batch of steps, not per step, cuts the sender's CPU (and GIL) time ~5x."""
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        self._hold("metrics", [Metric(k, float(v), now, step) for step, metrics in rows for k, v in metrics.items()
                               if v is not None])
        self._send()

    def flush(self) -> None:
        """Write what is queued or held, waiting for it (before artifacts and the end of the run); a store that
        is still resting is tried once more. Whatever it did not take is warned about."""
        if not self.enabled:
            return
        self._collect(wait=True)
        if any(self._held.values()):
            self._end_rest()  # one more try now
            self._send()
            self._collect(wait=True)
        if self._sender is not None:  # a driver makes a logger per trial: no idle thread stays behind each
            self._sender.shutdown(wait=False)
            self._sender = None
        held = self._untaken_values()
        if held:
            log.warning("MLflow at %s has not taken %s of run %s (lost with this process unless a checkpoint kept "
                        "them)", self.uri, ", ".join(held), self.run_id)

    def _untaken_values(self) -> list[str]:
        """The params, tags and metric values the store has not taken: those still held and those dropped."""
        held = [f"{len(items)} {kind}" for kind, items in self._held.items() if items]
        if self.dropped:
            held.append(f"{self.dropped} metric values dropped beyond the {MAX_HELD_METRICS} kept")
        return held

    def keep_unsent(self, folder: str | Path) -> bool:
        """Write what the store has not taken yet (held params, tags and metrics) into `folder`, a checkpoint being
        written, as UNSENT_FILE; False when nothing is held. It stays held here too: whichever of this process and
        a relaunch resuming from the checkpoint writes it first, the other's copy is a duplicate, which MLflow's SQL
        stores drop (same key, step, value and timestamp)."""
        if not self.enabled:
            return False
        self._collect(wait=True)  # a write in flight that fails comes back into what is held
        if not any(self._held.values()):
            return False
        held = {"run_id": self.run_id,
                "params": [[p.key, p.value] for p in self._held["params"]],
                "tags": [[t.key, t.value] for t in self._held["tags"]],
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in self._held["metrics"]]}
        (Path(folder) / UNSENT_FILE).write_text(json.dumps(held))
        return True

    def write_kept(self, folder: str | Path) -> int:
        """Write what a checkpoint's UNSENT_FILE kept to its run: this logger's, or the run the checkpoint was written
        for when it continues into a new MLflow run. Returns the number of metric values kept (0 without the file)."""
        path = Path(folder) / UNSENT_FILE
        if not self.enabled or not path.is_file():
            return 0
        kept = json.loads(path.read_text())
        same = kept["run_id"] == self.run_id
        target = self if same else RunLogger(self.uri, kept["run_id"], retry_after=self.retry_after)
        target._hold("params", [Param(k, v) for k, v in kept["params"]])
        target._hold("tags", [RunTag(k, v) for k, v in kept["tags"]])
        target._hold("metrics", [Metric(k, float(v), int(t), int(step)) for k, v, t, step in kept["metrics"]])
        if same:
            self._send()
        else:
            target.flush()
        return len(kept["metrics"])

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> bool:
        """Upload one file; False when it did not reach the store (counted in `failures`)."""
        if not self.enabled:
            return True
        failures = self.failures
        self._call("log artifact", self._client.log_artifact, self.run_id, str(path), artifact_path)
        where = f"{artifact_path}/{Path(path).name}" if artifact_path else Path(path).name
        if self.failures == failures:
            self._not_uploaded.discard(where)  # a later upload of the same file makes up for a failed one
            return True
        self._not_uploaded.add(where)
        return False

    def artifacts(self, files: list[tuple[Path, str | None]]) -> bool:
        """Upload every (file, folder); True only when all reached the store. A store that failed earlier is asked
        again first, even while it rests: the files only count together (a run is confirmed with all of them)."""
        if self.enabled and self.down:
            self._collect(wait=True)
            self._end_rest()
            self._call("read the run", self._client.get_run, self.run_id)
        return all([self.artifact(path, folder) for path, folder in files])

    def missing(self) -> list[str]:
        """What this logger was given that the store has not taken: held values, values dropped, artifacts whose
        last upload failed ([] when the run's record is whole)."""
        return self._untaken_values() + [f"artifact {where}" for where in sorted(self._not_uploaded)]

    def finish(self, status: str = "FINISHED") -> bool:
        """Write what is held, then end the run: with `status`, except that a run the store has not taken whole
        (`missing` after the flush) ends FAILED, never FINISHED. True when the store took everything, the end
        included. Tried even while the store rests (the last call)."""
        if not self.enabled:
            return True
        self.flush()
        missing = self.missing()
        if missing and status == "FINISHED":
            status = "FAILED"
            log.warning("MLflow run %s is marked FAILED, not FINISHED: the store at %s has not taken %s", self.run_id,
                        self.uri, ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
        self._end_rest()
        failures = self.failures
        self._call("end run", self._client.set_terminated, self.run_id, status)
        return not missing and self.failures == failures
