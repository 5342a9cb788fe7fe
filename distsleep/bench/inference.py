"""`jobs/benchmark.py inference`: scoring windows on the CPU three ways, side by side: the PyTorch model as
`predict` and `evaluate` run it, and the two files `distsleep export` writes (TorchScript, ONNX Runtime).

The model is a seeded, untrained model of the chosen preset (its speed does not depend on its weights), the
windows are µV-scaled noise of the model's shape (B, L, C, 3000). Each route gets the same number of threads
(`--threads`: torch's intra-op threads, ONNX Runtime's intra-op pool), and the files are made by the export
functions themselves, so each was checked against the PyTorch model before it is timed. Reported: the median
over `--repeats` timed passes of windows/s and epochs/s (windows × L), the ratio to PyTorch, and the largest
difference of probabilities from PyTorch's on the timed batch.

`run` is the subcommand (`add_arguments` its options).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import torch

from distsleep.bench.load import busy_cores
from distsleep.export import Probabilities, onnx_bytes, onnx_runner, torchscript_bytes
from distsleep.models.registry import build_model, get_spec


def _time(run, x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """(median seconds of one pass over `x`, the last pass's output), after one untimed pass."""
    with torch.no_grad():
        out = run(x)
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = run(x)
            seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), out


def measure_inference(model_name: str, size: str, batch: int, threads: int, repeats: int, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    spec = get_spec(model_name)
    cfg = spec.make_config(size)
    wrapped = Probabilities(build_model(model_name, cfg)).eval()
    seq_len = getattr(cfg, "seq_len", 1)
    x = torch.randn(batch, seq_len, spec.slots_for(cfg).input_channels, 3000, generator=torch.Generator().manual_seed(seed)) * 20
    check = x[: min(8, batch)]
    with torch.no_grad():
        reference = wrapped(x)  # what every route's output is compared with
    rows = []

    def row(route: str, run, made_s: float | None = None) -> None:
        seconds, out = _time(run, x, repeats)
        rows.append({"route": route, "s_per_pass": seconds, "windows_per_s": batch / seconds,
                     "epochs_per_s": batch * seq_len / seconds, "max_abs_difference": float((out - reference).abs().max()),
                     "export_s": made_s})

    row("PyTorch (predict, evaluate)", wrapped)
    t0 = time.perf_counter()
    scripted = torch.jit.load(io.BytesIO(torchscript_bytes(wrapped, check, {}, "benchmark")))
    row("TorchScript file", scripted, time.perf_counter() - t0)
    t0 = time.perf_counter()
    data = onnx_bytes(wrapped, check, {}, "benchmark")
    runner = onnx_runner(data, threads)
    row("ONNX Runtime file", runner, time.perf_counter() - t0)
    return {"model": model_name, "size": size, "seq_len": seq_len, "batch": batch, "threads": threads,
            "repeats": repeats, "parameters": sum(p.numel() for p in wrapped.parameters()),
            "onnx_mb": len(data) / 1e6, "rows": rows, "busy_cores": busy_cores()}


def format_inference(result: dict) -> str:
    lines = [f"scoring windows on the CPU: {result['model']} ({result['size']}, {result['parameters']:,} parameters), "
             f"batch {result['batch']} x {result['seq_len']} epochs, {result['threads']} thread(s), median of "
             f"{result['repeats']} passes",
             f"{'route':28s} {'windows/s':>10s} {'epochs/s':>10s} {'vs PyTorch':>11s} {'max |Δp|':>9s} {'export s':>9s}"]
    base = result["rows"][0]["windows_per_s"]
    for r in result["rows"]:
        made = "" if r["export_s"] is None else f"{r['export_s']:9.1f}"
        lines.append(f"{r['route']:28s} {r['windows_per_s']:10.1f} {r['epochs_per_s']:10.0f} "
                     f"{r['windows_per_s'] / base:10.2f}x {r['max_abs_difference']:9.1e} {made:>9s}")
    lines.append(f"ONNX file: {result['onnx_mb']:.1f} MB")
    if result.get("busy_cores") is not None:
        lines.append(f"other load on the machine: {result['busy_cores']:.1f} busy cores")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mc2sleepnet", help="registered model (default mc2sleepnet)")
    p.add_argument("--model-size", default="paper", help="its preset (default paper)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per pass (default 64, evaluate's and predict's)")
    p.add_argument("--threads", type=int, default=1, help="threads for every route (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per route; the median is reported (default 5)")
    p.add_argument("--json", help="also write the figures to this JSON file")


def run(args: argparse.Namespace) -> int:
    result = measure_inference(args.model, args.model_size, args.batch_size, args.threads, args.repeats)
    print(format_inference(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
