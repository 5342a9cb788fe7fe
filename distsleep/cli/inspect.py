"""`distsleep inspect`: what is in a recording and what would stop it from being used (`distsleep.inspection`)."""

from __future__ import annotations

import argparse
import json
import sys

from distsleep.inspection import format_report, inspect_recording

DESCRIPTION = ("Read a recording's EDF header (and its annotation file) and report channels (label, role, rate, "
               "duration), epochs per stage, events per type, and any problem that would stop preprocessing. Exit "
               "status: 0 when usable, 1 when problems were found (listed in the report), 2 when the file cannot be "
               "read at all (the message names the file and the problem).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="EDF file (SHHS .edf or Sleep-EDF *-PSG.edf)")
    p.add_argument("--annotations", help="NSRR/Profusion XML or Sleep-EDF *-Hypnogram.edf")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    report = inspect_recording(args.recording, args.annotations)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if report["problems"]:
        print(f"distsleep inspect: {len(report['problems'])} problem(s) in {args.recording}", file=sys.stderr)
        return 1
    return 0
