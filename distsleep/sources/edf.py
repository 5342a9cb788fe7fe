"""EDF / EDF+ reader in NumPy that keeps every signal at its own sampling rate.

Why not MNE: `mne.io.read_raw_edf` brings every channel it loads to the highest rate among them (SHHS EEG
125 Hz loaded with ECG 250 Hz comes back at 250 Hz), and parsing a whole night to keep one channel is the
slow part of preprocessing (DESIGN.md §2). The data section of an EDF is a matrix of int16 — one row per
data record, each signal a fixed column block — so reading one channel is a memmap plus a column slice.

Header problems that make the file unusable as a whole (not an EDF, truncated, zero records, non-numeric
fields) raise `EdfFormatError` from `read_header`. Problems of one signal (physical or digital range of
zero width, zero samples per record) raise only when that signal is read, so a broken marker channel does
not stop the EEG from being read; `SignalHeader.problems()` lists them for inspection.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distsleep.errors import EdfFormatError, MissingChannelError
from distsleep.sources.record import checked_seconds

ANNOTATION_LABEL = "EDF Annotations"
_FIXED_HEADER_BYTES = 256
# Per-signal header fields: (name, width in bytes), stored field-by-field for all signals in turn.
_SIGNAL_FIELDS: tuple[tuple[str, int], ...] = (
    ("label", 16),
    ("transducer", 80),
    ("unit", 8),
    ("physical_min", 8),
    ("physical_max", 8),
    ("digital_min", 8),
    ("digital_max", 8),
    ("prefiltering", 80),
    ("samples_per_record", 8),
    ("reserved", 32),
)
_SIGNAL_HEADER_BYTES = sum(width for _, width in _SIGNAL_FIELDS)  # 256

# Physical units -> factor to microvolts. Keys are compared case-sensitively after stripping, except that
# the micro sign is accepted in its three spellings ("u", U+00B5 micro sign, U+03BC Greek mu).
_TO_MICROVOLT: dict[str, float] = {"uV": 1.0, "mV": 1e3, "V": 1e6, "nV": 1e-3}


@dataclass
class SignalHeader:
    """One signal's header fields, exactly as the file states them (strings stripped of padding)."""

    label: str
    transducer: str
    unit: str
    physical_min: float
    physical_max: float
    digital_min: int
    digital_max: int
    prefiltering: str
    samples_per_record: int
    reserved: str
    record_duration: float = 0.0  # copied from the file header so that `rate` needs nothing else

    @property
    def rate(self) -> float:
        """Samples per second; 0.0 for annotation-only files whose records last 0 s (EDF+ allows it)."""
        if self.record_duration <= 0:
            return 0.0
        return self.samples_per_record / self.record_duration

    @property
    def is_annotation(self) -> bool:
        return self.label == ANNOTATION_LABEL

    @property
    def gain(self) -> float:
        return (self.physical_max - self.physical_min) / (self.digital_max - self.digital_min)

    @property
    def offset(self) -> float:
        return self.physical_min - self.gain * self.digital_min

    def problems(self) -> list[str]:
        """Reasons this signal's samples cannot be turned into physical values (empty when fine)."""
        found: list[str] = []
        if self.samples_per_record <= 0:
            found.append(f"signal {self.label!r} has {self.samples_per_record} samples per data record (zero-length signal)")
        if self.is_annotation:
            return found
        if self.physical_min == self.physical_max:
            found.append(f"signal {self.label!r} has physical minimum == physical maximum ({self.physical_min:g})")
        if self.digital_min == self.digital_max:
            found.append(f"signal {self.label!r} has digital minimum == digital maximum ({self.digital_min})")
        return found


