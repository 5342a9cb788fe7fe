"""What a sweep says on the console while it runs: one line per trial as it starts and ends, in our words.

Tune's own console output (its experiment box, status tables every 30 s with a "current best trial") is shown
only with `--verbose`: besides being chatter, Tune's best trial is one trial's own validation value, which is
not how distsleep selects (a cross-validation point is chosen on the mean over its folds, by `compare`). Tune's
results stay in the sweep's storage folder and MLflow either way.
"""

from __future__ import annotations

import contextlib
import logging
import os

from ray.tune import Callback

from distsleep.runtime import verbose
from distsleep.tracking.compare import ordered_point, point_label

log = logging.getLogger("distsleep.sweep")
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"  # Tune reads it when a run starts: "0" selects the legacy console reporter

_ENDED = ("TERMINATED", "ERROR")


@contextlib.contextmanager
def tune_console():
    """Tune's console reporter only with --verbose. Otherwise its legacy reporter, which at verbosity 0 prints
    nothing (the default one prints its experiment box and paths at any verbosity), for the block's duration."""
    if verbose():
        yield
        return
    before = os.environ.get(NEW_OUTPUT_ENV)
    os.environ[NEW_OUTPUT_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(NEW_OUTPUT_ENV, None)
        else:
            os.environ[NEW_OUTPUT_ENV] = before


def tune_verbosity() -> int:
    return 1 if verbose() else 0


class TrialLines(Callback):
    """Logs `<point>: started`, then `[ended/total] <point>: finished (val ..., test kappa ...)`, `stopped early` or
    `FAILED (where the error is)`."""

    def __init__(self, total: int, metric: str):
        self.total, self.metric = total, metric

    def _done(self, trials: list, trial) -> int:
        # the trial that just ended may not be marked yet when Tune calls back
        return sum(t.status in _ENDED or t is trial for t in trials)

    def _label(self, trial) -> str:
        return f"{point_label(ordered_point(dict(trial.config or {})))} (trial {trial.trial_id})"

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        log.info("%s: started", self._label(trial))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        if not result.get("trial_complete"):  # ended by the scheduler before its test pass
            log.info("[%d/%d] %s: stopped early by the scheduler", self._done(trials, trial), self.total, self._label(trial))
            return
        figures = [f"{name} {result[key]:.3f}" for name, key in ((self.metric, self.metric), ("test kappa", "test_kappa"))
                   if isinstance(result.get(key), (int, float))]
        log.info("[%d/%d] %s: finished%s", self._done(trials, trial), self.total, self._label(trial),
                 f" ({', '.join(figures)})" if figures else "")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = trial.error_file or ""
        log.warning("[%d/%d] %s: FAILED%s; the others go on, and relaunching the same command retries it",
                    self._done(trials, trial), self.total, self._label(trial), f" (error in {error})" if error else "")
