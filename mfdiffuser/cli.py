"""`mfd`: a thin command-line layer over `mfdiffuser.api`.

Every command validates its whole config before any Ray work starts; a bad value exits with
status 2 and one line per problem naming the field, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mfdiffuser import __version__
from mfdiffuser.api import ALGORITHMS
from mfdiffuser.envs.behaviour import QUALITIES
from mfdiffuser.plugins import BUILT_IN

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

app = typer.Typer(
    name="mfd",
    help="MF-Diffuser: offline mean-field multi-agent RL on Ray, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

Settings = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a setting: key=value (dotted path or benchmark "
        "parameter, e.g. -s size=20 -s planner.window=8). Repeatable.",
    ),
]
ConfigPath = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (see configs/).")
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")]
Address = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address (default: RAY_ADDRESS or local)."),
]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or ./mlflow.db)."
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the newest unfinished run of this config (same MLflow run, training "
        "from its last checkpoint) instead of starting a new one.",
    ),
]
Storage = Annotated[
    str | None, typer.Option("--storage", help="Datasets and checkpoints: a path or URI.")
]


def _print_version(value: bool) -> None:
    if value:
        from mfdiffuser.platform.provenance import code_version

        typer.echo(f"mfd {__version__} (code {code_version()})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the package version and the code version (git commit) and exit.",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress (bars on a terminal, else periodic `progress:` lines on stderr).",
        ),
    ] = False,
) -> None:
    if quiet:  # an environment variable: the Ray workers this command starts read it too
        os.environ["MFD_QUIET"] = "1"


def _loopback_if_local(address: str | None) -> None:
    """A local Ray (no --address, no RAY_ADDRESS) binds to 127.0.0.1 only.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported (the commands import it
    lazily, after this runs); set to 0 it takes the loopback address as its node address, as it
    does on macOS. Not set when connecting to a cluster elsewhere: the driver must be reachable
    there. A cluster whose address is on loopback (its nodes started with
    `--node-ip-address=127.0.0.1`) is this machine's: without it Ray would rewrite the address to
    the machine's outward IP, where that cluster does not listen, and retry forever.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    host = (address or "").rsplit(":", 1)[0].removeprefix("ray://").strip("[]")
    if not address or host in {"127.0.0.1", "localhost", "::1"}:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not address:
        # Token authentication is Ray's default for a new local instance; asked for explicitly
        # (also read at import) it stays on without the warning Ray prints when it chose it.
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _guard(fn: Callable[[], T], as_json: bool = False) -> T:
    """Run a command; user errors become one clean message and exit code 2.

    With --json, everything the work prints (Ray forwards worker logs to stdout) goes to stderr,
    so that stdout holds the one JSON object and nothing else.
    """
    from mfdiffuser.platform.config import ConfigError
    from mfdiffuser.platform.errors import WorkerError

    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    # SIGTERM ends a command like Ctrl-C does: the MLflow run it owns is KILLED, not left
    # RUNNING (once Ray is up, its own driver handler turns SIGTERM into SystemExit).
    main = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
    try:
        with quiet:
            return fn()
    except (ConfigError, FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except (WorkerError, FloatingPointError) as err:  # a crash: the traceback is in MLflow
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except (KeyboardInterrupt, SystemExit) as err:
        detail = f" ({err})" if str(err) and not isinstance(err, SystemExit) else ""
        typer.echo(
            f"interrupted{detail}: the MLflow run it started is KILLED "
            "(`mfd run`/`quickstart`: re-run with --resume to continue it)",
            err=True,
        )
        raise typer.Exit(130) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, on_sigterm)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        typer.echo(human(result))


def _config(
    config: Path | None,
    settings: list[str] | None,
    *,
    benchmark: str | None = None,
    extra: list[str] | None = None,
) -> Any:
    from mfdiffuser.platform import jobs
    from mfdiffuser.platform.config import load_config

    items = (
        ([f"benchmark.name={benchmark}"] if benchmark else []) + (extra or []) + (settings or [])
    )
    cfg = load_config(config, items)
    # tracking: checked where it is resolved
    jobs.check_storage(cfg.runtime.storage, cfg.data.path)
    jobs.forwarded_env(cfg.runtime.forward_env)  # every name set here, before Ray
    return cfg


