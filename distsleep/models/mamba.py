"""Mamba (Gu & Dao, 2023) temporal-context module: a selective state-space model over a sequence of
30-s epoch embeddings (B, L, d) -> (B, L, d). NeuroNet and SynthSleepNet put it on top of their frozen or
fine-tuned epoch encoders with a 20-epoch context; it plays the role a sequence Transformer or BiLSTM
plays in other sleep stagers.

The selective scan (Mamba-1, real diagonal A, input-dependent B and C). Per channel d and state n,

    delta_t = softplus(delta_t + delta_bias)            (when delta_softplus / delta_bias are given)
    h_t     = exp(delta_t A) h_{t-1} + delta_t B_t u_t  (zero-order hold for A, Euler for B, h_{-1} = 0)
    y_t     = <C_t, h_t> + D u_t,   out_t = y_t * SiLU(z_t)      (when D / z are given)

with the shapes of `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`: u, delta, z (b, d, l);
A (d, n); B, C (b, n, l); D, delta_bias (d,). Three implementations share that signature:

* `selective_scan_reference` — the definition, one time step at a time, used only to check the others.
* `selective_scan_torch` — pure PyTorch and autograd, the CPU (and fallback GPU) path used in training:
  exp(delta A) and delta B u are computed for all steps at once and only the first-order recurrence is
  a loop over l. Context lengths here are ~20 epochs, so the loop is short; a log-space cumulative
  product form would need exp(-cumsum(delta A)), which overflows in float32 after a few dozen steps, and
  the stable pairwise (l × l) form costs l times the memory. Memory is O(b·d·l·n) (autograd keeps
  every state).
* the CUDA kernel of the `mamba-ssm` package (`selective_scan_fn`), fused and with its own backward.

Backend choice is explicit: `selective_scan(..., backend=...)`, `MambaBlock(backend=...)`,
`MambaContext(backend=...)` and `resolve_backend` take "auto" (kernel when the tensors are on CUDA, in
fp32/fp16/bf16, and `mamba_ssm` imports; otherwise torch), "torch" (always torch) or "cuda" (always the
kernel; raises `MambaKernelUnavailable` saying why when it cannot be used). `cuda_kernels_available()`
says whether this process can use the kernel at all. Only the scan switches: the convolution and the
projections of `MambaBlock` are the same PyTorch modules for both backends, so the kernel path needs
`mamba-ssm` but not `causal-conv1d`, and a state dict is interchangeable between backends.

Equivalence guarantee. The torch path equals the reference loop to rounding (the tests ask ≤ 1e-5 in
float32 and ≤ 1e-10 in float64, forward and gradients w.r.t. every input) and passes
`torch.autograd.gradcheck`. Torch path vs kernel, fp32, forward and backward: every compared tensor must
satisfy max|torch − kernel| ≤ 1e-4 + 1e-4 · max|kernel| (the max-norm form of `allclose`; an
element-wise relative error is meaningless where gradients cross zero). `equivalence_report()` measures
it on a CUDA machine for the scan alone and for `MambaBlock` / `MambaContext` with identical weights
(TF32 off); `python -m distsleep.models.mamba` prints that report, and
tests/test_mamba.py::test_gpu_equivalence runs it when CUDA and `mamba_ssm` are present. Computation is
in float32 (float64 stays float64) whatever the input dtype, and the result is cast back to u's dtype,
as the kernel does.

`mamba-ssm` is NOT a dependency of distsleep: it compiles CUDA extensions at install time (and needs a
matching CUDA toolkit and torch build), so it is absent from the CPU lock. On a GPU machine install it
separately (`pip install mamba-ssm --no-build-isolation`); without it everything runs on the torch path.

Block and stack (`MambaBlock`, `MambaContext`), following the reference Mamba-1 layer:
in_proj (d_model → 2·d_inner, no bias) splits into x and the gate z; x goes through a depthwise causal
Conv1d (kernel d_conv, left padding) and SiLU; x_proj gives (dt of rank dt_rank = ceil(d_model/16), B, C);
dt_proj (rank → d_inner) without its bias, which enters the scan as delta_bias with delta_softplus;
A = −exp(A_log) with the S4D-real init A_log[d, n] = log(n + 1); D = 1; scan output gated by SiLU(z);
out_proj (d_inner → d_model, no bias). dt_proj's weight is U(±dt_rank^−0.5) and its bias the inverse
softplus of a log-uniform dt in [1e-3, 1e-1] (floor 1e-4), so that the initial step sizes span two
decades of time scales. `MambaContext` is a pre-norm residual stack, x ← x + Dropout(Mixer(LN(x))),
with a final LayerNorm; out_proj weights are divided by sqrt(n_layers · directions) as in the reference
language model's prenorm-residual rescaling, so the residual stream's variance at init does not grow with
depth.

Choices where the papers are silent:
* Bidirectional (`bidirectional=True`): each layer has a second MambaBlock (own weights) that reads the
  time-reversed normalised input; its output is flipped back and summed with the forward block's before
  the residual add. Sleep staging is offline, so looking at later epochs is legitimate; the default
  (False) is causal — output t depends only on inputs ≤ t.
* LayerNorm (not RMSNorm) for the pre-norms and the final norm, residual stream in the input dtype.
* Dropout on each residual branch (default 0.1); none inside the block.

Parameters. A MambaBlock with expand = 2 has 6·d_model² + 2·d_model·(d_conv + 2·dt_rank + 3·d_state + 3):
32,640 at d_model 64, 116,480 at 128, 3.77 M at 768 (d_state 16, d_conv 4). MambaContext adds two
LayerNorm vectors per layer plus the final norm: 2 layers = 65,664 / 233,728 / 7.55 M at those widths,
twice the blocks when bidirectional (130,944 / 466,688 / 15.09 M).

Speed (torch path, one CPU thread, forward + backward of the scan alone): b 8, d_inner 128, l 20: ~5 ms;
b 32, d_inner 1536, l 20: ~0.5 s — at that size the (l, b, d, n) intermediates (63 MB each) make it
memory-bound, which is what the kernel is for. On a GPU without the kernel the torch path works but its
final <h, C> contraction is a matmul, so with TF32 enabled it is only TF32-accurate.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Backend = Literal["auto", "torch", "cuda"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "cuda")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what selective_scan_cuda accepts for u
EQUIVALENCE_ATOL = 1e-4
EQUIVALENCE_RTOL = 1e-4

__all__ = [
    "BACKENDS",
    "MambaBlock",
    "MambaContext",
    "MambaKernelUnavailable",
    "cuda_kernels_available",
    "equivalence_report",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
]


class MambaKernelUnavailable(RuntimeError):
    """backend="cuda" was asked for (or the equivalence report was run) where the kernel cannot be used."""


# ------------------------------------------------------------------------------------------ the scan


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float32 at least (the kernel accumulates in fp32); float64 is kept so gradients can be checked tightly.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got shape {tuple(u.shape)}")
    b, d, l = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d or A.is_complex():
        raise ValueError(f"A must be real (dim={d}, d_state), got {tuple(A.shape)} {A.dtype}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (b, n, l):
            raise ValueError(f"{name} must be (batch, d_state, length) = {(b, n, l)}, got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"{name} must be (dim,) = ({d},), got {tuple(t.shape)}")


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Shared preamble: validate, upcast, apply bias and softplus to delta."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    ct = _compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20, like the kernel
    return u, delta, A, B, C


def _finish(y, u, D, z, out_dtype):
    """y (b, d, l) in compute dtype -> + D u, gated by SiLU(z), cast to u's original dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """The definition, one step at a time (slow; for tests). Returns (b, d, l) in u's dtype, and the last
    state (b, d, n) in the compute dtype when `return_last_state`."""
    out_dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    b, d, l = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        dt = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(b, d, 0)
    out = _finish(y, u, D, z, out_dtype)
    return (out, h) if return_last_state else out


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Pure-PyTorch selective scan (autograd-friendly); same signature and result as the reference."""
    out_dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    b, d, l = u.shape
    # Time-major and contiguous, so that every (l, b, d, n) intermediate is contiguous and step t is one
    # contiguous slab (broadcasting over permuted views leaves strided outputs, ~2x slower on CPU).
    delta_l = delta.permute(2, 0, 1).contiguous().unsqueeze(-1)  # (l, b, d, 1)
    u_l = u.permute(2, 0, 1).contiguous().unsqueeze(-1)  # (l, b, d, 1)
    B_l = B.permute(2, 0, 1).contiguous().unsqueeze(2)  # (l, b, 1, n)
    C_l = C.permute(2, 0, 1).contiguous().unsqueeze(-1)  # (l, b, n, 1)
    decay = torch.exp(delta_l * A)  # (l, b, d, n); A <= 0 in Mamba, so every factor is in (0, 1]
    drive = (delta_l * u_l) * B_l  # (l, b, d, n)
    h = u.new_zeros(b, d, A.shape[1])
    states = []
    # unbind, not decay[t]: each indexing op's backward would write a full-size zero tensor (O(l²) traffic).
    for decay_t, drive_t in zip(decay.unbind(0), drive.unbind(0)):
        h = torch.addcmul(drive_t, decay_t, h)  # h_t = decay_t * h_{t-1} + drive_t
        states.append(h)
    if states:
        y = torch.matmul(torch.stack(states), C_l).squeeze(-1).permute(1, 2, 0)  # <h_t, C_t> -> (b, d, l)
    else:
        y = u.new_zeros(b, d, 0)
    out = _finish(y, u, D, z, out_dtype)
    return (out, h) if return_last_state else out


