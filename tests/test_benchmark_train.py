"""`jobs/benchmark.py train` and `distsleep.bench.engine`: the plain-loop reference and the trainer's own
DeepSpeed step on the small model for a few steps, so that the benchmarks cannot rot.

The Ray Train side of the benchmark is `run_training` itself (covered by test_train.py); the 1 vs 2 workers
comparison needs a Ray cluster of its own, so it is not run here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from distsleep.bench.engine import check_plan, format_result, measure_inference, measure_plain, run_isolated
from distsleep.bench.load import settle
from distsleep.bench.train import bench_train_config, format_train, in_windows, make_train_shards, measure_train


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    # Two half-hour nights: 60 epochs each; the split keeps one for training, which is all one rank with
    # one DataLoader worker needs. Converted in-process: no Ray.
    return make_train_shards(tmp_path_factory.mktemp("bench-train"), n_records=3, hours=0.5, seed=5, workers=1)


def test_plain_loop_reports_throughput_and_memory(shards, tmp_path):
    cfg = bench_train_config(shards, tmp_path, workers=1, model_size="small", batch_size=4, seq_len=5,
                             steps=3, warmup=1, loader_workers=0, log_every=2)
    assert cfg.max_steps == 4 and cfg.val_every > cfg.max_steps and cfg.resolved_precision == "fp32"
    result = measure_plain(cfg, steps=3, warmup=1)
    assert result["device"] == "cpu" and result["timed_steps"] == 3
    assert result["epochs_per_s"] > 0 and result["epochs_per_s_mean"] > 0 and result["s_per_step"] > 0
    assert result["epochs_per_s"] == pytest.approx(4 * 5 / result["s_per_step"])
    assert 50 < result["peak_rss_mb"] < 64_000  # MiB: a Python process with torch loaded
    assert result["parameters"] > 10_000 and result["losses_finite"]
    assert result["paper_setting"] is False


def test_report_formats_without_ray_or_gpu(shards, tmp_path):
    result = measure_train(shards, tmp_path, model_size="small", batch_size=4, seq_len=5, steps=2, warmup=1,
                           workers=[], loader_workers=0, use_gpu=False, plain_in_subprocess=False)
    assert result["ray"] == {} and result["goals"] == [] and "gpu_figure" not in result
    assert len(result["plain"]["runs"]) == 1 and result["plain"]["epochs_per_s_range"][0] > 0
    printed = format_train(result)
    assert "plain PyTorch loop" in printed and "Ray Train path: not run" in printed
    assert "GPU figure" in printed and "not measured" in printed


def test_the_deepspeed_step_gets_its_own_row_between_plain_and_ray(shards, tmp_path):
    """With the reference loop in its own process, each repeat also times the trainer's DeepSpeed step without
    Ray, so that the Ray path's overhead splits into DeepSpeed's share and the rest."""
    result = measure_train(shards, tmp_path, model_size="small", batch_size=4, seq_len=5, steps=2, warmup=1,
                           workers=[], loader_workers=0, use_gpu=False, repeats=1)
    assert len(result["engine"]["runs"]) == 1 and result["engine"]["epochs_per_s"] > 0
    assert result["overhead_engine"] == pytest.approx(1 - result["engine"]["epochs_per_s"] / result["plain"]["epochs_per_s"])
    assert len(result["background_busy_cores"]["engine"]) == 1
    assert "DeepSpeed step, no Ray (1 process)" in format_train(result)


def test_trainer_step_in_bf16_with_compile_checkpoints_and_loads_strictly(shards, tmp_path):
    """The trainer's own DeepSpeed engine (bf16 autocast, compiled in place) for a few steps on the CPU: finite
    losses and weights, an exact checkpoint round trip, and weights that load strictly into a fresh model
    (torch.compile's `_orig_mod.` prefix would break that)."""
    cfg = bench_train_config(shards, tmp_path, workers=1, model_size="small", batch_size=4, seq_len=5, steps=3,
                             warmup=1, loader_workers=0, log_every=2, precision="bf16", compile=True)
    cfg.compile_backend = "aot_eager"  # the graph capture of inductor without its C++ code generation
    result = run_isolated("engine", cfg, 3, 1, timeout=600, full=True, profile_steps=1)
    assert "error" not in result, result.get("error")
    assert result["precision"] == "bf16" and result["compile"] is True and result["device"] == "cpu"
    assert result["losses_finite"] and result["params_finite"] and result["timed_steps"] == 3
    assert result["checkpoint_roundtrip_exact"] is True
    assert result["strict_load"] == "ok"
    assert result["profile"] and all(row["calls"] >= 1 for row in result["profile"])
    assert "strict load ok" in format_result({"changes": {}, **result})


def test_the_cpu_engine_starts_without_a_compiler(shards, tmp_path, monkeypatch):
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce when it starts (C++, ~30 s per fresh
    environment) that training never calls: the trainer's engine starts and trains without building it, here
    with no C++ compiler to build it with."""
    extensions = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    cfg = bench_train_config(shards, tmp_path, workers=1, model_size="small", batch_size=4, seq_len=5, steps=2,
                             warmup=1, loader_workers=0, log_every=1)
    result = run_isolated("engine", cfg, 2, 1, timeout=300)
    assert "error" not in result, result.get("error")
    assert result["timed_steps"] == 2 and result["losses_finite"]
    assert not extensions.exists()


def test_single_process_rows_are_read_in_the_ray_paths_windows():
    """The Ray path can only be read as one mean per `log_every` steps (what the loop logs), so the plain and
    engine rows are taken the same way: the median of the window means, not of single steps."""
    seconds = [0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.7]  # a slow step in windows 1 and 3
    run = {"epochs_per_s": 20 / 0.1, "s_per_step": 0.1, "step_seconds": seconds, "timed_steps": 12}
    windowed = in_windows(run, 4, 20)
    assert windowed["s_per_step"] == pytest.approx(0.175)  # windows 0.175, 0.1, 0.25
    assert windowed["epochs_per_s"] == pytest.approx(20 / 0.175) and windowed["epochs_per_s_per_step"] == 200
    assert windowed["epochs_per_s_mean"] == pytest.approx(20 * 12 / sum(seconds))
    assert windowed["step_seconds"] == seconds and windowed["timed_steps"] == 12


def test_settle_gives_up_after_its_timeout():
    started = time.monotonic()
    busy = settle(quiet=-1.0, window=0.1, timeout=0.3)  # never quiet enough: returns at the timeout
    assert busy is not None and busy >= 0 and 0.3 <= time.monotonic() - started < 2.0


def test_gpu_check_plan_covers_the_issue():
    plan = check_plan(compile_runs=True)
    kinds = [(kind, changes.get("precision"), changes.get("compile", False)) for kind, changes, _, _ in plan]
    for needed in [("engine", "bf16", False), ("engine", "fp32", False), ("engine", "bf16", True),
                   ("engine", "fp32", True), ("plain", "bf16", False)]:
        assert needed in kinds, needed
    assert sorted(c["loader_workers"] for k, c, _, _ in plan if k == "loader") == [1, 4]
    assert any(o.get("full") for _, _, o, _ in plan) and any(o.get("profile_steps") for _, _, o, _ in plan)
    assert [c["precision"] for k, c, _, _ in plan if k == "inference"] == ["fp32"]  # as evaluate and predict run


def test_inference_measurement_scores_every_test_epoch(shards, tmp_path):
    """The GPU check's `inference` row: evaluate/predict's scoring of a test record on the run's device and on
    the CPU (here both the CPU: the same weights give the same probabilities)."""
    import json

    cfg = bench_train_config(shards, tmp_path, workers=1, model_size="small", batch_size=4, seq_len=5,
                             steps=1, warmup=0, loader_workers=0, log_every=1)
    result = measure_inference(cfg, steps=1, warmup=0)
    manifest = json.loads(shards.read_text())
    test = sorted(r for r, v in manifest["records"].items() if v["split"] == "test")
    assert result["records"] == 1 and result["epochs"] == manifest["records"][test[0]]["n_epochs"]
    assert result["device"] == "cpu" and result["max_abs_difference"] == 0.0 and result["stage_agreement"] == 1.0
    assert result["epochs_per_s"] > 0 and result["cpu_epochs_per_s"] > 0
    assert "evaluate/predict scoring of 1 test record(s)" in format_result({"changes": {}, **result})


def test_a_step_is_an_optimizer_step_over_the_accumulated_micro_batches(shards, tmp_path):
    """With DeepSpeed's gradient_accumulation_steps 2, each step of the trainer draws 2 micro-batches and steps
    the optimizer and the LR schedule once, so max_steps, val_every and the schedule count what the paper counts
    (one micro-batch per step ended a cosine schedule at half its course)."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"gradient_accumulation_steps": 2}))
    cfg = bench_train_config(shards, tmp_path, workers=1, model_size="small", batch_size=4, seq_len=5, steps=3,
                             warmup=1, loader_workers=0, log_every=2)
    cfg.deepspeed_config = str(ds)
    assert cfg.gradient_accumulation == 2 and cfg.per_worker_batch == 2
    result = run_isolated("engine", cfg, 3, 1, timeout=300)
    assert "error" not in result, result.get("error")
    assert (result["optimizer_steps"], result["micro_steps"], result["scheduler_steps"]) == (4, 8, 4)
    assert result["losses_finite"] and result["timed_steps"] == 3
