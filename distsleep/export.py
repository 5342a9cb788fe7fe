"""`distsleep export`: a trained model as a TorchScript file that runs without distsleep (C++, TorchServe, ...).

    path = export_torchscript(ExportConfig(model="models:/stager/3", shards="shards/manifest.json", out="stager.pt"))

The bundle's model is wrapped so that the file maps a batch of windows to stage probabilities:
`forward(x: float32 (B, L, C, samples)) -> float32 (B, L, 5)`, softmax over W, N1, N2, N3, REM. It is traced on a
real batch (the first windows of the first record of a manifest's split, read as `evaluate` reads them), and the
file is written only when, on that batch and on a smaller one, its outputs equal the PyTorch model's (within
float32 rounding, `TOLERANCE`). The file carries `distsleep.json` (an extra file: preprocessing, channel roles in
input order, window length, input scaling, stage names, where the model came from), since the inputs must be
prepared as the model was trained.

ONNX is not written: onnx/onnxruntime are not in the project's lock, and an exporter without a test that runs
the exported graph would be a promise we do not check.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from distsleep.atomic import atomic_path
from distsleep.bundle import BundleError, load_model, map_roles, resolve
from distsleep.config import ConfigBase
from distsleep.errors import InputError
from distsleep.shards.loader import LoaderConfig, eval_batches, load_manifest, shard_checksums, shard_urls
from distsleep.stages import STAGE_NAMES

TOLERANCE = 1e-5  # max |difference| of probabilities between the TorchScript and the PyTorch model
METADATA = "distsleep.json"


class ExportError(InputError):
    """The model cannot be exported faithfully (the traced file's outputs differ), or no batch to check it on."""


@dataclass(frozen=True)
class ExportConfig(ConfigBase):
    model: str  # any source bundle.resolve accepts
    shards: str  # manifest whose records give the real batch the export is traced and checked on
    out: str
    split: str = "test"
    batch_size: int = 8  # windows in the check batch
    tracking_uri: str | None = None


class Probabilities(torch.nn.Module):
    """The model as TorchScript sees it: windows in, stage probabilities out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x, labels=None, stage="eval")["logits"].float(), dim=-1)


def check_batch(cfg: ExportConfig, bundle: dict, where: str) -> torch.Tensor:
    """A real batch of windows, prepared as evaluation prepares them (channel roles, scaling, padding zeros)."""
    manifest, base = load_manifest(cfg.shards)
    urls = shard_urls(manifest, cfg.split, base)
    if not urls:
        raise ExportError(cfg.shards, f"the manifest has no {cfg.split} records to check the export on")
    roles, _ = map_roles(bundle, manifest.get("channels") or manifest["config"]["preprocess"]["channels"],
                         f"the shards of {cfg.shards}", where)
    loader = LoaderConfig(seq_len=int(bundle["seq_len"]), batch_size=cfg.batch_size, num_workers=0, channels=list(roles),
                          normalization=bundle.get("normalization", "uv"), checksums=shard_checksums(manifest, base))
    batch = next(iter(eval_batches(urls[:1], loader, 1, 0)))
    return batch.signals.float()


def _differences(scripted: torch.jit.ScriptModule, wrapped: Probabilities, batch: torch.Tensor) -> float:
    with torch.no_grad():
        return float((scripted(batch) - wrapped(batch)).abs().max())


def export_torchscript(cfg: ExportConfig) -> Path:
    """Trace, check and write the TorchScript file (module docstring); returns its path."""
    located = resolve(cfg.model, tracking_uri=cfg.tracking_uri)
    model, bundle = load_model(located.path)
    if bundle.get("task", "staging") != "staging":
        raise BundleError(located.name, f"this model was trained for the {bundle['task']} task; export writes stagers")
    batch = check_batch(cfg, bundle, located.name)
    wrapped = Probabilities(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every shape-dependent Python branch; what matters is checked below, on two batch sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        scripted = torch.jit.trace(wrapped, batch, check_trace=False)
    # The traced graph must hold for other batch sizes too (a size baked into a reshape would break them).
    checks = {"traced batch": batch, "smaller batch": batch[: max(1, len(batch) // 2)]}
    for name, inputs in checks.items():
        difference = _differences(scripted, wrapped, inputs)
        if not difference <= TOLERANCE:
            raise ExportError(located.name, f"the TorchScript model's probabilities differ from the PyTorch model's by "
                                            f"{difference:.3g} on the {name} ({tuple(inputs.shape)}); not written")
    metadata = {"format": "distsleep-torchscript/1", "input": "float32 (batch, seq_len, channels, samples_per_epoch)",
                "output": "float32 (batch, seq_len, stages): softmax probabilities", "stages": list(STAGE_NAMES),
                "channels": list(bundle["channels"]), "seq_len": int(bundle["seq_len"]),
                "normalization": bundle.get("normalization", "uv"), "preprocess": bundle["preprocess"],
                "model": bundle["model"], "stage": bundle.get("stage"), "source": located.name, "run_id": located.run_id,
                "checked_on": {"shards": cfg.shards, "split": cfg.split, "shape": list(batch.shape), "tolerance": TOLERANCE}}
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={METADATA: json.dumps(metadata, indent=1)})
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return out
