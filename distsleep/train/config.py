"""Configuration of one training run (pre-training or fine-tuning), and the DeepSpeed config built from it.

`TrainConfig` is what to train on which data, with its optimisation settings, plus the cluster and tracking
sections every Ray Train job shares (`distsleep.config`). The model's own settings (the masking ratio among
them) live in the model's config class: `model_size` picks its preset and `model_overrides` changes fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from distsleep.config import ClusterSection, ConfigBase, TrackingSection, absolute
from distsleep.tasks import check_task

STAGES = ("pretrain", "finetune")
PRECISIONS = ("auto", "fp32", "bf16")
FINETUNE_MODES = ("full", "linear")  # linear = linear probing (frozen features, trained classifier only)
LR_SCALINGS = ("none", "linear", "sqrt")  # how the learning rate follows the global batch (see TrainConfig)
SELECT_METRICS = ("macro_f1", "accuracy", "kappa", "auroc", "f1_positive")


@dataclass
class TrainConfig(ConfigBase, ClusterSection, TrackingSection):
    # what to train
    shards: str = ""  # manifest.json (path or URL) of a preprocessing run
    model: str = "mc2sleepnet"
    model_size: str = "paper"  # a preset of the model's config class: "paper" or "small"
    model_overrides: dict = field(default_factory=dict)  # any field of the model's config class
    stage: str = "pretrain"
    init_from: str | None = None  # checkpoint dir, model bundle, or MLflow run id to start from
    init_parts: dict = field(default_factory=dict)  # part -> weights source (SynthSleepNet: role -> NeuroNet run)
    task: str = "staging"  # staging | apnea | hypopnea (distsleep.tasks)
    finetune_mode: str = "full"  # finetune stage: "full" (the paper's fine-tuning) or "linear" (linear probing)
    label_fraction: float = 1.0  # semi-supervised: use the labels of this fraction of the training records
    channels: list | None = None  # channel roles to feed the model (default: its preferred roles in the shards)
    augment_shards: list = field(default_factory=list)  # augmentation.json files whose shards join training only
    allow_shard_commands: bool = False  # accept pipe: commands / unlisted URL schemes in manifests (opt-in)
    verify_shards: str = "stored"  # check shards against the manifest's sha256: stored | local | all | none
    # data
    seq_len: int = 21
    # Sequences per optimizer step in total, over all workers (the paper's 32 is 32 in total): each worker
    # loads batch_size / (num_workers x DeepSpeed gradient_accumulation_steps) per micro-step.
    batch_size: int = 32
    loader_workers: int = 2
    shuffle_buffer: int = 2000
    val_stride: int | None = None  # eval window stride (default: seq_len, non-overlapping)
    eval_batch_size: int | None = None  # sequences per evaluation forward pass (default: batch_size, x4 on GPU)
    # optimisation
    max_steps: int = 1000
    # The paper validates every 500th step on SHHS (100th on Sleep-EDF-78) and stops after 1,000 steps without
    # improvement; our default stops after 5 x 200 = 1,000 steps without one, validating more often on short runs.
    val_every: int = 200
    early_stop_patience: int = 5  # validations without improvement
    select_metric: str = "macro_f1"  # validation metric that picks the best checkpoint
    lr: float = 5e-4
    # The learning rate used is lr x f(batch_size / lr_reference_batch): f = 1 ("none"), the ratio ("linear",
    # Goyal et al. 2017) or its square root ("sqrt"). The reference is the paper's batch of 32 at lr 5e-4.
    lr_scaling: str = "none"
    lr_reference_batch: int = 32
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # or "cosine"
    warmup_steps: int = 0
    # Not in the paper (it names Adam, lr, betas, weight decay, batch): our choice, the usual guard against
    # gradient spikes (global norm 1.0); 0 turns it off for a run exactly as published.
    grad_clip: float = 1.0
    zero_stage: int = 0
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend ("inductor"; "aot_eager" checks graphs without codegen)
    seed: int = 0
    deepspeed_config: str | None = None  # JSON file; the options above override its values
    log_every: int = 10  # losses are read from the device (a sync) every N steps; every step's values are logged

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if not 0 <= self.zero_stage <= 2:
            raise ValueError("zero_stage must be 0, 1 or 2")
        check_task(self.task)
        if self.finetune_mode not in FINETUNE_MODES:
            raise ValueError(f"finetune_mode must be one of {FINETUNE_MODES}, got {self.finetune_mode!r}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {SELECT_METRICS}, got {self.select_metric!r}")
        if self.select_metric in ("auroc", "f1_positive") and self.task == "staging":
            raise ValueError(f"select_metric {self.select_metric!r} is for the binary tasks (apnea, hypopnea)")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {self.lr_scaling!r}")
        if self.batch_size < 1 or self.lr_reference_batch < 1:
            raise ValueError("batch_size and lr_reference_batch must be >= 1")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.channels is not None:
            self.channels = [str(c) for c in self.channels]
        self.betas = tuple(self.betas)
        self.check_cluster(default_name=f"{self.model}-{self.stage}")
        # Ray workers run in other directories: local paths are made absolute on the driver.
        self.shards = absolute(self.shards) if self.shards else self.shards
        self.deepspeed_config = absolute(self.deepspeed_config) if self.deepspeed_config else None
        self.augment_shards = [absolute(str(a)) for a in self.augment_shards]
        self.init_parts = {k: absolute(v) if Path(v).exists() else v for k, v in self.init_parts.items()}
        if self.init_from and Path(self.init_from).exists():
            self.init_from = absolute(self.init_from)
        split_batch(self.batch_size, self.num_workers, self.gradient_accumulation)  # refuse an uneven split now

    @property
    def gradient_accumulation(self) -> int:
        """DeepSpeed's gradient_accumulation_steps from --deepspeed-config (1 without one)."""
        if not self.deepspeed_config:
            return 1
        return int(json.loads(Path(self.deepspeed_config).read_text()).get("gradient_accumulation_steps", 1))

    @property
    def per_worker_batch(self) -> int:
        """Sequences each worker loads per micro-step: the global batch split over workers and accumulation."""
        return split_batch(self.batch_size, self.num_workers, self.gradient_accumulation)

    @property
    def effective_lr(self) -> float:
        """The learning rate the optimizer gets: lr scaled by `lr_scaling` for the global batch."""
        ratio = self.batch_size / self.lr_reference_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]

    @property
    def resolved_eval_batch_size(self) -> int:
        # No gradients are kept in evaluation, so a GPU takes larger batches; CPU memory stays as in training.
        return self.eval_batch_size or (4 * self.per_worker_batch if self.use_gpu else self.per_worker_batch)

    @property
    def resolved_precision(self) -> str:
        return ("bf16" if self.use_gpu else "fp32") if self.precision == "auto" else self.precision

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        if data.get("mask_ratio") is not None:  # written by versions that kept a copy of the ratio here
            data["model_overrides"] = {**data.get("model_overrides", {}), "mask_ratio": data.pop("mask_ratio")}
        return super().from_dict(data)


