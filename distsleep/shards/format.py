"""The shard format: one WebDataset tar per recording, one sample per tar.

A sample holds the whole night so that the loader can cut sequences of L consecutive epochs starting
at any position (context crosses no shard boundary) and storage stays compact: one tar header per array,
not per epoch. Members of the sample with key `<record_id>` (no dots, e.g. `shhs1-200001`):

    <key>.signals.npy   int16   (n_epochs, n_channels, samples_per_epoch)   physical = int16 * scale_uv[c]
    <key>.labels.npy    int8    (n_epochs,)         0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 unscored (masked)
    <key>.events.npy    uint8   (n_epochs, 3)       1 where an apnea / hypopnea / desaturation overlaps the epoch
    <key>.meta.json     dict    record_id, source, channels [{role, label, source_rate, unit}], target_rate,
                                scale_uv, n_epochs, epoch_seconds, kept_epochs, config_hash, event_columns,
                                augmented (False for real/synthetic-cohort recordings)

Arrays are plain .npy (never pickles); tars are written with mtime 0 and fixed owner/mode so the same
inputs give byte-identical shards, first to a temporary name and then renamed into place (or, in object storage, in one PUT), so a
shard under its final name is always complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds


EVENT_COLUMNS = ("apnea", "hypopnea", "desaturation")
INT16_MAX = 32767


@dataclass
class ShardSample:
    key: str
    signals: np.ndarray  # int16 (n_epochs, n_channels, samples_per_epoch)
    labels: np.ndarray  # int8 (n_epochs,)
    events: np.ndarray  # uint8 (n_epochs, len(EVENT_COLUMNS))
    meta: dict

    def physical(self) -> np.ndarray:
        """Signals in uV as float32, (n_epochs, n_channels, samples_per_epoch)."""
        scale = np.asarray(self.meta["scale_uv"], dtype=np.float32)
        return self.signals.astype(np.float32) * scale[None, :, None]


def quantize(x: np.ndarray) -> tuple[np.ndarray, float]:
    """int16 codes and the uV-per-code scale that maps the channel's largest magnitude to 32767."""
    peak = float(max(x.max(), -x.min())) if x.size else 0.0  # max |x| without an |x| copy
    scale = peak / INT16_MAX if peak > 0 else 1.0
    scaled = np.divide(x, scale, dtype=np.float32) if x.dtype == np.float32 else x / scale
    return np.rint(scaled, out=scaled).astype(np.int16), scale  # rint = round half to even, like np.round


def _npy_parts(array: np.ndarray) -> list:
    """The .npy file of `array` (what `np.save` writes) as [header, data], the data a view, not a copy."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return [header.getvalue(), array.reshape(-1).view(np.uint8)]


def _member_parts(sample: ShardSample) -> dict[str, list]:
    if "." in sample.key:
        raise ValueError(f"sample key {sample.key!r} contains a dot; WebDataset splits keys on dots")
    return {
        "signals.npy": _npy_parts(sample.signals.astype(np.int16, copy=False)),
        "labels.npy": _npy_parts(sample.labels.astype(np.int8, copy=False)),
        "events.npy": _npy_parts(sample.events.astype(np.uint8, copy=False)),
        "meta.json": [json.dumps(sample.meta, sort_keys=True).encode()],
    }


def encode_sample(sample: ShardSample) -> dict:
    """The sample as WebDataset's member dict: `__key__` and the bytes of each member."""
    members = {name: b"".join(parts) for name, parts in _member_parts(sample).items()}
    return {"__key__": sample.key, **members}


def shard_bytes(sample: ShardSample) -> bytes:
    """The tar of one sample (the same bytes for the same sample): exactly what webdataset's
    `TarWriter(user="distsleep", group="distsleep", mode=0o444, mtime=0)` writes (ustar, members sorted by
    name, 512-byte blocks, two zero blocks and padding to tar's 10,240-byte record at the end; a test holds
    the two equal). Framed here so that the night's signal is copied once, into the returned bytes, instead
    of through np.save's and tarfile's buffers: a quarter of the time of building a shard."""
    parts = []
    for name, member in sorted(_member_parts(sample).items()):
        info = tarfile.TarInfo(f"{sample.key}.{name}")
        info.size = sum(len(part) for part in member)
        info.mtime, info.mode, info.uname, info.gname = 0, 0o444, "distsleep", "distsleep"
        parts.append(info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"))
        parts += member
        parts.append(tarfile.NUL * (-info.size % tarfile.BLOCKSIZE))
    parts.append(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
    size = sum(len(part) for part in parts)
    parts.append(tarfile.NUL * (-size % tarfile.RECORDSIZE))
    return b"".join(parts)


def write_shard(location: str | Path, sample: ShardSample) -> tuple[int, str]:
    """Write one sample to `location` (a path or an object-store URL) whole or not at all (`store.write_bytes`);
    returns the size and the sha256 of the bytes written. The checksum is computed in a second thread while
    the bytes go to storage (hashing and writing both release the GIL), so it hides behind the fsync or the
    upload instead of adding to them."""
    from distsleep.store import write_bytes

    data = shard_bytes(sample)
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
        write_bytes(location, data)
        return len(data), digest.result()


def _load_npy(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)


def record_id_problem(record_id) -> str | None:
    """Why `record_id` cannot be a record id, or None. A record id names files (its shard, its probabilities,
    its hypnogram plot), so it must be one plain file name: a shard that says its record is `../../x` must not
    make evaluation write outside its folder."""
    if not isinstance(record_id, str) or not record_id:
        return f"record id {record_id!r} is not a non-empty string"
    if len(record_id) > 200 or record_id.startswith(".") or any(c in record_id for c in "/\\") \
            or not record_id.isprintable():
        return (f"record id {record_id!r} is not a plain file name (a path separator, a leading dot, a control "
                "character or over 200 characters)")
    return None


def decode_sample(raw: dict) -> ShardSample:
    """A WebDataset sample dict (bytes values, as yielded by `wds.WebDataset(urls)`) to a ShardSample; a
    ValueError naming the shard when a member is missing (a tar cut short at a member boundary) or its record id
    (meta.json's, else the sample key) is not a plain file name (`record_id_problem`)."""
    where = raw.get("__url__", "a shard")
    missing = [m for m in ("signals.npy", "labels.npy", "events.npy", "meta.json") if m not in raw]
    if missing:
        raise ValueError(f"{where}: sample {raw.get('__key__')!r} lacks {', '.join(missing)} "
                         "(a shard cut short or not written by distsleep; preprocess it again)")
    meta = json.loads(raw["meta.json"])
    problem = record_id_problem(meta.get("record_id", raw["__key__"]) if isinstance(meta, dict) else None)
    if problem:
        raise ValueError(f"{where}: {problem}; this shard was not written by distsleep")
    return ShardSample(
        key=raw["__key__"],
        signals=_load_npy(raw["signals.npy"]),
        labels=_load_npy(raw["labels.npy"]),
        events=_load_npy(raw["events.npy"]),
        meta=meta,
    )


def read_shard(path: str | Path) -> ShardSample:
    """The single sample of a shard file, read with plain webdataset."""
    samples = [decode_sample(raw) for raw in wds.WebDataset(str(path), shardshuffle=False, empty_check=False)]
    if len(samples) != 1:
        raise ValueError(f"{path}: expected one sample, found {len(samples)}")
    return samples[0]
