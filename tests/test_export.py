"""`distsleep export` on a real bundle and real shards: the TorchScript file reproduces the PyTorch model's
probabilities on windows it was not traced on (other records, other batch sizes) and carries what is needed to
prepare its inputs."""

from __future__ import annotations

import json

import torch

from distsleep.bundle import load_model
from distsleep.cli import main as cli_main
from distsleep.export import METADATA
from distsleep.shards.loader import LoaderConfig, eval_batches, load_manifest, shard_urls

from bundle_factory import write_bundle


def test_exported_torchscript_reproduces_the_probabilities(staging_shards, tmp_path, capsys):
    bundle = write_bundle(tmp_path / "model.pt")
    out = tmp_path / "stager.torchscript.pt"
    assert cli_main(["export", "--model", str(bundle), "--shards", str(staging_shards), "--out", str(out)]) == 0
    assert "outputs checked equal" in capsys.readouterr().out

    extra = {METADATA: ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    metadata = json.loads(extra[METADATA])
    assert metadata["channels"] == ["eeg_c4"] and metadata["stages"] == ["W", "N1", "N2", "N3", "REM"]
    model, saved = load_model(bundle)
    assert metadata["seq_len"] == saved["seq_len"] and metadata["preprocess"]["target_rate"] == 100.0

    manifest, base = load_manifest(staging_shards)
    urls = shard_urls(manifest, "test", base)
    loader = LoaderConfig(seq_len=saved["seq_len"], batch_size=3, num_workers=0, channels=["eeg_c4"])
    checked = 0
    for batch in eval_batches(urls[1:], loader, 1, 0):  # records after the one the export was traced on
        x = batch.signals.float()
        with torch.no_grad():
            expected = torch.softmax(model(x, labels=None, stage="eval")["logits"].float(), dim=-1)
            got = scripted(x)
        assert got.shape == expected.shape == (len(x), saved["seq_len"], 5)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        checked += len(x)
    assert checked >= 10
