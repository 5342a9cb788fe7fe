"""ISATSleepNet (JiangZaiUp, "A Neuro-Inspired Sleep Staging Network with Interactive Temporal Attention"):
a supervised per-epoch classifier on three channels, [EEG(sec), EOG(L), EEG].

Facts (layer sizes, the similarity gate, the prototype rectifier) come from the authors' public training
script (ISATSleepNet.py / NIIASleepNet.py in the JiangZaiUp repositories); this is an independent
implementation. Data flow for one 30-s epoch (the (B, L) input is flattened to B·L epochs, each classified
on its own; L only says how many epochs arrive per sample):

1. Two EEG extractors (one per EEG channel, not shared), "neuro-inspired multi-scale": three parallel
   Conv1d(1→32) with (kernel, stride) = (30, 5), (50, 10), (70, 20) — 0.3/0.5/0.7-s receptive fields —
   the coarser outputs (300, 150 steps) are brought to the finest (600) by adaptive average pooling,
   concatenated (96 ch) → BN → a learnable per-channel gain 1 + 0.1·tanh(p) → ReLU → Dropout(0.1);
   MaxPool 2 → Conv(96→64, k3) → ReLU → MaxPool 2 → Conv(64→128, k3) → ReLU → BN → Dropout.
   Output: 150 tokens (0.2 s each) of 128 features.
2. EOG "slow/fast ocular dynamics" extractor: slow branch Conv(1→32, k101, s4) on the signal (slow eye
   movements), fast branch Conv(1→32, k15, s2) on its first difference (saccade edges of REM); both
   average-pooled to the shorter length (750), concatenated (64 ch); two residual blocks of two
   Conv(64→64, k51) with dilation 2 and 4 (receptive field ≈ 6 s at 750 steps/30 s); a 3-level pyramid
   (average-pool to 150, 75, 37 steps, the coarse levels linearly upsampled back to 150) → 1×1 conv
   (192→128) → BN → ReLU → Dropout. Output: 150 tokens aligned in time with the EEG tokens.
3. Cross-modal interactive temporal attention: each modality m ∈ {EEG(sec), EOG, EEG} attends (single
   head, Q/K/V Linear 128→128, scaled dot product over the 150 tokens) to each other modality n — six
   directed cross-attentions. Each is scaled by a similarity gate
   g_mn(t) = s_mn · (1 + cos(P_m f_m(t), P_n f_n(t))) / 2, where P_m is the modality's state projector
   (Linear 128→64 without bias → LayerNorm) and s_mn a learnable scalar (init 1): time steps where the two
   modalities agree exchange more information. f_m ← f_m + Σ_n g_mn ⊙ CA(f_m → f_n).
4. Concatenate the three enhanced streams (384) → Linear → 128 → 2-layer BiLSTM (hidden 128, dropout
   between layers) over the 150 intra-epoch tokens → multi-head self-attention (256-d, 4 heads, residual +
   post-LayerNorm) → prototype ("attractor") rectifier → mean over tokens → Dropout → MLP head
   (256→128, ReLU, Dropout) → final Linear classifier (128→n_classes).
5. Prototype rectifier: K learnable prototypes A (K × 256, N(0,1) init) and a learnable temperature τ.
   With s = mean_t h(t): w = softmax(cos(s, A_k) / τ), â = wᵀA, s' = s + β(â − s) and every token is
   pulled towards it, h(t) ← h(t) + β(s' − h(t)), β = 0.5. (Followed by mean pooling this equals
   s + β²(â − s): the epoch summary moves a quarter of the way towards the soft-assigned prototype.)

Choices where paper/code are silent or that we changed (documented for the lead):

* Input normalisation: "robust" (each channel of each recording centred on its median and divided by
  its inter-quartile range; the loader applies it, registry ``normalization="robust"``). The public code
  feeds raw µV from npz files. Every branch starts with a convolution followed by BatchNorm, which absorbs
  one dataset-wide gain per channel, but not per-recording gain differences (SHHS sites, electrode
  impedance, EOG amplitude varies a lot between subjects) — the per-recording robust scale removes those
  while, unlike a per-epoch z-score, keeping the amplitude of an epoch relative to the rest of its night
  (slow waves of N3, quiet EOG in N2 vs. REM bursts), which is a staging cue. O(1) inputs also keep the
  first-layer activations in a comfortable range for bf16/fp16 training.
* Loss: cross-entropy over scored epochs (labels -1 ignored, `masked_cross_entropy`). The public script's
  "HybridLoss" is instantiated with alpha = 1 (pure CE, no class weights), so this is the same objective.
  The Physio-GAN N1 augmentation is a separate data-generation stage and is not part of this module.
  The public script tunes per-class decision thresholds on the test split; we do not (argmax of logits).
* The prototype count is its own field ``n_prototypes`` (default 5, the five sleep states of the paper's
  "attractors"); the public code ties it to the number of classes, but the binary apnea/hypopnea tasks
  (n_classes = 2) should not change the epoch-level representation.
* τ is clamped to >= ``min_temperature`` (0.05) in the forward pass: the public code lets the learnable
  temperature reach 0 or go negative, which would invert or blow up the soft assignment.
* The public model instantiates three modules its forward never calls (a distance read-out, an
  "EEG cortical fusion" and an "EOG modulation" MLP, 59 k parameters together); we leave them out.
* All stages ("pretrain", "finetune", "eval") compute the same supervised loss: the model has no
  self-supervised objective, masking or augmentation. `prepare_finetune("linear")` freezes everything but
  the final Linear classifier (the MLP head's hidden layer counts as features: linear probing proper);
  "full" trains everything (the paper trains end to end). Frozen modules stay in eval mode.

Parameter count. At paper size this module has 2,291,468 parameters (EEG extractors 2 × 48.6 k, EOG
extractor 864.8 k, interaction 322.2 k = six cross-attentions 297.2 k + state projectors 25.0 k, fusion
projection 49.3 k, BiLSTM 659.5 k, self-attention 263.7 k, rectifier 1.3 k, MLP head 32.9 k, classifier
0.6 k). The paper reports ~2.35 M; the public model totals 2,350,797 with its three unused modules
(59,329 parameters), so the 2.5 % gap is exactly those. `small()` has 86 k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from distsleep.config import ConfigBase, fields_preset
from distsleep.models.common import FreezableModel, masked_cross_entropy
from distsleep.models.registry import register

Stage = Literal["pretrain", "finetune", "eval"]
STAGES: tuple[str, ...] = ("pretrain", "finetune", "eval")
# Slot order is the public code's [EEG(sec), EOG(L), EEG]; each slot lists the SHHS role, then Sleep-EDF's.
ISAT_CHANNEL_SLOTS: tuple[tuple[str, ...], ...] = (
    ("eeg_c3", "eeg_pz_oz"),
    ("eog_l", "eog"),
    ("eeg_c4", "eeg_fpz_cz"),
)


@dataclass(frozen=True)
class ISATSleepNetConfig(ConfigBase):
    """Hyper-parameters; defaults are the public code's (paper size). `small()` is a CPU-test preset."""

    STRICT = True  # a bundle or override with an unknown field is refused
    DEFAULT_PRESET = "paper"

    # data
    seq_len: int = 1  # epochs per input sample; each epoch is classified independently
    input_channels: int = 3
    n_classes: int = 5
    epoch_samples: int = 3000
    # multi-scale EEG extractor
    eeg_scale_channels: int = 32  # per scale
    eeg_scale_kernels: tuple[int, ...] = (30, 50, 70)
    eeg_scale_strides: tuple[int, ...] = (5, 10, 20)
    eeg_mid_channels: int = 64
    gain_eps: float = 0.1  # per-channel gain 1 + eps·tanh(p)
    extractor_dropout: float = 0.1  # after the multi-scale block
    # EOG slow/fast extractor
    eog_channels: int = 64  # half slow, half fast
    eog_slow_kernel: int = 101
    eog_slow_stride: int = 4
    eog_fast_kernel: int = 15
    eog_fast_stride: int = 2
    eog_res_kernel: int = 51
    eog_res_dilations: tuple[int, ...] = (2, 4)
    eog_pyramid: tuple[int, ...] = (1, 2, 4)  # token-count divisors of the pyramid levels
    # interaction and sequence model
    feature_dim: int = 128  # per-modality token width
    state_dim: int = 64  # similarity-gate projection
    d_model: int = 128  # fusion projection and LSTM hidden size (BiLSTM output 2·d_model)
    lstm_layers: int = 2
    attn_heads: int = 4
    n_prototypes: int = 5
    rectifier_beta: float = 0.5
    min_temperature: float = 0.05
    head_hidden: int = 128
    dropout: float = 0.5

    def __post_init__(self) -> None:
        # Configs come back from JSON / MLflow params with lists: normalise them.
        for name in ("eeg_scale_kernels", "eeg_scale_strides", "eog_res_dilations", "eog_pyramid"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.input_channels != len(ISAT_CHANNEL_SLOTS):
            raise ValueError(f"ISATSleepNet takes exactly {len(ISAT_CHANNEL_SLOTS)} channels [EEG(sec), EOG, EEG], "
                             f"got input_channels={self.input_channels}")
        if len(self.eeg_scale_kernels) != len(self.eeg_scale_strides) or not self.eeg_scale_kernels:
            raise ValueError("eeg_scale_kernels and eeg_scale_strides must have the same (non-zero) length")
        if self.eog_channels % 2:
            raise ValueError(f"eog_channels must be even (half slow, half fast), got {self.eog_channels}")
        if not self.eog_pyramid or self.eog_pyramid[0] != 1:
            raise ValueError(f"eog_pyramid must start with 1 (the full-resolution level), got {self.eog_pyramid}")
        if (2 * self.d_model) % self.attn_heads:
            raise ValueError(f"2·d_model={2 * self.d_model} must be divisible by attn_heads={self.attn_heads}")
        if self.seq_len < 1 or self.n_classes < 2 or self.lstm_layers < 1 or self.n_prototypes < 1:
            raise ValueError("seq_len, lstm_layers, n_prototypes must be >= 1 and n_classes >= 2")
        if not 0.0 <= self.rectifier_beta <= 1.0:
            raise ValueError(f"rectifier_beta must be in [0, 1], got {self.rectifier_beta}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.extractor_dropout < 1.0):
            raise ValueError("dropout rates must be in [0, 1)")
        if self.min_temperature <= 0:
            raise ValueError("min_temperature must be > 0")

    small = fields_preset(
        "A tiny model for CPU tests (86 k parameters, same graph).",
        eeg_scale_channels=8, eeg_mid_channels=16, eog_channels=16, eog_res_kernel=15, feature_dim=32, state_dim=16,
        d_model=32, lstm_layers=1, attn_heads=4, head_hidden=32)


# --------------------------------------------------------------------------------------------- extractors


def _align(x: torch.Tensor, length: int) -> torch.Tensor:
    """Average-pool (or repeat, when shorter) a (N, C, T) map to `length` steps."""
    return x if x.shape[-1] == length else F.adaptive_avg_pool1d(x, length)


class MultiScaleEEG(nn.Module):
    """(N, 1, 3000) → (N, T, feature_dim): parallel strided convolutions at several time scales + 2 convs."""

    def __init__(self, cfg: ISATSleepNetConfig) -> None:
        super().__init__()
        c = cfg.eeg_scale_channels
        self.scales = nn.ModuleList(
            nn.Conv1d(1, c, k, stride=s, padding=(k - 1) // 2) for k, s in zip(cfg.eeg_scale_kernels, cfg.eeg_scale_strides)
        )
        width = c * len(self.scales)
        self.norm = nn.BatchNorm1d(width)
        self.gain = nn.Parameter(torch.zeros(width))  # gain 1 + eps·tanh(p): a bounded channel re-weighting
        self.gain_eps = cfg.gain_eps
        self.drop = nn.Dropout(cfg.extractor_dropout)
        self.body = nn.Sequential(
            nn.MaxPool1d(2),
            nn.Conv1d(width, cfg.eeg_mid_channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(cfg.eeg_mid_channels, cfg.feature_dim, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm1d(cfg.feature_dim),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(x) for conv in self.scales]
        finest = outs[0].shape[-1]
        z = self.norm(torch.cat([_align(o, finest) for o in outs], dim=1))
        z = z * (1.0 + self.gain_eps * torch.tanh(self.gain)).to(z.dtype)[:, None]
        z = self.drop(F.relu(z))
        return self.body(z).transpose(1, 2)


class DilatedResidual(nn.Module):
    """x ← ReLU(x + BN(Conv(ReLU(BN(Conv(x)))))) with 'same' dilated convolutions."""

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        pad = (kernel - 1) // 2 * dilation
        self.body = nn.Sequential(
            nn.Conv1d(channels, channels, kernel, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm1d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class OcularDynamicsEOG(nn.Module):
    """(N, 1, 3000) EOG → (N, tokens, feature_dim): slow (signal) and fast (first difference) branches,
    dilated residual blocks, a temporal pyramid brought to the EEG token grid."""

    def __init__(self, cfg: ISATSleepNetConfig) -> None:
        super().__init__()
        half = cfg.eog_channels // 2

        def branch(kernel: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv1d(1, half, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False),
                nn.BatchNorm1d(half),
                nn.ReLU(),
            )

        self.slow = branch(cfg.eog_slow_kernel, cfg.eog_slow_stride)
        self.fast = branch(cfg.eog_fast_kernel, cfg.eog_fast_stride)
        self.blocks = nn.Sequential(*(DilatedResidual(cfg.eog_channels, cfg.eog_res_kernel, d) for d in cfg.eog_res_dilations))
        self.pyramid = cfg.eog_pyramid
        self.fuse = nn.Sequential(
            nn.Conv1d(cfg.eog_channels * len(cfg.eog_pyramid), cfg.feature_dim, 1, bias=False),
            nn.BatchNorm1d(cfg.feature_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, tokens: int) -> torch.Tensor:
        slow = self.slow(x)
        # First difference, left-padded: edges (saccades) rather than level (slow drifts).
        fast = self.fast(F.pad(x[..., 1:] - x[..., :-1], (1, 0)))
        length = min(slow.shape[-1], fast.shape[-1])
        z = self.blocks(torch.cat([_align(slow, length), _align(fast, length)], dim=1))
        levels = []
        for div in self.pyramid:
            level = F.adaptive_avg_pool1d(z, max(tokens // div, 1))
            if level.shape[-1] != tokens:
                level = F.interpolate(level, size=tokens, mode="linear", align_corners=False)
            levels.append(level)
        return self.fuse(torch.cat(levels, dim=1)).transpose(1, 2)


# ------------------------------------------------------------------------------------------- interaction


class SingleHeadCrossAttention(nn.Module):
    """softmax(Q(x) K(y)ᵀ / √d) V(y): tokens of x read from tokens of y."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(y), self.v(y)
        if torch.compiler.is_exporting():
            # ONNX's exporter takes attention only as (batch, heads, tokens, dim): the same product with one head.
            # Training keeps the 3-D call, whose CPU kernel rounds differently (~1e-6); `distsleep export` checks
            # the exported graph against this eager path.
            return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return F.scaled_dot_product_attention(q, k, v)


class StateProjector(nn.Module):
    """Linear (no bias) → LayerNorm: the space in which the similarity gate compares modalities."""

    def __init__(self, dim: int, state_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, state_dim, bias=False)
        self.norm = nn.LayerNorm(state_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class InteractiveTemporalAttention(nn.Module):
    """Six gated, directed cross-attentions between the three modality token streams (module docstring §3)."""

    def __init__(self, n_modalities: int, dim: int, state_dim: int) -> None:
        super().__init__()
        self.pairs = [(m, n) for m in range(n_modalities) for n in range(n_modalities) if m != n]
        self.states = nn.ModuleList(StateProjector(dim, state_dim) for _ in range(n_modalities))
        self.cross = nn.ModuleList(SingleHeadCrossAttention(dim) for _ in self.pairs)
        self.gate_scale = nn.Parameter(torch.ones(len(self.pairs)))

    def gates(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """(pairs, N, T, 1): s_mn · (1 + cos(P_m f_m, P_n f_n)) / 2 per token."""
        states = [F.normalize(p(f), dim=-1, eps=1e-6) for p, f in zip(self.states, feats)]
        sims = torch.stack([(states[m] * states[n]).sum(-1, keepdim=True) for m, n in self.pairs])
        return self.gate_scale.to(sims.dtype)[:, None, None, None] * (sims + 1.0) / 2.0

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        gates = self.gates(feats)
        out = list(feats)
        for i, ((m, n), attn) in enumerate(zip(self.pairs, self.cross)):
            out[m] = out[m] + gates[i] * attn(feats[m], feats[n])
        return out


class PostNormSelfAttention(nn.Module):
    """LN(x + Dropout(MHSA(x)))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.attn(x, x, x, need_weights=False)[0]))


class PrototypeRectifier(nn.Module):
    """Pull the tokens towards the soft-assigned prototype of their epoch summary (module docstring §5)."""

    def __init__(self, dim: int, n_prototypes: int, beta: float, min_temperature: float) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(n_prototypes, dim))
        self.temperature = nn.Parameter(torch.ones(1))  # shape (1,): DeepSpeed cannot broadcast 0-dim parameters
        self.beta = beta
        self.min_temperature = min_temperature

    def assignment(self, summary: torch.Tensor) -> torch.Tensor:
        """(N, K) softmax over prototypes of cos(summary, prototype) / τ."""
        sim = F.normalize(summary, dim=-1) @ F.normalize(self.prototypes.to(summary.dtype), dim=-1).T
        return torch.softmax(sim / self.temperature.clamp(min=self.min_temperature).to(sim.dtype), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s = h.mean(dim=1)
        target = self.assignment(s) @ self.prototypes.to(h.dtype)
        s_refined = s + self.beta * (target - s)
        return h + self.beta * (s_refined[:, None] - h)


# ------------------------------------------------------------------------------------------------ model


class ISATSleepNet(FreezableModel):
    """The full model; see the module docstring. `forward(x, labels, stage)` returns a dict of tensors."""

    def __init__(self, cfg: ISATSleepNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.eeg_sec_extractor = MultiScaleEEG(cfg)
        self.eog_extractor = OcularDynamicsEOG(cfg)
        self.eeg_extractor = MultiScaleEEG(cfg)
        self.interaction = InteractiveTemporalAttention(3, cfg.feature_dim, cfg.state_dim)
        self.fusion = nn.Linear(3 * cfg.feature_dim, cfg.d_model)
        self.lstm = nn.LSTM(
            cfg.d_model,
            cfg.d_model,
            num_layers=cfg.lstm_layers,
            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
            batch_first=True,
            bidirectional=True,
        )
        self.self_attention = PostNormSelfAttention(2 * cfg.d_model, cfg.attn_heads, cfg.dropout)
        self.rectifier = PrototypeRectifier(2 * cfg.d_model, cfg.n_prototypes, cfg.rectifier_beta, cfg.min_temperature)
        self.mlp = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(2 * cfg.d_model, cfg.head_hidden), nn.ReLU(), nn.Dropout(cfg.dropout)
        )
        self.classifier = nn.Linear(cfg.head_hidden, cfg.n_classes)

    # ---- fine-tuning support

    # ---- pieces

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 3000) → (N, 2·d_model) rectified, pooled epoch representation."""
        eeg_sec = self.eeg_sec_extractor(x[:, 0:1])
        eeg = self.eeg_extractor(x[:, 2:3])
        eog = self.eog_extractor(x[:, 1:2], tokens=eeg.shape[1])
        eeg_sec, eog, eeg = self.interaction([eeg_sec, eog, eeg])
        z = self.fusion(torch.cat([eeg_sec, eeg, eog], dim=-1))
        z, _ = self.lstm(z)
        z = self.rectifier(self.self_attention(z))
        return z.mean(dim=1)

    # ---- forward

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, stage: Stage = "eval") -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if x.dim() != 4 or x.shape[2] != cfg.input_channels or x.shape[3] != cfg.epoch_samples:
            raise ValueError(f"x must be (B, L, {cfg.input_channels}, {cfg.epoch_samples}), got {tuple(x.shape)}")
        b, l = x.shape[:2]
        flat = x.reshape(b * l, cfg.input_channels, cfg.epoch_samples).to(self.classifier.weight.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            h = self.mlp(self.features(flat))
        logits = self.classifier(h).reshape(b, l, cfg.n_classes)
        out: dict[str, torch.Tensor] = {"logits": logits}
        if labels is not None:
            if labels.shape != (b, l):
                raise ValueError(f"labels must be (B, L) = {(b, l)}, got {tuple(labels.shape)}")
            loss = masked_cross_entropy(logits, labels)
            out.update(loss=loss, loss_ce=loss.detach())
        return out

@register(
    "isatsleepnet",
    config_class=ISATSleepNetConfig,
    channels=ISAT_CHANNEL_SLOTS,
    description="ISATSleepNet: multi-scale EEG + slow/fast EOG extractors, similarity-gated cross-modal "
    "attention, BiLSTM, self-attention, prototype rectifier (per-epoch, supervised)",
    normalization="robust",
)
def build_isatsleepnet(config: ISATSleepNetConfig) -> ISATSleepNet:
    return ISATSleepNet(config)
