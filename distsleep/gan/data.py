"""Real epochs for the GAN: the target stage(s) of the *training* records of a preprocessing manifest.

Validation and test records are never read: the records come from the manifest's training split, and each
decoded night is checked against the manifest again (a shard whose record is not a training record is an
error, not a skip).

Sharding over data-parallel ranks. When every target stage occurs in at least `world_size` training
records, each rank reads only its own records ("records" mode), assigned greedily so that every rank gets
records of the rarest stage first and the stage counts stay balanced. Otherwise (tiny cohorts) every rank
reads all records with a target stage and keeps every world_size-th epoch of each stage ("epochs" mode).

GAN units. Inputs are scaled per channel by constants computed from the training data and stored with the
generator, so that generated epochs come back in uV:

    x_gan = (x_uV - center[c]) / scale[c]
    center[c] = median over training records of the record's median of channel c over its target-stage epochs
    scale[c]  = median over training records of the record's interquartile range (same samples)

Medians over records make one artefact-ridden night irrelevant; the IQR ignores the heavy tails. The
whole-night per-record median/IQR (all epochs, as real shards' `channel_stats` will carry) are summarised
the same way in `night_stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from distsleep.shards.convert import robust_stats
from distsleep.shards.loader import _read_nights, shard_checksums, shard_identities, shard_urls
from distsleep.stages import STAGE_NAMES


class GanDataError(ValueError):
    """The manifest cannot train this GAN (no target-stage epochs in training records, missing channels ...)."""


def stage_code(name: str) -> int:
    return STAGE_NAMES.index(name)


def training_stage_counts(manifest: dict, stages) -> dict[str, dict[str, int]]:
    """record id -> {stage: epochs} of the training records that hold at least one target-stage epoch."""
    out = {}
    for record_id in sorted(manifest["records"]):
        record = manifest["records"][record_id]
        if record["split"] != "train":
            continue
        counts = {s: int(record.get("stages", {}).get(s, 0)) for s in stages}
        if any(counts.values()):
            out[record_id] = counts
    return out


def check_training_data(manifest: dict, stages, channels, source: str) -> dict[str, dict[str, int]]:
    """Raise GanDataError naming `source` unless the training split has every target stage and channel."""
    available = list(manifest.get("channels", []))
    missing = [c for c in channels if c not in available]
    if missing:
        raise GanDataError(f"{source}: the shards have no channel(s) {missing} (they hold {available}); "
                           "pass --channels from those or preprocess with these channels")
    n_train = sum(1 for r in manifest["records"].values() if r["split"] == "train")
    if n_train == 0:
        raise GanDataError(f"{source}: the manifest has no training records; the GAN learns from the training split only")
    counts = training_stage_counts(manifest, stages)
    totals = {s: sum(c[s] for c in counts.values()) for s in stages}
    absent = [s for s, n in totals.items() if n == 0]
    if absent:
        raise GanDataError(f"{source}: the {n_train} training record(s) hold no {'/'.join(absent)} epochs, so there is "
                           f"nothing to learn {'/'.join(absent)} from (validation and test records are never used); "
                           "choose other --stages or preprocess more recordings")
    return counts


def source_band_limits(manifest: dict, channels) -> tuple[float, ...]:
    """Per channel: the Nyquist frequency of its source rate when that is below the shard rate's, else 0.

    The source rate is the most common one among the training records (ties: the lower rate).
    """
    target = float(manifest["config"]["preprocess"]["target_rate"])
    limits = []
    for role in channels:
        rates = [float(c["source_rate"]) for r in manifest["records"].values() if r["split"] == "train"
                 for c in r.get("channels", []) if isinstance(c, dict) and c.get("role") == role and c.get("source_rate")]
        if not rates:
            limits.append(0.0)
            continue
        values, counts = np.unique(rates, return_counts=True)
        rate = float(values[np.argmax(counts)])  # np.unique sorts, argmax takes the first: the lower rate on ties
        limits.append(rate / 2 if rate < target else 0.0)
    return tuple(limits)


def assign_records(counts: dict[str, dict[str, int]], stages, world_size: int) -> tuple[list[list[str]], str]:
    """(records per rank, mode): see the module docstring."""
    holders = {s: [r for r, c in counts.items() if c[s] > 0] for s in stages}
    if any(len(h) < world_size for h in holders.values()):
        return [sorted(counts) for _ in range(world_size)], "epochs"
    load = np.zeros((world_size, len(stages)), dtype=np.int64)
    ranks: list[list[str]] = [[] for _ in range(world_size)]
    assigned: set[str] = set()
    order = sorted(range(len(stages)), key=lambda i: (len(holders[stages[i]]), i))  # rarest stage first
    for i in order:
        stage = stages[i]
        for record in sorted(holders[stage], key=lambda r: (-counts[r][stage], r)):
            if record in assigned:
                continue
            # the rank with the fewest epochs of this stage; ties: fewest epochs overall, then the lowest rank
            rank = min(range(world_size), key=lambda k: (load[k, i], load[k].sum(), k))
            ranks[rank].append(record)
            assigned.add(record)
            load[rank] += [counts[record][s] for s in stages]
    return [sorted(r) for r in ranks], "records"


def channel_stats(x: np.ndarray) -> list[dict]:
    """Per channel of (n_epochs, C, T): {"median", "iqr"} over epochs and samples, as a shard's meta
    `channel_stats` holds them (same function as preprocessing)."""
    return [robust_stats(x[:, c]) for c in range(x.shape[1])]


@dataclass
class RecordStats:
    record_id: str
    target: list[dict]  # channel_stats over the target-stage epochs
    night: list[dict]  # channel_stats over the whole (kept) night


@dataclass
class RealEpochs:
    """One rank's real epochs per stage index: int16 codes (N, C, T) and their uV scales (N, C)."""

    codes: dict[int, np.ndarray]
    scales: dict[int, np.ndarray]
    stats: list[RecordStats] = field(default_factory=list)
    mode: str = "records"
    record_ids: list[str] = field(default_factory=list)

    def count(self, stage_index: int) -> int:
        return int(len(self.codes[stage_index]))

    def physical(self, stage_index: int, index: np.ndarray) -> np.ndarray:
        """float32 uV (len(index), C, T)."""
        return self.codes[stage_index][index].astype(np.float32) * self.scales[stage_index][index][:, :, None]


