"""`distsleep preprocess` (jobs/preprocess.py): recordings -> WebDataset shards + manifest on Ray
(`distsleep.shards.pipeline`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distsleep.config import CHANNEL_SETS, FILTER_RECIPES, SOURCES, SUBSETS, PreprocessConfig, SplitConfig, field_defaults
from distsleep.shards.pipeline import ClusterOptions, OutputConflict, format_summary, run_preprocess
from distsleep.sources.channel_map import read_channel_map
from distsleep.sources.montages import NSRR_COHORTS
from distsleep.store import CredentialsInLocation

DESCRIPTION = ("One Ray task per recording: read the chosen channels at native rates, optionally band-pass, resample to "
               "the target rate, cut into 30-s epochs, and write one WebDataset tar per recording plus manifest.json "
               "(splits, counts, hashes) and failures.jsonl. Reruns skip finished recordings; the same inputs and "
               "config give byte-identical shards.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d, s, c = field_defaults(PreprocessConfig), field_defaults(SplitConfig), field_defaults(ClusterOptions)
    p.add_argument("--source", choices=SOURCES, default=d["source"],
                   help="dataset layout (default %(default)s; nsrr: any NSRR cohort, EDF + NSRR/Profusion XML)")
    p.add_argument("--root", required=True, help="dataset folder (NSRR: holds polysomnography/; Sleep-EDF: the *-PSG.edf files)")
    p.add_argument("--cohort", choices=NSRR_COHORTS,
                   help="--source nsrr: the cohort whose channel labels apply (default: from each file's name; a label "
                        "that means different channels in different cohorts, such as MESA's EEG1, is refused without it)")
    p.add_argument("--channel-map", metavar="FILE",
                   help="luna-style alias file, lines 'role|label|label...' (e.g. eeg_c4|EEG3), tried before the cohort "
                        "tables; part of the shards' config hash")
    p.add_argument("--out", required=True, help="output folder or object-store prefix (s3://bucket/prefix) for shards/, "
                   "records/, manifest.json, failures.jsonl")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset in --out that was made with another preprocessing or split config "
                        "(refused otherwise)")
    p.add_argument("--channels", nargs="+", default=[], metavar="ROLE",
                   help="channel roles to store, e.g. eeg_c4 eog_l emg (default: the staging EEG, eeg_c4 / eeg_fpz_cz)")
    p.add_argument("--channel-set", choices=tuple(CHANNEL_SETS),
                   help="a named channel set: multimodal = EEG C4-A1, EEG C3-A2, EOG L/R, chin EMG, ECG, airflow "
                        "(Sleep-EDF: Fpz-Cz, Pz-Oz, EOG, EMG), band-passed per modality as SynthSleepNet does")
    p.add_argument("--filter-recipe", choices=(*FILTER_RECIPES, "none"),
                   help="per-channel band-passes: synthsleepnet = EEG/EOG 0.5-40, ECG 3-30, EMG 25-49, airflow 0.05-1 Hz "
                        "(default with --channel-set multimodal; none = no per-channel filter)")
    p.add_argument("--subset", choices=SUBSETS, default=s["subset"],
                   help="shhs-5791: readable SHHS1 records with C4-A1 and scored stages; shhs-5463: those containing all "
                        "five stages (both SHHS1 only)")
    p.add_argument("--visit", nargs="+", default=[], metavar="VISIT",
                   help="keep only these visits, e.g. shhs1 (NSRR: the record id before the nsrrid; Sleep-EDF: night1, "
                        "night2); default all. Splits are by person: all visits of one nsrrid go to the same split")
    p.add_argument("--limit", type=int, help="only the first N recordings (sorted by id)")
    p.add_argument("--target-rate", type=float, default=d["target_rate"], help="Hz (default %(default)g)")
    p.add_argument("--bandpass", type=float, nargs=2, metavar=("LOW", "HIGH"), help="zero-phase band-pass in Hz, e.g. 0.3 40")
    p.add_argument("--trim-wake", type=_trim_minutes, default="source", metavar="MIN|none",
                   help="keep MIN minutes of wake before the first and after the last sleep epoch; none keeps the "
                        "whole recording (default: 30 for sleep-edf, its papers' protocol; none for NSRR cohorts)")
    p.add_argument("--n-val", type=int, default=s["n_val"],
                   help="validation subjects (default %(default)s; small cohorts get at most 10%%)")
    p.add_argument("--train-fraction", type=float, default=s["train_fraction"],
                   help="train share of the non-validation subjects (default %(default)s)")
    p.add_argument("--split-seed", type=int, default=s["seed"],
                   help="seed of the subject-wise split (each person's side comes from a hash of their own id, so "
                        "adding or removing people never moves anyone between train and test)")
    p.add_argument("--split-file", metavar="FILE",
                   help="a published split instead: JSON {\"train\": [...], \"val\": [...], \"test\": [...]} or lines "
                        "'ID SPLIT'; IDs are record ids (shhs1-200001) or subject ids (200001). Records it does not "
                        "name are left out; the manifest records the file and its sha256")
    p.add_argument("--allow-missing-split-ids", action="store_true",
                   help="accept a split file naming ids the cohort lacks (they are listed in the manifest) instead "
                        "of refusing it")
    p.add_argument("--max-failures", type=int, default=0, help="exit 0 despite up to N failed recordings (default 0)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--cpus-per-task", type=float, default=c["cpus_per_task"], help="CPUs reserved per recording task")
    p.add_argument("--memory-mb", type=int, default=c["memory_per_task_mb"], help="memory reserved per recording task (MB)")
    p.add_argument("--max-retries", type=int, default=c["max_retries"], help="retries of a task whose worker process died")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _trim_minutes(text: str) -> float | str | None:
    """--trim-wake: minutes, "none" (the whole recording) or "source" (the default: the source's protocol)."""
    if text.lower() in ("none", "source"):
        return None if text.lower() == "none" else "source"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither minutes nor 'none'") from None


def preprocess_config(args: argparse.Namespace) -> PreprocessConfig:
    """The options as a PreprocessConfig: a named channel set is that config preset (its recipe unless
    --filter-recipe says otherwise); without channels the source's staging EEG."""
    channels = tuple(c for part in args.channels for c in part.split(",") if c)
    options = dict(source=args.source, target_rate=args.target_rate,
                   bandpass=tuple(args.bandpass) if args.bandpass else None, trim_wake_minutes=args.trim_wake,
                   cohort=args.cohort, channel_map=read_channel_map(args.channel_map) if args.channel_map else None)
    if args.filter_recipe:
        options["filter_recipe"] = None if args.filter_recipe == "none" else args.filter_recipe
    if args.channel_set:
        if channels:
            raise ValueError("give --channels or --channel-set, not both")
        return PreprocessConfig.preset(args.channel_set, **options)
    return PreprocessConfig(channels=channels, **options)


def run(args: argparse.Namespace) -> int:
    try:
        config = preprocess_config(args)
        split = SplitConfig(n_val=args.n_val, train_fraction=args.train_fraction, seed=args.split_seed, subset=args.subset,
                            visits=tuple(args.visit), allow_missing_split_ids=args.allow_missing_split_ids,
                            split_file=str(Path(args.split_file).resolve()) if args.split_file else None)
    except ValueError as error:
        print(f"distsleep preprocess: error: {error}", file=sys.stderr)
        return 2
    cluster = ClusterOptions(address=args.address, cpus_per_task=args.cpus_per_task,
                             memory_per_task_mb=args.memory_mb, max_retries=args.max_retries)
    try:
        result = run_preprocess(args.root, args.out, config, split, limit=args.limit, cluster=cluster,
                                progress=not args.quiet, overwrite=args.overwrite)
    except (OutputConflict, CredentialsInLocation, OSError) as error:  # OSError: --root or --out unusable
        print(f"distsleep preprocess: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(result, args.out))
    if len(result.failures) > args.max_failures:
        print(f"distsleep preprocess: {len(result.failures)} recording(s) failed (allowed: {args.max_failures}); "
              "see failures.jsonl", file=sys.stderr)
        return 1
    return 0
