"""A generative model of one night's hypnogram with real sleep architecture.

Cycles of ~90 min (N1 → N2 → N3 → N2 → REM); N3 is long in the first cycles and fades, REM lengthens
towards morning; brief awakenings (followed by N1) become more frequent late in the night; a few
stage-shifts inside blocks (N2↔N3, REM↔N1) keep stage runs from being unrealistically long. Output is
in R&K codes (0 W, 1 S1, 2 S2, 3 S3, 4 S4, 5 REM, 6 movement) as Compumedics scores them; map to AASM
with `distsleep.stages.RK_CODE_TO_STAGE`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RK_W, RK_S1, RK_S2, RK_S3, RK_S4, RK_REM, RK_MOVEMENT = 0, 1, 2, 3, 4, 5, 6
EPOCHS_PER_MIN = 2


@dataclass(frozen=True)
class SleepArchitecture:
    """Per-subject knobs of the hypnogram model (drawn by `subject.draw_subject`)."""

    sleep_latency_min: float = 15.0  # lights-off to first sleep
    cycle_min: float = 92.0  # mean NREM-REM cycle length
    sws_propensity: float = 1.0  # scales N3 (young ≈ 1.4, old ≈ 0.3)
    rem_propensity: float = 1.0  # scales REM block lengths
    fragmentation: float = 1.0  # scales the rate of brief awakenings
    final_wake_min: float = 20.0  # wake between final awakening and the end of the recording
    s4_fraction: float = 0.3  # share of N3 scored as R&K S4 (deepest part of a block)


def _minutes(rng: np.random.Generator, mean: float, sd: float, low: float = 0.5) -> int:
    """A duration in epochs, normal in minutes and bounded below."""
    return int(round(max(low, rng.normal(mean, sd)) * EPOCHS_PER_MIN))


def _cycle_blocks(rng: np.random.Generator, k: int, arch: SleepArchitecture) -> list[tuple[int, int]]:
    """(R&K stage, epochs) blocks of the k-th NREM-REM cycle, before fragmentation."""
    cycle = max(60.0, rng.normal(arch.cycle_min, 10.0))
    n1 = max(0.5, rng.normal(2.0 if k == 0 else 1.0, 0.8))
    n3_mean = arch.sws_propensity * (40.0, 26.0, 10.0, 3.0)[min(k, 3)]
    n3 = max(0.0, rng.normal(n3_mean, 0.3 * n3_mean + 1.0)) if n3_mean > 1.0 else 0.0
    rem = max(2.0, arch.rem_propensity * rng.normal(min(8.0 + 9.0 * k, 38.0), 4.0))
    n2_total = max(8.0, cycle - n1 - n3 - rem)
    descent = n2_total * rng.uniform(0.35, 0.65)
    blocks = [(RK_S1, n1), (RK_S2, descent)]
    if n3 > 0.5:
        blocks += [(RK_S3, n3), (RK_S2, n2_total - descent)]
    else:
        blocks += [(RK_S2, n2_total - descent)]
    blocks.append((RK_REM, rem))
    return [(stage, max(1, int(round(minutes * EPOCHS_PER_MIN)))) for stage, minutes in blocks]


def _fragment(rng: np.random.Generator, stages: list[int], hour: np.ndarray, arch: SleepArchitecture) -> np.ndarray:
    """Brief awakenings, stage shifts and arousal-driven N1 inside the blocks."""
    out = np.array(stages, dtype=np.int8)
    n = len(out)
    i = 0
    while i < n:
        stage = out[i]
        # Awakenings: rarer from deep sleep, commoner late in the night and in REM.
        p_wake = 0.006 * arch.fragmentation * (1.0 + 0.25 * hour[i])
        p_wake *= {RK_S1: 1.5, RK_S2: 1.0, RK_S3: 0.15, RK_S4: 0.05, RK_REM: 1.3}.get(int(stage), 0.0)
        if rng.random() < p_wake:
            length = 1 + rng.geometric(0.45) if rng.random() < 0.85 else _minutes(rng, 6.0, 4.0)
            end = min(n, i + length)
            out[i:end] = RK_W
            if rng.random() < 0.04:
                out[i] = RK_MOVEMENT
            # Re-entry to sleep goes through N1 for a few epochs.
            n1_len = rng.integers(0, 3)
            out[end:min(n, end + n1_len)] = np.where(out[end:min(n, end + n1_len)] != RK_W, RK_S1, RK_W)
            i = end + n1_len
            continue
        if stage == RK_S2 and rng.random() < 0.008:  # light N1 intrusions
            out[i:min(n, i + rng.integers(1, 3))] = RK_S1
        elif stage in (RK_S3, RK_S4) and rng.random() < 0.06:  # N3 lightens briefly
            out[i:min(n, i + rng.integers(1, 4))] = RK_S2
        elif stage == RK_REM and rng.random() < 0.015:
            out[i:min(n, i + rng.integers(1, 3))] = RK_S1
        i += 1
    return out


def _assign_s4(rng: np.random.Generator, rk: np.ndarray, s4_fraction: float) -> None:
    """Within each S3 run, the deepest middle part becomes S4 (in place)."""
    is_n3 = rk == RK_S3
    edges = np.flatnonzero(np.diff(np.concatenate([[0], is_n3.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        length = stop - start
        core = int(round(length * s4_fraction * rng.uniform(0.5, 1.5)))
        if length >= 6 and core > 0:
            mid = start + (length - core) // 2
            rk[mid:mid + core] = RK_S4


def generate_hypnogram(rng: np.random.Generator, n_epochs: int, arch: SleepArchitecture) -> np.ndarray:
    """R&K stage codes (int8) for `n_epochs` 30-s epochs of one recording (lights off to lights on)."""
    # Short recordings (demos, tests) keep the same architecture with proportionally shorter wake at
    # either end, so that they still contain sleep; nights of 8 h and more are unaffected.
    shrink = min(1.0, n_epochs / (8 * 60 * EPOCHS_PER_MIN))
    stages: list[int] = [RK_W] * _minutes(rng, shrink * arch.sleep_latency_min, 0.5 * shrink * arch.sleep_latency_min, low=1.0)
    final_wake = _minutes(rng, shrink * arch.final_wake_min, 0.5 * shrink * arch.final_wake_min, low=1.0)
    k = 0
    while len(stages) < n_epochs - final_wake:
        for stage, length in _cycle_blocks(rng, k, arch):
            stages.extend([stage] * length)
        # Sometimes a cycle ends in a longer awakening (WASO).
        if rng.random() < 0.4 * arch.fragmentation:
            stages.extend([RK_W] * _minutes(rng, 9.0, 6.0))
        k += 1
    stages = stages[: max(0, n_epochs - final_wake)] + [RK_W] * final_wake
    stages = stages[:n_epochs]
    hour = np.arange(n_epochs) / (60.0 * EPOCHS_PER_MIN)
    rk = _fragment(rng, stages, hour, arch)
    _assign_s4(rng, rk, arch.s4_fraction)
    return rk