# ------------------------------------------------------------------------------------------ backends


@functools.lru_cache(maxsize=1)
def _load_kernel() -> tuple[Callable | None, str | None]:
    """(selective_scan_fn, None) when mamba_ssm imports, else (None, why). Cached: a failed import would
    otherwise be retried (a file-system search) on every forward."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, or an OSError/RuntimeError from a mismatched CUDA build
        return None, f"{type(exc).__name__}: {exc}"
    return selective_scan_fn, None


def _device_supports_kernel(device: torch.device) -> bool:
    return device.type == "cuda"


def _kernel_unavailable_reason(device: torch.device, dtype: torch.dtype | None = None) -> str | None:
    """None when the kernel can run on tensors of this device/dtype, else a sentence saying why not."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    if not _device_supports_kernel(device):
        return f"the tensors are on {device}; the mamba_ssm kernel needs CUDA tensors"
    if dtype is not None and dtype not in KERNEL_DTYPES:
        return f"the mamba_ssm kernel takes float32/float16/bfloat16 inputs, got {dtype}"
    fn, err = _load_kernel()
    if fn is None:
        return (
            f"mamba_ssm is not importable ({err}); it is not part of distsleep's CPU lock — on a CUDA "
            "machine run `pip install mamba-ssm --no-build-isolation` (it builds CUDA extensions)"
        )
    return None


