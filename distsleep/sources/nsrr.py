"""NSRR annotation XML (`*-nsrr.xml`, root PSGAnnotation) and Compumedics Profusion XML (`*-profusion.xml`,
root CMPStudyConfig) into one `Annotations` value: a stage per 30-s epoch plus scored events.

Why strict: stage sequences are concatenated with signal epochs downstream; a gap, an overlap or an
unknown stage code silently shifts or corrupts every label after it, so they raise `AnnotationError`
naming the file. Movement and Unscored become UNSCORED (-1), never Wake (DESIGN.md §2). The files are
parsed with xml.etree, which handles the CRLF line endings and entities of real NSRR files.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distsleep.errors import AnnotationError
from distsleep.sources.record import Event, checked_seconds
from distsleep.stages import EPOCH_SECONDS, RK_CODE_TO_STAGE, stage_counts

NSRR_ROOT = "PSGAnnotation"
PROFUSION_ROOT = "CMPStudyConfig"
_TOLERANCE = 1e-3  # seconds; Start/Duration are written as decimals

# NSRR stage concepts (normalised: lower case, single spaces) -> R&K code.
NSRR_STAGE_CONCEPTS: dict[str, int] = {
    "wake|0": 0,
    "stage 1 sleep|1": 1,
    "stage 2 sleep|2": 2,
    "stage 3 sleep|3": 3,
    "stage 4 sleep|4": 4,
    "rem sleep|5": 5,
    "movement|6": 6,
    "unscored|9": 9,
}

# Event names (NSRR concept before '|', or Profusion Name), normalised -> kind.
_EVENT_KINDS: dict[str, str] = {
    "obstructive apnea": "obstructive_apnea",
    "central apnea": "central_apnea",
    "mixed apnea": "mixed_apnea",
    "hypopnea": "hypopnea",
    "spo2 desaturation": "desaturation",
    "desaturation": "desaturation",
    "spo2 artifact": "spo2_artifact",
    "respiratory artifact": "respiratory_artifact",
}


@dataclass
class Annotations:
    """Stages per epoch (AASM codes, UNSCORED=-1) and events, times in seconds from recording start."""

    path: Path
    format: str  # "nsrr" | "profusion"
    stages: np.ndarray  # int8, one per epoch
    raw_stage_codes: np.ndarray  # int8 R&K codes as written (0-5, 6 movement, 9 unscored)
    events: list[Event] = field(default_factory=list)
    epoch_length: float = EPOCH_SECONDS
    start_clock: dt.time | None = None  # "Recording Start Time" ClockTime (NSRR only)

    @property
    def n_epochs(self) -> int:
        return int(len(self.stages))

    @property
    def duration(self) -> float:
        return self.n_epochs * self.epoch_length

    def stage_counts(self) -> dict[str, int]:
        return stage_counts(self.stages)

    def event_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event.kind] = counts.get(event.kind, 0) + 1
        return dict(sorted(counts.items()))


def event_kind(name: str) -> str:
    """Normalised event kind: the known respiratory/arousal kinds, else a lowercase slug of `name`."""
    key = " ".join(name.strip().lower().split())
    if key in _EVENT_KINDS:
        return _EVENT_KINDS[key]
    if "arousal" in key:  # "Arousal ()", "Arousal (ASDA)", "ASDA arousal", ...
        return "arousal"
    slug = re.sub(r"[^a-z0-9]+", "_", key).strip("_")
    return slug or "unknown"


def stages_from_codes(path: str | Path, codes: np.ndarray) -> np.ndarray:
    """R&K codes -> AASM stage codes; an unknown code raises AnnotationError naming it and its epoch."""
    codes = np.asarray(codes)
    known = np.isin(codes, list(RK_CODE_TO_STAGE))
    if not known.all():
        first = int(np.flatnonzero(~known)[0])
        raise AnnotationError(path, f"unknown sleep stage code {int(codes[first])} at epoch {first} (known: 0-5, 6 movement, 9 unscored)")
    lut = np.full(max(RK_CODE_TO_STAGE) + 1, -1, dtype=np.int8)
    for code, stage in RK_CODE_TO_STAGE.items():
        lut[code] = stage
    return lut[codes.astype(np.int64)]


def read_annotations(path: str | Path) -> Annotations:
    """Parse an NSRR or Profusion XML file, choosing the format from the root element."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "annotation file not found" if not path.exists() else "not a regular file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(path, f"malformed XML: {exc}") from None
    if root.tag == NSRR_ROOT:
        return parse_nsrr(path, root)
    if root.tag == PROFUSION_ROOT:
        return parse_profusion(path, root)
    raise AnnotationError(path, f"unknown annotation format: root element <{root.tag}>, expected <{NSRR_ROOT}> (NSRR) or <{PROFUSION_ROOT}> (Profusion)")


def _float(path: Path, element: ET.Element, tag: str, where: str) -> float:
    """<Start> / <Duration> in seconds: a number (AnnotationError), finite and plausible (ImpossibleValueError)."""
    raw = element.findtext(tag)
    if raw is None or not raw.strip():
        raise AnnotationError(path, f"{where}: missing <{tag}>")
    try:
        value = float(raw)
    except ValueError:
        raise AnnotationError(path, f"{where}: <{tag}> is not a number: {raw.strip()!r}") from None
    return checked_seconds(path, value, f"{where}: <{tag}>", duration=tag == "Duration")


