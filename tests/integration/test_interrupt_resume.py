"""A user's `mfd run` on an existing dataset, interrupted with Ctrl-C and continued with --resume.

The dataset is given by a relative path (resolved before anything starts) and the run's records
come from its manifest; SIGINT during training leaves the run KILLED; `--resume` continues the
same MLflow run from the last checkpoint to FINISHED, with each epoch's metrics logged once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mfdiffuser.cli import app

pytestmark = pytest.mark.integration

TINY = {
    "name": "tiny",
    "planner": {"diffusion_steps": 4, "n_particles": 8, "max_particles": 8, "window": 2},
    # Four epochs, each long enough (a few seconds, also on an idle machine) that Ray Train has
    # registered the first checkpoint when the second is written, and SIGINT lands in the third.
    "train": {"epochs": 4, "steps_per_epoch": 300, "batch_size": 4, "num_workers": 2},
    "eval": {"n_agents": [20], "episodes": 1, "plan_windows": 2},
}


def _mfd(*args: str, cwd: Path, log: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`mfd ARGS` as its own process (its own local Ray); output to files, not pipes, so that
    Ray's logs can never fill a pipe and stall it."""
    out, err = cwd / f"{log}.out", cwd / f"{log}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mfdiffuser.cli", *args], cwd=cwd, stdout=o, stderr=e
        )
    return proc, out, err


def _runs(db: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT run_uuid, status FROM runs").fetchall()
    finally:
        con.close()


def test_interrupted_run_resumes_into_the_same_run(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    made = CliRunner().invoke(
        app,
        [
            "generate",
            "crowd_1d",
            "--quality",
            "medium",
            "--episodes",
            "4",
            *("-s", "n_agents=20", "-s", "data.shards=2", "--storage", str(store), "--json"),
        ],
    )
    assert made.exit_code == 0, made.output
    dataset = Path(json.loads(made.stdout.strip().splitlines()[-1])["dataset"])
    # Given by a relative or an absolute path, the dataset resolves to the same config, whose
    # data section is the manifest's; a contradicting command-line setting is refused.
    monkeypatch.chdir(tmp_path)
    shown = [
        CliRunner().invoke(app, ["config", "-s", f"data.path={where}", "--json"])
        for where in (os.path.relpath(dataset, tmp_path), dataset)
    ]
    assert [r.exit_code for r in shown] == [0, 0], [r.output for r in shown]
    rel, absolute = (json.loads(r.stdout) for r in shown)
    assert rel == absolute and rel["data"]["path"] == str(dataset)
    assert (rel["data"]["quality"], rel["data"]["n_agents"], rel["data"]["episodes"]) == (
        "medium",
        20,
        4,
    )
    refused = CliRunner().invoke(
        app, ["train", "--dataset", str(dataset), "-s", "quality=expert", "--storage", "store"]
    )
    assert refused.exit_code == 2
    assert "data.quality = 'expert' but the dataset has 'medium'" in refused.output
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run was made
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(TINY))
    db = tmp_path / "mlflow.db"
    args = [
        "run",
        *("-c", "tiny.yaml"),
        # relative to the user's working directory: the workers run elsewhere
        *("-s", f"data.path={os.path.relpath(dataset, tmp_path)}"),
        *("--storage", "store", "--tracking-uri", f"sqlite:///{db}"),
    ]

    first, _, first_err = _mfd(*args, cwd=tmp_path, log="first")
    deadline = time.monotonic() + 240
    # Two checkpoints written: the first is registered with Ray Train, the third epoch runs.
    while len(list((store / "train").glob("*/checkpoint_2*"))) < 2:
        assert first.poll() is None, first_err.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoints in time"
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    first.wait(timeout=120)
    err = first_err.read_text()
    assert first.returncode == 130, err[-3000:]
    assert "interrupted" in err.strip().splitlines()[-1]
    [(run_id, status)] = _runs(db)
    assert status == "KILLED"

    second, second_out, second_err = _mfd(*args, "--resume", "--json", cwd=tmp_path, log="second")
    second.wait(timeout=300)
    err = second_err.read_text()
    assert second.returncode == 0, err[-3000:]
    assert f"resuming run {run_id} (KILLED)" in err
    result = json.loads(second_out.read_text().strip().splitlines()[-1])
    assert result["run_id"] == run_id and result["resumed"] is True
    assert _runs(db) == [(run_id, "FINISHED")]

    con = sqlite3.connect(db)
    try:
        steps = [
            s
            for (s,) in con.execute(
                "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'train/loss' ORDER BY step",
                (run_id,),
            )
        ]
        resumed = con.execute(
            "SELECT value FROM metrics WHERE run_uuid = ? AND key = 'train/resumed_from_epoch'",
            (run_id,),
        ).fetchall()
        tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
        params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
        behaviour = con.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key = 'behaviour/return'",
            (run_id,),
        ).fetchone()[0]
    finally:
        con.close()
    assert steps == [1, 2, 3, 4]  # every epoch once, although epoch 3 ran twice
    assert len(resumed) == 1 and 1 <= resumed[0][0] <= 3  # from a checkpoint, not from 0
    assert behaviour == 1
    # Provenance from the manifest, not from the config's defaults (expert, N=100, 40 episodes).
    assert tags["mfd.quality"] == "medium" and tags["mfd.n_agents"] == "20"
    assert params["data.episodes"] == "4" and params["data.shards"] == "2"
    assert params["data.path"] == str(dataset)
    assert tags["mfd.dataset_id"] == dataset.name
