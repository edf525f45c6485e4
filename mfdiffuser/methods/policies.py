"""Policies built from a per-(t, μ) action table, shared by the methods that are not planners."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mfdiffuser.envs.finite import FiniteMeanFieldGame, sample_actions
from mfdiffuser.methods.base import Policy
from mfdiffuser.planner.acting import draw_from_table

RowsFn = Callable[[int, np.ndarray], np.ndarray]  # (t, μ[S]) -> π_t(· | s, μ)[S, A]


class TablePolicy(Policy):
    """A fixed table π[T, S, A] (a reference solution): the same for every μ."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.float64)

    def act(self, t: int, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sample_actions(self.table[t], states, rng)

    def expected_table(
        self, propagate_fn: Callable[[np.ndarray], np.ndarray], seed: int
    ) -> np.ndarray:
        return self.table.copy()


class ConditionalPolicy(Policy):
    """π(a | s, t, μ) given as rows(t, μ) -> [S, A]: each agent draws from its state's row.

    Acting reads μ_t off the agents' states (O(N) plus one call of `rows`); the frozen table
    follows the policy's own exact flow: row t is rows(t, μ_t) with μ_t propagated by rows < t.
    """

    def __init__(self, game: FiniteMeanFieldGame, rows: RowsFn) -> None:
        self.game, self.rows = game, rows

    def act(self, t: int, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        states = np.asarray(states, dtype=np.int64)
        mu = np.bincount(states, minlength=self.game.n_states) / states.shape[0]
        return draw_from_table(self.rows(t, mu), states, rng)

    def expected_table(
        self, propagate_fn: Callable[[np.ndarray], np.ndarray], seed: int
    ) -> np.ndarray:
        g = self.game
        policy = np.full((g.horizon, g.n_states, g.n_actions), 1.0 / g.n_actions)
        for t in range(g.horizon):
            mu = np.asarray(propagate_fn(policy), dtype=np.float64)[t]  # rows >= t unused
            policy[t] = self.rows(t, mu)
        return policy
