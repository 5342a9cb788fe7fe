"""CrossFusionSleepNet ("A Multimodal Deep Learning Model for Automatic Sleep Stage Classification"):
parallel time-domain and time-frequency encoders on multichannel PSG, fused by cross-attention.

There is no public model code; the abstract and the architecture figure say only: multichannel signals,
a time-domain ("signal") encoder and an STFT "TF-image" encoder in parallel, a cross-attention mechanism
between time and frequency domain, fusion encoders with residual connections, and a 5-class head
(SHHS ACC 88.4 / MF1 80.5, Sleep-EDF-20 89.3 / 84.6, Sleep-EDF-78 87.5 / 83.0). Every concrete choice
below is therefore ours and is listed here.

Data flow for x of shape (B, L, C, 3000) in µV (C channels in the order of ``channel_slots``):

1. Channels. Default slots: staging EEG (SHHS C4-A1 / Sleep-EDF Fpz-Cz), EOG (SHHS EOG(L) / Sleep-EDF
   horizontal EOG) and chin EMG — the three signals of the AASM rules ("multichannel", "multimodal"): EOG
   separates REM and wake from N1, EMG separates REM from wake. Sleep-EDF's EMG is a rectified envelope
   (its spectrum is nearly all below 1 Hz) — the model still gets its level and slow modulation. The slots
   are a config field, so an EEG+EOG or a 4-channel variant is a config change (``input_channels`` is
   derived from them).
2. Normalisation ("uv" in the registry): the TF image is the XSleepNet/SleepTransformer log-magnitude
   STFT (distsleep.spectrogram: 200-sample Hamming window, hop 100, 256-point FFT → 29 frames × 129
   bins, dB), which only has a consistent meaning on a physical scale, so the model takes µV. It is
   computed inside the model in float32, also under autocast, with a 0.01 µV floor (−40 dB) so flat or
   zero-padded channels do not produce −120 dB outliers. Raw epochs are standardised per channel and
   spectrograms per (channel, bin) by non-affine BatchNorms — dataset-level statistics (running means in
   eval), which keep each epoch's amplitude relative to others (a per-epoch z-score would erase the N3
   vs. wake amplitude cue) and cope with EEG, EOG and EMG living on very different µV scales.
3. Time encoder: a multichannel 1-D CNN — stem Conv(C→32, k49, stride 5; ~0.5 s kernel) → BN → GELU,
   then residual blocks [Conv k7 → BN → GELU → Conv k7 → BN, + 1×1 skip when the width changes] → GELU →
   MaxPool 2 with widths (64, 96, 128, 128): 3000 → 600 → 300 → 150 → 75 → 38 tokens (0.79 s each),
   1×1 conv to d_model, then ``time_layers`` Transformer layers.
4. TF-image encoder: the (C, 129 bins, 29 frames) image through 2-D conv blocks [Conv 3×3 → BN → GELU →
   MaxPool over frequency only] with widths (16, 32, 64) (129 → 64 → 32 → 16 bins, the 29 frames kept),
   each frame's (width × bins) column → Linear → d_model: 29 tokens, then ``freq_layers`` Transformer layers.
5. Positional encoding: both branches get a sinusoidal encoding of the *time in seconds* of each token's
   centre (time tokens at (j + ½)·30/38 s, STFT frames at k + 1 s), so the same encoding means the same
   moment in both domains and cross-attention can align them.
6. Cross-attention in both directions, ``cross_layers`` times, the two branches in lock-step (each attends
   to the other's previous-layer output): t ← t + CA(LN t, LN f); f ← f + CA(LN f, LN t); then each its
   own feed-forward with residual. Query = own domain, key/value = the other (time tokens read spectral
   context and vice versa).
7. Fusion encoders with residuals: the concatenated token sequence [time; TF] plus a learned domain
   embedding through ``fusion_layers`` pre-LN Transformer layers (the residual paths carry the
   cross-attended tokens through unchanged, the layers add to them), final LayerNorm; an attention pooling
   per domain (learned score, softmax over that domain's tokens) → concat → Linear(2d → d) → GELU: the
   per-epoch feature.
8. Optional sequence context (our addition, the abstract does not describe one): sinusoidal epoch-position
   encoding and ``context_layers`` pre-LN Transformer layers over the L epoch features of a sample (default
   2 layers, seq_len 10 = 5 min, a short SleepTransformer-style context — the reported accuracies are at
   the level of sequence models, not of single-epoch ones). ``context_layers=0`` removes it and the
   model classifies each epoch independently (then seq_len is only a batching unit).
9. Head: Dropout → Linear(d → n_classes), the "final classifier". Loss: cross-entropy over scored
   epochs (labels −1 ignored); no class weighting, augmentation or masking (a purely supervised model:
   all three stages compute the same loss).

Other choices: all Transformer stacks are pre-LN (norm_first) with GELU feed-forwards and a final
LayerNorm — more stable than post-LN for a model trained from scratch with several stacks in series;
d_model 128, 8 heads, feed-forward 512, dropout 0.1, 2 layers in every stack. `prepare_finetune("linear")`
freezes everything except the final Linear classifier (frozen modules stay in eval mode); "full" trains
all.

Parameter count. At paper size (the defaults) this module has 3,194,295 parameters: time encoder
1,020,832 (CNN 624,032 + 2 Transformer layers 396,800), TF-image encoder 551,696 (2-D CNN 23,696 + frame
projection 131,200 + 2 layers 396,800), cross-attention 794,112 (2 layers × 2 directions), fusion
430,210 (2 layers 396,800 + pooling and merge 33,410), context 396,800, classifier 645. The paper
publishes no count. `small()` has 85,859.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from distsleep.config import ConfigBase, fields_preset
from distsleep.models.common import FreezableModel, masked_cross_entropy, sinusoidal_positional_encoding
from distsleep.models.registry import register
from distsleep.spectrogram import HOP_LENGTH, N_FFT, WIN_LENGTH, n_frames, torch_spectrogram

Stage = Literal["pretrain", "finetune", "eval"]
STAGES: tuple[str, ...] = ("pretrain", "finetune", "eval")
# Each slot: the SHHS role first, then Sleep-EDF's.
DEFAULT_CHANNEL_SLOTS: tuple[tuple[str, ...], ...] = (("eeg_c4", "eeg_fpz_cz"), ("eog_l", "eog"), ("emg",))


@dataclass(frozen=True)
class CrossFusionSleepNetConfig(ConfigBase):
    """Hyper-parameters; defaults are our paper-size reading (module docstring). `small()`: CPU tests."""

    STRICT = True  # a bundle or override with an unknown field is refused
    DEFAULT_PRESET = "paper"

    # data
    seq_len: int = 10
    n_classes: int = 5
    channel_slots: tuple[tuple[str, ...], ...] = DEFAULT_CHANNEL_SLOTS
    epoch_samples: int = 3000
    sample_rate: float = 100.0
    spectrogram_eps: float = 1e-2  # µV floor inside log10 (-40 dB)
    # shared width
    d_model: int = 128
    heads: int = 8
    ff_dim: int = 512
    dropout: float = 0.1
    # time-domain encoder
    time_stem_channels: int = 32
    time_stem_kernel: int = 49
    time_stem_stride: int = 5
    time_widths: tuple[int, ...] = (64, 96, 128, 128)
    time_kernel: int = 7
    time_layers: int = 2
    # TF-image encoder
    freq_widths: tuple[int, ...] = (16, 32, 64)
    freq_layers: int = 2
    # interaction, fusion, context
    cross_layers: int = 2
    fusion_layers: int = 2
    context_layers: int = 2

    def __post_init__(self) -> None:
        # Configs come back from JSON / MLflow params with lists: normalise them.
        slots = tuple(tuple(str(r) for r in ([s] if isinstance(s, str) else s)) for s in self.channel_slots)
        object.__setattr__(self, "channel_slots", slots)
        for name in ("time_widths", "freq_widths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if not slots or any(not s for s in slots):
            raise ValueError(f"channel_slots must be a non-empty list of non-empty role lists, got {slots}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by heads={self.heads}")
        if not self.time_widths or not self.freq_widths:
            raise ValueError("time_widths and freq_widths must be non-empty")
        if self.seq_len < 1 or self.n_classes < 2:
            raise ValueError("seq_len must be >= 1 and n_classes >= 2")
        if min(self.time_layers, self.freq_layers, self.cross_layers, self.fusion_layers, self.context_layers) < 0:
            raise ValueError("layer counts must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.epoch_samples < N_FFT or self.spectrogram_eps <= 0:
            raise ValueError(f"epoch_samples must be >= {N_FFT} and spectrogram_eps > 0")

    @property
    def input_channels(self) -> int:
        return len(self.channel_slots)

    @property
    def time_tokens(self) -> int:
        n = (self.epoch_samples + 2 * (self.time_stem_kernel // 2) - self.time_stem_kernel) // self.time_stem_stride + 1
        for _ in self.time_widths:
            n = math.ceil(n / 2)
        return n

    @property
    def freq_tokens(self) -> int:
        return n_frames(self.epoch_samples)

    small = fields_preset(
        "A tiny model for CPU tests (86 k parameters, same graph).",
        seq_len=5, d_model=32, heads=4, ff_dim=64, time_stem_channels=8, time_widths=(8, 16, 24, 32),
        freq_widths=(4, 8, 8), time_layers=1, freq_layers=1, cross_layers=1, fusion_layers=1, context_layers=1)


def time_encoding(centres_s: torch.Tensor, dim: int) -> torch.Tensor:
    """(T,) token centres in seconds → (T, dim) sinusoidal encoding of position in tenths of a second."""
    pos = centres_s.float()[:, None] * 10.0
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=centres_s.device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(centres_s.shape[0], dim, dtype=torch.float32, device=centres_s.device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


def _encoder(d_model: int, heads: int, ff: int, dropout: float, layers: int) -> nn.Module:
    """`layers` pre-LN GELU Transformer layers and a final LayerNorm (identity for 0 layers)."""
    if layers == 0:
        return nn.Identity()
    layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)


# ---------------------------------------------------------------------------------------- time encoder


class ResidualBlock1d(nn.Module):
    """GELU(BN(Conv(GELU(BN(Conv x)))) + skip(x)) → MaxPool 2 (ceil)."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel, padding=pad, bias=False),
            nn.BatchNorm1d(c_out),
            nn.GELU(),
            nn.Conv1d(c_out, c_out, kernel, padding=pad, bias=False),
            nn.BatchNorm1d(c_out),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv1d(c_in, c_out, 1, bias=False)
        self.pool = nn.MaxPool1d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.gelu(self.body(x) + self.skip(x)))


