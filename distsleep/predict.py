"""Inference: a trained model bundle + one recording -> per-epoch stages, probabilities and files a person reads.

    result = predict_recording("runs:/<run_id>", "night.edf", annotations="night-nsrr.xml", out_dir="pred")

What it guarantees, and why:

* The model sees what it was trained on. The recording goes through the same code as the shards
  (`load_record` / `record_to_sample` with the bundle's `PreprocessConfig`): same channel roles (exact label
  aliases, never a substitute channel), same band-pass, resampling, epoching and int16 quantisation. The
  one difference is deliberate: wake trimming (`trim_wake_minutes`) is switched off, because it is a choice
  of training data, and a prediction must cover every epoch of the recording.
* Every epoch is scored from context. The night is cut into windows of the bundle's `seq_len` epochs every
  `stride` epochs (plus one window aligned to the end of the night); each epoch's class probabilities are
  the mean over all windows that contain it (up to `seq_len` of them at stride 1). A night shorter than
  `seq_len` is zero-padded, as in evaluation, and the padding is never scored.
* Bundles are found and loaded by `distsleep.bundle` (a file, a folder, an MLflow run or a registered model;
  `torch.load(weights_only=True)`: a file holding anything but tensors and plain Python values is refused,
  since unpickling arbitrary objects can run code). A training checkpoint's bare weights are refused: they
  lack the preprocessing and channels the model was trained with.

Which reader: Sleep-EDF PSGs are told by their labels; every other EDF is an NSRR night (SHHS, MESA, MrOS, ...)
read through its cohort's alias table, the cohort given (`cohort`) or named by the file (`mesa-sleep-0001`);
with neither, a label whose meaning differs between cohorts (MESA `EEG1` is Fz-Cz, SHHS `EEG1` C4-A1) is
refused unless a channel map (`channel_map`, luna alias entries) names the channel.

Unlabelled recordings: NSRR EDFs load without annotations (every epoch unscored). Sleep-EDF PSGs without a
hypnogram are read from the PSG alone with the same channel rules (`_load_unlabelled`), so annotations
are optional for both sources; metrics and the "true" hypnogram appear only when annotations are given.

Outputs in `out_dir` (all prefixed by the record id): `_stages.csv`, `_hypnogram.edf` (EDF+ annotations
only, Sleep-EDF wording), `_hypnogram.png`, `_input_report.json`, and with annotations `_metrics.json` and
`_confusion.png`; written all or nothing, replacing every output of an earlier prediction of the record. A
recording that fails removes its earlier outputs, so none looks current. `predictions.json` records the model
(its sha256) and settings a folder's predictions come from: another model or other settings are refused there
(`OutputFolderError`) unless `overwrite` removes the earlier predictions first, since files of two models
side by side could not be told apart.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import edfio
import numpy as np
import torch

from distsleep.atomic import atomic_path
from distsleep.bundle import BundleError, load_model, map_roles, resolve
from distsleep.config import PreprocessConfig
from distsleep.errors import InputError, MissingChannelError
from distsleep.inspection import UNKNOWN_SOURCE, detect_source
from distsleep.metrics import format_values, staging_metrics
from distsleep.plots import confusion_png, hypnogram_png
from distsleep.shards.convert import RecordSource, load_record, record_to_sample
from distsleep.shards.loader import robust_scaling, window_starts
from distsleep.sources.channels import resolve_roles, role_by_name
from distsleep.sources.edf import is_voltage_unit, read_header, to_microvolts
from distsleep.sources.loading import read_role_channels, signal_epochs, slice_channels
from distsleep.sources.record import Record
from distsleep.sources.montages import COHORT_ROLES, cohort_of_record
from distsleep.sources.shhs import load_nsrr_record
from distsleep.stages import EPOCH_SECONDS, NUM_STAGES, STAGE_NAMES, UNSCORED, stage_counts

# Sleep-EDF hypnogram wording for the five AASM classes (N3 is written as R&K stage 3).
HYPNOGRAM_TEXT: dict[int, str] = {0: "Sleep stage W", 1: "Sleep stage 1", 2: "Sleep stage 2", 3: "Sleep stage 3", 4: "Sleep stage R"}
# Plausibility bounds for scalp EEG/EOG after preprocessing, used when the bundle records no training range.
LOW_AMPLITUDE_UV = 5.0  # p99 of |x| below this: flat, disconnected, or a unit error (mV read as uV)
HIGH_AMPLITUDE_UV = 500.0  # p99 of |x| above this: artefact-dominated or a unit error (uV read as mV)
FLAT_EPOCH_STD_UV = 0.5
CLIPPED_FRACTION_WARN = 0.001
DEFAULT_STRIDE = 1  # epochs between windows: every window, each epoch averaged over up to seq_len of them
DEFAULT_BATCH_SIZE = 64  # windows per forward pass


class PredictionError(ValueError):
    """Inference options that cannot work with this bundle (e.g. a stride longer than the window)."""


class OutputFolderError(InputError):
    """The output folder holds predictions of another model, or made with other settings."""


# ------------------------------------------------------------------------------------------ windowing


def plan_windows(n_epochs: int, seq_len: int, stride: int = 1) -> list[int]:
    """Start epochs of the windows of `seq_len` epochs that together cover epochs 0..n_epochs-1.

    Every `stride` epochs, plus one window aligned to the end of the night when the last regular one
    stops short of it; a night of at most `seq_len` epochs gets one (padded) window starting at 0.
    Same rule as evaluation (`distsleep.shards.loader.window_starts`).
    """
    if seq_len < 1:
        raise PredictionError(f"seq_len must be >= 1, got {seq_len}")
    if not 1 <= stride <= seq_len:
        raise PredictionError(f"stride must be between 1 and the model's window of {seq_len} epochs, got {stride} "
                              "(a longer stride would leave epochs unscored)")
    if n_epochs < 1:
        raise PredictionError("the recording has no whole 30-s epoch")
    # The same rule as the evaluation pass, so offline and in-training scores see the same windows.
    return window_starts(n_epochs, seq_len, stride)


def average_windows(window_probs: np.ndarray, starts: Sequence[int], n_epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch mean of the window probabilities: window w, position j scores epoch starts[w] + j.

    `window_probs` is (n_windows, seq_len, n_classes); positions past the end of the night (padding)
    are ignored. Returns (probabilities (n_epochs, n_classes) float32, windows per epoch (n_epochs,) int).
    Raises ValueError if some epoch is in no window.
    """
    window_probs = np.asarray(window_probs, dtype=np.float64)
    if window_probs.ndim != 3 or len(window_probs) != len(starts):
        raise ValueError(f"window_probs must be (n_windows={len(starts)}, seq_len, n_classes), got {window_probs.shape}")
    seq_len = window_probs.shape[1]
    sums = np.zeros((n_epochs, window_probs.shape[2]), dtype=np.float64)
    counts = np.zeros(n_epochs, dtype=np.int64)
    for probs, start in zip(window_probs, starts):
        stop = min(start + seq_len, n_epochs)
        if start < 0 or stop <= start:
            raise ValueError(f"window start {start} is outside a night of {n_epochs} epochs")
        sums[start:stop] += probs[: stop - start]
        counts[start:stop] += 1
    uncovered = np.flatnonzero(counts == 0)
    if uncovered.size:
        raise ValueError(f"{uncovered.size} epoch(s) are in no window (first: {int(uncovered[0])})")
    return (sums / counts[:, None]).astype(np.float32), counts


