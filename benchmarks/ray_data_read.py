"""Read throughput of the trainer's two data paths (`train.data_path`) on one dataset.

local: `load_episodes` (every shard read whole, checksummed, into dense [E, T, N] arrays), as a
Train worker does today. ray_data: the dataset streamed through Ray Data (`streamed_dataset`: one
read task of 0.25 CPU per shard, each checksumming its shard) and assembled into whole episodes
(`StreamedShard.one_pass`), as a Train worker consumes its `get_dataset_shard`; the episodes are
counted and dropped, as a bounded buffer would. The dataset (crowd_1d, default 10^7 rows) is
generated with the platform, or reused when it exists. Repeats are interleaved (local,
ray_data, local, ...). Reported per run: rows/s, wall time, CPU time of this process and of
this process plus its descendant processes alive at the end (the local Ray: raylet, its
workers, the read tasks; a process that ended during the run is not counted), and the
1-minute load average before and after. Prints a table and writes JSON.

    .venv/bin/python benchmarks/ray_data_read.py --out /tmp/ray_data_read.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import ray

from mfdiffuser.data.windows import load_episodes
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.platform.config import load_config
from mfdiffuser.platform.runtime import local_ray
from mfdiffuser.workers.datagen import generate_dataset
from mfdiffuser.workers.ray_data import StreamedShard, streamed_dataset

TICKS = os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> dict[int, float]:
    """utime + stime (s) of `root` and of each live descendant, by pid (Linux /proc)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / TICKS
    out: dict[int, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        out[pid] = cpu.get(pid, 0.0)
        todo.extend(p for p, pp in parent.items() if pp == pid)
    return out


def _tree_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots by the processes alive at the second (a process that
    ended in between is not counted)."""
    return sum(c - before.get(pid, 0.0) for pid, c in after.items())


def read_local(uri: str) -> int:
    arrays, _ = load_episodes(uri)
    return int(arrays.states.size)


def read_ray_data(uri: str, game: Any, manifest: Any) -> int:
    stream = StreamedShard(streamed_dataset(uri).iterator(), game, manifest)
    rows = 0
    for episode in stream.one_pass():
        rows += int(episode[1].size)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", default="/tmp/mfd-bench-ray-data")
    ap.add_argument("--n-agents", type=int, default=1000)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default="ray_data_read.json")
    args = ap.parse_args()

    ray.init(**local_ray(num_cpus=args.cpus), _node_ip_address="127.0.0.1", log_to_driver=False)
    cfg = load_config(
        None,
        [
            f"runtime.storage={args.storage}",
            "data.quality=random",
            f"data.n_agents={args.n_agents}",
            f"data.episodes={args.episodes}",
            f"data.shards={args.shards}",
        ],
    )
    t0 = time.perf_counter()
    uri, manifest, _ = generate_dataset(cfg)
    generated_s = time.perf_counter() - t0
    game = get_benchmark(cfg.benchmark.name).game(cfg.benchmark.params)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for path in ("local", "ray_data"):
            load_before = os.getloadavg()[0]
            cpu0, tree0, wall0 = time.process_time(), _tree_cpu(os.getpid()), time.perf_counter()
            rows = read_local(uri) if path == "local" else read_ray_data(uri, game, manifest)
            wall = time.perf_counter() - wall0
            cpu, tree = time.process_time() - cpu0, _tree_delta(tree0, _tree_cpu(os.getpid()))
            assert rows == manifest.rows, (rows, manifest.rows)
            runs.append(
                {
                    "path": path,
                    "repeat": repeat,
                    "rows": rows,
                    "wall_s": wall,
                    "rows_per_s": rows / wall,
                    "process_cpu_s": cpu,
                    "tree_cpu_s": tree,
                    "load1_before": load_before,
                    "load1_after": os.getloadavg()[0],
                }
            )
            r = runs[-1]
            print(
                f"{path:9s} #{repeat}  {rows:>10d} rows  {r['wall_s']:7.2f} s wall  "
                f"{r['rows_per_s'] / 1e6:6.2f} M rows/s  cpu {cpu:6.2f} s (tree {tree:6.2f} s)  "
                f"load {load_before:5.2f} -> {r['load1_after']:5.2f}",
                flush=True,
            )
    ray.shutdown()
    result = {
        "dataset": uri,
        "rows": manifest.rows,
        "shards": len(manifest.shards),
        "generated_s": generated_s,
        "cpus": args.cpus,
        "nproc": os.cpu_count(),
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
