"""What a run is, so that a relaunch under its --name is the same run, and what it was trained on.

A run is its name under the storage path (STORAGE/NAME): relaunching a name resumes its checkpoints. That
is only right when the relaunch trains the same thing, so the first launch records the run's identity in
STORAGE/NAME/run_identity.json (the config hash over everything that changes what is computed, the
manifest hash over the records, their splits and the sha256 of their shards, and the records of each
split), and every later launch must match it: another manifest (other data, even with the same name and
preprocessing) or another config is refused with what differs and how to start a new run. Options that
only say how far or where to run (max steps, validation cadence, number of workers and their CPUs, tracking,
storage) may change, except the number of workers of a run at ZeRO stage 1 or 2 once it has checkpoints (their
optimizer state is partitioned over its workers; `_check_workers`). The checkpoints found there are verified
against their checksums before anything loads them, and the launch holds STORAGE/NAME/.launch.lock while it
runs, so a second launch of the same name at once is refused (naming the first). STORAGE may be an s3://
prefix: the identity file and lock are objects there.

`--init-from` / `--init-part` sources are identified the same way (a run's identity file, a bundle's
"data", an MLflow run's data.json): a run is refused when a person of its validation or test records was
in what the source learned from (its training records and, as "trained_before", those of its own sources,
any night of that person), since its scores would measure memorisation, and when a person of its test records
chose the source's weights (the source's validation records and, as "selected_before", its sources'): test
people must not have picked the model they judge. The source's validation people may be this run's validation
people again (fine-tuning on the manifest the source was pre-trained on).
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path

from distsleep import bundle, store
from distsleep.integrity import verify_checksums
from distsleep.locks import exclusive_lock
from distsleep.shards.manifest import canonical_hash, manifest_hash, split_records
from distsleep.tracking import download_json

IDENTITY_FILE = "run_identity.json"
LOCK_FILE = ".launch.lock"
IDENTITY_FORMAT = "distsleep-run/1"
# Config fields that do not change what a run computes: a relaunch may change them.
OPERATIONAL_FIELDS = frozenset({
    "max_steps", "val_every", "early_stop_patience", "log_every", "checkpoint_every", "max_failures",
    "num_workers", "loader_workers", "cpus_per_worker", "gpus_per_worker", "storage_path", "name", "experiment", "tracking_uri",
    "parent_run_id", "run_tags", "compile", "compile_backend", "eval_batch_size", "allow_shard_commands", "verify_shards",
    # data locations: what they hold is compared through the manifest hash instead, so moved shards still match
    "shards", "augment_shards",
})


class RunMismatch(RuntimeError):
    """A launch is not the run its --name holds, or may not start from its --init-from source."""


def identity_config(cfg) -> dict:
    """The config fields that define what the run computes."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in OPERATIONAL_FIELDS}


def run_identity(cfg, manifest: dict, augmentations: list[dict] = (), trained_before=(), selected_before=()) -> dict:
    """What the run is (module docstring); `trained_before` / `selected_before`: the records its --init-from
    sources and synthetic epochs' generators learned from / that chose its sources (a relaunch may differ in them
    only through its sources, which its config names)."""
    config = json.loads(json.dumps(identity_config(cfg), default=str))
    return {"format": IDENTITY_FORMAT, "name": cfg.name, "config": config, "config_hash": canonical_hash(config),
            "num_workers": cfg.num_workers,  # operational, but what a ZeRO 1/2 run's checkpoints are partitioned over
            "manifest": str(cfg.shards), "manifest_hash": manifest_hash(manifest),
            "augmentation_hash": canonical_hash([manifest_hash(a) for a in augmentations]),
            "records": split_records(manifest), "trained_before": sorted(trained_before),
            "selected_before": sorted(selected_before)}


def _differences(before: dict, now: dict) -> list[str]:
    found = []
    if before.get("manifest_hash") != now["manifest_hash"]:
        found.append(f"its data: manifest {before.get('manifest')} (hash {before.get('manifest_hash')}) is not "
                     f"{now['manifest']} (hash {now['manifest_hash']})")
    if before.get("augmentation_hash") != now["augmentation_hash"]:
        found.append("its augmentation shards")
    old, new = before.get("config", {}), now["config"]
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
        found.append("its config (" + ", ".join(changed) + ")")
    return found


