"""Tune sweeps over N, H, data quality, method, β, M and seeds.

A sweep file is an experiment config (the same sections as `configs/quickstart.yaml`) plus a
`sweep:` section:

    sweep:
      grid:                      # every combination is one trial
        n_agents: [100, 1000]
        quality: [expert, medium]
        seed: [0, 1, 2]
      transitions_per_dataset: 40000   # optional: episodes = ceil(this / (N * horizon))

Each trial is dataset -> train -> evaluate. The driver validates every trial's config before
anything starts, generates each distinct dataset once (datasets are content-addressed, so every
trial of the same (benchmark, N, quality, seed, episodes) reuses it), then runs a Ray Tune
experiment whose function trainable runs the Ray Train `TorchTrainer` and the rollout actors from
inside the trial. MLflow: one parent run per sweep, one child run per trial (tag
`mlflow.parentRunId`), found again by its trial key on `--resume`, so an interrupted sweep
finishes with exactly one FINISHED run per trial.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.methods.registry import METHODS, get_method, unknown_method
from mfdiffuser.platform.config import (
    MAX_AGENT_STEPS,
    MAX_CPUS,
    ConfigError,
    ExperimentConfig,
    parse_override,
    read_yaml_file,
    resolve_key,
    validation_lines,
)
from mfdiffuser.platform.names import derived_name

# Named axes -> the config paths they set. Any dotted config path is an axis too.
AXES: dict[str, list[str]] = {
    "n_agents": ["data.n_agents"],
    "N": ["data.n_agents"],
    "window": ["method.params.window"],
    "H": ["method.params.window"],
    "horizon": ["benchmark.params.horizon"],
    "quality": ["data.quality"],
    "beta": ["method.params.beta"],
    "particles": ["method.params.max_particles"],
    "M": ["method.params.max_particles"],
    # One seed for the whole trial: its dataset, its training and its evaluation.
    "seed": ["data.seed", "train.seed", "eval.seed"],
    "method": ["method.name"],  # any registered method (`mfd methods`)
}


class SweepSection(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    grid: dict[str, list[Any]] = Field(description="axis -> values; one trial per combination")
    transitions_per_dataset: int | None = Field(
        None,
        ge=1,
        le=MAX_AGENT_STEPS,
        description="hold agent-transitions per dataset fixed across N: "
        "episodes = ceil(this / (N * horizon)) (so coverage does not change with N)",
    )
    max_concurrent_trials: int | None = Field(
        None,
        ge=1,
        le=MAX_CPUS,
        description="None = as many as the cluster's CPUs fit Train worker groups",
    )
    trial_cpus: float = Field(
        0.01,
        gt=0,
        le=MAX_CPUS,
        description="CPUs of the trial process itself (its Train workers ask apart)",
    )
    eval_at_trial_n: bool = Field(
        True, description="evaluate each trial at its own N (else at eval.n_agents)"
    )
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per method, settings for its trials only (`-s`-style keys: train.epochs, "
        "a method parameter such as hidden); e.g. a training budget per method",
    )

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not grid:
            raise ValueError("empty grid: give at least one axis with at least one value")
        empty = [k for k, v in grid.items() if not v]
        if empty:
            raise ValueError(f"axis {', '.join(empty)} has no values")
        return grid


class Trial(BaseModel):
    """One grid point: its axis values, a stable key and the full experiment config."""

    axes: dict[str, Any]
    key: str
    config: dict[str, Any]

    @property
    def trial_id(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:12]

    @property
    def method(self) -> str:
        return str(self.config["method"]["name"])


class Skipped(BaseModel):
    """A grid cell that cannot run (e.g. a method above its agent limit), with the reason."""

    axes: dict[str, Any]
    key: str
    method: str
    benchmark: str
    quality: str
    n_agents: int
    seed: int
    reason: str


class Sweep(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    section: SweepSection
    base: dict[str, Any]
    trials: list[Trial]
    skipped: list[Skipped] = Field(default_factory=list)

    @property
    def sweep_id(self) -> str:
        spec = {"name": self.name, "trials": [t.key for t in self.trials], "base": self.base}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[
            :12
        ]

    def experiment_config(self, trial: Trial) -> ExperimentConfig:
        return ExperimentConfig.model_validate(trial.config)


def _axis_paths(axis: str, benchmark: str, method: str) -> list[list[str]]:
    if axis in AXES:
        return [p.split(".") for p in AXES[axis]]
    if "." not in axis:
        raise ConfigError(
            f"sweep.grid.{axis}: unknown axis; allowed: {', '.join(AXES)} "
            "or a dotted config path (e.g. train.lr)"
        )
    return [resolve_key(axis, benchmark, method)]


def _set(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _lacks(path: list[str], method: str) -> str | None:
    """Why a method cannot take a setting of method.params (None: it can)."""
    if path[:2] != ["method", "params"]:
        return None
    spec = get_method(method)
    name = path[2]
    if name in spec.fixed:
        return f"{method} fixes {name} = {spec.fixed[name]!r}"
    if name not in spec.params_model.model_fields:
        return f"{method} has no parameter {name}"
    return None


def _trial_name(cfg: ExperimentConfig, axes: dict[str, Any]) -> str:
    """`<benchmark>-<quality>-N<N>-<method>-seed<seed>`, plus any other axis values."""
    named = {"n_agents", "N", "quality", "seed", "method"}
    rest = "-".join(
        f"{k.rsplit('.', 1)[-1]}{json.dumps(v, sort_keys=True)}"
        for k, v in axes.items()
        if k not in named
    )
    name = f"{cfg.benchmark.name}-{cfg.data.quality}-N{cfg.data.n_agents}-{cfg.method.name}"
    return derived_name(name, f"seed{cfg.train.seed}" + (f"-{rest}" if rest else ""))


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Parse and validate a sweep file; every trial's config is validated before anything runs.

    A cell a method cannot run (above its agent limit, a parameter it does not have, a benchmark
    it cannot handle) is skipped with its reason; a grid with no runnable cell is an error."""
    raw = read_yaml_file(path) or {}
    if not isinstance(raw, dict) or "sweep" not in raw:
        raise ConfigError(f"--config = {str(path)!r}: a sweep file needs a `sweep:` section")
    try:
        section = SweepSection.model_validate(raw.pop("sweep") or {})
    except ValidationError as err:
        raise ConfigError(validation_lines(err, "sweep")) from None
    try:  # `planner:` is an alias of method.params: resolved once, in the base
        base: dict[str, Any] = ExperimentConfig._planner_alias(raw)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    benchmark = str(base.get("benchmark", {}).get("name", "crowd_1d"))
    base_method = str((base.get("method") or {}).get("name", "mf_diffuser"))
    for item in overrides or []:
        key, value = parse_override(item)
        _set(base, resolve_key(key, benchmark, base_method), value)
    methods = [str(v) for v in section.grid.get("method", [base_method])]
    for name in [*methods, *section.methods]:
        if name not in METHODS:
            raise ConfigError(f"sweep.grid.method = {name!r}: {unknown_method(name)}")
    # The base's method parameters go to each method that has them; one no method has is a typo.
    given = (base.get("method") or {}).get("params") or {}
    for key in given:
        if not any(key in get_method(m).params_model.model_fields for m in methods):
            raise ConfigError(
                f"method.params.{key}: no method of this sweep ({', '.join(methods)}) has it; "
                "see `mfd methods`"
            )
    # Validate the base once so its own errors are not reported once per trial.
    try:
        method_base = _method_base(base.get("method") or {}, methods[0])
        ExperimentConfig.model_validate({**base, "method": method_base})
    except ValidationError as err:
        raise ConfigError(validation_lines(err)) from None
    per_method = {
        name: [
            (resolve_key(str(k), benchmark, name), v)
            for k, v in section.methods.get(name, {}).items()
        ]
        for name in methods
    }
    for axis in section.grid:  # an axis any of the methods takes (others skip it per cell)
        errors = []
        for name in methods:
            try:
                _axis_paths(axis, benchmark, name)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == len(methods):
            raise errors[0]
    axes = list(section.grid)
    trials: list[Trial] = []
    skipped: list[Skipped] = []
    for combo in itertools.product(*(section.grid[a] for a in axes)):
        assignment = dict(zip(axes, combo, strict=True))
        method = str(assignment.get("method", base_method))
        data = copy.deepcopy(base)  # a trial's settings must not leak into the next
        data["method"] = _method_base(base.get("method") or {}, method)
        reasons = []
        for path_, value in per_method[method]:
            _set(data, path_, value)
        for axis, value in assignment.items():
            for path_ in _axis_paths(axis, benchmark, method):
                reason = _lacks(path_, method)
                if reason:
                    reasons.append(f"{axis}: {reason}")
                else:
                    _set(data, path_, value)
        try:
            cfg = ExperimentConfig.model_validate(data)
        except ValidationError as err:
            where = ", ".join(f"{k}={v!r}" for k, v in assignment.items())
            raise ConfigError(f"sweep trial ({where}): {validation_lines(err)}") from None
        if section.transitions_per_dataset is not None:
            per_episode = cfg.data.n_agents * cfg.benchmark.horizon
            cfg.data.episodes = max(1, math.ceil(section.transitions_per_dataset / per_episode))
            cfg.data.shards = min(cfg.data.shards, cfg.data.episodes)
        if section.eval_at_trial_n:
            cfg.eval.n_agents = [cfg.data.n_agents]
        key = ",".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in assignment.items())
        cannot = get_method(method).cannot_run(
            get_benchmark(cfg.benchmark.name), [cfg.data.n_agents, *cfg.eval.n_agents]
        )
        if cannot:
            reasons.append(cannot)
        if reasons:
            skipped.append(
                Skipped(
                    axes=assignment,
                    key=key,
                    method=method,
                    benchmark=cfg.benchmark.name,
                    quality=cfg.data.quality,
                    n_agents=cfg.data.n_agents,
                    seed=cfg.train.seed,
                    reason="; ".join(reasons),
                )
            )
            continue
        # A trial's name becomes directory names: safe characters only (the key is a tag).
        cfg.name = _trial_name(cfg, assignment)
        trials.append(Trial(axes=assignment, key=key, config=cfg.model_dump()))
    if len({t.key for t in trials} | {c.key for c in skipped}) != len(trials) + len(skipped):
        raise ConfigError("sweep.grid: repeated values make duplicate trials")
    if not trials:
        first = skipped[0]
        raise ConfigError(
            f"sweep.grid: every one of the {len(skipped)} cells is skipped, e.g. ({first.key}): "
            f"{first.reason}"
        )
    return Sweep(
        name=str(raw.get("name", "sweep")),
        section=section,
        base=base,
        trials=trials,
        skipped=skipped,
    )


