"""The epoch metrics (distsleep.metrics, distsleep.tasks) are sklearn's figures, on the cases that matter for
sleep staging: missing stages, unscored epochs, stages never predicted, tied probabilities, one class only."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score

from distsleep.metrics import auroc, confusion_metrics, staging_metrics
from distsleep.tasks import binary_metrics

REPO = Path(__file__).resolve().parents[1]


def _same(ours: float, theirs: float) -> bool:
    return (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-12)


def _staging_cases():
    rng = np.random.default_rng(7)
    for size in (1, 7, 40, 500):
        for stages in ([0, 1, 2, 3, 4], [0, 2, 4], [2]):
            true = rng.choice(stages, size)
            predicted = np.where(rng.random(size) < 0.3, rng.integers(0, 5, size), true)
            true[rng.random(size) < 0.1] = -1  # unscored
            yield true, predicted
    yield np.array([0, 0, 1, 1]), np.array([2, 2, 2, 2])  # stages scored but never predicted, one never scored
    yield np.array([3, 3, 3]), np.array([3, 3, 3])  # one stage only, both raters: kappa undefined


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_staging_metrics_are_sklearns():
    labels = list(range(5))
    for true, predicted in _staging_cases():
        ours = staging_metrics(true, predicted)
        scored = true >= 0
        t, p = true[scored], predicted[scored]
        if not len(t):
            continue
        per_class = f1_score(t, p, labels=labels, average=None, zero_division=np.nan)
        assert ours["n_epochs"] == len(t)
        assert _same(ours["accuracy"], accuracy_score(t, p))
        assert _same(ours["kappa"], cohen_kappa_score(t, p, labels=labels)), (t, p)
        assert all(_same(ours["f1"][name], v) for name, v in zip(ours["f1"], per_class)), (t, p)
        assert _same(ours["macro_f1"], float(np.nanmean(per_class)))
        assert ours["confusion"] == confusion_matrix(t, p, labels=labels).tolist()


def test_a_stack_of_confusion_matrices_is_scored_like_each_alone():
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 30, size=(6, 5, 5))
    stack[2, :, 4] = stack[2, 4, :] = 0  # a stage neither scored nor predicted: out of the macro-F1
    together = confusion_metrics(stack)
    for i, matrix in enumerate(stack):
        alone = confusion_metrics(matrix)
        assert all(_same(float(together[k][i]), float(alone[k])) for k in together)
    t = np.repeat(np.arange(5), stack[2].sum(axis=1))
    p = np.concatenate([np.repeat(np.arange(5), row) for row in stack[2]])
    assert _same(float(together["macro_f1"][2]), staging_metrics(t, p)["macro_f1"])
    assert math.isnan(float(confusion_metrics(np.zeros((5, 5)))["accuracy"]))  # no epochs: no figures


def test_binary_metrics_and_auroc_are_sklearns():
    rng = np.random.default_rng(11)
    for size in (2, 9, 300):
        for prevalence in (0.05, 0.5):
            t = (rng.random(size) < prevalence).astype(np.int64)
            t[0], t[-1] = 0, 1  # both classes
            scores = np.round(rng.random(size) * (0.3 + 0.7 * t), 1)  # tenths: many tied scores
            t_marked = t.copy()
            t_marked[rng.random(size) < 0.1] = -1  # unscored epochs are left out
            ours = binary_metrics(t_marked, scores, ["none", "apnea"])
            keep = t_marked >= 0
            tt, ss = t_marked[keep], scores[keep]
            pred = (ss >= 0.5).astype(np.int64)
            per_class = f1_score(tt, pred, labels=[0, 1], average=None, zero_division=0)
            expected_auroc = roc_auc_score(tt, ss) if len(np.unique(tt)) == 2 else math.nan
            assert _same(ours["auroc"], expected_auroc), (tt, ss)
            assert _same(ours["accuracy"], accuracy_score(tt, pred))
            assert _same(ours["kappa"], cohen_kappa_score(tt, pred, labels=[0, 1]))
            assert _same(ours["f1_positive"], per_class[1]) and _same(ours["macro_f1"], float(np.mean(per_class)))
            assert ours["confusion"] == confusion_matrix(tt, pred, labels=[0, 1]).tolist()
    assert math.isnan(auroc([1, 1, 1], [0.2, 0.4, 0.9]))  # one class: no ROC curve
    assert auroc([0, 1], [0.5, 0.5]) == 0.5 and auroc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0


def test_training_workers_do_not_import_sklearn():
    """Every training worker and Ray Train controller imports the loop: sklearn.metrics would add ~0.8 s of CPU
    to each (distsleep.metrics says why the formulas are ours)."""
    code = "import sys, distsleep.train.loop; print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
