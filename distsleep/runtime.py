"""Connecting to Ray the same way from every job: $RAY_ADDRESS / --address, else an embedded cluster."""

from __future__ import annotations

import os


def connect_ray(address: str | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS); without one, start a local cluster.

    The local cluster keeps Ray's dashboard (bound to 127.0.0.1): Ray Train V2 uses the state API it
    serves to clean up after trials and workers.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, log_to_driver=True, configure_logging=False)
