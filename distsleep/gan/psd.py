"""Real vs generated power spectra: Welch PSDs, a distance in dB, and its reference floor.

Distance between two sets of epochs, per channel: the mean over the frequency bins inside `band`
(default 0.5-40 Hz) of |10 log10 mean_PSD_a(f) - 10 log10 mean_PSD_b(f)|, where mean_PSD is the average
Welch PSD (4-s Hann windows, 50 % overlap, 0.25 Hz resolution) over the epochs of the set.

Two sets of real epochs also differ, by sampling noise and between-record variability, so a distance
alone does not say whether a generator is good. The reference floor is the same distance between two
disjoint random halves of the real epochs; the generated set is compared with each half (same number of
epochs on both sides, so the two figures carry the same sampling noise) and the two distances averaged.
A generator whose distance is near the floor has a mean spectrum as close to the real one as real data
are to themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import welch

from distsleep.plots import pyplot


def welch_psd(x: np.ndarray, fs: float = 100.0, seconds: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(freqs (F,), psd (N, C, F)) in uV^2/Hz of epochs (N, C, T) in uV."""
    nperseg = min(int(round(seconds * fs)), x.shape[-1])
    freqs, psd = welch(np.asarray(x, dtype=np.float64), fs=fs, nperseg=nperseg, noverlap=nperseg // 2, axis=-1)
    return freqs, psd


def distance_db(psd_a: np.ndarray, psd_b: np.ndarray, freqs: np.ndarray, band=(0.5, 40.0)) -> np.ndarray:
    """Per-channel mean |difference| of the mean log PSDs in dB over `band`: (N_a, C, F), (N_b, C, F) -> (C,)."""
    keep = (freqs >= band[0]) & (freqs <= band[1])
    tiny = np.finfo(np.float64).tiny
    a = 10 * np.log10(psd_a.mean(axis=0)[:, keep] + tiny)
    b = 10 * np.log10(psd_b.mean(axis=0)[:, keep] + tiny)
    return np.abs(a - b).mean(axis=1)


def compare_psd(real: np.ndarray, generated: np.ndarray, channels, fs: float = 100.0, band=(0.5, 40.0),
                seed: int = 0) -> dict:
    """Distance of generated to real epochs and the real-half vs real-half floor (module docstring).

    real, generated: (N, C, T) uV. Uses len(real) // 2 epochs per half and as many generated epochs.
    Returns a JSON-ready dict; "curves" holds what `psd_png` draws.
    """
    if len(real) < 4:
        raise ValueError(f"need at least 4 real epochs for two halves, got {len(real)}")
    order = np.random.default_rng(seed).permutation(len(real))
    half = len(real) // 2
    freqs, p_real = welch_psd(real, fs)
    _, p_gen = welch_psd(generated[:half], fs)
    a, b = p_real[order[:half]], p_real[order[half:2 * half]]
    floor = distance_db(a, b, freqs, band)
    dist = (distance_db(p_gen, a, freqs, band) + distance_db(p_gen, b, freqs, band)) / 2

    def curve(psd: np.ndarray) -> dict:
        db = 10 * np.log10(psd + np.finfo(np.float64).tiny)
        return {"mean_db": db.mean(axis=0).tolist(), "std_db": db.std(axis=0).tolist()}

    return {
        "distance_db": float(dist.mean()),
        "floor_db": float(floor.mean()),
        "per_channel": {c: {"distance_db": float(d), "floor_db": float(f)} for c, d, f in zip(channels, dist, floor)},
        "band_hz": [float(band[0]), float(band[1])],
        "n_real": int(2 * half), "n_generated": int(len(p_gen)), "fs": float(fs),
        "method": "mean |10log10 mean Welch PSD a - b| over the band; floor = real half vs real half; "
                  "generated vs each half, averaged",
        "curves": {"freqs": freqs.tolist(), "channels": list(channels), "real": curve(p_real), "generated": curve(p_gen)},
    }


def psd_png(comparisons: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """One row per stage, one panel per channel: mean +- 1 SD (over epochs) of the PSD in dB, real vs generated."""
    stages = list(comparisons)
    channels = comparisons[stages[0]]["curves"]["channels"]
    plt = pyplot()
    fig, axes = plt.subplots(len(stages), len(channels), figsize=(3.6 * len(channels), 2.8 * len(stages)), dpi=110,
                             squeeze=False, sharex=True)
    for row, stage in enumerate(stages):
        comparison = comparisons[stage]
        curves = comparison["curves"]
        freqs = np.asarray(curves["freqs"])
        low, high = comparison["band_hz"]
        keep = (freqs >= min(low, 0.5)) & (freqs <= max(high, 45.0))
        for col, channel in enumerate(channels):
            ax = axes[row, col]
            for name, color in (("real", "black"), ("generated", "tab:orange")):
                mean = np.asarray(curves[name]["mean_db"])[col][keep]
                std = np.asarray(curves[name]["std_db"])[col][keep]
                ax.plot(freqs[keep], mean, color=color, lw=1.1, label=name)
                ax.fill_between(freqs[keep], mean - std, mean + std, color=color, alpha=0.18, lw=0)
            per = comparison["per_channel"][channel]
            ax.set_title(f"{stage} {channel}: {per['distance_db']:.2f} dB (floor {per['floor_db']:.2f})", fontsize=8)
            ax.axvspan(low, high, color="tab:blue", alpha=0.04)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("PSD (dB re 1 uV²/Hz)", fontsize=8)
            if row == len(stages) - 1:
                ax.set_xlabel("frequency (Hz)", fontsize=8)
        axes[row, 0].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
