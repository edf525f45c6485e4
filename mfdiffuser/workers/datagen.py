"""Offline dataset generation by a pool of Ray actors, one shard per task.

Resumable: shards are written atomically and their content depends only on (dataset seed,
episode index), so a re-run after an interruption skips the shards that exist and regenerates the
rest; the manifest is written last. A dataset with a manifest is verified against it
(`mfdiffuser.data.verify`) and reused, or, if it fails, repaired the same way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.exceptions import ActorUnavailableError, RayError

from mfdiffuser.data import storage
from mfdiffuser.data.manifest import (
    MANIFEST,
    Manifest,
    ShardInfo,
    dataset_id,
    dataset_spec,
    read_manifest,
    shard_file,
    shard_ranges,
    write_manifest,
)
from mfdiffuser.data.schema import SCHEMA_VERSION
from mfdiffuser.data.verify import Problem, dataset_problems, verify_dataset
from mfdiffuser.envs import exploitability, policy_value
from mfdiffuser.envs.behaviour import occupancy_mixture
from mfdiffuser.envs.registry import BenchmarkSpec, get_benchmark
from mfdiffuser.platform.config import ExperimentConfig
from mfdiffuser.platform.errors import ACTOR_RESTARTS, WorkerError, one_line, worker_failure
from mfdiffuser.platform.progress import progress
from mfdiffuser.platform.provenance import code_version
from mfdiffuser.platform.runtime import alive_node_resources

ACTOR_CPUS = 0.5


def pool_size() -> int:
    """Generation actors for this cluster: as many as its CPUs hold, less one node's worth on a
    cluster of several nodes. The actors of a lost node are restarted elsewhere, and a restart
    waits for free CPUs: with every CPU taken by the pool they would wait forever and the
    generation would never end. So the pool leaves the largest node's CPUs spare (on one node
    there is nothing to survive and it takes them all)."""
    cpus = [float(node.get("CPU", 0.0)) for node in alive_node_resources()]
    spare = max(cpus) if len(cpus) > 1 else 0.0
    return max(1, int((sum(cpus) - spare) / ACTOR_CPUS))


# A restarted actor is rebuilt from the same arguments and its shard task re-run: shards depend
# only on (seed, episode) and are written atomically, so a retry writes the same bytes once.
@ray.remote(num_cpus=ACTOR_CPUS, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
class GeneratorActor:
    """Holds one benchmark instance and its behaviour policies; writes shards on request."""

    def __init__(
        self,
        benchmark: str,
        params: dict[str, Any],
        policies: list[np.ndarray],
        quality: str | None = None,
    ) -> None:
        self.spec = get_benchmark(benchmark)
        # simulator-only benchmarks have no game object: their shards come from the simulator
        self.game = self.spec.game(params) if self.spec.exact_model else None
        self.params = params
        self.policies = policies
        self.quality = quality

    def write_shard(
        self, uri: str, index: int, episodes: tuple[int, int], n_agents: int, seed: int
    ) -> dict[str, Any]:
        return write_shard(
            self.spec,
            self.game,
            self.params,
            self.policies,
            self.quality,
            uri,
            index,
            episodes,
            n_agents,
            seed,
        ).model_dump()


def write_shard(
    spec: BenchmarkSpec,
    game: Any,
    params: dict[str, Any],
    policies: list[np.ndarray],
    quality: str | None,
    uri: str,
    index: int,
    episodes: tuple[int, int],
    n_agents: int,
    seed: int,
) -> ShardInfo:
    """Play one shard's episodes and write its rows atomically (what each actor does, no Ray)."""
    from mfdiffuser.data.generate import generate_shard

    outcomes = None
    if spec.simulator is not None:
        table, outcomes = spec.simulator.generate_shard(
            spec.params(params), str(quality), range(*episodes), seed
        )
    else:
        table, _ = generate_shard(
            lambda: spec.make_sim(game, n_agents), policies, range(*episodes), seed
        )
    fs, path = storage.resolve(uri)
    data = storage.write_table_atomic(fs, storage.join(path, shard_file(index)), table)
    return _shard_info(index, episodes, n_agents, data, table, outcomes)


