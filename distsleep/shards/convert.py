"""One recording -> one shard. Pure steps (select, filter, resample, epoch, quantize) plus the file write.

This is the body of the per-recording Ray task; it runs the same way in a plain process, which is how
the benchmark measures it against the naive route.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal as sps

from distsleep.config import PreprocessConfig
from distsleep.errors import AnnotationError, SamplingRateError
from distsleep.shards.format import EVENT_COLUMNS, ShardSample, quantize, record_id_problem, write_shard
from distsleep.signal import percentiles_of_codes, resample
from distsleep.sources.record import Event, Record
from distsleep.sources.shhs import load_nsrr_record
from distsleep.sources.sleepedf import load_sleepedf_record
from distsleep.sources.subjects import subject_of
from distsleep.stages import N1, N2, N3, REM, stage_counts
from distsleep.store import join, read_json, sha256, size, write_json

SHARD_FOLDER = "shards"
MARKER_FOLDER = "records"  # per-record summaries: the completion markers


@dataclass(frozen=True)
class RecordSource:
    """Where a recording's files are: the unit of work of the preprocessing job."""

    record_id: str
    signal_path: str
    annotation_path: str | None


def load_record(source: RecordSource, config: PreprocessConfig) -> Record:
    if source.annotation_path is None:
        raise AnnotationError(source.signal_path, "no annotation file found for this recording "
                              "(expected an NSRR/Profusion XML or a Sleep-EDF hypnogram beside it)")
    if config.source in ("shhs", "nsrr"):
        cohort = "shhs" if config.source == "shhs" else config.cohort
        return load_nsrr_record(source.signal_path, source.annotation_path, roles=config.channels,
                                record_id=source.record_id, cohort=cohort, channel_map=config.channel_map)
    return load_sleepedf_record(source.signal_path, source.annotation_path, roles=config.channels,
                                record_id=source.record_id, channel_map=config.channel_map)


def wake_trim_range(stages: np.ndarray, minutes: float | None, epoch_seconds: float) -> tuple[int, int]:
    """[start, stop) epochs keeping `minutes` of wake before the first and after the last sleep epoch."""
    n = len(stages)
    asleep = np.flatnonzero(np.isin(stages, (N1, N2, N3, REM)))
    if minutes is None or asleep.size == 0:
        return 0, n
    margin = int(round(minutes * 60 / epoch_seconds))
    return max(0, int(asleep[0]) - margin), min(n, int(asleep[-1]) + 1 + margin)


BAND_EDGE = 0.45  # a band-pass stops at this fraction of the native rate (just under its Nyquist rate)


def bandpass(x: np.ndarray, rate: float, band: tuple[float, float]) -> np.ndarray:
    """Zero-phase 4th-order Butterworth band-pass at the native rate (before resampling)."""
    high = min(band[1], BAND_EDGE * rate)
    sos = sps.butter(4, [band[0], high], btype="band", fs=rate, output="sos")
    return sps.sosfiltfilt(sos, x).astype(np.float32)


def epoch_signal(x: np.ndarray, rate: float, config: PreprocessConfig, n_epochs: int,
                 band: tuple[float, float] | None = None) -> np.ndarray:
    """(n_epochs, samples_per_epoch) float32 at the target rate, band-passed by `band` first (if given).
    Resampling by a rational factor can leave a sample or two too many or too few at the end; those are
    trimmed or edge-padded."""
    if band is not None:
        x = bandpass(x, rate, band)
    y = resample(x, rate, config.target_rate)
    per_epoch = int(round(config.epoch_seconds * config.target_rate))
    need = n_epochs * per_epoch
    if len(y) < need:
        if need - len(y) > per_epoch // 100 + 2:
            raise ValueError(f"resampled signal has {len(y)} samples, {need} expected")
        y = np.pad(y, (0, need - len(y)), mode="edge")
    return y[:need].reshape(n_epochs, per_epoch)


def robust_stats(epochs: np.ndarray) -> dict:
    """Median and inter-quartile range of one channel over the whole night (what robust scaling divides by),
    over every kept epoch, so a training window and the full night at inference are scaled identically."""
    q25, median, q75 = np.percentile(epochs, [25, 50, 75])
    return {"median": float(median), "iqr": float(q75 - q25)}