def _runtime(address: str | None, tracking_uri: str | None, storage: str | None) -> list[str]:
    out = []
    if address:
        out.append(f"runtime.address={address}")
    if tracking_uri:
        out.append(f"runtime.tracking_uri={tracking_uri}")
    if storage:
        out.append(f"runtime.storage={storage}")
    return out


def _param_text(key: str, value: Any) -> str:
    if isinstance(value, str) and "\n" in value:
        return f"{key}=<{len(value.splitlines())}-line map>"
    return f"{key}={value}"


@app.command()
def benchmarks(as_json: JsonOut = False) -> None:
    """List the registered benchmarks with their versions and default parameters (and, for a
    plugin's, the package and entry point it came from)."""
    from mfdiffuser.api import list_benchmarks

    items = _guard(list_benchmarks)
    if as_json:
        typer.echo(json.dumps(items))
        return
    for b in items:
        params = ", ".join(
            f"{k}=<{len(v.splitlines())}-line map>"
            if isinstance(v, str) and "\n" in v
            else f"{k}={v}"
            for k, v in b["params"].items()
        )
        typer.echo(f"{b['name']} v{b['version']} [{b['family']}]  {params}\n    {b['description']}")
        if b["origin"] != BUILT_IN:
            typer.echo(f"    from: {b['origin']}")


@app.command()
def methods(as_json: JsonOut = False) -> None:
    """List the registered methods: kind, version, what a variant pins, every parameter (and,
    for a plugin's, the package and entry point it came from)."""
    from mfdiffuser.api import list_methods

    items = _guard(list_methods)
    if as_json:
        typer.echo(json.dumps(items, default=str))
        return
    for m in items:
        pinned = ", ".join(f"{k}={v}" for k, v in m["fixed"].items())
        limit = f", at most {m['max_agents']} agents" if m["max_agents"] else ""
        typer.echo(f"{m['name']} v{m['version']} [{m['kind']}{limit}]  {m['description']}")
        if pinned:
            typer.echo(f"    pins: {pinned}")
        if m["origin"] != BUILT_IN:
            typer.echo(f"    from: {m['origin']}")
        typer.echo(
            "    parameters: "
            + ", ".join(f"{k}={p['default']}" for k, p in m["parameters"].items())
        )


@app.command("config")
def show_config(
    config: ConfigPath = None, settings: Settings = None, as_json: JsonOut = False
) -> None:
    """Validate a config without running anything: print it resolved (defaults filled in).

    Exit status 2 and one line per problem when a value is not allowed. Writes nothing.
    """
    import yaml

    cfg = _guard(lambda: _config(config, settings))
    data = cfg.model_dump(mode="json")
    typer.echo(json.dumps(data) if as_json else yaml.safe_dump(data, sort_keys=False).rstrip())


@app.command()
def solve(
    benchmark: Annotated[str, typer.Argument(help="Benchmark name (see `mfd benchmarks`).")],
    settings: Settings = None,
    algorithm: Annotated[
        str,
        typer.Option(
            help=f"{' | '.join(ALGORITHMS)} (cooperative games and battle: uniform, expert)"
        ),
    ] = "uniform",
    iterations: Annotated[int, typer.Option(help="Solver iterations (fp, omd).")] = 100,
    learning_rate: Annotated[float, typer.Option(help="Mirror-descent step size.")] = 0.1,
    as_json: JsonOut = False,
) -> None:
    """Exact mean-field value, best-response value and exploitability of a policy."""
    from mfdiffuser.api import solve as do_solve
    from mfdiffuser.platform.config import ConfigError, parse_override

    def run() -> dict[str, Any]:
        from mfdiffuser.envs.registry import did_you_mean, get_benchmark

        spec = get_benchmark(benchmark)
        params: dict[str, Any] = {}
        for item in settings or []:
            key, value = parse_override(item)
            key = key.removeprefix("benchmark.params.")
            allowed = spec.params_model.model_fields
            if key not in allowed:
                raise ConfigError(
                    f"-s {key}: not a parameter of {benchmark}{did_you_mean(key, allowed)}; "
                    f"allowed: {', '.join(allowed)}"
                )
            params[key] = value
        return do_solve(benchmark, params, algorithm, iterations, learning_rate)

    result = _guard(run)
    _emit(
        result,
        as_json,
        lambda r: (
            (  # no exact model (battle): simulated figures instead
                f"{benchmark} ({r['algorithm']}): return {r['return']:.4f} ± "
                f"{r['return_std']:.4f}, win rate {r['win_rate']:.3f}, draw rate "
                f"{r['draw_rate']:.3f}, kill ratio {r['kill_ratio']:.3f} ({r['episodes']} episodes)"
            )
            if "win_rate" in r
            else f"{benchmark} ({r['algorithm']}): value {r['value']:.6f}, best response "
            f"{r['best_response_value']:.6f}, exploitability {r['exploitability']:.6g}"
            + (f", welfare gap {r['welfare_gap']:.6g}" if "welfare_gap" in r else "")
        ),
    )


