"""Evidence for the value-weighted objective (docs/method.md): does β > 0 beat β = 0 and the data?

    .venv/bin/python benchmarks/evidence_value_weighting.py [--quick] [--out DIR]

crowd_1d (size 10, horizon 10). For each data quality (`medium`, `mixed`) one dataset is generated
with the pure path (registry behaviour + `generate_shard`, N = 100 agents, 40 episodes, seed 0)
and shared by every run of that quality. MF-Diffuser is trained with the pure training loop
(`train_epochs`, no Ray, torch on one thread) with β = 0 and with β > 0, 3 seeds each, the same
step budget, and evaluated by
  * the expected policy table of docs/method.md (`FiniteStatePlannerPolicy.expected_table`, the
    planner run along its own exact flow, `draws` seeded particle sets per epoch averaged):
    its exact mean-field return J^inf (`policy_value`) and exploitability;
  * the live planner with N = 1000 agents (`rollout_returns`, one planner call per epoch): the
    mean per-agent return J^N.
β is picked by a pilot on seed 0 (the candidates are trained and evaluated like the main runs;
the best by exploitability of the table is kept and its seed-0 run reused). Reference rows, all
exact: the behaviour policy π_b (the occupancy-weighted mixture of the generating policies), the
data's empirical policy π̂_b (what β = 0 models) and the ideal tilt π_β^D = π̂_b·exp(β·Â)
normalised (what the weighted loss targets, docs/metrics.md), for several β, and π_β^D frozen with
perfect samples exactly as the planner's table is frozen (`sampled_target_table`: the table's
own sampling noise, mean±std over the seeds). `TV target` is the μ-weighted mean total-variation
distance between a table and π_β^D of its β (sampling noise + generative error).

Trained weights go to DIR (default mfd-work/evidence) for benchmarks/evidence_coarse_to_fine.py.
Not part of the test pass/fail; figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mfdiffuser.data.advantages import (
    TabularAdvantage,
    expected_log_normaliser,
    fit_tabular_advantage,
    tilted_policy,
)
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import (
    EpisodeArrays,
    WindowSampler,
    behaviour_prior,
    episodes_from_table,
)
from mfdiffuser.envs import FiniteMeanFieldGame, exploitability, policy_value, propagate
from mfdiffuser.envs.behaviour import occupancy_mixture
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.evaluation.rollout import rollout_returns
from mfdiffuser.planner.acting import FiniteStatePlannerPolicy, allocate
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser
from mfdiffuser.planner.training import train_epochs

GAME_PARAMS = {"size": 10, "horizon": 10}
DATA_AGENTS, DATA_EPISODES, DATA_SEED = 100, 40, 0
QUALITIES = ("medium", "mixed")
SEEDS = (0, 1, 2)
PILOT_BETAS = (1.0, 3.0)
IDEAL_BETAS = (0.3, 1.0, 3.0, 10.0)
LIVE_N, LIVE_EPISODES = 1000, 2
BATCH = 16
LRS = (3e-3, 3e-3, 1e-3, 3e-4, 3e-4)  # per epoch: step decay (see test_planner_quality.py)

# Small and fast: window 1 (value weighting acts on the first action, and the acting rule reads
# only first actions), width 32, K = 10. The flat sampler, so that the table's error is the
# model's and not also coarse-to-fine's (measured on its own in evidence_coarse_to_fine.py; with
# 3 stages the tables here were TV ~0.13 from the target instead of ~0.06, because 4 coarse
# particles plan for 10 states). draws × max_particles = 16 × 64 = 1024 first actions per epoch
# in the expected table, about 100 per state, so the table's own sampling noise is small. EMA of
# the weights for acting: without it the last Adam iterates left some seeds with a table TV ~0.17
# from the target on mixed data, a seed-to-seed noise larger than what the tilt gains there.
BASE_CFG = PlannerConfig(
    window=1,
    stages=1,
    n_particles=32,
    max_particles=64,
    diffusion_steps=10,
    hidden=32,
    n_blocks=2,
    draws=16,
    ema_decay=0.995,
)


@dataclass(frozen=True)
class Data:
    game: FiniteMeanFieldGame
    quality: str
    behaviour: np.ndarray  # π_b[T, S, A], the occupancy-weighted mixture (exact)
    arrays: EpisodeArrays
    prior: np.ndarray  # π̂_b[T, S, A], the data's empirical policy
    advantage: TabularAdvantage


def make_data(quality: str) -> Data:
    spec = get_benchmark("crowd_1d")
    game = spec.game(GAME_PARAMS)
    made = spec.behaviour(game, quality)
    table, _ = generate_shard(
        lambda: spec.make_sim(game, DATA_AGENTS),
        made.policies,
        range(DATA_EPISODES),
        DATA_SEED,
    )
    arrays = episodes_from_table(table, DATA_AGENTS)
    return Data(
        game=game,
        quality=quality,
        behaviour=occupancy_mixture(game, made.policies),
        arrays=arrays,
        prior=behaviour_prior(arrays, game.n_states, game.n_actions),
        advantage=fit_tabular_advantage(arrays, game.n_states, game.n_actions),
    )


def target_policy(data: Data, beta: float, cfg: PlannerConfig) -> np.ndarray:
    """π_β^D: the data policy tilted by the dataset advantage, clipped as the training weights."""
    log_z = expected_log_normaliser(data.advantage, beta)
    return tilted_policy(data.prior, data.advantage, beta, cfg.weight_clip, log_z)


def mean_tv(game: FiniteMeanFieldGame, table: np.ndarray, target: np.ndarray) -> float:
    """Σ_t Σ_s μ_t(s)·TV(table_t(s), target_t(s)) / T, μ the target's own flow."""
    flow = propagate(game, target)  # [T, S]
    tv = 0.5 * np.abs(table - target).sum(axis=-1)  # [T, S]
    return float((flow * tv).sum() / game.horizon)


