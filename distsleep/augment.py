"""Training-time augmentations for the contrastive views (MC²SleepNet §4.1.2), as batched torch ops.

Raw epochs get exactly one of six transforms, drawn independently per epoch: amplitude scaling, amplitude
shift, additive Gaussian noise, band-stop filtering, circular time shift, zero-masking. Spectrograms only
get additive random noise (the paper warns that other spectrogram augmentations corrupt the features).
Everything is vectorised over the epochs and stays on the input's device, so it runs on the GPU inside
the model's forward. The paper gives no ranges; the defaults below are the usual ones from the EEG
contrastive-learning literature (CoSleep, SleePyCo) and are collected in `RawAugmentConfig`.
Amplitude-dependent quantities (shift, noise) are relative to each epoch's standard deviation so the
transforms mean the same thing whatever the input unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

RAW_AUGMENTATIONS: tuple[str, ...] = (
    "amplitude_scale",
    "amplitude_shift",
    "gaussian_noise",
    "band_stop",
    "time_shift",
    "zero_mask",
)


@dataclass(frozen=True)
class RawAugmentConfig:
    scale_range: tuple[float, float] = (0.5, 2.0)  # multiplicative factor
    shift_std_fraction: float = 0.5  # |offset| <= this * epoch std
    noise_std_fraction: float = 0.1  # noise std = U(0, this) * epoch std
    band_stop_width_hz: float = 2.0
    band_stop_range_hz: tuple[float, float] = (0.5, 45.0)  # where the stop band starts
    max_time_shift_fraction: float = 0.1  # circular shift up to this fraction of the epoch
    zero_mask_fraction: float = 0.1  # a contiguous span of up to this fraction is set to zero
    sample_rate: float = 100.0


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=generator.device if generator else like.device, dtype=like.dtype)
    return (low + (high - low) * u).to(like.device)


def _randint(n: int, low: int, high: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Integers in [low, high] inclusive."""
    device = generator.device if generator else like.device
    return torch.randint(low, high + 1, (n,), generator=generator, device=device).to(like.device)


def amplitude_scale(x: torch.Tensor, cfg: RawAugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    return x * _uniform(x.shape[0], *cfg.scale_range, x, g)[:, None]


def amplitude_shift(x: torch.Tensor, cfg: RawAugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    frac = cfg.shift_std_fraction
    return x + _uniform(x.shape[0], -frac, frac, x, g)[:, None] * x.std(dim=-1, keepdim=True)


def gaussian_noise(x: torch.Tensor, cfg: RawAugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    std = _uniform(x.shape[0], 0.0, cfg.noise_std_fraction, x, g)[:, None] * x.std(dim=-1, keepdim=True)
    device = g.device if g else x.device
    noise = torch.randn(x.shape, generator=g, device=device, dtype=x.dtype).to(x.device)
    return x + noise * std


def band_stop(x: torch.Tensor, cfg: RawAugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """Zero a random band of `band_stop_width_hz` in the spectrum (ideal FFT band-stop, zero-phase)."""
    n = x.shape[-1]
    spec = torch.fft.rfft(x, dim=-1)
    freqs = torch.fft.rfftfreq(n, d=1.0 / cfg.sample_rate).to(device=x.device, dtype=x.dtype)
    start = _uniform(x.shape[0], *cfg.band_stop_range_hz, x, g)[:, None]
    stop = (freqs[None, :] >= start) & (freqs[None, :] < start + cfg.band_stop_width_hz)
    spec = spec.masked_fill(stop, 0)
    return torch.fft.irfft(spec, n=n, dim=-1)


def time_shift(x: torch.Tensor, cfg: RawAugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """Circular shift by a per-epoch offset in [-max, max] samples (vectorised roll via gather)."""
    n = x.shape[-1]
    max_shift = int(round(cfg.max_time_shift_fraction * n))
    shift = _randint(x.shape[0], -max_shift, max_shift, x, g)
    index = (torch.arange(n, device=x.device)[None, :] - shift[:, None]) % n
    return torch.gather(x, -1, index)


def zero_mask(x: torch.Tensor, cfg: RawAugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """Zero one contiguous span of up to `zero_mask_fraction` of the epoch at a random place."""
    n = x.shape[-1]
    max_len = max(1, int(round(cfg.zero_mask_fraction * n)))
    length = _randint(x.shape[0], 1, max_len, x, g)
    start = (_uniform(x.shape[0], 0.0, 1.0, x.float(), g) * (n - length + 1).float()).long().clamp(max=n - 1)
    pos = torch.arange(n, device=x.device)[None, :]
    span = (pos >= start[:, None]) & (pos < (start + length)[:, None])
    return x.masked_fill(span, 0)


_RAW_FUNCTIONS: dict[str, Callable[[torch.Tensor, RawAugmentConfig, torch.Generator | None], torch.Tensor]] = {
    "amplitude_scale": amplitude_scale,
    "amplitude_shift": amplitude_shift,
    "gaussian_noise": gaussian_noise,
    "band_stop": band_stop,
    "time_shift": time_shift,
    "zero_mask": zero_mask,
}


def augment_raw(
    x: torch.Tensor,
    cfg: RawAugmentConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    return_choice: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(..., n_samples) -> same shape; every epoch gets one transform drawn uniformly from RAW_AUGMENTATIONS.

    With `return_choice`, also returns the index (into RAW_AUGMENTATIONS) applied to each epoch.
    """
    cfg = cfg or RawAugmentConfig()
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    choice = _randint(flat.shape[0], 0, len(RAW_AUGMENTATIONS) - 1, flat, generator)
    # Every transform runs on every epoch and torch.where keeps the chosen one: six cheap elementwise/FFT
    # passes instead of gathering each transform's epochs, which needs their count on the host (a device
    # sync per transform) and breaks compiled graphs.
    out = flat
    for k, name in enumerate(RAW_AUGMENTATIONS):
        out = torch.where((choice == k)[:, None], _RAW_FUNCTIONS[name](flat, cfg, generator), out)
    out = out.reshape(shape)
    return (out, choice.reshape(shape[:-1])) if return_choice else out


def augment_spectrogram(spec: torch.Tensor, noise_std: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive Gaussian noise of `noise_std` (same unit as `spec`, e.g. dB) — the only spectrogram augmentation."""
    if noise_std <= 0:
        return spec
    device = generator.device if generator else spec.device
    noise = torch.randn(spec.shape, generator=generator, device=device, dtype=spec.dtype).to(spec.device)
    return spec + noise_std * noise
