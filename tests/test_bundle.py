"""`distsleep.bundle`: every way of naming a model or generator bundle resolves to the same file, from real
files, folders, checkpoints and a real local MLflow store (runs:/ and a registered models:/ version)."""

from __future__ import annotations

import pytest
import torch

from distsleep import bundle
from distsleep.bundle import GENERATOR, MODEL, BundleError, load_model, people_overlap, resolve
from distsleep.config import PreprocessConfig
from distsleep.models import build_model
from distsleep.models.mc2sleepnet import MC2SleepNetConfig

from bundle_factory import register_bundle


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    config = MC2SleepNetConfig.small()
    weights = build_model("mc2sleepnet", config).state_dict()
    manifest = {"config": {"preprocess": PreprocessConfig().to_dict()}, "config_hash": "h",
                "records": {"r1": {"split": "train", "sha256": "a"}, "r2": {"split": "test", "sha256": "b"}}}
    path = tmp_path_factory.mktemp("bundle") / MODEL.file
    torch.save(bundle.model_bundle(model="mc2sleepnet", model_config=config, weights=weights, manifest=manifest,
                                   roles=["eeg_c4"], seq_len=config.seq_len, stage="pretrain"), path)
    return path


def test_files_folders_and_checkpoints(model_file, tmp_path):
    assert resolve(model_file).path == model_file
    assert resolve(model_file.parent).path == model_file
    artifacts = tmp_path / "download" / MODEL.folder
    artifacts.mkdir(parents=True)
    (artifacts / MODEL.file).write_bytes(model_file.read_bytes())
    assert resolve(tmp_path / "download").path == artifacts / MODEL.file  # a downloaded artifact folder

    run = tmp_path / "runs" / "pre"  # a run's storage folder: only checkpoints' weights
    for stamp, value in (("2026-01-01_00-00-00", 1.0), ("2026-01-02_00-00-00", 2.0)):
        (run / f"checkpoint_{stamp}").mkdir(parents=True)
        torch.save({"w": torch.full((2,), value)}, run / f"checkpoint_{stamp}" / MODEL.checkpoint_weights)
    with pytest.raises(BundleError, match="training checkpoint"):
        resolve(run)  # predict needs the preprocessing and channels a checkpoint lacks
    latest = resolve(run, weights=True)  # fine-tuning takes the latest checkpoint's weights
    assert latest.weights_only and latest.path.parent.name == "checkpoint_2026-01-02_00-00-00"
    assert bundle.weights(latest)["w"].tolist() == [2.0, 2.0]
    assert bundle.weights(resolve(model_file)).keys() == torch.load(model_file, weights_only=True)["state_dict"].keys()
    with pytest.raises(BundleError, match="no such file"):
        resolve(tmp_path / "absent.pt")


def test_generator_kind_takes_a_runs_latest_checkpoint(tmp_path, model_file):
    run = tmp_path / "gan-N1"
    for stamp in ("2026-01-01_00-00-00", "2026-01-03_00-00-00"):
        (run / f"checkpoint_{stamp}").mkdir(parents=True)
        torch.save({"format": GENERATOR.format, "stamp": stamp}, run / f"checkpoint_{stamp}" / GENERATOR.file)
    located = resolve(run, GENERATOR)
    assert located.path.parent.name == "checkpoint_2026-01-03_00-00-00"
    with pytest.raises(BundleError, match=r"generator bundle lacks \['model_config'"):
        bundle.read(located.path, GENERATOR)
    with pytest.raises(BundleError, match="a model bundle is 'distsleep-model/1'"):
        bundle.read(located.path, MODEL)
    with pytest.raises(BundleError, match="no generator bundle in this folder"):
        resolve(model_file.parent, GENERATOR)