@app.command()
def generate(
    benchmark: Annotated[
        str | None, typer.Argument(help="Benchmark (default: the config's).")
    ] = None,
    config: ConfigPath = None,
    settings: Settings = None,
    quality: Annotated[
        str | None, typer.Option(help=f"Data quality: {' | '.join(QUALITIES)}.")
    ] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes in the dataset.")] = None,
    storage: Storage = None,
    address: Address = None,
    as_json: JsonOut = False,
) -> None:
    """Generate an offline dataset (Parquet shards + manifest) with a pool of Ray actors."""
    from mfdiffuser import api

    extra = _runtime(address, None, storage)
    if quality:
        extra.append(f"data.quality={quality}")
    if episodes is not None:
        extra.append(f"data.episodes={episodes}")
    cfg = _guard(lambda: _config(config, settings, benchmark=benchmark, extra=extra))
    _loopback_if_local(cfg.runtime.address)
    result = _guard(lambda: api.generate(cfg), as_json)
    _emit(
        result,
        as_json,
        lambda r: (
            (f"{r['repaired']}\n" if r["repaired"] else "")
            + f"dataset {r['dataset']}{' (reused)' if r['reused'] else ''}\n  {r['rows']} rows, "
            f"{r['episodes']} episodes, {r['shards']} shards; "
            + _behaviour_text(r["behaviour"])
            + f" ({r['seconds']:.1f} s)"
        ),
    )


def _figure(value: Any, digits: int = 4) -> str:
    """A behaviour figure of a manifest: a number, or what the manifest says (`unknown`)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return "unknown" if value is None else str(value)


def _behaviour_text(b: dict[str, Any]) -> str:
    """The behaviour's figures, whatever a manifest holds (a hand-written one may hold none)."""
    if "win_rate" in b:
        return (
            f"behaviour return {_figure(b.get('return'))}, win rate {_figure(b['win_rate'], 3)}, "
            f"kill ratio {_figure(b.get('kill_ratio'), 3)}"
        )
    text = (
        f"behaviour return {_figure(b.get('return'))}, "
        f"exploitability {_figure(b.get('exploitability'))}"
    )
    if "exploitability_estimate" in b:
        text += (
            f"; data return {_figure(b.get('data_mean_return'))}, estimated from the (t, s, a) "
            f"counts: return {_figure(b.get('return_estimate'))}, exploitability "
            f"{_figure(b['exploitability_estimate'])}"
        )
    return text


@app.command("import")
def import_data(
    file: Annotated[
        Path, typer.Argument(help="Rows to import: .parquet, .csv or .npz (docs/data.md).")
    ],
    benchmark: Annotated[
        str | None, typer.Argument(help="Benchmark the rows were played on (default: config's).")
    ] = None,
    config: ConfigPath = None,
    settings: Settings = None,
    shards: Annotated[
        int | None, typer.Option(help="Parquet shards to split it into (data.shards).")
    ] = None,
    storage: Storage = None,
    as_json: JsonOut = False,
) -> None:
    """Turn your offline rows into a dataset (quality `imported`), validated against the
    benchmark first: columns, types, state/action/t ranges, one row per (episode, t, agent),
    every episode complete with one N. No Ray. A problem exits with status 2 naming the
    column and the rows. Train on it with `mfd train --dataset <the printed directory>`."""
    from mfdiffuser import api

    extra = _runtime(None, None, storage)
    if shards is not None:
        extra.append(f"data.shards={shards}")
    cfg = _guard(lambda: _config(config, settings, benchmark=benchmark, extra=extra))
    result = _guard(lambda: api.import_data(file, cfg), as_json)
    _emit(
        result,
        as_json,
        lambda r: (
            f"dataset {r['dataset']}{' (reused: the same rows)' if r['reused'] else ''}\n"
            f"  {r['rows']} rows: {r['episodes']} episodes, N = {r['n_agents']}, horizon "
            f"{r['horizon']}, {r['shards']} shards; quality imported; rows sha256 "
            f"{r['content_sha256'][:16]}…\n  "
            + _behaviour_text(r["behaviour"])
            + (
                f"\n  ignored columns: {', '.join(r['ignored_columns'])}"
                if r["ignored_columns"]
                else ""
            )
            + f" ({r['seconds']:.1f} s)"
        ),
    )


