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

from mfdiffuser.data.schema import BATTLE_ROW_SCHEMA, ROW_SCHEMA
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


def generate_battle_shard(
    params: Any, quality: str, episodes: range, seed: int
) -> tuple[pa.Table, dict[str, float]]:
    """battle rows (`BATTLE_ROW_SCHEMA`) of the given episodes and their outcomes.

    Team 0 plays the behaviour of `quality` (episode e uses the e-th of its epsilons,
    round-robin), team 1 `params.opponent`. Outcomes: episodes, wins and draws of team 0, kills
    by each team, and the summed per-agent return of team 0 (sum over episodes of its mean).
    """
    from mfdiffuser.envs.battle import BattleSim, behaviour_mix, play_episode

    sim = BattleSim(params)
    mix = behaviour_mix(quality)
    tables = []
    out = dict.fromkeys(("episodes", "wins", "draws", "kills0", "kills1", "return_sum"), 0.0)
    for e in episodes:
        ep = play_episode(sim, mix[e % len(mix)], episode_seed(seed, e), record=True)
        t_idx, agent = np.nonzero(ep["alive"])  # rows of the agents alive at each step's start
        tables.append(
            pa.table(
                {
                    "episode": np.full(len(t_idx), e, dtype=np.int64),
                    "t": t_idx.astype(np.int32),
                    "agent": agent.astype(np.int32),
                    "team": sim.team[agent].astype(np.int8),
                    "state": ep["cells"][t_idx, agent].astype(np.int32),
                    "hp": ep["hp"][t_idx, agent].astype(np.float32),
                    "action": ep["actions"][t_idx, agent].astype(np.int32),
                    "reward": ep["rewards"][t_idx, agent].astype(np.float32),
                    "dies": ~ep["alive_end"][t_idx, agent],
                },
                schema=BATTLE_ROW_SCHEMA,
            )
        )
        out["episodes"] += 1
        out["wins"] += ep["winner"] == 0
        out["draws"] += ep["winner"] == -1
        out["kills0"] += int(ep["kills"][0])
        out["kills1"] += int(ep["kills"][1])
        out["return_sum"] += float(ep["returns"][: sim.n_team].mean())
    return pa.concat_tables(tables), {k: float(v) for k, v in out.items()}


def battle_outcomes(table: pa.Table, n_team: int) -> dict[str, float]:
    """The outcomes `generate_battle_shard` reports, recomputed from its rows (resumed shards)."""
    episode = table["episode"].to_numpy()
    team = table["team"].to_numpy()
    dies = table["dies"].to_numpy()
    reward = table["reward"].to_numpy().astype(np.float64)
    eps, inverse = np.unique(episode, return_inverse=True)
    # kills by team 0 are deaths of team 1 and the other way round
    k0 = np.bincount(inverse, weights=dies & (team == 1), minlength=len(eps))
    k1 = np.bincount(inverse, weights=dies & (team == 0), minlength=len(eps))
    ret = np.bincount(inverse, weights=reward * (team == 0), minlength=len(eps)) / n_team
    return {
        "episodes": float(len(eps)),
        "wins": float((k0 > k1).sum()),
        "draws": float((k0 == k1).sum()),
        "kills0": float(k0.sum()),
        "kills1": float(k1.sum()),
        "return_sum": float(ret.sum()),
    }
