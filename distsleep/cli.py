"""The `distsleep` command line: one entry point, one subcommand per stage of the data's journey.

    distsleep synth     write a synthetic SHHS1-format cohort (EDF + NSRR/Profusion XML)
    distsleep inspect   what is in a recording and what would stop it from being used
    distsleep preprocess  recordings -> WebDataset shards + manifest, one Ray task per recording
    distsleep pretrain  MC²SleepNet (or any registered model) on Ray Train + DeepSpeed, tracked in MLflow
    distsleep finetune  the fine-tuning stage from a pre-training run
    distsleep predict   score a recording with a trained model bundle (stages, hypnogram, report)
    distsleep gan       Physio-GAN: minority-stage generator (Ray Train) and synthetic training shards
    distsleep sweep     Ray Tune sweep over the masking ratio (and other knobs): pre-train, fine-tune, test
    distsleep compare   Table-4-style comparison of a sweep's trials (or any runs) from MLflow, with plots
    distsleep submit    `ray job submit` of a job, with cluster pitfalls checked before the upload

Each subcommand is a thin layer over the library; `distsleep SUBCOMMAND --help` explains its options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from distsleep.errors import InputError


def _cmd_synth(args: argparse.Namespace) -> int:
    from distsleep.synth.cohort import CohortConfig, generate_cohort

    config = CohortConfig(n_records=args.n_records, hours=args.hours, seed=args.seed, workers=args.workers,
                          ahi_median=args.ahi_median)
    results = generate_cohort(args.out, config, progress=not args.quiet)
    written = sum(not r["skipped"] for r in results)
    totals = {stage: sum(r["stages"][stage] for r in results) for stage in ("W", "N1", "N2", "N3", "REM")}
    print(f"{len(results)} records in {Path(args.out).resolve()} ({written} written, {len(results) - written} already complete)")
    print("epochs per stage: " + "  ".join(f"{k} {v}" for k, v in totals.items()))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from distsleep.inspection import format_report, inspect_recording

    report = inspect_recording(args.recording, args.annotations)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if report["problems"]:
        print(f"distsleep inspect: {len(report['problems'])} problem(s) in {args.recording}", file=sys.stderr)
        return 1
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from distsleep.config import PreprocessConfig, SplitConfig
    from distsleep.shards.pipeline import ClusterOptions, OutputConflict, format_summary, run_preprocess
    from distsleep.store import CredentialsInLocation

    from distsleep.config import CHANNEL_SETS

    channels = tuple(c for part in args.channels for c in part.split(",") if c)
    recipe = args.filter_recipe
    if args.channel_set:
        if channels:
            print("distsleep preprocess: error: give --channels or --channel-set, not both", file=sys.stderr)
            return 2
        channels = CHANNEL_SETS[args.channel_set][args.source]
        recipe = recipe or "synthsleepnet"  # the multimodal set is filtered per modality unless told otherwise
    channels = channels or (("eeg_c4",) if args.source == "shhs" else ("eeg_fpz_cz",))
    config = PreprocessConfig(
        source=args.source, channels=channels, target_rate=args.target_rate,
        bandpass=tuple(args.bandpass) if args.bandpass else None, trim_wake_minutes=args.trim_wake,
        filter_recipe=None if recipe in (None, "none") else recipe,
    )
    try:
        split = SplitConfig(n_val=args.n_val, train_fraction=args.train_fraction, seed=args.split_seed, subset=args.subset,
                            visits=tuple(args.visit), allow_missing_split_ids=args.allow_missing_split_ids,
                            split_file=str(Path(args.split_file).resolve()) if args.split_file else None)
    except ValueError as error:
        print(f"distsleep preprocess: error: {error}", file=sys.stderr)
        return 2
    cluster = ClusterOptions(address=args.address, cpus_per_task=args.cpus_per_task,
                             memory_per_task_mb=args.memory_mb, max_retries=args.max_retries)
    try:
        result = run_preprocess(args.root, args.out, config, split, limit=args.limit, cluster=cluster,
                                progress=not args.quiet, overwrite=args.overwrite)
    except (OutputConflict, CredentialsInLocation, OSError) as error:  # OSError: --root or --out unusable
        print(f"distsleep preprocess: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(result, args.out))
    if len(result.failures) > args.max_failures:
        print(f"distsleep preprocess: {len(result.failures)} recording(s) failed (allowed: {args.max_failures}); "
              "see failures.jsonl", file=sys.stderr)
        return 1
    return 0


def add_preprocess_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=("shhs", "sleep-edf"), default="shhs", help="dataset layout (default shhs)")
    p.add_argument("--root", required=True, help="dataset folder (SHHS: holds polysomnography/; Sleep-EDF: the *-PSG.edf files)")
    p.add_argument("--out", required=True, help="output folder or object-store prefix (s3://bucket/prefix) for shards/, "
                   "records/, manifest.json, failures.jsonl")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset in --out that was made with another preprocessing or split config "
                        "(refused otherwise)")
    p.add_argument("--channels", nargs="+", default=[], metavar="ROLE",
                   help="channel roles to store, e.g. eeg_c4 eog_l emg (default: the staging EEG, eeg_c4 / eeg_fpz_cz)")
    p.add_argument("--channel-set", choices=("multimodal",),
                   help="a named channel set: multimodal = EEG C4-A1, EEG C3-A2, EOG L/R, chin EMG, ECG, airflow "
                        "(Sleep-EDF: Fpz-Cz, Pz-Oz, EOG, EMG), band-passed per modality as SynthSleepNet does")
    p.add_argument("--filter-recipe", choices=("synthsleepnet", "none"),
                   help="per-channel band-passes: synthsleepnet = EEG/EOG 0.5-40, ECG 3-30, EMG 25-49, airflow 0.05-1 Hz "
                        "(default with --channel-set multimodal; none = no per-channel filter)")
    p.add_argument("--subset", choices=("all", "shhs-5791", "shhs-5463"), default="all",
                   help="shhs-5791: readable SHHS1 records with C4-A1 and scored stages; shhs-5463: those containing all "
                        "five stages (both SHHS1 only)")
    p.add_argument("--visit", nargs="+", default=[], metavar="VISIT",
                   help="keep only these visits, e.g. shhs1 (NSRR: the record id before the nsrrid; Sleep-EDF: night1, "
                        "night2); default all. Splits are by person: all visits of one nsrrid go to the same split")
    p.add_argument("--limit", type=int, help="only the first N recordings (sorted by id)")
    p.add_argument("--target-rate", type=float, default=100.0, help="Hz (default 100)")
    p.add_argument("--bandpass", type=float, nargs=2, metavar=("LOW", "HIGH"), help="zero-phase band-pass in Hz, e.g. 0.3 40")
    p.add_argument("--trim-wake", type=float, metavar="MIN", help="keep MIN minutes of wake around the sleep period (e.g. 30)")
    p.add_argument("--n-val", type=int, default=100, help="validation subjects (default 100; small cohorts get at most 10%%)")
    p.add_argument("--train-fraction", type=float, default=0.7, help="train share of the non-validation subjects (default 0.7)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the subject-wise split (each person's side comes from a hash of their own id, so "
                        "adding or removing people never moves anyone between train and test)")
    p.add_argument("--split-file", metavar="FILE",
                   help="a published split instead: JSON {\"train\": [...], \"val\": [...], \"test\": [...]} or lines "
                        "'ID SPLIT'; IDs are record ids (shhs1-200001) or subject ids (200001). Records it does not "
                        "name are left out; the manifest records the file and its sha256")
    p.add_argument("--allow-missing-split-ids", action="store_true",
                   help="accept a split file naming ids the cohort lacks (they are listed in the manifest) instead "
                        "of refusing it")
    p.add_argument("--max-failures", type=int, default=0, help="exit 0 despite up to N failed recordings (default 0)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs reserved per recording task")
    p.add_argument("--memory-mb", type=int, default=1500, help="memory reserved per recording task (MB)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a task whose worker process died")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_train(args: argparse.Namespace) -> int:
    from distsleep.train.cli_args import config_from_args, run_job
    from distsleep.train.launch import run_training

    stage = "finetune" if args.command == "finetune" else None
    try:
        config = config_from_args(args, stage=stage)
    except ValueError as error:  # e.g. a global batch that does not divide over the workers
        print(f"distsleep {args.command}: error: {error}", file=sys.stderr)
        return 2
    outcome, status = run_job(f"distsleep {args.command}", lambda: run_training(config, address=args.address))
    if status:
        return status
    m = outcome.metrics
    keys = ("test_accuracy", "test_macro_f1", "test_kappa", "test_f1_positive", "test_auroc", "test_majority_accuracy")
    summary = "  ".join(f"{k.removeprefix('test_')} {m[k]:.3f}" for k in keys if k in m)
    per_class = "  ".join(f"{s} {m[f'test_f1_{s}']:.2f}" for s in ("W", "N1", "N2", "N3", "REM") if f"test_f1_{s}" in m)
    print(f"{'resumed and finished' if outcome.resumed else 'finished'} run {config.name!r} ({config.task}): test {summary}")
    if per_class:
        print(f"  test F1 per stage: {per_class}")
    print(f"checkpoints: {outcome.storage} (best: {outcome.best_checkpoint})")
    print(f"MLflow run {outcome.run_id} in {outcome.tracking_uri} (experiment {config.experiment!r}); "
          f"model bundle: runs:/{outcome.run_id}/model/model.pt")
    return 0


def _parse_knobs(items: list[str]) -> dict:
    from distsleep.train.cli_args import parse_value

    knobs = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise argparse.ArgumentTypeError(f"--knob expects NAME=V1,V2,..., got {item!r}")
        knobs[key] = [parse_value(value) for value in values.split(",")]
    return knobs


def _cmd_sweep(args: argparse.Namespace) -> int:
    from distsleep.sweep.config import PAPER_MASK_RATIOS, SweepConfig
    from distsleep.sweep.run import run_sweep
    from distsleep.train.cli_args import config_from_args
    from distsleep.train.launch import LaunchError
    from distsleep.tracking import TrackingUnavailable

    try:
        train = config_from_args(args, stage="pretrain")
        ratios = tuple(args.mask_ratios) if args.mask_ratios else PAPER_MASK_RATIOS
        config = SweepConfig(
            name=args.name or "mask-ratio-sweep", train=train, mask_ratios=ratios, knobs=_parse_knobs(args.knob),
            search=args.search, num_samples=args.num_samples, mask_ratio_range=tuple(args.mask_ratio_range),
            finetune=not args.no_finetune, finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
            scheduler=args.scheduler, asha_grace=args.asha_grace, asha_reduction=args.asha_reduction,
            max_concurrent_trials=args.max_concurrent_trials, baseline=not args.no_baseline,
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
    return 1 if counts["failed"] else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from distsleep.sweep import compare
    from distsleep.tracking import TrackingUnavailable, check_reachable
    from distsleep.train.config import default_tracking_uri

    if bool(args.sweep) + bool(args.experiment) + bool(args.run_ids) != 1:
        print("distsleep compare: error: give exactly one of --sweep NAME, --experiment NAME or RUN_IDs", file=sys.stderr)
        return 2
    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_reachable(uri)
        rows = compare.collect(uri, sweep=args.sweep, experiment=args.experiment, run_ids=args.run_ids)
    except (TrackingUnavailable, compare.CompareError) as error:
        print(f"distsleep compare: error: {error}", file=sys.stderr)
        return 2
    print(compare.format_text(rows))
    files = compare.write_comparison(rows, args.out, title=args.sweep or args.experiment or "")
    print(f"written: {', '.join(str(p) for p in files.values())}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from distsleep.cluster.submit import SubmitError, submit

    entrypoint = list(args.entrypoint)
    if entrypoint[:1] == ["--"]:
        entrypoint = entrypoint[1:]
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"distsleep submit: error: --env expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        env[key] = value
    try:
        return submit(entrypoint, address=args.address, working_dir=args.working_dir, env=env, wait=not args.no_wait)
    except SubmitError as error:
        print(f"distsleep submit: error: {error}", file=sys.stderr)
        return 2


def _cmd_predict(args: argparse.Namespace) -> int:
    from distsleep.predict import PredictionError, format_summary, predict_recording

    try:
        result = predict_recording(args.model, args.recording, annotations=args.annotations, out_dir=args.out,
                                   stride=args.stride, batch_size=args.batch_size, device=args.device)
    except PredictionError as error:
        print(f"distsleep predict: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distsleep",
        description="Distributed training of sleep-staging foundation models on PSG recordings.",
        epilog="Run `distsleep SUBCOMMAND --help` for the options of each subcommand.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser(
        "synth",
        help="write a synthetic SHHS1-format cohort",
        description="Write N synthetic nights in the NSRR SHHS1 layout: EDFs with SHHS1 channel labels and "
        "rates, NSRR XML and Profusion XML with stages and respiratory/arousal events. Deterministic per "
        "seed; records whose files already exist are skipped, so an interrupted run can be resumed.",
    )
    p.add_argument("--out", required=True, help="output folder (nothing is written outside it)")
    p.add_argument("--n-records", type=int, default=4, help="number of nights (default 4)")
    p.add_argument("--hours", type=float, default=8.0, help="length of each night in hours (default 8)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--ahi-median", type=float, default=8.0,
                   help="median apnea-hypopnea index (events/h of sleep; default 8 ~ SHHS1; 30+ = severe-apnea cohort)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "inspect",
        help="show channels, stages, events and problems of a recording",
        description="Read a recording's EDF header (and its annotation file) and report channels (label, "
        "role, rate, duration), epochs per stage, events per type, and any problem that would stop "
        "preprocessing. Exit status: 0 when usable, 1 when problems were found (listed in the report), 2 when "
        "the file cannot be read at all (the message names the file and the problem).",
    )
    p.add_argument("recording", help="EDF file (SHHS .edf or Sleep-EDF *-PSG.edf)")
    p.add_argument("--annotations", help="NSRR/Profusion XML or Sleep-EDF *-Hypnogram.edf")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "preprocess",
        help="convert a dataset to WebDataset shards on a Ray cluster",
        description="One Ray task per recording: read the chosen channels at native rates, optionally "
        "band-pass, resample to the target rate, cut into 30-s epochs, and write one WebDataset tar per "
        "recording plus manifest.json (splits, counts, hashes) and failures.jsonl. Reruns skip finished "
        "recordings; the same inputs and config give byte-identical shards.",
    )
    add_preprocess_arguments(p)
    p.set_defaults(func=_cmd_preprocess)

    from distsleep.train.cli_args import add_train_arguments

    for name, summary in (("pretrain", "pre-train (or fine-tune with --stage finetune) on Ray Train + DeepSpeed"),
                          ("finetune", "fine-tune from a pre-training run: frozen backbones, no masking")):
        p = sub.add_parser(
            name, help=summary,
            description=f"{summary[0].upper() + summary[1:]}. One DeepSpeed engine per Ray Train worker, shards "
            "streamed from the manifest, validation + checkpoint every --val-every steps, early stopping, test "
            "evaluation of the best checkpoint, everything logged to MLflow (rank 0). Relaunching the same --name "
            "resumes from its latest checkpoint.",
        )
        add_train_arguments(p, stage="finetune" if name == "finetune" else None)
        p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "sweep", help="Ray Tune sweep over the masking ratio: pre-train, fine-tune, test per trial",
        description="A Ray Tune sweep like Table 4 of the MC²SleepNet paper. Each trial pre-trains with its masking "
        "ratio (and other --knob values), fine-tunes from its own best checkpoint, and evaluates the test records; "
        "validation metrics reach Tune (ASHA can stop lagging trials). MLflow: a parent run for the sweep, a child "
        "run per trial, the stage runs below it; at the end the comparison table and plots, and YASA scored on the "
        "same test records, are logged to the parent. Relaunching the same --name resumes the sweep: finished "
        "trials are kept, unfinished ones resume from their checkpoints.",
    )
    add_train_arguments(p, stage="pretrain")
    g = p.add_argument_group("sweep")
    g.add_argument("--mask-ratios", type=float, nargs="+", metavar="R",
                   help="masking ratios to try (default: the paper's 0 .15 .25 .30 .40 .50 .60 .70 .75 .85)")
    g.add_argument("--knob", nargs="+", default=[], metavar="NAME=V1,V2",
                   help="more knobs crossed with the ratios: a training option (lr, seed, batch_size ...) or a model "
                   "config field (infonce_temperature ...), e.g. --knob seed=0,1 infonce_temperature=0.07,0.2")
    g.add_argument("--search", choices=("grid", "random"), default="grid",
                   help="grid: every combination; random: --num-samples trials, ratio uniform in --mask-ratio-range")
    g.add_argument("--num-samples", type=int, default=1, help="grid: repetitions of the grid; random: trials")
    g.add_argument("--mask-ratio-range", type=float, nargs=2, default=(0.0, 0.85), metavar=("LOW", "HIGH"))
    g.add_argument("--no-finetune", action="store_true", help="pre-training only (no fine-tuning stage)")
    g.add_argument("--finetune-steps", type=int, help="fine-tuning steps (default: --max-steps)")
    g.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate (default: --lr)")
    g.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo", help="asha: stop trials that lag at a rung")
    g.add_argument("--asha-grace", type=int, default=1, help="validations a trial gets before ASHA may stop it")
    g.add_argument("--asha-reduction", type=float, default=2.0, help="ASHA reduction factor")
    g.add_argument("--max-concurrent-trials", type=int, help="default: as many as the cluster's resources hold")
    g.add_argument("--no-baseline", action="store_true", help="do not score YASA on the test records")
    g.add_argument("--out", help="folder for the comparison files (default: a temporary folder; they are logged to MLflow)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "gan", help="Physio-GAN: train a minority-stage generator, write synthetic training shards",
        description="ISATSleepNet's Physio-GAN. `gan train` learns the target stage(s) (N1 by default) from the "
        "training records of a manifest on Ray Train (spectral and amplitude constraints, PSD comparison logged to "
        "MLflow); `gan augment` writes generated epochs as marked shards plus augmentation.json, which "
        "`pretrain/finetune --augment-shards` add to the training stream only; `gan effect` trains a model with and "
        "without them and compares per-class F1.",
    )
    from distsleep.gan.cli import add_gan_commands

    add_gan_commands(p.add_subparsers(dest="gan_command", required=True, metavar="{train,augment,effect}"))

    p = sub.add_parser(
        "compare", help="compare runs from MLflow: Table-4-style table (text, CSV, Markdown) and plots",
        description="Read test metrics from MLflow (never recomputed) and print a table: masking ratio, pre-training "
        "accuracy, fine-tuned accuracy, macro-F1, kappa, per-class F1, best values marked, and the YASA baseline "
        "when the sweep scored it. Writes comparison.txt/.csv/.md, metrics_vs_mask_ratio.png, "
        "per_class_f1_vs_mask_ratio.png and confusion_matrices.png to --out.",
    )
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow run ids (a sweep's parent run expands to its trials)")
    p.add_argument("--sweep", help="the trials of this sweep")
    p.add_argument("--experiment", help="every run with test metrics in this MLflow experiment")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    p.add_argument("--out", default="comparison", help="output folder (default ./comparison)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "submit", help="ray job submit, with cluster pitfalls checked before the upload",
        description="Submit a job to a Ray cluster (`ray job submit`) after checking the working dir's upload size, that "
        "the entrypoint exists, and that path options are absolute or URLs (relative paths would resolve inside each "
        "node's copy of the working dir). MLFLOW_TRACKING_URI from this shell (or --env) travels in the runtime env. "
        "Example: distsleep submit --address http://127.0.0.1:8265 -- python jobs/pretrain.py --shards /shared/shards ...",
    )
    p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS"),
                   help="Ray dashboard address (default $RAY_DASHBOARD_ADDRESS, else ray's own default, $RAY_ADDRESS)")
    p.add_argument("--working-dir", default=".", help="folder uploaded to the cluster (default .)")
    p.add_argument("--env", nargs="+", default=[], metavar="KEY=VALUE", help="extra environment variables for the job")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- python jobs/....py [options]")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser(
        "predict",
        help="score a recording with a trained model: stages, hypnogram, input report",
        description="Score every 30-s epoch of one recording with a model bundle. The recording goes through the "
        "bundle's own preprocessing (same channel roles, band-pass, rate; no wake trimming, so the whole night is "
        "scored); the night is cut into windows of the model's sequence length every --stride epochs and each "
        "epoch's probabilities are averaged over the windows containing it. Writes <record>_stages.csv, "
        "<record>_hypnogram.edf (EDF+ annotations, Sleep-EDF wording), <record>_hypnogram.png and "
        "<record>_input_report.json, plus <record>_metrics.json and a confusion matrix when --annotations is "
        "given. Exit status: 0 on success, 2 when the recording or the model cannot be used (e.g. a missing "
        "channel; the message names the file and the problem).",
    )
    p.add_argument("recording", help="EDF file (SHHS .edf or Sleep-EDF *-PSG.edf)")
    p.add_argument("--model", required=True, metavar="RUN_OR_BUNDLE",
                   help="model bundle: an MLflow run id, runs:/<run_id>/model/model.pt (from MLFLOW_TRACKING_URI, "
                   "default ./mlflow.db), a model.pt file, or a folder holding one")
    p.add_argument("--annotations", help="NSRR/Profusion XML or Sleep-EDF *-Hypnogram.edf: adds true stages and metrics")
    p.add_argument("--out", default=".", help="output folder, created if needed (default: the current folder)")
    p.add_argument("--stride", type=int, default=1,
                   help="epochs between windows, 1..sequence length (default 1: every window, each epoch averaged "
                   "over up to L windows; larger is faster)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass (default 64)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as error:
        print(f"distsleep {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
