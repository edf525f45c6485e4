"""Tune sweeps on a real local Ray with a real MLflow store: nested runs, a failing trial that
does not stop the sweep, and a killed driver resumed with exactly one finished run per trial."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.integration

TINY = {
    "benchmark": {"name": "crowd_1d", "params": {"size": 6, "horizon": 4}},
    "data": {"quality": "expert", "n_agents": 20, "episodes": 4, "shards": 2},
    "method": {
        "params": {  # each method takes those it has
            "window": 2,
            "n_particles": 8,
            "max_particles": 8,
            "diffusion_steps": 4,
            "hidden": 16,
            "n_blocks": 1,
            "draws": 1,
        }
    },
    "train": {
        "epochs": 1,
        "steps_per_epoch": 10,
        "batch_size": 4,
        "num_workers": 1,
        "max_failures": 0,
    },
    "eval": {"n_agents": [20], "episodes": 2, "max_actors": 1, "plan_windows": 2},
}


def _sweep_file(
    tmp_path: Path, name: str, grid: dict[str, list[Any]], base: dict | None = None, **section: Any
) -> Path:
    doc = {
        "name": name,
        **TINY,
        **(base or {}),
        "runtime": {
            "storage": str(tmp_path / "store"),
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        },
        "sweep": {"grid": grid, **section},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _runs(uri: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(exps, max_results=1000)) if exps else []


def test_every_method_in_one_sweep_then_the_table(ray_local: None, tmp_path: Path) -> None:
    """Every registered method end to end through `mfd sweep` (one trial each, one shared
    dataset), one of them diverging (train.lr = 1000 for that method only) without stopping the
    sweep; then `mfd table` over the sweep."""
    from typer.testing import CliRunner

    from mfdiffuser.cli import app
    from mfdiffuser.methods.registry import METHODS

    methods = sorted(METHODS)
    path = _sweep_file(
        tmp_path,
        "methods",
        {"method": methods, "seed": [0]},
        base={"method": {"params": {**TINY["method"]["params"], "iterations": 20}}},
        methods={"mf_diffuser_unweighted": {"train.lr": 1000.0}},
    )
    r = CliRunner().invoke(app, ["sweep", "-c", str(path), "--json"])
    assert r.exit_code == 1, (r.stdout[-2000:], r.stderr[-3000:])  # one trial failed
    out = json.loads(r.stdout)
    assert out["trials"] == len(methods) and out["trials_failed"] == 1
    assert "diverged" in out["errors"][0]
    assert len(out["datasets"]) == 1  # every method read the same, once-generated dataset
    assert len(list((tmp_path / "store" / "datasets").iterdir())) == 1

    runs = _runs(out["tracking_uri"])
    parent = [r for r in runs if r.data.tags.get("mfd.role") == "sweep"]
    trials = {r.data.tags["mfd.method"]: r for r in runs if r.data.tags.get("mfd.role") == "trial"}
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.metrics["sweep/trials_failed"] == 1.0
    assert sorted(trials) == methods
    assert {r.data.tags["mlflow.parentRunId"] for r in trials.values()} == {parent[0].info.run_id}
    bad = trials["mf_diffuser_unweighted"]
    assert bad.info.status == "FAILED"
    assert "diverged" in bad.data.tags["mfd.error"] + bad.data.tags["mfd.traceback"]
    for name, run in trials.items():
        if name == "mf_diffuser_unweighted":
            continue
        assert run.info.status == "FINISHED", name
        assert run.data.params["method.name"] == name
        assert run.info.run_name == f"crowd_1d-expert-N20-{name}-seed0"
        m = run.data.metrics
        for key in ("return/n20", "exploitability", "subopt/total/n20"):
            assert np.isfinite(m[key]), (name, key)
        # The identity holds by construction; it checks the pieces were logged consistently.
        terms = sum(
            m[f"subopt/{k}"]
            for k in (
                "regularisation_gap",
                "distribution_shift",
                "generative_error",
                "mf_error/n20",
            )
        )
        assert abs(terms - m["subopt/total/n20"]) < 1e-9, name
        if METHODS[name].family == "mf_diffuser":  # generative: the plans are scored too
            assert "trajectory/mmd2" in m and "dynamics/log_likelihood" in m, name
    assert trials["mf_diffuser"].data.params["train.lr"] != "1000.0"

    r = CliRunner().invoke(
        app, ["table", "--sweep", parent[0].info.run_id, "--tracking-uri", out["tracking_uri"]]
    )
    assert r.exit_code == 0, r.stderr
    text = r.stdout
    for name in methods:
        assert name in text, name
    assert "mf_diffuser_unweighted" in text.split("missing")[-1]  # the failed trial


def test_a_train_group_that_can_never_start_fails_before_launch(
    ray_local: None, tmp_path: Path
) -> None:
    from mfdiffuser.platform.config import ConfigError
    from mfdiffuser.tuning.sweep import load_sweep, run_sweep

    # 2 workers x 1 CPU + the trial's 0.01 CPU > the 2 CPUs of the test cluster: would hang.
    sweep = load_sweep(_sweep_file(tmp_path, "big", {"seed": [0]}), ["train.num_workers=2"])
    with pytest.raises(ConfigError, match=r"train.cpus_per_worker <= 0.99"):
        run_sweep(sweep)
    assert not (tmp_path / "mlflow.db").exists() or not _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _mfd(*args: str, cwd: Path) -> subprocess.Popen[str]:
    # MFD_QUIET out: the resume test reads the progress lines.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MFD_QUIET")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return subprocess.Popen(
        [sys.executable, "-m", "mfdiffuser.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: we kill exactly what we started
    )


def _finished_trial_ids(db: Path) -> list[str]:
    """Trial ids of FINISHED trial runs, read with plain sqlite3 (read-only): an MLflow client
    here would race the driver creating a fresh store's schema (see `tracking.client`)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute(
            "SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'mfd.trial_id' AND r.status = 'FINISHED'"
        ).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        con.close()
    return [v for (v,) in rows]


def test_killed_sweep_resumes_with_exactly_one_finished_run_per_trial(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, "seeds", {"seed": [0, 1]}, max_concurrent_trials=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _mfd("sweep", "--config", str(path), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        done: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(2)
            done = _finished_trial_ids(tmp_path / "mlflow.db")
            if done:
                break
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        assert done, "no trial finished in time"
    finally:
        # SIGKILL the driver's whole process group (the driver and the Ray it started).
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    finished_before = set(done)
    resumed = _mfd("sweep", "--config", str(path), "--resume", "--json", cwd=tmp_path)
    try:
        out, _ = resumed.communicate(timeout=420)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
    assert resumed.returncode == 0, out[-3000:]
    # Progress of the resumed run counts the trials finished before it, and a training line
    # (a Train worker's, forwarded by Ray) comes once.
    assert "progress: sweep: 2/2 trials finished" in out, out[-3000:]
    train = [x for x in out.splitlines() if "progress: train " in x]
    assert train and len(train) == len(set(train)), train

    runs = _runs(uri)
    trials = [r for r in runs if r.data.tags.get("mfd.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("mfd.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["mfd.axis.seed"] for r in trials) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in trials)
    # The runs finished before the kill were not run again: their metrics were not re-logged.
    for r in trials:
        if r.data.tags["mfd.trial_id"] in finished_before:
            from mlflow.tracking import MlflowClient

            hist = MlflowClient(tracking_uri=uri).get_metric_history(r.info.run_id, "return/n20")
            assert len(hist) == 1
