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
    with pytest.raises(OSError, match=r"s3://bucket/x.tar: no filesystem for 's3://' URLs"):
        open_binary("s3://bucket/x.tar")
