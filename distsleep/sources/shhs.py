"""SHHS and the other NSRR cohorts (MESA, MrOS, CFS, CHAT, WSC): EDF + NSRR/Profusion XML -> `Record`.

Why the checks: public pipelines concatenate signal and label epochs without comparing their counts, so one
bad file shifts every later label (DESIGN.md §2). Here a difference of one epoch (a trailing partial
epoch scored or not) is truncated and noted; anything larger raises LengthMismatchError. Roles are
resolved by exact label alias, so a file without C4-A1 ("EEG") fails instead of silently using C3-A2.
Which alias table applies depends on the cohort (distsleep.sources.montages): given, else named by the file
(`mesa-sleep-0001`), else unknown, and then a label whose meaning differs between cohorts is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distsleep.errors import InputError, LengthMismatchError
from distsleep.sources import nsrr
from distsleep.sources.channel_map import ChannelMap
from distsleep.sources.edf import read_header
from distsleep.sources.loading import read_role_channels, signal_epochs, slice_channels
from distsleep.sources.montages import NSRR_COHORTS, cohort_of_record
from distsleep.sources.record import Record
from distsleep.stages import EPOCH_SECONDS, UNSCORED

SOURCE = "shhs"
UNKNOWN_COHORT = "nsrr"  # Record.source of a night whose cohort is not known
MAX_EPOCH_DIFFERENCE = 1


def load_shhs_record(
    edf_path: str | Path,
    annotations_path: str | Path | None = None,
    roles: Sequence[str] = ("eeg_c4",),
    record_id: str | None = None,
    channel_map: ChannelMap | None = None,
) -> Record:
    """An SHHS night (the SHHS alias table, refined by `channel_map`): `load_nsrr_record` with cohort "shhs"."""
    return load_nsrr_record(edf_path, annotations_path, roles, record_id, cohort=SOURCE, channel_map=channel_map)


def nsrr_cohort(record_id: str, cohort: str | None, edf_path: str | Path) -> str | None:
    """The cohort whose alias table applies: `cohort` if given, else the one the record id names, else None.

    A given cohort that contradicts the file's name (an SHHS run over `mesa-sleep-0001.edf`) is refused:
    the wrong table would read the wrong electrodes.
    """
    named = cohort_of_record(record_id)
    if cohort is None:
        return named
    if cohort not in NSRR_COHORTS:
        raise ValueError(f"unknown NSRR cohort {cohort!r} (known: {', '.join(NSRR_COHORTS)})")
    if named is not None and named != cohort:
        raise InputError(edf_path, f"the file is named as a {named} recording but is read as {cohort}: "
                                     f"channel labels differ between cohorts; read it as cohort {named!r}")
    return cohort


def load_nsrr_record(
    edf_path: str | Path,
    annotations_path: str | Path | None = None,
    roles: Sequence[str] = ("eeg_c4",),
    record_id: str | None = None,
    cohort: str | None = None,
    channel_map: ChannelMap | None = None,
) -> Record:
    """Read the requested roles at native rates plus the stages/events, with signal and labels aligned.

    Roles come from `channel_map` first, then the cohort's alias table (`nsrr_cohort`); with no cohort known
    a label that means different roles in different cohorts is refused (AmbiguousChannelError). Without
    annotations every epoch is UNSCORED (and a problem is noted). Signals are cut to the whole epochs that
    carry a label, so `len(channel.data) == record.n_epochs * 30 * channel.rate`.
    """
    edf_path = Path(edf_path)
    record_id = record_id or edf_path.stem
    cohort = nsrr_cohort(record_id, cohort, edf_path)
    header = read_header(edf_path)
    channels, problems = read_role_channels(header, cohort, roles, channel_map)
    n_signal = signal_epochs(header.duration, EPOCH_SECONDS)
    metadata: dict = {"edf": str(edf_path), "annotations": None, "signal_epochs": n_signal}

    if annotations_path is None:
        stages = np.full(n_signal, UNSCORED, dtype=np.int8)
        raw = np.full(n_signal, 9, dtype=np.int8)
        events = []
        problems.append("no annotation file: every epoch is unscored")
        n_epochs = n_signal
    else:
        ann = nsrr.read_annotations(annotations_path)
        metadata.update(annotations=str(annotations_path), annotation_format=ann.format, label_epochs=ann.n_epochs)
        difference = abs(ann.n_epochs - n_signal)
        if difference > MAX_EPOCH_DIFFERENCE:
            raise LengthMismatchError(
                annotations_path,
                f"annotations have {ann.n_epochs} epochs but the signal {edf_path.name} has {n_signal} "
                f"({header.duration:g} s): difference of {difference} epochs exceeds {MAX_EPOCH_DIFFERENCE}",
            )
        n_epochs = min(ann.n_epochs, n_signal)
        if difference:
            problems.append(
                f"annotations have {ann.n_epochs} epochs, signal has {n_signal}: truncated both to {n_epochs}"
            )
        stages, raw, events = ann.stages[:n_epochs], ann.raw_stage_codes[:n_epochs], ann.events
        outside = [e for e in events if e.start + e.duration <= 0 or e.start >= n_epochs * EPOCH_SECONDS]
        if outside:
            problems.append(f"{len(outside)} scored event(s) lie outside the recording's {n_epochs} epochs (e.g. "
                            f"{outside[0].kind} at {outside[0].start:g} s): they flag no epoch")
        if ann.start_clock is not None and ann.start_clock != header.start_time.time():
            problems.append(
                f"annotation start clock {ann.start_clock.isoformat()} differs from EDF start time "
                f"{header.start_time.time().isoformat()}"
            )

    channels = slice_channels(channels, 0.0, n_epochs * EPOCH_SECONDS)
    metadata["raw_stage_codes"] = raw
    return Record(
        record_id=record_id,
        source=cohort or UNKNOWN_COHORT,
        channels=channels,
        stages=stages,
        events=list(events),
        start_time=header.start_time,
        epoch_seconds=EPOCH_SECONDS,
        metadata=metadata,
        problems=problems,
    )


_EDF_NAME = re.compile(r"^(?P<id>.+)\.edf$", re.IGNORECASE)


def find_nsrr_pairs(root: str | Path) -> list[tuple[str, Path, Path | None]]:
    """(record_id, edf, xml or None) for every EDF under the NSRR layout, sorted by record id.

    `root` is the dataset folder holding `polysomnography/` (or that folder itself). EDFs lie in
    `edfs/<visit>/` (SHHS, MrOS, CHAT) or directly in `edfs/` (MESA, CFS); the annotation folders mirror
    that. The NSRR XML (`annotations-events-nsrr/[<visit>/]<id>-nsrr.xml`) is preferred, the Profusion XML
    is the fallback.
    """
    root = Path(root)
    psg = root if root.name == "polysomnography" else root / "polysomnography"
    pairs: list[tuple[str, Path, Path | None]] = []
    edf_root = psg / "edfs"
    if not edf_root.is_dir():
        return pairs
    for edf in sorted([*edf_root.glob("*"), *edf_root.glob("*/*")]):
        match = _EDF_NAME.match(edf.name)
        if match is None or not edf.is_file():
            continue
        record_id, visit = match["id"], edf.parent.relative_to(edf_root)
        candidates = (
            psg / "annotations-events-nsrr" / visit / f"{record_id}-nsrr.xml",
            psg / "annotations-events-profusion" / visit / f"{record_id}-profusion.xml",
        )
        xml = next((c for c in candidates if c.is_file()), None)
        pairs.append((record_id, edf, xml))
    pairs.sort(key=lambda pair: pair[0])
    return pairs


find_shhs_pairs = find_nsrr_pairs  # SHHS is one NSRR cohort; the name stays for its callers
