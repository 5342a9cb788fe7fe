"""Distributed evaluation: one prediction per epoch of every val/test recording.

Each rank scores its share of the recordings (no collectives during the pass, so uneven shares cannot
hang), then one all_gather_object collects the per-window class probabilities. Every rank averages the
probabilities of each (recording, epoch) over the windows that contain it and computes the same
metrics, so early-stopping decisions agree without another broadcast.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from distsleep.shards.loader import LoaderConfig, make_eval_loader, physical_values
from distsleep.tasks import targets, task_metrics


@dataclass
class EpochPredictions:
    """Per recording: labels, averaged class probabilities and predicted stage for each epoch."""

    labels: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]  # (n_epochs, n_classes)

    def predicted(self, record_id: str) -> np.ndarray:
        return self.probabilities[record_id].argmax(axis=1)

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        ids = sorted(self.labels)
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate([self.labels[i] for i in ids]), np.concatenate([self.predicted(i) for i in ids])


@torch.no_grad()
def score_windows(model: torch.nn.Module, urls: list[str], cfg: LoaderConfig, world_size: int, rank: int,
                  device: torch.device, autocast_dtype: torch.dtype | None = None, task: str = "staging", *,
                  batch_size: int | None = None, num_workers: int | None = None) -> list[tuple]:
    """This rank's (record_id, epoch_index, target, probabilities) rows for every valid-or-overlapping position.

    Shards are read by DataLoader workers (`num_workers`, default cfg.num_workers) while the model scores;
    probabilities stay on the device until the pass ends and come back in one copy.
    """
    was_training = model.training
    model.eval()
    cuda = device.type == "cuda"
    meta, probabilities = [], []
    for batch in make_eval_loader(urls, cfg, world_size, rank, batch_size=batch_size, num_workers=num_workers,
                                  pin_memory=cuda):
        x = physical_values(batch.codes.to(device, non_blocking=cuda), batch.scale.to(device, non_blocking=cuda),
                            batch.offset.to(device, non_blocking=cuda))
        x = x * (batch.epoch_index >= 0).to(device, non_blocking=cuda)[:, :, None, None]  # zeros on padding
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x, labels=None, stage="eval")
        probabilities.append(torch.softmax(out["logits"].float(), dim=-1))
        meta.append((batch.record_ids, batch.epoch_index.numpy(), targets(task, batch.labels, batch.events).numpy()))
    model.train(was_training)
    if not meta:
        return []
    probs = torch.cat(probabilities).cpu().numpy()
    rows, i = [], 0
    for record_ids, index, labels in meta:
        for b, record_id in enumerate(record_ids):
            keep = index[b] >= 0
            rows.append((record_id, index[b][keep], labels[b][keep], probs[i][keep]))
            i += 1
    return rows


def aggregate(rows: list[tuple]) -> EpochPredictions:
    """Average probabilities of each (record, epoch) over all windows that contain it."""
    sums: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    counts: dict[str, dict[int, int]] = defaultdict(dict)
    labels: dict[str, dict[int, int]] = defaultdict(dict)
    for record_id, index, label, probs in rows:
        for i, y, p in zip(index.tolist(), label.tolist(), probs):
            if i in sums[record_id]:
                sums[record_id][i] = sums[record_id][i] + p
                counts[record_id][i] += 1
            else:
                sums[record_id][i] = p.astype(np.float64)
                counts[record_id][i] = 1
                labels[record_id][i] = y
    out_labels, out_probs = {}, {}
    for record_id in sums:
        order = sorted(sums[record_id])
        if order != list(range(len(order))):
            raise RuntimeError(f"evaluation of {record_id} does not cover epochs 0..{len(order) - 1} contiguously")
        out_labels[record_id] = np.array([labels[record_id][i] for i in order], dtype=np.int64)
        out_probs[record_id] = np.stack([sums[record_id][i] / counts[record_id][i] for i in order]).astype(np.float32)
    return EpochPredictions(out_labels, out_probs)


def evaluate(model: torch.nn.Module, urls: list[str], cfg: LoaderConfig, world_size: int, rank: int,
             device: torch.device, autocast_dtype: torch.dtype | None = None,
             task: str = "staging", *, batch_size: int | None = None) -> tuple[dict, EpochPredictions]:
    """`task` metrics over every scored epoch of `urls`, identical on all ranks, plus the per-epoch predictions.
    `batch_size`: sequences per forward pass (default cfg.batch_size)."""
    rows = score_windows(model, urls, cfg, world_size, rank, device, autocast_dtype, task, batch_size=batch_size)
    if world_size > 1:
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, rows)
        rows = [row for part in gathered for row in part]
    predictions = aggregate(rows)
    ids = sorted(predictions.labels)
    if not ids:
        return task_metrics(task, np.zeros(0, dtype=np.int64), np.zeros((0, 0))), predictions
    y_true = np.concatenate([predictions.labels[i] for i in ids])
    probabilities = np.concatenate([predictions.probabilities[i] for i in ids])
    return task_metrics(task, y_true, probabilities), predictions
