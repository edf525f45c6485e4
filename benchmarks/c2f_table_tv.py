"""Total-variation distance between the frozen policy tables of the flat and the coarse-to-fine
sampler on one trained planner (crowd_1d), at M_L = 64.

    .venv/bin/python benchmarks/c2f_table_tv.py [--quick] [--steps S] [--seeds 0 1 2]

The planner is evidence_value_weighting.py's (crowd_1d 10x10, `medium` data, H = 1, K = 10,
width 32, EMA, β = 0), trained with its `train` (S steps per epoch, 5 epochs; models written by
that script are not read, so the weights here are exactly those of the seed). Both tables are
`FiniteStatePlannerPolicy.expected_table` (draws = 16, the config's, and 128; M_max = 64, the
same seed) with the same weights: flat = stages 1, c2f = stages 3, growth 4 (default
stage_steps). Reported, each
Σ_t Σ_s μ_t(s)·TV(π_t(s), π'_t(s)) / T with μ the flat table's own flow (`mean_tv`):
- flat vs c2f (the figure the target TV <= 0.02 is about);
- flat vs flat with another table seed: the tables' own sampling noise, the floor of the first.
Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evidence_value_weighting as vw

from mfdiffuser.envs import propagate
from mfdiffuser.planner.acting import FiniteStatePlannerPolicy

M_L, STAGES, GROWTH = 64, 3, 4


def tables(planner: object, data: vw.Data, seed: int, draws: int) -> dict[str, object]:
    game = data.game
    out = {}
    for name, stages, table_seed in (
        ("flat", 1, seed),
        ("c2f", STAGES, seed),
        ("flat2", 1, seed + 100),
    ):
        cfg = planner.cfg.model_copy(  # type: ignore[attr-defined]
            update={"max_particles": M_L, "stages": stages, "growth": GROWTH, "draws": draws}
        )
        policy = FiniteStatePlannerPolicy(planner, game, data.prior, cfg)  # type: ignore[arg-type]
        out[name] = policy.expected_table(lambda p: propagate(game, p), table_seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 steps per epoch, seed 0")
    parser.add_argument("--steps", type=int, default=240, help="training steps per epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, nargs="+", default=[16, 128])
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps, seeds = (40, [0]) if args.quick else (args.steps, args.seeds)
    data = vw.make_data("medium")
    print(f"# crowd_1d medium, planner H=1 K=10 w32 trained {steps} steps x 5 epochs; "
          f"expected_table draws={args.draws} M_L={M_L}; c2f L={STAGES} b={GROWTH}")  # fmt: skip
    print(f"{'seed':>4} {'draws':>5} {'TV flat-c2f':>12} {'TV flat-flat':>13} {'train s':>8}")
    for seed in seeds:
        t0 = time.perf_counter()
        planner = vw.train(data, 0.0, seed, steps)
        secs = time.perf_counter() - t0
        for draws in args.draws:
            tab = tables(planner, data, seed, draws)
            tv_c2f = vw.mean_tv(data.game, tab["c2f"], tab["flat"])  # type: ignore[arg-type]
            tv_noise = vw.mean_tv(data.game, tab["flat2"], tab["flat"])  # type: ignore[arg-type]
            print(f"{seed:>4} {draws:>5} {tv_c2f:>12.4f} {tv_noise:>13.4f} {secs:>8.1f}")


if __name__ == "__main__":
    main()
