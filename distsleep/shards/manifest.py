"""The dataset manifest: which records are in, which split each belongs to, and why others are out.

Built from the per-record summaries (pure function), so the subset and the split can be changed without
converting anything again, and the same summaries + config always give the same manifest bytes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

import distsleep
from distsleep.config import PreprocessConfig, SplitConfig
from distsleep.stages import STAGE_NAMES

MANIFEST_NAME = "manifest.json"
FAILURES_NAME = "failures.jsonl"


def subset_reason(summary: dict, subset: str) -> str | None:
    """Why a converted record is excluded from `subset` (None when it is included)."""
    stages = summary["stages"]
    if subset in ("shhs-5791", "shhs-5463") and sum(stages[s] for s in STAGE_NAMES) == 0:
        return "no scored sleep stages"
    if subset == "shhs-5463":
        missing = [s for s in STAGE_NAMES if stages[s] == 0]
        if missing:
            return "does not contain all five stages (missing " + ", ".join(missing) + ")"
    return None


def assign_splits(subjects: list[str], config: SplitConfig) -> dict[str, str]:
    """subject -> "train" | "val" | "test", subject-wise and reproducible for a seed."""
    unique = sorted(set(subjects))
    order = np.random.default_rng(config.seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    n_val = min(config.n_val, max(1, len(unique) // 10)) if len(unique) > 2 else 0
    rest = shuffled[n_val:]
    n_train = int(round(config.train_fraction * len(rest)))
    if len(rest) >= 2:
        n_train = min(max(n_train, 1), len(rest) - 1)  # keep at least one test subject
    split = {s: "val" for s in shuffled[:n_val]}
    split.update({s: "train" for s in rest[:n_train]})
    split.update({s: "test" for s in rest[n_train:]})
    return split


def code_version() -> str:
    """Package version plus the git commit of the checkout it runs from, when there is one."""
    version = distsleep.__version__
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(distsleep.__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{version}+g{commit}"
    except (OSError, subprocess.SubprocessError):
        return version


def build_manifest(summaries: list[dict], failures: list[dict], preprocess: PreprocessConfig, split: SplitConfig) -> dict:
    included, excluded = [], []
    for summary in sorted(summaries, key=lambda s: s["record_id"]):
        reason = subset_reason(summary, split.subset)
        if reason is None:
            included.append(summary)
        else:
            excluded.append({"record_id": summary["record_id"], "reason": reason})
    for failure in sorted(failures, key=lambda f: f["record_id"]):
        excluded.append({"record_id": failure["record_id"], "reason": f"{failure['error']}: {failure['message']}"})
    splits = assign_splits([s["subject"] for s in included], split)
    records = {}
    for summary in included:
        records[summary["record_id"]] = {
            "split": splits[summary["subject"]],
            **{k: summary[k] for k in ("subject", "shard", "sha256", "bytes", "n_epochs", "stages", "events", "channels", "kept_epochs")},
        }
    totals: dict[str, dict] = {}
    for name in ("train", "val", "test"):
        members = [r for r in records.values() if r["split"] == name]
        totals[name] = {
            "records": len(members),
            "epochs": sum(r["n_epochs"] for r in members),
            "stages": {s: sum(r["stages"][s] for r in members) for s in (*STAGE_NAMES, "unscored")},
        }
    return {
        "format": "distsleep-shards",
        "code_version": code_version(),
        "config": {"preprocess": preprocess.to_dict(), "split": split.to_dict()},
        "config_hash": preprocess.content_hash(),
        "channels": list(preprocess.channels),
        # Band-pass (Hz) applied to each channel before resampling; None = unfiltered.
        "channel_filters": {role: list(band) if (band := preprocess.band_for(role)) else None for role in preprocess.channels},
        "totals": totals,
        "records": records,
        "excluded": sorted(excluded, key=lambda e: e["record_id"]),
    }
