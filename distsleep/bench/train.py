"""`jobs/benchmark.py train`: the real training path (Ray Train + DeepSpeed, `run_training`) against the
plain PyTorch loop of `distsleep.bench.engine` on the same model and data, 1 vs N workers, peak memory, and
on a GPU the paper's s per 1,000 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch

from distsleep.bench.engine import (GOAL_GPU_SPEEDUP, PAPER_S_PER_1000_STEPS, PAPER_STEP_SETTING, measure_plain,
                                    run_isolated, step_figures)
from distsleep.bench.load import settle
from distsleep.config import PreprocessConfig, SplitConfig
from distsleep.models import build_model, get_spec, list_models
from distsleep.runtime import configure_console, secure_local_ray
from distsleep.shards.convert import convert_record
from distsleep.shards.pipeline import discover, run_preprocess
from distsleep.synth.cohort import CohortConfig, generate_cohort
from distsleep.tracking import client
from distsleep.train.config import TrainConfig
from distsleep.train.launch import run_training

GOAL_TRAIN_OVERHEAD = 0.05  # issue 18 item 8; 1 - (Ray Train + DeepSpeed epochs/s) / (plain PyTorch loop epochs/s), 1 worker


def make_train_shards(scratch: Path, n_records: int, hours: float, seed: int, workers: int,
                      multimodal: bool = False) -> Path:
    """A synthetic SHHS cohort and its shards under `scratch`; returns the manifest path.

    The records are converted in this process, so run_preprocess finds them all done and only splits them
    and writes the manifest: no Ray cluster is started before the timings."""
    root, out = scratch / "cohort", (scratch / "shards").resolve()
    generate_cohort(root, CohortConfig(n_records=n_records, hours=hours, seed=seed, workers=workers), progress=False)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    config = PreprocessConfig.preset("multimodal" if multimodal else "default")
    for source in discover(config, root):
        convert_record(source, config, out)
    result = run_preprocess(root, out, config, SplitConfig(), progress=False)
    if result.converted or result.failures:
        raise RuntimeError(f"shards in {out}: {result.converted} records converted again, failures {result.failures}")
    return out / "manifest.json"


def bench_train_config(shards: str | Path, scratch: Path, *, workers: int, model_size: str = "small", batch_size: int = 32,
                       seq_len: int = 5, steps: int = 20, warmup: int = 5, loader_workers: int = 1,
                       use_gpu: bool = False, seed: int = 0, log_every: int = 10, name: str | None = None,
                       model: str = "mc2sleepnet", precision: str = "auto", compile: bool = False):
    """The TrainConfig both paths run: the trainer's defaults (Adam, lr 5e-4, weight decay 1e-5, gradient
    clipping 1.0, ZeRO 0, bf16 autocast on GPU, fp32 on CPU unless `precision` says otherwise), warmup + steps
    steps, and validation only once, after the last step (val_every > max_steps), so that no evaluation falls
    inside the timed steps. `log_every` (the trainer's default) is how often losses are read from the device
    and sent to MLflow, inside the timed steps."""
    return TrainConfig(  # batch_size is per worker here (weak scaling); the trainer's is the global batch
        shards=str(shards), model=model, model_size=model_size, seq_len=seq_len, batch_size=batch_size * workers,
        loader_workers=loader_workers, precision=precision, compile=compile,
        max_steps=warmup + steps, val_every=warmup + steps + 1, log_every=log_every, num_workers=workers, use_gpu=use_gpu,
        seed=seed, storage_path=str(scratch / "runs"), name=name or f"benchmark-train-{workers}w",
        tracking_uri=f"sqlite:///{(scratch / 'mlflow.db').resolve()}", experiment="benchmark-train",
    )


def time_ray_path(cfg, warmup: int) -> dict:
    """The real training path, `run_training(cfg)`: Ray Train TorchTrainer, one DeepSpeed engine per worker,
    MLflow logging. Throughput is read back from the `epochs_per_s` that rank 0 logs every `log_every` steps
    (all ranks together, averaged over those steps; batch fetch and the logging itself included); windows
    that hold a warm-up step are left out, and so are worker start-up and the final validation/test.
    Peak RSS is the loop's `peak_rss_mb` (the largest over the workers)."""
    t0 = time.perf_counter()
    outcome = run_training(cfg)
    wall = time.perf_counter() - t0
    mlflow_client = client(outcome.tracking_uri)
    history = {m.step: m.value for m in mlflow_client.get_metric_history(outcome.run_id, "epochs_per_s")}
    timed = [value for step, value in sorted(history.items()) if step - cfg.log_every >= warmup]
    if not timed:
        raise RuntimeError(f"run {outcome.run_id} logged no epochs_per_s for a window after step {warmup} "
                           f"(log_every {cfg.log_every}): raise --steps")
    per_step = cfg.batch_size * cfg.seq_len  # the global batch
    logged = mlflow_client.get_run(outcome.run_id).data.metrics
    result = {
        "path": "ray", "workers": cfg.num_workers, "device": "cuda" if cfg.use_gpu else "cpu",
        "precision": cfg.resolved_precision, "run_id": outcome.run_id, "fit_wall_s": wall,
        **step_figures([per_step / value for value in timed], per_step),
        "timed_steps": len(timed) * cfg.log_every,
        "peak_rss_mb": logged.get("peak_rss_mb"),
    }
    if "peak_gpu_mb" in logged:
        result["peak_gpu_mb"] = logged["peak_gpu_mb"]
    return result


def in_windows(run: dict, window: int, epochs_per_step: int) -> dict:
    """A single-process run's figures taken the way the Ray path's are: the mean step time of each window of
    `window` consecutive timed steps (the trainer logs epochs/s once per `log_every` steps), then the median
    over the windows. The per-step median of the same run is kept as `epochs_per_s_per_step`."""
    seconds = run["step_seconds"]
    means = [sum(seconds[i:i + window]) / len(seconds[i:i + window]) for i in range(0, len(seconds), window)]
    return {**run, **step_figures(means, epochs_per_step), "step_seconds": seconds, "timed_steps": len(seconds),
            "epochs_per_s_per_step": run["epochs_per_s"]}


def _combine(runs: list[dict]) -> dict:
    """One row from repeated runs of a path: the median of the runs' figures, the spread of their medians,
    the largest peak memory; the runs themselves are kept under "runs"."""
    combined = {k: v for k, v in runs[0].items() if k not in ("step_seconds", "run_id", "fit_wall_s")}
    for key in ("epochs_per_s", "epochs_per_s_mean", "s_per_step"):
        combined[key] = statistics.median(run[key] for run in runs)
    combined["epochs_per_s_range"] = [min(run["epochs_per_s"] for run in runs), max(run["epochs_per_s"] for run in runs)]
    for key in ("peak_rss_mb", "peak_gpu_mb"):
        values = [run[key] for run in runs if run.get(key) is not None]
        combined[key] = max(values) if values else None
    if "fit_wall_s" in runs[0]:
        combined["fit_wall_s"] = statistics.median(run["fit_wall_s"] for run in runs)
    combined["runs"] = runs
    return combined


def measure_train(shards: str | Path, scratch: str | Path, *, model_size: str, batch_size: int, seq_len: int, steps: int,
                  warmup: int, workers: list[int], loader_workers: int = 1, use_gpu: bool = False, log_every: int = 10,
                  repeats: int = 1, plain_in_subprocess: bool = True, precision: str = "auto",
                  compile: bool = False, engine_row: bool = True) -> dict:
    """Every figure of `benchmark.py train` as a dict (JSON-serializable).

    Each repeat runs the plain loop, the trainer's DeepSpeed step without Ray (`engine_row`; in its own
    process, so only with `plain_in_subprocess`), then the Ray path at each worker count (interleaved, so
    that slow drifts of the machine hit every path alike); each row is the median over the repeats. The
    engine row splits the Ray path's overhead into DeepSpeed's share and the rest (Ray Train, MLflow)."""
    scratch = Path(scratch)
    gpus = torch.cuda.device_count() if use_gpu else 0
    result: dict = {
        "model_size": model_size, "batch_size": batch_size, "seq_len": seq_len, "steps": steps, "warmup": warmup,
        "loader_workers": loader_workers, "log_every": log_every, "repeats": repeats, "cpu_count": os.cpu_count(),
        "compile": compile,
        "use_gpu_requested": use_gpu, "gpu": torch.cuda.get_device_name(0) if gpus else None, "gpu_count": gpus,
        "skipped_workers": [],
    }
    use_gpu = use_gpu and gpus > 0
    if use_gpu:
        result["skipped_workers"] = [n for n in workers if n > gpus]
        workers = [n for n in workers if n <= gpus]
    common = dict(model_size=model_size, batch_size=batch_size, seq_len=seq_len, steps=steps, warmup=warmup,
                  loader_workers=loader_workers, use_gpu=use_gpu, log_every=log_every, precision=precision, compile=compile)
    plain_cfg = bench_train_config(shards, scratch, workers=1, **common)
    result["precision"] = plain_cfg.resolved_precision

    per_step = plain_cfg.batch_size * plain_cfg.seq_len  # epochs per step of the single-process rows

    def run_plain(cfg, steps, warmup):
        if not plain_in_subprocess:
            return in_windows(measure_plain(cfg, steps, warmup), log_every, per_step)
        result = run_isolated("plain", cfg, steps, warmup)  # own process: its peak RSS is the training's alone
        if "error" in result:
            raise RuntimeError(f"the plain training loop failed: {result['error']}")
        return in_windows(result, log_every, per_step)
    engine_row = engine_row and plain_in_subprocess
    background: dict[str, list] = {"plain": [], **({"engine": []} if engine_row else {}), **{f"ray{n}": [] for n in workers}}
    runs: dict[str, list] = {"plain": [], **({"engine": []} if engine_row else {}), **{str(n): [] for n in workers}}

    started = bool(workers) and not ray.is_initialized()
    if workers:
        if started:  # the Ray Train V2 controller needs the dashboard's state API: keep it (loopback only)
            secure_local_ray()  # token auth and loopback, whoever calls this
            ray.init(log_to_driver=False, configure_logging=False)
    try:
        for repeat in range(repeats):
            background["plain"].append(settle())
            runs["plain"].append(run_plain(plain_cfg, steps, warmup))
            if engine_row:
                background["engine"].append(settle())
                engine = run_isolated("engine", plain_cfg, steps, warmup)
                if "error" in engine:
                    raise RuntimeError(f"the trainer's DeepSpeed step failed: {engine['error']}")
                runs["engine"].append({**in_windows(engine, log_every, per_step), "workers": 1})
            for n in workers:
                background[f"ray{n}"].append(settle())
                cfg = bench_train_config(shards, scratch, workers=n, name=f"benchmark-train-{n}w-{repeat}", **common)
                runs[str(n)].append(time_ray_path(cfg, warmup))
    finally:
        if started:
            ray.shutdown()
    result["background_busy_cores"] = background
    result["plain"] = _combine(runs.pop("plain"))
    if engine_row:
        result["engine"] = _combine(runs.pop("engine"))
        result["overhead_engine"] = 1 - result["engine"]["epochs_per_s"] / result["plain"]["epochs_per_s"]
    result["ray"] = {n: _combine(ray_runs) for n, ray_runs in runs.items()}

    plain, ray1 = result["plain"], result["ray"].get("1")
    if ray1:
        result["overhead"] = 1 - ray1["epochs_per_s"] / plain["epochs_per_s"]
        result["overhead_mean"] = 1 - ray1["epochs_per_s_mean"] / plain["epochs_per_s_mean"]
        result["overhead_per_repeat"] = [1 - r["epochs_per_s"] / p["epochs_per_s"] for p, r in zip(plain["runs"], ray1["runs"])]
        for run in result["ray"].values():
            run["scaling"] = run["epochs_per_s"] / ray1["epochs_per_s"]
    if use_gpu:
        reference = ray1 or plain
        result["gpu_figure"] = {
            "path": "Ray Train + DeepSpeed, 1 worker" if ray1 else "plain loop",
            "s_per_1000_steps": 1000 * reference["s_per_step"],
            "plain_s_per_1000_steps": 1000 * plain["s_per_step"],
            "paper_s_per_1000_steps": PAPER_S_PER_1000_STEPS,
            "speedup": PAPER_S_PER_1000_STEPS / (1000 * reference["s_per_step"]),
            "comparable": all(result[k] == v for k, v in PAPER_STEP_SETTING.items()),
        }
    result["goals"] = train_goals(result)
    return result


# Per-model benchmark settings at CPU size: (sequence length L, sequences per worker per step). The per-epoch
# classifiers get L = 1 and larger batches, so every model sees a comparable number of epochs per step.
MODEL_BENCH_SHAPES = {"mc2sleepnet": (5, 32), "neuronet": (5, 32), "synthsleepnet": (5, 16),
                      "isatsleepnet": (1, 64), "crossfusionsleepnet": (5, 16)}


def measure_models(shards: str | Path, scratch: str | Path, models: list[str], *, model_size: str, steps: int,
                   warmup: int, workers: list[int], loader_workers: int = 1, use_gpu: bool = False) -> list[dict]:
    """Throughput and memory of each model on the real path (Ray Train + DeepSpeed, `run_training`), at each
    worker count: epochs/s, s/step, peak RSS per worker, parameters. Models are trained from scratch in
    the pretrain stage (SynthSleepNet without its unimodal parts: the compute is the same)."""
    rows = []
    for model in models:
        seq_len, batch = MODEL_BENCH_SHAPES.get(model, (5, 32))
        params = sum(p.numel() for p in build_model(model, get_spec(model).make_config(model_size)).parameters())
        for n in workers:
            cfg = bench_train_config(shards, Path(scratch), workers=n, model=model, model_size=model_size, seq_len=seq_len,
                                     batch_size=batch, steps=steps, warmup=warmup, loader_workers=loader_workers,
                                     use_gpu=use_gpu, name=f"benchmark-{model}-{n}w")
            run = time_ray_path(cfg, warmup)
            rows.append({"model": model, "model_size": model_size, "parameters": params, "seq_len": seq_len,
                         "batch_size": batch, **{k: run[k] for k in ("workers", "epochs_per_s", "s_per_step",
                                                                      "peak_rss_mb", "fit_wall_s", "precision")},
                         "peak_gpu_mb": run.get("peak_gpu_mb")})
    by_model: dict[str, dict] = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["workers"]] = row
    for row in rows:
        one = by_model[row["model"]].get(1)
        row["scaling"] = row["epochs_per_s"] / one["epochs_per_s"] if one else None
    return rows


