"""The preprocessing job on a real local Ray cluster: shards, manifest, failures, resumability."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import webdataset as wds
from scipy import signal as sps

from distsleep.cli import main as cli_main
from distsleep.config import PreprocessConfig, SplitConfig
from distsleep.shards.format import decode_sample, read_shard
from distsleep.shards.pipeline import run_preprocess
from distsleep.sources.shhs import load_shhs_record
from distsleep.synth.cohort import CohortConfig, generate_cohort, record_paths

from edf_factory import signal as edf_signal, truncate, write_edf
from session_processes import session_processes

GOOD = ["shhs1-300001", "shhs1-300002", "shhs1-300003", "shhs1-300004"]


def _hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Four good synthetic nights plus a truncated EDF, an EDF without XML and an EDF without C4-A1."""
    root = tmp_path_factory.mktemp("dataset")
    generate_cohort(root, CohortConfig(n_records=len(GOOD), hours=0.75, seed=5, workers=2), progress=False)
    corrupt = record_paths(root, "shhs1-300005")
    shutil.copy(record_paths(root, "shhs1-300001")["edf"], corrupt["edf"])
    shutil.copy(record_paths(root, "shhs1-300001")["nsrr"], corrupt["nsrr"])
    truncate(corrupt["edf"], corrupt["edf"].stat().st_size // 3)
    no_xml = record_paths(root, "shhs1-300006")
    shutil.copy(record_paths(root, "shhs1-300002")["edf"], no_xml["edf"])
    no_c4 = record_paths(root, "shhs1-300007")
    n = 125 * 30 * 90
    write_edf(no_c4["edf"], [edf_signal("EEG(sec)", 125, np.random.default_rng(0).normal(0, 20, n)),
                             edf_signal("EMG", 125, np.random.default_rng(1).normal(0, 5, n))])
    shutil.copy(record_paths(root, "shhs1-300003")["nsrr"], no_c4["nsrr"])
    return root


@pytest.fixture(scope="module")
def converted(dataset, ray_local, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("shards")
    code = cli_main(["preprocess", "--root", str(dataset), "--out", str(out), "--quiet"])
    return out, code


def test_bad_records_fail_alone_and_are_named(converted):
    out, code = converted
    assert code == 1, "failures beyond --max-failures must give a non-zero exit"
    failures = {f["record_id"]: f for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert set(failures) == {"shhs1-300005", "shhs1-300006", "shhs1-300007"}
    assert failures["shhs1-300005"]["error"] == "EdfFormatError" and "truncated" in failures["shhs1-300005"]["message"]
    assert failures["shhs1-300006"]["error"] == "AnnotationError" and "shhs1-300006.edf" in failures["shhs1-300006"]["message"]
    assert failures["shhs1-300007"]["error"] == "MissingChannelError" and "EEG(sec)" in failures["shhs1-300007"]["message"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["records"]) == GOOD
    assert {e["record_id"] for e in manifest["excluded"]} == set(failures)
    assert sorted(p.stem for p in (out / "shards").glob("*.tar")) == GOOD


def test_max_failures_allows_exit_zero(dataset, converted):
    out, _ = converted
    assert cli_main(["preprocess", "--root", str(dataset), "--out", str(out), "--quiet", "--max-failures", "3"]) == 0


def test_shards_read_back_and_match_source(dataset, converted):
    out, _ = converted
    manifest = json.loads((out / "manifest.json").read_text())
    for record_id in GOOD:
        shard = out / manifest["records"][record_id]["shard"]
        with tarfile.open(shard) as tar:
            assert sorted(tar.getnames()) == sorted(f"{record_id}.{m}" for m in ("signals.npy", "labels.npy", "events.npy", "meta.json"))
        (raw,) = list(wds.WebDataset(str(shard), shardshuffle=False))
        sample = decode_sample(raw)
        paths = record_paths(dataset, record_id)
        source = load_shhs_record(paths["edf"], paths["nsrr"], roles=("eeg_c4",))
        np.testing.assert_array_equal(sample.labels, source.stages)
        assert sample.signals.dtype == np.int16 and sample.signals.shape == (source.n_epochs, 1, 3000)
        # 125 -> 100 Hz by the exact polyphase factor 4/5; shards hold it to within int16 quantization
        # (half a code, scale_uv / 2) plus float32 rounding.
        reference = sps.resample_poly(source.channels["eeg_c4"].data.astype(np.float64), 4, 5)
        scale = sample.meta["scale_uv"][0]
        assert np.max(np.abs(sample.physical().reshape(-1) - reference)) <= scale / 2 + 1e-3
        assert sample.meta["channels"][0] == {"role": "eeg_c4", "label": "EEG", "source_rate": 125.0, "unit": "uV",
                                              "bandpass_hz": None}
        entry = manifest["records"][record_id]
        assert entry["stages"] == source.stage_counts() and entry["n_epochs"] == source.n_epochs
        assert entry["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
        # Storage budget of the single-EEG recipe: <= 6.5 KB per 30-s epoch including tar overhead.
        assert entry["bytes"] / entry["n_epochs"] <= 6500


def test_split_is_subject_wise_and_seeded(converted):
    out, _ = converted
    manifest = json.loads((out / "manifest.json").read_text())
    splits = {rid: r["split"] for rid, r in manifest["records"].items()}
    assert set(splits.values()) == {"train", "val", "test"}
    by_subject: dict[str, set] = {}
    for rid, r in manifest["records"].items():
        by_subject.setdefault(r["subject"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_subject.values())
    assert manifest["config"]["split"]["seed"] == 0 and len(manifest["config_hash"]) == 16


def _another_night(edf: Path) -> None:
    """Flip the lowest bit of every sample of `edf`: to the preprocessing, another night (a copied night is refused
    as one night under two record ids) with the same header, length and stages."""
    data = bytearray(edf.read_bytes())
    header = int(data[184:192].decode())  # the header's size in bytes
    samples = np.frombuffer(data, dtype="<i2", offset=header, count=(len(data) - header) // 2)
    edf.write_bytes(bytes(data[:header]) + (samples ^ 1).astype("<i2").tobytes() + bytes(data[header + samples.nbytes:]))


def test_visits_subsets_and_published_split_through_the_cli(dataset, converted, tmp_path, capsys):
    """An SHHS2 night of an SHHS1 participant is the same person (same split); the SHHS subsets leave it out
    without converting it; --split-file places records exactly as the file says, recorded in the manifest."""
    root, out = tmp_path / "cohort", tmp_path / "out"
    shutil.copytree(dataset, root)
    shutil.copytree(converted[0], out)  # already converted records are skipped
    psg = root / "polysomnography"
    for kind, suffix in (("edfs", ".edf"), ("annotations-events-nsrr", "-nsrr.xml")):
        (psg / kind / "shhs2").mkdir()
        shutil.copy(psg / kind / "shhs1" / f"shhs1-300001{suffix}", psg / kind / "shhs2" / f"shhs2-300001{suffix}")
    _another_night(psg / "edfs" / "shhs2" / "shhs2-300001.edf")  # the same signals twice would be refused
    # Each step below changes the selection or split of the dataset in `out`: --overwrite says that is meant.
    common = ["preprocess", "--root", str(root), "--out", str(out), "--quiet", "--max-failures", "3", "--overwrite"]

    assert cli_main([*common, "--n-val", "1"]) == 0
    records = json.loads((out / "manifest.json").read_text())["records"]
    assert records["shhs2-300001"]["subject"] == records["shhs1-300001"]["subject"] == "300001"
    assert records["shhs2-300001"]["split"] == records["shhs1-300001"]["split"]

    (out / "records" / "shhs2-300001.json").unlink()
    assert cli_main([*common, "--subset", "shhs-5791"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "shhs2-300001" not in manifest["records"] and not (out / "records" / "shhs2-300001.json").exists()
    assert "not an SHHS1 record" in {e["record_id"]: e["reason"] for e in manifest["excluded"]}["shhs2-300001"]

    published = tmp_path / "split.txt"
    published.write_text("300001 test\nshhs1-300002 train\n300003 train\n300004 val\n")
    assert cli_main([*common, "--visit", "shhs1", "--split-file", str(published)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {rid: r["split"] for rid, r in manifest["records"].items()} == {
        "shhs1-300001": "test", "shhs1-300002": "train", "shhs1-300003": "train", "shhs1-300004": "val"}
    assert manifest["split"]["method"] == "file" and manifest["split"]["file"] == str(published)
    assert manifest["config"]["split"]["split_file"] == str(published)
    # The same file name with other contents is another split: without --overwrite, refused.
    published.write_text("300001 train\nshhs1-300002 test\n300003 train\n300004 val\n")
    capsys.readouterr()
    assert cli_main([*common[:-1], "--visit", "shhs1", "--split-file", str(published)]) == 2
    assert f"the split file {published} changed (sha256 " in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["records"]["shhs1-300001"]["split"] == "test"

    published.write_text("300001 test\n300099 train\n")
    capsys.readouterr()
    assert cli_main([*common, "--split-file", str(published)]) == 2
    assert "300099" in capsys.readouterr().err
    assert cli_main([*common, "--visit", "shhs3"]) == 2
    assert "no recordings of visit(s) shhs3; visits found: shhs1, shhs2" in capsys.readouterr().err
    assert cli_main([*common, "--subset", "shhs-5463", "--visit", "shhs2"]) == 2


def test_rerun_skips_and_is_byte_identical(dataset, converted, tmp_path):
    out, _ = converted
    before = _hashes(out)
    manifest_before = (out / "manifest.json").read_bytes()
    result = run_preprocess(dataset, out, PreprocessConfig(), SplitConfig(), progress=False)
    assert result.converted == 0 and result.skipped == len(GOOD) and len(result.failures) == 3
    assert _hashes(out) == before and (out / "manifest.json").read_bytes() == manifest_before
    # A fresh run elsewhere gives the same bytes.
    fresh = run_preprocess(dataset, tmp_path / "fresh", PreprocessConfig(), SplitConfig(), progress=False)
    assert fresh.converted == len(GOOD) and _hashes(tmp_path / "fresh") == before


def test_rerun_redoes_changed_shards_and_inputs(dataset, converted):
    """A shard is skipped only while its sha256 and its inputs are what its summary recorded."""
    out, _ = converted
    before = _hashes(out)
    shard = out / "shards" / f"{GOOD[0]}.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit different: a size check would keep it
    shard.chmod(0o644)
    shard.write_bytes(bytes(data))
    annotation = record_paths(dataset, GOOD[1])["nsrr"]
    os.utime(annotation, ns=(annotation.stat().st_atime_ns, annotation.stat().st_mtime_ns + 10**9))  # an edited XML
    result = run_preprocess(dataset, out, PreprocessConfig(), SplitConfig(), progress=False)
    assert result.converted == 2 and result.skipped == len(GOOD) - 2
    assert _hashes(out) == before


def test_one_job_and_one_config_per_output_folder(dataset, converted, capsys, tmp_path):
    from distsleep.shards.pipeline import OutputConflict

    out, _ = converted
    manifest = (out / "manifest.json").read_bytes()
    with pytest.raises(OutputConflict, match=r"another config \(bandpass: None -> \[0.3, 40.0\]\).*--overwrite"):
        run_preprocess(dataset, out, PreprocessConfig(bandpass=(0.3, 40.0)), SplitConfig(), progress=False)
    assert cli_main(["preprocess", "--root", str(dataset), "--out", str(out), "--quiet", "--split-seed", "3"]) == 2
    assert "split seed: 0 -> 3" in capsys.readouterr().err
    # Another cohort into the same folder, or a run that would drop records from it, is refused too.
    with pytest.raises(OutputConflict, match=rf"input root: {dataset} -> {tmp_path / 'other'}"):
        shutil.copytree(dataset, tmp_path / "other")
        run_preprocess(tmp_path / "other", out, PreprocessConfig(), SplitConfig(), progress=False)
    with pytest.raises(OutputConflict, match=rf"holds 2 record\(s\) this run would leave out .*e.g. {GOOD[2]}, {GOOD[3]}"):
        run_preprocess(dataset, out, PreprocessConfig(), SplitConfig(), limit=2, progress=False)
    assert (out / "manifest.json").read_bytes() == manifest, "a refused run changes nothing"


def test_recordings_sharing_a_record_id_all_fail_by_name(dataset, converted, tmp_path):
    """The record id names the shard, its marker and the person: two recordings with one id would overwrite each
    other's shard, and which one a rerun kept would change from run to run."""
    root = tmp_path / "cohort"
    shutil.copytree(dataset, root)
    psg = root / "polysomnography"
    for kind, suffix in (("edfs", ".edf"), ("annotations-events-nsrr", "-nsrr.xml")):
        (psg / kind / "copy").mkdir()
        shutil.copy(psg / kind / "shhs1" / f"{GOOD[1]}{suffix}", psg / kind / "copy" / f"{GOOD[0]}{suffix}")
    for _ in range(2):  # a rerun: the same outcome
        result = run_preprocess(root, tmp_path / "out", PreprocessConfig(), SplitConfig(), progress=False)
        assert GOOD[0] not in result.manifest["records"] and set(GOOD[1:]) <= set(result.manifest["records"])
        [failure] = [f for f in result.failures if f["record_id"] == GOOD[0]]
        assert failure["error"] == "DuplicateRecordId" and "2 recordings share the record id" in failure["message"]
        assert f"copy/{GOOD[0]}.edf" in failure["message"] and f"shhs1/{GOOD[0]}.edf" in failure["message"]
        assert not (tmp_path / "out" / "shards" / f"{GOOD[0]}.tar").exists()


def test_one_night_under_two_record_ids_is_refused_until_one_is_removed(dataset, converted, tmp_path):
    """A night copied under another person's id (other file names, so other record ids and other shards) would put
    one person's night in two splits: every copy fails, naming the others; removing the copy lets the original in
    without converting anything again."""
    root, out, copy = tmp_path / "cohort", tmp_path / "out", "shhs1-300099"
    shutil.copytree(dataset, root)
    original = record_paths(root, GOOD[0])
    for kind, path in record_paths(root, copy).items():
        if original[kind].exists():
            shutil.copy(original[kind], path)
    result = run_preprocess(root, out, PreprocessConfig(), SplitConfig(), progress=False)
    assert result.converted == len(GOOD) + 1, "the copy is converted like any recording"
    failures = {f["record_id"]: f for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert set(failures) == {GOOD[0], copy, "shhs1-300005", "shhs1-300006", "shhs1-300007"}
    for rid, other in ((GOOD[0], copy), (copy, GOOD[0])):
        assert failures[rid]["error"] == "DuplicateSignals"
        assert f"{rid}.edf" in failures[rid]["message"] and f"same signals as {other}" in failures[rid]["message"]
    manifest = result.manifest
    assert sorted(manifest["records"]) == GOOD[1:]
    reasons = {e["record_id"]: e["reason"] for e in manifest["excluded"]}
    assert reasons[GOOD[0]].startswith("DuplicateSignals: ") and f"same signals as {copy}" in reasons[GOOD[0]]
    assert f"same signals as {GOOD[0]}" in reasons[copy]
    # The copies count as failures: 3 bad recordings + 2 copies. Reruns read the fingerprints from the summaries.
    common = ["preprocess", "--root", str(root), "--out", str(out), "--quiet"]
    assert cli_main([*common, "--max-failures", "4"]) == 1
    assert cli_main([*common, "--max-failures", "5"]) == 0
    assert json.loads((out / "manifest.json").read_text()) | {"code_version": None} == manifest | {"code_version": None}
    # The fingerprint lives in the summary, not in the shard: every other shard is what a run without the copy wrote.
    assert {n: h for n, h in _hashes(out).items() if n != f"{copy}.tar"} == _hashes(converted[0])

    # Summaries written before fingerprints existed are not compared: such a folder resumes as it did.
    older = tmp_path / "older"
    shutil.copytree(out, older)
    for marker in (older / "records").glob("*.json"):
        summary = json.loads(marker.read_text())
        summary.pop("signal_fingerprint")
        marker.chmod(0o644)
        marker.write_text(json.dumps(summary))
    resumed = run_preprocess(root, older, PreprocessConfig(), SplitConfig(), progress=False)
    assert resumed.converted == 0 and {GOOD[0], copy} <= set(resumed.manifest["records"])

    # The copy removed, the original joins the manifest from its existing shard.
    for path in record_paths(root, copy).values():
        path.unlink(missing_ok=True)
    rerun = run_preprocess(root, out, PreprocessConfig(), SplitConfig(), progress=False)
    assert rerun.converted == 0 and rerun.skipped == len(GOOD)
    assert sorted(rerun.manifest["records"]) == GOOD and copy not in {e["record_id"] for e in rerun.manifest["excluded"]}
    assert {f["record_id"] for f in rerun.failures} == {"shhs1-300005", "shhs1-300006", "shhs1-300007"}
    assert rerun.manifest["records"] == json.loads((converted[0] / "manifest.json").read_text())["records"]


def test_subsets_and_options(dataset, converted, tmp_path):
    out, _ = converted
    # shhs-5463 keeps only nights with all five stages; the manifest says why the others are out. Another
    # subset is another dataset: replacing the folder's manifest takes --overwrite.
    result = run_preprocess(dataset, out, PreprocessConfig(), SplitConfig(subset="shhs-5463"), progress=False,
                            overwrite=True)
    manifest = result.manifest
    for rid, r in manifest["records"].items():
        assert all(r["stages"][s] > 0 for s in ("W", "N1", "N2", "N3", "REM"))
    reasons = {e["record_id"]: e["reason"] for e in manifest["excluded"]}
    for rid in set(GOOD) - set(manifest["records"]):
        assert reasons[rid].startswith("does not contain all five stages")
    # Wake trimming and band-pass change the shards (new config hash) and keep labels aligned.
    trimmed = run_preprocess(dataset, tmp_path / "trim", PreprocessConfig(trim_wake_minutes=1, bandpass=(0.3, 40.0)),
                             SplitConfig(), limit=len(GOOD), progress=False)
    for rid, r in trimmed.manifest["records"].items():
        start, stop = r["kept_epochs"]
        sample = read_shard(tmp_path / "trim" / r["shard"])
        full = json.loads((out / "records" / f"{rid}.json").read_text())
        assert sample.meta["config_hash"] != full["config_hash"]
        assert sample.signals.shape[0] == stop - start <= full["n_epochs"]
        sleep = np.flatnonzero(np.isin(sample.labels, (1, 2, 3, 4)))
        if sleep.size:  # 1 minute = 2 epochs of wake kept on each side of the sleep period
            assert sleep[0] <= 2 and sample.signals.shape[0] - 1 - sleep[-1] <= 2
        else:  # a night without sleep is kept whole
            assert (start, stop) == (0, full["n_epochs"])
    assert any(r["kept_epochs"] != [0, json.loads((out / "records" / f"{rid}.json").read_text())["n_epochs"]]
               for rid, r in trimmed.manifest["records"].items()), "no night was trimmed"


@pytest.fixture(scope="module")
def long_dataset(ray_local, tmp_path_factory) -> tuple[Path, Path]:
    """Three 6-h nights (conversions long enough to be interrupted) and a clean reference conversion."""
    root = tmp_path_factory.mktemp("long")
    generate_cohort(root, CohortConfig(n_records=3, hours=6.0, seed=8, workers=2), progress=False)
    reference = tmp_path_factory.mktemp("long-reference")
    run_preprocess(root, reference, PreprocessConfig(), SplitConfig(), progress=False)
    return root, reference


def _convert_workers() -> list[psutil.Process]:
    return session_processes("ray::convert_task")


def test_killed_worker_is_retried_and_output_identical(long_dataset, tmp_path):
    dataset, reference = long_dataset
    target = tmp_path / "killed"
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("r", run_preprocess(
        dataset, target, PreprocessConfig(), SplitConfig(), progress=False)))
    thread.start()
    killed = 0
    deadline = time.time() + 60
    while thread.is_alive() and time.time() < deadline and not killed:
        for proc in _convert_workers():
            proc.send_signal(signal.SIGKILL)
            killed += 1
            break
    thread.join(timeout=300)
    assert killed == 1, "the test must kill a worker while a conversion runs"
    result = results["r"]
    assert result.failures == [] and len(result.manifest["records"]) == 3
    assert _hashes(target) == _hashes(reference)


def test_killed_driver_then_rerun_completes(long_dataset, ray_local, tmp_path):
    dataset, reference = long_dataset
    target = tmp_path / "driver"
    env = {**os.environ, "RAY_ADDRESS": ray_local}
    driver = subprocess.Popen([sys.executable, "-m", "distsleep.cli", "preprocess", "--root", str(dataset), "--out",
                               str(target), "--quiet", "--max-failures", "3"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((target / "records").glob("*.json")):
        time.sleep(0.01)
    # While it runs, a second job into the same folder is refused and told which job holds it.
    from distsleep.shards.pipeline import OutputConflict

    with pytest.raises(OutputConflict, match=rf"in use by another job \(pid {driver.pid} on "):
        run_preprocess(dataset, target, PreprocessConfig(), SplitConfig(), progress=False)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not (target / "manifest.json").exists(), "the driver was killed before it finished"
    result = run_preprocess(dataset, target, PreprocessConfig(), SplitConfig(), progress=False)
    assert result.skipped >= 1 and result.converted >= 1 and len(result.manifest["records"]) == 3
    assert _hashes(target) == _hashes(reference)
    assert not list(target.rglob("*.tmp-*"))

    # --overwrite with another config, killed once its first shard is replaced: the old manifest must not stand
    # over the new shards (a reader would take them for the old dataset).
    new_hash = PreprocessConfig(target_rate=128.0).content_hash()
    driver = subprocess.Popen([sys.executable, "-m", "distsleep.cli", "preprocess", "--root", str(dataset), "--out",
                               str(target), "--quiet", "--overwrite", "--target-rate", "128"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def replaced() -> bool:
        for path in (target / "records").glob("*.json"):
            try:
                if json.loads(path.read_text())["config_hash"] == new_hash:
                    return True
            except (ValueError, OSError):  # being replaced this instant
                pass
        return False

    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None and not replaced():
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert replaced() and len(list((target / "records").glob("*.json"))) == 3
    assert not (target / "manifest.json").exists() and not (target / "failures.jsonl").exists()


@pytest.mark.realdata
def test_sleep_edf_source_on_real_files(shared_data, ray_local, tmp_path):
    """The Sleep-EDF path end to end on the real SC4001 excerpt (renamed the way PhysioNet names files)."""
    root = tmp_path / "sleep-cassette"
    root.mkdir()
    shutil.copy(shared_data / "sleep-edf" / "short_psg.edf", root / "SC4001E0-PSG.edf")
    shutil.copy(shared_data / "sleep-edf" / "SC4001EC-Hypnogram.edf", root / "SC4001EC-Hypnogram.edf")
    out = tmp_path / "shards"
    assert cli_main(["preprocess", "--source", "sleep-edf", "--root", str(root), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["records"]["SC4001E0"]
    assert entry["subject"] == "SC400"  # SC4 + subject 00 (+ night 1): both nights of a subject share a split
    assert entry["n_epochs"] == 10 and entry["stages"]["W"] == 10  # 300 s, all wake in the expert hypnogram
    sample = read_shard(out / entry["shard"])
    assert sample.meta["channels"][0] == {"role": "eeg_fpz_cz", "label": "EEG Fpz-Cz", "source_rate": 100.0,
                                              "unit": "uV", "bandpass_hz": None}
    from distsleep.sources.edf import read_signals

    source = read_signals(root / "SC4001E0-PSG.edf", ["EEG Fpz-Cz"])["EEG Fpz-Cz"]
    np.testing.assert_allclose(sample.physical().reshape(-1), source, atol=sample.meta["scale_uv"][0] / 2 + 1e-4)


@pytest.mark.realdata
def test_a_band_pass_above_a_channels_nyquist_rate_is_refused_by_name(shared_data, tmp_path):
    """Sleep-EDF's EMG is a 1-Hz envelope: the multimodal recipe's 25-49 Hz band cannot be applied to it. The
    record fails with the file, the channel and both rates named (not scipy's "Wn[0] must be less than Wn[1]"),
    nothing is written, and without the EMG the same recording converts."""
    from distsleep.errors import SamplingRateError
    from distsleep.shards.convert import RecordSource, convert_record

    folder = shared_data / "sleep-edf"
    source = RecordSource("SC4001E0", str(folder / "short_psg.edf"), str(folder / "SC4001EC-Hypnogram.edf"))
    with pytest.raises(SamplingRateError, match=r"short_psg\.edf: channel 'EMG submental' \(role emg\) is sampled "
                                                r"at 1 Hz, too slowly for its 25-49 Hz band-pass"):
        convert_record(source, PreprocessConfig.multimodal("sleep-edf"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    without_emg = PreprocessConfig.multimodal("sleep-edf", channels=("eeg_fpz_cz", "eeg_pz_oz", "eog"))
    summary = convert_record(source, without_emg, tmp_path / "converted")
    assert [c["bandpass_hz"] for c in summary["channels"]] == [[0.5, 40.0]] * 3
