"""Commands against a real `mlflow server` (http:// tracking URI, proxied artifacts): a retried
metric batch is stored once, and `mfd run` logs its run, metrics and artifacts through it.

A sweep through the server that crashes mid-training (no trial fails, each epoch logged once)
and `mfd table` read back through it: tests/integration/test_cluster.py, on a 3-node cluster."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_sweep import TINY
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.platform import tracking

pytestmark = pytest.mark.integration


def test_a_retried_metric_batch_is_stored_once(mlflow_server: Any) -> None:
    """What makes MLflow's HTTP retries safe for our writes: the same batch (explicit timestamps)
    sent twice, as a retry after a lost response sends it, leaves one row per value in the
    server's SQL store; params and tags of equal value may be sent again."""
    from mlflow.entities import Metric, Param, RunTag

    uri = mlflow_server.uri
    client = tracking.client(uri)
    exp = tracking.ensure_experiment(uri, "retry-check")
    run_id = client.create_run(exp).info.run_id
    batch = [Metric("train/loss", 0.5, 1_700_000_000_000, s) for s in (1, 2)]
    for _ in range(2):
        client.log_batch(
            run_id, metrics=batch, params=[Param("a", "1")], tags=[RunTag("mfd.x", "y")]
        )
    hist = client.get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value, m.timestamp) for m in hist) == [
        (1, 0.5, 1_700_000_000_000),
        (2, 0.5, 1_700_000_000_000),
    ]
    # A value logged later at the same step is a new row: only an identical one is dropped.
    client.log_batch(run_id, metrics=[Metric("train/loss", 0.5, 1_700_000_000_001, 1)])
    assert len(client.get_metric_history(run_id, "train/loss")) == 3
    con = sqlite3.connect(f"file:{mlflow_server.db}?mode=ro", uri=True, timeout=10)
    try:
        (rows,) = con.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key = 'train/loss'", (run_id,)
        ).fetchone()
    finally:
        con.close()
    assert rows == 3


def _artifact_files(run: Any, server: Any) -> list[str]:
    """Files of the run under the server's artifacts destination (mlflow-artifacts:/<exp>/…)."""
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    folder = server.artifacts / run.info.artifact_uri.removeprefix("mlflow-artifacts:/")
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.timeout(600)
def test_run_through_the_server(ray_local: None, mlflow_server: Any, tmp_path: Path) -> None:
    uri = mlflow_server.uri
    # `mfd run`: its run, metrics and artifacts (checkpoint, config) all through the server.
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "via-server",
                **TINY,
                # A reference method: no Ray Train group to start (the sweep below has two).
                "method": {"name": "fp"},
                "runtime": {"storage": str(tmp_path / "s")},
            }
        )
    )
    r = CliRunner().invoke(app, ["run", "-c", str(cfg), "--tracking-uri", uri, "--json"])
    assert r.exit_code == 0, r.output[-3000:]
    out = json.loads(r.stdout)
    assert out["tracking_uri"] == uri
    run = MlflowClient(uri).get_run(out["run_id"])
    assert run.info.status == "FINISHED" and "return/n20" in run.data.metrics
    files = _artifact_files(run, mlflow_server)
    assert "config.yaml" in files and any(f.startswith("checkpoint/") for f in files), files
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "mlruns").exists()
