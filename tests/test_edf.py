"""The NumPy EDF reader against the real Sleep-EDF fixture, MNE, and deliberately broken files."""

from __future__ import annotations

import datetime as dt
import json

import edfio
import mne
import numpy as np
import pytest

from distsleep.errors import EdfFormatError, MissingChannelError
from distsleep.sources.edf import read_annotations, read_header, read_signals, to_microvolts
from edf_factory import patch_fixed, patch_signal, signal, truncate, write_edf


@pytest.fixture(scope="module")
def short_psg(shared_data):
    return shared_data / "sleep-edf" / "short_psg.edf"


@pytest.mark.realdata
def test_header_matches_reference(short_psg):
    reference = json.loads((short_psg.parent / "short_psg_header_reference.json").read_text())
    header = read_header(short_psg)
    assert header.labels == [r["label"] for r in reference]
    for sig, ref in zip(header.signals, reference, strict=True):
        assert sig.label == ref["label"]
        assert sig.transducer == ref["transducer_type"]
        assert sig.unit == ref["physical_dimension"]
        assert sig.physical_min == ref["physical_min"]
        assert sig.physical_max == ref["physical_max"]
        assert sig.digital_min == ref["digital_min"]
        assert sig.digital_max == ref["digital_max"]
        assert sig.prefiltering == ref["prefiltering"]
        assert sig.samples_per_record == ref["samples_per_data_record"]
        assert sig.reserved == ref["reserved"]
        assert sig.rate == ref["sampling_frequency"]
    assert header.n_records == 10 and header.record_duration == 30.0 and header.duration == 300.0
    assert header.start_time == dt.datetime(1989, 4, 24, 16, 13, 0)
    assert not header.is_edf_plus


@pytest.mark.realdata
def test_signals_match_mne_one_channel_at_a_time(short_psg):
    header = read_header(short_psg)
    ours = read_signals(short_psg, header.labels, header)
    for sig in header.signals:
        raw = mne.io.read_raw_edf(short_psg, include=[sig.label], preload=True, verbose="error")
        assert raw.info["sfreq"] == sig.rate
        theirs = raw.get_data()[0] * (1e6 if sig.unit == "uV" else 1.0)  # MNE returns volts for uV
        data = ours[sig.label]
        assert data.dtype == np.float32
        assert data.shape == (header.n_records * sig.samples_per_record,)
        # float32 precision, far below one digital step (gain): an off-by-one in offset or gain fails
        np.testing.assert_allclose(data, theirs, rtol=1e-6, atol=sig.gain * 1e-3)


def test_a_long_signal_is_scaled_exactly_as_the_edf_says(tmp_path):
    """A night-length signal (read in several chunks) gives float32(digital · gain + offset), computed in
    float64, for every sample: the chunking changes no value."""
    rng = np.random.default_rng(7)
    eeg = np.cumsum(rng.standard_normal(125 * 3600)) * 3.0  # an hour at 125 Hz: 450,000 samples
    path = write_edf(tmp_path / "long.edf", [signal("EEG", 125, eeg), signal("ECG", 250, rng.standard_normal(250 * 3600), unit="mV")])
    header = read_header(path)
    ours = read_signals(path, ["EEG", "ECG"], header)
    edf = edfio.read_edf(path)
    for sig, theirs in zip(header.signals, edf.signals, strict=True):
        expected = (theirs.digital.astype(np.float64) * sig.gain + sig.offset).astype(np.float32)
        assert ours[sig.label].dtype == np.float32 and np.array_equal(ours[sig.label], expected), sig.label


@pytest.mark.realdata
def test_native_rates_kept_when_reading_mixed_rates(short_psg):
    data = read_signals(short_psg, ["EEG Fpz-Cz", "Temp rectal"])
    assert len(data["EEG Fpz-Cz"]) == 30000  # 100 Hz
    assert len(data["Temp rectal"]) == 300  # 1 Hz, not upsampled
    assert 34.0 <= data["Temp rectal"].min() and data["Temp rectal"].max() <= 40.0


@pytest.mark.realdata
def test_hypnogram_annotations_match_mne(shared_data):
    path = shared_data / "sleep-edf" / "SC4001EC-Hypnogram.edf"
    ours = read_annotations(path)
    theirs = mne.read_annotations(path)
    assert len(ours) == len(theirs) == 154
    np.testing.assert_allclose([a[0] for a in ours], theirs.onset)
    np.testing.assert_allclose([a[1] for a in ours], theirs.duration)
    assert [a[2] for a in ours] == list(theirs.description)
    assert ours[0] == (0.0, 30630.0, "Sleep stage W")
    header = read_header(path)
    assert header.is_edf_plus and header.record_duration == 0.0


