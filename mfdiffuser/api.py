"""The Python API: every CLI command is one function here (the CLI only parses and prints).

from mfdiffuser import api
cfg = api.load_config("configs/quickstart.yaml", ["data.n_agents=200"])
out = api.run_experiment(cfg)          # generate -> train (Ray Train DDP) -> evaluate
out["metrics"]["exploitability"]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from mfdiffuser.envs import (
    best_response,
    damped_fictitious_play,
    exploitability,
    fictitious_play,
    mean_field_flow,
    online_mirror_descent,
    policy_value,
    uniform_policy,
)
from mfdiffuser.envs.registry import BENCHMARKS, get_benchmark
from mfdiffuser.platform.config import (
    ConfigError,
    ExperimentConfig,
    check_local_data_path,
    load_config,
    validation_lines,
)

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "evaluate",
    "generate",
    "list_benchmarks",
    "load_config",
    "quickstart",
    "report",
    "run_experiment",
    "solve",
    "table",
    "train",
]

ALGORITHMS = ("uniform", "expert", "fp", "damped_fp", "omd")
QUICKSTART_CONFIG = Path(__file__).resolve().parent / "presets" / "quickstart.yaml"


def list_benchmarks() -> list[dict[str, Any]]:
    """Every registered benchmark (built-in, then plugins'): its name, version, family and
    default parameters, what it is, and where it came from (`origin`)."""
    return [
        {**spec.describe(), "description": spec.description, "origin": BENCHMARKS.origin(name)}
        for name, spec in BENCHMARKS.items()
    ]


def list_methods() -> list[dict[str, Any]]:
    """Every registered method: name, version, kind, description, the parameters it pins (a
    named variant), its agent limit, each parameter's default and description, and where it
    came from (`origin`: built-in, or the plugin package and entry point)."""
    from mfdiffuser.methods.registry import METHODS

    out = []
    for name, spec in METHODS.items():
        model = spec.params_model
        defaults = spec.params().model_dump()
        out.append(
            {
                **spec.describe(),
                "description": spec.description,
                "fixed": dict(spec.fixed),
                "max_agents": spec.max_agents,
                "origin": METHODS.origin(name),
                "parameters": {
                    name: {"default": defaults[name], "description": info.description or ""}
                    for name, info in model.model_fields.items()
                    if name not in spec.fixed
                },
            }
        )
    return out


def solve(
    benchmark: str,
    params: dict[str, Any] | None = None,
    algorithm: str = "uniform",
    iterations: int = 100,
    learning_rate: float = 0.1,
    episodes: int = 10,
) -> dict[str, Any]:
    """Exact mean-field quantities of a policy: the uniform one, or a solver's result.

    Simulator-only benchmarks (battle) report the policy's simulated return, win rate and
    kill ratio over `episodes` episodes instead (`uniform` = random, `expert` = scripted).
    `expert` is the benchmark's registered expert (its `expert_solver` setting, e.g. damped
    fictitious play for sis); `damped_fp` is damped fictitious play with `iterations` and the
    benchmark's step exponent. For multi-population games (predator_prey) `exploitability` is the
    mean of the per-population gains, listed in `exploitability_per_population`.
    """
    spec = get_benchmark(benchmark)
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"--algorithm = {algorithm!r}: allowed: {', '.join(ALGORITHMS)}")
    if iterations < 1:
        raise ConfigError(f"--iterations = {iterations}: must be >= 1")
    if not spec.exact_model:
        return _solve_simulated(spec, params, algorithm, episodes)
    try:
        game = spec.game(params)
    except ValidationError as err:
        raise ConfigError(validation_lines(err, "benchmark.params")) from None
    out: dict[str, Any] = {"benchmark": spec.describe(params), "algorithm": algorithm}
    if spec.cooperative and algorithm in ("fp", "damped_fp", "omd"):
        raise ConfigError(
            f"--algorithm = {algorithm!r}: {benchmark} is cooperative (every policy is a Nash "
            "equilibrium), so there is nothing to solve; allowed: uniform, expert"
        )
    if algorithm == "uniform":
        policy = uniform_policy(game)
    elif algorithm == "expert":
        policy = spec.behaviour(game, "expert").policies[0]
    else:
        start = time.perf_counter()
        if algorithm == "fp":
            result = fictitious_play(game, iterations)
        elif algorithm == "damped_fp":
            result = damped_fictitious_play(
                game, iterations, step_exponent=spec.expert_solver.step_exponent
            )
            out["step_exponent"] = spec.expert_solver.step_exponent
        else:
            result = online_mirror_descent(game, iterations, learning_rate=learning_rate)
        out["solve_seconds"] = time.perf_counter() - start
        out["iterations"] = iterations
        if algorithm == "omd":
            out["learning_rate"] = learning_rate
        out["exploitability_curve"] = [float(x) for x in result.exploitability_curve]
        policy = result.policy
    _, br_value = best_response(game, mean_field_flow(game, policy))
    out["value"] = float(policy_value(game, policy))
    out["best_response_value"] = float(br_value)
    out["exploitability"] = float(exploitability(game, policy))
    per_population = getattr(game, "exploitability_per_population", None)
    if per_population is not None:
        out["exploitability_per_population"] = [float(x) for x in per_population(policy)]
        out["exploitability_aggregation"] = "mean over populations"
    if spec.reference_value is not None:
        out["reference_value"] = float(spec.reference_value(game))
        out["welfare_gap"] = out["reference_value"] - out["value"]
    return out


def _solve_simulated(
    spec: Any, params: dict[str, Any] | None, algorithm: str, episodes: int
) -> dict[str, Any]:
    if algorithm not in ("uniform", "expert"):
        raise ConfigError(
            f"--algorithm = {algorithm!r}: {spec.name} has no exact mean-field model, so there "
            "is nothing to solve or exploit; allowed: uniform, expert"
        )
    if episodes < 1:
        raise ConfigError(f"episodes = {episodes}: must be >= 1")
    try:
        validated = spec.params(params)
    except ValidationError as err:
        raise ConfigError(validation_lines(err, "benchmark.params")) from None
    start = time.perf_counter()
    quality = "random" if algorithm == "uniform" else "expert"
    stats = spec.simulator.stats(validated, quality, episodes)
    return {
        "benchmark": spec.describe(params),
        "algorithm": algorithm,
        **stats,
        "exploitability": None,  # no exact model: not defined
        "seconds": time.perf_counter() - start,
    }


@contextmanager
def _ray(cfg: ExperimentConfig) -> Iterator[None]:
    from mfdiffuser.platform.runtime import ray_session

    with ray_session(cfg.runtime.address, cfg.runtime.num_cpus, cfg.runtime.forward_env):
        yield


def _tracking(cfg: ExperimentConfig, workdir: str | Path = ".", explicit: str | None = None) -> str:
    from mfdiffuser.platform.tracking import check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(explicit or cfg.runtime.tracking_uri, workdir)
    check_tracking_uri(uri)
    return uri


def generate(cfg: ExperimentConfig) -> dict[str, Any]:
    """Generate the offline dataset of `cfg` with a pool of Ray actors, or reuse it (no Ray)."""
    from mfdiffuser.workers.datagen import dataset_params, existing_dataset, generate_dataset

    try:  # N tied to the parameters (battle: agents per team fit the map); before any Ray work
        dataset_params(cfg)
    except (ValueError, ValidationError) as err:
        msg = validation_lines(err, "benchmark.params") if isinstance(err, ValidationError) else err
        raise ConfigError(str(msg)) from None
    start = time.perf_counter()
    found = existing_dataset(cfg)  # a reused dataset needs no Ray (its start takes 10-30 s)
    reused = found is not None
    if found is None:
        from mfdiffuser.platform.runtime import check_storage_on_nodes

        with _ray(cfg):
            check_storage_on_nodes(cfg.runtime.storage)
            found = generate_dataset(cfg)
    uri, manifest, repaired = found
    return {
        "dataset": uri,
        "reused": reused,
        "repaired": repaired,
        "dataset_id": manifest.dataset_id,
        "rows": manifest.rows,
        "episodes": manifest.episodes,
        "shards": len(manifest.shards),
        "behaviour": manifest.behaviour,
        "seconds": time.perf_counter() - start,
    }


def import_data(path: str | Path, cfg: ExperimentConfig) -> dict[str, Any]:
    """A user's rows (Parquet, CSV or .npz) into a dataset of the config's benchmark under
    `<runtime.storage>/datasets/<id>`, in `data.shards` shards (docs/data.md). No Ray: every
    check (columns, types, ranges against the benchmark, duplicates, complete episodes) runs
    here, and a problem is an `ImportProblem` naming the column and the rows."""
    from mfdiffuser.data import storage
    from mfdiffuser.data.importing import read_rows, validate_rows, write_imported
    from mfdiffuser.data.verify import file_sha256
    from mfdiffuser.envs.registry import get_benchmark
    from mfdiffuser.platform.provenance import code_version

    start = time.perf_counter()
    bench = get_benchmark(cfg.benchmark.name)
    if not bench.exact_model or bench.row_schema != "finite":
        raise ConfigError(
            f"benchmark.name = {bench.name!r}: mfd import reads finite-state rows of a benchmark "
            f"with an exact model; {bench.name} has {bench.row_schema} rows and no exact model"
        )
    game = bench.game(cfg.benchmark.params)
    table = read_rows(path)
    rows = validate_rows(table, game.n_states, game.n_actions, game.horizon, str(path))
    root = cfg.runtime.storage
    if "://" not in root:  # absolute: Ray Train workers and rollout actors run elsewhere
        root = str(Path(root).resolve())
    fs, local = storage.resolve(str(Path(path).resolve()))
    source = {
        "file": Path(path).name,
        "format": Path(path).suffix.lower().lstrip("."),
        "sha256": file_sha256(fs, local),
        "rows": table.num_rows,
    }
    uri, manifest, reused = write_imported(
        rows,
        game,
        bench.describe(cfg.benchmark.params),
        root,
        cfg.data.shards,
        source,
        code_version(),
    )
    return {
        "dataset": uri,
        "dataset_id": manifest.dataset_id,
        "reused": reused,
        "rows": manifest.rows,
        "episodes": manifest.episodes,
        "n_agents": manifest.spec["n_agents"],
        "horizon": game.horizon,
        "shards": len(manifest.shards),
        "content_sha256": manifest.spec["content_sha256"],
        "ignored_columns": rows.ignored,
        "behaviour": manifest.behaviour,
        "seconds": time.perf_counter() - start,
    }


def export_data(dataset: str, out: str | Path) -> dict[str, Any]:
    """A dataset (a directory or URI with manifest.json) out to one Parquet/CSV/.npz file and
    its dataset card beside it (`<stem>.card.md`); the dataset is verified first."""
    from mfdiffuser.data.exporting import export_dataset
    from mfdiffuser.platform.provenance import code_version

    out = str(out)
    if "://" not in out:
        out = str(Path(out).resolve())
    if "://" not in dataset and not (Path(dataset) / "manifest.json").is_file():
        raise ConfigError(
            f"dataset = {dataset!r}: no dataset there (expected a directory with manifest.json)"
        )
    return export_dataset(dataset, out, code_version())


def _notice(text: str) -> None:
    """What a command tells the user while it works (stderr: stdout may carry --json)."""
    print(text, file=sys.stderr, flush=True)


def check_method(cfg: ExperimentConfig) -> None:
    """The config's method can run on its benchmark at its N, or ConfigError (before Ray)."""
    from mfdiffuser.methods.registry import get_method

    spec = get_benchmark(cfg.benchmark.name)
    reason = get_method(cfg.method.name).cannot_run(spec, [cfg.data.n_agents, *cfg.eval.n_agents])
    # (training needs the data's N, acting every evaluated N)
    if reason is None:
        return
    raise ConfigError(f"method.name = {cfg.method.name!r}: {reason}")


