"""Benchmarks that print their figures side by side. Subcommands:

  synth-realism   YASA's pretrained stager on a synthetic cohort vs the cohort's ground truth
  preprocess      our per-recording path vs the naive MNE route vs reading the bytes; 1 vs 2 Ray workers
  train           epochs/s of Ray Train + DeepSpeed vs a plain PyTorch loop (same model and data); 1 vs 2 workers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The benchmark's own clusters (ray.init below): token auth on, servers on 127.0.0.1 (distsleep.runtime).
from distsleep.runtime import secure_local_ray  # noqa: E402

secure_local_ray()


def synth_realism(args: argparse.Namespace) -> int:
    from distsleep.metrics import format_confusion
    from distsleep.synth.cohort import CohortConfig, generate_cohort
    from distsleep.synth.realism import RealismBar, score_cohort

    with tempfile.TemporaryDirectory(prefix="distsleep-realism-") as scratch:
        root = Path(args.cohort) if args.cohort else Path(scratch)
        if not args.cohort:
            t0 = time.perf_counter()
            generate_cohort(root, CohortConfig(n_records=args.n_records, hours=args.hours, seed=args.seed, workers=args.workers))
            print(f"generated {args.n_records} nights of {args.hours} h in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        result = score_cohort(root, workers=args.workers)
        print(f"scored {result['n_records']} nights with YASA in {time.perf_counter() - t0:.0f} s\n")

    bar = RealismBar()
    for name, title in (("eeg_eog_emg", "YASA EEG+EOG+EMG"), ("eeg_only", "YASA EEG alone")):
        m = result[name]
        f1 = "  ".join(f"{stage} {value:.3f}" for stage, value in m["f1"].items())
        print(f"{title}: kappa {m['kappa']:.3f}  accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  ({m['n_epochs']} epochs)")
        print(f"  per-stage F1: {f1}")
        print("  " + format_confusion(m["confusion"]).replace("\n", "\n  ") + "\n")
    kappas = result["per_record_kappa"]
    print(f"per-night kappa (EEG+EOG+EMG): min {min(kappas):.3f}  median {sorted(kappas)[len(kappas) // 2]:.3f}  max {max(kappas):.3f}")
    failures = bar.failures(result["eeg_eog_emg"])
    print(f"realism bar (kappa {bar.kappa}, every F1 {bar.f1}, N1 lowest): " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 1 if failures and args.check else 0


# --- preprocess ----------------------------------------------------------------------------------------

PAPER_RECORDS = 5791  # "SHHS 5791": every usable SHHS1 record
CLUSTER_CORES = 64
GOAL_NAIVE_RATIO = 30.0  # naive s/record over ours, both single-process (= per core)
GOAL_BYTES_RATIO = 6.0  # ours s/record over reading the file's bytes
GOAL_RAY_SCALING = 1.8  # records/s with 2 Ray workers over 1
GOAL_BYTES_PER_EPOCH = 6500


def _cut_epochs(x, rate: float, epoch_seconds: float):
    import numpy as np

    per_epoch = int(round(epoch_seconds * rate))
    n = len(x) // per_epoch
    return np.asarray(x[: n * per_epoch], dtype=np.float32).reshape(n, per_epoch)


def naive_mne_route(path: str | Path, channel: str = "EEG", target_rate: float = 100.0, epoch_seconds: float = 30.0):
    """The baseline the public SHHS scripts follow: MNE reads every signal (and so brings all 14 to the
    highest rate in the file, 250 Hz), resamples the whole recording, then picks the EEG and cuts epochs.
    Returns float32 (n_epochs, samples_per_epoch) in uV. (Annotations are not read and nothing is written,
    which only flatters this route.)"""
    import mne

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Channels contain different highpass filters", etc.
        raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
        raw.resample(target_rate, verbose="error")
    return _cut_epochs(raw.get_data(picks=[channel])[0] * 1e6, target_rate, epoch_seconds)


def mne_include_route(path: str | Path, channel: str = "EEG", target_rate: float = 100.0, epoch_seconds: float = 30.0):
    """MNE used well: load only the EEG (so it stays at its native rate), then one polyphase resampling."""
    from fractions import Fraction

    import mne
    from scipy.signal import resample_poly

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = mne.io.read_raw_edf(path, include=[channel], preload=True, verbose="error")
    ratio = Fraction(target_rate).limit_denominator(1000) / Fraction(raw.info["sfreq"]).limit_denominator(1000)
    y = resample_poly(raw.get_data()[0] * 1e6, ratio.numerator, ratio.denominator)
    return _cut_epochs(y, target_rate, epoch_seconds)


def warm_page_cache(sources) -> int:
    """Read every file of every record once, so that all routes below see the same warm page cache."""
    total = 0
    for source in sources:
        for name in (source.signal_path, source.annotation_path):
            if name:
                total += len(Path(name).read_bytes())
    return total


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by the whole machine over `seconds` while this process sleeps (Linux /proc/stat):
    load from other processes (or Ray's own daemons) that the timings below compete with."""
    def sample():
        with open("/proc/stat") as stream:
            values = [int(v) for v in stream.readline().split()[1:]]
        return sum(values) - values[3] - values[4], sum(values)  # busy, total (idle and iowait excluded)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)


