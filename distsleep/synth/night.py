"""One synthetic SHHS1 night: hypnogram, subject, events and all 14 signals at SHHS1 rates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distsleep.stages import EPOCH_SECONDS, RK_CODE_TO_STAGE
from distsleep.synth import physiology as phys
from distsleep.synth.hypnogram import generate_hypnogram
from distsleep.synth.subject import Subject, draw_subject


@dataclass(frozen=True)
class SignalSpec:
    label: str
    rate: int
    unit: str
    physical_range: tuple[float, float]
    transducer: str = ""
    prefiltering: str = ""


# The SHHS1 EDF layout, in file order (DESIGN.md §2).
SHHS1_SIGNALS: tuple[SignalSpec, ...] = (
    SignalSpec("SaO2", 1, "%", (0.0, 100.0), "Oximeter"),
    SignalSpec("PR", 1, "bpm", (0.0, 250.0), "Oximeter"),
    SignalSpec("EEG(sec)", 125, "uV", (-500.0, 500.0), "EEG electrode", "HP:0.15Hz LP:64Hz"),
    SignalSpec("ECG", 250, "mV", (-2.5, 2.5), "ECG electrode", "HP:0.05Hz LP:64Hz"),
    SignalSpec("EMG", 125, "uV", (-250.0, 250.0), "EMG electrode", "HP:10Hz LP:64Hz"),
    SignalSpec("EOG(L)", 50, "uV", (-1000.0, 1000.0), "EOG electrode", "HP:0.15Hz LP:24Hz"),
    SignalSpec("EOG(R)", 50, "uV", (-1000.0, 1000.0), "EOG electrode", "HP:0.15Hz LP:24Hz"),
    SignalSpec("EEG", 125, "uV", (-500.0, 500.0), "EEG electrode", "HP:0.15Hz LP:64Hz"),
    SignalSpec("AIRFLOW", 10, "", (-2.0, 2.0), "Thermistor"),
    SignalSpec("THOR RES", 10, "", (-2.0, 2.0), "Inductance band"),
    SignalSpec("ABDO RES", 10, "", (-2.0, 2.0), "Inductance band"),
    SignalSpec("POSITION", 1, "", (0.0, 3.0), "Position sensor"),
    SignalSpec("LIGHT", 1, "", (0.0, 1.0), "Light sensor"),
    SignalSpec("OX STAT", 1, "", (0.0, 3.0), "Oximeter"),
)


@dataclass
class SyntheticNight:
    record_id: str
    subject: Subject
    rk_stages: np.ndarray  # R&K codes per epoch (0-5, 6 movement)
    stages: np.ndarray  # AASM codes per epoch (-1 for movement)
    events: phys.NightEvents
    signals: dict[str, np.ndarray]  # by SHHS1 label, in the spec's unit, at the spec's rate

    @property
    def duration(self) -> float:
        return len(self.stages) * EPOCH_SECONDS


def _positions(rng: np.random.Generator, n_seconds: int) -> np.ndarray:
    """Body position (0 right, 1 left, 2 back, 3 front) changing a few times a night."""
    out = np.empty(n_seconds, dtype=np.float32)
    t, pos = 0, int(rng.integers(0, 3))
    while t < n_seconds:
        stay = int(rng.exponential(3600))
        out[t:t + stay + 1] = pos
        t += stay + 1
        pos = int(rng.choice([0, 1, 2, 2, 3]))
    return out


def synthesize_night(seed_sequence: np.random.SeedSequence, record_id: str, hours: float,
                     channels: tuple[str, ...] | None = None, ahi_median: float = 8.0) -> SyntheticNight:
    """All signals of one night. `channels` limits synthesis to some labels (everything by default);
    the random streams are split per signal family so a subset gives the same values as the full set."""
    streams = [np.random.default_rng(s) for s in seed_sequence.spawn(9)]
    subject = draw_subject(streams[0], ahi_median)
    n_epochs = int(round(hours * 3600 / EPOCH_SECONDS))
    rk = generate_hypnogram(streams[1], n_epochs, subject.architecture)
    stages = np.array([RK_CODE_TO_STAGE[int(c)] for c in rk], dtype=np.int8)
    # Physiology treats movement epochs (unscored) as wake.
    phys_stages = np.where(stages < 0, 0, stages).astype(np.int8)
    events = phys.place_events(streams[2], phys_stages, subject)
    drowsy = phys.drowsiness(streams[8], phys_stages)
    n_seconds = int(n_epochs * EPOCH_SECONDS)
    want = set(channels) if channels is not None else {s.label for s in SHHS1_SIGNALS}

    signals: dict[str, np.ndarray] = {}
    eeg = None
    if want & {"EEG", "EEG(sec)", "EOG(L)", "EOG(R)"}:
        eeg = phys.synth_eeg(streams[3], phys_stages, subject, events, drowsy)
        noise = np.random.default_rng(seed_sequence.spawn(1)[0])
        signals["EEG"] = eeg.central + phys.band_noise(noise, len(eeg.central), 125, 0.3, 62, 0.5) * subject.noise_uv
        signals["EEG(sec)"] = eeg.central_other + phys.band_noise(noise, len(eeg.central), 125, 0.3, 62, 0.5) * subject.noise_uv
    if want & {"EOG(L)", "EOG(R)"}:
        signals["EOG(L)"], signals["EOG(R)"] = phys.synth_eog(streams[4], phys_stages, subject, eeg, drowsy)
    if "EMG" in want:
        signals["EMG"] = phys.synth_emg(streams[5], phys_stages, subject, events, drowsy)
    if want & {"ECG", "PR"}:
        beats = phys.beat_times(streams[6], phys_stages, subject, events)
        signals["ECG"] = phys.synth_ecg(streams[6], beats, n_seconds)
        rr = np.diff(beats)
        signals["PR"] = np.round(np.interp(np.arange(n_seconds) + 0.5, beats[1:], 60.0 / rr)).astype(np.float32)
    rng = streams[7]
    if want & {"AIRFLOW", "THOR RES", "ABDO RES"}:
        signals["AIRFLOW"], signals["THOR RES"], signals["ABDO RES"] = phys.synth_respiration(rng, n_seconds, subject, events)
    if "SaO2" in want:
        signals["SaO2"] = phys.synth_spo2(rng, n_seconds, subject, events)
    if "POSITION" in want:
        signals["POSITION"] = _positions(rng, n_seconds)
    if "LIGHT" in want:
        signals["LIGHT"] = np.zeros(n_seconds, dtype=np.float32)  # lights off for the whole recording
    if "OX STAT" in want:
        signals["OX STAT"] = np.full(n_seconds, 1.0, dtype=np.float32)
    signals = {label: data for label, data in signals.items() if label in want}
    return SyntheticNight(record_id=record_id, subject=subject, rk_stages=rk, stages=stages, events=events, signals=signals)
