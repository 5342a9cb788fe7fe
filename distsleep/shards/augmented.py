"""Augmented shards are shards: reading and checking the synthetic training shards of an augmentation.

An augmentation (written by `distsleep gan augment`, see `distsleep.gan.augment`) is a folder of marked shards
(`meta["augmented"] = True`) plus `augmentation.json`, its manifest: where the epochs come from (source
preprocessing manifest and config hash, generator and the records it trained on), what they are (channels,
stages, counts) and every shard with its sha256; "split" is always "train". A training run reads it here:
`augmented_train_urls` checks that it fits the run's own manifest and returns the shard URLs to add to the
*training* stream only (validation and test come from the run's manifest alone), `augmentation_checksums`
the sha256 the loader verifies them against. The manifest is written last, so a folder without it is
incomplete whatever shards it holds.
"""

from __future__ import annotations

import json
from pathlib import Path

from distsleep.shards.loader import load_manifest, resolve_shard, shard_checksums
from distsleep.shards.manifest import seen_people
from distsleep.shards.storage import UnsafeEntryError

AUGMENTATION_FORMAT = "distsleep-augmentation/1"
AUGMENTATION_NAME = "augmentation.json"


class AugmentationError(ValueError):
    """An augmentation cannot be produced or used as asked; the message names the file and the problem."""


def check_fits(manifest: dict, manifest_name: str, *, where: str, source_hash, channels, train_records,
               source: str = "") -> None:
    """Raise AugmentationError (naming `where`) unless epochs of a generator may join the training data of
    `manifest`: trained on shards of the same preprocessing config (`source_hash`), producing channels the
    manifest has, and on no person of a validation/test record there (any night of theirs: that would leak them).

    Checked for a generator bundle before `augment` writes anything, and for an augmentation manifest before a
    training run uses it.
    """
    if source_hash != manifest.get("config_hash"):
        raise AugmentationError(
            f"{where}: made for shards with preprocessing config hash {source_hash}{f' ({source})' if source else ''}, "
            f"but {manifest_name} has {manifest.get('config_hash')}; its epochs would not match these shards "
            "(filters, rate, channels): use a generator trained on these shards")
    absent = [c for c in channels if c not in manifest.get("channels", [])]
    if absent:
        raise AugmentationError(f"{where}: channel(s) {absent} are not in {manifest_name} ({manifest.get('channels')})")
    seen = seen_people(manifest, train_records)
    leaked = sorted(seen["val"] + seen["test"])
    if leaked:
        raise AugmentationError(f"{where}: its generator was trained on the people of record(s) {leaked[:5]}"
                                f"{' ...' if len(leaked) > 5 else ''}, validation/test records in {manifest_name} (the "
                                "same night or another night of the same person)")


def generator_records(augmentation: dict) -> list[str]:
    """The records the generator of an augmentation manifest was trained on: a model trained on its epochs
    learned from those people too."""
    return list(augmentation.get("generator", {}).get("train_records", []))


def load_augmentation(path_or_url, allow_commands: bool = False) -> tuple[dict, str]:
    """An augmentation manifest and the base its relative shard paths resolve against (its folder).

    `path_or_url`: augmentation.json, its folder, or an fsspec URL of either (read like a shard manifest, so a
    pipe: entry is refused unless `allow_commands`).
    """
    try:
        return load_manifest(path_or_url, AUGMENTATION_NAME, allow_commands)
    except UnsafeEntryError as error:
        raise AugmentationError(str(error)) from error
    except FileNotFoundError as error:
        raise AugmentationError(f"{path_or_url}: no augmentation manifest ({AUGMENTATION_NAME} is written last, so an "
                                "augmentation job that did not finish leaves none; rerun it)") from error
    except json.JSONDecodeError as error:
        raise AugmentationError(f"{path_or_url}: not a JSON augmentation manifest ({error})") from error


def augmented_train_urls(augmentation_manifest, training: dict, channels=None, allow_commands: bool = False) -> list[str]:
    """URLs of the synthetic shards to add to a run's *training* stream, after checking they fit its data.

    augmentation_manifest: augmentation.json, its folder or a URL (relative shard paths resolve against its
        own folder).
    training: the run's preprocessing manifest.
    channels: channel roles the run reads (default: all of the augmentation's). Each must be generated.

    Raises AugmentationError naming the file and the problem: another format, a split other than train,
    a different preprocessing config hash, channels missing, a generator that saw recordings that are
    validation/test records in the training manifest, or (local paths) a listed shard that is missing.
    """
    augmentation, base = load_augmentation(augmentation_manifest, allow_commands)
    where = str(augmentation_manifest)
    if augmentation.get("format") != AUGMENTATION_FORMAT:
        raise AugmentationError(f"{where}: format {augmentation.get('format')!r} is not {AUGMENTATION_FORMAT!r}")
    if augmentation.get("split") != "train":
        raise AugmentationError(f"{where}: split {augmentation.get('split')!r}; synthetic epochs are for training only")
    generated = list(augmentation.get("channels", []))
    wanted = list(channels) if channels is not None else generated
    missing = [c for c in wanted if c not in generated]
    if missing:
        raise AugmentationError(f"{where}: has no channel(s) {missing} (it generated {generated}); train the GAN "
                                "with those --channels or read fewer channels")
    check_fits(training, "the training manifest", where=where, source_hash=augmentation.get("source_config_hash"),
               channels=generated, train_records=generator_records(augmentation),
               source=augmentation.get("source_manifest", ""))
    urls = [resolve_shard(str(entry["shard"]), base) for entry in augmentation.get("shards", [])]
    missing_files = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing_files:
        raise AugmentationError(f"{where}: {len(missing_files)} listed shard(s) do not exist, e.g. {missing_files[0]}")
    return urls


def augmentation_checksums(paths, allow_commands: bool = False) -> dict[str, str]:
    """Shard location -> sha256 of the synthetic shards of the augmentations `paths` (verified like real ones)."""
    return {url: sha for path in paths for url, sha in shard_checksums(*load_augmentation(path, allow_commands)).items()}
