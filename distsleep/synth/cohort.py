"""A synthetic SHHS1-format cohort on disk, in the NSRR folder layout.

    OUT/polysomnography/edfs/shhs1/shhs1-NNNNNN.edf
    OUT/polysomnography/annotations-events-nsrr/shhs1/shhs1-NNNNNN-nsrr.xml
    OUT/polysomnography/annotations-events-profusion/shhs1/shhs1-NNNNNN-profusion.xml
    OUT/synthetic-cohort.json        (generator settings and each subject's ground-truth knobs)

Record i is generated from SeedSequence([seed, i]) alone, so the cohort is the same whatever the number
of processes, and a rerun skips records whose three files already exist (each file is renamed into
place only when complete). Record ids start at 300001, outside the real SHHS1 range (200001–205804),
so synthetic files can never be mistaken for real ones.
"""

from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distsleep.synth.night import synthesize_night
from distsleep.atomic import atomic_path
from distsleep.synth.writers import write_edf, write_nsrr_xml, write_profusion_xml

FIRST_SYNTHETIC_ID = 300001


@dataclass(frozen=True)
class CohortConfig:
    n_records: int = 4
    hours: float = 8.0
    seed: int = 0
    workers: int = 1
    ahi_median: float = 8.0  # median apnea-hypopnea index of the cohort (events per hour of sleep)


def record_paths(out: Path, record_id: str) -> dict[str, Path]:
    base = out / "polysomnography"
    return {
        "edf": base / "edfs" / "shhs1" / f"{record_id}.edf",
        "nsrr": base / "annotations-events-nsrr" / "shhs1" / f"{record_id}-nsrr.xml",
        "profusion": base / "annotations-events-profusion" / "shhs1" / f"{record_id}-profusion.xml",
    }


def record_id_of(index: int) -> str:
    return f"shhs1-{FIRST_SYNTHETIC_ID + index}"


def _generate_one(args: tuple[str, int, int, float, float]) -> dict:
    out, index, seed, hours, ahi_median = args
    record_id = record_id_of(index)
    paths = record_paths(Path(out), record_id)
    night = synthesize_night(np.random.SeedSequence([seed, index]), record_id, hours, ahi_median=ahi_median)
    clock_rng = np.random.default_rng([seed, index, 1])
    start = dt.time(hour=int(clock_rng.integers(21, 24)), minute=int(clock_rng.integers(0, 60)))
    skipped = all(p.exists() for p in paths.values())
    if not skipped:
        write_edf(night, paths["edf"], start)
        write_nsrr_xml(night, paths["nsrr"], start)
        write_profusion_xml(night, paths["profusion"])
    counts = np.bincount(night.stages[night.stages >= 0], minlength=5)
    return {
        "record_id": record_id,
        "skipped": skipped,
        "epochs": int(len(night.stages)),
        "stages": dict(zip(("W", "N1", "N2", "N3", "REM"), map(int, counts))),
        "respiratory_events": len(night.events.respiratory),
        "subject": night.subject.to_dict(),
    }


def generate_cohort(out: str | Path, config: CohortConfig, progress: bool = True) -> list[dict]:
    """Write `config.n_records` nights under `out` (created if needed); returns one summary per record."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), i, config.seed, config.hours, config.ahi_median) for i in range(config.n_records)]
    bar = tqdm(total=len(jobs), desc="synth", unit="rec", disable=not progress)
    results: list[dict] = []
    if config.workers > 1:
        with ProcessPoolExecutor(config.workers) as pool:
            for result in pool.map(_generate_one, jobs):
                results.append(result)
                bar.update()
    else:
        for job in jobs:
            results.append(_generate_one(job))
            bar.update()
    bar.close()
    summary = {"generator": "distsleep.synth", "config": asdict(config), "records": results}
    with atomic_path(out / "synthetic-cohort.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return results
