"""One worker's training step measured without Ray or MLflow, so it runs on a bare GPU box.

Four measurements, each on the run's own shards (the trainer's loader, channels and scaling):
- `measure_loader`: batches/s of the training stream alone (decode, window, collate, IPC; no model);
- `measure_plain`: the reference, a plain PyTorch loop (torch Adam, autocast, `clip_grad_norm_`) with the
  same model, data and optimiser settings as one Ray Train worker;
- `measure_engine`: the trainer's own step (`distsleep.train.step`: DeepSpeed engine, clipping, device-side
  metrics) in a one-rank process group; `full=True` adds a validation pass, a checkpoint save/load round
  trip and a strict load of the saved weights into a fresh model (what `predict` does with a bundle).
- `measure_inference`: what `evaluate` and `predict` run per record, on the device and on the CPU with the
  same weights (speed, and how far the two disagree).

`run_isolated` runs one of them in a fresh Python process (own CUDA context, own peak-memory figures, own
timeout); `check` runs the plan a GPU needs and writes every result to a JSON file as it goes.

    python -m distsleep.bench.engine check --shards M --out DIR [--steps 100 --warmup 20 --compile]
    python -m distsleep.bench.engine one KIND CONFIG_JSON   (one measurement; prints RESULT {json})
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

from distsleep.errors import first_line
from distsleep.shards.loader import (batches_per_epoch, endless_batches, load_manifest, make_train_loader,
                                     shard_checksums, shard_identities)
from distsleep.tasks import targets
from distsleep.train.config import TrainConfig, lr_lambda
from distsleep.train.evaluate import aggregate, evaluate, score_windows
from distsleep.train.inputs import input_roles, loader_config, model_and_config, stream_urls
from distsleep.train.step import (DS_TAG, StepMetrics, batch_to_device, build_engine, compile_in_place, device_of,
                                  full_fp32_state, train_step)

PAPER_S_PER_1000_STEPS = 1005.0  # MC²SleepNet Table 2: 1,000 training steps at batch 32 (L = 21) on one RTX 3090
PAPER_STEP_SETTING = {"model_size": "paper", "batch_size": 32, "seq_len": 21}
GOAL_GPU_SPEEDUP = 20.0  # the paper's s per 1,000 steps over ours, on one H100
GOAL_LOADER_LEAD = 3.0  # loader batches/s over training steps/s


def step_figures(step_seconds: list[float], epochs_per_step: int) -> dict:
    """Median and mean throughput over the timed steps (the mean is total epochs / total time)."""
    median = statistics.median(step_seconds)
    return {
        "timed_steps": len(step_seconds),
        "s_per_step": median,
        "s_per_1000_steps": 1000 * median,
        "epochs_per_s": epochs_per_step / median,
        "epochs_per_s_mean": epochs_per_step * len(step_seconds) / sum(step_seconds),
        "step_seconds": [round(x, 5) for x in step_seconds],
    }


def paper_comparison(cfg: TrainConfig, s_per_step: float) -> dict:
    """The paper's s per 1,000 steps over ours, and whether this run is the paper's setting."""
    return {"paper_speedup": PAPER_S_PER_1000_STEPS / (1000 * s_per_step),
            "paper_setting": all(getattr(cfg, k) == v for k, v in PAPER_STEP_SETTING.items())}


@dataclass
class Stream:
    """What one rank trains on: the model (fresh, seeded), its loader settings and the batch stream."""

    model: torch.nn.Module
    loader_cfg: object
    val_urls: list[str]
    test_urls: list[str]
    loader: object


def open_stream(cfg: TrainConfig, pin_memory: bool = False) -> Stream:
    """The model and training stream of rank 0 of 1, exactly as `train_loop_per_worker` builds them."""
    if cfg.num_workers != 1:
        raise ValueError(f"the single-process benchmarks run one worker; got num_workers={cfg.num_workers}")
    torch.manual_seed(cfg.seed)
    manifest, base = load_manifest(cfg.shards, allow_commands=cfg.allow_shard_commands)
    model, model_cfg = model_and_config(cfg)
    roles = input_roles(cfg, manifest, model_cfg)
    lcfg = loader_config(cfg, roles, shard_checksums(manifest, base), shard_identities(manifest, base))
    streams = stream_urls(cfg, manifest, base, roles)
    per_epoch = batches_per_epoch(manifest, 1, lcfg.batch_size, seq_len=cfg.seq_len, records=streams.labelled)
    loader = make_train_loader(streams.training, lcfg, 1, 0, per_epoch, pin_memory=pin_memory)
    return Stream(model, lcfg, streams.val, streams.test, loader)


def _memory(device: torch.device) -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _loss_trend(losses: list[float]) -> dict:
    k = max(1, len(losses) // 5)
    return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
            "losses_finite": all(math.isfinite(x) for x in losses)}


def measure_loader(cfg: TrainConfig, steps: int, warmup: int) -> dict:
    """Batches/s of the training stream alone: what the loader can feed a GPU."""
    stream = open_stream(cfg)
    batches = endless_batches(stream.loader)
    t0 = time.perf_counter()
    next(batches)  # worker start-up and shuffle-buffer fill
    first = time.perf_counter() - t0
    for _ in range(warmup):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(batches)
    per_batch = (time.perf_counter() - t0) / steps
    batches.close()
    return {"kind": "loader", "loader_workers": cfg.loader_workers, "first_batch_s": first, "s_per_batch": per_batch,
            "batches_per_s": 1 / per_batch}


def measure_plain(cfg: TrainConfig, steps: int, warmup: int) -> dict:
    """The reference loop: the same model, data, Adam settings, LR schedule and clipping as one Ray Train
    worker, written as a plain PyTorch loop. A step runs from the end of the previous step to the end of this
    one (batch fetch included); the loss is read every `cfg.log_every` steps, as the trainer does."""
    device = device_of(cfg.use_gpu)
    if cfg.use_gpu and device.type != "cuda":
        raise RuntimeError("use_gpu is set but torch finds no CUDA device")
    autocast_dtype = torch.bfloat16 if cfg.resolved_precision == "bf16" else None
    stream = open_stream(cfg, pin_memory=device.type == "cuda")
    model = stream.model.to(device).train()
    if cfg.compile:
        compile_in_place(model, cfg.compile_backend)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=cfg.effective_lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                 fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    batches, seconds, losses = endless_batches(stream.loader), [], []
    pending = StepMetrics()
    tick = time.perf_counter()
    while len(seconds) < warmup + steps:
        batch = batch_to_device(next(batches), device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(batch.signals, labels=targets(cfg.task, batch.labels, batch.events), stage=cfg.stage)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip, foreach=True)
        optimizer.step()
        scheduler.step()
        pending.add(len(seconds) + 1, {"loss": out["loss"].detach()})
        if len(pending) == cfg.log_every:
            losses += [values["loss"] for _, values in pending.drain()]
        now = time.perf_counter()
        seconds.append(now - tick)
        tick = now
    losses += [values["loss"] for _, values in pending.drain()]
    batches.close()
    return {"kind": "plain", "path": "plain", "workers": 1, "device": str(device), "precision": cfg.resolved_precision,
            "compile": cfg.compile, "parameters": sum(p.numel() for p in model.parameters()),
            **step_figures(seconds[warmup:], cfg.batch_size * cfg.seq_len), **paper_comparison(cfg, statistics.median(seconds[warmup:])),
            **_loss_trend(losses), **_memory(device)}


def _init_single_rank(device: torch.device) -> None:
    """A one-rank process group (NCCL on GPU, gloo on CPU), as Ray Train would set up for one worker. Its store
    is in-process (HashStore): torch's TCPStore would listen on every interface."""
    if dist.is_initialized():
        return
    with socket.socket() as s:  # a free port on loopback, for whatever reads MASTER_PORT (no server uses it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)


