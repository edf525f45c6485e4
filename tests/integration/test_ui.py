"""`mfd ui` as a user starts it: serves the store on loopback, stops without orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from processes import LOOPBACK, free_ports, listen_addresses, session_pids

from mfdiffuser.platform import tracking
from mfdiffuser.platform.config import load_config

pytestmark = pytest.mark.integration


def test_mfd_ui_serves_the_store_and_stops_clean(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, ["runtime.experiment=ui-check"])
    run_id = tracking.start_run(cfg, uri, run_name="ui-check")
    tracking.log_metrics(uri, run_id, {"exploitability": 0.25})
    tracking.end_run(uri, run_id)
    # An experiment made before the platform tagged them gets the tag when it is next used.
    MlflowClient(tracking_uri=uri).create_experiment("ui-old")
    tracking.ensure_experiment(uri, "ui-old")
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    mfd = subprocess.Popen(
        [sys.executable, "-m", "mfdiffuser.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its session holds the server and every worker it starts
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert mfd.poll() is None, mfd.communicate()[0]
            try:
                with urllib.request.urlopen(f"{base}/", timeout=5) as r:
                    status = r.status
                    break
            except OSError:
                assert time.monotonic() < deadline, "mfd ui did not answer within 90 s"
                time.sleep(0.5)
        assert status == 200
        listening = listen_addresses(port)
        assert listening and listening <= LOOPBACK, listening

        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 100}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            experiments = json.load(r)["experiments"]
        kind = "mlflow.experimentKind"
        kinds = {
            e["name"]: {t["key"]: t["value"] for t in e.get("tags", [])}.get(kind)
            for e in experiments
        }
        assert kinds["ui-check"] == kinds["ui-old"] == "custom_model_development"
        assert len(session_pids(mfd.pid)) >= 2  # mfd and the server it started
    finally:
        mfd.send_signal(signal.SIGTERM)
        out, _ = mfd.communicate(timeout=60)
    assert mfd.returncode == 0, out
    # the link opens MLflow 3's model-training view (a fresh browser defaults to GenAI traces)
    assert f"MLflow UI on {uri}: {base}/#/experiments?workflowType=machine_learning" in out
    deadline = time.monotonic() + 10
    while session_pids(mfd.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_pids(mfd.pid) == []
    assert list(cwd.iterdir()) == []  # nothing written where it was started
