"""Configuration of one Physio-GAN training run: data, loss weights, optimisation, and the cluster and
tracking sections it shares with model training (`distsleep.config`).

Like every config it prints and logs through `distsleep.config.ConfigBase` (`describe()`, `params("gan")`).
Architecture lives in `PhysioGanConfig` (`model_size` picks its preset, `model_overrides` changes single
fields).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from distsleep.config import ClusterSection, ConfigBase, TrackingSection, absolute
from distsleep.gan.model import ADVERSARIAL_LOSSES, PhysioGanConfig
from distsleep.stages import STAGE_NAMES

# The ISATSleepNet inputs, in its order: EEG(sec) = C3-A2, EOG(L), EEG = C4-A1.
DEFAULT_CHANNELS = ("eeg_c3", "eog_l", "eeg_c4")


@dataclass
class GanTrainConfig(ConfigBase, ClusterSection, TrackingSection):
    # data
    shards: str = ""  # manifest.json of a preprocessing run; only its training records are read
    stages: tuple[str, ...] = ("N1",)  # stages to synthesise (one conditional generator for all of them)
    channels: tuple[str, ...] = DEFAULT_CHANNELS  # channel roles, generated jointly in this order
    max_real_epochs: int = 50_000  # per stage, over all workers: a seeded random subset beyond this
    # model
    model_size: str = "paper"  # "paper" (our full size; the paper gives none) or "small"
    model_overrides: dict = field(default_factory=dict)  # any field of PhysioGanConfig
    # losses (see distsleep.gan.model)
    adversarial: str = "wgan-gp"  # or "nonsaturating"
    adversarial_weight: float = 1.0
    spectral_weight: float = 1.0
    moment_weight: float = 1.0
    gp_weight: float = 10.0  # WGAN-GP only
    drift_weight: float = 1e-3  # WGAN-GP only
    spectral_band: tuple[float, float] = (0.5, 45.0)  # Hz, band of the spectral loss
    # optimisation
    batch_size: int = 32  # real (and generated) epochs per worker per step
    n_critic: int = 5  # critic updates per generator update
    lr_generator: float = 1e-4
    lr_critic: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    max_steps: int = 5000  # generator updates
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    # evaluation at the end of training
    psd_epochs: int = 512  # real epochs (per stage) for the PSD comparison; as many are generated
    psd_band: tuple[float, float] = (0.5, 40.0)  # Hz, band of the PSD distance
    # tracking (the rest of the cluster and tracking sections as in model training)
    experiment: str = "distsleep-gan"

    def __post_init__(self) -> None:
        self.stages = tuple(self.stages)
        self.channels = tuple(self.channels)
        self.spectral_band = tuple(float(v) for v in self.spectral_band)
        self.psd_band = tuple(float(v) for v in self.psd_band)
        self.betas = tuple(float(v) for v in self.betas)
        unknown = [s for s in self.stages if s not in STAGE_NAMES]
        if not self.stages or unknown or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages must be distinct names from {STAGE_NAMES}, got {list(self.stages)}")
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must be distinct channel roles, got {list(self.channels)}")
        if self.adversarial not in ADVERSARIAL_LOSSES:
            raise ValueError(f"adversarial must be one of {ADVERSARIAL_LOSSES}, got {self.adversarial!r}")
        if self.model_size not in PhysioGanConfig.presets():
            raise ValueError(f"model_size must be one of {PhysioGanConfig.presets()}, got {self.model_size!r}")
        for name in ("batch_size", "n_critic", "max_steps", "checkpoint_every", "log_every", "max_real_epochs",
                     "psd_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.psd_epochs < 4:
            raise ValueError("psd_epochs must be at least 4 (two halves of real epochs are compared)")
        for name in ("spectral_band", "psd_band"):
            low, high = getattr(self, name)
            if not 0 <= low < high:
                raise ValueError(f"{name} must be (low, high) Hz with 0 <= low < high, got {getattr(self, name)}")
        self.model_config()  # validates the overrides
        self.check_cluster(default_name="gan-" + "-".join(self.stages))
        # Ray workers run in other directories: local paths are made absolute on the driver.
        self.shards = absolute(self.shards) if self.shards else self.shards

    def model_config(self, band_limit_hz: tuple[float, ...] = (), sample_rate: float = 100.0) -> PhysioGanConfig:
        """The architecture: preset + overrides, sized for these channels and stages. The data-dependent
        fields (band limits and rate, from the manifest) apply unless overridden."""
        base = PhysioGanConfig.preset(self.model_size)
        known = {f.name for f in fields(PhysioGanConfig)}
        unknown = set(self.model_overrides) - known
        if unknown:
            raise ValueError(f"PhysioGanConfig has no fields {sorted(unknown)}; known: {sorted(known)}")
        data = {"band_limit_hz": tuple(band_limit_hz), "sample_rate": float(sample_rate)}
        overrides = {**data, **{k: v for k, v in self.model_overrides.items() if k not in ("n_channels", "n_stages")}}
        return dataclasses.replace(base, **overrides, n_channels=len(self.channels), n_stages=len(self.stages))
