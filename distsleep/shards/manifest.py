"""The dataset manifest: which records are in, which split each belongs to, and why others are out.

Built from the per-record summaries (pure function), so the subset and the split can be changed without
converting anything again, and the same summaries + config always give the same manifest bytes. Split
assignment lives here only, never in the shards: changing the split rewrites the manifest, not a shard.
Each record carries its subject (the person, distsleep.sources.subjects) and visit; `split` says where
the assignment came from (stable hash with its seed, or a published file with its sha256).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import distsleep
from distsleep.config import PreprocessConfig, SplitConfig
from distsleep.shards.splits import PublishedSplit, published_splits, stable_splits
from distsleep.sources.subjects import SHHS1_VISIT, person_of, subject_of, visit_of
from distsleep.stages import STAGE_NAMES

MANIFEST_NAME = "manifest.json"
FAILURES_NAME = "failures.jsonl"


def subset_reason(summary: dict, subset: str) -> str | None:
    """Why a converted record is excluded from `subset` by its stages (None when it is included)."""
    stages = summary["stages"]
    if subset in ("shhs-5791", "shhs-5463") and sum(stages[s] for s in STAGE_NAMES) == 0:
        return "no scored sleep stages"
    if subset == "shhs-5463":
        missing = [s for s in STAGE_NAMES if stages[s] == 0]
        if missing:
            return "does not contain all five stages (missing " + ", ".join(missing) + ")"
    return None


def selection_reason(record_id: str, source: str, split: SplitConfig) -> str | None:
    """Why a record is not in the cohort by its visit (None when it is); known before converting it."""
    visit = visit_of(record_id, source)
    if split.subset.startswith("shhs-") and visit != SHHS1_VISIT:
        return f"not an SHHS1 record (visit {visit}): {split.subset} is an SHHS1 cohort"
    if split.visits and visit not in split.visits:
        return f"visit {visit} not selected (--visit {' '.join(split.visits)})"
    return None


def assign_splits(subjects: list[str], config: SplitConfig) -> dict[str, str]:
    """subject -> "train" | "val" | "test", subject-wise and stable (distsleep.shards.splits)."""
    return stable_splits(subjects, config)


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


def build_manifest(summaries: list[dict], failures: list[dict], preprocess: PreprocessConfig, split: SplitConfig,
                   published: PublishedSplit | None = None, not_selected: list[dict] = (),
                   root: str | None = None) -> dict:
    """The manifest (a pure function of its arguments). `published` is the parsed `split.split_file`;
    `not_selected` are records left out before conversion (record_id, reason); `root` the input folder."""
    included, excluded = [], list(not_selected)
    for summary in sorted(summaries, key=lambda s: s["record_id"]):
        reason = selection_reason(summary["record_id"], preprocess.source, split) or subset_reason(summary, split.subset)
        if reason is None:
            included.append(summary)
        else:
            excluded.append({"record_id": summary["record_id"], "reason": reason})
    for failure in sorted(failures, key=lambda f: f["record_id"]):
        excluded.append({"record_id": failure["record_id"], "reason": f"{failure['error']}: {failure['message']}"})
    # The subject is derived from the record id here, not read from the summary: a summary written by an
    # older version may carry the record id as its subject.
    subject = {s["record_id"]: subject_of(s["record_id"], preprocess.source) for s in included}
    if split.split_file:
        if published is None:
            raise ValueError("split.split_file is set: pass the parsed file (splits.read_split_file) as `published`")
        by_record, missing = published_splits(subject, published, split.allow_missing_split_ids)
        excluded += [{"record_id": s["record_id"], "reason": f"not in the split file {published.path}"}
                     for s in included if s["record_id"] not in by_record]
        included = [s for s in included if s["record_id"] in by_record]
        provenance = {**published.provenance(), "missing_ids": missing}
    else:
        by_subject = assign_splits(list(subject.values()), split)
        by_record = {rid: by_subject[s] for rid, s in subject.items()}
        provenance = {"method": "stable-hash", "seed": split.seed, "n_val": split.n_val,
                      "train_fraction": split.train_fraction}
    records = {}
    for summary in included:
        rid = summary["record_id"]
        records[rid] = {
            "split": by_record[rid], "subject": subject[rid], "visit": visit_of(rid, preprocess.source),
            **{k: summary[k] for k in ("shard", "sha256", "bytes", "n_epochs", "stages", "events", "channels", "kept_epochs")},
        }
    return {
        "format": "distsleep-shards",
        "code_version": code_version(),
        "config": {"preprocess": preprocess.to_dict(), "split": split.to_dict()},
        "config_hash": preprocess.content_hash(),
        "split": provenance,  # where the train/val/test assignment came from
        "inputs": {"root": root},  # a rerun into the same folder from another root is refused (pipeline)
        "channels": list(preprocess.channels),
        # Band-pass (Hz) applied to each channel before resampling; None = unfiltered.
        "channel_filters": {role: list(band) if (band := preprocess.band_for(role)) else None for role in preprocess.channels},
        "totals": split_totals(records),
        "records": records,
        "excluded": sorted(excluded, key=lambda e: e["record_id"]),
    }


def split_totals(records: dict) -> dict[str, dict]:
    """Records, epochs and epochs per stage of each split, from a manifest's `records`."""
    totals: dict[str, dict] = {}
    for name in ("train", "val", "test"):
        members = [r for r in records.values() if r["split"] == name]
        totals[name] = {
            "records": len(members),
            "epochs": sum(r["n_epochs"] for r in members),
            "stages": {s: sum(r["stages"][s] for r in members) for s in (*STAGE_NAMES, "unscored")},
        }
    return totals


def split_records(manifest: dict) -> dict[str, list[str]]:
    """Record ids per split ("train", "val", "test"), sorted."""
    return {s: sorted(r for r, e in manifest.get("records", {}).items() if e.get("split") == s) for s in ("train", "val", "test")}


def seen_people(manifest: dict, trained_records) -> dict[str, list[str]]:
    """Validation and test record ids of `manifest` ({"val": [...], "test": [...]}) that belong to a person of
    `trained_records`: the record ids another model was trained on, possibly from another manifest. The same
    night counts, and so does another visit or night of the same person (shhs2-200001 for shhs1-200001,
    SC4012E0 for SC4011E0; `person_of`, so that nsrrid 0001 of MESA is not 0001 of another cohort): splits are
    by person, so a model that saw a person must not be scored on them."""
    source = manifest.get("config", {}).get("preprocess", {}).get("source", "")
    trained = set(trained_records)
    people = {person_of(r, source) for r in trained}
    found = {}
    for split in ("val", "test"):
        found[split] = sorted(r for r, e in manifest.get("records", {}).items() if e.get("split") == split
                              and (r in trained or person_of(r, source) in people))
    return found


def manifest_hash(manifest: dict) -> str:
    """Hash of the data a manifest describes: its preprocessing config and, per record, split and shard sha256
    (not its location or the code version that wrote it). Augmentation manifests hash their shard list."""
    records = {rid: {"split": e.get("split"), "sha256": e.get("sha256")} for rid, e in manifest.get("records", {}).items()}
    shards = [e.get("sha256") for e in manifest.get("shards", [])]
    return canonical_hash({"config_hash": manifest.get("config_hash"), "records": records, "shards": shards})


def canonical_hash(payload) -> str:
    """16 hex digits of the sha256 of `payload` as sorted JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
