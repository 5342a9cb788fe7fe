"""Physio-GAN (ISATSleepNet): a conditional 1-D convolutional GAN that synthesises whole 30-s epochs of
minority sleep stages, with a spectral and an amplitude-statistics constraint on the generator.

The ISATSleepNet paper names the ingredients (a generator with temporal and spectral constraints,
synthetic N1 epochs against class imbalance) but publishes no architecture, sizes or loss weights. Its
public repository (JiangZaiUp/NITASleepNet) does hold GAN code, `train_gan.py` and `augment_with_gan.py`
(added in January 2026). What they do, as read there: one *unconditional* generator per channel and stage
(files `wgangp_generator_<channel>_stage1.pt`; separate EEG and EOG architectures), trained on the N1
epochs at 250 Hz (7,500 samples), each epoch zero-meaned, divided by its own standard deviation and clipped
at ±3; latent 100 → Linear → four (EEG) or three (EOG) strided transposed convolutions with BatchNorm and a
tanh, then an FFT-magnitude "frequency block" of Linear layers, an inverse FFT and a Linear output layer;
a spectral-norm critic with LayerNorm and a feature attention gate. The critic loss is a relativistic
softplus loss plus an R1 penalty (weight 10) plus a WGAN-GP gradient penalty (weight 5), 3 critic steps
per generator step; the generator adds an L1 distance between the FFT magnitudes of the real and generated
batch (weight ramped 0.01 → 0.2) and an L1 distance between the real and generated samples themselves
(weight 0.5); Adam 1e-4 / 4e-4, β (0, 0.9), learning rates halved every 30 epochs. `augment_with_gan.py`
adds, per recording of an id list, generated N1 epochs (each channel from its own generator, with its own
noise) up to the smaller of the deficit to 1.15 × the largest stage and 0.8 × that recording's N1 count,
and hand-crafted signal transforms for the other stages; nothing restricts the id list to training
records. How our design differs, and why (every choice is ours, stated here):

* One conditional generator for all channels of an epoch jointly: the channels of one synthetic epoch
  come from one latent, so EEG and EOG of that epoch belong together (theirs draws each channel
  independently); one model serves any target stage.
* Shard-rate epochs (100 Hz, the rate ISATSleepNet trains on) in fixed per-dataset units instead of a
  per-epoch z-score: the amplitude of an epoch is a staging cue a per-epoch z-score would erase.
* Upsample-then-convolve and noise injection instead of transposed convolutions (below), WGAN-GP alone,
  and constraints on batch *statistics* (spectrum, amplitude moments) rather than an L1 distance between
  unpaired real and generated samples, which pulls every sample towards the batch average.
* Only training records feed the GAN and only training streams receive its epochs, checked from the
  manifests (`distsleep.gan.data`, `distsleep.gan.augment`).

The details:

* Output: all C channels of an epoch jointly, (C, 3000) at 100 Hz, in *GAN units*
  x = (uV - center[c]) / scale[c] (constants from the training data, see `distsleep.gan.data`). The
  output layer is linear: EEG amplitude distributions are heavy-tailed and a tanh would clip them.
* Generator: [z ; one-hot(stage)] -> Linear -> (widths[0], start_length) -> blocks of
  (linear-interpolation upsampling x f, Conv1d, + scaled noise, GroupNorm, LeakyReLU) -> a Conv1d block at
  full resolution -> Conv1d to C channels. 24 * 5 * 5 * 5 = 3000 samples. Upsample-then-convolve instead
  of transposed convolutions: strided transposed convolutions leave periodic "checkerboard" artefacts,
  which in a signal show up as spectral lines at multiples of fs/stride, exactly what the PSD comparison
  would penalise. Channels recorded below the shard rate pass through the resampler's fixed low-pass
  (`band_limit_filters`). Noise injection (independent Gaussian noise per feature map and sample, times a learned
  per-feature scale, as in StyleGAN): background EEG is largely filtered noise, and after linear
  upsampling from 20 Hz the last layers could otherwise only make 10-50 Hz activity through their
  non-linearities; with noise they learn to *shape* broadband noise instead. The noise is drawn from an
  explicit torch.Generator when one is given, so seeded generation is reproducible. GroupNorm instead of
  BatchNorm: samples do not depend on what else is in the batch, train and eval mode behave the same, and
  there are no running statistics that could differ between data-parallel ranks.
* Critic / discriminator: strided Conv1d stack (kernel 25, stride 4, LeakyReLU 0.2, no normalisation, as
  WGAN-GP requires a per-sample gradient penalty that batch statistics would break), global average pool,
  a linear score plus a projection term <embed(stage), features> (Miyato & Koyama 2018) for conditioning.
* Adversarial loss: WGAN-GP (Gulrajani et al. 2017; gradient penalty weight 10, n_critic critic steps
  per generator step, plus the small drift term of Karras et al. 2018 that keeps critic scores near 0)
  by default; the non-saturating logistic loss (Goodfellow et al. 2014) is available as
  `adversarial="nonsaturating"`.
* Spectral constraint: L1 distance between the batch-mean log FFT magnitude of real and generated epochs
  per channel, over a band (default 0.5-45 Hz), computed per stage.
* Time-domain constraint: per epoch and channel we compute mean, log standard deviation, signed log
  skewness, log kurtosis and log line length (mean |first difference|, a cheap proxy for high-frequency
  content and waveform sharpness); the loss is the L1 distance between real and generated batches of the
  batch mean *and* batch standard deviation of each statistic (so the spread of amplitudes across epochs is
  matched too, not only the average), per stage.

All losses are pure functions of tensors, so they can be tested without a GAN.

Size (3 channels, 1 stage): full size 1,196,899 generator + 1,078,593 critic parameters; `small()`
20,907 + 13,937. The paper publishes no GAN size to compare with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distsleep.config import ConfigBase, fields_preset

ADVERSARIAL_LOSSES = ("wgan-gp", "nonsaturating")


@dataclass(frozen=True)
class PhysioGanConfig(ConfigBase):
    """Architecture of the generator and the critic. Defaults are our full size (the paper gives none)."""

    DEFAULT_PRESET = "paper"

    n_channels: int = 3
    n_stages: int = 1  # conditional classes; 1 = an unconditional generator for one stage
    samples: int = 3000  # 30 s at 100 Hz
    latent_dim: int = 128
    gen_widths: tuple[int, ...] = (256, 128, 64, 32)  # before each upsampling block, and after the last
    gen_start_length: int = 24
    gen_upsample: tuple[int, ...] = (5, 5, 5)
    gen_kernel: int = 9
    sample_rate: float = 100.0
    band_limit_hz: tuple[float, ...] = ()  # per channel: its source Nyquist if below sample_rate / 2, else 0
    critic_widths: tuple[int, ...] = (32, 64, 128, 256)
    critic_kernel: int = 25
    critic_stride: int = 4

    def __post_init__(self) -> None:
        for name in ("gen_widths", "gen_upsample", "critic_widths", "band_limit_hz"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.gen_widths) != len(self.gen_upsample) + 1:
            raise ValueError(f"gen_widths needs one entry more than gen_upsample ({len(self.gen_upsample)} blocks), "
                             f"got {len(self.gen_widths)}")
        length = self.gen_start_length * math.prod(self.gen_upsample)
        if length != self.samples:
            raise ValueError(f"gen_start_length x prod(gen_upsample) = {length} must equal samples = {self.samples}")
        if self.gen_kernel % 2 == 0 or self.critic_kernel % 2 == 0:
            raise ValueError("gen_kernel and critic_kernel must be odd (same-length padding)")
        object.__setattr__(self, "band_limit_hz", tuple(float(v) for v in self.band_limit_hz))
        if self.band_limit_hz and (len(self.band_limit_hz) != self.n_channels
                                   or any(not 0 <= v for v in self.band_limit_hz)):
            raise ValueError(f"band_limit_hz needs one value >= 0 per channel ({self.n_channels}), got {self.band_limit_hz}")
        if min(self.n_channels, self.n_stages, self.latent_dim) < 1:
            raise ValueError("n_channels, n_stages and latent_dim must be at least 1")

    small = fields_preset(
        "CPU-test size (a few ms per step on one thread).",
        latent_dim=16, gen_widths=(32, 16, 16, 8), gen_kernel=7, critic_widths=(8, 16, 16, 32), critic_kernel=15)


def band_limit_filters(cfg: PhysioGanConfig) -> torch.Tensor | None:
    """Fixed low-pass FIR per channel (C, 1, taps), or None when no channel needs one.

    A channel recorded below the shard rate (SHHS EOG at 50 Hz, resampled to 100 Hz) holds nothing above
    its source Nyquist: the resampler's anti-imaging filter leaves 40-60 dB less power there. A generator
    would have to learn that sharp stop band from the data; instead its output passes through the filter
    scipy.signal.resample_poly applies for that ratio (Kaiser-windowed sinc, beta 5, 20 taps per rate
    factor on each side, cut-off at the source Nyquist). Other channels get a unit impulse.
    """
    limits = [v if 0 < v < cfg.sample_rate / 2 else 0.0 for v in cfg.band_limit_hz]
    if not any(limits):
        return None
    factor = max(math.ceil(cfg.sample_rate / (2 * v)) for v in limits if v)
    taps = 20 * factor + 1
    n = torch.arange(taps, dtype=torch.float64) - taps // 2
    window = torch.kaiser_window(taps, periodic=False, beta=5.0, dtype=torch.float64)
    kernels = torch.zeros(len(limits), 1, taps, dtype=torch.float64)
    for c, limit in enumerate(limits):
        if limit:
            h = torch.sinc(2 * limit / cfg.sample_rate * n) * window
            kernels[c, 0] = h / h.sum()
        else:
            kernels[c, 0, taps // 2] = 1.0
    return kernels.float()


def _groups(width: int) -> int:
    return math.gcd(width, 8)


class _Block(nn.Module):
    """(upsample x factor) -> Conv1d -> + learned-scale noise -> GroupNorm -> LeakyReLU."""

    def __init__(self, width_in: int, width_out: int, kernel: int, factor: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=factor, mode="linear", align_corners=False) if factor > 1 else nn.Identity()
        self.conv = nn.Conv1d(width_in, width_out, kernel, padding=kernel // 2)
        self.noise_scale = nn.Parameter(torch.full((1, width_out, 1), 0.1))
        self.norm = nn.GroupNorm(_groups(width_out), width_out)

    def forward(self, h: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        h = self.conv(self.up(h))
        noise = torch.randn(h.shape, device=h.device, dtype=h.dtype, generator=generator)
        return F.leaky_relu(self.norm(h + self.noise_scale * noise), 0.2)


class Generator(nn.Module):
    """(z, stage) -> (B, C, samples) in GAN units. `generator` seeds the injected noise (None: global RNG)."""

    def __init__(self, cfg: PhysioGanConfig):
        super().__init__()
        self.cfg = cfg
        w, k = cfg.gen_widths, cfg.gen_kernel
        self.project = nn.Linear(cfg.latent_dim + cfg.n_stages, w[0] * cfg.gen_start_length)
        self.blocks = nn.ModuleList(_Block(w[i], w[i + 1], k, f) for i, f in enumerate(cfg.gen_upsample))
        self.refine = _Block(w[-1], w[-1], k, 1)  # full-resolution features before the output
        self.out = nn.Conv1d(w[-1], cfg.n_channels, k, padding=k // 2)
        self.register_buffer("band_limit", band_limit_filters(cfg), persistent=False)

    def forward(self, z: torch.Tensor, stage: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        onehot = F.one_hot(stage.long(), self.cfg.n_stages).to(z.dtype)
        h = self.project(torch.cat([z, onehot], dim=1))
        h = F.leaky_relu(h.view(z.shape[0], self.cfg.gen_widths[0], self.cfg.gen_start_length), 0.2)
        for block in self.blocks:
            h = block(h, generator)
        x = self.out(self.refine(h, generator))
        if self.band_limit is None:
            return x
        return F.conv1d(x, self.band_limit, padding=self.band_limit.shape[-1] // 2, groups=self.cfg.n_channels)


class Critic(nn.Module):
    """(x, stage) -> (B,) realism score (a WGAN critic, or the logit of a discriminator)."""

    def __init__(self, cfg: PhysioGanConfig):
        super().__init__()
        self.cfg = cfg
        layers, width = [], cfg.n_channels
        for out in cfg.critic_widths:
            layers += [nn.Conv1d(width, out, cfg.critic_kernel, stride=cfg.critic_stride, padding=cfg.critic_kernel // 2),
                       nn.LeakyReLU(0.2)]
            width = out
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(width, 1)
        self.embed = nn.Embedding(cfg.n_stages, width)

    def forward(self, x: torch.Tensor, stage: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=-1)
        return self.score(h).squeeze(-1) + (self.embed(stage.long()) * h).sum(dim=-1)


# ------------------------------------------------------------------------------------------------ losses


def log_spectrum(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Batch-mean log FFT magnitude: (B, C, T) -> (C, T // 2 + 1). Orthonormal FFT, so values do not scale with T."""
    return torch.log(torch.fft.rfft(x, dim=-1, norm="ortho").abs() + eps).mean(dim=0)


