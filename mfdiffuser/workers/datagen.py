"""Offline dataset generation by a pool of Ray actors, one shard per task.

Resumable: shards are written atomically and their content depends only on (dataset seed,
episode index), so a re-run after an interruption skips the shards that exist and regenerates the
rest; the manifest is written last, and a dataset with a manifest is complete and is reused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.util import ActorPool

from mfdiffuser.data import storage
from mfdiffuser.data.manifest import (
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
from mfdiffuser.envs import exploitability, policy_value
from mfdiffuser.envs.behaviour import occupancy_mixture
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.platform.config import ExperimentConfig
from mfdiffuser.platform.provenance import code_version


@ray.remote(num_cpus=0.5)
class GeneratorActor:
    """Holds one benchmark instance and its behaviour policies; writes shards on request."""

    def __init__(self, benchmark: str, params: dict[str, Any], policies: list[np.ndarray]) -> None:
        self.spec = get_benchmark(benchmark)
        self.game = self.spec.game(params)
        self.policies = policies

    def write_shard(
        self, uri: str, index: int, episodes: tuple[int, int], n_agents: int, seed: int
    ) -> dict[str, Any]:
        from mfdiffuser.data.generate import generate_shard

        table, _ = generate_shard(
            lambda: self.spec.make_sim(self.game, n_agents), self.policies, range(*episodes), seed
        )
        fs, path = storage.resolve(uri)
        data = storage.write_table_atomic(fs, storage.join(path, shard_file(index)), table)
        return _shard_info(index, episodes, n_agents, data, table).model_dump()


def _shard_info(
    index: int, episodes: tuple[int, int], n_agents: int, data: bytes, table: pa.Table
) -> ShardInfo:
    rewards = table["reward"].to_numpy().astype(np.float64)
    return ShardInfo(
        index=index,
        file=shard_file(index),
        episodes=list(episodes),
        rows=table.num_rows,
        sha256=hashlib.sha256(data).hexdigest(),
        mean_return=float(rewards.sum() / ((episodes[1] - episodes[0]) * n_agents)),
    )


def _existing_shard(
    uri: str, index: int, episodes: tuple[int, int], n: int, t: int
) -> ShardInfo | None:
    """A shard left by an interrupted run, if it is complete (it always is: atomic writes)."""
    fs, path = storage.resolve(uri)
    target = storage.join(path, shard_file(index))
    if not storage.exists(fs, target):
        return None
    data = storage.read_bytes(fs, target)
    table = pq.read_table(pa.BufferReader(data))
    if table.num_rows != (episodes[1] - episodes[0]) * n * t:
        return None
    return _shard_info(index, episodes, n, data, table)


def dataset_uri(cfg: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    """Where the dataset of this config lives (content-addressed) and its generating spec."""
    spec = dataset_spec(
        get_benchmark(cfg.benchmark.name).describe(cfg.benchmark.params),
        cfg.data.quality,
        cfg.data.n_agents,
        cfg.data.episodes,
        cfg.data.shards,
        cfg.data.seed,
    )
    return storage.join(cfg.runtime.storage, "datasets", dataset_id(spec)), spec


def generate_dataset(
    cfg: ExperimentConfig, *, max_actors: int | None = None
) -> tuple[str, Manifest]:
    """Generate (or reuse) the dataset of `cfg`; returns its URI and manifest. Needs Ray."""
    if cfg.data.path:
        return cfg.data.path, read_manifest(cfg.data.path)
    uri, spec = dataset_uri(cfg)
    fs, path = storage.resolve(uri)
    if storage.exists(fs, storage.join(path, "manifest.json")):
        return uri, read_manifest(uri)
    storage.makedirs(fs, path)

    bench = get_benchmark(cfg.benchmark.name)
    game = bench.game(cfg.benchmark.params)
    made = bench.behaviour(game, cfg.data.quality)
    policies = made.policies
    n, horizon = cfg.data.n_agents, game.horizon
    ranges = shard_ranges(cfg.data.episodes, cfg.data.shards)
    done = {i: s for i, r in enumerate(ranges) if (s := _existing_shard(uri, i, r, n, horizon))}
    todo = [i for i in range(len(ranges)) if i not in done]
    if todo:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        n_actors = max(1, min(len(todo), max_actors or int(cpus / 0.5)))
        actors = [
            GeneratorActor.remote(cfg.benchmark.name, cfg.benchmark.params, policies)
            for _ in range(n_actors)
        ]
        pool = ActorPool(actors)
        try:
            results = pool.map_unordered(
                lambda a, i: a.write_shard.remote(uri, i, ranges[i], n, cfg.data.seed), todo
            )
            for info in results:
                shard = ShardInfo.model_validate(info)
                done[shard.index] = shard
        finally:  # shards already written stay; a re-run resumes from them
            for a in actors:
                ray.kill(a)

    shards = [done[i] for i in range(len(ranges))]
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
    )
    write_manifest(uri, manifest)
    return uri, manifest


def behaviour_summary(game: Any, policies: list[np.ndarray]) -> dict[str, Any]:
    """Exact mean-field figures of the behaviour data (finite games).

    `return`: mean over the policies of each one's value against its own flow (what the
    episodes achieve on average); `exploitability`: of the occupancy-weighted mixture, the
    behaviour policy pi_b of METHOD.md §3.
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
