"""Checks that catch cluster pitfalls before a job starts, each with what to do about it.

On one machine every path is visible to every worker; on a real cluster a path on the driver's disk is
not, and the job would fail minutes later inside a worker (or, worse, each node would write its own
checkpoints). So when the cluster has more than one node, local paths are checked from every node.
"""

from __future__ import annotations

import os
from pathlib import Path


class ClusterCheckError(RuntimeError):
    """A job cannot run on this cluster as configured; the message says what to change."""


def _probe(path: str, need_write: bool) -> str | None:
    """Run on one node: None if `path` is usable there, else the problem."""
    p = Path(path)
    target = p if p.exists() else p.parent
    if not target.exists():
        return "does not exist"
    if need_write:
        probe = target / f".distsleep-write-probe-{os.getpid()}"
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            return f"is not writable ({error.strerror})"
    return None


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_paths_visible(paths: dict[str, tuple[str, bool]]) -> None:
    """`paths`: what -> (local path, needs write). Raise ClusterCheckError naming the node that cannot use it.

    URLs (s3://, gs://, ...) are skipped: every node reaches them by itself. Single-node clusters are skipped.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from distsleep.shards.storage import is_remote

    local = {what: (path, write) for what, (path, write) in paths.items() if path and not is_remote(path)}
    nodes = alive_nodes()
    if not local or len(nodes) < 2:
        return
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    pending = {}
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        for what, (path, write) in local.items():
            pending[(node["NodeManagerAddress"], what, path)] = probe.options(scheduling_strategy=strategy).remote(path, write)
    problems = []
    for (address, what, path), ref in pending.items():
        problem = ray.get(ref, timeout=120)
        if problem:
            problems.append(f"{what} {path} {problem} on node {address}")
    if problems:
        raise ClusterCheckError("; ".join(problems) + ". Every node must reach it: put it on a shared filesystem "
                                "(NFS/EFS/PVC mounted at the same path everywhere) or in object storage (s3://, gs://)")


def allow_pending() -> bool:
    """DISTSLEEP_ALLOW_PENDING=1: an autoscaler will add nodes, so demand beyond the cluster may wait."""
    return os.environ.get("DISTSLEEP_ALLOW_PENDING") == "1"


def resource_shortfall(demand: dict[str, float], capacity: dict[str, float]) -> str:
    """'CPU: needs 3, cluster has 2, ...' for each resource `demand` exceeds, '' when it fits."""
    short = {k: (v, capacity.get(k, 0.0)) for k, v in demand.items() if v > capacity.get(k, 0.0) + 1e-9}
    return ", ".join(f"{k}: needs {need:g}, cluster has {have:g}" for k, (need, have) in short.items())


def check_resources(demand: dict[str, float], what: str, capacity: dict[str, float] | None = None) -> None:
    """Raise ClusterCheckError when `demand` exceeds the whole cluster (`capacity`, default the connected
    cluster's), unless `allow_pending()`."""
    if allow_pending():
        return
    if capacity is None:
        import ray

        capacity = ray.cluster_resources()
    detail = resource_shortfall(demand, capacity)
    if detail:
        raise ClusterCheckError(f"{what} needs more than the cluster offers ({detail}); lower --num-workers / "
                                "--cpus-per-worker / --gpus-per-worker, add nodes, or on an autoscaling cluster set "
                                "DISTSLEEP_ALLOW_PENDING=1 to wait for them")
