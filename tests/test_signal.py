"""distsleep.signal: the block-matrix polyphase resampler against scipy's resample_poly, and percentiles from
the int16 histogram against np.percentile."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from distsleep.signal import percentiles_of_codes, rational_ratio, resample


@pytest.mark.parametrize("fs_from, fs_to, n", [
    (125, 100, 4_050),  # SHHS EEG
    (125, 100, 37),  # shorter than the filter
    (256, 100, 25_600),  # MESA-like
    (200, 100, 20_001),
    (128, 100, 12_800),
    (50, 100, 5_003),  # upsampling
    (100, 100, 1_000),
    (125, 100, 400_003),  # several chunks of output rows: the middle ones read the input in place
    (256, 100, 4_300_001),  # a MESA-sized hour and more, 25/64, with a partial last block
])
def test_resample_matches_scipy_resample_poly(fs_from, fs_to, n):
    rng = np.random.default_rng(n)
    t = np.arange(n) / fs_from
    x = (40 * rng.standard_normal(n) + 80 * np.sin(2 * np.pi * 1.3 * t)).astype(np.float32)
    up, down = rational_ratio(fs_from, fs_to)
    reference = sps.resample_poly(x.astype(np.float64), up, down)
    y = resample(x, fs_from, fs_to)
    assert y.dtype == np.float32 and y.shape == reference.shape == (-(-n * up // down),)
    # float32 sums of float64 filter taps: agreement to ~1e-6 of the amplitude, far below an int16 step
    assert np.max(np.abs(y - reference)) <= 2e-6 * np.max(np.abs(x)) + 1e-6


def test_resample_keeps_a_tone_and_removes_what_the_new_rate_cannot_hold():
    n, fs = 125 * 60, 125
    t = np.arange(n) / fs
    kept = resample(np.sin(2 * np.pi * 10 * t), fs, 100)  # 10 Hz: below the new Nyquist rate (50 Hz)
    gone = resample(np.sin(2 * np.pi * 60 * t), fs, 100)  # 60 Hz: above it, must not alias to 40 Hz
    middle = slice(500, -500)
    assert 0.99 < np.sqrt(2 * np.mean(kept[middle] ** 2)) < 1.01
    assert np.sqrt(2 * np.mean(gone[middle] ** 2)) < 0.01  # resample_poly's Kaiser filter: about -55 dB there


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001, 200_000, 600_001])  # the last: several counting chunks
def test_percentiles_of_codes_equal_numpy(n):
    codes = np.random.default_rng(n).integers(-32768, 32768, n).astype(np.int16)
    if n > 1000:
        codes[:100] = -32768  # extreme values at both ends of the histogram
        codes[100:200] = 32767
    q = (0, 5, 25, 50, 75, 95, 100)
    np.testing.assert_allclose(percentiles_of_codes(codes, q), np.percentile(codes.astype(np.int64), q), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="empty"):
        percentiles_of_codes(np.zeros(0, dtype=np.int16), q)
