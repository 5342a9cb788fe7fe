"""The shard loader on real shards written with `write_shard` (no Ray).

Each night encodes its own identity in the int16 codes: channel 0, sample 0 of epoch e holds e, and sample 1
holds the record number. A training or evaluation window therefore shows which night and which epochs it
was cut from, and we can check that the labels, events and uV values belong to exactly those epochs.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import pickle
import tarfile
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

import distsleep.shards.loader as loader_module
from distsleep.errors import MissingChannelError
from distsleep.shards.format import ShardSample, encode_sample, read_shard, shard_bytes, write_shard
from distsleep.shards.loader import (
    LoaderConfig,
    batches_per_epoch,
    count_train_sequences,
    endless_batches,
    eval_batches,
    eval_sequences,
    load_manifest,
    make_eval_loader,
    make_train_loader,
    shard_identities,
    shard_urls,
    train_dataset,
    window_starts,
    worker_share,
)

ROLES = ["eeg", "eog"]
SCALES = [0.5, 2.0]
SAMPLES = 3000
# 444 epochs -> 412 windows of 5 -> 412 // (2 ranks x 4) = 51 batches per rank, odd so the two workers differ
TRAIN_LENGTHS = [31, 38, 45, 52, 59, 66, 73, 80]
# vs seq_len 21: shorter, equal, not a multiple, a multiple, ...
VAL_LENGTHS = [10, 21, 30, 42, 55, 80]
TEST_LENGTHS = [25, 63, 47]


def make_sample(record_id: str, number: int, n_epochs: int) -> ShardSample:
    rng = np.random.default_rng(number)
    signals = rng.integers(-1000, 1000, size=(n_epochs, len(ROLES), SAMPLES), dtype=np.int16)
    signals[:, 0, 0] = np.arange(n_epochs)
    signals[:, 0, 1] = number
    labels = (np.arange(n_epochs) % 5).astype(np.int8)
    labels[3::7] = -1
    events = rng.integers(0, 2, size=(n_epochs, 3)).astype(np.uint8)
    meta = {
        "record_id": record_id, "source": "test", "target_rate": 100.0, "epoch_seconds": 30.0,
        "channels": [{"role": r, "label": r.upper(), "source_rate": 100.0, "unit": "uV"} for r in ROLES],
        "scale_uv": SCALES, "n_epochs": n_epochs, "config_hash": "test", "augmented": False,
    }
    return ShardSample(key=record_id, signals=signals, labels=labels, events=events, meta=meta)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """A shard folder with manifest.json; returns {"root", "nights": {record_id: ShardSample}, "number": {...}}."""
    root = tmp_path_factory.mktemp("shards")
    records, nights, numbers = {}, {}, {}
    number = 0
    for split, lengths in (("train", TRAIN_LENGTHS), ("val", VAL_LENGTHS), ("test", TEST_LENGTHS)):
        for n_epochs in lengths:
            record_id = f"rec-{number:03d}"
            sample = make_sample(record_id, number, n_epochs)
            write_shard(root / "shards" / f"{record_id}.tar", sample)
            records[record_id] = {"split": split, "shard": f"shards/{record_id}.tar", "n_epochs": n_epochs}
            nights[record_id], numbers[number] = sample, record_id
            number += 1
    manifest = {"records": records, "channels": ROLES, "config_hash": "test"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return {"root": root, "nights": nights, "record_of_number": numbers}


# ------------------------------------------------------------------------------------------- shard format


def test_shard_reads_back_with_tarfile_and_webdataset(tmp_path):
    sample = make_sample("shhs1-200001", 1, 33)
    path = tmp_path / "shhs1-200001.tar"
    write_shard(path, sample)
    expected = {f"shhs1-200001.{k}": v for k, v in encode_sample(sample).items() if k != "__key__"}

    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == sorted(expected)
        for member in members:
            assert tar.extractfile(member).read() == expected[member.name]
            assert member.mtime == 0 and member.mode == 0o444

    raws = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert len(raws) == 1
    assert raws[0]["__key__"] == "shhs1-200001" and raws[0]["__url__"] == str(path)
    assert {k: raws[0][k] for k in ("signals.npy", "labels.npy", "events.npy", "meta.json")} == {
        k.split(".", 1)[1]: v for k, v in expected.items()
    }
    back = read_shard(path)
    assert np.array_equal(back.signals, sample.signals) and back.signals.dtype == np.int16
    assert np.array_equal(back.labels, sample.labels) and np.array_equal(back.events, sample.events)
    assert back.meta == sample.meta

    # A tar cut short at a member boundary is still a valid tar: the error names the shard and what is missing.
    cut = tmp_path / "cut.tar"
    with tarfile.open(path) as tar, tarfile.open(cut, "w") as out:
        for member in tar.getmembers():
            if not member.name.endswith(".signals.npy"):
                out.addfile(member, tar.extractfile(member))
    with pytest.raises(ValueError, match=rf"{cut}: sample 'shhs1-200001' lacks signals.npy"):
        read_shard(cut)


@pytest.mark.parametrize("record_id", ["../../escaped", "/tmp/escaped", ".hidden", "a\\b", "", "bell\a"])
def test_a_shard_whose_record_id_is_not_a_file_name_is_refused(tmp_path, record_id):
    """A record id names files (its probabilities in `evaluate`, its hypnogram plot in training): a shard saying
    its record is `../../escaped` is refused where any reader decodes it, naming the shard, before anything is
    written under that name."""
    sample = make_sample("shhs1-200001", 1, 5)
    sample.meta["record_id"] = record_id
    path = tmp_path / "shhs1-200001.tar"
    write_shard(path, sample)
    with pytest.raises(ValueError, match=rf"{path}: record id .* is not a (plain file name|non-empty string).*not "
                                         "written by distsleep"):
        read_shard(path)
    with pytest.raises(ValueError, match=rf"{path}: record id"):
        next(eval_sequences([str(path)], LoaderConfig(seq_len=5), world_size=1, rank=0))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["shhs1-200001.tar"]


@pytest.mark.parametrize("n_epochs, n_channels", [(33, 1), (1080, 2), (0, 1)])
def test_shard_bytes_are_webdatasets_tar_and_write_shard_reports_them(tmp_path, n_epochs, n_channels):
    """`shard_bytes` frames the tar itself (to copy the signal once); the bytes must be exactly those of
    webdataset's TarWriter with np.save'd members, and write_shard's size and sha256 those of the file."""
    sample = make_sample("shhs1-200001", 1, max(n_epochs, 1))
    if n_channels > 1:
        sample.signals = np.concatenate([sample.signals] * n_channels, axis=1)
    sample.signals, sample.labels, sample.events = (a[:n_epochs] for a in (sample.signals, sample.labels, sample.events))

    def npy(array):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()

    stream = io.BytesIO()
    writer = wds.TarWriter(stream, user="distsleep", group="distsleep", mode=0o444, mtime=0, encoder=False)
    writer.write({"__key__": sample.key, "signals.npy": npy(sample.signals), "labels.npy": npy(sample.labels),
                  "events.npy": npy(sample.events), "meta.json": json.dumps(sample.meta, sort_keys=True).encode()})
    writer.close()
    assert shard_bytes(sample) == stream.getvalue()

    path = tmp_path / "shhs1-200001.tar"
    n_bytes, digest = write_shard(path, sample)
    assert n_bytes == len(stream.getvalue()) == path.stat().st_size
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- manifest


