"""The one experiment config: benchmark, data, planner, training, evaluation, runtime.

Loaded from YAML (`configs/*.yaml`) and overridden with `-s key=value`. Every value is validated
here, before any Ray work starts; errors name the field, the value and what is allowed.
This module is pure pydantic: it imports neither Ray nor MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mfdiffuser.envs.behaviour import QUALITIES
from mfdiffuser.envs.registry import BENCHMARKS, did_you_mean, get_benchmark, unknown_benchmark
from mfdiffuser.planner.config import PlannerConfig


class ConfigError(ValueError):
    """A bad config value; `str()` is one line per problem, each naming field, value, allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BenchmarkSection(_Section):
    name: str = Field("crowd_1d", description="registered benchmark name (`mfd benchmarks`)")
    params: dict[str, Any] = Field(default_factory=dict, description="benchmark parameters")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in BENCHMARKS:
            raise ValueError(unknown_benchmark(name))
        return name

    @model_validator(mode="after")
    def _params_valid(self) -> BenchmarkSection:
        spec = get_benchmark(self.name)
        try:
            validated = spec.params(self.params).model_dump()
        except ValidationError as err:
            raise ValueError(validation_lines(err, prefix="params").replace("\n", "; ")) from None
        # Store the complete, defaulted parameter set so every artifact records all of it.
        object.__setattr__(self, "params", validated)
        return self

    @property
    def horizon(self) -> int:
        """Decision epochs per episode, from the registry (not every benchmark has a `horizon`
        parameter: the stage games are always 2)."""
        return get_benchmark(self.name).horizon(self.params)


class DataSection(_Section):
    quality: str = Field("expert", description=f"behaviour data quality: {', '.join(QUALITIES)}")
    n_agents: int = Field(100, ge=1, description="agents per episode (N)")
    episodes: int = Field(40, ge=1, description="episodes in the dataset")
    shards: int = Field(4, ge=1, description="Parquet shards (units of parallel generation)")
    seed: int = Field(0, ge=0)
    path: str | None = Field(None, description="use this existing dataset instead of generating")

    @field_validator("quality")
    @classmethod
    def _quality(cls, q: str) -> str:
        if q not in QUALITIES:
            raise ValueError(f"allowed: {', '.join(QUALITIES)}")
        return q

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: str | None) -> str | None:
        if path is not None and "://" not in path and not (Path(path) / "manifest.json").is_file():
            raise ValueError("no dataset there (expected a directory with manifest.json)")
        return path


class TrainSection(_Section):
    epochs: int = Field(3, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1, description="windows per worker per step")
    lr: float = Field(1e-3, gt=0)
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool | None = Field(None, description="None = use GPUs when the cluster has them")
    seed: int = Field(0, ge=0)
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")


class EvalSection(_Section):
    n_agents: list[int] = Field(default_factory=lambda: [100, 1000], min_length=1)
    episodes: int = Field(2, ge=1, description="episodes per (N, seed)")
    seeds: int = Field(1, ge=1, description="independent seeds per N")
    seed: int = Field(0, ge=0)
    decomposition: bool = Field(
        True, description="log the four-term suboptimality decomposition (finite games)"
    )
    plan_windows: int = Field(
        8, ge=0, description="held-out windows for trajectory MMD and dynamics (0 = skip)"
    )
    held_out_episodes: int = Field(
        2, ge=1, description="fresh behaviour episodes the plans are compared with"
    )
    actor_cpus: float = Field(1.0, gt=0, description="CPUs each rollout actor asks for")
    max_actors: int | None = Field(
        None, ge=1, description="rollout actors per evaluation (None = one per cluster CPU)"
    )

    @field_validator("n_agents")
    @classmethod
    def _positive(cls, ns: list[int]) -> list[int]:
        bad = [n for n in ns if n < 1]
        if bad:
            raise ValueError(f"every N must be >= 1, got {bad}")
        return ns


class RuntimeSection(_Section):
    address: str | None = Field(None, description="Ray address; None = RAY_ADDRESS or local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (None = all)")
    storage: str = Field("mfd-work", description="datasets and checkpoints (path or URI)")
    tracking_uri: str | None = Field(None, description="None = MLFLOW_TRACKING_URI or SQLite")
    experiment: str | None = Field(None, description="MLflow experiment; None = benchmark name")


