"""Stage games (one decision): left_right, rock_paper_scissors (as in MFGLib 0.3.0) and
gaussian_squeeze (cooperative, after Yang et al. 2018).

Written as MFGLib writes left_right and rock_paper_scissors (mfglib/env/examples): state 0 is the
start state and state 1 + a is "chose action a"; from every state, action a leads to state 1 + a
with probability 1. MFGLib's horizon T = 1 means epochs t = 0, 1, so `horizon` = 2 here: the
decision at t = 0 from the start state (reward 0 there), then at t = 1 a reward in the chosen state
that depends on the population mu_1; the action taken at t = 1 does not matter. Rewards are
time-independent functions of mu, as in MFGLib, and the start state always earns 0.

    left_right:           r(L) = -mu(L),  r(R) = -2 mu(R)
    rock_paper_scissors:  r(R) = 2 mu(S) - mu(P), r(P) = 4 mu(R) - 2 mu(S), r(S) = 6 mu(P) - 3 mu(R)
    gaussian_squeeze:     every chosen state earns G(x) = x exp(-(x - c)^2 / w^2) / 100,
                          x = 100 sum_a a mu(1 + a)   (c = 400, w = 200 by default)
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    FloatArray,
    IntArray,
    LinearDynamics,
    policy_value,
)

START_STATE = 0
STAGE_HORIZON = 2  # MFGLib's T = 1: epochs t = 0 (decide) and t = 1 (rewarded)


class _StageGame(FiniteMeanFieldGame):
    """One decision from a start state; state 1 + a means "chose a" (MFGLib's layout)."""

    _linear: LinearDynamics | None = None  # the fixed dynamics, built on first use

    def _init_stage(self, n_actions: int) -> None:
        self.n_actions = n_actions
        self.n_states = 1 + n_actions
        self.horizon = STAGE_HORIZON
        self.mu0 = np.zeros(self.n_states)
        self.mu0[START_STATE] = 1.0
        # every (s, a) leads to 1 + a with probability 1
        support = np.tile(1 + np.arange(n_actions, dtype=np.int64), self.n_states)[:, None]
        probs = np.ones(support.shape)
        support.flags.writeable = probs.flags.writeable = False
        self._support = (support, probs)

    @abstractmethod
    def stage_reward(self, mu: FloatArray) -> FloatArray:
        """Reward [A] of being in chosen state 1 + a, given the population mu[S]."""

    def stage_rewards(self, mu: FloatArray) -> FloatArray:
        """`stage_reward` of a batch of populations mu[..., S]: [..., A] (a loop by default)."""
        mu = np.asarray(mu, dtype=np.float64)
        flat = mu.reshape(-1, self.n_states)
        out = np.array([self.stage_reward(m) for m in flat]).reshape(-1, self.n_actions)
        return out.reshape(*mu.shape[:-1], self.n_actions)  # type: ignore[no-any-return]

    def linear_dynamics(self) -> LinearDynamics:
        """Action a leads to state 1 + a from every state (built on first use)."""
        if self._linear is None:
            targets = 1 + np.repeat(np.arange(self.n_actions)[:, None], self.n_states, axis=1)
            self._linear = LinearDynamics.from_targets(targets)
        return self._linear

    def flow_rewards(self, flow: FloatArray) -> FloatArray:
        """R[..., T, A, S]: 0 in the start state, stage_reward[s - 1] in chosen state s."""
        flow = np.asarray(flow, dtype=np.float64)
        out = np.zeros((*flow.shape, self.n_actions))
        out[..., 1:, :] = self.stage_rewards(flow)[..., None]  # [..., T, S, A] here
        return np.swapaxes(out, -1, -2)  # type: ignore[no-any-return]

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        out = np.zeros((self.n_states, self.n_actions))
        out[1:, :] = self.stage_reward(np.asarray(mu, dtype=np.float64))[:, None]
        return out

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        # next[1 + a] = sum_s mass[s, a]; nothing returns to the start state
        out = np.zeros(self.n_states)
        out[1:] = np.asarray(mass, dtype=np.float64).sum(axis=0)
        return out

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        # out[s, a] = v_next[1 + a] for every s
        row = np.asarray(v_next, dtype=np.float64)[1:]
        return np.broadcast_to(row, (self.n_states, self.n_actions)).copy()

    def transition_support(self, t: int, mu: FloatArray) -> tuple[IntArray, FloatArray]:
        return self._support


class LeftRightParams(BaseModel):
    """left_right has no free parameters (MFGLib's Environment.left_right with mu0 = start)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LeftRight(_StageGame):
    """MFGLib's left_right: states (start, L, R), actions (L, R); equilibrium 2/3 go left."""

    def __init__(self) -> None:
        self.params = LeftRightParams()
        self._init_stage(2)

    def stage_reward(self, mu: FloatArray) -> FloatArray:
        return self.stage_rewards(mu)

    def stage_rewards(self, mu: FloatArray) -> FloatArray:
        mu = np.asarray(mu, dtype=np.float64)
        return np.stack([-mu[..., 1], -2.0 * mu[..., 2]], axis=-1)


class RockPaperScissorsParams(BaseModel):
    """rock_paper_scissors has no free parameters (MFGLib's, T = 1, mu0 = start)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RockPaperScissors(_StageGame):
    """MFGLib's generalised Shapley rock-paper-scissors: states (start, R, P, S), actions (R, P, S).

    Equilibrium mu* = (26, 20, 31) / 77 with value 6/11.
    """

    def __init__(self) -> None:
        self.params = RockPaperScissorsParams()
        self._init_stage(3)

    def stage_reward(self, mu: FloatArray) -> FloatArray:
        return self.stage_rewards(mu)

    def stage_rewards(self, mu: FloatArray) -> FloatArray:
        mu = np.asarray(mu, dtype=np.float64)
        rock, paper, scissors = mu[..., 1], mu[..., 2], mu[..., 3]
        return np.stack(
            [
                2.0 * scissors - paper,
                4.0 * rock - 2.0 * scissors,
                6.0 * paper - 3.0 * rock,
            ],
            axis=-1,
        )


RPS_EQUILIBRIUM = np.array([26.0, 20.0, 31.0]) / 77.0
RPS_VALUE = 6.0 / 11.0


class GaussianSqueezeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_actions: int = Field(default=10, ge=2, description="actions a = 0..n_actions-1")
    center: float = Field(default=400.0, description="centre c of the Gaussian in G(x)")
    width: float = Field(default=200.0, gt=0.0, description="width w of the Gaussian in G(x)")


class GaussianSqueeze(_StageGame):
    """Cooperative gaussian_squeeze: each agent sends a in 0..n-1; with x = 100 * mean(a) every
    agent receives G(x) = x exp(-(x - c)^2 / w^2) / 100 at t = 1.

    An agent's own action does not move x, so every policy is a Nash equilibrium (exploitability
    0): report `welfare_gap` instead.
    """

    def __init__(self, n_actions: int = 10, center: float = 400.0, width: float = 200.0) -> None:
        self.params = GaussianSqueezeParams(n_actions=n_actions, center=center, width=width)
        self.center = self.params.center
        self.width = self.params.width
        self._init_stage(self.params.n_actions)
        self._levels = np.arange(self.n_actions, dtype=np.float64)  # a

    def signal(self, mu: FloatArray) -> float:
        """x = 100 * sum_a a * mu(1 + a)."""
        return float(100.0 * (self._levels @ np.asarray(mu, dtype=np.float64)[1:]))

    def payoff(self, x: float) -> float:
        """G(x) = x * exp(-(x - c)^2 / w^2) / 100."""
        return x * math.exp(-((x - self.center) ** 2) / self.width**2) / 100.0

    def stage_reward(self, mu: FloatArray) -> FloatArray:
        return np.full(self.n_actions, self.payoff(self.signal(mu)))


def welfare(game: GaussianSqueeze, policy: FloatArray) -> float:
    """Per-agent welfare G(x) of a policy (its value against its own flow)."""
    return policy_value(game, policy)


def welfare_optimum(game: GaussianSqueeze) -> tuple[float, float]:
    """(x*, G(x*)): the maximiser of G over the reachable x in [0, 100 (n - 1)].

    G'(x) = 0 <=> 2x^2 - 2cx - w^2 = 0, so x* = c/2 + sqrt(c^2/4 + w^2/2) >= 0 (G rises before it
    and falls after it on x >= 0), clipped to the reachable range.
    """
    c, w = game.center, game.width
    x_star = c / 2.0 + math.sqrt(c * c / 4.0 + w * w / 2.0)
    x_star = min(x_star, 100.0 * (game.n_actions - 1))
    return x_star, game.payoff(x_star)


def welfare_gap(game: GaussianSqueeze, policy: FloatArray) -> float:
    """Optimal welfare minus the policy's welfare (>= 0)."""
    return welfare_optimum(game)[1] - welfare(game, policy)


def expert_policy(game: GaussianSqueeze) -> FloatArray:
    """Welfare-optimal policy[T, S, A]: from the start state, mix the two actions adjacent to
    x*/100 so the mean action is x*/100; uniform wherever the action does not matter."""
    x_star, _ = welfare_optimum(game)
    m = x_star / 100.0
    low = min(math.floor(m), game.n_actions - 2)
    frac = m - low
    policy = np.full((game.horizon, game.n_states, game.n_actions), 1.0 / game.n_actions)
    policy[0, START_STATE] = 0.0
    policy[0, START_STATE, low] = 1.0 - frac
    policy[0, START_STATE, low + 1] = frac
    return policy


def make_left_right(**params: Any) -> LeftRight:
    LeftRightParams(**params)
    return LeftRight()


def make_rock_paper_scissors(**params: Any) -> RockPaperScissors:
    RockPaperScissorsParams(**params)
    return RockPaperScissors()


def make_gaussian_squeeze(**params: Any) -> GaussianSqueeze:
    return GaussianSqueeze(**GaussianSqueezeParams(**params).model_dump())
