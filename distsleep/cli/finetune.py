"""`distsleep finetune` (jobs/finetune.py): the fine-tuning stage from a pre-training run (`--init-from`),
frozen backbones, no masking; the same run as `distsleep pretrain --stage finetune`."""

from __future__ import annotations

import argparse

from distsleep.cli import pretrain
from distsleep.cli.common import add_train_arguments

SUMMARY = "fine-tune from a pre-training run: frozen backbones, no masking"
DESCRIPTION = f"{SUMMARY[0].upper() + SUMMARY[1:]}. {pretrain.DETAILS}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p, stage="finetune")
    pretrain.add_register_arguments(p)


def run(args: argparse.Namespace) -> int:
    return pretrain.run(args, stage="finetune")
