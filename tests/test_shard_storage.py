"""Shards and manifests read from where they live: a local path, a `pipe:` command, or an fsspec URL
(here http:// served by a real HTTP server on 127.0.0.1, standing in for a bucket)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from distsleep.shards.format import write_shard
from distsleep.shards.loader import (LoaderConfig, batches_per_epoch, eval_sequences, load_manifest, make_train_loader,
                                     shard_urls)
from distsleep.shards.storage import is_remote, open_binary, scheme
from tests.test_loader import make_sample


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served")
    records = {}
    for number, (split, n_epochs) in enumerate([("train", 40), ("train", 33), ("val", 25), ("test", 30)]):
        record_id = f"rec-{number:03d}"
        write_shard(root / "shards" / f"{record_id}.tar", make_sample(record_id, number, n_epochs))
        records[record_id] = {"split": split, "shard": f"shards/{record_id}.tar", "n_epochs": n_epochs}
    (root / "manifest.json").write_text(json.dumps({"records": records, "channels": ["eeg", "eog"], "config_hash": "t"}))
    return root


@pytest.fixture(scope="module")
def server(shard_dir):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shard_dir))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _eval(manifest_location: str, split: str) -> list:
    manifest, base = load_manifest(manifest_location)
    urls = shard_urls(manifest, split, base)
    return urls, [(s.record_id, s.epoch_index.tolist(), s.signals.copy(), s.labels.copy())
                  for s in eval_sequences(urls, LoaderConfig(seq_len=5), 1, 0)]


def test_schemes():
    assert scheme("/data/x.tar") is None and scheme("C:/data/x.tar") is None
    assert scheme("s3://b/x.tar") == "s3" and scheme("pipe:cat x") == "pipe" and scheme("file:///x") == "file"
    assert is_remote("gs://b/x") and not is_remote("/x") and not is_remote("file:///x")


def test_http_shards_read_exactly_like_local_ones(shard_dir, server):
    local_urls, local = _eval(str(shard_dir / "manifest.json"), "train")
    remote_urls, remote = _eval(f"{server}/manifest.json", "train")
    assert all(u.startswith(server) for u in remote_urls) and len(remote_urls) == len(local_urls) == 2
    assert len(remote) == len(local) > 0
    for (rid_a, start_a, x_a, y_a), (rid_b, start_b, x_b, y_b) in zip(local, remote):
        assert (rid_a, start_a) == (rid_b, start_b)
        np.testing.assert_array_equal(x_a, x_b)
        np.testing.assert_array_equal(y_a, y_b)


def test_training_stream_from_http(server):
    manifest, base = load_manifest(f"{server}/")
    urls = shard_urls(manifest, "train", base)
    cfg = LoaderConfig(seq_len=5, batch_size=4, shuffle_buffer=8, num_workers=1)
    loader = make_train_loader(urls, cfg, 1, 0, batches_per_epoch(manifest, 1, 4, seq_len=5))
    batches = list(loader)
    assert len(batches) == batches_per_epoch(manifest, 1, 4, seq_len=5) > 0
    assert batches[0].signals.shape == (4, 5, 2, 3000)


def test_pipe_and_file_urls(shard_dir):
    shard = shard_dir / "shards" / "rec-000.tar"
    expected = shard.read_bytes()
    with open_binary(f"pipe:cat {shard}") as stream:
        assert stream.read() == expected
    with open_binary(shard.as_uri()) as stream:
        assert stream.read() == expected
    manifest, base = load_manifest(shard_dir.as_uri() + "/manifest.json")
    assert base == str(shard_dir) and len(manifest["records"]) == 4


def test_missing_remote_objects_are_named(server):
    with pytest.raises(FileNotFoundError, match="nothing-here.tar"):
        open_binary(f"{server}/shards/nothing-here.tar")
    # gcsfs is not installed (gs:// is not a supported store): the error says so.
    with pytest.raises(OSError, match=r"gs://bucket/x.tar: no filesystem for 'gs://' URLs"):
        open_binary("gs://bucket/x.tar")


# ----------------------------------------------------------------------------- manifests are data, not code


def _manifest_with(folder: Path, shard_dir: Path, entry: str) -> Path:
    """A copy of the served manifest whose first training record points at `entry`."""
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    for record in manifest["records"].values():
        record["shard"] = str(shard_dir / record["shard"])
    manifest["records"]["rec-000"]["shard"] = entry
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def test_manifest_entries_cannot_run_commands(shard_dir, tmp_path, capsys):
    from distsleep.shards.augmented import AugmentationError, load_augmentation
    from distsleep.shards.storage import UnsafeEntryError

    marker = tmp_path / "the-manifest-ran-this"
    command = f"pipe:touch {marker}; cat {shard_dir / 'shards' / 'rec-000.tar'}"
    evil = _manifest_with(tmp_path / "evil", shard_dir, command)
    with pytest.raises(UnsafeEntryError) as refused:
        load_manifest(evil)
    assert str(evil) in str(refused.value) and "record rec-000" in str(refused.value)
    assert "--allow-shard-commands" in str(refused.value)
    # Schemes outside the allow-list are refused too (fsspec would open them), and so are augmentation files.
    with pytest.raises(UnsafeEntryError, match="record rec-000 is 'ftp://"):
        load_manifest(_manifest_with(tmp_path / "ftp", shard_dir, "ftp://example.org/rec-000.tar"))
    augmentation = tmp_path / "aug"
    augmentation.mkdir()
    (augmentation / "augmentation.json").write_text(json.dumps({"shards": [{"shard": command, "sha256": "0" * 64}]}))
    with pytest.raises(AugmentationError, match=r"augmentation.json: shard entry 0 is 'pipe:touch"):
        load_augmentation(augmentation)

    # Through the command line: refused before anything starts (exit 2), and the command never ran.
    from distsleep.cli import main

    assert main(["pretrain", "--shards", str(evil), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 "--storage-path", str(tmp_path / "runs")]) == 2
    assert "record rec-000 is 'pipe:touch" in capsys.readouterr().err and not marker.exists()
    # Opted in on the command line (here: the library flag it sets), the entry is used as written.
    manifest, base = load_manifest(evil, allow_commands=True)
    nights = list(eval_sequences(shard_urls(manifest, "train", base), LoaderConfig(seq_len=5), 1, 0))
    assert marker.exists() and {s.record_id for s in nights} == {"rec-000", "rec-001"}


def test_shards_are_checked_against_their_manifest(shard_dir, server, tmp_path):
    import hashlib
    import shutil

    from distsleep.shards.loader import shard_checksums
    from distsleep.shards.storage import ShardChecksumError

    folder = tmp_path / "copy"
    shutil.copytree(shard_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for record in manifest["records"].values():
        record["sha256"] = hashlib.sha256((folder / record["shard"]).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    # A shard changed after preprocessing: one sample value flipped near the end of the signals member.
    shard = folder / "shards" / "rec-002.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))

    manifest, base = load_manifest(folder)
    urls, checksums = shard_urls(manifest, "val", base), shard_checksums(manifest, base)
    with pytest.raises(ShardChecksumError, match=r"rec-002.tar: sha256 .* differs"):
        list(eval_sequences(urls, LoaderConfig(seq_len=5, checksums=checksums), 1, 0))
    # The training stream (DataLoader worker processes) refuses it too.
    train = shard_urls(manifest, "train", base)
    intact = LoaderConfig(seq_len=5, batch_size=4, shuffle_buffer=8, num_workers=1, checksums=checksums)
    assert len(list(make_train_loader(train, intact, 1, 0, 2))) == 2
    stream = make_train_loader(urls * 2, LoaderConfig(seq_len=5, batch_size=4, shuffle_buffer=8, num_workers=1,
                                                      checksums=checksums), 1, 0, 2)
    with pytest.raises(ShardChecksumError, match="rec-002.tar"):
        list(stream)
    # Checking can be turned off, and remote shards are checked only when asked (they are read into memory).
    assert list(eval_sequences(urls, LoaderConfig(seq_len=5, checksums=checksums, verify="none"), 1, 0))
    remote = {f"{server}/shards/rec-002.tar": "0" * 64}
    assert list(eval_sequences(list(remote), LoaderConfig(seq_len=5, checksums=remote), 1, 0))
    with pytest.raises(ShardChecksumError, match=f"{server}/shards/rec-002.tar"):
        list(eval_sequences(list(remote), LoaderConfig(seq_len=5, checksums=remote, verify="all"), 1, 0))


def test_an_empty_shard_is_named_even_unverified(shard_dir, tmp_path):
    """An empty tar (a copy cut short at a member boundary) has no checksum to fail under verify="none"; it must
    still stop the read, naming the shard, instead of leaving its night out of evaluation or training."""
    import shutil
    import tarfile

    from distsleep.shards.storage import EmptyShardError

    folder = tmp_path / "copy"
    shutil.copytree(shard_dir, folder)
    with tarfile.open(folder / "shards" / "rec-001.tar", "w"):
        pass
    manifest, base = load_manifest(folder)
    urls = shard_urls(manifest, "train", base)
    assert [Path(u).name for u in urls] == ["rec-000.tar", "rec-001.tar"]
    for order in (urls, urls[::-1]):  # the empty shard last, then first
        with pytest.raises(EmptyShardError, match=r"rec-001.tar: the shard holds no sample"):
            list(eval_sequences(order, LoaderConfig(seq_len=5, verify="none"), 1, 0))
    stream = make_train_loader(urls, LoaderConfig(seq_len=5, batch_size=4, shuffle_buffer=8, num_workers=1,
                                                  verify="none"), 1, 0, 2)
    with pytest.raises(EmptyShardError, match="rec-001.tar"):
        list(stream)
    assert list(eval_sequences(urls[:1], LoaderConfig(seq_len=5, verify="none"), 1, 0))
