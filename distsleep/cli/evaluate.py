"""`distsleep evaluate`: a trained model on a manifest's split, judged per night (`distsleep.evaluation`)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from distsleep.cli.common import add_shard_safety_arguments
from distsleep.config import default_tracking_uri, field_defaults
from distsleep.errors import InputError
from distsleep.evaluation import EvaluateConfig, format_summary, run_evaluation
from distsleep.shards.loader import SPLITS
from distsleep.tracking.sweeps import selected_trials, trial_models

DESCRIPTION = ("Score every night of a split of a preprocessing manifest with a trained model, one Ray task per record "
               "(GPU tasks when the cluster has GPUs), and judge it per night. Writes per_night.csv (accuracy, kappa, "
               "macro-F1, per-stage F1, true vs predicted TST, sleep efficiency, WASO, sleep-onset and REM latency, "
               "stage percentages: YASA's sleep statistics), summary.json (pooled metrics, per-night median/IQR, 95% "
               "bootstrap CIs over subjects), probabilities/<record>.npz and plots (per-night kappa, Bland-Altman for "
               "TST/WASO/SE, pooled confusion), and logs an MLflow evaluation run naming the model's training run. A model "
               "trained on another dataset is read through the channel role filling the same model input; the output "
               "says which roles were substituted. Cross-validation: several --model with as many --shards (each fold's "
               "model and its fold manifest), or --sweep NAME for the point a sweep selected on validation (every fold of "
               "a cross-validation point), score each model on its own manifest and pool the nights, so every person is "
               "judged by the model that never saw them. Exit status: 0 all nights evaluated and recorded, 1 some failed "
               "(listed; the others are evaluated) or the MLflow run did not take all of it (marked FAILED; the files "
               "are complete), 2 the model or the shards cannot be used.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SimpleNamespace(**field_defaults(EvaluateConfig))
    p.add_argument("--model", nargs="+", metavar="SOURCE",
                   help="model bundle: models:/NAME/VERSION or models:/NAME@ALIAS, an MLflow run id, runs:/<run_id>, a "
                        "model.pt file or a folder holding one; several: one per cross-validation fold, paired in order "
                        "with --shards")
    p.add_argument("--shards", nargs="+", metavar="MANIFEST",
                   help="manifest.json of a preprocessing run (or its folder); one per --model (a fold's own manifest)")
    p.add_argument("--sweep", metavar="NAME",
                   help="instead of --model/--shards: the point sweep NAME selected on validation, each trial's final "
                        "model on the manifest it was trained on (every fold of a cross-validation point)")
    p.add_argument("--trial", nargs="+", metavar="RUN_ID",
                   help="with --sweep: these trial runs instead of the selected point (e.g. the run ids of a row of "
                        "`distsleep compare`)")
    p.add_argument("--split", default=d.split, choices=SPLITS, help="which records (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder, created if needed")
    p.add_argument("--stride", type=int, default=d.stride,
                   help="epochs between windows, 1..sequence length (default %(default)s: each epoch averaged over every "
                        "window holding it)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per forward pass (default %(default)s)")
    p.add_argument("--n-boot", type=int, default=d.n_boot, help="bootstrap resamples for the CIs (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="bootstrap seed (default %(default)s)")
    p.add_argument("--experiment", default=d.experiment, help="MLflow experiment of the evaluation run (default %(default)s)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log an MLflow evaluation run")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_shard_safety_arguments(p)


def _models_and_shards(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The models and their manifests: as given, or the trials of a sweep (InputError naming the option at fault)."""
    if args.sweep:
        if args.model or args.shards:
            raise InputError("--sweep", "names the models and manifests itself: give it without --model/--shards")
        uri = args.tracking_uri or default_tracking_uri()
        label, trials = (None, args.trial) if args.trial else selected_trials(uri, args.sweep)
        if label:
            print(f"sweep {args.sweep}: the point selected on validation, {label} ({len(trials)} trial run(s))")
        return trial_models(uri, trials)
    if args.trial:
        raise InputError("--trial", "needs --sweep")
    if not args.model or not args.shards:
        raise InputError("--model/--shards", "give both (or --sweep)")
    if len(args.model) != len(args.shards):
        raise InputError("--model/--shards", f"{len(args.model)} models for {len(args.shards)} manifests: one manifest "
                                             "per model (a cross-validation: each fold's model and its own fold "
                                             "manifest, in the same order)")
    return args.model, args.shards


def run(args: argparse.Namespace) -> int:
    models, shards = _models_and_shards(args)
    cfg = EvaluateConfig(model=tuple(models), shards=tuple(shards), out=args.out, split=args.split, stride=args.stride,
                         batch_size=args.batch_size, n_boot=args.n_boot, seed=args.seed, experiment=args.experiment,
                         tracking_uri=args.tracking_uri, track=not args.no_tracking, address=args.address,
                         verify_shards=args.verify_shards, allow_shard_commands=args.allow_shard_commands,
                         progress=not args.no_progress, sweep=args.sweep)
    result = run_evaluation(cfg)
    print(format_summary(result))
    return 0 if result.complete and result.tracked else 1
