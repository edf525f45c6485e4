"""Generic N-agent simulator for any finite mean-field game (stage games, sis).

Same interface as Crowd1DSim: reset(seed) -> states[N], t, step(actions) -> (next_states[N],
rewards[N], done), mean_field(). The mean field fed to the game is the empirical histogram of the
agents' states at epoch t; per-agent transitions come from `game.sample_next` (O(N), batched).
For a state-action mean-field game (`game.state_action_mean_field`) it is the empirical
state-action distribution L_N[S, A] of the agents' (state, action) pairs at epoch t, taken after
every agent has chosen its action: `state_action_distribution(actions)`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mfdiffuser.envs.finite import FiniteMeanFieldGame, FloatArray, IntArray


class FiniteGameSim:
    """N-agent simulator of a FiniteMeanFieldGame: batched numpy, seeded.

    At epoch t each agent in state s taking action a receives game.reward(t, mu_N)[s, a] with
    mu_N the empirical state distribution (the empirical L_N[S, A] for a state-action mean-field
    game), then moves by game.sample_next(t, mu_N, ...). So an
    agent's summed rewards are an unbiased sample of its return as N grows.
    """

    def __init__(self, game: FiniteMeanFieldGame, n_agents: int) -> None:
        if n_agents < 1:
            raise ValueError(f"n_agents: must be >= 1, got {n_agents}")
        self.game = game
        self.n_agents = n_agents
        self.t = 0
        self.states: IntArray = np.zeros(n_agents, dtype=np.int64)  # states[N]
        self.rng = np.random.default_rng(0)
        self._started = False

    def reset(self, seed: int) -> IntArray:
        """Draw initial states[N] i.i.d. from mu0 and restart at t = 0."""
        self.rng = np.random.default_rng(seed)
        cdf = np.cumsum(self.game.mu0)
        u = self.rng.random(self.n_agents) * cdf[-1]
        states = np.searchsorted(cdf, u, side="right")
        self.states = np.minimum(states, self.game.n_states - 1).astype(np.int64)
        self.t = 0
        self._started = True
        self._on_reset()
        return self.states.copy()

    def _on_reset(self) -> None:
        """Hook for subclasses with more per-agent state (e.g. the previous action)."""

    def mean_field(self) -> FloatArray:
        """Empirical distribution hist[S] of the current states."""
        counts = np.bincount(self.states, minlength=self.game.n_states)
        return counts / self.n_agents

    def step(self, actions: npt.ArrayLike) -> tuple[IntArray, FloatArray, bool]:
        """Act at epoch t: (next_states[N], rewards[N] received at epoch t, done)."""
        name = type(self).__name__
        if not self._started:
            raise RuntimeError(f"{name}.step: call reset(seed) first")
        if self.t >= self.game.horizon:
            raise RuntimeError(f"{name}.step: episode is done; call reset(seed)")
        actions = np.asarray(actions, dtype=np.int64)
        if actions.shape != (self.n_agents,):
            raise ValueError(f"actions: expected shape ({self.n_agents},), got {actions.shape}")
        # One pass: viewed as unsigned, a negative action is huge, so max() catches both ends.
        if actions.view(np.uint64).max() >= self.game.n_actions:
            raise ValueError(f"actions: must lie in 0..{self.game.n_actions - 1}")
        rewards, self.states = self._advance(actions)
        self.t += 1
        return self.states.copy(), rewards, self.t >= self.game.horizon

    def state_action_distribution(self, actions: npt.ArrayLike) -> FloatArray:
        """Empirical L_N[S, A]: the fraction of agents in state s taking action a (actions[N])."""
        n_s, n_a = self.game.n_states, self.game.n_actions
        flat = self.states * n_a + np.asarray(actions, dtype=np.int64)
        counts = np.bincount(flat, minlength=n_s * n_a)
        return (counts / self.n_agents).reshape(n_s, n_a)

    def _advance(self, actions: IntArray) -> tuple[FloatArray, IntArray]:
        """(rewards[N] received at epoch t, next_states[N]) for validated actions[N]."""
        if self.game.state_action_mean_field:
            mu = self.state_action_distribution(actions)
        else:
            mu = self.mean_field()
        rewards = self.game.reward(self.t, mu)[self.states, actions]
        return rewards, self.game.sample_next(self.t, mu, self.states, actions, self.rng)


class LastActionSim(FiniteGameSim):
    """A simulator whose rewards charge the previous action (crowd games' literal last-move
    cost): keeps prev_actions[N], neutral at t = 0."""

    def __init__(self, game: FiniteMeanFieldGame, n_agents: int, neutral_action: int) -> None:
        super().__init__(game, n_agents)
        self.neutral_action = neutral_action
        self.prev_actions: IntArray = np.full(n_agents, neutral_action, dtype=np.int64)

    def _on_reset(self) -> None:
        self.prev_actions = np.full(self.n_agents, self.neutral_action, dtype=np.int64)
