"""Helpers shared by the per-source loaders: read channels by role, cut signals to whole epochs.

Kept apart from edf.py so that the EDF reader stays role-agnostic (labels and physical units only) while
every loader applies the same rules: exact-alias role resolution with no substitution (per cohort, with a
user channel map first: distsleep.sources.channel_map), ExG in microvolts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distsleep.sources.channel_map import ChannelMap, resolve_labels
from distsleep.sources.edf import EdfHeader, is_voltage_unit, read_signals, to_microvolts
from distsleep.sources.montages import role_unit
from distsleep.sources.record import Channel

_EPSILON = 1e-6


def resolve_required(header: EdfHeader, source: str | None, roles: Sequence[str],
                     channel_map: ChannelMap | None = None) -> dict[str, str]:
    """role -> label for every requested role of a `source` (cohort; None: unknown) recording, the channel map
    first. A missing role raises MissingChannelError (no fallback), a role that only a cohort-dependent label
    could carry AmbiguousChannelError (see distsleep.sources.channel_map)."""
    labels = [s.label for s in header.signals if not s.is_annotation]
    return resolve_labels(header.path, labels, roles, source, channel_map)


def read_role_channels(header: EdfHeader, source: str | None, roles: Sequence[str],
                       channel_map: ChannelMap | None = None) -> tuple[dict[str, Channel], list[str]]:
    """Read the requested roles at their native rates. Returns (channels by role, problems noted)."""
    labels = resolve_required(header, source, roles, channel_map)
    data = read_signals(header.path, list(dict.fromkeys(labels.values())), header)
    channels: dict[str, Channel] = {}
    problems: list[str] = []
    for role_name, label in labels.items():
        signal = header.signal(label)
        samples, unit = data[label], signal.unit
        if role_unit(role_name) == "uV":
            if is_voltage_unit(unit):
                samples, unit = to_microvolts(samples, unit), "uV"
            else:
                problems.append(f"channel {label!r} ({role_name}) has unit {unit!r}, not a voltage; samples left as read")
        channels[role_name] = Channel(role=role_name, label=label, rate=signal.rate, unit=unit, data=samples)
    return channels, problems


def signal_epochs(duration: float, epoch_seconds: float) -> int:
    """Whole epochs in `duration` seconds (a trailing partial epoch does not count)."""
    return int(np.floor(duration / epoch_seconds + _EPSILON))


def slice_channels(channels: dict[str, Channel], start_s: float, stop_s: float) -> dict[str, Channel]:
    """Cut every channel to [start_s, stop_s) seconds, sample-exact at each channel's own rate."""
    out: dict[str, Channel] = {}
    for role, channel in channels.items():
        first = int(round(start_s * channel.rate))
        last = int(round(stop_s * channel.rate))
        out[role] = Channel(channel.role, channel.label, channel.rate, channel.unit, channel.data[first:last])
    return out
