"""Configuration of a sweep: the base training run, the grid (or search space), and how trials run.

The masking ratio is a field of the model's config: a trial's ratio goes there (`trial_train_config`), and the
model config's own range check refuses a bad one when the sweep is configured.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, fields

from distsleep.config import ConfigBase
from distsleep.models import get_spec
from distsleep.shards.folds import FOLD_KEY, MIN_FOLDS, fold_location
from distsleep.train.config import TrainConfig
from distsleep.train.inputs import model_config

# MC²SleepNet Table 4: the masking ratios the paper compares.
PAPER_MASK_RATIOS = (0.0, 0.15, 0.25, 0.30, 0.40, 0.50, 0.60, 0.70, 0.75, 0.85)
SEARCHES = ("grid", "random")
SCHEDULERS = ("fifo", "asha")


def _train_fields() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


@dataclass
class SweepConfig(ConfigBase):
    name: str = "mask-ratio-sweep"  # relaunching the same name resumes the sweep
    train: TrainConfig = field(default_factory=TrainConfig)  # the pre-training run every trial starts from
    mask_ratios: tuple[float, ...] = PAPER_MASK_RATIOS
    # Other knobs crossed with the ratios: a TrainConfig field (lr, seed, batch_size ...) or a field of
    # the model's config (infonce_temperature ...), each with its list of values.
    knobs: dict = field(default_factory=dict)
    search: str = "grid"  # grid: every combination; random: num_samples draws (ratio uniform in mask_ratio_range)
    num_samples: int = 1  # random: number of trials (a grid repeats points over seeds with knobs={"seed": [...]})
    mask_ratio_range: tuple[float, float] = (0.0, 0.85)
    finetune: bool = True  # each trial fine-tunes from its own best pre-training checkpoint
    finetune_steps: int | None = None  # default: the pre-training max_steps
    finetune_lr: float | None = None  # default: the pre-training lr
    scheduler: str = "fifo"  # or "asha": stop trials whose validation metric lags at a rung
    asha_grace: int = 1  # validations a trial always gets before ASHA may stop it
    asha_reduction: float = 2.0
    max_concurrent_trials: int | None = None  # default: as many as the cluster's resources hold
    baseline: bool = True  # score YASA's pretrained stager on the same test records
    # K-fold cross-validation by person (distsleep.shards.folds): every grid point is trained and tested on each of
    # the K folds of train.shards, and the comparison pools each point's test nights over its folds (every person
    # tested once). 0: the manifest's own split.
    folds: int = 0
    fold_seed: int = 0

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        self.name = self.name or "mask-ratio-sweep"
        if "/" in self.name or self.name.startswith("."):
            raise ValueError(f"sweep name {self.name!r}: use letters, digits, '-' and '_'")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.train.stage != "pretrain":
            raise ValueError("a sweep's base run is the pre-training stage (fine-tuning follows per trial)")
        self.mask_ratios = tuple(float(r) for r in self.mask_ratios)
        self.mask_ratio_range = tuple(float(r) for r in self.mask_ratio_range)
        if not self.mask_ratios and self.search == "grid":
            raise ValueError("no masking ratios to sweep")
        self.knobs = {k: list(v) for k, v in self.knobs.items()}
        if "mask_ratio" in self.knobs:
            raise ValueError("the masking ratio is swept by mask_ratios, not knobs")
        if FOLD_KEY in self.knobs:
            raise ValueError("folds are set by folds (--folds K), not knobs")
        if self.folds:
            if self.folds < MIN_FOLDS:
                raise ValueError(f"folds={self.folds}: cross-validation needs at least {MIN_FOLDS} folds (0: no cross-validation)")
            if self.search != "grid":
                raise ValueError("cross-validation needs a grid search: every fold must train the same points")
            if self.scheduler != "fifo":
                # ASHA ranks trials at a rung by their validation value: a fold's validation set holds other people
                # than another fold's, so it would stop folds for their people, leaving points incomplete.
                raise ValueError(f"cross-validation cannot use the {self.scheduler} scheduler: it would stop a fold by "
                                 "comparing its validation value with other folds', measured on other people; every "
                                 "point needs all its folds (use the fifo scheduler)")
        empty = [k for k, v in self.knobs.items() if not v]
        if empty:
            raise ValueError(f"knobs without values: {empty}")
        if self.search == "grid" and len(self.knobs.get("seed", [])) > 1 and self.scheduler != "fifo":
            # The comparison selects a point on its mean over seeds and only with every seed finished; ASHA stops
            # single trials, so most points would lose a seed and none could be selected.
            raise ValueError(f"seeds as a knob cannot use the {self.scheduler} scheduler: it would stop single seeds of "
                             "a point, which is then never selected (a point is selected on its mean over all its "
                             "seeds); use the fifo scheduler")
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if self.search == "grid" and self.num_samples != 1:
            # Tune would train every point num_samples times with the same config, seed included: copies, not
            # replicates. Seeds as a knob are crossed with the grid and pooled per point by the comparison.
            raise ValueError(f"num_samples={self.num_samples} would repeat the grid with the same seed; repeat each "
                             "point with other seeds with --knob seed=0,1,2 (num_samples is for --search random)")
        # A value the training or model config refuses (an uneven batch split, a ratio outside [0, 1) ...) fails now.
        points = self.grid_points() if self.search == "grid" else [{"mask_ratio": r} for r in self.mask_ratio_range]
        for point in points:
            model_config(self.trial_train_config(point, "pretrain"))

    # ---- the trials -------------------------------------------------------------------------------
    def grid_points(self) -> list[dict]:
        """Every combination of the grid (grid search), in a stable order."""
        keys = ["mask_ratio", *sorted(self.knobs)]
        values = [list(self.mask_ratios), *(self.knobs[k] for k in sorted(self.knobs))]
        if self.folds:
            keys.append(FOLD_KEY)
            values.append(list(range(1, self.folds + 1)))
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]

    @property
    def n_trials(self) -> int:
        return self.num_samples * (len(self.grid_points()) if self.search == "grid" else 1)

    def trial_train_config(self, point: dict, stage: str, **changes) -> TrainConfig:
        """The TrainConfig of one trial's stage: the base run with the point's knobs applied."""
        train_fields = _train_fields()
        base = self.train.to_dict()
        overrides = dict(base["model_overrides"])
        for key, value in point.items():
            if key == FOLD_KEY:  # the fold's manifest, beside the cohort's: same shards, the fold's split
                base["shards"] = fold_location(self.train.shards, self.folds, int(value), self.fold_seed)
            elif key in train_fields:
                base[key] = value
            else:
                overrides[key] = value
        base["model_overrides"] = overrides
        base["stage"] = stage
        if stage == "finetune":
            base["max_steps"] = self.finetune_steps or self.train.max_steps
            base["lr"] = self.finetune_lr or self.train.lr
        base.update(changes)
        return TrainConfig.from_dict(base)

    def indistinct_ratios(self) -> list[tuple[tuple[float, ...], int]]:
        """Groups of swept ratios under which the model masks the same number of units per sample (its spec's
        `masked_count`; MC²SleepNet: L − int(L·(1−r)) epochs of a sequence, the authors' count); such trials
        differ only by chance, so the sweep warns."""
        spec = get_spec(self.train.model)
        if spec.masked_count is None or self.search != "grid":
            return []
        groups: dict[int, list[float]] = {}
        for ratio in self.mask_ratios:
            count = spec.masked_count(model_config(self.trial_train_config({"mask_ratio": ratio}, "pretrain")))
            groups.setdefault(count, []).append(ratio)
        return [(tuple(r), n) for n, r in sorted(groups.items()) if len(r) > 1]

    def identity(self) -> dict:
        """What must not change when a sweep is relaunched under the same name (else it is another sweep)."""
        out = self.to_dict()
        for key in ("max_concurrent_trials", "baseline"):
            out.pop(key)
        train = out["train"]
        for key in ("tracking_uri", "storage_path", "loader_workers", "max_failures"):
            train.pop(key, None)
        return json.loads(json.dumps(out, sort_keys=True, default=str))

