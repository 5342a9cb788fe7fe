"""Stage-driven synthesis of PSG signals (pure functions of a seeded generator and a hypnogram).

Each signal is a sum of physiological components — 1/f background, alpha, theta, delta, beta rhythms;
spindles, K-complexes, vertex waves, sawtooth waves; blinks, saccades, slow and rapid eye movements;
muscle tone and twitches; heartbeats; breaths — whose amplitudes follow per-epoch latent levels.

Realism (rather than clean, separable classes) comes from three places, as in real nights:
- levels vary epoch to epoch within a stage (not every N2 epoch has a spindle; N3 delta varies; wake is
  sometimes eyes-closed alpha and sometimes eyes-open beta with movements),
- levels change gradually: each latent level is smoothed over neighbouring epochs and interpolated
  sample by sample, so the epoch after a stage change still carries some of the previous stage,
- arousals (spontaneous and after respiratory events) put wake-like bursts inside sleep epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal as sps
from scipy.special import expit

from distsleep.stages import EPOCH_SECONDS, N1, N2, N3, REM, W
from distsleep.synth.subject import Subject

STAGE_INDEX = {W: 0, N1: 1, N2: 2, N3: 3, REM: 4}

# Stage targets (W, N1, N2, N3, REM) of per-epoch latent levels at C4-A1 / chin / EOG; uV rms unless noted.
EEG_BACKGROUND = np.array([8.0, 10.0, 12.0, 13.0, 9.0])
EEG_ALPHA = np.array([7.0, 2.0, 0.8, 0.6, 1.2])  # relaxed wake; multiplied by an eyes-closed factor
EEG_BETA = np.array([4.0, 2.2, 1.6, 1.2, 2.2])
EEG_THETA = np.array([3.0, 7.0, 6.5, 6.0, 6.5])
EEG_DELTA = np.array([4.0, 7.0, 11.0, 42.0, 6.0])
SPINDLES_PER_EPOCH = np.array([0.0, 0.15, 3.0, 0.9, 0.0])
KCOMPLEX_PER_EPOCH = np.array([0.0, 0.1, 1.0, 0.3, 0.0])
VERTEX_PER_EPOCH = np.array([0.0, 1.0, 0.2, 0.0, 0.05])
SAWTOOTH_PER_EPOCH = np.array([0.0, 0.0, 0.0, 0.0, 0.5])
EMG_TONE = np.array([11.0, 6.5, 5.0, 4.6, 0.0])  # REM tone is N2 tone x subject.rem_atonia
SEM_AMPLITUDE = np.array([5.0, 55.0, 4.0, 0.0, 5.0])  # slow rolling eye movements (uV)
REM_PER_EPOCH = np.array([0.0, 0.0, 0.0, 0.0, 6.0])  # rapid eye movements
SACCADES_PER_EPOCH = np.array([8.0, 1.0, 0.0, 0.0, 0.0])  # eyes-open wake
BLINKS_PER_EPOCH = np.array([6.0, 0.5, 0.0, 0.0, 0.0])
HEART_RATE_DELTA = np.array([8.0, 3.0, 0.0, -3.0, 4.0])  # bpm relative to the subject's N2 rate


@dataclass
class NightEvents:
    """Scored events the synthesis places and the annotation writers report (times in seconds)."""

    respiratory: list[tuple[str, float, float]]  # (kind, start, duration): obstructive/central/mixed apnea, hypopnea
    desaturations: list[tuple[float, float, float]]  # (start, duration, drop in % SpO2)
    arousals: list[tuple[float, float]]  # (start, duration)


# ----------------------------------------------------------------------------------------------------
# Generic building blocks
# ----------------------------------------------------------------------------------------------------


def band_noise(rng: np.random.Generator, n: int, fs: float, lo: float, hi: float, exponent: float = 0.0) -> np.ndarray:
    """Unit-rms Gaussian noise with power only in [lo, hi] Hz and a 1/f**exponent spectral slope."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    gain = np.zeros_like(freqs)
    band = (freqs >= lo) & (freqs <= hi)
    gain[band] = freqs[band] ** (-exponent / 2.0) if exponent else 1.0
    # Soft edges so that rhythms have no ringing from a brick-wall filter.
    width = max(0.15 * (hi - lo), 0.2)
    gain *= expit((freqs - lo) / (0.25 * width)) * expit((hi - freqs) / (0.25 * width))
    out = np.fft.irfft(spectrum * gain, n)
    return (out / (out.std() + 1e-12)).astype(np.float32)


