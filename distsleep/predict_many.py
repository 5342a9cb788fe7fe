"""`distsleep predict` over many nights: files, folders, globs or a list file; one Ray task per night.

    result = predict_nights(PredictManyConfig(model="models:/stager@best", inputs=("cohort/",), out="pred"))

Each night is scored by `distsleep.predict.predict_recording` in its own Ray task (`distsleep.fanout`: a GPU
task when the cluster has GPUs), writing the per-night files `predict` writes for one recording into `out`.
Annotations are found beside each EDF when they follow the NSRR layout (`edfs/` -> `annotations-events-nsrr/`,
`<id>-nsrr.xml`, else Profusion) or Sleep-EDF's (`SC4ssNE0-PSG.edf` -> `SC4ssNE?-Hypnogram.edf`); a list file
can name them. The driver then writes `cohort_summary.csv`: one row per night with the predicted sleep
statistics (YASA's), the model's confidence, agreement when annotations exist, and the input problems found;
a night that fails is a row with status `failed` and its reason, its earlier outputs in `out` are removed,
and the others proceed. A night whose file name is not UTF-8 fails before scoring: its name is written with
backslash escapes, as a CSV file and a terminal can only show text. `out` holds one model's predictions
(`distsleep.predict.check_output_folder`).
"""

from __future__ import annotations

import csv
import glob
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distsleep.atomic import write_text_atomic
from distsleep.bundle import resolve
from distsleep.config import ConfigBase
from distsleep.errors import InputError
from distsleep.fanout import run_each
from distsleep.night_metrics import SLEEP_STATISTICS, sleep_statistics
from distsleep.predict import (DEFAULT_BATCH_SIZE, DEFAULT_STRIDE, SUMMARY_NAME, check_output_folder,
                               load_for_prediction, output_ids, predict_recording, prediction_identity, record_id_of,
                               record_identity, remove_outputs)
from distsleep.runtime import connect_ray
from distsleep.sources.channel_map import ChannelMap

LOW_CONFIDENCE = 0.5  # an epoch whose top class probability is below this counts as low-confidence
COLUMNS = (("record", "recording", "annotations", "status", "reason", "epochs", "hours", "mean_confidence",
            "low_confidence_pct") + tuple(SLEEP_STATISTICS) + ("accuracy", "kappa", "input_problems"))
# EDFs in a folder that are not recordings: Sleep-EDF hypnograms and the hypnograms `predict` writes.
NOT_RECORDINGS = ("-hypnogram.edf", "_hypnogram.edf")


class NoNightsError(InputError):
    """The inputs name no recording at all."""


@dataclass(frozen=True)
class NightInput:
    recording: str
    annotations: str | None = None


@dataclass(frozen=True)
class PredictManyConfig(ConfigBase):
    model: str
    inputs: tuple[str, ...] = ()  # files, folders (searched recursively for *.edf) and glob patterns
    list_file: str | None = None  # lines "recording[,annotations]", relative to the file's folder
    out: str = "."
    find_annotations: bool = True
    stride: int = DEFAULT_STRIDE
    batch_size: int = DEFAULT_BATCH_SIZE
    cohort: str | None = None
    channel_map: ChannelMap | None = None
    address: str | None = None
    progress: bool = True
    tracking_uri: str | None = None
    overwrite: bool = False  # remove the predictions already in `out` (another model's are refused otherwise)


@dataclass
class PredictManyResult:
    rows: list[dict]
    summary: Path

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.rows if row["status"] != "ok"]


