"""One worker's training step: the DeepSpeed engine as the trainer builds it, the step, and its metrics.

The Ray Train loop (`loop.py`) and the benchmark's engine loop (`distsleep.bench`) both use these
functions, so what the benchmark measures on a bare GPU box is the trainer's own step. Nothing here
imports Ray or MLflow.

What keeps the GPU busy (each item removes a host-device synchronisation or a copy per step):
- batches travel as int16 codes + per-channel scale from pinned memory with non-blocking copies and are
  converted to float on the device (`TrainBatch.to_device`, `.signals`);
- DeepSpeed's throughput timer is off (it synchronises twice per step; see `deepspeed_config`);
- at ZeRO 0 gradients are clipped by `torch.nn.utils.clip_grad_norm_` (foreach kernels, no host round
  trip) instead of DeepSpeed's per-parameter loop, which copies two scalars to the device every step; at
  ZeRO 1/2 the gradients are partitioned and DeepSpeed clips them;
- with one worker and ZeRO 0 there is nothing to all-reduce, so DeepSpeed's flatten/all-reduce/unflatten
  of every gradient is switched off;
- Adam is torch's fused implementation on CUDA;
- losses stay on the device and are read back in one copy every `log_every` steps (`StepMetrics`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from distsleep.runtime import framework_output
from distsleep.shards.loader import TrainBatch
from distsleep.tasks import targets
from distsleep.train.config import TrainConfig, deepspeed_config, lr_lambda

LOGGED_OUTPUTS = ("mask_ratio_effective",)  # model outputs logged besides every "loss*" entry
DS_TAG = "ds"  # the DeepSpeed checkpoint tag (its folder in every checkpoint)


def device_of(use_gpu: bool) -> torch.device:
    """The device a worker trains on: its current CUDA device when asked for and present, else the CPU."""
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def plain_state_keys(state: dict) -> dict:
    """A state dict with the `_orig_mod.` prefix of `torch.compile` wrappers removed (older bundles)."""
    return {k.replace("_orig_mod.", ""): v for k, v in state.items()}


def compile_in_place(model: torch.nn.Module, backend: str) -> None:
    """`torch.compile` the module in place: its state-dict keys stay its own (no `_orig_mod.` prefix).

    Transformer layers' eager "fast path" is switched off in this process: compiled graphs fuse on their own,
    and dynamo traces the fast path's autocast check wrongly (evaluation under bf16 autocast then fails with
    "expected scalar type Float but found BFloat16").
    """
    torch.backends.mha.set_fastpath_enabled(False)
    model.compile(backend=backend)


@dataclass
class Engine:
    """The DeepSpeed engine of one worker and what the step needs beside it."""

    engine: Any  # deepspeed.DeepSpeedEngine
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ds_config: dict
    clip: list[torch.nn.Parameter] | None  # parameters this module clips (ZeRO 0), or None (DeepSpeed clips)
    grad_clip: float
    device: torch.device

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module


def skip_inference_all_reduce_build() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce when its communication backend starts.

    On the CPU accelerator that op is C++ built on first use: about 30 s on 2 cores per fresh environment, and
    on a node without a C++ compiler the engine does not start at all. Only tensor-parallel inference calls it
    (`inference_all_reduce`); training all-reduces through the process group (gloo), so marking it incompatible
    changes nothing that runs. On CUDA the op is never built either way.
    """
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def build_engine(cfg: TrainConfig, model: torch.nn.Module, device: torch.device, world_size: int) -> Engine:
    """`model` (already on the CPU, frozen parts set) wrapped in the DeepSpeed engine every worker trains with.

    `cfg.compile` compiles the module in place (`nn.Module.compile`), so state-dict keys stay the model's own
    and bundles and checkpoints load into an uncompiled model.
    """
    import deepspeed  # heavy import; kept out of module import so that configs and tests stay light

    if cfg.compile:
        compile_in_place(model, cfg.compile_backend)
    own_clipping = cfg.zero_stage == 0 and cfg.grad_clip > 0
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=cfg.effective_lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                 fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ds_config = deepspeed_config(cfg)
    skip_inference_all_reduce_build()
    if own_clipping:
        ds_config["gradient_clipping"] = 0.0  # clipped in train_step instead (see the module docstring)
    with framework_output():  # DeepSpeed's own console lines; the console stays ours
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                               config=ds_config, dist_init_required=False)
    if world_size == 1 and cfg.zero_stage == 0:
        engine.enable_backward_allreduce = False  # one rank: the all-reduce would only copy every gradient twice
    return Engine(engine, optimizer, scheduler, ds_config, clip=parameters if own_clipping else None,
                  grad_clip=cfg.grad_clip, device=device)