def format_models(rows: list[dict]) -> str:
    lines = ["Throughput of each model on the real path (Ray Train + DeepSpeed, run_training; epochs/s = batch x L x "
             "workers / median step time; peak RSS = largest training process, DataLoader workers not counted):",
             f"{'model':<22}{'size':>7}{'params':>11}{'L':>4}{'batch':>7}{'workers':>8}{'epochs/s':>10}{'s/step':>9}"
             f"{'vs 1':>7}{'peak RSS/worker':>17}"]
    for r in rows:
        rss = "n/a" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f} MB"
        if r.get("peak_gpu_mb") is not None:
            rss += f" (+{r['peak_gpu_mb']:.0f} MB GPU)"
        scaling = "-" if r["scaling"] is None or r["workers"] == 1 else f"{r['scaling']:.2f}x"
        lines.append(f"{r['model']:<22}{r['model_size']:>7}{r['parameters']:>11,}{r['seq_len']:>4}{r['batch_size']:>7}"
                     f"{r['workers']:>8}{r['epochs_per_s']:>10.1f}{r['s_per_step']:>9.3f}{scaling:>7}{rss:>17}")
    return "\n".join(lines)


def train_goals(result: dict) -> list[dict]:
    goals = []
    if "overhead" in result:
        goals.append({"goal": f"Ray Train + DeepSpeed overhead vs the plain loop <= {GOAL_TRAIN_OVERHEAD:.0%} at 1 worker "
                              "(median epochs/s)", "value": result["overhead"], "format": "pct",
                      "ok": result["overhead"] <= GOAL_TRAIN_OVERHEAD})
    gpu = result.get("gpu_figure")
    if gpu and gpu["comparable"]:
        goals.append({"goal": f"s per 1,000 steps at batch 32 >= {GOAL_GPU_SPEEDUP:g}x faster than the paper's "
                              f"{PAPER_S_PER_1000_STEPS:,.0f} s (RTX 3090), on {result['gpu']}",
                      "value": gpu["speedup"], "format": "x", "ok": gpu["speedup"] >= GOAL_GPU_SPEEDUP})
    return goals


