"""How a run's workers find each other (torch.distributed's rendezvous) without a server open to the network.

Ray Train's `TorchConfig` rendezvous is torch's TCPStore, a key-value server hosted by rank 0 for the whole
run, and torch binds it to every interface (there is no bind address to give it), even when the cluster's
nodes are on 127.0.0.1. Anyone who reaches that port could rewrite the addresses the workers exchange and
read or inject gradients. So when every worker of a run is on one node, as on an embedded `ray.init()`
cluster or one machine, `LocalRendezvousConfig` uses torch's FileStore instead: a file in a fresh private
(0700) folder on that node, no socket at all; it is removed at shutdown. A run whose rank 0 was killed
leaves its folder behind (a few bytes of worker addresses, readable only by its user): the folder's name
holds the pid of the rank-0 process that made it, and the next run on the node removes this user's folders
whose process is gone. Workers on several nodes still need a network rendezvous: they use Ray's TCPStore
on the cluster network (README, Security).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import ray
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
# Ray's own steps of a torch rendezvous (pinned Ray, requirements.lock): the process-group set-up each worker
# runs and the torch environment variables (LOCAL_RANK, RANK, ...) it sets first.
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

STORE_FOLDER_PREFIX = "distsleep-rendezvous-"


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _private_store_file() -> str:
    """A path for torch's FileStore in a new folder only this user can enter (the file itself is torch's), named
    after this process; stale folders of killed runs are removed first."""
    remove_stale_store_folders()
    return os.path.join(tempfile.mkdtemp(prefix=f"{STORE_FOLDER_PREFIX}{os.getpid()}-"), "store")


def remove_stale_store_folders(root: str | None = None) -> list[str]:
    """Remove this user's rendezvous folders under `root` (default: the temp dir) whose rank-0 process no
    longer runs; returns them. A folder whose process runs (or whose pid was reused) is kept: never one in use."""
    removed = []
    root = root or tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name.removeprefix(STORE_FOLDER_PREFIX).split("-", 1)[0]
        path = os.path.join(root, name)
        if not name.startswith(STORE_FOLDER_PREFIX) or not pid.isdigit() or os.path.islink(path):
            continue
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)  # raises when no such process
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:  # gone meanwhile, or a process of another user (PermissionError): keep
            continue
    return removed


def _remove_store_folder(path: str) -> None:
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


class _LocalRendezvousBackend(_TorchBackend):
    store_file: str | None = None

    def on_start(self, worker_group, backend_config: LocalRendezvousConfig) -> None:
        if len(set(worker_group.execute(_node_id))) > 1:  # several nodes: a network rendezvous is needed
            super().on_start(worker_group, backend_config)
            return
        self.store_file = worker_group.execute_single(0, _private_store_file)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        backend = backend_config.backend or "gloo"
        ray.get([worker_group.execute_single_async(rank, _setup_torch_process_group, backend=backend, world_rank=rank,
                                                   world_size=len(worker_group), init_method=f"file://{self.store_file}",
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config) -> None:
        super().on_shutdown(worker_group, backend_config)
        if self.store_file:
            try:
                worker_group.execute_single(0, _remove_store_folder, self.store_file)
            except Exception:  # rank 0 already gone (a failed worker): an empty 0700 folder in /tmp is left
                pass
            self.store_file = None


@dataclass
class LocalRendezvousConfig(TorchConfig):
    """Ray Train's TorchConfig, with a socket-free rendezvous when all workers share a node (module docstring)."""

    @property
    def backend_cls(self):
        return _LocalRendezvousBackend
