"""battle: our numpy simulator vs MAgent2's C++ battle engine, agent-steps per second on one core.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/battle_vs_magent2.py [--steps 50] [--maps 160 320]

Both sides play the same workload: MAgent's battle layout (0.04·map² agents per team), uniform
random actions drawn in advance (so the policy costs nothing), `steps` steps. "with obs" also
computes every living agent's 13x13 local view each step (ours: walls, own presence, own HP, other
presence, other HP; MAgent2: its view tensor of the same content plus its minimap channels and
feature vector, i.e. `get_observation` of both groups); "no obs" is stepping only (ours also
returns the normalised (x, y, hp) states, which is what the mean-field planner reads). MAgent2 is
run the way its own battle environment runs it: `set_action` per group, `step`, `clear_dead`.
Agent-steps count the agents alive at the start of each step. Needs `pip install magent2==0.3.4`
(the `bench` extra); OpenMP is limited to one thread before magent2 is imported.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"  # magent2 reads it at import; one core for both sides
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np

from mfdiffuser.envs.battle import N_ACTIONS, BattleParams, BattleSim

ROOT = Path(__file__).resolve().parents[1]


def random_plan(steps: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, N_ACTIONS, size=(steps, n), dtype=np.int32)


def ours(map_size: int, steps: int, obs: bool, seed: int = 0) -> tuple[float, int]:
    sim = BattleSim(BattleParams(map_size=map_size, max_steps=10**5, observations=obs))
    sim.reset(seed)
    plan = random_plan(steps, sim.n_agents, seed)
    agent_steps = 0
    start = time.perf_counter()
    for t in range(steps):
        agent_steps += int(sim.n_alive.sum())
        if obs:
            sim.observations(np.flatnonzero(sim.alive))
        sim.step(plan[t])
    return agent_steps / (time.perf_counter() - start), sim.n_agents


def ours_memory(map_size: int, obs: bool) -> float:
    """Bytes per agent held by one simulator after a step (tracemalloc: numpy's buffers)."""
    tracemalloc.start()
    sim = BattleSim(BattleParams(map_size=map_size, max_steps=10**5, observations=obs))
    sim.step(np.zeros(sim.n_agents, dtype=np.int64))
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current / sim.n_agents


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def magent_memory(map_size: int) -> float:
    """Bytes per agent by RSS growth while MAgent2 builds the map and takes one step with obs.

    Measured in a fresh interpreter: in this one, freed memory of earlier runs hides the growth.
    """
    child = (
        "import sys; sys.argv = ['x']; import benchmarks.battle_vs_magent2 as b; "
        f"print(b.magent_memory_here({map_size}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(done.stdout.strip().splitlines()[-1])


def magent_memory_here(map_size: int) -> float:
    import magent2  # noqa: F401  (the library's own import-time allocations are not counted)

    before = rss()
    env, total = magent_env(map_size, 0)
    for h in env.get_handles():
        env.get_observation(h)
    env.step()
    return (rss() - before) / total


def magent_env(map_size: int, seed: int) -> tuple[Any, int]:
    import math

    import magent2
    from magent2.builtin.config.battle import get_config

    env = magent2.gridworld.GridWorld(get_config(map_size), map_size=map_size)
    env.set_seed(seed)
    handles = env.get_handles()
    env.reset()
    env.add_walls(method="custom", pos=[])  # none beyond the map border, as battle_v4
    # MAgent2's battle_v4 layout (generate_map): two blocks, two cells apart, gap 3
    n, gap = map_size * map_size * 0.04, 3
    side = int(math.sqrt(n)) * 2
    lo = (map_size - side) // 2
    left = [
        [x, y, 0]
        for x in range(map_size // 2 - gap - side, map_size // 2 - gap, 2)
        for y in range(lo, lo + side, 2)
        if 0 < x < map_size - 1 and 0 < y < map_size - 1
    ]
    right = [
        [x, y, 0]
        for x in range(map_size // 2 + gap, map_size // 2 + gap + side, 2)
        for y in range(lo, lo + side, 2)
        if 0 < x < map_size - 1 and 0 < y < map_size - 1
    ][: len(left)]
    env.add_agents(handles[0], method="custom", pos=left)
    env.add_agents(handles[1], method="custom", pos=right)
    return env, len(left) + len(right)


def magent(map_size: int, steps: int, obs: bool, seed: int = 0) -> tuple[float, int]:
    env, total = magent_env(map_size, seed)
    handles = env.get_handles()
    plan = random_plan(steps, total, seed)
    agent_steps = 0
    start = time.perf_counter()
    for t in range(steps):
        offset = 0
        for h in handles:
            k = env.get_num(h)
            agent_steps += k
            if obs:
                env.get_observation(h)
            env.set_action(h, np.ascontiguousarray(plan[t, offset : offset + k]))
            offset += k
        env.step()
        for h in handles:
            env.get_reward(h)
        env.clear_dead()
    return agent_steps / (time.perf_counter() - start), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--maps", type=int, nargs="+", default=[160, 320])
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per cell")
    args = ap.parse_args()
    try:
        import magent2  # noqa: F401

        have_magent = True
    except ImportError:
        have_magent = False
        print("magent2 is not installed (pip install magent2==0.3.4 --no-deps): ours only")
    print(
        f"agent-steps per second, one thread, {args.steps} steps, random actions, best of "
        f"{args.repeats}"
    )
    header = f"{'map':>5} {'agents/team':>11} {'mode':>8} {'ours':>12} {'magent2':>12} {'ratio':>7}"
    print(header)
    for m in args.maps:
        for obs in (True, False):
            ours_rate = max(ours(m, args.steps, obs)[0] for _ in range(args.repeats))
            n_team = BattleSim(BattleParams(map_size=m)).n_team
            if have_magent:
                mag_rate = max(magent(m, args.steps, obs)[0] for _ in range(args.repeats))
                ratio = f"{ours_rate / mag_rate:7.2f}"
                mag = f"{mag_rate:12.3g}"
            else:
                mag, ratio = f"{'-':>12}", f"{'-':>7}"
            mode = "obs" if obs else "no obs"
            print(f"{m:>5} {n_team:>11} {mode:>8} {ours_rate:12.3g} {mag} {ratio}")
    for m in args.maps:
        print(
            f"memory per agent at map {m}: ours {ours_memory(m, True):.0f} B with obs grids, "
            f"{ours_memory(m, False):.0f} B without (tracemalloc)"
            + (f"; magent2 {magent_memory(m):.0f} B (RSS growth)" if have_magent else "")
        )


if __name__ == "__main__":
    main()
