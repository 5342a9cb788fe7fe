"""`distsleep predict`: a model bundle on one recording (`distsleep.predict`) or on many (`distsleep.predict_many`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distsleep.predict import DEFAULT_BATCH_SIZE, DEFAULT_STRIDE, PredictionError, format_summary, predict_recording
from distsleep.predict_many import PredictManyConfig, format_many, predict_nights
from distsleep.sources.channel_map import read_channel_map
from distsleep.sources.montages import NSRR_COHORTS

DESCRIPTION = ("Score every 30-s epoch of recordings with a model bundle. Each recording goes through the bundle's own "
               "preprocessing (same channel roles, band-pass, rate; no wake trimming, so the whole night is scored); the "
               "night is cut into windows of the model's sequence length every --stride epochs and each epoch's "
               "probabilities are averaged over the windows containing it. Writes <record>_stages.csv, "
               "<record>_hypnogram.edf (EDF+ annotations, Sleep-EDF wording), <record>_hypnogram.png and "
               "<record>_input_report.json, plus <record>_metrics.json and a confusion matrix when annotations are "
               "known. One recording file is scored here; several files, folders (searched for *.edf), glob patterns "
               "or a --list file are scored as one Ray task per night (GPU tasks when the cluster has GPUs), their "
               "annotations found beside them (NSRR or Sleep-EDF layout), and cohort_summary.csv lists every night: "
               "sleep statistics, confidence, input problems, or why it failed. NSRR nights are read through their "
               "cohort's channel table (--cohort, else the file name's); a label that differs between cohorts (MESA "
               "EEG1 is Fz-Cz, not C4-A1) needs --cohort or --channel-map. predictions.json records the model and "
               "settings of --out's predictions; another model's are not mixed in (--overwrite replaces them), and "
               "a night that fails leaves no earlier outputs. Exit status: 0 every night scored, 1 some "
               "nights failed (the others are done), 2 nothing could be scored (the message names the file and the "
               "problem).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recordings", nargs="*", metavar="RECORDING",
                   help="EDF files (NSRR .edf or Sleep-EDF *-PSG.edf), folders holding them, or glob patterns (quoted)")
    p.add_argument("--list", dest="list_file", metavar="FILE",
                   help="a text file of nights, one 'recording[,annotations]' per line (paths relative to the file)")
    p.add_argument("--model", required=True, metavar="SOURCE",
                   help="model bundle: models:/NAME/VERSION or models:/NAME@ALIAS, an MLflow run id or runs:/<run_id> "
                        "(from MLFLOW_TRACKING_URI, default ./mlflow.db), a model.pt file, or a folder holding one")
    p.add_argument("--annotations", help="one recording only: NSRR/Profusion XML or Sleep-EDF *-Hypnogram.edf (adds true "
                                         "stages and metrics)")
    p.add_argument("--no-find-annotations", action="store_true",
                   help="several nights: do not look for annotation files beside the recordings")
    p.add_argument("--cohort", choices=NSRR_COHORTS, help="NSRR cohort whose channel labels apply (default: from the file name)")
    p.add_argument("--channel-map", metavar="FILE",
                   help="luna-style alias file, lines 'role|label|label...' (e.g. eeg_c4|EEG3), tried before the tables")
    p.add_argument("--out", default=".", help="output folder, created if needed (default: the current folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="first remove the predictions already in --out (every <record>_* file predict writes, "
                        "cohort_summary.csv, predictions.json); without it, a folder holding another model's predictions "
                        "(or ones made with another --stride, --cohort or --channel-map) is refused")
    p.add_argument("--stride", type=int, default=DEFAULT_STRIDE,
                   help="epochs between windows, 1..sequence length (default %(default)s: every window, each epoch "
                        "averaged over up to L windows; larger is faster)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per forward pass (default %(default)s)")
    p.add_argument("--device", help="one recording: torch device, e.g. cpu or cuda (default: cuda when available)")
    p.add_argument("--address", help="several nights: Ray cluster address (default $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _one_file(args: argparse.Namespace) -> bool:
    return len(args.recordings) == 1 and not args.list_file and Path(args.recordings[0]).is_file()


def run(args: argparse.Namespace) -> int:
    channel_map = read_channel_map(args.channel_map) if args.channel_map else None
    if not args.recordings and not args.list_file:
        print("distsleep predict: error: give recordings (files, folders, patterns) or --list FILE", file=sys.stderr)
        return 2
    if _one_file(args):
        try:
            result = predict_recording(args.model, args.recordings[0], annotations=args.annotations, out_dir=args.out,
                                       stride=args.stride, batch_size=args.batch_size, device=args.device,
                                       cohort=args.cohort, channel_map=channel_map, overwrite=args.overwrite)
        except PredictionError as error:
            print(f"distsleep predict: error: {error}", file=sys.stderr)
            return 2
        print(format_summary(result))
        return 0
    if args.device:
        print("distsleep predict: error: --device goes with one recording; several nights run as Ray tasks that each "
              "take a GPU when the cluster has one, else a CPU", file=sys.stderr)
        return 2
    if args.annotations:
        print("distsleep predict: error: --annotations goes with one recording; for several, annotations are found "
              "beside them or named in --list", file=sys.stderr)
        return 2
    cfg = PredictManyConfig(model=args.model, inputs=tuple(args.recordings), list_file=args.list_file, out=args.out,
                            find_annotations=not args.no_find_annotations, stride=args.stride, batch_size=args.batch_size,
                            cohort=args.cohort, channel_map=channel_map, address=args.address,
                            progress=not args.no_progress, overwrite=args.overwrite)
    try:
        result = predict_nights(cfg)
    except PredictionError as error:
        print(f"distsleep predict: error: {error}", file=sys.stderr)
        return 2
    print(format_many(result))
    if len(result.failed) == len(result.rows):
        return 2
    return 1 if result.failed else 0
