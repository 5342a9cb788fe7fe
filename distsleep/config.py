"""Typed configuration: one base for every config dataclass, the sections Ray Train jobs share, and the
preprocessing and split configs.

`ConfigBase` gives each config the same behaviour: `to_dict()` (JSON-safe: tuples become lists, nested
configs dicts), `from_dict()` (the inverse; unknown keys are an error for model configs, ignored for run
configs so that records written by older versions still load), named presets (`presets()`, `preset(name)`;
classmethods marked with `@preset`, the class defaults being the first), and one flat `key = value` view,
`params(prefix)`, which is both what `describe()` prints and what goes to MLflow as params. Configs that
define a run's identity or a shard's bytes are compared through these dicts, so they are the single
serialisation of every config.

`ClusterSection` and `TrackingSection` are the fields every Ray Train job has (model training and the
Physio-GAN): where and on how many workers it runs, and where it is tracked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from distsleep.sources.montages import NSRR_COHORTS, known_roles

# 2: shards carry each channel's per-recording median and IQR (meta["channel_stats"]).
SHARD_FORMAT_VERSION = 2
# "nsrr": any NSRR cohort (EDF + NSRR/Profusion XML), its alias table chosen by `cohort` or the file names;
# "shhs" is that reader with the cohort fixed to SHHS (what it has always been).
SOURCES = ("shhs", "sleep-edf", "nsrr")
SUBSETS = ("all", "shhs-5791", "shhs-5463")
# The staging EEG each source's shards hold by default (SHHS C4-A1, Sleep-EDF Fpz-Cz).
STAGING_EEG = {"shhs": "eeg_c4", "nsrr": "eeg_c4", "sleep-edf": "eeg_fpz_cz"}

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
# Channel sets by name (`distsleep preprocess --channel-set NAME`), with the filter recipe they go with.
CHANNEL_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "multimodal": {
        "shhs": ("eeg_c4", "eeg_c3", "eog_l", "eog_r", "emg", "ecg", "airflow"),
        "sleep-edf": ("eeg_fpz_cz", "eeg_pz_oz", "eog", "emg"),
    },
}
CHANNEL_SET_RECIPES = {"multimodal": "synthsleepnet"}
# Minutes of wake kept before the first and after the last sleep epoch when a config does not say
# (`trim_wake_minutes="source"`). Sleep-EDF's cassette recordings run about a day and are two-thirds wake; its
# staging papers (MC²SleepNet's Table 1: 192,233 epochs, 34 % wake, for SC 2013/2018) keep 30 minutes each
# side. NSRR PSGs run lights-off to lights-on and are kept whole, as the SHHS papers do.
SOURCE_WAKE_TRIM: dict[str, float] = {"sleep-edf": 30.0}


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def plain(value):
    """`value` as JSON-safe plain data: configs and dataclasses as dicts, tuples as lists."""
    if isinstance(value, ConfigBase) or dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def flatten(prefix: str, obj) -> dict[str, str]:
    """Nested dict/config -> {"a.b.c": "value"} strings (MLflow params; what `describe` prints)."""
    obj = plain(obj)
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
    else:
        out[prefix] = canonical_json(obj) if isinstance(obj, list) else str(obj)
    return out


def field_defaults(cls) -> dict[str, Any]:
    """The declared defaults of a dataclass's fields (before any __post_init__ normalises them), e.g. the
    defaults a command line shows: "runs", not the absolute path a config makes of it."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def preset(method):
    """Mark a config classmethod `(cls, **overrides) -> config` as a named preset (see `ConfigBase.presets`)."""
    method.__config_preset__ = True
    return classmethod(method)


def fields_preset(doc: str, **fields):
    """A preset that is the class defaults with `fields` changed (the caller's overrides go on top), e.g.
    `small = fields_preset("A tiny model for CPU tests.", d_model=32, layers=1)` in a config class."""
    def make(cls, **overrides):
        return cls(**{**fields, **overrides})

    make.__doc__ = doc
    return preset(make)


