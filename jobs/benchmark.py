"""Benchmarks that print their figures side by side (the library is `distsleep.bench`). Subcommands:

  synth-realism   YASA's pretrained stager on a synthetic cohort vs the cohort's ground truth
  preprocess      our per-recording path vs the naive MNE route vs reading the bytes; 1 vs 2 Ray workers
  train           epochs/s of Ray Train + DeepSpeed vs a plain PyTorch loop (same model and data); 1 vs 2 workers
  loader          batches/s of the training stream with its shards on local disk vs in a bucket (s3://)
  inference       windows/s scored on the CPU by the PyTorch model vs its exported TorchScript and ONNX files

    python jobs/benchmark.py SUBCOMMAND --help
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported
# The benchmark's own clusters (ray.init in distsleep.bench): token auth on, servers on 127.0.0.1.
from distsleep.runtime import secure_local_ray  # noqa: E402

secure_local_ray()

from distsleep.bench import inference, preprocess, realism, storage, train  # noqa: E402

SUBCOMMANDS = {
    "synth-realism": (realism, "score a synthetic cohort with YASA's pretrained stager"),
    "preprocess": (preprocess, "records/s of our preprocessing path vs the naive MNE route, bytes, and Ray 1 vs 2 workers"),
    "train": (train, "epochs/s of Ray Train + DeepSpeed vs a plain PyTorch loop, 1 vs 2 workers, peak memory"),
    "loader": (storage, "batches/s of the training stream from local disk vs from a bucket, checksums on and off"),
    "inference": (inference, "windows/s scored on the CPU: the PyTorch model vs its TorchScript and ONNX Runtime files"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, summary) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=summary)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
