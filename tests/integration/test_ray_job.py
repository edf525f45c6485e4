"""`mfd sweep` submitted with `ray job submit` to a head node this test starts on loopback.

The cluster is ours alone: its own temp dir and free ports, started with `ray start --head --block`
as a subprocess in a new session, and stopped by signalling exactly the processes of that session
(never `ray stop`, which kills every Ray process of the user).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from listening import LOOPBACK, listen_addresses

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_pids(sid: int) -> list[int]:
    """PIDs of the processes in session `sid` (the one our `ray start` leads).

    Ray's workers get process groups of their own, and are re-parented to init once the raylet
    is gone, but they stay in the session: this finds all of them and nothing else.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def _signal_session(sid: int, sig: signal.Signals) -> None:
    for pid in _session_pids(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop_cluster(head: subprocess.Popen[bytes]) -> None:
    sid = head.pid
    try:
        os.killpg(sid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _session_pids(sid):
        time.sleep(0.5)
    # `ray start --block` drains for up to 30 s on SIGTERM, and its workers live in process
    # groups of their own: kill what is left of the session.
    _signal_session(sid, signal.SIGKILL)
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _session_pids(sid):
        time.sleep(0.2)


@pytest.fixture
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A head node on loopback; yields the job server's address and the clients' environment."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    gcs_port, dash_port, client_port, agent_port, dash_metrics, autoscaler_metrics = _free_ports(6)
    env.update(
        RAY_AUTH_MODE="disabled",  # loopback only; Ray 2.60 turns token auth on by default
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        # `ray start` replaces --node-ip-address=127.0.0.1 by the machine's address, and the GCS
        # and raylet then listen on all interfaces. With multi-node clusters disabled the node
        # address stays 127.0.0.1 and every server binds to loopback only.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        # Fixed by default (44227, 44217): would clash with another cluster on this machine.
        DASHBOARD_METRIC_PORT=str(dash_metrics),
        AUTOSCALER_METRIC_PORT=str(autoscaler_metrics),
    )
    # Ray's socket paths must stay under ~107 characters: a short temp dir of our own.
    with tempfile.TemporaryDirectory(prefix="rj", dir="/tmp") as temp_dir:
        log = open(Path(temp_dir) / "head.log", "wb")  # closed in the finally below
        head = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}",
                # Fixed by default (10001, 52365): would clash with another test cluster.
                f"--ray-client-server-port={client_port}",
                f"--dashboard-agent-listen-port={agent_port}",
                "--num-cpus=2",
                f"--temp-dir={temp_dir}/r",
                "--include-dashboard=true",
            ],
            env=env,
            cwd=temp_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            address = f"http://127.0.0.1:{dash_port}"
            deadline = time.monotonic() + 180
            while True:
                if head.poll() is not None:
                    pytest.fail(
                        f"ray start exited with {head.returncode}:\n"
                        + (Path(temp_dir) / "head.log").read_text(errors="replace")[-4000:]
                    )
                try:
                    with urllib.request.urlopen(f"{address}/api/version", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("the Ray job server did not come up within 180 s")
                time.sleep(1)
            listening = listen_addresses(gcs_port)
            assert listening, f"nothing listens on the GCS port {gcs_port}"
            assert listening <= LOOPBACK, f"the GCS listens beyond loopback: {listening}"
            yield address, env
        finally:
            _stop_cluster(head)
            log.close()


def _json_result(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "parent_run_id" in obj:
            return obj
    raise AssertionError(f"no JSON sweep result in the job output:\n{stdout[-4000:]}")


def test_mfd_sweep_as_ray_job(ray_head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """A one-trial sweep as a Ray job: Tune, the Train run inside the trial, rollout actors."""
    address, env = ray_head
    workdir = tmp_path / "job"  # uploaded to the cluster: keep it empty
    workdir.mkdir()
    db = tmp_path / "mlflow.db"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        json.dumps(  # JSON is YAML
            {
                "name": "job",
                "data": {"n_agents": 20, "episodes": 2, "shards": 2},
                # 2 DDP workers and the trial's own 0.01 CPU on a 2-CPU head
                "train": {
                    "epochs": 1,
                    "steps_per_epoch": 5,
                    "batch_size": 4,
                    "num_workers": 2,
                    "cpus_per_worker": 0.99,
                },
                "planner": {"diffusion_steps": 4, "n_particles": 8, "max_particles": 8},
                "eval": {"episodes": 1, "plan_windows": 2},
                "sweep": {"grid": {"seed": [0]}},
            }
        )
    )
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(workdir),
        "--",
        # The entrypoint runs on the head with its environment; this interpreter has the package.
        sys.executable,
        "-m",
        "mfdiffuser.cli",
        "sweep",
        *("--config", str(sweep)),
        *("--storage", str(tmp_path / "store")),
        *("--tracking-uri", f"sqlite:///{db}"),
        "--json",
    ]
    proc = subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400, check=False
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"

    result = _json_result(proc.stdout)
    assert result["tracking_uri"] == f"sqlite:///{db}"
    assert result["trials_finished"] == 1.0 and result["trials_failed"] == 0.0
    assert result["tune_path"].startswith(str(tmp_path / "store"))

    con = sqlite3.connect(db)
    try:
        runs = dict(con.execute("SELECT run_uuid, status FROM runs").fetchall())
        parent = result["parent_run_id"]
        children = [
            r
            for (r,) in con.execute(
                "SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = ?",
                (parent,),
            )
        ]
        assert runs == {parent: "FINISHED", children[0]: "FINISHED"}
        rows = con.execute("SELECT key FROM metrics WHERE run_uuid = ?", (children[0],))
        keys = {k for (k,) in rows}
    finally:
        con.close()
    assert {"train/loss", "return/n20", "exploitability", "subopt/generative_error"} <= keys