@app.command("export")
def export_data(
    dataset: Annotated[str, typer.Argument(help="Dataset directory or URI (with manifest.json).")],
    out: Annotated[
        str, typer.Argument(help="File to write: .parquet, .csv or .npz (the card goes beside).")
    ],
    as_json: JsonOut = False,
) -> None:
    """Write a dataset out to one plain Parquet/CSV/.npz file, sorted by (episode, t, agent),
    with a dataset card beside it (<stem>.card.md: benchmark, version, quality, N, episodes,
    behaviour return and exploitability, checksums). The dataset is verified first."""
    from mfdiffuser import api

    result = _guard(lambda: api.export_data(dataset, out), as_json)
    _emit(
        result,
        as_json,
        lambda r: (
            f"{r['file']}: {r['rows']} rows of {r['benchmark']['name']} v"
            f"{r['benchmark']['version']}, quality {r['quality']}, N = {r['n_agents']}, "
            f"{r['episodes']} episodes\n  card {r['card']}\n  rows sha256 "
            f"{r['checksums']['content_sha256']}"
        ),
    )


@app.command()
def train(
    config: ConfigPath = None,
    settings: Settings = None,
    dataset: Annotated[
        str | None, typer.Option(help="Use this dataset (else generate/reuse).")
    ] = None,
    storage: Storage = None,
    address: Address = None,
    tracking_uri: TrackingUri = None,
    as_json: JsonOut = False,
) -> None:
    """Fit MF-Diffuser with Ray Train (DDP over `train.num_workers` workers)."""
    from mfdiffuser import api

    extra = _runtime(address, tracking_uri, storage)
    if dataset:
        extra.append(f"data.path={dataset}")
    cfg = _guard(lambda: _config(config, settings, extra=extra))
    _loopback_if_local(cfg.runtime.address)
    result = _guard(lambda: api.train(cfg), as_json)
    _emit(
        result,
        as_json,
        lambda r: (
            f"checkpoint {r['checkpoint']}\nMLflow run {r['run_id']} in {r['tracking_uri']} "
            f"({r['train_seconds']:.1f} s)"
        ),
    )


@app.command()
def evaluate(
    checkpoint: Annotated[
        str,
        typer.Argument(help="Checkpoint directory or URI, e.g. s3://… (printed by `mfd train`)."),
    ],
    n_agents: Annotated[
        list[int] | None, typer.Option("--n-agents", "-n", help="Population sizes. Repeatable.")
    ] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes per (N, seed).")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds per N.")] = None,
    opponent: Annotated[
        list[str] | None,
        typer.Option(
            help="Team games: team 1's player, a scripted name (battle: expert, random), "
            "`self` or a checkpoint of the same benchmark. Repeatable; default: every scripted "
            "one and `self`."
        ),
    ] = None,
    address: Address = None,
    tracking_uri: TrackingUri = None,
    as_json: JsonOut = False,
) -> None:
    """Roll the planner out at each N with Ray actors; log returns and exploitability."""
    from mfdiffuser import api

    _loopback_if_local(address)
    result = _guard(
        lambda: api.evaluate(
            checkpoint,
            n_agents=n_agents,
            episodes=episodes,
            seeds=seeds,
            opponents=opponent,
            tracking_uri=tracking_uri,
            address=address,
        ),
        as_json,
    )
    _emit(
        result,
        as_json,
        lambda r: "\n".join(
            [f"MLflow run {r['run_id']} in {r['tracking_uri']}"]
            + [f"  {k}: {v:.6g}" for k, v in sorted(r["metrics"].items())]
            + [f"  {name} = {o}" for name, o in r["opponents"].items() if name != o]
        ),
    )


