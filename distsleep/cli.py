"""The `distsleep` command line: one entry point, one subcommand per stage of the data's journey.

    distsleep synth     write a synthetic SHHS1-format cohort (EDF + NSRR/Profusion XML)
    distsleep inspect   what is in a recording and what would stop it from being used
    distsleep preprocess  recordings -> WebDataset shards + manifest, one Ray task per recording
    distsleep pretrain  MC²SleepNet (or any registered model) on Ray Train + DeepSpeed, tracked in MLflow
    distsleep finetune  the fine-tuning stage from a pre-training run
    distsleep predict   score a recording with a trained model bundle (stages, hypnogram, report)

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

    config = CohortConfig(n_records=args.n_records, hours=args.hours, seed=args.seed, workers=args.workers)
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
    from distsleep.shards.pipeline import ClusterOptions, format_summary, run_preprocess

    channels = tuple(c for part in args.channels for c in part.split(",") if c) or (
        ("eeg_c4",) if args.source == "shhs" else ("eeg_fpz_cz",))
    config = PreprocessConfig(
        source=args.source, channels=channels, target_rate=args.target_rate,
        bandpass=tuple(args.bandpass) if args.bandpass else None, trim_wake_minutes=args.trim_wake,
    )
    split = SplitConfig(n_val=args.n_val, train_fraction=args.train_fraction, seed=args.split_seed, subset=args.subset)
    cluster = ClusterOptions(address=args.address, cpus_per_task=args.cpus_per_task,
                             memory_per_task_mb=args.memory_mb, max_retries=args.max_retries)
    result = run_preprocess(args.root, args.out, config, split, limit=args.limit, cluster=cluster, progress=not args.quiet)
    print(format_summary(result, Path(args.out).resolve()))
    if len(result.failures) > args.max_failures:
        print(f"distsleep preprocess: {len(result.failures)} recording(s) failed (allowed: {args.max_failures}); "
              "see failures.jsonl", file=sys.stderr)
        return 1
    return 0


def add_preprocess_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=("shhs", "sleep-edf"), default="shhs", help="dataset layout (default shhs)")
    p.add_argument("--root", required=True, help="dataset folder (SHHS: holds polysomnography/; Sleep-EDF: the *-PSG.edf files)")
    p.add_argument("--out", required=True, help="output folder for shards/, manifest.json, failures.jsonl")
    p.add_argument("--channels", nargs="+", default=[], metavar="ROLE",
                   help="channel roles to store, e.g. eeg_c4 eog_l emg (default: the staging EEG, eeg_c4 / eeg_fpz_cz)")
    p.add_argument("--subset", choices=("all", "shhs-5791", "shhs-5463"), default="all",
                   help="shhs-5791: readable records with C4-A1 and scored stages; shhs-5463: those containing all five stages")
    p.add_argument("--limit", type=int, help="only the first N recordings (sorted by id)")
    p.add_argument("--target-rate", type=float, default=100.0, help="Hz (default 100)")
    p.add_argument("--bandpass", type=float, nargs=2, metavar=("LOW", "HIGH"), help="zero-phase band-pass in Hz, e.g. 0.3 40")
    p.add_argument("--trim-wake", type=float, metavar="MIN", help="keep MIN minutes of wake around the sleep period (e.g. 30)")
    p.add_argument("--n-val", type=int, default=100, help="validation subjects (default 100; small cohorts get at most 10%%)")
    p.add_argument("--train-fraction", type=float, default=0.7, help="train share of the non-validation subjects (default 0.7)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the subject-wise split")
    p.add_argument("--max-failures", type=int, default=0, help="exit 0 despite up to N failed recordings (default 0)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs reserved per recording task")
    p.add_argument("--memory-mb", type=int, default=1500, help="memory reserved per recording task (MB)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a task whose worker process died")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_train(args: argparse.Namespace) -> int:
    from distsleep.train.cli_args import config_from_args
    from distsleep.train.launch import LaunchError, run_training
    from distsleep.tracking import TrackingUnavailable

    stage = "finetune" if args.command == "finetune" else None
    config = config_from_args(args, stage=stage)
    try:
        outcome = run_training(config, address=args.address)
    except (LaunchError, TrackingUnavailable) as error:
        print(f"distsleep {args.command}: error: {error}", file=sys.stderr)
        return 2
    m = outcome.metrics
    summary = "  ".join(f"{k.removeprefix('test_')} {m[k]:.3f}" for k in ("test_accuracy", "test_macro_f1", "test_kappa") if k in m)
    per_class = "  ".join(f"{s} {m[f'test_f1_{s}']:.2f}" for s in ("W", "N1", "N2", "N3", "REM") if f"test_f1_{s}" in m)
    print(f"{'resumed and finished' if outcome.resumed else 'finished'} run {config.name!r}: test {summary}")
    if per_class:
        print(f"  test F1 per stage: {per_class}")
    print(f"checkpoints: {outcome.storage} (best: {outcome.best_checkpoint})")
    print(f"MLflow run {outcome.run_id} in {outcome.tracking_uri} (experiment {config.experiment!r}); "
          f"model bundle: runs:/{outcome.run_id}/model/model.pt")
    return 0


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
