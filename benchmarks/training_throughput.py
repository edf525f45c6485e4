"""Training throughput of the pure training loop (no Ray) on CPU, 1 and 2 torch threads.

    .venv/bin/python benchmarks/training_throughput.py [--quick] [--steps S]

crowd_1d (size 10, horizon 10), `medium` data from N = 100 agents, 40 episodes (pure path:
registry behaviour + `generate_shard`), the quickstart planner (H = 4, M = 32 particles per
window, K = 20, width 64, 2 blocks), batches of 16 windows, β = 1 (value weights on).
One optimizer step = `WindowSampler.sample` + `to_batch` + `MFDiffuser.loss` + backward + Adam,
i.e. exactly the body of `train_epochs`.

What is counted: particle·steps per second = (batch 16 × M 32 particles × H 4 window steps) per
optimizer step × optimizer steps / wall seconds: how many (particle, time step) cells of
training windows are denoised, back-propagated and applied per second (512 windows·particles,
2,048 particle·steps per optimizer step). Also printed: optimizer steps per second and the
share of time spent drawing windows (numpy, single-threaded).
Median of 3 timed blocks of S steps after 3 warm-up steps. The GPU path is not measured here
(this machine has no GPU); nor is the Ray Train DDP trainer (its per-step work is this loop plus
a gloo all-reduce of the gradients). Not part of the test pass/fail. `benchmarks/run.py --only
training` times the same step (`setup`, `make_step`) in the harness's interleaved way.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from evidence_value_weighting import make_data

from mfdiffuser.data.advantages import TabularAdvantage
from mfdiffuser.data.windows import EpisodeArrays, WindowSampler
from mfdiffuser.envs import FiniteMeanFieldGame
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser
from mfdiffuser.planner.training import to_batch

BATCH = 16
CFG = PlannerConfig(
    window=4, n_particles=32, max_particles=64, diffusion_steps=20, hidden=64, n_blocks=2, beta=1.0
)
CELLS = BATCH * CFG.n_particles * CFG.window  # particle·steps per optimizer step


def setup() -> tuple[FiniteMeanFieldGame, EpisodeArrays, TabularAdvantage]:
    """The benchmark's data: crowd_1d 10x10, `medium` behaviour, N = 100, 40 episodes, seed 0
    (evidence_value_weighting's `make_data`)."""
    data = make_data("medium")
    return data.game, data.arrays, data.advantage


def make_step(
    game: FiniteMeanFieldGame, arrays: EpisodeArrays, advantage: TabularAdvantage
) -> Callable[[], float]:
    """A fresh planner (seed 0), sampler and Adam; the returned callable runs one optimizer
    step (the body of `train_epochs`) and returns the seconds spent drawing windows."""
    torch.manual_seed(0)
    planner = MFDiffuser.from_spec(CFG, game.feature_dim, game.n_actions, game.context_dim)
    sampler = WindowSampler(arrays, game, CFG.window, CFG.n_particles, 0, advantage=advantage)
    opt = torch.optim.Adam(planner.model.parameters(), lr=1e-3)

    def step() -> float:
        t0 = time.perf_counter()
        raw = sampler.sample(BATCH)
        sampling = time.perf_counter() - t0
        batch = to_batch(raw, "cpu", beta=CFG.beta, weight_clip=CFG.weight_clip)
        loss, _ = planner.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return sampling

    return step


def measure(
    threads: int,
    steps: int,
    game: FiniteMeanFieldGame,
    arrays: EpisodeArrays,
    advantage: TabularAdvantage,
) -> tuple[float, float]:
    """(median seconds per optimizer step, median share of it spent drawing windows)."""
    torch.set_num_threads(threads)
    step = make_step(game, arrays, advantage)
    for _ in range(3):
        step()
    blocks, shares = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        sampling = sum(step() for _ in range(steps))
        elapsed = time.perf_counter() - t0
        blocks.append(elapsed / steps)
        shares.append(sampling / elapsed)
    return statistics.median(blocks), statistics.median(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 steps per block")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per timed block")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    steps = 10 if args.quick else args.steps

    game, arrays, advantage = setup()
    cells = CELLS  # particle·steps per optimizer step

    print(f"# pure training loop, crowd_1d 10x10 medium data; H={CFG.window} M={CFG.n_particles} "
          f"K={CFG.diffusion_steps} hidden={CFG.hidden} blocks={CFG.n_blocks} batch={BATCH}; "
          f"{cells} particle·steps per optimizer step")  # fmt: skip
    print(f"# torch {torch.__version__}, {platform.machine()}; median of 3 blocks of {steps} "
          "steps; GPU path not measured (no GPU on this machine)")  # fmt: skip
    print(f"{'threads':>7} {'opt steps/s':>12} {'particle·steps/s':>17} {'sampling share':>15}")
    for threads in args.threads:
        per_step, share = measure(threads, steps, game, arrays, advantage)
        print(
            f"{threads:>7} {1 / per_step:>12.1f} {cells / per_step:>17,.0f} {100 * share:>14.1f}%"
        )


if __name__ == "__main__":
    main()