@app.command()
def crossplay(
    checkpoints: Annotated[
        list[str], typer.Argument(help="Two or more checkpoints trained on one team game.")
    ],
    n_agents: Annotated[
        int | None,
        typer.Option("--n-agents", "-n", help="Agents per team (default: the first's data)."),
    ] = None,
    episodes: Annotated[int, typer.Option(help="Episodes per pair.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the episodes.")] = 0,
    as_json: JsonOut = False,
) -> None:
    """Team games: every checkpoint against every one, in-process; prints the win-rate matrix.

    Row = team 0, column = team 1; each player is named `checkpoint_<id>` as evaluation names a
    checkpoint opponent. `--json` also has the kill-ratio matrix.
    """
    from mfdiffuser import api

    result = _guard(
        lambda: api.crossplay(checkpoints, n_agents=n_agents, episodes=episodes, seed=seed),
        as_json,
    )
    _emit(result, as_json, _crossplay_text)


def _crossplay_text(r: dict[str, Any]) -> str:
    names = list(r["players"])
    lines = [
        f"{r['benchmark']}, N={r['n_agents']}, {r['episodes']} episodes per pair: "
        "win rate of the row (team 0) against the column (team 1)",
        " " * 20 + "".join(f"{n:>20}" for n in names),
    ]
    lines += [
        f"{n:<20}" + "".join(f"{w:>20.3f}" for w in row)
        for n, row in zip(names, r["win_rate"], strict=True)
    ]
    lines += [f"{n} = {path}" for n, path in r["players"].items()]
    return "\n".join(lines)


@app.command()
def run(
    config: ConfigPath = None,
    settings: Settings = None,
    storage: Storage = None,
    address: Address = None,
    tracking_uri: TrackingUri = None,
    resume: Resume = False,
    as_json: JsonOut = False,
) -> None:
    """generate -> train -> evaluate in one MLflow run (what `ray job submit` runs)."""
    from mfdiffuser import api

    cfg = _guard(lambda: _config(config, settings, extra=_runtime(address, tracking_uri, storage)))
    _loopback_if_local(cfg.runtime.address)
    result = _guard(lambda: api.run_experiment(cfg, resume=resume), as_json)
    _emit(result, as_json, _summary)


@app.command()
def quickstart(
    workdir: Annotated[Path, typer.Option(help="Where the store and mlflow.db go.")] = Path(
        "mfd-quickstart"
    ),
    settings: Settings = None,
    resume: Resume = False,
    as_json: JsonOut = False,
) -> None:
    """The whole flow on a small crowd_1d setting: data, DDP training, rollouts at N=100, 1000."""
    from mfdiffuser import api

    _loopback_if_local(None)
    result = _guard(lambda: api.quickstart(workdir, settings, resume=resume), as_json)
    _emit(
        result,
        as_json,
        lambda r: (
            _summary(r)
            + (
                f"\n\nResults in {r['workdir']}\n"
                f"Open them in the MLflow UI:\n  {r['mlflow_ui_command']}\n"
                f"  then {r['mlflow_ui_url']}"
            )
        ),
    )


@app.command()
def sweep(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Sweep YAML (see configs/sweep_*.yaml).")
    ],
    settings: Settings = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue an interrupted sweep; finished trials are not run again."
        ),
    ] = False,
    storage: Storage = None,
    address: Address = None,
    tracking_uri: TrackingUri = None,
    as_json: JsonOut = False,
) -> None:
    """A Ray Tune sweep: every grid point is dataset -> train (Ray Train) -> evaluate.

    Exit status 1 when a trial failed (its MLflow run is FAILED with the error; fix and --resume).
    """
    from mfdiffuser.platform import jobs
    from mfdiffuser.tuning.sweep import check_sweep, load_sweep, run_sweep

    extra = _runtime(address, tracking_uri, storage)
    spec = _guard(lambda: load_sweep(config, extra + (settings or [])))
    first = spec.experiment_config(spec.trials[0])
    _guard(lambda: jobs.check_locations(first))
    _guard(lambda: check_sweep(spec, resume=resume))  # before Ray's start, which takes 10-30 s
    _loopback_if_local(first.runtime.address)

    def go() -> dict[str, Any]:
        from mfdiffuser.platform.runtime import ray_session

        rt = first.runtime
        with ray_session(rt.address, rt.num_cpus, rt.forward_env):
            return run_sweep(spec, resume=resume)

    result = _guard(go, as_json)
    _emit(
        result,
        as_json,
        lambda r: "\n".join(
            [
                f"sweep {r['sweep']} ({r['sweep_id']}): {r['trials_finished']:.0f} of "
                f"{r['trials']:.0f} trials finished, {r['trials_failed']:.0f} failed, "
                f"{len(r['skipped'])} cells skipped, "
                f"{r['concurrency']:.0f} at a time, {r['wall_seconds']:.1f} s",
                f"MLflow parent run {r['parent_run_id']} in {r['tracking_uri']}",
                f"Tune experiment {r['tune_path']}",
                *[f"  failed: {e}" for e in r["errors"]],
                *[f"  skipped: {c}" for c in r["skipped"]],
            ]
        ),
    )
    if result["trials_failed"]:
        raise typer.Exit(1)


