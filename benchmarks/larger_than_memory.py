"""Training on a dataset larger than the memory it is given: `mfd train` on a Ray node capped at
--limit-gb, with each of the trainer's data paths (`train.data_path`).

    .venv/bin/python benchmarks/larger_than_memory.py [--limit-gb 4] [--agents 10000]
        [--episodes 8000] [--local-episodes 2000] [--shards 800] [--buffer-episodes 64]

Needs root and a writable cgroup v1 memory hierarchy (/sys/fs/cgroup/memory). For each run a
memory cgroup is made with memory.limit_in_bytes = --limit-gb, and inside it a Ray head is
started that knows that memory (`ray start --memory`, an object store of 30% of it, Ray's own
default share of a node's memory), then `mfd train --address` on it. The cap holds the whole
process tree: the driver, the head (GCS, raylet, dashboard, the object store's pages in
/dev/shm), the Train worker and Ray Data's read tasks. This machine has no swap. What is left in
the cgroup afterwards (only what the run started) is ended by PID.

Datasets (crowd_1d, random behaviour, --agents agents, horizon 10), made or reused by
`mfd generate` outside the cap; for each, printed: rows, bytes of Parquet, and its size as the
trainer's arrays (state, action, reward: 12 bytes a row; the Arrow table they are sorted from
holds 28 bytes a row more):
- `train.data_path=ray_data` on --episodes episodes in --shards shards (8e8 rows by default:
  8.9 GiB as arrays, 1e6 rows a shard), a buffer of --buffer-episodes whole episodes
  (`train.buffer_episodes`). Shards of 1e7 rows were OOM-killed under a 4 GiB cap: each Ray
  Data read task holds its whole shard, and two or three run at once;
- `train.data_path=local` on --local-episodes episodes, the shards in proportion (2e8 rows:
  the most `local` allows a worker; more is refused before any Ray work).
The same tiny model and budget for both (1 epoch of 20 steps). Printed for each run: exit
status; wall time; the peak of the cgroup's anonymous memory (rss + shmem, sampled every
0.25 s: what the kernel cannot reclaim); its peak with the page cache
(memory.max_usage_in_bytes: cgroup v1 charges cached file pages too, and reclaims them under
the cap); the hits of the limit (memory.failcnt); the OOM kills (memory.oom_control).
Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
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


def generate(storage: Path, agents: int, episodes: int, shards: int) -> tuple[str, list[str]]:
    """`mfd generate` (outside the cap), or reuse: (the dataset, its data settings)."""
    data = [
        "data.quality=random",
        f"data.n_agents={agents}",
        f"data.episodes={episodes}",
        f"data.shards={shards}",
    ]
    start = time.perf_counter()
    made = subprocess.run(
        [
            str(BIN / "mfd"),
            "generate",
            "crowd_1d",
            *sets(data),
            "--storage",
            str(storage),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    dataset = json.loads(made.stdout)["dataset"]
    on_disk = sum(p.stat().st_size for p in Path(dataset).glob("shard-*.parquet"))
    rows = agents * episodes * 10
    print(
        f"dataset {dataset}: {rows:,} rows, {on_disk / 2**30:.2f} GiB of Parquet, "
        f"{rows * 12 / 2**30:.2f} GiB as the trainer's arrays; made or reused in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return dataset, data


def node_then_train(limit: int, storage: Path, train: list[str], name: str) -> list[str]:
    """A shell line run inside the cap: a Ray head that knows its memory (`--memory`, and an
    object store of 30% of it, Ray's own default share of a node's memory), then `mfd train`
    on it. The head's processes stay in the cgroup; `_drain` ends them afterwards."""
    gcs, dash = (_free_port() for _ in range(2))
    ray_tmp = f"/tmp/ltm-{os.getpid()}-{name}"
    head = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--num-cpus=2",
        f"--memory={limit}",
        f"--object-store-memory={int(0.3 * limit)}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--temp-dir={ray_tmp}",
    ]
    # token auth on both sides (`ray start`'s default in Ray 2.60; the client must ask for it)
    line = (
        f"export RAY_AUTH_MODE=token; {shlex.join(head)} > {storage / f'ray-{name}.log'} 2>&1 && "
    )
    line += f"exec {shlex.join([*train, '--address', f'127.0.0.1:{gcs}'])}"
    return ["bash", "-c", line]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit-gb", type=float, default=4.0)
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--episodes", type=int, default=8000)
    ap.add_argument("--local-episodes", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=800)
    ap.add_argument("--buffer-episodes", type=int, default=64)
    ap.add_argument("--storage", default="/tmp/mfd-bench-ltm")
    ap.add_argument("--only", choices=["local", "ray_data"], help="one data path only")
    args = ap.parse_args()
    if not (CGROUP / "memory.limit_in_bytes").exists():
        sys.exit(f"needs a cgroup v1 memory hierarchy at {CGROUP}")
    storage = Path(args.storage)
    storage.mkdir(parents=True, exist_ok=True)
    limit = int(args.limit_gb * 2**30)
    print(f"cap {args.limit_gb:g} GiB; load {os.getloadavg()[0]:.2f}")
    results = {}
    runs = {"local": args.local_episodes, "ray_data": args.episodes}
    for path, episodes in runs.items():
        if args.only not in (None, path):
            continue
        shards = max(1, args.shards * episodes // args.episodes)
        dataset, data = generate(storage, args.agents, episodes, shards)
        tracking = ["--tracking-uri", f"sqlite:///{storage / 'mlflow.db'}"]
        train = [str(BIN / "mfd"), "train", "--dataset", dataset, *sets(data), *sets(TINY)]
        train += sets([f"train.data_path={path}", f"train.buffer_episodes={args.buffer_episodes}"])
        train += ["--storage", str(storage), *tracking, "--json"]
        log = storage / f"train-{path}.log"
        load = os.getloadavg()[0]
        cmd = node_then_train(limit, storage, train, path)
        figures = capped(cmd, limit, f"mfd-ltm-{os.getpid()}-{path}", log)
        results[path] = {
            "rows": args.agents * episodes * 10,
            **figures,
            "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2),
        }
        print(f"{path:>9}: {results[path]} (log {log})")
    print(json.dumps({"limit": limit, **results}))


if __name__ == "__main__":
    main()
