"""What several subcommands share: KEY=VALUE parsing, the exit status of a job, the shard-safety options, and
the training options (`distsleep pretrain|finetune|sweep`, `distsleep gan effect`, jobs/pretrain.py) mapped
onto TrainConfig, whose field defaults are the options' defaults."""

from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace

from distsleep.config import field_defaults
from distsleep.models import get_spec, list_models
from distsleep.shards.storage import COMMANDS_OPTION, READ_SCHEMES, VERIFY_MODES
from distsleep.tasks import TASKS
from distsleep.tracking import TrackingUnavailable
from distsleep.train.config import FINETUNE_MODES, LR_SCALINGS, PRECISIONS, SELECT_METRICS, STAGES, TrainConfig
from distsleep.train.driver import LaunchError, TrainingFailed


def parse_value(text: str):
    """A command-line value as JSON (numbers, true/false, lists) when it parses, else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_set(items: list[str], option: str = "--set", parse=parse_value) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{option} expects KEY=VALUE, got {item!r}")
        out[key] = parse(value)
    return out


def run_job(command: str, job, refused: tuple = ()):
    """(job(), 0), or (None, exit status) after printing "COMMAND: error: ..." to stderr: 2 when the job was
    refused before it started (LaunchError, TrackingUnavailable or one of `refused`), 1 when training failed."""
    try:
        return job(), 0
    except (LaunchError, TrackingUnavailable, *refused) as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return None, 2
    except TrainingFailed as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return None, 1


def add_shard_safety_arguments(g) -> None:
    """--allow-shard-commands and --verify-shards, shared by every job that reads shards."""
    g.add_argument(COMMANDS_OPTION, action="store_true",
                   help="accept manifest/augmentation entries that are pipe: commands or URLs outside the allow-list "
                        f"({', '.join(READ_SCHEMES)}); they run or open whatever the file says, so only for files you trust")
    g.add_argument("--verify-shards", choices=VERIFY_MODES, default=field_defaults(TrainConfig)["verify_shards"],
                   help="check shards against the sha256 in their manifest before decoding: stored (default: local "
                        "files and object stores such as s3://), local (local files only), all (http(s) too) or none")


def add_train_arguments(p: argparse.ArgumentParser, stage: str | None = None) -> None:
    d = SimpleNamespace(**field_defaults(TrainConfig))
    g = p.add_argument_group("what to train")
    g.add_argument("--shards", required=True, help="manifest.json of a preprocessing run (path or URL)")
    g.add_argument("--model", default=d.model, help=f"registered model name (default {d.model})")
    presets = "; ".join(f"{name}: {', '.join(get_spec(name).config_class.presets())}" for name in list_models())
    g.add_argument("--model-size", default=d.model_size,
                   help=f"model preset (default {d.model_size}), from the model registry: {presets}")
    if stage is None:
        g.add_argument("--stage", default=d.stage, choices=STAGES, help="training stage (default pretrain)")
    g.add_argument("--mask-ratio", type=float, help="masking ratio r of the cross-masking pre-training (model default 0.5)")
    g.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override model config fields, e.g. infonce_temperature=0.07")
    g.add_argument("--init-from", help="start from a checkpoint dir, a model bundle (model.pt) or an MLflow run id")
    g.add_argument("--init-part", nargs="+", default=[], metavar="PART=SOURCE",
                   help="initialise a separately pre-trained part, e.g. SynthSleepNet's eog_l=<NeuroNet run id or bundle>")
    g.add_argument("--task", default=d.task, choices=TASKS, help="what to predict per epoch (default staging)")
    g.add_argument("--finetune-mode", default=d.finetune_mode, choices=FINETUNE_MODES,
                   help="fine-tuning: full (what the paper fine-tunes) or linear (linear probing on frozen features)")
    g.add_argument("--label-fraction", type=float, default=d.label_fraction,
                   help="semi-supervised: use the labels of this fraction of the training records (e.g. 0.05)")
    g.add_argument("--channels", nargs="+", metavar="ROLE",
                   help="channel roles to feed the model, in its input order (default: its preferred roles), e.g. eog_l")
    g = p.add_argument_group("data")
    g.add_argument("--seq-len", type=int, default=d.seq_len, help=f"epochs per sequence L (default {d.seq_len})")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"global batch: sequences per optimizer step over all workers, split evenly between them "
                        f"(default {d.batch_size}, the paper's batch in total)")
    g.add_argument("--loader-workers", type=int, default=d.loader_workers, help="DataLoader processes per worker")
    g.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer, help="sequences in the shuffle buffer")
    g.add_argument("--augment-shards", nargs="+", default=[], metavar="AUGMENTATION",
                   help="augmentation.json (or its folder) of `distsleep gan augment`: its synthetic epochs join the "
                        "training stream only, never validation or test")
    add_shard_safety_arguments(g)
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-steps", type=int, default=d.max_steps)
    g.add_argument("--val-every", type=int, default=d.val_every, help="validate and checkpoint every N steps")
    g.add_argument("--early-stop-patience", type=int, default=d.early_stop_patience, help="validations without improvement before stopping")
    g.add_argument("--select-metric", default=d.select_metric, choices=SELECT_METRICS,
                   help="validation metric that picks the best checkpoint (auroc / f1_positive: binary tasks)")
    g.add_argument("--lr", type=float, default=d.lr, help=f"learning rate at the reference batch (default {d.lr})")
    g.add_argument("--lr-scaling", default=d.lr_scaling, choices=LR_SCALINGS,
                   help="how the learning rate follows the global batch: none (lr as given, default), linear "
                        "(lr x batch / reference) or sqrt (lr x sqrt(batch / reference))")
    g.add_argument("--lr-reference-batch", type=int, default=d.lr_reference_batch,
                   help=f"the global batch --lr is meant for (default {d.lr_reference_batch}, the paper's)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--schedule", default=d.schedule, choices=("constant", "cosine"))
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip)
    g.add_argument("--zero-stage", type=int, default=d.zero_stage, choices=(0, 1, 2))
    g.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="auto: bf16 on GPU, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (weights keep their plain names)")
    g.add_argument("--compile-backend", default=d.compile_backend, help="torch.compile backend (default %(default)s)")
    g.add_argument("--deepspeed-config", help="DeepSpeed JSON config; the options above override its values")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--log-every", type=int, default=d.log_every, help="read losses from the device and send them to MLflow every N steps (every step is logged; default %(default)s)")
    g = p.add_argument_group("cluster")
    g.add_argument("--num-workers", type=int, default=d.num_workers, help="Ray Train workers (one DeepSpeed rank each)")
    g.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL")
    g.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker)
    g.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker)
    g.add_argument("--storage-path", default=d.storage_path, help="checkpoints go to STORAGE/NAME (shared path or bucket on clusters)")
    g.add_argument("--name", default="", help="run name; relaunching the same name resumes (default MODEL-STAGE)")
    g.add_argument("--max-failures", type=int, default=d.max_failures, help="worker-group restarts from the last checkpoint")
    g.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a local cluster)")
    g = p.add_argument_group("tracking")
    g.add_argument("--experiment", default=d.experiment, help="MLflow experiment")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")


def config_from_args(args: argparse.Namespace, stage: str | None = None) -> TrainConfig:
    overrides = parse_set(args.set)
    if args.mask_ratio is not None:  # the model config's mask_ratio, its one home
        overrides["mask_ratio"] = args.mask_ratio
    return TrainConfig(
        shards=args.shards, model=args.model, model_size=args.model_size, model_overrides=overrides,
        stage=stage or args.stage, init_from=args.init_from, seq_len=args.seq_len,
        init_parts=parse_set(args.init_part, "--init-part", str), task=args.task, finetune_mode=args.finetune_mode,
        label_fraction=args.label_fraction, channels=args.channels,
        batch_size=args.batch_size, loader_workers=args.loader_workers, shuffle_buffer=args.shuffle_buffer,
        augment_shards=args.augment_shards, allow_shard_commands=args.allow_shard_commands,
        verify_shards=args.verify_shards,
        max_steps=args.max_steps, val_every=args.val_every, early_stop_patience=args.early_stop_patience,
        select_metric=args.select_metric, lr=args.lr, lr_scaling=args.lr_scaling, lr_reference_batch=args.lr_reference_batch,
        weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, zero_stage=args.zero_stage, precision=args.precision,
        compile=args.compile, compile_backend=args.compile_backend, deepspeed_config=args.deepspeed_config, seed=args.seed, log_every=args.log_every,
        num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, storage_path=args.storage_path, name=args.name,
        max_failures=args.max_failures, experiment=args.experiment, tracking_uri=args.tracking_uri,
    )