@app.command()
def table(
    sweep_ref: Annotated[
        str,
        typer.Option(
            "--sweep", help="The sweep's parent run id (or sweep id) that `mfd sweep` prints."
        ),
    ],
    tracking_uri: TrackingUri = None,
    as_json: JsonOut = False,
) -> None:
    """The comparison table of a sweep: every method per setting over seeds, and the wins.

    Per (benchmark, quality, N and any other axis): mean return and exploitability with 95%
    bootstrap intervals over seeds, IQM of the return, P(mf_diffuser > method) (a team game:
    also win rate and kill ratio vs each scripted opponent, with intervals); then how often
    each trained method has the highest mean return and a return interval above all others
    (references fp, omd excluded). Reads the MLflow store only.
    """
    from mfdiffuser import api

    # Reading sweep/skipped.json would draw a download progress bar on stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result = _guard(lambda: api.table(sweep_ref, tracking_uri=tracking_uri), as_json)
    for line in result["warnings"]:
        typer.echo(f"warning: {line}", err=True)
    _emit(result, as_json, _table_text)


def _table_text(r: dict[str, Any]) -> str:
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from mfdiffuser.evaluation.comparison import PLANNER
    from mfdiffuser.evaluation.comparison import format_interval as _interval

    out = io.StringIO()
    # markup off: error texts and reasons may hold [brackets]; a team game's figures widen it
    team_columns = max((len(s.get("team_figures", [])) for s in r["settings"]), default=0)
    width = 200 + 32 * team_columns
    console = Console(file=out, width=width, color_system=None, soft_wrap=True, markup=False)
    console.print(
        f"sweep {r['sweep']} ({r['sweep_id']}), parent run {r['parent_run_id']}: "
        f"{sum(len(m['seeds']) for s in r['settings'] for m in s['methods'])} trials in the "
        f"table, {len(r['missing'])} missing, "
        f"{sum(len(m['skipped']) for s in r['settings'] for m in s['methods'])} skipped"
    )
    for s in r["settings"]:
        grid = Table(title=s["label"], title_justify="left", box=box.SIMPLE_HEAD)
        team = s.get("team_figures", [])  # a team game: e.g. win_rate/vs_expert
        for name in (
            "method",
            "seeds",
            "return [95% CI]",
            "IQM return",
            "exploitability [95% CI]",
            f"P({PLANNER} > method) [95% CI]",
            *(f"{k} [95% CI]" for k in team),
        ):
            grid.add_column(name, no_wrap=True)
        for m in s["methods"]:
            label = m["method"] + (" (reference)" if m["reference"] else "")
            if m["return"] is None:
                reasons = sorted({str(k["reason"]) for k in m["skipped"]})
                grid.add_row(label, "0", f"n/a: {'; '.join(reasons)}", *[""] * (3 + len(team)))
                continue
            grid.add_row(
                label,
                str(len(m["seeds"])),
                _interval(m["return"]),
                f"{m['iqm_return']:.4f}",
                _interval(m["exploitability"]),
                _interval(m["p_improvement"], "value"),
                *(_interval(m["team"].get(k)) for k in team),
            )
        console.print(grid)
        verdict = f"highest mean return: {', '.join(s['highest_mean']) or '-'}"
        verdict += f"; interval wholly above the others: {s['interval_above'] or '-'}"
        console.print(f"  {verdict}")
    wins = "; ".join(
        f"{m}: highest mean {w['highest_mean']}, interval above {w['interval_above']}"
        for m, w in r["wins"].items()
    )
    console.print(
        f"wins over {r['settings_compared']} settings with two or more trained methods "
        f"(references fp, omd excluded): {wins}"
    )
    for m in r["missing"]:
        console.print(
            f"missing: run {m['run_id']} {m['method']} seed {m['seed']} ({m['benchmark']}, "
            f"{m['quality']}, N={m['n_agents']}): {m['reason']}"
        )
    return out.getvalue().rstrip()


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="Directory for index.html and its figures.")],
    sweep_ref: Annotated[
        str | None,
        typer.Option("--sweep", help="The sweep's parent run id (or sweep id) `mfd sweep` prints."),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="Report the newest sweep of this experiment.")
    ] = None,
    tracking_uri: TrackingUri = None,
    as_json: JsonOut = False,
) -> None:
    """A sweep's figures into MLflow and a static HTML report (no network needed) into --out.

    Figures (PNG and SVG): return against N, every decomposition term against N (log-log, fitted
    slope with its 95% interval, reference slope), the distribution shift against N and quality,
    exploitability per method x quality, training curves, the comparison table. They go on the
    sweep's parent run, each trial's training curve and decomposition on its run. Reads the
    store and writes only artifacts; --out is replaced as a whole once the report is complete.
    """
    from mfdiffuser import api

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result = _guard(
        lambda: api.report(out, sweep=sweep_ref, experiment=experiment, tracking_uri=tracking_uri),
        as_json,
    )
    for line in result["warnings"]:
        typer.echo(f"warning: {line}", err=True)
    _emit(result, as_json, _report_text)


