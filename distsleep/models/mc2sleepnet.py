"""MC²SleepNet (Na et al., ACM MM 2024): raw-EEG CNN + spectrogram Transformer, InfoNCE between them,
and a cross-masked, cross-attending sequence Transformer. The reading follows DESIGN.md §5 where it
differs from the paper.

Data flow for a batch x of shape (B, L, C=1, 3000) in µV (one staging EEG, 30-s epochs at 100 Hz):

1. Spectrogram Sp (29 × 129 dB) of every *clean* epoch, on x's device (distsleep.spectrogram).
2. Training in the "pretrain" stage only: raw epochs get one random augmentation each, spectrograms
   additive noise (distsleep.augment) — the two contrastive views.
3. Epoch level, per modality: backbone tokens (raw: 5 × 128 from the SleePyCo CNN; spectrogram: 29 × 128
   from a resizing CNN + sinusoidal PE + 4 post-LN Transformer layers), epoch-wise attention pooling →
   O^Sg, O^Sp ∈ R^128; projection (Linear 128→128, L2-normalised) → symmetric InfoNCE (Eq. 14–16).
4. Sequence level: in "pretrain" training, cross-masking on an *expanded batch* of 2B sequences: the B
   sequences once with L − int(L·(1−r)) raw-signal features replaced by the shared mask token and the
   spectrogram features complete, and once the other way round; + sinusoidal PE over the L epochs; per
   modality 4 layers of [self-attn → LN → cross-attn (query = own modality) → LN → FF → LN] → t^Sg, t^Sp.
5. Heads: MLP(t^Sg), MLP(t^Sp), MLP(t^Sg ⊕ t^Sp) → 5 classes; inference uses the concat head.

What the paper (and the authors' public fragments) fix, as implemented here:

* Cross-masking (§3.2, "unmasked and masked pairs" in "an expanded batch"; the authors' code runs two
  passes: masked raw-signal features with complete spectrogram features, then the reverse). Every
  pre-training sequence appears twice in the expanded batch; in no pass is an epoch masked in both
  views, so each masked feature can be recovered from the other modality through cross-attention.
  Positions are drawn independently per sequence and per pass. One mask token (a single nn.Parameter)
  serves both modalities ("our masked tokens are shared"). The outputs of a pre-training forward in
  training mode cover the expanded batch: rows [0, B) are the pass with Sg masked, [B, 2B) the pass with
  Sp masked (``logits``, ``mask_sg``, ``mask_sp``); the labels are repeated to match.
* Masked count as the authors count it: int(L·(1−r)) epochs stay visible, L − that many are masked
  (`n_masked`; at L = 21 that is 4/6/7/9 epochs at r = 15/25/30/40 %, where round(L·r) would give
  3/5/6/8). ``mask_ratio_effective`` (masked epochs / L of the masked view) is returned and logged.
  Masking happens only in stage "pretrain" with the module in training mode and r > 0; never in
  "finetune" or "eval" or under model.eval().
* Eq. 19 weights: pre-training w1 = 1 on the raw-signal head (t^Sg), w2 = 0.1 on the spectrogram head,
  w3 = 0.1 on the concatenated head (``head_weights_pretrain`` = (w1, w2, w3)); fine-tuning 1/1/1.
* Eq. 18: the cross-entropy of each head is summed over the L epochs of a sequence (scored epochs only;
  labels == -1 are ignored) and averaged over the sequences of the (expanded) batch, so InfoNCE (a mean
  over epochs, Eq. 15) and the sequence loss have the paper's balance. ``sequence_loss="mean"`` (mean
  over scored epochs, ~L times smaller) is kept as an option; the default is the paper's ``"sum"``.
* Table 3's ablations are model settings (``--set``): ``branches="raw"`` (CNN only) or
  ``"spectrogram"`` (TF only), ``sequence_level=False`` (each epoch classified from its own features,
  the "(single)" rows), ``contrastive=False`` (no InfoNCE), ``cross_attention=False`` (the two sequence
  stacks do not attend to each other; masked features can then only be inferred from their neighbours).
  Rows: TF only (single) = branches=spectrogram sequence_level=false; CNN only (single) = branches=raw
  sequence_level=false; TF+CNN (multi) = contrastive=false, r = 0, no fine-tuning; TF+CNN+CL+FT = r = 0
  then fine-tuning; TF+CNN+M+FT = contrastive=false then fine-tuning; TF+CNN+PT(CL+M) = the default
  without fine-tuning; TF+CNN+PT+FT = the default. A single branch has no partner: no InfoNCE, no
  cross-attention, its masked pass is the only one, and its head is the only (and inference) head, with
  weight 1.

Choices where the paper is silent or inconsistent:

* Input normalisation. Raw epochs are divided by a fixed ``raw_scale_uv`` (25 µV) instead of a per-epoch
  z-score: the amplitude of an epoch relative to its neighbours (slow-wave sleep vs. wake) is a staging
  cue a per-epoch z-score would erase, and the BatchNorm after the first convolution absorbs the exact
  constant. Spectrograms are computed from the µV signal (floor ``spectrogram_eps`` = 0.01 µV, i.e.
  -40 dB, so flat-line or zero-padded epochs do not produce -120 dB outliers) and standardised per
  frequency bin by a non-affine BatchNorm whose running statistics play the role of XSleepNet's /
  SleepTransformer's dataset-level per-bin normalisation.
* int(L·(1−r)) is computed with 1e-9 added before truncation, so that binary rounding
  (10 × (1 − 0.9) = 0.9999…) does not mask one epoch more than the decimal ratio says.
* A sinusoidal positional encoding is added to the epoch sequence after masking. The paper does not
  mention one, but without it self- and cross-attention are permutation-equivariant and every masked
  position of a sequence would receive the same output.
* Transformer layers are standard post-LN ``LN(x + Sublayer(x))`` with ReLU feed-forward (Eq. 4–6); the
  extra outer residual literally written in Eq. 7 is taken as a typesetting slip. Eq. 17 swaps the
  letters of Q and K; we follow the text (query = own modality, key/value = the other one). The two
  modalities' layers update in lock-step, each attending to the other's previous-layer output.
* InfoNCE: Eq. 14 draws negatives for epoch j from the other sequences' epoch j (B − 1 negatives);
  that is ``infonce_negatives="position"`` (default). ``"all"`` uses every other epoch of the batch.
  Eq. 14 literally writes -log of the *mean* ratio over L; we use the usual mean over epochs of
  -log ratio (cross-entropy), which has the same optimum and standard gradients. Projections are
  L2-normalised (cosine similarity / τ) — with a raw dot product a temperature of 0.1 is unstable.
  τ is not published: ``infonce_temperature`` (default 0.1). InfoNCE is computed once per sequence (on
  the unmasked epoch features), not per pass of the expanded batch. With several data-parallel workers the
  projections are gathered over them first (``common.across_workers``), so the negatives are the global
  batch's B − 1 (the paper's 31 at B = 32) whatever the number of workers; with gradient accumulation, those
  of the global micro-batch.
* "GAP" after epoch-wise attention (Eq. 12) is the identity on the already pooled 128-d vector.
* §3.1 says the epoch level starts from "pre-trained backbone networks" without saying how they were
  pre-trained (nor is it in DESIGN.md); we train both backbones from scratch, InfoNCE from the first step.
  `--init-from` a run of ours (or any source with matching weight names) starts them from trained weights.
* Fine-tuning freezes the whole epoch-level encoder (both backbones and both epoch-wise attentions,
  plus the unused projections): the sequence part is trained on "the pairs of the unmasked feature
  sequences" the frozen epoch level produces. Frozen modules are kept in eval mode so their BatchNorm
  statistics and dropout do not change either.

Parameter count. At paper size this module has 6.27 M parameters: raw CNN 1.58 M (as DESIGN §5),
spectrogram branch 1.39 M (4 Transformer layers 1.32 M + resizing CNN 0.07 M), the two 4-layer
cross-modal sequence stacks 3.17 M, epoch-wise attentions + projections 0.07 M, three MLP heads 0.07 M.
That is 8.8 % above the 5.76 M of Table 2 (inside the 10 % tolerance; `small()` has 0.11 M). The paper
does not publish the sequence stack's feed-forward width, the head sizes or the resizing CNN; we reuse the
backbone's FF 1024 for the sequence layers, which alone accounts for most of the gap (an FF of 768 there
would land on 5.74 M), but we do not fit an unpublished number to match a total. The expanded batch
adds no parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from distsleep.augment import RawAugmentConfig, augment_raw, augment_spectrogram
from distsleep.config import ConfigBase, fields_preset
from distsleep.models.common import (FreezableModel, across_workers, check_finetune_mode, check_mask_ratio,
                                     masked_cross_entropy, sinusoidal_positional_encoding)
from distsleep.models.registry import register
from distsleep.spectrogram import N_FFT, n_frames, torch_spectrogram

Stage = Literal["pretrain", "finetune", "eval"]
STAGES: tuple[str, ...] = ("pretrain", "finetune", "eval")
BRANCHES: tuple[str, ...] = ("both", "raw", "spectrogram")
SEQUENCE_LOSSES: tuple[str, ...] = ("sum", "mean")
STAGING_EEG_ROLES: tuple[str, ...] = ("eeg_c4", "eeg_fpz_cz")  # SHHS C4-A1, Sleep-EDF Fpz-Cz


@dataclass(frozen=True)
class MC2SleepNetConfig(ConfigBase):
    """Hyper-parameters; defaults are the paper's (DESIGN §5). `small()` is a CPU-test preset."""

    STRICT = True  # a bundle or override with an unknown field is refused
    DEFAULT_PRESET = "paper"

    # data
    seq_len: int = 21
    input_channels: int = 1
    n_classes: int = 5
    epoch_samples: int = 3000
    sample_rate: float = 100.0
    raw_scale_uv: float = 25.0  # raw epochs are divided by this (see module docstring)
    spectrogram_eps: float = 1e-2  # µV floor inside log10 (-40 dB)
    # raw-signal CNN backbone (SleePyCo)
    raw_widths: tuple[int, ...] = (64, 128, 192, 256, 256)
    raw_convs_per_block: tuple[int, ...] = (2, 2, 3, 3, 3)
    raw_pool: int = 5
    se_reduction: int = 16
    # shared width
    d_model: int = 128
    # spectrogram Transformer backbone
    spec_layers: int = 4
    spec_heads: int = 8
    spec_ff: int = 1024
    # epoch-wise attention and contrastive projection
    attention_dim: int = 128
    proj_dim: int = 128
    # sequence level
    seq_layers: int = 4
    seq_heads: int = 8
    seq_ff: int = 1024
    head_hidden: int = 128
    dropout: float = 0.1
    mask_ratio: float = 0.5
    # losses
    infonce_temperature: float = 0.1
    infonce_negatives: str = "position"  # "position" (Eq. 14) or "all"
    infonce_weight: float = 1.0
    # Eq. 19's (w1, w2, w3) = weights of the (raw-signal Sg, spectrogram Sp, concatenated) heads
    head_weights_pretrain: tuple[float, float, float] = (1.0, 0.1, 0.1)
    head_weights_finetune: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sequence_loss: str = "sum"  # Eq. 18: "sum" over a sequence's epochs, mean over sequences; "mean": per epoch
    # Table 3 ablations (module docstring); the defaults are the full model
    branches: str = "both"  # "both", "raw" (CNN only) or "spectrogram" (TF only)
    sequence_level: bool = True  # False: each epoch classified from its own features ("single")
    contrastive: bool = True  # epoch-level InfoNCE ("CL")
    cross_attention: bool = True  # the sequence stacks attend to each other
    # augmentation (pretrain stage, training mode only)
    augment: bool = True
    # The paper names additive noise on the spectrogram without its level: ours, a standard deviation of 1 dB
    # (the spectrogram is in dB, floored at -40 dB).
    spec_noise_db: float = 1.0
    raw_augment: RawAugmentConfig = field(default_factory=RawAugmentConfig)

    def __post_init__(self) -> None:
        # Configs come back from JSON / MLflow params with lists and dicts: normalise them.
        for name in ("raw_widths", "raw_convs_per_block", "head_weights_pretrain", "head_weights_finetune"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.raw_augment, dict):
            aug = {k: tuple(v) if isinstance(v, list) else v for k, v in self.raw_augment.items()}
            object.__setattr__(self, "raw_augment", RawAugmentConfig(**aug))
        if len(self.head_weights_pretrain) != 3 or len(self.head_weights_finetune) != 3:
            raise ValueError("head weights are Eq. 19's (w1 raw-signal Sg, w2 spectrogram Sp, w3 concat) triples")
        if self.branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {self.branches!r}")
        if self.sequence_loss not in SEQUENCE_LOSSES:
            raise ValueError(f"sequence_loss must be one of {SEQUENCE_LOSSES}, got {self.sequence_loss!r}")
        for name in ("sequence_level", "contrastive", "cross_attention", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_mask_ratio(self.mask_ratio)
        if len(self.raw_widths) != len(self.raw_convs_per_block) or len(self.raw_widths) < 1:
            raise ValueError("raw_widths and raw_convs_per_block must have the same (non-zero) length")
        if self.d_model % self.spec_heads or self.d_model % self.seq_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by spec_heads and seq_heads")
        if self.infonce_negatives not in ("position", "all"):
            raise ValueError(f"infonce_negatives must be 'position' or 'all', got {self.infonce_negatives!r}")
        if self.infonce_temperature <= 0:
            raise ValueError("infonce_temperature must be > 0")
        if self.input_channels < 1 or self.seq_len < 1:
            raise ValueError("input_channels and seq_len must be >= 1")

    small = fields_preset(
        "A tiny model for CPU tests and the demo (~0.1 M parameters, same graph).",
        seq_len=5, raw_widths=(8, 16, 24, 32, 32), se_reduction=4, d_model=32, spec_layers=1, spec_heads=4,
        spec_ff=64, attention_dim=32, proj_dim=32, seq_layers=2, seq_heads=4, seq_ff=64, head_hidden=32)


    @property
    def uses_raw(self) -> bool:
        return self.branches in ("both", "raw")

    @property
    def uses_spectrogram(self) -> bool:
        return self.branches in ("both", "spectrogram")

    @property
    def bimodal(self) -> bool:
        """Both branches: InfoNCE, cross-attention and the second cross-masking pass exist only then."""
        return self.branches == "both"

    @property
    def raw_tokens(self) -> int:
        """Tokens the raw CNN yields: ceil-divide by `raw_pool` once per block after the first."""
        n = self.epoch_samples
        for _ in range(len(self.raw_widths) - 1):
            n = math.ceil(n / self.raw_pool)
        return n


def n_visible(seq_len: int, ratio: float) -> int:
    """Epochs left visible in the masked view, as the authors' code counts them: int(L·(1−r)) (1e-9 absorbs
    binary rounding such as 10 × (1 − 0.9) = 0.9999…)."""
    return max(0, min(seq_len, int(seq_len * (1.0 - ratio) + 1e-9)))


def n_masked(seq_len: int, ratio: float) -> int:
    """Masked epochs per sequence in the masked view: L − int(L·(1−r)) (r = 0.5, L = 21 → 11)."""
    return seq_len - n_visible(seq_len, ratio)


def effective_mask_ratio(seq_len: int, ratio: float) -> float:
    """The fraction of a masked view's epochs that are really masked at this L (r = 0.15, L = 21 → 4/21)."""
    return n_masked(seq_len, ratio) / seq_len


# ------------------------------------------------------------------------------------------ raw backbone


class SqueezeExcite(nn.Module):
    """Channel gate: global average → FC → ReLU → FC → sigmoid → rescale (reduction r)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=-1))[..., None]


class ConvBlock(nn.Module):
    """[MaxPool] → n × (Conv1d k3 'same' → BN), PReLU after each but the last; SE gate; PReLU."""

    def __init__(self, c_in: int, c_out: int, n_convs: int, pool: int | None, se_reduction: int) -> None:
        super().__init__()
        # ceil_mode: the last pool turns 24 samples into 5 tokens (a floor pool would give 4).
        self.pool = nn.MaxPool1d(pool, ceil_mode=True) if pool else nn.Identity()
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [nn.Conv1d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.BatchNorm1d(c_out)]
            if i < n_convs - 1:
                layers.append(nn.PReLU())
        self.convs = nn.Sequential(*layers)
        self.se = SqueezeExcite(c_out, se_reduction)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.convs(self.pool(x))))


class RawBackbone(nn.Module):
    """SleePyCo CNN: (N, C, 3000) → (N, 5, d_model) tokens (DESIGN §5 shapes at paper widths)."""

    def __init__(self, cfg: MC2SleepNetConfig) -> None:
        super().__init__()
        blocks = []
        c_in = cfg.input_channels
        for i, (width, n_convs) in enumerate(zip(cfg.raw_widths, cfg.raw_convs_per_block)):
            blocks.append(ConvBlock(c_in, width, n_convs, None if i == 0 else cfg.raw_pool, cfg.se_reduction))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv1d(c_in, cfg.d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(x)).transpose(1, 2)


# ---------------------------------------------------------------------------------- spectrogram backbone


class SpectrogramBackbone(nn.Module):
    """(N, C, 29, 129) dB → (N, 29, d_model): per-bin standardisation, resizing CNN, PE, Transformer."""

    def __init__(self, cfg: MC2SleepNetConfig) -> None:
        super().__init__()
        n_bins = cfg.input_channels * (N_FFT // 2 + 1)
        self.n_frames = n_frames(cfg.epoch_samples)
        # Non-affine BatchNorm over frequency bins = dataset-level per-bin z-scoring (running stats).
        self.bin_norm = nn.BatchNorm1d(n_bins, affine=False)
        # "Simple CNN-based resizing": 129 bins → d_model features per time frame, with one non-linearity.
        self.resize = nn.Sequential(
            nn.Conv1d(n_bins, cfg.d_model, 3, padding=1),
            nn.BatchNorm1d(cfg.d_model),
            nn.GELU(),
            nn.Conv1d(cfg.d_model, cfg.d_model, 1),
        )
        self.register_buffer("pe", sinusoidal_positional_encoding(self.n_frames, cfg.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.spec_heads, cfg.spec_ff, cfg.dropout, activation="relu", batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.spec_layers, enable_nested_tensor=False)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        n, c, t, f = spec.shape
        z = spec.permute(0, 1, 3, 2).reshape(n, c * f, t)  # bins as channels, convolve over time
        z = self.resize(self.bin_norm(z)).transpose(1, 2)  # (N, T, d)
        return self.encoder(z + self.pe[:t].to(z.dtype))


class EpochWiseAttention(nn.Module):
    """a_t = tanh(W z_t + b), α = softmax_t(a_tᵀ a_e), output Σ_t α_t z_t (Eq. 9–11)."""

    def __init__(self, d_model: int, attention_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, attention_dim)
        self.context = nn.Parameter(torch.randn(attention_dim) / math.sqrt(attention_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scores = torch.tanh(self.proj(z)) @ self.context  # (N, T)
        alpha = torch.softmax(scores, dim=-1)
        return (alpha.unsqueeze(-1) * z).sum(dim=1)


# -------------------------------------------------------------------------------------- sequence level


class CrossModalLayer(nn.Module):
    """Post-LN: x ← LN(x + SA(x)); x ← LN(x + CA(q=x, kv=other)); x ← LN(x + FF(x)).

    Without `cross` (the no-cross-attention ablation, or a single branch) the middle step does not exist.
    """

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float, cross: bool = True) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True) if cross else None
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, d_model))
        self.norm1, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model) if cross else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.self_attn(x, x, x, need_weights=False)[0]))
        if self.cross_attn is not None:
            x = self.norm2(x + self.drop(self.cross_attn(x, other, other, need_weights=False)[0]))
        return self.norm3(x + self.drop(self.ff(x)))


def _mlp_head(d_in: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


# ----------------------------------------------------------------------------------------------- losses


def sequence_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum",
                           ignore_index: int = -1) -> torch.Tensor:
    """Eq. 18 on (N, L, classes) logits and (N, L) labels: the cross-entropy summed over the scored epochs
    of each sequence and averaged over the N sequences ("sum"), or the mean over scored epochs ("mean").

    Unscored epochs (ignore_index) contribute nothing; a batch without any scored epoch gives 0, in the
    graph ("mean" would otherwise be NaN).
    """
    if reduction == "mean":
        return masked_cross_entropy(logits, labels, ignore_index)
    if reduction != "sum":
        raise ValueError(f"reduction must be one of {SEQUENCE_LOSSES}, got {reduction!r}")
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(),
                            ignore_index=ignore_index, reduction="sum")
    return total / labels.shape[0]


def info_nce(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, negatives: str = "position") -> torch.Tensor:
    """Symmetric InfoNCE between two views (B, L, P) of the same epochs (Eq. 14–16).

    "position": for each epoch index j, a (B × B) similarity matrix — positives on the diagonal, negatives
    the other sequences' epoch j (Eq. 14). "all": one (BL × BL) matrix over every epoch of the batch.
    Returns the mean of the two directions, averaged over epochs (0 when B·(…) leaves no negatives).
    """
    if z_a.shape != z_b.shape or z_a.dim() != 3:
        raise ValueError(f"views must both be (B, L, P), got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    with torch.autocast(device_type=z_a.device.type, enabled=False):  # similarities / τ in float32
        return _info_nce_fp32(z_a, z_b, temperature, negatives)


def _info_nce_fp32(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, negatives: str) -> torch.Tensor:
    a = F.normalize(z_a.float(), dim=-1)
    b = F.normalize(z_b.float(), dim=-1)
    if negatives == "position":
        logits = torch.einsum("ilp,klp->lik", a, b) / temperature  # (L, B, B): row = anchor i, col = candidate k
        target = torch.arange(a.shape[0], device=a.device).expand(a.shape[1], -1)  # (L, B)
        a2b = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        b2a = F.cross_entropy(logits.transpose(1, 2).reshape(-1, logits.shape[-1]), target.reshape(-1))
    elif negatives == "all":
        fa, fb = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        logits = fa @ fb.T / temperature
        target = torch.arange(fa.shape[0], device=a.device)
        a2b = F.cross_entropy(logits, target)
        b2a = F.cross_entropy(logits.T, target)
    else:
        raise ValueError(f"negatives must be 'position' or 'all', got {negatives!r}")
    return 0.5 * (a2b + b2a)


# ------------------------------------------------------------------------------------------------ model


class MC2SleepNet(FreezableModel):
    """The full model; see the module docstring. `forward(x, labels, stage)` returns a dict of tensors.

    Modules of a branch the config leaves out (`branches`) are None; so are the sequence stacks of a
    single-epoch model and the concat head of a single-branch one.
    """

    def __init__(self, cfg: MC2SleepNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        raw, spec, both = cfg.uses_raw, cfg.uses_spectrogram, cfg.bimodal
        self.raw_backbone = RawBackbone(cfg) if raw else None
        self.spec_backbone = SpectrogramBackbone(cfg) if spec else None
        self.raw_attention = EpochWiseAttention(d, cfg.attention_dim) if raw else None
        self.spec_attention = EpochWiseAttention(d, cfg.attention_dim) if spec else None
        contrast = both and cfg.contrastive
        self.raw_projection = nn.Linear(d, cfg.proj_dim) if contrast else None
        self.spec_projection = nn.Linear(d, cfg.proj_dim) if contrast else None
        # One learnable mask token shared by both modalities.
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02) if cfg.sequence_level else None
        cross = both and cfg.cross_attention

        def stack(used: bool) -> nn.ModuleList | None:
            if not (used and cfg.sequence_level):
                return None
            return nn.ModuleList(CrossModalLayer(d, cfg.seq_heads, cfg.seq_ff, cfg.dropout, cross) for _ in range(cfg.seq_layers))

        self.sg_layers, self.sp_layers = stack(raw), stack(spec)
        self.head_sg = _mlp_head(d, cfg.head_hidden, cfg.n_classes, cfg.dropout) if raw else None
        self.head_sp = _mlp_head(d, cfg.head_hidden, cfg.n_classes, cfg.dropout) if spec else None
        self.head_concat = _mlp_head(2 * d, cfg.head_hidden, cfg.n_classes, cfg.dropout) if both else None

    @property
    def inference_head(self) -> str:
        """The head whose logits are the model's predictions: the concat head, or the single branch's."""
        return "head_concat" if self.cfg.bimodal else ("head_sg" if self.cfg.uses_raw else "head_sp")

    # ---- fine-tuning support

    def epoch_level_modules(self) -> tuple[nn.Module, ...]:
        modules = (self.raw_backbone, self.spec_backbone, self.raw_attention, self.spec_attention,
                   self.raw_projection, self.spec_projection)
        return tuple(m for m in modules if m is not None)

    def freeze_backbones(self) -> None:
        """Freeze the epoch-level encoder (backbones, epoch-wise attentions, projections) for fine-tuning.

        Frozen modules stay in eval mode from now on (see `train`), so BatchNorm running statistics and
        dropout in the backbones are fixed as well.
        """
        self._frozen = self.epoch_level_modules()
        for module in self._frozen:
            module.requires_grad_(False)
            module.eval()

    def prepare_finetune(self, mode: str) -> None:
        """"full": the paper's fine-tuning (frozen epoch level, trained sequence level); "linear": linear
        probing — only the last layer of the inference head is trained."""
        if mode == "full":
            self.freeze_backbones()
            return
        check_finetune_mode(mode)
        head = getattr(self, self.inference_head)
        self._frozen = tuple(m for name, m in self.named_children() if name != self.inference_head) + (head[:-1],)
        for module in self._frozen:
            module.requires_grad_(False)
            module.eval()
        if self.mask_token is not None:
            self.mask_token.requires_grad_(False)

    def unfreeze_backbones(self) -> None:
        for module in self._frozen:
            module.requires_grad_(True)
        self._frozen = ()
        self.train(self.training)

    @property
    def backbones_frozen(self) -> bool:
        return bool(self._frozen)

    # ---- pieces (public so tests and analysis can call them)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 3000) µV → (N, C, 29, 129) dB, always computed in float32 (also under autocast)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch_spectrogram(x.float(), eps=self.cfg.spectrogram_eps)

    def _mask_positions(self, b: int, l: int, k: int, device, generator: torch.Generator | None) -> torch.Tensor:
        """(b, l) boolean, exactly k True per row at random positions."""
        mask = torch.zeros(b, l, dtype=torch.bool, device=device)
        if k == 0:
            return mask
        draw_on = generator.device if generator is not None else device
        order = torch.rand(b, l, generator=generator, device=draw_on).argsort(dim=1)[:, :k].to(device)
        return mask.scatter_(1, order, True)

    def cross_masked_batch(
        self,
        o_sg: torch.Tensor | None,
        o_sp: torch.Tensor | None,
        ratio: float | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The expanded batch of cross-masking from (B, L, d) epoch features (None for an absent branch).

        One pass per branch: that branch's features with n_masked(L, r) epochs per sequence replaced by the
        shared mask token, the other branch's complete. Both branches: rows [0, B) mask Sg, rows [B, 2B)
        mask Sp. Returns the (P·B, L, d) features of Sg and Sp and their boolean masks (P·B, L).
        """
        ratio = self.cfg.mask_ratio if ratio is None else ratio
        present = o_sg if o_sg is not None else o_sp
        b, l, _ = present.shape
        k = n_masked(l, ratio)
        token = self.mask_token.to(present.dtype)
        none = torch.zeros(b, l, dtype=torch.bool, device=present.device)
        sg_rows, sp_rows, sg_masks, sp_masks = [], [], [], []
        for masked_branch in ("sg", "sp"):
            own = o_sg if masked_branch == "sg" else o_sp
            if own is None:
                continue
            mask = self._mask_positions(b, l, k, present.device, generator)
            hidden = torch.where(mask[..., None], token, own)
            sg_rows.append(hidden if masked_branch == "sg" else o_sg)
            sp_rows.append(hidden if masked_branch == "sp" else o_sp)
            sg_masks.append(mask if masked_branch == "sg" else none)
            sp_masks.append(mask if masked_branch == "sp" else none)
        sg = torch.cat(sg_rows) if o_sg is not None else None
        sp = torch.cat(sp_rows) if o_sp is not None else None
        return sg, sp, torch.cat(sg_masks), torch.cat(sp_masks)

    def encode_epochs(self, raw: torch.Tensor | None, spec: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(N, C, 3000) normalised raw, (N, C, 29, 129) dB → O^Sg, O^Sp of shape (N, d) (None: no branch)."""
        o_sg = self.raw_attention(self.raw_backbone(raw)) if self.raw_backbone is not None else None
        o_sp = self.spec_attention(self.spec_backbone(spec)) if self.spec_backbone is not None else None
        return o_sg, o_sp

    def sequence(self, sg: torch.Tensor | None, sp: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(B, L, d) × 2 → t^Sg, t^Sp; the two stacks update in lock-step, attending to each other.
        A single-epoch model returns its inputs unchanged."""
        if not self.cfg.sequence_level:
            return sg, sp
        present = sg if sg is not None else sp
        pe = sinusoidal_positional_encoding(present.shape[1], present.shape[2], device=present.device, dtype=present.dtype)
        sg = sg + pe if sg is not None else None
        sp = sp + pe if sp is not None else None
        for i in range(self.cfg.seq_layers):
            new_sg = self.sg_layers[i](sg, sp) if sg is not None else None
            new_sp = self.sp_layers[i](sp, sg) if sp is not None else None
            sg, sp = new_sg, new_sp
        return sg, sp

    def _inputs(self, flat: torch.Tensor, pretraining: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The raw and spectrogram inputs of the branches in use (augmented in pre-training). The paper adds its
        augmentations for contrastive learning and does not say whether the sequence level sees them; here the one
        augmented pass feeds both the InfoNCE views and the cross-masked sequence heads (no second, clean pass),
        so pre-training's sequence loss is also trained on augmented epochs. Fine-tuning sees clean inputs."""
        cfg, dtype = self.cfg, next(self.parameters()).dtype
        spec = self.spectrogram(flat) if cfg.uses_spectrogram else None
        raw = flat.float() / cfg.raw_scale_uv if cfg.uses_raw else None
        if pretraining and cfg.augment:
            raw = augment_raw(raw, cfg.raw_augment) if raw is not None else None
            spec = augment_spectrogram(spec, cfg.spec_noise_db) if spec is not None else None
        return (raw.to(dtype) if raw is not None else None), (spec.to(dtype) if spec is not None else None)

    def sequence_loss(self, logits: dict[str, torch.Tensor], labels: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        """Eq. 19: w1·CE(Sg head) + w2·CE(Sp head) + w3·CE(concat head), each CE as Eq. 18; a single branch's
        only head has weight 1. Returns loss_seq and the per-head terms."""
        cfg = self.cfg
        weights = dict(zip(("logits_sg", "logits_sp", "logits"),
                           cfg.head_weights_pretrain if stage == "pretrain" else cfg.head_weights_finetune))
        terms = {"logits_sg": "loss_sg", "logits_sp": "loss_sp", "logits": "loss_concat"}
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        for key, name in terms.items():
            if key not in logits:
                continue
            out[name] = sequence_cross_entropy(logits[key], labels, cfg.sequence_loss)
            total = total + (weights[key] if cfg.bimodal else 1.0) * out[name]
        out["loss_seq"] = total
        return out

    # ---- forward

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, stage: Stage = "eval") -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if x.dim() != 4 or x.shape[2] != cfg.input_channels or x.shape[3] != cfg.epoch_samples:
            raise ValueError(
                f"x must be (B, L, {cfg.input_channels}, {cfg.epoch_samples}) µV, got {tuple(x.shape)}"
            )
        b, l = x.shape[:2]
        if labels is not None and labels.shape != (b, l):
            raise ValueError(f"labels must be (B, L) = {(b, l)}, got {tuple(labels.shape)}")
        flat = x.reshape(b * l, cfg.input_channels, cfg.epoch_samples)
        pretraining = stage == "pretrain" and self.training
        raw, spec = self._inputs(flat, pretraining)

        with torch.set_grad_enabled(torch.is_grad_enabled() and not (self.backbones_frozen and stage != "pretrain")):
            o_sg, o_sp = self.encode_epochs(raw, spec)
            if self.raw_projection is not None:
                z_sg = self.raw_projection(o_sg).reshape(b, l, -1)
                z_sp = self.spec_projection(o_sp).reshape(b, l, -1)
                if self.training:  # negatives from the global batch, not this worker's share (common.across_workers)
                    z_sg, z_sp = across_workers(z_sg, z_sp)
                loss_infonce = info_nce(z_sg, z_sp, cfg.infonce_temperature, cfg.infonce_negatives)
            else:  # no InfoNCE: one branch, or the contrastive=false ablation
                loss_infonce = flat.new_zeros((), dtype=torch.float32)
        o_sg = o_sg.reshape(b, l, -1) if o_sg is not None else None
        o_sp = o_sp.reshape(b, l, -1) if o_sp is not None else None

        if pretraining and cfg.mask_ratio > 0 and cfg.sequence_level:
            o_sg, o_sp, mask_sg, mask_sp = self.cross_masked_batch(o_sg, o_sp)
            labels = labels.repeat(mask_sg.shape[0] // b, 1) if labels is not None else None
            effective = torch.tensor(effective_mask_ratio(l, cfg.mask_ratio))
        else:
            mask_sg = mask_sp = torch.zeros(b, l, dtype=torch.bool, device=x.device)
            effective = torch.tensor(0.0)
        t_sg, t_sp = self.sequence(o_sg, o_sp)
        logits: dict[str, torch.Tensor] = {}
        if self.head_sg is not None:
            logits["logits_sg"] = self.head_sg(t_sg)
        if self.head_sp is not None:
            logits["logits_sp"] = self.head_sp(t_sp)
        if self.head_concat is not None:
            logits["logits"] = self.head_concat(torch.cat([t_sg, t_sp], dim=-1))
        else:
            logits["logits"] = logits["logits_sg" if cfg.uses_raw else "logits_sp"]

        out: dict[str, torch.Tensor] = {
            **logits,
            "mask_sg": mask_sg,
            "mask_sp": mask_sp,
            "mask_ratio_effective": effective,
            "loss_infonce": loss_infonce if stage == "pretrain" else loss_infonce.detach(),
        }
        if labels is not None:
            heads = {k: v for k, v in logits.items() if k != "logits" or self.head_concat is not None}
            out.update(self.sequence_loss(heads, labels, stage))
            loss_seq = out["loss_seq"]
            out["loss"] = loss_seq + cfg.infonce_weight * loss_infonce if stage == "pretrain" else loss_seq
        return out


@register(
    "mc2sleepnet",
    config_class=MC2SleepNetConfig,
    channels=[STAGING_EEG_ROLES],
    description="MC²SleepNet: raw-EEG CNN + spectrogram Transformer, InfoNCE, cross-masked sequence Transformer",
    masked_count=lambda cfg: n_masked(cfg.seq_len, cfg.mask_ratio),  # epochs of a sequence's masked view
)
def build_mc2sleepnet(config: MC2SleepNetConfig) -> MC2SleepNet:
    return MC2SleepNet(config)
