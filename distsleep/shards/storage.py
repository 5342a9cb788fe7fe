"""Opening shards and manifests wherever they live: local paths, fsspec URLs, or (opted in) `pipe:` commands.

    /data/shards/shhs1-200001.tar            local path (or file://...)
    s3://bucket/shards/shhs1-200001.tar      an fsspec protocol of the allow-list: s3 (needs s3fs), gs/gcs
    gs://..., az://..., http(s)://...        (gcsfs), az/abfs (adlfs), http(s) (aiohttp, installed), hf
    pipe:aws s3 cp s3://bucket/x.tar -       a command whose stdout is the tar (webdataset's pipe:); only
                                             with --allow-shard-commands, see `check_entry`

Training on a cluster then streams straight from a bucket or a shared filesystem without a copy step.
Credentials come from the usual places of each library (environment, AWS config files, instance roles;
AWS_ENDPOINT_URL for S3-compatible stores), never from URLs: a URL with user:secret@ is refused (`store.py`).

Manifests and augmentation files are data, and data must not run commands: a `pipe:` entry runs in a shell
on every node that reads it, and exotic fsspec schemes can do as much. Entries are therefore checked when a
manifest is loaded (`check_entry`); and when a manifest lists a shard's sha256, the bytes read are checked
against it before they are decoded (`tar_samples`): by default for local files and object stores, the
storage preprocessing writes to (`should_verify`).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import deque
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# Where a manifest entry may point without an opt-in: paths and storage that can only be read.
READ_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "hf")
COMMANDS_OPTION = "--allow-shard-commands"
# Which shards are checked against their recorded sha256: "stored" (default) local files and object stores (the
# storage preprocessing writes to), "local" local files only, "all" also http(s)/hf, "none".
VERIFY_MODES = ("stored", "local", "all", "none")
DEFAULT_VERIFY = "stored"
OBJECT_STORES = ("s3", "gs", "gcs", "az", "abfs", "abfss")


class UnsafeEntryError(ValueError):
    """A manifest entry would run a command or open an unexpected kind of URL."""


class ShardChecksumError(ValueError):
    """A shard's bytes differ from the sha256 its manifest recorded."""


class EmptyShardError(ValueError):
    """A shard holds no sample."""

    def __init__(self, location: str):
        super().__init__(f"{location}: the shard holds no sample (an empty or cut-short tar); rerun `distsleep "
                         "preprocess` into its folder to rebuild it")


def scheme(location: str) -> str | None:
    """The URL scheme ('s3', 'pipe', 'file', ...) or None for a plain path."""
    match = _SCHEME.match(location)
    # A Windows drive letter ("C:") is a path, not a scheme.
    return match.group(1).lower() if match and len(match.group(1)) > 1 else None


def is_remote(location: str) -> bool:
    """True for locations other nodes may reach by themselves (not a local path or file: URL)."""
    return scheme(location) not in (None, "file")


def check_entry(location: str, manifest: str, entry: str, allow_commands: bool = False) -> None:
    """Refuse a shard entry of `manifest` that is a `pipe:` command or a URL whose scheme is not in
    READ_SCHEMES, unless the user opted in (`allow_commands`, the command line's --allow-shard-commands)."""
    kind = scheme(location)
    if kind not in (None, "pipe"):
        from distsleep.store import check_no_credentials

        check_no_credentials(location)  # a manifest is shared and logged: keys never go into one
    if kind is None or kind in READ_SCHEMES or allow_commands:
        return
    what = ("a pipe: command, which would run in a shell on every node that reads it" if kind == "pipe"
            else f"a {kind}: URL, a scheme outside the shard allow-list ({', '.join(READ_SCHEMES)} and plain paths)")
    raise UnsafeEntryError(f"{manifest}: {entry} is {location[:200]!r}, {what}; refused. If you trust this file "
                           f"and want it to do that, pass {COMMANDS_OPTION}")