def _per_record(seconds: list[float], n: int) -> float:
    """Median over repeats of (wall time of one pass over n records) / n."""
    return statistics.median(seconds) / n


def time_read_bytes(sources, repeats: int) -> float:
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for source in sources:
            data = Path(source.signal_path).read_bytes()
            del data
        passes.append(time.perf_counter() - t0)
    return _per_record(passes, len(sources))


def time_our_path(sources, config, scratch: Path, repeats: int) -> tuple[float, list[dict]]:
    """convert_record on each record, single process, into a fresh out dir per repeat (nothing skipped)."""
    from distsleep.shards.convert import convert_record

    passes, summaries = [], []
    for r in range(repeats):
        out = scratch / f"ours-{r}"
        t0 = time.perf_counter()
        summaries = [convert_record(source, config, out) for source in sources]
        passes.append(time.perf_counter() - t0)
    return _per_record(passes, len(sources)), summaries


def profile_our_path(sources, config, scratch: Path) -> dict[str, float]:
    """Where convert_record's time goes, s/record: the same steps it runs, each timed on its own."""
    from distsleep.shards.convert import load_record, record_to_sample, sha256_file, shard_path
    from distsleep.shards.format import write_shard

    steps = dict.fromkeys(("read EDF channel + XML", "resample + epoch + int16", "write shard", "sha256"), 0.0)
    for source in sources:
        t0 = time.perf_counter()
        record = load_record(source, config)
        t1 = time.perf_counter()
        sample = record_to_sample(record, config)
        t2 = time.perf_counter()
        shard = shard_path(scratch / "profile", source.record_id)
        write_shard(shard, sample)
        t3 = time.perf_counter()
        sha256_file(shard)
        t4 = time.perf_counter()
        for name, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[name] += seconds / len(sources)
    return steps


def time_route(route, sources, repeats: int) -> float:
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for source in sources:
            route(source.signal_path)
        passes.append(time.perf_counter() - t0)
    return _per_record(passes, len(sources))


def time_process_pool(sources, config, scratch: Path, workers: int, repeats: int) -> float:
    """Wall s/record of convert_record over all records in a plain process pool (no Ray): the scaling this
    machine allows at all, to tell Ray's overhead apart from cores that share caches, memory and the OS."""
    from concurrent.futures import ProcessPoolExecutor
    from itertools import repeat

    from distsleep.shards.convert import convert_record

    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(convert_record, sources[:workers], repeat(config), repeat(scratch / f"pool{workers}-warmup")))
        passes = []
        for r in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(convert_record, sources, repeat(config), repeat(scratch / f"pool{workers}-{r}")))
            passes.append(time.perf_counter() - t0)
    return _per_record(passes, len(sources))


def time_ray(root: Path, n_records: int, config, scratch: Path, cpus: int, repeats: int) -> dict:
    """run_preprocess over n_records on a local Ray cluster of `cpus` CPUs, start-up excluded: a warm-up
    run on 2 records right after ray.init makes the worker processes exist and import their modules."""
    import ray

    from distsleep.config import SplitConfig
    from distsleep.shards.pipeline import ClusterOptions, run_preprocess

    options = ClusterOptions(cpus_per_task=1)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        run_preprocess(root, scratch / f"ray{cpus}-warmup", config, SplitConfig(), limit=min(2, n_records), cluster=options, progress=False)
        passes, background, manifest = [], [], None
        for r in range(repeats):
            background.append(busy_cores(0.5))
            t0 = time.perf_counter()
            result = run_preprocess(root, scratch / f"ray{cpus}-{r}", config, SplitConfig(), limit=n_records, cluster=options, progress=False)
            passes.append(time.perf_counter() - t0)
            if result.failures or result.converted != n_records:
                raise RuntimeError(f"Ray run with {cpus} CPUs converted {result.converted}/{n_records}: {result.failures}")
            manifest = result.manifest
    finally:
        ray.shutdown()
    seconds = statistics.median(passes)
    return {"cpus": cpus, "seconds": seconds, "records_per_s": n_records / seconds, "passes": passes,
            "background_busy_cores": max((b for b in background if b is not None), default=None), "manifest": manifest}


