"""`mfd ui`: the MLflow UI on a store, on 127.0.0.1 only, stopped without orphans.

`mlflow server` starts uvicorn workers (and, unless told otherwise, a job runner); they run in a
process group of their own that is terminated as a whole, then killed if anything is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
from pathlib import Path

from mfdiffuser.platform.config import ConfigError
from mfdiffuser.platform.tracking import artifact_root, check_tracking_uri, resolve_tracking_uri

# The venv's own: its bin directory is often not on PATH (`.venv/bin/mfd ui`).
MLFLOW = Path(sys.executable).parent / "mlflow"
STOP_SECONDS = 10.0


def store_uri(explicit: str | None) -> str:
    """The store the other commands use (--tracking-uri, MLFLOW_TRACKING_URI, ./mlflow.db)."""
    uri = resolve_tracking_uri(explicit)
    if uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"--tracking-uri = {uri}: already an MLflow server, open it in a browser; "
            "allowed: a store such as sqlite:///path/mlflow.db"
        )
    check_tracking_uri(uri)
    return uri


def server_command(uri: str, port: int) -> list[str]:
    cmd = [str(MLFLOW), "server", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1"]
    root = artifact_root(uri)
    if root:  # artifacts of new experiments beside the store, as the platform puts them
        cmd += ["--artifacts-destination", root]
    return cmd


def serve(uri: str, port: int) -> int:
    """Run the UI until SIGINT or SIGTERM (or until it exits); returns its exit status."""
    # Without the job runner the server is 2 processes and starts in seconds.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def stop(signum: int, frame: types.FrameType | None) -> None:
        raise KeyboardInterrupt

    # Installed before the server starts, so that no signal can leave it running without us.
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        server = subprocess.Popen(server_command(uri, port), env=env, process_group=0)
        return server.wait()
    except KeyboardInterrupt:
        for s in previous:  # a second Ctrl-C must not cut the stop short (it is bounded)
            signal.signal(s, signal.SIG_IGN)
        return _stop_group(server) if server is not None else 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_group(server: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the whole group, wait for its leader, then SIGKILL whatever is left of it."""
    _signal_group(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(server.pid, signal.SIGKILL)
    server.wait()
    return 0


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the whole group is gone
        pass
