"""Small real EDF / XML files for tests: written with edfio (an independent EDF writer) or by hand, and
corrupted byte-wise where a test needs a broken file. Nothing here mocks the readers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import edfio
import numpy as np

# (name, width) of the per-signal header fields, in file order (EDF spec).
SIGNAL_FIELDS = (
    ("label", 16),
    ("transducer", 80),
    ("unit", 8),
    ("physical_min", 8),
    ("physical_max", 8),
    ("digital_min", 8),
    ("digital_max", 8),
    ("prefiltering", 80),
    ("samples_per_record", 8),
    ("reserved", 32),
)
FIXED_FIELDS = {  # name: (offset, width) in the 256-byte fixed header
    "version": (0, 8),
    "start_date": (168, 8),
    "start_time": (176, 8),
    "header_bytes": (184, 8),
    "reserved": (192, 44),
    "n_records": (236, 8),
    "record_duration": (244, 8),
    "n_signals": (252, 4),
}


def signal(label: str, rate: float, data: np.ndarray, unit: str = "uV", physical_range: tuple[float, float] | None = None) -> edfio.EdfSignal:
    if physical_range is None:
        bound = float(np.max(np.abs(data))) * 1.1 + 1.0
        physical_range = (-bound, bound)
    return edfio.EdfSignal(np.asarray(data, dtype=np.float64), rate, label=label, physical_dimension=unit, physical_range=physical_range)


def write_edf(
    path: Path,
    signals: Sequence[edfio.EdfSignal],
    record_duration: float = 1.0,
    start: dt.datetime = dt.datetime(1985, 1, 1, 22, 15, 0),
    annotations: Sequence[tuple[float, float, str]] | None = None,
) -> Path:
    edf = edfio.Edf(
        list(signals),
        starttime=start.time(),
        recording=edfio.Recording(startdate=start.date()),
        data_record_duration=record_duration if signals else None,
        annotations=[edfio.EdfAnnotation(o, d, t) for o, d, t in annotations] if annotations is not None else None,
    )
    edf.write(path)
    return path


def patch_fixed(path: Path, name: str, value: str) -> None:
    offset, width = FIXED_FIELDS[name]
    _patch(path, offset, width, value)


def patch_signal(path: Path, index: int, name: str, value: str) -> None:
    with open(path, "rb") as fh:
        n_signals = int(fh.read(256)[252:256])
    offset = 256
    for field_name, width in SIGNAL_FIELDS:
        if field_name == name:
            _patch(path, offset + index * width, width, value)
            return
        offset += n_signals * width
    raise KeyError(name)


def _patch(path: Path, offset: int, width: int, value: str) -> None:
    raw = value.encode("latin-1").ljust(width)
    assert len(raw) == width, (value, width)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(raw)


def truncate(path: Path, n_bytes: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(n_bytes)


def nsrr_xml(
    stages: Sequence[tuple[str, float, float]],
    events: Sequence[tuple[str, str, float, float]] = (),
    clock: str = "00.00.00 22.15.00",
    epoch_length: int = 30,
) -> bytes:
    """An NSRR PSGAnnotation document with CRLF line endings, like the real `*-nsrr.xml` files.

    `stages`: (concept, start, duration); `events`: (event_type, concept, start, duration).
    """
    total = max((s + d for _, s, d in stages), default=0.0)
    lines = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>',
        "<PSGAnnotation>",
        "<SoftwareVersion>Compumedics</SoftwareVersion>",
        f"<EpochLength>{epoch_length}</EpochLength>",
        "<ScoredEvents>",
        "<ScoredEvent>",
        "<EventType/>",
        "<EventConcept>Recording Start Time</EventConcept>",
        "<Start>0</Start>",
        f"<Duration>{total:.1f}</Duration>",
        f"<ClockTime>{clock}</ClockTime>",
        "</ScoredEvent>",
    ]
    items = [(s, "Stages|Stages", c, s, d, "") for c, s, d in stages]
    items += [(s, t, c, s, d, "SaO2" if "SpO2" in c else "ABDO RES") for t, c, s, d in events]
    for _, event_type, concept, start, duration, location in sorted(items, key=lambda x: x[0]):
        lines += [
            "<ScoredEvent>",
            f"<EventType>{event_type}</EventType>",
            f"<EventConcept>{concept}</EventConcept>",
            f"<Start>{start:.1f}</Start>",
            f"<Duration>{duration:.1f}</Duration>",
        ]
        if location:
            lines.append(f"<SignalLocation>{location}</SignalLocation>")
        lines.append("</ScoredEvent>")
    lines += ["</ScoredEvents>", "</PSGAnnotation>", ""]
    return "\r\n".join(lines).encode("utf-8")