def measure_preprocess(root: str | Path, n_records: int, naive_records: int, repeats: int, scratch: str | Path,
                       ray_scaling: bool = True) -> dict:
    """Every figure of `benchmark.py preprocess` as a dict (JSON-serializable)."""
    from distsleep.config import PreprocessConfig
    from distsleep.shards.pipeline import discover

    root, scratch = Path(root), Path(scratch)
    config = PreprocessConfig()  # SHHS, C4-A1 ("EEG") at 100 Hz: what the shards of the papers' setup hold
    sources = discover(config, root, limit=n_records)
    n_records = len(sources)
    naive_sources = sources[: max(1, min(naive_records, n_records))]
    warmed = warm_page_cache(sources)
    background = busy_cores()

    result: dict = {
        "n_records": n_records,
        "naive_records": len(naive_sources),
        "repeats": repeats,
        "edf_mb_per_record": sum(Path(s.signal_path).stat().st_size for s in sources) / n_records / 1e6,
        "page_cache_warmed_mb": warmed / 1e6,
        "cpu_count": os.cpu_count(),
        "background_busy_cores": background,
    }
    s = result["s_per_record"] = {}
    s["bytes"] = time_read_bytes(sources, repeats)
    s["ours"], summaries = time_our_path(sources, config, scratch, repeats)
    s["mne_include"] = time_route(mne_include_route, sources, repeats)
    s["naive"] = time_route(naive_mne_route, naive_sources, 1)
    result["profile_ours"] = profile_our_path(sources, config, scratch)

    n_bytes, n_epochs = sum(x["bytes"] for x in summaries), sum(x["n_epochs"] for x in summaries)
    result["bytes_per_epoch"] = n_bytes / n_epochs
    result["bytes_per_epoch_from"] = "convert_record summaries"
    result["shard_mb_per_record"] = n_bytes / n_records / 1e6
    result["epochs_per_record"] = n_epochs / n_records

    if ray_scaling:
        s["pool_1"] = time_process_pool(sources, config, scratch, 1, repeats)
        s["pool_2"] = time_process_pool(sources, config, scratch, 2, repeats)
        result["process_scaling"] = s["pool_1"] / s["pool_2"]
        runs = [time_ray(root, n_records, config, scratch, cpus, repeats) for cpus in (1, 2)]
        manifest = runs[-1].pop("manifest")
        runs[0].pop("manifest")
        result["ray"] = {str(run["cpus"]): run for run in runs}
        result["ray_scaling"] = runs[1]["records_per_s"] / runs[0]["records_per_s"]
        records = manifest["records"].values()
        result["bytes_per_epoch"] = sum(r["bytes"] for r in records) / sum(r["n_epochs"] for r in records)
        result["bytes_per_epoch_from"] = "manifest of the Ray run"
        result["ray_shards_identical"] = all(manifest["records"][x["record_id"]]["sha256"] == x["sha256"] for x in summaries)

    efficiency = result["ray_scaling"] / 2 if ray_scaling else 1.0
    result["extrapolation"] = {
        "records": PAPER_RECORDS,
        "cores": CLUSTER_CORES,
        "parallel_efficiency": efficiency,
        "efficiency_measured": ray_scaling,
        "ours_minutes": PAPER_RECORDS * s["ours"] / (CLUSTER_CORES * efficiency) / 60,
        "ours_cpu_hours": PAPER_RECORDS * s["ours"] / 3600,
        "naive_cpu_hours": PAPER_RECORDS * s["naive"] / 3600,
        "naive_minutes": PAPER_RECORDS * s["naive"] / (CLUSTER_CORES * efficiency) / 60,
        "edf_gb": PAPER_RECORDS * result["edf_mb_per_record"] / 1e3,
    }
    result["goals"] = preprocess_goals(result)
    return result


def preprocess_goals(result: dict) -> list[dict]:
    s = result["s_per_record"]
    goals = [
        {"goal": f"naive / ours >= {GOAL_NAIVE_RATIO:g}x per core (both single-process)",
         "value": s["naive"] / s["ours"], "ok": s["naive"] / s["ours"] >= GOAL_NAIVE_RATIO},
        {"goal": f"ours / reading the bytes <= {GOAL_BYTES_RATIO:g}x",
         "value": s["ours"] / s["bytes"], "ok": s["ours"] / s["bytes"] <= GOAL_BYTES_RATIO},
    ]
    if "ray_scaling" in result:
        goals.append({"goal": f"Ray 2 workers / 1 worker >= {GOAL_RAY_SCALING:g}x",
                      "value": result["ray_scaling"], "ok": result["ray_scaling"] >= GOAL_RAY_SCALING})
    goals.append({"goal": f"bytes per epoch <= {GOAL_BYTES_PER_EPOCH}",
                  "value": result["bytes_per_epoch"], "ok": result["bytes_per_epoch"] <= GOAL_BYTES_PER_EPOCH})
    return goals