def per_sample(levels: np.ndarray, n: int, fs: float, epoch_s: float = EPOCH_SECONDS) -> np.ndarray:
    """Per-epoch levels interpolated linearly between epoch centres to a per-sample envelope."""
    centers = (np.arange(len(levels)) + 0.5) * epoch_s
    return np.interp(np.arange(n) / fs, centers, levels).astype(np.float32)


def smooth_levels(values: np.ndarray, inertia: float) -> np.ndarray:
    """Forward-backward exponential smoothing over epochs: physiology changes over minutes, not at edges."""
    out = np.asarray(values, dtype=np.float64).copy()
    for i in range(1, len(out)):
        out[i] = inertia * out[i - 1] + (1 - inertia) * out[i]
    for i in range(len(out) - 2, -1, -1):
        out[i] = 0.5 * inertia * out[i + 1] + (1 - 0.5 * inertia) * out[i]
    return out


def stage_levels(rng: np.random.Generator, stages: np.ndarray, targets: np.ndarray, spread: float, inertia: float) -> np.ndarray:
    """Latent level per epoch: the stage target, times log-normal epoch-to-epoch variation, smoothed."""
    idx = np.array([STAGE_INDEX[int(s)] for s in stages])
    raw = targets[idx] * rng.lognormal(0.0, spread, size=len(stages))
    return np.maximum(smooth_levels(raw, inertia), 0.0)


def drowsiness(rng: np.random.Generator, stages: np.ndarray) -> np.ndarray:
    """Per-epoch drowsiness in [0, 1] for wake epochs: quiet wake next to sleep is often drowsy (alpha
    drops out, theta and slow eye movements appear, the chin relaxes), the real W/N1 ambiguity."""
    stages = np.asarray(stages)
    asleep = np.flatnonzero(stages != W)
    if asleep.size == 0:
        return np.zeros(len(stages))
    position = np.arange(len(stages))
    after = np.clip(np.searchsorted(asleep, position), 0, asleep.size - 1)  # first sleep epoch at or after
    before = np.clip(after - 1, 0, asleep.size - 1)
    nearest = np.minimum(np.abs(position - asleep[after]), np.abs(position - asleep[before]))
    p = np.select([nearest <= 2, nearest <= 6], [0.7, 0.35], 0.2)
    drowsy = (rng.random(len(stages)) < p) * rng.uniform(0.5, 1.0, len(stages))
    return np.where(stages == W, drowsy, 0.0)


def event_times(rng: np.random.Generator, rate_per_epoch: np.ndarray, epoch_s: float = EPOCH_SECONDS) -> np.ndarray:
    """Times (s) of a Poisson process whose rate varies per epoch."""
    counts = rng.poisson(np.maximum(rate_per_epoch, 0.0))
    epochs = np.repeat(np.arange(len(counts)), counts)
    return np.sort((epochs + rng.random(len(epochs))) * epoch_s)


def add_waveforms(out: np.ndarray, fs: float, times: np.ndarray, make) -> None:
    """Add `make(index) -> waveform` (starting at each time) into `out`, clipped to the recording."""
    for k, t in enumerate(times):
        wave = make(k)
        start = int(np.floor(t * fs))
        skip = max(0, -start)  # a waveform that starts before the recording loses its head
        stop = min(len(out), start + len(wave))
        if start + skip < stop:
            out[start + skip:stop] += wave[skip: stop - start]


def highpass(x: np.ndarray, fs: float, cutoff: float) -> np.ndarray:
    """First-order high-pass, as an AC-coupled PSG amplifier."""
    b, a = sps.butter(1, cutoff / (fs / 2.0), btype="high")
    return sps.lfilter(b, a, x).astype(np.float32)


