"""Model registry: models plug in by name, each with its config dataclass and the channels it needs.

The trainer only knows names: `build_model("mc2sleepnet", config)`. A model module registers a builder
`(config) -> nn.Module` with `@register(name, config_class=..., channels=...)`; importing
`distsleep.models` imports every model module, so the registry is filled on first use. Channel needs are
declared as *slots*: one slot per input channel the model consumes, each slot listing the channel roles
(distsleep.sources.channels) that may fill it, in order of preference. MC²SleepNet has one slot,
("eeg_c4", "eeg_fpz_cz"): the staging EEG of SHHS or of Sleep-EDF. `resolve_channels` turns a shard
manifest's channel list into the roles to load (for LoaderConfig.channels), or raises a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
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


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Builder
    config_class: type
    channels: ChannelSlots
    description: str = ""

    @property
    def required_channels(self) -> tuple[tuple[str, ...], ...]:
        return self.channels.slots


_REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(LookupError):
    """A model name that no module registered; the message lists the registered ones."""


def register(
    name: str,
    *,
    config_class: type,
    channels: Sequence[Sequence[str]],
    description: str = "",
) -> Callable[[Builder], Builder]:
    """Decorator registering `builder(config) -> nn.Module` under `name` (lower-case, unique)."""
    if not is_dataclass(config_class):
        raise TypeError(f"config_class for {name!r} must be a dataclass, got {config_class!r}")
    key = name.lower()

    def decorate(builder: Builder) -> Builder:
        existing = _REGISTRY.get(key)
        if existing is not None and existing.builder.__qualname__ != builder.__qualname__:
            raise ValueError(f"model name {name!r} is already registered by {existing.builder.__module__}")
        slots = ChannelSlots(tuple(tuple(s) for s in channels))
        _REGISTRY[key] = ModelSpec(key, builder, config_class, slots, description)
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
        from dataclasses import replace

        config = replace(config, **overrides)
    return spec.builder(config)


def resolve_channels(
    name: str, available: Sequence[str | Mapping[str, Any]], config: Any | None = None
) -> tuple[str, ...]:
    """Channel roles model `name` should load from shards holding `available` (manifest channel list).

    With `config`, also checks that its `input_channels` (if it has one) matches the model's slots.
    """
    spec = get_spec(name)
    expected = getattr(config, "input_channels", None)
    if expected is not None and expected != spec.channels.input_channels:
        raise ValueError(
            f"{name} config has input_channels={expected}, but the model is registered for "
            f"{spec.channels.input_channels} channel(s) {list(spec.required_channels)}"
        )
    return spec.channels.resolve(available, model=name)


def required_channels(name: str) -> tuple[tuple[str, ...], ...]:
    return get_spec(name).required_channels