def _epoch_length(path: Path, root: ET.Element) -> float:
    raw = root.findtext("EpochLength")
    if raw is None:
        return EPOCH_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise AnnotationError(path, f"<EpochLength> is not a number: {raw.strip()!r}") from None
    if value != EPOCH_SECONDS:
        raise AnnotationError(path, f"epoch length is {value:g} s; only {EPOCH_SECONDS:g}-s epochs are supported")
    return value


def _clock_time(raw: str | None) -> dt.time | None:
    """NSRR ClockTime "00.00.00 22.15.00" (date part is a placeholder) -> 22:15:00."""
    if not raw:
        return None
    m = re.search(r"(\d{1,2})[.:](\d{1,2})[.:](\d{1,2})\s*$", raw.strip())
    if m is None:
        return None
    hour, minute, second = (int(g) for g in m.groups())
    if hour > 23 or minute > 59 or second > 59:
        return None
    return dt.time(hour, minute, second)


def _is_multiple(value: float, step: float) -> bool:
    return abs(value / step - round(value / step)) * step <= _TOLERANCE


def parse_nsrr(path: str | Path, root: ET.Element) -> Annotations:
    """NSRR PSGAnnotation: run-length stage events that must tile the night from 0 without gaps/overlaps."""
    path = Path(path)
    epoch = _epoch_length(path, root)
    container = root.find("ScoredEvents")
    if container is None:
        raise AnnotationError(path, "no <ScoredEvents> element")
    runs: list[tuple[float, float, int, str]] = []
    events: list[Event] = []
    start_clock: dt.time | None = None
    for i, element in enumerate(container.findall("ScoredEvent")):
        concept = (element.findtext("EventConcept") or "").strip()
        event_type = (element.findtext("EventType") or "").strip()
        where = f"event {i} ({concept or event_type or 'no concept'})"
        if concept == "Recording Start Time":
            start_clock = _clock_time(element.findtext("ClockTime"))
            continue
        start = _float(path, element, "Start", where)
        duration = _float(path, element, "Duration", where)
        if event_type.lower().startswith("stages|"):
            key = " ".join(concept.lower().split())
            if key not in NSRR_STAGE_CONCEPTS:
                known = ", ".join(sorted(NSRR_STAGE_CONCEPTS))
                raise AnnotationError(path, f"unknown stage concept {concept!r} at {start:g} s (known: {known})")
            runs.append((start, duration, NSRR_STAGE_CONCEPTS[key], concept))
            continue
        name = concept.split("|", 1)[0] if concept else event_type.split("|", 1)[0]
        events.append(
            Event(
                kind=event_kind(name),
                start=start,
                duration=duration,
                label=concept,
                channel=(element.findtext("SignalLocation") or "").strip(),
            )
        )
    if not runs:
        raise AnnotationError(path, "no sleep stage events (EventType 'Stages|Stages')")
    runs.sort(key=lambda run: run[0])
    codes: list[int] = []
    expected = 0.0
    for start, duration, code, concept in runs:
        if duration <= 0 or not _is_multiple(duration, epoch):
            raise AnnotationError(path, f"stage {concept!r} at {start:g} s lasts {duration:g} s, not a positive multiple of {epoch:g} s")
        if start > expected + _TOLERANCE:
            raise AnnotationError(path, f"gap in stages: nothing scored from {expected:g} s to {start:g} s")
        if start < expected - _TOLERANCE:
            raise AnnotationError(path, f"overlapping stages: {concept!r} starts at {start:g} s, before the previous stage ends at {expected:g} s")
        codes.extend([code] * int(round(duration / epoch)))
        expected = start + duration
    raw = np.asarray(codes, dtype=np.int8)
    events.sort(key=lambda e: e.start)
    return Annotations(path, "nsrr", stages_from_codes(path, raw), raw, events, epoch, start_clock)


def parse_profusion(path: str | Path, root: ET.Element) -> Annotations:
    """Profusion CMPStudyConfig: one <SleepStage> integer per epoch, events under <ScoredEvents>."""
    path = Path(path)
    epoch = _epoch_length(path, root)
    container = root.find("SleepStages")
    values = [] if container is None else [s.text for s in container.findall("SleepStage")]
    if not values:
        raise AnnotationError(path, "no sleep stages (<SleepStages>/<SleepStage> is empty or missing)")
    codes = np.empty(len(values), dtype=np.int64)
    for i, text in enumerate(values):
        try:
            codes[i] = int((text or "").strip())
        except ValueError:
            raise AnnotationError(path, f"sleep stage at epoch {i} is not an integer: {text!r}") from None
    stages = stages_from_codes(path, codes)
    events: list[Event] = []
    scored = root.find("ScoredEvents")
    for i, element in enumerate([] if scored is None else scored.findall("ScoredEvent")):
        name = (element.findtext("Name") or "").strip()
        where = f"event {i} ({name or 'no name'})"
        events.append(
            Event(
                kind=event_kind(name),
                start=_float(path, element, "Start", where),
                duration=_float(path, element, "Duration", where),
                label=name,
                channel=(element.findtext("Input") or "").strip(),
            )
        )
    events.sort(key=lambda e: e.start)
    return Annotations(path, "profusion", stages, codes.astype(np.int8), events, epoch, None)