def _method_base(section: dict[str, Any], method: str) -> dict[str, Any]:
    """The base config's method section for a trial of `method`: the base's parameters that
    this method has (a shared `window` or `hidden`), not the ones it lacks or pins."""
    spec = get_method(method)
    params = {
        k: v
        for k, v in (section.get("params") or {}).items()
        if k in spec.params_model.model_fields and k not in spec.fixed
    }
    return {"name": method, "params": params}


# --------------------------------------------------------------------------------- MLflow runs


def _client(uri: str) -> Any:

    from mfdiffuser.platform import tracking

    return tracking.client(uri)


def _find_runs(uri: str, experiment_id: str, tags: dict[str, str]) -> list[Any]:
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return list(_client(uri).search_runs([experiment_id], filter_string=where, max_results=1000))


def parent_run(sweep: Sweep, cfg: ExperimentConfig, uri: str, resume: bool) -> str:
    """The sweep's parent run: found again by its sweep id on --resume, else a new one."""
    from mfdiffuser.platform import tracking

    exp_id = tracking.ensure_experiment(uri, tracking.experiment_name(cfg))
    found = _find_runs(uri, exp_id, {"mfd.sweep_id": sweep.sweep_id, "mfd.role": "sweep"})
    if found and resume:
        run_id = str(found[0].info.run_id)
        _client(uri).update_run(run_id, status="RUNNING")
        return run_id
    client = _client(uri)
    run = client.create_run(
        exp_id,
        run_name=f"sweep-{sweep.name}",
        tags={
            "mfd.role": "sweep",
            "mfd.sweep": sweep.name,
            "mfd.sweep_id": sweep.sweep_id,
            "mfd.benchmark": cfg.benchmark.name,
            "mfd.trials": str(len(sweep.trials)),
        },
    )
    client.log_param(run.info.run_id, "grid", json.dumps(sweep.section.grid)[:6000])
    from mfdiffuser.api import _log_json

    skipped = [c.model_dump() for c in sweep.skipped]
    _log_json(uri, str(run.info.run_id), skipped, "sweep", "skipped.json")
    return str(run.info.run_id)


