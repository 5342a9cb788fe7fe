"""Per-epoch sleep-staging metrics (DESIGN.md §7). Unscored epochs (label -1) are excluded."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

from distsleep.stages import NUM_STAGES, STAGE_NAMES


def staging_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, macro-F1, Cohen's kappa, per-stage F1 and the confusion matrix (rows = truth).

    A stage neither scored nor predicted (a night without N3) has no F1 (NaN) and macro-F1 is the mean over the
    other stages, as sklearn's macro average over the labels present: scoring it 0 would mark a perfect night
    without N3 down to 0.8. A stage scored but never predicted, or predicted but never scored, has F1 0."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scored = y_true >= 0
    t, p = y_true[scored], y_pred[scored]
    labels = list(range(NUM_STAGES))
    per_class = f1_score(t, p, labels=labels, average=None, zero_division=np.nan)
    return {
        "n_epochs": int(scored.sum()),
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan"),
        "kappa": float(cohen_kappa_score(t, p, labels=labels)),
        "f1": {name: float(v) for name, v in zip(STAGE_NAMES, per_class)},
        "confusion": confusion_matrix(t, p, labels=labels).tolist(),
    }


def format_confusion(confusion: list[list[int]]) -> str:
    """The confusion matrix as an aligned text table, rows = truth, columns = prediction."""
    width = max(6, max(len(str(v)) for row in confusion for v in row) + 1)
    lines = ["true\\pred" + "".join(f"{name:>{width}}" for name in STAGE_NAMES)]
    for name, row in zip(STAGE_NAMES, confusion):
        lines.append(f"{name:<9}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def format_values(values, spec: str = "") -> str:
    """A row of named figures for the console, "W 231  N1 59  N2 784": every summary line prints them this way.
    `values` is a mapping or (name, value) pairs; `spec` formats each value (".3f", ".2%" ...)."""
    pairs = values.items() if hasattr(values, "items") else values
    return "  ".join(f"{name} {value:{spec}}" for name, value in pairs)
