"""`inspect_recording` / `format_report`: the report contract on real and synthetic recordings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distsleep.inspection import REPORT_KEYS, format_report, inspect_recording
from edf_factory import nsrr_xml, patch_signal, signal, write_edf

CHANNEL_KEYS = {"label", "role", "rate", "unit", "duration_s", "samples"}


@pytest.mark.realdata
def test_short_psg_with_hypnogram(shared_data):
    folder = shared_data / "sleep-edf"
    report = inspect_recording(folder / "short_psg.edf", folder / "SC4001EC-Hypnogram.edf")
    assert tuple(report) == REPORT_KEYS == ("file", "source", "channels", "duration_s", "stages", "events", "problems", "notes")
    assert json.loads(json.dumps(report)) == report  # JSON-ready as is
    assert report["file"].endswith("short_psg.edf") and report["source"] == "sleep-edf"
    assert report["duration_s"] == 300.0
    assert [(c["label"], c["role"], c["rate"], c["samples"]) for c in report["channels"]] == [
        ("EEG Fpz-Cz", "eeg_fpz_cz", 100.0, 30000),
        ("EEG Pz-Oz", "eeg_pz_oz", 100.0, 30000),
        ("EOG horizontal", "eog", 100.0, 30000),
        ("Resp oro-nasal", "resp", 1.0, 300),
        ("EMG submental", "emg", 1.0, 300),
        ("Temp rectal", "temp", 1.0, 300),
        ("Event marker", "event", 1.0, 300),
    ]
    for channel in report["channels"]:
        assert set(channel) == CHANNEL_KEYS and channel["duration_s"] == 300.0
    assert report["channels"][0]["unit"] == "uV" and report["channels"][5]["unit"] == "DegC"
    assert report["stages"] == {"W": 10, "N1": 0, "N2": 0, "N3": 0, "REM": 0, "unscored": 0}
    assert report["events"] == {}
    assert report["problems"] == []
    assert report["notes"] == ["hypnogram covers 2880 epochs, signal has 10: 2870 epochs past the signal end are ignored"]

    text = format_report(report)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("label"))
    eeg = next(line for line in lines if line.startswith("EEG Fpz-Cz"))
    temp = next(line for line in lines if line.startswith("Temp rectal"))
    # columns aligned: the role column starts at the same offset in header and rows
    assert header.index("role") == eeg.index("eeg_fpz_cz") == temp.index("temp")
    assert "source:   sleep-edf" in text and "2870 epochs past the signal end" in text
    assert any(line.split()[:2] == ["W", "10"] for line in lines)


@pytest.mark.realdata
def test_without_annotations(shared_data):
    report = inspect_recording(shared_data / "sleep-edf" / "short_psg.edf")
    assert report["stages"] is None and report["events"] is None and report["problems"] == []
    assert "(no annotations)" in format_report(report) and "problems: none" in format_report(report)


def _shhs_like(path, labels=("EEG(sec)", "EEG", "SaO2"), seconds=90):
    rates = {"EEG(sec)": 125, "EEG": 125, "SaO2": 1}
    sigs = [signal(label, rates[label], np.zeros(seconds * rates[label]), "%" if label == "SaO2" else "uV", (0, 100) if label == "SaO2" else (-125, 125)) for label in labels]
    return write_edf(path, sigs)


def test_shhs_missing_primary_eeg_and_bad_physical_range(tmp_path):
    edf = _shhs_like(tmp_path / "shhs1-200010.edf", labels=("EEG(sec)", "SaO2"))
    patch_signal(edf, 1, "physical_max", "0")
    xml = tmp_path / "shhs1-200010-nsrr.xml"
    xml.write_bytes(nsrr_xml([("Wake|0", 0, 30), ("Stage 2 sleep|2", 30, 60)], [("Arousals|Arousals", "Arousal|Arousal ()", 40.0, 5.0)]))
    report = inspect_recording(edf, xml)
    assert report["source"] == "shhs"
    assert [(c["label"], c["role"], c["rate"]) for c in report["channels"]] == [("EEG(sec)", "eeg_c3", 125.0), ("SaO2", "sao2", 1.0)]
    assert report["problems"] == [
        "primary EEG C4-A1 (label 'EEG') missing",
        "signal 'SaO2' has physical minimum == physical maximum (0)",
    ]
    assert report["stages"] == {"W": 1, "N1": 0, "N2": 2, "N3": 0, "REM": 0, "unscored": 0}
    assert report["events"] == {"arousal": 1}


def test_shhs_length_mismatch_and_broken_xml_are_reported(tmp_path):
    edf = _shhs_like(tmp_path / "shhs1-200011.edf")
    long_xml = tmp_path / "long.xml"
    long_xml.write_bytes(nsrr_xml([("Wake|0", 0, 180)]))
    report = inspect_recording(edf, long_xml)
    assert report["problems"] == ["annotations have 6 epochs, signal has 3: length mismatch of 3 epochs (loading fails)"]
    broken = tmp_path / "broken.xml"
    broken.write_text("<PSGAnnotation><ScoredEvents>")
    report = inspect_recording(edf, broken)
    assert report["stages"] is None and len(report["problems"]) == 1
    assert "broken.xml: malformed XML" in report["problems"][0]


@pytest.mark.parametrize("duration, shown", [(6e8, "6e+08"), (float("inf"), "inf"), (float("nan"), "nan")])
def test_impossible_annotation_times_are_errors_not_problems(tmp_path, capsys, duration, shown):
    """A stage or event lasting years, forever or NaN seconds: exit 2 naming the file, never a traceback or a
    per-epoch list of millions of entries."""
    from distsleep.cli import main

    edf = _shhs_like(tmp_path / "shhs1-200012.edf")
    xml = tmp_path / "shhs1-200012-nsrr.xml"
    xml.write_bytes(nsrr_xml([("Wake|0", 0, 60), ("Stage 2 sleep|2", 60, duration)]))
    assert main(["inspect", str(edf), "--annotations", str(xml)]) == 2
    err = capsys.readouterr().err
    assert f"{xml}: event 2 (Stage 2 sleep|2): <Duration> is {shown} s, not a finite time" in err, err
    xml.write_bytes(nsrr_xml([("Wake|0", 0, 90)], [("Arousals|Arousals", "Arousal|Arousal ()", 40.0, duration)]))
    assert main(["inspect", str(edf), "--annotations", str(xml)]) == 2
    assert "<Duration>" in capsys.readouterr().err


def test_impossible_edf_annotation_times_and_reversed_digital_range(tmp_path, capsys):
    from distsleep.cli import main

    edf = _shhs_like(tmp_path / "SC4011E0-PSG.edf", labels=("EEG", "SaO2"))
    hypnogram = write_edf(tmp_path / "SC4011EH-Hypnogram.edf", [], annotations=[(0.0, 6e8, "Sleep stage W")])
    assert main(["inspect", str(edf), "--annotations", str(hypnogram)]) == 2
    assert "EDF+ annotation duration is 6e+08 s, not a finite time" in capsys.readouterr().err
    patch_signal(edf, 0, "digital_min", "32767")
    patch_signal(edf, 0, "digital_max", "-32768")
    assert main(["inspect", str(edf)]) == 2
    assert f"{edf}: signal 'EEG' has digital minimum 32767 > digital maximum -32768" in capsys.readouterr().err
