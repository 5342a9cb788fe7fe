"""Augmentation: synthetic epochs from a trained Physio-GAN, written as extra, clearly marked training shards.

Output directory:

    shards/aug-<stage>-<generator sha256[:10]>-s<seed>-<index>.tar   one pseudo-record per shard
    augmentation.json                                                the manifest, written last

Each shard has the ShardSample layout of real shards (int16 codes + per-channel uV scale, labels = the
stage, events all zero) with `meta["augmented"] = True`, `meta["augmentation"]` (generator sha256 and
MLflow run id, seed, stage, source manifest config hash) and `meta["channel_stats"]`, the per-channel median
and IQR that robust input scaling divides by. By default ("training-nights") these are the generator's
typical whole-night values (median over its training records of each night's median/IQR): a real N1 epoch
is scaled by the statistics of its whole night, where N2/N3 widen the IQR, so scaling synthetic N1 epochs
by statistics of N1 alone ("pseudo-record", the other choice) would make them look larger than real N1 to
the model. A pseudo-record holds `epochs_per_record`
generated epochs; they are independent draws, not a night, so sequence models see no real context
inside it.

`augmentation.json` says where the epochs come from (source preprocessing manifest and its config hash,
generator, seed), what they are (channels, stages, counts) and lists every shard with its sha256;
"split" is always "train". Training runs read and check it with `distsleep.shards.augmented` (augmented shards
are shards), which adds them to the *training* stream only.

Reruns: generation is seeded per pseudo-record and runs on CPU in float32, so the same arguments give
byte-identical shards and manifest with the same torch build and CPU (checked equal for 1, 2 and 4 torch
threads; another CPU instruction set may round differently). A rerun whose manifest already matches the
request and whose shards still have the recorded sha256 writes nothing. Otherwise the old manifest is removed first, shards are written atomically
(temporary name, then rename), stale `aug-*.tar` from an earlier request are deleted, and the manifest is
written last: a directory without `augmentation.json` is incomplete, whatever shards it holds. A job holds
`.augment.lock` in the folder while it checks and writes it, so a second job on the same --out is refused,
naming the first, instead of deleting its shards.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from distsleep import store
from distsleep.atomic import write_json_atomic
from distsleep.bundle import GENERATOR, read, resolve
from distsleep.config import ConfigBase
from distsleep.gan.data import channel_stats as channel_stats_of
from distsleep.gan.model import Generator, PhysioGanConfig
from distsleep.locks import exclusive_lock
from distsleep.shards.augmented import AUGMENTATION_FORMAT, AUGMENTATION_NAME, AugmentationError, check_fits
from distsleep.shards.format import EVENT_COLUMNS, ShardSample, quantize, write_shard
from distsleep.shards.loader import load_manifest
from distsleep.shards.manifest import code_version
from distsleep.stages import STAGE_NAMES

KEY_PREFIX = "aug-"
LOCK_NAME = ".augment.lock"  # held while a job writes the folder (`distsleep.locks`)
CHANNEL_STATS = ("training-nights", "pseudo-record")


# ------------------------------------------------------------------------------------------------ generator


@dataclass
class GeneratorBundle:
    generator: object  # distsleep.gan.model.Generator, eval mode, CPU
    bundle: dict
    path: str  # the resolved local path, or runs:/<run id>/generator/generator.pt when downloaded
    sha256: str
    mlflow_run_id: str | None  # of the training run (from the bundle, or the run it was downloaded from)

    @property
    def channels(self) -> list[str]:
        return list(self.bundle["channels"])

    @property
    def stages(self) -> list[str]:
        return list(self.bundle["stages"])


def load_generator(source: str, tracking_uri: str | None = None) -> GeneratorBundle:
    """The generator of a bundle, ready on CPU. `source`: a generator.pt file, a folder holding it (a training
    checkpoint, a downloaded artifact folder, or a run directory STORAGE/NAME: its latest checkpoint), or an
    MLflow run id / runs:/<id> URI (its artifact generator/generator.pt); see `distsleep.bundle.resolve`."""
    located = resolve(source, GENERATOR, tracking_uri=tracking_uri)
    bundle = read(located.path, GENERATOR)
    generator = Generator(PhysioGanConfig.from_dict(bundle["model_config"]))
    generator.load_state_dict(bundle["state_dict"])
    generator.eval()
    name = located.name if located.run_id else str(located.path.resolve())
    return GeneratorBundle(generator, bundle, name, store.sha256(located.path), located.run_id or bundle.get("mlflow_run_id"))


def generate(bundle: GeneratorBundle, n: int, stage: str, seed) -> np.ndarray:
    """`n` epochs of `stage` in uV, float32 (n, C, samples); the same (bundle, n, stage, seed) gives the same array.

    Runs on CPU in float32 so the bytes do not depend on an accelerator being present.
    """
    if stage not in bundle.stages:
        raise AugmentationError(f"{bundle.path}: this generator was trained for {bundle.stages}, not {stage!r}")
    cfg = bundle.generator.cfg
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, cfg.latent_dim)).astype(np.float32)
    noise = torch.Generator().manual_seed(int(rng.integers(2**62)))  # the generator's injected noise
    with torch.no_grad():
        x = bundle.generator(torch.from_numpy(z), torch.full((n,), bundle.stages.index(stage), dtype=torch.long), noise)
    center = np.asarray(bundle.bundle["center_uv"], np.float32)[:, None]
    scale = np.asarray(bundle.bundle["scale_uv"], np.float32)[:, None]
    return x.numpy() * scale + center


# ---------------------------------------------------------------------------------------------- the job


@dataclass
class AugmentConfig(ConfigBase):
    generator: str  # generator.pt, a folder holding it, or an MLflow run id
    shards: str  # the training run's preprocessing manifest (its training counts set the fraction)
    out: str  # output directory
    stages: tuple[str, ...] | None = None  # default: every stage of the generator
    n_epochs: int | None = None  # epochs per stage; or:
    target_fraction: float | None = None  # bring each stage to this fraction of the training epochs
    seed: int = 0
    epochs_per_record: int = 100
    channel_stats: str = "training-nights"  # or "pseudo-record" (statistics of the generated epochs)
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if (self.n_epochs is None) == (self.target_fraction is None):
            raise ValueError("give exactly one of n_epochs and target_fraction")
        if self.n_epochs is not None and self.n_epochs < 0:
            raise ValueError(f"n_epochs must be >= 0, got {self.n_epochs}")
        if self.target_fraction is not None and not 0 < self.target_fraction < 1:
            raise ValueError(f"target_fraction must be in (0, 1), got {self.target_fraction}")
        if self.epochs_per_record < 1:
            raise ValueError(f"epochs_per_record must be at least 1, got {self.epochs_per_record}")
        if self.channel_stats not in CHANNEL_STATS:
            raise ValueError(f"channel_stats must be one of {CHANNEL_STATS}, got {self.channel_stats!r}")
        if self.stages is not None:
            self.stages = tuple(self.stages)


@dataclass
class AugmentResult:
    manifest: dict
    path: Path
    written: int  # shards written by this call (0 when the output was already complete)
    removed: list[str] = field(default_factory=list)  # stale shards deleted


def training_counts(manifest: dict) -> dict[str, int]:
    """Scored training epochs per stage, plus "scored" (their sum)."""
    stages = manifest["totals"]["train"]["stages"]
    counts = {s: int(stages.get(s, 0)) for s in STAGE_NAMES}
    counts["scored"] = sum(counts[s] for s in STAGE_NAMES)
    return counts


def epochs_needed(counts: dict[str, int], stage: str, fraction: float) -> int:
    """Synthetic epochs n so that (stage + n) / (scored + n) reaches `fraction` (0 if it already does)."""
    have, total = counts[stage], counts["scored"]
    return max(0, math.ceil((fraction * total - have) / (1 - fraction) - 1e-9))


def pseudo_record(bundle: GeneratorBundle, stage: str, index: int, n: int, seed: int, source_hash: str,
                  target_rate: float, channel_stats: str = "training-nights") -> ShardSample:
    """One synthetic pseudo-record of `n` epochs, seeded by (seed, stage, index) alone."""
    code = STAGE_NAMES.index(stage)
    epochs = generate(bundle, n, stage, np.random.SeedSequence([seed, code, index]))
    columns, scales = [], []
    for c in range(epochs.shape[1]):
        codes, scale = quantize(epochs[:, c])
        columns.append(codes)
        scales.append(scale)
    signals = np.stack(columns, axis=1)
    # Statistics of what a reader reconstructs (codes x scale), like those of a real shard.
    physical = signals.astype(np.float32) * np.asarray(scales, np.float32)[None, :, None]
    stats = channel_stats_of(physical) if channel_stats == "pseudo-record" else list(bundle.bundle["night_stats"])
    key = f"{KEY_PREFIX}{stage.lower()}-{bundle.sha256[:10]}-s{seed}-{index:05d}"
    meta = {
        "record_id": key,
        "source": "physio-gan",
        "channels": [{"role": r, "label": "generated", "source_rate": target_rate, "unit": "uV"} for r in bundle.channels],
        "target_rate": target_rate,
        "scale_uv": scales,
        "n_epochs": n,
        "epoch_seconds": 30.0,
        "kept_epochs": [0, n],
        "config_hash": source_hash,
        "event_columns": list(EVENT_COLUMNS),
        "augmented": True,
        "augmentation": {"generator_sha256": bundle.sha256, "mlflow_run_id": bundle.mlflow_run_id, "seed": seed,
                         "stage": stage, "index": index, "source_config_hash": source_hash},
        "channel_stats": stats,
        "channel_stats_from": channel_stats,
    }
    return ShardSample(key=key, signals=signals, labels=np.full(n, code, dtype=np.int8),
                       events=np.zeros((n, len(EVENT_COLUMNS)), dtype=np.uint8), meta=meta)


def run_augment(cfg: AugmentConfig) -> AugmentResult:
    """Generate, write and list the synthetic shards (see the module docstring)."""
    bundle = load_generator(cfg.generator, cfg.tracking_uri)
    manifest, _ = load_manifest(cfg.shards)
    check_fits(manifest, cfg.shards, where=f"the generator {bundle.path}", source_hash=bundle.bundle.get("source_config_hash"),
               channels=bundle.channels, train_records=bundle.bundle.get("train_records", []))
    stages = list(cfg.stages or bundle.stages)
    unknown = [s for s in stages if s not in bundle.stages]
    if unknown:
        raise AugmentationError(f"{bundle.path}: this generator was trained for {bundle.stages}, not {unknown}")
    counts = training_counts(manifest)
    source_manifest = str(Path(cfg.shards).resolve()) if "://" not in cfg.shards else cfg.shards
    wanted = {s: cfg.n_epochs if cfg.n_epochs is not None else epochs_needed(counts, s, cfg.target_fraction)
              for s in stages}
    target_rate = float(bundle.bundle["sample_rate"])
    request = {"generator_sha256": bundle.sha256, "stages": stages, "n_epochs": cfg.n_epochs,
               "target_fraction": cfg.target_fraction, "seed": cfg.seed, "epochs_per_record": cfg.epochs_per_record,
               "channel_stats": cfg.channel_stats, "source_manifest": source_manifest,
               "source_config_hash": manifest.get("config_hash"), "generated": wanted}
    out = Path(cfg.out)
    manifest_path = out / AUGMENTATION_NAME
    # One augment job per folder at a time: two would delete each other's shards and leave a manifest that
    # lists the other's files.
    with exclusive_lock(out / LOCK_NAME, f"the augmentation folder {out}",
                        "wait for that job to finish, or pass another --out"):
        existing = _complete_existing(manifest_path, request)
        if existing is not None:
            return AugmentResult(existing, manifest_path, written=0)

        manifest_path.unlink(missing_ok=True)  # from here on the directory is incomplete until the manifest is back
        shards_dir = out / "shards"
        shards_dir.mkdir(parents=True, exist_ok=True)
        for leftover in shards_dir.glob(".*.tmp-*"):
            leftover.unlink(missing_ok=True)
        entries = []
        for stage in stages:
            for index in range(math.ceil(wanted[stage] / cfg.epochs_per_record)):
                n = min(cfg.epochs_per_record, wanted[stage] - index * cfg.epochs_per_record)
                sample = pseudo_record(bundle, stage, index, n, cfg.seed, manifest.get("config_hash", ""), target_rate,
                                       cfg.channel_stats)
                path = shards_dir / f"{sample.key}.tar"
                n_bytes, digest = write_shard(path, sample)
                entries.append({"record_id": sample.key, "shard": f"shards/{path.name}", "sha256": digest,
                                "bytes": n_bytes, "n_epochs": n, "stage": stage})
        listed = {Path(e["shard"]).name for e in entries}
        removed = sorted(p.name for p in shards_dir.glob(f"{KEY_PREFIX}*.tar") if p.name not in listed)
        for name in removed:
            (shards_dir / name).unlink()
        after = dict(counts)
        for stage in stages:
            after[stage] += wanted[stage]
        after["scored"] += sum(wanted.values())
        payload = {
            "format": AUGMENTATION_FORMAT,
            "split": "train",
            "request": request,
            "source_manifest": source_manifest,
            "source_config_hash": manifest.get("config_hash"),
            "channels": bundle.channels,
            "stages": stages,
            "sample_rate": target_rate,
            "generator": {"sha256": bundle.sha256, "mlflow_run_id": bundle.mlflow_run_id, "source": bundle.path,
                          "step": bundle.bundle.get("step"), "train_records": list(bundle.bundle.get("train_records", []))},
            "counts": {"generated": wanted, "training_before": counts, "training_after": after,
                       "fraction_after": {s: after[s] / max(1, after["scored"]) for s in stages}},
            "n_epochs": sum(wanted.values()),
            "shards": entries,
            "code_version": code_version(),
        }
        write_json_atomic(manifest_path, payload)
        return AugmentResult(payload, manifest_path, written=len(entries), removed=removed)


def _complete_existing(manifest_path: Path, request: dict) -> dict | None:
    """The existing manifest if it answers the same request and every shard still has its recorded sha256."""
    try:
        existing = json.loads(manifest_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if existing.get("request") != request:
        return None
    for entry in existing.get("shards", []):
        path = manifest_path.parent / entry["shard"]
        if not path.is_file() or path.stat().st_size != entry["bytes"] or store.sha256(path) != entry["sha256"]:
            return None
    return existing
