"""`distsleep inspect`: what is in a recording, and what would stop it from being used, without reading it.

Why header-only: a person checking a folder of nights wants the answer in milliseconds per file, so
channels, rates and durations come from the EDF header, and the annotation file is parsed for stage and
event counts. The same rules as the loaders apply (exact role aliases, 30-s epochs, one-epoch tolerance),
so every problem listed here is one the loader would raise or note. Annotation problems are reported in
`problems` rather than raised, so one report shows everything wrong with the pair.
"""

from __future__ import annotations

from pathlib import Path

from distsleep.errors import ImpossibleValueError, InputError
from distsleep.sources import nsrr, sleepedf
from distsleep.sources.channels import PRIMARY_EEG_ROLE, ROLE_SETS, role_by_name, role_of_label, resolve_roles
from distsleep.sources.edf import EdfHeader, read_header
from distsleep.sources.loading import signal_epochs
from distsleep.sources.shhs import MAX_EPOCH_DIFFERENCE
from distsleep.stages import EPOCH_SECONDS, stage_counts

UNKNOWN_SOURCE = "unknown"
REPORT_KEYS = ("file", "source", "channels", "duration_s", "stages", "events", "problems", "notes")


def detect_source(labels: list[str]) -> str:
    """"shhs" or "sleep-edf" by which role set matches more labels exactly; "unknown" on no match or a tie."""
    scores = {source: len(resolve_roles(source, labels)) for source in ROLE_SETS}
    best = max(scores.values())
    winners = [source for source, score in scores.items() if score == best]
    return winners[0] if best > 0 and len(winners) == 1 else UNKNOWN_SOURCE


def _channel_rows(header: EdfHeader, source: str) -> list[dict]:
    rows = []
    for signal in header.signals:
        if signal.is_annotation:
            continue
        role = role_of_label(source, signal.label) if source != UNKNOWN_SOURCE else None
        rows.append(
            {
                "label": signal.label,
                "role": role.name if role is not None else None,
                "rate": signal.rate,
                "unit": signal.unit,
                "duration_s": header.duration,
                "samples": header.n_records * signal.samples_per_record,
            }
        )
    return rows


def _annotation_summary(path: Path, header: EdfHeader, source: str) -> tuple[dict | None, dict | None, list[str], list[str]]:
    """(stage counts, event counts, problems, notes) for an NSRR/Profusion XML or a Sleep-EDF hypnogram EDF+.

    Problems stop the pair from being used; notes describe what loading will do (truncate, ignore).
    """
    n_signal = signal_epochs(header.duration, EPOCH_SECONDS)
    problems: list[str] = []
    notes: list[str] = []
    try:
        if path.suffix.lower() == ".xml":
            ann = nsrr.read_annotations(path)
            labels, events = ann.stages, ann.events
            difference = abs(ann.n_epochs - n_signal)
            if difference > MAX_EPOCH_DIFFERENCE:
                problems.append(
                    f"annotations have {ann.n_epochs} epochs, signal has {n_signal}: length mismatch of "
                    f"{difference} epochs (loading fails)"
                )
            elif difference:
                notes.append(f"annotations have {ann.n_epochs} epochs, signal has {n_signal}: truncated to the shorter")
        else:
            hyp = sleepedf.read_hypnogram(path, header.start_time)
            codes = hyp.raw_stage_codes[:n_signal]
            labels = nsrr.stages_from_codes(path, codes)
            events = [e for e in hyp.events if e.start < n_signal * EPOCH_SECONDS]
            if hyp.n_epochs > n_signal:
                notes.append(
                    f"hypnogram covers {hyp.n_epochs} epochs, signal has {n_signal}: "
                    f"{hyp.n_epochs - n_signal} epochs past the signal end are ignored"
                )
            elif hyp.n_epochs < n_signal:
                notes.append(f"hypnogram covers {hyp.n_epochs} epochs, signal has {n_signal}: the rest is unscored")
    except ImpossibleValueError:
        raise  # a corrupt file, not a problem to list: `inspect` exits 2 naming it
    except InputError as exc:
        return None, None, [str(exc)], []
    event_counts: dict[str, int] = {}
    for event in events:
        event_counts[event.kind] = event_counts.get(event.kind, 0) + 1
    return stage_counts(labels), dict(sorted(event_counts.items())), problems, notes


def inspect_recording(edf_path: str | Path, annotations_path: str | Path | None = None) -> dict:
    """JSON-ready summary of one recording (keys: REPORT_KEYS). Raises EdfFormatError for an unreadable EDF."""
    edf_path = Path(edf_path)
    header = read_header(edf_path)
    labels = [s.label for s in header.signals if not s.is_annotation]
    source = detect_source(labels)
    problems: list[str] = []
    if source == UNKNOWN_SOURCE:
        problems.append("channel labels match neither SHHS nor Sleep-EDF: source unknown")
    else:
        role = role_by_name(source, PRIMARY_EEG_ROLE[source])
        if role.name not in resolve_roles(source, labels):
            problems.append(
                f"primary EEG {role.description.removeprefix('EEG ')} (label {role.aliases[0]!r}) missing"
            )
    for signal in header.signals:
        problems.extend(signal.problems())
    if header.is_discontinuous:
        problems.append("EDF+D (discontinuous) file: signals are read only if its records are contiguous")

    stages = events = None
    notes: list[str] = []
    if annotations_path is not None:
        stages, events, annotation_problems, notes = _annotation_summary(Path(annotations_path), header, source)
        problems.extend(annotation_problems)
    return {
        "file": str(edf_path),
        "source": source,
        "channels": _channel_rows(header, source),
        "duration_s": header.duration,
        "stages": stages,
        "events": events,
        "problems": problems,
        "notes": notes,
    }


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _num(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else str(int(value))


def format_report(report: dict) -> str:
    """Readable text for a person: header lines, an aligned channel table, stage/event counts, problems."""
    out = [
        f"file:     {report['file']}",
        f"source:   {report['source']}",
        f"duration: {_num(report['duration_s'])} s ({report['duration_s'] / 3600:.2f} h, "
        f"{int(report['duration_s'] // EPOCH_SECONDS)} epochs of {_num(EPOCH_SECONDS)} s)",
        "",
    ]
    rows = [
        [c["label"], c["role"] or "-", _num(c["rate"]), c["unit"] or "-", _num(c["duration_s"]), str(c["samples"])]
        for c in report["channels"]
    ]
    out += _table(["label", "role", "rate_hz", "unit", "duration_s", "samples"], rows, right={2, 4, 5})
    out.append("")
    if report["stages"] is None:
        out.append("stages:   (no annotations)")
    else:
        total = sum(report["stages"].values())
        rows = [[name, str(n), f"{100 * n / total:.1f}" if total else "-"] for name, n in report["stages"].items()]
        rows.append(["total", str(total), "100.0" if total else "-"])
        out += _table(["stage", "epochs", "%"], rows, right={1, 2})
    if report["events"]:
        out.append("")
        out += _table(["event", "count"], [[k, str(v)] for k, v in report["events"].items()], right={1})
    out.append("")
    if report["problems"]:
        out.append("problems:")
        out += [f"  - {p}" for p in report["problems"]]
    else:
        out.append("problems: none")
    out += [f"note: {n}" for n in report["notes"]]
    return "\n".join(out)