def score_windows(model, signals: np.ndarray, starts: Sequence[int], seq_len: int, batch_size: int = 64,
                  device: str = "cpu") -> np.ndarray:
    """Softmax probabilities (n_windows, seq_len, n_classes) of the model on each window of `signals`.

    `signals` is the night in uV, (n_epochs, n_channels, samples_per_epoch); windows running past its
    end are zero-padded, as in evaluation.
    """
    n_epochs = len(signals)
    out = []
    with torch.no_grad():
        for first in range(0, len(starts), batch_size):
            chunk = starts[first:first + batch_size]
            batch = np.zeros((len(chunk), seq_len, *signals.shape[1:]), dtype=np.float32)
            for b, start in enumerate(chunk):
                stop = min(start + seq_len, n_epochs)
                batch[b, : stop - start] = signals[start:stop]
            logits = model(torch.from_numpy(batch).to(device), labels=None, stage="eval")["logits"]
            out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out, axis=0)


# ------------------------------------------------------------------------------------------ loading


@dataclass
class PredictionResult:
    """Per-epoch predictions for one recording; `labels` is None when no annotations were given."""

    record_id: str
    recording: Path
    source: str
    stages: np.ndarray  # int64 (n_epochs,) 0..4
    probabilities: np.ndarray  # float32 (n_epochs, 5), rows sum to 1
    windows_per_epoch: np.ndarray  # int64 (n_epochs,)
    labels: np.ndarray | None  # int64 (n_epochs,) 0..4 or -1 (unscored)
    metrics: dict | None
    report: dict
    files: dict[str, Path] = field(default_factory=dict)
    epoch_seconds: float = EPOCH_SECONDS

    @property
    def n_epochs(self) -> int:
        return int(len(self.stages))

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def onsets(self) -> np.ndarray:
        return np.arange(self.n_epochs) * self.epoch_seconds

    def stage_counts(self) -> dict[str, int]:
        return {name: int(np.count_nonzero(self.stages == code)) for code, name in enumerate(STAGE_NAMES)}


