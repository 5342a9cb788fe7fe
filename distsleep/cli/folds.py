"""`distsleep folds`: the K person-wise cross-validation folds of a preprocessed cohort (`distsleep.shards.folds`)."""

from __future__ import annotations

import argparse
import sys

from distsleep import store
from distsleep.shards.folds import MIN_FOLDS, FoldError, write_fold_manifests

DESCRIPTION = ("Write the K folds of a K-fold cross-validation by person (the MC²SleepNet paper's protocol for Sleep-EDF-78: "
               "10 folds) as manifests beside the cohort's manifest.json, over the same shards (nothing is copied): "
               "manifest.cvK-seedS-foldNN.json. In fold i the people of fold i are tested, those of fold i+1 validate and "
               "the rest train, so over the K folds every person is tested once; all nights of a person share a fold. "
               "Give a fold's manifest to pretrain/finetune/evaluate as --shards, or let `distsleep sweep --folds K` "
               "run every fold and pool the test nights. Rerunning rewrites nothing unless the cohort changed. Exit "
               "status: 0 written, 2 the manifest cannot be cut into K folds.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", metavar="MANIFEST", help="the cohort's manifest.json (or its folder or URL)")
    p.add_argument("--k", type=int, default=10, help=f"number of folds, at least {MIN_FOLDS} (default %(default)s, the paper's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the assignment of people to folds (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        locations = write_fold_manifests(args.shards, args.k, args.seed)
    except (FoldError, FileNotFoundError) as error:
        print(f"distsleep folds: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.k} folds (seed {args.seed}) of {store.display(args.shards)}:")
    for fold, location in enumerate(locations, 1):
        totals = store.read_json(location)["totals"]
        counts = "  ".join(f"{name} {totals[name]['records']:>4} records" for name in ("train", "val", "test"))
        print(f"  fold {fold:>2}  {counts}  {store.display(location)}")
    return 0
