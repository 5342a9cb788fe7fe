"""Physio-GAN: losses (pure functions), the Ray Train job (2 workers, gloo, MLflow on SQLite, resume by name),
refusals, and the augmentation job (marked shards, manifest, byte-identical reruns, compatibility checks)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import webdataset as wds

from distsleep.gan import model as gm
from distsleep.gan.augment import LOCK_NAME, epochs_needed, load_generator
from distsleep.shards.augmented import AugmentationError, augmented_train_urls
from distsleep.cli import main as distsleep_main
from distsleep.cli.gan import main as gan_main
from distsleep.gan.config import GanTrainConfig
from distsleep.gan.data import assign_records, read_training_epochs
from distsleep.gan.psd import compare_psd
from distsleep.locks import exclusive_lock
from distsleep.gan.train import run_gan_training
from distsleep.shards.storage import ShardChecksumError
from distsleep.shards.format import decode_sample, read_shard, write_shard
from distsleep.shards.loader import LoaderConfig, eval_sequences, load_manifest, shard_urls, train_dataset
from distsleep.train.config import TrainConfig
from distsleep.train.driver import LaunchError
from distsleep.train.launch import run_training
from distsleep.train.inputs import stream_urls

CHANNELS = ("eeg_c3", "eog_l", "eeg_c4")


def sleep_like(n: int, seed: int, channels: int = 3, samples: int = 3000) -> torch.Tensor:
    """Brown-ish noise plus a 10 Hz rhythm: a spectrum with shape, unlike white noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 100.0
    phase = torch.rand(n, channels, 1, generator=g) * 6.28
    walk = torch.randn(n, channels, samples, generator=g).cumsum(-1) * 0.1
    walk = walk - walk.mean(-1, keepdim=True)
    return walk + 0.8 * torch.sin(2 * torch.pi * 10 * t + phase) + 0.1 * torch.randn(n, channels, samples, generator=g)


# ------------------------------------------------------------------------------------------ pure functions


def test_spectral_and_moment_losses_separate_real_from_noise():
    real_a, real_b = sleep_like(32, 1), sleep_like(32, 2)
    noise = torch.randn(32, 3, 3000) * real_a.std()  # same power, flat spectrum
    same = gm.spectral_loss(real_a, real_b)
    different = gm.spectral_loss(real_a, noise)
    assert same < 0.2 < 1.0 < different, (same, different)
    assert gm.moment_loss(real_a, real_b) < 0.5 * gm.moment_loss(real_a, noise)
    # per_stage compares like with like: mixing two stages in one batch must not blur them together
    stage = torch.tensor([0] * 16 + [1] * 16)
    mixed_real = torch.cat([real_a[:16], noise[:16]])
    mixed_fake = torch.cat([real_b[:16], noise[16:]])
    assert gm.per_stage(gm.spectral_loss, mixed_real, mixed_fake, stage) < 0.3
    assert gm.per_stage(gm.spectral_loss, mixed_real, mixed_fake.flip(0), stage) > 0.5
    # the generator gets gradients from both constraints
    cfg = gm.PhysioGanConfig.small()
    generator = gm.Generator(cfg)
    fake = generator(torch.randn(8, cfg.latent_dim), torch.zeros(8, dtype=torch.long))
    assert fake.shape == (8, 3, 3000)
    (gm.spectral_loss(real_a[:8], fake) + gm.moment_loss(real_a[:8], fake)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in generator.parameters())


def test_psd_distance_has_a_real_vs_real_floor():
    real = sleep_like(64, 3).numpy() * 20
    good = sleep_like(32, 4).numpy() * 20
    bad = np.random.default_rng(0).standard_normal((32, 3, 3000)) * real.std()
    near = compare_psd(real, good, CHANNELS)
    far = compare_psd(real, bad, CHANNELS)
    assert near["floor_db"] == far["floor_db"] < 1.0
    assert near["distance_db"] < 1.5 < 5 < far["distance_db"]
    assert set(near["per_channel"]) == set(CHANNELS) and near["n_real"] == 64 and near["n_generated"] == 32


