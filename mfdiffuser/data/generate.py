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
    sim: Any,
    policy: np.ndarray,
    seed: int,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One episode: states[T, N], actions[T, N], rewards[T, N] (policy[T, S, A]).

    A simulator with `act_and_step` (every finite game's, `envs.simulate.FiniteGameSim`) draws
    the actions and runs the epoch in one pass, writing straight into the episode's arrays; it
    gives exactly what `sample_actions` then `step` give, so the rows do not depend on which
    path made them. `out` = (states, actions, rewards) int64/int64/float64 [T, N] arrays to
    fill (reused across a shard's episodes: no allocation per epoch); fresh ones otherwise."""
    rng = np.random.default_rng(seed + 1)
    states_t = sim.reset(seed)
    horizon, n = policy.shape[0], states_t.shape[0]
    fused = getattr(sim, "act_and_step", None)
    if fused is not None:
        if out is None:
            out = (
                np.empty((horizon, n), dtype=np.int64),
                np.empty((horizon, n), dtype=np.int64),
                np.empty((horizon, n), dtype=np.float64),
            )
        states, actions, rewards = out
        states[0] = states_t
        next_states = np.empty(n, dtype=np.int64)
        for t in range(horizon):
            # the next states land in row t + 1 (a scratch row after the last epoch)
            target = states[t + 1] if t + 1 < horizon else next_states
            fused(policy[t], rng, out=(actions[t], target, rewards[t]))
        return states, actions, rewards
    states_l, actions_l, rewards_l = [], [], []
    for t in range(horizon):
        acts = sample_actions(policy[t], states_t, rng)
        nxt, rew, _done = sim.step(acts)
        states_l.append(states_t)
        actions_l.append(acts)
        rewards_l.append(rew)
        states_t = nxt
    return np.stack(states_l), np.stack(actions_l), np.stack(rewards_l)


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
    buffers = None  # the episode arrays, reused: every row below is copied out of them
    for e in episodes:
        states, actions, rewards = play_episode(
            sim, policies[e % len(policies)], episode_seed(seed, e), buffers
        )
        buffers = (states, actions, rewards)
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
