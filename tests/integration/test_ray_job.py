"""The README's Ray-job commands, run as they stand, against a loopback head with token auth on.

The README's `mfd:ray-job` block (activate the venv, token auth, `ray start --head`, `ray job
submit … -- mfd run …`) runs verbatim in `bash`, with its three placeholders (MFD_JOBS,
MFD_SHARED, MFD_TRACKING) set to a free loopback port and temp paths, HOME in a temp dir (the
token), and the venv's bin directory off PATH (so the job finds `mfd` only through the README's
activation). The cluster is ours alone: a shell `ray` function appends free ports and a temp dir
to `ray start`, and the cluster is stopped by signalling exactly the processes of the bash
session (never `ray stop`, which kills every Ray process of the user). The sweep block is the
same submit with `mfd sweep`: it is parse-checked here, its run is what test_sweep.py covers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from processes import LOOPBACK, free_ports, listen_addresses, session_pids, stop_session
from typer.main import get_command

from mfdiffuser.cli import app

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def readme_block(marker: str) -> str:
    """The fenced block right after `<!-- marker -->` in README.md."""
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```bash\n(.*?)```", text, re.S)
    assert found, f"README.md has no block marked {marker}"
    return found.group(1)


def _status(url: str) -> int | str:
    """The HTTP status of a GET without credentials (or why there was none)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        return str(err)


# 2 DDP workers and the rollout actors on a 2-CPU head, a few seconds of work.
TINY_RUN = {
    "name": "job",
    "data": {"n_agents": 20, "episodes": 2, "shards": 2},
    "train": {"epochs": 1, "steps_per_epoch": 5, "batch_size": 4, "num_workers": 2},
    "planner": {"diffusion_steps": 4, "n_particles": 8, "max_particles": 8},
    "eval": {"n_agents": [20], "episodes": 1, "plan_windows": 2},
}


def test_readme_ray_job_commands(tmp_path: Path) -> None:
    """`mfd run` as the README submits it: on PATH in the job, into the store the user named."""
    # The directory `--working-dir .` uploads, laid out like the repository root: its
    # .gitignore, the venv (Ray 2.60 leaves `.venv` out of the upload), and the configs the
    # commands name (the quickstart shrunk to a tiny run; JSON is YAML).
    checkout = tmp_path / "checkout"
    (checkout / "configs").mkdir(parents=True)
    (checkout / ".gitignore").write_text((REPO / ".gitignore").read_text())
    (checkout / ".venv").symlink_to(BIN.parent)
    (checkout / "configs" / "quickstart.yaml").write_text(json.dumps(TINY_RUN))
    shared = tmp_path / "shared"
    shared.mkdir()
    db = shared / "mlflow.db"
    home = tmp_path / "home"
    home.mkdir()

    gcs, dash, client, agent, dash_metrics, autoscaler_metrics = free_ports(6)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "RAY_AUTH_MODE")
    }
    venv_bins = {str(BIN), str(BIN.resolve())}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p not in venv_bins)
    env.update(
        HOME=str(home),
        MFD_JOBS=f"http://127.0.0.1:{dash}",
        MFD_SHARED=str(shared),
        MFD_TRACKING=f"sqlite:///{db}",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        # Fixed by default (44227, 44217): would clash with another cluster on this machine.
        DASHBOARD_METRIC_PORT=str(dash_metrics),
        AUTOSCALER_METRIC_PORT=str(autoscaler_metrics),
    )
    # Ray's socket paths must stay under ~107 characters: a short temp dir of our own.
    with tempfile.TemporaryDirectory(prefix="rj", dir="/tmp") as ray_tmp:
        own_cluster = (
            f"--port={gcs} --dashboard-port={dash} --ray-client-server-port={client} "
            f"--dashboard-agent-listen-port={agent} --num-cpus=2 --temp-dir={ray_tmp}"
        )
        script = (
            "set -eo pipefail\n"
            f'ray() {{ if [ "$1" = start ]; then command ray "$@" {own_cluster}; '
            'else command ray "$@"; fi; }\n' + readme_block("mfd:ray-job")
        )
        bash = subprocess.Popen(
            ["bash", "-c", script],
            cwd=checkout,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = bash.communicate(timeout=420)
            # While the head is still up: loopback only, and no job API without the token.
            listening = listen_addresses(gcs)
            anonymous = _status(f"{env['MFD_JOBS']}/api/jobs/")
        finally:
            if bash.poll() is None:
                bash.kill()
                bash.wait()
            stop_session(bash.pid)
        assert not session_pids(bash.pid), "processes of the head's session are left"
    assert bash.returncode == 0, out[-6000:]
    assert (home / ".ray" / "auth_token").is_file()  # the README's token, used by every client
    assert anonymous == 401

    assert listening, f"nothing listened on the GCS port {gcs}"
    assert listening <= LOOPBACK, f"the GCS listened beyond loopback: {listening}"

    con = sqlite3.connect(db)
    try:
        runs = con.execute("SELECT run_uuid, status FROM runs").fetchall()
        assert [status for _, status in runs] == ["FINISHED"], runs
        rows = con.execute("SELECT key, value FROM metrics WHERE run_uuid = ?", (runs[0][0],))
        metrics = dict(rows.fetchall())
    finally:
        con.close()
    assert {"train/loss", "return/n20", "exploitability"} <= set(metrics)
    assert metrics["exploitability"] >= 0.0
    # Datasets and checkpoints in the shared directory, not in Ray's temporary copy.
    assert list((shared / "datasets").iterdir()) and list((shared / "train").iterdir())


def test_readme_sweep_job_parses() -> None:
    """The sweep block is the run block's submit with `mfd sweep`, and `mfd` accepts it."""
    run_block = readme_block("mfd:ray-job")
    sweep_block = readme_block("mfd:ray-job-sweep")
    submit = run_block[run_block.index("ray job submit") :]
    prefix = submit[: submit.index("mfd run")]
    assert sweep_block.startswith(prefix)
    argv = shlex.split(sweep_block.replace("\\\n", " "))  # placeholders stay "$MFD_…"
    args = argv[argv.index("--") + 2 :]
    assert args[0] == "sweep"
    cli = get_command(app)
    ctx = cli.make_context("mfd", list(args))
    sweep = cli.get_command(ctx, "sweep")
    params = sweep.make_context("sweep", args[1:], parent=ctx).params
    assert (REPO / params["config"]).is_file()
    assert (params["storage"], params["tracking_uri"]) == ("$MFD_SHARED", "$MFD_TRACKING")
