"""Physio-GAN jobs (ISATSleepNet's minority-stage generator) — `python jobs/gan.py {train,augment,effect}`.

    python jobs/gan.py train --shards SHARDS/manifest.json --stages N1 --num-workers 2 --max-steps 5000
    python jobs/gan.py augment --generator <MLflow run id> --shards SHARDS/manifest.json --out AUG --target-fraction 0.1
    python jobs/gan.py effect --augmentation AUG --shards SHARDS/manifest.json --model isatsleepnet --seeds 0 1

`train` runs on Ray Train (connects to $RAY_ADDRESS when set, otherwise starts a local cluster) and logs to
MLflow; `augment` writes marked synthetic training shards plus augmentation.json; `effect` trains a model
with and without them and compares per-class F1. The same commands are `distsleep gan ...`. `--help` on each
subcommand lists every option.
"""

import sys

from distsleep.cli.gan import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="jobs/gan.py"))
