"""Ray runtime: local in-process by default, a cluster when an address is given."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import ray

from mfdiffuser.platform.config import ConfigError, ExperimentConfig
from mfdiffuser.platform.errors import verbose
from mfdiffuser.platform.jobs import forwarded_env
from mfdiffuser.plugins import plugin_env


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    forward_env: list[str] | tuple[str, ...] = (),
) -> Iterator[None]:
    """Use an already-running Ray session (tests, notebooks), else connect/start one.

    `address` (or RAY_ADDRESS) connects to a cluster; with neither, Ray starts on this machine and
    is shut down again on exit. `forward_env` names variables whose values here are set in every
    worker of the session (its runtime environment's `env_vars`); a session already running
    keeps its own environment. MFD_PLUGIN_PATH, when set, is always forwarded
    (`mfdiffuser.plugins`).
    """
    if ray.is_initialized():
        yield
        return
    # the plugin directories too (MFD_PLUGIN_PATH), so the workers' registries are the driver's
    extra = {**plugin_env(), **forwarded_env(forward_env)}
    # What the workers print is forwarded (log_to_driver); Ray's own INFO lines on the driver
    # (the start-up banner) only with MFD_VERBOSE, so that an error is the one line a user sees.
    quiet = {"log_to_driver": True, "logging_level": logging.INFO if verbose() else logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Ray Train's placement-group cleaner queries the State API of RAY_ADDRESS, else of the
        # newest Ray instance started on its machine (see local_ray): it is given the address.
        named = "://" not in address and address != "auto"  # a GCS address, not a search
        env_vars = {**extra, **({"RAY_ADDRESS": address} if named else {})}
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None, **quiet)
    else:
        local = local_ray(num_cpus)
        local["runtime_env"]["env_vars"].update(extra)
        ray.init(**local, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


# Ports a local Ray takes by default (GCS, dashboard, client server, dashboard agent): a free
# port picked for the dashboard must not be one of them, or the agent that starts after it
# fails to bind (seen once: 52365).
RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365})


def free_port() -> int:
    """A free TCP port on loopback that none of Ray's default services wants."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in RAY_DEFAULT_PORTS:
            return port


def local_ray(num_cpus: int | None) -> dict[str, Any]:
    """`ray.init` arguments of a fresh Ray on this machine (the tests' session uses them too)."""
    # The dashboard (on loopback only) also serves the State API, which Ray Train's
    # placement-group cleaner polls; without it that actor logs a warning every second.
    # Without an address that actor's State API client takes the newest Ray instance started
    # on this machine (maybe another user's) and warns about it: it is given ours.
    port = free_port()
    return {
        # "local": always a fresh instance, never an unrelated cluster found on this machine
        "address": "local",
        "num_cpus": num_cpus,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": port,
        "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
    }


def alive_node_resources() -> list[dict[str, float]]:
    """Each alive node's resources (CPU, GPU, custom ones, `node:__internal_head__` on the head)."""
    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def alive_nodes() -> int:
    return len(alive_node_resources())


def check_tracking_store(uri: str | None) -> None:
    """Right after the driver connects to Ray, before any trial starts: a file-based MLflow store
    on a multi-node cluster is refused (`jobs.check_store_for_cluster`)."""
    from mfdiffuser.platform.jobs import check_store_for_cluster

    check_store_for_cluster(uri, alive_nodes())


def check_storage_on_nodes(storage: str, data_path: str | None = None) -> None:
    """On a cluster of more than one node, every node must reach an object store (`s3://`) the
    way the driver does: one short probe per alive node (a task pinned there, no CPU), before
    any trial. A node without credentials or endpoint fails here, named, with the fix, instead
    of a trial failing on it later. One node: the driver's own probe (jobs.check_storage) said."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from mfdiffuser.data.storage import is_uri

    where = [(f, u) for f, u in (("runtime.storage", storage), ("data.path", data_path)) if u]
    where = [(f, str(u)) for f, u in where if is_uri(str(u)) and not str(u).startswith("file:")]
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not where or len(nodes) < 2:
        return
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_store)
    pending = {
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(where): n
        for n in nodes
    }
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=120)
    problems, gone = [], 0
    for ref, node in pending.items():
        name = f"node {node['NodeID'][:12]} ({node.get('NodeManagerAddress', '?')})"
        if ref not in ready:
            problems.append(f"{name}: the storage probe did not answer in 120 s")
            continue
        try:
            error = ray.get(ref)
        except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError):
            # The node left the cluster after it was listed (a lost or replaced node: a sweep's
            # trial evaluating then must not fail for it); nothing of it is left to check.
            gone += 1
            continue
        except ray.exceptions.RayError as err:
            error = f"the probe failed: {type(err).__name__}: {str(err).splitlines()[0]}"
        if error:
            problems.append(f"{name}: {error}")
    if problems:
        raise ConfigError(
            f"{len(problems)} of the {len(nodes) - gone} nodes of this Ray cluster cannot use the "
            "storage the driver can; give every node the credentials and endpoint (the AWS "
            "variables set where `ray start` runs), or forward them from here with "
            "runtime.forward_env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, "
            "AWS_ENDPOINT_URL] (docs/storage.md): " + "; ".join(sorted(problems)[:MAX_SHOWN_NODES])
        )


MAX_SHOWN_NODES = 8


def _probe_store(where: list[tuple[str, str]]) -> str | None:
    """On one node: `check_store` of each (field, URI), the first error's one line, or None."""
    from mfdiffuser.data.storage import StorageError, check_store

    for field, uri in where:
        try:
            check_store(uri, field)
        except StorageError as err:
            return str(err)
    return None


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def check_fits(cfg: ExperimentConfig, trial_cpus: float | None = None) -> None:
    """Ray waits forever for resources the cluster does not have: a Train worker group (beside a
    sweep trial's own `trial_cpus`) or a rollout actor that can never be placed fails here with
    one line instead, right after Ray starts."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    own = trial_cpus or 0.0
    train = cfg.train
    need = own + train.num_workers * train.cpus_per_worker
    if need > cpus + 1e-9:
        beside = f" + sweep.trial_cpus ({own:g})" if trial_cpus is not None else ""
        fit = (cpus - own) / train.num_workers
        raise ConfigError(
            f"train.num_workers ({train.num_workers}) x train.cpus_per_worker "
            f"({train.cpus_per_worker:g}){beside} = {need:g} CPUs, but the cluster has {cpus:g}: "
            f"the Train run could never start; allowed: train.cpus_per_worker <= {fit:.2f} or "
            "fewer workers"
        )
    if train.use_gpu and train.num_workers > gpus:
        raise ConfigError(
            f"train.use_gpu = True: {train.num_workers} workers need a GPU each, the cluster has "
            f"{gpus:g}; allowed: train.num_workers <= {gpus:g}, or train.use_gpu = null"
        )
    _check_placement(cfg, own, use_gpu=bool(train.use_gpu) or (train.use_gpu is None and gpus > 0))
    room = cpus - own
    if cfg.eval.actor_cpus > room + 1e-9:
        raise ConfigError(
            f"eval.actor_cpus = {cfg.eval.actor_cpus:g}: the cluster has {room:g} CPUs for a "
            f"rollout actor; allowed: <= {room:.2f}"
        )


def _node_room(trial_cpus: float) -> list[dict[str, float]]:
    """What each alive node offers a Train worker: its resources, less the sweep trial's own
    CPUs on the head (where a sweep's trials run)."""
    rooms = alive_node_resources()
    for room in rooms:
        if "node:__internal_head__" in room:
            room["CPU"] = room.get("CPU", 0.0) - trial_cpus
    return rooms


def _check_placement(cfg: ExperimentConfig, trial_cpus: float, *, use_gpu: bool) -> None:
    """A Train worker runs on one node: the group must fit node by node, not only in total
    (3 nodes of 2 CPUs have 6 CPUs but no place for a 3-CPU worker)."""
    train = cfg.train
    need = {"CPU": train.cpus_per_worker, **train.resources_per_worker}
    if use_gpu:
        need["GPU"] = 1.0
    rooms = _node_room(trial_cpus)
    for name, amount in train.resources_per_worker.items():
        if not any(room.get(name, 0.0) > 0 for room in rooms):
            have = sorted(
                {k for room in rooms for k in room}
                - {"CPU", "GPU", "memory", "object_store_memory"}
            )
            have = [k for k in have if not k.startswith("node:")]
            raise ConfigError(
                f"train.resources_per_worker.{name} = {amount:g}: no node of the cluster has a "
                f"resource {name!r}; allowed: the nodes' custom resources "
                f"({', '.join(have) or 'none'}), given by `ray start --resources`"
            )

    def fits(room: dict[str, float]) -> int:
        return int(min((room.get(k, 0.0) + 1e-9) // v for k, v in need.items()))

    placed = sum(fits(room) for room in rooms)
    if placed < train.num_workers:
        per_node = "; ".join(", ".join(f"{k} {room.get(k, 0.0):g}" for k in need) for room in rooms)
        largest = max((room.get("CPU", 0.0) for room in rooms), default=0.0)
        want = ", ".join(f"{k} {v:g}" for k, v in need.items())
        raise ConfigError(
            f"train.num_workers ({train.num_workers}) x ({want}) per worker: a worker runs on "
            f"one node, and the cluster's {len(rooms)} nodes ({per_node}) place {placed}; "
            f"allowed: train.cpus_per_worker <= {largest:g} (the largest node), fewer workers, "
            "or more nodes"
        )