def resample_to(x: np.ndarray, fs_from: int, fs_to: int) -> np.ndarray:
    g = np.gcd(int(fs_from), int(fs_to))
    return sps.resample_poly(x, int(fs_to) // g, int(fs_from) // g).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Events: arousals, respiratory events, desaturations
# ----------------------------------------------------------------------------------------------------


def place_events(rng: np.random.Generator, stages: np.ndarray, subject: Subject) -> NightEvents:
    """Respiratory events at the subject's AHI (mostly N1/N2/REM), their desaturations and arousals."""
    n_epochs = len(stages)
    asleep = np.isin(stages, (N1, N2, N3, REM))
    stage_weight = np.select([stages == N3, stages == REM, asleep], [0.25, 1.6, 1.0], 0.0)
    rate = subject.ahi / 120.0 * stage_weight  # events per 30-s epoch
    respiratory, desaturations, arousals = [], [], []
    last_end = -1e9
    for t in event_times(rng, rate):
        if t < last_end + 15.0:
            continue
        u = rng.random()
        kind = "hypopnea" if u < 0.68 else "obstructive_apnea" if u < 0.9 else "central_apnea" if u < 0.97 else "mixed_apnea"
        duration = float(np.clip(rng.lognormal(np.log(22 if kind == "hypopnea" else 18), 0.3), 10, 75))
        if t + duration >= n_epochs * EPOCH_SECONDS - 60:
            continue
        respiratory.append((kind, round(float(t), 1), round(duration, 1)))
        last_end = t + duration
        drop = float(np.clip(rng.normal(4.5 if kind == "hypopnea" else 6.5, 2.0), 2.0, 20.0))
        if drop >= 3.0:
            desaturations.append((round(t + duration + rng.uniform(5, 15), 1), round(rng.uniform(12, 30), 1), drop))
        if rng.random() < 0.55:
            arousals.append((round(t + duration - rng.uniform(0, 3), 1), round(rng.uniform(3, 14), 1)))
    # Spontaneous arousals (~8 per hour of sleep, more in light sleep).
    spont_rate = np.select([stages == N1, stages == N2, stages == REM, stages == N3], [0.09, 0.06, 0.06, 0.02], 0.0)
    for t in event_times(rng, spont_rate * subject.architecture.fragmentation):
        if t < n_epochs * EPOCH_SECONDS - 30:
            arousals.append((round(float(t), 1), round(float(rng.uniform(3, 12)), 1)))
    arousals.sort()
    return NightEvents(respiratory=respiratory, desaturations=desaturations, arousals=arousals)


def event_envelope(n: int, fs: float, spans: list[tuple[float, float]], ramp_s: float = 0.7) -> np.ndarray:
    """1 inside each (start, duration) span with short ramps, 0 elsewhere."""
    env = np.zeros(n, dtype=np.float32)
    for start, duration in spans:
        a, b = int(start * fs), int((start + duration) * fs)
        env[max(a, 0):min(b, n)] = 1.0
    if ramp_s > 0:
        k = max(1, int(ramp_s * fs))
        env = np.convolve(env, np.ones(k) / k, mode="same").astype(np.float32)
    return env


# ----------------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------------


@dataclass
class EegSources:
    """Latent EEG at 125 Hz shared by C4-A1, C3-A2 and (volume-conducted) the EOG channels."""

    central: np.ndarray  # C4-A1
    central_other: np.ndarray  # C3-A2
    frontal_leak: np.ndarray  # what the EOG electrodes pick up (slow waves, K-complexes, some alpha)


def synth_eeg(rng: np.random.Generator, stages: np.ndarray, subject: Subject, events: NightEvents, drowsy: np.ndarray, fs: int = 125) -> EegSources:
    n_epochs = len(stages)
    n = int(n_epochs * EPOCH_SECONDS * fs)
    g = subject.eeg_gain

    # Wake alternates between eyes-closed relaxed (alpha) and eyes-open active (beta, movements) periods.
    eyes_closed = smooth_levels((rng.random(n_epochs) < 0.55).astype(float), 0.6)
    alpha_targets = EEG_ALPHA * subject.alpha_reactivity
    alpha_lv = stage_levels(rng, stages, alpha_targets, 0.45, 0.2) * np.where(stages == W, 0.3 + 1.4 * eyes_closed, 1.0)
    beta_lv = stage_levels(rng, stages, EEG_BETA, 0.3, 0.3) * np.where(stages == W, 1.6 - 0.8 * eyes_closed, 1.0)
    theta_lv = stage_levels(rng, stages, EEG_THETA, 0.3, 0.35) * (1.0 + 1.5 * drowsy)
    alpha_lv *= 1.0 - 0.85 * drowsy
    delta_targets = EEG_DELTA * np.array([1.0, 1.0, 1.0, 0.7 + 0.3 * subject.architecture.sws_propensity, 1.0])
    delta_lv = stage_levels(rng, stages, delta_targets, 0.35, 0.45)
    bg_lv = stage_levels(rng, stages, EEG_BACKGROUND, 0.15, 0.5)

    # Slow alpha in REM (1-2 Hz below the waking rhythm) is folded into a wider alpha band.
    alpha = band_noise(rng, n, fs, subject.alpha_hz - 1.2, subject.alpha_hz + 1.2)
    alpha *= 1.0 + 0.5 * band_noise(rng, n, fs, 0.05, 0.5)  # waxing and waning
    theta = band_noise(rng, n, fs, 4.0, 7.5)
    delta = band_noise(rng, n, fs, 0.4, 2.0, exponent=1.0)
    beta = band_noise(rng, n, fs, 16.0, 30.0)
    background = band_noise(rng, n, fs, 0.3, 45.0, exponent=1.6)

    slow = (delta * per_sample(delta_lv, n, fs)).astype(np.float32)
    fast = (
        alpha * per_sample(alpha_lv, n, fs)
        + theta * per_sample(theta_lv, n, fs)
        + beta * per_sample(beta_lv, n, fs)
        + background * per_sample(bg_lv, n, fs)
    )

    # Arousals: 3-15 s of alpha/beta on top of whatever the epoch was.
    arousal = event_envelope(n, fs, events.arousals, ramp_s=1.0)
    fast += arousal * (7.0 * subject.alpha_reactivity * alpha + 5.0 * beta)

    # Graphoelements.
    transients = np.zeros(n, dtype=np.float32)
    idx = np.array([STAGE_INDEX[int(s)] for s in stages])
    spindle_rate = SPINDLES_PER_EPOCH[idx] * subject.spindle_density * rng.gamma(2.5, 1 / 2.5, n_epochs)
    for_spindles = event_times(rng, spindle_rate)

    def spindle(_k: int) -> np.ndarray:
        dur = rng.uniform(0.5, 1.8)
        t = np.arange(int(dur * fs)) / fs
        freq = subject.spindle_hz + rng.normal(0, 0.4)
        return (rng.uniform(15, 40) * np.sin(np.pi * t / dur) ** 2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)

    add_waveforms(transients, fs, for_spindles, spindle)

    kc_rate = KCOMPLEX_PER_EPOCH[idx] * subject.kcomplex_density * rng.gamma(1.2, 1 / 1.2, n_epochs)

    def kcomplex(_k: int) -> np.ndarray:
        t = np.arange(int(1.6 * fs)) / fs
        amp = rng.uniform(50, 140)
        wave = -amp * np.exp(-((t - 0.3) / 0.1) ** 2) + 0.6 * amp * np.exp(-((t - 0.75) / 0.22) ** 2)
        return wave.astype(np.float32)

    kc_times = event_times(rng, kc_rate)
    kc_wave = np.zeros(n, dtype=np.float32)
    add_waveforms(kc_wave, fs, kc_times, kcomplex)

    def vertex(_k: int) -> np.ndarray:
        t = np.arange(int(0.5 * fs)) / fs
        return (-rng.uniform(30, 80) * np.exp(-((t - 0.2) / 0.06) ** 2)).astype(np.float32)

    add_waveforms(transients, fs, event_times(rng, VERTEX_PER_EPOCH[idx] + 0.6 * drowsy), vertex)

    def sawtooth(_k: int) -> np.ndarray:
        dur = rng.uniform(2, 5)
        t = np.arange(int(dur * fs)) / fs
        freq = rng.uniform(2.0, 3.5)
        return (rng.uniform(15, 35) * np.sin(np.pi * t / dur) * sps.sawtooth(2 * np.pi * freq * t, 0.2)).astype(np.float32)

    add_waveforms(transients, fs, event_times(rng, SAWTOOTH_PER_EPOCH[idx] * rng.gamma(1.0, 1.0, n_epochs)), sawtooth)

    # Movement artifacts in active wake: large slow swings with muscle on top, on every head channel.
    artifacts = np.zeros(n, dtype=np.float32)

    def movement(_k: int) -> np.ndarray:
        dur = rng.uniform(1.0, 5.0)
        m = int(dur * fs)
        swing = np.cumsum(rng.standard_normal(m)) / np.sqrt(m)
        swing = (swing - np.linspace(swing[0], swing[-1], m)) * np.hanning(m)
        swing *= rng.uniform(60, 220) / (np.abs(swing).max() + 1e-6)
        return (swing + rng.uniform(10, 30) * np.hanning(m) * rng.standard_normal(m)).astype(np.float32)

    artifact_rate = np.where(stages == W, subject.artifact_rate * 3.0 * (1.0 - drowsy), 0.0)
    add_waveforms(artifacts, fs, event_times(rng, artifact_rate), movement)

    central = g * (slow + fast + transients + kc_wave) + artifacts
    # C3-A2: the same sources seen from the other hemisphere plus its own local activity.
    other_local = band_noise(rng, n, fs, 0.3, 45.0, exponent=1.6) * per_sample(bg_lv, n, fs)
    central_other = g * (0.9 * (slow + kc_wave) + 0.8 * fast + 0.7 * transients) + 0.5 * g * other_local + 0.8 * artifacts
    frontal_leak = g * (1.3 * slow + 1.2 * kc_wave + 0.3 * fast) + 1.5 * artifacts
    return EegSources(central=central.astype(np.float32), central_other=central_other.astype(np.float32), frontal_leak=frontal_leak.astype(np.float32))


def synth_eog(rng: np.random.Generator, stages: np.ndarray, subject: Subject, eeg: EegSources, drowsy: np.ndarray, fs: int = 50, eeg_fs: int = 125) -> tuple[np.ndarray, np.ndarray]:
    """EOG(L), EOG(R) in uV: conjugate horizontal movements (opposite polarity), blinks (same polarity),
    slow rolling movements in drowsiness, rapid eye movements in REM, volume-conducted frontal EEG."""
    n_epochs = len(stages)
    n = int(n_epochs * EPOCH_SECONDS * fs)
    idx = np.array([STAGE_INDEX[int(s)] for s in stages])
    gain = subject.eye_gain

    # Horizontal gaze position: saccades are fast steps (rise ~40 ms); the amplifier's AC coupling
    # turns each step into a sharp deflection that decays over ~1 s.
    rem_density = REM_PER_EPOCH[idx] * rng.gamma(0.8, 1 / 0.8, n_epochs) * (rng.random(n_epochs) < 0.7)
    awake_eyes = 1.0 - drowsy  # drowsy wake is eyes-closed: no blinks, no scanning saccades
    sacc_rate = SACCADES_PER_EPOCH[idx] * awake_eyes * rng.gamma(1.0, 1.0, n_epochs) + rem_density
    times = event_times(rng, sacc_rate)
    steps = np.zeros(n, dtype=np.float32)
    for t in times:
        i = int(t * fs)
        if i < n:
            steps[i] += rng.normal(0, 90.0) * gain
    kernel = np.ones(2, dtype=np.float32) / 2
    position = np.cumsum(np.convolve(steps, kernel, mode="same")).astype(np.float32)
    position = highpass(position, fs, 0.3)

    sem_lv = stage_levels(rng, stages, SEM_AMPLITUDE, 0.5, 0.5) + 40.0 * drowsy
    sem = band_noise(rng, n, fs, 0.1, 0.6) * per_sample(sem_lv, n, fs) * gain

    blink_wave = np.zeros(n, dtype=np.float32)

    def blink(_k: int) -> np.ndarray:
        t = np.arange(int(0.6 * fs)) / fs
        return (rng.uniform(80, 220) * gain * np.exp(-((t - 0.2) / 0.09) ** 2)).astype(np.float32)

    add_waveforms(blink_wave, fs, event_times(rng, BLINKS_PER_EPOCH[idx] * awake_eyes * rng.gamma(1.0, 1.0, n_epochs)), blink)

    leak = resample_to(eeg.frontal_leak, eeg_fs, fs)[:n] * subject.eog_leak
    noise_l = band_noise(rng, n, fs, 0.3, 24.0, exponent=1.0) * subject.noise_uv * 2
    noise_r = band_noise(rng, n, fs, 0.3, 24.0, exponent=1.0) * subject.noise_uv * 2
    horizontal = position + sem
    left = horizontal + blink_wave + leak + noise_l
    right = -horizontal + 0.9 * blink_wave + 0.95 * leak + noise_r
    return left.astype(np.float32), right.astype(np.float32)


def synth_emg(rng: np.random.Generator, stages: np.ndarray, subject: Subject, events: NightEvents, drowsy: np.ndarray, fs: int = 125) -> np.ndarray:
    """Chin EMG in uV: broadband muscle noise whose tone falls W > N1 > N2 > N3, atonia in REM with
    phasic twitches, bursts with movements and arousals, and a little ECG pick-up."""
    n_epochs = len(stages)
    n = int(n_epochs * EPOCH_SECONDS * fs)
    idx = np.array([STAGE_INDEX[int(s)] for s in stages])
    tone = EMG_TONE.copy()
    tone[4] = tone[2] * subject.rem_atonia
    tone_lv = stage_levels(rng, stages, tone * subject.emg_gain, 0.3, 0.3) * (1.0 - 0.6 * drowsy)
    muscle = band_noise(rng, n, fs, 10.0, 62.0)
    emg = muscle * per_sample(tone_lv, n, fs)

    # Phasic REM twitches and wake movement bursts.
    twitch_rate = np.where(idx == 4, 3.0, 0.0) * rng.gamma(1.0, 1.0, n_epochs)
    move_rate = np.where(idx == 0, subject.artifact_rate * 4, 0.0) + np.where(idx == 1, 0.2, 0.0)

    def burst(_k: int, lo: float, hi: float, amp: float) -> np.ndarray:
        dur = rng.uniform(lo, hi)
        m = int(dur * fs)
        return (amp * subject.emg_gain * np.hanning(m) * rng.standard_normal(m)).astype(np.float32)

    add_waveforms(emg, fs, event_times(rng, twitch_rate), lambda k: burst(k, 0.1, 0.4, 6.0))
    add_waveforms(emg, fs, event_times(rng, move_rate), lambda k: burst(k, 1.0, 6.0, 40.0))
    arousal = event_envelope(n, fs, events.arousals, ramp_s=1.0)
    emg += arousal * muscle * 8.0 * subject.emg_gain
    emg += band_noise(rng, n, fs, 1.0, 62.0) * subject.noise_uv
    return emg.astype(np.float32)


def beat_times(rng: np.random.Generator, stages: np.ndarray, subject: Subject, events: NightEvents) -> np.ndarray:
    """R-peak times (s): stage-dependent heart rate, respiratory sinus arrhythmia, arousal tachycardia."""
    idx = np.array([STAGE_INDEX[int(s)] for s in stages])
    hr_epoch = smooth_levels(subject.heart_rate + HEART_RATE_DELTA[idx] + rng.normal(0, 1.5, len(stages)), 0.6)
    total = len(stages) * EPOCH_SECONDS
    beats, t = [], rng.uniform(0, 0.5)
    arousal_starts = np.array([a for a, _ in events.arousals]) if events.arousals else np.array([])
    while t < total:
        hr = hr_epoch[min(int(t // EPOCH_SECONDS), len(stages) - 1)]
        hr *= 1.0 + 0.04 * np.sin(2 * np.pi * subject.resp_rate_hz * t)
        if arousal_starts.size and np.any((t - arousal_starts > 0) & (t - arousal_starts < 10)):
            hr *= 1.12
        beats.append(t)
        t += 60.0 / hr * (1 + rng.normal(0, 0.015))
    return np.array(beats)


def synth_ecg(rng: np.random.Generator, beats: np.ndarray, n_seconds: float, fs: int = 250) -> np.ndarray:
    """ECG in mV (SHHS stores ECG in mV): a PQRST template at each beat plus baseline wander and noise."""
    n = int(n_seconds * fs)
    t = np.arange(int(0.8 * fs)) / fs - 0.25
    template = (0.12 * np.exp(-((t + 0.16) / 0.025) ** 2) - 0.12 * np.exp(-((t + 0.025) / 0.01) ** 2)
                + 1.1 * np.exp(-(t / 0.011) ** 2) - 0.25 * np.exp(-((t - 0.03) / 0.012) ** 2)
                + 0.3 * np.exp(-((t - 0.3) / 0.05) ** 2))
    ecg = np.zeros(n, dtype=np.float32)
    gain = rng.uniform(0.6, 1.4)
    add_waveforms(ecg, fs, beats - 0.25, lambda _k: (gain * template).astype(np.float32))
    ecg += 0.08 * band_noise(rng, n, fs, 0.05, 0.5) + 0.02 * band_noise(rng, n, fs, 1.0, 100.0)
    return ecg


def synth_respiration(rng: np.random.Generator, n_seconds: float, subject: Subject, events: NightEvents, fs: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AIRFLOW, THOR RES, ABDO RES (arbitrary units, ±1 full scale): breaths whose amplitude collapses in
    apneas (effort continues, paradoxically, in obstructive apnea; stops in central apnea) and halves in
    hypopneas."""
    n = int(n_seconds * fs)
    rate = subject.resp_rate_hz * (1 + 0.08 * band_noise(rng, n, fs, 0.002, 0.02))
    phase = 2 * np.pi * np.cumsum(rate) / fs
    breath = np.sin(phase)
    amp = 0.5 * (1 + 0.2 * band_noise(rng, n, fs, 0.005, 0.05))
    flow_gain = np.ones(n, dtype=np.float32)
    thor_gain = np.ones(n, dtype=np.float32)
    abdo_phase = np.zeros(n, dtype=np.float32)
    for kind, start, duration in events.respiratory:
        a, b = int(start * fs), min(n, int((start + duration) * fs))
        if kind == "hypopnea":
            flow_gain[a:b] *= rng.uniform(0.3, 0.6)
            thor_gain[a:b] *= rng.uniform(0.5, 0.8)
        elif kind == "central_apnea":
            flow_gain[a:b] *= 0.05
            thor_gain[a:b] *= 0.05
        else:  # obstructive / mixed: no flow, effort continues out of phase
            flow_gain[a:b] *= 0.05
            thor_gain[a:b] *= np.linspace(0.8, 1.4, b - a) if b > a else 1.0
            abdo_phase[a:b] = np.pi * 0.8
        # Recovery breaths are large.
        c = min(n, b + int(8 * fs))
        flow_gain[b:c] *= 1.6
        thor_gain[b:c] *= 1.4
    k = int(2 * fs)
    flow_gain = np.convolve(flow_gain, np.ones(k) / k, mode="same")
    thor_gain = np.convolve(thor_gain, np.ones(k) / k, mode="same")
    abdo_phase = np.convolve(abdo_phase, np.ones(k) / k, mode="same")
    airflow = amp * flow_gain * breath + 0.02 * rng.standard_normal(n)
    thor = amp * thor_gain * np.sin(phase) + 0.02 * rng.standard_normal(n)
    abdo = 0.8 * amp * thor_gain * np.sin(phase + abdo_phase) + 0.02 * rng.standard_normal(n)
    return airflow.astype(np.float32), thor.astype(np.float32), abdo.astype(np.float32)


def synth_spo2(rng: np.random.Generator, n_seconds: float, subject: Subject, events: NightEvents) -> np.ndarray:
    """SaO2 at 1 Hz (%): baseline with slow drift and a dip for each scored desaturation."""
    n = int(n_seconds)
    spo2 = subject.spo2_baseline + 0.5 * band_noise(rng, n, 1.0, 0.001, 0.02)
    for start, duration, drop in events.desaturations:
        a = int(start)
        length = max(2, int(duration))
        shape = np.concatenate([np.linspace(0, 1, length // 2), np.linspace(1, 0, length - length // 2)])
        b = min(n, a + length)
        spo2[a:b] -= drop * shape[: b - a]
    return np.clip(np.round(spo2), 50, 100).astype(np.float32)