def test_records_are_balanced_over_ranks_and_tiny_cohorts_share_epochs():
    counts = {"a": {"N1": 9, "N3": 0}, "b": {"N1": 1, "N3": 4}, "c": {"N1": 5, "N3": 0}, "d": {"N1": 2, "N3": 3}}
    ranks, mode = assign_records(counts, ["N1", "N3"], 2)
    assert mode == "records" and sorted(sum(ranks, [])) == ["a", "b", "c", "d"]
    assert all(any(counts[r]["N3"] for r in rank) for rank in ranks), "each rank needs the rarest stage"
    ranks, mode = assign_records(counts, ["N1", "N3"], 3)  # only two records hold N3
    assert mode == "epochs" and ranks == [["a", "b", "c", "d"]] * 3
    assert epochs_needed({"N1": 10, "scored": 240}, "N1", 0.1) == 16  # (10 + 16) / (240 + 16) >= 0.1
    assert epochs_needed({"N1": 50, "scored": 240}, "N1", 0.1) == 0


def test_effect_summary_pairs_arms_by_seed(tmp_path):
    from distsleep.gan.effect import arm_config, format_summary, per_class_png, summarise

    metrics = {(0, "real"): {"test_f1_N1": 0.10, "test_accuracy": 0.80}, (0, "augmented"): {"test_f1_N1": 0.25, "test_accuracy": 0.79},
               (1, "real"): {"test_f1_N1": 0.20, "test_accuracy": 0.82}, (1, "augmented"): {"test_f1_N1": 0.25, "test_accuracy": 0.83},
               (2, "real"): {"test_f1_N1": 0.30}}  # seed 2 lacks its augmented arm: left out of the differences
    summary = summarise(metrics)
    n1 = summary["metrics"]["test_f1_N1"]
    assert n1["delta_per_seed"] == pytest.approx([0.15, 0.05]) and n1["delta_mean"] == pytest.approx(0.10)
    assert n1["real"]["mean"] == pytest.approx(0.20) and n1["augmented"]["sd"] == 0.0
    assert "test_kappa" not in summary["metrics"]
    text = format_summary(summary)
    assert "f1_N1: real" in text and "difference +10.00 points (+15.00, +5.00)" in text
    assert per_class_png(summary, metrics, tmp_path / "f1.png").stat().st_size > 5000

    base = TrainConfig(shards="m.json", model="isatsleepnet", name="effect", run_tags={"team": "x"})
    real, augmented = (arm_config(base, "/aug/augmentation.json", arm, 3, "parent") for arm in ("real", "augmented"))
    assert real.augment_shards == [] and augmented.augment_shards == ["/aug/augmentation.json"]
    assert (real.name, augmented.name, augmented.seed) == ("effect-s3-real", "effect-s3-augmented", 3)
    assert augmented.run_tags == {"team": "x", "augmentation": "augmented"} and real.parent_run_id == "parent"
    # the training CLI passes augmentation manifests through
    from distsleep.cli import build_parser
    from distsleep.cli.common import config_from_args

    args = build_parser().parse_args(["pretrain", "--shards", "m.json", "--augment-shards", "a/augmentation.json", "b"])
    assert [Path(a).name for a in config_from_args(args).augment_shards] == ["augmentation.json", "b"]


# -------------------------------------------------------------------------------------------- the job
# (marked slow: they need the cohort's shards, built on the shared Ray cluster)


@pytest.fixture(scope="module")
def shards(multimodal_shards) -> Path:
    """The shared multimodal shards (5 training nights, each with a few N1 epochs)."""
    return multimodal_shards


@pytest.fixture(scope="module")
def trained(physio_gan):
    return physio_gan