class TimeEncoder(nn.Module):
    """(N, C, 3000) µV → (N, time_tokens, d_model)."""

    def __init__(self, cfg: CrossFusionSleepNetConfig) -> None:
        super().__init__()
        c = cfg.input_channels
        self.input_norm = nn.BatchNorm1d(c, affine=False)  # dataset-level per-channel standardisation
        k = cfg.time_stem_kernel
        self.stem = nn.Sequential(
            nn.Conv1d(c, cfg.time_stem_channels, k, stride=cfg.time_stem_stride, padding=k // 2, bias=False),
            nn.BatchNorm1d(cfg.time_stem_channels),
            nn.GELU(),
        )
        widths = (cfg.time_stem_channels, *cfg.time_widths)
        self.blocks = nn.Sequential(*(ResidualBlock1d(a, b, cfg.time_kernel) for a, b in zip(widths[:-1], widths[1:])))
        self.out = nn.Conv1d(widths[-1], cfg.d_model, 1)
        n = cfg.time_tokens
        step_s = cfg.epoch_samples / cfg.sample_rate / n
        self.register_buffer("pe", time_encoding((torch.arange(n) + 0.5) * step_s, cfg.d_model), persistent=False)
        self.encoder = _encoder(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, cfg.time_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.out(self.blocks(self.stem(self.input_norm(x)))).transpose(1, 2)
        return self.encoder(z + self.pe.to(z.dtype))


# ------------------------------------------------------------------------------------ TF-image encoder


class FreqEncoder(nn.Module):
    """(N, C, frames, bins) dB → (N, frames, d_model): per-bin norm, 2-D CNN pooling frequency, frame projection."""

    def __init__(self, cfg: CrossFusionSleepNetConfig) -> None:
        super().__init__()
        c, n_bins = cfg.input_channels, N_FFT // 2 + 1
        self.bin_norm = nn.BatchNorm1d(c * n_bins, affine=False)  # dataset-level per-(channel, bin) z-score
        layers: list[nn.Module] = []
        c_in, bins = c, n_bins
        for width in cfg.freq_widths:
            layers += [
                nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.GELU(),
                nn.MaxPool2d((2, 1)),  # halve frequency, keep every frame
            ]
            c_in, bins = width, bins // 2
        self.cnn = nn.Sequential(*layers)
        self.project = nn.Linear(c_in * bins, cfg.d_model)
        frames = cfg.freq_tokens
        # Frame k covers samples [k·hop, k·hop + win): centre (k·hop + win/2) / fs seconds.
        centres = (torch.arange(frames) * HOP_LENGTH + WIN_LENGTH / 2) / cfg.sample_rate
        self.register_buffer("pe", time_encoding(centres, cfg.d_model), persistent=False)
        self.encoder = _encoder(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, cfg.freq_layers)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        n, c, t, f = spec.shape
        z = self.bin_norm(spec.permute(0, 1, 3, 2).reshape(n, c * f, t)).reshape(n, c, f, t)
        z = self.cnn(z)  # (N, width, bins', T)
        z = self.project(z.permute(0, 3, 1, 2).reshape(n, t, -1))
        return self.encoder(z + self.pe.to(z.dtype))


# ------------------------------------------------------------------------------------- cross-attention


class CrossAttentionLayer(nn.Module):
    """Pre-LN: x ← x + CA(LN x, LN other); x ← x + FF(LN x)."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(other)
        x = x + self.drop(self.attn(self.norm_q(x), kv, kv, need_weights=False)[0])
        return x + self.drop(self.ff(self.norm_ff(x)))


class BidirectionalCrossAttention(nn.Module):
    """Time tokens attend to TF tokens and TF tokens to time tokens, layer by layer in lock-step."""

    def __init__(self, cfg: CrossFusionSleepNetConfig) -> None:
        super().__init__()
        args = (cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout)
        self.time_from_freq = nn.ModuleList(CrossAttentionLayer(*args) for _ in range(cfg.cross_layers))
        self.freq_from_time = nn.ModuleList(CrossAttentionLayer(*args) for _ in range(cfg.cross_layers))

    def forward(self, t: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer_t, layer_f in zip(self.time_from_freq, self.freq_from_time):
            t, f = layer_t(t, f), layer_f(f, t)
        return t, f


# ------------------------------------------------------------------------------------------------ fusion


class AttentionPool(nn.Module):
    """Σ_t softmax_t(w·x_t + b) x_t."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.softmax(self.score(x).squeeze(-1), dim=-1)
        return (alpha.unsqueeze(-1) * x).sum(dim=1)


class FusionEncoder(nn.Module):
    """[time; TF] tokens + domain embedding → pre-LN Transformer (residual) → per-domain pooling → (N, d)."""

    def __init__(self, cfg: CrossFusionSleepNetConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.domain = nn.Parameter(torch.zeros(2, d))
        nn.init.normal_(self.domain, std=0.02)
        self.encoder = _encoder(d, cfg.heads, cfg.ff_dim, cfg.dropout, cfg.fusion_layers)
        self.pool_time, self.pool_freq = AttentionPool(d), AttentionPool(d)
        self.merge = nn.Sequential(nn.Linear(2 * d, d), nn.GELU())

    def forward(self, t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        n_t = t.shape[1]
        domain = self.domain.to(t.dtype)
        z = self.encoder(torch.cat([t + domain[0], f + domain[1]], dim=1))
        pooled = torch.cat([self.pool_time(z[:, :n_t]), self.pool_freq(z[:, n_t:])], dim=-1)
        return self.merge(pooled)


# ------------------------------------------------------------------------------------------------ model


class CrossFusionSleepNet(FreezableModel):
    """The full model; see the module docstring. `forward(x, labels, stage)` returns a dict of tensors."""

    def __init__(self, cfg: CrossFusionSleepNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.time_encoder = TimeEncoder(cfg)
        self.freq_encoder = FreqEncoder(cfg)
        self.cross = BidirectionalCrossAttention(cfg)
        self.fusion = FusionEncoder(cfg)
        self.context = _encoder(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, cfg.context_layers)
        self.head_dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.d_model, cfg.n_classes)

    # ---- fine-tuning support

    # ---- pieces (public so tests and analysis can call them)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 3000) µV → (N, C, 29, 129) dB, always computed in float32 (also under autocast)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch_spectrogram(x.float(), eps=self.cfg.spectrogram_eps)

    def encode_epochs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 3000) µV → (N, d_model) fused per-epoch features."""
        dtype = self.classifier.weight.dtype
        spec = self.spectrogram(x).to(dtype)
        t = self.time_encoder(x.to(dtype))
        f = self.freq_encoder(spec)
        t, f = self.cross(t, f)
        return self.fusion(t, f)

    def sequence(self, e: torch.Tensor) -> torch.Tensor:
        """(B, L, d) epoch features → (B, L, d) with inter-epoch context (identity when context_layers=0)."""
        if self.cfg.context_layers == 0:
            return e
        pe = sinusoidal_positional_encoding(e.shape[1], e.shape[2], device=e.device, dtype=e.dtype)
        return self.context(e + pe)

    # ---- forward

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, stage: Stage = "eval") -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if x.dim() != 4 or x.shape[2] != cfg.input_channels or x.shape[3] != cfg.epoch_samples:
            raise ValueError(f"x must be (B, L, {cfg.input_channels}, {cfg.epoch_samples}) µV, got {tuple(x.shape)}")
        b, l = x.shape[:2]
        flat = x.reshape(b * l, cfg.input_channels, cfg.epoch_samples)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            h = self.head_dropout(self.sequence(self.encode_epochs(flat).reshape(b, l, -1)))
        logits = self.classifier(h)
        out: dict[str, torch.Tensor] = {"logits": logits}
        if labels is not None:
            if labels.shape != (b, l):
                raise ValueError(f"labels must be (B, L) = {(b, l)}, got {tuple(labels.shape)}")
            loss = masked_cross_entropy(logits, labels)
            out.update(loss=loss, loss_ce=loss.detach())
        return out

def _channel_slots(config: CrossFusionSleepNetConfig) -> tuple[tuple[str, ...], ...]:
    return config.channel_slots


@register(
    "crossfusionsleepnet",
    config_class=CrossFusionSleepNetConfig,
    channels=_channel_slots,
    description="CrossFusionSleepNet: multichannel time-domain CNN-Transformer and STFT TF-image encoder, "
    "bidirectional cross-attention, residual fusion encoder, optional epoch-context Transformer",
    normalization="uv",
)
def build_crossfusionsleepnet(config: CrossFusionSleepNetConfig) -> CrossFusionSleepNet:
    return CrossFusionSleepNet(config)