def sampled_target_table(data: Data, beta: float, cfg: PlannerConfig, seed: int) -> np.ndarray:
    """π_β^D frozen exactly as `expected_table` freezes the planner, but with perfect samples.

    Per epoch t along the table's own exact flow: `cfg.draws` sets of M_max particles allocated
    to states by `allocate`, each first action drawn from π_β^D(· | s, t), per-state counts
    smoothed by `cfg.smoothing`, the prior where no particle sits, averaged over the draws. The
    gap between this and π_β^D is the table's sampling noise; the rest of a trained planner's
    gap is the model's (generative) error.
    """
    game, target, rng = data.game, target_policy(data, beta, cfg), np.random.default_rng(seed)
    policy = data.prior.copy()
    for t in range(game.horizon):
        idx = allocate(propagate(game, policy)[t], cfg.max_particles)  # first states[M]
        populated = np.bincount(idx, minlength=game.n_states) > 0
        rows = []
        for _ in range(cfg.draws):
            cdf = np.cumsum(target[t, idx], axis=1)  # [M, A]
            acts = np.minimum((rng.random((idx.size, 1)) >= cdf).sum(1), game.n_actions - 1)
            counts = np.zeros((game.n_states, game.n_actions))
            np.add.at(counts, (idx, acts), 1.0)
            row = data.prior[t].copy()
            smoothed = counts[populated] + cfg.smoothing
            row[populated] = smoothed / smoothed.sum(-1, keepdims=True)
            rows.append(row)
        policy[t] = np.mean(rows, axis=0)
    return policy


def train(data: Data, beta: float, seed: int, steps_per_epoch: int) -> MFDiffuser:
    cfg = BASE_CFG.model_copy(update={"beta": beta})
    game = data.game
    torch.manual_seed(seed)
    planner = MFDiffuser.from_spec(cfg, game.feature_dim, game.n_actions, game.context_dim)
    sampler = WindowSampler(
        data.arrays, game, cfg.window, cfg.n_particles, seed, advantage=data.advantage
    )

    def step_decay(epoch: int, _metrics: dict[str, float], opt: torch.optim.Optimizer) -> None:
        for group in opt.param_groups:
            group["lr"] = LRS[min(epoch + 1, len(LRS) - 1)]

    train_epochs(
        planner,
        sampler,
        epochs=len(LRS),
        steps_per_epoch=steps_per_epoch,
        batch_size=BATCH,
        lr=LRS[0],
        on_epoch=step_decay,
    )
    planner.model.eval()
    return planner


def evaluate(
    planner: MFDiffuser,
    data: Data,
    cfg: PlannerConfig,
    seed: int,
    live_episodes: int,
) -> dict[str, float]:
    """Exact J^inf and exploitability of the expected table, live J^N at N = LIVE_N, TV."""
    game = data.game
    policy = FiniteStatePlannerPolicy(planner, game, data.prior, cfg)
    table = policy.expected_table(lambda p: propagate(game, p), seed)
    out = {
        "return_mf": policy_value(game, table),
        "exploitability": exploitability(game, table),
        "tv_target": mean_tv(game, table, target_policy(data, cfg.beta, cfg)),
        "return_live": float("nan"),
    }
    if live_episodes > 0:
        gen = torch.Generator().manual_seed(seed)
        spec = get_benchmark("crowd_1d")
        returns = rollout_returns(
            lambda: spec.make_sim(game, LIVE_N),
            lambda t, s, rng: policy.act(t, s, rng, gen),
            game.horizon,
            live_episodes,
            seed,
        )
        out["return_live"] = float(np.mean(returns))
    return out


