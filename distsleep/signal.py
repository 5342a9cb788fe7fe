"""Signal processing shared by preprocessing, baselines and training (pure NumPy/SciPy functions)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import signal as sps


def resample(x: np.ndarray, fs_from: float, fs_to: float) -> np.ndarray:
    """Polyphase resampling by the exact rational factor (125 -> 100 Hz is 4/5), float32 out.

    A polyphase FIR is both faster and cleaner than FFT resampling of a whole night, and rational
    factors keep sample counts exact: n_out = n_in * fs_to / fs_from.
    """
    if fs_from == fs_to:
        return np.asarray(x, dtype=np.float32)
    ratio = Fraction(fs_to).limit_denominator(1000) / Fraction(fs_from).limit_denominator(1000)
    return sps.resample_poly(np.asarray(x, dtype=np.float64), ratio.numerator, ratio.denominator).astype(np.float32)
