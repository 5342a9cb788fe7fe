"""Log-magnitude spectrogram of 30-s epochs (DESIGN §4): a torch version for the accelerator and a SciPy reference.

Recipe (XSleepNet / SleepTransformer): 100 Hz epochs of 3,000 samples, symmetric Hamming window of 200
samples (MATLAB's ``hamming(200)``, which those papers' preprocessing used), hop 100, 256-point FFT, no
centring or padding, ``20 * log10(|X| + eps)``. Frames: 1 + (3000 - 200) // 100 = 29; bins: 256 // 2 + 1 = 129.
Output layout is (..., time=29, freq=129). The magnitude is the plain |FFT of the windowed frame|: no
window-sum or density scaling (SciPy's ``stft``/``spectrogram`` scale by default; we do not).

The torch path runs on whatever device the input is on, so the training loop can ship raw epochs only and
compute spectrograms on the GPU; the SciPy path is the reference the tests hold it to.
"""

from __future__ import annotations

import numpy as np
import torch

WIN_LENGTH = 200
HOP_LENGTH = 100
N_FFT = 256
EPOCH_SAMPLES = 3000
DEFAULT_EPS = 1e-6


def n_frames(n_samples: int = EPOCH_SAMPLES, win_length: int = WIN_LENGTH, hop_length: int = HOP_LENGTH) -> int:
    """Frames without padding: 1 + (n - win) // hop (29 for a 30-s epoch at 100 Hz)."""
    if n_samples < win_length:
        raise ValueError(f"an epoch of {n_samples} samples is shorter than the {win_length}-sample window")
    return 1 + (n_samples - win_length) // hop_length


def symmetric_hamming(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0.54 − 0.46·cos(2πn / (length − 1)): ``torch.hamming_window(length, periodic=False)`` written out, because
    ONNX has no Hamming-window operator and the exported graph must build the window from arange and cos."""
    n = torch.arange(length, dtype=dtype, device=device)
    return 0.54 - 0.46 * torch.cos(n * (2 * torch.pi / (length - 1)))


def torch_spectrogram(
    x: torch.Tensor,
    *,
    eps: float = DEFAULT_EPS,
    win_length: int = WIN_LENGTH,
    hop_length: int = HOP_LENGTH,
    n_fft: int = N_FFT,
) -> torch.Tensor:
    """(..., n_samples) -> (..., frames, n_fft // 2 + 1) log-magnitude in dB, computed with ``torch.stft``.

    ``torch.stft`` zero-pads a window shorter than ``n_fft`` to the centre of the FFT frame (offset
    (n_fft - win) // 2). Padding the signal by that offset on the left (and enough on the right) therefore
    lines window frame k up with samples [k*hop, k*hop + win) exactly; the extra zeros inside the 256-point
    frame only add a linear phase, which the magnitude discards. Computation is in float32 (float64 stays
    float64).
    """
    if x.shape[-1] < win_length:
        raise ValueError(f"last dimension must hold at least {win_length} samples, got {tuple(x.shape)}")
    if n_fft < win_length:
        raise ValueError(f"n_fft={n_fft} must be >= win_length={win_length}")
    lead = x.shape[:-1]
    n = x.shape[-1]
    frames = n_frames(n, win_length, hop_length)
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    flat = x.reshape(-1, n).to(dtype)
    left = (n_fft - win_length) // 2
    # Length needed so that torch.stft yields exactly `frames` frames of n_fft samples.
    needed = (frames - 1) * hop_length + n_fft
    right = max(0, needed - left - n)
    # cut to `needed` here rather than slicing the complex result: ONNX export cannot slice complex tensors
    flat = torch.nn.functional.pad(flat, (left, right))[..., :needed]
    window = symmetric_hamming(win_length, dtype, x.device)
    spec = torch.stft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=False,
        return_complex=True,
    )  # (N, freq, frames)
    log_mag = 20.0 * torch.log10(spec.abs() + eps)
    return log_mag.transpose(-1, -2).reshape(*lead, frames, n_fft // 2 + 1)


def scipy_spectrogram(
    x: np.ndarray,
    *,
    eps: float = DEFAULT_EPS,
    win_length: int = WIN_LENGTH,
    hop_length: int = HOP_LENGTH,
    n_fft: int = N_FFT,
) -> np.ndarray:
    """NumPy/SciPy reference: explicit framing + ``scipy.fft.rfft``, float64, same layout as the torch path."""
    import scipy.fft  # here, not at the top: training processes use only the torch path
    from scipy.signal import windows as sp_windows

    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] < win_length:
        raise ValueError(f"last dimension must hold at least {win_length} samples, got {x.shape}")
    frames = n_frames(x.shape[-1], win_length, hop_length)
    view = np.lib.stride_tricks.sliding_window_view(x, win_length, axis=-1)[..., ::hop_length, :][..., :frames, :]
    window = sp_windows.hamming(win_length, sym=True)
    spectrum = scipy.fft.rfft(view * window, n=n_fft, axis=-1)
    return 20.0 * np.log10(np.abs(spectrum) + eps)
