"""generate -> train (Ray Train, 2 workers, DDP over gloo) -> evaluate, on a real local Ray and a
real SQLite MLflow store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from mlflow.tracking import MlflowClient
from processes import LOOPBACK, process_listeners
from ray.util.state import list_actors
from typer.testing import CliRunner

from mfdiffuser import api
from mfdiffuser.cli import app
from mfdiffuser.data.manifest import read_manifest
from mfdiffuser.methods.checkpoint import read_meta
from mfdiffuser.platform.config import ExperimentConfig, load_config
from mfdiffuser.workers.datagen import generate_dataset

pytestmark = pytest.mark.integration


def _cfg(tmp: Path, *extra: str) -> ExperimentConfig:
    return load_config(
        None,
        [
            f"runtime.storage={tmp / 'store'}",
            "data.n_agents=50",
            "data.episodes=6",
            "data.shards=3",
            *extra,
        ],
    )


def test_generate_writes_shards_and_resumes_without_duplicates(
    ray_local: None, tmp_path: Path
) -> None:
    cfg = _cfg(tmp_path, "data.quality=random")
    uri, manifest, _ = generate_dataset(cfg)
    root = Path(uri)
    horizon = cfg.benchmark.horizon
    assert manifest.rows == 6 * 50 * horizon
    assert [s.episodes for s in manifest.shards] == [[0, 2], [2, 4], [4, 6]]
    for s in manifest.shards:
        data = (root / s.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s.sha256
        assert pq.read_metadata(root / s.file).num_rows == s.rows == 2 * 50 * horizon
    assert manifest.behaviour["policies"] == 1
    assert manifest.behaviour["exploitability"] > 0

    # Simulate an interrupted run: manifest and one shard gone, a stray temp file left behind.
    (root / "manifest.json").unlink()
    (root / manifest.shards[1].file).unlink()
    (root / ".shard-00001.parquet.tmp-dead").write_bytes(b"partial")
    uri2, again, _ = generate_dataset(cfg)
    assert uri2 == uri
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in manifest.shards]
    keys = pa.concat_tables(
        [pq.read_table(root / s.file, columns=["episode", "t", "agent"]) for s in again.shards]
    ).to_pandas()
    assert len(keys) == manifest.rows and not keys.duplicated().any()
    assert sorted(keys["episode"].unique()) == list(range(6))

    # A complete dataset is reused, not rewritten.
    mtime = (root / "manifest.json").stat().st_mtime_ns
    generate_dataset(cfg)
    assert (root / "manifest.json").stat().st_mtime_ns == mtime


@pytest.fixture(scope="module")
def trained(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("train")
    cfg = _cfg(
        tmp,
        "data.quality=expert",
        "data.episodes=8",
        "train.epochs=3",
        "train.steps_per_epoch=40",
        "train.batch_size=8",
        "train.lr=0.003",
        "planner.n_particles=16",
        "planner.max_particles=32",
        "planner.diffusion_steps=10",
        "planner.beta=1.0",  # value weighting on: advantages all-reduced across both ranks
    )
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # While it trains, sample the listening sockets of the DDP workers (rendezvous, gloo).
    samples: list[dict[int, set[tuple[str, int]]]] = []
    done = threading.Event()

    def sample() -> None:
        gcs = ray.get_runtime_context().gcs_address  # this test's own cluster
        while not done.wait(1.0):
            workers = list_actors(
                address=gcs,
                filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                detail=True,
            )
            samples.append({int(w.pid): process_listeners(int(w.pid)) for w in workers})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = api.train(cfg, tracking_uri=uri)
    finally:
        done.set()
        sampler.join(timeout=30)
    return {**out, "cfg": cfg, "uri": uri, "listeners": samples}


def test_ddp_rendezvous_listens_on_loopback_only(trained: dict[str, Any]) -> None:
    """Local Ray: torch's rendezvous and gloo bind 127.0.0.1, never every interface."""
    both = [s for s in trained["listeners"] if len(s) == 2]
    assert both, f"never saw the 2 DDP workers alive: {trained['listeners']}"
    seen = {addr for s in both for socks in s.values() for addr, _ in socks}
    assert seen, "the DDP workers held no listening sockets"
    assert seen <= LOOPBACK, f"DDP workers listen beyond loopback: {seen}"


