"""The `distsleep` command line: one entry point, one module per subcommand (U-Time's `ut` layout).

    distsleep synth       write a synthetic SHHS1-format cohort (EDF + NSRR/Profusion XML)
    distsleep inspect     what is in a recording and what would stop it from being used
    distsleep preprocess  recordings -> WebDataset shards + manifest, one Ray task per recording
    distsleep folds       K-fold cross-validation by person: K manifests over the same shards
    distsleep pretrain    MC²SleepNet (or any registered model) on Ray Train + DeepSpeed, tracked in MLflow
    distsleep finetune    the fine-tuning stage from a pre-training run
    distsleep predict     score recordings with a trained model bundle (stages, hypnogram, report, cohort summary)
    distsleep evaluate    a trained model on a manifest's split, judged per night (metrics, sleep statistics, CIs)
    distsleep export      a trained model as a checked TorchScript file
    distsleep gan         Physio-GAN: minority-stage generator (Ray Train) and synthetic training shards
    distsleep sweep       Ray Tune sweep over the masking ratio (and other knobs): pre-train, fine-tune, test
    distsleep compare     Table-4-style comparison of a sweep's trials (or any runs) from MLflow, with plots
    distsleep submit      `ray job submit` of a job, with cluster pitfalls checked before the upload
    distsleep ui          MLflow's web UI over a SQLite tracking store, on 127.0.0.1

`distsleep.cli.<subcommand>` holds each one: its `DESCRIPTION`, `add_arguments(parser)` and `run(args)`, a
thin layer over the library whose option defaults are the configs' own. Only the chosen subcommand's module
is imported, so `distsleep --help` and a subcommand's `--help` stay fast. Every subcommand takes --verbose,
which brings the frameworks' console output back (distsleep.runtime); `distsleep SUBCOMMAND --help`
explains its options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from distsleep.errors import InputError
from distsleep.runtime import configure_console

# subcommand -> (its module in distsleep.cli, one line of help)
COMMANDS = {
    "synth": ("synth", "write a synthetic SHHS1-format cohort"),
    "inspect": ("inspect", "show channels, stages, events and problems of a recording"),
    "preprocess": ("preprocess", "convert a dataset to WebDataset shards on a Ray cluster"),
    "folds": ("folds", "write the K person-wise cross-validation folds of a cohort (manifests over the same shards)"),
    "pretrain": ("pretrain", "pre-train (or fine-tune with --stage finetune) on Ray Train + DeepSpeed"),
    "finetune": ("finetune", "fine-tune from a pre-training run: frozen backbones, no masking"),
    "sweep": ("sweep", "Ray Tune sweep over the masking ratio: pre-train, fine-tune, test per trial"),
    "gan": ("gan", "Physio-GAN: train a minority-stage generator, write synthetic training shards"),
    "compare": ("compare", "compare runs from MLflow: Table-4-style table (text, CSV, Markdown) and plots"),
    "submit": ("submit", "ray job submit, with cluster pitfalls checked before the upload"),
    "ui": ("ui", "MLflow's web UI over a SQLite tracking store, on 127.0.0.1, until Ctrl-C"),
    "predict": ("predict", "score recordings with a trained model: stages, hypnogram, input report, cohort summary"),
    "evaluate": ("evaluate", "judge a trained model per night on a manifest's split: per-night metrics, sleep statistics, CIs"),
    "export": ("export", "write a trained model as a TorchScript file, checked against the PyTorch model"),
}


def add_verbose_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="also show the frameworks' console output (Ray Train reports, DeepSpeed and MLflow messages), "
                        "which otherwise stays in Ray's log files")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, just that subcommand's options (the others' modules are not imported)."""
    parser = argparse.ArgumentParser(
        prog="distsleep",
        description="Distributed training of sleep-staging foundation models on PSG recordings.",
        epilog="Run `distsleep SUBCOMMAND --help` for the options of each subcommand.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, (module_name, summary) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=summary)
            continue
        module = importlib.import_module(f"{__name__}.{module_name}")
        p = sub.add_parser(name, help=summary, description=module.DESCRIPTION)
        module.add_arguments(p)
        if not getattr(module, "SUBCOMMANDS_TAKE_VERBOSE", False):
            add_verbose_argument(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else ""  # "": top-level help or an unknown subcommand
    args = build_parser(only=chosen).parse_args(argv)
    configure_console(args.verbose)
    try:
        return args.func(args)
    except InputError as error:
        print(f"distsleep {args.command}: error: {error}", file=sys.stderr)
        return 2
