"""Fine-tune from a pre-training run (frozen backbones, no masking, loss weights 1/1/1) — `distsleep finetune`.

    python jobs/finetune.py --shards SHARDS/manifest.json --init-from RUNS/mc2sleepnet-pretrain/checkpoint_...
"""

import sys

from distsleep.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
