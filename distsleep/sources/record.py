"""The common in-memory record every reader returns and the rest of the system consumes."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distsleep.errors import ImpossibleValueError
from distsleep.stages import EPOCH_SECONDS, stage_counts

# No recording lasts a week; annotation times beyond this are corrupt, and believing them would build
# per-epoch arrays of billions of entries.
MAX_RECORDING_SECONDS = 7 * 24 * 3600.0


def checked_seconds(path: str | Path, value: float, what: str, duration: bool = False) -> float:
    """`value` (seconds) if it is finite, within a week and (durations) not negative; else ImpossibleValueError
    naming the file, the value and what it is."""
    if not math.isfinite(value) or abs(value) > MAX_RECORDING_SECONDS or (duration and value < 0):
        limit = "between 0 and" if duration else "within ±"
        raise ImpossibleValueError(path, f"{what} is {value:g} s, not a finite time {limit} {MAX_RECORDING_SECONDS:g} s "
                                         "(7 days): the file is corrupt")
    return value


@dataclass
class Channel:
    """One signal at its native sampling rate, in physical units (uV for EEG/EOG/EMG/ECG)."""

    role: str
    label: str  # the label exactly as written in the file
    rate: float  # Hz, from the EDF header
    unit: str
    data: np.ndarray  # float32, shape (n_samples,)

    @property
    def duration(self) -> float:
        return len(self.data) / self.rate


@dataclass(frozen=True)
class Event:
    """A scored event (apnea, hypopnea, desaturation, arousal, ...), times in seconds from recording start."""

    kind: str  # normalised type, e.g. "obstructive_apnea", "hypopnea", "desaturation", "arousal"
    start: float
    duration: float
    label: str = ""  # the concept/name exactly as written in the annotation file
    channel: str = ""  # signal location, when given


@dataclass
class Record:
    record_id: str
    source: str  # "shhs" | "sleep-edf"
    channels: dict[str, Channel]  # by role name
    stages: np.ndarray  # int8 per 30-s epoch: 0..4 (W,N1,N2,N3,REM) or -1 (unscored)
    events: list[Event] = field(default_factory=list)
    start_time: dt.datetime | None = None
    epoch_seconds: float = EPOCH_SECONDS
    metadata: dict = field(default_factory=dict)  # file paths, raw stage codes, trimming applied, ...
    problems: list[str] = field(default_factory=list)  # non-fatal findings worth showing a person

    @property
    def n_epochs(self) -> int:
        return int(len(self.stages))

    def stage_counts(self) -> dict[str, int]:
        return stage_counts(self.stages)

    def event_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event.kind] = counts.get(event.kind, 0) + 1
        return dict(sorted(counts.items()))
