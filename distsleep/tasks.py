"""Downstream tasks: what a model predicts for each 30-s epoch, and how that is scored.

* staging  — the 5 sleep stages (W, N1, N2, N3, REM); accuracy, macro-F1, Cohen's κ, per-stage F1.
* apnea    — does an apnea (obstructive, central or mixed) overlap the epoch? (the shards' event flags,
             from the NSRR XML events); accuracy, F1 and AUROC of the positive class, plus macro-F1 and κ.
* hypopnea — the same for hypopneas.

Binary targets are defined only where the epoch is scored (stage label >= 0): epochs the scorer marked
unscorable are left out of the respiratory tasks too, as they are from staging.
"""

from __future__ import annotations

import numpy as np

from distsleep.metrics import auroc, class_f1, confusion, confusion_metrics, staging_metrics
from distsleep.stages import STAGE_NAMES

# Column of the event flags (distsleep.shards.format.EVENT_COLUMNS) each binary task reads.
EVENT_TASKS = {"apnea": 0, "hypopnea": 1}
TASKS = ("staging", *EVENT_TASKS)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return task


def n_classes(task: str) -> int:
    return 5 if check_task(task) == "staging" else 2


def class_names(task: str) -> list[str]:
    return list(STAGE_NAMES) if check_task(task) == "staging" else ["none", task]


def targets(task: str, labels, events):
    """Per-epoch targets (B, L) for `task` from the stage labels (B, L) and event flags (B, L, 3).

    Works on torch tensors and NumPy arrays alike; -1 marks epochs that are not scored.
    """
    if check_task(task) == "staging":
        return labels
    flags = events[..., EVENT_TASKS[task]]
    flags = flags.long() if hasattr(flags, "long") else flags.astype(np.int64)
    return flags.where(labels >= 0, -1) if hasattr(flags, "where") else np.where(labels >= 0, flags, -1)


def binary_metrics(y_true: np.ndarray, p_positive: np.ndarray, names: list[str], threshold: float = 0.5) -> dict:
    """Accuracy, positive-class F1, AUROC (None when only one class occurs), macro-F1, κ, confusion."""
    y_true, p_positive = np.asarray(y_true), np.asarray(p_positive, dtype=np.float64)
    scored = y_true >= 0
    t, p = y_true[scored], p_positive[scored]
    matrix = confusion(t, (p >= threshold).astype(np.int64), 2)
    per_class = class_f1(matrix, zero_division=0.0)  # both classes count in the macro-F1, as sklearn's labels=[0, 1]
    summary = confusion_metrics(matrix)
    return {
        "n_epochs": int(scored.sum()),
        "accuracy": float(summary["accuracy"]),
        "f1_positive": float(per_class[1]),
        "auroc": auroc(t, p),
        "macro_f1": float(np.mean(per_class)),
        "kappa": float(summary["kappa"]),
        "prevalence": float(t.mean()) if len(t) else float("nan"),
        "majority_accuracy": float(max(t.mean(), 1 - t.mean())) if len(t) else float("nan"),
        "f1": {name: float(v) for name, v in zip(names, per_class)},
        "confusion": matrix.tolist(),
    }


def task_metrics(task: str, y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """Metrics of `task` from per-epoch targets and class probabilities (n_epochs, n_classes)."""
    if check_task(task) == "staging":
        return staging_metrics(y_true, np.asarray(probabilities).argmax(axis=1) if len(probabilities) else
                               np.zeros(0, dtype=np.int64))
    return binary_metrics(y_true, np.asarray(probabilities)[:, 1] if len(probabilities) else np.zeros(0), class_names(task))


# Scalar metrics each task logs (val_*/test_*), besides the per-class F1 values.
SCALAR_METRICS = {"staging": ("accuracy", "macro_f1", "kappa"),
                  "apnea": ("accuracy", "f1_positive", "auroc", "macro_f1", "kappa", "majority_accuracy"),
                  "hypopnea": ("accuracy", "f1_positive", "auroc", "macro_f1", "kappa", "majority_accuracy")}
