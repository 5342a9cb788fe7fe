"""Building blocks and utilities shared by the models (positional encoding, parameter counts, masked CE)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F


FINETUNE_MODES: tuple[str, ...] = ("linear", "full")  # linear probing, or fine-tuning what the model says


def sinusoidal_positional_encoding(length: int, dim: int, *, device=None, dtype=None) -> torch.Tensor:
    """(length, dim) fixed sin/cos encoding of "Attention is all you need" (odd dims handled)."""
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, dtype=torch.float32, device=device)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div[: dim // 2])
    return pe if dtype is None else pe.to(dtype)


def check_mask_ratio(ratio: float) -> None:
    """The one range check of a masking ratio (the fraction of a sample's units a pre-training view masks),
    made by every model config that has one; sweeps and the CLI reach it through the model config."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {ratio}")


def check_finetune_mode(mode: str) -> None:
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune mode must be one of {FINETUNE_MODES}, got {mode!r}")


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Mean CE over epochs whose label != ignore_index; 0 (still in the graph) when none is scored.

    `F.cross_entropy` returns NaN when every target is ignored — a window of unscored epochs must not
    poison the step. Sum over the scored epochs / max(count, 1) gives the mean without asking the device
    whether any epoch is scored (that question would stall the host every step and break compiled graphs).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1).long()
    losses = F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="none")
    return losses.sum() / (flat_labels != ignore_index).sum().clamp(min=1)


class _GatherAcrossWorkers(torch.autograd.Function):
    """All ranks' (N, ...) tensors concatenated in rank order; backward hands each rank the gradient of its
    own rows summed over the ranks (every rank computes the loss over the whole gathered batch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # all_reduce, not reduce_scatter: gloo has no reduce_scatter
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def across_workers(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each (N, ...) tensor gathered over the data-parallel workers (rank order), with gradients, when
    torch.distributed runs with more than one rank; the tensors themselves otherwise.

    Why: contrastive losses draw their negatives from the batch, and a worker holds only its share of the
    global batch (32 / workers sequences). Gathered, the negatives are those of the global (micro-)batch,
    as on the paper's one GPU, whatever the number of workers; with one sequence per worker the loss would
    otherwise be 0. Every rank then computes the same loss over the gathered batch: the gradient each rank
    gets for its own rows is the sum over ranks, and the data-parallel mean of the parameter gradients
    (DeepSpeed, DDP) makes it the gradient of that one loss. Every rank must call it at the same step with
    the same shapes, so models call it in training mode only (all ranks step together; evaluation does not)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    # float32: the losses compute in float32 anyway, and gloo's collectives may lack bfloat16
    return tuple(_GatherAcrossWorkers.apply(t.float()) for t in tensors)


@dataclass
class ParameterCount:
    """Parameter totals with a per-child breakdown; `str()` prints a small table."""

    total: int
    trainable: int
    by_module: dict[str, int] = field(default_factory=dict)

    def __int__(self) -> int:
        return self.total

    def __str__(self) -> str:
        width = max((len(k) for k in self.by_module), default=5)
        lines = [f"{name:<{width}}  {n:>12,}" for name, n in self.by_module.items()]
        lines.append(f"{'total':<{width}}  {self.total:>12,}  ({self.total / 1e6:.3f} M, trainable {self.trainable:,})")
        return "\n".join(lines)


def count_parameters(model: nn.Module) -> ParameterCount:
    """Unique parameters (shared ones counted once), total and trainable, broken down by top-level child."""
    seen: set[int] = set()
    by_module: dict[str, int] = {}
    for name, child in model.named_children():
        n = 0
        for p in child.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        by_module[name] = n
    direct = sum(p.numel() for p in model.parameters(recurse=False) if id(p) not in seen)
    if direct:
        by_module["(own parameters)"] = direct
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    return ParameterCount(total, trainable, by_module)


class FreezableModel(nn.Module):
    """What every model shares around fine-tuning and inference.

    `_frozen` holds the modules a fine-tuning mode keeps fixed: besides `requires_grad=False` they stay in
    eval mode whatever `train()` is called with, so their BatchNorm statistics and dropout do not change
    either. `predict` is the eval-mode argmax of the model's logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self._frozen: tuple[nn.Module, ...] = ()

    @property
    def frozen_modules(self) -> tuple[nn.Module, ...]:
        return self._frozen

    def _freeze_all_but(self, trainable) -> None:
        """Exactly the parameters of the children in `trainable` require grad; the other children are frozen."""
        keep = {id(m) for m in trainable}
        frozen = []
        for child in self.children():
            on = id(child) in keep
            child.requires_grad_(on)
            if not on:
                frozen.append(child)
        self._frozen = tuple(frozen)

    def _set_trainable(self, trainable) -> None:
        self._freeze_all_but(trainable)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def prepare_finetune(self, mode: str) -> None:
        """What fine-tuning trains: "linear" only the final `classifier` (everything else frozen and kept in eval
        mode), "full" all of it. Models with other heads (MC²SleepNet, NeuroNet, SynthSleepNet) override this."""
        check_finetune_mode(mode)
        self._set_trainable((self.classifier,) if mode == "linear" else tuple(self.children()))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C, samples) → (B, L) predicted classes (eval mode: no masking, dropout or augmentation)."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(x, stage="eval")["logits"].argmax(dim=-1)
        finally:
            self.train(was_training)
