"""A real multi-node Ray cluster on loopback (`ray.cluster_utils.Cluster`): a head of 1 CPU and
two worker nodes of 2 CPUs (and one `train_slot` each), MLflow through a real `mlflow server`,
storage on `s3://` served by moto's real server.

The nodes start without the AWS variables (as a cluster whose nodes were given no credentials):
the `mfd` client has them, and forwards them to every worker with `runtime.forward_env`; without
that, the sweep is refused before any trial, naming the nodes.

The cluster is driven only through `mfd` subprocesses with `--address`, the user's path: this
process never connects to it, so the session's own Ray (`ray_local`, maybe started by earlier
tests) is untouched, before or after. Token auth as the session's: RAY_AUTH_MODE=token (set by
tests/conftest.py before Ray's import) and the token file under HOME, which the cluster and the
`mfd` clients share.

One cluster for the module. Order matters: the bad-input checks first, then the sweep with
both faults (it removes a worker node and adds a replacement), then generation's node loss
(which removes another).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from processes import free_ports, stop_session

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
WORKER_NODE = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "resources": {"train_slot": 1}}

TINY = {
    "benchmark": {"name": "crowd_1d", "params": {"size": 6, "horizon": 4}},
    "data": {"quality": "expert", "n_agents": 20, "episodes": 4, "shards": 2},
    "method": {
        "name": "mf_diffuser",
        "params": {
            "window": 2,
            "n_particles": 8,
            "max_particles": 8,
            "diffusion_steps": 4,
            "hidden": 16,
            "n_blocks": 1,
        },
    },
    "train": {
        "epochs": 2,
        "steps_per_epoch": 5,
        "batch_size": 4,
        "num_workers": 1,
        "cpus_per_worker": 1,
        "max_failures": 0,
    },
    "eval": {"n_agents": [20], "episodes": 1, "max_actors": 1, "plan_windows": 2},
}


class LoopbackCluster:
    def __init__(self, cluster: Any, ray_tmp: str) -> None:
        self.cluster = cluster
        self.ray_tmp = ray_tmp

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def worker(self, node_id: str) -> Any:
        found = [n for n in self.cluster.worker_nodes if n.node_id == node_id]
        assert found, f"{node_id} is not a worker node of this cluster"
        return found[0]

    def worker_ids(self) -> set[str]:
        return {n.node_id for n in self.cluster.worker_nodes}

    def ensure_workers(self, n: int) -> None:
        while len(self.cluster.worker_nodes) < n:
            self.cluster.add_node(**WORKER_NODE)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoopbackCluster]:
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray.cluster_utils import Cluster

    # What ray.init does first in token mode (a fresh HOME has no token: without it the head's
    # GCS exits; run alone, this module must not depend on an earlier test's ray.init).
    ensure_token_if_auth_enabled()
    # Short paths (Ray's sockets live there). RAY_TMPDIR while the head starts and while it
    # stops: Cluster writes (and deletes) the "current cluster" file for `address="auto"` in
    # Ray's default temp dir; this keeps it out of the machine's shared /tmp/ray.
    ray_tmp = tempfile.mkdtemp(prefix="mfdc")
    os.makedirs(f"{ray_tmp}/ray")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = ray_tmp
    dash = free_ports(1)[0]
    try:
        c = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "node_ip_address": "127.0.0.1",
                "temp_dir": f"{ray_tmp}/r",
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": dash,
            },
        )
    finally:
        _restore("RAY_TMPDIR", before)
    try:
        for _ in range(2):
            c.add_node(**WORKER_NODE)
        yield LoopbackCluster(c, ray_tmp)
    finally:
        os.environ["RAY_TMPDIR"] = ray_tmp
        try:
            c.shutdown()
        finally:
            _restore("RAY_TMPDIR", before)
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _restore(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


@pytest.fixture(scope="module")
def mlflow_url(mlflow_server: Any) -> str:
    """The URL of the real `mlflow server` of tests/conftest.py (SQLite behind it, proxied
    artifacts), one per module."""
    return str(mlflow_server.uri)


FORWARD = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RAY_AUTH_MODE": "token",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **(extra or {}),
    }
    env.pop("RAY_ADDRESS", None)
    return env


def _mfd(
    *args: str, timeout: float = 420, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mfd"), *args],
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


def _mfd_background(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`mfd ARGS` running while the test acts on the cluster (stopped by PID if left)."""
    return subprocess.Popen(
        [str(BIN / "mfd"), *args],
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _sweep_file(
    tmp_path: Path,
    name: str,
    train: dict[str, Any],
    url: str,
    runtime: dict[str, Any] | None = None,
) -> Path:
    doc = {
        "name": name,
        **TINY,
        "train": {**TINY["train"], **train},
        "runtime": {"storage": str(tmp_path / "store"), "tracking_uri": url, **(runtime or {})},
        "sweep": {"grid": {"seed": [0, 1]}},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _trial_runs(url: str, parent: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exps = [e.experiment_id for e in client.search_experiments()]
    where = f"tags.`mlflow.parentRunId` = '{parent}'"
    return list(client.search_runs(exps, filter_string=where, max_results=100))


def test_s3_storage_the_nodes_cannot_reach_is_refused_before_any_trial(
    cluster: LoopbackCluster, mlflow_url: str, s3_server: Any, tmp_path: Path
) -> None:
    """The client has the AWS variables, the nodes do not (and none are forwarded): one probe
    per node finds that, and the sweep exits 2 naming the nodes and the fix; nothing is written
    to the bucket and no trial run exists."""
    from mlflow.tracking import MlflowClient

    prefix = "cluster-refused"
    cfg = _sweep_file(tmp_path, "refused", {}, mlflow_url, {"storage": s3_server.uri(prefix)})
    done = _mfd("sweep", "-c", str(cfg), "--address", cluster.address, env=s3_server.env)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr
    assert "3 of the 3 nodes of this Ray cluster cannot use the storage" in err, err
    assert "no S3 credentials" in err and "runtime.forward_env: [AWS_ACCESS_KEY_ID" in err, err
    assert s3_server.keys(prefix) == []
    client = MlflowClient(tracking_uri=mlflow_url)
    exps = [e.experiment_id for e in client.search_experiments()]
    names = {r.info.run_name for r in client.search_runs(exps, max_results=1000)}
    assert not any("refused" in str(n) for n in names), names


def test_train_group_too_big_for_any_node_exits_2(
    cluster: LoopbackCluster, mlflow_url: str, tmp_path: Path
) -> None:
    """5 CPUs in total, but no node has 3: a 3-CPU Train worker could never be placed. The
    sweep says so and exits 2 before any trial (no trial run in MLflow)."""
    from mlflow.tracking import MlflowClient

    cfg = _sweep_file(tmp_path, "toobig", {"cpus_per_worker": 3}, mlflow_url)
    done = _mfd("sweep", "-c", str(cfg), "--address", cluster.address, timeout=90)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr
    assert "train.num_workers (1) x (CPU 3) per worker" in err, err
    assert "place 0" in err and "train.cpus_per_worker <= 2" in err, err
    client = MlflowClient(tracking_uri=mlflow_url)
    exps = [e.experiment_id for e in client.search_experiments()]
    names = {r.info.run_name for r in client.search_runs(exps, max_results=1000)}
    assert not any("toobig" in str(n) for n in names), names


def test_a_sqlite_store_on_the_cluster_exits_2(cluster: LoopbackCluster, tmp_path: Path) -> None:
    """A SQLite tracking store on a cluster of 3 nodes is refused before any trial, exit 2,
    with the fix (an MLflow server's URI), and the SQLite file is never created."""
    db = tmp_path / "mlflow.db"
    cfg = _sweep_file(tmp_path, "sqlite", {}, f"sqlite:///{db}")
    done = _mfd("sweep", "-c", str(cfg), "--address", cluster.address, timeout=90)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr
    assert f"runtime.tracking_uri = sqlite:///{db}" in err, err
    assert "3 nodes" in err and "--tracking-uri http://" in err, err
    assert not db.exists()


def _wait_for(
    what: str, check: Any, proc: subprocess.Popen[str], timeout: float, every: float = 0.5
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"mfd ended before {what}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(every)


@pytest.mark.timeout(600)
def test_sweep_on_s3_across_nodes_through_an_mlflow_outage_and_a_lost_node(
    cluster: LoopbackCluster, mlflow_server: Any, mlflow_url: str, s3_server: Any, tmp_path: Path
) -> None:
    """One sweep, both faults. Two trials, each one Train worker of 1 CPU and 1 `train_slot`
    (one per worker node, so they train on different nodes), datasets and checkpoints on s3://
    (the AWS variables forwarded to the workers), MLflow through the server.
    - Once the first epoch is logged the server is SIGKILLed and comes back on the same port
      3 s later: no trial fails for it, every epoch is logged once.
    - Once a trial's epoch-2 checkpoint is on the store (so epoch 1's is reported and two
      epochs are left), its node is removed and a replacement joins (as KubeRay replaces a
      pod; the surviving node's one `train_slot` is the other trial's): that trial's Train
      group restarts from its last checkpoint, read back from s3://, on a node it did not start
      on; `train/resumed_from_epoch` is logged and the sweep ends with one FINISHED run per
      trial.
    Each run says where it trained, the objects are on the store, and `mfd table` reads the
    sweep back through the server."""
    from mlflow.tracking import MlflowClient

    from mfdiffuser.platform import tracking

    cluster.ensure_workers(2)
    started_on = cluster.worker_ids()
    prefix, epochs = "cluster-sweep", 4
    cfg = _sweep_file(
        tmp_path,
        "placed",
        {
            "resources_per_worker": {"train_slot": 1},
            "epochs": epochs,
            "steps_per_epoch": 400,
            "max_failures": 2,
        },
        mlflow_url,
        {"storage": s3_server.uri(prefix), "forward_env": FORWARD},
    )
    client = MlflowClient(tracking_uri=mlflow_url)
    s3 = s3_server.client()

    def epoch_two_on_the_store() -> Any:
        # A trial's checkpoint meta.json (written last: the commit) names its MLflow run, whose
        # tag names the node training it; epoch 2 on the store means epoch 1's is reported.
        for key in s3_server.keys(f"{prefix}/train/"):
            if "/checkpoint_" not in key or not key.endswith("/meta.json"):
                continue
            written = json.loads(s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())
            if written["epoch"] != 2:
                continue
            node = client.get_run(written["run_id"]).data.tags.get(tracking.TRAIN_NODE_ID)
            if node:
                return written["run_id"], node
        return None

    before = mlflow_server.metric_rows("train/loss")
    start = time.monotonic()
    proc = _mfd_background(
        "sweep", "-c", str(cfg), "--address", cluster.address, "--json", env=s3_server.env
    )
    try:
        _wait_for(
            "an epoch logged", lambda: mlflow_server.metric_rows("train/loss") > before, proc, 300
        )
        down_at = time.monotonic() - start
        mlflow_server.restart(crash=True, down_seconds=3)
        outage = time.monotonic() - start - down_at
        run_id, node = _wait_for("an epoch-2 checkpoint", epoch_two_on_the_store, proc, 300)
        cluster.cluster.remove_node(cluster.worker(node), allow_graceful=False)
        removed_at = time.monotonic() - start
        cluster.cluster.add_node(**WORKER_NODE)
        out, err = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            stop_session(proc.pid)
    wall = time.monotonic() - start
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out)
    assert result["trials_finished"] == 2 and result["trials_failed"] == 0
    runs = _trial_runs(mlflow_url, result["parent_run_id"])
    assert sorted(r.data.tags["mfd.trial_key"] for r in runs) == ["seed=0", "seed=1"]
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    first_nodes = [r.data.tags[tracking.TRAIN_NODES].split(",")[0] for r in runs]
    assert set(first_nodes) <= started_on and len(set(first_nodes)) == 2, first_nodes
    assert {r.data.tags[tracking.TRAIN_NODE_ADDRESS] for r in runs} == {"127.0.0.1"}
    outcome = {}
    for r in runs:  # no metric lost or logged twice across the outage and the restart
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, epochs + 1)), (r.info.run_name, steps)
        assert len(client.get_metric_history(r.info.run_id, "return/n20")) == 1
        resumed = [
            m.value for m in client.get_metric_history(r.info.run_id, "train/resumed_from_epoch")
        ]
        nodes = r.data.tags[tracking.TRAIN_NODES].split(",")
        outcome[r.data.tags["mfd.trial_key"]] = {"resumed": resumed, "nodes": len(nodes)}
        if r.info.run_id == run_id or node in nodes[:-1]:  # it trained on the removed node
            assert resumed and all(1 <= v < epochs for v in resumed), resumed
            assert nodes[-1] != node and nodes[-1] in cluster.worker_ids(), nodes
        checkpoint = r.data.tags["mfd.checkpoint"]
        assert checkpoint.startswith(s3_server.uri(prefix, "train")), checkpoint
        key = checkpoint.removeprefix(f"s3://{s3_server.bucket}/")
        assert f"{key}/meta.json" in s3_server.keys(key), key
    keys = s3_server.keys(f"{prefix}/datasets")
    # one dataset per seed, each committed (its manifest) with its 2 shards
    assert sum(k.endswith("/manifest.json") for k in keys) == 2, keys
    assert sum(k.endswith(".parquet") for k in keys) == 4, keys
    table = _mfd("table", "--sweep", result["sweep_id"], "--tracking-uri", mlflow_url, "--json")
    assert table.returncode == 0, table.stderr[-3000:]
    read = json.loads(table.stdout)
    assert read["parent_run_id"] == result["parent_run_id"] and not read["missing"], read
    assert sorted(s for x in read["settings"] for m in x["methods"] for s in m["seeds"]) == [0, 1]
    print(
        f"s3 sweep: {wall:.1f} s wall ({result['wall_seconds']:.1f} s in run_sweep); first "
        f"nodes {first_nodes}; server down at {down_at:.1f} s for {outage:.1f} s; node removed "
        f"at {removed_at:.1f} s; {outcome}; load {os.getloadavg()}"
    )


def test_worker_node_lost_during_generation_leaves_a_complete_dataset(
    cluster: LoopbackCluster, tmp_path: Path
) -> None:
    """A worker node holding generation actors is removed once the first shard is on disk: its
    actors restart on the surviving nodes (the pool leaves one node's CPUs spare for that,
    `datagen.pool_size`), and the dataset is complete: every (episode, t, agent) once, every
    shard's checksum as its manifest says."""
    import pyarrow as pa
    from ray.util.state import list_actors

    from mfdiffuser.data.verify import read_shard, verify_dataset

    cluster.ensure_workers(2)
    episodes, shards, agents, horizon = 48, 24, 8000, 10
    cfg = {
        "name": "genfault",
        "benchmark": {"name": "crowd_1d", "params": {"size": 10, "horizon": horizon}},
        "data": {"quality": "medium", "n_agents": agents, "episodes": episodes, "shards": shards},
        "runtime": {"storage": str(tmp_path / "store")},
    }
    path = tmp_path / "genfault.yaml"
    path.write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    proc = _mfd_background("generate", "-c", str(path), "--address", cluster.address, "--json")
    try:
        # The actors come up before any shard is written: find the ones on a worker node first
        # (the state API takes a second), then remove that node the moment the first shard is on
        # disk, so the fault lands while most shards are still to be written however fast the
        # simulator is.
        def actors_on_workers() -> Any:
            alive = list_actors(
                address=cluster.address,
                filters=[("class_name", "=", "GeneratorActor"), ("state", "=", "ALIVE")],
                detail=True,
            )
            found = [a.node_id for a in alive if a.node_id in cluster.worker_ids()]
            return (alive, found) if found else None

        actors, on_workers = _wait_for("an actor on a worker node", actors_on_workers, proc, 240)
        victim = max(set(on_workers), key=on_workers.count)
        shard_glob = "datasets/*/shard-*.parquet"
        _wait_for("a shard", lambda: list((tmp_path / "store").glob(shard_glob)), proc, 240, 0.02)
        written = len(list((tmp_path / "store").glob(shard_glob)))
        cluster.cluster.remove_node(cluster.worker(victim), allow_graceful=False)
        removed_at = time.monotonic() - start
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            stop_session(proc.pid)
    assert proc.returncode == 0, err[-3000:]
    assert written < shards, f"all {shards} shards were written before the node was removed"
    uri = json.loads(out)["dataset"]
    manifest = verify_dataset(uri)  # every shard's bytes against its manifest checksum
    assert manifest.episodes == episodes and len(manifest.shards) == shards
    table = pa.concat_tables([read_shard(uri, s) for s in manifest.shards])
    keys = (
        table["episode"].to_numpy().astype(np.int64) * horizon + table["t"].to_numpy()
    ) * agents + table["agent"].to_numpy()
    assert table.num_rows == episodes * horizon * agents
    assert len(np.unique(keys)) == table.num_rows  # each (episode, t, agent) exactly once
    assert not list(Path(uri).glob(".*tmp-*")), "a temporary file was left behind"
    print(
        f"generation fault: {written} of {shards} shards on disk when the node with "
        f"{on_workers.count(victim)} of {len(actors)} actors was removed at {removed_at:.1f} s; "
        f"{time.monotonic() - start:.1f} s wall, {table.num_rows} rows; load {os.getloadavg()}"
    )
