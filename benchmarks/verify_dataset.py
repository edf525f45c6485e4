"""Cost of verifying a dataset against its manifest (`mfdiffuser.data.verify.verify_dataset`).

    .venv/bin/python benchmarks/verify_dataset.py [--size-gb 1.0] [--dataset DIR] [--repeat 3]

Without --dataset it builds one of about --size-gb under a temporary directory (removed at the
end), without Ray: one real shard (crowd_1d, random behaviour, 20,000 agents, 10 episodes: 2M
rows, zstd, as `mfd generate` writes it) copied into as many shard files as the size needs,
with a manifest as the generator writes it. Verification reads every byte (sha256) plus each
footer, so its cost depends on the bytes only, not on whether shards differ. With --dataset it
times that dataset instead.

Printed: wall seconds and process CPU seconds of each verification, the 1-minute load average
before and after it (the machine may be shared), and seconds per GB (median wall time / size).
Then the reader's own check (`read_shard`, what `load_episodes` does per shard: hash the bytes it
parses): every shard read plainly (`pyarrow.parquet.read_table`) and read checked, alternately,
and the median extra seconds per GB and as a fraction of the plain read.
The files of a freshly built dataset sit in the page cache, so this is the cost of hashing and
of the filesystem calls, not of the disk; a cold read adds the disk's own time. Not part of the
test pass/fail.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from mfdiffuser.data.manifest import read_manifest
from mfdiffuser.data.verify import read_shard, verify_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import crowd_rows, repeated_dataset

N_AGENTS, EPISODES_PER_SHARD = 20_000, 10


def build(root: Path, size_gb: float) -> Path:
    """About `size_gb` of shards: one shard's rows (2M rows, zstd) as many times as it takes."""
    table = crowd_rows(N_AGENTS, EPISODES_PER_SHARD)
    one = io.BytesIO()
    pq.write_table(table, one, compression="zstd")
    n_shards = max(1, round(size_gb * 1e9 / one.tell()))
    uri, _ = repeated_dataset(str(root), table, n_shards, N_AGENTS, EPISODES_PER_SHARD)
    return Path(uri)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--dataset", help="time this dataset instead of building one")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mfd-verify-") as tmp:
        if args.dataset:
            uri = Path(args.dataset)
        else:
            start = time.perf_counter()
            uri = build(Path(tmp), args.size_gb)
            print(f"built {uri} in {time.perf_counter() - start:.1f} s")
        size = sum(p.stat().st_size for p in uri.iterdir() if p.is_file())
        n_shards = len(list(uri.glob("shard-*.parquet")))
        print(f"{n_shards} shards, {size / 1e9:.3f} GB")
        print(f"{'run':>3} {'wall s':>8} {'cpu s':>8} {'load before':>11} {'load after':>10}")
        walls = []
        for i in range(args.repeat):
            load0 = os.getloadavg()[0]
            wall0, cpu0 = time.perf_counter(), time.process_time()
            verify_dataset(str(uri))
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            walls.append(wall)
            print(f"{i + 1:>3} {wall:>8.2f} {cpu:>8.2f} {load0:>11.2f} {os.getloadavg()[0]:>10.2f}")
        print(
            f"median {statistics.median(walls) / (size / 1e9):.2f} s per GB (wall), "
            f"on {os.cpu_count()} cores"
        )
        shards = read_manifest(str(uri)).shards
        plain, checked = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for shard in shards:
                pq.read_table(uri / shard.file)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            for shard in shards:
                read_shard(str(uri), shard)
            checked.append(time.perf_counter() - start)
        extra = statistics.median(c - p for c, p in zip(checked, plain, strict=True))
        print(
            f"read: plain {statistics.median(plain):.2f} s, checked "
            f"{statistics.median(checked):.2f} s (medians); the check adds "
            f"{extra / (size / 1e9):.2f} s per GB, {extra / statistics.median(plain):+.1%} "
            "of the plain read"
        )


if __name__ == "__main__":
    main()
