"""YASA's pretrained LightGBM sleep stager (Vallat & Walker 2021), run on a distsleep Record.

YASA ships its classifiers in the wheel, trained on thousands of NSRR nights (SHHS among them), so it is
the natural off-the-shelf reference: the realism benchmark of the synthetic cohort, and the baseline row
of every model comparison.
"""

from __future__ import annotations

import numpy as np

from distsleep.signal import resample
from distsleep.sources.record import Record

YASA_RATE = 100.0


def yasa_predict(record: Record, eeg: str = "eeg_c4", eog: str | None = "eog_l", emg: str | None = "emg") -> np.ndarray:
    """Predicted AASM stage per 30-s epoch (0..4), one per epoch of `record`.

    Channels are resampled to 100 Hz one by one (they have different native rates) before YASA sees
    them, so YASA's own resampling is a no-op. The record's signals are already in uV.
    """
    import warnings

    import mne  # heavy imports only when the baseline is used
    import yasa

    roles = [("EEG", eeg, "eeg"), ("EOG", eog, "eog"), ("EMG", emg, "emg")]
    roles = [(name, role, kind) for name, role, kind in roles if role is not None]
    arrays = [resample(record.channels[role].data, record.channels[role].rate, YASA_RATE) for _, role, _ in roles]
    n = min(len(a) for a in arrays)
    info = mne.create_info([name for name, _, _ in roles], YASA_RATE, [kind for _, _, kind in roles])
    raw = mne.io.RawArray(np.stack([a[:n] for a in arrays]).astype(np.float64) * 1e-6, info, verbose="ERROR")
    staging = yasa.SleepStaging(
        raw, eeg_name="EEG",
        eog_name="EOG" if eog is not None else None,
        emg_name="EMG" if emg is not None else None,
    )
    with warnings.catch_warnings():
        # YASA's bundled classifiers were pickled with an older scikit-learn; the label encoder
        # inside them is version-independent, so the warning is noise for users.
        warnings.filterwarnings("ignore", message="Trying to unpickle estimator")
        predicted = staging.predict().as_int().to_numpy().astype(np.int8)
    out = np.full(record.n_epochs, -1, dtype=np.int8)
    m = min(len(out), len(predicted))
    out[:m] = predicted[:m]
    return out
