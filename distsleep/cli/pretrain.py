"""`distsleep pretrain` (jobs/pretrain.py): a training run on Ray Train + DeepSpeed, tracked in MLflow
(`distsleep.train.launch.run_training`); with --stage finetune the fine-tuning stage."""

from __future__ import annotations

import argparse
import sys

from distsleep.bundle import register_model
from distsleep.cli.common import add_train_arguments, config_from_args, run_job
from distsleep.metrics import format_values
from distsleep.stages import STAGE_NAMES
from distsleep.train.launch import run_training

SUMMARY = "pre-train (or fine-tune with --stage finetune) on Ray Train + DeepSpeed"
DETAILS = ("One DeepSpeed engine per Ray Train worker, shards streamed from the manifest, validation + checkpoint every "
           "--val-every steps, early stopping, test evaluation of the best checkpoint, everything logged to MLflow "
           "(rank 0). Relaunching the same --name resumes from its latest checkpoint.")
DESCRIPTION = f"{SUMMARY[0].upper() + SUMMARY[1:]}. {DETAILS}"
TEST_SUMMARY = ("test_accuracy", "test_macro_f1", "test_kappa", "test_f1_positive", "test_auroc", "test_majority_accuracy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)
    add_register_arguments(p)


def add_register_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sharing")
    g.add_argument("--register", metavar="NAME",
                   help="register the run's model bundle in the MLflow model registry as a new version of NAME; it is then "
                        "models:/NAME/VERSION wherever a model is accepted (predict, evaluate, export, --init-from)")
    g.add_argument("--alias", nargs="+", default=[], metavar="ALIAS",
                   help="with --register: point these aliases at the new version (models:/NAME@ALIAS)")


def run(args: argparse.Namespace, stage: str | None = None) -> int:
    """The run the options describe (`stage` fixes the stage, as `distsleep finetune` does), and its summary."""
    command = f"distsleep {args.command}"
    try:
        config = config_from_args(args, stage=stage)
    except ValueError as error:  # e.g. a global batch that does not divide over the workers
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    if args.alias and not args.register:
        print(f"{command}: error: --alias goes with --register NAME", file=sys.stderr)
        return 2
    outcome, status = run_job(command, lambda: run_training(config, address=args.address))
    if status:
        return status
    version = register_model(outcome.run_id, args.register, outcome.tracking_uri, args.alias) if args.register else None
    m = outcome.metrics
    summary = format_values([(k.removeprefix("test_"), m[k]) for k in TEST_SUMMARY if k in m], ".3f")
    per_class = format_values([(s, m[f"test_f1_{s}"]) for s in STAGE_NAMES if f"test_f1_{s}" in m], ".2f")
    status = "already finished, not trained again:" if not outcome.trained else "resumed and finished" if outcome.resumed else "finished"
    print(f"{status} run {config.name!r} ({config.task}): test {summary}")
    if per_class:
        print(f"  test F1 per stage: {per_class}")
    print(f"checkpoints: {outcome.storage} (best: {outcome.best_checkpoint})")
    print(f"MLflow run {outcome.run_id} in {outcome.tracking_uri} (experiment {config.experiment!r}); "
          f"model bundle: runs:/{outcome.run_id}/model/model.pt")
    if version is not None:
        print(f"registered as models:/{args.register}/{version}"
              + "".join(f", models:/{args.register}@{alias}" for alias in args.alias))
    return 0