def test_ddp_training_reduces_loss_and_logs_to_mlflow(trained: dict[str, Any]) -> None:
    client = MlflowClient(tracking_uri=trained["uri"])
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mfd.benchmark"] == "crowd_1d"
    assert run.data.params["data.n_agents"] == "50"
    history = client.get_metric_history(trained["run_id"], "train/loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == 3
    assert losses[-1] < 0.8 * losses[0], losses
    world = client.get_metric_history(trained["run_id"], "train/world_size")
    assert {m.value for m in world} == {2.0}  # both DDP ranks took part
    weight_max = [m.value for m in client.get_metric_history(trained["run_id"], "train/weight_max")]
    assert all(1.0 < w <= 20.0 for w in weight_max), weight_max  # exp(beta A) weights in use
    assert "behaviour/exploitability" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(trained["run_id"])}
    assert {"checkpoint", "dataset", "config.yaml"} <= arts

    meta = read_meta(trained["checkpoint"])
    assert meta["epoch"] == 3
    assert meta["config"]["data"]["n_agents"] == 50
    assert meta["code_version"].startswith("0.1.0")
    assert read_manifest(trained["dataset"]).dataset_id == meta["dataset_id"]


def test_evaluate_logs_returns_and_exploitability(trained: dict[str, Any]) -> None:
    out = api.evaluate(
        trained["checkpoint"], n_agents=[20, 60], episodes=1, tracking_uri=trained["uri"]
    )
    m = out["metrics"]
    assert out["run_id"] == trained["run_id"]  # evaluation lands in the training run
    assert set(m) >= {"return/n20", "return/n60", "exploitability", "return_mf"}
    assert np.isfinite(m["return/n20"]) and m["exploitability"] >= -1e-9
    run = MlflowClient(tracking_uri=trained["uri"]).get_run(trained["run_id"])
    assert run.data.metrics["return/n60"] == pytest.approx(m["return/n60"])
    assert run.data.metrics["exploitability"] == pytest.approx(m["exploitability"])


def test_every_metric_the_run_holds_is_in_the_metrics_page(
    trained: dict[str, Any], gen_docs: ModuleType
) -> None:
    """A real evaluation into the training run; every key the run then holds (training,
    behaviour, returns, the decomposition, plan quality, timings) is named in docs/metrics.md."""
    api.evaluate(trained["checkpoint"], n_agents=[20], episodes=1, tracking_uri=trained["uri"])
    keys = set(MlflowClient(tracking_uri=trained["uri"]).get_run(trained["run_id"]).data.metrics)
    assert {
        "train/world_size",
        "behaviour/exploitability",
        "return/table_n20",
        "subopt/distribution_shift",
        "subopt/mf_abs_dev_table/n20",
        "trajectory/mmd2",
        "dynamics/feasible_fraction",
        "eval/seconds",
    } <= keys
    assert gen_docs.undocumented_metrics(keys) == []


