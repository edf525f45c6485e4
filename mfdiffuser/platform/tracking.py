"""MLflow conventions: where the store is, one experiment per benchmark, metric prefixes.

Naming scheme (one for the whole platform):
- experiment: the benchmark name (e.g. `crowd_1d`) unless `runtime.experiment` says otherwise,
  tagged as a model-training experiment for MLflow's UI;
- run: one per train/evaluate flow, params flattened from the config (plus `benchmark.version`),
  tags `mfd.benchmark`, `mfd.benchmark_version`, `mfd.n_agents`, `mfd.window`, `mfd.quality`,
  `mfd.method`, `mfd.seed`, `mfd.code_version`;
- metrics: `train/…` (per epoch), `return/n{N}` (mean per-agent return at N), `exploitability`,
  `behaviour/return`, `behaviour/exploitability`, `subopt/…`, `trajectory/…`, `dynamics/…`
  (README.md lists every name); sweep trials are child runs of the sweep's parent run;
- artifacts: `config.yaml`, `dataset/manifest.json`, `checkpoint/`.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mfdiffuser.platform import jobs
from mfdiffuser.platform.config import ConfigError, ExperimentConfig
from mfdiffuser.platform.provenance import code_version

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def resolve_tracking_uri(explicit: str | None, workdir: str | Path = ".") -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite store in the working directory."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    jobs.check_tracking_uri(uri)
    if uri:
        return uri
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with one line, on a store that cannot be used (before any Ray work)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise ConfigError(f"tracking URI {uri!r}: /health answered {resp.status}")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(f"tracking URI {uri!r} is unreachable: {reason}") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.parent.is_dir():
            raise ConfigError(f"tracking URI {uri!r}: directory {db.parent} does not exist")
    elif "://" not in uri and not uri.startswith(("databricks", "file:")):
        raise ConfigError(
            f"tracking URI {uri!r}: expected sqlite:///path.db, http(s)://host:port or databricks"
        )


def artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store live next to it, never in the caller's CWD."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces), not its runs.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(uri: str, name: str) -> str:
    """Create (or find) the experiment in the driver, so that worker processes never race to
    create a fresh SQLite schema (two creators fail with `duplicate column name`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(KIND_TAG) != KIND:  # made before the tag was set, or by hand
            client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return str(exp.experiment_id)
    root = artifact_root(uri)
    base = root.rstrip("/") + f"/{name}" if root else None
    return str(client.create_experiment(name, artifact_location=base, tags={KIND_TAG: KIND}))


def experiment_name(cfg: ExperimentConfig) -> str:
    return cfg.runtime.experiment or cfg.benchmark.name


def flat_params(cfg: ExperimentConfig) -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, list | dict) else str(node)

    walk("", cfg.model_dump(exclude={"runtime"}))
    out["benchmark.version"] = str(_benchmark_version(cfg))
    return out


def _benchmark_version(cfg: ExperimentConfig) -> int:
    from mfdiffuser.envs.registry import get_benchmark

    return get_benchmark(cfg.benchmark.name).version


def run_tags(cfg: ExperimentConfig, method: str = "mf_diffuser") -> dict[str, str]:
    return {
        "mfd.benchmark": cfg.benchmark.name,
        "mfd.benchmark_version": str(_benchmark_version(cfg)),
        "mfd.n_agents": str(cfg.data.n_agents),
        "mfd.window": str(cfg.planner.window),
        "mfd.quality": cfg.data.quality,
        "mfd.method": method,
        "mfd.seed": str(cfg.train.seed),
        "mfd.code_version": code_version(),
    }


def start_run(cfg: ExperimentConfig, uri: str, run_name: str) -> str:
    """Create a run with the config's params and tags; returns its id (the run is left open)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = ensure_experiment(uri, experiment_name(cfg))
    tags = {**run_tags(cfg), "mlflow.runName": run_name}
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    params = [Param(k, v[:6000]) for k, v in flat_params(cfg).items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return str(run.info.run_id)


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    MlflowClient(tracking_uri=uri).log_batch(run_id, metrics=batch)


def log_artifact(
    uri: str, run_id: str, local_path: str | Path, artifact_path: str | None = None
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if Path(local_path).is_dir():
        client.log_artifacts(run_id, str(local_path), artifact_path)
    else:
        client.log_artifact(run_id, str(local_path), artifact_path)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)