def _check_opponents(cfg: ExperimentConfig, opponents: list[str] | None) -> None:
    """Each opponent is a scripted one of the team game, `self`, or its checkpoint."""
    spec = get_benchmark(cfg.benchmark.name)
    if not opponents:
        return
    if spec.simulator is None:
        raise ConfigError(
            f"--opponent = {opponents[0]!r}: {spec.name} is not a team game; allowed: none"
        )
    from mfdiffuser.methods.checkpoint import read_meta

    allowed = f"{', '.join(spec.simulator.scripted)}, self, or a checkpoint trained on {spec.name}"
    for o in opponents:
        if o in spec.simulator.scripted or o == "self":
            continue
        try:
            made_on = read_meta(o).get("config", {}).get("benchmark", {}).get("name")
        except (FileNotFoundError, ValueError):
            raise ConfigError(f"--opponent = {o!r}: not a checkpoint; allowed: {allowed}") from None
        if made_on != spec.name:
            raise ConfigError(
                f"--opponent = {o!r}: a checkpoint trained on {made_on}; allowed: {allowed}"
            )


def train(
    cfg: ExperimentConfig,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    end_run: bool = True,
) -> dict[str, Any]:
    """Generate/reuse the dataset, then fit the planner with Ray Train; one MLflow run.

    With `run_id` the caller owns that run (it ends it, and fails it on an error); a run that
    already holds a Ray Train run (`mfd.train_name`) continues it from its last checkpoint, and
    one whose training finished (`mfd.checkpoint`) is not trained again.
    """
    from mfdiffuser.data.verify import verify_dataset
    from mfdiffuser.platform import tracking
    from mfdiffuser.workers.datagen import Dataset

    check_method(cfg)
    check_local_data_path(cfg)
    # A user's dataset is verified (and refused if it fails) before any run or Ray work.
    given = Dataset(cfg.data.path, verify_dataset(cfg.data.path), None) if cfg.data.path else None
    uri = tracking_uri or _tracking(cfg)
    owned = run_id is None
    run_id = run_id or tracking.start_run(cfg, uri, run_name=f"{cfg.name}-train")
    start = time.perf_counter()
    try:
        out = _train_into(cfg, uri, run_id, given)
    except BaseException as err:
        if owned:
            tracking.fail_run(uri, run_id, err)
        raise
    if end_run:
        tracking.end_run(uri, run_id)
    return {
        **out,
        "run_id": run_id,
        "tracking_uri": uri,
        "train_seconds": time.perf_counter() - start,
    }