def _background_line(result: dict) -> str:
    def show(value):
        return "n/a" if value is None else f"{value:.2f}"

    line = f"background load (busy cores while this benchmark sleeps): {show(result['background_busy_cores'])} before the single-process routes"
    for cpus, run in result.get("ray", {}).items():
        line += f", up to {show(run['background_busy_cores'])} before the Ray {cpus}-CPU passes"
    loads = [result["background_busy_cores"], *(run["background_busy_cores"] for run in result.get("ray", {}).values())]
    if any(load is not None and load > 0.25 for load in loads):
        line += "  <- WARNING: other work competes for the cores; the timings (Ray scaling above all) are pessimistic"
    return line


def format_preprocess(result: dict) -> str:
    s = result["s_per_record"]
    ours = s["ours"]
    rows = [
        ("read the EDF's bytes (Path.read_bytes)", s["bytes"], result["n_records"]),
        ("our path: convert_record (writes the shard)", ours, result["n_records"]),
        ('MNE include=["EEG"] + resample_poly(4, 5)', s["mne_include"], result["n_records"]),
        ("naive: MNE full preload + raw.resample(100)", s["naive"], result["naive_records"]),
    ]
    for workers in (1, 2):
        if f"pool_{workers}" in s:
            rows.append((f"process pool, {workers} process{'es' if workers > 1 else ''}, no Ray (wall)", s[f"pool_{workers}"], result["n_records"]))
    for cpus, run in result.get("ray", {}).items():
        rows.append((f"Ray run_preprocess, {cpus} worker{'s' if cpus != '1' else ''} (wall)", 1 / run["records_per_s"], result["n_records"]))
    lines = [
        f"{result['n_records']} SHHS-sized records ({result['edf_mb_per_record']:.1f} MB EDF each, "
        f"{result['epochs_per_record']:.0f} epochs), {result['cpu_count']} cores; page cache warmed first "
        f"({result['page_cache_warmed_mb']:.0f} MB read once) so every route sees the same warm cache.",
        f"All single-process routes run in this one process; median of {result['repeats']} passes, "
        f"the naive route once on {result['naive_records']} record(s).",
        _background_line(result),
        "",
        f"{'route':<52}{'s/record':>10}{'records/s':>11}{'x ours':>9}{'records':>9}",
    ]
    for name, sec, n in rows:
        lines.append(f"{name:<52}{sec:>10.4f}{1 / sec:>11.2f}{sec / ours:>9.2f}{n:>9}")
    profile = result["profile_ours"]
    lines += ["", "our path, step by step (s/record): " + "  ".join(f"{k} {v:.4f}" for k, v in profile.items())
              + f"  (sum {sum(profile.values()):.4f})"]
    if "ray" in result:
        lines += [
            f"Ray scaling: {result['ray']['2']['records_per_s']:.2f} / {result['ray']['1']['records_per_s']:.2f} records/s "
            f"= {result['ray_scaling']:.2f}x with 2 workers vs 1 (cluster start-up excluded).",
            f"  This machine has {result['cpu_count']} cores, so 2 vs 1 is as far as scaling can be shown here, and Ray's driver,",
            f"  raylet and GCS share those cores with the workers; a plain process pool gets {result['process_scaling']:.2f}x on the same records.",
            f"  Ray's shards are byte-identical to the single-process ones: {'yes' if result['ray_shards_identical'] else 'NO'}.",
        ]
    else:
        lines.append("Ray scaling: not measured (--no-ray)")
    lines.append(f"shards: {result['shard_mb_per_record']:.2f} MB per record, {result['bytes_per_epoch']:.0f} B per epoch "
                 f"({result['bytes_per_epoch_from']}; 3000 int16 samples = 6000 B of signal)")
    lines += ["", "goals:"]
    for goal in result["goals"]:
        lines.append(f"  {'PASS' if goal['ok'] else 'FAIL'}  {goal['goal']}: {goal['value']:.2f}")
    x = result["extrapolation"]
    eff = (f"{x['parallel_efficiency']:.2f} (measured, 1 -> 2 workers)" if x["efficiency_measured"]
           else "1.00 (assumed; --no-ray)")
    lines += [
        "",
        f"extrapolation to {x['records']:,} records on a {x['cores']}-core cluster, parallel efficiency {eff}:",
        f"  our path: {x['records']:,} x {ours:.4f} s / ({x['cores']} x {x['parallel_efficiency']:.2f}) = "
        f"{x['ours_minutes']:.2f} min ({x['ours_minutes'] * 60:.0f} s; {x['ours_cpu_hours']:.2f} CPU-hours)",
        f"  naive route: {x['naive_cpu_hours']:.1f} CPU-hours ({x['naive_minutes']:.0f} min on the same cluster)",
        f"  (page cache warm, as here. From cold storage our path is bound by reading the EDFs instead: "
        f"{x['edf_gb']:.0f} GB, e.g. {x['edf_gb'] / 60:.1f} min at 1 GB/s aggregate)",
    ]
    return "\n".join(lines)


