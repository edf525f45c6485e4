"""The frozen policy table's exploitability with the hard vs the soft (Rao-Blackwellised) readout
of MF-Diffuser's particles (`readout`), on the setting of configs/sweep_table_quick.yaml:
crowd_1d 10 cells, horizon 10, medium data (N = 100, 40 episodes), MF-Diffuser with the quick
table's method params and budget (2 x 150 steps, batch 16, lr 3e-3), trained in-process, one
model per seed; both readouts read the same trained weights, so the difference is the readout.

    .venv/bin/python benchmarks/readout.py [--seeds 0 1 2] [--steps 300]

Reports, per seed and as mean ± std over seeds, the exploitability of each readout's table, and
the std of the table over 4 sampler seeds (the readout's variance), with process CPU time, wall
time and the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from evidence_value_weighting import make_data

from mfdiffuser.envs import exploitability, propagate
from mfdiffuser.methods.base import DataStats, Dims
from mfdiffuser.methods.registry import get_method
from mfdiffuser.methods.training import train_epochs
from mfdiffuser.planner.diffusion import returns_to_go

PARAMS = {"window": 4, "n_particles": 16, "max_particles": 32, "diffusion_steps": 10}
PARAMS |= {"hidden": 32, "n_blocks": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = make_data("medium")  # crowd_1d 10x10, N = 100, 40 episodes, seed 0
    game, arrays, prior, adv = data.game, data.arrays, data.prior, data.advantage
    method_spec = get_method("mf_diffuser")
    results: dict[str, list[float]] = {"hard": [], "soft": []}
    spread: dict[str, list[float]] = {"hard": [], "soft": []}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for seed in args.seeds:
        torch.manual_seed(seed)
        method = method_spec.build(method_spec.params(PARAMS), Dims.of(game))
        method.prepare(DataStats(prior, adv, returns_to_go(arrays.rewards)))  # type: ignore[attr-defined]
        train_epochs(
            method,  # type: ignore[arg-type]
            method.batches(arrays, game, seed=seed),  # type: ignore[attr-defined]
            epochs=2,
            steps_per_epoch=args.steps // 2,
            batch_size=16,
            lr=3e-3,
            on_epoch=lambda *_: None,
        )
        for readout in ("hard", "soft"):
            method.params = method.params.model_copy(update={"readout": readout})  # type: ignore[attr-defined]
            method.planner.cfg = method.planner.cfg.model_copy(update={"readout": readout})  # type: ignore[attr-defined]
            tables = [
                method.policy(game, prior, s).expected_table(lambda p: propagate(game, p), s)  # type: ignore[attr-defined]
                for s in (seed, seed + 100, seed + 200, seed + 300)
            ]
            ex = exploitability(game, tables[0])
            sd = float(np.stack(tables).std(axis=0).mean())
            results[readout].append(ex)
            spread[readout].append(sd)
            print(f"seed {seed} {readout}: exploitability {ex:.4f}, table std {sd:.4f}", flush=True)
    for readout, xs in results.items():
        print(
            f"{readout}: exploitability {np.mean(xs):.4f} ± {np.std(xs, ddof=1):.4f} "
            f"(seeds {args.seeds}); table std over sampler seeds {np.mean(spread[readout]):.4f}"
        )
    print(
        f"wall {time.perf_counter() - wall0:.1f} s, "
        f"process CPU {time.process_time() - cpu0:.1f} s, load average {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
