"""Files by location, local or in object storage: what the jobs write (shards, manifests, markers, run identity,
locks) and read back, through one set of functions.

    /data/out/manifest.json              a local path: written to a temporary sibling, fsynced, renamed
    s3://bucket/out/manifest.json        an object (s3fs): one PUT (multipart past 100 MB), which S3 makes
                                         visible whole or not at all, so no temporary name is needed

Object stores have no rename, so "atomic" there means the object under its final key is complete the
moment it exists; the order of writes (a shard before its marker, the manifest last) carries the rest.
Credentials and endpoints come from where boto3 and pyarrow look by themselves: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws/{config,credentials} (or the files named by
AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE), instance or pod roles, and AWS_ENDPOINT_URL for S3-compatible
stores (MinIO, Ceph, moto). They never appear in a location: a URL carrying them (s3://KEY:SECRET@bucket/...)
is refused, since locations are logged and written into manifests, run identities and MLflow parameters.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from pathlib import Path

from distsleep.atomic import atomic_path, json_text

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


class CredentialsInLocation(ValueError):
    """A URL that carries credentials (user:secret@host)."""


def is_url(location: str | Path) -> bool:
    """True for an object-store (or other fsspec) URL, False for a local path or a file: URL."""
    match = _URL.match(str(location))
    return bool(match) and match.group(1).lower() != "file"


def local_path(location: str | Path) -> Path:
    """A local location as a Path (file:// prefixes removed)."""
    return Path(re.sub(r"^file:(//)?", "", str(location)))


def check_no_credentials(location: str) -> None:
    """Refuse a URL with user info: credentials belong in the environment or the AWS files, not in a location."""
    match = _URL.match(location)
    if match and "@" in location[match.end():].split("/", 1)[0]:
        raise CredentialsInLocation(
            f"{match.group(0)}...: this location carries credentials (user:secret@...); locations are logged and "
            "written into manifests and runs, so give credentials through the environment (AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE, ...) or ~/.aws/credentials instead")


def display(location: str | Path) -> str:
    """The location as people and files see it: local paths made absolute, URLs unchanged."""
    return str(location) if is_url(location) else str(local_path(location).resolve())


def join(base: str | Path, *parts: str) -> str:
    """`base`/part/... for paths and URLs alike."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(local_path(base).joinpath(*parts))


def filesystem(location: str):
    """(fsspec filesystem, path within it) of a URL; credentials come from the library's usual places."""
    import fsspec

    check_no_credentials(location)
    try:
        # No listing cache: other processes (Ray tasks, other nodes) write here, and a cached listing would
        # hide their objects or show deleted ones.
        return fsspec.core.url_to_fs(location, use_listings_cache=False)
    except ImportError as error:
        scheme = _URL.match(location).group(1)
        raise OSError(f"{location}: no filesystem for '{scheme}://' URLs is installed ({error})") from error


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write `data` under `location` whole or not at all (see the module docstring)."""
    if is_url(location):
        fs, path = filesystem(str(location))
        fs.pipe_file(path, data)
        return
    with atomic_path(local_path(location)) as tmp:
        tmp.write_bytes(data)


def write_json(location: str | Path, payload, lines: bool = False) -> None:
    """`payload` as indented, key-sorted JSON (one object per line with `lines=True`), written whole."""
    write_bytes(location, json_text(payload, lines).encode())


def read_bytes(location: str | Path) -> bytes:
    """The bytes at `location` (FileNotFoundError naming it when there is nothing there)."""
    try:
        if is_url(location):
            fs, path = filesystem(str(location))
            return fs.cat_file(path)
        return local_path(location).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{location}: not found") from None


def read_json(location: str | Path):
    return json.loads(read_bytes(location))


def exists(location: str | Path) -> bool:
    if is_url(location):
        fs, path = filesystem(str(location))
        return fs.exists(path)
    return local_path(location).exists()


def size(location: str | Path) -> int | None:
    """Size in bytes of the file at `location`, None when there is none."""
    try:
        if is_url(location):
            fs, path = filesystem(str(location))
            return int(fs.info(path)["size"])
        path = local_path(location)
        return path.stat().st_size if path.is_file() else None
    except FileNotFoundError:
        return None


def sha256(location: str | Path) -> str:
    """sha256 of the file at `location`, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    if is_url(location):
        fs, path = filesystem(str(location))
        opened = fs.open(path, "rb", block_size=1 << 22)
    else:
        opened = open(local_path(location), "rb")
    with opened as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files(folder: str | Path) -> list[str]:
    """Every file under `folder`, as POSIX paths relative to it (sorted; none when the folder is absent)."""
    if is_url(folder):
        fs, path = filesystem(str(folder))
        path = path.rstrip("/")
        try:
            found = fs.find(path)
        except FileNotFoundError:
            return []
        # Keys ending in "/" are folder placeholders (pyarrow's S3 filesystem writes one per folder that Ray
        # Train creates for a checkpoint), not files: listed, they looked like a file added after the checksums.
        return sorted(f[len(path) + 1:] for f in found if f.startswith(path + "/") and not f.endswith("/"))
    root = local_path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def children(folder: str | Path, pattern: str = "*") -> list[str]:
    """Names of the entries (files and folders) directly in `folder` that match the glob `pattern`, sorted."""
    if is_url(folder):
        fs, path = filesystem(str(folder))
        path = path.rstrip("/")
        try:
            entries = fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        # The folder's own placeholder key ("path/", see `files`) is listed among its entries: not a child.
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry.rstrip("/") != path]
    else:
        root = local_path(folder)
        names = [p.name for p in root.iterdir()] if root.is_dir() else []
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def remove(location: str | Path) -> None:
    """Delete the file at `location` if there is one."""
    if is_url(location):
        fs, path = filesystem(str(location))
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        return
    local_path(location).unlink(missing_ok=True)


def make_folder(location: str | Path) -> None:
    """Create a local folder (and its parents); object stores have no folders to create."""
    if not is_url(location):
        local_path(location).mkdir(parents=True, exist_ok=True)
