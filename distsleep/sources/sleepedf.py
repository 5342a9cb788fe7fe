"""Sleep-EDF (PhysioNet sleep-cassette) recordings: `*-PSG.edf` + `*-Hypnogram.edf` -> `Record`.

Why alignment by onset: the hypnogram is a separate EDF+ file with its own start time and its annotations
run past the end of the PSG (SC4001: 86,400 s of labels for 79,500 s of signal, DESIGN.md §3). Labels are
placed on the PSG's 30-s epoch grid by onset relative to the PSG start, epochs before the first annotation
(or in a gap) are UNSCORED, and everything after the last whole signal epoch is dropped. Movement time and
'?' are UNSCORED, never Wake.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distsleep.errors import AnnotationError
from distsleep.sources.channel_map import ChannelMap
from distsleep.sources.edf import EdfHeader, read_annotations, read_header
from distsleep.sources.loading import read_role_channels, signal_epochs, slice_channels
from distsleep.sources.nsrr import event_kind, stages_from_codes
from distsleep.sources.record import Event, Record
from distsleep.stages import EPOCH_SECONDS, N1, REM

SOURCE = "sleep-edf"
UNSCORED_CODE = 9
_TOLERANCE = 1e-3

# Hypnogram annotation text -> R&K code (as in Profusion/NSRR: 5 REM, 6 movement, 9 unscored).
HYPNOGRAM_CODES: dict[str, int] = {
    "Sleep stage W": 0,
    "Sleep stage 1": 1,
    "Sleep stage 2": 2,
    "Sleep stage 3": 3,
    "Sleep stage 4": 4,
    "Sleep stage R": 5,
    "Movement time": 6,
    "Sleep stage ?": 9,
}

ClockLike = float | int | str | dt.time | dt.datetime


@dataclass
class Hypnogram:
    """R&K codes on the PSG's epoch grid from epoch 0 to the end of the last stage annotation."""

    path: Path
    raw_stage_codes: np.ndarray  # int8; 9 where nothing (or '?') was scored
    offset_s: float  # hypnogram start time minus PSG start time
    first_scored_epoch: int
    events: list[Event] = field(default_factory=list)  # non-stage annotations, seconds from PSG start

    @property
    def n_epochs(self) -> int:
        return int(len(self.raw_stage_codes))


def _epoch_index(path: Path, seconds: float, what: str) -> int:
    index = seconds / EPOCH_SECONDS
    if abs(index - round(index)) * EPOCH_SECONDS > _TOLERANCE:
        raise AnnotationError(path, f"{what} at {seconds:g} s from the PSG start is not on a {EPOCH_SECONDS:g}-s epoch boundary")
    return int(round(index))


def read_hypnogram(hypnogram_path: str | Path, psg_start: dt.datetime | None = None) -> Hypnogram:
    """Parse a Sleep-EDF hypnogram into per-epoch R&K codes aligned on `psg_start` (default: its own start).

    Raises AnnotationError for unknown stage texts, stage annotations off the 30-s grid and overlaps.
    """
    path = Path(hypnogram_path)
    header = read_header(path)
    offset = 0.0 if psg_start is None else (header.start_time - psg_start).total_seconds()
    stage_spans: list[tuple[int, int, int]] = []
    events: list[Event] = []
    for onset, duration, text in read_annotations(path, header):
        start_s = onset + offset
        if text in HYPNOGRAM_CODES:
            first = _epoch_index(path, start_s, f"stage annotation {text!r}")
            stop = _epoch_index(path, start_s + duration, f"end of stage annotation {text!r}")
            if stop <= first:
                raise AnnotationError(path, f"stage annotation {text!r} at {onset:g} s has duration {duration:g} s")
            stage_spans.append((first, stop, HYPNOGRAM_CODES[text]))
        elif text.lower().startswith("sleep stage"):
            raise AnnotationError(path, f"unknown sleep stage annotation {text!r} at {onset:g} s (known: {', '.join(HYPNOGRAM_CODES)})")
        else:
            events.append(Event(kind=event_kind(text), start=start_s, duration=duration, label=text))
    if not stage_spans:
        raise AnnotationError(path, "no sleep stage annotations ('Sleep stage W/1/2/3/4/R/?', 'Movement time')")
    end = max(stop for _, stop, _ in stage_spans)
    codes = np.full(max(end, 0), UNSCORED_CODE, dtype=np.int8)
    assigned = np.zeros(len(codes), dtype=bool)
    for first, stop, code in sorted(stage_spans):
        lo, hi = max(first, 0), max(stop, 0)  # a hypnogram that starts before the PSG loses its head
        if assigned[lo:hi].any():
            raise AnnotationError(path, f"overlapping stage annotations around {lo * EPOCH_SECONDS:g} s from the PSG start")
        codes[lo:hi] = code
        assigned[lo:hi] = True
    first_scored = int(np.flatnonzero(assigned)[0]) if assigned.any() else len(codes)
    return Hypnogram(path, codes, offset, first_scored, sorted(events, key=lambda e: e.start))


