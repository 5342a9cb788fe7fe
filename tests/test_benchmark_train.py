"""`jobs/benchmark.py train`: its plain-loop baseline on the small model for a few steps, so that the
benchmark cannot rot.

The Ray Train side of the benchmark is `run_training` itself (covered by test_train.py); the 1 vs 2 workers
comparison needs a Ray cluster of its own, so it is not run here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "jobs" / "benchmark.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("distsleep_jobs_benchmark_train", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark():
    return load_benchmark()


@pytest.fixture(scope="module")
def shards(benchmark, tmp_path_factory) -> Path:
    # Two half-hour nights: 60 epochs each; the split keeps one for training, which is all one rank with
    # one DataLoader worker needs. Converted in-process: no Ray.
    return benchmark.make_train_shards(tmp_path_factory.mktemp("bench-train"), n_records=3, hours=0.5, seed=5, workers=1)


def test_plain_loop_reports_throughput_and_memory(benchmark, shards, tmp_path):
    cfg = benchmark.bench_train_config(shards, tmp_path, workers=1, model_size="small", batch_size=4, seq_len=5,
                                       steps=3, warmup=1, loader_workers=0)
    assert cfg.max_steps == 4 and cfg.val_every > cfg.max_steps and cfg.resolved_precision == "fp32"
    result = benchmark.time_plain_loop(cfg, steps=3, warmup=1)
    assert result["device"] == "cpu" and result["timed_steps"] == 3
    assert result["epochs_per_s"] > 0 and result["epochs_per_s_mean"] > 0 and result["s_per_step"] > 0
    assert result["epochs_per_s"] == pytest.approx(4 * 5 / result["s_per_step"])
    assert 50 < result["peak_rss_mb"] < 64_000  # MiB: a Python process with torch loaded
    assert result["parameters"] > 10_000


def test_report_formats_without_ray_or_gpu(benchmark, shards, tmp_path):
    result = benchmark.measure_train(shards, tmp_path, model_size="small", batch_size=4, seq_len=5, steps=2, warmup=1,
                                     workers=[], loader_workers=0, use_gpu=False, plain_in_subprocess=False)
    assert result["ray"] == {} and result["goals"] == [] and "gpu_figure" not in result
    assert len(result["plain"]["runs"]) == 1 and result["plain"]["epochs_per_s_range"][0] > 0
    printed = benchmark.format_train(result)
    assert "plain PyTorch loop" in printed and "Ray Train path: not run" in printed
    assert "GPU figure" in printed and "not measured" in printed