def test_shard_urls_resolve_relative_paths_and_keep_urls(tmp_path):
    manifest = {"records": {
        "b": {"split": "train", "shard": "shards/b.tar", "n_epochs": 40},
        "a": {"split": "train", "shard": "s3://bucket/shards/a.tar", "n_epochs": 40},
        "d": {"split": "train", "shard": "pipe:aws s3 cp s3://bucket/d.tar -", "n_epochs": 40},
        "c": {"split": "train", "shard": "/abs/c.tar", "n_epochs": 40},
        "e": {"split": "val", "shard": "shards/e.tar", "n_epochs": 40},
    }}
    assert shard_urls(manifest, "train", str(tmp_path)) == [
        "s3://bucket/shards/a.tar", str(tmp_path / "shards" / "b.tar"), "/abs/c.tar",
        "pipe:aws s3 cp s3://bucket/d.tar -",
    ]
    assert shard_urls(manifest, "val", "gs://bucket/run1/") == ["gs://bucket/run1/shards/e.tar"]
    assert shard_urls(manifest, "test", str(tmp_path)) == []
    with pytest.raises(ValueError, match="split"):
        shard_urls(manifest, "training", str(tmp_path))

    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    for location in (tmp_path / "manifest.json", tmp_path, f"file://{tmp_path}/manifest.json"):
        loaded, base = load_manifest(location, allow_commands=True)  # record d is a pipe: command
        assert loaded == manifest and base == str(tmp_path.resolve())


