"""`distsleep synth`: a synthetic SHHS1-format cohort (`distsleep.synth.cohort`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from distsleep.config import field_defaults
from distsleep.metrics import format_values
from distsleep.stages import STAGE_NAMES
from distsleep.synth.cohort import CohortConfig, generate_cohort

DESCRIPTION = ("Write N synthetic nights in the NSRR SHHS1 layout: EDFs with SHHS1 channel labels and rates, NSRR XML "
               "and Profusion XML with stages and respiratory/arousal events. Deterministic per seed; records whose "
               "files already exist are skipped, so an interrupted run can be resumed.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = field_defaults(CohortConfig)
    p.add_argument("--out", required=True, help="output folder (nothing is written outside it)")
    p.add_argument("--n-records", type=int, default=d["n_records"], help="number of nights (default %(default)s)")
    p.add_argument("--hours", type=float, default=d["hours"], help="length of each night in hours (default %(default)g)")
    p.add_argument("--seed", type=int, default=d["seed"], help="cohort seed (default %(default)s)")
    p.add_argument("--ahi-median", type=float, default=d["ahi_median"],
                   help="median apnea-hypopnea index (events/h of sleep; default %(default)g ~ SHHS1; 30+ = severe-apnea cohort)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = CohortConfig(n_records=args.n_records, hours=args.hours, seed=args.seed, workers=args.workers,
                          ahi_median=args.ahi_median)
    results = generate_cohort(args.out, config, progress=not args.quiet)
    written = sum(not r["skipped"] for r in results)
    totals = {stage: sum(r["stages"][stage] for r in results) for stage in STAGE_NAMES}
    print(f"{len(results)} records in {Path(args.out).resolve()} ({written} written, {len(results) - written} already complete)")
    print("epochs per stage: " + format_values(totals))
    return 0
