"""`distsleep predict` over many nights and on NSRR cohorts other than SHHS, on generated files: a folder of nights
plus a broken one gives one output set per good night, a cohort summary listing the broken night with its reason,
and exit status 1; a night with MESA labels is refused without a channel map and staged with one (predict and
preprocess). Real EDFs, a real local Ray cluster (one task per night); the model is an untrained small MC²SleepNet."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest

from distsleep.cli import main as cli_main
from distsleep.synth.night import synthesize_night
from distsleep.synth.writers import write_edf as write_synthetic_edf
from distsleep.synth.writers import write_nsrr_xml

from bundle_factory import write_bundle
from edf_factory import signal, write_edf

# MESA's montage: EEG1 Fz-Cz, EEG3 C4-M1 (the synthetic C3 stands in for Fz-Cz, C4 for C4-M1).
MESA_LABELS = {"EEG(sec)": "EEG1", "EEG": "EEG3", "EOG(L)": "EOG-L", "EMG": "EMG", "ECG": "EKG"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("many-bundle") / "model.pt")


@pytest.fixture(scope="module")
def mesa_folder(tmp_path_factory) -> dict[str, Path]:
    """A 6-minute night with MESA's labels under an anonymous name, in the NSRR layout."""
    psg = tmp_path_factory.mktemp("mesa-many") / "polysomnography"
    (psg / "edfs").mkdir(parents=True)
    (psg / "annotations-events-nsrr").mkdir()
    night = synthesize_night(np.random.SeedSequence(7), "night1", 0.1, channels=("EEG", "EEG(sec)", "EOG(L)", "EMG", "ECG"))
    paths = {"root": psg.parent, "edf": psg / "edfs" / "night1.edf", "xml": psg / "annotations-events-nsrr" / "night1-nsrr.xml",
             "map": psg.parent / "mesa.alias"}
    write_synthetic_edf(night, paths["edf"], dt.time(22, 30), labels=MESA_LABELS)
    write_nsrr_xml(night, paths["xml"], dt.time(22, 30))
    paths["map"].write_text("# MESA: EEG3 is C4-M1\neeg_c4|EEG3\n")
    return paths


def test_a_folder_of_nights_with_a_broken_one(staging_cohort, bundle, tmp_path, ray_local, capsys):
    cohort = staging_cohort
    broken = tmp_path / "more" / "shhs1-399999.edf"
    broken.parent.mkdir()
    write_edf(broken, [signal("EEG(sec)", 125, np.random.default_rng(0).normal(0, 20, 125 * 600))])
    # A copy of a night under the same name elsewhere: both would write <record>_*, so neither is scored.
    original = sorted(cohort.rglob("*.edf"))[0]
    copy = tmp_path / "more" / original.name
    copy.write_bytes(original.read_bytes())
    out = tmp_path / "pred"
    status = cli_main(["predict", "--model", str(bundle), str(cohort), str(tmp_path / "more" / "*.edf"), "--out", str(out),
                       "--stride", "5", "--no-progress"])
    console = capsys.readouterr().out
    assert status == 1, console

    rows = list(csv.DictReader(open(out / "cohort_summary.csv")))
    good = sorted(p.stem for p in cohort.rglob("*.edf"))
    assert sorted(r["record"] for r in rows) == sorted([*good, original.stem, "shhs1-399999"])
    [failed] = [r for r in rows if r["recording"] == str(broken)]
    assert failed["status"] == "failed" and "eeg_c4" in failed["reason"] and "'EEG(sec)'" in failed["reason"]
    twins = [r for r in rows if r["record"] == original.stem]
    assert sorted(r["recording"] for r in twins) == sorted([str(original.resolve()), str(copy.resolve())])
    assert all(r["status"] == "failed" and f"2 recordings would get the record id '{original.stem}'" in r["reason"]
               for r in twins)
    assert f"FAILED {broken}" in console and "4 of 7 nights scored" in console
    assert not list(out.glob(f"{original.stem}_*"))
    for row in (r for r in rows if r["status"] == "ok"):
        record = row["record"]
        assert row["annotations"].endswith(f"{record}-nsrr.xml")  # found in the NSRR layout beside the EDF
        files = sorted(p.name for p in out.glob(f"{record}_*"))
        assert files == sorted(f"{record}{s}" for s in ("_stages.csv", "_hypnogram.edf", "_hypnogram.png",
                                                        "_input_report.json", "_metrics.json", "_confusion.png"))
        stages = [r["stage"] for r in csv.DictReader(open(out / f"{record}_stages.csv"))]
        assert int(row["epochs"]) == len(stages) == 90
        # YASA's TST: minutes of N1+N2+N3+REM in the predicted hypnogram.
        assert float(row["tst_min"]) == pytest.approx(0.5 * sum(s != "W" for s in stages))
        metrics = json.loads((out / f"{record}_metrics.json").read_text())
        assert float(row["kappa"]) == pytest.approx(metrics["kappa"], abs=1e-4)
        assert 0.2 <= float(row["mean_confidence"]) <= 1
    assert not list(out.glob("shhs1-399999_*"))


