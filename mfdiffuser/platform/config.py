"""The one experiment config: benchmark, data, method, training, evaluation, runtime.

Loaded from YAML (`configs/*.yaml`) and overridden with `-s key=value`. Every value is validated
here, before any Ray work starts; errors name the field, the value and what is allowed.
This module is pure pydantic: it imports neither Ray nor MLflow.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from mfdiffuser.data.importing import FORMATS as IMPORT_FORMATS
from mfdiffuser.data.importing import IMPORTED
from mfdiffuser.envs.behaviour import QUALITIES
from mfdiffuser.envs.registry import BENCHMARKS, did_you_mean, get_benchmark, unknown_benchmark
from mfdiffuser.methods.registry import METHODS, get_method, unknown_method
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.platform.names import SafeName

# Bounds that keep one bad setting from exhausting the machine (documented on the fields).
MAX_CPUS = 1024  # per Train worker, per rollout actor, and Ray Train workers / actors per run
MAX_AGENTS = 10_000_000  # N of a dataset or of an evaluation
MAX_SEED = 2**32 - 1  # numpy and torch both take it
# Agent-steps (episodes x N x horizon) of a dataset shard, of an evaluation and of a Train
# worker's share on the `local` data path: 2e8 rows of (state, action, reward) are a few GB in
# one process's memory. A whole dataset may be larger (generated shard by shard, streamed to
# training by `train.data_path = ray_data`), up to 1e10 rows (about 20 GB of Parquet).
MAX_AGENT_STEPS = 200_000_000
MAX_DATASET_AGENT_STEPS = 10_000_000_000
MAX_YAML_BYTES = 1_000_000  # a config file or one -s value
MAX_DEPTH = 16  # nesting of YAML collections (a config needs at most 5: a matrix parameter)
MAX_SHOWN = 80  # characters of a value shown in an error message
MAX_LINES = 10  # problems listed in one error


class ConfigError(ValueError):
    """A bad config value; `str()` is one line per problem, each naming field, value, allowed."""


class _Section(BaseModel):
    # strict: a bool is not an int and "5" is not 5; finite floats only
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
    )


def _text(value: str) -> str:
    if not value or len(value) > 4096 or any(not c.isprintable() for c in value):
        raise ValueError("allowed: 1..4096 printable characters")
    return value


Text = Annotated[str, AfterValidator(_text)]  # paths, URIs, addresses


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
        raise ValueError(
            f"{value[:MAX_SHOWN]!r} is not an environment variable name; allowed: letters, "
            "digits and _, not starting with a digit"
        )
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


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
            # Strict in JSON mode: "5" is not 5 and true is not 1, but a list is a tuple, as YAML
            # and every JSON record (a checkpoint's meta.json) write them.
            raw = json.dumps(self.params, default=str)
            validated = spec.params_model.model_validate_json(raw, strict=True).model_dump()
        except ValidationError as err:
            lines = validation_lines(err, prefix="benchmark.params").splitlines()
            raise ValueError("; ".join(lines)) from None
        # Store the complete, defaulted parameter set so every artifact records all of it.
        object.__setattr__(self, "params", validated)
        return self

    @property
    def horizon(self) -> int:
        """Decision epochs per episode, from the registry (not every benchmark has a `horizon`
        parameter: the stage games are always 2)."""
        return get_benchmark(self.name).horizon(self.params)


class MethodSection(_Section):
    name: str = Field("mf_diffuser", description="registered method name (`mfd methods`)")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the method's parameters (`mfd methods`)"
    )
    # The parameters given (before defaults), so defaults can adapt to the benchmark.
    _given: set[str] = PrivateAttr(default_factory=set)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in METHODS:
            raise ValueError(unknown_method(name))
        return name

    @model_validator(mode="after")
    def _params_valid(self) -> MethodSection:
        spec = get_method(self.name)
        pinned = [
            f"method.params.{k} = {_shown(self.params[k])}: {self.name} fixes {k} = "
            f"{_shown(v)} (it is that variant); drop the setting or use another method"
            for k, v in spec.fixed.items()
            if k in self.params and self.params[k] != v
        ]
        if pinned:
            raise ValueError("; ".join(pinned))
        try:
            # Strict in JSON mode, as the benchmark's parameters.
            raw = json.dumps({**self.params, **spec.fixed}, default=str)
            validated = spec.params_model.model_validate_json(raw, strict=True).model_dump()
        except ValidationError as err:
            lines = validation_lines(err, prefix="method.params").splitlines()
            raise ValueError("; ".join(lines)) from None
        self._given = set(self.params)
        object.__setattr__(self, "params", validated)  # complete: every record holds all of it
        return self

    @property
    def settings(self) -> BaseModel:
        """The validated parameter object (e.g. a PlannerConfig for the MF-Diffuser family)."""
        return get_method(self.name).params(self.params)


class DataSection(_Section):
    quality: str = Field(
        "expert",
        description=f"behaviour data quality: {', '.join(QUALITIES)}; {IMPORTED} only for a "
        "dataset made by `mfd import` (data.path)",
    )
    n_agents: int = Field(
        100, ge=1, le=MAX_AGENTS, description=f"agents per episode (N), 1..{MAX_AGENTS:.0e}"
    )
    episodes: int = Field(
        40,
        ge=1,
        le=1_000_000,
        description=f"episodes in the dataset, 1..1e6; episodes x N x horizon <= "
        f"{MAX_DATASET_AGENT_STEPS:.0e} agent-steps, and <= {MAX_AGENT_STEPS:.0e} per shard (and "
        "per Train worker on train.data_path=local)",
    )
    shards: int = Field(
        4, ge=1, le=10_000, description="Parquet shards (units of parallel generation), 1..10000"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="0..2^32-1")
    path: Text | None = Field(None, description="use this existing dataset instead of generating")

    @field_validator("quality")
    @classmethod
    def _quality(cls, q: str) -> str:
        if q not in (*QUALITIES, IMPORTED):
            raise ValueError(f"allowed: {', '.join(QUALITIES)} ({IMPORTED}: imported data only)")
        return q

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: str | None) -> str | None:
        if path is None or "://" in path:
            return path
        if Path(path).is_file() and Path(path).suffix.lower() in IMPORT_FORMATS:
            raise ValueError(
                "a data file, not a dataset; make one from it with `mfd import "
                f"{path} <benchmark>` and pass the directory it prints"
            )
        if not (Path(path) / "manifest.json").is_file():
            raise ValueError("no dataset there (expected a directory with manifest.json)")
        # Absolute: Ray Train workers and rollout actors run in other working directories.
        return str(Path(path).resolve())

    @model_validator(mode="after")
    def _imported_needs_path(self) -> DataSection:
        if self.quality == IMPORTED and self.path is None:
            raise ValueError(
                f"quality = {IMPORTED!r}: allowed only with data.path, a dataset made by "
                f"`mfd import` (generated data: {', '.join(QUALITIES)})"
            )
        return self


class TrainSection(_Section):
    epochs: int = Field(3, ge=1, le=100_000, description="1..1e5")
    steps_per_epoch: int = Field(100, ge=1, le=1_000_000, description="1..1e6")
    batch_size: int = Field(
        16,
        ge=1,
        le=65_536,
        description="windows per worker per step, 1..65536; batch_size x the method's "
        "n_particles x window x hidden (those it has; madiff: its own activations, see "
        "`mfd methods`) <= 2^28 (1 GiB of float32 per activation)",
    )
    lr: float = Field(1e-3, gt=0, le=1000.0, description="learning rate, (0, 1000]")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="constant: train.lr at every step; cosine: half a cosine from train.lr at "
        "the first step to train.lr_min after the last (epochs x steps_per_epoch), by the global "
        "step, so a resumed fit continues on the same curve",
    )
    lr_min: float = Field(
        0.0, ge=0.0, le=1000.0, description="cosine: the rate it ends at, 0..train.lr"
    )
    num_workers: int = Field(
        2,
        ge=1,
        le=MAX_CPUS,
        description=f"Ray Train workers (DDP ranks), 1..{MAX_CPUS}; they must fit in the cluster",
    )
    cpus_per_worker: float = Field(
        1.0, gt=0, le=MAX_CPUS, description=f"CPUs each Train worker asks for, (0, {MAX_CPUS}]"
    )
    use_gpu: bool | None = Field(None, description="None = use GPUs when the cluster has them")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="0..2^32-1")
    max_failures: int = Field(
        1, ge=0, le=100, description="worker-group restarts from the last checkpoint, 0..100"
    )
    data_path: Literal["local", "ray_data"] = Field(
        "local",
        description="how Train workers read the dataset: local (each loads its shards whole) "
        "or ray_data (streamed through Ray Data into a buffer of train.buffer_episodes); "
        "finite-state games only (docs/data.md)",
    )
    buffer_episodes: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="ray_data: whole episodes a worker holds at once, 1..1e6; refilled once "
        "per epoch when its share of the data is larger",
    )
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each Train worker asks for besides its CPUs/GPU, e.g. "
        "{train_slot: 1} with nodes started with --resources '{\"train_slot\": 1}' (one worker "
        "per node); names other than CPU, GPU, memory; amounts > 0",
    )

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name.upper() in {"CPU", "GPU", "MEMORY", "OBJECT_STORE_MEMORY"} or not name:
                raise ValueError(
                    f"{name!r}: not a custom resource; allowed: any other name (CPUs: "
                    "train.cpus_per_worker, GPUs: train.use_gpu)"
                )
            if not (0 < amount <= 1_000_000):
                raise ValueError(f"{name} = {amount}: allowed: (0, 1e6]")
        return value

    @model_validator(mode="after")
    def _lr_min_below_lr(self) -> TrainSection:
        if self.lr_min > self.lr:
            raise ValueError(
                f"lr_min = {self.lr_min:g} is above lr = {self.lr:g}; allowed: 0..train.lr"
            )
        return self


class EvalSection(_Section):
    n_agents: list[int] = Field(
        default_factory=lambda: [100, 1000],
        min_length=1,
        max_length=100,
        description=f"population sizes, each 1..{MAX_AGENTS:.0e}; sum x episodes x seeds x "
        f"horizon <= {MAX_AGENT_STEPS:.0e} agent-steps",
    )
    episodes: int = Field(2, ge=1, le=10_000, description="episodes per (N, seed), 1..10000")
    seeds: int = Field(1, ge=1, le=1000, description="independent seeds per N, 1..1000")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="0..2^32-1")
    decomposition: bool = Field(
        True, description="log the four-term suboptimality decomposition (finite games)"
    )
    plan_windows: int = Field(
        8,
        ge=0,
        le=10_000,
        description="held-out windows for trajectory MMD and dynamics, 0..10000 (0 = skip)",
    )
    held_out_episodes: int = Field(
        2, ge=1, le=10_000, description="fresh behaviour episodes the plans are compared with"
    )
    actor_cpus: float = Field(
        1.0, gt=0, le=MAX_CPUS, description=f"CPUs each rollout actor asks for, (0, {MAX_CPUS}]"
    )
    max_actors: int | None = Field(
        None,
        ge=1,
        le=MAX_CPUS,
        description=f"rollout actors per evaluation, 1..{MAX_CPUS} (None = one per cluster CPU)",
    )

    @field_validator("n_agents")
    @classmethod
    def _positive(cls, ns: list[int]) -> list[int]:
        bad = [n for n in ns if not 1 <= n <= MAX_AGENTS]
        if bad:
            raise ValueError(f"every N must be 1..{MAX_AGENTS:.0e}, got {_shown(bad)}")
        return ns


class RuntimeSection(_Section):
    address: Text | None = Field(None, description="Ray address; None = RAY_ADDRESS or local Ray")
    num_cpus: int | None = Field(
        None, ge=1, le=MAX_CPUS, description=f"CPUs for a local Ray, 1..{MAX_CPUS} (None = all)"
    )
    storage: Text = Field("mfd-work", description="datasets and checkpoints (path or URI)")
    tracking_uri: Text | None = Field(None, description="None = MLFLOW_TRACKING_URI or SQLite")
    experiment: SafeName | None = Field(
        None, description="MLflow experiment (a name, see README); None = benchmark name"
    )
    forward_env: list[EnvName] = Field(
        default_factory=list,
        max_length=64,
        description="names of environment variables whose values here go to every Ray worker "
        "(e.g. AWS_ACCESS_KEY_ID for s3:// storage on a cluster); names only are logged",
    )

    @field_validator("forward_env", mode="before")
    @classmethod
    def _a_list_of_names(cls, names: Any) -> Any:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(
                "allowed: a list of environment variable names, e.g. "
                "[AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]"
            )
        return names

    @field_validator("forward_env")
    @classmethod
    def _unique_names(cls, names: list[str]) -> list[str]:
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed twice; allowed: each name once")
        return names


class ExperimentConfig(_Section):
    name: SafeName = Field(
        "experiment", description="run name, part of checkpoint directories (a name, see README)"
    )
    benchmark: BenchmarkSection = Field(default_factory=BenchmarkSection)
    data: DataSection = Field(default_factory=DataSection)
    method: MethodSection = Field(default_factory=MethodSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)

    @model_validator(mode="before")
    @classmethod
    def _planner_alias(cls, data: Any) -> Any:
        """`planner:` is MF-Diffuser's parameters: an alias of `method.params` for its family."""
        if not isinstance(data, dict) or "planner" not in data:
            return data
        data = dict(data)
        planner, method = data.pop("planner"), dict(data.get("method") or {})
        name = method.get("name", "mf_diffuser")
        if name in METHODS and METHODS[name].family != "mf_diffuser":
            raise ValueError(
                f"planner: holds MF-Diffuser's settings; method {name!r} takes its own under "
                "method.params (see `mfd methods`)"
            )
        if not isinstance(planner, dict):
            raise ValueError(f"planner = {_shown(planner)}: must be a mapping of settings")
        method["params"] = {**planner, **(method.get("params") or {})}
        data["method"] = method
        return data

    @property
    def planner(self) -> PlannerConfig:
        """MF-Diffuser's parameters (methods of its family only)."""
        settings = self.method.settings
        if not isinstance(settings, PlannerConfig):
            raise AttributeError(f"method {self.method.name!r} has no planner settings")
        return settings

    @model_validator(mode="after")
    def _window_fits(self) -> ExperimentConfig:
        horizon = self.benchmark.horizon
        window = self.method.params.get("window")
        if window is None:
            return self
        if "window" not in self.method._given and window > horizon:
            # A default window is capped at short episodes (stage games: 2), so that
            # `mfd generate left_right` needs no method setting it never uses.
            given = {k: self.method.params[k] for k in self.method._given}
            section = MethodSection(name=self.method.name, params={**given, "window": horizon})
            section._given = set(self.method._given)
            object.__setattr__(self, "method", section)
        elif window > horizon:
            raise ValueError(
                f"method.params.window = {window} is longer than the benchmark's horizon "
                f"{horizon}; allowed: 1..{horizon}"
            )
        return self

    @model_validator(mode="after")
    def _data_path_fits(self) -> ExperimentConfig:
        if self.train.data_path == "ray_data" and get_benchmark(self.benchmark.name).simulator:
            raise ValueError(
                f"train.data_path = 'ray_data': {self.benchmark.name} is a team game (team "
                "rows, episodes of varying length), which the Ray Data path does not read; "
                "allowed for it: 'local'"
            )
        return self

    @model_validator(mode="after")
    def _fits_in_memory(self) -> ExperimentConfig:
        d, e, t, p = self.data, self.eval, self.train, self.method.params
        horizon = self.benchmark.horizon
        steps = d.episodes * d.n_agents * horizon
        if steps > MAX_DATASET_AGENT_STEPS:
            raise ValueError(
                f"data.episodes x data.n_agents x horizon = {d.episodes} x {d.n_agents} x "
                f"{horizon} = {steps:.3g} agent-steps; allowed: <= {MAX_DATASET_AGENT_STEPS:.0e}"
            )
        per_shard = -(-d.episodes // d.shards) * d.n_agents * horizon
        if per_shard > MAX_AGENT_STEPS:  # a shard is made and written in one process
            raise ValueError(
                f"data.episodes x data.n_agents x horizon = {d.episodes} x {d.n_agents} x "
                f"{horizon} in data.shards = {d.shards}: {per_shard:.3g} agent-steps per shard; "
                f"allowed: <= {MAX_AGENT_STEPS:.0e} per shard (more data.shards)"
            )
        steps = sum(e.n_agents) * e.episodes * e.seeds * horizon
        if steps > MAX_AGENT_STEPS:
            raise ValueError(
                f"eval.n_agents: sum {sum(e.n_agents)} x eval.episodes {e.episodes} x eval.seeds "
                f"{e.seeds} x horizon {horizon} = {steps:.3g} agent-steps; "
                f"allowed: <= {MAX_AGENT_STEPS:.0e}"
            )
        # A method whose parameters know their own largest activations says so (`activations`:
        # named factors of each); the others: one activation over windows, batch x particles x
        # window x width (those it has).
        settings = self.method.settings
        if hasattr(settings, "activations"):
            activations = settings.activations(t.batch_size, d.n_agents)
        else:
            dims = [k for k in ("n_particles", "window", "hidden") if isinstance(p.get(k), int)]
            own = [(f"method.params.{k}", p[k]) for k in dims]
            activations = [[("train.batch_size", t.batch_size), *own]]
        for factors in activations:
            size = math.prod(value for _, value in factors)
            if size > 2**28:
                names = " x ".join(name for name, _ in factors)
                values = " x ".join(str(value) for _, value in factors)
                raise ValueError(
                    f"{names} = {values} = {size:.3g} floats per activation; "
                    "allowed: <= 2^28 (1 GiB of float32)"
                )
        return self


# Bounded: an input of shared references (a YAML alias bomb) never expands in full.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
_REPR.maxstring = _REPR.maxother = MAX_SHOWN


def _shown(value: Any) -> str:
    """`repr(value)` for an error message, at most about MAX_SHOWN characters."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _format_error(err: Any, prefix: str = "") -> str:
    loc = ".".join(
        _shown(p)[1:-1] if isinstance(p, str) else str(p)
        for p in err.get("loc", ())
        if p != "__root__"
    )
    field = ".".join(p for p in (prefix, loc) if p)
    msg = err.get("msg", "").removeprefix("Value error, ")[:300]
    value = err.get("input")
    if isinstance(value, dict):  # a section's own check: its message names the field
        first = re.match(r"\w+", msg)
        if field and msg.startswith(f"{field}."):
            return msg
        if field and first and first.group() in value:
            return f"{field}.{msg}"
    elif "input" in err and field:
        return f"{field} = {_shown(value)}: {msg}"
    return f"{field}: {msg}" if field else msg


def validation_lines(err: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line per problem: field (under `prefix`), value, what is allowed;
    at most MAX_LINES of them."""
    errors = err.errors()
    lines = [_format_error(e, prefix=prefix) for e in errors[:MAX_LINES]]
    if len(errors) > MAX_LINES:
        lines.append(f"... and {len(errors) - MAX_LINES} more problems")
    return "\n".join(lines)


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


def resolve_key(key: str, benchmark: str, method: str = "mf_diffuser") -> list[str]:
    """Resolve an override key to its dotted path.

    Dotted keys are taken as they are; `planner.X` is `method.params.X` for the MF-Diffuser
    family. A bare key is a benchmark parameter if the benchmark has it (`size`, `horizon`),
    else a parameter of the method (`window`, `beta`), else the one config field with that name
    (`n_agents` is ambiguous: `data.n_agents` vs `eval.n_agents`, so the data one wins as the
    benchmark-facing N).
    """
    spec = get_benchmark(benchmark)
    mspec = get_method(method)
    leaves = _leaf_fields(ExperimentConfig)
    params = list(spec.params_model.model_fields)
    method_params = [p for p in mspec.params_model.model_fields if p not in mspec.fixed]
    if key.startswith("planner.") and mspec.family == "mf_diffuser":
        key = "method.params." + key.removeprefix("planner.")
    if "." in key:
        paths = [
            *leaves,
            *(f"benchmark.params.{p}" for p in params),
            *(f"method.params.{p}" for p in method_params),
        ]
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
            pinned = key.removeprefix("method.params.")
            if key.startswith("method.params.") and pinned in mspec.fixed:
                raise ConfigError(
                    f"-s {key}: {method} fixes {pinned} = {mspec.fixed[pinned]!r} (it is that "
                    "variant); use another method to change it"
                )
            raise ConfigError(
                f"-s {key}: unknown setting{hint}; allowed: "
                + (f"{section}{{{', '.join(fields)}}}" if fields else ", ".join(sections))
            )
        return key.split(".")
    if key in params:
        return ["benchmark", "params", key]
    if key in method_params:
        return ["method", "params", key]
    if key in mspec.fixed:
        raise ConfigError(
            f"-s {key}: {method} fixes {key} = {mspec.fixed[key]!r} (it is that variant); use "
            "another method to change it"
        )
    if key == "n_agents":
        return ["data", "n_agents"]
    if key == "method":
        return ["method", "name"]
    matches = [p for p, leaf in leaves.items() if leaf == key]
    if len(matches) == 1:
        return matches[0].split(".")
    if not matches:
        choices = [*params, *method_params, *leaves.values()]
        raise ConfigError(
            f"-s {key}: unknown setting{did_you_mean(key, choices)}; use a dotted path (e.g. "
            f"train.lr), one of the {benchmark} parameters: {', '.join(params)}, or one of the "
            f"{method} parameters (`mfd methods`)"
        )
    raise ConfigError(f"-s {key}: ambiguous, say which: {', '.join(matches)}")


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but that a config refuses."""


class _Loader(yaml.SafeLoader):
    """yaml.safe_load, hardened: no aliases (an alias bomb is a few hundred bytes that expand to
    gigabytes wherever the value is copied or printed), nesting at most MAX_DEPTH (the composer
    recurses), duplicate keys refused (else the last one silently wins), and `1e-3` is a float
    (YAML 1.1 wants `1.0e-3`, which nobody types on a command line)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                None, None, "aliases (*name) are not allowed in a config", event.start_mark
            )
        if isinstance(event, yaml.CollectionStartEvent) and self.depth >= MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool | None):
                raise _Refused(
                    None,
                    None,
                    f"a key must be a plain value, got {type(key).__name__}",
                    key_node.start_mark,
                )
            if key in seen:
                raise _Refused(
                    None,
                    None,
                    f"duplicate key {_shown(key)} on lines {seen[key]} and {line}",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str | bytes, where: str, *, text_if_invalid: bool = False) -> Any:
    """YAML text -> Python value with the hardened loader; every error names `where`.

    `text_if_invalid`: text that is not YAML at all comes back as it is (a string)."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} bytes; allowed: at most {MAX_YAML_BYTES}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"{where}: not UTF-8 (byte 0x{text[err.start]:02x} at offset {err.start})"
            ) from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        if text_if_invalid and not isinstance(err, _Refused):
            return text
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: not valid YAML ({at}{problem[:200]})") from None


def read_yaml_file(path: str | Path) -> Any:
    """A config file's YAML value (None when empty), or ConfigError naming the file."""
    where = f"--config = {_shown(str(path))}"
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}: no such file")
    if p.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {p.stat().st_size} bytes; allowed: at most {MAX_YAML_BYTES}")
    return parse_yaml(p.read_bytes(), where)


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"-s {_shown(item)}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not _KEY.fullmatch(key) or len(key) > 200:
        raise ConfigError(f"-s {_shown(key)}: not a setting name (a dotted path like train.lr)")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"-s {key}: the value is not UTF-8") from None
    # Text that is not YAML is taken as a string; YAML that a config refuses is an error.
    value = parse_yaml(raw, f"-s {key}", text_if_invalid=True) if raw else ""
    return key, value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    base: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """YAML file (optional) + `key=value` overrides -> validated config, or ConfigError."""
    data: dict[str, Any] = dict(base or {})
    in_file: set[str] = set()  # what the data is, as the config file states it
    if path is not None:
        loaded = read_yaml_file(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config = {_shown(str(path))}: must hold a mapping of sections")
        data = _deep_merge(data, loaded)
        in_file = _data_identity_keys(loaded)
    items = [parse_override(item) for item in overrides or []]
    # Bare keys are the final benchmark's parameters, wherever `-s benchmark=…` stands.
    names = [str(v) for k, v in items if k in ("benchmark", "benchmark.name")]
    benchmark = names[-1] if names else str(data.get("benchmark", {}).get("name", "crowd_1d"))
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark.name = {_shown(benchmark)}: {unknown_benchmark(benchmark)}")
    names = [str(v) for k, v in items if k in ("method", "method.name")]
    method = names[-1] if names else str((data.get("method") or {}).get("name", "mf_diffuser"))
    if method not in METHODS:
        raise ConfigError(f"method.name = {_shown(method)}: {unknown_method(method)}")
    explicit: dict[str, Any] = {}  # dotted path -> value, of the settings on the command line
    for key, value in items:
        node = data
        parts = ["benchmark", "name"] if key == "benchmark" else resolve_key(key, benchmark, method)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"-s {key}: {part} is not a section")
        node[parts[-1]] = value
        explicit[".".join(parts)] = value
    cfg = _validate(data)
    return bind_dataset(cfg, set(explicit) | in_file) if cfg.data.path else cfg


