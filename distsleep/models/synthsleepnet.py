"""SynthSleepNet (Lee et al.): one frozen, separately pre-trained NeuroNet encoder per PSG modality, a
fusion Transformer over the visible tokens of all modalities trained by per-modality masked reconstruction
+ NT-Xent between the fused and each unimodal representation, and — downstream — LoRA adapters on the
unimodal encoders, the fusion encoder and a Mamba temporal-context head.

Data flow for x of shape (B, L, M, 3000): M = len(modalities) channels in the order of `modalities`
(default EEG C4-A1, EEG C3-A2, left EOG, chin EMG, ECG), each median/IQR-scaled per recording ("robust"
normalisation, as SynthSleepNet's preprocessing), 30-s epochs at 100 Hz; N = B·L epochs:

1. Unimodal encoders (distsleep.models.neuronet.NeuroNetEncoder, config `unimodal`, by default
   NeuroNetConfig.synthsleepnet_unimodal(): NeuroNet-B on 4-s frames every 1 s → T = 27 tokens of 768)
   run unmasked: tokens u_m (N, T, 768) and CLS c_m (N, 768). They are frozen (eval mode, no BatchNorm
   updates); their weights come from NeuroNet runs through `load_part(role, state_dict)`.
2. Fusion encoder (512-d, 8 heads, 4 pre-LN blocks): per modality Linear(768 → 512) → LayerNorm → ELU →
   Linear(512 → 512), + a learned modality embedding + a learned positional embedding (shared by the
   modalities, initialised sinusoidal); in pre-training each modality keeps a random subset of its T
   tokens (mask_ratio 0.4: round-half-up(27 · 0.4) = 11 masked, 16 kept, drawn independently per epoch
   and modality); the kept tokens of all modalities and one fusion CLS token enter the Transformer.
3. Per-modality decoders (256-d, 8 heads, 3 blocks each): modality m's fused outputs are taken from the
   offsets that modality's tokens were *put at* (CLS first, then each modality's kept count), scattered
   back to their own positions, mask token elsewhere, → Linear to 768; MSE against u_m (stop-gradient)
   on m's masked positions only; the modalities' losses are averaged.
4. NT-Xent (τ = 0.1) between the projected fused CLS (MLP 512 → 512 → 256) and each modality's projected
   unimodal CLS (its own MLP 768 → 512 → 256), averaged over the modalities.
5. Downstream: the fusion CLS of an unmasked pass per epoch (B, L, 512) → MambaContext → Linear.

Heads, stages and the online probe work as in NeuroNet (see that module): `head_mode` buffer ("probe" /
"linear" / "full"), a Linear probe on the no-grad unmasked fusion CLS trained alongside pre-training
(`loss_probe`), stage "finetune" needs prepare_finetune first.

* prepare_finetune("linear"): everything frozen except `linear_head`, a Linear on the fused CLS.
* prepare_finetune("full"): unimodal base weights frozen, their LoRA adapters (`lora_*` parameters),
  the fusion encoder (embeddings, CLS, Transformer), MambaContext and head trainable; decoders,
  projectors and probe frozen.

LoRA. Adapters are injected with the `peft` library (LoraConfig + inject_adapter_in_model on each
unimodal encoder) *at construction*, so that the state-dict keys are the same in every stage (a
fine-tuned checkpoint loads into a freshly built model; `load_part` maps NeuroNet's `…qkv.weight` to
`…qkv.base_layer.weight`). B is initialised to zero ("gaussian" init: A ~ N, B = 0), so the adapters are
the identity until fine-tuning trains them; they are frozen in pre-training unless `lora_in_fusion`.
Defaults: rank 4, alpha 8, dropout 0.05, rsLoRA scaling (alpha / sqrt(r)) — the public fine-tuning
script's values — on every Transformer Linear of the unimodal encoders (`lora_targets` = attn.qkv,
attn.proj, mlp.fc1, mlp.fc2; the public scripts adapt attn.proj during fusion pre-training and the frame
projection + the fusion encoder's last MLP for fine-tuning, where our fusion encoder is fully trainable
anyway). The frame CNN has no adapters, so it always runs under no_grad here. peft's own
`inject_adapter_in_model` freezes the base weights of the module it adapts; this model then sets
`requires_grad` explicitly per stage, so `[p for p in model.parameters() if p.requires_grad]` (what
DeepSpeed's optimizer sees) is exactly the trainable set, and the frozen modules stay in eval mode (only
the LoRA dropouts follow train/eval when the adapters train). peft is imported lazily: without it only
`lora_rank=0` models can be built.

Choices where the paper/code is silent or that differ from the public code:

* A fusion CLS token carries the fused representation (contrastive loss, probe, heads); the public code
  mean-pools the fused tokens and the unimodal tokens (CLS included) instead.
* The public decoder splits the fused sequence with `(len − 1) // M` and starts modality i at token i
  (not i · k): it assumes a CLS that does not exist and reads overlapping, shifted windows. Here every
  modality's visible tokens are located by the counts actually concatenated, and each decoder
  reconstructs exactly its modality's masked positions (tests check it).
* Decoders are fully per modality (own input projection, mask token, positions, blocks, output); the
  public code shares the input projection, mask token, positions and final norm. The public per-modality
  input embedding uses BatchNorm over tokens; LayerNorm here (batch-size independent).
* Reconstruction targets are the frozen encoders' tokens, detached even when `lora_in_fusion` trains the
  adapters (the adapters then learn only through the fusion input and the contrastive path).
* Unimodal encoders that were never given weights (`load_part`) are reported by `missing_parts`; a
  training-mode pre-training forward warns once when any is missing (fusion on random encoders is
  meaningless). `parts_loaded` is a buffer, so checkpoints remember it.

Sizes (count_parameters). Paper size, 5 modalities: 180.19 M in total —
* unimodal encoders 146.01 M = 5 × 29.01 M NeuroNet-B encoders on 4-s frames (frozen) + 5 × 0.197 M LoRA
  (rank 4 on qkv, proj, fc1, fc2 of 4 blocks);
* fusion encoder 15.91 M: per-modality input embeddings 5 × 0.66 M = 3.29 M, 4 Transformer blocks at
  512-d 12.61 M, positions / modality embeddings / CLS 0.02 M;
* decoders 5 × 2.71 M = 13.53 M; projectors 0.40 M (fused) + 5 × 0.53 M = 2.63 M (unimodal);
* Mamba context 1.70 M (one layer at d = 512), probe / linear head / head 0.008 M.
Trainable: 32.47 M in fusion pre-training, 18.60 M in "full" fine-tuning (LoRA 0.98 M + fusion 15.91 M +
context 1.70 M + head). DESIGN.md §6 publishes no SynthSleepNet total; its numbers match here: each
unimodal encoder is NeuroNet-B (~33 M as a pre-training model, 29.0 M as an encoder), the fusion encoder
is 512-d with 4 layers. `small()`: 0.164 M (of which 0.102 M are the five tiny unimodal encoders).
Building the paper-size model takes ~8 s on one CPU thread plus ~5 s for the first `import peft` (it
imports transformers).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from distsleep.config import fields_preset
from distsleep.models.common import across_workers
from distsleep.models.neuronet import (
    Block,
    MaskedDecoder,
    MaskedEncoderConfig,
    MaskedEncoderModel,
    NeuroNetConfig,
    NeuroNetEncoder,
    _as_config,
    _tuple_fields,
    gather_tokens,
    init_vit_weights,
    learned_positions,
    masked_mse,
    n_masked,
    nt_xent,
    projection_head,
)
from distsleep.models.registry import register

DEFAULT_MODALITIES: tuple[str, ...] = ("eeg_c4", "eeg_c3", "eog_l", "emg", "ecg")
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class SynthSleepNetConfig(MaskedEncoderConfig):
    """Hyper-parameters; defaults are the public SynthSleepNet scripts'. `small()` is a CPU-test preset.

    The fields shared with NeuroNet (`MaskedEncoderConfig`) describe the fusion encoder, the per-modality decoders,
    the self-supervision and the downstream head. `unimodal` is the config of every per-modality encoder; it must
    be the config the NeuroNet runs whose weights `load_part` receives were trained with (shapes are checked there).
    """

    modalities: tuple[str, ...] = DEFAULT_MODALITIES  # one input channel (slot) per modality, in this order
    unimodal: NeuroNetConfig = field(default_factory=NeuroNetConfig.synthsleepnet_unimodal)
    # fusion encoder and self-supervision, where they differ from NeuroNet's
    d_model: int = 512
    mask_ratio: float = 0.4
    projection_dims: tuple[int, ...] = (512, 256)
    temperature: float = 0.1
    # LoRA on the unimodal encoders
    lora_rank: int = 4  # 0 = no adapters
    lora_alpha: float = 8.0
    lora_dropout: float = 0.05
    lora_rslora: bool = True
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS  # module-name suffixes inside a NeuroNetEncoder
    lora_in_fusion: bool = False  # also train the adapters during fusion pre-training (public script)

    def __post_init__(self) -> None:
        self._check_shared()
        _tuple_fields(self, ("modalities", "lora_targets"))
        if isinstance(self.unimodal, Mapping):
            object.__setattr__(self, "unimodal", NeuroNetConfig.from_dict(self.unimodal))
        if not isinstance(self.unimodal, NeuroNetConfig):
            raise TypeError(f"unimodal must be a NeuroNetConfig (or its dict), got {type(self.unimodal).__name__}")
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be non-empty and unique, got {self.modalities!r}")
        if any(not isinstance(m, str) or not m or "." in m for m in self.modalities):
            raise ValueError(f"modalities must be role names without dots, got {self.modalities!r}")
        if self.lora_rank < 0 or (self.lora_rank > 0 and not self.lora_targets):
            raise ValueError("lora_rank must be >= 0, and lora_targets non-empty when it is > 0")

    @property
    def input_channels(self) -> int:
        return len(self.modalities)

    @property
    def epoch_samples(self) -> int:
        return self.unimodal.epoch_samples

    @property
    def n_tokens(self) -> int:
        """Tokens per modality and epoch (the unimodal encoder's frames)."""
        return self.unimodal.n_frames

    small = fields_preset(
        "A tiny model for CPU tests (same graph; small unimodal encoders on non-overlapping 4-s frames).",
        seq_len=5, unimodal=NeuroNetConfig.synthsleepnet_unimodal_small(), d_model=32, heads=2, layers=1,
        decoder_dim=16, decoder_heads=2, decoder_layers=1, projection_dims=(32, 16), lora_rank=2, lora_alpha=4.0,
        context_expand=1)


# ------------------------------------------------------------------------------------------- LoRA


def lora_target_names(encoder: nn.Module, targets: Sequence[str]) -> list[str]:
    """Full names of the nn.Linear modules of `encoder` whose name is, or ends with ".", a target."""
    return [
        name for name, m in encoder.named_modules()
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]


def inject_lora(encoder: nn.Module, cfg: SynthSleepNetConfig) -> list[str]:
    """Add peft LoRA adapters (in place) to the target Linear layers of one unimodal encoder."""
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("SynthSleepNet's LoRA adapters need the `peft` package (pip install peft==0.21.0); "
                          "or build the model with lora_rank=0") from exc
    names = lora_target_names(encoder, cfg.lora_targets)
    if not names:
        raise ValueError(f"lora_targets {cfg.lora_targets} match no Linear layer of the unimodal encoder")
    config = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             bias="none", use_rslora=cfg.lora_rslora, init_lora_weights="gaussian",
                             target_modules=names)
    peft.inject_adapter_in_model(config, encoder)
    return names


