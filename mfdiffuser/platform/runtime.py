"""Ray runtime: local in-process by default, a cluster when an address is given."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use an already-running Ray session (tests, notebooks), else connect/start one.

    `address` (or RAY_ADDRESS) connects to a cluster; with neither, Ray starts on this machine and
    is shut down again on exit.
    """
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # The dashboard (on loopback only) also serves the State API, which Ray Train's
        # placement-group cleaner polls; without it that actor logs a warning every second.
        ray.init(
            # "local": always a fresh instance, never an unrelated cluster found on this machine
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
        )
    try:
        yield
    finally:
        ray.shutdown()


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))
