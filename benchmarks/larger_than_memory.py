"""Training on a dataset larger than the memory it is given: `mfd train` under a hard memory cap,
with each of the trainer's data paths (`train.data_path`).

    .venv/bin/python benchmarks/larger_than_memory.py [--limit-gb 4] [--agents 10000]
        [--episodes 4000] [--shards 40] [--buffer-episodes 64] [--storage /tmp/mfd-bench-ltm]

Needs root and a writable cgroup v1 memory hierarchy (/sys/fs/cgroup/memory): the cap is a
memory cgroup made for the run (memory.limit_in_bytes = --limit-gb), and `mfd train` is started
inside it, so the cap holds its whole process tree: the driver, the local Ray it starts (GCS,
raylet, dashboard, object store pages in /dev/shm), the Train worker and Ray Data's read tasks.
No swap is used (this machine has none).

1. `mfd generate` (outside the cap) makes a crowd_1d dataset of --agents x --episodes x 10
   rows (random behaviour), or reuses it. Printed: rows, bytes of Parquet on disk, and its
   decoded size as the trainer's arrays (state, action, reward: 12 bytes a row), which is what
   `train.data_path=local` must hold at once, besides the Arrow table it sorts them from.
2. `mfd train` on it with `train.data_path=local`, then with `train.data_path=ray_data` (a
   buffer of --buffer-episodes whole episodes, `train.buffer_episodes`), each in a fresh
   cgroup under the same cap, with the same tiny model and budget (1 epoch of 20 steps).
   Printed for each: exit status; wall time; the peak of the cgroup's anonymous memory (rss +
   shmem, sampled every 0.25 s: what the kernel cannot reclaim); its peak with the page cache
   (memory.max_usage_in_bytes: cgroup v1 charges cached file pages too, and reclaims them under
   the cap); the hits of the limit (memory.failcnt); the OOM kills (memory.oom_control).
Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup/memory")
BIN = Path(sys.executable).parent
TINY = [
    "train.epochs=1",
    "train.steps_per_epoch=20",
    "train.batch_size=16",
    "train.num_workers=1",
    "planner.window=2",
    "planner.diffusion_steps=4",
    "planner.n_particles=8",
    "planner.max_particles=8",
    "planner.hidden=16",
    "planner.n_blocks=1",
]


def sets(settings: list[str]) -> list[str]:
    return [x for s in settings for x in ("-s", s)]


def capped(cmd: list[str], limit: int, name: str, log: Path) -> dict[str, float | int]:
    """Run `cmd` inside a fresh memory cgroup of `limit` bytes; its figures after it ends."""
    group = CGROUP / name
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        start = time.perf_counter()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                # join the group before exec: every child (Ray, its workers) is born inside it
                preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())),
                start_new_session=True,
            )
            anon = 0  # the peak of what the kernel cannot reclaim: rss + shmem (no swap here)
            while (rc := proc.poll()) is None:
                anon = max(anon, _anon(group))
                time.sleep(0.25)
        wall = time.perf_counter() - start
        oom = (group / "memory.oom_control").read_text()
        kills = int(next((ln.split()[1] for ln in oom.splitlines() if "oom_kill " in ln), "0"))
        figures = {
            "rc": rc,
            "wall_s": round(wall, 1),
            "peak_anon_gb": round(anon / 2**30, 3),
            "peak_with_cache_gb": round(
                int((group / "memory.max_usage_in_bytes").read_text()) / 2**30, 3
            ),
            "limit_hits": int((group / "memory.failcnt").read_text()),
            "oom_kills": kills,
        }
    finally:
        _drain(group)
    return figures


def _anon(group: Path) -> int:
    stat = dict(ln.split() for ln in (group / "memory.stat").read_text().splitlines())
    return int(stat["total_rss"]) + int(stat["total_shmem"])


def _drain(group: Path) -> None:
    """End what is left in the group (only processes this run started), then remove it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    group.rmdir()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit-gb", type=float, default=4.0)
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--episodes", type=int, default=4000)
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--buffer-episodes", type=int, default=64)
    ap.add_argument("--storage", default="/tmp/mfd-bench-ltm")
    ap.add_argument("--only", choices=["local", "ray_data"], help="one data path only")
    args = ap.parse_args()
    if not (CGROUP / "memory.limit_in_bytes").exists():
        sys.exit(f"needs a cgroup v1 memory hierarchy at {CGROUP}")
    storage = Path(args.storage)
    storage.mkdir(parents=True, exist_ok=True)
    data = [
        "data.quality=random",
        f"data.n_agents={args.agents}",
        f"data.episodes={args.episodes}",
        f"data.shards={args.shards}",
    ]
    where = ["--storage", str(storage), "--tracking-uri", f"sqlite:///{storage / 'mlflow.db'}"]
    start = time.perf_counter()
    made = subprocess.run(
        [str(BIN / "mfd"), "generate", "crowd_1d", *sets(data), *where[:2], "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    dataset = json.loads(made.stdout)["dataset"]
    on_disk = sum(p.stat().st_size for p in Path(dataset).glob("shard-*.parquet"))
    rows = args.agents * args.episodes * 10
    print(
        f"dataset {dataset}: {rows:,} rows, {on_disk / 2**30:.2f} GiB of Parquet, "
        f"{rows * 12 / 2**30:.2f} GiB as the trainer's arrays; made or reused in "
        f"{time.perf_counter() - start:.0f} s; cap {args.limit_gb:g} GiB; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    limit = int(args.limit_gb * 2**30)
    results = {}
    for path in ["local", "ray_data"] if args.only is None else [args.only]:
        cmd = [str(BIN / "mfd"), "train", "--dataset", dataset, *sets(data), *sets(TINY)]
        cmd += sets([f"train.data_path={path}", f"train.buffer_episodes={args.buffer_episodes}"])
        cmd += [*where, "--json"]
        log = storage / f"train-{path}.log"
        load = os.getloadavg()[0]
        figures = capped(cmd, limit, f"mfd-ltm-{os.getpid()}-{path}", log)
        results[path] = {**figures, "load_before": load, "load_after": os.getloadavg()[0]}
        print(f"{path:>9}: {results[path]} (log {log})")
    print(json.dumps({"rows": rows, "parquet_bytes": on_disk, "limit": limit, **results}))


if __name__ == "__main__":
    main()
