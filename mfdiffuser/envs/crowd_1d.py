"""crowd_1d: OpenSpiel's crowd_modelling on a 1-D torus, with exact (clean) value semantics.

Torus of n cells, mu0 uniform, actions 0, 1, 2 = moves -1, 0, +1 (1 is neutral). At epoch
t = 0..H-1 an agent at x_t receives

    r_t = 1 - |x_t - n//2| / (n//2) - |move(a_{t-1})| / n - crowd_aversion * log(mu_t(x_t) + 1e-25)

with a_{-1} neutral (the distance term is not circular), then moves by its action and by noise
eps uniform on {-1, 0, +1}, mod n.

Exact model over x alone. The true state is (x, previous action) because of the movement cost.
Charging the cost of a_t at epoch t instead of t+1, and not at all for a_{H-1} (whose cost is never
paid), gives the epoch reward

    r'_t(x, a, mu) = 1 - |x - n//2| / (n//2) - crowd_aversion * log(mu(x) + 1e-25)
                     - [t < H-1] * |move(a)| / n.

Along every trajectory sum_t r_t = sum_t r'_t (same terms, each cost shifted one epoch earlier;
the a_{-1} cost is 0 and the a_{H-1} cost is dropped in both), so for a policy pi(a | x, t) and any
population flow both forms have the same expected return. Over the true state,
V_t(x, a_prev) = V'_t(x) - |move(a_prev)| / n for t >= 1, and at t = 0, a_prev is neutral, so
values agree exactly; the cost of a_prev does not depend on the current action, so the best
response over (x, a_prev) is the best response over x. OpenSpiel's evaluators cache values keyed
on (x, t) only, keeping whichever a_prev reached x first, so its published values differ from
these exact ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mfdiffuser.envs.finite import FiniteMeanFieldGame, FloatArray, IntArray
from mfdiffuser.envs.simulate import LastActionSim

MOVES = np.array([-1, 0, 1], dtype=np.int64)  # move(a) for actions a = 0, 1, 2
NEUTRAL_ACTION = 1
NOISE = np.array([-1, 0, 1], dtype=np.int64)  # eps, each with probability 1/3
LOG_EPS = 1e-25


class Crowd1DParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    size: int = Field(default=10, ge=2, le=10_000, description="number of cells n on the torus")
    horizon: int = Field(default=10, ge=1, le=10_000, description="decision epochs H")
    crowd_aversion: float = Field(
        default=1.0, ge=0.0, le=1e6, description="coefficient of -log(mu(x) + 1e-25), 0..1e6"
    )


class Crowd1D(FiniteMeanFieldGame):
    """Exact mean-field model of crowd_1d; dynamics are shifts, never dense transition tensors."""

    def __init__(self, size: int = 10, horizon: int = 10, crowd_aversion: float = 1.0) -> None:
        self.params = Crowd1DParams(size=size, horizon=horizon, crowd_aversion=crowd_aversion)
        self.size = self.params.size
        self.crowd_aversion = self.params.crowd_aversion
        self.n_states = self.size
        self.n_actions = len(MOVES)
        self.horizon = self.params.horizon
        self.mu0 = np.full(self.size, 1.0 / self.size)
        half = self.size // 2
        cells = np.arange(self.size)
        self.position_reward = 1.0 - np.abs(cells - half) / half  # [S]
        self.move_cost = np.abs(MOVES) / self.size  # [A]
        # Shifts as gathers (np.roll-style indices, precomputed because np.roll is slow on small
        # arrays): lands[x, a, e] = x + move(a) + eps_e, sources[y, a, e] = y - move(a) - eps_e.
        shift = MOVES[None, :, None] + NOISE[None, None, :]  # [1, A, 3]
        self._lands = (cells[:, None, None] + shift) % self.size  # [S, A, 3]
        self._sources = (cells[:, None, None] - shift) % self.size  # [S, A, 3]
        self._action_index = np.arange(self.n_actions)[None, :, None]  # [1, A, 1]
        # The simulators' sparse dynamics: row x * A + a lands on x + move(a) + eps, 1/3 each.
        support = self._lands.reshape(self.size * self.n_actions, len(NOISE))
        probs = np.full(support.shape, 1.0 / len(NOISE))
        support.flags.writeable = probs.flags.writeable = False
        self._support = (support, probs)

    def position_and_crowd_reward(self, mu: FloatArray) -> FloatArray:
        """The action-free part of the reward, per cell: [S]."""
        return self.position_reward - self.crowd_aversion * np.log(np.asarray(mu) + LOG_EPS)

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        """Epoch reward r'_t(x, a, mu) [S, A] (movement cost charged when the move is made)."""
        charged_cost = self.move_cost if t < self.horizon - 1 else np.zeros(self.n_actions)
        return self.position_and_crowd_reward(mu)[:, None] - charged_cost[None, :]

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        # next[y] = (1/3) sum_{a, eps} mass[y - move(a) - eps, a]
        gathered = np.asarray(mass)[self._sources, self._action_index]  # [S, A, 3]
        return gathered.reshape(self.size, -1).sum(axis=1) / len(NOISE)

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        # out[x, a] = (1/3) sum_eps v_next[x + move(a) + eps]
        return np.asarray(v_next)[self._lands].sum(axis=2) / len(NOISE)

    def transition_support(self, t: int, mu: FloatArray) -> tuple[IntArray, FloatArray]:
        """Row x * A + a: the 3 cells x + move(a) + eps (mod n), 1/3 each (mu-independent)."""
        return self._support


def make_crowd_1d(**params: Any) -> Crowd1D:
    """Build crowd_1d from keyword parameters, rejecting unknown ones (pydantic names them)."""
    return Crowd1D(**Crowd1DParams(**params).model_dump())


class Crowd1DSim(LastActionSim):
    """N-agent crowd_1d simulator: the generic fused step (`simulate.FiniteGameSim`), O(N) per
    step, seeded.

    Rewards are the literal per-step rewards r_t at x_t (movement cost of the previous action,
    mean field = the empirical histogram of x_t), so an agent's summed rewards equal its return
    under the exact model's epoch reward.
    """

    game: Crowd1D

    def __init__(self, game: Crowd1D, n_agents: int) -> None:
        super().__init__(game, n_agents, NEUTRAL_ACTION)
