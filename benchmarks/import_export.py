"""Cost of `mfd import` and `mfd export` (`mfdiffuser.api.import_data` / `export_data`, no Ray).

    .venv/bin/python benchmarks/import_export.py [--agents 10000] [--episodes 10] [--repeat 3]

Builds rows of crowd_1d (horizon 10, random behaviour: episodes x agents x 10 rows) without Ray,
writes them once as Parquet, CSV and .npz under a temporary directory (removed at the end),
then per format and repeat: a fresh import into a new store (read, validate, the (t, s, a)
estimates, shards, manifest) and an export of that dataset back to the same format. Printed:
wall and process CPU seconds of each, rows per second by wall time (median), and the 1-minute
load average before and after (the machine may be shared). Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mfdiffuser import api
from mfdiffuser.platform.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import crowd_rows, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    table = crowd_rows(args.agents, args.episodes)
    rows = table.num_rows
    print(f"crowd_1d: {args.episodes} episodes x {args.agents} agents x 10 = {rows} rows")
    with tempfile.TemporaryDirectory(prefix="mfd-bench-import-") as tmp:
        src = {k: Path(tmp) / f"rows.{k}" for k in ("parquet", "csv", "npz")}
        pq.write_table(table, src["parquet"], compression="zstd")
        pacsv.write_csv(table, src["csv"])
        np.savez(src["npz"], **{c: table[c].to_numpy() for c in table.column_names})
        for kind, path in src.items():
            size = path.stat().st_size / 1e6
            times_in, times_out = [], []  # (wall, cpu) of each run
            for r in range(args.repeat):
                cfg = load_config(None, [f"runtime.storage={tmp}/store-{kind}-{r}"])
                load = os.getloadavg()[0]
                made: list[dict] = []
                times_in.append(timed(partial(lambda p, c, m: m.append(api.import_data(p, c)),
                                              path, cfg, made)))  # fmt: skip
                out = f"{tmp}/out-{kind}-{r}.{kind}"
                times_out.append(timed(partial(api.export_data, made[0]["dataset"], out)))
                print(
                    f"  {kind} ({size:.1f} MB) run {r + 1}: import {times_in[-1][0]:.2f} s "
                    f"(cpu {times_in[-1][1]:.2f}), export {times_out[-1][0]:.2f} s "
                    f"(cpu {times_out[-1][1]:.2f}) (load {load:.2f} -> {os.getloadavg()[0]:.2f})"
                )
            wall_in = statistics.median(w for w, _ in times_in)
            wall_out = statistics.median(w for w, _ in times_out)
            print(
                f"{kind}: median import {wall_in:.2f} s wall, "
                f"{statistics.median(c for _, c in times_in):.2f} s cpu "
                f"({rows / wall_in / 1e6:.2f} M rows/s), median export {wall_out:.2f} s wall, "
                f"{statistics.median(c for _, c in times_out):.2f} s cpu "
                f"({rows / wall_out / 1e6:.2f} M rows/s)"
            )


if __name__ == "__main__":
    main()
