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
import os
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

from mfdiffuser.data.manifest import read_manifest
from mfdiffuser.data.verify import read_shard, verify_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import crowd_rows, repeated_dataset, timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from s3 import start_s3, stop_s3

EPISODES_PER_SHARD = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--agents", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    table = crowd_rows(args.agents, EPISODES_PER_SHARD)
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
                    made: list[tuple[str, int]] = []
                    load = os.getloadavg()[0]
                    write = partial(repeated_dataset, f"{root}/run{r}", table, args.shards)
                    do_write = partial(
                        lambda w, m: m.append(w(args.agents, EPISODES_PER_SHARD)), write, made
                    )
                    steps.setdefault((name, "write"), []).append((*timed(do_write), load))
                    uri, size = made[0]
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
