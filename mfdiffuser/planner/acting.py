"""Acting with the planner in a finite-state mean-field game (the finite-state rule).

At decision time t: allocate M = min(N, M_max) particles to the agents' states (stratified),
sample them conditioned on (t, μ_t), and read the empirical distribution of first actions per
first state as π̂_t(a | s). Every agent samples its action from π̂_t(· | s_i): O(N) for any N.
States without a particle fall back to the behaviour prior π_b(· | s, t). With cfg.readout =
'soft' (Rao-Blackwellised) each particle adds, instead of one count for its decoded first action,
the posterior over that action its clean estimate gives (`MFDiffuser.plan_action_probs`).

Coarse-to-fine (cfg.stages > 1): the final stage's M_L particles get the stratified
allocation above (sorted by state index, one per drawn agent). The parents maps of the stage plan
are sorted, so every particle of a coarser stage stands for a contiguous block of that sorted
allocation (the final-stage descendants of its children); its first state is the block's median
state. Coarser stages are thus systematic (stratified) subsamples of the allocation, and a
parent's children are the contiguous sub-blocks around its own state: for states sorted by index,
the final-stage states nearest to the parent's first state (`stage_assignment`).

Replanning (cfg.replan_every = r > 1, `PlannerPolicy`): at a replan each agent samples its
action from π̂_t as above and is assigned to a particle with its state and that first action
(uniformly among them); at offset k < r it takes its particle's planned action at k while its
actual state is the particle's planned state at k (planned state features decoded to the nearest
state). Fallback, for an agent with no such particle or a diverged state: an action drawn from the
behaviour prior π_b(· | s_i, t) (the same prior that covers unpopulated states). r = 1 is exactly
`FiniteStatePlannerPolicy.act` at every step. A plan that runs out (inverse dynamics gives H − 1
actions, so r = H) triggers an early replan.

Matching rule (cfg.acting = 'matching', `MatchingPlannerPolicy`), generic over per-agent
feature vectors: agents are sorted by a locality-preserving key (Morton/Z-order code of the
features quantised on their joint min/max box, ties broken lexicographically by the features),
cut into M contiguous blocks of floor/ceil(N/M) agents; particle j gets the block's median agent as
its in-painted first state and serves the block (`balanced_assignment`). O(N log N), no N×M
distance matrix. Between replans an agent follows its particle while its state stays within
`DIVERGENCE_TOL` (max-norm in feature space) of the particle's planned state; otherwise it takes
the action of the particle whose planned state at that offset is nearest (chunked search).

Planning windows that run past the horizon: at t with t + H > T the planner still samples a full
window of H steps (the context is only (t, μ_t), nothing indexes beyond T); acting reads only each
particle's first action, so the steps past the end of the episode are never used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from mfdiffuser.envs.finite import sample_actions
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser

# Max-norm distance in feature space beyond which an agent has left its particle's plan.
DIVERGENCE_TOL = 0.5


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


def draw_from_table(table: np.ndarray, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per agent from its state's row of table[S, A]: actions[N], O(N).

    The finite-state rule's per-agent readout, shared by acting, replanning, the fallback and the
    baselines' policies, so all of them consume the random stream identically (r = 1 replanning
    equals `act` exactly). It is the simulators' `sample_actions`: one float32 uniform per agent
    against per-state float32 CDF thresholds, gathered one action column at a time, instead of
    gathering a float64 row [N, A] per agent and summing it (4x the memory traffic at N = 10^6).
    """
    return sample_actions(table, np.asarray(states, dtype=np.int64), rng)