def _shard_info(
    index: int,
    episodes: tuple[int, int],
    n_agents: int,
    data: bytes,
    table: pa.Table,
    outcomes: dict[str, float] | None = None,
) -> ShardInfo:
    n_episodes = episodes[1] - episodes[0]
    if outcomes is not None:  # simulated team games: the return of the behaviour's team (0)
        mean_return = outcomes["return_sum"] / n_episodes
    else:
        mean_return = float(table["reward"].to_numpy().astype(np.float64).sum()) / (
            n_episodes * n_agents
        )
    return ShardInfo(
        index=index,
        file=shard_file(index),
        episodes=list(episodes),
        rows=table.num_rows,
        sha256=hashlib.sha256(data).hexdigest(),
        mean_return=mean_return,
        outcomes=outcomes,
    )


def _existing_shard(
    uri: str, bench: BenchmarkSpec, index: int, episodes: tuple[int, int], n: int, t: int
) -> ShardInfo | None:
    """A shard left by an interrupted run, if it is complete (it always is: atomic writes)."""
    fs, path = storage.resolve(uri)
    target = storage.join(path, shard_file(index))
    if not storage.exists(fs, target):
        return None
    data = storage.read_bytes(fs, target)
    table = pq.read_table(pa.BufferReader(data))
    if bench.simulator is not None:  # simulated episodes end early: check episode coverage
        got = np.unique(table["episode"].to_numpy())
        if not np.array_equal(got, np.arange(*episodes)):
            return None
        return _shard_info(index, episodes, n, data, table, bench.simulator.outcomes(table, n))
    if table.num_rows != (episodes[1] - episodes[0]) * n * t:
        return None
    return _shard_info(index, episodes, n, data, table)


def dataset_params(cfg: ExperimentConfig) -> dict[str, Any]:
    """The benchmark parameters the dataset is generated with (raises ValueError if invalid):
    the config's, with `data.n_agents` where the benchmark ties N to its parameters (battle:
    the agents per team, which set the map)."""
    bench = get_benchmark(cfg.benchmark.name)
    return bench.dataset_params(cfg.benchmark.params, cfg.data.n_agents)