def _train_into(cfg: ExperimentConfig, uri: str, run_id: str, given: Any | None) -> dict[str, Any]:
    from mfdiffuser.methods.checkpoint import is_checkpoint, read_meta
    from mfdiffuser.methods.registry import get_method
    from mfdiffuser.platform import tracking
    from mfdiffuser.platform.runtime import (
        check_fits,
        check_storage_on_nodes,
        check_tracking_store,
    )
    from mfdiffuser.workers.datagen import generate_dataset
    from mfdiffuser.workers.trainer import solve_reference, train_external, train_planner

    start = time.perf_counter()
    tags = tracking.get_run(uri, run_id).data.tags
    done = tags.get("mfd.checkpoint")
    meta = read_meta(done) if done and is_checkpoint(done) else {}
    if meta.get("epoch") == cfg.train.epochs:
        _notice(f"training of run {run_id} finished before: reusing checkpoint {done}")
        return {"checkpoint": done, "dataset": meta["dataset"], "repaired": None}
    train_name = tags.get("mfd.train_name") or f"{cfg.name}-{uuid.uuid4().hex[:8]}"
    with _ray(cfg):
        check_fits(cfg)
        check_tracking_store(uri)
        check_storage_on_nodes(cfg.runtime.storage, cfg.data.path)
        dataset, manifest, repaired = given or generate_dataset(cfg)
        tracking.set_tags(
            uri, run_id, {"mfd.train_name": train_name, "mfd.dataset_id": manifest.dataset_id}
        )
        _log_json(uri, run_id, manifest.model_dump(), "dataset", "manifest.json")
        _log_json(uri, run_id, cfg.model_dump(), "", "config.yaml", as_yaml=True)
        if "behaviour/data_return" not in _run_metrics(uri, run_id):  # once, also when resumed
            figures = _behaviour_metrics(manifest.behaviour)
            tracking.log_metrics(uri, run_id, figures)
            if tags := _estimate_tags(figures, manifest.behaviour):
                tracking.set_tags(uri, run_id, tags)
        kind = get_method(cfg.method.name).kind
        if kind == "reference":
            checkpoint = solve_reference(cfg, dataset, train_name)
            tracking.log_metrics(uri, run_id, read_meta(checkpoint)["metrics"])
        elif kind == "external":
            checkpoint = train_external(cfg, dataset, train_name, tracking_uri=uri, run_id=run_id)
        else:
            checkpoint = train_planner(
                cfg,
                dataset,
                len(manifest.shards),
                tracking_uri=uri,
                run_id=run_id,
                run_name=train_name,
            )
    _log_checkpoint(uri, run_id, checkpoint)
    tracking.log_metrics(uri, run_id, {"train/seconds": time.perf_counter() - start})
    tracking.set_tags(uri, run_id, {"mfd.checkpoint": str(checkpoint)})
    return {"checkpoint": str(checkpoint), "dataset": dataset, "repaired": repaired}


