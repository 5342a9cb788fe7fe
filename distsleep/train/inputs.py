"""What a training run builds from its config and manifest before the first step: the model and its config,
the channels it reads, the loader settings and the shard streams.

The Ray Train worker loop (`loop.py`), the checks before launch (`launch.py`) and the bare-GPU benchmark
(`distsleep.bench.engine`) all build their runs here, so they read the same data into the same model. Nothing
here imports Ray or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

from distsleep.models import build_model, get_spec, required_channels, resolve_channels
from distsleep.shards.augmented import augmented_train_urls
from distsleep.shards.loader import LoaderConfig, labelled_records, shard_urls
from distsleep.tasks import n_classes


def model_config(cfg):
    """The model's config for this run: its `model_size` preset, fitted to the run's window and task (seq_len,
    n_classes), then `model_overrides` (--set, --mask-ratio)."""
    return get_spec(cfg.model).make_config(cfg.model_size, cfg.model_overrides,
                                           fitted={"seq_len": cfg.seq_len, "n_classes": n_classes(cfg.task)})


def model_and_config(cfg):
    model_cfg = model_config(cfg)
    return build_model(cfg.model, model_cfg), model_cfg


def loader_config(cfg, roles, checksums: dict[str, str] | None = None,
                  identities: dict[str, tuple[str, str | None]] | None = None) -> LoaderConfig:
    """The loader settings of a run: its window, batch, shuffle and worker options on the channels `roles`,
    scaled the way the model expects, each shard checked against `checksums` as --verify-shards says and
    against the record and config its manifest names (`identities`)."""
    return LoaderConfig(seq_len=cfg.seq_len, batch_size=cfg.per_worker_batch, shuffle_buffer=cfg.shuffle_buffer,
                        num_workers=cfg.loader_workers, seed=cfg.seed, channels=list(roles), stride=cfg.val_stride,
                        normalization=get_spec(cfg.model).normalization, verify=cfg.verify_shards, checksums=checksums,
                        identities=identities)


def input_roles(cfg, manifest: dict, model_cfg) -> tuple[str, ...]:
    """Channel roles fed to the model: `cfg.channels` when given (checked against the shards and the model's
    input count), else the model's preferred roles among the shard's channels."""
    if cfg.channels is None:
        return resolve_channels(cfg.model, manifest["channels"], model_cfg)
    slots = required_channels(cfg.model, model_cfg)
    held = [str(c["role"]) if isinstance(c, dict) else str(c) for c in manifest["channels"]]
    missing = [r for r in cfg.channels if r not in held]
    if missing:
        raise ValueError(f"channels {missing} are not in the shards, which hold {held}; rebuild them with those "
                         "roles (distsleep preprocess --channels / --channel-set multimodal)")
    if len(cfg.channels) != len(slots):
        raise ValueError(f"{cfg.model} takes {len(slots)} input channel(s) {list(slots)}, got channels {cfg.channels}")
    return tuple(cfg.channels)


def check_parts(cfg) -> None:
    """Refuse --init-part for a model whose spec declares no separately pre-trained parts."""
    if cfg.init_parts and not get_spec(cfg.model).trained_in_parts:
        raise ValueError(f"model {cfg.model} has no separately trained parts; drop init_parts {sorted(cfg.init_parts)}")


def augmented_urls(cfg, manifest: dict, roles) -> list[str]:
    """Synthetic shards of the augmentation manifests in `cfg.augment_shards`, each checked against the run's
    shard manifest (config hash, no generator trained on its val/test records) and its channel roles."""
    return [url for path in cfg.augment_shards
            for url in augmented_train_urls(path, manifest, channels=roles, allow_commands=cfg.allow_shard_commands)]


@dataclass(frozen=True)
class Streams:
    """Shard URLs of a run's three streams. `training` = the labelled real training records + augmentation;
    validation and test come from the manifest's own splits only, so synthetic epochs can never reach them."""

    train: list[str]
    augmented: list[str]
    val: list[str]
    test: list[str]
    labelled: list[str] | None  # training record ids whose labels are used (None: all)

    @property
    def training(self) -> list[str]:
        return self.train + self.augmented


def stream_urls(cfg, manifest: dict, base: str, roles) -> Streams:
    # Semi-supervised runs see the labels of a fixed subset of the training records only.
    labelled = labelled_records(manifest, cfg.label_fraction, cfg.seed) if cfg.label_fraction < 1 else None
    return Streams(train=shard_urls(manifest, "train", base, records=labelled),
                   augmented=augmented_urls(cfg, manifest, roles),
                   val=shard_urls(manifest, "val", base), test=shard_urls(manifest, "test", base), labelled=labelled)