def _check_channels(header, source: str, roles: Sequence[str], bundle: dict) -> None:
    labels = [s.label for s in header.signals if not s.is_annotation]
    found = resolve_roles(source, labels)
    missing = [role_by_name(source, r) for r in roles if r not in found]
    if missing:
        needs = "; ".join(f"{r.name} ({r.description}, labelled {' or '.join(repr(a) for a in r.aliases)})" for r in missing)
        raise MissingChannelError(
            header.path,
            f"model {bundle['model']} needs channel role {needs}, but this {source} recording has only the signals "
            f"{', '.join(repr(label) for label in labels) or '(none)'}; channels are never substituted, so this "
            "recording cannot be scored by this model")


def _load_unlabelled(edf: Path, source: str, roles: Sequence[str], record_id: str, channel_map=None):
    """A Record from the signal file alone: every whole 30-s epoch, all unscored."""
    header = read_header(edf)
    channels, problems = read_role_channels(header, source, roles, channel_map)
    n_epochs = signal_epochs(header.duration, EPOCH_SECONDS)
    problems.append("no annotation file: every epoch is unscored")
    return Record(record_id=record_id, source=source, channels=slice_channels(channels, 0.0, n_epochs * EPOCH_SECONDS),
                  stages=np.full(n_epochs, UNSCORED, dtype=np.int8), start_time=header.start_time,
                  epoch_seconds=EPOCH_SECONDS, metadata={"edf": str(edf), "annotations": None, "signal_epochs": n_epochs},
                  problems=problems)


def record_id_of(edf: Path, source: str) -> str:
    """The record id `predict` names a recording's outputs after: the file's stem (without Sleep-EDF's -PSG)."""
    stem = edf.stem
    if source == "sleep-edf" and stem.upper().endswith("-PSG"):
        stem = stem[: -len("-PSG")]
    return stem.replace(".", "_") or "recording"


def _amplitude(x: np.ndarray) -> dict:
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    p = np.percentile(flat, [1, 5, 50, 95, 99])
    return {"min": float(flat.min()), "max": float(flat.max()), "p1": float(p[0]), "p5": float(p[1]), "p50": float(p[2]),
            "p95": float(p[3]), "p99": float(p[4]), "std": float(flat.std()),
            "p99_abs": float(np.percentile(np.abs(flat), 99))}


def _clipped_fraction(channel, signal_header) -> float | None:
    bounds = np.array([signal_header.physical_min, signal_header.physical_max], dtype=np.float64)
    step = abs(signal_header.gain)
    if channel.unit == "uV" and is_voltage_unit(signal_header.unit):
        bounds = to_microvolts(bounds, signal_header.unit).astype(np.float64)
        step = abs(float(to_microvolts(np.array([signal_header.gain]), signal_header.unit)[0]))
    if channel.data.size == 0:
        return None
    data = channel.data.astype(np.float64)
    at_rail = (data <= bounds.min() + step) | (data >= bounds.max() - step)
    return float(at_rail.mean())