def test_edf_plus_written_by_edfio_skips_time_keeping(tmp_path):
    path = write_edf(
        tmp_path / "plus.edf",
        [signal("EEG", 100, np.sin(np.arange(500) / 7.0) * 50)],
        annotations=[(1.5, 0.0, "Lights off"), (3.0, 1.25, "Arousal")],
    )
    header = read_header(path)
    assert header.is_edf_plus and header.labels == ["EEG", "EDF Annotations"]
    assert read_annotations(path) == [(1.5, 0.0, "Lights off"), (3.0, 1.25, "Arousal")]
    assert read_signals(path, ["EEG"])["EEG"].shape == (500,)


def test_to_microvolts():
    x = np.array([1.0, -2.0], dtype=np.float32)
    np.testing.assert_allclose(to_microvolts(x, "mV"), [1000.0, -2000.0])
    np.testing.assert_allclose(to_microvolts(x, "V"), [1e6, -2e6])
    assert to_microvolts(x, "uV") is x and to_microvolts(x, "\u00b5V") is x
    with pytest.raises(ValueError, match="not a voltage"):
        to_microvolts(x, "%")


# ------------------------------------------------------------------------------------ bad inputs


@pytest.fixture
def good_edf(tmp_path):
    """10 one-second records: EEG 100 Hz + SaO2 1 Hz."""
    rng = np.random.default_rng(0)
    return write_edf(
        tmp_path / "good.edf",
        [signal("EEG", 100, rng.normal(0, 30, 1000)), signal("SaO2", 1, np.full(10, 95.0), "%", (0, 100))],
    )


def _raises(path, *fragments, exc=EdfFormatError, call=read_header, **kwargs):
    with pytest.raises(exc) as info:
        call(path, **kwargs)
    message = str(info.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.edf", "not found")


def test_not_an_edf(tmp_path):
    path = tmp_path / "notes.edf"
    path.write_text("this is a text file, not a recording\n" * 20)
    _raises(path, "not an EDF")
    tiny = tmp_path / "tiny.edf"
    tiny.write_bytes(b"0       short")
    _raises(tiny, "not an EDF", "13 bytes")


def test_truncated_file_reports_records_present(good_edf):
    header = read_header(good_edf)
    truncate(good_edf, header.header_bytes + 7 * header.record_bytes + 11)
    _raises(good_edf, "truncated", "declares 10", "only 7")


def test_unknown_record_count_computed_from_size(good_edf):
    patch_fixed(good_edf, "n_records", "-1")
    header = read_header(good_edf)
    assert header.n_records == 10 and header.declared_n_records == -1
    assert read_signals(good_edf, ["EEG"])["EEG"].shape == (1000,)


def test_zero_records(good_edf):
    patch_fixed(good_edf, "n_records", "0")
    _raises(good_edf, "zero data records")


def test_zero_length_signal(good_edf):
    patch_signal(good_edf, 1, "samples_per_record", "0")  # SaO2 now has no samples
    truncate(good_edf, read_header(good_edf).header_bytes + 10 * 200)  # file consistent with the header
    _raises(good_edf, "'SaO2'", "zero-length", call=read_signals, labels=["SaO2"])
    assert read_signals(good_edf, ["EEG"])["EEG"].shape == (1000,)  # other signals stay readable


def test_physical_range_zero(good_edf):
    patch_signal(good_edf, 1, "physical_max", "0")
    patch_signal(good_edf, 1, "physical_min", "0")
    _raises(good_edf, "'SaO2'", "physical minimum == physical maximum", call=read_signals, labels=["SaO2"])


def test_digital_range_zero(good_edf):
    patch_signal(good_edf, 0, "digital_max", "-32768")
    _raises(good_edf, "'EEG'", "digital minimum == digital maximum", call=read_signals, labels=["EEG"])


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        (lambda p: patch_fixed(p, "n_records", "ten"), "number of data records is not a number: 'ten'"),
        (lambda p: patch_fixed(p, "record_duration", "1s"), "data record duration is not a number"),
        (lambda p: patch_signal(p, 0, "physical_min", "low"), "physical minimum of signal 1 ('EEG') is not a number"),
        (lambda p: patch_signal(p, 1, "samples_per_record", "1.5"), "samples per record of signal 2 ('SaO2') is not an integer"),
        (lambda p: patch_fixed(p, "start_date", "1985-1-1"), "start date is not dd.mm.yy"),
    ],
)
def test_non_numeric_header_fields(good_edf, patch, fragment):
    patch(good_edf)
    _raises(good_edf, fragment)


def test_missing_label_lists_present(good_edf):
    _raises(good_edf, "'EEG(sec)'", "'EEG', 'SaO2'", exc=MissingChannelError, call=read_signals, labels=["EEG(sec)"])
