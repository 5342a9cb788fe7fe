"""Per-epoch classification metrics (DESIGN.md §7), from confusion matrices. Unscored epochs (label -1) are
excluded.

The formulas are sklearn's (`accuracy_score`, `cohen_kappa_score`, `f1_score`, `roc_auc_score`; the tests check
every figure against it), written here on confusion matrices because they are then one home for a single night,
a pooled set and thousands of bootstrap resamples at once, and because importing sklearn.metrics costs ~0.8 s
of CPU in every process that imports the training loop (each training worker and Ray Train controller).
"""

from __future__ import annotations

import numpy as np

from distsleep.stages import NUM_STAGES, STAGE_NAMES


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = truth; a pair with a label outside 0..n_classes-1 is not counted."""
    t, p = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    keep = (t >= 0) & (t < n_classes) & (p >= 0) & (p < n_classes)
    return np.bincount(n_classes * t[keep] + p[keep], minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def class_f1(matrices, zero_division: float = np.nan) -> np.ndarray:
    """F1 of each class of each (..., K, K) confusion matrix: 2·TP / (2·TP + FP + FN), `zero_division` for a
    class neither true nor predicted."""
    matrices = np.asarray(matrices, dtype=float)
    diagonal = np.diagonal(matrices, axis1=-2, axis2=-1)
    both = matrices.sum(axis=-1) + matrices.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(both > 0, 2 * diagonal / both, zero_division)


def confusion_metrics(matrices) -> dict[str, np.ndarray]:
    """Accuracy, Cohen's kappa and macro-F1 (over the classes that occur) of each (..., K, K) confusion matrix;
    NaN where undefined (no epochs; kappa when both raters used one class only)."""
    matrices = np.asarray(matrices, dtype=float)
    n = matrices.sum(axis=(-2, -1))
    rows, cols = matrices.sum(axis=-1), matrices.sum(axis=-2)
    f1 = class_f1(matrices)
    present = np.isfinite(f1).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.diagonal(matrices, axis1=-2, axis2=-1).sum(axis=-1) / n
        expected = (rows * cols).sum(axis=-1) / n**2
        kappa = (observed - expected) / (1 - expected)
        macro_f1 = np.where(present > 0, np.nansum(f1, axis=-1) / present, np.nan)
    return {"accuracy": observed, "kappa": kappa, "macro_f1": macro_f1}


def auroc(y_true, scores) -> float:
    """Area under the ROC curve of binary targets (0/1) ranked by `scores`: the Mann-Whitney statistic, a tie
    between a positive and a negative counting half; NaN unless both classes occur."""
    positive = np.asarray(y_true).ravel() == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64).ravel(), return_inverse=True,
                                   return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, tied scores share their mean rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def staging_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, macro-F1, Cohen's kappa, per-stage F1 and the confusion matrix (rows = truth).

    A stage neither scored nor predicted (a night without N3) has no F1 (NaN) and macro-F1 is the mean over the
    other stages, as sklearn's macro average over the labels present: scoring it 0 would mark a perfect night
    without N3 down to 0.8. A stage scored but never predicted, or predicted but never scored, has F1 0."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scored = y_true >= 0
    return pooled_metrics(confusion(y_true[scored], y_pred[scored], NUM_STAGES))


def pooled_metrics(counts) -> dict:
    """staging_metrics' figures from a confusion matrix (rows = truth) alone: also for results pooled from parts
    whose labels are not at hand, such as the test folds of a cross-validation (sums of their matrices)."""
    matrix = np.asarray(counts, dtype=np.int64)
    summary = confusion_metrics(matrix)
    return {"n_epochs": int(matrix.sum()), **{name: float(value) for name, value in summary.items()},
            "f1": {name: float(v) for name, v in zip(STAGE_NAMES, class_f1(matrix))}, "confusion": matrix.tolist()}


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