def test_sequence_counts_from_manifest(dataset):
    manifest, _ = load_manifest(dataset["root"])
    assert count_train_sequences(manifest, seq_len=5) == sum(n - 4 for n in TRAIN_LENGTHS) == 412
    assert count_train_sequences(manifest, seq_len=21, split="val") == 0 + 1 + 10 + 22 + 35 + 60
    assert batches_per_epoch(manifest, 2, 4, seq_len=5) == 51
    assert batches_per_epoch(manifest, 64, 32, seq_len=5) == 1  # never zero
    assert [worker_share(51, w, 2) for w in (0, 1)] == [26, 25]
    assert sum(worker_share(10, w, 4) for w in range(4)) == 10


# ---------------------------------------------------------------------------------------------- training


def window_identity(
    dataset: dict, signals: torch.Tensor, labels: torch.Tensor, events: torch.Tensor
) -> tuple[str, int]:
    """(record_id, first epoch) of one training window, after checking that it is L consecutive epochs."""
    codes0 = (signals[:, 0, :2] / SCALES[0]).numpy()
    numbers = codes0[:, 1]
    assert (numbers == numbers[0]).all(), "a window mixes nights"
    record_id = dataset["record_of_number"][int(numbers[0])]
    night = dataset["nights"][record_id]
    start = int(codes0[0, 0])
    assert np.array_equal(codes0[:, 0], np.arange(start, start + len(codes0))), "epochs are not consecutive"
    stop = start + len(codes0)
    assert np.array_equal(labels.numpy(), night.labels[start:stop].astype(np.int64))
    assert np.array_equal(events.numpy(), night.events[start:stop])
    assert np.array_equal(signals.numpy(), night.physical()[start:stop])
    return record_id, start


def run_epochs(dataset: dict, loader, epochs: int) -> list[list[tuple[str, int]]]:
    out = []
    for _ in range(epochs):
        windows = []
        for batch in loader:
            assert batch.codes.dtype == torch.int16 and batch.scale.shape == batch.offset.shape == (4, 2)
            signals, labels, events = batch.signals, batch.labels, batch.events
            assert signals.shape == (4, 5, 2, SAMPLES) and signals.dtype == torch.float32
            assert labels.shape == (4, 5) and labels.dtype == torch.int64
            assert events.shape == (4, 5, 3) and events.dtype == torch.uint8
            windows += [window_identity(dataset, signals[i], labels[i], events[i]) for i in range(4)]
        out.append(windows)
    return out


def test_train_ranks_yield_equal_batch_counts_and_different_streams(dataset, monkeypatch):
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "train", base)
    train_ids = {r for r, v in manifest["records"].items() if v["split"] == "train"}
    cfg = LoaderConfig(seq_len=5, batch_size=4, shuffle_buffer=64, num_workers=2, seed=7)
    n_batches = batches_per_epoch(manifest, 2, cfg.batch_size, seq_len=cfg.seq_len)
    assert n_batches == 51

    streams = {}
    for rank in (0, 1):
        loader = make_train_loader(urls, cfg, world_size=2, rank=rank, batches_per_epoch=n_batches)
        assert loader.num_workers == 2
        streams[rank] = run_epochs(dataset, loader, epochs=2)
        for windows in streams[rank]:
            assert len(windows) == n_batches * cfg.batch_size  # exactly batches_per_epoch batches, both epochs
            assert {r for r, _ in windows} <= train_ids
    assert streams[0][0] != streams[1][0], "ranks must see different streams"
    assert len(set(streams[0][0]) & set(streams[1][0])) < len(streams[0][0]) // 2
    assert streams[0][1] != streams[0][0], "the second epoch must continue the stream, not repeat it"
    assert len({r for r, _ in streams[0][0]}) >= 4, "windows must be mixed across nights"

    # Reproducible from (seed, rank, worker), and the explicit rank wins over RANK/WORLD_SIZE in the environment
    # (webdataset's own split_by_node/worker seed read those; with RANK=1 this would otherwise be rank 1's stream).
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    again = make_train_loader(list(reversed(urls)), cfg, world_size=2, rank=0, batches_per_epoch=n_batches)
    assert run_epochs(dataset, again, epochs=1)[0] == streams[0][0]