def cuda_kernels_available() -> bool:
    """True when CUDA is available and mamba_ssm's selective-scan kernel imports."""
    return torch.cuda.is_available() and _load_kernel()[0] is not None


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The backend ("torch" or "cuda") a scan on tensors of this device/dtype will use.

    "auto" → "cuda" if the kernel can run there, else "torch"; "torch" → "torch"; "cuda" → "cuda" or
    `MambaKernelUnavailable` with the reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    reason = _kernel_unavailable_reason(torch.device(device), dtype)
    if reason is None:
        return "cuda"
    if backend == "cuda":
        raise MambaKernelUnavailable(f"backend='cuda' cannot be used: {reason}. Use backend='auto' or 'torch'.")
    return "torch"


def _kernel_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """Call mamba_ssm's selective_scan_fn with the dtypes it insists on: A, D, delta_bias float32;
    delta, B, C, z in u's dtype (under autocast the projections may come out in another dtype)."""
    fn, err = _load_kernel()
    if fn is None:
        raise MambaKernelUnavailable(f"mamba_ssm is not importable ({err})")
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dt = u.dtype
    return fn(
        u,
        delta.to(dt),
        A.float(),
        B.to(dt),
        C.to(dt),
        D=None if D is None else D.float(),
        z=None if z is None else z.to(dt),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
):
    """Selective scan on the backend `resolve_backend(backend, u.device, u.dtype)` picks."""
    if resolve_backend(backend, u.device, u.dtype) == "cuda":
        return _kernel_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


