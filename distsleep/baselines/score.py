"""Score the off-the-shelf YASA stager on the test records of a manifest: one Ray task per record.

The baseline sees exactly the epochs and labels the trained models are evaluated on (the same shards,
unscored epochs excluded), so its row in a comparison is like for like. Results are pooled over epochs
as the models' test metrics are (DESIGN.md §7).
"""

from __future__ import annotations

import numpy as np
import ray
import webdataset as wds

from distsleep.baselines.yasa_stager import yasa_predict_shard
from distsleep.metrics import staging_metrics
from distsleep.shards.format import decode_sample
from distsleep.shards.loader import load_manifest, shard_urls
from distsleep.shards.storage import tar_samples


def score_shard(url: str) -> dict:
    """YASA's predictions for one shard: {'record_id', 'labels', 'predicted'} (int lists)."""
    for raw in wds.DataPipeline(wds.SimpleShardList([url]), tar_samples):
        sample = decode_sample(raw)
        roles = [c["role"] for c in sample.meta["channels"]]
        predicted = yasa_predict_shard(sample.physical(), roles, float(sample.meta["target_rate"]))
        return {"record_id": sample.meta["record_id"], "labels": sample.labels.tolist(), "predicted": predicted.tolist()}
    raise ValueError(f"{url}: empty shard")


def yasa_baseline(manifest_path: str, split: str = "test") -> dict:
    """Pooled staging metrics of YASA on a split, plus per-record accuracy; runs on the connected Ray cluster."""
    manifest, base = load_manifest(manifest_path)
    urls = shard_urls(manifest, split, base)
    if not urls:
        raise ValueError(f"{manifest_path}: no {split} records")
    task = ray.remote(num_cpus=1, max_retries=1)(score_shard)
    results = ray.get([task.remote(url) for url in urls])
    per_record = {r["record_id"]: (np.asarray(r["labels"], dtype=np.int64), np.asarray(r["predicted"], dtype=np.int64))
                  for r in results}
    metrics = staging_metrics(np.concatenate([t for t, _ in per_record.values()]),
                              np.concatenate([p for _, p in per_record.values()]))
    metrics["records"] = {record_id: float(np.mean(p[t >= 0] == t[t >= 0])) for record_id, (t, p) in per_record.items()}
    return metrics
