"""YASA on a small synthetic cohort: a guard that the physiology still reads as sleep to a stager trained
on real NSRR nights. (The realism bar itself — 20 nights — is `jobs/benchmark.py synth-realism`.)"""

from __future__ import annotations

from distsleep.synth.cohort import CohortConfig, generate_cohort
from distsleep.synth.realism import RealismBar, score_cohort


def test_yasa_recognises_synthetic_stages(tmp_path):
    generate_cohort(tmp_path, CohortConfig(n_records=2, hours=4.0, seed=21, workers=2), progress=False)
    result = score_cohort(tmp_path, workers=2, progress=False)
    full = result["eeg_eog_emg"]
    # Both nights scored; only movement epochs (unscored) are left out of the metrics.
    assert result["n_records"] == 2 and 940 <= full["n_epochs"] <= 960
    assert full["kappa"] > 0.65, full
    assert min(full["f1"][s] for s in ("W", "N2", "N3", "REM")) > 0.5, full["f1"]
    # EEG alone carries less information than EEG+EOG+EMG, as on real nights.
    assert result["eeg_only"]["kappa"] < full["kappa"]


def test_realism_bar_rules():
    bar = RealismBar()
    good = {"kappa": 0.8, "f1": {"W": 0.9, "N1": 0.4, "N2": 0.85, "N3": 0.8, "REM": 0.85}}
    assert bar.failures(good) == []
    assert bar.failures({**good, "kappa": 0.95}) == ["kappa 0.950 outside [0.75, 0.9]"]
    crude = {"kappa": 0.8, "f1": {"W": 0.9, "N1": 0.1, "N2": 0.98, "N3": 0.8, "REM": 0.85}}
    assert bar.failures(crude) == ["N1 F1 0.100 outside [0.3, 0.95]", "N2 F1 0.980 outside [0.3, 0.95]"]
    assert "N1 is not the stage with the lowest F1" in bar.failures({**good, "f1": {**good["f1"], "N3": 0.35}})
