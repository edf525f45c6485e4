"""Play a policy in the N-agent simulator and score it against the exact mean-field model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mfdiffuser.data.generate import episode_seed
from mfdiffuser.envs import (
    FiniteMeanFieldGame,
    exploitability,
    policy_value,
    propagate,
    sample_actions,
)

# act(t, states[N], rng) -> actions[N]
ActFn = Callable[[int, np.ndarray, np.random.Generator], np.ndarray]


def table_act(table: np.ndarray) -> ActFn:
    """act(t, states, rng) = sample_actions(table[t], states, rng) for a policy table[T, S, A];
    `episode_return` plays it through the simulator's fused `act_and_step` when it has one
    (the same draws, one pass over the agents)."""
    table = np.asarray(table, dtype=np.float64)

    def act(t: int, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sample_actions(table[t], states, rng)

    act.policy_table = table  # type: ignore[attr-defined]
    return act


def episode_return(sim: Any, act: ActFn, horizon: int, seed: int) -> float:
    """Mean per-agent return of one episode (J^N for a single draw)."""
    rng = np.random.default_rng(seed + 1)
    states = sim.reset(seed)
    reset = getattr(act, "reset", None)
    if reset is not None:  # a planner policy that keeps a plan across steps starts afresh
        reset()
    table = getattr(act, "policy_table", None)  # a fixed table: `table_act`
    fused = getattr(sim, "act_and_step", None) if table is not None else None
    total = np.zeros(len(states))
    for t in range(horizon):
        if fused is not None:
            _, states, rewards, _ = fused(table[t], rng)  # type: ignore[index]
        else:
            states, rewards, _ = sim.step(act(t, states, rng))
        total += rewards
    return float(total.mean())


def rollout_returns(
    make_sim: Callable[[], Any], act: ActFn, horizon: int, episodes: int, seed: int
) -> list[float]:
    """Per-episode mean per-agent returns, each episode seeded from (seed, episode)."""
    sim = make_sim()
    return [episode_return(sim, act, horizon, episode_seed(seed, e)) for e in range(episodes)]


def table_metrics(game: FiniteMeanFieldGame, table: np.ndarray) -> dict[str, float]:
    """Exact mean-field return J^inf and exploitability of a policy table [T, S, A]."""
    return {
        "return_mf": policy_value(game, table),
        "exploitability": exploitability(game, table),
    }


def propagate_fn(game: FiniteMeanFieldGame) -> Callable[[np.ndarray], np.ndarray]:
    return lambda policy: propagate(game, policy)
