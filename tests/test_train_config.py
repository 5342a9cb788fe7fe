"""TrainConfig and the DeepSpeed config built from it, and the step's helpers (no cluster; one test starts a
two-process gloo group)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distsleep.config import flatten
from distsleep.train.config import TrainConfig, deepspeed_config, lr_lambda
from distsleep.train.loop import record_validation


def test_deepspeed_file_is_the_base_and_flags_override(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({
        "gradient_accumulation_steps": 4, "train_batch_size": 999, "fp16": {"enabled": True},
        "zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 1000},
    }))
    cfg = TrainConfig(shards="m.json", deepspeed_config=str(path), zero_stage=1, batch_size=64, grad_clip=0.5)
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"] == {"stage": 1, "overlap_comm": True, "reduce_bucket_size": 1000}
    # The global batch of 64 over 2 workers x 4 accumulation steps: 8 sequences per worker and micro-step.
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_clipping"] == 0.5
    assert "train_batch_size" not in ds and "fp16" not in ds  # derived by DeepSpeed; fp16 never used
    assert "torch_autocast" not in ds  # CPU: fp32


def test_precision_resolution():
    assert TrainConfig(shards="m", use_gpu=True).resolved_precision == "bf16"
    assert TrainConfig(shards="m").resolved_precision == "fp32"
    ds = deepspeed_config(TrainConfig(shards="m", use_gpu=True))
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in ds
    with pytest.raises(ValueError, match="zero_stage"):
        TrainConfig(shards="m", zero_stage=3)
    with pytest.raises(ValueError, match="stage"):
        TrainConfig(shards="m", stage="sweep")


def test_paths_become_absolute_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(shards="shards/manifest.json", storage_path="runs")
    assert cfg.shards == str(tmp_path / "shards" / "manifest.json") and cfg.storage_path == str(tmp_path / "runs")
    remote = TrainConfig(shards="s3://bucket/shards/manifest.json", storage_path="s3://bucket/runs")
    assert remote.shards.startswith("s3://") and remote.storage_path == "s3://bucket/runs"


def test_mask_ratio_lives_in_the_model_config_and_round_trips():
    """--mask-ratio is the model config's field (its one home); a config written with the old copy of it
    (`mask_ratio` beside `model_overrides`) still loads, into the model config."""
    import argparse

    from distsleep.cli.common import add_train_arguments, config_from_args
    from distsleep.train.inputs import model_config

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--shards", "m", "--mask-ratio", "0.25", "--set", "infonce_temperature=0.07"])
    cfg = config_from_args(args)
    assert cfg.model_overrides == {"infonce_temperature": 0.07, "mask_ratio": 0.25}
    assert not hasattr(cfg, "mask_ratio") and model_config(cfg).mask_ratio == 0.25
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    params = flatten("train", cfg)
    assert params["train.model_overrides.mask_ratio"] == "0.25" and params["train.betas"] == "[0.9,0.999]"
    assert cfg.params("train") == params and cfg.describe().splitlines()[1:] == [f"  {k[6:]} = {v}" for k, v in params.items()]
    old = {**TrainConfig(shards="m").to_dict(), "mask_ratio": 0.6}
    assert TrainConfig.from_dict(old).model_overrides == {"mask_ratio": 0.6}
    with pytest.raises(ValueError, match=r"mask_ratio must lie in \[0, 1\), got 1.5"):
        model_config(TrainConfig(shards="m", model_overrides={"mask_ratio": 1.5}))


def test_warmup_and_cosine_schedule():
    cfg = TrainConfig(shards="m", schedule="cosine", warmup_steps=10, max_steps=110)
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-9)
    constant = lr_lambda(TrainConfig(shards="m"))
    assert all(constant(s) == 1.0 for s in (0, 50, 5000))
    assert math.isclose(lr_lambda(TrainConfig(shards="m", warmup_steps=4))(1), 0.5)


def test_early_stopping_bookkeeping():
    state = {"step": 0, "best_metric": -math.inf, "best_step": 0, "patience": 0, "stopped_early": False}
    history = [(100, 0.50), (200, 0.60), (300, 0.60), (400, 0.58), (500, 0.65), (600, 0.64), (700, 0.61)]
    decisions = [record_validation(state, value, step, patience=2) for step, value in history]
    assert decisions == [(True, False), (True, False), (False, False), (False, True),
                         (True, False), (False, False), (False, True)]
    assert state == {"step": 700, "best_metric": 0.65, "best_step": 500, "patience": 2, "stopped_early": True}


def test_failure_message_says_what_happened_and_how_to_resume(tmp_path):
    import json

    from distsleep.train.driver import failure_message

    cfg = TrainConfig(shards="/x", name="night-run", storage_path=str(tmp_path))
    storage = tmp_path / "night-run"
    for step in (20, 40):
        (storage / f"checkpoint_2026-01-01_00-00-{step:02d}").mkdir(parents=True)
        (storage / f"checkpoint_2026-01-01_00-00-{step:02d}" / "trainer_state.json").write_text(json.dumps({"step": step}))
    lost = RuntimeError("WorkerGroupError: ActorDiedError: The actor died because its node has died. Node ID: abc")
    message = failure_message(cfg, lost, str(storage))
    assert "a Ray Train worker died" in message and "(step 40)" in message and "--max-failures 0" in message
    assert "Relaunch with the same --name" in message
    other = failure_message(TrainConfig(shards="/x", name="r", max_failures=2), ValueError("bad shard\ndetails"), str(tmp_path / "none"))
    assert "ValueError: bad shard" in other and "no checkpoint was committed" in other and "up to --max-failures 2" in other
    # A shard that no longer matches its manifest: relaunching would read it again, so the data comes first.
    from distsleep.shards.storage import ShardChecksumError

    changed = failure_message(cfg, ShardChecksumError("/s/shards/shhs1-1.tar: sha256 ab, the manifest says cd"), str(storage))
    assert "The data is at fault, not the run" in changed and "Rebuild the shards" in changed and "(step 40)" in changed
    assert "Relaunch with the same --name to resume" not in changed


def test_failure_message_lists_each_ranks_cause():
    from ray.train.v2.api.exceptions import WorkerGroupError

    from distsleep.train.driver import failure_message

    error = WorkerGroupError("2 workers failed", {1: RuntimeError("gloo: Connection closed by peer [10.0.0.3]:4242\nmore"),
                                                 0: ValueError("shard x.tar: bad")})
    message = failure_message(TrainConfig(shards="/x", name="n"), error, "/nowhere")
    assert "a Ray Train worker died" in message
    assert "[rank 0: ValueError: shard x.tar: bad; rank 1: RuntimeError: gloo: Connection closed by peer [10.0.0.3]:4242]" in message


def test_a_fraction_of_a_gpu_per_worker_is_refused_before_launch():
    with pytest.raises(ValueError, match="NCCL rank that needs a whole GPU"):
        TrainConfig(shards="m", use_gpu=True, gpus_per_worker=0.5)
    TrainConfig(shards="m", use_gpu=False, gpus_per_worker=0.5)  # CPU runs never ask for GPUs
    TrainConfig(shards="m", use_gpu=True, gpus_per_worker=1)


def test_deepspeed_config_turns_off_its_synchronising_timer():
    ds = deepspeed_config(TrainConfig(shards="m"))
    assert ds["timers"]["throughput"]["enabled"] is False


def test_init_weights_keep_plain_names_and_foreign_weights_are_refused():
    from distsleep.models import build_model
    from distsleep.models.mc2sleepnet import MC2SleepNetConfig
    from distsleep.train.loop import check_init_overlap
    from distsleep.train.step import plain_state_keys

    model = build_model("mc2sleepnet", MC2SleepNetConfig.small())
    compiled_names = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}  # what torch.compile saves
    check_init_overlap(model, plain_state_keys(compiled_names), "bundle.pt")
    with pytest.raises(ValueError, match=r"only 0 of the model's \d+ tensors"):
        check_init_overlap(model, compiled_names, "bundle.pt")


def test_step_metrics_keep_every_step_and_read_once():
    import torch

    from distsleep.train.step import StepMetrics

    pending = StepMetrics()
    for step in range(1, 4):
        pending.add(step, {"loss": torch.tensor(float(step)), "loss_seq": torch.tensor(2.0 * step)})
    rows = pending.drain()
    assert rows == [(1, {"loss": 1.0, "loss_seq": 2.0}), (2, {"loss": 2.0, "loss_seq": 4.0}),
                    (3, {"loss": 3.0, "loss_seq": 6.0})]
    assert pending.drain() == [] and len(pending) == 0
    with pytest.raises(ValueError, match="reports metrics"):
        pending.add(4, {"loss": torch.tensor(1.0)})
        pending.add(5, {"other": torch.tensor(1.0)})


def _bn_model():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model.register_buffer("constant", torch.zeros(3), persistent=False)  # e.g. a positional encoding
    return model


def _average_on_rank(rank: int, world: int, init_file: str, queue) -> None:
    """One rank of a real gloo group: BatchNorm statistics from its own batches, then `average_buffers`."""
    import torch
    import torch.distributed as dist

    from distsleep.train.step import average_buffers

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = _bn_model()  # same weights on every rank, as DeepSpeed starts them
        generator = torch.Generator().manual_seed(100 + rank)
        with torch.no_grad():
            for _ in range(rank + 1):  # another number of batches per rank, so num_batches_tracked differs too
                model(torch.randn(8, 4, generator=generator) * (rank + 1) + rank)
            model.constant.fill_(rank)
        # NumPy copies, pickled by value: a tensor would travel as a shared-memory handle that this process
        # must still serve when the test reads it, and the rank may have exited by then.
        before = {k: v.numpy().copy() for k, v in model.named_buffers()}
        average_buffers(model)
        queue.put((rank, before, {k: v.numpy().copy() for k, v in model.named_buffers()},
                   {k: v.detach().numpy().copy() for k, v in model.named_parameters()}))
    except BaseException:  # said to the test, which would otherwise wait for this rank forever
        import traceback
        queue.put((rank, traceback.format_exc(), None, None))
    finally:
        dist.destroy_process_group()


def test_batchnorm_statistics_are_averaged_over_ranks(tmp_path):
    """DeepSpeed broadcasts buffers only at start, so each rank's running statistics follow its own batches;
    before validation every rank gets their mean, and integer and non-persistent buffers are left alone."""
    import torch
    import torch.multiprocessing as mp

    from distsleep.train.step import average_buffers

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    workers = [context.Process(target=_average_on_rank, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for worker in workers:
        worker.start()
    results = sorted((queue.get() for _ in workers), key=lambda r: r[0])
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert not [r[1] for r in results if isinstance(r[1], str)]
    (_, before0, after0, params0), (_, before1, after1, params1) = results
    for name in ("1.running_mean", "1.running_var"):
        assert not np.allclose(before0[name], before1[name]), f"{name} should differ before"
        assert np.array_equal(after0[name], after1[name]), f"{name} not identical on both ranks"
        assert np.allclose(after0[name], (before0[name] + before1[name]) / 2, rtol=1e-6), name
    assert (after0["1.num_batches_tracked"].item(), after1["1.num_batches_tracked"].item()) == (1, 2)
    assert (after0["constant"].tolist(), after1["constant"].tolist()) == ([0.0] * 3, [1.0] * 3)
    assert all(np.array_equal(params0[k], params1[k]) for k in params0), "parameters untouched"

    alone = _bn_model()  # no process group: nothing to average with
    alone(torch.randn(8, 4))
    kept = {k: v.clone() for k, v in alone.state_dict().items()}
    average_buffers(alone)
    assert all(torch.equal(kept[k], v) for k, v in alone.state_dict().items())


def test_global_batch_is_split_over_workers_with_an_explicit_lr_rule(tmp_path):
    """--batch-size is the batch of one optimizer step in total (the paper's 32 means 32), split evenly."""
    import argparse

    from distsleep.cli.common import add_train_arguments, config_from_args

    one, two = TrainConfig(shards="m", batch_size=32, num_workers=1), TrainConfig(shards="m", batch_size=32, num_workers=2)
    assert (one.per_worker_batch, two.per_worker_batch) == (32, 16)
    assert deepspeed_config(one)["train_micro_batch_size_per_gpu"] == 32
    assert deepspeed_config(two)["train_micro_batch_size_per_gpu"] == 16
    with pytest.raises(ValueError, match="global batch.*does not divide over 2 worker.*multiple of 2"):
        TrainConfig(shards="m", batch_size=33, num_workers=2)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"gradient_accumulation_steps": 4}))
    with pytest.raises(ValueError, match="2 worker\\(s\\) x 4 gradient accumulation steps: use a multiple of 8"):
        TrainConfig(shards="m", batch_size=36, num_workers=2, deepspeed_config=str(path))

    # The learning rate follows the global batch only when asked, by a named rule.
    assert two.effective_lr == two.lr == 5e-4
    big = dict(shards="m", batch_size=128, num_workers=2, lr=5e-4)
    assert TrainConfig(**big).effective_lr == 5e-4
    assert TrainConfig(**big, lr_scaling="linear").effective_lr == pytest.approx(2e-3)
    assert TrainConfig(**big, lr_scaling="sqrt").effective_lr == pytest.approx(1e-3)
    assert TrainConfig(**big, lr_scaling="linear", lr_reference_batch=64).effective_lr == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainConfig(shards="m", lr_scaling="cubic")

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--shards", "m", "--batch-size", "64", "--num-workers", "2", "--lr-scaling", "linear"])
    cfg = config_from_args(args)
    assert (cfg.batch_size, cfg.per_worker_batch, cfg.effective_lr) == (64, 32, pytest.approx(1e-3))