def tiny(shards: Path, tmp: Path, **changes) -> GanTrainConfig:
    base = dict(shards=str(shards), model_size="small", batch_size=8, n_critic=2, max_steps=20, checkpoint_every=20,
                log_every=1, psd_epochs=64, num_workers=2, storage_path=str(tmp / "runs"), name="gan-tiny",
                tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="tests")
    return GanTrainConfig(**{**base, **changes})


def train_counts(shards: Path, stage: str) -> dict[str, int]:
    manifest = json.loads(shards.read_text())
    return {r: e["stages"][stage] for r, e in manifest["records"].items() if e["split"] == "train"}


@pytest.mark.slow
def test_gan_trains_on_two_workers_and_is_tracked(trained, shards, tmp_path):
    cfg, outcome = trained
    client = mlflow.MlflowClient(cfg.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["job"] == "physio-gan"
    params = run.data.params
    assert params["gan.spectral_weight"] == "1.0" and params["gan.adversarial"] == "wgan-gp"
    assert params["world_size"] == "2" and params["gan.stages"] == '["N1"]' and params["model.n_channels"] == "3"
    for name in ("loss_critic", "loss_generator", "loss_spectral", "loss_moment", "gradient_penalty"):
        steps = [m.step for m in client.get_metric_history(outcome.run_id, name)]
        assert steps == list(range(1, 21)), name
    metrics = run.data.metrics
    # 20 steps of a tiny GAN are far from real data; the half-vs-half floor is far below that.
    assert 0 < metrics["psd_floor_db"] < 3 < metrics["psd_distance_db"]
    assert all(f"psd_distance_db_N1_{c}" in metrics for c in CHANNELS)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)} | {
        a.path for a in client.list_artifacts(outcome.run_id, "generator")}
    assert {"psd_comparison.png", "psd_comparison.json", "generator/generator.pt"} <= artifacts
    report = json.loads(Path(client.download_artifacts(outcome.run_id, "psd_comparison.json", str(tmp_path))).read_text())
    assert report["summary"]["psd_distance_db"] == pytest.approx(metrics["psd_distance_db"])
    n1 = sum(train_counts(shards, "N1").values())  # psd_epochs 64 > what the training nights hold: all of them
    assert report["stages"]["N1"]["n_real"] == n1 - n1 % 2 and report["stages"]["N1"]["band_hz"] == [0.5, 40.0]

    bundle = torch.load(client.download_artifacts(outcome.run_id, "generator/generator.pt", str(tmp_path)), weights_only=True)
    manifest = json.loads(shards.read_text())
    assert bundle["channels"] == list(CHANNELS) and bundle["stages"] == ["N1"] and bundle["step"] == 20
    assert bundle["source_config_hash"] == manifest["config_hash"] and bundle["mlflow_run_id"] == outcome.run_id
    assert bundle["train_records"] and all(manifest["records"][r]["split"] == "train" for r in bundle["train_records"])
    assert sorted(bundle["train_records"]) == sorted(r for r, n in train_counts(shards, "N1").items() if n)
    assert all(s > 0 for s in bundle["scale_uv"]) and len(bundle["night_stats"]) == 3
    generator = gm.Generator(gm.PhysioGanConfig.from_dict(bundle["model_config"]))
    generator.load_state_dict(bundle["state_dict"])
    # both ranks applied identical averaged updates: the checkpoint (rank 0) equals the logged bundle
    checkpoint = torch.load(Path(outcome.checkpoint) / "gan_state.pt", weights_only=True)
    assert all(torch.equal(checkpoint["generator"][k], v) for k, v in bundle["state_dict"].items())


