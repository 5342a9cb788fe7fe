"""`distsleep export` on a real bundle and real shards: the TorchScript and the ONNX file, each run by its own
runtime, reproduce the PyTorch model's probabilities on windows they were not exported on (other records, other
batch sizes) and carry what is needed to prepare their inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
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

    assert _matches_the_model_on_unseen_records(staging_shards, model, saved["seq_len"], scripted) >= 10


def _matches_the_model_on_unseen_records(shards, model, seq_len: int, run, batch_size: int = 3) -> int:
    """Windows of the test records after the one the export was made on: `run` (the exported file as its runtime
    runs it) gives the PyTorch model's probabilities. Returns the windows compared."""
    manifest, base = load_manifest(shards)
    urls = shard_urls(manifest, "test", base)
    loader = LoaderConfig(seq_len=seq_len, batch_size=batch_size, num_workers=0, channels=["eeg_c4"])
    checked = 0
    for batch in eval_batches(urls[1:], loader, 1, 0):
        x = batch.signals.float()
        with torch.no_grad():
            expected = torch.softmax(model(x, labels=None, stage="eval")["logits"].float(), dim=-1)
            got = run(x)
        assert got.shape == expected.shape == (len(x), seq_len, 5)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        checked += len(x)
    return checked


def test_exported_onnx_runs_in_onnx_runtime_with_the_models_probabilities(staging_shards, tmp_path, capsys):
    bundle = write_bundle(tmp_path / "model.pt")
    out = tmp_path / "stager.onnx"
    assert cli_main(["export", "--model", str(bundle), "--shards", str(staging_shards), "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "ONNX, outputs checked equal" in said.out
    assert "torch.onnx" not in said.out + said.err and "constant folding" not in said.out + said.err  # quiet

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA])
    model, saved = load_model(bundle)
    assert metadata["format"] == "distsleep-onnx/1" and metadata["channels"] == ["eeg_c4"]
    assert metadata["seq_len"] == saved["seq_len"] and metadata["stages"] == ["W", "N1", "N2", "N3", "REM"]

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["windows"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["probabilities"], {"windows": x.numpy()})[0])

    # batch sizes other than the export's 8: 5 windows at a time, the last batches smaller, and single windows
    assert _matches_the_model_on_unseen_records(staging_shards, model, saved["seq_len"], run, batch_size=5) >= 10
    assert _matches_the_model_on_unseen_records(staging_shards, model, saved["seq_len"], run, batch_size=1) >= 10
    probabilities = run(torch.zeros(2, saved["seq_len"], 1, 3000)).numpy()
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-6)


def test_an_onnx_file_name_for_a_torchscript_export_is_refused(staging_shards, tmp_path, capsys):
    bundle = write_bundle(tmp_path / "model.pt")
    out = tmp_path / "stager.onnx"
    argv = ["export", "--model", str(bundle), "--shards", str(staging_shards), "--out", str(out)]
    assert cli_main([*argv, "--format", "torchscript"]) == 2
    assert "an .onnx file name for a torchscript export" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("name, finetune", [("neuronet", "full"), ("isatsleepnet", None)])
def test_other_models_export_to_onnx_with_their_fine_tuned_head(name, finetune):
    """NeuroNet's classifier is chosen by a buffer (a data-dependent branch for torch.export unless mirrored in
    Python), ISATSleepNet's cross-attention is single-head: both must reach ONNX Runtime with the eager model's
    probabilities at batch sizes 4, 2 and 1 (`onnx_bytes` raises otherwise)."""
    from distsleep.export import Probabilities, onnx_bytes
    from distsleep.models.registry import build_model, get_spec

    torch.manual_seed(0)
    spec = get_spec(name)
    cfg = spec.make_config("small")
    model = build_model(name, cfg)
    if finetune:
        trained = build_model(name, cfg)
        trained.prepare_finetune(finetune)
        model.load_state_dict(trained.state_dict())  # the head mode arrives through a checkpoint, as in a bundle
        assert model.active_head == finetune
    x = torch.randn(4, getattr(cfg, "seq_len", 5), spec.slots_for(cfg).input_channels, 3000) * 20
    data = onnx_bytes(Probabilities(model.eval()), x, {"format": "distsleep-onnx/1"}, name)
    assert onnx.load_from_string(data).graph.input[0].name == "windows"