def _seconds_from_start(value: ClockLike, start: dt.datetime, name: str) -> float:
    """Seconds from the PSG start: numbers are taken as such; datetimes are absolute; clock times (time
    objects or 'HH:MM[:SS[.fff]]') are the first occurrence at or after the start."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be seconds, a clock time or a datetime, not {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        return (value - start).total_seconds()
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?\s*", value)
        if m is None:
            raise ValueError(f"{name} {value!r} is not a clock time HH:MM[:SS[.fff]]")
        hour, minute = int(m[1]), int(m[2])
        second = int(m[3] or 0)
        micro = int(((m[4] or "0") + "000000")[:6])
        value = dt.time(hour, minute, second, micro)
    if isinstance(value, dt.time):
        moment = dt.datetime.combine(start.date(), value)
        if moment < start:
            moment += dt.timedelta(days=1)
        return (moment - start).total_seconds()
    raise TypeError(f"{name} must be seconds, a clock time or a datetime, not {type(value).__name__}")


def keep_range(
    stages: np.ndarray,
    start: dt.datetime,
    lights_off: ClockLike | None = None,
    lights_on: ClockLike | None = None,
    trim_wake_minutes: float | None = None,
) -> tuple[int, int, list[str]]:
    """Epoch range [first, stop) to keep, and notes. Pure: used by the loader and by tests.

    Lights: keep the epochs lying entirely between lights-off and lights-on. Wake trimming (applied within
    that range): keep `trim_wake_minutes` of epochs before the first and after the last sleep epoch
    (N1..REM); with no sleep at all nothing is trimmed and a note says so.
    """
    n = len(stages)
    first, stop = 0, n
    notes: list[str] = []
    if lights_off is not None:
        off = _seconds_from_start(lights_off, start, "lights_off")
        first = min(max(int(np.ceil(off / EPOCH_SECONDS - 1e-9)), 0), n)
    if lights_on is not None:
        on = _seconds_from_start(lights_on, start, "lights_on")
        stop = max(min(int(np.floor(on / EPOCH_SECONDS + 1e-9)), n), 0)
    if stop <= first:
        raise ValueError(f"lights-off/on leave no epochs to keep (epochs {first} to {stop} of {n})")
    if trim_wake_minutes is not None:
        if trim_wake_minutes < 0:
            raise ValueError(f"trim_wake_minutes must be >= 0, got {trim_wake_minutes}")
        pad = int(round(trim_wake_minutes * 60 / EPOCH_SECONDS))
        window = stages[first:stop]
        sleep = np.flatnonzero((window >= N1) & (window <= REM))
        if len(sleep) == 0:
            notes.append("no sleep epochs: wake trimming skipped")
        else:
            first, stop = max(first, first + int(sleep[0]) - pad), min(stop, first + int(sleep[-1]) + 1 + pad)
    return first, stop, notes


def load_sleepedf_record(
    psg_path: str | Path,
    hypnogram_path: str | Path,
    roles: Sequence[str] = ("eeg_fpz_cz",),
    lights_off: ClockLike | None = None,
    lights_on: ClockLike | None = None,
    trim_wake_minutes: float | None = None,
    record_id: str | None = None,
    channel_map: ChannelMap | None = None,
) -> Record:
    """Read the requested roles at native rates with stages aligned to the PSG and truncated to it.
    Roles come from `channel_map` first (a user's alias file), then the Sleep-EDF alias table.

    Trimming (lights-off/on, +-N minutes of wake around sleep) cuts signals, stages and events alike and
    is recorded in `record.metadata["kept_epochs"]` (indices into the untrimmed epoch grid) and
    `["kept_seconds"]`; `record.start_time` is the time of the first kept sample.
    """
    psg_path = Path(psg_path)
    header: EdfHeader = read_header(psg_path)
    channels, problems = read_role_channels(header, SOURCE, roles, channel_map)
    hypnogram = read_hypnogram(hypnogram_path, header.start_time)
    n_signal = signal_epochs(header.duration, EPOCH_SECONDS)

    raw = np.full(n_signal, UNSCORED_CODE, dtype=np.int8)
    covered = min(n_signal, hypnogram.n_epochs)
    raw[:covered] = hypnogram.raw_stage_codes[:covered]
    if hypnogram.n_epochs > n_signal:
        problems.append(
            f"hypnogram covers {hypnogram.n_epochs} epochs, signal {n_signal}: "
            f"{hypnogram.n_epochs - n_signal} epochs past the signal end dropped"
        )
    elif hypnogram.n_epochs < n_signal:
        problems.append(f"hypnogram ends at epoch {hypnogram.n_epochs} of {n_signal}: later epochs unscored")
    if hypnogram.first_scored_epoch > 0:
        problems.append(f"first {min(hypnogram.first_scored_epoch, n_signal)} epochs precede the hypnogram: unscored")
    stages = stages_from_codes(hypnogram.path, raw)

    first, stop, notes = keep_range(stages, header.start_time, lights_off, lights_on, trim_wake_minutes)
    problems.extend(notes)
    start_s, stop_s = first * EPOCH_SECONDS, stop * EPOCH_SECONDS
    channels = slice_channels(channels, start_s, stop_s)
    events = [
        Event(e.kind, e.start - start_s, e.duration, e.label, e.channel)
        for e in hypnogram.events
        if start_s <= e.start < stop_s
    ]
    metadata = {
        "psg": str(psg_path),
        "hypnogram": str(hypnogram.path),
        "hypnogram_offset_s": hypnogram.offset_s,
        "signal_epochs": n_signal,
        "hypnogram_epochs": hypnogram.n_epochs,
        "kept_epochs": (first, stop),
        "kept_seconds": (start_s, stop_s),
        "trimming": {"lights_off": lights_off, "lights_on": lights_on, "trim_wake_minutes": trim_wake_minutes},
        "raw_stage_codes": raw[first:stop],
    }
    return Record(
        record_id=record_id or _record_id(psg_path),
        source=SOURCE,
        channels=channels,
        stages=stages[first:stop],
        events=events,
        start_time=header.start_time + dt.timedelta(seconds=start_s),
        epoch_seconds=EPOCH_SECONDS,
        metadata=metadata,
        problems=problems,
    )


def _record_id(psg_path: Path) -> str:
    stem = psg_path.stem
    return stem[: -len("-PSG")] if stem.upper().endswith("-PSG") else stem


def find_sleepedf_pairs(root: str | Path) -> list[tuple[str, Path, Path | None]]:
    """(record_id, psg, hypnogram or None) for every `*-PSG.edf` under `root`, sorted by record id.

    `SC4ssNE0-PSG.edf` pairs with `SC4ssNE?-Hypnogram.edf` in the same folder (the scorer letter varies).
    """
    pairs: list[tuple[str, Path, Path | None]] = []
    for psg in Path(root).rglob("*-PSG.edf"):
        stem = psg.name[: -len("-PSG.edf")]  # SC4001E0
        matches = sorted(psg.parent.glob(f"{stem[:-1]}?-Hypnogram.edf"))
        pairs.append((stem, psg, matches[0] if matches else None))
    pairs.sort(key=lambda pair: pair[0])
    return pairs