def _input_report(*, recording: Path, annotations: Path | None, bundle_path: Path, bundle: dict, model_source: str,
                  header, source: str, detected_from: str, config, record, sample, signals: np.ndarray,
                  starts: list[int], stride: int, warnings: list[str]) -> dict:
    trained_range = bundle.get("amplitude_uv") or {}  # optional: {role: {"p1": .., "p99": ..}} of the training data
    channels = []
    for c, meta in enumerate(sample.meta["channels"]):
        role, label = meta["role"], meta["label"]
        amplitude = _amplitude(signals[:, c])
        epoch_std = signals[:, c].std(axis=1)
        flat = int(np.count_nonzero(epoch_std < FLAT_EPOCH_STD_UV))
        clipped = _clipped_fraction(record.channels[role], header.signal(label))
        reference = trained_range.get(role)
        channels.append({
            "role": role, "label": label, "unit": record.channels[role].unit, "source_rate_hz": meta["source_rate"],
            "target_rate_hz": config.target_rate, "bandpass_hz": list(config.bandpass) if config.bandpass else None,
            "amplitude_uv": amplitude, "flat_epochs": flat, "clipped_fraction": clipped,
            "training_amplitude_uv": reference,
        })
        where = f"{label!r} ({role})"
        if reference:
            spread, trained_spread = amplitude["p99"] - amplitude["p1"], reference["p99"] - reference["p1"]
            ratio = spread / trained_spread if trained_spread > 0 else float("inf")
            if not 0.5 <= ratio <= 2.0:
                warnings.append(f"{where}: amplitude spread p1..p99 of {spread:.1f} uV is {ratio:.2g}x that of the training "
                                f"data ({trained_spread:.1f} uV); predictions may be unreliable")
        if amplitude["p99_abs"] < LOW_AMPLITUDE_UV:
            warnings.append(f"{where}: very low amplitude (99th percentile of |x| = {amplitude['p99_abs']:.2f} uV); "
                            "check the electrode and the EDF unit (a signal in mV labelled uV reads 1000x too small)")
        elif amplitude["p99_abs"] > HIGH_AMPLITUDE_UV:
            warnings.append(f"{where}: very high amplitude (99th percentile of |x| = {amplitude['p99_abs']:.0f} uV); "
                            "check for artefacts and the EDF unit")
        if flat:
            warnings.append(f"{where}: {flat} of {len(signals)} epochs are flat (std < {FLAT_EPOCH_STD_UV} uV); "
                            "their predictions are not meaningful")
        if clipped is not None and clipped > CLIPPED_FRACTION_WARN:
            warnings.append(f"{where}: {clipped:.2%} of samples sit at the EDF physical range limits (clipped signal)")
    if not trained_range:
        warnings_note = ("the bundle records no training amplitude range; amplitudes were checked against generic "
                         f"EEG bounds ({LOW_AMPLITUDE_UV:g}..{HIGH_AMPLITUDE_UV:g} uV for the 99th percentile of |x|)")
    else:
        warnings_note = "amplitudes were compared with the training range stored in the bundle"
    labels = sample.labels.astype(np.int64)
    scored = int(np.count_nonzero(labels >= 0)) if annotations is not None else None
    return {
        "recording": str(recording),
        "annotations": str(annotations) if annotations is not None else None,
        "record_id": record.record_id,
        "source": source,
        "source_detected_from": detected_from,
        "start_clock": header.start_time.time().isoformat(),  # not the date: a recording date identifies a patient
        "duration_s": header.duration,
        "ignored_trailing_s": header.duration - len(labels) * config.epoch_seconds,
        "epochs": int(len(labels)),
        "epochs_scored": scored,
        "true_stages": stage_counts(labels) if annotations is not None else None,
        "channels": channels,
        "model": {
            "bundle": str(bundle_path), "requested": model_source, "name": bundle["model"], "stage": bundle.get("stage"),
            "seq_len": int(bundle["seq_len"]), "trained_on": {"source": bundle["preprocess"].get("source"),
                                                              "channels": list(bundle["channels"])},
        },
        "preprocess": config.to_dict(),
        "preprocess_notes": [
            "same steps as the training shards (distsleep.shards.convert.record_to_sample)",
            f"wake trimming off for inference (training used trim_wake_minutes="
            f"{bundle['preprocess'].get('trim_wake_minutes')}): every epoch of the recording is scored",
        ],
        "windows": {"seq_len": int(bundle["seq_len"]), "stride": stride, "count": len(starts),
                    "padded": len(labels) < int(bundle["seq_len"])},
        "loader_notes": list(record.problems),
        "amplitude_check": warnings_note,
        "warnings": warnings,
    }


# ------------------------------------------------------------------------------------------ outputs


def _write_csv(result: PredictionResult, path: Path) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["epoch", "onset_s", "stage", *(f"p_{name}" for name in STAGE_NAMES), "confidence",
                         *(["true_stage"] if result.labels is not None else [])])
        for i in range(result.n_epochs):
            row = [i, f"{i * result.epoch_seconds:g}", STAGE_NAMES[result.stages[i]],
                   *(f"{p:.6f}" for p in result.probabilities[i]), f"{result.confidence[i]:.6f}"]
            if result.labels is not None:
                label = int(result.labels[i])
                row.append(STAGE_NAMES[label] if label >= 0 else "unscored")
            writer.writerow(row)
    return path


