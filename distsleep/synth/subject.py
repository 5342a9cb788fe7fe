"""Per-subject physiology knobs of the synthetic cohort.

Subjects differ the way real SHHS participants do: EEG amplitude (skull, age), alpha and spindle
frequency, slow-wave propensity (age), chin-EMG tone and depth of REM atonia, how much frontal EEG the
EOG electrodes pick up, breathing rate, heart rate, and apnea-hypopnea index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from distsleep.synth.hypnogram import SleepArchitecture


@dataclass(frozen=True)
class Subject:
    age: int
    male: bool
    eeg_gain: float  # multiplies all EEG amplitudes
    alpha_hz: float  # posterior dominant rhythm
    alpha_reactivity: float  # how strongly relaxed wake shows alpha at C4
    spindle_hz: float
    spindle_density: float  # multiplies the N2 spindle rate
    kcomplex_density: float
    emg_gain: float  # chin EMG amplitude scale
    rem_atonia: float  # REM EMG as a fraction of N2 EMG (lower = deeper atonia)
    eog_leak: float  # fraction of frontal EEG volume-conducted into the EOG channels
    eye_gain: float  # amplitude of eye movements
    noise_uv: float  # amplifier/electrode noise (uV rms)
    artifact_rate: float  # movement artifacts per wake epoch
    resp_rate_hz: float
    heart_rate: float  # resting heart rate in N2 (bpm)
    spo2_baseline: float
    ahi: float  # respiratory events per hour of sleep
    architecture: SleepArchitecture

    def to_dict(self) -> dict:
        return asdict(self)


def draw_subject(rng: np.random.Generator, ahi_median: float = 8.0) -> Subject:
    """One subject. `ahi_median` shifts the log-normal AHI distribution (8/h ~ SHHS1's population median;
    ~30/h gives a severe-apnea clinic cohort); the other draws do not depend on it."""
    age = int(np.clip(rng.normal(63, 11), 39, 90))  # SHHS1 enrolled adults aged 40+
    male = bool(rng.random() < 0.47)
    youth = (80 - age) / 40.0  # ~1 for 40-year-olds, ~0 for 80-year-olds
    architecture = SleepArchitecture(
        sleep_latency_min=float(np.clip(rng.lognormal(np.log(22), 0.6), 3, 90)),
        cycle_min=float(rng.normal(92, 8)),
        sws_propensity=float(np.clip(0.35 + 0.9 * youth + rng.normal(0, 0.25), 0.1, 1.6)),
        rem_propensity=float(np.clip(rng.normal(1.0, 0.2), 0.5, 1.5)),
        fragmentation=float(np.clip(rng.lognormal(np.log(1.0 + 0.6 * (1 - youth)), 0.4), 0.3, 3.5)),
        final_wake_min=float(np.clip(rng.lognormal(np.log(25), 0.7), 2, 120)),
        s4_fraction=float(np.clip(rng.normal(0.15 + 0.3 * youth, 0.08), 0.0, 0.7)),
    )
    return Subject(
        age=age,
        male=male,
        eeg_gain=float(np.clip(rng.lognormal(np.log(1.0 - 0.1 * male), 0.15), 0.7, 1.4)),
        alpha_hz=float(np.clip(rng.normal(9.8, 0.7), 8.0, 12.0)),
        alpha_reactivity=float(np.clip(rng.lognormal(0, 0.35), 0.3, 2.5)),
        spindle_hz=float(np.clip(rng.normal(13.0, 0.6), 11.5, 15.0)),
        spindle_density=float(np.clip(rng.lognormal(np.log(0.6 + 0.5 * youth), 0.35), 0.2, 2.0)),
        kcomplex_density=float(np.clip(rng.lognormal(0, 0.3), 0.3, 2.5)),
        emg_gain=float(rng.lognormal(0, 0.4)),
        rem_atonia=float(np.clip(rng.normal(0.32, 0.1), 0.12, 0.7)),
        eog_leak=float(np.clip(rng.normal(0.35, 0.1), 0.1, 0.6)),
        eye_gain=float(rng.lognormal(0, 0.25)),
        noise_uv=float(rng.uniform(1.0, 3.0)),
        artifact_rate=float(rng.uniform(0.05, 0.25)),
        resp_rate_hz=float(np.clip(rng.normal(0.25, 0.03), 0.17, 0.35)),
        heart_rate=float(np.clip(rng.normal(62, 8), 45, 90)),
        spo2_baseline=float(np.clip(rng.normal(95.5, 1.2), 91, 98.5)),
        ahi=float(np.clip(rng.lognormal(np.log(ahi_median), 0.9), 0.5, 70)),
        architecture=architecture,
    )
