"""Opening shards and manifests wherever they live: local paths, `pipe:` commands, or fsspec URLs.

    /data/shards/shhs1-200001.tar            local path (or file://...)
    pipe:aws s3 cp s3://bucket/x.tar -       a command whose stdout is the tar (webdataset's pipe:)
    s3://bucket/shards/shhs1-200001.tar      any fsspec protocol: s3 (needs s3fs), gs/gcs (gcsfs),
    gs://..., az://..., http(s)://...        az/abfs (adlfs), http(s) (aiohttp, installed), ...

Training on a cluster then streams straight from a bucket or a shared filesystem without a copy step.
Credentials come from the usual places of each library (environment, instance roles), never from URLs
written to logs.
"""

from __future__ import annotations

import re
from typing import IO, Any, Iterable, Iterator

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def scheme(location: str) -> str | None:
    """The URL scheme ('s3', 'pipe', 'file', ...) or None for a plain path."""
    match = _SCHEME.match(location)
    # A Windows drive letter ("C:") is a path, not a scheme.
    return match.group(1).lower() if match and len(match.group(1)) > 1 else None


def is_remote(location: str) -> bool:
    """True for locations other nodes may reach by themselves (not a local path or file: URL)."""
    return scheme(location) not in (None, "file")


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

        return fsspec.open(location, "rb").open()
    except ImportError as error:
        raise OSError(f"{location}: no filesystem for '{kind}://' URLs is installed ({error})") from error
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{location}: not found") from error
    except OSError as error:
        raise OSError(f"{location}: cannot open ({error})") from error


def read_bytes(location: str) -> bytes:
    with open_binary(location) as stream:
        return stream.read()


def _open_streams(samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for sample in samples:
        yield {**sample, "stream": open_binary(sample["url"])}


def tar_samples(samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset pipeline stage: {'url': ...} items -> samples (like wds.tarfile_to_samples, but every
    location is opened by `open_binary`, so fsspec URLs work and errors name the shard)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return group_by_keys(tar_file_expander(_open_streams(samples)))
