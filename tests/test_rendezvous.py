"""How Ray Train's workers find each other: on one node, without any socket listening beyond 127.0.0.1.
A real Ray Train run (2 gloo workers on the session's local Ray cluster), each worker listing its own
listening sockets after an all-reduce."""

from __future__ import annotations

import json
from pathlib import Path

from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from distsleep.train.rendezvous import LocalRendezvousConfig

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def _listening(torch_config, folder: Path) -> dict[int, dict]:
    def record_listening(config: dict) -> None:  # nested: pickled by value (workers cannot import this module)
        import psutil
        import ray.train
        import torch
        import torch.distributed as dist

        total = torch.ones(1)
        dist.all_reduce(total)
        rank = ray.train.get_context().get_world_rank()
        listening = sorted({c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN})
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps({"sum": total.item(), "listening": listening}))

    folder.mkdir()
    TorchTrainer(record_listening, train_loop_config={"out": str(folder)}, torch_config=torch_config,
                 scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(storage_path=str(folder / "runs"), name="rendezvous")).fit()
    return {rank: json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)}


def test_workers_on_one_node_rendezvous_without_a_network_server(ray_local, tmp_path):
    # Ray's default: rank 0 hosts torch's TCPStore, which listens on every interface (what we replace).
    default = _listening(TorchConfig(backend="gloo"), tmp_path / "default")
    assert any(ip not in LOOPBACK for ip in default[0]["listening"]), default
    # Folders of earlier runs whose rank 0 was killed (no shutdown ran) may exist: only this run's must go.
    before = set(Path("/tmp").glob("distsleep-rendezvous-*"))
    ours = _listening(LocalRendezvousConfig(backend="gloo"), tmp_path / "ours")
    for rank, seen in ours.items():
        assert seen["sum"] == 2.0 and seen["listening"] and set(seen["listening"]) <= set(LOOPBACK), (rank, seen)
    assert set(Path("/tmp").glob("distsleep-rendezvous-*")) <= before, "the store's folder is removed at the end"


def test_folders_of_killed_runs_are_removed_but_never_one_in_use(tmp_path):
    import subprocess
    import sys

    from distsleep.train.rendezvous import STORE_FOLDER_PREFIX, remove_stale_store_folders

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    stale = tmp_path / f"{STORE_FOLDER_PREFIX}{dead_pid}-abc123"
    live = tmp_path / f"{STORE_FOLDER_PREFIX}{__import__('os').getpid()}-def456"
    other = tmp_path / "unrelated-123"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "store").write_text("x")
    assert remove_stale_store_folders(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()