def measure_engine(cfg: TrainConfig, steps: int, warmup: int, *, fixed_batch: bool = False, full: bool = False,
                   profile_steps: int = 0) -> dict:
    """The trainer's step (`build_engine` + `train_step` + `StepMetrics`) on one rank, timed like `measure_plain`.

    `fixed_batch` reuses one batch already on the device (the GPU's cost without the loader); `full` adds a
    validation pass, a checkpoint round trip and a strict load of the saved weights into a fresh model;
    `profile_steps` > 0 runs that many more steps under the PyTorch profiler and returns its top operators.
    """
    device = device_of(cfg.use_gpu)
    _init_single_rank(device)
    stream = open_stream(cfg, pin_memory=device.type == "cuda")
    trainer = build_engine(cfg, stream.model, device, world_size=1)
    batches = endless_batches(stream.loader)
    fixed = batch_to_device(next(batches), device) if fixed_batch else None
    pending, losses, seconds, waits = StepMetrics(), [], [], []
    tick = time.perf_counter()
    for step in range(1, warmup + steps + 1):
        t0 = time.perf_counter()
        # a step's micro-batches (gradient accumulation) fetched first, so that the wait is the loader's alone
        micro = [fixed if fixed is not None else next(batches) for _ in range(cfg.gradient_accumulation)]
        waits.append(time.perf_counter() - t0)
        pending.add(step, train_step(trainer, iter(micro), cfg))
        if step % cfg.log_every == 0:
            losses += [values["loss"] for _, values in pending.drain()]
        now = time.perf_counter()
        seconds.append(now - tick)
        tick = now
    losses += [values["loss"] for _, values in pending.drain()]
    if device.type == "cuda":
        torch.cuda.synchronize()
    module = trainer.module
    result = {
        "kind": "engine", "path": "engine", "device": str(device), "engine_device": str(trainer.engine.device),
        "precision": cfg.resolved_precision, "compile": cfg.compile, "fixed_batch": fixed_batch,
        "loader_workers": cfg.loader_workers, "log_every": cfg.log_every, "torch": torch.__version__,
        "parameters": sum(p.numel() for p in module.parameters()),
        "first_step_s": seconds[0], **step_figures(seconds[warmup:], cfg.batch_size * cfg.seq_len),
        **paper_comparison(cfg, statistics.median(seconds[warmup:])),
        "median_batch_wait_s": statistics.median(waits[warmup:]), **_loss_trend(losses),
        "params_finite": all(bool(torch.isfinite(p).all()) for p in module.parameters()),
        # one step = one optimizer step of gradient_accumulation_steps micro-batches (train_step)
        "optimizer_steps": int(trainer.engine.global_steps), "micro_steps": int(trainer.engine.micro_steps),
        "scheduler_steps": int(trainer.scheduler.last_epoch) if trainer.scheduler is not None else None,
    }
    if profile_steps:
        result["profile"] = _profile(lambda: train_step(trainer, iter([fixed] * cfg.gradient_accumulation)
                                                        if fixed is not None else batches, cfg),
                                     profile_steps, device)
    if full:
        result.update(_full_checks(cfg, trainer, stream, device))
    result.update(_memory(device))
    batches.close()
    dist.destroy_process_group()
    return result


