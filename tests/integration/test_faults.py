"""Faults: a killed DDP worker is replaced and training resumes from the last checkpoint
(`train.max_failures`), and the run still ends with every epoch trained once; a killed
generation actor is restarted and the dataset is the one an uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors

from mfdiffuser import api
from mfdiffuser.data.verify import verify_dataset
from mfdiffuser.methods.checkpoint import read_meta
from mfdiffuser.platform.config import load_config
from mfdiffuser.workers.datagen import generate_dataset

pytestmark = pytest.mark.integration


def _rendezvous_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mfd-ddp-*"))


def test_killed_worker_resumes_from_checkpoint(ray_local: None, tmp_path: Path) -> None:
    rendezvous = _rendezvous_dirs()
    cfg = load_config(
        None,
        [
            f"runtime.storage={tmp_path / 'store'}",
            "data.n_agents=30",
            "data.episodes=4",
            "data.shards=2",
            "train.epochs=4",
            "train.steps_per_epoch=120",
            "train.batch_size=8",
            "train.max_failures=1",
            "planner.n_particles=16",
            "planner.diffusion_steps=5",
        ],
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out: dict[str, Any] = {}

    def train() -> None:
        try:
            out.update(api.train(cfg, tracking_uri=uri))
        except BaseException as err:  # surfaced by the assertion below
            out["error"] = err

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    train_dir = tmp_path / "store" / "train"
    deadline = time.monotonic() + 240
    # A checkpoint's directory appears before Ray has registered it; once the second one
    # appears, the first is registered and a restart must resume from it.
    while len(list(train_dir.glob("*/checkpoint_2*"))) < 2 and time.monotonic() < deadline:
        assert thread.is_alive(), out
        time.sleep(0.2)
    assert len(list(train_dir.glob("*/checkpoint_2*"))) >= 2, "no checkpoints in time"
    workers = list_actors(
        # This test's own cluster, even when another Ray runs on the machine.
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        detail=True,
    )
    assert len(workers) == 2
    os.kill(int(workers[1].pid), signal.SIGKILL)  # a worker process this test's Ray started

    thread.join(timeout=300)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    assert "error" not in out, out.get("error")
    assert read_meta(out["checkpoint"])["epoch"] == 4
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(out["run_id"]).info.status == "FINISHED"
    resumed = client.get_metric_history(out["run_id"], "train/resumed_from_epoch")
    assert len(resumed) == 1 and 1 <= resumed[0].value <= 3  # one restart, from a checkpoint
    steps = sorted(m.step for m in client.get_metric_history(out["run_id"], "train/epoch"))
    # Every epoch logged once: the epochs after the checkpoint are trained again, not logged again.
    assert steps == [1, 2, 3, 4]
    # The DDP rendezvous files, one per attempt (a rank died in the first), are all gone.
    assert _rendezvous_dirs() == rendezvous


def test_killed_generator_actor_is_restarted_and_the_dataset_is_identical(
    ray_local: None, tmp_path: Path
) -> None:
    def cfg(store: str) -> Any:
        return load_config(
            None,
            [
                f"runtime.storage={tmp_path / store}",
                "data.quality=random",
                "data.n_agents=50000",
                "data.episodes=8",
                "data.shards=8",
            ],
        )

    out: dict[str, Any] = {}

    def generate() -> None:
        try:
            out["dataset"] = generate_dataset(cfg("killed"), max_actors=2)
        except BaseException as err:  # surfaced by the assertion below
            out["error"] = err

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    gcs = ray.get_runtime_context().gcs_address  # this test's own cluster
    deadline = time.monotonic() + 240
    while not list((tmp_path / "killed").glob("datasets/*/shard-*.parquet")):
        assert thread.is_alive() and time.monotonic() < deadline, out
        time.sleep(0.1)
    (victim,) = list_actors(
        address=gcs,
        filters=[("class_name", "=", "GeneratorActor"), ("state", "=", "ALIVE")],
        detail=True,
    )[:1]
    os.kill(int(victim.pid), signal.SIGKILL)  # a worker process this test's Ray started
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in out, out
    (restarted,) = list_actors(
        address=gcs, filters=[("actor_id", "=", victim.actor_id)], detail=True
    )
    assert restarted.num_restarts == 1  # the kill took effect while generation ran

    uri, manifest, _ = out["dataset"]
    keys = pa.concat_tables(
        [
            pq.read_table(Path(uri) / s.file, columns=["episode", "t", "agent"])
            for s in manifest.shards
        ]
    ).to_pandas()
    assert len(keys) == manifest.rows == 8 * 50000 * 10 and not keys.duplicated().any()
    assert sorted(keys["episode"].unique()) == list(range(8))  # every shard exactly once
    verify_dataset(uri)
    _, uninterrupted, _ = generate_dataset(cfg("uninterrupted"), max_actors=2)
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in uninterrupted.shards]
