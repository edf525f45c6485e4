"""Foundation benchmarks: crowd_1d simulator throughput, exact exploitability, one planning step.

    .venv/bin/python benchmarks/foundation.py [--quick]

Prints one table (median of repeats, one process, torch limited to one thread). Not part of the
test pass/fail: numbers depend on the machine; the closing notes of issues quote them with it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from mfdiffuser.envs import (
    Crowd1D,
    Crowd1DSim,
    exploitability,
    fictitious_play,
    sample_actions,
    uniform_policy,
)
from mfdiffuser.planner import FiniteStatePlannerPolicy, MFDiffuser, PlannerConfig


def median_seconds(
    fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller N")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reps = 3 if args.quick else 7
    game = Crowd1D(size=10, horizon=10)
    rows: list[tuple[str, str]] = []

    pol = uniform_policy(game)
    t = median_seconds(lambda: exploitability(game, pol), reps * 10)
    rows.append(("exact exploitability, crowd_1d 10x10", f"{t * 1e3:.3f} ms"))
    t = median_seconds(lambda: fictitious_play(game, 100), max(1, reps // 2))
    rows.append(("fictitious play, 100 iterations", f"{t:.3f} s"))

    expert = fictitious_play(game, 100).policy
    for n in (10**4, 10**6) if not args.quick else (10**4, 10**5):
        sim = Crowd1DSim(game, n)
        rng = np.random.default_rng(0)

        def episode(sim: Crowd1DSim = sim, rng: np.random.Generator = rng) -> None:
            states = sim.reset(0)
            for step in range(game.horizon):
                states, _, _ = sim.step(sample_actions(expert[step], states, rng))

        def steps(sim: Crowd1DSim = sim, rng: np.random.Generator = rng) -> None:
            # the count: policy sampling, move, noise, rewards, histogram; no reset
            states = sim.states
            for step in range(game.horizon):
                states, _, _ = sim.step(sample_actions(expert[step], states, rng))

        t = median_seconds(episode, reps)
        # CPU seconds of this process too: on a shared machine other processes' load inflates
        # the wall clock far more than this process's own CPU time
        cpu = median_seconds(episode, reps, clock=time.process_time)
        step_times = []
        for _ in range(reps):
            sim.reset(0)
            start = time.perf_counter()
            steps()
            step_times.append(time.perf_counter() - start)
        t_steps = statistics.median(step_times)
        rows.append(
            (
                f"simulator + action sampling, N={n:,}",
                f"{n * game.horizon / t_steps / 1e6:.1f} M agent-steps/s stepping; "
                f"{n * game.horizon / t / 1e6:.1f} M with the episode's reset "
                f"({n * game.horizon / cpu / 1e6:.1f} M per CPU-second)",
            )
        )

    cfg = PlannerConfig()
    planner = MFDiffuser.from_spec(cfg, game.feature_dim, game.n_actions, game.context_dim)
    prior = uniform_policy(game)
    policy = FiniteStatePlannerPolicy(planner, game, prior, cfg)
    gen = torch.Generator().manual_seed(0)
    for n in (10**3, 10**5):
        states = np.random.default_rng(0).integers(0, game.n_states, n)
        rng = np.random.default_rng(0)
        t = median_seconds(lambda s=states, r=rng: policy.act(0, s, r, gen), reps)
        rows.append(
            (
                f"planning step (act), N={n:,}, M={cfg.max_particles}, K={cfg.diffusion_steps}",
                f"{t * 1e3:.1f} ms",
            )
        )
    rows.append(
        (
            "params of the default denoiser",
            f"{sum(p.numel() for p in planner.model.parameters()):,}",
        )
    )

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch threads 1")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