class _Reservoir:
    """Uniform sample of at most `capacity` items from a stream (Algorithm R), seeded."""

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng, self.seen, self.items = capacity, rng, 0, []

    def add(self, item) -> None:
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            j = int(self.rng.integers(0, self.seen + 1))
            if j < self.capacity:
                self.items[j] = item
        self.seen += 1


def read_training_epochs(manifest: dict, base: str, channels, stages, rank: int, world_size: int,
                         max_per_stage: int, seed: int, source: str = "manifest") -> RealEpochs:
    """This rank's share of the target-stage epochs of the training records (see the module docstring)."""
    counts = check_training_data(manifest, stages, channels, source)
    per_rank, mode = assign_records(counts, list(stages), world_size)
    mine = per_rank[rank]
    subset = {"records": {r: manifest["records"][r] for r in mine}, "config_hash": manifest.get("config_hash")}
    urls = shard_urls(subset, "train", base)
    capacity = -(-max_per_stage // world_size)
    reservoirs = {i: _Reservoir(capacity, np.random.default_rng([seed, rank, i])) for i in range(len(stages))}
    seen = {i: 0 for i in range(len(stages))}  # epochs of each stage met so far, for the "epochs" mode stride
    stats = []
    for night in _read_nights(urls, list(channels), checksums=shard_checksums(subset, base),
                              identities=shard_identities(subset, base)):
        entry = manifest["records"].get(night.record_id)
        if entry is None or entry["split"] != "train":
            # Never train a generator on validation/test data: that would leak them into augmented training sets.
            raise GanDataError(f"{night.source}: record {night.record_id!r} is not a training record of {source} "
                               f"(split {entry['split'] if entry else 'unknown'}); refusing to read it")
        target = np.isin(night.labels, [stage_code(s) for s in stages])
        physical = night.physical(0, night.n_epochs)
        stats.append(RecordStats(night.record_id, channel_stats(physical[target]), channel_stats(physical)))
        for i, stage in enumerate(stages):
            for e in np.flatnonzero(night.labels == stage_code(stage)):
                keep = mode == "records" or seen[i] % world_size == rank
                seen[i] += 1
                if keep:
                    reservoirs[i].add((night.codes[e].copy(), night.scale.copy()))
    codes, scales = {}, {}
    n_channels = len(channels)
    for i, reservoir in reservoirs.items():
        items = reservoir.items
        codes[i] = np.stack([c for c, _ in items]) if items else np.zeros((0, n_channels, 0), np.int16)
        scales[i] = np.stack([s for _, s in items]).astype(np.float32) if items else np.zeros((0, n_channels), np.float32)
    return RealEpochs(codes=codes, scales=scales, stats=stats, mode=mode, record_ids=sorted(mine))


def scaling_from_stats(stats: list[RecordStats]) -> dict:
    """GAN-unit constants and night statistics from the per-record statistics of all ranks (deduplicated)."""
    unique = {s.record_id: s for s in stats}
    rows = [unique[r] for r in sorted(unique)]
    center = np.median([[c["median"] for c in r.target] for r in rows], axis=0)
    scale = np.median([[c["iqr"] for c in r.target] for r in rows], axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a flat channel would otherwise divide by zero
    night_median = np.median([[c["median"] for c in r.night] for r in rows], axis=0)
    night_iqr = np.median([[c["iqr"] for c in r.night] for r in rows], axis=0)
    return {
        "center_uv": [float(v) for v in center],
        "scale_uv": [float(v) for v in scale],
        "night_stats": [{"median": float(m), "iqr": float(q)} for m, q in zip(night_median, night_iqr)],
        "records": sorted(unique),
    }
