"""A real `mlflow server` on 127.0.0.1 for the tests: SQLite backend store and proxied artifacts
under a temporary directory; stopped (and restarted on the same port, same stores) by PID.

`mlflow server` runs uvicorn in child processes; it is started as the leader of a session of its
own, so `processes.stop_session` ends exactly the processes it started, and nothing else.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from processes import free_ports, session_pids, signal_session, stop_session

MLFLOW = Path(sys.executable).parent / "mlflow"
START_SECONDS = 120.0  # ~9 s on an idle machine; far more when 2 cores are shared


def _alive(sid: int) -> bool:
    """Whether a process of session `sid` still runs (zombies, already dead, do not count)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        running = []
        for pid in session_pids(sid):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2] != "Z":
                running.append(pid)
        if not running:
            return False
        time.sleep(0.1)
    return True


class MlflowServer:
    """`start()`, `stop()`, `restart()`; `uri` is its http tracking URI, `db` its SQLite file."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "mlflow.db"
        self.artifacts = self.root / "artifacts"
        self.port = port or free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(MLFLOW),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> MlflowServer:
        assert self.proc is None, "already started"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            if self.healthy():
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy in {START_SECONDS:g} s")

    def stop(self, crash: bool = False) -> None:
        """SIGTERM the server's session (its uvicorn workers too), SIGKILL what is left after
        15 s; `crash`: SIGKILL at once, as a machine or OOM kill would."""
        if self.proc is None:
            return
        sid = self.proc.pid
        signal_session(sid, signal.SIGKILL if crash else signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)  # reaped here: a zombie leader would count as alive
        except subprocess.TimeoutExpired:
            pass
        if self.proc.poll() is None or _alive(sid):
            stop_session(sid)  # what did not go: SIGTERM again, SIGKILL after 15 s
            self.proc.wait(timeout=10)
        self.proc = None
        assert not self.healthy(), f"port {self.port} still answers after the stop"

    def restart(self, crash: bool = False, down_seconds: float = 0.0) -> None:
        """Stop, stay down `down_seconds`, start again on the same port with the same stores."""
        self.stop(crash)
        time.sleep(down_seconds)
        self.start()

    def metric_rows(self, key: str) -> int:
        """Rows of metric `key` in the server's store, read from its SQLite file (also while
        the server is down)."""
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            query = "SELECT COUNT(*) FROM metrics WHERE key = ?"
            return int(con.execute(query, (key,)).fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0
        finally:
            con.close()

    def pids(self) -> list[int]:
        return session_pids(self.proc.pid) if self.proc is not None else []
