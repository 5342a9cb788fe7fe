"""How realistic is a synthetic cohort? Score it with YASA's pretrained stager and compare with truth.

YASA agrees with human scorers on real nights at kappa ~0.75-0.85 with N1 the weakest stage, so a
cohort whose agreement falls in the same band (and every stage's F1 in 0.30-0.95, N1 lowest) has
stages that are neither physiologically wrong (too low) nor unrealistically separable (too high).
The cohort is read back from its files through the same readers as real SHHS.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distsleep.baselines.yasa_stager import yasa_predict
from distsleep.metrics import staging_metrics
from distsleep.sources.shhs import find_shhs_pairs, load_shhs_record


@dataclass(frozen=True)
class RealismBar:
    kappa: tuple[float, float] = (0.75, 0.90)
    f1: tuple[float, float] = (0.30, 0.95)

    def failures(self, metrics: dict) -> list[str]:
        """What falls outside the bar (empty when the cohort passes)."""
        problems = []
        lo, hi = self.kappa
        if not lo <= metrics["kappa"] <= hi:
            problems.append(f"kappa {metrics['kappa']:.3f} outside [{lo}, {hi}]")
        lo, hi = self.f1
        for stage, value in metrics["f1"].items():
            if not lo <= value <= hi:
                problems.append(f"{stage} F1 {value:.3f} outside [{lo}, {hi}]")
        if min(metrics["f1"], key=metrics["f1"].get) != "N1":
            problems.append("N1 is not the stage with the lowest F1")
        return problems


def _score_record(args: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    record_id, edf, xml = args
    record = load_shhs_record(edf, xml, roles=("eeg_c4", "eog_l", "emg"), record_id=record_id)
    full = yasa_predict(record)
    eeg_only = yasa_predict(record, eog=None, emg=None)
    return record.stages, full, eeg_only


def score_cohort(root: str | Path, workers: int = 1, progress: bool = True) -> dict:
    """YASA-vs-truth metrics over every SHHS-layout record under `root`, pooled over epochs."""
    pairs = [(rid, str(edf), str(xml)) for rid, edf, xml in find_shhs_pairs(root) if xml is not None]
    if not pairs:
        raise FileNotFoundError(f"{root}: no SHHS-layout EDF/XML pairs found")
    bar = tqdm(total=len(pairs), desc="yasa", unit="rec", disable=not progress)
    results = []
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for result in pool.map(_score_record, pairs):
            results.append(result)
            bar.update()
    bar.close()
    truth = np.concatenate([r[0] for r in results])
    full = staging_metrics(truth, np.concatenate([r[1] for r in results]))
    eeg_only = staging_metrics(truth, np.concatenate([r[2] for r in results]))
    per_record = [staging_metrics(r[0], r[1])["kappa"] for r in results]
    return {"n_records": len(results), "eeg_eog_emg": full, "eeg_only": eeg_only, "per_record_kappa": per_record}