@dataclass
class EdfHeader:
    """The file header plus one `SignalHeader` per signal, in file order."""

    path: Path
    version: str
    patient: str
    recording: str
    start_time: dt.datetime
    header_bytes: int
    n_records: int  # complete data records (computed from the file size when the header says -1)
    record_duration: float  # seconds
    signals: list[SignalHeader]
    is_edf_plus: bool
    is_discontinuous: bool = False  # EDF+D
    declared_n_records: int = 0  # as written in the header (may be -1)
    file_size: int = 0

    @property
    def duration(self) -> float:
        return self.n_records * self.record_duration

    @property
    def labels(self) -> list[str]:
        return [signal.label for signal in self.signals]

    @property
    def record_samples(self) -> int:
        """int16 samples in one data record, all signals together."""
        return sum(signal.samples_per_record for signal in self.signals)

    @property
    def record_bytes(self) -> int:
        return 2 * self.record_samples

    def signal(self, label: str) -> SignalHeader:
        return self.signals[self.index(label)]

    def index(self, label: str) -> int:
        """Position of the first signal whose label equals `label` (surrounding spaces ignored)."""
        wanted = label.strip()
        for i, signal in enumerate(self.signals):
            if signal.label == wanted:
                return i
        present = ", ".join(repr(s.label) for s in self.signals if not s.is_annotation)
        raise MissingChannelError(self.path, f"no signal labelled {wanted!r} (signals present: {present})")

    def column_offset(self, index: int) -> int:
        """First int16 column of signal `index` inside a data record."""
        return sum(signal.samples_per_record for signal in self.signals[:index])


def to_microvolts(data: np.ndarray, unit: str) -> np.ndarray:
    """Scale ExG samples given in `unit` to microvolts (SHHS ECG is stored in mV, some exporters use V).

    Raises ValueError for a unit that is not a voltage, so callers never mislabel a signal as uV.
    """
    key = unit.strip().replace("\u00b5", "u").replace("\u03bc", "u")
    if key.lower() == "uv":
        key = "uV"
    factor = _TO_MICROVOLT.get(key)
    if factor is None:
        raise ValueError(f"unit {unit!r} is not a voltage (expected uV, mV, V or nV)")
    if factor == 1.0:
        return data
    return (np.asarray(data, dtype=np.float64) * factor).astype(np.float32)


def is_voltage_unit(unit: str) -> bool:
    try:
        to_microvolts(np.zeros(0, dtype=np.float32), unit)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------- header


def _text(raw: bytes) -> str:
    # EDF headers are ASCII by the standard; real files carry Latin-1 (e.g. "\xb5V"), which never fails.
    return raw.decode("latin-1").strip()


def _number(path: Path, name: str, raw: str, *, integer: bool = False) -> float | int:
    try:
        value = float(raw)
    except ValueError:
        raise EdfFormatError(path, f"header field {name} is not a number: {raw!r}") from None
    if not np.isfinite(value):
        raise EdfFormatError(path, f"header field {name} is not a finite number: {raw!r}")
    if integer:
        if value != int(value):
            raise EdfFormatError(path, f"header field {name} is not an integer: {raw!r}")
        return int(value)
    return value


def _start_time(path: Path, date_raw: str, time_raw: str, recording: str, is_plus: bool) -> dt.datetime:
    date_m = re.fullmatch(r"(\d{1,2})\D(\d{1,2})\D(\d{2})", date_raw)
    time_m = re.fullmatch(r"(\d{1,2})\D(\d{1,2})\D(\d{1,2})", time_raw)
    if date_m is None:
        raise EdfFormatError(path, f"header start date is not dd.mm.yy: {date_raw!r}")
    if time_m is None:
        raise EdfFormatError(path, f"header start time is not hh.mm.ss: {time_raw!r}")
    day, month, yy = (int(g) for g in date_m.groups())
    year = 1900 + yy if yy >= 85 else 2000 + yy  # the EDF 1985 clipping rule
    if is_plus:
        # EDF+ writes the 4-digit year in the recording field: "Startdate 24-APR-1989 ...".
        plus_m = re.match(r"Startdate\s+(\d{1,2})-([A-Za-z]{3})-(\d{4})", recording)
        if plus_m is not None:
            try:
                plus_date = dt.datetime.strptime("-".join(plus_m.groups()), "%d-%b-%Y").date()
            except ValueError:
                plus_date = None
            if plus_date is not None and (plus_date.day, plus_date.month) == (day, month):
                year = plus_date.year
    hour, minute, second = (int(g) for g in time_m.groups())
    try:
        return dt.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise EdfFormatError(path, f"header start date/time {date_raw} {time_raw} is invalid ({exc})") from None


