"""YASA's pretrained LightGBM sleep stager (Vallat & Walker 2021), run on a distsleep Record or on the
signals of a preprocessed shard.

YASA ships its classifiers in the wheel, trained on thousands of NSRR nights (SHHS among them), so it is
the natural off-the-shelf reference: the realism benchmark of the synthetic cohort, and the baseline row
of every model comparison.
"""

from __future__ import annotations

import warnings

import numpy as np

from distsleep.signal import resample
from distsleep.sources.record import Record

YASA_RATE = 100.0
EPOCH_SECONDS = 30


def yasa_stage(eeg: np.ndarray, eog: np.ndarray | None = None, emg: np.ndarray | None = None,
               rate: float = YASA_RATE) -> np.ndarray:
    """Predicted AASM stage (0..4) per 30-s epoch of continuous signals in uV sampled at `rate`."""
    import mne  # heavy (seconds), and needed only when the YASA baseline is scored
    import yasa

    named = [(name, kind, x) for name, kind, x in (("EEG", "eeg", eeg), ("EOG", "eog", eog), ("EMG", "emg", emg))
             if x is not None]
    n = min(len(x) for _, _, x in named)
    info = mne.create_info([name for name, _, _ in named], rate, [kind for _, kind, _ in named])
    raw = mne.io.RawArray(np.stack([x[:n] for _, _, x in named]).astype(np.float64) * 1e-6, info, verbose="ERROR")
    staging = yasa.SleepStaging(raw, eeg_name="EEG", eog_name="EOG" if eog is not None else None,
                                emg_name="EMG" if emg is not None else None)
    with warnings.catch_warnings():
        # YASA's bundled classifiers were pickled with an older scikit-learn; the label encoder
        # inside them is version-independent, so the warning is noise for users.
        warnings.filterwarnings("ignore", message="Trying to unpickle estimator")
        return staging.predict().as_int().to_numpy().astype(np.int8)


def _fit(predicted: np.ndarray, n_epochs: int) -> np.ndarray:
    out = np.full(n_epochs, -1, dtype=np.int8)
    m = min(n_epochs, len(predicted))
    out[:m] = predicted[:m]
    return out


def yasa_predict(record: Record, eeg: str = "eeg_c4", eog: str | None = "eog_l", emg: str | None = "emg") -> np.ndarray:
    """Predicted AASM stage per 30-s epoch (0..4), one per epoch of `record`.

    Channels are resampled to 100 Hz one by one (they have different native rates) before YASA sees
    them, so YASA's own resampling is a no-op. The record's signals are already in uV.
    """
    def channel(role):
        return None if role is None else resample(record.channels[role].data, record.channels[role].rate, YASA_RATE)

    return _fit(yasa_stage(channel(eeg), channel(eog), channel(emg)), record.n_epochs)


def yasa_predict_shard(signals_uv: np.ndarray, roles: list[str], rate: float) -> np.ndarray:
    """Predicted stage per epoch of a shard night: `signals_uv` (n_epochs, n_channels, samples) in uV.

    Uses the first EEG role, and the EOG/EMG roles when the shard holds them; the night is scored as the
    continuous signal it was cut from, so YASA's whole-night feature smoothing sees the same context.
    """
    def continuous(prefix: str) -> np.ndarray | None:
        index = next((i for i, role in enumerate(roles) if role.startswith(prefix)), None)
        return None if index is None else signals_uv[:, index, :].reshape(-1)

    eeg = continuous("eeg")
    if eeg is None:
        raise ValueError(f"YASA needs an EEG channel; the shard holds {roles}")
    return _fit(yasa_stage(eeg, continuous("eog"), continuous("emg"), rate), signals_uv.shape[0])
