"""The Ray Train worker loop: one DeepSpeed engine per worker, streaming shards, validating, checkpointing.

Every rank runs this function. Collectives (DeepSpeed steps, the evaluation gather, checkpoint reports)
happen the same number of times on every rank; console output and MLflow logging come from rank 0 only.

Checkpoint (one per validation, reported by every rank into one merged directory):
    ds/...             DeepSpeed engine state (each rank writes its own ZeRO partition files)
    trainer_state.json step, best validation metric and step, patience counter (rank 0)
    best_model.pt      fp32 weights of the best validation so far (rank 0), so a resumed run still
                       evaluates and exports the best model, not the last one
"""

from __future__ import annotations

import json
import logging
import math
import platform
import tempfile
import time
from pathlib import Path

DS_TAG = "ds"


def _node() -> str:
    """This worker's node: its IP (distinct per node, also on one machine) and host name."""
    try:
        import ray.util

        return f"{ray.util.get_node_ip_address()} ({platform.node()})"
    except Exception:
        return platform.node()


def _log(rank: int, message: str) -> None:
    # logging, not print: Ray Train patches print in workers and tees it, which doubles every line.
    # Console progress comes from rank 0 only; the prefix says which rank and node wrote it.
    if rank == 0:
        logging.getLogger("distsleep.train").info("[rank 0 @ %s] %s", _node(), message)


def _model_and_config(cfg):
    import dataclasses

    from distsleep.models import build_model, model_config_class

    cls = model_config_class(cfg.model)
    base = cls.small() if cfg.model_size == "small" else cls()
    known = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in {"seq_len": cfg.seq_len, **cfg.model_overrides}.items() if k in known}
    unknown = set(cfg.model_overrides) - known
    if unknown:
        raise ValueError(f"model {cfg.model} has no config fields {sorted(unknown)}; known: {sorted(known)}")
    model_cfg = dataclasses.replace(base, **overrides)
    return build_model(cfg.model, model_cfg), model_cfg


def load_weights(source: str) -> dict:
    """fp32 state dict from a model bundle, a training checkpoint directory or an MLflow run id."""
    import torch

    path = Path(source)
    if path.is_dir():
        path = path / "best_model.pt"
    elif not path.exists():
        from distsleep.predict import resolve_bundle

        path = resolve_bundle(source)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob["state_dict"] if "state_dict" in blob else blob


def _lr_lambda(cfg):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


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


