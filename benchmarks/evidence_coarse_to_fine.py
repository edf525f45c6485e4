"""Evidence for coarse-to-fine sampling (docs/method.md) at equal final particle count M_L.

    .venv/bin/python benchmarks/evidence_coarse_to_fine.py [--quick] [--models DIR]

Claim: coarse-to-fine (L = 3 stages, growth b = 4) is >= 2x faster per planning step than the flat
sampler at the same M_L, and the expected tables of both (same trained weights) have return and
exploitability within one standard deviation over seeds.

1. Speed, per planning step, torch on one thread, flat and c2f calls interleaved, median:
   * `act`: `FiniteStatePlannerPolicy.act` with N = 1000 agents (B = 1 particle set; includes the
     O(N) table and action sampling), M_L = max_particles;
   * `B=16`: one batch of 16 particle sets (what `expected_table` samples per epoch with
     draws = 16), sampler only.
   Both for the trained crowd_1d planner of evidence_value_weighting.py (H = 1, K = 10, width 32)
   and for the default-size planner of benchmarks/coarse_to_fine.py (H = 4, K = 20, width 64,
   D = 13), untrained (cost does not depend on the weights).
2. Why the measured ratio is below the ideal Σ-ratio: the cost of one denoising step of the flat
   sampler at B = 1 for M = 1..256, fitted as t(M) = a + b·M (least squares). The fixed part a
   (Python and operator dispatch of the ~40 small kernels of one trunk call, see
   mfdiffuser/planner/denoiser.py) is paid by every stage, also by the 4 particles of the first;
   the model predicts the speedup K·t(M_L) / Σ_l K_l·t(M_l).
3. Quality: for each seed, the same trained weights (models written by
   evidence_value_weighting.py to DIR; trained here if absent), expected table (§5, draws = 16)
   with the flat and the c2f sampler at M_L = 64 and 256: exact return J^inf and exploitability.
Not part of the test pass/fail; timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evidence_value_weighting as vw
from coarse_to_fine import median_seconds

from mfdiffuser.envs import exploitability, policy_value, propagate
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.planner.acting import FiniteStatePlannerPolicy
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser

SIZES = (64, 256)
STAGES, GROWTH = 3, 4


def variant(cfg: PlannerConfig, m: int, c2f: bool) -> PlannerConfig:
    return cfg.model_copy(
        update={"max_particles": m, "stages": STAGES if c2f else 1, "growth": GROWTH}
    )


def ideal(cfg: PlannerConfig, m: int) -> tuple[float, list[int], list[int]]:
    c = variant(cfg, m, True)
    counts, steps = c.stage_particles(m), c.resolved_stage_steps()
    return (
        m * c.diffusion_steps / sum(a * k for a, k in zip(counts, steps, strict=True)),
        counts,
        steps,
    )


def sampler_fns(
    planner: MFDiffuser, m: int, batch: int
) -> tuple[Callable[[], object], Callable[[], object]]:
    """Flat and c2f sampling of `batch` particle sets of M_L = m (random first states)."""
    g = torch.Generator().manual_seed(m)
    ctx = torch.rand(batch, planner.context_dim, generator=g) * 2 - 1
    final = torch.rand(batch, m, planner.state_dim, generator=g) * 2 - 1
    cfg = variant(planner.cfg, m, True)

    def flat() -> object:
        return planner.sample(ctx, final, torch.Generator().manual_seed(1))

    def c2f() -> object:
        gen = torch.Generator().manual_seed(1)
        plan = planner.plan_stages(m, gen, cfg)
        firsts = [final]
        for par in reversed(plan.parents):  # each parent takes its first child's state
            first_child = torch.searchsorted(par, torch.arange(int(par.max()) + 1))
            firsts.append(firsts[-1][:, first_child])
        return planner.sample_coarse_to_fine(ctx, firsts[::-1], plan.parents, gen, plan.steps)

    return flat, c2f


def speed_rows(name: str, planner: MFDiffuser, repeats: int) -> list[str]:
    game = get_benchmark("crowd_1d").game(vw.GAME_PARAMS)
    rows = []
    for m in SIZES:
        ratio, counts, steps = ideal(planner.cfg, m)
        fns: list[Callable[[], object]] = []
        if planner.state_dim == game.feature_dim:
            states = np.random.default_rng(0).integers(0, game.n_states, 1000)
            prior = np.full((game.horizon, game.n_states, game.n_actions), 1 / game.n_actions)
            for c2f in (False, True):
                pol = FiniteStatePlannerPolicy(planner, game, prior, variant(planner.cfg, m, c2f))
                gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
                fns.append(lambda p=pol, g=gen, r=rng, s=states: p.act(0, s, r, g))
        fns.extend(sampler_fns(planner, m, 16))
        ts = median_seconds(fns, repeats)
        act = (
            f"{1e3 * ts[0]:>8.1f} {1e3 * ts[1]:>8.1f} {ts[0] / ts[1]:>6.2f}x"
            if len(ts) == 4
            else f"{'-':>8} {'-':>8} {'-':>7}"
        )
        f16, c16 = ts[-2], ts[-1]
        rows.append(
            f"{name:<22} {m:>5} {'/'.join(map(str, counts)):>10} {'/'.join(map(str, steps)):>8} "
            f"{act} {1e3 * f16:>9.1f} {1e3 * c16:>9.1f} {f16 / c16:>6.2f}x {ratio:>6.2f}x"
        )
    return rows


def cost_model(planner: MFDiffuser, repeats: int) -> tuple[list[str], float, float]:
    """Per-step cost of the flat sampler at B = 1 vs M; least-squares t(M) = a + b·M."""
    ms = [1, 4, 16, 64, 256]
    fns = [sampler_fns(planner, m, 1)[0] for m in ms]
    per_step = [t / planner.cfg.diffusion_steps for t in median_seconds(fns, repeats)]
    b, a = np.polyfit(ms, per_step, 1)
    rows = [f"  M={m:<4} {1e3 * t:7.3f} ms/step" for m, t in zip(ms, per_step, strict=True)]
    return rows, float(a), float(b)


def load_or_train(data: vw.Data, beta: float, seed: int, models: Path, steps: int) -> MFDiffuser:
    path = models / f"crowd_1d-{data.quality}-beta{beta:g}-seed{seed}.pt"
    if path.exists():
        # The file holds the planner's state dict and the data prior as a numpy array.
        numpy_globals = [np._core.multiarray._reconstruct, np.ndarray, np.dtype]
        with torch.serialization.safe_globals([*numpy_globals, type(np.dtype(np.float64))]):
            state = torch.load(path, weights_only=True)
        planner = MFDiffuser.from_state_dict(state["planner"])
    else:
        print(f"# {path} not found: training it here", file=sys.stderr)
        planner = vw.train(data, beta, seed, steps)
    planner.model.eval()
    return planner


def fmt(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{v.mean():.3f}±{v.std(ddof=1):.3f}" if v.size > 1 else f"{v[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 repeats, 5x40 steps")
    parser.add_argument("--models", type=Path, default=Path("mfd-work/evidence"))
    parser.add_argument("--quality", default="medium", choices=vw.QUALITIES)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 3 if args.quick else args.repeats
    seeds = vw.SEEDS[:1] if args.quick else vw.SEEDS
    steps = 40 if args.quick else 240

    data = vw.make_data(args.quality)
    trained = [load_or_train(data, args.beta, s, args.models, steps) for s in seeds]
    torch.manual_seed(0)
    default = MFDiffuser(PlannerConfig(window=4, diffusion_steps=20), 8, 5, 16)
    default.model.eval()

    print(f"# coarse-to-fine (L={STAGES}, b={GROWTH}) vs flat at equal M_L; torch "
          f"{torch.__version__}, 1 thread, median of {repeats} interleaved repeats")  # fmt: skip
    print(
        f"{'planner':<22} {'M_L':>5} {'M_l':>10} {'K_l':>8} {'act flat':>8} {'act c2f':>8} "
        f"{'ratio':>7} {'B16 flat':>9} {'B16 c2f':>9} {'ratio':>7} {'ideal':>7}"
    )
    tc = trained[0].cfg
    variants = (
        (f"trained (H{tc.window} K{tc.diffusion_steps} w{tc.hidden})", trained[0]),
        ("default (H4 K20 w64)", default),
    )
    for name, planner in variants:
        for row in speed_rows(name, planner, repeats):
            print(row)

    for name, planner in variants:
        rows, a, b = cost_model(planner, repeats)
        print(f"# per-step cost of the flat sampler at B=1, {name}: "
              f"t(M) = {1e3 * a:.3f} ms + {1e3 * b:.4f} ms·M")  # fmt: skip
        for row in rows:
            print(f"# {row}")
        for m in SIZES:
            ratio, counts, steps_l = ideal(planner.cfg, m)
            k = planner.cfg.diffusion_steps
            pred = (
                k
                * (a + b * m)
                / sum(kl * (a + b * ml) for ml, kl in zip(counts, steps_l, strict=True))
            )
            print(f"#   M_L={m}: speedup predicted by this cost model {pred:.2f}x, "
                  f"ideal (no fixed cost) {ratio:.2f}x")  # fmt: skip

    game = data.game
    print(f"# quality: crowd_1d {args.quality} data, β={args.beta:g}, seeds {list(seeds)}, "
          f"expected table with draws={trained[0].cfg.draws}")  # fmt: skip
    print(f"{'M_L':>5} {'sampler':>8} {'J^inf':>15} {'exploitability':>15} {'table s':>8}")
    for m in SIZES:
        for c2f in (False, True):
            values, expls, secs = [], [], []
            for seed, planner in zip(seeds, trained, strict=True):
                cfg = variant(planner.cfg, m, c2f)
                policy = FiniteStatePlannerPolicy(planner, game, data.prior, cfg)
                t0 = time.perf_counter()
                table = policy.expected_table(lambda p: propagate(game, p), seed)
                secs.append(time.perf_counter() - t0)
                values.append(policy_value(game, table))
                expls.append(exploitability(game, table))
            print(
                f"{m:>5} {'c2f' if c2f else 'flat':>8} {fmt(values):>15} {fmt(expls):>15} "
                f"{statistics.median(secs):>8.2f}"
            )


if __name__ == "__main__":
    main()
