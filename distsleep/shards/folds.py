"""K-fold cross-validation by person: K manifests over the same shards, each person tested in exactly one fold.

The MC²SleepNet paper validates on Sleep-EDF-78 by 10-fold cross-validation (SHHS uses one fixed split). A
fold is just another split of the same cohort, and the split lives in the manifest only, so a fold is a
manifest written beside the original (`manifest.cv10-seed0-fold03.json`): its shard paths resolve against the
same folder, nothing is copied, and every tool that takes a manifest (training, `evaluate`, the leakage checks)
takes a fold as it is.

Assignment (our choice where the paper is silent): people are ordered by a seeded hash of their id and dealt
round-robin into K folds, so fold sizes differ by at most one person and all of a person's nights share a
fold. In fold i the people of fold i are the test set, those of fold i+1 (mod K) the validation set (for
checkpoint and model selection; the paper names none for Sleep-EDF) and the rest train. Every person is thus
tested once and validated once over the K folds; K ≥ 3 so that training is never empty.
"""

from __future__ import annotations

import copy
from pathlib import Path

from distsleep import store
from distsleep.shards.manifest import MANIFEST_NAME, manifest_hash, split_totals
from distsleep.shards.splits import subject_number
from distsleep.shards.storage import is_remote, manifest_file

METHOD = "k-fold"
FOLD_KEY = "fold"  # the parameter naming a run's fold (1..k): a sweep's grid axis, a trial run's MLflow param
MIN_FOLDS = 3


class FoldError(ValueError):
    """A cross-validation that cannot be made from this manifest (the message says why)."""


def assign_folds(people, k: int, seed: int) -> dict[str, int]:
    """person -> fold in 1..k: ordered by their seeded hash, dealt round-robin (sizes differ by at most one)."""
    unique = sorted(set(people), key=lambda p: (subject_number(p, seed, METHOD), p))
    return {person: rank % k + 1 for rank, person in enumerate(unique)}


def fold_splits(folds: dict[str, int], k: int, fold: int) -> dict[str, str]:
    """person -> split of one fold: its own people test, the next fold's people validation, the rest train."""
    following = fold % k + 1
    return {p: "test" if f == fold else "val" if f == following else "train" for p, f in folds.items()}


def check_folds(manifest: dict, k: int, where: str = "the manifest") -> None:
    """FoldError unless `manifest` can be cut into `k` folds of at least one person each."""
    if manifest.get("split", {}).get("method") == METHOD:
        raise FoldError(f"{where} is already fold {manifest['split'].get('fold')} of a cross-validation; "
                        "give the cohort's own manifest.json")
    if k < MIN_FOLDS:
        raise FoldError(f"{k} folds: cross-validation needs at least {MIN_FOLDS} (one fold tests, the next validates, "
                        "the others train)")
    people = {entry["subject"] for entry in manifest.get("records", {}).values()}
    if len(people) < k:
        raise FoldError(f"{where} holds {len(people)} people, fewer than the {k} folds asked for")


def fold_manifest(manifest: dict, k: int, fold: int, seed: int = 0) -> dict:
    """Fold `fold` (1..k) of `manifest`: the same records and shards, split by `fold_splits` (a pure function)."""
    check_folds(manifest, k)
    if not 1 <= fold <= k:
        raise FoldError(f"fold {fold} is not one of 1..{k}")
    records = manifest["records"]
    split = fold_splits(assign_folds([e["subject"] for e in records.values()], k, seed), k, fold)
    out = copy.deepcopy(manifest)
    for entry in out["records"].values():
        entry["split"] = split[entry["subject"]]
    out["totals"] = split_totals(out["records"])
    out["split"] = {"method": METHOD, "k": k, "fold": fold, "seed": seed,
                    "validation": f"fold {fold % k + 1} (the next fold)",
                    "cohort_manifest": manifest_hash(manifest), "cohort_split": manifest.get("split")}
    return out


def manifest_location(shards: str | Path) -> str:
    """The manifest file a --shards value names (a manifest file, its folder, or a URL of either)."""
    return manifest_file(shards, MANIFEST_NAME)


def fold_name(k: int, fold: int, seed: int) -> str:
    return f"manifest.cv{k}-seed{seed}-fold{fold:02d}.json"


def fold_location(shards: str | Path, k: int, fold: int, seed: int) -> str:
    """Where fold `fold` of the manifest `shards` names is written: beside it, so its shard paths resolve alike."""
    location = manifest_location(shards)
    if is_remote(location):
        return location.rsplit("/", 1)[0] + "/" + fold_name(k, fold, seed)
    return str(Path(location).parent / fold_name(k, fold, seed))


def write_fold_manifests(shards: str | Path, k: int, seed: int = 0) -> list[str]:
    """Write the k fold manifests of the manifest `shards` names, beside it; returns their locations. Idempotent:
    a fold whose file already holds the same content is not rewritten (a cohort manifest that changed since
    rewrites them all)."""
    location = manifest_location(shards)
    manifest = store.read_json(location)
    check_folds(manifest, k, location)
    written = []
    for fold in range(1, k + 1):
        target = fold_location(location, k, fold, seed)
        content = fold_manifest(manifest, k, fold, seed)
        if not store.exists(target) or store.read_json(target) != content:
            store.write_json(target, content)
        written.append(target)
    return written
