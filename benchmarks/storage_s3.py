"""Writing, verifying and reading a dataset's shards on a local directory against an S3 endpoint
(moto's server on 127.0.0.1, started and stopped here; the dev extra installs it).

    .venv/bin/python benchmarks/storage_s3.py [--shards 8] [--agents 2000] [--repeat 3]

One real shard (crowd_1d, random behaviour, --agents agents, 10 episodes, zstd, as
`mfd generate` writes it) written --shards times through `storage.write_table_atomic`, then
`verify_dataset` (every byte hashed) and `read_shard` (what each Train worker does per shard),
on each store. Printed per store and step: the median wall and process CPU seconds over
--repeat, MB/s by wall time, and the 1-minute load average before the run (the machine may be
shared). moto keeps objects in its own process's memory, so this measures the S3 protocol path
(HTTP, signing, pyarrow's S3 client), not a real network or disk. Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mfdiffuser.data import storage
from mfdiffuser.data.generate import generate_shard
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
from mfdiffuser.data.verify import read_shard, verify_dataset
from mfdiffuser.envs.registry import get_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from s3 import start_s3, stop_s3

EPISODES_PER_SHARD = 10


def write(uri: str, table, n_shards: int, n_agents: int) -> int:  # type: ignore[no-untyped-def]
    spec = get_benchmark("crowd_1d")
    episodes = n_shards * EPISODES_PER_SHARD
    ds_spec = dataset_spec(spec.describe({}), "random", n_agents, episodes, n_shards, seed=0)
    fs, root = storage.resolve(uri)
    storage.makedirs(fs, root)
    shards, size = [], 0
    for i, rng in enumerate(shard_ranges(episodes, n_shards)):
        data = storage.write_table_atomic(fs, storage.join(root, shard_file(i)), table)
        size += len(data)
        shards.append(
            ShardInfo(
                index=i,
                file=shard_file(i),
                episodes=list(rng),
                rows=table.num_rows,
                sha256=hashlib.sha256(data).hexdigest(),
                mean_return=0.0,
            )
        )
    write_manifest(
        uri,
        Manifest(
            schema_version=SCHEMA_VERSION,
            dataset_id=dataset_id(ds_spec),
            spec=ds_spec,
            shards=shards,
            rows=table.num_rows * n_shards,
            episodes=episodes,
            behaviour={"return": 0.0, "exploitability": None},
            code_version="benchmark",
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ),
    )
    return size


def timed(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--agents", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    spec = get_benchmark("crowd_1d")
    game = spec.game({})
    policies = spec.behaviour(game, "random").policies
    table, _ = generate_shard(
        lambda: spec.make_sim(game, args.agents), policies, range(EPISODES_PER_SHARD), seed=0
    )
    with tempfile.TemporaryDirectory(prefix="mfd-s3bench-") as tmp:
        server = start_s3(Path(tmp))
        os.environ.update(server.env)
        try:
            stores = {"local": str(Path(tmp) / "local"), "s3 (moto)": server.uri("bench")}
            print(f"{args.shards} shards of {table.num_rows} rows; load {os.getloadavg()[0]:.2f}")
            print(f"{'store':>10} {'step':>7} {'wall s':>8} {'cpu s':>7} {'MB/s':>7} {'load':>5}")
            # Repeats interleaved: store by store within each repeat, so load drifts hit both.
            steps: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
            size = 0
            for r in range(args.repeat):
                for name, root in stores.items():
                    uri = f"{root}/run{r}"
                    load = os.getloadavg()[0]

                    def do_write(uri: str = uri) -> None:
                        nonlocal size
                        size = write(uri, table, args.shards, args.agents)

                    steps.setdefault((name, "write"), []).append((*timed(do_write), load))
                    steps.setdefault((name, "verify"), []).append(
                        (*timed(lambda u=uri: verify_dataset(u)), load)
                    )
                    m = read_manifest(uri)
                    steps.setdefault((name, "read"), []).append(
                        (*timed(lambda u=uri, m=m: [read_shard(u, s) for s in m.shards]), load)
                    )
            for (name, step), runs in steps.items():
                wall = statistics.median(w for w, _, _ in runs)
                cpu = statistics.median(c for _, c, _ in runs)
                load = statistics.median(ld for _, _, ld in runs)
                mbs = size / 1e6 / wall
                print(f"{name:>10} {step:>7} {wall:8.3f} {cpu:7.3f} {mbs:7.1f} {load:5.2f}")
        finally:
            stop_s3(server.process)


if __name__ == "__main__":
    main()
