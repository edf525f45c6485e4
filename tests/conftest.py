"""Shared fixtures: real local Ray and MLflow, living under pytest's temporary directories."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

# The integration tests' helpers (processes.py, s3.py) import as top-level modules, as pytest
# puts tests/integration on sys.path for the tests in it; the fixtures here need them too.
sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))

if TYPE_CHECKING:
    from s3 import S3Server

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
# Ray reads this at import: with it, a local Ray takes 127.0.0.1 as its node address and binds its
# servers to loopback only (Ray 2.60 ignores _node_ip_address="127.0.0.1" for that).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# As `mfd` sets it for a local Ray, and before Ray is imported: Ray reads the auth mode at import,
# and a CLI test run in-process before the session's Ray would otherwise set it afterwards (the
# new GCS then wants a token the driver does not send).
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray for the whole session (start-up costs seconds); shut down at the end."""
    import ray

    from mfdiffuser.platform.runtime import local_ray

    # Ray's socket paths must stay short: use a short temp dir of our own.
    temp_dir = tmp_path_factory.mktemp("ray")
    ray.init(
        **local_ray(num_cpus=2),  # as `mfd` starts one (dashboard: the State API)
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp_dir),
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def gen_docs() -> ModuleType:
    """scripts/gen_docs.py (not a package): the generated docs pages and the metrics-page check."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "gen_docs.py"
    spec = importlib.util.spec_from_file_location("gen_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 (one bucket, `s3_server.bucket`), for the whole session.

    Point a command at it with `s3_server.env` (the standard AWS variables); tests keep their
    objects under prefixes of their own."""
    from s3 import start_s3, stop_s3

    server = start_s3(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        stop_s3(server.process)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real `mlflow server` on 127.0.0.1 (SQLite store, proxied artifacts under a tmp dir),
    one per test module (it costs ~9 s to start); `.uri`, `.stop()`, `.restart()`."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server")).start()
    try:
        yield server
    finally:
        server.stop(crash=True)  # SIGTERM takes uvicorn ~25 s; the store is thrown away
