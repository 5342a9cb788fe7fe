"""`distsleep compare`: a Table-4-style comparison of runs read back from MLflow (`distsleep.tracking.compare`)."""

from __future__ import annotations

import argparse
import sys

from distsleep.config import default_tracking_uri
from distsleep.tracking import TrackingUnavailable, check_reachable, compare

DESCRIPTION = ("Read test metrics from MLflow (never recomputed) and print a table: masking ratio, pre-training accuracy, "
               "fine-tuned accuracy, macro-F1, kappa, per-class F1, kappa per test night with its 95 % CI and its paired "
               "difference to a reference run on the same nights, best values marked, and the YASA baseline when the "
               "sweep scored it. A cross-validation sweep (--folds) shows one row per point, pooling its folds' test nights "
               "from their logged confusion matrices and per-night results; a sweep over seeds (--knob seed=0,1,2) shows one row "
               "per point, the mean over its seeds ± the SD between them, selected on its mean validation value. Writes "
               "comparison.txt/.csv/.md, metrics_vs_mask_ratio.png, per_class_f1_vs_mask_ratio.png, "
               "confusion_matrices.png and paired_kappa_per_night.png to --out.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow run ids (a sweep's parent run expands to its trials)")
    p.add_argument("--sweep", help="the trials of this sweep")
    p.add_argument("--experiment", help="every run with test metrics in this MLflow experiment")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    p.add_argument("--out", default="comparison", help="output folder (default ./comparison)")
    p.add_argument("--reference", metavar="RUN_ID",
                   help="pair every run per test night with this one (a row pooled over folds or seeds: any of its "
                        "trial runs; default: the run selected on validation)")


def run(args: argparse.Namespace) -> int:
    if bool(args.sweep) + bool(args.experiment) + bool(args.run_ids) != 1:
        print("distsleep compare: error: give exactly one of --sweep NAME, --experiment NAME or RUN_IDs", file=sys.stderr)
        return 2
    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_reachable(uri)
        rows = compare.collect(uri, sweep=args.sweep, experiment=args.experiment, run_ids=args.run_ids,
                               reference=args.reference)
    except (TrackingUnavailable, compare.CompareError) as error:
        print(f"distsleep compare: error: {error}", file=sys.stderr)
        return 2
    print(compare.format_text(rows))
    files = compare.write_comparison(rows, args.out, title=args.sweep or args.experiment or "")
    print(f"written: {', '.join(str(p) for p in files.values())}")
    return 0