def _hypnogram_edf(stages: Sequence[int], start, epoch_seconds: float):
    """An EDF+ file with no signals and one annotation per epoch ("Sleep stage W/1/2/3/R", Sleep-EDF wording),
    starting at the clock time of `start` (datetime), so it reads like a Sleep-EDF hypnogram (edfio writes
    annotation-only EDF+). The date is left out (EDF+'s "Startdate X", header date 01.01.85): a recording date
    identifies a patient, and these files are shared; the clock time is what aligns them with the recording."""
    annotations = [edfio.EdfAnnotation(i * epoch_seconds, epoch_seconds, HYPNOGRAM_TEXT[int(s)]) for i, s in enumerate(stages)]
    return edfio.Edf([], starttime=start.time(), recording=edfio.Recording(startdate=None, equipment_code="distsleep"),
                     annotations=annotations)


# Every file `predict` may write for a record, by key; the name is <record id><suffix>.
OUTPUT_SUFFIXES = {"stages_csv": "_stages.csv", "hypnogram_edf": "_hypnogram.edf", "hypnogram_png": "_hypnogram.png",
                   "input_report": "_input_report.json", "metrics": "_metrics.json", "confusion_png": "_confusion.png"}
SUMMARY_NAME = "cohort_summary.csv"  # several nights' summary (distsleep.predict_many)
PREDICTIONS_FILE = "predictions.json"  # the model and settings of a folder's predictions
PREDICTIONS_FORMAT = "distsleep-predictions/1"


def output_ids(recording: Path) -> set[str]:
    """The record ids a recording's outputs may be named after: which one depends on the reader, known only once
    its header is read (Sleep-EDF drops -PSG)."""
    return {record_id_of(recording, "nsrr"), record_id_of(recording, "sleep-edf")}


def remove_outputs(out_dir: str | os.PathLike, record_ids) -> None:
    """Remove every output of the records `record_ids` in `out_dir`: a recording that fails now must not leave an
    earlier run's files looking like its current result (as `evaluate` clears stale probabilities)."""
    for record in record_ids:
        for suffix in OUTPUT_SUFFIXES.values():
            (Path(out_dir) / f"{record}{suffix}").unlink(missing_ok=True)


def prediction_identity(loaded: "LoadedModel", stride: int, cohort: str | None, channel_map) -> dict:
    """What a folder's predictions come from: the model (its bytes' sha256; its name as given, for messages) and
    the settings that change the scores."""
    entries = channel_map.items() if isinstance(channel_map, dict) else (channel_map or ())
    return {"format": PREDICTIONS_FORMAT,
            "model": {"sha256": loaded.sha256, "source": loaded.source, "name": loaded.bundle["model"],
                      "stage": loaded.bundle.get("stage")},
            "settings": {"stride": int(stride), "cohort": cohort,
                         "channel_map": {role: list(labels) for role, labels in entries} or None}}


def _describe(identity: dict) -> str:
    model, settings = identity.get("model", {}), identity.get("settings", {})
    extra = "".join([f", --cohort {settings['cohort']}" if settings.get("cohort") else "",
                     ", a --channel-map" if settings.get("channel_map") else ""])
    return (f"{model.get('source')} ({model.get('name')} {model.get('stage') or ''}, sha256 "
            f"{str(model.get('sha256'))[:12]}) with --stride {settings.get('stride')}{extra}")


def _is_prediction_file(name: str) -> bool:
    return name in (SUMMARY_NAME, PREDICTIONS_FILE) or name.endswith(tuple(OUTPUT_SUFFIXES.values()))


def check_output_folder(out_dir: str | os.PathLike, identity: dict, overwrite: bool = False) -> None:
    """Refuse (OutputFolderError) to write predictions of `identity` into a folder holding predictions of another
    model or settings, or of an unrecorded one (an older distsleep's): the folder would mix them and no file says
    which model made it. With `overwrite` the earlier predictions (every file `predict` writes) are removed
    first; the same model and settings again (a rerun) need nothing."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    try:
        before = json.loads((out_dir / PREDICTIONS_FILE).read_text())
    except (FileNotFoundError, ValueError):  # absent or unreadable: which model made the predictions is unknown
        before = None
    if not isinstance(before, dict):
        before = None
    if before is not None and (before.get("model", {}).get("sha256"), before.get("settings")) == \
            (identity["model"]["sha256"], identity["settings"]):
        return
    earlier = sorted(entry.name for entry in os.scandir(out_dir) if entry.is_file() and _is_prediction_file(entry.name))
    if not earlier:
        return
    if not overwrite:
        held = (f"the predictions of model {_describe(before)}" if before is not None else
                f"predictions ({earlier[0]}, ...) without a {PREDICTIONS_FILE} saying which model made them (an "
                "older distsleep wrote them)")
        raise OutputFolderError(out_dir, f"holds {held}, and this run's model is {_describe(identity)}: one folder "
                                         "holds one model's predictions, or their files could not be told apart. Give "
                                         "another --out, or --overwrite to remove the earlier predictions first")
    for name in earlier:
        (out_dir / name).unlink(missing_ok=True)


def record_identity(out_dir: str | os.PathLike, identity: dict) -> None:
    """Write the folder's PREDICTIONS_FILE unless it is there (`check_output_folder` made sure it matches)."""
    path = Path(out_dir) / PREDICTIONS_FILE
    if not path.is_file():
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")


