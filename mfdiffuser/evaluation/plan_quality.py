"""How good are the planner's generated trajectories themselves (logged beside the decomposition)?

- Trajectory distance: the unbiased MMD² (Gaussian kernel) between a set of generated particle
  windows and the held-out data windows they stand for (same episode, window start, μ_t and
  in-painted first states), averaged over windows. Windows are compared in the model's own
  encoding (state features ⊕ one-hot actions scaled to [-1, 1]), flattened over the H steps.
  The bandwidth is the median pairwise distance of the pooled set (the usual heuristic).
- Dynamics consistency: the generated states and actions are decoded (nearest state feature,
  arg-max action) and each planned transition (s_k, a_k) -> s_{k+1} is scored under the true
  kernel P(· | s_k, a_k, μ_k) with μ_k the histogram of the particles' own decoded states at step
  k. Reported: mean log-likelihood (probabilities floored at 1e-12) and the fraction of
  transitions the true dynamics can produce at all (P > 1e-12).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mfdiffuser.envs.finite import FiniteMeanFieldGame
from mfdiffuser.planner.acting import nearest_states

_FLOOR = 1e-12


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD² between samples x[n, d] and y[m, d] (n, m >= 2), Gaussian kernel."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd2_unbiased needs at least 2 samples per side, got {len(x)}, {len(y)}")
    z = np.concatenate([x, y])
    sq = np.maximum(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1), 0.0)  # sq[n+m, n+m]
    if bandwidth is None:
        off = sq[np.triu_indices(len(z), k=1)]
        med = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
        bandwidth = float(np.sqrt(0.5 * med))
    k = np.exp(-sq / (2.0 * bandwidth**2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def transition_probabilities(
    game: FiniteMeanFieldGame, t0: int, states: np.ndarray, actions: np.ndarray
) -> np.ndarray:
    """P(s_{k+1} | s_k, a_k, μ_k) of every planned transition: probs[M, H-1].

    states[M, H], actions[M, H] (decoded); μ_k is the particles' own state histogram at step k
    (their (state, action) histogram L_k[S, A] for a state-action mean-field game).
    Windows that run past the horizon are scored only up to it (the rest is NaN).
    """
    m, h = states.shape
    probs = np.full((m, max(h - 1, 0)), np.nan)
    for k in range(h - 1):
        t = t0 + k
        if t >= game.horizon - 1:
            break
        if getattr(game, "state_action_mean_field", False):
            flat = states[:, k] * game.n_actions + actions[:, k]
            counts = np.bincount(flat, minlength=game.n_states * game.n_actions)
            mu = (counts / m).reshape(game.n_states, game.n_actions)
        else:
            mu = np.bincount(states[:, k], minlength=game.n_states) / m
        for s, a in {(int(s), int(a)) for s, a in zip(states[:, k], actions[:, k], strict=True)}:
            mass = np.zeros((game.n_states, game.n_actions))
            mass[s, a] = 1.0
            nxt = game.push(t, mu, mass)  # P(· | s, a, μ_k)
            rows = (states[:, k] == s) & (actions[:, k] == a)
            probs[rows, k] = nxt[states[rows, k + 1]]
    return probs


# sample(t, mu[S], first_states[M], seed) -> particles x0[M, H, d_s + A] (model encoding)
SampleFn = Callable[[int, np.ndarray, np.ndarray, int], np.ndarray]


def plan_quality(
    game: FiniteMeanFieldGame,
    sample: SampleFn,
    states: np.ndarray,
    actions: np.ndarray,
    *,
    window: int,
    n_particles: int,
    n_windows: int,
    seed: int,
) -> dict[str, float]:
    """Trajectory MMD² and dynamics consistency against held-out episodes.

    states[E, T, N], actions[E, T, N] are held-out episodes (never seen in training). Each of the
    n_windows draws an episode, a window start t and min(N, n_particles) agents; the planner
    samples particles for exactly those agents (their states in-painted, μ_t of the episode).
    """
    rng = np.random.default_rng(seed)
    n_episodes, horizon, n_agents = states.shape
    m = min(n_agents, n_particles)
    if m < 2:
        raise ValueError(f"plan_quality needs at least 2 particles per window, got {m}")
    d_a = game.n_actions
    mmds, logliks, feasible = [], [], []
    for w in range(n_windows):
        e = int(rng.integers(n_episodes))
        t = int(rng.integers(horizon - window + 1))
        agents = rng.choice(n_agents, size=m, replace=False)
        s_real = states[e][t : t + window][:, agents].T  # [M, H]
        a_real = actions[e][t : t + window][:, agents].T
        mu = np.bincount(states[e, t], minlength=game.n_states) / n_agents
        x_gen = np.asarray(sample(t, mu, s_real[:, 0], seed + w), dtype=np.float64)
        feats = np.asarray(game.features(s_real.reshape(-1)), dtype=np.float64)
        x_real = np.concatenate(
            [feats.reshape(m, window, -1), 2.0 * np.eye(d_a)[a_real] - 1.0], axis=-1
        )
        mmds.append(mmd2_unbiased(x_gen.reshape(m, -1), x_real.reshape(m, -1)))
        d_s = x_real.shape[-1] - d_a
        s_gen = nearest_states(game, x_gen[..., :d_s])
        a_gen = x_gen[..., d_s:].argmax(axis=-1)
        p = transition_probabilities(game, t, s_gen, a_gen)
        p = p[~np.isnan(p)]
        if p.size:
            logliks.append(np.log(np.maximum(p, _FLOOR)))
            feasible.append(p > _FLOOR)
    out = {"trajectory/mmd2": float(np.mean(mmds))}
    if logliks:
        out["dynamics/log_likelihood"] = float(np.mean(np.concatenate(logliks)))
        out["dynamics/feasible_fraction"] = float(np.mean(np.concatenate(feasible)))
    return out
