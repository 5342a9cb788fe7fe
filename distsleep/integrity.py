"""Checksums of files we wrote, verified before anything reads them back.

Checkpoints are loaded with pickle (DeepSpeed's optimizer state, Ray Tune's experiment state), so a file
changed after it was written could run code on load; a truncated one would resume from garbage. The
writer records the sha256 of every file of a directory in `checksums*.json` next to them, and the reader
refuses the directory when a file differs, is missing or was added. (The storage we write to is still
trusted: whoever may write the files may write the checksums too. This catches tampering by anyone
else, corruption and half-copied folders.)
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from distsleep import store
from distsleep.atomic import write_json_atomic

CHECKSUMS_GLOB = "checksums*.json"


class IntegrityError(RuntimeError):
    """A file does not match the checksum recorded when it was written (the message names it)."""


def _files(directory: str | Path) -> list[str]:
    """Files under `directory` (relative POSIX paths), checksum files excluded."""
    return [f for f in store.files(directory) if not PurePosixPath(f).match(CHECKSUMS_GLOB)]


def write_checksums(directory: str | Path, name: str = "checksums.json") -> Path:
    """Record the sha256 of every file under `directory` in `directory/name` (call it after the last write)."""
    directory = Path(directory)
    path = directory / name
    write_json_atomic(path, {"sha256": {f: store.sha256(directory / f) for f in _files(directory)}})
    return path


def recorded_checksums(directory: str | Path, what: str) -> dict[str, str]:
    """file -> sha256 from every checksums*.json of `directory` (several writers may each add one), local or
    in object storage."""
    recorded: dict[str, str] = {}
    sources = [store.join(directory, name) for name in store.children(directory, CHECKSUMS_GLOB)]
    if not sources:
        raise IntegrityError(f"{directory}: {what} has no recorded checksums ({CHECKSUMS_GLOB}), so it cannot be "
                             "verified before loading; it was written by a distsleep without checksums or was "
                             "tampered with")
    for source in sources:
        try:
            recorded.update(store.read_json(source)["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise IntegrityError(f"{source}: unreadable checksum file of {what} ({error})") from error
    return recorded


def verify_checksums(directory: str | Path, what: str = "the checkpoint", contents: bool = True) -> None:
    """Raise IntegrityError naming the first file of `directory` (a folder or an object-store prefix) that
    differs from, is missing from or is not in the recorded checksums. `contents=False` checks the file set
    only (no file is read: for a checkpoint in a bucket that each worker verifies on the copy it downloads)."""
    recorded = recorded_checksums(directory, what)
    present = set(_files(directory))
    for name in sorted(recorded):
        location = store.join(directory, name)
        if name not in present:
            raise IntegrityError(f"{location}: file of {what} is missing (recorded at write time)")
        if contents and store.sha256(location) != recorded[name]:
            raise IntegrityError(f"{location}: file of {what} changed since it was written (sha256 "
                                 "differs from the recorded one); refusing to load it")
    extra = sorted(present - set(recorded))
    if extra:
        raise IntegrityError(f"{store.join(directory, extra[0])}: file in {what} that was not there when it was "
                             "written; refusing to load it")