def _log_checkpoint(uri: str, run_id: str, checkpoint: str | Path) -> None:
    """The checkpoint's files as the run's `checkpoint` artifacts (a URI: downloaded first)."""
    from mfdiffuser.data import storage
    from mfdiffuser.platform import tracking

    if not storage.is_uri(checkpoint):
        tracking.log_artifact(uri, run_id, checkpoint, "checkpoint")
        return
    with tempfile.TemporaryDirectory(prefix="mfd-ckpt-") as tmp:
        storage.download_dir(str(checkpoint), tmp)
        tracking.log_artifact(uri, run_id, tmp, "checkpoint")


def _behaviour_metrics(behaviour: dict[str, Any]) -> dict[str, float]:
    """The behaviour policy's figures from a manifest (team games have no exploitability)."""
    from mfdiffuser.platform.names import BEHAVIOUR_METRICS

    # imported data: `unknown` where the behaviour is not known, estimates beside
    return {
        k: float(behaviour[v])
        for k, v in BEHAVIOUR_METRICS.items()
        if isinstance(behaviour.get(v), int | float) and not isinstance(behaviour[v], bool)
    }


def _estimate_tags(metrics: dict[str, float], behaviour: dict[str, Any]) -> dict[str, str]:
    """Tags of a run on imported data: the behaviour is unknown, these metrics are estimates."""
    from mfdiffuser.platform.names import BEHAVIOUR_TAG, ESTIMATE_SUFFIX, ESTIMATES_TAG

    if behaviour.get("source") != "imported":
        return {}
    estimates = sorted(k for k in metrics if k.endswith(ESTIMATE_SUFFIX))
    return {BEHAVIOUR_TAG: "unknown", ESTIMATES_TAG: ",".join(estimates)}


