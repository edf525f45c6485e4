"""Inside a Ray job (`ray job submit … -- mfd …`), where the results may go.

The job's entrypoint runs in Ray's temporary copy of `--working-dir`
(`…/runtime_resources/working_dir_files/_ray_pkg_…`), which Ray deletes: a default or relative
MLflow store or storage path would be written there and lost with it, so both are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from mfdiffuser.platform.config import ConfigError, ExperimentConfig

# Ray's job supervisor sets it for the entrypoint only, not for the tasks and actors it starts
# (ray/dashboard/modules/job/job_supervisor.py, `_get_driver_env_vars`).
JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"

_LOST = "inside a Ray job {what} is written into Ray's temporary working directory and lost"


def in_ray_job() -> bool:
    return JOB_ENV_VAR in os.environ


def check_tracking_uri(uri: str | None) -> None:
    """`uri`: --tracking-uri, else MLFLOW_TRACKING_URI, else None (the default ./mlflow.db)."""
    if not in_ray_job():
        return
    fix = "pass --tracking-uri sqlite:////shared/mlflow.db (absolute) or http://host:5000"
    if uri is None:
        raise ConfigError(
            f"runtime.tracking_uri = None: {_LOST.format(what='the default ./mlflow.db')}; {fix}"
        )
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
    elif uri.startswith("file:"):
        path = urlparse(uri).path
    else:
        return
    if not Path(path).is_absolute():
        raise ConfigError(
            f"runtime.tracking_uri = {uri}: {_LOST.format(what='a relative store')}; {fix}"
        )


def check_locations(cfg: ExperimentConfig) -> None:
    """Both checks on a loaded config, before any Ray work (`mfd sweep` connects to Ray first)."""
    check_tracking_uri(cfg.runtime.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    check_storage(cfg.runtime.storage, cfg.data.path)
    forwarded_env(cfg.runtime.forward_env)  # every name set here


def check_storage(storage: str, data_path: str | None = None) -> None:
    """Where datasets and checkpoints go (and a user's dataset) can be used: inside a Ray job
    not a relative path; an s3:// store has credentials and answers (one short probe)."""
    from mfdiffuser.data.storage import StorageError, check_store

    try:
        check_store(storage, "runtime.storage")
        if data_path:
            check_store(data_path, "data.path")
    except StorageError as err:
        raise ConfigError(str(err)) from None
    if in_ray_job() and "://" not in storage and not Path(storage).is_absolute():
        raise ConfigError(
            f"runtime.storage = {storage}: {_LOST.format(what='a relative path')}; pass "
            "--storage /shared/mfd (absolute, on a filesystem every node sees) or a URI"
        )


def file_store(uri: str | None) -> bool:
    """A tracking store that lives in files of the machine that writes it: SQLite (relative or
    absolute), `file:` or a plain path, or None (the default ./mlflow.db)."""
    if uri is None:
        return True
    if uri.startswith(("sqlite:", "file:")):
        return True
    return "://" not in uri and not uri.startswith("databricks")  # a path such as ./mlruns


def check_store_for_cluster(uri: str | None, alive_nodes: int) -> None:
    """On a Ray cluster of more than one node, trials log from whichever node runs them: a
    SQLite file (or any file store) would be a different, or a concurrently written, file on
    each. Refused there, with the fix; fine on one node."""
    if alive_nodes > 1 and file_store(uri):
        shown = uri or "None (the default ./mlflow.db)"
        raise ConfigError(
            f"runtime.tracking_uri = {shown}: a file-based MLflow store cannot be shared by the "
            f"{alive_nodes} nodes of this Ray cluster (trials log from every node); allowed: an "
            "MLflow server's URI: start `mlflow server --backend-store-uri "
            "sqlite:////srv/mlflow/mlflow.db --serve-artifacts --artifacts-destination "
            "/srv/mlflow/artifacts --host HOST --port 5000` on one machine and pass "
            "--tracking-uri http://HOST:5000 (docs/tracking.md)"
        )


def forwarded_env(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`runtime.forward_env`: each named variable's value in this process, for every Ray worker
    (Train workers, actors, trials) of the session. A name that is not set here is refused."""
    missing = [n for n in names if n not in os.environ]
    if missing:
        raise ConfigError(
            f"runtime.forward_env: {', '.join(missing)} not set in this environment; allowed: "
            "names of variables set where mfd runs (export them first, or drop them from the list)"
        )
    return {n: os.environ[n] for n in names}