def _is_recording(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(".edf") and not name.endswith(NOT_RECORDINGS)


def find_annotations(edf: Path) -> Path | None:
    """The annotation file beside `edf` in the NSRR or Sleep-EDF layout, or None."""
    stem = edf.stem
    if stem.upper().endswith("-PSG"):
        matches = sorted(edf.parent.glob(f"{stem[:-len('-PSG') - 1]}?-Hypnogram.edf"))
        return matches[0] if matches else None
    parts = edf.parent.parts
    candidates = [edf.parent / f"{stem}-nsrr.xml"]
    if "edfs" in parts:
        i = len(parts) - 1 - parts[::-1].index("edfs")
        psg, visit = Path(*parts[:i]), Path(*parts[i + 1:]) if i + 1 < len(parts) else Path()
        candidates += [psg / "annotations-events-nsrr" / visit / f"{stem}-nsrr.xml",
                       psg / "annotations-events-profusion" / visit / f"{stem}-profusion.xml"]
    return next((c for c in candidates if c.is_file()), None)


def _read_list(path: Path) -> list[NightInput]:
    nights = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or line.lower().replace(" ", "") in ("recording", "recording,annotations"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) > 2 or not fields[0]:
            raise InputError(path, f"line {number}: expected 'recording' or 'recording,annotations', got {line!r}")
        base = path.resolve().parent
        recording, annotations = base / fields[0], (base / fields[1] if len(fields) > 1 and fields[1] else None)
        nights.append(NightInput(str(recording), str(annotations) if annotations else None))
    return nights


def expand_inputs(inputs: Sequence[str], list_file: str | None = None, find: bool = True
                  ) -> tuple[list[NightInput], list[dict]]:
    """(nights, rows for inputs that name no recording): files, folders (recursive), glob patterns, a list file."""
    nights: list[NightInput] = []
    missing: list[dict] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_recording(p))
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if _is_recording(Path(p)))
        found = [p.resolve() for p in found]  # Ray tasks run in other working directories
        if not found:
            missing.append({"recording": item, "status": "failed", "reason": "no such file, and no EDF recording in "
                                                                              "a folder or matching pattern of that name"})
        nights += [NightInput(str(p)) for p in found]
    if list_file:
        nights += _read_list(Path(list_file))
    if find:
        nights = [n if n.annotations else NightInput(n.recording, str(a) if (a := find_annotations(Path(n.recording)))
                                                     else None) for n in nights]
    unique = list(dict.fromkeys(nights))  # a night named twice (a file inside a folder also given) is scored once
    return unique, missing


def _finite(value: float) -> float | str:
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else ""


def predict_night(night: NightInput, bundle_bytes: bytes, cfg: PredictManyConfig) -> dict:
    """Score one night and write its files (runs as a Ray task); its cohort_summary.csv row."""
    loaded = load_for_prediction(cfg.model, data=bundle_bytes, name=cfg.model)
    result = predict_recording(loaded, night.recording, annotations=night.annotations, out_dir=cfg.out,
                               stride=cfg.stride, batch_size=cfg.batch_size, cohort=cfg.cohort,
                               channel_map=cfg.channel_map)
    confidence = result.confidence
    row = {"record": result.record_id, "recording": night.recording, "annotations": night.annotations or "",
           "status": "ok", "reason": "", "epochs": result.n_epochs,
           "hours": round(result.n_epochs * result.epoch_seconds / 3600, 3),
           "mean_confidence": round(float(confidence.mean()), 4),
           "low_confidence_pct": round(100 * float(np.mean(confidence < LOW_CONFIDENCE)), 2),
           **{k: _finite(v) for k, v in sleep_statistics(result.stages, result.epoch_seconds).items()},
           "accuracy": _finite(result.metrics["accuracy"]) if result.metrics else "",
           "kappa": _finite(result.metrics["kappa"]) if result.metrics else "",
           "input_problems": "; ".join(result.report["warnings"])}
    return row


def _summary_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: row.get(column, "") for column in COLUMNS})
    return buffer.getvalue()


def readable(text: str) -> str:
    """`text` with the bytes of a file name that are not UTF-8 (which Python holds as lone surrogates, '\\udcff')
    written as backslash escapes ('\\xff'): a UTF-8 CSV file or terminal cannot take them raw."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _unreadable_names(nights: list[NightInput]) -> tuple[list[NightInput], list[dict]]:
    """(the nights whose paths are text, a failed row for each whose recording or annotation path is not UTF-8):
    the summary, the console and the output names could only show its bytes escaped, so it is not scored."""
    usable, failed = [], []
    for night in nights:
        bad = [path for path in (night.recording, night.annotations) if path and readable(path) != path]
        if not bad:
            usable.append(night)
            continue
        failed.append({"record": readable(Path(night.recording).stem), "recording": night.recording,
                       "annotations": night.annotations or "", "status": "failed",
                       "reason": f"the path {readable(bad[0])} is not valid UTF-8 (bytes that are not UTF-8 are shown "
                                 "as \\xNN): give the file, and its annotations, a UTF-8 name to score it"})
    return usable, failed


def _shared_record_ids(nights: list[NightInput]) -> tuple[list[NightInput], list[dict]]:
    """(the nights whose record id is theirs alone, a failed row for each night sharing one): their outputs
    are named after the record id, so two such nights scored at once would overwrite each other's files."""
    ids = {n: record_id_of(Path(n.recording), "sleep-edf") for n in nights}  # -PSG stripped or not, never more
    by_id: dict[str, list[NightInput]] = {}
    for night, record in ids.items():
        by_id.setdefault(record, []).append(night)
    unique = [n for n in nights if len(by_id[ids[n]]) == 1]
    failed = [{"record": record, "recording": n.recording, "annotations": n.annotations or "", "status": "failed",
               "reason": f"{len(same)} recordings would get the record id {record!r} "
                         f"({', '.join(m.recording for m in same)}): their files would overwrite each other; rename "
                         "all but one"}
              for record, same in sorted(by_id.items()) if len(same) > 1 for n in same]
    return unique, failed


