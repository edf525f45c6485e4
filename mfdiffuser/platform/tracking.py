"""MLflow conventions: where the store is, one experiment per benchmark, metric prefixes.

Naming scheme (one for the whole platform):
- experiment: the benchmark name (e.g. `crowd_1d`) unless `runtime.experiment` says otherwise,
  tagged as a model-training experiment for MLflow's UI;
- run: one per train/evaluate flow, params flattened from the config (plus `benchmark.version`),
  tags `mfd.benchmark`, `mfd.benchmark_version`, `mfd.n_agents`, `mfd.window`, `mfd.quality`,
  `mfd.method`, `mfd.seed`, `mfd.code_version`;
- metrics: `train/…` (per epoch), `return/n{N}` (mean per-agent return at N), `exploitability`,
  `behaviour/return`, `behaviour/exploitability`, `subopt/…`, `trajectory/…`, `dynamics/…`,
  a team game's `<figure>/vs_<opponent>/n{N}` and `jn_spread/n{N}` (`team_key`, …)
  (docs/metrics.md defines every one); a quantity indexed by N (`return/n{N}`,
  `subopt/mf_abs_dev/n{N}`) is logged a second time under the key without N at step N (`return`,
  `subopt/mf_abs_dev`), so MLflow charts it against N; sweep trials are child runs of the sweep's
  parent run;
- artifacts: `config.yaml`, `dataset/manifest.json`, `checkpoint/`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mfdiffuser.platform import jobs
from mfdiffuser.platform.config import ConfigError, ExperimentConfig
from mfdiffuser.platform.errors import verbose
from mfdiffuser.platform.provenance import code_version

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
if not verbose():  # MLflow's INFO lines (e.g. creating a new store's tables) only with MFD_VERBOSE
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

# Against an `mlflow server` (http:// URI) every request this process makes (metrics, params,
# tags, run status, proxied artifact uploads) is retried by MLflow's own HTTP session (urllib3's
# Retry: refused connections, resets, 408/429/5xx, every method) with exponential backoff:
# sleeps of 0, 2, 4, 8, 16, 32 s, so a write survives a server outage of about a minute, then
# fails. Set on import, in the driver and in every Ray worker that logs; the user's own values of
# these variables win. A retried write is never logged twice: metrics carry explicit timestamps,
# and MLflow's SQL store drops a row identical in (key, value, timestamp, step) to one it holds
# (tests/integration/test_mlflow_server.py checks it); params and tags of equal value and a run's
# status are idempotent writes.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
for _name, _value in HTTP_RETRY_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


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
_READY: set[str] = set()


def ui_url(port: int = 5000, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """A link into `mfd ui` that opens MLflow 3's model-training view (runs, metrics). Without
    `workflowType` in the URL a fresh browser opens its GenAI view (traces) even for an
    experiment tagged as model training."""
    page = "experiments"
    if experiment_id is not None:
        page += f"/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"http://127.0.0.1:{port}/#/{page}?workflowType=machine_learning"


def client(uri: str) -> Any:
    """An `MlflowClient` of the store. A new SQLite store is created once under a file lock
    beside it: two commands starting at once against a fresh store would otherwise both run
    MLflow's schema migrations and one would crash (`duplicate column name: step`)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and uri not in _READY:
        db = Path(uri.removeprefix("sqlite:///"))
        with open(db.parent / f".{db.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        _READY.add(uri)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """Create (or find) the experiment in the driver, before any worker process logs to it."""
    from mlflow.exceptions import MlflowException

    client_ = client(uri)
    exp = client_.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(uri)
        base = root.rstrip("/") + f"/{name}" if root else None
        try:
            return str(
                client_.create_experiment(name, artifact_location=base, tags={KIND_TAG: KIND})
            )
        except MlflowException:  # another command created it a moment ago
            exp = client_.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(KIND_TAG) != KIND:  # made before the tag was set, or by hand
        client_.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
    return str(exp.experiment_id)


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
    from mfdiffuser.methods.registry import get_method

    out["method.version"] = str(get_method(cfg.method.name).version)
    return out


def _benchmark_version(cfg: ExperimentConfig) -> int:
    from mfdiffuser.envs.registry import get_benchmark

    return get_benchmark(cfg.benchmark.name).version


def config_hash(cfg: ExperimentConfig) -> str:
    """What identifies a run for `--resume`: the whole config but where Ray and MLflow are
    (the storage stays in: a resumed run needs its Train checkpoints)."""
    spec = {**flat_params(cfg), "runtime.storage": cfg.runtime.storage}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    window = cfg.method.params.get("window")
    return {
        "mfd.benchmark": cfg.benchmark.name,
        "mfd.benchmark_version": str(_benchmark_version(cfg)),
        "mfd.n_agents": str(cfg.data.n_agents),
        **({"mfd.window": str(window)} if window is not None else {}),
        "mfd.quality": cfg.data.quality,
        "mfd.method": cfg.method.name,
        "mfd.seed": str(cfg.train.seed),
        "mfd.code_version": code_version(),
        "mfd.config_hash": config_hash(cfg),
    }


def start_run(
    cfg: ExperimentConfig, uri: str, run_name: str, tags: dict[str, str] | None = None
) -> str:
    """Create a run with the config's params and tags; returns its id (the run is left open)."""
    from mlflow.entities import Param

    client_ = client(uri)
    exp_id = ensure_experiment(uri, experiment_name(cfg))
    all_tags = {**run_tags(cfg), **(tags or {}), "mlflow.runName": run_name}
    run = client_.create_run(exp_id, run_name=run_name, tags=all_tags)
    params = [Param(k, v[:6000]) for k, v in flat_params(cfg).items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client_.log_batch(run.info.run_id, params=params[i : i + 100])
    return str(run.info.run_id)


def find_unfinished_run(uri: str, cfg: ExperimentConfig, role: str) -> Any | None:
    """The newest run of this exact config (and role) that did not finish, if any."""
    exp = client(uri).get_experiment_by_name(experiment_name(cfg))
    if exp is None:
        return None
    runs = client(uri).search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mfd.config_hash` = '{config_hash(cfg)}' "
        f"and tags.`mfd.role` = '{role}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    return next((r for r in runs if r.info.status != "FINISHED"), None)


def get_run(uri: str, run_id: str) -> Any | None:
    """The run, or None when this store does not hold it."""
    from mlflow.exceptions import MlflowException

    try:
        return client(uri).get_run(run_id)
    except MlflowException:
        return None


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


# Where a run's Train worker group (rank 0) ran: the Ray node id and its address, set each time
# the group starts; TRAIN_NODES lists every node id it started on, in order (a group restarted
# after a node loss appends the new one).
TRAIN_NODE_ID = "mfd.train.node_id"
TRAIN_NODE_ADDRESS = "mfd.train.node_address"
TRAIN_NODES = "mfd.train.nodes"


def record_train_node(uri: str, run_id: str, node_id: str, address: str) -> None:
    run = get_run(uri, run_id)
    before = run.data.tags.get(TRAIN_NODES, "") if run is not None else ""
    nodes = [n for n in before.split(",") if n] + [node_id]
    set_tags(
        uri,
        run_id,
        {TRAIN_NODE_ID: node_id, TRAIN_NODE_ADDRESS: address, TRAIN_NODES: ",".join(nodes)},
    )


def set_running(uri: str, run_id: str) -> None:
    client(uri).update_run(run_id, status="RUNNING")


def last_step(uri: str, run_id: str, key: str) -> int:
    """The highest step logged for `key` (0 if none): a resumed training logs only after it."""
    return max((int(m.step) for m in client(uri).get_metric_history(run_id, key)), default=0)


# Team games: the figures of one opponent, and how an opponent is named in a key.
TEAM_FIGURES = ("win_rate", "kill_ratio", "survival", "return")


def return_key(n: int) -> str:
    """`return/n{N}`: the mean per-agent return at N (a team game's: against the data's
    opponent)."""
    return f"return/n{n}"


def team_key(figure: str, opponent: str, n: int) -> str:
    """`<figure>/vs_<opponent>/n{N}` of a team game, figure one of `TEAM_FIGURES`, opponent as
    `opponent_name` gives it."""
    if figure not in TEAM_FIGURES:
        raise ValueError(f"figure = {figure!r}: allowed: {', '.join(TEAM_FIGURES)}")
    return f"{figure}/vs_{opponent}/n{n}"


def jn_spread_key(n: int) -> str:
    """`jn_spread/n{N}`: the spread of J^N across a team game's episodes at N."""
    return f"jn_spread/n{n}"


# A team game's score against one opponent at N agents per team (`win_rate/vs_expert/n64`,
# `team_key`): what `mfd table` and the report's figures compare besides the return.
TEAM_SCORE = re.compile(r"(?P<score>win_rate|kill_ratio)/vs_(?P<opponent>[a-z0-9_]+)/n(?P<n>\d+)")


def team_figures(metrics: dict[str, float], n: int) -> dict[str, float]:
    """A trial's win rate and kill ratio at N against each opponent but itself and checkpoints
    (`self`, `checkpoint_<id>`: not the same player for every method), keyed
    `<figure>/vs_<opponent>`; {} for a game without teams."""
    out = {}
    for key, value in metrics.items():
        m = TEAM_SCORE.fullmatch(key)
        opp = m["opponent"] if m else ""
        if m and int(m["n"]) == n and opp != "self" and not opp.startswith("checkpoint_"):
            out[f"{m['score']}/vs_{opp}"] = value
    return dict(sorted(out.items()))


def opponent_name(opponent: str, named: tuple[str, ...] | list[str]) -> str:
    """An opponent as its keys name it: a named one (`expert`, `random`, `self`) as itself, a
    checkpoint as `checkpoint_<id>`, id = the first 8 hex digits of the SHA-256 of its absolute
    path, so two checkpoint opponents of one evaluation never share keys."""
    if opponent in named:
        return opponent
    path = str(Path(opponent).resolve())
    return f"checkpoint_{hashlib.sha256(path.encode()).hexdigest()[:8]}"


# `return/n100`, `return/n100_std`, `return/table_n100`, `subopt/mf_error/n100`: a quantity at N.
_PER_N = re.compile(r"(?P<base>.+)/(?P<kind>[a-z_]*?)_?n(?P<n>\d+)(?P<std>_std)?")


def n_indexed(key: str) -> tuple[str, int] | None:
    """(the key without N, N) for a per-N key (`return/table_n100` -> (`return/table`, 100),
    `return/n100_std` -> (`return_std`, 100)); None for any other key."""
    m = _PER_N.fullmatch(key)
    if m is None:
        return None
    base = m["base"] + (f"/{m['kind']}" if m["kind"] else "") + (m["std"] or "")
    return base, int(m["n"])


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log at `step`; a per-N key is logged once more without N, at step N (`n_indexed`)."""
    log_steps(uri, run_id, [(metrics, step or 0)])


def log_steps(uri: str, run_id: str, steps: list[tuple[dict[str, float], int]]) -> None:
    """Metrics of several steps in as few requests as MLflow allows (1000 values each); a per-N
    key is logged once more without N, at step N (`n_indexed`)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for metrics, step in steps for k, v in metrics.items()]
    batch += [
        Metric(found[0], float(v), now, found[1])
        for metrics, _ in steps
        for k, v in metrics.items()
        if (found := n_indexed(k)) is not None
    ]
    for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
        client(uri).log_batch(run_id, metrics=batch[i : i + 1000])


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every value logged for `key`, by step."""
    return sorted(
        (int(m.step), float(m.value)) for m in client(uri).get_metric_history(run_id, key)
    )


# RLlib's learner results (per training iteration) under the platform's `train/` names.
RLLIB_LEARNER_METRICS = {
    "total_loss": "train/loss",
    "policy_loss": "train/policy_loss",
    "vf_loss": "train/vf_loss",
}


def rllib_train_metrics(learner: dict[str, Any]) -> dict[str, float]:
    return {ours: float(learner[k]) for k, ours in RLLIB_LEARNER_METRICS.items() if k in learner}


def log_artifact(
    uri: str, run_id: str, local_path: str | Path, artifact_path: str | None = None
) -> None:
    client_ = client(uri)
    if Path(local_path).is_dir():
        client_.log_artifacts(run_id, str(local_path), artifact_path)
    else:
        client_.log_artifact(run_id, str(local_path), artifact_path)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:5000]


def interrupted(err: BaseException) -> bool:
    """Ctrl-C, SIGTERM (Ray's driver handler turns it into SystemExit) or Ray Train's abort."""
    return isinstance(err, KeyboardInterrupt | SystemExit)


def fail_run(uri: str, run_id: str, err: BaseException) -> None:
    """End a run this command owns: KILLED when interrupted, else FAILED, with the error."""
    import traceback

    try:
        set_tags(
            uri,
            run_id,
            {
                "mfd.error": _error_text(err),
                "mfd.traceback": "".join(traceback.format_exception(err))[-5000:],
            },
        )
        end_run(uri, run_id, "KILLED" if interrupted(err) else "FAILED")
    except Exception:
        pass  # the store itself may be what failed; the original error is what the user sees


def record_evaluation(uri: str, run_id: str, err: BaseException | None) -> None:
    """An evaluation's own outcome on a run it logs into but did not start: tags only."""
    status = "FINISHED" if err is None else ("KILLED" if interrupted(err) else "FAILED")
    tags = {"mfd.eval.status": status}
    if err is not None:
        tags["mfd.eval.error"] = _error_text(err)
    try:
        set_tags(uri, run_id, tags)
    except Exception:
        pass


# ----------------------------------------------------------------------- reading a sweep back

# Sweep axes that set a trial's benchmark, quality, N or seed, or its method: every other axis
# (H, beta, train.lr, …) is part of the setting the comparison table compares methods in.
SETTING_AXES = frozenset(
    {"N", "n_agents", "quality", "seed", "method", "benchmark.name", "data.n_agents"}
    | {"data.quality", "data.seed", "train.seed", "eval.seed"}
)
SKIPPED_ARTIFACT = "sweep/skipped.json"


def _other_axes(axes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in axes.items() if k not in SETTING_AXES}


def _search_all(uri: str, experiment_ids: list[str], where: str) -> list[Any]:
    """Every matching run, page by page (a sweep may have more runs than one page holds)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client(uri).search_runs(
            experiment_ids,
            filter_string=where,
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_sweep(uri: str, ref: str) -> Any:
    """The parent run of a sweep from its run id or its `mfd.sweep_id` (the newest such run)."""
    run = get_run(uri, ref)
    if run is None and "'" not in ref:
        exp_ids = [e.experiment_id for e in client(uri).search_experiments()]
        found = _search_all(
            uri, exp_ids, f"tags.`mfd.sweep_id` = '{ref}' and tags.`mfd.role` = 'sweep'"
        )
        run = found[0] if found else None
    if run is None:
        raise ConfigError(
            f"--sweep = {ref!r}: no such run or sweep id in {uri}; allowed: the parent run id "
            "or the sweep id that `mfd sweep` prints"
        )
    role = run.data.tags.get("mfd.role")
    if role != "sweep":
        raise ConfigError(
            f"--sweep = {ref!r}: run {run.info.run_id} is not a sweep's parent run "
            f"(mfd.role = {role}); allowed: the parent run id or the sweep id that `mfd sweep` "
            "prints"
        )
    return run


def latest_sweep(uri: str, experiment: str) -> Any:
    """The newest sweep parent run in the experiment named `experiment`."""
    exp = client(uri).get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client(uri).search_experiments())
        raise ConfigError(
            f"--experiment = {experiment!r}: no such experiment in {uri}; allowed: "
            + (", ".join(names) or "none (the store is empty)")
        )
    found = _search_all(uri, [exp.experiment_id], "tags.`mfd.role` = 'sweep'")
    if not found:
        raise ConfigError(
            f"--experiment = {experiment!r}: it holds no sweep; allowed: an experiment "
            "that `mfd sweep` logged into"
        )
    return found[0]


def check_finished(ref: str, found: dict[str, Any]) -> None:
    """A sweep read back (`sweep_results`) must have a finished trial."""
    if not found["records"]:
        from collections import Counter

        counts = Counter(m["status"] for m in found["missing"])
        runs = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        raise ConfigError(
            f"--sweep = {ref!r}: sweep {found['sweep']!r} has no finished trial "
            f"(trial runs: {runs or 'none'})"
        )


def _skipped(uri: str, run_id: str) -> list[dict[str, Any]]:
    import tempfile

    folder = SKIPPED_ARTIFACT.rsplit("/", 1)[0]
    if not any(a.path == SKIPPED_ARTIFACT for a in client(uri).list_artifacts(run_id, folder)):
        return []
    with tempfile.TemporaryDirectory() as tmp:
        path = client(uri).download_artifacts(run_id, SKIPPED_ARTIFACT, tmp)
        cells = json.loads(Path(path).read_text())
    return [{**c, "extra": _other_axes(c.get("axes") or {})} for c in cells]


def sweep_results(uri: str, ref: str) -> dict[str, Any]:
    """A sweep's trials as comparison records, from its parent run (id or sweep id).

    `records`: finished trials with their return at their own N (`return/n{N}`, N the trial's
    `data.n_agents`), `exploitability`, `team` (a team game's `team_figures`) and all its
    `metrics`; `missing`: trial runs without
    them (failed, still running, or not evaluated at their own N), with why; `skipped`: the
    cells the sweep did not run (its `sweep/skipped.json`). Benchmark, quality, N and seed
    (`train.seed`) are the trial's logged config; the method is its `mfd.method` tag.
    """
    parent = find_sweep(uri, ref)
    parent_id = parent.info.run_id
    children = _search_all(
        uri, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    records, missing = [], []
    for run in children:
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        axes = {
            k.removeprefix("mfd.axis."): json.loads(v)
            for k, v in tags.items()
            if k.startswith("mfd.axis.")
        }
        n = int(params["data.n_agents"])
        item = {
            "benchmark": params["benchmark.name"],
            "quality": params["data.quality"],
            "n_agents": n,
            "method": tags.get("mfd.method", "mf_diffuser"),
            "seed": int(params["train.seed"]),
            "extra": _other_axes(axes),
            "run_id": run.info.run_id,
        }
        key = return_key(n)
        if run.info.status == "FINISHED" and key in metrics:
            records.append(
                {
                    **item,
                    "return": metrics[key],
                    "exploitability": metrics.get("exploitability"),
                    "team": team_figures(metrics, n),
                    "metrics": dict(metrics),
                }
            )
            continue
        if run.info.status != "FINISHED":
            error = tags.get("mfd.error")
            reason = run.info.status + (f": {error}" if error else "")
        else:
            reason = f"FINISHED without {key}"
        missing.append({**item, "status": run.info.status, "reason": reason})
    return {
        "parent_run_id": parent_id,
        "sweep": parent.data.tags.get("mfd.sweep"),
        "sweep_id": parent.data.tags.get("mfd.sweep_id"),
        "records": records,
        "missing": missing,
        "skipped": _skipped(uri, parent_id),
    }