def test_train_cuts_every_window_of_a_night_in_random_order(dataset):
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "train", base)
    # no shuffle buffer, so windows come out in the order the night was cut; every window per visit
    cfg = LoaderConfig(seq_len=5, batch_size=1, shuffle_buffer=1, num_workers=0, seed=3, windows_per_visit=0)
    stream = train_dataset(urls, cfg, world_size=1, rank=0, batches_per_epoch=80)
    windows = [window_identity(dataset, b.signals[0], b.labels[0], b.events[0]) for b in stream]
    record_id = windows[0][0]
    n_windows = len(dataset["nights"][record_id].labels) - 4
    starts = [start for r, start in windows[:n_windows]]
    assert {r for r, _ in windows[:n_windows]} == {record_id}
    assert sorted(starts) == list(range(n_windows)) and starts != sorted(starts)


def test_train_refuses_fewer_shards_than_ranks_times_workers(dataset):
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "train", base)[:3]
    cfg = LoaderConfig(num_workers=2)
    with pytest.raises(ValueError, match=r"has 3 shard\(s\).*need at least 4.*num_workers.*more records"):
        train_dataset(urls, cfg, world_size=2, rank=0, batches_per_epoch=5)
    with pytest.raises(ValueError, match="at least 8"):
        make_train_loader(urls, cfg, world_size=4, rank=0, batches_per_epoch=5)
    train_dataset(urls[:2], LoaderConfig(num_workers=0), world_size=2, rank=1, batches_per_epoch=5)  # 2 >= 2 x 1
    with pytest.raises(ValueError, match="rank"):
        train_dataset(urls, LoaderConfig(num_workers=0), world_size=2, rank=2, batches_per_epoch=5)


def test_train_dataset_pickles_and_selects_channels(dataset):
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "train", base)
    cfg = LoaderConfig(seq_len=3, batch_size=2, shuffle_buffer=8, num_workers=0, channels=["eog"])
    stream = train_dataset(urls, cfg, world_size=1, rank=0, batches_per_epoch=3)
    batches = list(stream)
    assert len(batches) == 3 and batches[0].signals.shape == (2, 3, 1, SAMPLES)
    pickle.loads(pickle.dumps(stream))  # a started stream still pickles (for spawned workers)
    assert len(list(stream)) == 3


@pytest.mark.parametrize("channels", [None, ["eog"]])
def test_train_windows_own_their_data_so_a_cut_night_is_freed(dataset, monkeypatch, channels):
    """The shuffle buffer holds windows of many nights (~170 per worker at 2000 windows): a window that were a view
    into its night would keep the whole night (6 MB, ~42 MB multimodal) in memory while it waits there. Here every
    window the stream cuts is kept, as a buffer would, and every night but the one being cut must be freed."""
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "train", base)
    nights, windows = [], []  # weak references to each visited night's arrays; every window cut (strong)
    load_night, cut = loader_module._load_night, loader_module._windows

    def owner(array: np.ndarray) -> np.ndarray:  # the array holding the memory (a night's arrays may be views)
        while isinstance(array.base, np.ndarray):
            array = array.base
        return array

    def recorded_night(*args):
        night = load_night(*args)
        nights.append([weakref.ref(owner(a)) for a in (night.codes, night.labels, night.events)])
        return night

    def recorded_windows(*args):
        for window in cut(*args):
            windows.append(window)
            yield window

    monkeypatch.setattr(loader_module, "_load_night", recorded_night)
    monkeypatch.setattr(loader_module, "_windows", recorded_windows)
    cfg = LoaderConfig(seq_len=5, batch_size=4, shuffle_buffer=200, num_workers=0, seed=1, channels=channels)
    stream = train_dataset(urls, cfg, world_size=1, rank=0, batches_per_epoch=10)
    assert len(list(stream)) == 10
    gc.collect()
    assert len(nights) >= 15 and len(windows) >= 200
    for codes, _, _, labels, events in windows:
        assert codes.base is None and labels.base is None and events.base is None, "a window is a view"
    alive = [i for i, refs in enumerate(nights) if any(ref() is not None for ref in refs)]
    assert alive == [len(nights) - 1], "windows in the buffer keep their nights alive"