def read_header(path: str | Path) -> EdfHeader:
    """Parse and validate the header; read no signal data.

    Checks the file against its own header: a file shorter than the declared data records is reported
    with the number of complete records present, so a partially copied night is never read as a short one.
    """
    path = Path(path)
    if not path.is_file():
        raise EdfFormatError(path, "file not found" if not path.exists() else "not a regular file")
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        fixed = fh.read(_FIXED_HEADER_BYTES)
        if len(fixed) < _FIXED_HEADER_BYTES:
            raise EdfFormatError(path, f"not an EDF file: only {len(fixed)} bytes, an EDF header needs at least 256")
        version = fixed[0:8].decode("latin-1")
        if version.strip() != "0":
            shown = fixed[0:8]
            raise EdfFormatError(path, f"not an EDF file: version field is {shown!r}, expected '0' (BDF and other formats are not EDF)")
        patient = _text(fixed[8:88])
        recording = _text(fixed[88:168])
        date_raw, time_raw = _text(fixed[168:176]), _text(fixed[176:184])
        header_bytes = _number(path, "header bytes", _text(fixed[184:192]), integer=True)
        reserved = _text(fixed[192:236])
        declared_n_records = _number(path, "number of data records", _text(fixed[236:244]), integer=True)
        record_duration = _number(path, "data record duration", _text(fixed[244:252]))
        n_signals = _number(path, "number of signals", _text(fixed[252:256]), integer=True)
        if n_signals < 1:
            raise EdfFormatError(path, f"header declares {n_signals} signals")
        expected_header = _FIXED_HEADER_BYTES + n_signals * _SIGNAL_HEADER_BYTES
        if header_bytes != expected_header:
            raise EdfFormatError(
                path, f"header bytes field says {header_bytes} but {n_signals} signals need {expected_header}"
            )
        rest = fh.read(n_signals * _SIGNAL_HEADER_BYTES)
        if len(rest) < n_signals * _SIGNAL_HEADER_BYTES:
            raise EdfFormatError(path, f"truncated header: {_FIXED_HEADER_BYTES + len(rest)} of {header_bytes} header bytes present")

    is_plus = reserved.startswith("EDF+")
    is_discontinuous = reserved.startswith("EDF+D")
    start_time = _start_time(path, date_raw, time_raw, recording, is_plus)

    columns: dict[str, list[str]] = {}
    pos = 0
    for name, width in _SIGNAL_FIELDS:
        columns[name] = [_text(rest[pos + i * width : pos + (i + 1) * width]) for i in range(n_signals)]
        pos += n_signals * width
    signals: list[SignalHeader] = []
    for i in range(n_signals):
        label = columns["label"][i]
        where = f"of signal {i + 1} ({label!r})"
        signals.append(
            SignalHeader(
                label=label,
                transducer=columns["transducer"][i],
                unit=columns["unit"][i],
                physical_min=float(_number(path, f"physical minimum {where}", columns["physical_min"][i])),
                physical_max=float(_number(path, f"physical maximum {where}", columns["physical_max"][i])),
                digital_min=int(_number(path, f"digital minimum {where}", columns["digital_min"][i], integer=True)),
                digital_max=int(_number(path, f"digital maximum {where}", columns["digital_max"][i], integer=True)),
                prefiltering=columns["prefiltering"][i],
                samples_per_record=int(_number(path, f"samples per record {where}", columns["samples_per_record"][i], integer=True)),
                reserved=columns["reserved"][i],
                record_duration=float(record_duration),
            )
        )

    if record_duration < 0:
        raise EdfFormatError(path, f"data record duration is negative ({record_duration:g} s)")
    if record_duration == 0 and any(not s.is_annotation for s in signals):
        raise EdfFormatError(path, "data record duration is 0 s but the file has ordinary signals")
    for s in signals:
        if s.samples_per_record < 0:
            raise EdfFormatError(path, f"signal {s.label!r} has a negative number of samples per record ({s.samples_per_record})")
        if s.digital_min > s.digital_max and not s.is_annotation:
            # EDF inverts polarity through the physical range only; a reversed digital range is a corrupt header,
            # and reading it would flip the signal without a word.
            raise EdfFormatError(path, f"signal {s.label!r} has digital minimum {s.digital_min} > digital maximum "
                                       f"{s.digital_max}: the header is corrupt (its samples would be read upside down)")
    record_bytes = 2 * sum(s.samples_per_record for s in signals)
    if record_bytes == 0:
        raise EdfFormatError(path, "every signal has 0 samples per data record (zero-length signals)")

    data_bytes = max(file_size - header_bytes, 0)
    present = data_bytes // record_bytes
    if declared_n_records == -1:
        n_records = present  # recording was not closed; the file size is the truth
    elif declared_n_records < -1:
        raise EdfFormatError(path, f"header declares {declared_n_records} data records")
    else:
        n_records = declared_n_records
        if present < declared_n_records:
            raise EdfFormatError(
                path,
                f"file is truncated: header declares {declared_n_records} data records of {record_bytes} bytes "
                f"but only {present} complete records are present ({data_bytes} data bytes, "
                f"{declared_n_records * record_bytes} expected)",
            )
    if n_records == 0:
        raise EdfFormatError(path, "file has zero data records (no signal data)")

    return EdfHeader(
        path=path,
        version=version.strip(),
        patient=patient,
        recording=recording,
        start_time=start_time,
        header_bytes=header_bytes,
        n_records=n_records,
        record_duration=float(record_duration),
        signals=signals,
        is_edf_plus=is_plus,
        is_discontinuous=is_discontinuous,
        declared_n_records=declared_n_records,
        file_size=file_size,
    )