def band_mask(samples: int, fs: float, band: tuple[float, float], device=None) -> torch.Tensor:
    freqs = torch.fft.rfftfreq(samples, d=1.0 / fs, device=device)
    return (freqs >= band[0]) & (freqs <= band[1])


def spectral_loss(real: torch.Tensor, fake: torch.Tensor, fs: float = 100.0,
                  band: tuple[float, float] = (0.5, 45.0), eps: float = 1e-5) -> torch.Tensor:
    """Mean |log_spectrum(real) - log_spectrum(fake)| over channels and the FFT bins inside `band` (Hz)."""
    keep = band_mask(real.shape[-1], fs, band, real.device)
    return (log_spectrum(real, eps)[:, keep] - log_spectrum(fake, eps)[:, keep]).abs().mean()


def amplitude_statistics(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per epoch and channel: mean, log std, signed log(1+|skewness|), log kurtosis, log line length.

    (B, C, T) -> (B, C, 5). Logs keep a single artefact-laden epoch from dominating the loss.
    """
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    var = centred.pow(2).mean(dim=-1)
    std = (var + eps).sqrt()
    skew = centred.pow(3).mean(dim=-1) / std.pow(3)
    kurt = centred.pow(4).mean(dim=-1) / (var + eps).pow(2)
    line_length = (x[..., 1:] - x[..., :-1]).abs().mean(dim=-1)
    return torch.stack([mean.squeeze(-1), std.log(), torch.sign(skew) * torch.log1p(skew.abs()),
                        (kurt + eps).log(), (line_length + eps).log()], dim=-1)


def moment_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L1 distance of the batch mean and batch std of `amplitude_statistics` between real and fake epochs."""
    a, b = amplitude_statistics(real), amplitude_statistics(fake)
    spread = (a.std(dim=0, unbiased=False) - b.std(dim=0, unbiased=False)).abs().mean() if len(a) > 1 and len(b) > 1 else 0.0
    return (a.mean(dim=0) - b.mean(dim=0)).abs().mean() + spread


def per_stage(loss_fn, real: torch.Tensor, fake: torch.Tensor, stage: torch.Tensor, **kwargs) -> torch.Tensor:
    """`loss_fn` computed separately within each stage present in the batch (real and fake share `stage`), averaged."""
    values = [loss_fn(real[stage == s], fake[stage == s], **kwargs) for s in torch.unique(stage).tolist()]
    return torch.stack([torch.as_tensor(v, dtype=real.dtype, device=real.device) for v in values]).mean()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, stage: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP: E[(||grad_x D(x_hat)||_2 - 1)^2] at random interpolates x_hat of real and fake epochs."""
    alpha = torch.rand(real.shape[0], 1, 1, device=real.device, dtype=real.dtype, generator=generator)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(mixed, stage)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def critic_loss(real_score: torch.Tensor, fake_score: torch.Tensor, adversarial: str = "wgan-gp",
                drift: float = 1e-3) -> torch.Tensor:
    """Critic/discriminator loss without the gradient penalty (add it for WGAN-GP)."""
    if adversarial == "wgan-gp":
        return fake_score.mean() - real_score.mean() + drift * real_score.pow(2).mean()
    if adversarial == "nonsaturating":
        return F.softplus(-real_score).mean() + F.softplus(fake_score).mean()
    raise ValueError(f"adversarial must be one of {ADVERSARIAL_LOSSES}, not {adversarial!r}")


def generator_adversarial_loss(fake_score: torch.Tensor, adversarial: str = "wgan-gp") -> torch.Tensor:
    if adversarial == "wgan-gp":
        return -fake_score.mean()
    if adversarial == "nonsaturating":
        return F.softplus(-fake_score).mean()
    raise ValueError(f"adversarial must be one of {ADVERSARIAL_LOSSES}, not {adversarial!r}")