def test_a_resumed_stream_does_not_replay_the_batches_of_its_epoch(dataset):
    """A run resumed at step s inside epoch e must not rebuild epoch e's stream from its start, or it trains again
    on the batches it already had; a fresh run's (and a resume at an epoch boundary's) stream is as before."""
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "train", base)
    cfg = LoaderConfig(seq_len=5, batch_size=4, shuffle_buffer=64, num_workers=2, seed=7)
    per_epoch = 10

    def run(start_step: int, n: int = 6) -> tuple[list[tuple[str, int]], list[list[int]]]:
        loader = make_train_loader(urls, cfg, world_size=2, rank=1, batches_per_epoch=per_epoch)
        batches = endless_batches(loader, start_step=start_step)
        taken = [next(batches) for _ in range(n)]
        windows = [window_identity(dataset, b.signals[i], b.labels[i], b.events[i]) for b in taken for i in range(4)]
        return windows, [loader.dataset.seeds(w) for w in range(cfg.num_workers)]

    def parent_seeds(epoch: int) -> list[list[int]]:  # the formula before resumes had their own seeds
        return [[int(s) for s in np.random.SeedSequence([7, 1, w, epoch]).generate_state(3)] for w in range(2)]

    fresh, seeds = run(0)
    assert seeds == parent_seeds(0)
    epoch2, seeds = run(2 * per_epoch)  # a resume at an epoch boundary starts that epoch's stream, as before
    assert seeds == parent_seeds(2) and epoch2 != fresh
    resumed, seeds = run(2 * per_epoch + 3)
    assert seeds != parent_seeds(2)
    assert resumed != epoch2 and len(set(resumed) & set(epoch2)) < len(epoch2) // 2, "the resume replays its epoch"
    assert run(2 * per_epoch + 3)[0] == resumed, "a resumed stream must be reproducible"
    assert run(2 * per_epoch + 4)[0] != resumed


# -------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("stride", [None, 7, 1])
def test_eval_covers_every_epoch_exactly_once(dataset, stride):
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "val", base) + shard_urls(manifest, "test", base)
    cfg = LoaderConfig(seq_len=21, stride=stride)
    expected = Counter((r, e) for r, s in dataset["nights"].items()
                       if manifest["records"][r]["split"] != "train" for e in range(len(s.labels)))
    valid_counts: Counter = Counter()
    appearing: set = set()
    per_rank: dict[int, list[str]] = {0: [], 1: []}
    for rank in (0, 1):
        for seq in eval_sequences(urls, cfg, world_size=2, rank=rank):
            night = dataset["nights"][seq.record_id]
            assert seq.signals.shape == (21, 2, SAMPLES) and seq.signals.dtype == np.float32
            assert seq.labels.dtype == np.int64 and seq.valid.dtype == bool and seq.epoch_index.dtype == np.int64
            real = seq.epoch_index >= 0
            index = seq.epoch_index[real]
            assert np.array_equal(index, np.arange(index[0], index[0] + len(index)))  # consecutive, one night
            assert not seq.valid[~real].any() and (seq.labels[~real] == -1).all() and (seq.signals[~real] == 0).all()
            assert np.array_equal(seq.labels[real], night.labels[index])
            assert np.array_equal(seq.events[real], night.events[index])
            assert np.array_equal(seq.signals[real], night.physical()[index])
            valid_counts.update((seq.record_id, int(e)) for e in seq.epoch_index[seq.valid])
            appearing.update((seq.record_id, int(e)) for e in index)
            if not per_rank[rank] or per_rank[rank][-1] != seq.record_id:
                per_rank[rank].append(seq.record_id)
    assert valid_counts == expected  # every epoch of every val/test night, each exactly once
    assert appearing == set(expected)
    ordered = sorted(urls)
    assert per_rank[0] == [Path(u).stem for u in ordered[0::2]]
    assert per_rank[1] == [Path(u).stem for u in ordered[1::2]]
    # the assignment does not depend on the order the caller lists the shards in
    shuffled = [urls[i] for i in np.random.default_rng(0).permutation(len(urls))]
    assert [s.record_id for s in eval_sequences(shuffled, cfg, world_size=2, rank=1)] == [
        s.record_id for s in eval_sequences(urls, cfg, world_size=2, rank=1)
    ]