@pytest.mark.slow
def test_relaunching_the_same_name_resumes(trained, shards):
    cfg, first = trained
    # One worker this time: every rank holds the same weights, so rank 0's checkpoint fits any world size.
    outcome = run_gan_training(dataclasses.replace(cfg, max_steps=25, num_workers=1))
    state = json.loads((Path(outcome.checkpoint) / "trainer_state.json").read_text())
    assert state == {"step": 25, "resumes": 1, "mlflow_run_id": outcome.run_id}
    client = mlflow.MlflowClient(cfg.tracking_uri)
    # The first run finished, so the relaunch is a new MLflow run that continues the step count.
    steps = [m.step for m in client.get_metric_history(outcome.run_id, "loss_generator")]
    assert steps == [21, 22, 23, 24, 25]
    resumed = client.get_run(outcome.run_id).data
    assert resumed.metrics["resumes"] == 1 and resumed.params["gan.max_steps"] == "25"
    assert "psd_distance_db" in outcome.metrics
    # Launched again as it is, the finished run is returned, not trained into yet another MLflow run.
    again = run_gan_training(dataclasses.replace(cfg, max_steps=25, num_workers=1))
    assert (again.run_id, again.checkpoint) == (outcome.run_id, outcome.checkpoint)
    assert [m.step for m in client.get_metric_history(outcome.run_id, "loss_generator")] == steps


@pytest.mark.slow
def test_training_epochs_are_shared_out_over_ranks(shards):
    manifest, base = load_manifest(shards)
    train = {r: e["stages"] for r, e in manifest["records"].items() if e["split"] == "train"}
    n_train = len(train)
    for world, mode in ((2, "records"), (n_train + 1, "epochs")):  # more ranks than records: they share epochs
        parts = [read_training_epochs(manifest, base, CHANNELS, ("N1", "N3"), rank, world, 10_000, 0) for rank in range(world)]
        assert {p.mode for p in parts} == {mode}
        for i, stage in enumerate(("N1", "N3")):
            assert sum(p.count(i) for p in parts) == sum(s[stage] for s in train.values())
            assert all(p.count(i) > 0 for p in parts) and parts[0].codes[i].shape[1:] == (3, 3000)
    capped = read_training_epochs(manifest, base, CHANNELS, ("N3",), 0, 1, 20, 0)
    assert capped.count(0) == 20 and {s.record_id for s in capped.stats} == set(train)


def _relabelled(shards: Path, out: Path, change) -> Path:
    """A copy of the manifest whose training shards have labels mapped by `change` (rewritten shards)."""
    manifest, base = load_manifest(shards)
    for record_id, record in manifest["records"].items():
        if record["split"] != "train":
            continue
        sample = read_shard(Path(base) / record["shard"])
        sample.labels = change(sample.labels)
        write_shard(out / f"{record_id}.tar", sample)
        record["shard"] = str(out / f"{record_id}.tar")
        record["stages"]["N2"] += record["stages"]["N1"]
        record["stages"]["N1"] = 0
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.slow
def test_refuses_data_without_the_stage_and_never_reads_val_or_test(shards, tmp_path):
    no_n1 = _relabelled(shards, tmp_path, lambda labels: np.where(labels == 1, 2, labels).astype(np.int8))
    n_train = len(train_counts(shards, "N1"))
    with pytest.raises(LaunchError, match=rf"manifest.json: the {n_train} training record\(s\) hold no N1 epochs"):
        run_gan_training(tiny(no_n1, tmp_path))
    with pytest.raises(LaunchError, match=r"no channel\(s\) \['sao2'\]"):
        run_gan_training(tiny(shards, tmp_path, channels=("eeg_c3", "sao2")))
    # A manifest whose training entry points at a validation record's shard is refused while reading.
    manifest, base = load_manifest(shards)
    val = next(r for r, e in manifest["records"].items() if e["split"] == "val")
    train = next(r for r, e in manifest["records"].items() if e["split"] == "train")
    manifest["records"][train]["shard"] = manifest["records"][val]["shard"]
    with pytest.raises(ShardChecksumError, match=manifest["records"][val]["shard"]):  # not the shard it lists
        read_training_epochs(manifest, base, CHANNELS, ("N1",), 0, 1, 100, 0)
    manifest["records"][train]["sha256"] = manifest["records"][val]["sha256"]  # a consistent lie about splits
    # The shard says which record it holds (every reader checks it against its manifest entry); GanDataError
    # stays behind that check for a shard that holds a record outside the training split under its own name.
    with pytest.raises(ValueError, match=f"holds record {val}, but the manifest lists it as record {train}"):
        read_training_epochs(manifest, base, CHANNELS, ("N1",), 0, 1, 100, 0)