def is_lora_key(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


# ------------------------------------------------------------------------------------------- fusion


class FusionEncoder(nn.Module):
    """Unimodal tokens of every modality (+ visible ids) → (N, 1 + Σ k_m, d_model), fusion CLS first."""

    def __init__(self, cfg: SynthSleepNetConfig) -> None:
        super().__init__()
        du, d = cfg.unimodal.d_model, cfg.d_model
        self.embed = nn.ModuleDict({
            role: nn.Sequential(nn.Linear(du, d), nn.LayerNorm(d, eps=1e-6), nn.ELU(), nn.Linear(d, d))
            for role in cfg.modalities
        })
        self.modality_embed = nn.Parameter(torch.randn(len(cfg.modalities), d) * 0.02)
        self.pos_embed = learned_positions(cfg.n_tokens, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        init_vit_weights(self.embed)
        init_vit_weights(self.blocks)

    def forward(self, tokens: Sequence[torch.Tensor], ids_keep: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, list[int]]:
        """tokens[m] (N, T, du); ids_keep[m] (N, k_m) or None (all). Returns fused tokens and the k_m."""
        parts, counts = [], []
        for m, (embed, u, ids) in enumerate(zip(self.embed.values(), tokens, ids_keep)):
            e = embed(u) + self.modality_embed[m].to(u.dtype) + self.pos_embed.to(u.dtype)
            if ids is not None:
                e = gather_tokens(e, ids)
            parts.append(e)
            counts.append(e.shape[1])
        cls = self.cls_token.to(parts[0].dtype).expand(parts[0].shape[0], -1, -1)
        x = torch.cat([cls, *parts], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), counts


def split_modalities(fused: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor]:
    """The fused tokens of each modality, by the counts that were concatenated after the CLS token."""
    if fused.shape[1] != 1 + sum(counts):
        raise ValueError(f"fused has {fused.shape[1]} tokens, expected 1 + {sum(counts)}")
    return list(torch.split(fused[:, 1:], list(counts), dim=1))


# ------------------------------------------------------------------------------------------- model


class SynthSleepNet(MaskedEncoderModel):
    """The full model; see the module docstring. `forward(x, labels, stage)` returns a dict of tensors."""

    def __init__(self, cfg: SynthSleepNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        uc, d = cfg.unimodal, cfg.d_model
        self.unimodal = nn.ModuleDict({role: NeuroNetEncoder(uc) for role in cfg.modalities})
        self.lora_targets: list[str] = []
        if cfg.lora_rank > 0:
            for encoder in self.unimodal.values():
                self.lora_targets = inject_lora(encoder, cfg)
        self.fusion = FusionEncoder(cfg)
        self.decoders = nn.ModuleDict({
            role: MaskedDecoder(d, cfg.decoder_dim, cfg.decoder_heads, cfg.decoder_layers, cfg.n_tokens,
                                uc.d_model, cfg.mlp_ratio, cfg.dropout)
            for role in cfg.modalities
        })
        self.fusion_projector = projection_head(d, cfg.projection_dims)
        self.unimodal_projectors = nn.ModuleDict({role: projection_head(uc.d_model, cfg.projection_dims)
                                                  for role in cfg.modalities})
        self._build_heads(d)
        self.register_buffer("parts_loaded", torch.zeros(len(cfg.modalities), dtype=torch.bool))
        self._lora_trainable = False
        self._warned_missing = False
        self._set_trainable((self.fusion, self.decoders, self.fusion_projector, self.unimodal_projectors, self.probe),
                            lora=cfg.lora_in_fusion)

    # ---- parts

    def load_part(self, role: str, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a NeuroNet state dict (NeuroNet's own keys, as the training loop saves it; "module." and
        "_orig_mod." prefixes are tolerated) into the unimodal encoder of modality `role`. The NeuroNet must have been
        built with this model's `cfg.unimodal` encoder shape; any missing, unexpected or mis-shaped
        encoder tensor raises a ValueError naming the role. LoRA adapters are left as they are."""
        if role not in self.cfg.modalities:
            raise KeyError(f"load_part: {role!r} is not one of this SynthSleepNet's modalities {list(self.cfg.modalities)}")
        source = {}
        for key, value in state_dict.items():
            for prefix in ("module.", "_orig_mod."):  # DDP/DeepSpeed wrapper, torch.compile wrapper
                key = key[len(prefix):] if key.startswith(prefix) else key
            if key.startswith("encoder."):
                source[key[len("encoder."):]] = value
        hint = (f"expected the state dict of a NeuroNet built with SynthSleepNetConfig.unimodal "
                f"(d_model={self.cfg.unimodal.d_model}, layers={self.cfg.unimodal.layers}, "
                f"{self.cfg.n_tokens} frames of {self.cfg.unimodal.frame_seconds:g} s)")
        if not source:
            raise ValueError(f"load_part({role!r}): the state dict has no 'encoder.*' keys; {hint}")
        encoder = self.unimodal[role]
        own = encoder.state_dict()
        mapped, missing, mismatched = {}, [], []
        for key, tensor in own.items():
            if is_lora_key(key):
                continue
            plain = key.replace(".base_layer.", ".")
            if plain not in source:
                missing.append(plain)
            elif tuple(source[plain].shape) != tuple(tensor.shape):
                mismatched.append(f"{plain}: got {tuple(source[plain].shape)}, model has {tuple(tensor.shape)}")
            else:
                mapped[key] = source[plain]
        used = {k.replace(".base_layer.", ".") for k in mapped}
        unexpected = sorted(set(source) - used - set(missing))
        if missing or mismatched or unexpected:
            details = []
            if mismatched:
                details.append(f"shape mismatch in {len(mismatched)} tensor(s): " + "; ".join(mismatched[:5]))
            if missing:
                details.append(f"missing {len(missing)}: {missing[:5]}")
            if unexpected:
                details.append(f"unexpected {len(unexpected)}: {unexpected[:5]}")
            raise ValueError(f"load_part({role!r}): the NeuroNet encoder does not fit modality {role!r} — "
                             + " | ".join(details) + f"; {hint}")
        result = encoder.load_state_dict(mapped, strict=False)
        leftover = [k for k in result.missing_keys if not is_lora_key(k)]
        if leftover or result.unexpected_keys:  # cannot happen after the checks above
            raise ValueError(f"load_part({role!r}): incomplete load: {leftover or result.unexpected_keys}")
        self.parts_loaded[self.cfg.modalities.index(role)] = True

    @property
    def missing_parts(self) -> list[str]:
        """Modalities whose unimodal encoder never received weights through `load_part`."""
        return [role for role, ok in zip(self.cfg.modalities, self.parts_loaded.tolist()) if not ok]

    # ---- heads and freezing

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.unimodal.named_parameters() if is_lora_key(n)]

    def _set_trainable(self, trainable: Sequence[nn.Module], *, lora: bool) -> None:
        """Exactly `trainable`'s parameters (+ the LoRA adapters if `lora`) require grad; every other child
        is kept in eval mode. The unimodal encoders' base weights are always frozen."""
        self._freeze_all_but(trainable)
        lora = lora and self.cfg.lora_rank > 0
        for p in self.lora_parameters():
            p.requires_grad_(lora)
        self._lora_trainable = lora
        self.train(self.training)

    def _finetune_trainable(self, mode: str) -> None:
        """"linear": only `linear_head`; "full": LoRA adapters + fusion encoder + Mamba context + head."""
        if mode == "linear":
            self._set_trainable((self.linear_head,), lora=False)
        else:
            self._set_trainable((self.fusion, self.context, self.head_dropout, self.head), lora=True)

    def train(self, mode: bool = True) -> SynthSleepNet:
        super().train(mode)
        if mode and self._lora_trainable:  # frozen encoders stay in eval mode, their adapters' dropout does not
            for name, module in self.unimodal.named_modules():
                if name.endswith("lora_dropout"):
                    module.train()
        return self

    # ---- pieces

    def unimodal_tokens(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(N, M, S) → per modality (N, 1 + T, du) from the (frozen) encoders; the frame CNN under no_grad
        unless it has trainable parameters, the Transformer with grad only when its adapters train."""
        grad = torch.is_grad_enabled()
        out = []
        for i, encoder in enumerate(self.unimodal.values()):
            cnn_grad = grad and any(p.requires_grad for p in encoder.frame_cnn.parameters())
            with torch.set_grad_enabled(cnn_grad):
                feats = encoder.frame_features(flat[:, i])
            with torch.set_grad_enabled(grad and self._lora_trainable):
                out.append(encoder.encode(feats))
        return out

    def sample_masks(self, n: int, device: torch.device, generator: torch.Generator | None = None):
        return [self.sample_visible(n, self.cfg.n_tokens, device, generator) for _ in self.cfg.modalities]

    # ---- forward

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        if x.dim() != 4 or x.shape[2] != cfg.input_channels or x.shape[3] != cfg.epoch_samples:
            raise ValueError(f"x must be (B, L, {cfg.input_channels}, {cfg.epoch_samples}) with channels "
                             f"{list(cfg.modalities)}, got {tuple(x.shape)}")

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return x.reshape(x.shape[0] * x.shape[1], cfg.input_channels, cfg.epoch_samples).to(self.fusion.cls_token.dtype)

    def _features_need_grad(self) -> bool:
        return self._lora_trainable or any(p.requires_grad for p in self.fusion.parameters())

    def _features(self, flat: torch.Tensor) -> torch.Tensor:
        tokens = [t[:, 1:] for t in self.unimodal_tokens(flat)]
        return self.fusion(tokens, [None] * len(tokens))[0][:, 0]

    def _masked_objective(self, flat: torch.Tensor):
        """Per-modality masked reconstruction of the frozen encoders' tokens from the fused visible tokens (mean
        over modalities) and NT-Xent between the fused CLS and each modality's CLS; the probe reads the fusion CLS
        of an unmasked no-grad pass."""
        cfg = self.cfg
        if self.missing_parts and not self._warned_missing:
            warnings.warn(f"SynthSleepNet fusion pre-training with unimodal encoders that were never loaded "
                          f"(load_part): {self.missing_parts}", stacklevel=4)
            self._warned_missing = True
        encoded = self.unimodal_tokens(flat)
        tokens = [t[:, 1:] for t in encoded]
        masks = self.sample_masks(flat.shape[0], flat.device)
        fused, counts = self.fusion(tokens, [ids for ids, _ in masks])
        recon = []
        for role, visible, (ids, mask), target in zip(cfg.modalities, split_modalities(fused, counts), masks, tokens):
            pred = self.decoders[role](visible, ids)
            recon.append(masked_mse(pred, target.detach(), mask))
        loss_recon = torch.stack(recon).mean()
        z_fused = self.fusion_projector(fused[:, 0])
        # negatives from the global batch, not this worker's share (common.across_workers; training mode only)
        contrast = [nt_xent(*across_workers(z_fused, self.unimodal_projectors[role](t[:, 0])), cfg.temperature)
                    for role, t in zip(cfg.modalities, encoded)]
        loss_contrastive = torch.stack(contrast).mean()
        effective = torch.stack([m.float().mean() for _, m in masks]).mean().detach()
        with torch.no_grad():  # online probe input: never part of the trained graph
            probe_in = self.fusion([t.detach() for t in tokens], [None] * len(tokens))[0][:, 0]
        return loss_recon, loss_contrastive, effective, probe_in


def synthsleepnet_slots(config: SynthSleepNetConfig | Mapping | None) -> list[tuple[str, ...]]:
    """One slot per modality, filled by exactly that role."""
    return [(role,) for role in _as_config(SynthSleepNetConfig, config).modalities]


@register(
    "synthsleepnet",
    config_class=SynthSleepNetConfig,
    channels=synthsleepnet_slots,
    description="SynthSleepNet: per-modality NeuroNet encoders, masked fusion Transformer + NT-Xent, LoRA + Mamba head",
    normalization="robust",
    trained_in_parts=True,  # its unimodal encoders come from NeuroNet runs (load_part)
    masked_count=lambda cfg: n_masked(cfg.n_tokens, cfg.mask_ratio),  # tokens of each modality of an epoch
)
def build_synthsleepnet(config: SynthSleepNetConfig) -> SynthSleepNet:
    return SynthSleepNet(config)
