"""`distsleep predict`: a model bundle on one recording (`distsleep.predict`)."""

from __future__ import annotations

import argparse
import sys

from distsleep.predict import DEFAULT_BATCH_SIZE, DEFAULT_STRIDE, PredictionError, format_summary, predict_recording

DESCRIPTION = ("Score every 30-s epoch of one recording with a model bundle. The recording goes through the bundle's own "
               "preprocessing (same channel roles, band-pass, rate; no wake trimming, so the whole night is scored); the "
               "night is cut into windows of the model's sequence length every --stride epochs and each epoch's "
               "probabilities are averaged over the windows containing it. Writes <record>_stages.csv, "
               "<record>_hypnogram.edf (EDF+ annotations, Sleep-EDF wording), <record>_hypnogram.png and "
               "<record>_input_report.json, plus <record>_metrics.json and a confusion matrix when --annotations is "
               "given. Exit status: 0 on success, 2 when the recording or the model cannot be used (e.g. a missing "
               "channel; the message names the file and the problem).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="EDF file (SHHS .edf or Sleep-EDF *-PSG.edf)")
    p.add_argument("--model", required=True, metavar="RUN_OR_BUNDLE",
                   help="model bundle: an MLflow run id, runs:/<run_id>/model/model.pt or models:/<name>/<version> (from "
                        "MLFLOW_TRACKING_URI, default ./mlflow.db), a model.pt file, or a folder holding one")
    p.add_argument("--annotations", help="NSRR/Profusion XML or Sleep-EDF *-Hypnogram.edf: adds true stages and metrics")
    p.add_argument("--out", default=".", help="output folder, created if needed (default: the current folder)")
    p.add_argument("--stride", type=int, default=DEFAULT_STRIDE,
                   help="epochs between windows, 1..sequence length (default %(default)s: every window, each epoch "
                        "averaged over up to L windows; larger is faster)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per forward pass (default %(default)s)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    try:
        result = predict_recording(args.model, args.recording, annotations=args.annotations, out_dir=args.out,
                                   stride=args.stride, batch_size=args.batch_size, device=args.device)
    except PredictionError as error:
        print(f"distsleep predict: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(result))
    return 0