def trial_run(cfg: ExperimentConfig, trial: Trial, uri: str, parent: str) -> tuple[str, str]:
    """(run_id, status) of this trial's run under `parent`: the existing one (any status) or new."""
    from mfdiffuser.platform import tracking

    exp_id = tracking.ensure_experiment(uri, tracking.experiment_name(cfg))
    found = _find_runs(uri, exp_id, {"mlflow.parentRunId": parent, "mfd.trial_id": trial.trial_id})
    if found:
        run = max(found, key=lambda r: r.info.start_time)
        return str(run.info.run_id), str(run.info.status)
    run_id = tracking.start_run(cfg, uri, run_name=cfg.name)
    client = _client(uri)
    tags = {
        "mlflow.parentRunId": parent,
        "mfd.role": "trial",
        "mfd.trial_id": trial.trial_id,
        "mfd.trial_key": trial.key,
        "mfd.method": trial.method,
        **{f"mfd.axis.{k}": json.dumps(v) for k, v in trial.axes.items()},
    }
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    return run_id, "RUNNING"


# ------------------------------------------------------------------------------ the trainable


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: train (Ray Train inside the trial) -> evaluate -> report."""
    from ray import tune

    from mfdiffuser import api
    from mfdiffuser.platform import tracking

    trial = Trial.model_validate(config["trial"])
    uri, parent = config["tracking_uri"], config["parent_run"]
    cfg = ExperimentConfig.model_validate(trial.config)
    run_id, status = trial_run(cfg, trial, uri, parent)
    client = _client(uri)
    if status == "FINISHED":  # done before an interruption: report it, do not run it again
        metrics = dict(client.get_run(run_id).data.metrics)
        tune.report({**metrics, "mlflow_run_id": run_id, "skipped": 1})
        return
    client.update_run(run_id, status="RUNNING")
    start = time.perf_counter()
    try:  # the trial owns its run: it ends it, or fails it with the error
        trained = api.train(cfg, tracking_uri=uri, run_id=run_id, end_run=False)
        evaluated = api.evaluate(trained["checkpoint"], tracking_uri=uri, run_id=run_id)
        tracking.log_metrics(uri, run_id, {"wall_seconds": time.perf_counter() - start})
    except BaseException as err:
        tracking.fail_run(uri, run_id, err)
        raise
    tracking.end_run(uri, run_id)
    tune.report({**evaluated["metrics"], "mlflow_run_id": run_id, "skipped": 0})


# ------------------------------------------------------------------------------- the driver


def _concurrency(sweep: Sweep, cfg: ExperimentConfig) -> int:
    """Trials at once: as many as fit whole, so no trial waits half-placed for another's CPUs.

    A trial holds either its Train worker group or its rollout actors (never both at once).
    """
    import ray

    if sweep.section.max_concurrent_trials is not None:
        return sweep.section.max_concurrent_trials
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    train = cfg.train.num_workers * cfg.train.cpus_per_worker
    actors = (cfg.eval.max_actors or int(cpus / cfg.eval.actor_cpus)) * cfg.eval.actor_cpus
    return max(1, int((cpus + 1e-9) // max(train, actors)))


# Ray gives its head node this resource (1 unit); a tiny share pins a trial there.
HEAD_RESOURCE = "node:__internal_head__"
HEAD_SHARE = 0.001


def trial_dirname(trial: Any) -> str:
    """Short trial directories (Tune's default spells the whole config into the name)."""
    return f"trial_{trial.trial_id}"


def _last_line(err: BaseException) -> str:
    """The root cause of a trial error (a RayTaskError's text ends with the original one)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(err).__name__
    return re.sub(r"\x1b\[[0-9;]*m", "", text)[:500]


def check_sweep(sweep: Sweep, *, resume: bool = False) -> tuple[str, str, str]:
    """What can fail before Ray starts: an unusable tracking store, a sweep that already ran.

    Returns (tracking URI, absolute storage, Tune experiment directory)."""
    from mfdiffuser.platform.tracking import check_tracking_uri, resolve_tracking_uri

    first = sweep.experiment_config(sweep.trials[0])
    uri = resolve_tracking_uri(first.runtime.tracking_uri)
    check_tracking_uri(uri)
    storage = first.runtime.storage
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    exp_dir = f"{storage.rstrip('/')}/sweeps/{sweep.name}-{sweep.sweep_id}"
    if not resume and "://" not in exp_dir and Path(exp_dir).exists():
        raise ConfigError(
            f"sweep {sweep.name!r} already ran in {exp_dir}: pass --resume to continue it "
            "(finished trials are not run again), or give the sweep another name"
        )
    return uri, storage, exp_dir


def _progress_callback(total: int) -> Any:
    """A Tune callback that shows trials finished / running / failed, each named by its axes.

    Tune pickles it into the experiment (`tuner.pkl`) when the Tuner is made, and
    `Tuner.restore` (`mfd sweep --resume`) runs that copy: so the bar is made in `setup`, at
    the start of each run (a terminal's bar cannot be pickled), and a resumed run first counts
    the trials that finished before it from Tune's own list."""
    from ray import tune

    from mfdiffuser.platform.progress import Progress

    class SweepProgress(tune.Callback):
        def setup(self, **info: Any) -> None:
            self.bar = Progress("sweep", total, "trials finished")
            self.running: set[str] = set()
            self.failed: list[str] = []
            self.counted = False

        def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
            if not self.counted:  # a resumed run's finished trials start TERMINATED
                self.counted = True
                before = sum(t.status == "TERMINATED" for t in trials)
                if before:
                    self._move(before, f"resumed, {before} finished before")

        def _move(self, n: int, event: str) -> None:
            running = ", ".join(sorted(self.running)) or "none"
            failed = (
                f"{len(self.failed)} failed ({', '.join(self.failed)})"
                if self.failed
                else "0 failed"
            )
            self.bar.advance(n, f"{event}; running: {running}; {failed}")

        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self.running.add(_name(trial))
            self._move(0, f"started {_name(trial)}")

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self.running.discard(_name(trial))
            self._move(1, f"finished {_name(trial)}")

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self.running.discard(_name(trial))
            self.failed.append(_name(trial))
            self._move(1, f"failed {_name(trial)}")

        def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
            self.bar.close()

    return SweepProgress()


def _name(trial: Any) -> str:
    return str(trial.config["trial"]["config"]["name"])


def run_sweep(sweep: Sweep, *, resume: bool = False) -> dict[str, Any]:
    """Generate the datasets, run (or resume) the Tune experiment, summarise. Needs Ray."""
    from ray import tune

    from mfdiffuser.platform import tracking
    from mfdiffuser.platform.runtime import (
        check_fits,
        check_storage_on_nodes,
        check_tracking_store,
    )
    from mfdiffuser.workers.datagen import dataset_uri, generate_dataset

    first = sweep.experiment_config(sweep.trials[0])
    uri, storage, exp_dir = check_sweep(sweep, resume=resume)
    tune_path = exp_dir.rsplit("/", 1)[0]
    # Trials run in their own working directories: give them absolute locations.
    for trial in sweep.trials:
        trial.config["runtime"]["storage"] = storage
        trial.config["runtime"]["tracking_uri"] = uri
    check_fits(first, trial_cpus=sweep.section.trial_cpus)
    check_tracking_store(uri)
    check_storage_on_nodes(storage, first.data.path)
    start = time.perf_counter()
    tracking.ensure_experiment(uri, tracking.experiment_name(first))
    parent = parent_run(sweep, first, uri, resume)
    try:
        # Every distinct dataset once, before any trial: trials only read them.
        datasets: dict[str, str] = {}
        for trial in sweep.trials:
            cfg = sweep.experiment_config(trial)
            where, _ = dataset_uri(cfg)
            if where not in datasets:
                datasets[where] = generate_dataset(cfg)[0]
        tracking.log_metrics(uri, parent, {"sweep/datasets": float(len(datasets))})

        # The trial process sits on the head node: Ray Train's controller goes where the trial
        # runs, and a trial whose own process is lost fails whatever its checkpoints. The head
        # goes only with the whole cluster; a worker node lost under a Train worker group costs
        # a restart from its last checkpoint (train.max_failures) on the nodes left.
        trainable = tune.with_resources(
            run_trial,
            tune.PlacementGroupFactory(
                [{"CPU": sweep.section.trial_cpus, HEAD_RESOURCE: HEAD_SHARE}]
            ),
        )
        concurrency = _concurrency(sweep, first)
        if resume and tune.Tuner.can_restore(exp_dir):
            tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "trial": tune.grid_search([t.model_dump() for t in sweep.trials]),
                    "tracking_uri": uri,
                    "parent_run": parent,
                },
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=concurrency,
                    trial_dirname_creator=trial_dirname,
                    trial_name_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=f"{sweep.name}-{sweep.sweep_id}",
                    storage_path=tune_path,
                    verbose=1,
                    callbacks=[_progress_callback(len(sweep.trials))],
                ),
            )
        results = tuner.fit()
    except BaseException as err:
        tracking.fail_run(uri, parent, err)
        raise
    finished, failed, errors = 0, 0, []
    for res in results:
        if res.error is not None:
            failed += 1
            errors.append(_last_line(res.error))
        else:
            finished += 1
    summary = {
        "sweep/trials": float(len(sweep.trials)),
        "sweep/trials_finished": float(finished),
        "sweep/trials_failed": float(failed),
        "sweep/concurrency": float(concurrency),
        "sweep/wall_seconds": time.perf_counter() - start,
    }
    tracking.log_metrics(uri, parent, summary)
    tracking.end_run(uri, parent)
    return {
        "sweep": sweep.name,
        "sweep_id": sweep.sweep_id,
        "parent_run_id": parent,
        "tracking_uri": uri,
        "tune_path": exp_dir,
        "datasets": sorted(datasets),
        "errors": errors,
        "skipped": [f"{c.key}: {c.reason}" for c in sweep.skipped],
        **{k.removeprefix("sweep/"): v for k, v in summary.items()},
    }
