"""Sleep-stage codes shared by readers, shards, models and metrics.

AASM five-class scheme: W=0, N1=1, N2=2, N3=3 (R&K S3+S4), REM=4. Epochs that carry no usable stage
(R&K movement time, unscored, '?') are kept as UNSCORED so that signal and label sequences stay aligned;
they are masked out of losses and metrics, never mapped to Wake.
"""

from __future__ import annotations

import numpy as np

W, N1, N2, N3, REM = 0, 1, 2, 3, 4
UNSCORED = -1
STAGE_NAMES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
NUM_STAGES = len(STAGE_NAMES)
EPOCH_SECONDS = 30.0

# R&K / Compumedics integer codes (Profusion SleepStage, NSRR "Concept|code") -> AASM code.
RK_CODE_TO_STAGE: dict[int, int] = {0: W, 1: N1, 2: N2, 3: N3, 4: N3, 5: REM, 6: UNSCORED, 9: UNSCORED}


def stage_counts(labels: np.ndarray) -> dict[str, int]:
    """Epochs per stage, keyed W, N1, N2, N3, REM, unscored (the `inspect --json` contract)."""
    labels = np.asarray(labels)
    counts = {name: int(np.count_nonzero(labels == code)) for code, name in enumerate(STAGE_NAMES)}
    counts["unscored"] = int(np.count_nonzero(labels == UNSCORED))
    return counts
