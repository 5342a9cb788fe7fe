"""`distsleep gan` (jobs/gan.py): the Physio-GAN jobs, `train` (Ray Train), `augment` (synthetic training shards)
and `effect` (a model with vs without them).

`add_arguments(parser)` / `run(args)` serve `distsleep gan ...`; `main(argv, prog)` serves jobs/gan.py. Option
defaults are GanTrainConfig's and AugmentConfig's.
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

from distsleep.cli import add_verbose_argument
from distsleep.cli.common import add_train_arguments as add_model_train_arguments
from distsleep.cli.common import config_from_args, parse_set, run_job
from distsleep.config import field_defaults
from distsleep.gan.augment import CHANNEL_STATS, AugmentConfig, run_augment
from distsleep.gan.config import DEFAULT_CHANNELS, GanTrainConfig
from distsleep.gan.effect import default_name, format_summary, run_effect
from distsleep.gan.model import ADVERSARIAL_LOSSES, PhysioGanConfig
from distsleep.gan.train import run_gan_training
from distsleep.locks import LockHeld
from distsleep.metrics import format_values
from distsleep.runtime import configure_console
from distsleep.shards.augmented import AugmentationError

_D = SimpleNamespace(**field_defaults(GanTrainConfig))
SUBCOMMANDS_TAKE_VERBOSE = True  # --verbose goes to train/augment/effect, after the subcommand
DESCRIPTION = ("ISATSleepNet's Physio-GAN. `gan train` learns the target stage(s) (N1 by default) from the training "
               "records of a manifest on Ray Train (spectral and amplitude constraints, PSD comparison logged to MLflow); "
               "`gan augment` writes generated epochs as marked shards plus augmentation.json, which "
               "`pretrain/finetune --augment-shards` add to the training stream only; `gan effect` trains a model with "
               "and without them and compares per-class F1.")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--shards", required=True, help="manifest.json of a preprocessing run; only its training records are read")
    g.add_argument("--stages", type=_csv, default=_D.stages, help="stage(s) to synthesise, comma-separated (default N1)")
    g.add_argument("--channels", type=_csv, default=_D.channels,
                   help=f"channel roles generated jointly, in order (default {','.join(DEFAULT_CHANNELS)}: "
                        "the ISATSleepNet inputs)")
    g.add_argument("--max-real-epochs", type=int, default=_D.max_real_epochs, help="cap per stage on real epochs held in memory")
    g = p.add_argument_group("model and losses")
    g.add_argument("--model-size", choices=PhysioGanConfig.presets(), default=_D.model_size,
                   help="architecture preset (default paper)")
    g.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override architecture fields, e.g. latent_dim=64")
    g.add_argument("--adversarial", choices=ADVERSARIAL_LOSSES, default=_D.adversarial,
                   help="adversarial loss (default wgan-gp)")
    g.add_argument("--adversarial-weight", type=float, default=_D.adversarial_weight)
    g.add_argument("--spectral-weight", type=float, default=_D.spectral_weight, help="weight of the log-FFT-magnitude loss")
    g.add_argument("--moment-weight", type=float, default=_D.moment_weight, help="weight of the amplitude-statistics loss")
    g.add_argument("--gp-weight", type=float, default=_D.gp_weight, help="WGAN-GP gradient penalty weight")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=_D.batch_size, help="epochs per worker per step")
    g.add_argument("--n-critic", type=int, default=_D.n_critic, help="critic updates per generator update")
    g.add_argument("--lr-generator", type=float, default=_D.lr_generator)
    g.add_argument("--lr-critic", type=float, default=_D.lr_critic)
    g.add_argument("--max-steps", type=int, default=_D.max_steps, help="generator updates")
    g.add_argument("--checkpoint-every", type=int, default=_D.checkpoint_every)
    g.add_argument("--log-every", type=int, default=_D.log_every)
    g.add_argument("--psd-epochs", type=int, default=_D.psd_epochs, help="real epochs per stage for the final PSD comparison")
    g.add_argument("--seed", type=int, default=_D.seed)
    g = p.add_argument_group("cluster and tracking")
    g.add_argument("--num-workers", type=int, default=_D.num_workers, help="Ray Train workers")
    g.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL")
    g.add_argument("--cpus-per-worker", type=float, default=_D.cpus_per_worker)
    g.add_argument("--storage-path", default=_D.storage_path, help="checkpoints go to STORAGE/NAME")
    g.add_argument("--name", default="", help="run name; relaunching the same name resumes (default gan-STAGES)")
    g.add_argument("--max-failures", type=int, default=_D.max_failures, help="worker-group restarts from the last checkpoint")
    g.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a local cluster)")
    g.add_argument("--experiment", default=_D.experiment, help="MLflow experiment")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")


def train_config_from_args(args: argparse.Namespace) -> GanTrainConfig:
    return GanTrainConfig(
        shards=args.shards, stages=args.stages, channels=args.channels, max_real_epochs=args.max_real_epochs,
        model_size=args.model_size, model_overrides=parse_set(args.set), adversarial=args.adversarial,
        adversarial_weight=args.adversarial_weight, spectral_weight=args.spectral_weight,
        moment_weight=args.moment_weight, gp_weight=args.gp_weight, batch_size=args.batch_size, n_critic=args.n_critic,
        lr_generator=args.lr_generator, lr_critic=args.lr_critic, max_steps=args.max_steps,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, psd_epochs=args.psd_epochs, seed=args.seed,
        num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
        storage_path=args.storage_path, name=args.name, max_failures=args.max_failures, experiment=args.experiment,
        tracking_uri=args.tracking_uri,
    )


def add_augment_arguments(p: argparse.ArgumentParser) -> None:
    d = field_defaults(AugmentConfig)
    p.add_argument("--generator", required=True,
                   help="generator bundle: generator.pt, a folder holding it (e.g. a checkpoint), or the MLflow run id of `train`")
    p.add_argument("--shards", required=True, help="preprocessing manifest.json of the training run to augment")
    p.add_argument("--out", required=True, help="output directory (shards/ + augmentation.json)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--n-epochs", type=int, help="synthetic epochs per stage")
    how.add_argument("--target-fraction", type=float,
                     help="generate enough epochs to bring each stage to this fraction of the training epochs, e.g. 0.1")
    p.add_argument("--stages", type=_csv, help="stages to generate (default: all stages of the generator)")
    p.add_argument("--seed", type=int, default=d["seed"], help="same seed and arguments give byte-identical output")
    p.add_argument("--epochs-per-record", type=int, default=d["epochs_per_record"],
                   help="epochs per synthetic pseudo-record (= per shard)")
    p.add_argument("--channel-stats", choices=CHANNEL_STATS, default=d["channel_stats"],
                   help="median/IQR stored for robust input scaling: the generator's typical whole-night values "
                        "(default; real epochs are scaled by their whole night's statistics) or those of the "
                        "generated epochs themselves")
    p.add_argument("--tracking-uri", help="MLflow tracking URI to fetch a generator by run id")


def cmd_train(args: argparse.Namespace) -> int:
    def job():
        cfg = train_config_from_args(args)
        print(cfg.describe())
        return run_gan_training(cfg, args.address)

    outcome, status = run_job("gan train", job, refused=(ValueError, argparse.ArgumentTypeError))
    if status:
        return status
    m = outcome.metrics
    print(f"MLflow run {outcome.run_id}{' (resumed)' if outcome.resumed else ''}; checkpoints in {outcome.storage}")
    if "psd_distance_db" in m:
        print(f"PSD distance 0.5-40 Hz: generated vs real {m['psd_distance_db']:.2f} dB, "
              f"real half vs real half {m['psd_floor_db']:.2f} dB")
    print(f"generator bundle: MLflow artifact generator/generator.pt of run {outcome.run_id} "
          f"(use --generator {outcome.run_id} with `augment`)")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    try:
        cfg = AugmentConfig(generator=args.generator, shards=args.shards, out=args.out, stages=args.stages,
                            n_epochs=args.n_epochs, target_fraction=args.target_fraction, seed=args.seed,
                            epochs_per_record=args.epochs_per_record, channel_stats=args.channel_stats,
                            tracking_uri=args.tracking_uri)
        result = run_augment(cfg)
    except (AugmentationError, LockHeld, ValueError, OSError) as error:
        print(f"gan augment: error: {error}", file=sys.stderr)
        return 2
    m = result.manifest
    state = "already complete, nothing written" if result.written == 0 and m["shards"] else f"{result.written} shard(s) written"
    print(f"{result.path}: {m['n_epochs']} synthetic epochs {m['counts']['generated']} in {len(m['shards'])} shard(s) "
          f"({state})")
    print("training fraction after augmentation: " + format_values(m["counts"]["fraction_after"], ".3f"))
    return 0


def add_effect_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("comparison")
    g.add_argument("--augmentation", required=True, help="augmentation.json (or its folder) written by `augment`")
    g.add_argument("--seeds", type=int, nargs="+", default=[0], help="one pair of runs (real, augmented) per seed")
    g.add_argument("--out", help="folder for effect.json, the comparison table and plots (default: MLflow only)")
    add_model_train_arguments(p, stage="pretrain")


def cmd_effect(args: argparse.Namespace) -> int:
    if args.augment_shards:
        print("gan effect: error: --augment-shards is set per arm; give the augmentation with --augmentation",
              file=sys.stderr)
        return 2
    args.name = args.name or default_name(args.model)
    result, status = run_job("gan effect", lambda: run_effect(config_from_args(args, stage="pretrain"), args.augmentation,
                                                              args.seeds, args.out, args.address),
                             refused=(AugmentationError, ValueError))
    if status:
        return status
    print(format_summary(result.summary))
    print(f"MLflow parent run {result.run_id}; arms: " + ", ".join(f"seed {s} {a} {r}" for (s, a), r in sorted(result.runs.items())))
    if result.files:
        print(f"table and plots: {result.files.get('text')}, {result.files.get('per_class')}")
    if not result.recorded:
        print(f"gan effect: the store did not take parent run {result.run_id} whole, so it is FAILED (the figures above "
              "are complete; give --out to keep the table and plots here); relaunch unchanged to record them (the "
              "finished arms are not trained again)",
              file=sys.stderr)
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`train`, `augment` and `effect` as subcommands of `p`, each with --verbose."""
    subparsers = p.add_subparsers(dest="gan_command", required=True, metavar="{train,augment,effect}")
    commands = [
        ("train", "train Physio-GAN on a manifest's training epochs (Ray Train, MLflow)",
         "Train Physio-GAN on the target-stage epochs of the training records of a preprocessing manifest. "
         "Relaunching the same --name resumes.", add_train_arguments, cmd_train),
        ("augment", "write synthetic epochs as marked training shards",
         "Generate synthetic epochs with a trained generator and write them as extra training shards (meta "
         "augmented=true) plus augmentation.json.", add_augment_arguments, cmd_augment),
        ("effect", "train a model with and without an augmentation and compare per-class F1",
         "The same training run (Ray Train + DeepSpeed, MLflow) with and without the synthetic epochs of "
         "--augmentation, for each --seeds value; prints per-class test F1 (N1 first) of both arms and their paired "
         "difference, and logs a parent MLflow run with the table and plots. Finished arm runs are reused on "
         "relaunch.", add_effect_arguments, cmd_effect),
    ]
    for name, summary, description, add, func in commands:
        sub = subparsers.add_parser(name, help=summary, description=description)
        add(sub)
        add_verbose_argument(sub)
        sub.set_defaults(gan_func=func)


def run(args: argparse.Namespace) -> int:
    return args.gan_func(args)


def main(argv: list[str] | None = None, prog: str = "gan") -> int:
    """jobs/gan.py: `train`, `augment` or `effect` with their options."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Physio-GAN (ISATSleepNet): synthesise minority-stage epochs (N1 by default) "
                               "with spectral and amplitude constraints, and add them to training as marked shards.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_console(args.verbose)
    return run(args)