def format_train(result: dict) -> str:
    plain = result["plain"]
    device = plain["device"] + (f" ({result['gpu']})" if result["gpu"] else "")
    repeats = result["repeats"]

    def loads(values: list) -> str:
        return "/".join("n/a" if v is None else f"{v:.2f}" for v in values)

    busy = [v for values in result["background_busy_cores"].values() for v in values if v is not None]
    lines = [
        f"MC²SleepNet {result['model_size']} ({plain['parameters']:,} parameters), batch {result['batch_size']} "
        f"sequences x L = {result['seq_len']} epochs per worker, {result['precision']}"
        f"{' + torch.compile' if result.get('compile') else ''} on {device}; "
        f"{result['steps']} timed steps after {result['warmup']} warm-up steps; {result['loader_workers']} "
        f"DataLoader worker(s) per training process; {result['cpu_count']} cores; "
        f"{repeats} repeat{'s' if repeats != 1 else ''}, paths interleaved.",
        f"epochs/s = batch x L x workers / step time, every row measured alike: the mean step time of each window of "
        f"{result['log_every']} timed steps (the Ray rows read it from the epochs_per_s that the real loop logs to MLflow "
        "once per window), the median over the windows, then the median over the repeats ('mean' = total epochs / "
        "total time; 'range' = lowest-highest run). The Ray rows' MLflow logging is inside the timed steps (the plain "
        "loop reads its loss as often but logs nothing); worker start-up and the final validation/test are outside. "
        "Before each run the benchmark waits (up to 20 s) for the machine to go quiet. Peak RSS: each training "
        "process, DataLoader workers not counted; Ray: the largest over the workers, whole run.",
        "background load (busy cores while the benchmark waits, before each run): "
        + ", ".join(f"{k} {loads(v)}" for k, v in result["background_busy_cores"].items())
        + ("  <- WARNING: other work competes for the cores; the timings are unreliable" if any(v > 0.25 for v in busy) else ""),
        "",
        f"{'path':<38}{'workers':>8}{'epochs/s':>10}{'range':>13}{'(mean)':>9}{'s/step':>9}{'overhead':>10}{'2 vs 1':>8}"
        f"{'peak RSS/worker':>17}",
    ]

    def row(name: str, run: dict, overhead: str, scaling: str) -> str:
        rss = "n/a" if run.get("peak_rss_mb") is None else f"{run['peak_rss_mb']:.0f} MB"
        if run.get("peak_gpu_mb") is not None:
            rss += f" (+{run['peak_gpu_mb']:.0f} MB GPU)"
        low, high = run["epochs_per_s_range"]
        return (f"{name:<38}{run['workers']:>8}{run['epochs_per_s']:>10.1f}{f'{low:.0f}-{high:.0f}':>13}"
                f"{run['epochs_per_s_mean']:>9.1f}{run['s_per_step']:>9.3f}{overhead:>10}{scaling:>8}{rss:>17}")

    lines.append(row("plain PyTorch loop (1 process)", plain, "-", "-"))
    if "engine" in result:
        lines.append(row("DeepSpeed step, no Ray (1 process)", result["engine"], f"{result['overhead_engine']:.1%}", "-"))
    for n, run in result["ray"].items():
        overhead = f"{result['overhead']:.1%}" if n == "1" and "overhead" in result else "-"
        scaling = f"{run['scaling']:.2f}x" if "scaling" in run and n != "1" else "-"
        lines.append(row("Ray Train + DeepSpeed (run_training)", run, overhead, scaling))
    if result["ray"]:
        walls = ", ".join(f"{n} worker(s) {run['fit_wall_s']:.0f} s" for n, run in result["ray"].items())
        lines.append(f"(whole run_training wall time, start-up and final validation/test included, median: {walls})")
    lines.append("")
    if "overhead" in result:
        per_repeat = ", ".join(f"{x:.1%}" for x in result["overhead_per_repeat"])
        lines.append(f"overhead at 1 worker: 1 - {result['ray']['1']['epochs_per_s']:.1f} / {plain['epochs_per_s']:.1f} "
                     f"= {result['overhead']:.1%} (from the means: {result['overhead_mean']:.1%}; each repeat: {per_repeat})")
        if "engine" in result:
            rest = 1 - result["ray"]["1"]["epochs_per_s"] / result["engine"]["epochs_per_s"]
            lines.append(f"  of which DeepSpeed's step (the same step without Ray): {result['overhead_engine']:.1%}; "
                         f"the rest (the Ray Train worker, MLflow logging, Ray's own processes on these cores): {rest:.1%}")
    if "2" in result["ray"]:
        lines.append(f"scaling: {result['ray']['2']['scaling']:.2f}x epochs/s with 2 workers vs 1 (per-worker batch fixed, so "
                     f"the global batch doubles). This machine has {result['cpu_count']} cores: 2 workers, each with "
                     f"its DataLoader worker(s), plus the Ray daemons share them, so 2 is as far as scaling goes here.")
    if result["skipped_workers"]:
        lines.append(f"not run: {', '.join(map(str, result['skipped_workers']))} worker(s): one GPU per worker, "
                     f"and {result['gpu_count']} GPU(s) found")
    if not result["ray"]:
        lines.append("Ray Train path: not run (--workers empty)")

    lines += ["", "goals:"]
    for goal in result["goals"]:
        value = f"{goal['value']:.1%}" if goal["format"] == "pct" else f"{goal['value']:.1f}x"
        lines.append(f"  {'PASS' if goal['ok'] else 'FAIL'}  {goal['goal']}: {value}")
    gpu = result.get("gpu_figure")
    if gpu:
        line = (f"  GPU: {gpu['s_per_1000_steps']:.1f} s per 1,000 steps ({gpu['path']}; plain loop "
                f"{gpu['plain_s_per_1000_steps']:.1f} s) vs the paper's {gpu['paper_s_per_1000_steps']:,.0f} s on one RTX 3090: "
                f"{gpu['speedup']:.1f}x")
        if not gpu["comparable"]:
            line += (f"  (not the paper's setting: measured at {result['model_size']} size, batch {result['batch_size']}, "
                     f"L = {result['seq_len']}; run with --model-size paper --batch-size 32 --seq-len 21 for the goal)")
        lines.append(line)
    elif result["use_gpu_requested"]:
        lines.append("  GPU figure (s per 1,000 steps at batch 32 vs the paper's 1,005 s): NOT MEASURED: --use-gpu was given "
                     "but torch finds no CUDA device; everything above ran on the CPU")
    else:
        lines.append("  GPU figure (s per 1,000 steps at batch 32 vs the paper's 1,005 s): not measured (no --use-gpu; "
                     "run `jobs/benchmark.py train --use-gpu --model-size paper --batch-size 32 --workers 1` on a GPU machine, or "
                     "`python -m distsleep.bench.engine check` where Ray and MLflow are not installed)")
    return "\n".join(lines)