def _full_fp32_state(engine) -> dict:
    """fp32 weights gathered from DeepSpeed's (possibly partitioned) master copy; a collective."""
    import deepspeed

    # Start from state_dict (persistent buffers included, non-persistent ones excluded) and replace each
    # trainable parameter by its fp32 master copy.
    state = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    for name, param in engine.module.named_parameters():
        full = deepspeed.utils.safe_get_full_fp32_param(param) if param.requires_grad else None
        if name in state:
            state[name] = (full if full is not None else param.detach()).float().cpu().clone()
    return state


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import torch

    from distsleep.config import flatten
    from distsleep.models import resolve_channels
    from distsleep.shards.loader import (LoaderConfig, batches_per_epoch, endless_batches, load_manifest,
                                         make_train_loader, shard_urls)
    from distsleep.tracking import RunLogger
    from distsleep.train import artifacts
    from distsleep.train.config import TrainConfig, deepspeed_config
    from distsleep.train.evaluate import evaluate

    cfg = TrainConfig.from_dict(config["train"])
    run_id = config["mlflow_run_id"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(cfg.seed + rank)
    tracker = RunLogger(config["tracking_uri"], run_id, enabled=rank == 0)

    manifest, base = load_manifest(cfg.shards)
    roles = resolve_channels(cfg.model, manifest["channels"])
    loader_cfg = LoaderConfig(seq_len=cfg.seq_len, batch_size=cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer,
                              num_workers=cfg.loader_workers, seed=cfg.seed, channels=list(roles), stride=cfg.val_stride)
    train_urls, val_urls, test_urls = (shard_urls(manifest, s, base) for s in ("train", "val", "test"))
    per_epoch = batches_per_epoch(manifest, world, cfg.batch_size, seq_len=cfg.seq_len)
    loader = make_train_loader(train_urls, loader_cfg, world, rank, per_epoch)

    model, model_cfg = _model_and_config(cfg)
    if cfg.init_from:
        missing, unexpected = model.load_state_dict(load_weights(cfg.init_from), strict=False)
        _log(rank, f"initialised from {cfg.init_from} (missing {len(missing)}, unexpected {len(unexpected)} keys)")
    if cfg.stage == "finetune" and hasattr(model, "freeze_backbones"):
        model.freeze_backbones()
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    ds_config = deepspeed_config(cfg)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config, dist_init_required=False)
    autocast_dtype = torch.bfloat16 if cfg.resolved_precision == "bf16" else None

    state = {"step": 0, "best_metric": -math.inf, "best_step": 0, "patience": 0, "stopped_early": False, "resumes": 0}
    best_weights: dict | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            engine.load_checkpoint(directory, tag=DS_TAG)
            state = json.loads((Path(directory) / "trainer_state.json").read_text())
            state["resumes"] = state.get("resumes", 0) + 1
            if rank == 0 and (Path(directory) / "best_model.pt").exists():
                best_weights = torch.load(Path(directory) / "best_model.pt", map_location="cpu", weights_only=True)
        _log(rank, f"resumed from checkpoint at step {state['step']} (resume #{state['resumes']})")
        tracker.metrics({"resumes": state["resumes"]}, state["step"])
    elif rank == 0:
        tracker.params({**flatten("train", cfg), **flatten("model", model_cfg.to_dict()), "deepspeed": json.dumps(ds_config),
                        "data.manifest_hash": manifest.get("config_hash", ""), "world_size": str(world)})
        tracker.tags({"model": cfg.model, "stage": cfg.stage, "parameters": str(n_params), "trainable_parameters": str(n_trainable)})
    _log(rank, f"{cfg.model} ({cfg.model_size}): {n_params:,} parameters ({n_trainable:,} trainable); "
               f"{world} worker(s) on {device.type}, {cfg.resolved_precision}, ZeRO {cfg.zero_stage}; "
               f"{len(train_urls)}/{len(val_urls)}/{len(test_urls)} train/val/test records; {per_epoch} batches per epoch")

    def validate_and_checkpoint(step: int) -> bool:
        """Validation, best tracking, early stopping and the checkpoint report; True to stop."""
        nonlocal best_weights
        metrics, _ = evaluate(engine.module, val_urls, loader_cfg, world, rank, device, autocast_dtype)
        improved, stop = record_validation(state, metrics[cfg.select_metric], step, cfg.early_stop_patience)
        if improved:
            weights = _full_fp32_state(engine)  # collective: every rank calls it
            if rank == 0:
                best_weights = weights
        val = {f"val_{k}": metrics[k] for k in ("accuracy", "macro_f1", "kappa")}
        val.update({f"val_f1_{k}": v for k, v in metrics["f1"].items()})
        tracker.metrics({**val, "val_best_" + cfg.select_metric: state["best_metric"]}, step)
        _log(rank, f"step {step}: val acc {metrics['accuracy']:.3f} macro-F1 {metrics['macro_f1']:.3f} "
                   f"kappa {metrics['kappa']:.3f}{' (best)' if improved else ''}")
        with tempfile.TemporaryDirectory() as directory:
            engine.save_checkpoint(directory, tag=DS_TAG)
            if rank == 0:
                (Path(directory) / "trainer_state.json").write_text(json.dumps(state))
                if best_weights is not None:
                    torch.save(best_weights, Path(directory) / "best_model.pt")
            ray.train.report({"step": step, "stage": cfg.stage, **val, "val_best_" + cfg.select_metric: state["best_metric"]},
                             checkpoint=ray.train.Checkpoint.from_directory(directory))
        return stop

    step = state["step"]
    stop = state.get("stopped_early", False) or step >= cfg.max_steps
    batches = endless_batches(loader, start_epoch=step // per_epoch)
    epochs_per_batch = cfg.batch_size * cfg.seq_len * world
    tick = time.perf_counter()
    while not stop:
        signals, labels, _events = next(batches)
        out = engine(signals.to(device), labels=labels.to(device), stage=cfg.stage)
        engine.backward(out["loss"])
        engine.step()
        step += 1
        if rank == 0 and step % cfg.log_every == 0:
            now = time.perf_counter()
            elapsed, tick = now - tick, now
            logged = {k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in out.items()
                      if k.startswith("loss") or k == "mask_ratio_effective"}
            logged.update(lr=scheduler.get_last_lr()[0] if scheduler else cfg.lr,
                          epochs_per_s=epochs_per_batch * cfg.log_every / elapsed)
            tracker.metrics(logged, step)
        if step % cfg.val_every == 0 or step >= cfg.max_steps:
            stop = validate_and_checkpoint(step) or step >= cfg.max_steps

    # Test evaluation with the best validation weights (rank 0 holds them; broadcast to all ranks).
    import torch.distributed as dist

    holder = [best_weights]
    if world > 1:
        dist.broadcast_object_list(holder, src=0)
    if holder[0] is not None:
        engine.module.load_state_dict(holder[0])
    test_metrics, predictions = evaluate(engine.module, test_urls, loader_cfg, world, rank, device, autocast_dtype)
    # Peak memory of the worker processes (their DataLoader workers not counted): the largest over ranks.
    import resource

    peak = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]  # Linux: KiB -> MiB
    if device.type == "cuda":
        peak.append(torch.cuda.max_memory_allocated(device) / 2**20)
    peak = torch.tensor(peak, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        test = {f"test_{k}": test_metrics[k] for k in ("accuracy", "macro_f1", "kappa")}
        test.update({f"test_f1_{k}": v for k, v in test_metrics["f1"].items()})
        test.update(dict(zip(("peak_rss_mb", "peak_gpu_mb"), peak.tolist())))
        tracker.metrics(test, state["step"])
        _log(rank, f"test (best step {state['best_step']}): acc {test_metrics['accuracy']:.3f} "
                   f"macro-F1 {test_metrics['macro_f1']:.3f} kappa {test_metrics['kappa']:.3f}")
        with tempfile.TemporaryDirectory() as directory:
            files = artifacts.write_run_artifacts(
                Path(directory), cfg=cfg, model_cfg=model_cfg, ds_config=ds_config, manifest=manifest, roles=roles,
                test_metrics=test_metrics, predictions=predictions, state=state, weights=holder[0] or _cpu_state(engine),
                world=world,
            )
            for path, folder in files:
                tracker.artifact(path, folder)
        tracker.tags({"best_step": str(state["best_step"]), "stopped_early": str(state["stopped_early"])})
        tracker.flush()
    # A final report so the driver's result carries the test metrics (every rank reports once more).
    # The best validation value rides along so that a Tune scheduler watching it sees it in every result.
    ray.train.report({"step": state["step"], "stage": cfg.stage, "val_best_" + cfg.select_metric: state["best_metric"],
                      **{f"test_{k}": test_metrics[k] for k in ("accuracy", "macro_f1", "kappa")}})


def _cpu_state(engine) -> dict:
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
            for k, v in engine.module.state_dict().items()}

