"""Training and evaluation data from the shards: sequences of L consecutive 30-s epochs.

Each shard holds one whole night (see `format.py`), so a sequence never crosses a recording and its
context is the true neighbouring epochs.

Training (`train_dataset` / `make_train_loader`) is an endless, resampled stream: each DataLoader worker
of each rank draws shards at random (with replacement), cuts every night into all its L-epoch windows in
random order, mixes them in a shuffle buffer and batches them. Each rank then stops after exactly
`batches_per_epoch` batches. Every rank must run the same number of steps: a rank that runs out of data
first would leave the others waiting forever in an all-reduce (DESIGN.md §8), and a split of a fixed shard
list cannot guarantee equal counts.

Evaluation (`eval_sequences` / `eval_batches`) is a deterministic pass without resampling: rank r reads
the shards `sorted(urls)[r::world_size]`, and every epoch of those nights is marked `valid` in exactly
one sequence. Ranks may get different numbers of sequences. That is safe only because the pass runs no
collective: run the forward passes with no gradient sync, then gather the per-rank results (for example
`torch.distributed.all_gather_object`, or return them from the Ray Train function) after the pass.

The rank and world size are always passed explicitly, never read from RANK/WORLD_SIZE or
torch.distributed. Tests and Ray Train then behave the same, and the stream is reproducible from
(seed, rank, worker, epoch), plus the step a run resumed at when it resumed mid-epoch (`TrainStream.seeds`).
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distsleep.errors import MissingChannelError
from distsleep.shards.format import decode_sample
from distsleep.shards.storage import (VERIFY_MODES, check_entry, is_remote, manifest_file, read_bytes, scheme,
                                     tar_samples)

SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"


# ----------------------------------------------------------------------------------------------- manifest


def _has_scheme(location: str) -> bool:
    return scheme(location) is not None


def load_manifest(path_or_url: str | Path, name: str = MANIFEST_NAME, allow_commands: bool = False) -> tuple[dict, str]:
    """The manifest and the base its relative shard paths resolve against (its folder).

    `path_or_url` is a manifest file, a folder holding `name` (default manifest.json; augmentations use
    augmentation.json), or an fsspec URL (s3://, gs://, http(s):// ...; see `storage.py`). `pipe:` is refused
    because a shell command has no folder to resolve relative shard paths against. Every shard entry is
    checked by `storage.check_entry`: `pipe:` commands and schemes outside the allow-list are refused unless
    `allow_commands` (the user's --allow-shard-commands).
    """
    location = str(path_or_url)
    if scheme(location) == "pipe":
        raise ValueError(f"{location}: give the manifest as a path or URL, not a pipe: command")
    location = manifest_file(location, name)
    if is_remote(location):
        manifest = json.loads(read_bytes(location))
        base = location.rsplit("/", 1)[0]
    else:
        with open(location, "rb") as stream:
            manifest = json.load(stream)
        base = str(Path(location).resolve().parent)
    for entry, shard in shard_entries(manifest):
        check_entry(str(shard["shard"]), location, entry, allow_commands)
    return manifest, base


def shard_entries(manifest: dict) -> list[tuple[str, dict]]:
    """(description, entry) of every shard a manifest lists: a preprocessing manifest's records or an
    augmentation's shards; each entry has "shard" (path or URL) and, when written by distsleep, "sha256"."""
    entries = [(f"record {rid}", e) for rid, e in sorted(manifest.get("records", {}).items()) if isinstance(e, dict)]
    entries += [(f"shard entry {i}", e) for i, e in enumerate(manifest.get("shards", [])) if isinstance(e, dict)]
    return [(name, e) for name, e in entries if "shard" in e]


def shard_checksums(manifest: dict, base: str) -> dict[str, str]:
    """Resolved shard location -> sha256 recorded by the manifest's writer, for the loader to verify."""
    return {resolve_shard(str(e["shard"]), base): str(e["sha256"]) for _, e in shard_entries(manifest) if e.get("sha256")}


def shard_identities(manifest: dict, base: str) -> dict[str, tuple[str, str | None]]:
    """Resolved shard location -> (record id, preprocessing config hash) that a preprocessing manifest says the
    shard holds, for the loader to check against the shard's own meta.json: a manifest edited by hand could
    otherwise mix shards of another preprocessing config, or score one night under two names. ValueError when
    two records name one shard."""
    found: dict[str, tuple[str, str | None]] = {}
    for record_id, entry in sorted(manifest.get("records", {}).items()):
        if isinstance(entry, dict) and "shard" in entry:
            location = resolve_shard(str(entry["shard"]), base)
            if location in found:
                raise ValueError(f"{location}: records {found[location][0]} and {record_id} of the manifest name this "
                                 "one shard; each record has its own")
            found[location] = (record_id, manifest.get("config_hash"))
    return found


def shard_urls(manifest: dict, split: str, base: str, records=None) -> list[str]:
    """Shard locations of one split, sorted by record id.

    Relative shard paths are resolved against `base` (the manifest's folder or URL prefix). Absolute
    paths and URLs with a scheme (s3://, gs://, http(s)://, pipe:) are returned unchanged.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    urls = []
    for record_id in sorted(manifest["records"]):
        shard = str(manifest["records"][record_id]["shard"])
        if manifest["records"][record_id]["split"] != split or (records is not None and record_id not in records):
            continue
        urls.append(resolve_shard(shard, base))
    return urls


def resolve_shard(shard: str, base: str) -> str:
    """A manifest's shard entry as a location: relative paths join `base` (the manifest's folder or URL
    prefix); absolute paths and URLs with a scheme (s3://, gs://, http(s)://, pipe:) stay unchanged."""
    if _has_scheme(shard) or Path(shard).is_absolute():
        return shard
    if _has_scheme(base):
        return base.rstrip("/") + "/" + shard
    return str(Path(base) / shard)


def count_train_sequences(manifest: dict, *, seq_len: int, split: str = "train", records=None) -> int:
    """How many L-epoch windows the split's nights (or only `records` of them) hold (shorter nights hold none)."""
    return sum(
        max(0, int(r["n_epochs"]) - seq_len + 1) for record_id, r in manifest["records"].items()
        if r["split"] == split and (records is None or record_id in records)
    )


def labelled_records(manifest: dict, fraction: float, seed: int) -> list[str]:
    """The training records whose labels a semi-supervised run may use: a seeded random `fraction` of them
    (at least one), the same for every rank and every relaunch."""
    ids = sorted(r for r, e in manifest["records"].items() if e["split"] == "train")
    if fraction >= 1:
        return ids
    k = max(1, int(round(fraction * len(ids))))
    return sorted(random.Random(f"labelled-{seed}").sample(ids, k))


def batches_per_epoch(manifest: dict, world_size: int, batch_size: int, *, seq_len: int, records=None) -> int:
    """Batches each rank yields per epoch: one "epoch" then draws about as many windows as the split holds.

    The stream is resampled, so this only sets how often the training loop logs, validates and saves a
    checkpoint; every rank must use the same value.
    """
    total = count_train_sequences(manifest, seq_len=seq_len, records=records)
    return max(1, total // (world_size * batch_size))


# ------------------------------------------------------------------------------------------------- config


@dataclass
class LoaderConfig:
    """Settings for both the training stream and the evaluation pass.

    `channels` keeps a subset of the shard's channels, in the order given: an int is an index into the
    shard's channel axis and a str is a channel role (`meta["channels"][i]["role"]`, e.g. "eeg"). None
    keeps all channels. `stride` is the step between evaluation windows (None = seq_len, i.e. windows that
    do not overlap). `shuffle_buffer` counts windows. `windows_per_visit` caps the windows taken from a
    night each time the resampled stream visits it (random starts, no repeats within a visit); the
    default, ceil(n_epochs / seq_len), keeps a batch from being dominated by the two or three nights in
    the buffer, while every position is still drawn over repeated visits. 0 takes every window.

    `normalization` "uv" yields µV; "robust" yields (µV - median) / IQR with each recording's own
    per-channel median and inter-quartile range, computed over the whole night at preprocessing time
    (`meta["channel_stats"]`), so a window is scaled the same wherever it was cut from.

    `identities` (from `shard_identities`) makes it check that each shard holds the record and preprocessing
    config its manifest says. `checksums` (shard location -> sha256, from `shard_checksums`) makes the reader check each shard's bytes
    before decoding them; `verify` says which (`storage.should_verify`): "stored" (default: local files and
    object stores such as s3://; the hash costs a few ms per shard), "local", "all" (http(s) too) or "none".
    """

    seq_len: int = 21
    batch_size: int = 32
    shuffle_buffer: int = 2000
    num_workers: int = 2
    seed: int = 0
    channels: list[int | str] | None = None
    stride: int | None = None
    windows_per_visit: int | None = None
    normalization: str = "uv"
    checksums: dict[str, str] | None = None
    verify: str = "stored"
    identities: dict[str, tuple[str, str | None]] | None = None  # `shard_identities`: checked on every shard read

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"LoaderConfig.verify must be one of {VERIFY_MODES}, not {self.verify!r}")
        if self.normalization not in ("uv", "robust"):
            raise ValueError(f"LoaderConfig.normalization must be 'uv' or 'robust', not {self.normalization!r}")
        for name in ("seq_len", "batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoaderConfig.{name} must be at least 1, not {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"LoaderConfig.num_workers must be >= 0, not {self.num_workers}")
        if self.stride is not None and not 1 <= self.stride <= self.seq_len:
            # A stride above seq_len would skip epochs, so some would never be evaluated.
            raise ValueError(f"LoaderConfig.stride must be between 1 and seq_len={self.seq_len}, not {self.stride}")

    @property
    def eval_stride(self) -> int:
        return self.seq_len if self.stride is None else self.stride


def _check_rank(world_size: int, rank: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


# -------------------------------------------------------------------------------------------------- nights


@dataclass
class _Night:
    """One decoded night. The signals stay int16 codes, so that windows (and the shuffle buffer) stay small."""

    record_id: str
    source: str
    codes: np.ndarray  # int16 (n_epochs, n_kept_channels, samples_per_epoch)
    scale: np.ndarray  # float32 (n_kept_channels,) output units per code (uV, or 1/IQR-scaled when robust)
    labels: np.ndarray  # int8 (n_epochs,)
    events: np.ndarray  # uint8 (n_epochs, 3)
    offset: np.ndarray | None = None  # float32 (n_kept_channels,) added after scaling (robust: -median/IQR)
    augmented: bool = False  # synthetic epochs (Physio-GAN): allowed in the training stream only

    @property
    def n_epochs(self) -> int:
        return int(self.labels.shape[0])

    def physical(self, start: int, stop: int) -> np.ndarray:
        """float32 values of epochs [start, stop) in the loader's units (µV: as ShardSample.physical())."""
        x = self.codes[start:stop].astype(np.float32) * self.scale[None, :, None]
        if self.offset is not None:
            x += self.offset[None, :, None]
        return x


def _channel_indices(meta: dict, n_channels: int, channels: Sequence[int | str] | None, source: str) -> list[int]:
    if channels is None:
        return list(range(n_channels))
    roles = [str(c.get("role")) if isinstance(c, dict) else str(c) for c in meta.get("channels", [])]
    indices = []
    for channel in channels:
        if isinstance(channel, str):
            if channel not in roles:
                raise MissingChannelError(
                    source, f"the loader config asks for channel {channel!r}, but this shard has only {roles}; "
                    "drop it from LoaderConfig.channels or rebuild the shards with that channel",
                )
            indices.append(roles.index(channel))
        else:
            if not 0 <= int(channel) < n_channels:
                raise MissingChannelError(
                    source, f"the loader config asks for channel index {channel}, but this shard has only "
                    f"{n_channels} channels {roles}; drop it from LoaderConfig.channels or rebuild the shards",
                )
            indices.append(int(channel))
    return indices


def robust_scaling(meta: dict, keep: list[int], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Per kept channel, (multiplier, offset) turning µV into (µV - median) / IQR; the training loader and
    `predict` both scale through this, so inference sees exactly the training inputs."""
    stats = meta.get("channel_stats")
    if not stats or len(stats) <= max(keep, default=-1):
        raise ValueError(
            f"{source}: this model wants per-recording median/IQR scaling, but the shard has no channel_stats "
            "(written by preprocessing since shard format 2); rebuild the shards with `distsleep preprocess`"
        )
    median = np.array([float(stats[i]["median"]) for i in keep], dtype=np.float32)
    iqr = np.array([float(stats[i]["iqr"]) for i in keep], dtype=np.float32)
    iqr = np.where(iqr > 0, iqr, 1.0).astype(np.float32)  # a flat channel stays flat instead of dividing by 0
    return 1.0 / iqr, -median / iqr


def _load_night(raw: dict, channels: Sequence[int | str] | None, normalization: str = "uv",
                identities: dict[str, tuple[str, str | None]] | None = None) -> _Night:
    """A raw webdataset sample to a _Night with only the configured channels (clear errors name the shard)."""
    source = str(raw.get("__url__", raw.get("__key__")))
    sample = decode_sample(raw)
    expected = identities.get(source) if identities else None
    if expected is not None:
        record_id, config_hash = expected
        held = str(sample.meta.get("record_id", sample.key))
        if held != record_id:
            raise ValueError(f"{source}: holds record {held}, but the manifest lists it as record {record_id}")
        if config_hash is not None and sample.meta.get("config_hash") != config_hash:
            raise ValueError(f"{source}: preprocessed with config {sample.meta.get('config_hash')}, but the manifest's "
                             f"config is {config_hash}: one dataset must not mix two preprocessings (preprocess the "
                             "recordings again into one --out)")
    scale = np.asarray(sample.meta["scale_uv"], dtype=np.float32)
    n_epochs, n_channels = sample.signals.shape[:2] if sample.signals.ndim == 3 else (-1, -1)
    if n_epochs < 0 or scale.shape != (n_channels,) or sample.labels.shape != (n_epochs,) \
            or sample.events.shape[:1] != (n_epochs,):
        raise ValueError(
            f"{source}: inconsistent shard: signals {sample.signals.shape}, scale_uv {scale.shape}, "
            f"labels {sample.labels.shape}, events {sample.events.shape}"
        )
    keep = _channel_indices(sample.meta, n_channels, channels, source)
    codes = sample.signals if keep == list(range(n_channels)) else sample.signals[:, keep]
    scale, offset = scale[keep], None
    if normalization == "robust":
        multiplier, offset = robust_scaling(sample.meta, keep, source)
        scale = (scale * multiplier).astype(np.float32)
    return _Night(
        record_id=str(sample.meta.get("record_id", sample.key)), source=source, codes=codes,
        scale=scale, labels=sample.labels, events=sample.events, offset=offset,
        augmented=bool(sample.meta.get("augmented", False)),
    )


def _shard_reader(checksums: dict[str, str] | None, verify: str = "stored"):
    """The pipeline stage that opens shards (verified against `checksums` as `verify` says)."""
    return functools.partial(tar_samples, checksums=checksums, verify=verify)


def _read_nights(urls: list[str], channels: Sequence[int | str] | None, normalization: str = "uv",
                 checksums: dict[str, str] | None = None, verify: str = "stored",
                 identities: dict[str, tuple[str, str | None]] | None = None) -> Iterator[_Night]:
    """Nights of `urls` in the given order, read once (no shuffle, no resampling, no node split)."""
    if not urls:
        return
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), _shard_reader(checksums, verify))
    for raw in pipeline:
        yield _load_night(raw, channels, normalization, identities)


# ------------------------------------------------------------------------------------------------ training


class TrainBatch(NamedTuple):
    """A training batch as the shards store it: int16 codes plus per-(sequence, channel) scale and offset.

    Codes travel to the device as int16 (half the bytes of float32 over PCIe and between processes) and are
    converted there (`to_device`); `signals` gives the float32 values on the host for code that wants them.
    """

    codes: torch.Tensor  # int16 (B, L, C, samples_per_epoch)
    scale: torch.Tensor  # float32 (B, C): output units per code (µV, or 1/IQR-scaled when robust)
    offset: torch.Tensor  # float32 (B, C): added after scaling (zeros unless robust)
    labels: torch.Tensor  # int64 (B, L), -1 = unscored (mask it out of the loss)
    events: torch.Tensor  # uint8 (B, L, 3): apnea, hypopnea, desaturation

    @property
    def signals(self) -> torch.Tensor:
        """float32 (B, L, C, samples_per_epoch) in the loader's units, on the batch's device."""
        return physical_values(self.codes, self.scale, self.offset)

    def to_device(self, device: torch.device, non_blocking: bool = False) -> TrainBatch:
        """The batch on `device` (non_blocking copies need pinned host memory to overlap with compute)."""
        return TrainBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


def physical_values(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """codes (B, L, C, S) -> float32 codes * scale + offset, with scale/offset per (B, C); runs where the codes are."""
    # Two plain ops rather than one fused multiply-add: the values equal the host's numpy path bit for bit.
    return codes.float() * scale[:, None, :, None] + offset[:, None, :, None]


# codes, scale, offset (or None), labels, events; codes/labels/events are copies owning their data (`_windows`)
_Window = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]


def _windows(nights: Iterable[_Night], seq_len: int, rng: random.Random, n_urls: int,
             per_visit: int | None = None) -> Iterator[_Window]:
    """L-epoch windows of each night (start 0 .. n_epochs-L) in random order, at most `per_visit` per
    night (None: ceil(n_epochs / L); 0: all); short nights give none.

    Each window's codes, labels and events are copied out of the night: a view would keep the whole night
    (6 MB single-channel, ~42 MB multimodal) alive for as long as any of its windows waits in the shuffle
    buffer, i.e. ~170 nights per worker at 2000 windows. Scale and offset are a few floats per night, shared."""
    seen = produced = 0
    for night in nights:
        seen += 1
        starts = list(range(night.n_epochs - seq_len + 1))
        rng.shuffle(starts)
        cap = -(-night.n_epochs // seq_len) if per_visit is None else per_visit
        for s in starts[:cap] if cap > 0 else starts:
            produced += 1
            yield (night.codes[s:s + seq_len].copy(), night.scale, night.offset, night.labels[s:s + seq_len].copy(),
                   night.events[s:s + seq_len].copy())
        if produced == 0 and seen >= 10 * n_urls + 10:
            # Without this guard, a resampled stream over nights that are all too short would spin forever.
            raise ValueError(f"none of the {n_urls} training shards has a night of at least seq_len={seq_len} epochs")


def _collate_train(windows: list[_Window]) -> TrainBatch:
    if len({w[0].shape for w in windows}) != 1:
        raise ValueError(
            "windows in one batch differ in shape " + str(sorted({w[0].shape for w in windows}))
            + "; all shards must have the same channels (set LoaderConfig.channels)"
        )
    codes = np.stack([w[0] for w in windows])
    scale = np.stack([w[1] for w in windows]).astype(np.float32)
    offset = (np.stack([w[2] for w in windows]).astype(np.float32) if windows[0][2] is not None
              else np.zeros_like(scale))
    labels = np.stack([w[3] for w in windows]).astype(np.int64)
    events = np.stack([w[4] for w in windows])
    return TrainBatch(*(torch.from_numpy(a) for a in (codes, scale, offset, labels, events)))


def worker_share(total: int, worker: int, num_workers: int) -> int:
    """Batches that DataLoader worker `worker` yields, so that the workers together yield exactly `total`."""
    return total // num_workers + (1 if worker < total % num_workers else 0)


class TrainStream(IterableDataset):
    """One rank's endless training stream, cut into epochs of exactly `batches_per_epoch` batches.

    In each DataLoader worker, the webdataset pipeline is built on first use with seeds derived from
    (cfg.seed, rank, worker, epoch[, resume step]) (`seeds`). It then stays open, so later epochs continue the
    stream without refilling the shuffle buffer. Keep the workers persistent (`make_train_loader` does): with
    non-persistent workers each epoch gets a new worker process and the pipeline is rebuilt; then call
    `set_epoch(e)` before each epoch, or every epoch repeats the same batches.

    This does not use `wds.WebDataset(resampled=True, ...)`, because that seeds its shard sampler from
    the clock, the pid and RANK/WORLD_SIZE from the environment, and ignores its `seed` argument. A split by
    node or worker is not needed: each (rank, worker) draws its own random shards from the whole list.
    """

    def __init__(self, urls: Sequence[str], cfg: LoaderConfig, world_size: int, rank: int, batches_per_epoch: int):
        super().__init__()
        _check_rank(world_size, rank)
        urls = sorted(urls)  # the seeded stream must not depend on the order the caller listed shards in
        needed = world_size * max(1, cfg.num_workers)
        if len(urls) < needed:
            raise ValueError(
                f"the training split has {len(urls)} shard(s), but {world_size} rank(s) x "
                f"{max(1, cfg.num_workers)} DataLoader worker(s) need at least {needed}: lower "
                "LoaderConfig.num_workers or the number of training workers, or add more records"
            )
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be at least 1, not {batches_per_epoch}")
        self.urls = urls
        self.cfg = cfg
        self.world_size = world_size
        self.rank = rank
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0
        self.resume_step: int | None = None
        self._stream: Iterator[TrainBatch] | None = None

    def set_epoch(self, epoch: int, resume_step: int | None = None) -> None:
        """Seed for pipelines built from now on. Needed with non-persistent workers (see class doc) and when a
        run resumes: `resume_step` is the step it resumed at when that step is inside `epoch` (see `seeds`)."""
        self.epoch = epoch
        self.resume_step = resume_step

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stream"] = None  # a running generator cannot be pickled into a worker process
        return state

    def seeds(self, worker: int) -> list[int]:
        """Independent seeds for (shard sampler, window order, shuffle buffer) of one worker of this rank."""
        key = [self.cfg.seed, self.rank, worker, self.epoch]
        if self.resume_step is not None:
            # A run resumed mid-epoch would otherwise rebuild that epoch's stream from its start and train again on
            # the batches it already had (the stream is resampled, so it cannot skip ahead cheaply); the step makes
            # a new stream. Only then: a fresh run's seeds, and so every earlier result, stay as they were.
            key.append(self.resume_step)
        sequence = np.random.SeedSequence(key)
        return [int(s) for s in sequence.generate_state(3)]

    def pipeline(self, worker: int) -> wds.DataPipeline:
        shard_seed, window_seed, shuffle_seed = self.seeds(worker)
        cfg = self.cfg
        return wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=shard_seed, worker_seed=_zero, deterministic=True),
            _shard_reader(cfg.checksums, cfg.verify),
            wds.map(lambda raw: _load_night(raw, cfg.channels, cfg.normalization, cfg.identities)),
            lambda nights: _windows(nights, cfg.seq_len, random.Random(window_seed), len(self.urls), cfg.windows_per_visit),
            # initial = bufsize: the first batches would otherwise all come from the first night
            wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, rng=random.Random(shuffle_seed)),
            wds.batched(cfg.batch_size, collation_fn=_collate_train, partial=False),
        )

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self._stream is None:
            self._stream = iter(self.pipeline(worker))
        yield from islice(self._stream, worker_share(self.batches_per_epoch, worker, num_workers))


def _zero() -> int:
    return 0


def train_dataset(
    urls: Sequence[str], cfg: LoaderConfig, world_size: int, rank: int, batches_per_epoch: int
) -> TrainStream:
    """The training stream of rank `rank`: `batches_per_epoch` TrainBatches per epoch, summed over workers."""
    return TrainStream(urls, cfg, world_size, rank, batches_per_epoch)


def make_train_loader(
    urls: Sequence[str], cfg: LoaderConfig, world_size: int, rank: int, batches_per_epoch: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over `train_dataset`. batch_size=None because batching happens in the pipeline.

    The workers are persistent so that each epoch continues the same seeded stream (see TrainStream).
    """
    dataset = train_dataset(urls, cfg, world_size, rank, batches_per_epoch)
    return DataLoader(
        dataset, batch_size=None, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
        pin_memory=pin_memory,
    )


def endless_batches(loader: DataLoader, start_step: int = 0) -> Iterator[TrainBatch]:
    """The loader's batches across epochs without end: each time an epoch runs out, the next one starts
    (`set_epoch`). A run resumed at `start_step` (batches already trained on) starts in the epoch of that step;
    inside an epoch, with seeds that include the step, so it does not replay the epoch's first batches."""
    epoch, into = divmod(start_step, loader.dataset.batches_per_epoch)
    loader.dataset.set_epoch(epoch, start_step if into else None)
    while True:
        yield from loader
        epoch += 1
        loader.dataset.set_epoch(epoch)


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass
class EvalSequence:
    """One evaluation window. Metrics count epochs where `valid & (labels >= 0)`.

    `valid` is True at the first occurrence of each real epoch of the night, so counting valid positions
    counts every epoch once. `epoch_index` is the epoch's index in the night, or -1 on padding. Use it
    to average predictions over overlapping windows when stride < seq_len.
    """

    record_id: str
    codes: np.ndarray  # int16 (L, C, samples_per_epoch); zeros on padding
    scale: np.ndarray  # float32 (C,)
    offset: np.ndarray  # float32 (C,)
    labels: np.ndarray  # int64 (L,), -1 = unscored or padding
    events: np.ndarray  # uint8 (L, 3); zeros on padding
    epoch_index: np.ndarray  # int64 (L,), -1 on padding
    valid: np.ndarray  # bool (L,)

    @property
    def signals(self) -> np.ndarray:
        """float32 (L, C, samples_per_epoch) in the loader's units; zeros on padding."""
        x = self.codes.astype(np.float32) * self.scale[None, :, None] + self.offset[None, :, None]
        return x * (self.epoch_index >= 0)[:, None, None]


@dataclass
class EvalBatch:
    record_ids: list[str]
    codes: torch.Tensor  # int16 (B, L, C, samples_per_epoch)
    scale: torch.Tensor  # float32 (B, C)
    offset: torch.Tensor  # float32 (B, C)
    labels: torch.Tensor  # int64 (B, L)
    events: torch.Tensor  # uint8 (B, L, 3)
    epoch_index: torch.Tensor  # int64 (B, L)
    valid: torch.Tensor  # bool (B, L)

    def __len__(self) -> int:
        return len(self.record_ids)

    @property
    def signals(self) -> torch.Tensor:
        """float32 (B, L, C, samples_per_epoch), on the batch's device; zeros on padding."""
        return physical_values(self.codes, self.scale, self.offset) * (self.epoch_index >= 0)[:, :, None, None]

    def pin_memory(self) -> EvalBatch:
        """Called by a DataLoader with pin_memory=True, so that copies to the GPU can be non-blocking."""
        pinned = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return EvalBatch(**pinned)


def window_starts(n_epochs: int, seq_len: int, stride: int) -> list[int]:
    """Starts of the evaluation windows of a night: every `stride`, plus one aligned to the end of the night
    if the last regular window stops short of it (a night of at most seq_len epochs gets the single start 0)."""
    if n_epochs <= seq_len:
        return [0]
    starts = list(range(0, n_epochs - seq_len + 1, stride))
    if starts[-1] + seq_len < n_epochs:
        starts.append(n_epochs - seq_len)
    return starts


def _night_sequences(night: _Night, seq_len: int, stride: int) -> Iterator[EvalSequence]:
    covered = 0  # epochs [0, covered) already appeared as valid in an earlier window
    offset = night.offset if night.offset is not None else np.zeros_like(night.scale)
    for start in window_starts(night.n_epochs, seq_len, stride):
        stop = min(start + seq_len, night.n_epochs)
        n = stop - start
        index = np.full(seq_len, -1, dtype=np.int64)
        index[:n] = np.arange(start, stop)
        valid = (index >= covered) & (index >= 0)
        covered = stop
        codes = np.zeros((seq_len, *night.codes.shape[1:]), dtype=np.int16)
        codes[:n] = night.codes[start:stop]
        labels = np.full(seq_len, -1, dtype=np.int64)
        labels[:n] = night.labels[start:stop]
        events = np.zeros((seq_len, *night.events.shape[1:]), dtype=np.uint8)
        events[:n] = night.events[start:stop]
        yield EvalSequence(night.record_id, codes, night.scale, offset, labels, events, index, valid)


def _check_real(night: _Night) -> _Night:
    if night.augmented:
        # Scores on generated epochs say nothing about real recordings; refuse rather than report them.
        raise ValueError(f"{night.source}: {night.record_id} holds synthetic (augmented) epochs, which are for "
                         "training only; remove it from the validation/test records")
    return night


def eval_sequences(urls: Sequence[str], cfg: LoaderConfig, world_size: int, rank: int) -> Iterator[EvalSequence]:
    """Rank `rank`'s share of a deterministic evaluation pass, in order: nights `sorted(urls)[rank::world_size]`.

    The union over ranks of (record_id, epoch_index) where valid is True is every epoch of every night,
    each exactly once. Ranks may yield different counts, so do not run collectives inside the pass.
    """
    _check_rank(world_size, rank)
    for night in _read_nights(sorted(urls)[rank::world_size], cfg.channels, cfg.normalization, cfg.checksums, cfg.verify,
                              cfg.identities):
        yield from _night_sequences(_check_real(night), cfg.seq_len, cfg.eval_stride)


def collate_eval(sequences: list[EvalSequence]) -> EvalBatch:
    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(s, name) for s in sequences]))

    return EvalBatch([s.record_id for s in sequences], *(stack(n) for n in (
        "codes", "scale", "offset", "labels", "events", "epoch_index", "valid")))


def _batched(sequences: Iterable[EvalSequence], batch_size: int) -> Iterator[EvalBatch]:
    batch: list[EvalSequence] = []
    for sequence in sequences:
        batch.append(sequence)
        if len(batch) == batch_size:
            yield collate_eval(batch)
            batch = []
    if batch:
        yield collate_eval(batch)


def eval_batches(urls: Sequence[str], cfg: LoaderConfig, world_size: int, rank: int,
                 batch_size: int | None = None) -> Iterator[EvalBatch]:
    """`eval_sequences` in batches of `batch_size` (default cfg.batch_size; the last one may be smaller)."""
    yield from _batched(eval_sequences(urls, cfg, world_size, rank), batch_size or cfg.batch_size)


class EvalStream(IterableDataset):
    """Rank `rank`'s evaluation pass for a DataLoader: each DataLoader worker decodes and batches its own
    nights (every num_workers-th of the rank's share), so reading shards overlaps with scoring. Batch order
    then depends on the workers; evaluation aggregates by (record, epoch index), so that does not matter."""

    def __init__(self, urls: Sequence[str], cfg: LoaderConfig, world_size: int, rank: int, batch_size: int):
        super().__init__()
        _check_rank(world_size, rank)
        self.urls, self.cfg, self.batch_size = sorted(urls)[rank::world_size], cfg, batch_size

    def __iter__(self) -> Iterator[EvalBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        nights = _read_nights(self.urls[worker::num_workers], self.cfg.channels, self.cfg.normalization,
                              self.cfg.checksums, self.cfg.verify, self.cfg.identities)
        sequences = (seq for night in nights for seq in _night_sequences(_check_real(night), self.cfg.seq_len,
                                                                         self.cfg.eval_stride))
        yield from _batched(sequences, self.batch_size)


def make_eval_loader(urls: Sequence[str], cfg: LoaderConfig, world_size: int, rank: int, *, batch_size: int | None = None,
                     num_workers: int | None = None, pin_memory: bool = False) -> Iterable[EvalBatch]:
    """Rank `rank`'s evaluation batches through up to `num_workers` DataLoader workers (default
    cfg.num_workers, never more than the rank has nights); 0 workers reads in this process."""
    stream = EvalStream(urls, cfg, world_size, rank, batch_size or cfg.batch_size)
    workers = min(cfg.num_workers if num_workers is None else num_workers, len(stream.urls))
    if workers == 0 and not pin_memory:
        return stream
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory)
