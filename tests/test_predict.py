"""Inference end to end on real files: a bundle of an untrained small MC²SleepNet, a synthetic SHHS night,
a real local MLflow store. Nothing is mocked; the model is untrained, so only shapes and contracts are checked."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distsleep.cli import main as cli_main
from distsleep.config import PreprocessConfig
from distsleep.errors import MissingChannelError
from distsleep.models import build_model
from distsleep.models.mc2sleepnet import MC2SleepNetConfig
from distsleep.bundle import BundleError, load_model, model_bundle, resolve
from distsleep.predict import PredictionError, average_windows, plan_windows, predict_recording
from distsleep.sources.edf import read_annotations, read_header
from distsleep.stages import STAGE_NAMES
from distsleep.synth.cohort import CohortConfig, generate_cohort, record_paths

from edf_factory import signal, write_edf

RECORD = "shhs1-300001"


class NotATensor:
    """Any custom class: its instances can only be unpickled by running code, which weights_only refuses."""

    def __init__(self):
        self.payload = "arbitrary"


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("predict-cohort")
    generate_cohort(out, CohortConfig(n_records=1, hours=0.5, seed=1), progress=False)
    return record_paths(out, RECORD)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model_cfg = MC2SleepNetConfig.small()
    model = build_model("mc2sleepnet", model_cfg)
    manifest = {"config": {"preprocess": PreprocessConfig(source="shhs", channels=("eeg_c4",)).to_dict()}}
    path = tmp_path_factory.mktemp("bundle") / "model.pt"
    torch.save(model_bundle(model="mc2sleepnet", model_config=model_cfg, weights=model.state_dict(), manifest=manifest,
                            roles=["eeg_c4"], seq_len=model_cfg.seq_len, stage="finetune"), path)
    return path


# ---------------------------------------------------------------------------------------- windowing


@pytest.mark.parametrize("n_epochs,seq_len,stride", [(10, 3, 1), (10, 3, 2), (10, 3, 3), (7, 7, 1), (3, 5, 1), (23, 5, 4)])
def test_every_epoch_is_covered_and_windows_have_full_length(n_epochs, seq_len, stride):
    starts = plan_windows(n_epochs, seq_len, stride)
    covered = np.zeros(n_epochs, dtype=int)
    for s in starts:
        covered[s:min(s + seq_len, n_epochs)] += 1
        assert s + seq_len <= max(n_epochs, seq_len)  # no window runs past the end unless the night is short
    assert covered.min() >= 1
    if stride == 1 and n_epochs >= seq_len:
        # stride 1: epoch i is in min(i + 1, L, n - i) windows, every window there is.
        expected = [min(i + 1, seq_len, n_epochs - i, n_epochs - seq_len + 1) for i in range(n_epochs)]
        assert covered.tolist() == expected


def test_average_windows_known_values():
    # Night of 4 epochs, windows of 3 every epoch: starts 0 and 1. Window w gives probability row value w+1
    # scaled so each row is distinct: the mean of each epoch is known by hand.
    starts = plan_windows(4, 3, 1)
    assert starts == [0, 1]
    probs = np.zeros((2, 3, 2))
    probs[0, :, 0] = [0.2, 0.4, 0.6]  # epochs 0, 1, 2
    probs[1, :, 0] = [0.8, 1.0, 0.4]  # epochs 1, 2, 3
    probs[..., 1] = 1 - probs[..., 0]
    mean, counts = average_windows(probs, starts, 4)
    assert counts.tolist() == [1, 2, 2, 1]
    np.testing.assert_allclose(mean[:, 0], [0.2, 0.6, 0.8, 0.4], atol=1e-6)
    np.testing.assert_allclose(mean.sum(axis=1), 1.0, atol=1e-6)


def test_short_night_is_padded_and_padding_is_not_scored():
    starts = plan_windows(2, 5, 1)
    assert starts == [0]
    probs = np.full((1, 5, 5), 0.2)
    probs[0, 2:] = np.nan  # padding positions: must never reach an epoch
    mean, counts = average_windows(probs, starts, 2)
    assert counts.tolist() == [1, 1] and np.isfinite(mean).all()


def test_end_aligned_window_and_bad_strides():
    assert plan_windows(10, 4, 4) == [0, 4, 6]
    with pytest.raises(PredictionError, match="stride"):
        plan_windows(10, 4, 5)
    with pytest.raises(PredictionError, match="stride"):
        plan_windows(10, 4, 0)
    with pytest.raises(ValueError, match="in no window"):
        average_windows(np.zeros((1, 2, 5)), [0], 4)


# ---------------------------------------------------------------------------------------- prediction


def test_predict_synthetic_night_writes_every_output(night, bundle_path, tmp_path):
    out = tmp_path / "pred"
    result = predict_recording(bundle_path, night["edf"], annotations=night["nsrr"], out_dir=out, batch_size=16)
    n = 60  # 0.5 h of 30-s epochs
    assert result.n_epochs == n and result.probabilities.shape == (n, 5)
    assert result.windows_per_epoch.max() == 5 and result.windows_per_epoch.min() == 1
    names = {kind: Path(p).name for kind, p in result.files.items()}
    assert names == {
        "stages_csv": f"{RECORD}_stages.csv", "hypnogram_edf": f"{RECORD}_hypnogram.edf",
        "hypnogram_png": f"{RECORD}_hypnogram.png", "input_report": f"{RECORD}_input_report.json",
        "metrics": f"{RECORD}_metrics.json", "confusion_png": f"{RECORD}_confusion.png",
    }
    assert all(Path(p).stat().st_size > 0 for p in result.files.values())

    rows = list(csv.DictReader(open(result.files["stages_csv"])))
    assert len(rows) == n
    assert list(rows[0]) == ["epoch", "onset_s", "stage", "p_W", "p_N1", "p_N2", "p_N3", "p_REM", "confidence", "true_stage"]
    for i, row in enumerate(rows):
        p = np.array([float(row[f"p_{s}"]) for s in STAGE_NAMES])
        assert int(row["epoch"]) == i and float(row["onset_s"]) == 30.0 * i
        assert abs(p.sum() - 1) < 1e-4
        assert row["stage"] == STAGE_NAMES[int(p.argmax())] and abs(float(row["confidence"]) - p.max()) < 1e-6
        assert row["true_stage"] in STAGE_NAMES
    truth = [r["true_stage"] for r in rows]
    assert truth[0] == "W" and len(set(truth)) > 1  # the synthetic night starts awake and then sleeps

    annotations = read_annotations(result.files["hypnogram_edf"])
    assert len(annotations) == n
    texts = {"W": "Sleep stage W", "N1": "Sleep stage 1", "N2": "Sleep stage 2", "N3": "Sleep stage 3", "REM": "Sleep stage R"}
    for i, ((onset, duration, text), row) in enumerate(zip(annotations, rows)):
        assert (onset, duration, text) == (30.0 * i, 30.0, texts[row["stage"]])
    # Files people share carry the recording's clock time, never its date (EDF+ "Startdate X", 01.01.85).
    header = result.files["hypnogram_edf"].read_bytes()[:256]
    start = read_header(night["edf"]).start_time
    assert header[88:99] == b"Startdate X" and header[168:184] == b"01.01.85" + start.strftime("%H.%M.%S").encode()

    metrics = json.loads(result.files["metrics"].read_text())
    assert metrics["n_epochs"] == n and len(metrics["confusion"]) == 5
    assert sum(map(sum, metrics["confusion"])) == n

    report = json.loads(result.files["input_report"].read_text())
    (channel,) = report["channels"]
    assert (channel["role"], channel["label"]) == ("eeg_c4", "EEG")
    assert (channel["source_rate_hz"], channel["target_rate_hz"]) == (125.0, 100.0)
    amplitude = channel["amplitude_uv"]
    assert amplitude["min"] <= amplitude["p1"] <= amplitude["p50"] <= amplitude["p99"] <= amplitude["max"]
    assert report["epochs"] == n and report["epochs_scored"] == n and report["source"] == "shhs"
    assert report["start_clock"] == start.time().isoformat() and "start_time" not in report
    assert report["preprocess"]["trim_wake_minutes"] is None
    assert report["warnings"] == []


def test_predict_without_annotations(night, bundle_path, tmp_path):
    result = predict_recording(bundle_path, night["edf"], out_dir=tmp_path, stride=5)
    assert result.labels is None and result.metrics is None
    assert "metrics" not in result.files and "confusion_png" not in result.files
    rows = list(csv.DictReader(open(result.files["stages_csv"])))
    assert len(rows) == 60 and "true_stage" not in rows[0]
    report = json.loads(result.files["input_report"].read_text())
    assert report["epochs_scored"] is None and report["windows"] == {"seq_len": 5, "stride": 5, "count": 12, "padded": False}


def test_stride_sets_how_many_windows_score_each_epoch(night, bundle_path):
    coarse = predict_recording(bundle_path, night["edf"], stride=5)  # stride = L: non-overlapping windows
    fine = predict_recording(bundle_path, night["edf"], stride=1)
    assert (coarse.windows_per_epoch == 1).all()
    assert fine.windows_per_epoch.tolist() == [1, 2, 3, 4] + [5] * 52 + [4, 3, 2, 1]
    for result in (coarse, fine):
        np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, atol=1e-5)
    assert not np.array_equal(coarse.probabilities, fine.probabilities)  # context differs, so averaging shows


# ---------------------------------------------------------------------------------------- refusals


def test_bundle_with_pickled_object_is_refused(tmp_path, bundle_path):
    bundle = torch.load(bundle_path, weights_only=True)
    bundle["extra"] = NotATensor()
    evil = tmp_path / "model.pt"
    torch.save(bundle, evil)
    with pytest.raises(BundleError, match="weights_only") as caught:
        load_model(evil)
    assert str(evil) in str(caught.value)
    assert "arbitrary code" in str(caught.value) and "NotATensor" in str(caught.value)
    assert "weights_only=False" not in str(caught.value) and "add_safe_globals" not in str(caught.value)  # unsafe advice


def test_training_checkpoint_is_refused(tmp_path, bundle_path):
    weights = torch.load(bundle_path, weights_only=True)["state_dict"]
    torch.save(weights, tmp_path / "best_model.pt")
    with pytest.raises(BundleError, match="model bundle"):
        resolve(tmp_path)
    with pytest.raises(BundleError, match="bare weights"):
        load_model(tmp_path / "best_model.pt")
    with pytest.raises(BundleError, match="no such file"):
        resolve(str(tmp_path / "absent.pt"))


def test_recording_without_c4_is_refused(tmp_path, bundle_path, capsys):
    rng = np.random.default_rng(0)
    edf = write_edf(tmp_path / "no-c4.edf", [signal("EEG(sec)", 125, rng.normal(0, 20, 125 * 600))])
    with pytest.raises(MissingChannelError) as caught:
        predict_recording(bundle_path, edf, out_dir=tmp_path / "out")
    message = str(caught.value)
    assert str(edf) in message and "eeg_c4" in message and "'EEG'" in message and "'EEG(sec)'" in message
    assert not (tmp_path / "out").exists()

    assert cli_main(["predict", "--model", str(bundle_path), str(edf), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distsleep predict: error: ") and "eeg_c4" in err


def test_cli_predict(night, bundle_path, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "distsleep.cli", "predict", "--model", str(bundle_path), str(night["edf"]),
         "--annotations", str(night["nsrr"]), "--out", str(tmp_path), "--stride", "5"],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "predicted epochs per stage" in result.stdout and "kappa" in result.stdout and str(tmp_path) in result.stdout
    assert (tmp_path / f"{RECORD}_metrics.json").is_file()


# ---------------------------------------------------------------------------------------- MLflow


def test_resolve_bundle_from_mlflow_run(tmp_path, bundle_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("predict-test", artifact_location=(tmp_path / "artifacts").resolve().as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_artifact(run_id, str(bundle_path), "model")
    client.set_terminated(run_id)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for source in (run_id, f"runs:/{run_id}/model/model.pt", f"runs:/{run_id}"):
        path = resolve(source).path
        assert path.read_bytes() == bundle_path.read_bytes(), source
    model, bundle = load_model(resolve(run_id).path)
    assert bundle["channels"] == ["eeg_c4"] and not model.training

    with pytest.raises(BundleError, match="0123456789abcdef0123456789abcdef"):
        resolve("0123456789abcdef0123456789abcdef")


def test_outputs_replace_an_earlier_prediction_as_a_whole(night, bundle_path, tmp_path):
    """A prediction without annotations into a folder that holds one with annotations: no metrics of the
    earlier run stay next to the new stages, and no temporary file is left."""
    out = tmp_path / "out"
    first = predict_recording(bundle_path, night["edf"], annotations=night["nsrr"], out_dir=out)
    assert {"metrics", "confusion_png"} <= set(first.files) and (out / f"{RECORD}_metrics.json").is_file()
    second = predict_recording(bundle_path, night["edf"], out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in second.files.values()), "predictions.json"])
    assert not (out / f"{RECORD}_metrics.json").exists() and not (out / f"{RECORD}_confusion.png").exists()
    with open(second.files["stages_csv"]) as stream:
        assert "true_stage" not in next(csv.reader(stream))


def test_corrupt_header_or_annotation_values_exit_2(night, bundle_path, tmp_path, capsys):
    import shutil

    from edf_factory import nsrr_xml, patch_signal

    edf = tmp_path / "night.edf"
    shutil.copy(night["edf"], edf)
    xml = tmp_path / "night-nsrr.xml"
    xml.write_bytes(nsrr_xml([("Wake|0", 0, 60), ("Stage 2 sleep|2", 60, float("inf"))]))
    assert cli_main(["predict", "--model", str(bundle_path), str(edf), "--annotations", str(xml)]) == 2
    err = capsys.readouterr().err
    assert f"{xml}: " in err and "<Duration> is inf s, not a finite time" in err and "Traceback" not in err
    eeg = next(i for i, s in enumerate(read_header(edf).signals) if s.label == "EEG")
    patch_signal(edf, eeg, "digital_min", "32767")
    patch_signal(edf, eeg, "digital_max", "-32768")
    assert cli_main(["predict", "--model", str(bundle_path), str(edf)]) == 2
    assert "signal 'EEG' has digital minimum 32767 > digital maximum -32768" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- output folders


def test_a_recording_that_fails_now_leaves_no_earlier_outputs(night, bundle_path, tmp_path):
    """Scored once, then truncated and scored again into the same folder: its earlier files would otherwise look
    like the result of the run that failed."""
    edf = tmp_path / f"{RECORD}.edf"
    edf.write_bytes(night["edf"].read_bytes())
    out = tmp_path / "out"
    predict_recording(bundle_path, edf, annotations=night["nsrr"], out_dir=out)
    assert (out / f"{RECORD}_stages.csv").is_file() and (out / f"{RECORD}_metrics.json").is_file()
    edf.write_bytes(edf.read_bytes()[: edf.stat().st_size // 2])
    with pytest.raises(Exception, match="truncated"):
        predict_recording(bundle_path, edf, annotations=night["nsrr"], out_dir=out)
    assert not list(out.glob(f"{RECORD}_*"))


def test_a_folder_holds_the_predictions_of_one_model(night, bundle_path, tmp_path):
    """Another model (or another stride) into a folder of predictions is refused, naming the folder and both
    models, unless `overwrite` removes the earlier predictions; the same model again, however named, is a rerun."""
    from distsleep.predict import PREDICTIONS_FILE, OutputFolderError

    other = torch.load(bundle_path, weights_only=True)
    other["stage"] = "pretrain"
    other_path = tmp_path / "other" / "model.pt"
    other_path.parent.mkdir()
    torch.save(other, other_path)
    same_path = tmp_path / "copy.pt"  # the same bytes under another name
    same_path.write_bytes(bundle_path.read_bytes())

    out = tmp_path / "out"
    first = predict_recording(bundle_path, night["edf"], out_dir=out, stride=5)
    recorded = json.loads((out / PREDICTIONS_FILE).read_text())
    assert recorded["model"]["source"] == str(bundle_path) and recorded["settings"]["stride"] == 5
    assert len(recorded["model"]["sha256"]) == 64
    csv_before = first.files["stages_csv"].read_bytes()
    predict_recording(same_path, night["edf"], out_dir=out, stride=5)  # a rerun of the same model: accepted
    assert first.files["stages_csv"].read_bytes() == csv_before

    with pytest.raises(OutputFolderError) as caught:
        predict_recording(other_path, night["edf"], out_dir=out, stride=5)
    message = str(caught.value)
    assert message.startswith(f"{out}: ") and str(bundle_path) in message and str(other_path) in message
    assert "--overwrite" in message
    with pytest.raises(OutputFolderError, match="with --stride 5.*with --stride 1"):
        predict_recording(bundle_path, night["edf"], out_dir=out, stride=1)
    assert first.files["stages_csv"].read_bytes() == csv_before  # refused before anything was written

    (out / "notes.txt").write_text("mine")  # not a prediction: kept
    predict_recording(other_path, night["edf"], out_dir=out, stride=1, overwrite=True)
    assert json.loads((out / PREDICTIONS_FILE).read_text())["model"]["source"] == str(other_path)
    assert (out / "notes.txt").read_text() == "mine"
    report = json.loads((out / f"{RECORD}_input_report.json").read_text())
    assert report["model"]["stage"] == "pretrain" and report["windows"]["stride"] == 1


def test_a_file_that_is_not_a_pytorch_file_is_named_so(night, bundle_path, tmp_path, capsys):
    """Random bytes or JSON as --model: said to be no PyTorch file, never "objects that can run code" with
    PyTorch's advice to load with weights_only=False (unsafe); one night or several (named by the user's path)."""
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    as_json = tmp_path / "model.json.pt"
    as_json.write_text('{"format": "distsleep-model/1"}')
    for model in (garbage, as_json):
        with pytest.raises(BundleError, match="not a PyTorch model file") as caught:
            load_model(model)
        assert "weights_only=False" not in str(caught.value) and "arbitrary code" not in str(caught.value)
        for recordings in ([str(night["edf"])], [str(night["edf"].parent)]):
            assert cli_main(["predict", "--model", str(model), *recordings, "--out", str(tmp_path / "out")]) == 2
            err = capsys.readouterr().err
            assert f"{model}: not a PyTorch model file" in err and "weights_only" not in err, err
    assert not (tmp_path / "out").exists()