def batch_to_device(batch: TrainBatch, device: torch.device) -> TrainBatch:
    """Non-blocking on CUDA (the loader pins its batches there), plain on the CPU."""
    return batch.to_device(device, non_blocking=device.type == "cuda")


def train_step(engine: Engine, batches: Iterator[TrainBatch], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """One optimizer step: forward and backward on DeepSpeed's `gradient_accumulation_steps` micro-batches drawn
    from `batches`, then clip and step. A step is an optimizer step, as `max_steps`, `val_every`, the LR schedule
    and the paper count them (one micro-batch per call let a schedule over optimizer steps end at 1/accumulation
    of its course, and a validation land between micro-batches). Returns the detached losses, averaged over the
    micro-batches (still on the device: nothing here waits for the GPU)."""
    accumulation = int(engine.ds_config.get("gradient_accumulation_steps", 1))
    total: dict[str, torch.Tensor] = {}
    for _ in range(accumulation):
        batch = batch_to_device(next(batches), engine.device)
        out = engine.engine(batch.signals, labels=targets(cfg.task, batch.labels, batch.events), stage=cfg.stage)
        engine.engine.backward(out["loss"])
        if engine.clip is not None and engine.engine.is_gradient_accumulation_boundary():
            torch.nn.utils.clip_grad_norm_(engine.clip, engine.grad_clip, foreach=True)
        engine.engine.step()
        for key, value in out.items():
            if key.startswith("loss") or key in LOGGED_OUTPUTS:
                total[key] = total[key] + value.detach() if key in total else value.detach()
    return {key: value / accumulation for key, value in total.items()} if accumulation > 1 else total


def full_fp32_state(engine) -> dict:
    """fp32 weights gathered from DeepSpeed's (possibly partitioned) master copy; a collective."""
    import deepspeed  # heavy, and it probes for accelerators: imported where an engine exists (see build_engine)

    # Start from state_dict (persistent buffers included, non-persistent ones excluded) and replace each
    # trainable parameter by its fp32 master copy.
    state = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    for name, param in engine.module.named_parameters():
        full = deepspeed.utils.safe_get_full_fp32_param(param) if param.requires_grad else None
        if name in state:
            state[name] = (full if full is not None else param.detach()).float().cpu().clone()
    return state


def average_buffers(module: torch.nn.Module) -> None:
    """Replace every rank's persistent floating-point buffers (BatchNorm running mean and variance) by their mean
    over the ranks, in place; a collective, a no-op without a process group or with one rank.

    DeepSpeed broadcasts buffers once, when the engine starts (torch DDP re-broadcasts them every forward), so
    each rank's running statistics follow its own batches: without this, validation would score each rank's
    share of nights with a slightly different model, and the checkpoint would keep rank 0's. The mean over
    ranks is about the statistics of the global batch, what SyncBatchNorm would give at evaluation. Integer
    buffers (num_batches_tracked) agree already; non-persistent ones are constants (positional encodings).
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    saved = module.state_dict(keep_vars=True)
    buffers = [b for name, b in module.named_buffers() if name in saved and b.is_floating_point()]
    if not buffers:
        return
    # One all-reduce of them all, in float64: tiny, and buffers that agree (frozen BatchNorms) stay bit-exact.
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for buffer, mean in zip(buffers, flat.split([b.numel() for b in buffers])):
        buffer.data.copy_(mean.view_as(buffer))


class StepMetrics:
    """Per-step scalar metrics held on the device and read back in one copy per `drain()`.

    Reading a CUDA scalar with `float()` waits for the GPU to finish everything queued; doing it once every
    `log_every` steps instead of every step lets the host run ahead of the GPU. Every step's values are kept.
    """

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._values: list[torch.Tensor] = []
        self._host: list[dict[str, float]] = []  # values that were plain numbers already
        self._names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
        names = tuple(sorted(tensors))
        if self._steps and names != self._names:
            raise ValueError(f"step {step} reports metrics {names}, the steps before it {self._names}")
        self._names = names
        self._steps.append(step)
        self._host.append({k: float(v) for k, v in metrics.items() if k not in tensors})
        if names:
            device = tensors[names[0]].device  # a model may return a constant (e.g. a disabled loss) on the CPU
            self._values.append(torch.stack([tensors[n].float().reshape(()).to(device, non_blocking=True) for n in names]))

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        """[(step, {name: value})] for every step added since the last drain (one device-to-host copy)."""
        if not self._steps:
            return []
        rows = torch.stack(self._values).cpu().tolist() if self._values else [[] for _ in self._steps]
        out = [(step, {**dict(zip(self._names, row)), **host})
               for step, row, host in zip(self._steps, rows, self._host)]
        self._steps, self._values, self._host = [], [], []
        return out
