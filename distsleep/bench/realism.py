"""`jobs/benchmark.py synth-realism`: YASA's pretrained stager (trained on real NSRR nights) on a synthetic
cohort against the cohort's own ground truth, with the realism bar (`distsleep.synth.realism.RealismBar`).

`run` is the subcommand (`add_arguments` its options); the scoring itself is `distsleep.synth.realism`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from distsleep.metrics import format_confusion, format_values
from distsleep.synth.cohort import CohortConfig, generate_cohort
from distsleep.synth.realism import RealismBar, score_cohort


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="distsleep-realism-") as scratch:
        root = Path(args.cohort) if args.cohort else Path(scratch)
        if not args.cohort:
            t0 = time.perf_counter()
            generate_cohort(root, CohortConfig(n_records=args.n_records, hours=args.hours, seed=args.seed, workers=args.workers))
            print(f"generated {args.n_records} nights of {args.hours} h in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        result = score_cohort(root, workers=args.workers)
        print(f"scored {result['n_records']} nights with YASA in {time.perf_counter() - t0:.0f} s\n")

    bar = RealismBar()
    for name, title in (("eeg_eog_emg", "YASA EEG+EOG+EMG"), ("eeg_only", "YASA EEG alone")):
        m = result[name]
        f1 = format_values(m["f1"], ".3f")
        print(f"{title}: kappa {m['kappa']:.3f}  accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  ({m['n_epochs']} epochs)")
        print(f"  per-stage F1: {f1}")
        print("  " + format_confusion(m["confusion"]).replace("\n", "\n  ") + "\n")
    kappas = result["per_record_kappa"]
    print(f"per-night kappa (EEG+EOG+EMG): min {min(kappas):.3f}  median {sorted(kappas)[len(kappas) // 2]:.3f}  max {max(kappas):.3f}")
    failures = bar.failures(result["eeg_eog_emg"])
    print(f"realism bar (kappa {bar.kappa}, every F1 {bar.f1}, N1 lowest): " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 1 if failures and args.check else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-records", type=int, default=20, help="nights to generate (default 20)")
    p.add_argument("--hours", type=float, default=8.0, help="hours per night (default 8)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for generation and scoring")
    p.add_argument("--cohort", help="score an existing SHHS-layout cohort instead of generating one")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--check", action="store_true", help="exit 1 when the cohort falls outside the realism bar")
