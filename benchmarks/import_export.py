"""Cost of `mfd import` and `mfd export` (`mfdiffuser.api.import_data` / `export_data`, no Ray).

    .venv/bin/python benchmarks/import_export.py [--agents 10000] [--episodes 10] [--repeat 3]

Builds rows of crowd_1d (horizon 10, random behaviour: episodes x agents x 10 rows) without Ray,
writes them once as Parquet, CSV and .npz under a temporary directory (removed at the end),
then per format and repeat: a fresh import into a new store (read, validate, the (t, s, a)
estimates, shards, manifest) and an export of that dataset back to the same format. Printed:
wall seconds of each, rows per second (median), and the 1-minute load average before and after
(the machine may be shared). Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mfdiffuser import api
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.platform.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spec = get_benchmark("crowd_1d")
    game = spec.game({})
    policies = spec.behaviour(game, "random").policies
    table, _ = generate_shard(
        lambda: spec.make_sim(game, args.agents), policies, range(args.episodes), 0
    )
    rows = table.num_rows
    print(
        f"crowd_1d: {args.episodes} episodes x {args.agents} agents x {game.horizon} = {rows} rows"
    )
    with tempfile.TemporaryDirectory(prefix="mfd-bench-import-") as tmp:
        src = {k: Path(tmp) / f"rows.{k}" for k in ("parquet", "csv", "npz")}
        pq.write_table(table, src["parquet"], compression="zstd")
        pacsv.write_csv(table, src["csv"])
        np.savez(src["npz"], **{c: table[c].to_numpy() for c in table.column_names})
        for kind, path in src.items():
            size = path.stat().st_size / 1e6
            times_in, times_out = [], []
            for r in range(args.repeat):
                cfg = load_config(None, [f"runtime.storage={tmp}/store-{kind}-{r}"])
                load = os.getloadavg()[0]
                start = time.perf_counter()
                made = api.import_data(path, cfg)
                times_in.append(time.perf_counter() - start)
                start = time.perf_counter()
                api.export_data(made["dataset"], f"{tmp}/out-{kind}-{r}.{kind}")
                times_out.append(time.perf_counter() - start)
                print(
                    f"  {kind} ({size:.1f} MB) run {r + 1}: import {times_in[-1]:.2f} s, export "
                    f"{times_out[-1]:.2f} s (load {load:.2f} -> {os.getloadavg()[0]:.2f})"
                )
            print(
                f"{kind}: median import {statistics.median(times_in):.2f} s "
                f"({rows / statistics.median(times_in) / 1e6:.2f} M rows/s), median export "
                f"{statistics.median(times_out):.2f} s "
                f"({rows / statistics.median(times_out) / 1e6:.2f} M rows/s)"
            )


if __name__ == "__main__":
    main()
