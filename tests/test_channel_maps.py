"""Per-cohort alias tables and user channel maps: a MESA-labelled night (written by the synthetic generator's
EDF writer) is refused while its cohort is unknown, and read through the right electrodes with a map or a
cohort; alias files with mistakes fail naming the file and line; SHHS configs keep their shard hash."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from distsleep.config import PreprocessConfig
from distsleep.errors import InputError, MissingChannelError
from distsleep.shards.convert import RecordSource, convert_record
from distsleep.shards.format import read_shard
from distsleep.sources.channel_map import (AmbiguousChannelError, ChannelMapError, parse_channel_map,
                                           read_channel_map, resolve_labels)
from distsleep.sources.montages import COHORT_ROLES, cohort_of_record
from distsleep.sources.shhs import find_nsrr_pairs, load_nsrr_record, load_shhs_record
from distsleep.synth.night import synthesize_night
from distsleep.synth.writers import write_edf, write_nsrr_xml

START = dt.time(22, 30)
# MESA's montage: EEG1 Fz-Cz, EEG2 Cz-Oz, EEG3 C4-M1. The synthetic C3 stands in for Fz-Cz, C4 for C4-M1.
MESA_LABELS = {"EEG(sec)": "EEG1", "EEG": "EEG3", "EOG(L)": "EOG-L", "EMG": "EMG", "ECG": "EKG"}


@pytest.fixture(scope="module")
def mesa_night(tmp_path_factory):
    """One 6-minute synthetic night written twice: under an anonymous name and under MESA's NSRR layout."""
    root = tmp_path_factory.mktemp("mesa")
    channels = ("EEG", "EEG(sec)", "EOG(L)", "EMG", "ECG")
    night = synthesize_night(np.random.SeedSequence(7), "night1", 0.1, channels=channels)
    paths = {"edf": root / "night1.edf", "xml": root / "night1-nsrr.xml"}
    write_edf(night, paths["edf"], START, labels=MESA_LABELS)
    write_nsrr_xml(night, paths["xml"], START)
    psg = root / "mesa" / "polysomnography"
    (psg / "edfs").mkdir(parents=True)
    (psg / "annotations-events-nsrr").mkdir()
    paths["mesa_edf"] = psg / "edfs" / "mesa-sleep-0001.edf"
    paths["mesa_xml"] = psg / "annotations-events-nsrr" / "mesa-sleep-0001-nsrr.xml"
    write_edf(night, paths["mesa_edf"], START, labels=MESA_LABELS)
    write_nsrr_xml(night, paths["mesa_xml"], START)
    return night, paths


def _alias_file(tmp_path, text: str):
    path = tmp_path / "mesa.alias"
    path.write_text(text)
    return path


def test_mesa_eeg1_is_refused_without_a_map(mesa_night):
    _, paths = mesa_night
    with pytest.raises(AmbiguousChannelError) as info:
        load_nsrr_record(paths["edf"], paths["xml"], roles=("eeg_c4",))
    message = str(info.value)
    assert "night1.edf" in message and "eeg_c4" in message
    assert "'EEG1'" in message and "mesa: eeg_fz_cz" in message and "shhs: eeg_c4" in message
    assert "signals present: 'EEG1', 'EEG3', 'EOG-L', 'EMG', 'EKG'" in message
    assert "channel map" in message and "eeg_c4|" in message


def test_mesa_night_is_read_with_a_map_or_a_cohort(mesa_night, tmp_path):
    night, paths = mesa_night
    alias = _alias_file(tmp_path, "# MESA montage\neeg_c4|EEG3|C4-M1\neog_l | EOG-L\n")
    mapped = load_nsrr_record(paths["edf"], paths["xml"], roles=("eeg_c4", "eog_l"), channel_map=read_channel_map(alias))
    by_cohort = load_nsrr_record(paths["edf"], paths["xml"], roles=("eeg_c4", "eeg_fz_cz"), cohort="mesa")
    assert mapped.source == "nsrr" and by_cohort.source == "mesa"
    assert mapped.channels["eeg_c4"].label == by_cohort.channels["eeg_c4"].label == "EEG3"
    assert by_cohort.channels["eeg_fz_cz"].label == "EEG1"
    # The C4 channel carries the synthetic C4 signal, not the C3 written as EEG1 (EDF quantisation aside).
    step = 1000 / 65535
    np.testing.assert_allclose(mapped.channels["eeg_c4"].data, np.clip(night.signals["EEG"], -500, 500), atol=step)
    assert mapped.n_epochs == len(night.stages)