def _listener() -> tuple[socket.socket, list[object]]:
    """A TCP listener on loopback that records every connection made to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    hits: list[object] = []

    def accept() -> None:
        while sock.fileno() != -1:
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            hits.append(conn)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return sock, hits


def test_a_crafted_checkpoint_decides_nothing_about_where_evaluate_connects(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    """meta.json naming a tracking server and a Ray cluster: `mfd evaluate` (its own process,
    as a user runs it) contacts neither, and logs into the store of the user's working
    directory, in a new run, saying why."""
    crafted = tmp_path / "crafted"
    shutil.copytree(trained["checkpoint"], crafted)
    (mlflow_sock, mlflow_hits), (ray_sock, ray_hits) = _listener(), _listener()
    meta = json.loads((crafted / "meta.json").read_text())
    bait = f"http://127.0.0.1:{mlflow_sock.getsockname()[1]}"
    meta["tracking_uri"] = bait
    meta["config"]["runtime"]["tracking_uri"] = bait
    meta["config"]["runtime"]["address"] = f"127.0.0.1:{ray_sock.getsockname()[1]}"
    (crafted / "meta.json").write_text(json.dumps(meta))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mfdiffuser.cli", "evaluate", str(crafted), "-n", "20"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        mlflow_sock.close()
        ray_sock.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert mlflow_hits == [] and ray_hits == []
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert f"is not in {store}: logging into a new run" in proc.stderr
    [run] = MlflowClient(tracking_uri=store).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=store).search_experiments()]
    )
    assert run.info.status == "FINISHED" and "return/n20" in run.data.metrics


def test_a_failed_evaluation_leaves_the_training_run_finished(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(trained["checkpoint"], broken)
    weights = broken / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    result = CliRunner().invoke(
        app,
        ["evaluate", str(broken), "-n", "20", "--episodes", "1", "--tracking-uri", trained["uri"]],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: checkpoint {str(broken)!r}: weights.pt is unreadable (RuntimeError): truncated or "
        "corrupt"
    ]
    run = MlflowClient(tracking_uri=trained["uri"]).get_run(trained["run_id"])
    assert run.info.status == "FINISHED"  # the training run keeps its status
    assert run.data.tags["mfd.eval.status"] == "FAILED"
    assert run.data.tags["mfd.eval.error"]


def test_evaluate_refuses_a_corrupted_dataset(trained: dict[str, Any]) -> None:
    """The rollout actors re-read the training data: verified first, before any Ray work."""
    shard = Path(trained["dataset"]) / read_manifest(trained["dataset"]).shards[0].file
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])  # truncated
    try:
        res = CliRunner().invoke(
            app, ["evaluate", trained["checkpoint"], "--tracking-uri", trained["uri"]]
        )
    finally:
        shard.write_bytes(data)
    assert res.exit_code == 2, res.output
    assert res.output.strip() == (
        f"error: dataset {trained['dataset']}: {shard.name}: sha256 mismatch "
        f"(expected {hashlib.sha256(data).hexdigest()[:12]}…, "
        f"got {hashlib.sha256(data[:-100]).hexdigest()[:12]}…)"
    )


def test_a_killed_rollout_actor_is_restarted_and_the_training_run_stays_finished(
    trained: dict[str, Any],
) -> None:
    out: dict[str, Any] = {}

    def evaluate() -> None:
        try:
            out.update(
                api.evaluate(
                    trained["checkpoint"], n_agents=[400], episodes=3, tracking_uri=trained["uri"]
                )
            )
        except BaseException as err:  # surfaced by the assertion below
            out["error"] = err

    thread = threading.Thread(target=evaluate, daemon=True)
    thread.start()
    gcs = ray.get_runtime_context().gcs_address  # this test's own cluster
    victims: list[Any] = []
    while not victims and thread.is_alive():
        victims = list_actors(
            address=gcs,
            filters=[("class_name", "=", "RolloutActor"), ("state", "=", "ALIVE")],
            detail=True,
        )
        time.sleep(0.1)
    assert victims, f"the evaluation ended before a rollout actor was seen: {out}"
    os.kill(int(victims[0].pid), signal.SIGKILL)  # a worker process this test's Ray started
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in out, out
    (restarted,) = list_actors(
        address=gcs, filters=[("actor_id", "=", victims[0].actor_id)], detail=True
    )
    assert restarted.num_restarts == 1  # the kill took effect while the evaluation ran
    assert np.isfinite(out["metrics"]["return/n400"])
    run = MlflowClient(tracking_uri=trained["uri"]).get_run(trained["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mfd.eval.status"] == "FINISHED"