# ------------------------------------------------------------------------------------------ modules


class MambaBlock(nn.Module):
    """One Mamba-1 mixer: (B, L, d_model) -> (B, L, d_model), causal in L. See the module docstring."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        backend: str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if min(d_model, d_state, d_conv, expand) < 1:
            raise ValueError("d_model, d_state, d_conv and expand must be >= 1")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        if self.dt_rank < 1:
            raise ValueError(f"dt_rank must be >= 1 or 'auto', got {dt_rank!r}")
        self.backend = backend

        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        # Padding d_conv-1 on both sides, output cut to the first L steps = left padding only (causal).
        self.conv1d = nn.Conv1d(di, di, kernel_size=d_conv, groups=di, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d_model, bias=False)
        # Tell optimizer builders that want it: decay on A_log / D would pull the dynamics to a fixed point.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self._init_dt(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_dt(self, dt_min: float, dt_max: float, floor: float) -> None:
        std = self.dt_rank**-0.5  # keeps dt_proj's output variance ~ its input's
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=floor)
        # softplus^-1(dt) = dt + log(1 - exp(-dt)), written with expm1 for accuracy at small dt
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected (batch, length, {self.d_model}), got {tuple(x.shape)}")
        length = x.shape[1]
        xz = self.in_proj(x).transpose(1, 2)  # (b, 2·di, l): the scan wants time last
        u, z = xz.chunk(2, dim=1)
        u = F.silu(self.conv1d(u)[..., :length])
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias goes in as delta_bias
        y = selective_scan(
            u.contiguous(),
            delta.contiguous(),
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            D=self.D.float(),
            z=z.contiguous(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.backend,
        )
        return self.out_proj(y.transpose(1, 2))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, backend={self.backend!r}"
        )


class _MambaLayer(nn.Module):
    """x + Dropout(fwd(LN(x)) [+ flip(bwd(flip(LN(x))))])."""

    def __init__(self, d_model: int, dropout: float, bidirectional: bool, **block_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = MambaBlock(d_model, **block_kwargs)
        self.mixer_reverse = MambaBlock(d_model, **block_kwargs) if bidirectional else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        out = self.mixer(h)
        if self.mixer_reverse is not None:
            out = out + self.mixer_reverse(h.flip(1)).flip(1)
        return x + self.dropout(out)


class MambaContext(nn.Module):
    """Temporal-context head: pre-norm residual stack of MambaBlocks + final LayerNorm, (B, L, d) -> (B, L, d).

    Causal unless `bidirectional` (then every layer adds a block over the reversed sequence).
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dropout: float = 0.1,
        bidirectional: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.n_layers, self.bidirectional = d_model, n_layers, bidirectional
        block = dict(d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
        self.layers = nn.ModuleList(_MambaLayer(d_model, dropout, bidirectional, **block) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        # Prenorm-residual rescaling: each residual add contributes 1/(n_layers·directions) of the variance.
        scale = math.sqrt(n_layers * (2 if bidirectional else 1))
        with torch.no_grad():
            for blk in self.blocks():
                blk.out_proj.weight.div_(scale)

    def blocks(self) -> list[MambaBlock]:
        return [m for m in self.modules() if isinstance(m, MambaBlock)]

    @property
    def backend(self) -> str:
        return self.blocks()[0].backend

    def set_backend(self, backend: str) -> MambaContext:
        """Switch every block's scan backend (weights are the same for all backends)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        for blk in self.blocks():
            blk.backend = backend
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


# ------------------------------------------------------------------------------------------ GPU check


@contextmanager
def _strict_fp32():
    """Turn TF32 off for the comparison (it would blur both backends' matmuls to ~1e-3)."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def _error(test: torch.Tensor | None, ref: torch.Tensor | None) -> dict:
    # A missing gradient on one side (None) counts as zeros: a backend that drops a path must fail.
    if test is None and ref is None:
        return {"max_abs": 0.0, "max_rel": 0.0, "scale": 0.0, "ok": True}
    test = torch.zeros_like(ref) if test is None else test
    ref = torch.zeros_like(test) if ref is None else ref
    test, ref = test.detach().double(), ref.detach().double()
    if test.shape != ref.shape:
        raise AssertionError(f"shape mismatch {tuple(test.shape)} vs {tuple(ref.shape)}")
    scale = ref.abs().max().item() if ref.numel() else 0.0
    max_abs = (test - ref).abs().max().item() if ref.numel() else 0.0
    finite = bool(torch.isfinite(test).all() and torch.isfinite(ref).all())
    return {
        "max_abs": max_abs,
        "max_rel": max_abs / max(scale, 1e-30),
        "scale": scale,
        "ok": finite and max_abs <= EQUIVALENCE_ATOL + EQUIVALENCE_RTOL * scale,
    }


def _scan_inputs(b, d, n, l, *, full: bool, gen: torch.Generator) -> dict:
    """Inputs with the magnitudes a MambaBlock produces at init (CPU, float32)."""
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1) * torch.exp(0.3 * rnd(d, 1))
    inp = dict(u=rnd(b, d, l), delta=0.5 * rnd(b, d, l), A=A, B=rnd(b, n, l), C=rnd(b, n, l))
    if full:
        dt = torch.exp(torch.rand(d, generator=gen) * math.log(100.0) + math.log(1e-3))
        inp.update(D=rnd(d), z=rnd(b, d, l), delta_bias=dt + torch.log(-torch.expm1(-dt)))
    else:
        inp["delta"] = inp["delta"].abs() * 0.2 + 1e-3  # positive step sizes without softplus
    return inp


def _compare_scan(inputs: dict, softplus: bool, device: torch.device, gen: torch.Generator) -> dict:
    def run(backend):
        leaves = {k: v.to(device).requires_grad_(True) for k, v in inputs.items()}
        out = selective_scan(**leaves, delta_softplus=softplus, backend=backend)
        return out, leaves

    out_k, leaves_k = run("cuda")
    out_t, leaves_t = run("torch")
    grad_out = torch.randn(out_k.shape, generator=gen).to(device)
    out_k.backward(grad_out)
    out_t.backward(grad_out)
    res = {"forward": _error(out_t, out_k)}
    for name in inputs:
        res[f"grad_{name}"] = _error(leaves_t[name].grad, leaves_k[name].grad)
    return res


def _compare_module(module: nn.Module, x: torch.Tensor, device: torch.device, gen: torch.Generator) -> dict:
    def run(backend):
        m = copy.deepcopy(module).to(device).eval()
        for blk in (b for b in m.modules() if isinstance(b, MambaBlock)):
            blk.backend = backend
        xi = x.to(device).requires_grad_(True)
        return m, xi, m(xi)

    m_k, x_k, out_k = run("cuda")
    m_t, x_t, out_t = run("torch")
    grad_out = torch.randn(out_k.shape, generator=gen).to(device)
    out_k.backward(grad_out)
    out_t.backward(grad_out)
    res = {"forward": _error(out_t, out_k), "grad_input": _error(x_t.grad, x_k.grad)}
    worst = None
    for (name, p_t), (_, p_k) in zip(m_t.named_parameters(), m_k.named_parameters()):
        e = _error(p_t.grad, p_k.grad)
        e["param"] = name
        if worst is None or (not e["ok"], e["max_rel"]) > (not worst["ok"], worst["max_rel"]):
            worst = e
    res["grad_params_worst"] = worst
    return res


def _flatten(report: dict, prefix: str = "") -> list[tuple[str, dict]]:
    items = []
    for k, v in report.items():
        if isinstance(v, dict) and "max_abs" in v:
            items.append((prefix + k, v))
        elif isinstance(v, dict):
            items.extend(_flatten(v, prefix + k + "."))
    return items


def equivalence_report(device: str | torch.device = "cuda", seed: int = 0) -> dict:
    """Torch path vs mamba_ssm kernel, fp32, forward and backward, on `device`.

    Compares `selective_scan` (several shapes, with and without D/z/delta_bias/softplus) and a
    `MambaBlock` / bidirectional `MambaContext` run with backend "torch" and "cuda" from identical
    weights. Each entry has max_abs, max_rel (= max_abs / max|kernel|), scale and ok
    (max_abs ≤ 1e-4 + 1e-4·scale). Top level: ok, worst entry, max_abs_err, max_rel_err.
    Raises `MambaKernelUnavailable` (with the reason) where the kernel cannot run.
    """
    device = torch.device(device)
    reason = _kernel_unavailable_reason(device, torch.float32)
    if reason is not None:
        raise MambaKernelUnavailable(f"cannot compare against the mamba_ssm kernel: {reason}")
    gen = torch.Generator().manual_seed(seed)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "mamba_ssm": getattr(sys.modules.get("mamba_ssm"), "__version__", "unknown"),
        "seed": seed,
        "tolerance": {"atol": EQUIVALENCE_ATOL, "rtol": EQUIVALENCE_RTOL, "rule": "max_abs <= atol + rtol*max|kernel|"},
    }
    cases = {
        "scan_plain_b2_d8_n4_l20": ((2, 8, 4, 20), False),
        "scan_full_b4_d64_n16_l20": ((4, 64, 16, 20), True),
        "scan_full_b2_d128_n16_l512": ((2, 128, 16, 512), True),
    }
    with _strict_fp32():
        for name, (shape, full) in cases.items():
            report[name] = _compare_scan(_scan_inputs(*shape, full=full, gen=gen), full, device, gen)
        torch.manual_seed(seed)
        block = MambaBlock(64, backend="torch")
        x = torch.randn(4, 20, 64, generator=gen)
        report["mamba_block_d64_l20"] = _compare_module(block, x, device, gen)
        ctx = MambaContext(64, n_layers=2, dropout=0.0, bidirectional=True, backend="torch")
        report["mamba_context_bidir_d64_l20"] = _compare_module(ctx, x, device, gen)
    entries = _flatten({k: v for k, v in report.items() if k != "tolerance"})
    worst_name, worst = max(entries, key=lambda kv: (not kv[1]["ok"], kv[1]["max_rel"]))
    report["max_abs_err"] = max(e["max_abs"] for _, e in entries)
    report["max_rel_err"] = max(e["max_rel"] for _, e in entries)
    report["worst"] = worst_name
    report["ok"] = all(e["ok"] for _, e in entries)
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m distsleep.models.mamba [device]`: print the equivalence report as JSON (exit 0 if ok,
    1 if a tolerance is exceeded, 2 if the kernel cannot run here)."""
    argv = sys.argv[1:] if argv is None else argv
    device = argv[0] if argv else "cuda"
    try:
        report = equivalence_report(device)
    except MambaKernelUnavailable as exc:
        print(f"equivalence report not run: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    print(
        f"{'OK' if report['ok'] else 'FAILED'}: max abs err {report['max_abs_err']:.3g}, "
        f"max rel err {report['max_rel_err']:.3g} (worst: {report['worst']})",
        file=sys.stderr,
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
