"""Multimodal data pieces: per-channel filter recipes, per-recording robust scaling in the loader, the
downstream tasks' targets and metrics, and the labelled subset of semi-supervised runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distsleep.config import PreprocessConfig
from distsleep.shards.convert import robust_stats
from distsleep.shards.format import ShardSample, quantize, write_shard
from distsleep.shards.loader import LoaderConfig, eval_sequences, labelled_records
from distsleep.tasks import binary_metrics, targets, task_metrics


def test_filter_recipe_bands():
    config = PreprocessConfig(channels=("eeg_c4", "emg", "airflow", "sao2"), filter_recipe="synthsleepnet", bandpass=(0.3, 35))
    assert config.band_for("eeg_c4") == (0.5, 40.0) and config.band_for("emg") == (25.0, 49.0)
    assert config.band_for("airflow") == (0.05, 1.0)
    assert config.band_for("sao2") == (0.3, 35)  # not in the recipe: the global band-pass
    assert PreprocessConfig().band_for("eeg_c4") is None
    assert config.content_hash() != PreprocessConfig(channels=config.channels, bandpass=(0.3, 35)).content_hash()
    with pytest.raises(ValueError, match="unknown filter recipe"):
        PreprocessConfig(filter_recipe="bogus")


def _night(tmp_path, stats: bool) -> str:
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(50, 20, (6, 3000)), rng.normal(-3, 2, (6, 3000))], axis=1).astype(np.float32)
    codes, scales = zip(*(quantize(x[:, c]) for c in range(2)))
    physical = np.stack(codes, axis=1).astype(np.float32) * np.array(scales, dtype=np.float32)[None, :, None]
    meta = {"record_id": "r1", "channels": [{"role": "eeg_c4"}, {"role": "airflow"}], "scale_uv": list(scales)}
    if stats:
        meta["channel_stats"] = [robust_stats(physical[:, c]) for c in range(2)]
    sample = ShardSample("r1", np.stack(codes, axis=1), np.zeros(6, np.int8), np.zeros((6, 3), np.uint8), meta)
    path = tmp_path / "r1.tar"
    write_shard(path, sample)
    return str(path), physical


def test_loader_robust_scaling_uses_the_recordings_median_and_iqr(tmp_path):
    url, physical = _night(tmp_path, stats=True)
    uv = next(eval_sequences([url], LoaderConfig(seq_len=6), 1, 0)).signals
    robust = next(eval_sequences([url], LoaderConfig(seq_len=6, normalization="robust", channels=["airflow"]), 1, 0)).signals
    np.testing.assert_allclose(uv, physical, rtol=1e-6)
    q25, q50, q75 = np.percentile(physical[:, 1], [25, 50, 75])
    np.testing.assert_allclose(robust[:, 0], (physical[:, 1] - q50) / (q75 - q25), rtol=1e-4, atol=1e-4)
    assert abs(float(np.median(robust))) < 1e-3


def test_robust_scaling_needs_channel_stats(tmp_path):
    url, _ = _night(tmp_path, stats=False)
    with pytest.raises(ValueError, match="channel_stats.*rebuild the shards"):
        next(eval_sequences([url], LoaderConfig(seq_len=6, normalization="robust"), 1, 0))


def test_task_targets_follow_the_event_flags_and_skip_unscored_epochs():
    labels = torch.tensor([[0, 2, -1, 4]])
    events = torch.tensor([[[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]]], dtype=torch.uint8)
    assert targets("staging", labels, events).tolist() == [[0, 2, -1, 4]]
    assert targets("apnea", labels, events).tolist() == [[1, 0, -1, 0]]
    assert targets("hypopnea", labels.numpy(), events.numpy()).tolist() == [[0, 1, -1, 0]]
    with pytest.raises(ValueError, match="unknown task"):
        targets("snoring", labels, events)


def test_binary_metrics():
    y = np.array([0, 0, 0, 0, 1, 1, -1])
    p = np.array([0.1, 0.2, 0.85, 0.3, 0.8, 0.9, 0.5])
    m = binary_metrics(y, p, ["none", "apnea"])
    assert m["n_epochs"] == 6 and m["accuracy"] == pytest.approx(5 / 6)
    assert m["auroc"] == pytest.approx(7 / 8) and m["majority_accuracy"] == pytest.approx(4 / 6)
    assert m["f1_positive"] == pytest.approx(0.8) and m["confusion"] == [[3, 1], [0, 2]]
    staged = task_metrics("staging", np.array([0, 1]), np.array([[0.9, 0.1, 0, 0, 0], [0, 1, 0, 0, 0]]))
    assert staged["accuracy"] == 1.0


def test_labelled_records_are_a_fixed_seeded_subset():
    manifest = {"records": {f"r{i:02d}": {"split": "train" if i < 20 else "test"} for i in range(24)}}
    five = labelled_records(manifest, 0.05, seed=0)
    assert len(five) == 1 and five == labelled_records(manifest, 0.05, seed=0)
    half = labelled_records(manifest, 0.5, seed=1)
    assert len(half) == 10 and all(manifest["records"][r]["split"] == "train" for r in half)
    assert labelled_records(manifest, 1.0, seed=0) == sorted(f"r{i:02d}" for i in range(20))