def preprocess(args: argparse.Namespace) -> int:
    from distsleep.synth.cohort import CohortConfig, generate_cohort

    with tempfile.TemporaryDirectory(prefix="distsleep-bench-preprocess-") as scratch:
        scratch = Path(scratch)
        root = Path(args.cohort) if args.cohort else scratch / "cohort"
        if not args.cohort:
            t0 = time.perf_counter()
            generate_cohort(root, CohortConfig(n_records=args.n_records, hours=args.hours, seed=args.seed, workers=args.workers),
                            progress=False)
            print(f"generated {args.n_records} synthetic SHHS nights of {args.hours:g} h in {time.perf_counter() - t0:.0f} s")
        result = measure_preprocess(root, args.n_records, args.naive_records, args.repeats, scratch / "out",
                                    ray_scaling=not args.no_ray)
    print(format_preprocess(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    failed = [g for g in result["goals"] if not g["ok"]]
    return 1 if failed and args.check else 0


# --- train ---------------------------------------------------------------------------------------------

PAPER_S_PER_1000_STEPS = 1005.0  # MC²SleepNet Table 2: 1,000 training steps at batch 32 (L = 21) on one RTX 3090
PAPER_STEP_SETTING = {"model_size": "paper", "batch_size": 32, "seq_len": 21}
GOAL_TRAIN_OVERHEAD = 0.10  # 1 - (Ray Train + DeepSpeed epochs/s) / (plain PyTorch loop epochs/s), 1 worker
GOAL_GPU_SPEEDUP = 10.0  # the paper's s per 1,000 steps over ours, on one H100


def make_train_shards(scratch: Path, n_records: int, hours: float, seed: int, workers: int,
                      multimodal: bool = False) -> Path:
    """A synthetic SHHS cohort and its shards under `scratch`; returns the manifest path.

    The records are converted in this process, so run_preprocess finds them all done and only splits them
    and writes the manifest: no Ray cluster is started before the timings."""
    from distsleep.config import PreprocessConfig, SplitConfig
    from distsleep.shards.convert import convert_record
    from distsleep.shards.pipeline import discover, run_preprocess
    from distsleep.synth.cohort import CohortConfig, generate_cohort

    root, out = scratch / "cohort", (scratch / "shards").resolve()
    generate_cohort(root, CohortConfig(n_records=n_records, hours=hours, seed=seed, workers=workers), progress=False)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    from distsleep.config import CHANNEL_SETS

    config = (PreprocessConfig(channels=CHANNEL_SETS["multimodal"]["shhs"], filter_recipe="synthsleepnet") if multimodal
              else PreprocessConfig())
    for source in discover(config, root):
        convert_record(source, config, out)
    result = run_preprocess(root, out, config, SplitConfig(), progress=False)
    if result.converted or result.failures:
        raise RuntimeError(f"shards in {out}: {result.converted} records converted again, failures {result.failures}")
    return out / "manifest.json"


def bench_train_config(shards: str | Path, scratch: Path, *, workers: int, model_size: str = "small", batch_size: int = 32,
                       seq_len: int = 5, steps: int = 20, warmup: int = 5, loader_workers: int = 1,
                       use_gpu: bool = False, seed: int = 0, log_every: int = 1, name: str | None = None,
                       model: str = "mc2sleepnet"):
    """The TrainConfig both paths run: the trainer's defaults (Adam, lr 5e-4, weight decay 1e-5, gradient
    clipping 1.0, ZeRO 0, bf16 autocast on GPU, fp32 on CPU), warmup + steps steps, and validation only
    once, after the last step (val_every > max_steps), so that no evaluation falls inside the timed steps.
    `log_every` (the trainer's default is 1) is how often rank 0 logs to MLflow, inside the timed steps."""
    from distsleep.train.config import TrainConfig

    return TrainConfig(
        shards=str(shards), model=model, model_size=model_size, seq_len=seq_len, batch_size=batch_size,
        loader_workers=loader_workers,
        max_steps=warmup + steps, val_every=warmup + steps + 1, log_every=log_every, num_workers=workers, use_gpu=use_gpu,
        seed=seed, storage_path=str(scratch / "runs"), name=name or f"benchmark-train-{workers}w",
        tracking_uri=f"sqlite:///{(scratch / 'mlflow.db').resolve()}", experiment="benchmark-train",
    )


def _step_figures(step_seconds: list[float], epochs_per_step: int) -> dict:
    """Median and mean throughput over the timed steps (the mean is total epochs / total time)."""
    return {
        "timed_steps": len(step_seconds),
        "s_per_step": statistics.median(step_seconds),
        "epochs_per_s": epochs_per_step / statistics.median(step_seconds),
        "epochs_per_s_mean": epochs_per_step * len(step_seconds) / sum(step_seconds),
        "step_seconds": [round(x, 5) for x in step_seconds],
    }


def time_plain_loop(cfg, steps: int, warmup: int) -> dict:
    """The baseline: the same model, optimizer and data stream as one Ray Train worker, in a plain loop.

    Model from the trainer's own builder (build_model with the same config and seed), torch Adam with the
    same lr/betas/weight decay and LR schedule, the same gradient clipping DeepSpeed applies, and the
    training stream of rank 0 of 1 (make_train_loader). Each step's time runs from the end of the previous
    step to the end of this one (batch fetch included), as the Ray loop's `epochs_per_s` does; the first
    `warmup` steps are left out. Peak memory is this process's max RSS (its DataLoader workers not
    counted, like the Ray workers' figure), plus the CUDA allocator's peak on GPU.
    """
    import resource

    import torch

    from distsleep.models import model_normalization
    from distsleep.shards.loader import (LoaderConfig, batches_per_epoch, endless_batches, load_manifest,
                                         make_train_loader, shard_urls)
    from distsleep.train.loop import _lr_lambda, _model_and_config, input_roles

    if cfg.use_gpu and not torch.cuda.is_available():
        raise RuntimeError("use_gpu is set but torch finds no CUDA device")
    device = torch.device("cuda", 0) if cfg.use_gpu else torch.device("cpu")
    autocast_dtype = torch.bfloat16 if cfg.resolved_precision == "bf16" else None
    torch.manual_seed(cfg.seed)  # rank 0's seed in the Ray loop

    manifest, base = load_manifest(cfg.shards)
    model, model_cfg = _model_and_config(cfg)
    roles = input_roles(cfg, manifest, model_cfg)  # the channels and scaling the trainer would feed
    loader_cfg = LoaderConfig(seq_len=cfg.seq_len, batch_size=cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer,
                              num_workers=cfg.loader_workers, seed=cfg.seed, channels=list(roles), stride=cfg.val_stride,
                              normalization=model_normalization(cfg.model))
    per_epoch = batches_per_epoch(manifest, 1, cfg.batch_size, seq_len=cfg.seq_len)
    loader = make_train_loader(shard_urls(manifest, "train", base), loader_cfg, 1, 0, per_epoch)

    model.to(device).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))

    batches, seconds = endless_batches(loader), []
    tick = time.perf_counter()
    while len(seconds) < warmup + steps:
        signals, labels, _events = next(batches)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(signals.to(device), labels=labels.to(device), stage=cfg.stage)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        float(out["loss"].detach())  # the Ray loop reads the loss each step to log it (a device sync on GPU)
        now = time.perf_counter()
        seconds.append(now - tick)
        tick = now
    batches.close()  # ends the DataLoader iteration ...
    del batches, loader  # ... and stops its persistent workers

    result = {
        "path": "plain", "workers": 1, "device": str(device), "precision": cfg.resolved_precision,
        "parameters": sum(p.numel() for p in model.parameters()),
        **_step_figures(seconds[warmup:], cfg.batch_size * cfg.seq_len),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
    return result


_PLAIN_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("distsleep_benchmark_child", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from distsleep.train.config import TrainConfig
job = json.loads(sys.argv[2])
result = module.time_plain_loop(TrainConfig.from_dict(job["cfg"]), job["steps"], job["warmup"])
print("BENCHMARK-RESULT " + json.dumps(result))
"""


def time_plain_loop_in_subprocess(cfg, steps: int, warmup: int) -> dict:
    """time_plain_loop in a fresh Python process, so that its peak RSS is the training's alone."""
    import subprocess

    job = json.dumps({"cfg": cfg.to_dict(), "steps": steps, "warmup": warmup})
    done = subprocess.run([sys.executable, "-c", _PLAIN_CHILD, str(Path(__file__).resolve()), job],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCHMARK-RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the plain training loop failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("BENCHMARK-RESULT "))


def time_ray_path(cfg, warmup: int) -> dict:
    """The real training path, `run_training(cfg)`: Ray Train TorchTrainer, one DeepSpeed engine per worker,
    MLflow logging. Throughput is read back from the `epochs_per_s` that rank 0 logs every `log_every` steps
    (all ranks together, averaged over those steps; batch fetch and the logging itself included); windows
    that hold a warm-up step are left out, and so are worker start-up and the final validation/test.
    Peak RSS is the loop's `peak_rss_mb` (the largest over the workers)."""
    from distsleep.tracking import client
    from distsleep.train.launch import run_training

    t0 = time.perf_counter()
    outcome = run_training(cfg)
    wall = time.perf_counter() - t0
    mlflow_client = client(outcome.tracking_uri)
    history = {m.step: m.value for m in mlflow_client.get_metric_history(outcome.run_id, "epochs_per_s")}
    timed = [value for step, value in sorted(history.items()) if step - cfg.log_every >= warmup]
    if not timed:
        raise RuntimeError(f"run {outcome.run_id} logged no epochs_per_s for a window after step {warmup} "
                           f"(log_every {cfg.log_every}): raise --steps")
    per_step = cfg.batch_size * cfg.seq_len * cfg.num_workers
    logged = mlflow_client.get_run(outcome.run_id).data.metrics
    result = {
        "path": "ray", "workers": cfg.num_workers, "device": "cuda" if cfg.use_gpu else "cpu",
        "precision": cfg.resolved_precision, "run_id": outcome.run_id, "fit_wall_s": wall,
        **_step_figures([per_step / value for value in timed], per_step),
        "timed_steps": len(timed) * cfg.log_every,
        "peak_rss_mb": logged.get("peak_rss_mb"),
    }
    if "peak_gpu_mb" in logged:
        result["peak_gpu_mb"] = logged["peak_gpu_mb"]
    return result


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
                  warmup: int, workers: list[int], loader_workers: int = 1, use_gpu: bool = False, log_every: int = 1,
                  repeats: int = 1, plain_in_subprocess: bool = True) -> dict:
    """Every figure of `benchmark.py train` as a dict (JSON-serializable).

    Each repeat runs the plain loop, then the Ray path at each worker count (interleaved, so that slow
    drifts of the machine hit every path alike); each row is the median over the repeats."""
    import torch

    scratch = Path(scratch)
    gpus = torch.cuda.device_count() if use_gpu else 0
    result: dict = {
        "model_size": model_size, "batch_size": batch_size, "seq_len": seq_len, "steps": steps, "warmup": warmup,
        "loader_workers": loader_workers, "log_every": log_every, "repeats": repeats, "cpu_count": os.cpu_count(),
        "use_gpu_requested": use_gpu, "gpu": torch.cuda.get_device_name(0) if gpus else None, "gpu_count": gpus,
        "skipped_workers": [],
    }
    use_gpu = use_gpu and gpus > 0
    if use_gpu:
        result["skipped_workers"] = [n for n in workers if n > gpus]
        workers = [n for n in workers if n <= gpus]
    common = dict(model_size=model_size, batch_size=batch_size, seq_len=seq_len, steps=steps, warmup=warmup,
                  loader_workers=loader_workers, use_gpu=use_gpu, log_every=log_every)
    plain_cfg = bench_train_config(shards, scratch, workers=1, **common)
    result["precision"] = plain_cfg.resolved_precision
    run_plain = time_plain_loop_in_subprocess if plain_in_subprocess else time_plain_loop
    background: dict[str, list] = {"plain": [], **{f"ray{n}": [] for n in workers}}
    runs: dict[str, list] = {"plain": [], **{str(n): [] for n in workers}}

    ray = None
    if workers:
        import ray

        started = not ray.is_initialized()
        if started:  # the Ray Train V2 controller needs the dashboard's state API: keep it (loopback only)
            ray.init(log_to_driver=False, configure_logging=False)
    try:
        for repeat in range(repeats):
            background["plain"].append(busy_cores(1.0))
            runs["plain"].append(run_plain(plain_cfg, steps, warmup))
            for n in workers:
                background[f"ray{n}"].append(busy_cores(1.0))
                cfg = bench_train_config(shards, scratch, workers=n, name=f"benchmark-train-{n}w-{repeat}", **common)
                runs[str(n)].append(time_ray_path(cfg, warmup))
    finally:
        if ray is not None and started:
            ray.shutdown()
    result["background_busy_cores"] = background
    result["plain"] = _combine(runs.pop("plain"))
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
    from distsleep.models import build_model, model_config_class
    from distsleep.train.loop import model_preset

    rows = []
    for model in models:
        seq_len, batch = MODEL_BENCH_SHAPES.get(model, (5, 32))
        params = sum(p.numel() for p in build_model(model, model_preset(model_config_class(model), model_size)).parameters())
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
        f"sequences x L = {result['seq_len']} epochs per worker, {result['precision']} on {device}; "
        f"{result['steps']} timed steps after {result['warmup']} warm-up steps; {result['loader_workers']} "
        f"DataLoader worker(s) per training process; {result['cpu_count']} cores; "
        f"{repeats} repeat{'s' if repeats != 1 else ''}, paths interleaved.",
        "epochs/s = batch x L x workers / step time: median over the timed steps, then median over the repeats "
        "('mean' = total epochs / total time; 'range' = lowest-highest run). "
        f"Ray rows: from the epochs_per_s that the real loop logs to MLflow every {result['log_every']} step(s) "
        "(that logging is inside the timed steps, the plain loop logs nothing; worker start-up and the final "
        "validation/test are outside). Peak RSS: each training process, DataLoader workers not counted; "
        "Ray: the largest over the workers, whole run.",
        "background load (busy cores while the benchmark sleeps, before each run): "
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
                     "run `jobs/benchmark.py train --use-gpu --model-size paper --batch-size 32 --workers 1` on a GPU machine)")
    return "\n".join(lines)