def dataset_uri(cfg: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    """Where the dataset of this config lives (content-addressed) and its generating spec."""
    spec = dataset_spec(
        get_benchmark(cfg.benchmark.name).describe(dataset_params(cfg)),
        cfg.data.quality,
        cfg.data.n_agents,
        cfg.data.episodes,
        cfg.data.shards,
        cfg.data.seed,
    )
    root = cfg.runtime.storage
    if "://" not in root:  # absolute: Ray Train workers and rollout actors run elsewhere
        root = str(Path(root).resolve())
    return storage.join(root, "datasets", dataset_id(spec)), spec


class Dataset(NamedTuple):
    uri: str
    manifest: Manifest
    repaired: str | None  # what a re-run regenerated in a dataset that failed verification


def _inspect(
    uri: str, spec: dict[str, Any], ranges: list[tuple[int, int]]
) -> tuple[Manifest | None, list[Problem] | None, dict[int, ShardInfo]]:
    """What the store holds of a content-addressed dataset, without Ray: (its manifest if the
    whole dataset verifies, the problems found (None: no manifest yet), the shards to keep)."""
    fs, path = storage.resolve(uri)
    if not storage.exists(fs, storage.join(path, MANIFEST)):
        return None, None, {}
    try:
        old = read_manifest(uri)
    except ValueError as err:  # unparsable, or another schema version
        return None, [Problem(MANIFEST, "unreadable", one_line(err))], {}
    if old.spec != spec:  # not this dataset's: vouches for nothing
        return None, [Problem(MANIFEST, "spec mismatch", "another config's")], {}
    problems = dataset_problems(uri, old)
    if not problems:
        return old, [], {}
    bad = {p.file for p in problems}
    kept = {
        s.index: s
        for s in old.shards
        if s.file not in bad
        and s.index < len(ranges)
        and (s.file, tuple(s.episodes)) == (shard_file(s.index), ranges[s.index])
    }
    return None, problems, kept


def existing_dataset(cfg: ExperimentConfig) -> Dataset | None:
    """The dataset of `cfg` when it is complete and verifies, found without Ray (whose start
    takes 10-30 s); None when it must be generated or repaired. A user's dataset (`data.path`)
    that fails verification is refused (DatasetError)."""
    if cfg.data.path:
        return Dataset(cfg.data.path, verify_dataset(cfg.data.path), None)
    uri, spec = dataset_uri(cfg)
    good, _, _ = _inspect(uri, spec, shard_ranges(cfg.data.episodes, cfg.data.shards))
    return Dataset(uri, good, None) if good is not None else None


def shards_through(
    actors: list[Any], todo: list[int], submit: Callable[[Any, int], Any]
) -> Iterator[dict[str, Any]]:
    """Each shard of `todo` written by one of `actors`, results in completion order.

    A shard whose actor became unreachable (its node was lost: Ray raises ActorUnavailableError
    and does not retry the call itself, "it may or may not have run") goes back in the queue, at
    most ACTOR_RESTARTS times, for the next free actor. The unreachable actor gets work again
    only once it answers a ping (Ray restarts it on a node with free CPUs, `pool_size`); pinged
    for at most PROBATION_S, then left out. A shard is a pure function of (seed, episodes),
    written atomically, so running it twice writes the same bytes once. An actor gone for good
    (restarts spent) ends the generation with its error."""
    queue, free = deque(todo), list(actors)
    pending: dict[Any, tuple[Any, int]] = {}
    pings: dict[Any, tuple[Any, float]] = {}  # ping ref -> (actor, when its probation ends)
    tries: dict[int, int] = {}
    while queue or pending:
        while free and queue:
            actor, index = free.pop(), queue.popleft()
            pending[submit(actor, index)] = (actor, index)
        if not pending and not pings:  # shards left, no actor left to write them
            raise WorkerError(f"no generation actor answers; {len(queue)} shards not written")
        (ref,), _ = ray.wait([*pending, *pings], num_returns=1)
        if ref in pings:
            actor, until = pings.pop(ref)
            try:
                ray.get(ref)
                free.append(actor)
            except ActorUnavailableError:
                if time.monotonic() < until:
                    time.sleep(0.5)
                    pings[actor.__ray_ready__.remote()] = (actor, until)
            continue
        actor, index = pending.pop(ref)
        try:
            info = ray.get(ref)
        except ActorUnavailableError:
            tries[index] = tries.get(index, 0) + 1
            if tries[index] > ACTOR_RESTARTS:
                raise
            queue.append(index)
            pings[actor.__ray_ready__.remote()] = (actor, time.monotonic() + PROBATION_S)
            continue
        free.append(actor)
        yield info


PROBATION_S = 120.0


def generate_dataset(cfg: ExperimentConfig, *, max_actors: int | None = None) -> Dataset:
    """Generate (or verify and reuse) the dataset of `cfg`. Needs Ray to generate.

    A user's dataset (`data.path`) that fails verification is refused (DatasetError), never
    rewritten. A content-addressed one is repaired: the shards its manifest vouches for that
    verify are kept, the others regenerated, and the manifest is written again.
    """
    if cfg.data.path:
        return Dataset(cfg.data.path, verify_dataset(cfg.data.path), None)
    uri, spec = dataset_uri(cfg)
    fs, path = storage.resolve(uri)
    ranges = shard_ranges(cfg.data.episodes, cfg.data.shards)
    good, problems, kept = _inspect(uri, spec, ranges)
    if good is not None:
        return Dataset(uri, good, None)
    storage.makedirs(fs, path)

    bench = get_benchmark(cfg.benchmark.name)
    params = dataset_params(cfg)
    if bench.exact_model:
        game = bench.game(params)
        made = bench.behaviour(game, cfg.data.quality)
        policies, horizon = made.policies, game.horizon
    else:  # simulator-only: scripted behaviours, played inside the actors
        policies, horizon = [], 0
    n = cfg.data.n_agents
    if problems is None:  # resume: the shards an interrupted run wrote (atomically) stay
        kept = {
            i: s
            for i, r in enumerate(ranges)
            if (s := _existing_shard(uri, bench, i, r, n, horizon))
        }
    done = dict(kept)
    todo = [i for i in range(len(ranges)) if i not in done]
    if todo:
        n_actors = max(1, min(len(todo), max_actors or pool_size()))
        actors = [
            GeneratorActor.options(scheduling_strategy="DEFAULT").remote(  # type: ignore[attr-defined]
                cfg.benchmark.name, params, policies, cfg.data.quality
            )
            for _ in range(n_actors)
        ]
        try:
            results = shards_through(
                actors,
                todo,
                lambda a, i: a.write_shard.remote(uri, i, ranges[i], n, cfg.data.seed),
            )
            with progress(f"generate {uri.rsplit('/', 1)[-1]}", len(todo), "shards") as bar:
                for info in results:
                    shard = ShardInfo.model_validate(info)
                    done[shard.index] = shard
                    bar.advance()
        except RayError as err:
            raise WorkerError(f"dataset {uri}: {worker_failure(err)}; a re-run resumes") from err
        finally:  # shards already written stay; a re-run resumes from them
            for a in actors:
                ray.kill(a)

    shards = [done[i] for i in range(len(ranges))]
    if bench.simulator is not None:
        tot: dict[str, float] = {}
        for s in shards:
            for k, v in (s.outcomes or {}).items():
                tot[k] = tot.get(k, 0.0) + v
        behaviour = bench.simulator.summary(tot, cfg.data.quality)
    else:
        behaviour = {**behaviour_summary(game, policies), "made_by": made.info}
    if bench.reference_value is not None:
        behaviour["welfare_gap"] = float(bench.reference_value(game)) - behaviour["return"]
    behaviour["data_mean_return"] = float(
        sum(s.mean_return * (s.episodes[1] - s.episodes[0]) for s in shards) / cfg.data.episodes
    )
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        dataset_id=uri.rstrip("/").rsplit("/", 1)[-1],
        spec=spec,
        shards=shards,
        rows=sum(s.rows for s in shards),
        episodes=cfg.data.episodes,
        behaviour=behaviour,
        code_version=code_version(),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        row_schema=bench.row_schema,
    )
    write_manifest(uri, manifest)
    repaired = None if problems is None else _repair_note(problems, todo, ranges)
    return Dataset(uri, manifest, repaired)