def code_stats(codes: np.ndarray, scale: float) -> dict:
    """`robust_stats` of the stored values codes · scale, from the int16 codes' histogram (~6x faster than
    sorting the float signal). These are the values the loader scales, so the statistics describe exactly
    what the model sees; they differ from the float signal's by at most half a quantisation step."""
    q25, median, q75 = percentiles_of_codes(codes, (25, 50, 75))
    return {"median": median * scale, "iqr": (q75 - q25) * scale}


def event_flags(events: list[Event], n_epochs: int, epoch_seconds: float, offset_s: float = 0.0) -> np.ndarray:
    """uint8 (n_epochs, 3): 1 where an apnea / hypopnea / desaturation overlaps the epoch. Events outside the
    epochs kept (before the recording, past its end, in wake trimmed off) flag nothing."""
    flags = np.zeros((n_epochs, len(EVENT_COLUMNS)), dtype=np.uint8)
    for event in events:
        if event.kind.endswith("apnea"):
            column = 0
        elif event.kind == "hypopnea":
            column = 1
        elif event.kind == "desaturation":
            column = 2
        else:
            continue
        start, stop = event.start - offset_s, event.start - offset_s + max(event.duration, 1e-6)
        first = max(0, int(np.floor(start / epoch_seconds)))
        last = min(n_epochs, int(np.ceil(stop / epoch_seconds)))
        if last > first:  # a negative `last` would otherwise index from the end and flag most of the night
            flags[first:last, column] = 1
    return flags


def check_bands(record: Record, config: PreprocessConfig, path: str | Path) -> None:
    """Refuse a band-pass that a channel's native rate cannot carry, naming the file, channel and rates
    (Sleep-EDF's EMG is a 1-Hz envelope; SynthSleepNet's recipe asks 25-49 Hz of it), instead of failing
    inside scipy's filter design."""
    for role in config.channels:
        band, channel = config.band_for(role), record.channels[role]
        if band is not None and band[0] >= BAND_EDGE * channel.rate:
            raise SamplingRateError(path, f"channel {channel.label!r} (role {role}) is sampled at {channel.rate:g} Hz, "
                                          f"too slowly for its {band[0]:g}-{band[1]:g} Hz band-pass (which needs more "
                                          f"than {band[0] / BAND_EDGE:.4g} Hz); leave the role out or choose another "
                                          "band or filter recipe")


def record_to_sample(record: Record, config: PreprocessConfig, path: str | Path) -> ShardSample:
    """The shard sample of `record` under `config` (preprocessing and predict both build it here); `path`,
    the recording's file, is what errors name."""
    check_bands(record, config, path)
    start, stop = wake_trim_range(record.stages, config.trim_wake_minutes, config.epoch_seconds)
    n_epochs = stop - start
    columns, scales, channel_meta, stats = [], [], [], []
    for role in config.channels:
        channel = record.channels[role]
        first = int(round(start * config.epoch_seconds * channel.rate))
        last = int(round(stop * config.epoch_seconds * channel.rate))
        band = config.band_for(role)
        epochs = epoch_signal(channel.data[first:last], channel.rate, config, n_epochs, band)
        codes, scale = quantize(epochs)
        columns.append(codes)
        scales.append(scale)
        stats.append(code_stats(codes, scale))
        channel_meta.append({"role": role, "label": channel.label, "source_rate": channel.rate,
                             "unit": channel.unit, "bandpass_hz": list(band) if band else None})
    meta = {
        "record_id": record.record_id,
        "source": record.source,
        "channels": channel_meta,
        "target_rate": config.target_rate,
        "scale_uv": scales,
        "channel_stats": stats,
        "n_epochs": n_epochs,
        "epoch_seconds": config.epoch_seconds,
        "kept_epochs": [start, stop],
        "config_hash": config.content_hash(),
        "event_columns": list(EVENT_COLUMNS),
        "augmented": False,
    }
    return ShardSample(
        key=record.record_id,
        signals=np.stack(columns, axis=1),
        labels=record.stages[start:stop].astype(np.int8),
        events=event_flags(record.events, n_epochs, config.epoch_seconds, offset_s=start * config.epoch_seconds),
        meta=meta,
    )


