"""NeuroNet (Lee et al., 2024, arXiv:2404.17585): single-channel hybrid self-supervised learning — masked
prediction of frame features plus NT-Xent between two masked views — with a Mamba temporal-context head
for sleep staging. It is also the unimodal encoder of SynthSleepNet (distsleep.models.synthsleepnet).

Data flow for x of shape (B, L, 1, 3000): one channel, per-recording median/IQR-scaled ("robust"
normalisation, as SynthSleepNet's preprocessing), 30-s epochs at 100 Hz. Every epoch is handled on its
own up to the temporal-context head (N = B·L epochs):

1. Frames: T overlapping windows of `frame_seconds` every `frame_step_seconds` (paper 3 s / 0.375 s →
   T = 73; SynthSleepNet's encoders 4 s / 1 s → 27).
2. Frame CNN (multi-kernel 1-D ResNet): stem conv k7/2 → BN → ELU → max-pool 3/2, then one branch per
   kernel size (3, 5, 7), each four residual blocks (widths 32, 32, 48, 64, strides 1, 1, 2, 2);
   each branch is average-pooled to (4, 3, 1) positions, flattened and concatenated (512) and projected
   Linear → ELU → Linear to a `frame_dim` = 256 token per frame.
3. Encoder (MAE-style ViT, 768-d, 8 heads, 4 pre-LN blocks, MLP ratio 4): tokens = Linear(frame) + pos;
   in pre-training the masked tokens are *removed* (only visible tokens and a CLS token enter).
4. Decoder (256-d, 8 heads, 3 blocks): the visible outputs go back to their own positions, a learned mask
   token fills every masked position, + learned positional embedding, → Linear to `frame_dim`.
5. Losses ("pretrain" stage, training mode): MSE between the decoder output and the frame features on
   masked positions only, averaged over the two views; NT-Xent (τ = 0.05) between the projected CLS
   tokens (MLP 768 → 1024 → 512) of two independently masked views of the same epoch; total
   = recon_weight · recon + contrastive_weight · NT-Xent (+ the probe's CE, see below).
6. Downstream: CLS per epoch (B, L, 768) → MambaContext over the L epochs (paper: 20-epoch context) →
   Linear → logits (B, L, n_classes).

Heads and stages. `head_mode` is a registered buffer (so it survives save/load and the loop's rebuild for
test evaluation) naming the classifier in use: "probe" (after construction / pre-training), "linear" or
"full" (set by `prepare_finetune`). Stage "finetune" requires "linear" or "full"; stage "eval" uses
whichever is active.

* Online linear probe (solo-learn style online evaluation): in stage "pretrain" a Linear classifier reads
  the CLS feature of an *unmasked* pass computed under torch.no_grad() and is trained with CE at the same
  time (`loss_probe`, included in `loss`). Because its input carries no graph it can never shape the
  encoder; it only makes pre-training produce "logits", hence validation metrics for checkpoint
  selection, Tune reports and sweep tables. Without labels the probe is not trained (keep labels on).
  In stage "pretrain" with the module in eval mode (validation) nothing is masked and the only loss is
  the probe's CE (the SSL losses need masking, which the model contract forbids outside training).
* prepare_finetune("linear"): linear probing — everything frozen (and in eval mode) except `linear_head`,
  a Linear on the CLS feature of each epoch; no temporal context.
* prepare_finetune("full"): encoder (frame CNN + Transformer) trainable (`finetune_encoder=True`; False
  keeps it frozen — the NeuroNet repository's fine-tuning script trains only the last block's MLP and the
  final norm of the encoder) + MambaContext + Linear head. The decoder, projector and probe are frozen.

Choices where the paper/code is silent or that differ from the public code:

* Frame starts are round(k · step) samples, so a 37.5-sample step (0.375 s at 100 Hz) is honoured exactly
  and the last frame ends at sample 3000; the public code truncates the step to 37 samples and leaves the
  last 36 samples of every epoch unused (both give 73 frames).
* Residual blocks use "same" padding. The public 5/7-tap blocks pad by 1 and then cut the residual to the
  shorter output, i.e. they drop the block's last samples; the pooled sizes (4, 3, 1) of the public
  fixed average pools are kept, but as adaptive pools so any window length works (3-s and 4-s frames).
  No squeeze-excitation by default (`frame_se_reduction=0`, the NeuroNet repository's blocks;
  SynthSleepNet's copy adds SE with reduction 16 — set 16 for that).
* Reconstruction targets are the frame-CNN features *detached* (`detach_target=True`). The public code
  does not detach them; then the frame CNN is pulled towards features the decoder can predict, and the
  cheapest such features are small or constant ones (the contrastive loss on the normalised CLS cannot
  stop a shrinking token scale — the encoder's LayerNorms undo it). With the stop-gradient the CNN learns
  only through the encoder's input path, as MAE's pixel targets are fixed. `detach_target=False`
  reproduces the public code. MSE is per token averaged over features, then over masked tokens; the two
  views' losses are averaged (the public code sums them: a factor 2 on the learning rate of that term).
* Masked count: round-half-up(T · mask_ratio), at most T − 1 (one visible token always remains), per
  epoch and view; paper size 0.8 → 58 of 73 masked, 15 visible (effective 0.795; the public code keeps
  int(73 · 0.2) = 14). `mask_ratio_effective` is returned. Visible tokens keep their temporal order.
* Positional embeddings (encoder and decoder) are learned, initialised to the 1-D sinusoidal table; the
  CLS token has no positional term. The public code initialises both with a 2-D sin-cos table of a
  (T × 1) grid, which is the same information.
* NT-Xent is SimCLR's: 2N normalised projections, cosine/τ, the other view positive, the 2N − 2 other
  projections negatives (here the N = B·L epochs of the batch, so neighbouring epochs of the same
  sequence are negatives as well — the public code draws single epochs at random instead).
  Computed in float32.
* Temporal context: one causal MambaContext layer (the NeuroNet repository's single Mamba block;
  `context_layers`, `context_bidirectional` configurable) on the 768-d CLS features directly (the
  repository first projects to 256 with an MLP), then Dropout(0.5) and one Linear.
* Transformer blocks are written out (qkv / proj / fc1 / fc2 Linear layers, timm's naming) so that LoRA
  (SynthSleepNet) can target them by name; LayerNorm eps 1e-6, GELU, xavier-uniform Linear init.

Parameter count (count_parameters; tests/test_neuronet.py prints and checks it). Paper size
(NeuroNet-B): the pre-training model — encoder, decoder, projector, probe — has 33.01 M parameters,
DESIGN.md §6 quotes ~33 M: encoder 29.04 M (frame CNN 0.43 M incl. its 512 → 256 → 256 projection,
patch embedding 0.20 M, 4 Transformer blocks 28.35 M, positions + CLS 0.06 M), decoder 2.65 M,
projector 1.31 M, probe 0.004 M. The downstream parts add 3.78 M (one Mamba layer at d = 768 with
expand 2: 3.77 M; linear head and head 0.008 M): 36.79 M in total. `small()`: 0.031 M.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from distsleep.config import ConfigBase, fields_preset, preset
from distsleep.models.common import (FreezableModel, across_workers, check_finetune_mode, check_mask_ratio,
                                     masked_cross_entropy, sinusoidal_positional_encoding)
from distsleep.models.mamba import MambaContext
from distsleep.models.registry import register

Stage = Literal["pretrain", "finetune", "eval"]
STAGES: tuple[str, ...] = ("pretrain", "finetune", "eval")
HEAD_MODES: tuple[str, ...] = ("probe", "linear", "full")
STAGING_EEG_ROLES: tuple[str, ...] = ("eeg_c4", "eeg_fpz_cz")  # SHHS C4-A1, Sleep-EDF Fpz-Cz


# ------------------------------------------------------------------------------------------- framing


def frame_starts(n_samples: int, window: int, step: float) -> list[int]:
    """Start sample of every full window: round(k · step) for k = 0, 1, ... while the window fits."""
    if window < 1 or window > n_samples or step <= 0:
        raise ValueError(f"need 1 <= window <= n_samples and step > 0, got window={window}, n={n_samples}, step={step}")
    n = int(math.floor((n_samples - window) / step + 1e-9)) + 1
    return [int(math.floor(k * step + 0.5)) for k in range(n)]


def n_masked(n_tokens: int, ratio: float) -> int:
    """Masked tokens per sample: round-half-up(T · ratio), capped at T − 1 (one token stays visible)."""
    return max(0, min(n_tokens - 1, int(math.floor(n_tokens * ratio + 0.5))))


# ------------------------------------------------------------------------------------------- config


def _tuple_fields(obj: Any, names: Sequence[str]) -> None:
    for name in names:
        object.__setattr__(obj, name, tuple(getattr(obj, name)))


@dataclass(frozen=True)
class MaskedEncoderConfig(ConfigBase):
    """The fields NeuroNet and SynthSleepNet share (`MaskedEncoderModel`): the window and classes, the Transformer
    that encodes (NeuroNet's encoder, SynthSleepNet's fusion encoder) and its decoder, the self-supervised
    objective, and the downstream temporal-context head. Defaults are NeuroNet-B's; SynthSleepNetConfig sets its own
    where they differ."""

    STRICT = True  # a bundle or override with an unknown field is refused
    DEFAULT_PRESET = "paper"

    # data / training-loop fields
    seq_len: int = 20  # epochs per sequence (the downstream temporal context; paper 20)
    n_classes: int = 5
    # encoder
    d_model: int = 768
    heads: int = 8
    layers: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # decoder
    decoder_dim: int = 256
    decoder_heads: int = 8
    decoder_layers: int = 3
    # self-supervision
    mask_ratio: float = 0.8
    projection_dims: tuple[int, ...] = (1024, 512)
    temperature: float = 0.05
    recon_weight: float = 1.0
    contrastive_weight: float = 1.0
    # downstream
    context_layers: int = 1
    context_d_state: int = 16
    context_d_conv: int = 4
    context_expand: int = 2
    context_dropout: float = 0.1
    context_bidirectional: bool = False
    context_backend: str = "auto"
    head_dropout: float = 0.5

    def _check_shared(self) -> None:
        """Normalise (configs come back from JSON / MLflow with lists) and check the shared fields."""
        _tuple_fields(self, ("projection_dims",))
        check_mask_ratio(self.mask_ratio)
        if self.d_model % self.heads or self.decoder_dim % self.decoder_heads:
            raise ValueError("d_model / decoder_dim must be divisible by heads / decoder_heads")
        if self.temperature <= 0 or not self.projection_dims:
            raise ValueError("temperature must be > 0 and projection_dims non-empty")
        if self.seq_len < 1 or self.n_classes < 2 or self.context_layers < 1:
            raise ValueError("seq_len >= 1, n_classes >= 2 and context_layers >= 1 are required")


@dataclass(frozen=True)
class NeuroNetConfig(MaskedEncoderConfig):
    """Hyper-parameters; defaults are NeuroNet-B (public repository), `small()` is a CPU-test preset."""

    channel_roles: tuple[str, ...] = STAGING_EEG_ROLES  # roles acceptable for the one input slot
    epoch_samples: int = 3000
    sample_rate: float = 100.0
    frame_seconds: float = 3.0
    frame_step_seconds: float = 0.375
    # frame CNN
    frame_stem: int = 16
    frame_widths: tuple[int, ...] = (32, 32, 48, 64)
    frame_strides: tuple[int, ...] = (1, 1, 2, 2)
    frame_kernels: tuple[int, ...] = (3, 5, 7)
    frame_pool: tuple[int, ...] = (4, 3, 1)  # pooled positions per kernel branch
    frame_se_reduction: int = 0  # 0 = no squeeze-excitation
    frame_dim: int = 256
    detach_target: bool = True  # reconstruction targets: the frame features, stop-gradient
    finetune_encoder: bool = True

    def __post_init__(self) -> None:
        self._check_shared()
        _tuple_fields(self, ("channel_roles", "frame_widths", "frame_strides", "frame_kernels", "frame_pool"))
        if not self.channel_roles or not all(isinstance(r, str) and r for r in self.channel_roles):
            raise ValueError(f"channel_roles must be a non-empty tuple of role names, got {self.channel_roles!r}")
        if len(self.frame_widths) != len(self.frame_strides) or not self.frame_widths:
            raise ValueError("frame_widths and frame_strides must have the same (non-zero) length")
        if len(self.frame_pool) != len(self.frame_kernels) or not self.frame_kernels:
            raise ValueError("frame_pool needs one entry per frame kernel")
        if any(k % 2 == 0 for k in self.frame_kernels):
            raise ValueError(f"frame_kernels must be odd ('same' padding), got {self.frame_kernels}")
        frame_starts(self.epoch_samples, self.frame_samples, self.frame_step_samples)  # validates framing

    # ---- derived sizes

    @property
    def input_channels(self) -> int:
        return 1

    @property
    def frame_samples(self) -> int:
        return int(round(self.frame_seconds * self.sample_rate))

    @property
    def frame_step_samples(self) -> float:
        return self.frame_step_seconds * self.sample_rate

    @property
    def n_frames(self) -> int:
        return len(frame_starts(self.epoch_samples, self.frame_samples, self.frame_step_samples))

    # ---- presets

    small = fields_preset(
        "A tiny model for CPU tests (same graph; non-overlapping 3-s frames → 10 tokens, to stay fast: the "
        "frame CNN's backward dominates CPU time).",
        seq_len=5, frame_step_seconds=3.0, frame_stem=4, frame_widths=(4, 4, 8, 8), frame_pool=(2, 1, 1),
        frame_dim=16, d_model=32, heads=2, layers=1, decoder_dim=16, decoder_heads=2, decoder_layers=1,
        projection_dims=(32, 16), context_expand=1)

    @preset
    def synthsleepnet_unimodal(cls, *, small: bool = False, **overrides) -> NeuroNetConfig:
        """The per-modality encoder of SynthSleepNet: NeuroNet-B (or `small()`) on 4-s frames every 1 s
        (27 tokens). Pre-train one NeuroNet per modality with this config (`channel_roles=(role,)`) and
        hand its state dict to `SynthSleepNet.load_part(role, ...)`."""
        base = dict(frame_seconds=4.0, frame_step_seconds=4.0 if small else 1.0)  # small: 7 tokens
        base.update(overrides)
        return cls.small(**base) if small else cls(**base)

    @preset
    def synthsleepnet_unimodal_small(cls, **overrides) -> NeuroNetConfig:
        """`synthsleepnet_unimodal(small=True)`: the encoder of `SynthSleepNetConfig.small()`."""
        return cls.synthsleepnet_unimodal(small=True, **overrides)


def _as_config(cls, config):
    """Registry slot functions may get the config as a dict (JSON): build the dataclass."""
    if config is None:
        return cls()
    if isinstance(config, Mapping):
        return cls.from_dict(config)
    return config


# ------------------------------------------------------------------------------------------- frame CNN


class SqueezeExcite1d(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=-1))[..., None]


class ResBlock1d(nn.Module):
    """conv k/stride → BN → ELU → conv k → BN [→ SE] + shortcut (1×1 conv/stride + BN when shapes differ) → ELU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, se_reduction: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.se = SqueezeExcite1d(c_out, se_reduction) if se_reduction > 0 else nn.Identity()
        self.shortcut = (
            nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.elu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return F.elu(out + self.shortcut(x))


class FrameCNN(nn.Module):
    """(M, W) frames → (M, frame_dim) tokens: stem, one residual branch per kernel size, pooled, projected."""

    def __init__(self, cfg: NeuroNetConfig) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(1, cfg.frame_stem, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm1d(cfg.frame_stem),
            nn.ELU(),
            nn.MaxPool1d(3, stride=2, padding=1),
        )
        branches = []
        for k in cfg.frame_kernels:
            blocks, c_in = [], cfg.frame_stem
            for width, stride in zip(cfg.frame_widths, cfg.frame_strides):
                blocks.append(ResBlock1d(c_in, width, k, stride, cfg.frame_se_reduction))
                c_in = width
            branches.append(nn.Sequential(*blocks))
        self.branches = nn.ModuleList(branches)
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool1d(p) for p in cfg.frame_pool)
        flat = cfg.frame_widths[-1] * sum(cfg.frame_pool)
        self.project = nn.Sequential(nn.Linear(flat, cfg.frame_dim), nn.ELU(), nn.Linear(cfg.frame_dim, cfg.frame_dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        z = self.stem(frames.unsqueeze(1))
        pooled = [pool(branch(z)).flatten(1) for branch, pool in zip(self.branches, self.pools)]
        return self.project(torch.cat(pooled, dim=1))


# ------------------------------------------------------------------------------------------- Transformer


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, t, d)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """MAE/ViT init: xavier-uniform Linear weights, zero biases; LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def learned_positions(n: int, dim: int) -> nn.Parameter:
    return nn.Parameter(sinusoidal_positional_encoding(n, dim).unsqueeze(0))


# ------------------------------------------------------------------------------------------- masking


def random_keep(n: int, t: int, n_keep: int, device: torch.device, generator: torch.Generator | None = None):
    """Per-row random subset of `n_keep` of `t` positions. Returns ids_keep (n, n_keep), sorted, and the
    boolean mask (n, t) that is True on the *masked* (removed) positions."""
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(n, t, generator=generator, device=gen_device).to(device)
    ids_keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values
    mask = torch.ones(n, t, dtype=torch.bool, device=device).scatter(1, ids_keep, False)
    return ids_keep, mask


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (N, T, D), ids (N, k) → (N, k, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ------------------------------------------------------------------------------------------- modules


class NeuroNetEncoder(nn.Module):
    """Raw epochs (N, S) → tokens (N, 1 + T, d_model) [CLS first]; `encode` takes frame features and an
    optional visible subset. Also the per-modality encoder of SynthSleepNet (same state-dict keys)."""

    def __init__(self, cfg: NeuroNetConfig) -> None:
        super().__init__()
        self.n_frames = cfg.n_frames
        starts = torch.tensor(frame_starts(cfg.epoch_samples, cfg.frame_samples, cfg.frame_step_samples))
        self.register_buffer("frame_index", starts[:, None] + torch.arange(cfg.frame_samples), persistent=False)
        self.frame_cnn = FrameCNN(cfg)
        self.patch_embed = nn.Linear(cfg.frame_dim, cfg.d_model)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.d_model) * 0.02)
        self.pos_embed = learned_positions(self.n_frames, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        init_vit_weights(self.patch_embed)
        init_vit_weights(self.blocks)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """(N, S) → (N, T, W) overlapping windows."""
        return x[:, self.frame_index]

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, S) → (N, T, frame_dim): every frame of every epoch through the CNN in one batch."""
        frames = self.frames(x)
        n, t, w = frames.shape
        return self.frame_cnn(frames.reshape(n * t, w)).reshape(n, t, -1)

    def encode(self, feats: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T, frame_dim) [+ visible ids (N, k)] → (N, 1 + k, d_model); masked tokens never enter."""
        tokens = self.patch_embed(feats) + self.pos_embed.to(feats.dtype)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        x = torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(self.frame_features(x))


class MaskedDecoder(nn.Module):
    """Visible encoder outputs (N, k, d_in) at positions ids_keep (N, k) → predictions at all T positions.

    Each visible token is scattered back to *its own* position and the learned mask token fills the others;
    nothing is sliced by an assumed offset (the public SynthSleepNet decoder drops a token that way).
    """

    def __init__(self, d_in: int, dim: int, heads: int, layers: int, n_tokens: int, out_dim: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.embed = nn.Linear(d_in, dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = learned_positions(n_tokens, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, out_dim)
        init_vit_weights(self)

    def assemble(self, visible: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """(N, T, dim): embed(visible[j]) at position ids_keep[j], the mask token everywhere else."""
        if visible.shape[:2] != ids_keep.shape:
            raise ValueError(f"visible {tuple(visible.shape)} and ids_keep {tuple(ids_keep.shape)} disagree")
        x = self.embed(visible)
        base = self.mask_token.to(x.dtype).expand(x.shape[0], self.n_tokens, -1)
        return base.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)

    def forward(self, visible: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        x = self.assemble(visible, ids_keep) + self.pos_embed.to(visible.dtype)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))


def projection_head(d_in: int, dims: Sequence[int]) -> nn.Sequential:
    """SimCLR projector: [Linear → BN → ELU] for every hidden width, then Linear to the last width."""
    layers: list[nn.Module] = []
    widths = [d_in, *dims]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 1:
            layers += [nn.BatchNorm1d(b), nn.ELU()]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------- losses


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR NT-Xent between two views (N, P): cosine similarity / τ over the 2N projections, each one's
    positive is the other view of the same sample, the 2N − 2 others are negatives. float32."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"views must both be (N, P), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
        n = z1.shape[0]
        sim = (z @ z.T) / temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(sim, target)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions (mask True, shape (N, T)) of the per-token MSE; 0 (in the graph) if none."""
    err = (pred.float() - target.float()).pow(2).mean(dim=-1)
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------------- model


def _sync_head_mode(module: "MaskedEncoderModel", incompatible_keys) -> None:
    """After load_state_dict: the Python copy of the loaded `head_mode` buffer."""
    module._head = HEAD_MODES[int(module.head_mode)]


class MaskedEncoderModel(FreezableModel):
    """What NeuroNet and SynthSleepNet share around their encoders (module docstring, "Heads and stages"):

    * the three classifiers on the per-epoch feature, selected by the `head_mode` buffer: "probe" (the
      online probe of pre-training), "linear" (linear probing) and "full" (Mamba temporal context +
      Dropout + Linear), and `prepare_finetune(mode)`, which picks one and freezes what the mode keeps fixed;
    * masked pre-training: in training mode the model's masked objective (`_masked_objective`: the
      reconstruction and contrastive losses, the fraction really masked, the probe's no-grad feature)
      weighted by `recon_weight` / `contrastive_weight`, plus the probe's CE; outside training only the probe;
    * the masked count: `sample_visible` keeps T − n_masked(T, mask_ratio) of T tokens per row.

    Subclasses build their encoder, call `_build_heads(d)`, and provide `_check_input`, `_flatten`,
    `_features` (the unmasked per-epoch feature), `_features_need_grad`, `_masked_objective` and
    `_finetune_trainable(mode)`.
    """

    def _build_heads(self, d: int) -> None:
        cfg = self.cfg
        self.probe = nn.Linear(d, cfg.n_classes)
        self.linear_head = nn.Linear(d, cfg.n_classes)
        self.context = MambaContext(d, n_layers=cfg.context_layers, d_state=cfg.context_d_state,
                                    d_conv=cfg.context_d_conv, expand=cfg.context_expand,
                                    dropout=cfg.context_dropout, bidirectional=cfg.context_bidirectional,
                                    backend=cfg.context_backend)
        self.head_dropout = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(d, cfg.n_classes)
        # Which classifier produces "logits" outside pre-training; a buffer so it survives state_dict save/load.
        self.register_buffer("head_mode", torch.zeros((), dtype=torch.long))
        # ... and its value as a Python string, kept in step by prepare_finetune and every load_state_dict, so
        # that forward branches on a constant: reading the buffer inside torch.compile / torch.export (ONNX)
        # would be a data-dependent branch (a graph break, an export failure).
        self._head = HEAD_MODES[0]
        self.register_load_state_dict_post_hook(_sync_head_mode)

    @property
    def active_head(self) -> str:
        return self._head

    def prepare_finetune(self, mode: str) -> None:
        """"linear": linear probing (only `linear_head` trains); "full": what `_finetune_trainable("full")` names.
        Sets `head_mode`; call after loading the pre-trained weights."""
        check_finetune_mode(mode)
        self.head_mode.fill_(HEAD_MODES.index(mode))
        self._head = mode
        self._finetune_trainable(mode)

    def sample_visible(self, n: int, t: int, device: torch.device, generator: torch.Generator | None = None):
        """(ids_keep, mask) of `n` rows of `t` tokens with n_masked(t, mask_ratio) tokens masked in each."""
        return random_keep(n, t, t - n_masked(t, self.cfg.mask_ratio), device, generator)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, stage: Stage = "eval") -> dict[str, torch.Tensor]:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self._check_input(x)
        b, l = x.shape[:2]
        if labels is not None and labels.shape != (b, l):
            raise ValueError(f"labels must be (B, L) = {(b, l)}, got {tuple(labels.shape)}")
        flat = self._flatten(x)
        if stage == "pretrain":
            return self._forward_pretrain(flat, labels, b, l)
        mode = self.active_head
        if stage == "finetune" and mode == "probe":
            raise RuntimeError("stage 'finetune' needs prepare_finetune('linear' | 'full') first "
                               "(call it after loading the pre-trained weights)")
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._features_need_grad()):
            cls = self._features(flat).reshape(b, l, -1)
        if mode == "probe":
            logits = self.probe(cls)
        elif mode == "linear":
            logits = self.linear_head(cls)
        else:
            logits = self.head(self.head_dropout(self.context(cls)))
        out: dict[str, torch.Tensor] = {"logits": logits}
        if labels is not None:
            loss = masked_cross_entropy(logits, labels)
            out.update(loss=loss, loss_ce=loss)
        return out

    def _forward_pretrain(self, flat: torch.Tensor, labels: torch.Tensor | None, b: int, l: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        out: dict[str, torch.Tensor] = {}
        loss = None
        if self.training:
            loss_recon, loss_contrastive, effective, probe_in = self._masked_objective(flat)
            loss = cfg.recon_weight * loss_recon + cfg.contrastive_weight * loss_contrastive
            out.update(loss_recon=loss_recon, loss_contrastive=loss_contrastive, mask_ratio_effective=effective)
        else:
            with torch.no_grad():
                probe_in = self._features(flat)
        logits = self.probe(probe_in.detach()).reshape(b, l, -1)
        out["logits"] = logits
        if labels is not None:
            loss_probe = masked_cross_entropy(logits, labels)
            out["loss_probe"] = loss_probe
            loss = loss_probe if loss is None else loss + loss_probe
        if loss is not None:
            out["loss"] = loss
        return out


class NeuroNet(MaskedEncoderModel):
    """The full model; see the module docstring. `forward(x, labels, stage)` returns a dict of tensors."""

    def __init__(self, cfg: NeuroNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.encoder = NeuroNetEncoder(cfg)
        self.decoder = MaskedDecoder(d, cfg.decoder_dim, cfg.decoder_heads, cfg.decoder_layers, cfg.n_frames,
                                     cfg.frame_dim, cfg.mlp_ratio, cfg.dropout)
        self.projector = projection_head(d, cfg.projection_dims)
        self._build_heads(d)
        self._set_trainable((self.encoder, self.decoder, self.projector, self.probe))

    def _finetune_trainable(self, mode: str) -> None:
        """"linear": only `linear_head`; "full": the encoder (if `finetune_encoder`) + Mamba context + head."""
        if mode == "linear":
            self._set_trainable((self.linear_head,))
        else:
            parts = (self.context, self.head_dropout, self.head) + ((self.encoder,) if self.cfg.finetune_encoder else ())
            self._set_trainable(parts)

    def _features_need_grad(self) -> bool:
        return any(p.requires_grad for p in self.encoder.parameters())

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[2] != 1 or x.shape[3] != self.cfg.epoch_samples:
            raise ValueError(f"x must be (B, L, 1, {self.cfg.epoch_samples}), got {tuple(x.shape)}")

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0] * x.shape[1], x.shape[-1]).to(self.encoder.cls_token.dtype)

    def sample_mask(self, n: int, device: torch.device, generator: torch.Generator | None = None):
        return self.sample_visible(n, self.cfg.n_frames, device, generator)

    def _features(self, flat: torch.Tensor) -> torch.Tensor:
        return self.encoder(flat)[:, 0]

    def _masked_objective(self, flat: torch.Tensor):
        """Two independently masked views of every epoch: masked frame-feature MSE (mean of the views) and NT-Xent
        between their projected CLS tokens; the probe reads the CLS of an unmasked no-grad pass."""
        feats = self.encoder.frame_features(flat)
        target = feats.detach() if self.cfg.detach_target else feats
        recon, cls = [], []
        for _ in range(2):  # two independently masked views of every epoch
            ids_keep, mask = self.sample_mask(flat.shape[0], flat.device)
            latent = self.encoder.encode(feats, ids_keep)
            pred = self.decoder(latent[:, 1:], ids_keep)
            recon.append(masked_mse(pred, target, mask))
            cls.append(latent[:, 0])
        loss_recon = 0.5 * (recon[0] + recon[1])
        # negatives from the global batch, not this worker's share (common.across_workers; training mode only)
        loss_contrastive = nt_xent(*across_workers(self.projector(cls[0]), self.projector(cls[1])), self.cfg.temperature)
        with torch.no_grad():  # online probe input: never part of the encoder's graph
            probe_in = self.encoder.encode(feats.detach())[:, 0]
        return loss_recon, loss_contrastive, mask.float().mean().detach(), probe_in


def neuronet_slots(config: NeuroNetConfig | Mapping | None) -> list[tuple[str, ...]]:
    """One input slot, filled by any of `config.channel_roles` (the lead's TrainConfig chooses the role)."""
    return [tuple(_as_config(NeuroNetConfig, config).channel_roles)]


@register(
    "neuronet",
    config_class=NeuroNetConfig,
    channels=neuronet_slots,
    description="NeuroNet: single-channel masked frame-feature prediction + NT-Xent, Mamba temporal context",
    normalization="robust",
    masked_count=lambda cfg: n_masked(cfg.n_frames, cfg.mask_ratio),  # frame tokens of an epoch's view
)
def build_neuronet(config: NeuroNetConfig) -> NeuroNet:
    return NeuroNet(config)
