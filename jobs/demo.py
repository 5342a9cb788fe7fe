"""The main job on the embedded default: a demo cohort, end to end, on one machine.

Stages so far: generate a synthetic SHHS1-format cohort, then read every record back through the same
readers real SHHS goes through and report what a user would check before preprocessing. (Later stages
of the pipeline — shards, pretraining, sweeps — extend this job as they land.)

    python jobs/demo.py [--workdir demo] [--n-records 4] [--hours 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the embedded cluster is local to this job

from distsleep.config import PreprocessConfig, SplitConfig  # noqa: E402
from distsleep.inspection import inspect_recording  # noqa: E402
from distsleep.shards.pipeline import format_summary, run_preprocess  # noqa: E402
from distsleep.sources.shhs import find_shhs_pairs, load_shhs_record  # noqa: E402
from distsleep.stages import STAGE_NAMES  # noqa: E402
from distsleep.synth.cohort import CohortConfig, generate_cohort  # noqa: E402

DEMO_ROLES = ("eeg_c4", "eeg_c3", "eog_l", "eog_r", "emg", "ecg", "airflow", "sao2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="demo", help="where the cohort (and later shards, runs) go (default ./demo)")
    parser.add_argument("--n-records", type=int, default=4, help="nights in the demo cohort (default 4)")
    parser.add_argument("--hours", type=float, default=2.0, help="hours per night (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    cohort = workdir / "cohort"
    t0 = time.perf_counter()
    print(f"[1/3] synthetic SHHS1 cohort -> {cohort}")
    generate_cohort(cohort, CohortConfig(n_records=args.n_records, hours=args.hours, seed=args.seed, workers=os.cpu_count() or 1))

    print(f"[2/3] reading the cohort back ({', '.join(DEMO_ROLES)})")
    failures = 0
    totals = dict.fromkeys(STAGE_NAMES, 0)
    for record_id, edf, xml in find_shhs_pairs(cohort):
        report = inspect_recording(edf, xml)
        record = load_shhs_record(edf, xml, roles=DEMO_ROLES, record_id=record_id)
        rates = ", ".join(f"{ch.label} {ch.rate:g} Hz" for ch in record.channels.values())
        counts = record.stage_counts()
        for stage in STAGE_NAMES:
            totals[stage] += counts[stage]
        events = record.event_counts()
        print(f"  {record_id}: {record.n_epochs} epochs, {rates}")
        print(f"    stages {counts}  events {events}")
        if report["problems"]:
            failures += 1
            print(f"    problems: {report['problems']}")
    print(f"cohort total epochs per stage: {totals}")

    shards = workdir / "shards"
    print(f"[3/3] preprocessing on Ray -> {shards}")
    result = run_preprocess(cohort, shards, PreprocessConfig(), SplitConfig(seed=args.seed))
    print(format_summary(result, shards))
    failures += len(result.failures)
    print(f"done in {time.perf_counter() - t0:.0f} s; {failures} record(s) with problems; data in {workdir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