class ConfigBase:
    """What every config dataclass shares (module docstring). Subclasses are dataclasses."""

    DEFAULT_PRESET: ClassVar[str] = "default"  # the name of the class defaults as a preset
    STRICT: ClassVar[bool] = False  # from_dict: refuse unknown keys (True) or drop them (False)

    def to_dict(self) -> dict:
        return plain(self)

    @classmethod
    def from_dict(cls, data) -> Any:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown and cls.STRICT:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def presets(cls) -> list[str]:
        """The preset names: the class defaults first, then every `@preset` classmethod."""
        marked = sorted({name for klass in cls.__mro__ for name, value in vars(klass).items()
                         if isinstance(value, classmethod) and getattr(value.__func__, "__config_preset__", False)})
        return [cls.DEFAULT_PRESET, *marked]

    @classmethod
    def preset(cls, name: str, **overrides) -> Any:
        """The preset `name` with `overrides` applied; ValueError naming the presets for an unknown one."""
        if name == cls.DEFAULT_PRESET:
            return cls(**overrides)
        if name not in cls.presets():
            raise ValueError(f"{cls.__name__} has no preset {name!r}; presets: {', '.join(cls.presets())}")
        return getattr(cls, name)(**overrides)

    def replace(self, **changes) -> Any:
        return dataclasses.replace(self, **changes)

    def params(self, prefix: str = "") -> dict[str, str]:
        """The config as flat `key: value` strings (MLflow params under `prefix`)."""
        return flatten(prefix, self)

    def describe(self) -> str:
        """What the console prints for a config: the same keys and values MLflow gets as params."""
        return "\n".join([f"{type(self).__name__}:", *(f"  {k} = {v}" for k, v in self.params().items())])


def absolute(location: str) -> str:
    """Local paths made absolute; URLs (s3://, gs://, file://, ...) unchanged."""
    return location if "://" in location else str(Path(location).expanduser().resolve())


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute SQLite file in the working directory.

    Absolute, because Ray workers run in other directories and a relative sqlite:///mlflow.db would
    create one store per worker.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def check_gpu_share(use_gpu: bool, gpus_per_worker: float) -> None:
    """Refuse a fraction of a GPU per worker on GPU runs: every Ray Train worker is an NCCL rank, and NCCL gives
    each rank its own device (two ranks on one GPU fail at their first collective, after start-up)."""
    if use_gpu and gpus_per_worker < 1:
        raise ValueError(f"gpus_per_worker {gpus_per_worker} < 1 with use_gpu: each Ray Train worker is an NCCL rank "
                         "that needs a whole GPU; use --gpus-per-worker 1 (or more), or fewer --num-workers")


@dataclass
class TrackingSection:
    """Where a Ray Train job is tracked (MLflow)."""

    experiment: str = "distsleep"
    tracking_uri: str | None = None  # default: default_tracking_uri()
    parent_run_id: str | None = None  # set by sweeps and comparisons: this run is a child of that run
    run_tags: dict = field(default_factory=dict)

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or default_tracking_uri()


