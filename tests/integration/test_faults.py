"""Faults during training: a killed DDP worker is replaced and training resumes from the last
checkpoint (`train.max_failures`), and the run still ends with every epoch trained once."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors

from mfdiffuser import api
from mfdiffuser.planner.checkpoint import read_meta
from mfdiffuser.platform.config import load_config

pytestmark = pytest.mark.integration


def test_killed_worker_resumes_from_checkpoint(ray_local: None, tmp_path: Path) -> None:
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
