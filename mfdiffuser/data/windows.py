"""Training windows for the planner: one episode, one window start, M random agents.

docs/method.md: a training sample is X[M, H, D] (per step: state features ⊕ action one-hot scaled
to [-1, 1]) plus the context c = (t, mu_t), for a random subset of M of the episode's N agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from mfdiffuser.data.manifest import Manifest, read_manifest
from mfdiffuser.data.verify import read_shard
from mfdiffuser.envs import FiniteMeanFieldGame

if TYPE_CHECKING:
    from mfdiffuser.data.advantages import TabularAdvantage


@dataclass(frozen=True)
class EpisodeArrays:
    states: np.ndarray  # [E, T, N] int
    actions: np.ndarray  # [E, T, N] int
    rewards: np.ndarray  # [E, T, N] float32

    @property
    def n_agents(self) -> int:
        return int(self.states.shape[2])

    @property
    def horizon(self) -> int:
        return int(self.states.shape[1])


def episodes_from_table(table: pa.Table, n_agents: int, where: str = "table") -> EpisodeArrays:
    """Dataset rows (any order) -> dense per-episode arrays [E, T, N]."""
    table = table.sort_by([("episode", "ascending"), ("t", "ascending"), ("agent", "ascending")])
    n_ep = len(np.unique(table["episode"].to_numpy()))
    horizon = table.num_rows // max(n_ep * n_agents, 1)
    if n_ep == 0 or horizon * n_ep * n_agents != table.num_rows:
        raise ValueError(f"{where}: rows do not form complete episodes of {n_agents} agents")

    def col(name: str) -> np.ndarray:
        return np.asarray(table[name].to_numpy()).reshape(n_ep, horizon, n_agents)

    return EpisodeArrays(col("state"), col("action"), col("reward"))


def load_episodes(uri: str, shards: list[int] | None = None) -> tuple[Any, Manifest]:
    """Read (a subset of) a dataset's shards into dense per-episode arrays; each shard's bytes
    are checked against the manifest as they are read (`DatasetError` if one does not match).

    The manifest's row schema says how to parse them: `EpisodeArrays` of finite-state rows,
    `TeamEpisodes` of team rows (`mfdiffuser.data.team_windows`)."""
    from mfdiffuser.data.schema import ROW_SCHEMAS

    manifest = read_manifest(uri)
    where = f"dataset {uri!r}"
    if manifest.row_schema not in ROW_SCHEMAS:
        raise ValueError(
            f"{where}: row_schema = {manifest.row_schema!r}: allowed: {', '.join(ROW_SCHEMAS)}"
        )
    chosen = manifest.shards if shards is None else [manifest.shards[i] for i in shards]
    if not chosen:
        raise ValueError(f"{where}: no shards selected")
    table = pa.concat_tables([read_shard(uri, s) for s in chosen])
    if not table.schema.equals(ROW_SCHEMAS[manifest.row_schema], check_metadata=False):
        raise ValueError(f"{where}: its rows are not the manifest's {manifest.row_schema!r} rows")
    if manifest.row_schema == "team":
        from mfdiffuser.data.team_windows import team_episodes_from_table
        from mfdiffuser.envs.registry import get_benchmark

        bench = manifest.spec["benchmark"]
        simulator = get_benchmark(bench["name"]).simulator
        if simulator is None:
            raise ValueError(f"{where}: team rows of {bench['name']}, which has no simulator")
        layout = simulator.layout(get_benchmark(bench["name"]).params(bench["params"]))
        return team_episodes_from_table(table, layout, where), manifest
    return episodes_from_table(table, int(manifest.spec["n_agents"]), where), manifest


def mean_fields(arrays: EpisodeArrays, n_states: int) -> np.ndarray:
    """Empirical mu[E, T, S] of every episode and time."""
    e, t, n = arrays.states.shape
    flat = (np.arange(e * t)[:, None] * n_states + arrays.states.reshape(e * t, n)).ravel()
    counts = np.bincount(flat, minlength=e * t * n_states).reshape(e, t, n_states)
    return counts / n


def action_counts(arrays: EpisodeArrays, n_states: int, n_actions: int) -> np.ndarray:
    """How often each action was taken in each (t, s): counts[T, S, A] (float64)."""
    _, horizon, _ = arrays.states.shape
    t_idx = np.broadcast_to(np.arange(horizon)[None, :, None], arrays.states.shape)
    flat = (t_idx * n_states + arrays.states) * n_actions + arrays.actions
    counts = np.bincount(flat.ravel(), minlength=horizon * n_states * n_actions)
    return counts.reshape(horizon, n_states, n_actions).astype(np.float64)


def normalise_counts(counts: np.ndarray) -> np.ndarray:
    """counts[..., A] -> distributions; uniform where a row has no count."""
    total = counts.sum(axis=-1, keepdims=True)
    return np.where(total > 0, counts / np.maximum(total, 1.0), 1.0 / counts.shape[-1])


def behaviour_prior(arrays: EpisodeArrays, n_states: int, n_actions: int) -> np.ndarray:
    """Empirical pi_b(a | s, t) [T, S, A]; uniform where the data never visits (t, s)."""
    return normalise_counts(action_counts(arrays, n_states, n_actions))


def encode_actions(actions: np.ndarray, n_actions: int) -> np.ndarray:
    """One-hot scaled to [-1, 1]: float32[..., A]."""
    return (2.0 * np.eye(n_actions, dtype=np.float32)[actions] - 1.0).astype(np.float32)


class WindowSampler:
    """Draws batches {x[B, M, H, D], ctx[B, C], valid[B, H]} of training windows, seeded.

    Window starts t0 are uniform over every decision time 0..T-1, because the planner acts at
    every t: a window that runs past the episode end is padded by repeating the last step, and
    valid[b, h] = 0 marks those padded steps (t0 + h >= T), which the loss leaves out. (Starts
    restricted to 0..T-H would leave the last H - 1 decision times unseen in training.)

    Every batch also holds the raw steps: states[B, M, H], actions[B, M, H] (state and action
    indices) and rewards[B, M, H] (float32), padded like x. With `advantage` (a dataset-fitted
    TabularAdvantage) batches also hold advantages[B, M] (float32): A(s, a, t0) of each
    particle's first state and action. With `next_context` (for methods that learn from
    transitions t0 -> t0 + 1) they hold ctx_next[B, C], the context at t0 + 1 (t0 itself at the
    last step, where it is never used), and done[B] (float32): 1 where t0 is the last step.
    """

    def __init__(
        self,
        arrays: EpisodeArrays,
        game: FiniteMeanFieldGame,
        window: int,
        n_particles: int,
        seed: int,
        advantage: TabularAdvantage | None = None,
        next_context: bool = False,
    ) -> None:
        if window > arrays.horizon:
            raise ValueError(f"window = {window} is longer than the episodes ({arrays.horizon})")
        if advantage is not None:
            expected = (arrays.horizon, game.n_states, game.n_actions)
            if advantage.counts.shape != expected:
                raise ValueError(
                    f"advantage: expected tables of shape [T, S, A] = {expected}, "
                    f"got {advantage.counts.shape}"
                )
        self.advantage, self.next_context = advantage, next_context
        self.arrays, self.game = arrays, game
        self.window, self.n_particles = window, n_particles
        self.rng = np.random.default_rng(seed)
        self.mu = mean_fields(arrays, game.n_states)  # [E, T, S]
        self.state_feats = game.features(np.arange(game.n_states))  # [S, d_s]
        self.action_feats = encode_actions(np.arange(game.n_actions), game.n_actions)  # [A, A]

    @property
    def feature_dim(self) -> int:
        return int(self.state_feats.shape[1] + self.action_feats.shape[1])

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        a = self.arrays
        n_ep, horizon, n = a.states.shape
        m, h = self.n_particles, self.window
        eps = self.rng.integers(0, n_ep, size=batch_size)
        t0 = self.rng.integers(0, horizon, size=batch_size)
        # M distinct agents when the episode has enough, otherwise with replacement.
        if m <= n:
            agents = np.stack(
                [self.rng.choice(n, size=m, replace=False) for _ in range(batch_size)]
            )
        else:
            agents = self.rng.integers(0, n, size=(batch_size, m))
        ts = t0[:, None] + np.arange(h)[None, :]  # [B, H]
        valid = ts < horizon
        ts = np.minimum(ts, horizon - 1)  # padding past the end: the last step repeated
        e_idx, t_idx, a_idx = eps[:, None, None], ts[:, None, :], agents[:, :, None]
        states = a.states[e_idx, t_idx, a_idx]  # [B, M, H]
        actions = a.actions[e_idx, t_idx, a_idx]
        x = np.concatenate([self.state_feats[states], self.action_feats[actions]], axis=-1)
        ctx = self._contexts(eps, t0)
        out = {
            "x": x.astype(np.float32),
            "ctx": ctx,
            "valid": valid.astype(np.float32),
            "episode": eps,
            "t0": t0,
            "first_states": states[:, :, 0],
            "first_actions": actions[:, :, 0],
            "states": states,
            "actions": actions,
            "rewards": a.rewards[e_idx, t_idx, a_idx].astype(np.float32),
        }
        if self.next_context:
            out["ctx_next"] = self._contexts(eps, np.minimum(t0 + 1, horizon - 1))
            out["done"] = (t0 == horizon - 1).astype(np.float32)
        if self.advantage is not None:
            adv = self.advantage.advantage(t0[:, None], states[:, :, 0], actions[:, :, 0])
            out["advantages"] = adv.astype(np.float32)  # [B, M]
        return out

    def _contexts(self, eps: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """c(t, mu_t) of each (episode, time): float32[B, C]."""
        return np.stack(
            [self.game.context(int(t), self.mu[e, t]) for e, t in zip(eps, ts, strict=True)]
        ).astype(np.float32)