def check_identity(storage: str, identity: dict) -> None:
    """Record `identity` for a new run in STORAGE/NAME (a folder or an s3:// prefix), or refuse a launch that
    is not the run stored there."""
    path = store.join(storage, IDENTITY_FILE)
    name = identity["name"]
    if not store.exists(path):
        if store.children(storage, bundle.CHECKPOINT_GLOB):
            raise RunMismatch(f"{storage} holds checkpoints of run {name!r} but no {IDENTITY_FILE}, so this launch cannot "
                              f"be checked to be the same run; give a new --name to start a new run")
        store.write_json(path, identity)
        return
    before = store.read_json(path)
    differences = _differences(before, identity)
    if differences:
        raise RunMismatch(f"run {name!r} in {storage} was started with other " + "; other ".join(differences)
                          + f". Relaunching a --name resumes that run, so it must be the same run: relaunch with its "
                            f"--shards and options to resume it, or give a new --name (or remove {storage}) to start a new run")
    _check_workers(storage, before, identity, path)


def _check_workers(storage: str, before: dict, identity: dict, path: str) -> None:
    """Refuse another number of workers for a ZeRO 1/2 run that has checkpoints.

    At ZeRO 1/2 each worker saves its partition of the optimizer state, and DeepSpeed's load_checkpoint refuses
    another data-parallel world size on every worker, after start-up ("Automatic adjustment of ZeRO's optimizer
    state partitioning with a new world size is not currently supported"). At ZeRO 0 (the default) the model
    and the whole torch optimizer state are one file written by rank 0 (mp_rank_00_model_states.pt) that every
    rank loads, and DeepSpeed 0.19 only reads ZeRO partition files when ZeRO is on (`zero_enabled`: stage > 0),
    so any number of workers resumes it (checked: a 2-worker ZeRO 0 checkpoint loads on 1 and on 3 workers, a
    ZeRO 1 one raises the error above on 1). The ZeRO stage is part of the config, so it cannot change either.
    """
    stage, workers, recorded = identity["config"].get("zero_stage", 0), identity["num_workers"], before.get("num_workers")
    if not stage or recorded in (None, workers):  # None: an identity of an earlier version (not checked)
        return
    if store.children(storage, bundle.CHECKPOINT_GLOB):
        # --init-from reads a local run folder (its latest checkpoint carries the best weights), not an s3:// one
        source = ("--init-from with a local copy of its latest checkpoint_* folder"
                  if store.is_url(storage) else f"--init-from {storage}")
        raise RunMismatch(f"run {identity['name']!r} in {storage} trains at ZeRO stage {stage} with --num-workers "
                          f"{recorded}, and this launch has --num-workers {workers}: its checkpoints hold the optimizer "
                          f"state partitioned over {recorded} workers, which DeepSpeed cannot load on {workers}. "
                          f"Relaunch with --num-workers {recorded} to resume it, or start a new run from its weights "
                          f"with another --name and {source} (a fresh optimizer state)")
    # Nothing saved yet (e.g. the first launch never got its workers): this launch's count becomes the run's.
    store.write_json(path, {**before, "num_workers": workers})


def verify_checkpoints(storage: str) -> None:
    """Every checkpoint under STORAGE/NAME matches the checksums its writers recorded (IntegrityError if not).
    In object storage only the file set is checked here (reading every checkpoint back would download it):
    each worker checks the contents of the copy it downloads before loading it."""
    remote = store.is_url(storage)
    for name in store.children(storage, bundle.CHECKPOINT_GLOB):
        checkpoint = store.join(storage, name)
        if remote or Path(checkpoint).is_dir():
            verify_checksums(checkpoint, f"the checkpoint {name} of {storage}", contents=not remote)


@contextmanager
def launch_guard(cfg, manifest: dict, storage: str, augmentations: list[dict] = (), trained_before=(),
                 selected_before=()):
    """For the duration of a launch: the run's lock (a lease object when the storage is s3://, see locks.py),
    its identity checked (or recorded) and its checkpoints verified."""
    with exclusive_lock(store.join(storage, LOCK_FILE), f"run {cfg.name!r} ({storage})",
                        "wait for that launch to end, or give this one another --name"):
        check_identity(storage, run_identity(cfg, manifest, augmentations, trained_before, selected_before))
        verify_checkpoints(storage)
        yield