def test_mlflow_runs_and_registered_models(model_file, tmp_path):
    uri, run_id = register_bundle(model_file, tmp_path)

    for source in (run_id, f"runs:/{run_id}", f"runs:/{run_id}/model", f"runs:/{run_id}/model/model.pt",
                   "models:/stager/1", "models:/stager@best"):
        located = resolve(source, tracking_uri=uri)
        assert located.path.read_bytes() == model_file.read_bytes(), source
        assert located.run_id == run_id, source
    with pytest.raises(BundleError, match="no such registered model version"):
        resolve("models:/stager/7", tracking_uri=uri)
    model, loaded = load_model(resolve("models:/stager/1", tracking_uri=uri).path)
    assert loaded["channels"] == ["eeg_c4"] and loaded["data"]["records"] == {"train": ["r1"], "val": []} and not model.training
    with pytest.raises(BundleError, match="could not download"):
        resolve("0123456789abcdef0123456789abcdef", tracking_uri=uri)
    with pytest.raises(BundleError, match="no MLflow store"):
        resolve(run_id, tracking_uri=f"sqlite:///{tmp_path / 'elsewhere.db'}")


def test_the_people_a_model_depends_on_are_found_by_what_they_did():
    manifest = {"config": {"preprocess": {"source": "shhs"}},
                "records": {"shhs1-200001": {"split": "test"}, "shhs1-200002": {"split": "test"},
                            "shhs1-200003": {"split": "test"}, "shhs1-200004": {"split": "val"},
                            "shhs1-200005": {"split": "test"}, "shhs1-200006": {"split": "train"}}}
    # 200001 taught it (and also chose it: reported once, as a teacher); 200002 chose it as its validation
    # person, 200003 chose its --init-from source (another visit); 200004 chose it but is validation again,
    # which is allowed; 200005 is new to it.
    data = {"records": {"train": ["shhs1-200001", "shhs1-200006"], "val": ["shhs1-200002", "shhs1-200004",
                                                                           "shhs1-200001"]},
            "trained_before": [], "selected_before": ["shhs2-200003"]}
    overlap = people_overlap(manifest, data)
    assert overlap.learned == {"val": [], "test": ["shhs1-200001"]}
    assert overlap.chose_test == ["shhs1-200002", "shhs1-200003"]
    # A bundle older than the validation record is checked on what it learned from only.
    assert people_overlap(manifest, {"records": {"train": ["shhs1-200005"]}}).chose_test == []


def test_an_init_from_source_that_is_not_there_is_named_as_missing(model_file, tmp_path):
    """--init-from a path that does not exist says so, rather than that it cannot tell what the source was trained
    on; an existing folder without a bundle or run identity still gets that answer, and a file that is no PyTorch
    file says that."""
    from distsleep.train.config import TrainConfig
    from distsleep.train.identity import RunMismatch, check_init_sources

    manifest = {"records": {"shhs1-200001": {"split": "test", "subject": "200001"}}}
    missing = tmp_path / "nonexistent.pt"
    with pytest.raises(RunMismatch) as caught:
        check_init_sources(TrainConfig(shards="m.json", init_from=str(missing)), manifest, "")
    message = str(caught.value)
    assert message.startswith(f"--init-from {missing}: no such file or folder") and "cannot tell" not in message

    (tmp_path / "checkpoint_2026-01-01_00-00-00").mkdir()  # exists, but says nothing about its data
    with pytest.raises(RunMismatch, match="cannot tell which records it was trained on"):
        check_init_sources(TrainConfig(shards="m.json", init_from=str(tmp_path / "checkpoint_2026-01-01_00-00-00")),
                           manifest, "")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(RunMismatch, match=f"--init-from {garbage}: not a PyTorch model file"):
        check_init_sources(TrainConfig(shards="m.json", init_from=str(garbage)), manifest, "")
    found, learned, _ = check_init_sources(TrainConfig(shards="m.json", init_from=str(model_file)), manifest, "")
    assert learned == ["r1"] and found[str(model_file)]["train_records"] == 1
