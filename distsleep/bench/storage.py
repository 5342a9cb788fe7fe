"""`jobs/benchmark.py loader`: the training stream's batches/s with its shards on local disk and in a bucket
(s3://), side by side, with the shard checksums verified (the default, `--verify-shards stored`) and not.

The same shards are read both ways: they are made locally (`make_train_shards`), then copied into the bucket
(manifest last). The bucket is `--bucket s3://...` (credentials and endpoint from the usual AWS variables and
files) or, by default, an S3 server started on 127.0.0.1 for the run (moto, `cluster/objectstore.py`): a
stand-in that shows the client's costs (request round trips, reading whole shards to hash them), not a real
store's bandwidth or latency. Each measurement runs in a fresh process (`engine.run_isolated`).

`run` is the subcommand (`add_arguments` its options).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from distsleep import store
from distsleep.bench.engine import run_isolated
from distsleep.bench.load import busy_cores
from distsleep.bench.train import bench_train_config, make_train_shards
from distsleep.cluster.objectstore import client_env, create_bucket, start_s3_server, stop_s3_server, write_aws_files
from distsleep.shards.loader import load_manifest, shard_urls
from distsleep.shards.storage import read_bytes

VERIFY = ("stored", "none")


def copy_dataset(folder: Path, prefix: str) -> str:
    """The preprocessing output in `folder` copied under `prefix` (manifest last); the copy's manifest location."""
    names = store.files(folder)
    for name in sorted(n for n in names if n != "manifest.json" and not n.startswith(".")):
        store.write_bytes(store.join(prefix, name), (folder / name).read_bytes())
    store.write_bytes(store.join(prefix, "manifest.json"), (folder / "manifest.json").read_bytes())
    return store.join(prefix, "manifest.json")


def read_rate(manifest: str) -> dict:
    """Every shard of `manifest` read whole once: MB/s and ms per shard."""
    loaded, base = load_manifest(manifest)
    urls = [u for split in ("train", "val", "test") for u in shard_urls(loaded, split, base)]
    t0 = time.perf_counter()
    total = sum(len(read_bytes(u)) for u in urls)
    seconds = time.perf_counter() - t0
    return {"shards": len(urls), "mb": total / 1e6, "mb_per_s": total / 1e6 / seconds, "ms_per_shard": 1000 * seconds / len(urls)}


def _local_server(scratch: Path) -> tuple[object, str]:
    """An S3 server on 127.0.0.1 with a bucket, and this process's AWS variables pointed at it (the measuring
    processes inherit them)."""
    server = start_s3_server(log=scratch / "s3-server.log")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(key, None)
    os.environ.update(client_env(server.endpoint, *write_aws_files(scratch / "aws")))
    create_bucket("benchmark", env=dict(os.environ))
    return server, "s3://benchmark"


def measure_storage(scratch: str | Path, *, bucket: str | None, n_records: int, hours: float, seed: int,
                    loader_workers: int, batch_size: int, seq_len: int, steps: int, warmup: int) -> dict:
    scratch = Path(scratch)
    local = make_train_shards(scratch, n_records, hours, seed, workers=min(4, os.cpu_count() or 1))
    server = None
    if bucket is None:
        server, bucket = _local_server(scratch)
    try:
        remote = copy_dataset(local.parent, store.join(bucket, f"loader-benchmark-{os.getpid()}"))
        rows = []
        for where, manifest in (("local disk", str(local)), ("bucket", remote)):
            raw = read_rate(manifest)
            for verify in VERIFY:
                cfg = dataclasses.replace(bench_train_config(manifest, scratch, workers=1, batch_size=batch_size, seq_len=seq_len,
                                                             loader_workers=loader_workers), verify_shards=verify)
                rows.append({"where": where, "verify": verify, "read": raw,
                             **run_isolated("loader", cfg, steps, warmup, timeout=900)})
    finally:
        if server is not None:
            stop_s3_server(server)
    return {"rows": rows, "bucket": bucket if server is None else "local S3 server (moto) on 127.0.0.1",
            "n_records": n_records, "hours": hours, "loader_workers": loader_workers, "batch_size": batch_size,
            "seq_len": seq_len, "steps": steps, "busy_cores": busy_cores()}


def format_storage(result: dict) -> str:
    lines = [f"loader throughput by where the shards are: {result['n_records']} nights of {result['hours']} h, "
             f"{result['loader_workers']} loader worker(s), batch {result['batch_size']} x {result['seq_len']} epochs, "
             f"{result['steps']} timed batches; bucket: {result['bucket']}",
             f"{'shards on':12s} {'verify':7s} {'batches/s':>10s} {'first batch s':>14s} {'read MB/s':>10s} {'ms/shard':>9s}"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"{row['where']:12s} {row['verify']:7s} failed: {row['error'][-300:]}")
            continue
        lines.append(f"{row['where']:12s} {row['verify']:7s} {row['batches_per_s']:10.1f} {row['first_batch_s']:14.2f} "
                     f"{row['read']['mb_per_s']:10.1f} {row['read']['ms_per_shard']:9.1f}")
    ok = {(r["where"], r["verify"]): r["batches_per_s"] for r in result["rows"] if "error" not in r}
    for verify in VERIFY:
        if ("local disk", verify) in ok and ("bucket", verify) in ok:
            lines.append(f"bucket / local disk, verify {verify}: {ok[('bucket', verify)] / ok[('local disk', verify)]:.2f}x")
    if result.get("busy_cores") is not None:
        lines.append(f"other load on the machine: {result['busy_cores']:.1f} busy cores")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="distsleep-bench-loader-") as scratch:
        result = measure_storage(scratch, bucket=args.bucket, n_records=args.n_records, hours=args.hours, seed=args.seed,
                                 loader_workers=args.loader_workers, batch_size=args.batch_size, seq_len=args.seq_len,
                                 steps=args.steps, warmup=args.warmup)
    print(format_storage(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 1 if any("error" in row for row in result["rows"]) else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
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
