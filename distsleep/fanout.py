"""One Ray task per item (a night to score, a record to evaluate) with a progress bar; a failing item is kept
with its reason and the others proceed.

Tasks ask for a GPU when the cluster has any (each task then sees one device and scores on it), else one CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from tqdm import tqdm


@dataclass
class Outcome:
    """What one task gave: its `result`, or the `error` (one line: exception type and message) that stopped it."""

    item: Any
    result: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def cluster_gpus() -> float:
    """GPUs the connected cluster has (0 on a CPU-only one)."""
    return float(ray.cluster_resources().get("GPU", 0))


def _reason(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error  # a RayTaskError carries the task's own exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


def _guarded(fn: Callable, item, *args) -> tuple[bool, Any]:
    """(True, fn(item, *args)) or (False, the reason it raised). The reason travels as text: exceptions with their
    own constructor arguments (InputError's path and problem) do not survive Ray's deserialisation."""
    try:
        return True, fn(item, *args)
    except Exception as error:
        return False, _reason(error)


def run_each(fn: Callable, items: Sequence, *args, desc: str, progress: bool = True, use_gpu: bool | None = None
             ) -> list[Outcome]:
    """`fn(item, *args)` as one Ray task per item on the connected cluster, in item order. `use_gpu` None: one
    GPU per task when the cluster has GPUs. Large shared `args` are put in the object store once."""
    gpu = cluster_gpus() >= 1 if use_gpu is None else use_gpu
    task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=0)(_guarded)
    shared = [ray.put(a) for a in args]
    futures = {task.remote(fn, item, *shared): i for i, item in enumerate(items)}
    outcomes = [Outcome(item) for item in items]
    with tqdm(total=len(items), desc=desc, unit="night", disable=not progress) as bar:
        pending = list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            outcome = outcomes[futures[ready[0]]]
            try:
                ok, value = ray.get(ready[0])
            except Exception as error:  # a dead worker, ...: this item failed, the others go on
                ok, value = False, _reason(error)
            if ok:
                outcome.result = value
            else:
                outcome.error = value
            bar.update(1)
    return outcomes