def _profile(step, n: int, device: torch.device, top: int = 25) -> list[dict]:
    """The `top` operators by self time (device time on GPU) over `n` calls of `step`."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    return [{"op": e.key[:80], "calls": e.count, "self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3 / n,
             "self_cpu_ms": e.self_cpu_time_total / 1e3 / n} for e in rows]


def _full_checks(cfg: TrainConfig, trainer, stream: Stream, device: torch.device) -> dict:
    """Validation pass, checkpoint save -> perturb -> load round trip, strict load into a fresh model."""
    out = {}
    autocast_dtype = torch.bfloat16 if cfg.resolved_precision == "bf16" else None
    t0 = time.perf_counter()
    metrics, _ = evaluate(trainer.module, stream.val_urls, stream.loader_cfg, 1, 0, device, autocast_dtype, cfg.task,
                          batch_size=cfg.resolved_eval_batch_size)
    out.update(eval_s=time.perf_counter() - t0, val_accuracy=metrics["accuracy"], val_macro_f1=metrics["macro_f1"])
    weights = full_fp32_state(trainer.engine)
    with tempfile.TemporaryDirectory() as directory:
        t0 = time.perf_counter()
        trainer.engine.save_checkpoint(directory, tag=DS_TAG)
        with torch.no_grad():
            for p in trainer.module.parameters():
                p.add_(1.0)
        trainer.engine.load_checkpoint(directory, tag=DS_TAG)
        out["checkpoint_roundtrip_s"] = time.perf_counter() - t0
    after = trainer.module.state_dict()
    out["checkpoint_roundtrip_exact"] = all(torch.equal(after[n].float().cpu(), w.float()) for n, w in weights.items())
    fresh, _ = model_and_config(cfg)
    try:
        fresh.load_state_dict(weights, strict=True)
        out["strict_load"] = "ok"
    except RuntimeError as error:
        out["strict_load"] = first_line(error, 200)
    return out


def measure_inference(cfg: TrainConfig, steps: int, warmup: int, records: int = 1, batch_size: int = 64) -> dict:
    """What `evaluate` and `predict` run for each record (`train.evaluate.score_windows` + `aggregate`: every
    window, stride 1, fp32, the loader in the process) on the first test record(s), with the same weights on the
    run's device and on the CPU: epochs scored per second on each, the largest difference in stage probability
    and how often the two agree on the stage. (The Ray fan-out that gives each record a GPU task is not in it:
    a bare GPU box has no Ray.) `steps` and `warmup` are unused: a pass is a whole record."""
    device = device_of(cfg.use_gpu)
    stream = open_stream(cfg)  # its training loader is never iterated: no worker starts
    model, urls = stream.model, stream.test_urls[:records]
    if not urls:
        raise ValueError(f"{cfg.shards}: no test records to score")
    loader = replace(stream.loader_cfg, batch_size=batch_size, num_workers=0, stride=1)

    def score(on: torch.device) -> tuple[dict, float]:
        model.to(on)
        t0 = time.perf_counter()
        predictions = aggregate(score_windows(model, urls, loader, 1, 0, on, num_workers=0))
        return predictions.probabilities, time.perf_counter() - t0

    if device.type == "cuda":
        score(device)  # cuDNN picks its kernels on the first pass
    on_device, device_s = score(device)
    on_cpu, cpu_s = score(torch.device("cpu"))
    epochs = sum(len(p) for p in on_cpu.values())
    differences = [abs(on_device[r] - on_cpu[r]).max() for r in on_cpu]
    agree = sum(int((on_device[r].argmax(1) == on_cpu[r].argmax(1)).sum()) for r in on_cpu)
    return {"kind": "inference", "device": str(device), "records": len(urls), "epochs": epochs,
            "epochs_per_s": epochs / device_s, "cpu_epochs_per_s": epochs / cpu_s,
            "max_abs_difference": float(max(differences)), "stage_agreement": agree / epochs, **_memory(device)}


MEASUREMENTS = {"loader": measure_loader, "plain": measure_plain, "engine": measure_engine, "inference": measure_inference}


def run_isolated(kind: str, cfg: TrainConfig, steps: int, warmup: int, timeout: float | None = None, **options) -> dict:
    """One measurement in a fresh Python process; {"error": ...} instead of raising when it fails."""
    job = json.dumps({"cfg": cfg.to_dict(), "steps": steps, "warmup": warmup, "options": options})
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "distsleep.bench.engine", "one", kind, job], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"kind": kind, **options, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"kind": kind, **options, "error": f"exit {done.returncode}: {done.stderr[-2500:]}"}
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "wall_s": round(time.perf_counter() - t0, 1)}


def _one(kind: str, job: str) -> None:
    spec = json.loads(job)
    cfg = TrainConfig.from_dict(spec["cfg"])
    result = MEASUREMENTS[kind](cfg, spec["steps"], spec["warmup"], **spec.get("options", {}))
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------- the check


def check_plan(compile_runs: bool) -> list[tuple[str, dict, dict, float]]:
    """(kind, TrainConfig changes, options, timeout s) of every measurement of the GPU check, in order."""
    plan = [
        ("engine", {"precision": "bf16"}, {"full": True}, 150),
        ("engine", {"precision": "bf16"}, {"fixed_batch": True, "profile_steps": 10}, 90),
        ("engine", {"precision": "fp32"}, {}, 120),
        ("loader", {"loader_workers": 1}, {}, 90),
        ("loader", {"loader_workers": 4}, {}, 90),
        ("plain", {"precision": "bf16"}, {}, 120),
        ("inference", {"precision": "fp32"}, {}, 150),
    ]
    if compile_runs:
        plan += [("engine", {"precision": "bf16", "compile": True}, {}, 200),
                 ("engine", {"precision": "fp32", "compile": True}, {}, 150)]
    return plan


def check(shards: str, out: Path, *, steps: int, warmup: int, size: str = "paper", compile_runs: bool = False,
          loader_workers: int = 4, log_every: int = 10, skip: tuple[str, ...] = ()) -> list[dict]:
    """The GPU check: every measurement of `check_plan` at the paper's step setting, results written to
    out/engine_check.json after each one (a later failure keeps the earlier figures)."""
    out.mkdir(parents=True, exist_ok=True)
    use_gpu = torch.cuda.is_available()
    seq_len = PAPER_STEP_SETTING["seq_len"] if size == "paper" else 5
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for kind, changes, options, timeout in check_plan(compile_runs):
            if kind in skip:
                continue
            settings = dict(shards=shards, model_size=size, seq_len=seq_len, batch_size=PAPER_STEP_SETTING["batch_size"],
                            loader_workers=loader_workers, use_gpu=use_gpu, log_every=log_every,
                            max_steps=warmup + steps, storage_path=scratch, num_workers=1)
            cfg = TrainConfig(**{**settings, **changes})
            result = run_isolated(kind, cfg, steps, warmup, timeout=timeout, **options)
            results.append({"changes": changes, **result})
            print(format_result(results[-1]), flush=True)
            (out / "engine_check.json").write_text(json.dumps(results, indent=1))
    return results


def format_result(r: dict) -> str:
    """One line per measurement."""
    what = f"{r['kind']:<10}" + " ".join(f"{k}={v}" for k, v in r.get("changes", {}).items())
    what += " fixed-batch" if r.get("fixed_batch") else ""
    if "error" in r:
        return f"{what}: FAILED {r['error'][-600:]}"
    if r["kind"] == "loader":
        return f"{what}: {r['batches_per_s']:.1f} batches/s (first batch {r['first_batch_s']:.1f} s)"
    if r["kind"] == "inference":
        return (f"{what}: evaluate/predict scoring of {r['records']} test record(s), {r['epochs']} epochs: "
                f"{r['epochs_per_s']:.0f} epochs/s on {r['device']}, {r['cpu_epochs_per_s']:.0f} on the CPU; "
                f"probabilities differ by <= {r['max_abs_difference']:.1e}, stages agree on "
                f"{100 * r['stage_agreement']:.2f} % of epochs")
    line = (f"{what}: {r['s_per_1000_steps']:.1f} s per 1,000 steps "
            f"({r['paper_speedup']:.1f}x the paper), {r['epochs_per_s']:.0f} epochs/s, loss {r['loss_first']:.3f} -> "
            f"{r['loss_last']:.3f}{'' if r['losses_finite'] else ' NON-FINITE'}")
    if r.get("peak_gpu_mb") is not None:
        line += f", peak GPU {r['peak_gpu_mb']:.0f} MB"
    if "strict_load" in r:
        line += (f"; eval {r['eval_s']:.1f} s, checkpoint round trip {'exact' if r['checkpoint_roundtrip_exact'] else 'DIFFERS'}"
                 f" ({r['checkpoint_roundtrip_s']:.1f} s), strict load {r['strict_load']}")
    for row in r.get("profile", [])[:8]:
        line += f"\n    {row['self_device_ms']:8.2f} ms device {row['self_cpu_ms']:8.2f} ms host  x{row['calls']:<5} {row['op']}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distsleep.bench.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="every measurement a GPU needs, each in its own process")
    p.add_argument("--shards", required=True, help="manifest.json of the shards to train on")
    p.add_argument("--out", required=True, help="folder for engine_check.json")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--size", default="paper", help="model preset (default paper)")
    p.add_argument("--loader-workers", type=int, default=4)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (bf16 and fp32)")
    p.add_argument("--skip", default="", help="comma-separated measurement kinds to leave out (loader, plain, engine, "
                                              "inference)")
    p = sub.add_parser("one", help="one measurement (used by check); prints RESULT {json}")
    p.add_argument("kind", choices=sorted(MEASUREMENTS))
    p.add_argument("job", help="JSON: {cfg, steps, warmup, options}")
    args = parser.parse_args(argv)
    if args.command == "one":
        _one(args.kind, args.job)
        return 0
    results = check(str(Path(args.shards).resolve()), Path(args.out), steps=args.steps, warmup=args.warmup,
                    size=args.size, compile_runs=args.compile, loader_workers=args.loader_workers,
                    log_every=args.log_every, skip=tuple(k for k in args.skip.split(",") if k))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