def signal_fingerprint(sample: ShardSample) -> str:
    """sha256 of the signals a sample holds: its shape, each channel's scale (uV per code) and its int16 codes, as
    little-endian bytes. Two records of one preprocessing config with the same fingerprint hold the same signals
    (one night copied under another name); the record id, labels and events are not in it. Kept in the record's
    summary, never in the shard (whose bytes it leaves alone), so a rerun compares records without reading them."""
    digest = hashlib.sha256()
    digest.update(np.asarray(sample.signals.shape, dtype="<i8").tobytes())
    digest.update(np.asarray(sample.meta["scale_uv"], dtype="<f8").tobytes())
    codes = np.ascontiguousarray(sample.signals, dtype="<i2")  # no copy for the int16 array record_to_sample builds
    digest.update(codes.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def source_stamp(source: RecordSource) -> dict:
    """Size and modification time of a recording's input files: a rerun redoes a record whose inputs
    changed (another cohort with the same record ids, an edited XML) instead of keeping its old shard."""
    stamp = {}
    for role, path in (("signal", source.signal_path), ("annotation", source.annotation_path)):
        if path is not None:
            status = os.stat(path)
            stamp[role] = {"bytes": status.st_size, "mtime_ns": status.st_mtime_ns}
    return stamp


def shard_path(out: str | Path, record_id: str) -> str:
    """Where a record's shard goes under the output location `out` (a folder or an object-store prefix)."""
    return join(out, SHARD_FOLDER, f"{record_id}.tar")


def summary_path(out: str | Path, record_id: str) -> str:
    """Where a record's summary (its completion marker) goes under `out`."""
    return join(out, MARKER_FOLDER, f"{record_id}.json")


def convert_record(source: RecordSource, config: PreprocessConfig, out: str | Path) -> dict:
    """Convert one recording and write its shard and summary under `out` (a folder or an s3://... prefix: the
    shard is built in memory and written in one piece, nothing is staged on local disk). Returns the summary.

    The summary (written after the shard, both whole or not at all) is the record's completion marker: a
    rerun skips a record only when its summary has the same config hash and input stamp and its shard still
    has the recorded sha256 (see `completed_summary`).
    """
    problem = record_id_problem(source.record_id)
    if problem:  # the id names the shard: rename the file rather than write a shard the loader refuses
        raise ValueError(f"{source.signal_path}: {problem}")
    stamp = source_stamp(source)
    record = load_record(source, config)
    sample = record_to_sample(record, config, source.signal_path)
    n_bytes, digest = write_shard(shard_path(out, source.record_id), sample)
    summary = {
        "record_id": source.record_id,
        "subject": subject_of(source.record_id, config.source),
        "shard": f"{SHARD_FOLDER}/{source.record_id}.tar",  # relative to the manifest's folder
        "sha256": digest,
        "bytes": n_bytes,
        "n_epochs": sample.meta["n_epochs"],
        "stages": stage_counts(sample.labels),
        "events": {name: int(sample.events[:, i].sum()) for i, name in enumerate(EVENT_COLUMNS)},
        "channels": sample.meta["channels"],
        "kept_epochs": sample.meta["kept_epochs"],
        "signal_fingerprint": signal_fingerprint(sample),  # the pipeline refuses records holding the same signals
        "config_hash": config.content_hash(),
        "source": stamp,
        "notes": list(record.problems),
    }
    write_json(summary_path(out, source.record_id), summary)
    return summary


def completed_summary(out: str | Path, source: RecordSource, config_hash: str) -> dict | None:
    """The summary of a record already converted with this config from these input files, whose shard is
    still the one written (same size and sha256, read back from wherever it lives), or None if it must be
    (re)done."""
    try:
        summary = read_json(summary_path(out, source.record_id))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    shard = join(out, summary.get("shard", ""))
    if (summary.get("config_hash") != config_hash or summary.get("source") != source_stamp(source)
            or size(shard) != summary.get("bytes") or sha256(shard) != summary.get("sha256")):
        return None
    return summary
