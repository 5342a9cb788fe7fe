"""One job at a time per output: an exclusive lock file that says who holds it.

Local paths: `flock` locks are released by the kernel when the holder dies (even by SIGKILL), so a crashed
job never leaves a stale lock. They are advisory and work across hosts on NFSv4 (Linux maps them to NFS
byte-range locks).

s3:// locations: object stores have no locks, so the lock is a lease (`s3_lease`): an object created only
if absent (a conditional PUT, If-None-Match: *), renewed by its holder every quarter of the lease with a PUT
conditional on the ETag it last wrote (If-Match), and deleted at the end. A holder that dies stops renewing;
once the object is older than the lease by the store's own clock (its Last-Modified against the Date of the
response, so the hosts' clocks do not matter), the next job takes it over with a PUT conditional on the
stale ETag, so of two jobs racing for it exactly one wins. Limits: the store must honour conditional writes
(AWS S3 since 2024, MinIO, Ceph RGW recent releases; moto); a job that dies waits out the lease (60 s)
before the next may start; and a holder stalled for longer than the lease (a frozen VM, a partition from the
store) loses the lock without being stopped: it finds out at its next renewal and logs an error, while the
job that took over already runs.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path


class LockHeld(RuntimeError):
    """Another job holds the lock; the message names it and says what to do."""


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def _describe(text: str | bytes) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"


def describe_holder(path: Path) -> str:
    try:
        return _describe(path.read_text())
    except OSError:
        return "a process that left no details"


@contextmanager
def exclusive_lock(path: str | Path, what: str, advice: str, lease_seconds: float = 60.0):
    """Hold an exclusive lock on `path` for the block, or raise LockHeld("<what> is in use by <holder>; <advice>").
    An s3:// location is locked by a lease of `lease_seconds` (module docstring)."""
    from distsleep.store import is_url

    if is_url(path):
        with s3_lease(str(path), what, advice, lease_seconds):
            yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"{what} is in use by another job ({describe_holder(path)}); {advice}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------------------- s3 leases


class _Lease:
    """The lease object of one s3 lock: conditional PUTs and GETs through the s3fs client."""

    def __init__(self, location: str):
        from distsleep.store import filesystem

        self.location = location
        self.fs, path = filesystem(location)
        if not hasattr(self.fs, "call_s3"):
            raise OSError(f"{location}: locks on object storage are implemented for s3:// only")
        self.bucket, self.key = path.split("/", 1)

    def put(self, body: bytes, **condition) -> str:
        """PUT the lease with a condition (IfNoneMatch="*" or IfMatch=etag); its new ETag. FileExistsError when
        the condition fails (someone else created or changed the object)."""
        try:
            return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except FileExistsError:
            raise
        except (FileNotFoundError, PermissionError) as error:
            raise type(error)(f"{self.location}: cannot write the lock ({error}); does the bucket exist, and may the "
                              "credentials of this environment write to it?") from error
        except OSError as error:  # PreconditionFailed (If-Match) or ConditionalRequestConflict (a racing writer)
            if "precondition" in str(error).lower() or "conflict" in str(error).lower() or error.errno == 22:
                raise FileExistsError(str(error)) from error
            raise

    def get(self) -> tuple[bytes, str, float] | None:
        """(body, ETag, age in seconds by the store's clock) of the lease, or None when there is none."""
        from email.utils import parsedate_to_datetime

        try:
            response = self.fs.call_s3("get_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None
        body = response["Body"]
        data = _read_body(self.fs, body)
        now = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
        return data, response["ETag"], (now - response["LastModified"]).total_seconds()

    def delete_if(self, etag: str) -> None:
        """Delete the lease if it is still the one with `etag` (while we renew it, nobody else can change it)."""
        found = self.get()
        if found is not None and found[1] == etag:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)


def _read_body(fs, body) -> bytes:
    """The bytes of an aiobotocore streaming body, read on s3fs's event loop."""
    from fsspec.asyn import sync

    async def read():
        async with body as stream:
            return await stream.read()

    return sync(fs.loop, read)


@contextmanager
def s3_lease(location: str, what: str, advice: str, lease_seconds: float = 60.0):
    """Hold the lease `location` (an s3:// object) for the block; LockHeld while another live job holds it."""
    import logging
    import threading

    lease = _Lease(location)
    holder = json.dumps({**_holder(), "lease_s": lease_seconds}).encode()
    try:
        etag = lease.put(holder, IfNoneMatch="*")
    except FileExistsError:
        etag = _take_over(lease, holder, what, advice, lease_seconds)
    stop, lost = threading.Event(), []

    def renew() -> None:
        nonlocal etag
        while not stop.wait(lease_seconds / 4):
            try:
                etag = lease.put(holder, IfMatch=etag)
            except FileExistsError:
                lost.append(True)
                logging.getLogger("distsleep.locks").error(
                    "%s: lost the lock of %s (not renewed within %.0f s, and another job took it over); "
                    "this job and that one now run at once", location, what, lease_seconds)
                return
            except OSError as error:  # the store is unreachable for a moment: try again at the next tick
                logging.getLogger("distsleep.locks").warning("%s: could not renew the lease (%s)", location, error)

    thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if not lost:
            lease.delete_if(etag)


def _take_over(lease: _Lease, holder: bytes, what: str, advice: str, lease_seconds: float) -> str:
    """The lease of a holder that stopped renewing it (older than its lease), taken over; LockHeld otherwise."""
    found = lease.get()
    if found is None:  # released in the meantime
        try:
            return lease.put(holder, IfNoneMatch="*")
        except FileExistsError:
            found = lease.get()
    if found is not None:
        body, etag, age = found
        try:
            held_for = float(json.loads(body).get("lease_s", lease_seconds))
        except (ValueError, TypeError, AttributeError):
            held_for = lease_seconds
        if age <= held_for:
            raise LockHeld(f"{what} is in use by another job ({_describe(body)}; lease renewed {age:.0f} s ago); {advice}")
        try:
            return lease.put(holder, IfMatch=etag)
        except FileExistsError:
            pass
    raise LockHeld(f"{what} was just taken by another job; {advice}")
