"""What the storage benchmarks share (storage_s3.py, verify_dataset.py, import_export.py): rows
of crowd_1d made without Ray, a dataset of one shard's rows repeated, written through the
storage layer as `mfd generate` writes it (a local path or a URI), and a timer that reads both
wall and process CPU time."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable

import pyarrow as pa

from mfdiffuser.data import storage
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.manifest import (
    Manifest,
    ShardInfo,
    dataset_id,
    dataset_spec,
    shard_file,
    shard_ranges,
    write_manifest,
)
from mfdiffuser.data.schema import SCHEMA_VERSION
from mfdiffuser.envs.registry import get_benchmark


def crowd_rows(agents: int, episodes: int, seed: int = 0) -> pa.Table:
    """crowd_1d at its defaults (horizon 10), random behaviour: episodes x agents x 10 rows."""
    spec = get_benchmark("crowd_1d")
    game = spec.game({})
    policies = spec.behaviour(game, "random").policies
    table, _ = generate_shard(lambda: spec.make_sim(game, agents), policies, range(episodes), seed)
    return table


def repeated_dataset(
    root: str, table: pa.Table, n_shards: int, agents: int, episodes_per_shard: int
) -> tuple[str, int]:
    """A crowd_1d dataset under `root` (a path or URI) whose `n_shards` shards each hold the rows
    of `table`, with a manifest as the generator writes it: (its URI, the shard bytes written).
    The shards' episode ranges are contiguous; their rows repeat (a storage measure needs bytes,
    not distinct episodes)."""
    spec = get_benchmark("crowd_1d")
    episodes = n_shards * episodes_per_shard
    ds_spec = dataset_spec(spec.describe({}), "random", agents, episodes, n_shards, seed=0)
    uri = storage.join(root, dataset_id(ds_spec))
    fs, path = storage.resolve(uri)
    storage.makedirs(fs, path)
    shards, size = [], 0
    for i, rng in enumerate(shard_ranges(episodes, n_shards)):
        data = storage.write_table_atomic(fs, storage.join(path, shard_file(i)), table)
        size += len(data)
        sha = hashlib.sha256(data).hexdigest()
        shards.append(
            ShardInfo(
                index=i,
                file=shard_file(i),
                episodes=list(rng),
                rows=table.num_rows,
                sha256=sha,
                mean_return=0.0,
            )
        )
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        dataset_id=dataset_id(ds_spec),
        spec=ds_spec,
        shards=shards,
        rows=table.num_rows * n_shards,
        episodes=episodes,
        behaviour={"return": 0.0, "exploitability": None},
        code_version="benchmark",
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    write_manifest(uri, manifest)
    return uri, size


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0
