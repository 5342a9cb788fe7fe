"""Connecting to Ray the same way from every job: $RAY_ADDRESS / --address, else an embedded cluster.

A cluster this process starts itself (`ray.init()` without an address: the demo, the tests, a job run on a
laptop) gets Ray's token authentication, always (an inherited RAY_AUTH_MODE=disabled is overridden; the
token is Ray's default ~/.ray/auth_token, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH when set), and keeps every
server on 127.0.0.1: Ray binds its GCS, raylet and agents to loopback exactly when the node address is
127.0.0.1, which it otherwise rewrites to the host's outward address. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is
Ray's own switch for that ("this machine is the whole cluster"); child processes inherit it, so job drivers
resolve 127.0.0.1 addresses the same way.
"""

from __future__ import annotations

import os
import sys

AUTH_MODE = "RAY_AUTH_MODE"
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def secure_local_ray() -> None:
    """Token auth on and servers on 127.0.0.1 for a Ray cluster this process is about to start with
    `ray.init()`. Call it before ray.init(), preferably before `import ray` (it also updates the values Ray
    already read at import)."""
    os.environ[AUTH_MODE] = "token"
    os.environ[LOOPBACK_SWITCH] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
    raylet = sys.modules.get("ray._raylet")
    if raylet is not None:
        raylet.Config.initialize("")  # RayConfig caches RAY_AUTH_MODE from the environment


def connect_ray(address: str | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS); without one, start a local cluster (token auth on,
    servers on 127.0.0.1, see the module docstring).

    The local cluster keeps Ray's dashboard (bound to 127.0.0.1): Ray Train V2 uses the state API it
    serves to clean up after trials and workers.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        secure_local_ray()
    ray.init(address=address, log_to_driver=True, configure_logging=False)
