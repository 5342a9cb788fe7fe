"""How a run's workers find each other (torch.distributed's rendezvous) without a server open to every network.

Ray Train's `TorchConfig` rendezvous is torch's TCPStore, a key-value server without authentication hosted
by rank 0 for the whole run, and torch binds it to every interface (it takes no bind address), even when
the cluster's nodes are on 127.0.0.1. Anyone who reaches that port could rewrite the addresses the workers
exchange and read or inject gradients. `LocalRendezvousConfig` replaces it:

- **All workers on one node** (an embedded `ray.init()` cluster, one machine): torch's FileStore, a file in a
  fresh private (0700) folder on that node, no socket at all; it is removed at shutdown. A run whose rank 0
  was killed leaves its folder behind (a few bytes of worker addresses, readable only by its user): the
  folder's name holds the pid of the rank-0 process that made it, and the next run on the node removes this
  user's folders whose process is gone.
- **Workers on several nodes** need a network rendezvous: rank 0 binds a socket to its node's cluster
  address (the IP Ray knows the node by, `--node-ip-address`) and hands it to torch's TCPStore server
  (`master_listen_fd`), so the store listens on the cluster network only, never on the node's other
  interfaces; every rank, rank 0 included, joins as a client. The server lives in rank 0's worker process
  until the run shuts down.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from datetime import timedelta

import ray
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
# Ray's own steps of a torch rendezvous (pinned Ray, requirements.lock): the process-group set-up each worker
# runs and the torch environment variables (LOCAL_RANK, RANK, ...) it sets first.
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

STORE_FOLDER_PREFIX = "distsleep-rendezvous-"

# Rank 0's TCPStore server of a multi-node run, kept alive in its worker process until shutdown.
_store_server = None


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


def _host_store_on_node_address(timeout_s: float) -> tuple[str, int]:
    """Rank 0 of a multi-node run: start torch's TCPStore server on a socket bound to this node's cluster
    address and a free port (torch itself would bind every interface); returns (address, port)."""
    global _store_server
    import torch.distributed as dist

    address = ray.util.get_node_ip_address()
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.listen(socket.SOMAXCONN)
    port = sock.getsockname()[1]
    # detach: the store owns the descriptor from here on (Python must not close it when `sock` goes)
    _store_server = dist.TCPStore(address, port, is_master=True, wait_for_workers=False,
                                  timeout=timedelta(seconds=timeout_s), master_listen_fd=sock.detach())
    return address, port


def _stop_store_server() -> None:
    global _store_server
    _store_server = None  # the server stops with its last reference


def _join_through_store(backend: str, world_rank: int, world_size: int, address: str, port: int,
                        timeout_s: float) -> None:
    """Every rank (rank 0 too) joins the process group as a client of rank 0's TCPStore server."""
    import torch.distributed as dist

    if backend == "nccl" and not {"TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT"} & set(os.environ):
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"  # as Ray's own set-up: a timed-out collective fails
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _LocalRendezvousBackend(_TorchBackend):
    store_file: str | None = None
    hosts_store: bool = False

    def on_start(self, worker_group, backend_config: LocalRendezvousConfig) -> None:
        backend = backend_config.backend or "gloo"
        one_node = len(set(worker_group.execute(_node_id))) == 1
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        ranks = range(len(worker_group))
        common = {"backend": backend, "world_size": len(worker_group), "timeout_s": backend_config.timeout_s}
        if one_node:
            self.store_file = worker_group.execute_single(0, _private_store_file)
            joins = [worker_group.execute_single_async(rank, _setup_torch_process_group, world_rank=rank,
                                                       init_method=f"file://{self.store_file}", **common)
                     for rank in ranks]
        else:
            address, port = worker_group.execute_single(0, _host_store_on_node_address, backend_config.timeout_s)
            self.hosts_store = True
            joins = [worker_group.execute_single_async(rank, _join_through_store, world_rank=rank, address=address,
                                                       port=port, **common)
                     for rank in ranks]
        ray.get(joins)

    def on_shutdown(self, worker_group, backend_config) -> None:
        super().on_shutdown(worker_group, backend_config)
        try:
            if self.store_file:
                worker_group.execute_single(0, _remove_store_folder, self.store_file)
            if self.hosts_store:
                worker_group.execute_single(0, _stop_store_server)
        except Exception:  # rank 0 already gone (a failed worker): its server went with it, an empty folder stays
            pass
        self.store_file, self.hosts_store = None, False


@dataclass
class LocalRendezvousConfig(TorchConfig):
    """Ray Train's TorchConfig, with a socket-free rendezvous when all workers share a node and a store bound
    to the cluster network when they do not (module docstring)."""

    @property
    def backend_cls(self):
        return _LocalRendezvousBackend
