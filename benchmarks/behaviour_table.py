"""Behaviour policies of every finite benchmark and every data quality: exact return and
exploitability (welfare gap for cooperative games), as a dataset's manifest records them.

    .venv/bin/python benchmarks/behaviour_table.py [--only NAME ...]

return: the mean over the quality's policies of each one's value against its own flow;
exploitability: of the occupancy-weighted mixture of the policies (the behaviour policy pi_b);
welfare gap (gaussian_squeeze): reference (welfare-optimum) value minus return. Default benchmark
parameters and each benchmark's registered expert solver (`BenchmarkSpec.expert_solver`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mfdiffuser.envs import exploitability, policy_value
from mfdiffuser.envs.behaviour import QUALITIES, occupancy_mixture
from mfdiffuser.envs.registry import BENCHMARKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="benchmark names (default: every finite one)")
    args = parser.parse_args()
    names = [n for n, s in BENCHMARKS.items() if getattr(s, "exact_model", True)]
    if args.only:
        names = [n for n in names if n in args.only]
    print(f"{'benchmark':<20} {'quality':<14} {'return':>12} {'exploitability':>15}  expert solver")
    for name in names:
        spec = BENCHMARKS[name]
        game = spec.game()
        start = time.perf_counter()
        for quality in QUALITIES:
            made = spec.behaviour(game, quality)
            ret = float(np.mean([policy_value(game, p) for p in made.policies]))
            if spec.cooperative and spec.reference_value is not None:
                score, label = spec.reference_value(game) - ret, " (welfare gap)"
            else:
                score, label = exploitability(game, occupancy_mixture(game, made.policies)), ""
            print(f"{name:<20} {quality:<14} {ret:>12.5f} {score:>15.6g}{label}", flush=True)
        solver = "benchmark expert" if spec.expert else spec.expert_solver.describe()
        print(
            f"{'':<20} {'':<14} {'':>12} {'':>15}  {solver} ({time.perf_counter() - start:.1f} s)"
        )


if __name__ == "__main__":
    main()
