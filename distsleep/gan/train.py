"""Physio-GAN training as a Ray Train job (TorchTrainer), tracked in MLflow, resumable by name.

Driver (`run_gan_training`): checks the manifest before anything starts (training records must hold the
target stages; channels must exist), finds or creates the MLflow run tagged with the run name, and runs a
TorchTrainer with RunConfig(storage_path, name): relaunching a name whose run directory holds checkpoints
resumes from the latest one, and an unfinished MLflow run of that name is reused.

The MLflow run id and tracking URI travel in the loop config (workers log with an explicit URI), so the
workers need no runtime environment of their own.

Workers (`gan_loop_per_worker`): each rank reads its share of the training epochs (`distsleep.gan.data`),
the per-record statistics are gathered so that every rank uses the same GAN-unit scaling, and the
generator and critic start from the same seed. Gradients are averaged over ranks with one all-reduce per
optimizer step instead of DistributedDataParallel: DDP's reducer hooks would fire on every backward
through a wrapped module (the generator step back-propagates through the critic, and the gradient penalty
is a double backward), which DDP handles poorly; an explicit average after each backward is exact and
keeps every rank's weights identical.

Checkpoint (every `checkpoint_every` generator steps and at the end, written by rank 0):
    gan_state.pt        generator, critic, both optimizers, step (torch.load(weights_only=True))
    generator.pt        the generator bundle (`distsleep.bundle.generator_bundle`), so a checkpoint can feed `augment`
    trainer_state.json  step, resume count and the MLflow run id (`driver.finished_launch`)
    mlflow_unsent.json  only when the tracking store was down: what it had not taken, written by a relaunch

MLflow (rank 0): the config as params; per logged step loss_critic, loss_generator, loss_adversarial,
loss_spectral, loss_moment, gradient_penalty, wasserstein_estimate (critic score of real minus generated
epochs; an estimate of the Wasserstein distance under WGAN-GP), all means over ranks, and steps_per_s; at the
end psd_distance_db / psd_floor_db (overall and per stage and channel), psd_comparison.json,
psd_comparison.png and the bundle as generator/generator.pt.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig

from distsleep.bundle import GENERATOR, generator_bundle, load_file
from distsleep.gan import model as gm
from distsleep.gan.config import GanTrainConfig
from distsleep.gan.data import GanDataError, check_training_data, read_training_epochs, scaling_from_stats, source_band_limits
from distsleep.gan.psd import compare_psd, psd_png
from distsleep.integrity import verify_checksums, write_checksums
from distsleep.metrics import format_values
from distsleep.shards.loader import load_manifest
from distsleep.tracking import BUNDLE_TAG, check_reachable
from distsleep.train.driver import LaunchError, launch, open_manifest, worker_context

STATE_FILE = "gan_state.pt"
LOSS_NAMES = ("loss_critic", "loss_generator", "loss_adversarial", "loss_spectral", "loss_moment",
              "gradient_penalty", "wasserstein_estimate")

log = logging.getLogger("distsleep.gan")


@dataclass
class GanOutcome:
    run_id: str
    tracking_uri: str
    resumed: bool
    metrics: dict
    checkpoint: str | None
    storage: str


# -------------------------------------------------------------------------------------------------- driver


def preflight(cfg: GanTrainConfig) -> dict:
    """The manifest, or a LaunchError that says what is wrong before any worker starts."""
    manifest = open_manifest(cfg.shards)
    try:
        check_training_data(manifest, cfg.stages, cfg.channels, cfg.shards)
    except GanDataError as error:
        raise LaunchError(str(error)) from error
    return manifest


def run_gan_training(cfg: GanTrainConfig, address: str | None = None, check_cluster: bool = True) -> GanOutcome:
    """Preflight, the MLflow run, then `TorchTrainer.fit()`; raises LaunchError / TrainingFailed with advice.

    The same driver steps as a model's training run (`distsleep.train.driver.launch`): resources and shared
    paths checked against the cluster, STORAGE/NAME resumed when it holds checkpoints, the MLflow run of that
    name reused while unfinished.
    """
    tracking_uri = cfg.resolved_tracking_uri
    check_reachable(tracking_uri)
    manifest = preflight(cfg)
    tags = {"job": "physio-gan", "stages": ",".join(cfg.stages), "channels": ",".join(cfg.channels),
            **{k: str(v) for k, v in cfg.run_tags.items()}}
    run = launch(cfg, manifest, gan_loop_per_worker, "gan", tracking_uri=tracking_uri, tags=tags, address=address,
                 check_cluster=check_cluster, checkpoint_config=CheckpointConfig(num_to_keep=2))
    return GanOutcome(run_id=run.run_id, tracking_uri=tracking_uri, resumed=run.resumed, metrics=run.metrics,
                      checkpoint=run.checkpoint, storage=run.storage)


# ------------------------------------------------------------------------------------------------- workers


def _all_gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _average_gradients(module, world: int) -> None:
    """Mean of the gradients over ranks, one flat all-reduce (missing gradients count as zeros)."""
    if world == 1:
        return
    params = list(module.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _broadcast_parameters(module, world: int) -> None:
    if world > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def gan_loop_per_worker(config: dict) -> None:
    cfg = GanTrainConfig.from_dict(config["gan"])
    run_id = config["mlflow_run_id"]
    rank, world, device, tracker = worker_context(config, cfg.use_gpu)
    say = (lambda message: log.info("[gan rank 0] %s", message)) if rank == 0 else (lambda message: None)

    manifest, base = load_manifest(cfg.shards)
    real = read_training_epochs(manifest, base, cfg.channels, cfg.stages, rank, world, cfg.max_real_epochs, cfg.seed,
                                source=cfg.shards)
    gathered = _all_gather((real.stats, [real.count(i) for i in range(len(cfg.stages))]), world)
    empty = [(r, cfg.stages[i]) for r, (_, counts) in enumerate(gathered) for i, n in enumerate(counts) if n == 0]
    if empty:  # every rank raises the same error, so none waits in a collective
        raise GanDataError(f"{cfg.shards}: rank(s) {sorted({r for r, _ in empty})} got no epochs of "
                           f"{sorted({s for _, s in empty})} from their training records; use fewer --num-workers")
    scaling = scaling_from_stats([s for stats, _ in gathered for s in stats])
    real_counts = {s: int(sum(counts[i] for _, counts in gathered)) for i, s in enumerate(cfg.stages)}
    center = np.asarray(scaling["center_uv"], np.float32)[:, None]
    scale = np.asarray(scaling["scale_uv"], np.float32)[:, None]

    model_cfg = cfg.model_config(source_band_limits(manifest, cfg.channels),
                                 float(manifest["config"]["preprocess"]["target_rate"]))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    generator = gm.Generator(model_cfg).to(device)
    critic = gm.Critic(model_cfg).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_generator, betas=cfg.betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=cfg.lr_critic, betas=cfg.betas)
    state = {"step": 0, "resumes": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            verify_checksums(directory, "the checkpoint to resume from")
            saved = load_file(Path(directory) / STATE_FILE, map_location=device)
            kept = tracker.write_kept(directory)  # what the tracking store missed before this checkpoint
        generator.load_state_dict(saved["generator"])
        critic.load_state_dict(saved["critic"])
        opt_g.load_state_dict(saved["opt_generator"])
        opt_d.load_state_dict(saved["opt_critic"])
        state = {"step": int(saved["step"]), "resumes": int(saved.get("resumes", 0)) + 1}
        say(f"resumed from checkpoint at step {state['step']} (resume #{state['resumes']})"
            f"{f'; {kept} metric values the tracking store had missed are written now' if kept else ''}")
        tracker.metrics({"resumes": state["resumes"]}, state["step"])
    else:
        _broadcast_parameters(generator, world)
        _broadcast_parameters(critic, world)
    if rank == 0 and config.get("mlflow_new_run", checkpoint is None):
        # Params once per MLflow run, as in model training: a relaunch after a finished run gets a new run
        # (find_or_create_run), which needs them too; an interrupted run keeps its own (MLflow refuses changed values).
        tracker.params({**cfg.params("gan"), **model_cfg.params("model"), "world_size": str(world),
                        "data.manifest_hash": manifest.get("config_hash", ""), "data.mode": real.mode,
                        **{f"data.real_epochs.{s}": str(n) for s, n in real_counts.items()},
                        **{f"data.scale_uv.{c}": f"{v:.4g}" for c, v in zip(cfg.channels, scaling["scale_uv"])}})
    n_g = sum(p.numel() for p in generator.parameters())
    n_d = sum(p.numel() for p in critic.parameters())
    say(f"Physio-GAN ({cfg.model_size} preset{' with overrides' if cfg.model_overrides else ''}): generator {n_g:,} / "
        f"critic {n_d:,} parameters; {world} worker(s) on {device.type}; real epochs {real_counts} ({real.mode} "
        f"sharding); scale uV {[round(v, 2) for v in scaling['scale_uv']]}; band limits Hz {model_cfg.band_limit_hz}")
    if rank == 0:
        tracker.tags({"generator_parameters": str(n_g), "critic_parameters": str(n_d)})

    # Seeded per (seed, rank, step at (re)start): reproducible, and a resumed run does not replay old batches.
    rng = np.random.default_rng([cfg.seed, rank, state["step"]])
    noise = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
    n_stages = len(cfg.stages)

    def real_batch() -> tuple[torch.Tensor, torch.Tensor]:
        y = np.sort(rng.integers(0, n_stages, cfg.batch_size))
        parts = [real.physical(i, rng.integers(0, real.count(i), int((y == i).sum()))) for i in range(n_stages)]
        x = (np.concatenate(parts) - center) / scale
        return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def latent(n: int) -> torch.Tensor:
        return torch.randn(n, model_cfg.latent_dim, device=device, generator=noise)

    def train_step() -> list:
        for _ in range(cfg.n_critic):
            x, y = real_batch()
            with torch.no_grad():
                fake = generator(latent(len(y)), y, noise)
            scores = critic(torch.cat([x, fake]), torch.cat([y, y]))
            real_score, fake_score = scores[:len(y)], scores[len(y):]
            loss_d = gm.critic_loss(real_score, fake_score, cfg.adversarial, cfg.drift_weight)
            gp = torch.zeros((), device=device)
            if cfg.adversarial == "wgan-gp":
                gp = gm.gradient_penalty(critic, x, fake, y, noise)
                loss_d = loss_d + cfg.gp_weight * gp
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            _average_gradients(critic, world)
            opt_d.step()
        x, y = real_batch()
        fake = generator(latent(len(y)), y, noise)
        critic.requires_grad_(False)  # the generator step must not accumulate critic gradients
        adv = gm.generator_adversarial_loss(critic(fake, y), cfg.adversarial)
        critic.requires_grad_(True)
        spec = gm.per_stage(gm.spectral_loss, x, fake, y, fs=model_cfg.sample_rate, band=cfg.spectral_band)
        mom = gm.per_stage(gm.moment_loss, x, fake, y)
        loss_g = cfg.adversarial_weight * adv + cfg.spectral_weight * spec + cfg.moment_weight * mom
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        _average_gradients(generator, world)
        opt_g.step()
        wasserstein = (real_score.mean() - fake_score.mean()).detach()
        return [loss_d.detach(), loss_g.detach(), adv.detach(), spec.detach(), mom.detach(), gp.detach(), wasserstein]

    def bundle() -> dict:
        return generator_bundle(weights=generator.state_dict(), gan_config=cfg, model_config=model_cfg, scaling=scaling,
                                manifest=manifest, step=state["step"], run_id=run_id, real_counts=real_counts)

    def save_checkpoint(metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:
                torch.save({"generator": generator.state_dict(), "critic": critic.state_dict(),
                            "opt_generator": opt_g.state_dict(), "opt_critic": opt_d.state_dict(),
                            "step": state["step"], "resumes": state["resumes"]}, Path(directory) / STATE_FILE)
                torch.save(bundle(), Path(directory) / GENERATOR.file)
                (Path(directory) / "trainer_state.json").write_text(json.dumps({**state, "mlflow_run_id": run_id}))
                tracker.keep_unsent(directory)  # a relaunch from here writes what the store has not taken
                write_checksums(directory)
            ray.train.report({"step": state["step"], **metrics},
                             checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None)

    generator.train()
    critic.train()
    last: dict = {}
    tick, tick_step = time.perf_counter(), state["step"]
    while state["step"] < cfg.max_steps:
        values = train_step()
        state["step"] += 1
        step = state["step"]
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            vector = torch.stack(values).float()
            if world > 1:
                dist.all_reduce(vector)
                vector /= world
            last = dict(zip(LOSS_NAMES, vector.tolist()))
            now = time.perf_counter()
            tracker.metrics({**last, "steps_per_s": (step - tick_step) / max(now - tick, 1e-9)}, step)
            tick, tick_step = now, step
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            say(f"step {step}: " + format_values(last, ".4g"))
            save_checkpoint(last)

    # PSD comparison: each rank contributes a random subset of its real epochs; rank 0 compares.
    generator.eval()
    psd_rng = np.random.default_rng([cfg.seed, rank, 7])
    share = -(-cfg.psd_epochs // world)
    local = {}
    for i in range(n_stages):
        index = np.sort(psd_rng.choice(real.count(i), min(real.count(i), share), replace=False))
        local[i] = real.physical(i, index)
    pooled = _all_gather(local, world)
    summary: dict = {}
    if rank == 0:
        comparisons = {}
        for i, stage in enumerate(cfg.stages):
            real_uv = np.concatenate([part[i] for part in pooled])[:cfg.psd_epochs]
            if len(real_uv) < 4:
                say(f"PSD comparison of {stage} skipped: {len(real_uv)} real epochs (need 4)")
                continue
            z = torch.from_numpy(np.random.default_rng([cfg.seed, 11, i]).standard_normal(
                (len(real_uv) // 2, model_cfg.latent_dim)).astype(np.float32)).to(device)
            seeded = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + i)
            with torch.no_grad():
                fake = generator(z, torch.full((len(z),), i, device=device), seeded).cpu().numpy()
            fake_uv = fake * scale + center
            comparisons[stage] = compare_psd(real_uv, fake_uv, cfg.channels, fs=model_cfg.sample_rate, band=cfg.psd_band,
                                             seed=cfg.seed)
        for stage, c in comparisons.items():
            summary[f"psd_distance_db_{stage}"] = c["distance_db"]
            summary[f"psd_floor_db_{stage}"] = c["floor_db"]
            for channel, per in c["per_channel"].items():
                summary[f"psd_distance_db_{stage}_{channel}"] = per["distance_db"]
                summary[f"psd_floor_db_{stage}_{channel}"] = per["floor_db"]
        if comparisons:
            summary["psd_distance_db"] = float(np.mean([c["distance_db"] for c in comparisons.values()]))
            summary["psd_floor_db"] = float(np.mean([c["floor_db"] for c in comparisons.values()]))
        tracker.metrics(summary, state["step"])
        say("PSD distance (generated vs real / real half vs half): " + "  ".join(
            f"{s} {c['distance_db']:.2f} / {c['floor_db']:.2f} dB" for s, c in comparisons.items()))
        with tempfile.TemporaryDirectory() as directory:
            folder = Path(directory)
            (folder / "psd_comparison.json").write_text(json.dumps(
                {"step": state["step"], "summary": summary, "stages": comparisons}, indent=1, sort_keys=True))
            files = [(folder / "psd_comparison.json", None)]
            if comparisons:
                psd_png(comparisons, folder / "psd_comparison.png",
                        title=f"Physio-GAN {cfg.name} step {state['step']}: Welch PSD, mean ± 1 SD over epochs")
                files.append((folder / "psd_comparison.png", None))
            torch.save(bundle(), folder / GENERATOR.file)
            files.append((folder / GENERATOR.file, GENERATOR.folder))
            if tracker.artifacts(files):  # without the tag the run is not FINISHED: a relaunch uploads
                tracker.tags({BUNDLE_TAG: GENERATOR.artifact})
        tracker.tags({"final_step": str(state["step"])})
        tracker.flush()
    holder = [summary]
    if world > 1:
        dist.broadcast_object_list(holder, src=0)
    ray.train.report({"step": state["step"], **last, **holder[0]})