def test_cohort_is_known_from_nsrr_file_names(mesa_night):
    _, paths = mesa_night
    assert cohort_of_record("mesa-sleep-0001") == "mesa" and cohort_of_record("shhs1-200001") == "shhs"
    assert cohort_of_record("night1") is None
    (record_id, edf, xml), = find_nsrr_pairs(paths["mesa_edf"].parents[1])  # MESA keeps EDFs directly in edfs/
    assert (record_id, xml) == ("mesa-sleep-0001", paths["mesa_xml"])
    record = load_nsrr_record(edf, xml, roles=("eeg_c4",))
    assert record.source == "mesa" and record.channels["eeg_c4"].label == "EEG3"
    # Reading a file named as MESA through the SHHS table (which takes EEG1 as C4-A1) is refused.
    with pytest.raises(InputError, match="named as a mesa recording but is read as shhs"):
        load_shhs_record(edf, xml)


def test_preprocess_config_threads_cohort_and_map_into_shards(mesa_night, tmp_path):
    _, paths = mesa_night
    source = RecordSource("night1", str(paths["edf"]), str(paths["xml"]))
    unknown = PreprocessConfig(source="nsrr", channels=("eeg_c4",))
    with pytest.raises(AmbiguousChannelError):
        convert_record(source, unknown, tmp_path / "out0")
    mapped = PreprocessConfig(source="nsrr", channels=("eeg_c4",), channel_map=(("eeg_c4", ("EEG3",)),))
    summary = convert_record(source, mapped, tmp_path / "out1")
    assert summary["channels"][0]["label"] == "EEG3"
    sample = read_shard(tmp_path / "out1" / summary["shard"])
    assert sample.meta["channels"][0]["label"] == "EEG3"
    # The map is part of what a shard is made from: it changes the hash and survives a manifest round trip.
    assert mapped.content_hash() != unknown.content_hash()
    assert PreprocessConfig.from_dict(mapped.to_dict()) == mapped
    by_cohort = PreprocessConfig(source="nsrr", channels=("eeg_c4",), cohort="mesa")
    assert convert_record(source, by_cohort, tmp_path / "out2")["channels"][0]["label"] == "EEG3"
    with pytest.raises(ValueError, match="needs source 'nsrr'"):
        PreprocessConfig(source="shhs", cohort="mesa")


def test_existing_configs_keep_their_hash():
    # Values computed on main before cohorts and channel maps existed: existing shards are not redone.
    assert PreprocessConfig().content_hash() == "e566fdf257bf6e8d"
    # A Sleep-EDF manifest written before the source's wake-trim default holds trim_wake_minutes None explicitly.
    old_sleep_edf = PreprocessConfig(source="sleep-edf", channels=("eeg_fpz_cz",), trim_wake_minutes=None)
    assert old_sleep_edf.content_hash() == "3a775c0da87bbc8f"
    assert PreprocessConfig.from_dict(old_sleep_edf.to_dict()).content_hash() == "3a775c0da87bbc8f"
    assert "cohort" not in PreprocessConfig().to_dict() and "channel_map" not in PreprocessConfig().to_dict()


@pytest.mark.parametrize("text, problem", [
    ("eeg_c4|EEG3\neeg_c4 EEG1\n", "line 2: 'eeg_c4 EEG1' is not 'role|label|label...'"),
    ("# ok\n\neeg_c9|EEG3\n", "line 3: unknown channel role 'eeg_c9'"),
    ("eeg_c4|EEG3||C4-M1\n", "line 1: role 'eeg_c4' has an empty label"),
    ("eeg_c4|EEG3\neeg_c4|C4-M1\n", "line 2: role 'eeg_c4' is already mapped on line 1"),
    ("eeg_c4|EEG3\neeg_c3|eeg3\n", "line 2: label 'eeg3' is already mapped to 'eeg_c4' on line 1"),
    ("# nothing\n", "no aliases"),
])
def test_bad_alias_file_is_a_clear_error(tmp_path, text, problem):
    path = _alias_file(tmp_path, text)
    with pytest.raises(ChannelMapError) as info:
        read_channel_map(path)
    assert str(info.value) == f"{path}: {problem}" or str(info.value).startswith(f"{path}: {problem}")
    with pytest.raises(ChannelMapError, match="not found"):
        read_channel_map(tmp_path / "absent.alias")


