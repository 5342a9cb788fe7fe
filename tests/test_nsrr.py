"""NSRR and Profusion annotation XML: real Profusion fixtures and hand-written NSRR documents."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from distsleep.errors import AnnotationError
from distsleep.sources.nsrr import event_kind, read_annotations
from distsleep.stages import N1, N2, N3, REM, UNSCORED, W
from edf_factory import nsrr_xml


def _raw_counts(ann) -> dict[int, int]:
    codes, counts = np.unique(ann.raw_stage_codes, return_counts=True)
    return {int(c): int(n) for c, n in zip(codes, counts)}


@pytest.mark.realdata
def test_profusion_learn_nsrr01(shared_data):
    ann = read_annotations(shared_data / "nsrr" / "learn-nsrr01-profusion.xml")
    assert ann.format == "profusion" and ann.epoch_length == 30 and ann.start_clock is None
    assert ann.n_epochs == 1364 and ann.stages.dtype == np.int8 and ann.raw_stage_codes.dtype == np.int8
    assert _raw_counts(ann) == {0: 477, 1: 109, 2: 523, 3: 16, 4: 1, 5: 238}
    assert ann.stage_counts() == {"W": 477, "N1": 109, "N2": 523, "N3": 17, "REM": 238, "unscored": 0}
    assert ann.event_counts() == {
        "arousal": 194,
        "desaturation": 254,
        "hypopnea": 361,
        "obstructive_apnea": 37,
        "spo2_artifact": 59,
    }
    first = ann.events[0]
    assert (first.kind, first.start, first.duration, first.label, first.channel) == ("spo2_artifact", 380.0, 4.0, "SpO2 artifact", "SaO2")
    assert all(a.start <= b.start for a, b in zip(ann.events, ann.events[1:]))


@pytest.mark.realdata
def test_profusion_learn_nsrr02(shared_data):
    ann = read_annotations(shared_data / "nsrr" / "learn-nsrr02-profusion.xml")
    assert ann.n_epochs == 1195
    assert _raw_counts(ann) == {0: 480, 1: 11, 2: 399, 3: 185, 5: 120}
    assert ann.stage_counts() == {"W": 480, "N1": 11, "N2": 399, "N3": 185, "REM": 120, "unscored": 0}
    assert ann.event_counts() == {"arousal": 51, "desaturation": 66, "hypopnea": 101, "obstructive_apnea": 5, "spo2_artifact": 34}


def test_nsrr_xml_with_crlf(tmp_path):
    stages = [
        ("Wake|0", 0, 90),
        ("Stage 1 sleep|1", 90, 30),
        ("Stage 2 sleep|2", 120, 60),
        ("Stage 3 sleep|3", 180, 30),
        ("Stage 4 sleep|4", 210, 30),
        ("REM sleep|5", 240, 60),
        ("Movement|6", 300, 30),
        ("Unscored|9", 330, 30),
        ("Wake|0", 360, 30),
    ]
    events = [
        ("Respiratory|Respiratory", "Hypopnea|Hypopnea", 130.5, 18.2),
        ("Respiratory|Respiratory", "Obstructive apnea|Obstructive Apnea", 190.0, 12.0),
        ("Respiratory|Respiratory", "Central apnea|Central Apnea", 195.0, 10.0),
        ("Respiratory|Respiratory", "Mixed apnea|Mixed Apnea", 250.0, 11.0),
        ("Respiratory|Respiratory", "SpO2 desaturation|SpO2 desaturation", 140.0, 20.0),
        ("Respiratory|Respiratory", "SpO2 artifact|SpO2 artifact", 10.0, 5.0),
        ("Arousals|Arousals", "Arousal|Arousal ()", 150.0, 6.0),
        ("Limb Movement|Limb Movement", "Limb movement - left|Limb Movement (Left)", 20.0, 2.0),
    ]
    path = tmp_path / "shhs1-200001-nsrr.xml"
    path.write_bytes(nsrr_xml(stages, events))
    assert b"\r\n" in path.read_bytes()
    ann = read_annotations(path)
    assert ann.format == "nsrr" and ann.start_clock == dt.time(22, 15, 0)
    assert ann.raw_stage_codes.tolist() == [0, 0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 9, 0]
    assert ann.stages.tolist() == [W, W, W, N1, N2, N2, N3, N3, REM, REM, UNSCORED, UNSCORED, W]
    assert ann.event_counts() == {
        "arousal": 1,
        "central_apnea": 1,
        "desaturation": 1,
        "hypopnea": 1,
        "limb_movement_left": 1,
        "mixed_apnea": 1,
        "obstructive_apnea": 1,
        "spo2_artifact": 1,
    }
    hypopnea = next(e for e in ann.events if e.kind == "hypopnea")
    assert (hypopnea.start, hypopnea.duration, hypopnea.label, hypopnea.channel) == (130.5, 18.2, "Hypopnea|Hypopnea", "ABDO RES")


def test_event_kind_slug():
    assert event_kind("Arousal ()") == "arousal"
    assert event_kind("ASDA arousal") == "arousal"
    assert event_kind("Respiratory artifact") == "respiratory_artifact"
    assert event_kind("PLM (Left)") == "plm_left"


def _bad(tmp_path, content: bytes, *fragments):
    path = tmp_path / "bad-nsrr.xml"
    path.write_bytes(content)
    with pytest.raises(AnnotationError) as info:
        read_annotations(path)
    message = str(info.value)
    assert "bad-nsrr.xml" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_stage_concept(tmp_path):
    _bad(tmp_path, nsrr_xml([("Wake|0", 0, 60), ("Stage 5 sleep|7", 60, 30)]), "unknown stage concept", "'Stage 5 sleep|7'")


def test_gap_between_stages(tmp_path):
    _bad(tmp_path, nsrr_xml([("Wake|0", 0, 60), ("Stage 2 sleep|2", 90, 30)]), "gap", "60 s", "90 s")


def test_overlapping_stages(tmp_path):
    _bad(tmp_path, nsrr_xml([("Wake|0", 0, 60), ("Stage 2 sleep|2", 30, 60)]), "overlapping")


def test_stage_not_multiple_of_epoch(tmp_path):
    _bad(tmp_path, nsrr_xml([("Wake|0", 0, 45)]), "not a positive multiple of 30")


def test_no_stages(tmp_path):
    _bad(tmp_path, nsrr_xml([], [("Arousals|Arousals", "Arousal|Arousal ()", 10.0, 5.0)]), "no sleep stage")


def test_malformed_and_unknown_root(tmp_path):
    _bad(tmp_path, nsrr_xml([("Wake|0", 0, 60)])[:-40], "malformed XML")
    _bad(tmp_path, b"<Other><EpochLength>30</EpochLength></Other>", "unknown annotation format", "<Other>")


def test_profusion_unknown_code(tmp_path):
    doc = b"<CMPStudyConfig><EpochLength>30</EpochLength><SleepStages><SleepStage>0</SleepStage><SleepStage>7</SleepStage></SleepStages></CMPStudyConfig>"
    _bad(tmp_path, doc, "unknown sleep stage code 7", "epoch 1")


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="missing.xml: annotation file not found"):
        read_annotations(tmp_path / "missing.xml")