def _models_arg(text: str) -> list[str]:
    from distsleep.models import list_models

    if not text:
        return []
    names = list_models() if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        raise SystemExit(f"--models: unknown model(s) {unknown}; registered: {', '.join(list_models())}")
    return names


def train(args: argparse.Namespace) -> int:
    import torch

    seq_len = args.seq_len or (21 if args.model_size == "paper" else 5)
    workers = list(dict.fromkeys(int(n) for n in args.workers.split(",") if n.strip())) if args.workers else []
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
                               use_gpu=args.use_gpu, log_every=args.log_every, repeats=args.repeats)
        if models:
            ray_started = False
            import ray

            if not ray.is_initialized():
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/benchmark.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth-realism", help="score a synthetic cohort with YASA's pretrained stager")
    p.add_argument("--n-records", type=int, default=20, help="nights to generate (default 20)")
    p.add_argument("--hours", type=float, default=8.0, help="hours per night (default 8)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for generation and scoring")
    p.add_argument("--cohort", help="score an existing SHHS-layout cohort instead of generating one")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--check", action="store_true", help="exit 1 when the cohort falls outside the realism bar")
    p.set_defaults(func=synth_realism)
    p = sub.add_parser("preprocess", help="records/s of our preprocessing path vs the naive MNE route, bytes, and Ray 1 vs 2 workers")
    p.add_argument("--n-records", type=int, default=6, help="nights to generate, or to take from --cohort (default 6)")
    p.add_argument("--hours", type=float, default=9.0, help="hours per generated night (default 9: SHHS-sized, ~49 MB)")
    p.add_argument("--naive-records", type=int, default=2, help="records for the slow naive MNE route (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="passes of the cheap routes and Ray runs; the median is reported")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for generating the cohort")
    p.add_argument("--cohort", help="benchmark an existing SHHS-layout cohort instead of generating one")
    p.add_argument("--no-ray", action="store_true", help="skip the 1 vs 2 Ray workers runs")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--check", action="store_true", help="exit 1 when any goal fails")
    p.set_defaults(func=preprocess)
    p = sub.add_parser("train", help="epochs/s of Ray Train + DeepSpeed vs a plain PyTorch loop, 1 vs 2 workers, peak memory")
    p.add_argument("--model-size", choices=("small", "paper"), default="small", help="MC²SleepNet preset (default small)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per worker per step (default 32)")
    p.add_argument("--seq-len", type=int, help="epochs per sequence (default 21 at paper size, 5 at small)")
    p.add_argument("--steps", type=int, default=40, help="timed steps (default 40)")
    p.add_argument("--warmup", type=int, default=10, help="steps before the timed ones (default 10)")
    p.add_argument("--workers", default="1,2", help="Ray Train worker counts, comma-separated (default 1,2; '' = plain loop only)")
    p.add_argument("--loader-workers", type=int, default=1, help="DataLoader workers per training process (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each path, interleaved; the median is reported (default 2)")
    p.add_argument("--log-every", type=int, default=1, help="MLflow logging interval of the Ray loop, in steps "
                   "(default 1, the trainer's default); --steps and --warmup should be multiples of it")
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
    p.set_defaults(func=train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
