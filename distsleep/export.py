"""`distsleep export`: a trained model as a file that runs without distsleep: TorchScript (C++, TorchServe, ...)
or ONNX (ONNX Runtime, TensorRT, browsers, ...).

    path = export_model(ExportConfig(model="models:/stager/3", shards="shards/manifest.json", out="stager.onnx",
                                     format="onnx"))

The bundle's model is wrapped so that the file maps a batch of windows to stage probabilities:
`forward(x: float32 (B, L, C, samples)) -> float32 (B, L, 5)`, softmax over W, N1, N2, N3, REM; the batch size is
free, L, C and samples are the model's. It is exported on a real batch (the first windows of the first record of
a manifest's split, read as `evaluate` reads them), and the file is written only when, run by its own runtime
(TorchScript, or ONNX Runtime on the CPU) on that batch, on half of it and on a single window, its outputs equal the
PyTorch model's within float32 rounding (`TOLERANCE`). The file carries `distsleep.json` (an extra file of the
TorchScript archive, a metadata property of the ONNX model: preprocessing, channel roles in input order, window
length, input scaling, stage names, where the model came from), since the inputs must be prepared as the model
was trained.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from distsleep.atomic import atomic_path
from distsleep.bundle import BundleError, load_model, map_roles, resolve
from distsleep.config import ConfigBase
from distsleep.errors import InputError, first_line
from distsleep.shards.loader import LoaderConfig, eval_batches, load_manifest, shard_checksums, shard_identities, shard_urls
from distsleep.stages import STAGE_NAMES

TOLERANCE = 1e-5  # max |difference| of probabilities between the exported and the PyTorch model
METADATA = "distsleep.json"
FORMATS = ("torchscript", "onnx")
ONNX_INPUT, ONNX_OUTPUT = "windows", "probabilities"


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
    format: str = "torchscript"  # one of FORMATS

    def __post_init__(self):
        if self.format not in FORMATS:
            raise InputError(f"--format {self.format}", f"not one of {', '.join(FORMATS)}")


class Probabilities(torch.nn.Module):
    """The model as an exported file holds it: windows in, stage probabilities out."""

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
                          normalization=bundle.get("normalization", "uv"), checksums=shard_checksums(manifest, base),
                          identities=shard_identities(manifest, base))
    batch = next(iter(eval_batches(urls[:1], loader, 1, 0)))
    return batch.signals.float()


def _check(run, wrapped: Probabilities, batch: torch.Tensor, what: str, source: str) -> None:
    """Raise ExportError unless `run` (the exported model as its runtime runs it: tensor in, tensor out) gives
    the PyTorch model's probabilities on the batch, on half of it and on a single window (a batch size baked
    into a reshape would break the smaller ones)."""
    checks = {"traced batch": batch, "smaller batch": batch[: max(1, len(batch) // 2)], "single window": batch[:1]}
    for name, inputs in checks.items():
        with torch.no_grad():
            difference = float((run(inputs) - wrapped(inputs)).abs().max())
        if not difference <= TOLERANCE:
            raise ExportError(source, f"the {what} model's probabilities differ from the PyTorch model's by "
                                      f"{difference:.3g} on the {name} ({tuple(inputs.shape)}); not written")


def torchscript_bytes(wrapped: Probabilities, batch: torch.Tensor, metadata: dict, source: str) -> bytes:
    """The TorchScript archive of `wrapped` traced on `batch`, with `metadata`; ExportError unless it is faithful."""
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every shape-dependent Python branch; what matters is checked on three batch sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        scripted = torch.jit.trace(wrapped, batch, check_trace=False)
    _check(scripted, wrapped, batch, "TorchScript", source)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={METADATA: json.dumps(metadata, indent=1)})
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx's exporter prints its progress and onnxscript's optimizer logs each op it does not fold: keep the
    console to our summary (a failure's cause is in the error raised)."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        said = io.StringIO()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_cause(error: Exception) -> str:
    """The root error of a torch.onnx failure: its message wraps the chain in a summary of "<class 'X'>: why" lines,
    the first being the cause, under several paragraphs of generic advice."""
    for line in str(error).splitlines():
        if line.startswith("<class '"):
            return line.removeprefix("<class '").replace("'>", "", 1)[:400]
    return f"{type(error).__name__}: {first_line(error, 400)}"


def onnx_bytes(wrapped: Probabilities, batch: torch.Tensor, metadata: dict, source: str) -> bytes:
    """The ONNX model of `wrapped` exported on `batch` (batch dimension free), with `metadata`; ExportError unless
    ONNX Runtime runs it faithfully."""
    import onnx

    with _quiet_exporter():
        try:
            # torch.export's graph (dynamo=True, the exporter torch maintains), the batch dimension left free
            program = torch.onnx.export(wrapped, (batch,), dynamo=True, input_names=[ONNX_INPUT],
                                        output_names=[ONNX_OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        verbose=False)
        except Exception as error:
            raise ExportError(source, f"torch.onnx cannot export this model ({_first_cause(error)}); not written "
                                      "(the TorchScript format may work: --format torchscript)") from error
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA, json.dumps(metadata, indent=1)
    data = proto.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    _check(onnx_runner(data), wrapped, batch, "ONNX", source)
    return data


def onnx_runner(data: bytes, threads: int | None = None):
    """windows -> probabilities through ONNX Runtime on the CPU, for an exported file's bytes; `threads` for its
    intra-op pool (default: ONNX Runtime's choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0])

    return run


def export_model(cfg: ExportConfig) -> Path:
    """Export, check and write the file (module docstring); returns its path."""
    located = resolve(cfg.model, tracking_uri=cfg.tracking_uri)
    model, bundle = load_model(located.path)
    if bundle.get("task", "staging") != "staging":
        raise BundleError(located.name, f"this model was trained for the {bundle['task']} task; export writes stagers")
    batch = check_batch(cfg, bundle, located.name)
    wrapped = Probabilities(model).eval()
    metadata = {"format": f"distsleep-{cfg.format}/1", "input": "float32 (batch, seq_len, channels, samples_per_epoch)",
                "output": "float32 (batch, seq_len, stages): softmax probabilities", "stages": list(STAGE_NAMES),
                "channels": list(bundle["channels"]), "seq_len": int(bundle["seq_len"]),
                "normalization": bundle.get("normalization", "uv"), "preprocess": bundle["preprocess"],
                "model": bundle["model"], "stage": bundle.get("stage"), "source": located.name, "run_id": located.run_id,
                "checked_on": {"shards": cfg.shards, "split": cfg.split, "shape": list(batch.shape), "tolerance": TOLERANCE}}
    write = onnx_bytes if cfg.format == "onnx" else torchscript_bytes
    data = write(wrapped, batch, metadata, located.name)
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out
