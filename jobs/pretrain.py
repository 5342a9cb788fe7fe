"""Pre-train (or, with --stage finetune, fine-tune) a model on Ray Train + DeepSpeed — `distsleep pretrain`.

    python jobs/pretrain.py --shards SHARDS/manifest.json --num-workers 2 --max-steps 2000
    ray job submit --working-dir . -- python jobs/pretrain.py --shards /shared/shards/manifest.json --use-gpu ...

Connects to $RAY_ADDRESS when set, otherwise starts a local Ray cluster. `python jobs/pretrain.py --help`
lists every option.
"""

import sys

from distsleep.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