def evaluate(
    checkpoint: str | Path,
    *,
    n_agents: list[int] | None = None,
    episodes: int | None = None,
    seeds: int | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    address: str | None = None,
    end_run: bool = True,
    opponents: list[str] | None = None,
) -> dict[str, Any]:
    """Roll the planner out with Ray actors at each N and log the figures to MLflow.

    Team games play team 0 against each of `opponents` (default: the benchmark's scripted ones
    and `self`); a checkpoint opponent must be of the same benchmark (ConfigError, before Ray).

    The checkpoint is provenance, never authority: the store and the Ray cluster are the
    caller's (`tracking_uri`/MLFLOW_TRACKING_URI/./mlflow.db, `address`/RAY_ADDRESS/local),
    whatever the checkpoint records. The figures go into the checkpoint's training run when this
    store holds it (its status untouched, the evaluation's own outcome in `mfd.eval.status`),
    else into a new run; with `run_id` into that run, which the caller owns.
    """
    from mfdiffuser.data import storage
    from mfdiffuser.data.manifest import read_manifest
    from mfdiffuser.data.verify import verify_dataset
    from mfdiffuser.methods.checkpoint import load_checkpoint, read_meta
    from mfdiffuser.platform import tracking
    from mfdiffuser.platform.runtime import check_storage_on_nodes, ray_session
    from mfdiffuser.workers.rollout import evaluate_checkpoint

    if storage.is_uri(checkpoint):  # no credentials, or an endpoint that does not answer
        try:
            storage.check_store(str(checkpoint), "checkpoint")
        except storage.StorageError as err:
            raise ConfigError(str(err)) from None
    elif not Path(checkpoint).is_dir():
        raise ConfigError(f"checkpoint = {str(checkpoint)!r}: no such directory")
    meta = read_meta(checkpoint)
    try:
        cfg = ExperimentConfig.model_validate(meta["config"])
    except ValidationError as err:
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r}: its config is not valid here: "
            + validation_lines(err).replace("\n", "; ")
        ) from None
    updates: dict[str, Any] = {}
    if n_agents is not None:
        updates["n_agents"] = n_agents
    if episodes is not None:
        updates["episodes"] = episodes
    if seeds is not None:
        updates["seeds"] = seeds
    try:
        ev = cfg.eval.model_validate({**cfg.eval.model_dump(), **updates})
    except ValidationError as err:
        raise ConfigError(validation_lines(err, "eval")) from None
    check_method(cfg.model_copy(update={"eval": ev}))  # e.g. N above the method's agent limit
    _check_opponents(cfg, opponents)
    if ev.decomposition:  # the rollout actors re-read the dataset: verified here, before Ray
        verify_dataset(meta["dataset"])
    uri = resolve_and_check_tracking(tracking_uri)
    role = "caller" if run_id else "own"
    if run_id is None:
        made_in = meta.get("run_id")
        if made_in and tracking.get_run(uri, made_in) is not None:
            run_id, role = made_in, "training"
        else:
            run_id = tracking.start_run(cfg, uri, run_name=f"{cfg.name}-evaluate")
            if made_in:
                _notice(
                    f"the checkpoint's training run {made_in} (made in "
                    f"{meta.get('tracking_uri')}) is not in {uri}: logging into a new run {run_id}"
                )
    start = time.perf_counter()
    try:
        load_checkpoint(checkpoint)  # refused weights fail here, in one line, not in an actor
        # the checkpoint's names that are set here (provenance, not authority: the probe below
        # says if a node still cannot reach the checkpoint's store)
        forward = [n for n in cfg.runtime.forward_env if n in os.environ]
        with ray_session(address, forward_env=forward):
            check_storage_on_nodes(str(checkpoint), meta.get("dataset"))
            out = evaluate_checkpoint(
                checkpoint,
                ev.n_agents,
                episodes=ev.episodes,
                seeds=ev.seeds,
                seed=ev.seed,
                decomposition=ev.decomposition,
                actor_cpus=ev.actor_cpus,
                max_actors=ev.max_actors,
                opponents=opponents,
            )
        metrics = dict(out["metrics"])
        behaviour: dict[str, Any] = {}
        try:
            behaviour = read_manifest(meta["dataset"]).behaviour
            metrics.update(_behaviour_metrics(behaviour))
        except (FileNotFoundError, KeyError, ValueError):
            pass  # the dataset is gone; the policy's own metrics still stand
        metrics["eval/seconds"] = time.perf_counter() - start
        logged = {k: v for k, v in metrics.items() if not k.startswith("behaviour/")}
        if "behaviour/data_return" not in _run_metrics(uri, run_id):
            logged = metrics
        tracking.log_metrics(uri, run_id, logged)
        if tags := _estimate_tags(metrics, behaviour):
            tracking.set_tags(uri, run_id, tags)
        _log_json(
            uri,
            run_id,
            {
                "returns": out["returns"],
                "table_returns": out["table_returns"],
                "table": out["table"],
                "opponents": out.get("opponents", {}),  # a team game's key name -> opponent
            },
            "evaluation",
            "evaluation.json",
        )
    except BaseException as err:
        if role == "own":
            tracking.fail_run(uri, run_id, err)
        elif role == "training":
            tracking.record_evaluation(uri, run_id, err)
        raise
    if role == "training":
        tracking.record_evaluation(uri, run_id, None)
    elif role == "own" and end_run:
        tracking.end_run(uri, run_id)
    return {
        "metrics": metrics,
        "run_id": run_id,
        "tracking_uri": uri,
        "returns": out["returns"],
        "opponents": out.get("opponents", {}),
    }