def _write_outputs(result: PredictionResult, out_dir: Path, start, title: str, identity: dict) -> dict[str, Path]:
    """The outputs of one prediction, all or nothing: each is written to a temporary name; only when every one
    is written are the record's outputs of an earlier prediction that this one does not replace (metrics of a
    run with annotations, say) removed and the new files renamed into place. So the folder never holds a
    half-written file or a mix of two predictions of the record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in OUTPUT_SUFFIXES if result.metrics is not None or k not in ("metrics", "confusion_png")]
    files = {k: out_dir / f"{result.record_id}{OUTPUT_SUFFIXES[k]}" for k in keys}
    with ExitStack() as stack:  # leaving it renames every temporary onto its file (or, on error, deletes them)
        tmp = {k: stack.enter_context(atomic_path(path)) for k, path in files.items()}
        _write_csv(result, tmp["stages_csv"])
        _hypnogram_edf(result.stages, start, result.epoch_seconds).write(tmp["hypnogram_edf"])
        hypnogram_png(result.stages, tmp["hypnogram_png"], true=result.labels, probabilities=result.probabilities,
                      epoch_seconds=result.epoch_seconds,
                      title=f"{result.record_id}: {'true vs ' if result.labels is not None else ''}predicted ({title})")
        tmp["input_report"].write_text(json.dumps(result.report, indent=1, default=str) + "\n")
        if result.metrics is not None:
            tmp["metrics"].write_text(json.dumps(result.metrics, indent=1) + "\n")
            confusion_png(result.metrics["confusion"], tmp["confusion_png"],
                          title=f"{result.record_id}: confusion ({title}; rows: true)")
        for key, suffix in OUTPUT_SUFFIXES.items():
            if key not in files:
                (out_dir / f"{result.record_id}{suffix}").unlink(missing_ok=True)
        record_identity(out_dir, identity)  # before the outputs are renamed into place: none is ever unattributed
    return files


# ------------------------------------------------------------------------------------------ entry point


@dataclass
class LoadedModel:
    """A model bundle ready for inference: the model (eval mode, CPU), the bundle dict, and names for messages."""

    model: torch.nn.Module
    bundle: dict
    path: str  # the local file (or a description of where the bytes came from), for error messages
    source: str  # the model as the user named it (path, run id, runs:/ or models:/ URI)
    sha256: str = ""  # of the bundle's bytes: which model a folder's predictions come from, however it was named


def load_for_prediction(source: str | os.PathLike, data: bytes | None = None, name: str | None = None) -> LoadedModel:
    """The staging model named by `source` (`distsleep.bundle.resolve`), or read from the bundle bytes `data`
    (a Ray task scoring nights on another node gets the bytes, not a path)."""
    if data is None:
        path = resolve(source).path
        model, bundle = load_model(path)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    else:
        digest = hashlib.sha256(data).hexdigest()
        path = name or str(source)
        try:
            model, bundle = load_model(io.BytesIO(data))
        except BundleError as error:  # it names the in-memory copy; the user knows the model by its source
            raise BundleError(path, error.problem) from error
    if bundle.get("task", "staging") != "staging":
        raise BundleError(path, f"this model was trained for the {bundle['task']} task; `predict` writes "
                                "hypnograms and only takes sleep-staging models")
    return LoadedModel(model, bundle, str(path), str(source), digest)


def _reader_for(header, record_id: str, trained: PreprocessConfig, cohort: str | None, channel_map
                ) -> tuple[str, str | None, str]:
    """(reader: "sleep-edf" or "nsrr", NSRR cohort or None, how it was decided) for a recording.

    Sleep-EDF files are told by their labels; everything else is read as an NSRR night through its cohort's
    alias table (`cohort`, else the one its file name names), so a label whose meaning differs between
    cohorts (MESA EEG1 = Fz-Cz, SHHS EEG1 = C4-A1) is refused unless the cohort or a channel map says which.
    """
    if cohort is not None:
        return "nsrr", cohort, "--cohort"
    named = cohort_of_record(record_id)
    if named is not None:
        return "nsrr", named, "file name"
    detected = detect_source([s.label for s in header.signals if not s.is_annotation])
    if detected == "sleep-edf" or (detected == UNKNOWN_SOURCE and trained.source == "sleep-edf" and channel_map is None):
        return "sleep-edf", None, "channel labels" if detected == "sleep-edf" else "model bundle"
    return "nsrr", None, "channel labels (NSRR cohort unknown: labels that differ between cohorts need --cohort or --channel-map)"


def _available_roles(reader: str, cohort: str | None, channel_map) -> set[str]:
    """The roles a recording read this way can supply (what model roles are matched against)."""
    table = COHORT_ROLES["sleep-edf" if reader == "sleep-edf" else (cohort or "shhs")]
    return {r.name for r in table} | {role for role, _ in (channel_map or ())}


def predict_recording(bundle_source: str | os.PathLike | LoadedModel, recording: str | os.PathLike,
                      annotations: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                      stride: int = DEFAULT_STRIDE, batch_size: int = DEFAULT_BATCH_SIZE,
                      device: str | None = None, cohort: str | None = None, channel_map=None,
                      overwrite: bool = False) -> PredictionResult:
    """Score every 30-s epoch of `recording` with the model bundle named by `bundle_source` (see
    `distsleep.bundle.resolve`: a model.pt, a folder holding one, an MLflow run id, runs:/ or models:/ URI), or
    with an already loaded model.

    With `annotations` (NSRR/Profusion XML for NSRR cohorts, *-Hypnogram.edf for Sleep-EDF) the true stages and
    metrics come too. With `out_dir` the files listed in the module docstring are written there. NSRR nights are
    read through their cohort's alias table (`cohort`, else the file name's) and `channel_map` (luna alias
    entries, tried first). Raises MissingChannelError when the recording lacks a channel the model needs (or a
    label is ambiguous between cohorts), BundleError for an unusable bundle, PredictionError for a stride
    outside 1..seq_len, OutputFolderError when `out_dir` holds another model's predictions (`overwrite` removes
    them). When the recording fails, its earlier outputs in `out_dir` are removed.
    """

    recording = Path(recording)
    annotations = Path(annotations) if annotations is not None else None
    loaded = bundle_source if isinstance(bundle_source, LoadedModel) else load_for_prediction(bundle_source)
    model, bundle, bundle_path = loaded.model, loaded.bundle, loaded.path
    seq_len = int(bundle["seq_len"])
    if batch_size < 1:
        raise PredictionError(f"batch_size must be >= 1, got {batch_size}")
    plan_windows(1, seq_len, stride)  # validate the stride before reading a whole night
    identity = prediction_identity(loaded, stride, cohort, channel_map)
    if out_dir is None:
        return _score(loaded, recording, annotations, None, stride, batch_size, device, cohort, channel_map, identity)
    check_output_folder(out_dir, identity, overwrite)
    try:
        return _score(loaded, recording, annotations, Path(out_dir), stride, batch_size, device, cohort, channel_map,
                      identity)
    except Exception:
        remove_outputs(out_dir, output_ids(recording))  # this recording has no current result here
        raise


def _score(loaded: LoadedModel, recording: Path, annotations: Path | None, out_dir: Path | None, stride: int,
           batch_size: int, device: str | None, cohort: str | None, channel_map, identity: dict) -> PredictionResult:
    """`predict_recording` once the model, options and output folder are checked."""
    model, bundle, bundle_path = loaded.model, loaded.bundle, loaded.path
    seq_len = int(bundle["seq_len"])
    header = read_header(recording)
    trained = PreprocessConfig.from_dict(bundle["preprocess"])
    reader, cohort, detected_from = _reader_for(header, record_id_of(recording, "nsrr"), trained, cohort, channel_map)
    record_id = record_id_of(recording, reader)
    roles, substituted = map_roles(bundle, _available_roles(reader, cohort, channel_map),
                                   f"a {cohort or reader} recording", bundle_path)
    source = reader if reader == "sleep-edf" else (cohort or "nsrr")
    warnings = [f"model trained on {trained.source} role {role!r}; this {source} recording is read through role "
                f"{used!r}, which fills the same model input (cross-dataset use)" for role, used in substituted.items()]
    if reader == "sleep-edf":
        _check_channels(header, reader, roles, bundle)
    config = replace(trained, source=reader, channels=roles, trim_wake_minutes=None, cohort=cohort,
                     channel_map=channel_map)
    model_cfg = bundle["model_config"]
    per_epoch = int(round(config.epoch_seconds * config.target_rate))
    if model_cfg.get("epoch_samples", per_epoch) != per_epoch:
        raise BundleError(bundle_path, f"model expects {model_cfg['epoch_samples']} samples per epoch but the bundle's "
                                       f"preprocessing gives {per_epoch} ({config.epoch_seconds:g} s at {config.target_rate:g} Hz)")

    if annotations is not None:
        record = load_record(RecordSource(record_id, str(recording), str(annotations)), config)
    elif reader == "nsrr":
        record = load_nsrr_record(recording, None, roles=roles, record_id=record_id, cohort=cohort,
                                  channel_map=channel_map)
    else:
        record = _load_unlabelled(recording, reader, roles, record_id, channel_map)
    sample = record_to_sample(record, config, recording)
    signals = sample.physical()  # exactly what the training loader feeds: dequantised int16, uV
    if bundle.get("normalization", "uv") == "robust":
        # The loader's robust scaling: this night's own per-channel median and IQR (from preprocessing).
        multiplier, offset = robust_scaling(sample.meta, list(range(signals.shape[1])), str(recording))
        signals = signals * multiplier[None, :, None] + offset[None, :, None]
    n_epochs = len(signals)
    starts = plan_windows(n_epochs, seq_len, stride)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    window_probs = score_windows(model, signals, starts, seq_len, batch_size=batch_size, device=device)
    if window_probs.shape[-1] != NUM_STAGES:
        raise BundleError(bundle_path, f"model outputs {window_probs.shape[-1]} classes, expected {NUM_STAGES}")
    probabilities, counts = average_windows(window_probs, starts, n_epochs)
    stages = probabilities.argmax(axis=1).astype(np.int64)

    labels = sample.labels.astype(np.int64) if annotations is not None else None
    metrics = None
    if labels is not None:
        if np.any(labels >= 0):
            metrics = {"record_id": record_id, "model": bundle["model"], "stage": bundle.get("stage"),
                       **staging_metrics(labels, stages)}
        else:
            warnings.append("the annotations score no epoch of this recording: no metrics")
    report = _input_report(recording=recording, annotations=annotations, bundle_path=bundle_path, bundle=bundle,
                           model_source=loaded.source, header=header, source=source, detected_from=detected_from,
                           config=config, record=record, sample=sample, signals=signals, starts=starts, stride=stride,
                           warnings=warnings)
    result = PredictionResult(record_id=record_id, recording=recording, source=source, stages=stages,
                              probabilities=probabilities, windows_per_epoch=counts, labels=labels, metrics=metrics,
                              report=report, epoch_seconds=config.epoch_seconds)
    if out_dir is not None:
        title = f"{bundle['model']} {bundle.get('stage') or ''}".strip()
        result.files = _write_outputs(result, out_dir, record.start_time or header.start_time, title, identity)
    return result


def format_summary(result: PredictionResult) -> str:
    """A few lines for the terminal: epochs per predicted stage, metrics when labels exist, warnings, files."""
    minutes = result.n_epochs * result.epoch_seconds / 60
    counts = result.stage_counts()
    lines = [f"{result.record_id} ({result.source}): {result.n_epochs} epochs ({minutes:.0f} min) scored by "
             f"{result.report['model']['name']} ({result.report['model']['stage']}), mean confidence "
             f"{float(result.confidence.mean()):.2f}",
             "predicted epochs per stage: " + format_values(counts)]
    if result.metrics is not None:
        m = result.metrics
        lines.append(f"vs annotations ({m['n_epochs']} scored epochs): accuracy {m['accuracy']:.3f}  macro-F1 "
                     f"{m['macro_f1']:.3f}  kappa {m['kappa']:.3f}")
    for warning in result.report["warnings"]:
        lines.append(f"warning: {warning}")
    if result.files:
        folder = Path(next(iter(result.files.values()))).parent.resolve()
        lines.append(f"files in {folder}: " + ", ".join(Path(p).name for p in result.files.values()))
    return "\n".join(lines)
