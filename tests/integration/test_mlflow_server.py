"""Every command against a real `mlflow server` (http:// tracking URI, proxied artifacts), and a
sweep that survives the server crashing mid-training: no trial fails, each epoch logged once."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
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


def _metric_rows(db: Path, key: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(con.execute("SELECT COUNT(*) FROM metrics WHERE key = ?", (key,)).fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        con.close()


@pytest.mark.timeout(600)
def test_run_sweep_and_table_through_the_server_which_crashes_mid_sweep(
    ray_local: None, mlflow_server: Any, tmp_path: Path
) -> None:
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

    # `mfd sweep`, 2 trials, one at a time; the server is SIGKILLed once the first epoch of
    # training is logged, stays down a few seconds and comes back on the same port.
    epochs = 3
    doc = {
        "name": "outage",
        **TINY,
        "train": {**TINY["train"], "epochs": epochs, "steps_per_epoch": 20},
        "runtime": {"storage": str(tmp_path / "store")},
        "sweep": {"grid": {"seed": [0, 1]}, "max_concurrent_trials": 1},
    }
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(doc))
    outage: dict[str, float] = {}

    before = _metric_rows(mlflow_server.db, "train/loss")  # the run's, above

    def crash_once() -> None:
        deadline = time.monotonic() + 400
        while (
            time.monotonic() < deadline and _metric_rows(mlflow_server.db, "train/loss") == before
        ):
            time.sleep(0.2)
        outage["epochs_logged"] = _metric_rows(mlflow_server.db, "train/loss") - before
        outage["down"], outage["down_ms"] = time.monotonic(), time.time() * 1000
        mlflow_server.restart(crash=True, down_seconds=3)
        outage["up"], outage["up_ms"] = time.monotonic(), time.time() * 1000

    watcher = threading.Thread(target=crash_once, daemon=True)
    watcher.start()
    r = CliRunner().invoke(app, ["sweep", "-c", str(sweep_file), "--tracking-uri", uri, "--json"])
    watcher.join(timeout=120)
    assert "up" in outage, "the server was not restarted"
    assert r.exit_code == 0, r.output[-3000:]
    result = json.loads(r.stdout)
    assert (result["trials_finished"], result["trials_failed"]) == (2, 0), result
    assert outage["epochs_logged"] >= 1 and outage["up"] - outage["down"] >= 3, outage

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("crowd_1d")  # the benchmark's experiment
    parent = result["parent_run_id"]
    trials = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert client.get_run(parent).info.status == "FINISHED"
    assert sorted(x.data.tags["mfd.axis.seed"] for x in trials) == ["0", "1"]
    assert all(x.info.status == "FINISHED" for x in trials), [x.info.status for x in trials]
    during = []  # epochs logged (their metric's timestamp) while the server was down
    for trial in trials:
        hist = client.get_metric_history(trial.info.run_id, "train/loss")
        steps = sorted(m.step for m in hist)
        assert steps == list(range(1, epochs + 1)), steps  # each epoch exactly once
        during += [m.step for m in hist if outage["down_ms"] <= m.timestamp <= outage["up_ms"]]
        assert len(client.get_metric_history(trial.info.run_id, "return/n20")) == 1
        assert any(f.startswith("checkpoint/") for f in _artifact_files(trial, mlflow_server))

    # Training went on after the crash: the first trial's later epochs were logged after it.
    assert max(m.timestamp for t in trials for m in client.get_metric_history(
        t.info.run_id, "train/loss")) > outage["down_ms"]  # fmt: skip
    print(f"outage {outage['up'] - outage['down']:.1f} s; epochs logged during it: {during}")
    r = CliRunner().invoke(
        app, ["table", "--sweep", result["sweep_id"], "--tracking-uri", uri, "--json"]
    )
    assert r.exit_code == 0, r.output[-3000:]
    table = json.loads(r.stdout)
    assert table["parent_run_id"] == parent and not table["missing"], table
    assert sorted(s for x in table["settings"] for m in x["methods"] for s in m["seeds"]) == [0, 1]