def test_resolution_rules():
    labels = ["EEG1", "EEG", "EEG(sec)"]
    # Known cohort: today's SHHS table, file order.
    assert resolve_labels("f.edf", labels, ["eeg_c4", "eeg_c3"], "shhs") == {"eeg_c4": "EEG1", "eeg_c3": "EEG(sec)"}
    # Unknown cohort: labels every cohort agrees on are used; a cohort-dependent one (EEG1) refuses the
    # night until a map names it or the roles wanted.
    assert resolve_labels("f.edf", labels[1:], ["eeg_c4"], None) == {"eeg_c4": "EEG"}
    with pytest.raises(AmbiguousChannelError):
        resolve_labels("f.edf", labels, ["eeg_c4"], None)
    assert resolve_labels("f.edf", labels, ["eeg_c4"], None, parse_channel_map("eeg_fz_cz|EEG1")) == {"eeg_c4": "EEG"}
    # A map wins over the table, and a label it claims is no longer read as another role.
    assert resolve_labels("f.edf", labels, ["eeg_c4"], "shhs", parse_channel_map("eeg_c4|EEG")) == {"eeg_c4": "EEG"}
    with pytest.raises(MissingChannelError, match="missing channel role eeg_c4"):
        resolve_labels("f.edf", ["EEG1"], ["eeg_c4"], "shhs", parse_channel_map("eeg_fz_cz|EEG1"))
    # luna parameter-file spelling is accepted.
    assert parse_channel_map("alias eeg_c4|EEG3  # C4-M1") == (("eeg_c4", ("EEG3",)),)
    # Every cohort table maps each label to one role only.
    for cohort, roles in COHORT_ROLES.items():
        owners: dict[str, set[str]] = {}
        for role in roles:
            for alias in role.aliases:
                owners.setdefault(alias.upper(), set()).add(role.name)
        assert all(len(names) == 1 for names in owners.values()), cohort


def test_sleep_edf_keeps_30_minutes_of_wake_around_sleep_unless_told_otherwise():
    """Sleep-EDF's day-long recordings are trimmed to 30 min of wake either side of sleep by default (the
    protocol of its staging papers, MC²SleepNet's Table 1); NSRR nights are kept whole; the number written
    is what was applied, and `--trim-wake none` keeps a whole Sleep-EDF recording."""
    from distsleep.cli import build_parser
    from distsleep.cli.preprocess import preprocess_config

    assert PreprocessConfig(source="sleep-edf").trim_wake_minutes == 30.0
    assert PreprocessConfig(source="sleep-edf").to_dict()["trim_wake_minutes"] == 30.0
    assert PreprocessConfig().trim_wake_minutes is None and PreprocessConfig(source="nsrr").trim_wake_minutes is None
    assert PreprocessConfig.multimodal("sleep-edf").trim_wake_minutes == 30.0
    for bad in (-1, "all", float("inf")):
        with pytest.raises(ValueError, match="trim_wake_minutes must be minutes >= 0"):
            PreprocessConfig(source="sleep-edf", trim_wake_minutes=bad)

    def parsed(*options):
        args = build_parser().parse_args(["preprocess", "--root", "r", "--out", "o", *options])
        return preprocess_config(args).trim_wake_minutes

    assert parsed("--source", "sleep-edf") == 30.0
    assert parsed("--source", "sleep-edf", "--trim-wake", "none") is None
    assert parsed("--source", "sleep-edf", "--trim-wake", "15") == 15.0
    assert parsed() is None and parsed("--trim-wake", "30") == 30.0
    with pytest.raises(SystemExit):
        parsed("--trim-wake", "half")