def open_binary(location: str) -> IO[bytes]:
    """A binary read stream for a path, `pipe:` command or fsspec URL; errors name the location."""
    kind = scheme(location)
    try:
        if kind is None:
            return open(location, "rb")
        if kind == "pipe":
            import webdataset as wds

            return wds.gopen(location, "rb")
        import fsspec

        from distsleep.store import check_no_credentials

        check_no_credentials(location)

        return fsspec.open(location, "rb").open()
    except ImportError as error:
        raise OSError(f"{location}: no filesystem for '{kind}://' URLs is installed ({error})") from error
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{location}: not found") from error
    except OSError as error:
        raise OSError(f"{location}: cannot open ({error})") from error


def manifest_file(path_or_url: str | Path, name: str) -> str:
    """The manifest file a --shards value names: a manifest file, a folder holding `name`, or a URL of either
    (a URL ending in "/" is a folder); a local `file:` URL becomes its path."""
    location = str(path_or_url)
    if is_remote(location):
        return location + name if location.endswith("/") else location
    path = Path(re.sub(r"^file:(//)?", "", location))
    return str(path / name if path.is_dir() else path)


def read_bytes(location: str) -> bytes:
    with open_binary(location) as stream:
        return stream.read()


def should_verify(location: str, mode: str) -> bool:
    """Whether a shard at `location` is checked against its sha256 in verify mode `mode`: "stored" (the default)
    local files and object-store shards (s3://, gs://, ...), each read whole into memory and hashed before it
    is decoded (a night is decoded whole anyway; hashing costs about 1 s per GB); "local" local files only;
    "all" any URL (http(s) too); "none"."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"shard verification must be one of {VERIFY_MODES}, not {mode!r}")
    kind = scheme(location)
    return (mode == "all" or (mode in ("stored", "local") and not is_remote(location))
            or (mode == "stored" and kind in OBJECT_STORES))


def open_verified(location: str, sha256: str) -> IO[bytes]:
    """The shard's bytes, read whole and checked against `sha256` before anything parses them."""
    data = read_bytes(location)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ShardChecksumError(f"{location}: sha256 {actual[:16]}... differs from the {sha256[:16]}... its manifest "
                                 "recorded: the shard changed after preprocessing (corrupted, replaced or half-copied); "
                                 "rerun `distsleep preprocess` into its folder to rebuild it")
    return io.BytesIO(data)


def _open_streams(samples: Iterable[dict[str, Any]], checksums: dict[str, str] | None, verify: str) -> Iterator[dict[str, Any]]:
    for sample in samples:
        url = sample["url"]
        expected = (checksums or {}).get(url)
        stream = open_verified(url, expected) if expected and should_verify(url, verify) else open_binary(url)
        yield {**sample, "stream": stream}


def tar_samples(samples: Iterable[dict[str, Any]], checksums: dict[str, str] | None = None,
                verify: str = DEFAULT_VERIFY) -> Iterator[dict[str, Any]]:
    """webdataset pipeline stage: {'url': ...} items -> samples (like wds.tarfile_to_samples, but every
    location is opened by `open_binary`, so fsspec URLs work and errors name the shard). A url with an entry
    in `checksums` is verified first when `should_verify(url, verify)`. A shard that yields no sample (an empty
    or cut-short tar, which no checksum catches under --verify-shards none) is an EmptyShardError naming it,
    never a night silently missing from training or evaluation."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    waiting: deque[str] = deque()  # shards opened, in order, that have not yielded a sample yet

    def opened() -> Iterator[dict[str, Any]]:
        for item in _open_streams(samples, checksums, verify):
            waiting.append(item["url"])
            yield item

    for sample in group_by_keys(tar_file_expander(opened())):
        url = sample.get("__url__")
        if url is not None and url in waiting:
            if waiting[0] != url:  # samples come in shard order: every shard opened before this one was empty
                raise EmptyShardError(waiting[0])
            waiting.popleft()
        yield sample
    if waiting:
        raise EmptyShardError(waiting[0])