def _data_identity_keys(loaded: dict[str, Any]) -> set[str]:
    """The dotted keys of a config file that say what the data is (benchmark, its parameters,
    N, quality): a dataset given with it must agree with them. How much data (episodes,
    shards, seed) is the dataset's own: those a file states are replaced."""
    bench = loaded.get("benchmark") if isinstance(loaded.get("benchmark"), dict) else {}
    data = loaded.get("data") if isinstance(loaded.get("data"), dict) else {}
    params = bench.get("params") if isinstance(bench.get("params"), dict) else {}
    keys = {"benchmark.name"} if "name" in bench else set()
    keys |= {f"benchmark.params.{k}" for k in params}
    return keys | {f"data.{k}" for k in ("n_agents", "quality") if k in data}


def _dotted(cfg: ExperimentConfig, path: str) -> Any:
    node: Any = cfg.model_dump()
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def bind_dataset(cfg: ExperimentConfig, explicit: set[str]) -> ExperimentConfig:
    """A config that trains on `data.path` takes what the dataset is from its manifest.

    The benchmark, its parameters and the data section (quality, N, episodes, shards, seed) are
    the manifest's, so that every record of the run describes the data actually used. A value
    given on the command line or stated in the config file about what the data is (`explicit`
    dotted paths: the benchmark, its parameters such as the horizon, N, quality) that
    contradicts the manifest is an error naming both; the defaults, and the file's episodes,
    shards and seed, are replaced.
    """
    from mfdiffuser.data.manifest import read_manifest

    path = str(cfg.data.path)
    try:
        manifest = read_manifest(path)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"data.path = {path!r}: {err}") from None
    bench = manifest.spec["benchmark"]
    if bench["name"] not in BENCHMARKS:
        raise ConfigError(
            f"data.path = {path!r}: made for benchmark {bench['name']!r}, which this code "
            f"does not have; available: {', '.join(sorted(BENCHMARKS))}"
        )
    version = get_benchmark(bench["name"]).version
    if bench["version"] != version:
        raise ConfigError(
            f"data.path = {path!r}: made with {bench['name']} v{bench['version']}, this code "
            f"has v{version}; regenerate the dataset"
        )
    fixed = {
        "benchmark.name": bench["name"],
        **{f"benchmark.params.{k}": v for k, v in bench["params"].items()},
        **{f"data.{k}": manifest.spec[k] for k in ("quality", "n_agents", "episodes", "shards")},
        "data.seed": manifest.spec["seed"],
    }
    conflicts = [
        f"{key} = {_dotted(cfg, key)!r} but the dataset has {fixed[key]!r}"
        for key in sorted(explicit & set(fixed))
        if _dotted(cfg, key) != fixed[key]
    ]
    if conflicts:
        raise ConfigError(
            f"data.path = {path!r}: " + "; ".join(conflicts) + "; drop the setting or use a "
            "dataset made with it"
        )
    data = cfg.model_dump()
    data["benchmark"] = {"name": bench["name"], "params": bench["params"]}
    # Only the method parameters given: defaults adapt to the dataset's benchmark (the window).
    data["method"]["params"] = {k: cfg.method.params[k] for k in cfg.method._given}
    data["data"].update({k.removeprefix("data."): v for k, v in fixed.items() if k[:5] == "data."})
    return _validate(data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def check_local_data_path(cfg: ExperimentConfig) -> None:
    """`train.data_path = 'local'` loads each Train worker's share of the dataset whole: a share
    over `MAX_AGENT_STEPS` is refused before any Ray work (ConfigError), with the fix."""
    t, d = cfg.train, cfg.data
    share = d.episodes * d.n_agents * cfg.benchmark.horizon / t.num_workers
    if t.data_path == "local" and share > MAX_AGENT_STEPS:
        raise ConfigError(
            f"train.data_path = 'local': each of train.num_workers = {t.num_workers} Train "
            f"workers would load {share:.3g} agent-steps of the dataset into memory at once; "
            f"allowed: <= {MAX_AGENT_STEPS:.0e} per worker: more train.num_workers, or (finite-"
            "state games) train.data_path=ray_data, streamed through a buffer of "
            "train.buffer_episodes, for data larger than a node's memory"
        )