def _report_text(r: dict[str, Any]) -> str:
    lines = [f"report of sweep {r['sweep']} ({r['trials']} trials): {r['html']}"]
    for law in r["laws"]:
        slope = f"{law['slope']:+.3f}" + (
            f" [{law['low']:+.3f}, {law['high']:+.3f}]" if law["low"] is not None else " [one seed]"
        )
        ref = "" if law["reference"] is None else f" (reference {law['reference']:+g})"
        lines.append(
            f"  {law['method']}, {law['quality']}: {law['term']} ({law['fit']}) slope {slope}{ref}"
        )
    lines.append(f"figures logged on the parent run {r['parent_run_id']} and each trial's run")
    lines.append(f"{r['seconds']:.1f} s")
    return "\n".join(lines)


@app.command()
def ui(
    tracking_uri: TrackingUri = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """The MLflow UI on the store (one worker, on 127.0.0.1 only) until Ctrl-C or SIGTERM."""
    from mfdiffuser.dashboards.ui import serve, store_uri

    uri = _guard(lambda: store_uri(tracking_uri))
    from mfdiffuser.platform.tracking import ui_url

    typer.echo(f"MLflow UI on {uri}: {ui_url(port)} (Ctrl-C stops it)")
    raise typer.Exit(serve(uri, port))


def _summary(r: dict[str, Any]) -> str:
    m = r["metrics"]
    lines = [
        f"MLflow run {r['run_id']} (experiment {r['experiment']}) in {r['tracking_uri']}",
        f"checkpoint {r['checkpoint']}",
        f"wall time {r['wall_seconds']:.1f} s",
    ]
    for key in sorted(m):
        if key.startswith("return/n") and not key.endswith("_std"):
            lines.append(f"  {key}: {m[key]:.4f} ± {m[key + '_std']:.4f}")

    def beside(key: str) -> str:
        if key in m:
            return f" (behaviour {m[key]:.4f})"
        if f"{key}_estimate" in m:  # imported data: the behaviour is unknown
            return f" (behaviour estimated from the data {m[f'{key}_estimate']:.4f})"
        return ""

    if "return_mf" in m:
        lines.append(
            f"  mean-field return: planner {m['return_mf']:.4f}{beside('behaviour/return')}"
        )
    lines.append(
        f"  exploitability: planner {m['exploitability']:.4f}{beside('behaviour/exploitability')}"
    )
    est = "" if "subopt/regularisation_gap" in m else "_estimate"
    if f"subopt/regularisation_gap{est}" in m:
        terms = (
            f"regularisation gap {m[f'subopt/regularisation_gap{est}']:+.4f}, "
            f"distribution shift {m[f'subopt/distribution_shift{est}']:+.4f}, "
            f"generative error {m['subopt/generative_error']:+.4f}"
        )
        what = " (the first two estimated: imported data)" if est else ""
        lines.append(f"  suboptimality, four terms{what}: {terms}")
        for key in sorted(k for k in m if k.startswith("subopt/mf_error/n")):
            n = key.rsplit("/n", 1)[1]
            lines.append(
                f"    mean-field error at N={n}: {m[key]:+.4f} "
                f"(total {m[f'subopt/total/n{n}']:+.4f})"
            )
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