def fmt(values: list[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    if np.all(np.isnan(v)):
        return "-"
    if v.size == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f}±{v.std(ddof=1):.3f}"


def log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.0f}s] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 5x40 steps")
    parser.add_argument("--steps-per-epoch", type=int, default=720, help="5 epochs of these")
    parser.add_argument("--out", type=Path, default=Path("mfd-work/evidence"))
    parser.add_argument(
        "--reference-only", action="store_true", help="only the exact reference rows (no training)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    steps = 40 if args.quick else args.steps_per_epoch
    seeds = SEEDS[:1] if args.quick else SEEDS
    pilot_betas = PILOT_BETAS[:1] if args.quick else PILOT_BETAS
    live_episodes = 1 if args.quick else LIVE_EPISODES
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict[tuple[str, float], list[dict[str, float]]] = {}
    reference_rows: list[tuple[str, str, float | str, float | str, str]] = []
    chosen: dict[str, float] = {}
    pilot_rows: list[str] = []

    def run(data: Data, beta: float, seed: int) -> dict[str, float]:
        planner = train(data, beta, seed, steps)
        torch.save(
            {"planner": planner.state_dict(), "prior": data.prior},
            args.out / f"crowd_1d-{data.quality}-beta{beta:g}-seed{seed}.pt",
        )
        metrics = evaluate(planner, data, planner.cfg, seed, live_episodes)
        log(f"{data.quality} beta={beta:g} seed={seed}: {metrics}", start)
        return metrics

    for quality in QUALITIES:
        data = make_data(quality)
        game = data.game
        for name, pol in (("behaviour π_b", data.behaviour), ("data policy π̂_b", data.prior)):
            reference_rows.append(
                (quality, name, policy_value(game, pol), exploitability(game, pol), "")
            )
        for beta in IDEAL_BETAS:
            target = target_policy(data, beta, BASE_CFG)
            reference_rows.append(
                (
                    quality,
                    f"ideal tilt π_β^D, β={beta:g}",
                    policy_value(game, target),
                    exploitability(game, target),
                    "",
                )
            )
        for beta in (0.0, 1.0):
            cfg = BASE_CFG.model_copy(update={"beta": beta})
            tables = [sampled_target_table(data, beta, cfg, s) for s in seeds]
            reference_rows.append(
                (
                    quality,
                    f"π_β^D sampled, β={beta:g}",
                    fmt([policy_value(game, tb) for tb in tables]),
                    fmt([exploitability(game, tb) for tb in tables]),
                    fmt([mean_tv(game, tb, target_policy(data, beta, cfg)) for tb in tables]),
                )
            )
        if args.reference_only:
            continue
        # Pilot on seed 0: each candidate β trained and evaluated exactly like a main run.
        pilot = {beta: run(data, beta, seeds[0]) for beta in pilot_betas}
        best = min(pilot, key=lambda b: pilot[b]["exploitability"])
        chosen[quality] = best
        for beta, m in pilot.items():
            pilot_rows.append(
                f"{quality:<7} β={beta:<4g} J^inf={m['return_mf']:.3f} "
                f"expl={m['exploitability']:.3f} J^N={m['return_live']:.3f}"
                + ("  <- chosen" if beta == best else "")
            )
        results[(quality, best)] = [pilot[best]]
        results[(quality, best)] += [run(data, best, s) for s in seeds[1:]]
        results[(quality, 0.0)] = [run(data, 0.0, s) for s in seeds]

    print(
        f"# value weighting on crowd_1d {GAME_PARAMS}, data N={DATA_AGENTS} x {DATA_EPISODES} "
        f"episodes (seed {DATA_SEED}); torch {torch.__version__}, 1 thread"
    )
    print(
        f"# planner window={BASE_CFG.window} M={BASE_CFG.n_particles} M_max="
        f"{BASE_CFG.max_particles} K={BASE_CFG.diffusion_steps} hidden={BASE_CFG.hidden} "
        f"blocks={BASE_CFG.n_blocks} draws={BASE_CFG.draws} stages={BASE_CFG.stages} "
        f"ema={BASE_CFG.ema_decay:g}; {len(LRS)}x{steps} Adam steps of "
        f"{BATCH} windows, lr {'/'.join(f'{x:g}' for x in LRS)}; seeds {list(seeds)}; "
        f"live N={LIVE_N} x {live_episodes} episodes"
    )
    if not args.reference_only:
        print("# pilot (seed 0), β chosen by exploitability of the expected table:")
    for row in pilot_rows:
        print(f"#   {row}")
    header = (
        f"{'quality':<7} {'policy':<26} {'J^inf (table)':>15} {'J^N (N=1000)':>15} "
        f"{'exploitability':>15} {'TV target':>13}"
    )
    print(header)
    for quality in QUALITIES:
        for q, name, value, expl, tv in reference_rows:
            if q == quality:
                v = value if isinstance(value, str) else f"{value:.3f}"
                e = expl if isinstance(expl, str) else f"{expl:.3f}"
                print(f"{q:<7} {name:<26} {v:>15} {'':>15} {e:>15} {tv:>13}")
        if args.reference_only:
            continue
        for beta in sorted({0.0, chosen[quality]}):
            runs = results[(quality, beta)]
            print(
                f"{quality:<7} {'MF-Diffuser β=' + format(beta, 'g'):<26} "
                f"{fmt([r['return_mf'] for r in runs]):>15} "
                f"{fmt([r['return_live'] for r in runs]):>15} "
                f"{fmt([r['exploitability'] for r in runs]):>15} "
                f"{fmt([r['tv_target'] for r in runs]):>13}"
            )
    log("done", start)


if __name__ == "__main__":
    main()