def split_batch(global_batch: int, workers: int, accumulation: int = 1) -> int:
    """Sequences per worker and micro-step of a global batch; ValueError when it does not divide evenly."""
    shares = workers * accumulation
    if global_batch % shares:
        steps = f" x {accumulation} gradient accumulation steps" if accumulation > 1 else ""
        raise ValueError(f"--batch-size {global_batch} is the global batch (sequences per optimizer step over all "
                         f"workers) and does not divide over {workers} worker(s){steps}: use a multiple of {shares}")
    return global_batch // shares


def deepspeed_config(config: TrainConfig) -> dict:
    """The DeepSpeed config: the user's JSON file (if any) with this run's options on top.

    bf16 runs as torch autocast over fp32 master weights: every model works unchanged (no input casts)
    and the weights saved are fp32. The optimizer is a torch optimizer passed to deepspeed.initialize
    (DeepSpeed's fused Adam would JIT-compile a C++/CUDA op on first use).
    """
    base: dict = {}
    if config.deepspeed_config:
        base = json.loads(Path(config.deepspeed_config).read_text())
    base.update({
        "train_micro_batch_size_per_gpu": config.per_worker_batch,
        "gradient_accumulation_steps": base.get("gradient_accumulation_steps", 1),
        "gradient_clipping": config.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # The throughput timer synchronises the device twice per step to time it; we time steps ourselves.
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
    })
    base.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch x accumulation x world
    zero = dict(base.get("zero_optimization", {}))
    zero["stage"] = config.zero_stage
    base["zero_optimization"] = zero
    base.pop("fp16", None)  # never fp16: no loss scaling needed with bf16, and CPU has no fp16 kernels
    if config.resolved_precision == "bf16":
        base["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    else:
        base.pop("torch_autocast", None)
    base.pop("bf16", None)
    return base


def lr_lambda(config: TrainConfig):
    """The LR multiplier per step: linear warm-up, then constant or cosine decay to 0 at max_steps."""
    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "cosine":
            progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor
