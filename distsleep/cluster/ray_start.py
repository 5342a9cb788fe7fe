"""`ray start` for nodes that all live on this machine, keeping them on 127.0.0.1.

    python -m distsleep.cluster.ray_start start --head --node-ip-address=127.0.0.1 ...   (args as `ray start`)

Ray's CLI rewrites `--node-ip-address=127.0.0.1` to the host's outward address, and its GCS, raylet and
agents then listen on every interface. Ray binds them to loopback exactly when the node address stays
127.0.0.1, which its "single-machine cluster" switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) achieves for a
head but refuses for a second node. This wrapper keeps a loopback address as given, lets `--address` add a
node, and leaves the switch at 0 for the node's processes, so job drivers started there resolve 127.0.0.1
the same way. Used by `distsleep.cluster.local` for clusters without network namespaces.
"""

from __future__ import annotations

import os
import sys

from ray._private import ray_constants, services

from distsleep.runtime import LOOPBACK_SWITCH

_resolve = services.resolve_ip_for_localhost


def _keep_loopback(host: str) -> str:
    return host if host == "127.0.0.1" else _resolve(host)


def main() -> int:
    ray_constants.ENABLE_RAY_CLUSTER = True  # adding a node to a one-machine cluster is the point here
    services.resolve_ip_for_localhost = _keep_loopback
    os.environ[LOOPBACK_SWITCH] = "0"  # inherited by the node's daemons, workers and job drivers
    from ray.scripts.scripts import main as ray_main

    return ray_main()


if __name__ == "__main__":
    sys.exit(main())