def _repair_note(problems: list[Problem], todo: list[int], ranges: list[tuple[int, int]]) -> str:
    """E.g. `regenerated 1 of 4 shards: shard-00002.parquet (sha256 mismatch)`."""
    kinds = {p.file: p.kind for p in problems}
    files = [shard_file(i) for i in todo]
    note = f"regenerated {len(todo)} of {len(ranges)} shards"
    if files:
        note += ": " + ", ".join(f"{f} ({kinds.get(f, 'not in the manifest')})" for f in files)
    if own := [str(p) for p in problems if p.file == MANIFEST]:
        note += "; manifest rewritten: " + "; ".join(own)
    return note


def behaviour_summary(game: Any, policies: list[np.ndarray]) -> dict[str, Any]:
    """Exact mean-field figures of the behaviour data (finite games).

    `return`: mean over the policies of each one's value against its own flow (what the
    episodes achieve on average); `exploitability`: of the occupancy-weighted mixture, the
    behaviour policy pi_b of docs/data.md.
    """
    values = [policy_value(game, p) for p in policies]
    expl = [exploitability(game, p) for p in policies]
    return {
        "policies": len(policies),
        "return": float(np.mean(values)),
        "exploitability": float(exploitability(game, occupancy_mixture(game, policies))),
        "per_policy": [
            {"return": v, "exploitability": e} for v, e in zip(values, expl, strict=True)
        ],
    }
