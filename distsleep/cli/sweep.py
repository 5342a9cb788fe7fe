"""`distsleep sweep` (jobs/sweep.py): a Ray Tune sweep over the masking ratio and other knobs
(`distsleep.sweep`); its option defaults are SweepConfig's."""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

from distsleep.cli.common import add_train_arguments, config_from_args, parse_value
from distsleep.config import field_defaults
from distsleep.sweep.config import SCHEDULERS, SEARCHES, SweepConfig
from distsleep.sweep.run import run_sweep
from distsleep.tracking import TrackingUnavailable
from distsleep.train.driver import LaunchError

DESCRIPTION = ("A Ray Tune sweep like Table 4 of the MC²SleepNet paper. Each trial pre-trains with its masking ratio (and "
               "other --knob values), fine-tunes from its own best checkpoint, and evaluates the test records; validation "
               "metrics reach Tune (ASHA can stop lagging trials). MLflow: a parent run for the sweep, a child run per "
               "trial, the stage runs below it; at the end the comparison table and plots, and YASA scored on the same "
               "test records, are logged to the parent. Relaunching the same --name resumes the sweep: finished trials "
               "are kept, unfinished ones resume from their checkpoints.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p, stage="pretrain")
    d = SimpleNamespace(**field_defaults(SweepConfig))
    g = p.add_argument_group("sweep")
    g.add_argument("--mask-ratios", type=float, nargs="+", default=d.mask_ratios, metavar="R",
                   help="masking ratios to try (default: the paper's 0 .15 .25 .30 .40 .50 .60 .70 .75 .85)")
    g.add_argument("--knob", nargs="+", default=[], metavar="NAME=V1,V2",
                   help="more knobs crossed with the ratios: a training option (lr, seed, batch_size ...) or a model "
                   "config field (infonce_temperature ...), e.g. --knob seed=0,1 infonce_temperature=0.07,0.2. With seed "
                   "in a grid search, the comparison shows each point as the mean over its seeds ± their SD and selects "
                   "the point on its mean validation value")
    g.add_argument("--search", choices=SEARCHES, default=d.search,
                   help="grid: every combination; random: --num-samples trials, ratio uniform in --mask-ratio-range")
    g.add_argument("--num-samples", type=int, default=d.num_samples, help="random: trials (a grid: 1; repeat its points with --knob seed=0,1,2)")
    g.add_argument("--mask-ratio-range", type=float, nargs=2, default=d.mask_ratio_range, metavar=("LOW", "HIGH"))
    g.add_argument("--no-finetune", action="store_true", help="pre-training only (no fine-tuning stage)")
    g.add_argument("--finetune-steps", type=int, help="fine-tuning steps (default: --max-steps)")
    g.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate (default: --lr)")
    g.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler, help="asha: stop trials that lag at a rung")
    g.add_argument("--asha-grace", type=int, default=d.asha_grace, help="validations a trial gets before ASHA may stop it")
    g.add_argument("--asha-reduction", type=float, default=d.asha_reduction, help="ASHA reduction factor")
    g.add_argument("--max-concurrent-trials", type=int, help="default: as many as the cluster's resources hold")
    g.add_argument("--no-baseline", action="store_true", help="do not score YASA on the test records")
    g.add_argument("--folds", type=int, default=d.folds, metavar="K",
                   help="K-fold cross-validation by person (the paper's protocol for Sleep-EDF-78: 10): every point is "
                        "trained and tested on each fold (`distsleep folds`), and the comparison pools each point's test "
                        "nights over its folds; the point selected has the best mean validation. It needs a grid search and the "
                        "fifo scheduler, every fold training every point (default: no folds, the manifest's own split)")
    g.add_argument("--fold-seed", type=int, default=d.fold_seed, help="seed of the assignment of people to folds")
    g.add_argument("--out", help="folder for the comparison files (default: a temporary folder; they are logged to MLflow)")


def parse_knobs(items: list[str]) -> dict:
    knobs = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise argparse.ArgumentTypeError(f"--knob expects NAME=V1,V2,..., got {item!r}")
        knobs[key] = [parse_value(value) for value in values.split(",")]
    return knobs


def run(args: argparse.Namespace) -> int:
    try:
        config = SweepConfig(
            name=args.name, train=config_from_args(args, stage="pretrain"), mask_ratios=tuple(args.mask_ratios),
            knobs=parse_knobs(args.knob), search=args.search, num_samples=args.num_samples,
            mask_ratio_range=tuple(args.mask_ratio_range), finetune=not args.no_finetune,
            finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr, scheduler=args.scheduler,
            asha_grace=args.asha_grace, asha_reduction=args.asha_reduction,
            max_concurrent_trials=args.max_concurrent_trials, baseline=not args.no_baseline,
            folds=args.folds, fold_seed=args.fold_seed,
        )
        outcome = run_sweep(config, address=args.address, out_dir=args.out)
    except (LaunchError, TrackingUnavailable, ValueError, argparse.ArgumentTypeError) as error:
        print(f"distsleep sweep: error: {error}", file=sys.stderr)
        return 2
    counts = {s: sum(t["state"] == s for t in outcome.trials) for s in ("completed", "stopped", "failed")}
    print(f"{'resumed and finished' if outcome.resumed else 'finished'} sweep {config.name!r}: "
          f"{counts['completed']} trials completed, {counts['stopped']} stopped early by the scheduler, {counts['failed']} failed")
    print(outcome.text)
    print(f"comparison: {', '.join(str(p) for p in outcome.files.values())}")
    print(f"MLflow parent run {outcome.parent_run_id} in {outcome.tracking_uri} (experiment {config.train.experiment!r})")
    if not outcome.recorded:
        print(f"distsleep sweep: the store did not take the comparison and selection of run {outcome.parent_run_id} "
              "whole, so it is FAILED (the comparison files above are complete); relaunch the sweep unchanged to "
              "record them", file=sys.stderr)
    return 1 if counts["failed"] or not outcome.recorded else 0
