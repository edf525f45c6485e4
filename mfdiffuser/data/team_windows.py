"""Training windows of team games (rows in `TEAM_ROW_SCHEMA`), for the planner and the baselines.

Team 0's behaviour is what the data holds, so windows are made of team 0's agents. Per agent and
step the features are (x, y, hp), each in [0, 1] (x, y / (map_size − 1), hp / max_hp: what the
simulator's `agent_states()` gives when acting); the context is c = (t / T, both teams' coarse
density maps [2, G, G], own team first: what `mean_field()` gives). An agent that dies inside a
window leaves it: its later steps repeat its last living step and are marked invalid
(valid[B, M, H] = 0), as are steps past the episode's end, and the loss leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mfdiffuser.data.windows import encode_actions
from mfdiffuser.envs.team import TeamLayout


@dataclass(frozen=True)
class TeamEpisodes:
    """Dense per-episode arrays [E, T, N] (T = the episode cap, N = both teams) of team rows."""

    layout: TeamLayout
    cells: np.ndarray  # int64, the agent's cell at the step's start (-1: no row, i.e. dead)
    hp: np.ndarray  # float32
    actions: np.ndarray  # int64
    rewards: np.ndarray  # float32
    alive: np.ndarray  # bool: the agent has a row at this step
    lengths: np.ndarray  # [E] steps each episode lasted

    @property
    def n_agents(self) -> int:
        return self.layout.team_size

    @property
    def horizon(self) -> int:
        return self.layout.horizon


def team_episodes_from_table(table: pa.Table, layout: TeamLayout, where: str) -> TeamEpisodes:
    episode = table["episode"].to_numpy()
    eps, e_idx = np.unique(episode, return_inverse=True)
    t = table["t"].to_numpy().astype(np.int64)
    agent = table["agent"].to_numpy().astype(np.int64)
    n, horizon = 2 * layout.team_size, layout.horizon
    if len(eps) == 0 or t.max() >= horizon or agent.max() >= n:
        raise ValueError(f"{where}: rows do not fit episodes of {horizon} steps and {n} agents")
    shape = (len(eps), horizon, n)
    cells = np.full(shape, -1, dtype=np.int64)
    hp = np.zeros(shape, dtype=np.float32)
    actions = np.zeros(shape, dtype=np.int64)
    rewards = np.zeros(shape, dtype=np.float32)
    cells[e_idx, t, agent] = table["state"].to_numpy()
    hp[e_idx, t, agent] = table["hp"].to_numpy()
    actions[e_idx, t, agent] = table["action"].to_numpy()
    rewards[e_idx, t, agent] = table["reward"].to_numpy()
    lengths = np.zeros(len(eps), dtype=np.int64)
    np.maximum.at(lengths, e_idx, t + 1)
    return TeamEpisodes(layout, cells, hp, actions, rewards, cells >= 0, lengths)


def agent_features(cells: np.ndarray, hp: np.ndarray, layout: TeamLayout) -> np.ndarray:
    """(x, y, hp) in [0, 1] of cells[...] and hp[...]: float32[..., 3]."""
    m = layout.map_size
    x, y = cells % m, cells // m
    return np.stack([x / (m - 1), y / (m - 1), hp / layout.max_hp], axis=-1).astype(np.float32)


def density_maps(cells: np.ndarray, alive: np.ndarray, layout: TeamLayout) -> np.ndarray:
    """Both teams' coarse densities [..., 2, G, G] of cells[..., N] (team 0 first), as the
    simulator's `mean_field()`: living agents per coarse cell / team size."""
    g, m, n = layout.density_grid, layout.map_size, layout.team_size
    lead = cells.shape[:-1]
    team = np.repeat(np.arange(2), n)
    coarse = ((cells // m) * g // m) * g + (cells % m) * g // m
    idx = team * g * g + coarse  # [..., N]
    flat = (np.arange(int(np.prod(lead)))[:, None] * 2 * g * g + idx.reshape(-1, 2 * n)).ravel()
    counts = np.bincount(flat[alive.reshape(-1)], minlength=int(np.prod(lead)) * 2 * g * g)
    return (counts / n).reshape(*lead, 2, g, g)


class TeamView:
    """A team game as the methods see it: dimensions, features and context of team 0.

    `features(states)` takes per-agent features [N, 3] (they are the state: no finite state
    space) and `context(t, mu)` the density maps [2, G, G] with the acting team first.
    """

    state_space = "continuous"

    def __init__(self, layout: TeamLayout) -> None:
        self.layout = layout
        self.n_actions = layout.n_actions
        self.horizon = layout.horizon
        self.feature_dim = layout.feature_dim
        self.context_dim = layout.context_dim

    def features(self, states: np.ndarray) -> np.ndarray:
        return np.asarray(states, dtype=np.float32)

    def context(self, t: int, mu: np.ndarray) -> np.ndarray:
        head = np.array([t / self.horizon], dtype=np.float32)
        return np.concatenate([head, np.asarray(mu, dtype=np.float32).ravel()])


class TeamWindowSampler:
    """Draws batches {x[B, M, H, D], ctx[B, C], valid[B, M, H], …} of team 0's windows, seeded.

    Window starts are uniform over every step an episode lasted; the M particles are distinct
    agents of team 0 alive at the start (with replacement when fewer are alive). A particle's
    step is valid while its agent is alive and the episode runs. The batch also holds
    first_actions[B, M], actions[B, M, H], rewards[B, M, H], episode[B] and t0[B], as
    `WindowSampler` does. With `next_context` (transitions t0 -> t0 + 1, windows of 2 steps)
    they also hold ctx_next[B, C], the context at t0 + 1, and done[B, M] (float32): 1 where the
    agent's step t0 + 1 is not valid (it died at t0, or the episode ended), so an agent's last
    step has no successor and a dead agent's later steps are never a target.
    """

    def __init__(
        self,
        arrays: TeamEpisodes,
        window: int,
        n_particles: int,
        seed: int,
        next_context: bool = False,
    ) -> None:
        if window > arrays.horizon:
            raise ValueError(f"window = {window} is longer than the episodes ({arrays.horizon})")
        if next_context and window != 2:
            raise ValueError(f"window = {window}: transitions need windows of 2 steps")
        self.arrays, self.window, self.n_particles = arrays, window, n_particles
        self.next_context = next_context
        self.view = TeamView(arrays.layout)
        self.rng = np.random.default_rng(seed)
        lay = arrays.layout
        self.mu = density_maps(arrays.cells, arrays.alive, lay)  # [E, T, 2, G, G]
        n = lay.team_size
        self.feats = agent_features(arrays.cells[..., :n], arrays.hp[..., :n], lay)
        self.action_feats = encode_actions(np.arange(lay.n_actions), lay.n_actions)

    @property
    def feature_dim(self) -> int:
        return self.view.feature_dim + self.view.n_actions

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        a, m, h = self.arrays, self.n_particles, self.window
        n, horizon = a.layout.team_size, a.horizon
        eps = self.rng.integers(0, len(a.lengths), size=batch_size)
        t0 = (self.rng.random(batch_size) * a.lengths[eps]).astype(np.int64)
        agents = np.empty((batch_size, m), dtype=np.int64)
        for b in range(batch_size):
            living = np.flatnonzero(a.alive[eps[b], t0[b], :n])
            agents[b] = self.rng.choice(living, size=m, replace=m > len(living))
        ts = np.minimum(t0[:, None] + np.arange(h), horizon - 1)  # [B, H]
        e_idx, t_idx, a_idx = eps[:, None, None], ts[:, None, :], agents[:, :, None]
        inside = (t0[:, None] + np.arange(h) < a.lengths[eps][:, None])[:, None, :]
        # alive is a prefix of the window (the dead do not return), so `valid` is too
        valid = inside & a.alive[e_idx, t_idx, a_idx]  # [B, M, H]
        last = valid.sum(axis=2, keepdims=True) - 1  # the last valid step (>= 0: alive at t0)
        t_eff = ts[:, None, :].repeat(m, axis=1)
        t_eff = np.where(valid, t_eff, np.take_along_axis(t_eff, last, axis=2))
        feats = self.feats[e_idx, t_eff, a_idx]  # [B, M, H, 3]
        actions = a.actions[e_idx, t_eff, a_idx]
        x = np.concatenate([feats, self.action_feats[actions]], axis=-1)
        out = {
            "x": x.astype(np.float32),
            "ctx": self._contexts(eps, t0),
            "valid": valid.astype(np.float32),
            "episode": eps,
            "t0": t0,
            "first_actions": actions[:, :, 0],
            "actions": actions,
            "rewards": np.where(valid, a.rewards[e_idx, t_eff, a_idx], 0.0).astype(np.float32),
        }
        if self.next_context:
            out["ctx_next"] = self._contexts(eps, np.minimum(t0 + 1, horizon - 1))
            out["done"] = 1.0 - out["valid"][:, :, 1]
        return out

    def _contexts(self, eps: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """c(t, mu_t) of each (episode, time): float32[B, C]."""
        return np.stack(
            [self.view.context(int(t), self.mu[e, t]) for e, t in zip(eps, ts, strict=True)]
        ).astype(np.float32)
