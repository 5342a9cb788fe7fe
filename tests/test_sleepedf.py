"""Sleep-EDF loader: the real SC4001 hypnogram (EDF+ and TSV) and small edfio-written PSG/hypnogram pairs."""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pytest

from distsleep.errors import AnnotationError
from distsleep.sources.edf import read_signals
from distsleep.sources.nsrr import stages_from_codes
from distsleep.sources.sleepedf import HYPNOGRAM_CODES, find_sleepedf_pairs, keep_range, load_sleepedf_record, read_hypnogram
from distsleep.stages import N1, N2, REM, UNSCORED, W
from edf_factory import signal, write_edf

SC4001_START = dt.datetime(1989, 4, 24, 16, 13, 0)
SC4001_SIGNAL_EPOCHS = 2650  # 79,500 s of PSG (DESIGN.md §3)


@pytest.fixture(scope="module")
def sleepedf_dir(shared_data):
    return shared_data / "sleep-edf"


def _tsv_codes(sleepedf_dir) -> np.ndarray:
    """Per-epoch R&K codes from the independent TSV export, relative to the recording start."""
    folder = sleepedf_dir / "hypnograms" / "SC4001E0"
    start_clock = dt.time.fromisoformat((folder / "rec_start_time.txt").read_text().strip())
    codes: list[int] = []
    with open(folder / "SC4001E0.txt", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh, delimiter="\t")):
            onset = dt.datetime.fromisoformat(row["Onset"][:26])
            if i == 0:
                assert onset.time() == start_clock
                start = onset
            assert (onset - start).total_seconds() == 30 * len(codes)  # contiguous in the TSV
            codes += [HYPNOGRAM_CODES[row["Annotation"]]] * (int(float(row["Duration"])) // 30)
    return np.array(codes, dtype=np.int8)


@pytest.mark.realdata
def test_short_psg_aligned_and_truncated(sleepedf_dir):
    record = load_sleepedf_record(sleepedf_dir / "short_psg.edf", sleepedf_dir / "SC4001EC-Hypnogram.edf")
    assert record.source == "sleep-edf" and record.record_id == "short_psg"
    assert record.n_epochs == 10 and record.stages.tolist() == [W] * 10
    assert record.start_time == SC4001_START
    eeg = record.channels["eeg_fpz_cz"]
    assert (eeg.label, eeg.rate, eeg.unit, len(eeg.data)) == ("EEG Fpz-Cz", 100.0, "uV", 30000)
    assert record.metadata["hypnogram_epochs"] == 2880 and record.metadata["kept_epochs"] == (0, 10)
    assert record.problems == ["hypnogram covers 2880 epochs, signal 10: 2870 epochs past the signal end dropped"]


@pytest.mark.realdata
def test_hypnogram_matches_tsv(sleepedf_dir):
    tsv = _tsv_codes(sleepedf_dir)
    hyp = read_hypnogram(sleepedf_dir / "SC4001EC-Hypnogram.edf", SC4001_START)
    assert hyp.offset_s == 0.0 and hyp.first_scored_epoch == 0
    np.testing.assert_array_equal(hyp.raw_stage_codes, tsv)
    record = load_sleepedf_record(sleepedf_dir / "short_psg.edf", sleepedf_dir / "SC4001EC-Hypnogram.edf", roles=("eeg_fpz_cz", "emg"))
    np.testing.assert_array_equal(record.metadata["raw_stage_codes"], tsv[:10])
    assert record.channels["emg"].rate == 1.0 and len(record.channels["emg"].data) == 300


@pytest.mark.realdata
def test_full_hypnogram_counts_before_truncation(sleepedf_dir):
    hyp = read_hypnogram(sleepedf_dir / "SC4001EC-Hypnogram.edf")
    codes, counts = np.unique(hyp.raw_stage_codes, return_counts=True)
    # W 1997, S1 58, S2 250, S3 101, S4 119, R 125, ? 230 (DESIGN.md §3)
    assert dict(zip(codes.tolist(), counts.tolist())) == {0: 1997, 1: 58, 2: 250, 3: 101, 4: 119, 5: 125, 9: 230}
    assert hyp.n_epochs == 2880


@pytest.mark.realdata
def test_lights_and_wake_trimming_on_sc4001(sleepedf_dir):
    folder = sleepedf_dir / "hypnograms" / "SC4001E0"
    lights_off = (folder / "lights_off_time.txt").read_text().strip()  # 00:38:00
    lights_on = (folder / "lights_on_time.txt").read_text().strip()  # 06:59:00.000
    stages = stages_from_codes("SC4001", _tsv_codes(sleepedf_dir)[:SC4001_SIGNAL_EPOCHS])
    # 00:38:00 is 30,300 s after 16:13:00 (epoch 1010); 06:59:00 is 53,160 s (epoch 1772).
    assert keep_range(stages, SC4001_START, lights_off, lights_on)[:2] == (1010, 1772)
    # First sleep epoch 1021 (00:43:30), last 1741 (ends 06:44:00): +-30 min = 60 epochs.
    assert keep_range(stages, SC4001_START, trim_wake_minutes=30)[:2] == (961, 1802)
    assert keep_range(stages, SC4001_START, lights_off, lights_on, trim_wake_minutes=30)[:2] == (1010, 1772)
    assert keep_range(stages, SC4001_START, lights_off, lights_on, trim_wake_minutes=0)[:2] == (1021, 1742)
    with pytest.raises(ValueError, match="no epochs"):
        keep_range(stages, SC4001_START, lights_on, lights_off)


PSG_START = dt.datetime(2001, 2, 3, 23, 0, 0)


@pytest.fixture
def synthetic_pair(tmp_path):
    """20 epochs of PSG; hypnogram starting 60 s later and running 120 s past the end."""
    rng = np.random.default_rng(1)
    psg = write_edf(
        tmp_path / "SC4991E0-PSG.edf",
        [signal("EEG Fpz-Cz", 100, rng.normal(0, 20, 60000), "uV", (-200, 200)), signal("Temp rectal", 1, np.full(600, 36.6), "DegC", (34, 40))],
        record_duration=30.0,
        start=PSG_START,
    )
    stages = [(0, 120, "Sleep stage W"), (120, 60, "Sleep stage 1"), (180, 120, "Sleep stage 2"), (300, 30, "Movement time"),
              (330, 60, "Sleep stage R"), (390, 30, "Sleep stage ?"), (420, 240, "Sleep stage W")]
    hyp = write_edf(tmp_path / "SC4991EC-Hypnogram.edf", [], start=PSG_START + dt.timedelta(seconds=60),
                    annotations=[*stages, (200, 0, "Lights on button")])
    return psg, hyp


EXPECTED = [UNSCORED, UNSCORED, W, W, W, W, N1, N1, N2, N2, N2, N2, UNSCORED, REM, REM, UNSCORED, W, W, W, W]


def test_synthetic_offset_alignment(synthetic_pair):
    psg, hyp = synthetic_pair
    record = load_sleepedf_record(psg, hyp, roles=("eeg_fpz_cz", "temp"))
    assert record.record_id == "SC4991E0" and record.metadata["hypnogram_offset_s"] == 60.0
    assert record.stages.tolist() == EXPECTED
    assert record.metadata["raw_stage_codes"].tolist() == [9, 9, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 6, 5, 5, 9, 0, 0, 0, 0]
    assert record.channels["temp"].unit == "DegC" and len(record.channels["temp"].data) == 600
    assert [(e.kind, e.start) for e in record.events] == [("lights_on_button", 260.0)]
    assert record.problems == [
        "hypnogram covers 24 epochs, signal 20: 4 epochs past the signal end dropped",
        "first 2 epochs precede the hypnogram: unscored",
    ]


def test_synthetic_trimming_cuts_signal_stages_and_time(synthetic_pair):
    psg, hyp = synthetic_pair
    full = read_signals(psg, ["EEG Fpz-Cz"])["EEG Fpz-Cz"]
    # lights off 90 s after start (epoch 3 is the first entirely dark), lights on at 510 s (epoch 17 excl.)
    record = load_sleepedf_record(psg, hyp, lights_off=PSG_START + dt.timedelta(seconds=90), lights_on=510.0, trim_wake_minutes=1)
    # sleep spans epochs 6..14 -> keep 2 epochs (1 min) either side: 4..17, inside the lights range 3..17.
    assert record.metadata["kept_epochs"] == (4, 17) and record.metadata["kept_seconds"] == (120.0, 510.0)
    assert record.stages.tolist() == EXPECTED[4:17]
    assert record.start_time == PSG_START + dt.timedelta(seconds=120)
    np.testing.assert_array_equal(record.channels["eeg_fpz_cz"].data, full[12000:51000])
    assert [(e.kind, e.start) for e in record.events] == [("lights_on_button", 140.0)]
    lights_only = load_sleepedf_record(psg, hyp, lights_off="23:01:30", lights_on="23:08:30")
    assert lights_only.metadata["kept_epochs"] == (3, 17)
    # off the grid: only epochs entirely in the dark are kept ([120, 150) is the first, [450, 480) the last)
    partial = load_sleepedf_record(psg, hyp, lights_off=100.0, lights_on=500.0)
    assert partial.metadata["kept_epochs"] == (4, 16) and partial.n_epochs == 12


def test_hypnogram_off_the_epoch_grid(tmp_path, synthetic_pair):
    psg, _ = synthetic_pair
    hyp = write_edf(tmp_path / "SC4991EX-Hypnogram.edf", [], start=PSG_START + dt.timedelta(seconds=10),
                    annotations=[(0, 60, "Sleep stage W")])
    with pytest.raises(AnnotationError, match="SC4991EX-Hypnogram.edf: .*not on a 30-s epoch boundary"):
        load_sleepedf_record(psg, hyp)


def test_unknown_stage_text(tmp_path, synthetic_pair):
    psg, _ = synthetic_pair
    hyp = write_edf(tmp_path / "SC4991EY-Hypnogram.edf", [], start=PSG_START, annotations=[(0, 60, "Sleep stage 5")])
    with pytest.raises(AnnotationError, match="SC4991EY-Hypnogram.edf: unknown sleep stage annotation 'Sleep stage 5'"):
        load_sleepedf_record(psg, hyp)


def test_find_sleepedf_pairs(tmp_path):
    for name in ("SC4002E0-PSG.edf", "SC4002EC-Hypnogram.edf", "SC4001E0-PSG.edf", "SC4001EH-Hypnogram.edf", "SC4011E0-PSG.edf"):
        (tmp_path / name).touch()
    pairs = find_sleepedf_pairs(tmp_path)
    assert [(rid, psg.name, hyp.name if hyp else None) for rid, psg, hyp in pairs] == [
        ("SC4001E0", "SC4001E0-PSG.edf", "SC4001EH-Hypnogram.edf"),
        ("SC4002E0", "SC4002E0-PSG.edf", "SC4002EC-Hypnogram.edf"),
        ("SC4011E0", "SC4011E0-PSG.edf", None),
    ]


@pytest.mark.realdata
def test_the_default_wake_trim_gives_the_papers_sleep_edf_epochs(sleepedf_dir):
    """Sleep-EDF-78 (153 SC nights) has 192,233 scored epochs, 33.9 % wake, in MC²SleepNet's Table 1. The
    source's default trim (30 min of wake either side of sleep) comes within 2 % of that; whole recordings are
    more than twice as many, two-thirds wake. Hypnograms from the independent TSV exports, cut to each
    recording's length."""
    from distsleep.config import PreprocessConfig
    from distsleep.shards.convert import wake_trim_range

    minutes = PreprocessConfig(source="sleep-edf").trim_wake_minutes
    totals = {"whole": np.zeros(5, int), "default": np.zeros(5, int)}
    folders = sorted((sleepedf_dir / "hypnograms").iterdir())
    for folder in folders:
        clock = [dt.datetime.combine(dt.date(2000, 1, 1), dt.time.fromisoformat((folder / f"rec_{end}_time.txt")
                                                                                 .read_text().strip()))
                 for end in ("start", "stop")]
        n_signal = int(((clock[1] - clock[0]).total_seconds() % 86400) // 30)
        codes = []
        with open(folder / f"{folder.name}.txt", newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                codes += [HYPNOGRAM_CODES[row["Annotation"]]] * (int(float(row["Duration"])) // 30)
        stages = stages_from_codes(folder.name, np.array(codes[:n_signal], dtype=np.int8))
        for name, trim in (("whole", None), ("default", minutes)):
            start, stop = wake_trim_range(stages, trim, 30.0)
            totals[name] += np.bincount(stages[start:stop][stages[start:stop] >= 0], minlength=5)
    assert len(folders) == 153 and minutes == 30.0
    default, whole = totals["default"].sum(), totals["whole"].sum()
    assert abs(default - 192_233) / 192_233 < 0.02, totals
    assert 0.32 < totals["default"][W] / default < 0.36 and totals["whole"][W] / whole > 0.6 and whole > 2 * default
