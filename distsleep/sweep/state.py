"""Ray Tune's experiment state, verified before a sweep resumes from it.

Resuming a sweep (`Tuner.restore`) unpickles tuner.pkl, the searcher state and the trials in the
experiment-state JSON (cloudpickled), so a changed file would run code in the driver. Tune writes that
state itself, all through the run, into a staging folder that it then uploads to STORAGE/NAME. The
`StateChecksums` callback is asked for its own state by Tune right after Tune wrote the experiment and
searcher state into that folder and before the upload: it records their sha256 (and tuner.pkl's) in
checksums-tune-state.json there, so the checksums travel with the files they describe. Before a restore,
`verify_tune_state` checks the files Tune would load against them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ray.tune import Callback

from distsleep import store
from distsleep.atomic import write_json_atomic
from distsleep.integrity import IntegrityError

STATE_CHECKSUMS = "checksums-tune-state.json"
TUNER_FILE = "tuner.pkl"
# The files Tune loads on restore (the newest of each pattern) besides tuner.pkl.
STATE_PATTERNS = ("experiment_state-*.json", "basic-variant-state-*.json", "search_gen_state-*.json",
                  "searcher-state-*.pkl", "callback-states-*.pkl")


class StateChecksums(Callback):
    """Records the checksums of Tune's experiment state next to it (see the module docstring)."""

    def __init__(self):
        self._staging: str | None = None
        self._storage = None

    def _remember(self, trials: list) -> None:
        if trials and self._staging is None:
            storage = trials[0].storage
            self._staging, self._storage = storage.experiment_driver_staging_path, storage

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        self._remember(trials)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._remember(trials)

    def get_state(self) -> dict | None:
        # Tune calls this while saving, after writing the experiment and searcher state to the staging folder.
        if self._staging is not None and Path(self._staging).is_dir():
            staging = Path(self._staging)
            files = {p.name: store.sha256(p) for pattern in STATE_PATTERNS for p in staging.glob(pattern)}
            with self._storage.storage_filesystem.open_input_stream(f"{self._storage.experiment_fs_path}/{TUNER_FILE}") as f:
                files[TUNER_FILE] = hashlib.sha256(f.read()).hexdigest()
            write_json_atomic(staging / STATE_CHECKSUMS, {"sha256": files})
        return None  # nothing of its own to restore

    def __getstate__(self) -> dict:
        return {"_staging": None, "_storage": None}  # pickled into tuner.pkl: a new launch finds its own folder


def newest_state_files(experiment: str | Path) -> list[str]:
    """Names of tuner.pkl and, per pattern, of the newest file (the one Tune loads: names carry the session's
    timestamp) in `experiment` (a folder or an s3:// prefix)."""
    found = [TUNER_FILE]
    for pattern in STATE_PATTERNS:
        matches = store.children(experiment, pattern)
        if matches:
            found.append(matches[-1])
    return found


def verify_tune_state(experiment: str) -> None:
    """IntegrityError naming the first state file of the sweep at `experiment` (a folder or an s3:// prefix) that
    differs from the checksums recorded when Tune wrote it, or that has none. The checksums travel with the files:
    this finds a changed, cut or foreign file, not one rewritten together with its checksum by whoever can
    write the storage (as for checkpoints, `integrity.py`)."""
    where = store.join(experiment, STATE_CHECKSUMS)
    try:
        recorded = store.read_json(where)["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise IntegrityError(f"{where}: no readable checksums of the sweep's Tune state ({error}); it cannot be "
                             "verified before Tune unpickles it. Start the sweep under a new --name") from error
    for name in newest_state_files(experiment):
        path = store.join(experiment, name)
        if name not in recorded:
            raise IntegrityError(f"{path}: Tune state file without a recorded checksum; refusing to load it")
        if store.sha256(path) != recorded[name]:
            raise IntegrityError(f"{path}: Tune state changed since Tune wrote it (sha256 differs from the recorded "
                                 "one); refusing to load it. Start the sweep under a new --name")