def test_a_night_with_mesa_labels_needs_a_map(mesa_folder, bundle, tmp_path, capsys):
    edf = mesa_folder["edf"]
    assert cli_main(["predict", "--model", str(bundle), str(edf), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert str(edf) in err and "'EEG1'" in err and "mesa: eeg_fz_cz" in err and "channel map" in err
    assert not (tmp_path / "refused").exists()

    for option in (["--channel-map", str(mesa_folder["map"])], ["--cohort", "mesa"]):
        out = tmp_path / option[0].strip("-")
        assert cli_main(["predict", "--model", str(bundle), str(edf), "--annotations", str(mesa_folder["xml"]),
                         "--out", str(out), *option]) == 0
        report = json.loads((out / "night1_input_report.json").read_text())
        assert [(c["role"], c["label"]) for c in report["channels"]] == [("eeg_c4", "EEG3")], option


def test_preprocess_nsrr_with_a_channel_map(mesa_folder, tmp_path, ray_local, capsys):
    common = ["preprocess", "--source", "nsrr", "--root", str(mesa_folder["root"]), "--quiet"]
    assert cli_main([*common, "--out", str(tmp_path / "without")]) == 1
    failures = (tmp_path / "without" / "failures.jsonl").read_text()
    assert "EEG1" in failures and "night1" in failures
    capsys.readouterr()
    assert cli_main([*common, "--out", str(tmp_path / "with"), "--channel-map", str(mesa_folder["map"])]) == 0
    manifest = json.loads((tmp_path / "with" / "manifest.json").read_text())
    assert manifest["records"]["night1"]["channels"][0]["label"] == "EEG3"
    assert manifest["config"]["preprocess"]["channel_map"] == {"eeg_c4": ["EEG3"]}


def test_options_of_one_recording_are_refused_for_several(staging_cohort, bundle, tmp_path, capsys):
    """--device and --annotations choose for one recording; with several nights they would be silently ignored."""
    for option in (["--device", "cpu"], ["--annotations", str(tmp_path / "a.xml")]):
        assert cli_main(["predict", "--model", str(bundle), str(staging_cohort), "--out", str(tmp_path / "p"),
                         *option]) == 2
        assert f"{option[0]} goes with one recording" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_file_name_that_is_not_utf8_is_a_failed_night(staging_cohort, bundle, tmp_path, ray_local, capsys):
    """A recording whose name holds a byte that is not UTF-8 (b'\\xff') fails before scoring, shown with the byte
    escaped, and the other nights are scored and summarised (the summary could not be written with it raw)."""
    original = sorted(staging_cohort.rglob("*.edf"))[0]
    folder = (tmp_path / "nights").resolve()
    folder.mkdir()
    (folder / original.name).write_bytes(original.read_bytes())
    with open(os.fsencode(folder) + b"/shhs1-3000\xff11.edf", "wb") as stream:
        stream.write(original.read_bytes())
    out = tmp_path / "pred"
    status = cli_main(["predict", "--model", str(bundle), str(folder), "--out", str(out), "--stride", "5",
                       "--no-progress"])
    console = capsys.readouterr().out
    assert status == 1, console

    rows = list(csv.DictReader(open(out / "cohort_summary.csv", encoding="utf-8")))
    [failed] = [r for r in rows if r["status"] == "failed"]
    assert failed["recording"] == f"{folder}/shhs1-3000\\xff11.edf" and failed["record"] == "shhs1-3000\\xff11"
    assert failed["reason"].startswith(f"the path {folder}/shhs1-3000\\xff11.edf is not valid UTF-8 (bytes that are not "
                                       "UTF-8 are shown as \\xNN): give the file")
    assert [r["record"] for r in rows if r["status"] == "ok"] == [original.stem]
    assert f"FAILED {folder}/shhs1-3000\\xff11.edf: the path" in console and "1 of 2 nights scored" in console
    assert not [name for name in os.listdir(os.fsencode(out)) if b"\xff" in name]


def test_a_rerun_clears_failed_nights_and_another_model_is_not_mixed_in(staging_cohort, bundle, tmp_path, ray_local,
                                                                        capsys):
    """Into the same --out: a night that fails now keeps none of the files an earlier run wrote for it; another
    model is refused (naming the folder and both models) unless --overwrite removes the earlier predictions."""
    folder = tmp_path / "nights"
    folder.mkdir()
    broken, kept = (folder / edf.name for edf in sorted(staging_cohort.rglob("*.edf"))[:2])
    for edf in sorted(staging_cohort.rglob("*.edf"))[:2]:
        (folder / edf.name).write_bytes(edf.read_bytes())
    out = tmp_path / "pred"
    common = ["predict", str(folder), "--out", str(out), "--stride", "5", "--no-progress"]
    assert cli_main([*common, "--model", str(bundle)]) == 0
    assert list(out.glob(f"{broken.stem}_*"))

    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    assert cli_main([*common, "--model", str(bundle)]) == 1  # the same model again: a rerun
    rows = {r["record"]: r for r in csv.DictReader(open(out / "cohort_summary.csv"))}
    assert rows[broken.stem]["status"] == "failed" and "truncated" in rows[broken.stem]["reason"]
    assert not list(out.glob(f"{broken.stem}_*")) and rows[kept.stem]["status"] == "ok"
    capsys.readouterr()

    other = write_bundle(tmp_path / "other" / "model.pt", trained_on=("shhs1-999999",))  # other bytes, other model
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli_main([*common, "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{out.resolve()}: holds the predictions of model {bundle} (" in err, err
    assert f"this run's model is {other} (" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused before anything was written

    assert cli_main([*common, "--model", str(other), "--overwrite"]) == 1
    assert json.loads((out / "predictions.json").read_text())["model"]["source"] == str(other)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["cohort_summary.csv", "predictions.json",
         *(f"{kept.stem}{s}" for s in ("_stages.csv", "_hypnogram.edf", "_hypnogram.png", "_input_report.json"))])
    report = json.loads((out / f"{kept.stem}_input_report.json").read_text())
    assert report["model"]["requested"] == str(other)
