"""The `distsleep` command line: one entry point, one subcommand per stage of the data's journey.

    distsleep synth     write a synthetic SHHS1-format cohort (EDF + NSRR/Profusion XML)
    distsleep inspect   what is in a recording and what would stop it from being used

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
