"""Preprocess a dataset into WebDataset shards on a Ray cluster (the same as `distsleep preprocess`).

    python jobs/preprocess.py --source shhs --root /data/shhs --out /shared/shards/shhs-c4 --subset shhs-5791
    ray job submit --working-dir . -- python jobs/preprocess.py --root ... --out ...

Connects to $RAY_ADDRESS when set, otherwise starts a local Ray cluster.
"""

import sys

from distsleep.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
