"""Typed configuration: dataclasses that print, serialize, hash, and flatten into MLflow params."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

# 2: shards carry each channel's per-recording median and IQR (meta["channel_stats"]).
SHARD_FORMAT_VERSION = 2
# "nsrr": any NSRR cohort (EDF + NSRR/Profusion XML), its alias table chosen by `cohort` or the file names;
# "shhs" is that reader with the cohort fixed to SHHS (what it has always been).
SOURCES = ("shhs", "sleep-edf", "nsrr")
SUBSETS = ("all", "shhs-5791", "shhs-5463")

# Per-role zero-phase band-passes (Hz) of SynthSleepNet's SHHS preprocessing: EEG/EOG 0.5-40, ECG 3-30,
# chin EMG 25-49, airflow 0.05-1. Applied to the continuous night at the native rate (the public parser
# filters each 30-s epoch separately after resampling, which adds edge transients to every epoch).
FILTER_RECIPES: dict[str, dict[str, tuple[float, float]]] = {
    "synthsleepnet": {
        "eeg_c4": (0.5, 40.0), "eeg_c3": (0.5, 40.0), "eog_l": (0.5, 40.0), "eog_r": (0.5, 40.0),
        "ecg": (3.0, 30.0), "emg": (25.0, 49.0), "airflow": (0.05, 1.0),
        "eeg_fpz_cz": (0.5, 40.0), "eeg_pz_oz": (0.5, 40.0), "eog": (0.5, 40.0),
    },
}
# Channel sets by name (`distsleep preprocess --channel-set NAME`).
CHANNEL_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "multimodal": {
        "shhs": ("eeg_c4", "eeg_c3", "eog_l", "eog_r", "emg", "ecg", "airflow"),
        "sleep-edf": ("eeg_fpz_cz", "eeg_pz_oz", "eog", "emg"),
    },
}


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class PreprocessConfig:
    """What goes into a shard. Everything here changes shard bytes, so all of it is in `content_hash`."""

    source: str = "shhs"
    channels: tuple[str, ...] = ("eeg_c4",)  # channel roles (see distsleep.sources.channels)
    target_rate: float = 100.0
    bandpass: tuple[float, float] | None = None  # zero-phase band-pass (Hz) before resampling, every channel
    filter_recipe: str | None = None  # per-role band-passes (FILTER_RECIPES); overrides `bandpass` per role
    trim_wake_minutes: float | None = None  # keep this much wake around the sleep period
    epoch_seconds: float = 30.0
    # source "nsrr" only: the cohort whose alias table applies (None: from each file's name, else unknown)
    cohort: str | None = None
    # (role, labels) from a luna alias file (distsleep.sources.channel_map.read_channel_map), tried first
    channel_map: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    def __post_init__(self):
        from distsleep.sources.montages import NSRR_COHORTS, known_roles

        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.cohort is not None and (self.source != "nsrr" or self.cohort not in NSRR_COHORTS):
            raise ValueError(f"cohort {self.cohort!r} needs source 'nsrr' and one of {', '.join(NSRR_COHORTS)}")
        if self.channel_map is not None:
            entries = self.channel_map.items() if isinstance(self.channel_map, dict) else self.channel_map
            object.__setattr__(self, "channel_map", tuple((role, tuple(labels)) for role, labels in entries))
            unknown = [role for role, _ in self.channel_map if role not in known_roles()]
            if unknown:
                raise ValueError(f"channel map names unknown role(s) {unknown}")
        if self.bandpass is not None and not 0 < self.bandpass[0] < self.bandpass[1] < self.target_rate / 2:
            raise ValueError(f"band-pass {self.bandpass} must satisfy 0 < low < high < target_rate/2")
        if self.filter_recipe is not None and self.filter_recipe not in FILTER_RECIPES:
            raise ValueError(f"unknown filter recipe {self.filter_recipe!r}; choose one of {', '.join(FILTER_RECIPES)}")

    def band_for(self, role: str) -> tuple[float, float] | None:
        """The band-pass applied to channel `role`: the recipe's band for it, else `bandpass` (or None)."""
        if self.filter_recipe is not None and role in FILTER_RECIPES[self.filter_recipe]:
            return FILTER_RECIPES[self.filter_recipe][role]
        return self.bandpass

    def to_dict(self) -> dict:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["bandpass"] = list(self.bandpass) if self.bandpass else None
        # Left out when unset, so configs (and shard hashes) from before these fields existed stay the same.
        for name in ("cohort", "channel_map"):
            if out[name] is None:
                del out[name]
        if self.channel_map is not None:
            out["channel_map"] = {role: list(labels) for role, labels in self.channel_map}
        return out

    def content_hash(self) -> str:
        payload = {"format": SHARD_FORMAT_VERSION, **self.to_dict()}
        return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["channels"] = tuple(data.get("channels", ("eeg_c4",)))
        if data.get("bandpass") is not None:
            data["bandpass"] = tuple(data["bandpass"])
        return cls(**data)


@dataclass(frozen=True)
class SplitConfig:
    """Which records form the cohort, and how its subjects (people) are split into train/val/test.

    The SHHS papers use 100 validation subjects and 70:30 train:test for the others. Each subject's side
    comes from a seeded hash of its own id (distsleep.shards.splits), so a grown or shrunk cohort keeps
    everyone's train/test side; small cohorts get at most a tenth of their subjects (at least one) for
    validation. `split_file` replaces all of that by a published split (train/val/test lists of record or
    subject ids); ids it names that the cohort lacks are an error unless `allow_missing_split_ids`.
    `visits` keeps only those visits (e.g. "shhs1"; empty: all); the SHHS subsets are SHHS1 by definition.
    """

    n_val: int = 100
    train_fraction: float = 0.7
    seed: int = 0
    subset: str = "all"
    visits: tuple[str, ...] = ()
    split_file: str | None = None
    allow_missing_split_ids: bool = False

    def __post_init__(self):
        if self.subset not in SUBSETS:
            raise ValueError(f"unknown subset {self.subset!r}; choose one of {', '.join(SUBSETS)}")
        object.__setattr__(self, "visits", tuple(self.visits))
        if self.subset.startswith("shhs-") and any(v != "shhs1" for v in self.visits):
            raise ValueError(f"--subset {self.subset} is an SHHS1 cohort; it cannot take visits {list(self.visits)}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1), got {self.train_fraction}")
        if self.n_val < 0:
            raise ValueError(f"n_val must be >= 0, got {self.n_val}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["visits"] = list(self.visits)
        return out


def flatten(prefix: str, obj) -> dict[str, str]:
    """Nested dict/dataclass -> {"a.b.c": "value"} strings (MLflow params)."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
    else:
        out[prefix] = _canonical(obj) if isinstance(obj, (list, tuple)) else str(obj)
    return out