def _models_arg(text: str) -> list[str]:
    if not text:
        return []
    names = list_models() if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        raise SystemExit(f"--models: unknown model(s) {unknown}; registered: {', '.join(list_models())}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-size", choices=("small", "paper"), default="small", help="MC²SleepNet preset (default small)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per worker per step (default 32)")
    p.add_argument("--seq-len", type=int, help="epochs per sequence (default 21 at paper size, 5 at small)")
    p.add_argument("--steps", type=int, default=40, help="timed steps (default 40)")
    p.add_argument("--warmup", type=int, default=10, help="steps before the timed ones (default 10)")
    p.add_argument("--workers", default="1,2", help="Ray Train worker counts, comma-separated (default 1,2; '' = plain loop only)")
    p.add_argument("--loader-workers", type=int, default=1, help="DataLoader workers per training process (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each path, interleaved; the median is reported (default 2)")
    p.add_argument("--log-every", type=int, default=10, help="steps between reading losses from the device and "
                   "sending them to MLflow (default 10, the trainer's default); --steps and --warmup should be multiples of it")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on GPU, fp32 on CPU (the trainer's rule)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model on both paths")
    p.add_argument("--models", default="", help="also measure these registered models on the Ray path at each "
                   "--workers count (comma-separated, or 'all'; the generated cohort is then multimodal)")
    p.add_argument("--shards", help="benchmark on this shard manifest instead of a generated cohort")
    p.add_argument("--n-records", type=int, default=6, help="nights to generate (default 6)")
    p.add_argument("--hours", type=float, default=2.0, help="hours per generated night (default 2)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--gen-workers", type=int, default=os.cpu_count() or 1, help="processes for generating the cohort")
    p.add_argument("--use-gpu", action="store_true", help="train on GPU (bf16 autocast); one GPU per Ray worker")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--check", action="store_true", help="exit 1 when any goal fails")


def run(args: argparse.Namespace) -> int:
    seq_len = args.seq_len or (21 if args.model_size == "paper" else 5)
    workers = list(dict.fromkeys(int(n) for n in args.workers.split(",") if n.strip())) if args.workers else []
    configure_console()  # our lines only ("Creating initial MLflow database tables..." stays out)
    if args.use_gpu and not torch.cuda.is_available():
        print("--use-gpu: no GPU found (torch.cuda.is_available() is False); running on the CPU instead, fp32")
    with tempfile.TemporaryDirectory(prefix="distsleep-bench-train-") as scratch:
        scratch = Path(scratch)
        shards = args.shards
        models = _models_arg(args.models)
        if not shards:
            t0 = time.perf_counter()
            shards = make_train_shards(scratch, args.n_records, args.hours, args.seed, args.gen_workers,
                                       multimodal=any(m != "mc2sleepnet" for m in models))
            print(f"generated {args.n_records} synthetic SHHS nights of {args.hours:g} h and their shards in "
                  f"{time.perf_counter() - t0:.0f} s")
        result = measure_train(shards, scratch, model_size=args.model_size, batch_size=args.batch_size, seq_len=seq_len,
                               steps=args.steps, warmup=args.warmup, workers=workers, loader_workers=args.loader_workers,
                               use_gpu=args.use_gpu, log_every=args.log_every, repeats=args.repeats,
                               precision=args.precision, compile=args.compile)
        if models:
            ray_started = False
            if not ray.is_initialized():
                secure_local_ray()  # token auth and loopback, whoever calls this
                ray.init(log_to_driver=False, configure_logging=False)
                ray_started = True
            try:
                result["models"] = measure_models(shards, scratch, models, model_size=args.model_size, steps=args.steps,
                                                  warmup=args.warmup, workers=workers or [1],
                                                  loader_workers=args.loader_workers, use_gpu=args.use_gpu)
            finally:
                if ray_started:
                    ray.shutdown()
    print(format_train(result))
    if result.get("models"):
        print()
        print(format_models(result["models"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    failed = [g for g in result["goals"] if not g["ok"]]
    return 1 if failed and args.check else 0