# ------------------------------------------------------------------------------------------- signals


def _record_matrix(header: EdfHeader) -> np.ndarray:
    """The data section as an (n_records, samples_per_record_total) little-endian int16 memmap."""
    return np.memmap(
        header.path,
        dtype="<i2",
        mode="r",
        offset=header.header_bytes,
        shape=(header.n_records, header.record_samples),
    )


_CONVERT_CHUNK = 1 << 17  # samples per step of _physical: its float64 buffer (1 MB) stays in cache


def _physical(digital: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """float32(digital · gain + offset), computed in float64 as EDF's scaling asks, one cache-sized chunk at
    a time (the same values as converting the whole signal at once, in half the time for a night)."""
    out = np.empty(len(digital), dtype=np.float32)
    buffer = np.empty(min(_CONVERT_CHUNK, len(digital)), dtype=np.float64)
    for start in range(0, len(digital), _CONVERT_CHUNK):
        stop = min(len(digital), start + _CONVERT_CHUNK)
        chunk = buffer[: stop - start]
        chunk[:] = digital[start:stop]
        chunk *= gain
        chunk += offset
        out[start:stop] = chunk
    return out


def read_signals(path: str | Path, labels: list[str], header: EdfHeader | None = None) -> dict[str, np.ndarray]:
    """Read the named signals at their native rates, in the physical units of the header (float32).

    Only the wanted column blocks of the record matrix are copied out. Labels are matched exactly (after
    stripping padding); a missing label raises MissingChannelError listing the labels present. Units are
    not changed here — callers that know a signal is ExG convert with `to_microvolts`.
    """
    header = header if header is not None else read_header(path)
    if header.is_discontinuous:
        _check_contiguous(header)
    wanted = [(label, header.index(label)) for label in labels]
    for label, index in wanted:
        signal = header.signals[index]
        if signal.is_annotation:
            raise EdfFormatError(header.path, f"signal {label!r} holds EDF+ annotations, not samples (use read_annotations)")
        problems = signal.problems()
        if problems:
            raise EdfFormatError(header.path, "; ".join(problems))
    out: dict[str, np.ndarray] = {}
    if not wanted:
        return out
    matrix = _record_matrix(header)
    try:
        for label, index in wanted:
            signal = header.signals[index]
            start = header.column_offset(index)
            digital = np.asarray(matrix[:, start : start + signal.samples_per_record]).reshape(-1)
            out[label] = _physical(digital, signal.gain, signal.offset)
    finally:
        del matrix
    return out


# --------------------------------------------------------------------------------------- annotations


@dataclass
class _Tal:
    record: int
    onset: float
    duration: float
    texts: list[str] = field(default_factory=list)


def _parse_tals(path: Path, raw: bytes, record: int) -> list[_Tal]:
    """Parse the Time-stamped Annotation Lists of one data record (EDF+ spec §2.2.2)."""
    tals: list[_Tal] = []
    for chunk in raw.split(b"\x00"):
        if not chunk:
            continue  # padding between/after TALs
        parts = chunk.split(b"\x14")
        timing = parts[0]
        onset_raw, _, duration_raw = timing.partition(b"\x15")
        try:
            onset = float(onset_raw.decode("ascii"))
            duration = float(duration_raw.decode("ascii")) if duration_raw else 0.0
        except (UnicodeDecodeError, ValueError):
            raise EdfFormatError(path, f"data record {record}: malformed EDF+ annotation timing {timing[:40]!r}") from None
        if onset_raw[:1] not in (b"+", b"-"):
            raise EdfFormatError(path, f"data record {record}: EDF+ annotation onset {onset_raw!r} lacks its sign")
        checked_seconds(path, onset, f"data record {record}: EDF+ annotation onset")
        checked_seconds(path, duration, f"data record {record}: EDF+ annotation duration", duration=True)
        texts = []
        for text in parts[1:]:
            try:
                texts.append(text.decode("utf-8").strip())
            except UnicodeDecodeError:
                texts.append(text.decode("latin-1").strip())
        tals.append(_Tal(record, onset, duration, texts))
    return tals


def _read_tals(header: EdfHeader) -> list[_Tal]:
    indices = [i for i, s in enumerate(header.signals) if s.is_annotation]
    if not indices:
        raise EdfFormatError(header.path, f"no '{ANNOTATION_LABEL}' signal: not an EDF+ annotation file")
    matrix = np.memmap(header.path, dtype=np.uint8, mode="r", offset=header.header_bytes, shape=(header.n_records, header.record_bytes))
    tals: list[_Tal] = []
    try:
        for record in range(header.n_records):
            for index in indices:
                start = 2 * header.column_offset(index)
                stop = start + 2 * header.signals[index].samples_per_record
                tals.extend(_parse_tals(header.path, bytes(matrix[record, start:stop]), record))
    finally:
        del matrix
    return tals


def _check_contiguous(header: EdfHeader) -> None:
    """EDF+D records may have gaps between them; samples read as one array would then lie about time."""
    onsets: dict[int, float] = {}
    for tal in _read_tals(header):
        if tal.record not in onsets:
            onsets[tal.record] = tal.onset  # the first TAL of a record keeps its time
    first = onsets.get(0, 0.0)
    for record in range(header.n_records):
        expected = first + record * header.record_duration
        if abs(onsets.get(record, expected) - expected) > 1e-6:
            raise EdfFormatError(
                header.path,
                f"EDF+D file has a gap: data record {record} starts at {onsets[record]:g} s, not {expected:g} s "
                "(discontinuous recordings are not supported)",
            )


def read_annotations(path: str | Path, header: EdfHeader | None = None) -> list[tuple[float, float, str]]:
    """EDF+ annotations as (onset_s, duration_s, text), onsets relative to the header start time.

    The time-keeping TAL at the start of every data record (empty text) is skipped; a TAL with several
    texts gives one annotation per text.
    """
    header = header if header is not None else read_header(path)
    out: list[tuple[float, float, str]] = []
    for tal in _read_tals(header):
        for text in tal.texts:
            if text:
                out.append((tal.onset, tal.duration, text))
    return out
