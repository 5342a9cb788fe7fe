"""`distsleep submit`: `ray job submit` with the pitfalls caught first.

Checks before anything is uploaded:
- the working dir Ray would upload (git-tracked and untracked-but-not-ignored files; Ray honours
  .gitignore too) stays well under Ray's upload limit, with the largest entries named when it does not;
- the entrypoint script exists in the working dir;
- path options (--shards, --storage-path, --root, --out, --init-from) are absolute or URLs: a relative
  path would resolve inside each node's private copy of the working dir;
and the runtime env carries what the job needs: MLFLOW_TRACKING_URI (from --env or this shell).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from distsleep.cluster.host import venv_executable

# Ray refuses packages at its gRPC message limit (512 MiB, zipped); stay far below it.
UPLOAD_LIMIT = 512 * 2**20
UPLOAD_WARNING = 100 * 2**20
PATH_OPTIONS = ("--shards", "--storage-path", "--root", "--out", "--init-from", "--deepspeed-config")


class SubmitError(ValueError):
    pass


def upload_files(working_dir: Path) -> list[Path]:
    """The files Ray would upload: for a git checkout, tracked + untracked-not-ignored; else everything."""
    try:
        listed = subprocess.run(["git", "-C", str(working_dir), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                check=True, capture_output=True).stdout
        return [working_dir / name for name in listed.decode().split("\0") if name and (working_dir / name).is_file()]
    except (subprocess.CalledProcessError, FileNotFoundError):
        return [p for p in working_dir.rglob("*") if p.is_file()]


def check_working_dir(working_dir: Path, limit: int = UPLOAD_LIMIT) -> tuple[int, list[str]]:
    """(bytes to upload, warnings); raises SubmitError over the limit, naming the biggest top-level entries."""
    files = upload_files(working_dir)
    sizes: dict[str, int] = {}
    total = 0
    for path in files:
        size = path.stat().st_size
        total += size
        top = path.relative_to(working_dir).parts[0]
        sizes[top] = sizes.get(top, 0) + size
    biggest = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:5])
    if total >= limit:
        raise SubmitError(f"the working dir {working_dir} would upload {total / 2**20:.0f} MiB (Ray's limit is "
                          f"{limit / 2**20:.0f} MiB); largest: {biggest}. Keep shards, runs and MLflow stores outside it "
                          "(or list them in .gitignore / .rayignore)")
    warnings = []
    if total >= UPLOAD_WARNING:
        warnings.append(f"the working dir uploads {total / 2**20:.0f} MiB on every submit; largest: {biggest}")
    return total, warnings


def check_entrypoint(entrypoint: list[str], working_dir: Path) -> None:
    if not entrypoint:
        raise SubmitError("no entrypoint: distsleep submit [options] -- python jobs/pretrain.py ...")
    scripts = [a for a in entrypoint[1:2] if a.endswith(".py")]
    for script in scripts:
        if not Path(script).is_absolute() and not (working_dir / script).is_file():
            raise SubmitError(f"{script} is not in the working dir {working_dir}")
    for i, option in enumerate(entrypoint):
        key, sep, value = option.partition("=")
        if key not in PATH_OPTIONS:
            continue
        if not sep:
            value = entrypoint[i + 1] if i + 1 < len(entrypoint) else ""
        if value and "://" not in value and not Path(value).is_absolute():
            if key == "--init-from" and not ("/" in value or value.endswith((".pt", ".pth"))):
                continue  # an MLflow run id
            raise SubmitError(f"{key} {value}: a relative path resolves inside each node's copy of the working dir; "
                              f"give an absolute path on shared storage or a URL (s3://...), e.g. {key} /shared/{value}")


def runtime_env(extra: dict[str, str]) -> dict:
    env_vars = {"PYTHONUNBUFFERED": "1"}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env_vars["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    env_vars.update(extra)
    return {"env_vars": env_vars}


def submit(entrypoint: list[str], *, address: str | None, working_dir: str | Path = ".", env: dict[str, str] | None = None,
           wait: bool = True) -> int:
    directory = Path(working_dir).resolve()
    total, warnings = check_working_dir(directory)
    check_entrypoint(entrypoint, directory)
    for warning in warnings:
        print(f"distsleep submit: warning: {warning}", file=sys.stderr)
    command = [venv_executable("ray"), "job", "submit", "--working-dir", str(directory),
               "--runtime-env-json", json.dumps(runtime_env(env or {}))]
    if address:
        command += ["--address", address]
    if not wait:
        command.append("--no-wait")
    command += ["--", *entrypoint]
    print(f"distsleep submit: uploading {total / 2**20:.1f} MiB from {directory}", file=sys.stderr)
    return subprocess.run(command).returncode