class ExperimentConfig(_Section):
    name: str = "experiment"
    benchmark: BenchmarkSection = Field(default_factory=BenchmarkSection)
    data: DataSection = Field(default_factory=DataSection)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)

    @model_validator(mode="after")
    def _window_fits(self) -> ExperimentConfig:
        horizon = self.benchmark.horizon
        if "window" not in self.planner.model_fields_set and self.planner.window > horizon:
            # The default window is capped at short episodes (stage games: 2), so that
            # `mfd generate left_right` needs no planner setting it never uses.
            planner = PlannerConfig.model_validate(
                {**self.planner.model_dump(exclude_unset=True), "window": horizon}
            )
            object.__setattr__(self, "planner", planner)
        if self.planner.window > horizon:
            raise ValueError(
                f"planner.window = {self.planner.window} is longer than the benchmark's horizon "
                f"{horizon}; allowed: 1..{horizon}"
            )
        return self


def _format_error(err: Any, prefix: str = "") -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    field = ".".join(p for p in (prefix, loc) if p)
    msg = err.get("msg", "").removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], dict) and field:
        return f"{field} = {err['input']!r}: {msg}"
    return f"{field}: {msg}" if field else msg


def validation_lines(err: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line per problem: field (under `prefix`), value, what is allowed."""
    return "\n".join(_format_error(e, prefix=prefix) for e in err.errors())


def _validate(data: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_lines(err)) from None


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Map of dotted path -> leaf name for every scalar field of the config tree."""
    out: dict[str, str] = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        path = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_leaf_fields(ann, path + "."))
        elif name != "params":
            out[path] = name
    return out


def resolve_key(key: str, benchmark: str) -> list[str]:
    """Resolve an override key to its dotted path.

    Dotted keys are taken as they are. A bare key is a benchmark parameter if the benchmark has it
    (`size`, `horizon`), else the one config field with that name (`n_agents` is ambiguous:
    `data.n_agents` vs `eval.n_agents`, so the data one wins as the benchmark-facing N).
    """
    spec = get_benchmark(benchmark)
    leaves = _leaf_fields(ExperimentConfig)
    params = list(spec.params_model.model_fields)
    if "." in key:
        paths = [*leaves, *(f"benchmark.params.{p}" for p in params)]
        if key not in paths:
            section = key.rsplit(".", 1)[0] + "."
            fields = [p.removeprefix(section) for p in paths if p.startswith(section)]
            sections = sorted({p.split(".")[0] for p in paths})
            # within a known section, only its field names compete (not the shared prefix)
            hint = (
                did_you_mean(key.removeprefix(section), fields, section)
                if fields
                else did_you_mean(key, paths)
            )
            raise ConfigError(
                f"-s {key}: unknown setting{hint}; allowed: "
                + (f"{section}{{{', '.join(fields)}}}" if fields else ", ".join(sections))
            )
        return key.split(".")
    if key in params:
        return ["benchmark", "params", key]
    if key == "n_agents":
        return ["data", "n_agents"]
    matches = [p for p, leaf in leaves.items() if leaf == key]
    if len(matches) == 1:
        return matches[0].split(".")
    if not matches:
        raise ConfigError(
            f"-s {key}: unknown setting{did_you_mean(key, [*params, *leaves.values()])}; use a "
            f"dotted path (e.g. planner.window) or one of the {benchmark} parameters: "
            f"{', '.join(params)}"
        )
    raise ConfigError(f"-s {key}: ambiguous, say which: {', '.join(matches)}")


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"-s {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    base: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """YAML file (optional) + `key=value` overrides -> validated config, or ConfigError."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config = {str(path)!r}: no such file")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"--config = {str(path)!r}: not valid YAML ({err})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config = {str(path)!r}: must hold a mapping of sections")
        data = _deep_merge(data, loaded)
    items = [parse_override(item) for item in overrides or []]
    # Bare keys are the final benchmark's parameters, wherever `-s benchmark=…` stands.
    names = [str(v) for k, v in items if k in ("benchmark", "benchmark.name")]
    benchmark = names[-1] if names else str(data.get("benchmark", {}).get("name", "crowd_1d"))
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark.name = {benchmark!r}: {unknown_benchmark(benchmark)}")
    for key, value in items:
        node = data
        parts = ["benchmark", "name"] if key == "benchmark" else resolve_key(key, benchmark)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"-s {key}: {part} is not a section")
        node[parts[-1]] = value
    return _validate(data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out
