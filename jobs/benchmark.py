"""Benchmarks that print their figures side by side. Subcommands:

  synth-realism   YASA's pretrained stager on a synthetic cohort vs the cohort's ground truth
  preprocess      our per-recording path vs the naive MNE route vs reading the bytes; 1 vs 2 Ray workers
  train           epochs/s of Ray Train + DeepSpeed vs a plain PyTorch loop (same model and data); 1 vs 2 workers
  loader          batches/s of the training stream with its shards on local disk vs in a bucket (s3://)
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

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported
# The benchmark's own clusters (ray.init below): token auth on, servers on 127.0.0.1 (distsleep.runtime).
from distsleep.runtime import secure_local_ray  # noqa: E402

secure_local_ray()

from distsleep.bench.load import busy_cores  # noqa: E402
from distsleep.bench.train import add_train_arguments, train  # noqa: E402


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
    from distsleep.integrity import sha256_file
    from distsleep.shards.convert import load_record, record_to_sample, shard_path
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


def loader(args: argparse.Namespace) -> int:
    from distsleep.bench.storage import format_storage, measure_storage

    with tempfile.TemporaryDirectory(prefix="distsleep-bench-loader-") as scratch:
        result = measure_storage(scratch, bucket=args.bucket, n_records=args.n_records, hours=args.hours, seed=args.seed,
                                 loader_workers=args.loader_workers, batch_size=args.batch_size, seq_len=args.seq_len,
                                 steps=args.steps, warmup=args.warmup)
    print(format_storage(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 1 if any("error" in row for row in result["rows"]) else 0


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
    add_train_arguments(p)
    p.set_defaults(func=train)
    p = sub.add_parser("loader", help="batches/s of the training stream from local disk vs from a bucket, checksums on and off")
    p.add_argument("--bucket", metavar="S3_URL", help="an s3:// bucket or prefix to copy the shards to (credentials and "
                   "endpoint from the AWS variables/files; default: an S3 server started on 127.0.0.1 for the run)")
    p.add_argument("--n-records", type=int, default=8, help="nights to generate (default 8)")
    p.add_argument("--hours", type=float, default=4.0, help="hours per night (default 4)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=21, help="epochs per window (default 21, MC²SleepNet's L)")
    p.add_argument("--steps", type=int, default=100, help="timed batches (default 100)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=loader)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