# ------------------------------------------------------------------------------------------ --init-from


def _identity_near(path: Path) -> dict | None:
    for folder in (path, path.parent):  # STORAGE/NAME or one of its checkpoint_* folders
        if (folder / IDENTITY_FILE).is_file():
            return json.loads((folder / IDENTITY_FILE).read_text())
    return None


def source_data(source: str, tracking_uri: str) -> dict | None:
    """{"manifest_hash", "records": {split: ids}, "trained_before": ids, "selected_before": ids} of the run or
    bundle a run starts from, or None if unknown; BundleError when there is no such source."""
    path = Path(source)
    if path.is_dir():
        identity = _identity_near(path)
        if identity is not None:
            return identity
    elif not path.exists() and bundle.RUN_ID.match(source):  # an MLflow run id: the data.json its training logged
        data = download_json(tracking_uri, source, "data.json")
        if data is None or "records" not in data:
            return None
        return {"manifest_hash": data.get("manifest_hash"), "records": data["records"],
                "trained_before": data.get("trained_before", []), "selected_before": data.get("selected_before", [])}
    try:
        located = bundle.resolve(source, bundle.MODEL, tracking_uri=tracking_uri)
    except bundle.BundleError:
        if path.is_dir():
            return None  # a checkpoint folder without an identity file: it exists, but what it learned is unknown
        raise  # no such file, or a run/model that cannot be fetched: say that, not "cannot tell what it learned"
    blob = bundle.load_file(located.path)
    return blob.get("data") if isinstance(blob, dict) else None


def check_init_sources(cfg, manifest: dict, tracking_uri: str) -> tuple[dict[str, dict], list[str], list[str]]:
    """({source: its data}, the records all sources learned from, the records that chose their weights) for
    `cfg.init_from` and `cfg.init_parts`. RunMismatch when a source learned from a person of this run's
    validation or test records or was chosen on a person of its test records (`bundle.people_overlap`), does
    not say what it trained on, or is not there (no such file, an MLflow run or model that cannot be fetched)."""
    sources = [s for s in [cfg.init_from, *getattr(cfg, "init_parts", {}).values()] if s]
    found, learned, selected = {}, set(), set()
    for source in sources:
        try:
            data = source_data(str(source), tracking_uri)
        except bundle.BundleError as error:  # e.g. no such file: the source itself is at fault, named as given
            raise RunMismatch(f"--init-from {source}: {error.problem if error.path == str(source) else error}") from error
        if data is None:
            raise RunMismatch(f"--init-from {source}: cannot tell which records it was trained on (no {IDENTITY_FILE}, "
                              "bundle data or data.json artifact), so its training records cannot be kept out of this "
                              "run's validation and test records; start from a run or bundle made by this version")
        overlap = bundle.people_overlap(manifest, data)
        seen = overlap.learned
        for split in ("test", "val"):
            if seen[split]:
                raise RunMismatch(f"--init-from {source} was trained on the people of {len(seen[split])} {split} "
                                  f"record(s) of {cfg.shards} (e.g. {', '.join(seen[split][:3])}; the same night or "
                                  f"another night of the same person): this run's {split} scores would measure "
                                  "memorisation. Fine-tune on a manifest with the source's split (the same --split-seed "
                                  "and records) or start from a run that never saw them")
        picked = overlap.chose_test
        if picked:
            raise RunMismatch(f"--init-from {source} was selected (its best checkpoint, early stop) on the people of "
                              f"{len(picked)} test record(s) of {cfg.shards} (e.g. {', '.join(picked[:3])}): they would "
                              "judge a model they helped choose. Fine-tune on a manifest with the source's split (the "
                              "same --split-seed and records; for cross-validation, the source's own fold manifest)")
        trained = bundle.trained_records(data)
        found[str(source)] = {"manifest_hash": data.get("manifest_hash"), "train_records": len(trained)}
        learned |= trained
        selected |= bundle.selected_records(data)
    return found, sorted(learned), sorted(selected)
