"""Planning cost vs N: the MADiff-style joint diffuser against MF-Diffuser (docs/methods.md).

    .venv/bin/python benchmarks/joint_vs_mf.py [--quick] [--threads 1 2] [--cap-s 300] [--ns ...]

One planning step = one full sampling with K denoising steps plus the action readout, for a
crowd_1d population (size 10, horizon 10: d_s = 10, A = 3, C = 21) of N agents at t = 0:
  * joint (`madiff`): the live policy of `mfdiffuser.baselines.madiff`, one joint sample of all N
    agents (attention across agents) on MF-Diffuser's flat sampler, actions by the finite-state
    rule; once with the naive attention (the [B·H, heads, N, N] score matrix materialised, to show
    the N² memory) and once with the fused one (`scaled_dot_product_attention`);
  * MF: `FiniteStatePlannerPolicy.act`, M_L = min(N, 64) particles, coarse-to-fine (L = 3,
    b = 4), actions for all N agents by the finite-state rule (every agent samples π̂_t(·|s_i)).
Same width (hidden 64, 2 blocks), H = 4, K = 20, untrained weights (cost does not depend on them).

Every (method, N, threads) runs in a fresh subprocess, so its memory high-water mark is its own.
Memory method: after a warm-up call on 8 agents (one-off lazy allocations), the peak RSS
increase during the first planning call at N, ru_maxrss (getrusage, the
process high-water mark) after the call minus the resident set (/proc/self/statm) just before it,
in MiB. It includes everything the call allocates (activations, attention matrices, allocator
slack). `attn MiB` is the analytic size of one materialised attention score matrix of the naive
joint model, B·H·heads·N²·4 bytes (softmax keeps a second one of the same size alive).
Time: median wall time of the calls after the first; a call slower than --cap-s is not repeated
and a subprocess past the cap is killed and reported as such. Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

NS = (64, 256, 1024)
HIDDEN, BLOCKS, HEADS, WINDOW, K, M_L = 64, 2, 4, 4, 20, 64


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(method: str, n: int, threads: int, cap_s: float) -> dict[str, float]:
    import numpy as np
    import torch

    from mfdiffuser.baselines.madiff import MADiffMethod, Params
    from mfdiffuser.envs.crowd_1d import Crowd1D
    from mfdiffuser.envs.finite import uniform_policy
    from mfdiffuser.methods.base import Dims
    from mfdiffuser.planner.acting import FiniteStatePlannerPolicy
    from mfdiffuser.planner.config import PlannerConfig
    from mfdiffuser.planner.diffusion import MFDiffuser

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    game = Crowd1D(size=10, horizon=10)
    states = np.random.default_rng(0).integers(0, game.n_states, n)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    if method.startswith("joint"):
        params = Params(
            window=WINDOW,
            diffusion_steps=K,
            hidden=HIDDEN,
            n_blocks=BLOCKS,
            heads=HEADS,
            attention=method.removeprefix("joint-"),
        )
        joint = MADiffMethod(params, Dims.of(game))
        joint.planner.model.eval()
        joint_policy = joint.policy(game, uniform_policy(game), seed=0)

        def step(states: np.ndarray = states) -> object:
            return joint_policy.act(0, states, rng)
    else:
        cfg = PlannerConfig(
            window=WINDOW,
            diffusion_steps=K,
            hidden=HIDDEN,
            n_blocks=BLOCKS,
            max_particles=M_L,
            stages=3,
            growth=4,
        )
        planner = MFDiffuser.from_spec(cfg, game.feature_dim, game.n_actions, game.context_dim)
        planner.model.eval()
        policy = FiniteStatePlannerPolicy(planner, game, uniform_policy(game), cfg)

        def step(states: np.ndarray = states) -> object:
            return policy.act(0, states, rng, gen)

    # Lazy one-off allocations (kernel set-up, thread pools) happen in a warm-up on 8 agents,
    # so that the measured increase is the call's own working memory.
    step(states[:8])
    before = rss_bytes()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    times = [first]
    repeats = 0 if first > cap_s / 4 else (2 if first > 2.0 else 5)
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "ms": 1e3 * statistics.median(times[1:] or times),
        "mib": max(0, peak - before) / 2**20,
        "calls": len(times),
    }


def measure(method: str, n: int, threads: int, cap_s: float) -> dict[str, float] | str:
    cmd = [sys.executable, __file__, "--child", method, str(n), str(threads), str(cap_s)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=cap_s, check=False)
    except subprocess.TimeoutExpired:
        return f"> {cap_s:.0f} s (killed)"
    if done.returncode != 0:
        return f"failed (rc {done.returncode}: {done.stderr.strip().splitlines()[-1:]})"
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, n, threads, cap_s = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        print(json.dumps(child(method, n, threads, float(cap_s))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 64 and 256 only")
    parser.add_argument("--ns", type=int, nargs="+", help=f"the N to measure (default {NS})")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--cap-s", type=float, default=300.0, help="time cap per subprocess")
    args = parser.parse_args()
    ns = args.ns or (NS[:2] if args.quick else NS)

    print(f"# one planning step at t=0, crowd_1d 10x10, hidden={HIDDEN} blocks={BLOCKS} "
          f"H={WINDOW} K={K}; joint heads={HEADS}; MF M_L={M_L}, c2f L=3 b=4")  # fmt: skip
    print(f"# {platform.machine()} {platform.processor() or 'cpu'}; memory = peak RSS increase "
          "in the first call (ru_maxrss - statm RSS before), fresh process each")  # fmt: skip
    print(
        f"{'thr':>3} {'N':>6} {'naive ms':>9} {'naive MiB':>10} {'attn MiB':>9} "
        f"{'fused ms':>9} {'fused MiB':>10} {'MF ms':>8} {'MF MiB':>7} {'fused/MF':>9}"
    )
    for threads in args.threads:
        for n in ns:
            naive = measure("joint-naive", n, threads, args.cap_s)
            fused = measure("joint-fused", n, threads, args.cap_s)
            mf = measure("mf", n, threads, args.cap_s)
            attn = 1 * WINDOW * HEADS * n * n * 4 / 2**20
            if all(isinstance(r, dict) for r in (naive, fused, mf)):
                assert isinstance(naive, dict) and isinstance(fused, dict) and isinstance(mf, dict)
                print(
                    f"{threads:>3} {n:>6} {naive['ms']:>9.1f} {naive['mib']:>10.1f} "
                    f"{attn:>9.1f} {fused['ms']:>9.1f} {fused['mib']:>10.1f} {mf['ms']:>8.1f} "
                    f"{mf['mib']:>7.1f} {fused['ms'] / mf['ms']:>8.1f}x"
                )
            else:
                print(f"{threads:>3} {n:>6} naive: {naive}  fused: {fused}  MF: {mf}")


if __name__ == "__main__":
    main()
