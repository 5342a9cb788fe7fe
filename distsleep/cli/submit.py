"""`distsleep submit`: `ray job submit` of a job with the cluster pitfalls checked first (`distsleep.cluster.submit`)."""

from __future__ import annotations

import argparse
import os
import sys

from distsleep.cluster.submit import SubmitError, submit

DESCRIPTION = ("Submit a job to a Ray cluster (`ray job submit`) after checking the working dir's upload size, that the "
               "entrypoint exists, and that path options are absolute or URLs (relative paths would resolve inside each "
               "node's copy of the working dir). MLFLOW_TRACKING_URI from this shell (or --env) travels in the runtime "
               "env. Example: distsleep submit --address http://127.0.0.1:8265 -- python jobs/pretrain.py --shards "
               "/shared/shards ...")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS"),
                   help="Ray dashboard address (default $RAY_DASHBOARD_ADDRESS, else ray's own default, $RAY_ADDRESS)")
    p.add_argument("--working-dir", default=".", help="folder uploaded to the cluster (default .)")
    p.add_argument("--env", nargs="+", default=[], metavar="KEY=VALUE", help="extra environment variables for the job")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- python jobs/....py [options]")


def run(args: argparse.Namespace) -> int:
    entrypoint = list(args.entrypoint)
    if entrypoint[:1] == ["--"]:
        entrypoint = entrypoint[1:]
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"distsleep submit: error: --env expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        env[key] = value
    try:
        return submit(entrypoint, address=args.address, working_dir=args.working_dir, env=env, wait=not args.no_wait)
    except SubmitError as error:
        print(f"distsleep submit: error: {error}", file=sys.stderr)
        return 2
