"""Acting with the planner in a finite-state mean-field game (METHOD.md §5, finite-S rule).

At decision time t: allocate M = min(N, M_max) particles to the agents' states (stratified),
sample them conditioned on (t, μ_t), and read the empirical distribution of first actions per
first state as π̂_t(a | s). Every agent samples its action from π̂_t(· | s_i): O(N) for any N.
States without a particle fall back to the behaviour prior π_b(· | s, t).

Coarse-to-fine (§4, cfg.stages > 1): the final stage's M_L particles get the stratified
allocation above (sorted by state index, one per drawn agent). The parents maps of the stage plan
are sorted, so every particle of a coarser stage stands for a contiguous block of that sorted
allocation (the final-stage descendants of its children); its first state is the block's median
state. Coarser stages are thus systematic (stratified) subsamples of the allocation, and a
parent's children are the contiguous sub-blocks around its own state: for states sorted by index,
the final-stage states nearest to the parent's first state (`stage_assignment`).

Planning windows that run past the horizon: at t with t + H > T the planner still samples a full
window of H steps (the context is only (t, μ_t), nothing indexes beyond T); acting reads only each
particle's first action, so the steps past the end of the episode are never used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser, decode_actions


class FiniteGame(Protocol):
    """The part of the environment contract that acting needs."""

    n_states: int
    n_actions: int
    horizon: int

    @property
    def feature_dim(self) -> int: ...

    @property
    def context_dim(self) -> int: ...

    mu0: np.ndarray

    def features(self, states: np.ndarray) -> np.ndarray: ...

    def context(self, t: int, mu: np.ndarray) -> np.ndarray: ...


def allocate(weights: np.ndarray, m: int) -> np.ndarray:
    """Stratified allocation of m particles to states ∝ weights[S] (counts or μ).

    Largest-remainder rounding: each state gets floor(m·w_s) or that plus one, exactly m in all;
    ties go to the lower state index. Deterministic. Returns first_state_indices[m], sorted.
    Integer counts are apportioned in exact integer arithmetic.
    """
    w = np.asarray(weights)
    if w.ndim != 1 or m < 0:
        raise ValueError(f"need weights[S] and m >= 0, got shape {w.shape}, m={m}")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    if np.issubdtype(w.dtype, np.integer):
        total = int(w.sum())
        num = w.astype(np.int64) * m
        base, frac = num // total, (num % total).astype(np.float64) / total
    else:
        quota = w.astype(np.float64) / w.sum() * m
        base = np.floor(quota).astype(np.int64)
        frac = quota - base
    missing = m - int(base.sum())
    order = np.argsort(-frac, kind="stable")  # largest remainder first, ties to lower index
    n_per_state = base.copy()
    n_per_state[order[:missing]] += 1
    return np.repeat(np.arange(w.shape[0]), n_per_state)


def stage_assignment(
    first_state_indices: np.ndarray, parents: list[torch.Tensor]
) -> list[np.ndarray]:
    """First-state indices of every stage of a coarse-to-fine plan, finest = the allocation.

    first_state_indices[M_L] sorted (from `allocate`); parents[l][M_{l+1}] sorted (see
    `MFDiffuser.plan_stages`). Returns states[l][M_l] for l = 1..L: a stage-l particle covers the
    contiguous block [lo, hi) of final particles descending from it and gets the state of its
    median, first_state_indices[(lo + hi - 1) // 2]; the last entry is first_state_indices.
    """
    idx = np.asarray(first_state_indices)
    bounds = np.arange(idx.shape[0] + 1)  # bounds[j], bounds[j + 1]: block of particle j
    out = [idx]
    for par in reversed(parents):
        p = par.cpu().numpy()
        if p.shape[0] != bounds.shape[0] - 1 or np.any(np.diff(p) < 0):
            raise ValueError("parents must be sorted and match the next stage's particle count")
        n_children = np.bincount(p, minlength=int(p.max()) + 1)
        if np.any(n_children == 0):
            raise ValueError("every parent needs at least one child")
        starts = np.concatenate([[0], np.cumsum(n_children)])
        bounds = bounds[starts]  # parent block = union of its children's (contiguous) blocks
        out.append(idx[(bounds[:-1] + bounds[1:] - 1) // 2])
    return out[::-1]


def _draw_seed(seed: int, t: int) -> int:
    return int(np.random.SeedSequence([seed, t]).generate_state(1, dtype=np.uint64)[0] >> 1)


class FiniteStatePlannerPolicy:
    """The live planner as a mean-field policy π̂(a | s, t, μ) of a finite-state game."""

    def __init__(
        self,
        planner: MFDiffuser,
        game: FiniteGame,
        prior: np.ndarray,
        cfg: PlannerConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        s, a, t = game.n_states, game.n_actions, game.horizon
        prior = np.asarray(prior, dtype=np.float64)  # prior[T, S, A] = π_b(a | s, t)
        if prior.shape != (t, s, a):
            raise ValueError(f"prior must be [T, S, A] = {(t, s, a)}, got {prior.shape}")
        if np.any(prior < 0) or not np.allclose(prior.sum(-1), 1.0, atol=1e-6):
            raise ValueError("prior rows must be probability distributions")
        if planner.n_actions != a or planner.state_dim != game.feature_dim:
            raise ValueError("planner dims do not match the game")
        self.planner = planner.to(device)
        self.game = game
        self.prior = prior
        self.cfg = cfg

    def allocate(self, weights: np.ndarray, m: int) -> np.ndarray:
        """Stratified first_state_indices[m] ∝ weights[S] (counts or μ); see `allocate`."""
        return allocate(weights, m)

    def _draw_tables(
        self,
        t: int,
        mu: np.ndarray,
        alloc_weights: np.ndarray,
        m: int,
        generator: torch.Generator,
        n_draws: int,
    ) -> np.ndarray:
        """n_draws independent particle sets in one batch -> tables[n_draws, S, A].

        Flat sampler when cfg.stages == 1, coarse-to-fine (§4) otherwise; the draws of one batch
        share the stage plan (counts and parents) and differ in their noise.
        """
        n_s, n_a, d_s = self.game.n_states, self.game.n_actions, self.planner.state_dim
        idx = self.allocate(alloc_weights, m)  # first_state_indices[m]
        feats = torch.as_tensor(np.asarray(self.game.features(idx), dtype=np.float32))
        first = feats.unsqueeze(0).expand(n_draws, m, d_s)  # [B, M, d_s]
        ctx = torch.as_tensor(np.asarray(self.game.context(t, mu), dtype=np.float32))
        ctx = ctx.unsqueeze(0).expand(n_draws, -1)  # [B, C]
        if self.cfg.stages > 1:
            plan = self.planner.plan_stages(m, generator, self.cfg)
            firsts = [
                torch.as_tensor(np.asarray(self.game.features(si), dtype=np.float32))
                .unsqueeze(0)
                .expand(n_draws, -1, d_s)
                for si in stage_assignment(idx, plan.parents)
            ]
            x0 = self.planner.sample_coarse_to_fine(
                ctx, firsts, plan.parents, generator, plan.steps
            )  # [B, M, H, D]: the final stage's particles are in the order of idx
        else:
            x0 = self.planner.sample(ctx, first, generator)  # [B, M, H, D]
        first_actions = decode_actions(x0[:, :, 0, d_s:]).cpu().numpy()  # [B, M]
        counts = np.zeros((n_draws, n_s, n_a))
        draw = np.repeat(np.arange(n_draws), m)
        np.add.at(counts, (draw, np.tile(idx, n_draws), first_actions.reshape(-1)), 1.0)
        populated = np.bincount(idx, minlength=n_s) > 0  # the same states in every draw
        tables = np.broadcast_to(self.prior[t], (n_draws, n_s, n_a)).copy()
        smoothed = counts[:, populated] + self.cfg.smoothing
        tables[:, populated] = smoothed / smoothed.sum(-1, keepdims=True)
        return tables

    def action_table(
        self,
        t: int,
        mu: np.ndarray,
        n_agents: int | None,
        generator: torch.Generator,
    ) -> np.ndarray:
        """π̂_t(a | s) as pi_hat[S, A] from one particle set of m = min(N, M_max) particles."""
        m = self._n_particles(n_agents)
        mu = np.asarray(mu, dtype=np.float64)
        return self._draw_tables(t, mu, mu, m, generator, 1)[0]

    def act(
        self,
        t: int,
        states: np.ndarray,
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> np.ndarray:
        """states[N] -> actions[N]: one planner call, then each agent samples a ~ π̂_t(· | s_i)."""
        states = np.asarray(states, dtype=np.int64)
        n = states.shape[0]
        counts = np.bincount(states, minlength=self.game.n_states)  # counts[S]
        mu = counts.astype(np.float64) / n
        # Allocate from the integer counts, so that with m = N every agent's state is exact.
        table = self._draw_tables(t, mu, counts, self._n_particles(n), generator, 1)[0]
        cdf = np.cumsum(table[states], axis=1)  # [N, A]
        u: np.ndarray = rng.random((n, 1))  # u[N, 1]
        actions = (u >= cdf).sum(axis=1)  # inverse CDF
        return np.minimum(actions, self.game.n_actions - 1)

    def expected_table(
        self, propagate_fn: Callable[[np.ndarray], np.ndarray], seed: int
    ) -> np.ndarray:
        """Freeze the planner into policy[T, S, A] along its own exact mean-field flow.

        For t = 0..T-1: μ_t = propagate_fn(policy so far)[t] (rows ≥ t hold the prior, which μ_t
        does not depend on), and row t is the mean of cfg.draws seeded action tables with
        m = M_max. The draws are sampled as one batch from a generator seeded by (seed, t).
        propagate_fn(policy[T, S, A]) -> flow[T, S] is the game's exact propagation.
        """
        policy = self.prior.copy()
        m = self._n_particles(None)
        for t in range(self.game.horizon):
            flow = np.asarray(propagate_fn(policy), dtype=np.float64)  # flow[T, S]
            mu = flow[t]
            generator = torch.Generator().manual_seed(_draw_seed(seed, t))
            tables = self._draw_tables(t, mu, mu, m, generator, self.cfg.draws)
            policy[t] = tables.mean(axis=0)
        return policy

    def _n_particles(self, n_agents: int | None) -> int:
        if n_agents is None:
            return self.cfg.max_particles
        if n_agents < 1:
            raise ValueError(f"n_agents must be >= 1, got {n_agents}")
        return min(n_agents, self.cfg.max_particles)
