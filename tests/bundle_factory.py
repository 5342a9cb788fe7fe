"""Model bundles of an untrained small MC²SleepNet for tests of inference, evaluation and export: the real bundle
format, written by `distsleep.bundle.model_bundle`, weights seeded so that reruns give the same model."""

from __future__ import annotations

from pathlib import Path

import torch

from distsleep.bundle import model_bundle
from distsleep.config import PreprocessConfig
from distsleep.models import build_model
from distsleep.models.mc2sleepnet import MC2SleepNetConfig


def write_bundle(path: Path, source: str = "shhs", role: str = "eeg_c4") -> Path:
    """A bundle as if trained on `source` shards of channel `role`."""
    torch.manual_seed(0)
    model_cfg = MC2SleepNetConfig.small()
    model = build_model("mc2sleepnet", model_cfg)
    manifest = {"config": {"preprocess": PreprocessConfig(source=source, channels=(role,)).to_dict()}, "records": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model_bundle(model="mc2sleepnet", model_config=model_cfg, weights=model.state_dict(), manifest=manifest,
                            roles=[role], seq_len=model_cfg.seq_len, stage="finetune"), path)
    return path
