"""The main job on the embedded default: a demo cohort, end to end, on one machine.

    1. generate a synthetic SHHS1 cohort (EDF + NSRR/Profusion XML)
    2. read every record back through the SHHS readers (what `distsleep inspect` checks)
    3. preprocess it into WebDataset shards on an embedded Ray cluster (one task per recording)
    4. pre-train MC²SleepNet on Ray Train + DeepSpeed (2 workers, CPU/gloo), tracked in MLflow
    5. fine-tune from the pre-training run (frozen backbones, no masking) and evaluate on test records
    6. predict one test night from the fine-tuned model bundle (CSV, EDF+ hypnogram, PNG)

Everything lands under --workdir; MLflow writes to $MLFLOW_TRACKING_URI or WORKDIR/mlflow.db. The model
is the small preset so the job finishes in a few minutes on a laptop CPU; on a GPU cluster use
jobs/pretrain.py with the paper-size model. The console shows our progress and figures; Ray Train's,
DeepSpeed's and MLflow's own messages stay in Ray's log files unless --verbose.

    python jobs/demo.py [--workdir demo] [--n-records 6] [--hours 2] [--steps 150] [--verbose]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from distsleep.runtime import configure_console, secure_local_ray  # noqa: E402

secure_local_ray()  # the embedded cluster: token auth on, servers on 127.0.0.1

from distsleep.config import PreprocessConfig, SplitConfig  # noqa: E402
from distsleep.inspection import inspect_recording  # noqa: E402
from distsleep.metrics import format_values  # noqa: E402
from distsleep.predict import predict_recording  # noqa: E402
from distsleep.shards.pipeline import format_summary, run_preprocess  # noqa: E402
from distsleep.sources.shhs import find_shhs_pairs, load_shhs_record  # noqa: E402
from distsleep.stages import STAGE_NAMES  # noqa: E402
from distsleep.synth.cohort import CohortConfig, generate_cohort  # noqa: E402
from distsleep.train.config import TrainConfig  # noqa: E402
from distsleep.train.launch import run_training  # noqa: E402

DEMO_ROLES = ("eeg_c4", "eeg_c3", "eog_l", "eog_r", "emg", "ecg", "airflow", "sao2")


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/6] {text}", flush=True)


def _report(outcome, label: str) -> None:
    m = outcome.metrics
    f1 = format_values([(s, m.get(f"test_f1_{s}", float("nan"))) for s in STAGE_NAMES], ".2f")
    if not outcome.trained:
        label += " (already finished in this --workdir; not trained again)"
    print(f"{label}: test accuracy {m['test_accuracy']:.3f}  macro-F1 {m['test_macro_f1']:.3f}  "
          f"kappa {m['test_kappa']:.3f}  |  F1 {f1}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="demo", help="where cohort, shards, runs and predictions go (default ./demo)")
    parser.add_argument("--n-records", type=int, default=6, help="nights in the demo cohort (default 6)")
    parser.add_argument("--hours", type=float, default=2.0, help="hours per night (default 2)")
    parser.add_argument("--steps", type=int, default=150, help="pre-training steps (fine-tuning runs 40%% of that)")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="also show the frameworks' console output")
    args = parser.parse_args(argv)
    configure_console(args.verbose)

    workdir = Path(args.workdir).resolve()
    cohort, shards, runs = workdir / "cohort", workdir / "shards", workdir / "runs"
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workdir / 'mlflow.db'}"
    t0 = time.perf_counter()

    _step(1, f"synthetic SHHS1 cohort -> {cohort}")
    generate_cohort(cohort, CohortConfig(n_records=args.n_records, hours=args.hours, seed=args.seed, workers=os.cpu_count() or 1))

    _step(2, f"reading the cohort back ({', '.join(DEMO_ROLES)})")
    problems = 0
    for record_id, edf, xml in find_shhs_pairs(cohort):
        report = inspect_recording(edf, xml)
        record = load_shhs_record(edf, xml, roles=DEMO_ROLES, record_id=record_id)
        rates = ", ".join(f"{ch.label} {ch.rate:g} Hz" for ch in record.channels.values())
        print(f"  {record_id}: {record.n_epochs} epochs, {rates}")
        print(f"    stages {record.stage_counts()}  events {record.event_counts()}")
        if report["problems"]:
            problems += 1
            print(f"    problems: {report['problems']}")

    _step(3, f"preprocessing on Ray -> {shards}")
    result = run_preprocess(cohort, shards, PreprocessConfig(), SplitConfig(seed=args.seed))
    print(format_summary(result, shards))
    if result.failures or problems:
        print("demo stopped: some recordings could not be used", file=sys.stderr)
        return 1

    common = dict(shards=str(shards / "manifest.json"), model_size="small", seq_len=5, batch_size=16 * args.workers,
                  loader_workers=1,
                  num_workers=args.workers, lr=1e-3, storage_path=str(runs), tracking_uri=tracking_uri,
                  experiment="distsleep-demo", seed=args.seed)
    _step(4, f"pre-training MC²SleepNet (small) for {args.steps} steps on {args.workers} Ray Train workers x DeepSpeed")
    pre = run_training(TrainConfig(**common, name="demo-pretrain", stage="pretrain", max_steps=args.steps,
                                   val_every=max(10, args.steps // 3)))
    _report(pre, "pre-training")

    finetune_steps = max(10, int(0.4 * args.steps))
    _step(5, f"fine-tuning from the pre-training run for {finetune_steps} steps (frozen backbones, no masking)")
    fine = run_training(TrainConfig(**common, name="demo-finetune", stage="finetune", init_from=pre.run_id,
                                    max_steps=finetune_steps, val_every=max(10, finetune_steps // 2)))
    _report(fine, "fine-tuning")

    _step(6, "predicting a test night from the fine-tuned model bundle")
    test_ids = sorted(r for r, e in result.manifest["records"].items() if e["split"] == "test")
    pairs = {rid: (edf, xml) for rid, edf, xml in find_shhs_pairs(cohort)}
    edf, xml = pairs[test_ids[0]]
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri)
    # The demo's own folder: a rerun that trained another model replaces its predictions rather than being refused.
    prediction = predict_recording(fine.run_id, edf, annotations=xml, out_dir=workdir / "predictions", overwrite=True)
    if prediction.metrics:
        print(f"{test_ids[0]}: accuracy {prediction.metrics['accuracy']:.3f}  kappa {prediction.metrics['kappa']:.3f}")
    print("files: " + ", ".join(str(p) for p in prediction.files.values()))

    print(f"\ndone in {time.perf_counter() - t0:.0f} s; everything is under {workdir}")
    print(f"MLflow: pre-training run {pre.run_id}, fine-tuning run {fine.run_id} in {tracking_uri}")
    print(f"  view them: .venv/bin/distsleep ui --tracking-uri {tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
