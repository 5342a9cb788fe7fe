"""Masking-ratio sweep on Ray Tune (pre-train, fine-tune, test per trial) — `distsleep sweep`.

    python jobs/sweep.py --shards SHARDS/manifest.json --name table4 --mask-ratios 0 0.15 0.5 0.7
    ray job submit --working-dir . -- python jobs/sweep.py --shards /shared/shards/manifest.json --use-gpu ...

Relaunching the same --name resumes the sweep. `python jobs/sweep.py --help` lists every option.
"""

import sys

from distsleep.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