def crossplay(
    checkpoints: list[str], *, n_agents: int | None = None, episodes: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Every checkpoint against every one (itself too) on their team game, in-process: the
    row's checkpoint plays team 0, the column's team 1 (`mfdiffuser.evaluation.team`), at N
    agents per team (default: the first checkpoint's data.n_agents), `episodes` seeded
    episodes per pair. Players are named as evaluation names a checkpoint opponent
    (`checkpoint_<id>`); `win_rate[r][c]` and `kill_ratio[r][c]` are the row's."""
    from mfdiffuser.evaluation.team import team_scores
    from mfdiffuser.methods import team
    from mfdiffuser.methods.checkpoint import load_checkpoint, read_meta
    from mfdiffuser.methods.registry import get_method
    from mfdiffuser.platform import tracking

    allowed = "two or more checkpoint directories trained on one team game"
    if len(checkpoints) < 2:
        raise ConfigError(f"CHECKPOINT = {checkpoints}: allowed: {allowed}")
    if episodes < 1:
        raise ConfigError(f"--episodes = {episodes}: allowed: 1 or more")
    metas = []
    for c in checkpoints:
        try:
            metas.append(read_meta(c))
        except (FileNotFoundError, ValueError):
            raise ConfigError(f"CHECKPOINT = {c!r}: not a checkpoint; allowed: {allowed}") from None
    names = [tracking.opponent_name(c, []) for c in checkpoints]
    if len(set(names)) < len(names):
        raise ConfigError(f"CHECKPOINT = {checkpoints}: a checkpoint twice; allowed: {allowed}")
    bench_cfg = metas[0].get("config", {}).get("benchmark", {})
    spec = get_benchmark(str(bench_cfg.get("name")))
    for c, meta in zip(checkpoints, metas, strict=True):
        made_on = meta.get("config", {}).get("benchmark", {}).get("name")
        if spec.simulator is None or made_on != spec.name:
            raise ConfigError(f"CHECKPOINT = {c!r}: a checkpoint of {made_on}; allowed: {allowed}")
    sim_spec = spec.simulator
    assert sim_spec is not None
    n = n_agents if n_agents is not None else int(metas[0]["config"]["data"]["n_agents"])
    if n < 1:
        raise ConfigError(f"--n-agents = {n}: allowed: 1 or more agents per team")
    try:
        params = sim_spec.with_agents(spec.params(bench_cfg.get("params", {})), n)
    except ValidationError as err:
        raise ConfigError(f"--n-agents = {n}: {err.errors()[0]['msg']}") from None
    for c, meta in zip(checkpoints, metas, strict=True):
        reason = get_method(meta["method"]["name"]).cannot_run(spec, [n])
        if reason is not None:
            raise ConfigError(f"CHECKPOINT = {c!r}: {reason}")
    layout = sim_spec.layout(params)
    methods = [load_checkpoint(c)[0] for c in checkpoints]
    k = len(methods)
    scores = [
        [
            team_scores(
                sim_spec.make_sim(params),
                layout,
                sim_spec.scripted,
                team.TeamPolicy(methods[r], layout, seed),
                team.TeamPolicy(methods[c], layout, seed + 1),
                episodes,
                seed,
            )
            for c in range(k)
        ]
        for r in range(k)
    ]
    return {
        "benchmark": spec.name,
        "n_agents": n,
        "episodes": episodes,
        "players": dict(zip(names, checkpoints, strict=True)),
        "win_rate": [[s["win_rate"] for s in row] for row in scores],
        "kill_ratio": [[s["kill_ratio"] for s in row] for row in scores],
    }


def resolve_and_check_tracking(explicit: str | None, workdir: str | Path = ".") -> str:
    from mfdiffuser.platform.tracking import check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(explicit, workdir)
    check_tracking_uri(uri)
    return uri


def run_experiment(
    cfg: ExperimentConfig, workdir: str | Path = ".", *, resume: bool = False
) -> dict[str, Any]:
    """generate -> train -> evaluate, all in one MLflow run.

    An interrupted run of the same config (KILLED, FAILED or left RUNNING) is continued with
    `resume=True`: the same MLflow run, training from its last checkpoint, each epoch's metrics
    logged once. Without it such a run is only pointed out, and a new run starts.
    """
    from mfdiffuser.platform import tracking

    check_method(cfg)  # as `train` does, but before this run or its Ray start
    check_local_data_path(cfg)
    uri = _tracking(cfg, workdir)
    start = time.perf_counter()
    previous = tracking.find_unfinished_run(uri, cfg, role="run")
    run_id, resumed = None, previous is not None and resume
    if resumed:
        run_id = str(previous.info.run_id)
        _notice(f"resuming run {run_id} ({previous.info.status}) from its last checkpoint")
        tracking.set_running(uri, run_id)
    elif previous is not None:
        _notice(
            f"run {previous.info.run_id} of this config did not finish "
            f"({previous.info.status}): pass --resume to continue it; starting a new run"
        )
    elif resume:
        _notice("no unfinished run of this config to resume: starting a new run")
    run_id = run_id or tracking.start_run(cfg, uri, run_name=cfg.name, tags={"mfd.role": "run"})
    try:
        with _ray(cfg):
            trained = train(cfg, tracking_uri=uri, run_id=run_id, end_run=False)
            evaluated = evaluate(trained["checkpoint"], tracking_uri=uri, run_id=run_id)
        tracking.log_metrics(uri, run_id, {"wall_seconds": time.perf_counter() - start})
    except BaseException as err:
        tracking.fail_run(uri, run_id, err)
        raise
    tracking.end_run(uri, run_id)
    return {
        **trained,
        "metrics": evaluated["metrics"],
        "wall_seconds": time.perf_counter() - start,
        "experiment": tracking.experiment_name(cfg),
        "resumed": resumed,
    }


def quickstart(
    workdir: str | Path = "mfd-quickstart",
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
) -> dict[str, Any]:
    """The whole flow on the small preset, with the store and MLflow DB inside `workdir`."""
    wd = Path(workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    cfg = load_config(
        QUICKSTART_CONFIG,
        [f"runtime.storage={wd / 'store'}", *(overrides or [])],
    )
    from mfdiffuser.platform import tracking

    if cfg.runtime.tracking_uri is None:
        cfg.runtime.tracking_uri = tracking.resolve_tracking_uri(None, wd)
    out = run_experiment(cfg, wd, resume=resume)
    out["workdir"] = str(wd)
    mfd = Path(sys.executable).parent / "mfd"  # the venv's: its bin directory may not be on PATH
    out["mlflow_ui_command"] = f"{mfd} ui --tracking-uri {cfg.runtime.tracking_uri}"
    run = tracking.client(cfg.runtime.tracking_uri).get_run(out["run_id"])
    out["mlflow_ui_url"] = tracking.ui_url(
        experiment_id=run.info.experiment_id, run_id=run.info.run_id
    )
    return out


def reading_store(tracking_uri: str | None) -> str:
    """The store a command that only reads uses: it must answer, and a SQLite store exist."""
    uri = resolve_and_check_tracking(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--tracking-uri = {uri}: no such store (the file does not exist)")
    return uri


def table(sweep: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """The comparison table of a sweep (`mfdiffuser.evaluation.comparison`) from its parent
    run id or sweep id: every method per (benchmark, quality, N, other axes) over seeds, the win
    counts, the trials that are missing (failed, unfinished) and the cells the sweep skipped.
    Reads the store only; `warnings` lists the intervals left out for want of a second seed."""
    import warnings

    from mfdiffuser.evaluation.comparison import SingleSeedWarning, comparison_table
    from mfdiffuser.platform import tracking

    uri = reading_store(tracking_uri)
    found = tracking.sweep_results(uri, sweep)
    tracking.check_finished(sweep, found)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SingleSeedWarning)
        result = comparison_table(found["records"], found["skipped"])
    ours = [w for w in caught if issubclass(w.category, SingleSeedWarning)]
    for w in caught:  # any other warning goes on as it came
        if w not in ours:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return {
        **{k: found[k] for k in ("sweep", "sweep_id", "parent_run_id")},
        "tracking_uri": uri,
        **result,
        "missing": found["missing"],
        "warnings": [str(w.message) for w in ours],
    }


def report(
    out: str | Path,
    *,
    sweep: str | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """A sweep's figures logged into MLflow (the parent run and each trial's run) and a static
    HTML report written into `out` (`mfdiffuser.dashboards.report`); reads the sweep by its
    parent run id or sweep id, or the newest sweep of an experiment."""
    from mfdiffuser.dashboards.report import check_out, write_report

    if (sweep is None) == (experiment is None):
        raise ConfigError("--sweep / --experiment: give exactly one of them")
    check_out(Path(out))
    uri = reading_store(tracking_uri)
    return write_report(uri, sweep=sweep, experiment=experiment, out=Path(out))


def _run_metrics(uri: str, run_id: str) -> dict[str, float]:
    from mfdiffuser.platform import tracking

    return dict(tracking.client(uri).get_run(run_id).data.metrics)


def _log_json(
    uri: str, run_id: str, obj: Any, artifact_path: str, name: str, as_yaml: bool = False
) -> None:
    from mfdiffuser.platform import tracking

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / name
        text = (
            yaml.safe_dump(obj, sort_keys=False)
            if as_yaml
            else json.dumps(obj, indent=2, default=_json_default)
        )
        p.write_text(text)
        tracking.log_artifact(uri, run_id, p, artifact_path or None)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)