def _digests(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME)  # the lock names its holder
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_augmentation_writes_marked_shards_reproducibly(trained, shards, tmp_path, capsys):
    cfg, outcome = trained
    out = tmp_path / "aug"
    common = ["augment", "--generator", outcome.run_id, "--tracking-uri", cfg.tracking_uri, "--shards", str(shards),
              "--n-epochs", "25", "--epochs-per-record", "10", "--seed", "7"]
    args = [*common, "--out", str(out)]
    assert gan_main(args) == 0
    listing = json.loads((out / "augmentation.json").read_text())
    assert listing["split"] == "train" and listing["stages"] == ["N1"] and listing["channels"] == list(CHANNELS)
    assert listing["source_config_hash"] == json.loads(shards.read_text())["config_hash"]
    assert listing["source_manifest"] == str(shards.resolve()) and listing["generator"]["mlflow_run_id"] == outcome.run_id
    assert [e["n_epochs"] for e in listing["shards"]] == [10, 10, 5] and listing["counts"]["generated"] == {"N1": 25}

    urls = augmented_train_urls(out / "augmentation.json", json.loads(shards.read_text()))
    assert sorted(Path(u).name for u in urls) == sorted(p.name for p in (out / "shards").iterdir())
    night_stats = load_generator(outcome.run_id, cfg.tracking_uri).bundle["night_stats"]
    assert [set(s) for s in night_stats] == [{"median", "iqr"}] * 3 and all(s["iqr"] > 0 for s in night_stats)
    samples = [decode_sample(raw) for raw in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert len(samples) == 3
    for sample, entry in zip(samples, listing["shards"]):
        assert sample.key.startswith("aug-n1-") and "." not in sample.key and sample.key == entry["record_id"]
        assert sample.meta["augmented"] is True and sample.meta["record_id"] == sample.key
        assert sample.meta["augmentation"]["mlflow_run_id"] == outcome.run_id and sample.meta["augmentation"]["seed"] == 7
        assert sample.signals.dtype == np.int16 and sample.signals.shape == (entry["n_epochs"], 3, 3000)
        assert (sample.labels == 1).all() and not sample.events.any()
        # robust scaling uses the generator's typical whole-night median/IQR, like a real night's epochs
        assert sample.meta["channel_stats"] == night_stats and sample.meta["channel_stats_from"] == "training-nights"
        assert hashlib.sha256(Path(urls[listing["shards"].index(entry)]).read_bytes()).hexdigest() == entry["sha256"]
    # the training loader reads them by channel role, like real shards; evaluation refuses them
    loader = LoaderConfig(seq_len=1, batch_size=5, shuffle_buffer=8, num_workers=0, channels=list(CHANNELS),
                          normalization="robust")
    batches = list(train_dataset(urls, loader, 1, 0, batches_per_epoch=4))
    assert len(batches) == 4 and all(b.signals.shape == (5, 1, 3, 3000) and (b.labels == 1).all() for b in batches)
    with pytest.raises(ValueError, match=r"aug-n1-.*synthetic \(augmented\) epochs, which are for training only"):
        next(eval_sequences(urls, loader, 1, 0))

    before = _digests(out)
    assert gan_main(args) == 0 and "already complete, nothing written" in capsys.readouterr().out
    assert _digests(out) == before
    with exclusive_lock(out / LOCK_NAME, "a test holding the folder", "wait"):  # another augment job writing here
        assert gan_main([*common, "--n-epochs", "30", "--out", str(out)]) == 2
        assert f"the augmentation folder {out} is in use by another job" in capsys.readouterr().err
    assert _digests(out) == before, "the refused job touched nothing"
    fresh = tmp_path / "again"
    assert distsleep_main(["gan", *common, "--out", str(fresh)]) == 0  # the same job under the `distsleep` CLI
    assert _digests(fresh) == before, "same seed and arguments give the same bytes"

    # A manifest with another preprocessing config is refused, naming the file and the problem.
    other = json.loads(shards.read_text())
    other["config_hash"] = "0123456789abcdef"
    with pytest.raises(AugmentationError, match=r"augmentation.json: made for shards with preprocessing config hash"):
        augmented_train_urls(str(out / "augmentation.json"), other)
    with pytest.raises(AugmentationError, match=r"has no channel\(s\) \['emg'\]"):
        augmented_train_urls(out, json.loads(shards.read_text()), channels=["eeg_c3", "emg"])
    # Without its manifest (written last) a directory is incomplete and is not used.
    (fresh / "augmentation.json").unlink()
    with pytest.raises(AugmentationError, match="no augmentation manifest"):
        augmented_train_urls(fresh, json.loads(shards.read_text()))
    shutil.rmtree(fresh)


@pytest.mark.slow
def test_augmented_shards_reach_training_only(gan_augmentation, shards, tmp_path):
    manifest, base = load_manifest(shards)
    listing = json.loads(gan_augmentation.read_text())
    synthetic = {str(gan_augmentation.parent / e["shard"]) for e in listing["shards"]}
    cfg = TrainConfig(shards=str(shards), model="isatsleepnet", augment_shards=[str(gan_augmentation)])
    streams = stream_urls(cfg, manifest, base, CHANNELS)
    assert set(streams.augmented) == synthetic and synthetic <= set(streams.training)
    assert set(streams.training) - synthetic == set(shard_urls(manifest, "train", base))
    for split in ("val", "test"):
        urls = getattr(streams, split)
        assert urls == shard_urls(manifest, split, base) and not synthetic & set(urls)
        assert not any(decode_sample(raw).meta.get("augmented") for raw in wds.WebDataset(urls, shardshuffle=False))
    # Semi-supervised runs keep the synthetic epochs (their labels are the generator's target stage).
    semi = stream_urls(TrainConfig(shards=str(shards), label_fraction=0.4, augment_shards=[str(gan_augmentation)]),
                       manifest, base, CHANNELS)
    assert set(semi.augmented) == synthetic and len(semi.train) == 2

    # A generator that saw a person of this manifest's validation/test records (here another visit of theirs, in
    # no manifest of ours) is refused before launch, naming the augmentation and the records: its epochs would
    # carry that person into training.
    val_record = next(r for r, e in manifest["records"].items() if e["split"] == "val")
    other_visit = "shhs2-" + manifest["records"][val_record]["subject"]
    leaky = tmp_path / "augmentation.json"
    leaky.write_text(json.dumps({**listing, "generator": {**listing["generator"],
                                                         "train_records": [*listing["generator"]["train_records"], other_visit]}}))
    for entry in listing["shards"]:
        (tmp_path / "shards").mkdir(exist_ok=True)
        shutil.copy(gan_augmentation.parent / entry["shard"], tmp_path / entry["shard"])
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(LaunchError, match=rf"{leaky}: its generator was trained on the people of record\(s\) \['{val_record}'\]"):
        run_training(TrainConfig(shards=str(shards), model="isatsleepnet", augment_shards=[str(leaky)],
                                 tracking_uri=store, storage_path=str(tmp_path / "runs")))
    leaky.write_text(json.dumps({**listing, "split": "val"}))
    with pytest.raises(AugmentationError, match=r"split 'val'; synthetic epochs are for training only"):
        augmented_train_urls(leaky, manifest)