def _duplicates(outcomes) -> None:
    """Two nights given the same record id by their readers would have written the same files: the later ones
    fail (a guard behind `_shared_record_ids`)."""
    seen: dict[str, str] = {}
    for outcome in outcomes:
        if outcome.ok:
            record = outcome.result["record"]
            if record in seen:
                outcome.error = f"same record id {record!r} as {seen[record]}: its files were overwritten; rename one"
            else:
                seen[record] = outcome.item.recording


def predict_nights(cfg: PredictManyConfig) -> PredictManyResult:
    """Score every night the inputs name (module docstring). NoNightsError when they name none."""
    nights, rows = expand_inputs(cfg.inputs, cfg.list_file, cfg.find_annotations)
    if not nights:
        raise NoNightsError(", ".join(cfg.inputs) or str(cfg.list_file), "no EDF recording found")
    located = resolve(cfg.model, tracking_uri=cfg.tracking_uri)
    data = located.path.read_bytes()
    loaded = load_for_prediction(cfg.model, data=data, name=located.name)  # an unusable model stops here, before any task
    out = Path(cfg.out).resolve()  # Ray tasks run in other working directories
    identity = prediction_identity(loaded, cfg.stride, cfg.cohort, cfg.channel_map)
    check_output_folder(out, identity, cfg.overwrite)  # another model's predictions: refused before any task
    out.mkdir(parents=True, exist_ok=True)
    record_identity(out, identity)
    cfg = cfg.replace(out=str(out))
    nights, unreadable = _unreadable_names(nights)
    nights, shared = _shared_record_ids(nights)
    rows += unreadable + shared
    connect_ray(cfg.address)
    outcomes = run_each(predict_night, nights, data, cfg, desc="predict", progress=cfg.progress)
    _duplicates(outcomes)
    for outcome in outcomes:
        if outcome.ok:
            rows.append(outcome.result)
        else:
            rows.append({"record": Path(outcome.item.recording).stem, "recording": outcome.item.recording,
                         "annotations": outcome.item.annotations or "", "status": "failed", "reason": outcome.error})
    # A night that failed now keeps no earlier run's outputs (a task that died never removed them; nights refused
    # before scoring never ran), unless a night scored now owns that record id.
    scored = {row["record"] for row in rows if row["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok" and row.get("record"):  # inputs naming no recording have no record
            remove_outputs(out, output_ids(Path(row["recording"])) - scored)
    rows = [{key: readable(value) if isinstance(value, str) else value for key, value in row.items()} for row in rows]
    summary = out / SUMMARY_NAME
    write_text_atomic(summary, _summary_text(rows))
    return PredictManyResult(rows, summary)


def format_many(result: PredictManyResult) -> str:
    ok = [row for row in result.rows if row["status"] == "ok"]
    lines = [f"{len(ok)} of {len(result.rows)} nights scored; {SUMMARY_NAME}: {result.summary.resolve()}"]
    if ok:
        tst = [row["tst_min"] for row in ok if row["tst_min"] != ""]
        lines.append(f"mean confidence {np.mean([row['mean_confidence'] for row in ok]):.2f}"
                     + (f", predicted TST median {np.median(tst):.0f} min" if tst else ""))
    warned = sum(1 for row in ok if row["input_problems"])
    if warned:
        lines.append(f"{warned} night(s) with input problems (column input_problems)")
    for row in result.failed:
        lines.append(f"FAILED {row['recording']}: {row['reason']}")
    return "\n".join(lines)
