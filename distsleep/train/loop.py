"""The Ray Train worker loop: one DeepSpeed engine per worker, streaming shards, validating, checkpointing.

Every rank runs this function. Collectives (DeepSpeed steps, the evaluation gather, checkpoint reports)
happen the same number of times on every rank; console output and MLflow logging come from rank 0 only.

Checkpoint (one per validation, reported by every rank into one merged directory):
    ds/...             DeepSpeed engine state (each rank writes its own ZeRO partition files)
    trainer_state.json step, best validation metric and step, patience counter, MLflow run id (rank 0)
    best_model.pt      fp32 weights of the best validation so far (rank 0), so a resumed run still
                       evaluates and exports the best model, not the last one
    mlflow_unsent.json only while the tracking store is down: what it has not taken (rank 0), written to the run
                       by a relaunch that resumes from here (`RunLogger.keep_unsent`)
    checksums-rankR.json  sha256 of the files rank R wrote; verified before a resume loads anything (DeepSpeed
                       unpickles its optimizer state)
"""

from __future__ import annotations

import json
import logging
import math
import platform
import resource
import tempfile
import time
from pathlib import Path

import ray.train
import ray.util
import torch
import torch.distributed as dist

from distsleep import bundle
from distsleep.integrity import verify_checksums, write_checksums
from distsleep.shards.augmented import augmentation_checksums
from distsleep.shards.loader import (batches_per_epoch, endless_batches, load_manifest, make_train_loader, shard_checksums,
                                     shard_identities)
from distsleep.tasks import SCALAR_METRICS
from distsleep.tracking import BUNDLE_TAG
from distsleep.train import artifacts
from distsleep.train.config import TrainConfig
from distsleep.train.driver import worker_context
from distsleep.train.evaluate import evaluate
from distsleep.train.inputs import check_parts, input_roles, loader_config, model_and_config, stream_urls
from distsleep.train.step import (DS_TAG, StepMetrics, average_buffers, build_engine, full_fp32_state, plain_state_keys,
                                  train_step)

def _node() -> str:
    """This worker's node: its IP (distinct per node, also on one machine) and host name."""
    try:
        return f"{ray.util.get_node_ip_address()} ({platform.node()})"
    except Exception:
        return platform.node()


def _log(rank: int, message: str) -> None:
    # logging, not print: Ray Train patches print in workers and tees it, which doubles every line.
    # Console progress comes from rank 0 only; the prefix says which rank and node wrote it.
    if rank == 0:
        logging.getLogger("distsleep.train").info("[rank 0 @ %s] %s", _node(), message)


def load_weights(source: str) -> dict:
    """fp32 state dict to start from: a model bundle, a training checkpoint's weights, a run's storage folder
    (STORAGE/NAME: its latest checkpoint, which carries the best weights so far), or an MLflow run
    (`distsleep.bundle.resolve` with weights=True)."""
    return plain_state_keys(bundle.weights(bundle.resolve(source, bundle.MODEL, weights=True)))


def check_init_overlap(model, weights: dict, source: str) -> None:
    """Refuse weights that share too few names with the model: loading them would silently train from scratch.

    Heads legitimately change between stages, so a minority of missing keys is fine; most missing is not.
    """
    own = model.state_dict()
    shared = sum(1 for k in own if k in weights)
    if shared < len(own) / 2:
        example = next(iter(weights), "(none)")
        raise ValueError(f"--init-from {source}: only {shared} of the model's {len(own)} tensors are in these weights "
                         f"(e.g. the source has {example!r}); is it a bundle of another model or model size?")