def nearest_states(game: FiniteGame, features: np.ndarray) -> np.ndarray:
    """Decode feature vectors to the nearest state index: features[..., d_s] -> states[...]."""
    table = np.asarray(game.features(np.arange(game.n_states)), dtype=np.float64)  # [S, d_s]
    flat = np.asarray(features, dtype=np.float64).reshape(-1, table.shape[1])
    d2 = (flat**2).sum(1)[:, None] - 2.0 * flat @ table.T + (table**2).sum(1)[None, :]
    return d2.argmin(axis=1).reshape(np.shape(features)[:-1])


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

        Flat sampler when cfg.stages == 1, coarse-to-fine otherwise; the draws of one batch
        share the stage plan (counts and parents) and differ in their noise.
        """
        if self.cfg.readout == "soft":
            idx, x0, ctx = self._sample_x0(t, mu, alloc_weights, m, generator, n_draws)
            probs = self.planner.plan_action_probs(x0, ctx)[:, :, 0]  # [B, M, A]
            return self._tables(idx, probs.double().cpu().numpy(), t)
        idx, _, actions = self._sample_particles(t, mu, alloc_weights, m, generator, n_draws)
        return self._tables(idx, actions[:, :, 0].cpu().numpy(), t)

    def _sample_x0(
        self,
        t: int,
        mu: np.ndarray,
        alloc_weights: np.ndarray,
        m: int,
        generator: torch.Generator,
        n_draws: int,
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(first_state_indices[m], x0[B, M, H, D], ctx[B, C])."""
        idx = self.allocate(alloc_weights, m)  # first_state_indices[m]
        ctx = torch.as_tensor(np.asarray(self.game.context(t, mu), dtype=np.float32))
        ctx = ctx.unsqueeze(0).expand(n_draws, -1)  # [B, C]
        x0 = sample_particles(
            self.planner, self.cfg, ctx, lambda si: self.game.features(si), idx, generator, t
        )
        return idx, x0, ctx

    def _sample_particles(
        self,
        t: int,
        mu: np.ndarray,
        alloc_weights: np.ndarray,
        m: int,
        generator: torch.Generator,
        n_draws: int,
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(first_state_indices[m], x0[B, M, H, D], planned actions[B, M, H'])."""
        idx, x0, ctx = self._sample_x0(t, mu, alloc_weights, m, generator, n_draws)
        return idx, x0, self.planner.plan_actions(x0, ctx)

    def _tables(self, idx: np.ndarray, first_actions: np.ndarray, t: int) -> np.ndarray:
        """Particles with first states idx[M] -> tables[B, S, A]: from their decoded first
        actions[B, M] (one count each), or from their action distributions probs[B, M, A]
        (the soft readout: each adds its distribution), + cfg.smoothing, normalised."""
        n_s, n_a = self.game.n_states, self.game.n_actions
        n_draws, m = first_actions.shape[:2]
        counts = np.zeros((n_draws, n_s, n_a))
        if first_actions.ndim == 3:  # probs[B, M, A]
            np.add.at(counts, (slice(None), idx), first_actions)
        else:
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
        return draw_from_table(table, states, rng)

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

    # ------------------------------------------------------------------ replanning (r > 1)

    def plan(
        self,
        t: int,
        states: np.ndarray,
        rng: np.random.Generator,
        generator: torch.Generator,
        mu: np.ndarray | None = None,
    ) -> tuple[np.ndarray, _FinitePlan]:
        """A replan: actions[N] exactly as `act` draws them, plus the plan agents then follow."""
        states = np.asarray(states, dtype=np.int64)
        n = states.shape[0]
        counts = np.bincount(states, minlength=self.game.n_states)
        mu_t = counts.astype(np.float64) / n if mu is None else np.asarray(mu, dtype=np.float64)
        idx, x0, planned = self._sample_particles(
            t, mu_t, counts, self._n_particles(n), generator, 1
        )
        planned_np = planned[0].cpu().numpy()  # [M, H']
        table = self._tables(idx, planned_np[None, :, 0], t)[0]
        actions = draw_from_table(table, states, rng)
        # Each agent joins a particle with its state and its drawn first action (uniformly).
        key_p = idx * self.game.n_actions + planned_np[:, 0]
        key_a = states * self.game.n_actions + actions
        order = np.argsort(key_p, kind="stable")
        lo = np.searchsorted(key_p[order], key_a, side="left")
        hi = np.searchsorted(key_p[order], key_a, side="right")
        pick = lo + np.floor(rng.random(n) * np.maximum(hi - lo, 1)).astype(np.int64)
        assign = np.where(hi > lo, order[np.minimum(pick, len(order) - 1)], -1)
        xs = x0[0, :, :, : self.planner.state_dim].cpu().numpy()  # [M, H, d_s]
        return actions, _FinitePlan(assign, nearest_states(self.game, xs), planned_np)

    def follow(
        self, plan: _FinitePlan, k: int, t: int, states: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Actions at offset k of a plan; the documented fallback for agents off their plan."""
        states = np.asarray(states, dtype=np.int64)
        a = plan.assign
        ok = (a >= 0) & (k < plan.actions.shape[1])
        ok[ok] = plan.states[a[ok], k] == states[ok]
        fallback = draw_from_table(self.prior[min(t, self.game.horizon - 1)], states, rng)
        return np.where(
            ok, plan.actions[np.maximum(a, 0), min(k, plan.actions.shape[1] - 1)], fallback
        )


class _FinitePlan:
    """assign[N] (particle of each agent, -1 none), states[M, H] (planned state indices),
    actions[M, H'] (planned actions)."""

    def __init__(self, assign: np.ndarray, states: np.ndarray, actions: np.ndarray) -> None:
        self.assign, self.states, self.actions = assign, states, actions

    @property
    def length(self) -> int:
        return int(self.actions.shape[1])


def sample_particles(
    planner: MFDiffuser,
    cfg: PlannerConfig,
    ctx: torch.Tensor,
    features: Callable[[np.ndarray], np.ndarray],
    first: np.ndarray,
    generator: torch.Generator,
    t: int,
) -> torch.Tensor:
    """Sample x0[B, M, H, D] with in-painted first states features(first[M]) (ctx[B, C]).

    `first` is sorted along the allocation (state index, or the matching sort), so coarse stages
    get block medians (`stage_assignment`). Flat when cfg.stages == 1; with return guidance the
    target return at t. All randomness from `generator`.
    """
    b, d_s = ctx.shape[0], planner.state_dim
    ret = planner.guidance_target(t)

    def feats(sel: np.ndarray) -> torch.Tensor:
        f = torch.as_tensor(np.asarray(features(sel), dtype=np.float32))
        return f.unsqueeze(0).expand(b, -1, d_s)

    if cfg.stages > 1:
        plan = planner.plan_stages(len(first), generator, cfg)
        firsts = [feats(si) for si in stage_assignment(first, plan.parents)]
        # The final stage's particles are in the order of `first`.
        return planner.sample_coarse_to_fine(
            ctx, firsts, plan.parents, generator, plan.steps, ret=ret
        )
    return planner.sample(ctx, feats(first), generator, ret=ret)


# ---------------------------------------------------------------------- matching rule


def sort_key_order(
    feats: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Order of rows feats[N, d] along a Z-order (Morton) curve, ties lexicographic.

    Quantised on the box `bounds` = (lo[d], hi[d]) (default: the rows' own min/max), so that
    near states get near keys in every dimension. Depends on the rows only through their
    values: equal rows get equal keys (stable among themselves).
    """
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, d], got shape {f.shape}")
    n, d = f.shape
    lo, hi = (f.min(axis=0), f.max(axis=0)) if bounds is None else bounds
    keys: list[np.ndarray] = [f[:, j] for j in range(d - 1, -1, -1)]
    # 16 bits per dimension (65536 levels) is plenty; exact ties fall to the feature keys.
    bits = min(16, 63 // d) if d else 0
    if bits >= 1 and n:
        span = np.where(hi > lo, hi - lo, 1.0)
        q = np.rint(np.clip((f - lo) / span, 0.0, 1.0) * (2**bits - 1)).astype(np.uint64)
        code = np.zeros(n, dtype=np.uint64)
        for bit in range(bits):
            for j in range(d):
                code |= ((q[:, j] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(bit * d + j)
        keys.append(code)  # lexsort: the last key is the primary one
    return np.lexsort(keys) if keys else np.arange(n)


def balanced_assignment(agent_feats: np.ndarray, particle_feats: np.ndarray) -> np.ndarray:
    """assign[N]: particle of each agent; every particle serves floor or ceil(N/M) agents.

    Agents and particles are sorted by the same key (`sort_key_order` on their joint box); the
    agent of sorted rank r goes to the particle of sorted rank floor(r·M/N). So an agent whose
    state equals particles' states is matched to one of them when the counts line up (e.g. equal
    multisets, or every state held by c·(its particles) agents with c = N/M), and N < M gives
    each agent its own particle. O((N + M) log(N + M)).
    """
    a, p = np.asarray(agent_feats, np.float64), np.asarray(particle_feats, np.float64)
    if a.ndim != 2 or p.ndim != 2 or a.shape[1] != p.shape[1] or p.shape[0] < 1:
        raise ValueError(f"need agents[N, d] and particles[M >= 1, d], got {a.shape}, {p.shape}")
    both = np.concatenate([a, p])
    bounds = (both.min(axis=0), both.max(axis=0))
    n, m = a.shape[0], p.shape[0]
    order_a, order_p = sort_key_order(a, bounds), sort_key_order(p, bounds)
    assign = np.empty(n, dtype=np.int64)
    assign[order_a] = order_p[(np.arange(n) * m) // max(n, 1)]
    return assign


def representatives(feats: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(reps[m], order[N]): the sorted agents cut into m blocks of floor/ceil(N/m) agents (block
    j = sorted ranks [ceil(jN/m), ceil((j+1)N/m))); reps[j] = the agent at the block's median."""
    n = feats.shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"need 1 <= m <= N = {n}, got m = {m}")
    order = sort_key_order(feats)
    starts = -(-(np.arange(m + 1) * n) // m)  # ceil(j·N/m)
    return order[(starts[:-1] + starts[1:] - 1) // 2], order


class MatchingPlannerPolicy:
    """The matching rule: agents matched to particles by state features, balanced loads."""

    def __init__(self, planner: MFDiffuser, game: FiniteGame, cfg: PlannerConfig) -> None:
        if planner.state_dim != game.feature_dim:
            raise ValueError("planner dims do not match the game")
        self.planner, self.game, self.cfg = planner, game, cfg

    def _mu(self, states: np.ndarray, mu: np.ndarray | None) -> np.ndarray:
        if mu is not None:
            return np.asarray(mu, dtype=np.float64)
        n_states = getattr(self.game, "n_states", None)
        if n_states is None:
            raise ValueError("this game has no finite state space: pass mu (the mean field)")
        counts = np.bincount(np.asarray(states, dtype=np.int64), minlength=n_states)
        return counts / max(len(states), 1)

    def plan(
        self,
        t: int,
        states: np.ndarray,
        rng: np.random.Generator,
        generator: torch.Generator,
        mu: np.ndarray | None = None,
    ) -> tuple[np.ndarray, _MatchPlan]:
        feats = np.asarray(self.game.features(np.asarray(states)), dtype=np.float32)
        n = feats.shape[0]
        m = min(n, self.cfg.max_particles)
        reps, _ = representatives(feats, m)
        ctx = torch.as_tensor(np.asarray(self.game.context(t, self._mu(states, mu)), np.float32))
        ctx = ctx.unsqueeze(0)
        # Positions 0..m-1 stand for the representatives (stage medians are positions too).
        x0 = sample_particles(
            self.planner, self.cfg, ctx, lambda pos: feats[reps[pos]], np.arange(m), generator, t
        )
        planned = self.planner.plan_actions(x0, ctx)[0].cpu().numpy()  # [M, H']
        assign = balanced_assignment(feats, feats[reps])
        xs = x0[0, :, :, : self.planner.state_dim].cpu().numpy()  # [M, H, d_s]
        return planned[assign, 0], _MatchPlan(assign, xs, planned)

    def act(
        self,
        t: int,
        states: np.ndarray,
        rng: np.random.Generator,
        generator: torch.Generator,
        mu: np.ndarray | None = None,
    ) -> np.ndarray:
        """states[N] -> actions[N]: each agent takes its matched particle's first action."""
        return self.plan(t, states, rng, generator, mu)[0]

    def follow(
        self, plan: _MatchPlan, k: int, t: int, states: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        feats = np.asarray(self.game.features(np.asarray(states)), dtype=np.float32)
        kk = min(k, plan.length - 1)
        own = plan.states[plan.assign, k]  # [N, d_s]
        ok = np.abs(own - feats).max(axis=1) <= DIVERGENCE_TOL
        actions = plan.actions[plan.assign, kk].copy()
        bad = np.flatnonzero(~ok)
        for lo in range(0, bad.shape[0], 4096):  # chunked nearest planned state at offset k
            chunk = bad[lo : lo + 4096]
            d2 = ((feats[chunk, None, :] - plan.states[None, :, k]) ** 2).sum(-1)
            actions[chunk] = plan.actions[d2.argmin(axis=1), kk]
        return actions


class _MatchPlan:
    def __init__(self, assign: np.ndarray, states: np.ndarray, actions: np.ndarray) -> None:
        self.assign, self.states, self.actions = assign, states, actions  # [N], [M,H,d], [M,H']

    @property
    def length(self) -> int:
        return int(self.actions.shape[1])


class PlannerPolicy:
    """The live planner as one object for rollouts: `reset()`, then `act(t, states, rng, mu)`.

    Chooses the acting rule (cfg.acting) and replans every cfg.replan_every steps; between
    replans agents follow their particles (see the module doc). All randomness of the planner
    comes from `generator` (not reset by `reset`, so episodes differ), the agents' draws from rng.
    """

    def __init__(
        self,
        planner: MFDiffuser,
        game: FiniteGame,
        prior: np.ndarray | None,
        cfg: PlannerConfig,
        generator: torch.Generator,
    ) -> None:
        rule = cfg.acting
        if rule == "auto":
            n_states = getattr(game, "n_states", None)
            rule = (
                "finite" if n_states is not None and n_states <= cfg.max_particles else "matching"
            )
        self.rule = rule
        self.base: FiniteStatePlannerPolicy | MatchingPlannerPolicy
        if rule == "finite":
            if prior is None:
                raise ValueError("acting = 'finite' needs the behaviour prior[T, S, A]")
            self.base = FiniteStatePlannerPolicy(planner, game, prior, cfg)
        else:
            self.base = MatchingPlannerPolicy(planner, game, cfg)
        self.cfg, self.generator = cfg, generator
        self._plan: _FinitePlan | _MatchPlan | None = None
        self._t_plan = -1

    def reset(self) -> None:
        """Forget the current plan (a new episode)."""
        self._plan, self._t_plan = None, -1

    def act(
        self,
        t: int,
        states: np.ndarray,
        rng: np.random.Generator,
        mu: np.ndarray | None = None,
    ) -> np.ndarray:
        r = self.cfg.replan_every
        if r == 1 and isinstance(self.base, FiniteStatePlannerPolicy):
            return self.base.act(t, states, rng, self.generator)  # exactly the per-step rule
        k = t - self._t_plan
        if self._plan is None or k < 0 or k >= r or k >= self._plan.length:
            actions, plan = self.base.plan(t, states, rng, self.generator, mu)
            self._plan, self._t_plan = plan, t
            return actions
        return self.base.follow(self._plan, k, t, states, rng)  # type: ignore[arg-type]
