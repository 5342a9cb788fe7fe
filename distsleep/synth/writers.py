"""Writers for one synthetic night: an SHHS1-layout EDF (via edfio, a real EDF writer), NSRR XML and
Compumedics Profusion XML, each written to a temporary file in the target folder and renamed into place
so that an interrupted run never leaves a half-written file under its final name."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
import xml.etree.ElementTree as ET
from pathlib import Path

import edfio
import numpy as np

from distsleep.atomic import atomic_path
from distsleep.stages import EPOCH_SECONDS
from distsleep.synth.night import SHHS1_SIGNALS, SyntheticNight

# SHHS de-identified recordings all carry this start date.
SHHS_START_DATE = dt.date(1985, 1, 1)

NSRR_STAGE_CONCEPT = {0: "Wake|0", 1: "Stage 1 sleep|1", 2: "Stage 2 sleep|2", 3: "Stage 3 sleep|3",
                      4: "Stage 4 sleep|4", 5: "REM sleep|5", 6: "Movement|6", 9: "Unscored|9"}
NSRR_RESPIRATORY_CONCEPT = {"obstructive_apnea": "Obstructive apnea|Obstructive Apnea",
                            "central_apnea": "Central apnea|Central Apnea",
                            "mixed_apnea": "Mixed apnea|Mixed Apnea",
                            "hypopnea": "Hypopnea|Hypopnea"}
PROFUSION_NAME = {"obstructive_apnea": "Obstructive Apnea", "central_apnea": "Central Apnea",
                  "mixed_apnea": "Mixed Apnea", "hypopnea": "Hypopnea"}


def write_edf(night: SyntheticNight, path: Path, start_clock: dt.time,
              labels: Mapping[str, str] | None = None) -> None:
    """The night in the SHHS1 layout; `labels` (SHHS1 label -> label written) keeps only the signals it names,
    relabelled, in its order: how tests write another cohort's montage (MESA's EEG1/EEG3, ...)."""
    specs = SHHS1_SIGNALS if labels is None else [next(s for s in SHHS1_SIGNALS if s.label == k) for k in labels]
    signals = []
    for spec in specs:
        data = np.clip(night.signals[spec.label].astype(np.float64), *spec.physical_range)
        signals.append(edfio.EdfSignal(
            data, spec.rate, label=spec.label if labels is None else labels[spec.label], transducer_type=spec.transducer,
            physical_dimension=spec.unit, physical_range=spec.physical_range, prefiltering=spec.prefiltering,
        ))
    edf = edfio.Edf(
        signals,
        patient=edfio.Patient(code=night.record_id),
        recording=edfio.Recording(startdate=SHHS_START_DATE, additional=("distsleep-synthetic",)),
        starttime=start_clock,
        data_record_duration=1.0,
    )
    with atomic_path(path) as tmp:
        edf.write(tmp)


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def _stage_runs(codes: np.ndarray) -> list[tuple[int, int, int]]:
    """(code, first epoch, n epochs) runs of equal stage codes."""
    runs, start = [], 0
    for i in range(1, len(codes) + 1):
        if i == len(codes) or codes[i] != codes[start]:
            runs.append((int(codes[start]), start, i - start))
            start = i
    return runs


def _fmt(seconds: float) -> str:
    return f"{seconds:.1f}"


def _nsrr_event(parent: ET.Element, event_type: str, concept: str, start: float, duration: float,
                location: str | None = None) -> None:
    event = _sub(parent, "ScoredEvent")
    _sub(event, "EventType", event_type)
    _sub(event, "EventConcept", concept)
    _sub(event, "Start", _fmt(start))
    _sub(event, "Duration", _fmt(duration))
    if location:
        _sub(event, "SignalLocation", location)


def _scored_events(night: SyntheticNight) -> list[tuple[float, str, float, str]]:
    """(start, kind, duration, input channel) of every non-stage event, in time order."""
    events = [(start, kind, duration, "ABDO RES") for kind, start, duration in night.events.respiratory]
    events += [(start, "desaturation", duration, "SaO2") for start, duration, _ in night.events.desaturations]
    events += [(start, "arousal", duration, "EEG") for start, duration in night.events.arousals]
    return sorted(events)


def write_nsrr_xml(night: SyntheticNight, path: Path, start_clock: dt.time) -> None:
    root = ET.Element("PSGAnnotation")
    _sub(root, "SoftwareVersion", "Compumedics")
    _sub(root, "EpochLength", str(int(EPOCH_SECONDS)))
    scored = _sub(root, "ScoredEvents")
    start_event = _sub(scored, "ScoredEvent")
    _sub(start_event, "EventType")
    _sub(start_event, "EventConcept", "Recording Start Time")
    _sub(start_event, "Start", "0")
    _sub(start_event, "Duration", _fmt(night.duration))
    _sub(start_event, "ClockTime", "00.00.00 " + start_clock.strftime("%H.%M.%S"))
    items: list[tuple[float, int, callable]] = []
    for code, first, count in _stage_runs(night.rk_stages):
        items.append((first * EPOCH_SECONDS, 0, lambda p, c=code, f=first, n=count: _nsrr_event(
            p, "Stages|Stages", NSRR_STAGE_CONCEPT[c], f * EPOCH_SECONDS, n * EPOCH_SECONDS)))
    for start, kind, duration, location in _scored_events(night):
        if kind in NSRR_RESPIRATORY_CONCEPT:
            event_type, concept = "Respiratory|Respiratory", NSRR_RESPIRATORY_CONCEPT[kind]
        elif kind == "desaturation":
            event_type, concept = "Respiratory|Respiratory", "SpO2 desaturation|SpO2 desaturation"
        else:
            event_type, concept = "Arousals|Arousals", "Arousal|Arousal ()"
        items.append((start, 1, lambda p, t=event_type, c=concept, s=start, d=duration, loc=location:
                      _nsrr_event(p, t, c, s, d, loc)))
    for _, _, add in sorted(items, key=lambda item: (item[0], item[1])):
        add(scored)
    ET.indent(root, space="")
    text = '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n' + ET.tostring(root, encoding="unicode")
    with atomic_path(path) as tmp:
        # NSRR exports use Windows line endings.
        tmp.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))


def write_profusion_xml(night: SyntheticNight, path: Path) -> None:
    root = ET.Element("CMPStudyConfig")
    _sub(root, "EpochLength", str(int(EPOCH_SECONDS)))
    scored = _sub(root, "ScoredEvents")
    for start, kind, duration, location in _scored_events(night):
        name = PROFUSION_NAME.get(kind, "SpO2 desaturation" if kind == "desaturation" else "Arousal ()")
        event = _sub(scored, "ScoredEvent")
        _sub(event, "Name", name)
        _sub(event, "Start", _fmt(start))
        _sub(event, "Duration", _fmt(duration))
        _sub(event, "Input", location)
    stages = _sub(root, "SleepStages")
    for code in night.rk_stages:
        _sub(stages, "SleepStage", str(int(code)))
    text = '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
