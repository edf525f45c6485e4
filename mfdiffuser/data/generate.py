"""Play the N-agent game with behaviour policies and turn the episodes into dataset rows.

Pure numpy/pyarrow: the Ray actor pool in `mfdiffuser.workers.datagen` calls `generate_shard`
once per shard. Every episode is seeded from (dataset seed, episode index) alone, so a shard's
content does not depend on which worker made it or whether it was made twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from mfdiffuser.data.schema import ROW_SCHEMA
from mfdiffuser.envs import sample_actions


def episode_seed(seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def play_episode(
    sim: Any, policy: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One episode: states[T, N], actions[T, N], rewards[T, N] (policy[T, S, A])."""
    rng = np.random.default_rng(seed + 1)
    states_t = sim.reset(seed)
    horizon = policy.shape[0]
    states, actions, rewards = [], [], []
    for t in range(horizon):
        acts = sample_actions(policy[t], states_t, rng)
        nxt, rew, _done = sim.step(acts)
        states.append(states_t)
        actions.append(acts)
        rewards.append(rew)
        states_t = nxt
    return np.stack(states), np.stack(actions), np.stack(rewards)


def generate_shard(
    make_sim: Callable[[], Any],
    policies: list[np.ndarray],
    episodes: range,
    seed: int,
) -> tuple[pa.Table, np.ndarray]:
    """Rows of the given episodes and their mean per-agent returns[E].

    Episode e is played by policies[e % len(policies)] (mixtures are round-robin).
    """
    sim = make_sim()
    tables, returns = [], []
    for e in episodes:
        states, actions, rewards = play_episode(
            sim, policies[e % len(policies)], episode_seed(seed, e)
        )
        horizon, n = states.shape
        tables.append(
            pa.table(
                {
                    "episode": np.full(horizon * n, e, dtype=np.int64),
                    "t": np.repeat(np.arange(horizon, dtype=np.int32), n),
                    "agent": np.tile(np.arange(n, dtype=np.int32), horizon),
                    "state": states.reshape(-1).astype(np.int32),
                    "action": actions.reshape(-1).astype(np.int32),
                    "reward": rewards.reshape(-1).astype(np.float32),
                },
                schema=ROW_SCHEMA,
            )
        )
        returns.append(float(rewards.sum(axis=0).mean()))
    return pa.concat_tables(tables), np.asarray(returns)