@dataclass
class ClusterSection:
    """Where and how a Ray Train job runs: its workers, their resources, its storage and name."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    storage_path: str = "runs"  # checkpoints go to STORAGE/NAME
    name: str = ""  # relaunching the same name resumes
    max_failures: int = 0

    def check_cluster(self, default_name: str) -> None:
        """Refuse impossible resources; name the run; make a local storage path absolute (Ray workers run in
        other directories)."""
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        check_gpu_share(self.use_gpu, self.gpus_per_worker)
        if not self.name:
            self.name = default_name
        self.storage_path = absolute(self.storage_path)

    def demand(self) -> dict[str, float]:
        """Resources the job's Ray Train worker group asks for."""
        demand = {"CPU": self.num_workers * self.cpus_per_worker}
        if self.use_gpu:
            demand["GPU"] = self.num_workers * self.gpus_per_worker
        return demand

    def worker_resources(self) -> dict[str, float]:
        """Resources of one Ray Train worker."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}


@dataclass(frozen=True)
class PreprocessConfig(ConfigBase):
    """What goes into a shard. Everything here changes shard bytes, so all of it is in `content_hash`."""

    source: str = "shhs"
    channels: tuple[str, ...] = ()  # channel roles (distsleep.sources.channels); empty: the source's staging EEG
    target_rate: float = 100.0
    bandpass: tuple[float, float] | None = None  # zero-phase band-pass (Hz) before resampling, every channel
    filter_recipe: str | None = None  # per-role band-passes (FILTER_RECIPES); overrides `bandpass` per role
    # minutes of wake kept around the sleep period; None: the whole recording; "source": SOURCE_WAKE_TRIM's
    # (resolved at construction, so a written config always holds the number or None)
    trim_wake_minutes: float | str | None = "source"
    epoch_seconds: float = 30.0
    # source "nsrr" only: the cohort whose alias table applies (None: from each file's name, else unknown)
    cohort: str | None = None
    # (role, labels) from a luna alias file (distsleep.sources.channel_map.read_channel_map), tried first
    channel_map: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; choose one of {', '.join(SOURCES)}")
        object.__setattr__(self, "channels", tuple(self.channels) or (STAGING_EEG[self.source],))
        if self.trim_wake_minutes == "source":
            object.__setattr__(self, "trim_wake_minutes", SOURCE_WAKE_TRIM.get(self.source))
        elif self.trim_wake_minutes is not None and not (isinstance(self.trim_wake_minutes, (int, float))
                                                          and 0 <= self.trim_wake_minutes < float("inf")):
            raise ValueError(f"trim_wake_minutes must be minutes >= 0, None (the whole recording) or 'source', "
                             f"got {self.trim_wake_minutes!r}")
        if self.cohort is not None and (self.source != "nsrr" or self.cohort not in NSRR_COHORTS):
            raise ValueError(f"cohort {self.cohort!r} needs source 'nsrr' and one of {', '.join(NSRR_COHORTS)}")
        if self.channel_map is not None:
            entries = self.channel_map.items() if isinstance(self.channel_map, dict) else self.channel_map
            object.__setattr__(self, "channel_map", tuple((role, tuple(labels)) for role, labels in entries))
            unknown = [role for role, _ in self.channel_map if role not in known_roles()]
            if unknown:
                raise ValueError(f"channel map names unknown role(s) {unknown}")
        if self.bandpass is not None:
            object.__setattr__(self, "bandpass", tuple(self.bandpass))
            if not 0 < self.bandpass[0] < self.bandpass[1] < self.target_rate / 2:
                raise ValueError(f"band-pass {self.bandpass} must satisfy 0 < low < high < target_rate/2")
        if self.filter_recipe is not None and self.filter_recipe not in FILTER_RECIPES:
            raise ValueError(f"unknown filter recipe {self.filter_recipe!r}; choose one of {', '.join(FILTER_RECIPES)}")

    @preset
    def multimodal(cls, source: str = "shhs", **overrides) -> PreprocessConfig:
        """SynthSleepNet's channel set of `source`, band-passed per modality (its filter recipe)."""
        return cls(**{"source": source, "channels": CHANNEL_SETS["multimodal"][source],
                      "filter_recipe": CHANNEL_SET_RECIPES["multimodal"], **overrides})

    def band_for(self, role: str) -> tuple[float, float] | None:
        """The band-pass applied to channel `role`: the recipe's band for it, else `bandpass` (or None)."""
        if self.filter_recipe is not None and role in FILTER_RECIPES[self.filter_recipe]:
            return FILTER_RECIPES[self.filter_recipe][role]
        return self.bandpass

    def to_dict(self) -> dict:
        out = super().to_dict()
        # Left out when unset, so configs (and shard hashes) from before these fields existed stay the same.
        for name in ("cohort", "channel_map"):
            if out[name] is None:
                del out[name]
        if self.channel_map is not None:
            out["channel_map"] = {role: list(labels) for role, labels in self.channel_map}
        return out

    def content_hash(self) -> str:
        payload = {"format": SHARD_FORMAT_VERSION, **self.to_dict()}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SplitConfig(ConfigBase):
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
