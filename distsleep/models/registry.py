"""Model registry: models plug in by name, each with its config dataclass and the channels it needs.

The trainer only knows names: `build_model("mc2sleepnet", config)`. A model module registers a builder
`(config) -> nn.Module` with `@register(name, config_class=..., channels=...)`; importing
`distsleep.models` imports every model module, so the registry is filled on first use. Channel needs are
declared as *slots*: one slot per input channel the model consumes, each slot listing the channel roles
(distsleep.sources.channels) that may fill it, in order of preference. MC²SleepNet has one slot,
("eeg_c4", "eeg_fpz_cz"): the staging EEG of SHHS or of Sleep-EDF. A model whose inputs depend on its
config (SynthSleepNet's modality list) registers a function `config -> slots` instead. `resolve_channels`
turns a shard manifest's channel list into the roles to load (for LoaderConfig.channels), or raises a
clear error.

Capabilities are declared with the model, never probed on its object: `trained_in_parts` (parts pre-trained
in separate runs and loaded with `model.load_part(part, state_dict)`, SynthSleepNet's unimodal encoders)
and `masked_count` (`config -> units a pre-training view masks per sample`, from the config's
`mask_ratio`; None for models that do not mask). Presets are the config class's (`small`, ..., "paper"
being the class defaults): `make_config(preset, overrides)` builds the config a run trains.

`normalization` says what input scale a model is built for: "uv" (physical µV, as MC²SleepNet's fixed
raw scale and dB spectrogram expect) or "robust" (each channel of each recording centred on its median
and divided by its inter-quartile range, as SynthSleepNet's preprocessing does). Shards always hold µV
plus each recording's per-channel median and IQR, so one shard set serves both kinds of model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

from torch import nn

Builder = Callable[[Any], nn.Module]


@dataclass(frozen=True)
class ChannelSlots:
    """One entry per model input channel; each entry is the roles (preference order) that can fill it."""

    slots: tuple[tuple[str, ...], ...]

    @property
    def input_channels(self) -> int:
        return len(self.slots)

    def resolve(self, available: Sequence[str | Mapping[str, Any]], model: str = "model") -> tuple[str, ...]:
        """Roles to load, one per slot, from the shard's channels (role names or manifest dicts with "role").

        Each slot takes its first preferred role that is present and not already used by an earlier slot.
        """
        roles = [str(c["role"]) if isinstance(c, Mapping) else str(c) for c in available]
        chosen: list[str] = []
        for i, options in enumerate(self.slots):
            pick = next((r for r in options if r in roles and r not in chosen), None)
            if pick is None:
                raise ValueError(
                    f"{model} needs, for input channel {i}, one of the roles {list(options)}, but the shards hold "
                    f"{roles}; rebuild the shards with one of those roles (PreprocessConfig.channels)"
                )
            chosen.append(pick)
        return tuple(chosen)


NORMALIZATIONS = ("uv", "robust")
SlotsFn = Callable[[Any], Sequence[Sequence[str]]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Builder
    config_class: type
    channels: ChannelSlots | SlotsFn
    description: str = ""
    normalization: str = "uv"
    trained_in_parts: bool = False  # parts come from separate runs through model.load_part(part, state_dict)
    masked_count: Callable[[Any], int] | None = None  # config -> units a pre-training view masks; None: no masking

    def make_config(self, preset: str = "paper", overrides: Mapping[str, Any] | None = None,
                    fitted: Mapping[str, Any] | None = None) -> Any:
        """The config of preset `preset`, with the run's `fitted` fields (seq_len, n_classes: applied where the
        class has them) and then `overrides` (each must be a field of the class)."""
        overrides = dict(overrides or {})
        known = {f.name for f in fields(self.config_class)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"model {self.name} has no config fields {unknown}; known: {sorted(known)}")
        changes = {k: v for k, v in {**(fitted or {}), **overrides}.items() if k in known}
        return replace(self.config_class.preset(preset), **changes)

    def slots_for(self, config: Any | None = None) -> ChannelSlots:
        """The channel slots of this model, for `config` when they depend on it (default config if None)."""
        if isinstance(self.channels, ChannelSlots):
            return self.channels
        return ChannelSlots(tuple(tuple(s) for s in self.channels(config if config is not None else self.config_class())))

    @property
    def required_channels(self) -> tuple[tuple[str, ...], ...]:
        return self.slots_for().slots


_REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(LookupError):
    """A model name that no module registered; the message lists the registered ones."""


def register(
    name: str,
    *,
    config_class: type,
    channels: Sequence[Sequence[str]] | SlotsFn,
    description: str = "",
    normalization: str = "uv",
    trained_in_parts: bool = False,
    masked_count: Callable[[Any], int] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering `builder(config) -> nn.Module` under `name` (lower-case, unique).

    `channels`: the slots, or a function `config -> slots` for models whose inputs are configurable.
    `normalization`: "uv" or "robust"; `trained_in_parts`, `masked_count`: capabilities (module docstring).
    """
    if not is_dataclass(config_class):
        raise TypeError(f"config_class for {name!r} must be a dataclass, got {config_class!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    key = name.lower()

    def decorate(builder: Builder) -> Builder:
        existing = _REGISTRY.get(key)
        if existing is not None and existing.builder.__qualname__ != builder.__qualname__:
            raise ValueError(f"model name {name!r} is already registered by {existing.builder.__module__}")
        slots = channels if callable(channels) else ChannelSlots(tuple(tuple(s) for s in channels))
        _REGISTRY[key] = ModelSpec(key, builder, config_class, slots, description, normalization, trained_in_parts,
                                   masked_count)
        return builder

    return decorate


def _ensure_loaded() -> None:
    # Importing the package imports every model module (their @register calls fill _REGISTRY).
    import distsleep.models  # noqa: F401


def get_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    spec = _REGISTRY.get(name.lower())
    if spec is None:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UnknownModelError(f"unknown model {name!r}; registered models: {known}")
    return spec


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_config_class(name: str) -> type:
    return get_spec(name).config_class


def build_model(name: str, config: Any | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model. `config` may be its config dataclass, a dict of fields, or None (defaults)."""
    spec = get_spec(name)
    cls = spec.config_class
    if config is None:
        config = cls(**overrides)
    elif isinstance(config, Mapping):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        config = cls(**{**config, **overrides})
    elif not isinstance(config, cls):
        raise TypeError(f"model {name!r} takes a {cls.__name__}, got {type(config).__name__}")
    elif overrides:
        config = replace(config, **overrides)
    return spec.builder(config)


def resolve_channels(
    name: str, available: Sequence[str | Mapping[str, Any]], config: Any | None = None
) -> tuple[str, ...]:
    """Channel roles model `name` should load from shards holding `available` (manifest channel list).

    With `config`, the slots are that config's (configurable models), and its `input_channels` (if it has
    one) must match them.
    """
    spec = get_spec(name)
    slots = spec.slots_for(config)
    expected = getattr(config, "input_channels", None)
    if expected is not None and expected != slots.input_channels:
        raise ValueError(
            f"{name} config has input_channels={expected}, but the model is registered for "
            f"{slots.input_channels} channel(s) {list(slots.slots)}"
        )
    return slots.resolve(available, model=name)


def required_channels(name: str, config: Any | None = None) -> tuple[tuple[str, ...], ...]:
    return get_spec(name).slots_for(config).slots


def model_normalization(name: str) -> str:
    """"uv" or "robust": the input scale model `name` is built for."""
    return get_spec(name).normalization