def test_window_starts():
    assert window_starts(10, 21, 21) == [0]
    assert window_starts(21, 21, 21) == [0]
    assert window_starts(30, 21, 21) == [0, 9]
    assert window_starts(42, 21, 21) == [0, 21]
    assert window_starts(30, 21, 7) == [0, 7, 9]
    assert window_starts(28, 21, 7) == [0, 7]
    with pytest.raises(ValueError, match="stride"):
        LoaderConfig(seq_len=21, stride=22)


def test_eval_batches(dataset):
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "val", base)
    cfg = LoaderConfig(seq_len=21, batch_size=4, channels=["eog", "eeg"])
    sequences = list(eval_sequences(urls, cfg, world_size=1, rank=0))
    # non-overlapping windows: ceil(n / L) per night, at least one
    assert len(sequences) == sum(max(1, -(-n // 21)) for n in VAL_LENGTHS) == 1 + 1 + 2 + 2 + 3 + 4
    batches = list(eval_batches(urls, cfg, world_size=1, rank=0))
    assert [len(b) for b in batches] == [4, 4, 4, 1]
    assert sum((b.record_ids for b in batches), []) == [s.record_id for s in sequences]
    first = batches[0]
    assert first.signals.shape == (4, 21, 2, SAMPLES) and first.signals.dtype == torch.float32
    assert first.labels.dtype == torch.int64 and first.valid.dtype == torch.bool
    assert first.epoch_index.shape == (4, 21) and first.events.shape == (4, 21, 3)
    night = dataset["nights"][first.record_ids[0]]
    n = min(21, len(night.labels))  # channels reordered: eog first
    assert np.array_equal(first.signals[0, :n].numpy(), night.physical()[:n, ::-1])


def test_eval_loader_workers_yield_the_same_windows_as_one_process(dataset):
    """Two DataLoader workers split the nights between them: every window arrives once, with the same values
    (int16 codes converted where the batch is used), whatever order the workers deliver in."""
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "val", base)
    cfg = LoaderConfig(seq_len=21, batch_size=3, channels=["eeg", "eog"])

    def windows(batches) -> dict:
        out = {}
        for b in batches:
            assert b.codes.dtype == torch.int16
            for i, record_id in enumerate(b.record_ids):
                out[(record_id, int(b.epoch_index[i, 0]))] = (b.signals[i].numpy(), b.labels[i].numpy())
        return out

    one = windows(eval_batches(urls, cfg, world_size=1, rank=0))
    two = windows(make_eval_loader(urls, cfg, world_size=1, rank=0, batch_size=2, num_workers=2))
    assert one.keys() == two.keys() and len(one) == 1 + 1 + 2 + 2 + 3 + 4
    for key, (signals, labels) in one.items():
        assert np.array_equal(two[key][0], signals) and np.array_equal(two[key][1], labels)


# ----------------------------------------------------------------------------------------------- channels


def test_missing_channel_names_shard_and_channel(dataset):
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "val", base)
    first = sorted(urls)[0]
    with pytest.raises(MissingChannelError, match=r"rec-\d+\.tar.*'emg'.*\['eeg', 'eog'\]") as info:
        next(eval_sequences(urls, LoaderConfig(channels=["eeg", "emg"]), world_size=1, rank=0))
    assert info.value.path == first
    with pytest.raises(MissingChannelError, match="channel index 5.*2 channels"):
        next(eval_sequences(urls, LoaderConfig(channels=[0, 5]), world_size=1, rank=0))

    train_urls = shard_urls(manifest, "train", base)
    stream = train_dataset(train_urls, LoaderConfig(seq_len=5, num_workers=0, channels=["emg"]), 1, 0, 2)
    with pytest.raises(MissingChannelError, match=r"rec-\d+\.tar.*'emg'"):
        next(iter(stream))
    # inside DataLoader workers the error comes back re-raised, with the shard and channel in its message
    loader = make_train_loader(train_urls, LoaderConfig(seq_len=5, num_workers=1, channels=["emg"]), 1, 0, 2)
    with pytest.raises(Exception, match=r"rec-\d+\.tar.*'emg'"):
        next(iter(loader))


def test_windows_per_visit_caps_each_visit(dataset):
    """By default a visit takes ceil(n_epochs / L) distinct random windows of the night, then moves on."""
    manifest, base = load_manifest(dataset["root"])
    urls = shard_urls(manifest, "train", base)
    cfg = LoaderConfig(seq_len=5, batch_size=1, shuffle_buffer=1, num_workers=0, seed=3)
    stream = train_dataset(urls, cfg, world_size=1, rank=0, batches_per_epoch=40)
    windows = [window_identity(dataset, b.signals[0], b.labels[0], b.events[0]) for b in stream]
    first = windows[0][0]
    cap = -(-len(dataset["nights"][first].labels) // 5)
    visit = windows[:cap]
    assert {r for r, _ in visit} == {first} and len({s for _, s in visit}) == cap


def test_a_manifest_must_name_the_record_and_config_each_shard_holds(dataset, tmp_path):
    """A manifest edited by hand: an entry pointing at a shard of another preprocessing config (its sha256
    correct) or at another record's shard is refused where the shard is read, naming it, in the evaluation
    pass and the training stream; two records naming one shard are refused from the manifest alone."""
    manifest, base = load_manifest(dataset["root"])
    test_ids = shard_urls(manifest, "test", base)
    other = make_sample("rec-900", 900, 25)
    other.meta["config_hash"] = "another-config"
    write_shard(tmp_path / "rec-900.tar", other)
    mixed = json.loads(json.dumps(manifest))
    first_test = sorted(r for r, e in manifest["records"].items() if e["split"] == "test")[0]
    mixed["records"][first_test]["shard"] = str(tmp_path / "rec-900.tar")
    urls = shard_urls(mixed, "test", base)
    cfg = LoaderConfig(seq_len=5, identities=shard_identities(mixed, base))
    with pytest.raises(ValueError, match=r"rec-900\.tar: holds record rec-900, but the manifest lists it as record "
                                         + first_test):
        list(eval_sequences(urls, cfg, world_size=1, rank=0))
    other.meta["record_id"], other.key = first_test, first_test  # the right record, another preprocessing
    write_shard(tmp_path / "rec-900.tar", other)
    with pytest.raises(ValueError, match=r"rec-900\.tar: preprocessed with config another-config, but the "
                                         "manifest's config is test"):
        list(eval_sequences(urls, cfg, world_size=1, rank=0))
    train_cfg = LoaderConfig(seq_len=5, batch_size=2, num_workers=0, identities=cfg.identities)
    with pytest.raises(ValueError, match=r"rec-900\.tar: preprocessed with config another-config"):
        for _ in make_train_loader(urls, train_cfg, world_size=1, rank=0, batches_per_epoch=50):
            pass
    # Unmixed, the same checks pass: every night of the split is read.
    assert {s.record_id for s in eval_sequences(test_ids, LoaderConfig(seq_len=5, identities=shard_identities(
        manifest, base)), world_size=1, rank=0)} == {r for r, e in manifest["records"].items() if e["split"] == "test"}
    twice = json.loads(json.dumps(manifest))
    second_test = sorted(r for r, e in manifest["records"].items() if e["split"] == "test")[1]
    twice["records"][second_test]["shard"] = twice["records"][first_test]["shard"]
    with pytest.raises(ValueError, match=f"records {first_test} and {second_test} of the manifest name this one shard"):
        shard_identities(twice, base)
