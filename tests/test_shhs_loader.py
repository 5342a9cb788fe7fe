"""SHHS loader on small SHHS-shaped EDFs written with edfio plus NSRR XML written by hand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from distsleep.errors import LengthMismatchError, MissingChannelError
from distsleep.sources.shhs import find_shhs_pairs, load_shhs_record
from distsleep.stages import N2, REM, UNSCORED, W
from edf_factory import nsrr_xml, signal, write_edf

SECONDS = 300  # 10 epochs
START = dt.datetime(1985, 1, 1, 22, 15, 0)


def _sine(rate: float, freq: float, amplitude: float, seconds: int = SECONDS) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def _shhs_edf(path, labels=("EEG(sec)", "EEG", "ECG", "EOG(L)", "SaO2"), seconds=SECONDS):
    makers = {
        "EEG(sec)": lambda: signal("EEG(sec)", 125, _sine(125, 5, 20, seconds), "uV", (-125, 125)),
        "EEG": lambda: signal("EEG", 125, _sine(125, 10, 40, seconds), "uV", (-125, 125)),
        "ECG": lambda: signal("ECG", 250, _sine(250, 1.2, 1.0, seconds), "mV", (-1.25, 1.25)),
        "EOG(L)": lambda: signal("EOG(L)", 50, _sine(50, 0.5, 60, seconds), "uV", (-125, 125)),
        "SaO2": lambda: signal("SaO2", 1, np.full(seconds, 96.0), "%", (0, 100)),
    }
    return write_edf(path, [makers[label]() for label in labels], record_duration=1.0, start=START)


def _xml(path, n_epochs: int, clock="00.00.00 22.15.00"):
    stages = [("Wake|0", 0, 60), ("Stage 2 sleep|2", 60, 120), ("REM sleep|5", 180, 60), ("Movement|6", 240, 30)]
    stages.append(("Wake|0", 270, (n_epochs - 9) * 30))
    events = [("Respiratory|Respiratory", "Hypopnea|Hypopnea", 100.0, 15.0), ("Arousals|Arousals", "Arousal|Arousal ()", 200.0, 5.0)]
    path.write_bytes(nsrr_xml(stages, events, clock=clock))
    return path


ALL_ROLES = ("eeg_c4", "eeg_c3", "ecg", "eog_l", "sao2")


def test_loads_roles_at_native_rates(tmp_path):
    edf = _shhs_edf(tmp_path / "shhs1-200001.edf")
    xml = _xml(tmp_path / "shhs1-200001-nsrr.xml", 10)
    record = load_shhs_record(edf, xml, roles=ALL_ROLES)
    assert record.record_id == "shhs1-200001" and record.source == "shhs"
    assert record.start_time == START
    assert {role: ch.rate for role, ch in record.channels.items()} == {"eeg_c4": 125, "eeg_c3": 125, "ecg": 250, "eog_l": 50, "sao2": 1}
    for channel in record.channels.values():
        assert channel.data.dtype == np.float32 and len(channel.data) == 10 * 30 * channel.rate
    # C4-A1 is the label "EEG", never "EEG(sec)": check label and content (10 Hz, 40 uV sine).
    c4, c3 = record.channels["eeg_c4"], record.channels["eeg_c3"]
    assert (c4.label, c3.label) == ("EEG", "EEG(sec)")
    step = 250 / 65535
    np.testing.assert_allclose(c4.data, _sine(125, 10, 40), atol=step)
    np.testing.assert_allclose(c3.data, _sine(125, 5, 20), atol=step)
    ecg = record.channels["ecg"]  # stored in mV, delivered in uV
    assert ecg.unit == "uV"
    np.testing.assert_allclose(ecg.data, _sine(250, 1.2, 1.0) * 1000, atol=2.5 / 65535 * 1000)
    assert record.channels["sao2"].unit == "%"
    assert record.stages.tolist() == [W, W, N2, N2, N2, N2, REM, REM, UNSCORED, W]
    assert record.metadata["raw_stage_codes"].tolist() == [0, 0, 2, 2, 2, 2, 5, 5, 6, 0]
    assert record.event_counts() == {"arousal": 1, "hypopnea": 1}
    assert record.problems == []


def test_default_role_reads_only_c4(tmp_path):
    edf = _shhs_edf(tmp_path / "shhs1-200002.edf")
    record = load_shhs_record(edf, _xml(tmp_path / "a.xml", 10), record_id="custom")
    assert list(record.channels) == ["eeg_c4"] and record.record_id == "custom"


def test_missing_c4_is_not_substituted_by_c3(tmp_path):
    edf = _shhs_edf(tmp_path / "shhs1-200003.edf", labels=("EEG(sec)", "ECG"))
    with pytest.raises(MissingChannelError) as info:
        load_shhs_record(edf, _xml(tmp_path / "a.xml", 10))
    message = str(info.value)
    assert "shhs1-200003.edf" in message and "eeg_c4" in message
    assert "signals present: 'EEG(sec)', 'ECG'" in message
    # C3 itself is fine when asked for.
    assert load_shhs_record(edf, _xml(tmp_path / "a.xml", 10), roles=("eeg_c3",)).channels["eeg_c3"].label == "EEG(sec)"


def test_length_mismatch_over_one_epoch_raises(tmp_path):
    edf = _shhs_edf(tmp_path / "shhs1-200004.edf")
    xml = _xml(tmp_path / "shhs1-200004-nsrr.xml", 12)
    with pytest.raises(LengthMismatchError) as info:
        load_shhs_record(edf, xml)
    message = str(info.value)
    assert "shhs1-200004-nsrr.xml" in message and "12 epochs" in message and "has 10" in message


def test_one_extra_label_epoch_is_truncated(tmp_path):
    edf = _shhs_edf(tmp_path / "shhs1-200005.edf")
    record = load_shhs_record(edf, _xml(tmp_path / "a.xml", 11))
    assert record.n_epochs == 10 and len(record.channels["eeg_c4"].data) == 10 * 30 * 125
    assert record.problems == ["annotations have 11 epochs, signal has 10: truncated both to 10"]


def test_one_missing_label_epoch_truncates_signal(tmp_path):
    edf = _shhs_edf(tmp_path / "shhs1-200006.edf", seconds=330)  # 11 signal epochs, 10 labelled
    record = load_shhs_record(edf, _xml(tmp_path / "a.xml", 10), roles=("eeg_c4", "sao2"))
    assert record.n_epochs == 10
    assert len(record.channels["eeg_c4"].data) == 10 * 30 * 125 and len(record.channels["sao2"].data) == 300
    assert "truncated both to 10" in record.problems[0]


def test_without_annotations_and_clock_mismatch(tmp_path):
    edf = _shhs_edf(tmp_path / "shhs1-200007.edf")
    bare = load_shhs_record(edf)
    assert bare.n_epochs == 10 and (bare.stages == UNSCORED).all()
    assert bare.problems == ["no annotation file: every epoch is unscored"]
    shifted = load_shhs_record(edf, _xml(tmp_path / "a.xml", 10, clock="00.00.00 23.00.00"))
    assert shifted.problems == ["annotation start clock 23:00:00 differs from EDF start time 22:15:00"]


def test_find_shhs_pairs(tmp_path):
    psg = tmp_path / "polysomnography"
    for rid in ("shhs1-200002", "shhs1-200001", "shhs1-200003"):
        (psg / "edfs" / "shhs1").mkdir(parents=True, exist_ok=True)
        (psg / "edfs" / "shhs1" / f"{rid}.edf").touch()
    for folder, name in (("annotations-events-nsrr", "shhs1-200001-nsrr.xml"),
                         ("annotations-events-profusion", "shhs1-200001-profusion.xml"),
                         ("annotations-events-profusion", "shhs1-200002-profusion.xml")):
        (psg / folder / "shhs1").mkdir(parents=True, exist_ok=True)
        (psg / folder / "shhs1" / name).touch()
    pairs = find_shhs_pairs(tmp_path)
    assert [(rid, edf.name, xml.name if xml else None) for rid, edf, xml in pairs] == [
        ("shhs1-200001", "shhs1-200001.edf", "shhs1-200001-nsrr.xml"),
        ("shhs1-200002", "shhs1-200002.edf", "shhs1-200002-profusion.xml"),
        ("shhs1-200003", "shhs1-200003.edf", None),
    ]
    assert find_shhs_pairs(psg) == pairs
    assert find_shhs_pairs(tmp_path / "elsewhere") == []


def test_events_outside_the_kept_epochs_flag_nothing(tmp_path):
    """An event before the recording (a corrupt start), past its end, or in wake trimmed off flags no epoch (a
    negative end once indexed from the array's end and flagged most of the night), and the reader notes it."""
    from distsleep.config import PreprocessConfig
    from distsleep.shards.convert import event_flags, record_to_sample
    from distsleep.sources.record import Event

    edf = _shhs_edf(tmp_path / "shhs1-200009.edf")
    stages = [("Wake|0", 0, 120), ("Stage 2 sleep|2", 120, 60), ("Wake|0", 180, 120)]
    events = [("Respiratory|Respiratory", "Hypopnea|Hypopnea", -300.0, 15.0),  # before the recording
              ("Respiratory|Respiratory", "Hypopnea|Hypopnea", 130.0, 15.0),   # in epoch 4
              ("Respiratory|Respiratory", "Obstructive apnea|Obstructive Apnea", 20.0, 10.0),  # wake, trimmed
              ("Respiratory|Respiratory", "Hypopnea|Hypopnea", 400.0, 20.0)]  # past the end
    (tmp_path / "a.xml").write_bytes(nsrr_xml(stages, events))
    record = load_shhs_record(edf, tmp_path / "a.xml")
    assert record.problems == ["2 scored event(s) lie outside the recording's 10 epochs (e.g. hypopnea at -300 s): "
                               "they flag no epoch"]
    sample = record_to_sample(record, PreprocessConfig(), edf)
    assert sample.events[:, 1].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0] and sample.events[:, 0].tolist()[0] == 1
    # Trimmed to 1 minute of wake around the sleep epochs 4-5: epochs 2..7 kept; the apnea at 20 s is cut off.
    trimmed = record_to_sample(record, PreprocessConfig(trim_wake_minutes=1), edf)
    assert trimmed.meta["kept_epochs"] == [2, 8]
    assert trimmed.events[:, 0].tolist() == [0] * 6 and trimmed.events[:, 1].tolist() == [0, 0, 1, 0, 0, 0]
    assert event_flags([Event("hypopnea", -300.0, 15.0)], 10, 30.0).sum() == 0