def matching_weights(model, weights: dict) -> tuple[dict, list[str]]:
    """The entries of `weights` whose shape fits `model`, and the names of those that do not.

    Heads change shape between stages (a 5-stage probe vs a 2-class apnea head): those start fresh instead
    of failing the load; every other tensor must still match by name.
    """
    own = model.state_dict()
    skipped = [k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    return {k: v for k, v in weights.items() if k not in skipped}, skipped


def record_validation(state: dict, value: float, step: int, patience: int) -> tuple[bool, bool]:
    """Update best/patience bookkeeping in `state` for one validation; returns (improved, stop).

    Every rank computes the same metrics (evaluation gathers all predictions), so every rank reaches the
    same decision without a broadcast.
    """
    improved = value > state["best_metric"]
    if improved:
        state.update(best_metric=value, best_step=step, patience=0)
    else:
        state["patience"] += 1
    stop = state["patience"] >= patience
    state.update(step=step, stopped_early=stop)
    return improved, stop


def train_loop_per_worker(config: dict) -> None:
    cfg = TrainConfig.from_dict(config["train"])
    rank, world, device, tracker = worker_context(config, cfg.use_gpu)
    torch.manual_seed(cfg.seed + rank)
    if world != cfg.num_workers:  # the global batch was split for num_workers
        raise RuntimeError(f"{world} workers started for a run configured for {cfg.num_workers}")
    batch = cfg.per_worker_batch  # this worker's share of the global batch --batch-size

    manifest, base = load_manifest(cfg.shards, allow_commands=cfg.allow_shard_commands)
    model, model_cfg = model_and_config(cfg)
    roles = input_roles(cfg, manifest, model_cfg)
    loader_cfg = loader_config(cfg, roles, {**shard_checksums(manifest, base),
                                            **augmentation_checksums(cfg.augment_shards, cfg.allow_shard_commands)},
                               shard_identities(manifest, base))
    streams = stream_urls(cfg, manifest, base, roles)
    train_urls, augmented, val_urls, test_urls = streams.train, streams.augmented, streams.val, streams.test
    per_epoch = batches_per_epoch(manifest, world, batch, seq_len=cfg.seq_len, records=streams.labelled)
    loader = make_train_loader(streams.training, loader_cfg, world, rank, per_epoch, pin_memory=device.type == "cuda")

    if cfg.init_from:
        source_weights = load_weights(cfg.init_from)
        check_init_overlap(model, source_weights, cfg.init_from)
        weights, skipped = matching_weights(model, source_weights)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        _log(rank, f"initialised from {cfg.init_from} (missing {len(missing)}, unexpected {len(unexpected)} keys"
                   f"{f'; not loaded, shape differs: {sorted(skipped)}' if skipped else ''})")
    check_parts(cfg)
    for part, source in sorted(cfg.init_parts.items()):
        model.load_part(part, load_weights(source))
        _log(rank, f"part {part} initialised from {source}")
    if cfg.stage == "finetune":
        model.prepare_finetune(cfg.finetune_mode)  # what fine-tuning ("full") or linear probing ("linear") keeps fixed
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer = build_engine(cfg, model, device, world)
    engine, scheduler, ds_config = trainer.engine, trainer.scheduler, trainer.ds_config
    autocast_dtype = torch.bfloat16 if cfg.resolved_precision == "bf16" else None

    state = {"step": 0, "best_metric": -math.inf, "best_step": 0, "patience": 0, "stopped_early": False, "resumes": 0}
    best_weights: dict | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            verify_checksums(directory, "the checkpoint to resume from")  # before DeepSpeed unpickles it
            engine.load_checkpoint(directory, tag=DS_TAG)
            state = json.loads((Path(directory) / "trainer_state.json").read_text())
            state["resumes"] = state.get("resumes", 0) + 1
            if rank == 0 and (Path(directory) / bundle.MODEL.checkpoint_weights).exists():
                best_weights = bundle.load_file(Path(directory) / bundle.MODEL.checkpoint_weights)
            kept = tracker.write_kept(directory)  # what the tracking store missed before this checkpoint
        _log(rank, f"resumed from checkpoint at step {state['step']} (resume #{state['resumes']})"
                   f"{f'; {kept} metric values the tracking store had missed are written now' if kept else ''}")
        tracker.metrics({"resumes": state["resumes"]}, state["step"])
    state["mlflow_run_id"] = config["mlflow_run_id"]  # which run its checkpoints belong to (`driver.finished_launch`)
    # Params go to each MLflow run once: a relaunch of an interrupted run reuses its run (already has them);
    # continuing a finished run (e.g. with a larger --max-steps) opens a new run, which needs them.
    if rank == 0 and config.get("mlflow_new_run", checkpoint is None):
        tracker.params({**cfg.params("train"), **model_cfg.params("model"), "deepspeed": json.dumps(ds_config),
                        "data.manifest_hash": manifest.get("config_hash", ""), "world_size": str(world),
                        "data.channels": ",".join(roles), "data.labelled_records": str(len(train_urls)),
                        "data.augmentation_shards": str(len(augmented)), "batch.global": str(cfg.batch_size),
                        "batch.per_worker": str(batch), "batch.accumulation": str(cfg.gradient_accumulation),
                        "lr.effective": str(cfg.effective_lr)})
        tracker.tags({"model": cfg.model, "stage": cfg.stage, "task": cfg.task, "parameters": str(n_params),
                      "trainable_parameters": str(n_trainable)})
    _log(rank, f"{cfg.model} ({cfg.model_size}): {n_params:,} parameters ({n_trainable:,} trainable); "
               f"task {cfg.task}, channels {', '.join(roles)}; "
               f"{world} worker(s) on {device.type}, {cfg.resolved_precision}, ZeRO {cfg.zero_stage}; "
               f"global batch {cfg.batch_size} = {batch} per worker x {world}"
               f"{f' x {cfg.gradient_accumulation} accumulation' if cfg.gradient_accumulation > 1 else ''}, "
               f"lr {cfg.effective_lr:g}{f' ({cfg.lr_scaling} scaling of {cfg.lr:g})' if cfg.lr_scaling != 'none' else ''}; "
               f"{len(train_urls)}/{len(val_urls)}/{len(test_urls)} train/val/test records"
               f"{f' (+{len(augmented)} augmentation shards)' if augmented else ''}; {per_epoch} batches per epoch")
    scalars = SCALAR_METRICS[cfg.task]

    def validate_and_checkpoint(step: int) -> bool:
        """Validation, best tracking, early stopping and the checkpoint report; True to stop."""
        nonlocal best_weights
        # Every rank's BatchNorm statistics made the mean over ranks (DeepSpeed broadcasts buffers only at start):
        # one model is validated, and the best weights and checkpoint hold what every rank holds.
        average_buffers(engine.module)
        metrics, _ = evaluate(engine.module, val_urls, loader_cfg, world, rank, device, autocast_dtype, cfg.task,
                              batch_size=cfg.resolved_eval_batch_size)
        value = metrics[cfg.select_metric]
        improved, stop = record_validation(state, value if math.isfinite(value) else -math.inf, step,
                                           cfg.early_stop_patience)
        if improved:
            weights = full_fp32_state(engine)  # collective: every rank calls it
            if rank == 0:
                best_weights = weights
        val = {f"val_{k}": metrics[k] for k in scalars}
        val.update({f"val_f1_{k}": v for k, v in metrics["f1"].items()})
        tracker.metrics({**val, "val_best_" + cfg.select_metric: state["best_metric"]}, step)
        _log(rank, f"step {step}: val acc {metrics['accuracy']:.3f} macro-F1 {metrics['macro_f1']:.3f} "
                   f"kappa {metrics['kappa']:.3f}{' (best)' if improved else ''}")
        with tempfile.TemporaryDirectory() as directory:
            engine.save_checkpoint(directory, tag=DS_TAG)
            if rank == 0:
                (Path(directory) / "trainer_state.json").write_text(json.dumps(state))
                if best_weights is not None:
                    torch.save(best_weights, Path(directory) / bundle.MODEL.checkpoint_weights)
                tracker.keep_unsent(directory)  # a relaunch from here writes what the store has not taken
            write_checksums(directory, f"checksums-rank{rank}.json")
            ray.train.report({"step": step, "stage": cfg.stage, **val, "val_best_" + cfg.select_metric: state["best_metric"]},
                             checkpoint=ray.train.Checkpoint.from_directory(directory))
        return stop

    step = state["step"]
    stop = state.get("stopped_early", False) or step >= cfg.max_steps
    # `step` counts optimizer steps; the loader, each rank's micro-batches (gradient accumulation x per step).
    batches = endless_batches(loader, start_step=step * cfg.gradient_accumulation)
    epochs_per_batch = cfg.batch_size * cfg.seq_len  # the global batch of one optimizer step
    pending, lrs = StepMetrics(), {}
    tick, tick_step = time.perf_counter(), step

    def log_pending() -> None:
        """Every step's losses since the last call, read from the device in one copy; throughput over them."""
        nonlocal tick, tick_step
        rows = pending.drain()  # waits for the GPU: the time below covers the steps' real work
        now = time.perf_counter()
        if rows and rank == 0:  # one MLflow write for the window
            tracker.metric_rows([(at, {**values, "lr": lrs.pop(at)}) for at, values in rows]
                                + [(step, {"epochs_per_s": epochs_per_batch * (step - tick_step) / (now - tick)})])
        lrs.clear()
        tick, tick_step = now, step

    while not stop:
        losses = train_step(trainer, batches, cfg)
        step += 1
        if rank == 0:
            pending.add(step, losses)
            lrs[step] = scheduler.get_last_lr()[0] if scheduler else cfg.effective_lr
        if step % cfg.log_every == 0:
            log_pending()
        if step % cfg.val_every == 0 or step >= cfg.max_steps:
            log_pending()
            stop = validate_and_checkpoint(step) or step >= cfg.max_steps
            tick, tick_step = time.perf_counter(), step  # validation time is not training throughput

    # Test evaluation with the best validation weights (rank 0 holds them; broadcast to all ranks).
    holder = [best_weights]
    if world > 1:
        dist.broadcast_object_list(holder, src=0)
    if holder[0] is not None:
        engine.module.load_state_dict(holder[0])
    test_metrics, predictions = evaluate(engine.module, test_urls, loader_cfg, world, rank, device, autocast_dtype,
                                         cfg.task, batch_size=cfg.resolved_eval_batch_size)
    # Peak memory of the worker processes (their DataLoader workers not counted): the largest over ranks.
    peak = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]  # Linux: KiB -> MiB
    if device.type == "cuda":
        peak.append(torch.cuda.max_memory_allocated(device) / 2**20)
    peak = torch.tensor(peak, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        test = {f"test_{k}": test_metrics[k] for k in scalars}
        test.update({f"test_f1_{k}": v for k, v in test_metrics["f1"].items()})
        test.update(dict(zip(("peak_rss_mb", "peak_gpu_mb"), peak.tolist())))
        tracker.metrics(test, state["step"])
        _log(rank, f"test (best step {state['best_step']}): acc {test_metrics['accuracy']:.3f} "
                   f"macro-F1 {test_metrics['macro_f1']:.3f} kappa {test_metrics['kappa']:.3f}")
        with tempfile.TemporaryDirectory() as directory:
            files = artifacts.write_run_artifacts(
                Path(directory), cfg=cfg, model_cfg=model_cfg, ds_config=ds_config, manifest=manifest, roles=roles,
                test_metrics=test_metrics, predictions=predictions, state=state, weights=holder[0] or _cpu_state(engine),
                world=world, augmented=augmented, trained_before=config.get("trained_before", ()),
                selected_before=config.get("selected_before", ()),
            )
            if tracker.artifacts(files):  # without the tag the driver does not mark the run FINISHED
                tracker.tags({BUNDLE_TAG: next(f"{folder}/{path.name}" for path, folder in files if folder == "model")})
        tracker.tags({"best_step": str(state["best_step"]), "stopped_early": str(state["stopped_early"])})
        tracker.flush()
    # A final report so the driver's result carries the test metrics (every rank reports once more).
    # The best validation value rides along so that a Tune scheduler watching it sees it in every result.
    ray.train.report({"step": state["step"], "stage": cfg.stage, "val_best_" + cfg.select_metric: state["best_metric"],
                      **{f"test_{k}": test_metrics[k] for k in scalars}})


def _cpu_state(engine) -> dict:
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
            for k, v in engine.module.state_dict().items()}

