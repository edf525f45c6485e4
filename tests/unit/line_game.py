"""The tiny real finite mean-field game the planner tests share (imported, not collected)."""

from __future__ import annotations

import numpy as np


class LineGame:
    """S cells on a line, actions left / stay / right, clipped at the ends."""

    def __init__(self, n_states: int = 5, horizon: int = 6) -> None:
        self.n_states, self.n_actions, self.horizon = n_states, 3, horizon
        self.feature_dim = n_states
        self.context_dim = 1 + n_states
        self.mu0 = np.full(n_states, 1.0 / n_states)

    def features(self, states: np.ndarray) -> np.ndarray:
        return 2.0 * np.eye(self.n_states, dtype=np.float32)[np.asarray(states)] - 1.0

    def context(self, t: int, mu: np.ndarray) -> np.ndarray:
        return np.concatenate([[t / self.horizon], mu]).astype(np.float32)

    def next_state(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.clip(s + a - 1, 0, self.n_states - 1)

    def propagate(self, policy: np.ndarray) -> np.ndarray:
        """Exact mean-field flow[T, S] of policy[T, S, A] from mu0."""
        s_idx = np.arange(self.n_states)
        flow = np.zeros((self.horizon, self.n_states))
        flow[0] = self.mu0
        for t in range(self.horizon - 1):
            for a in range(self.n_actions):
                nxt = self.next_state(s_idx, np.full_like(s_idx, a))
                np.add.at(flow[t + 1], nxt, flow[t] * policy[t, :, a])
        return flow
