"""Coarse-to-fine vs flat sampling (docs/method.md): one planning call at equal final count M_L.

    .venv/bin/python benchmarks/coarse_to_fine.py [--quick] [--repeats R]

B = 1, K = 20, H = 4, D = 13 (d_s = 8, A = 5), C = 16, untrained default-size denoiser, torch on
one thread, flat and coarse-to-fine repeats interleaved. Flat = `MFDiffuser.sample` (M_L
particles for all K steps); coarse-to-fine = L = 3, b = 4, default stage_steps (`plan_stages` +
`sample_coarse_to_fine`, planning time included).
Prints the median wall time of each, their ratio, and the ideal ratio M_L·K / Σ_l M_l·K_l.
Not part of the test pass/fail: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser

D_S, N_A, C = 8, 5, 16


def median_seconds(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time of each fn; repeats interleave the fns, so that load from other processes
    on a shared machine hits them alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="M_L = 64 and 256 only, 3 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [64, 256] if args.quick else [64, 256, 1024]
    repeats = 3 if args.quick else args.repeats

    cfg = PlannerConfig(window=4, diffusion_steps=20, stages=3, growth=4)
    torch.manual_seed(0)
    planner = MFDiffuser(cfg, state_dim=D_S, n_actions=N_A, context_dim=C)
    planner.model.eval()
    ctx = torch.rand(1, C) * 2 - 1

    print(f"# coarse-to-fine vs flat, one planning call, B=1 (torch {torch.__version__}, 1 thread,")
    print(f"#   {platform.processor() or platform.machine()}, median of {repeats})")
    print(f"# K={cfg.diffusion_steps} H={cfg.window} D={D_S + N_A} C={C} hidden={cfg.hidden} "
          f"n_blocks={cfg.n_blocks}; c2f L={cfg.stages} b={cfg.growth} "
          f"stage_steps={cfg.resolved_stage_steps()}")  # fmt: skip
    header = (
        f"{'M_L':>6} {'stage M_l':>16} {'flat ms':>9} {'c2f ms':>9} {'speedup':>8} {'ideal':>7}"
    )
    print(header)
    for m in sizes:
        g = torch.Generator().manual_seed(m)
        final = torch.rand(1, m, D_S, generator=g) * 2 - 1

        def flat(final: torch.Tensor = final) -> object:
            return planner.sample(ctx, final, torch.Generator().manual_seed(1))

        def c2f(m: int = m, final: torch.Tensor = final) -> object:
            gen = torch.Generator().manual_seed(1)
            plan = planner.plan_stages(m, gen)
            firsts = [final]
            for par in reversed(plan.parents):  # each parent takes its first child's state
                first_child = torch.searchsorted(par, torch.arange(int(par.max()) + 1))
                firsts.append(firsts[-1][:, first_child])
            return planner.sample_coarse_to_fine(ctx, firsts[::-1], plan.parents, gen, plan.steps)

        plan = planner.plan_stages(m, torch.Generator().manual_seed(1))
        ideal = (
            m
            * cfg.diffusion_steps
            / sum(a * k for a, k in zip(plan.counts, plan.steps, strict=True))
        )
        t_flat, t_c2f = median_seconds([flat, c2f], repeats)
        counts = "/".join(str(c) for c in plan.counts)
        print(
            f"{m:>6} {counts:>16} {1e3 * t_flat:>9.1f} {1e3 * t_c2f:>9.1f} "
            f"{t_flat / t_c2f:>7.2f}x {ideal:>6.2f}x"
        )


if __name__ == "__main__":
    main()
