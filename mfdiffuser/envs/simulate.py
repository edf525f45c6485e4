"""The N-agent simulator of every finite mean-field game: one fused, compiled pass per epoch.

Interface: reset(seed) -> states[N]; step(actions) -> (next_states[N], rewards[N], done);
act_and_step(policy_t, rng) -> (actions[N], next_states[N], rewards[N], done); mean_field().
The mean field fed to the game is the empirical histogram of the agents' states at epoch t (for
a state-action mean-field game, `game.state_action_mean_field`, the empirical state-action
distribution L_N[S, A] of the agents' (state, action) pairs at epoch t, taken after every agent
has chosen its action: `state_action_distribution(actions)`).

How an epoch runs, the same for every game (docs/benchmarks.md, "The finite-game simulator"):
1. per epoch, O(S A K), in numpy: the reward table r_t[s, a] = game.reward(t, mu_N) and the
   sparse transition support (for each (s, a) its K next states and their probabilities,
   `game.transition_support(t, mu_N)`) turned into float32 inverse-CDF thresholds (reused while
   the game hands back the same support arrays: a mu-independent game's never change);
2. per agent, one compiled loop (`kernels.advance`, or `kernels.act_and_advance` which also
   draws the action from the policy row): the next state from its (s, a) row with one float32
   uniform, the reward r_t[s, a] (minus the previous action's cost in a `LastActionSim`), the
   outputs written and the next epoch's histogram counted, so mean_field() costs O(S).
The uniforms come in bulk from the simulator's numpy Generator (seeded by reset), one float32
per agent per epoch; `act_and_step` draws the actions' uniforms from the caller's generator
first, so it gives bit for bit what `sample_actions(policy_t, states, rng)` then `step` give.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mfdiffuser.envs import kernels
from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    FloatArray,
    IntArray,
    SupportTable,
    policy_thresholds,
)

_NO_PREVIOUS = np.zeros(0, dtype=np.int64)
_NO_DRAW = np.zeros(0, dtype=np.float32)


def draw_rows(rows: FloatArray, which: IntArray, rng: np.random.Generator) -> IntArray:
    """One index per agent drawn from rows[R, K] (probabilities, normalised here) at its row
    which[N]: inverse CDF with one float32 uniform per agent (`kernels`), O(N)."""
    thresholds, stride = policy_thresholds(rows)
    out = np.empty(which.shape[0], dtype=np.int64)
    u = np.asarray(rng.random(which.shape[0], dtype=np.float32))
    if kernels.draw_actions(thresholds, stride, rows.shape[0], which, u, out):
        raise IndexError(f"rows: must lie in 0..{rows.shape[0] - 1}")
    return out


class FiniteGameSim:
    """N-agent simulator of a FiniteMeanFieldGame: one compiled pass per epoch, seeded.

    At epoch t each agent in state s taking action a receives game.reward(t, mu_N)[s, a] with
    mu_N the empirical state distribution (the empirical L_N[S, A] for a state-action mean-field
    game), then moves to a next state drawn from game.transition_support(t, mu_N)'s row (s, a).
    So an agent's summed rewards are an unbiased sample of its return as N grows.
    """

    def __init__(self, game: FiniteMeanFieldGame, n_agents: int) -> None:
        if n_agents < 1:
            raise ValueError(f"n_agents: must be >= 1, got {n_agents}")
        self.game = game
        self.n_agents = n_agents
        self.t = 0
        self._states: IntArray = np.zeros(n_agents, dtype=np.int64)  # states[N]
        self._counts: IntArray | None = None  # histogram of _states, None: not yet counted
        self.rng = np.random.default_rng(0)
        self._started = False
        self._support_arrays: tuple[object, object] | None = None  # the last support handed
        self._table: SupportTable | None = None  # ... and its thresholds
        # the epoch's uniforms (transitions, actions), refilled in place every epoch
        self._u = np.empty(n_agents, dtype=np.float32)
        self._u_action = np.empty(n_agents, dtype=np.float32)

    @property
    def states(self) -> IntArray:
        """The agents' current states[N] (the simulator's own array: read, do not write)."""
        return self._states

    @states.setter
    def states(self, value: npt.ArrayLike) -> None:
        states = np.array(value, dtype=np.int64)  # a copy
        if states.shape != (self.n_agents,):
            raise ValueError(f"states: expected shape ({self.n_agents},), got {states.shape}")
        if states.view(np.uint64).max() >= self.game.n_states:
            raise ValueError(f"states: must lie in 0..{self.game.n_states - 1}")
        self._states = states
        self._counts = None

    def reset(self, seed: int) -> IntArray:
        """Draw initial states[N] i.i.d. from mu0 and restart at t = 0.

        The simulator's generator is `np.random.default_rng(seed)`: draw the actions from a
        generator of another seed (the platform uses seed + 1), or the actions' uniforms are
        the very ones the initial states were drawn with."""
        self.rng = np.random.default_rng(seed)
        self.states = draw_rows(
            np.asarray(self.game.mu0, dtype=np.float64)[None, :],
            np.zeros(self.n_agents, dtype=np.int64),
            self.rng,
        )
        self.t = 0
        self._started = True
        self._on_reset()
        return self._states.copy()

    def _on_reset(self) -> None:
        """Hook for subclasses with more per-agent state (e.g. the previous action)."""

    def counts(self) -> IntArray:
        """Histogram counts[S] of the current states (kept by the step kernel: O(S))."""
        if self._counts is None:
            self._counts = np.bincount(self._states, minlength=self.game.n_states)
        return self._counts

    def mean_field(self) -> FloatArray:
        """Empirical distribution hist[S] of the current states."""
        return self.counts() / self.n_agents

    def _check_running(self) -> None:
        name = type(self).__name__
        if not self._started:
            raise RuntimeError(f"{name}.step: call reset(seed) first")
        if self.t >= self.game.horizon:
            raise RuntimeError(f"{name}.step: episode is done; call reset(seed)")

    def step(self, actions: npt.ArrayLike) -> tuple[IntArray, FloatArray, bool]:
        """Act at epoch t: (next_states[N], rewards[N] received at epoch t, done)."""
        self._check_running()
        actions = np.ascontiguousarray(actions, dtype=np.int64)
        if actions.shape != (self.n_agents,):
            raise ValueError(f"actions: expected shape ({self.n_agents},), got {actions.shape}")
        # One pass: viewed as unsigned, a negative action is huge, so max() catches both ends.
        if actions.view(np.uint64).max() >= self.game.n_actions:
            raise ValueError(f"actions: must lie in 0..{self.game.n_actions - 1}")
        next_states, rewards = self._advance(actions)
        self.t += 1
        return next_states, rewards, self.t >= self.game.horizon

    def act_and_step(
        self,
        policy_t: npt.ArrayLike,
        rng: np.random.Generator,
        out: tuple[IntArray, IntArray, FloatArray] | None = None,
    ) -> tuple[IntArray, IntArray, FloatArray, bool]:
        """Every agent draws its action from policy_t[S, A] at its state, then the epoch runs:
        (actions[N], next_states[N], rewards[N], done), in one pass over the agents.

        The same arrays, bit for bit, as `actions = sample_actions(policy_t, sim.states, rng)`
        followed by `sim.step(actions)` (one float32 uniform per agent from `rng` first).
        `out` = (actions, next_states, rewards): arrays of shape [N] (int64, int64, float64,
        contiguous) written in place of fresh ones and returned (e.g. rows of an episode's
        [T, N] arrays, reused across episodes: no allocation, no page faults)."""
        self._check_running()
        if out is not None:
            for buf, dtype in zip(out, (np.int64, np.int64, np.float64), strict=True):
                if (
                    not isinstance(buf, np.ndarray)
                    or buf.shape != (self.n_agents,)
                    or buf.dtype != dtype
                    or not buf.flags.c_contiguous
                    or not buf.flags.writeable
                ):
                    raise ValueError(
                        f"out: expected writeable contiguous arrays of shape ({self.n_agents},)"
                        " and dtypes int64, int64, float64"
                    )
        game = self.game
        policy_t = np.asarray(policy_t, dtype=np.float64)
        if policy_t.shape != (game.n_states, game.n_actions):
            raise ValueError(
                f"policy_t: expected shape [S, A] = {(game.n_states, game.n_actions)}, got "
                f"{policy_t.shape}"
            )
        thresholds, a_stride = policy_thresholds(policy_t)
        u_action = rng.random(out=self._u_action, dtype=np.float32)
        actions = np.empty(self.n_agents, dtype=np.int64) if out is None else out[0]
        targets = None if out is None else out[1:]
        if game.state_action_mean_field:  # L_N needs every action first: two passes
            kernels.draw_actions(
                thresholds, a_stride, game.n_states, self._states, u_action, actions
            )
            next_states, rewards = self._advance(actions, None, targets)
        else:
            draw = (thresholds, a_stride, u_action)
            next_states, rewards = self._advance(actions, draw, targets)
        self.t += 1
        return actions, next_states, rewards, self.t >= game.horizon

    def state_action_distribution(self, actions: npt.ArrayLike) -> FloatArray:
        """Empirical L_N[S, A]: the fraction of agents in state s taking action a (actions[N])."""
        n_s, n_a = self.game.n_states, self.game.n_actions
        counts = np.zeros(n_s * n_a, dtype=np.int64)
        kernels.count_pairs(
            self._states, np.ascontiguousarray(actions, dtype=np.int64), n_a, counts
        )
        return (counts / self.n_agents).reshape(n_s, n_a)

    def _reward_table(self, mu: FloatArray) -> tuple[FloatArray, IntArray]:
        """(r_t[s * A + a] float64, empty: no previous action) (see `kernels.advance`)."""
        r = np.ascontiguousarray(self.game.reward(self.t, mu), dtype=np.float64).reshape(-1)
        if r.shape[0] != self.game.n_states * self.game.n_actions:
            raise ValueError(f"{type(self.game).__name__}.reward: expected shape [S, A]")
        return r, _NO_PREVIOUS

    def _support(self, mu: FloatArray) -> SupportTable:
        """The epoch's transition support as kernel tables (thresholds reused while the game
        hands back the same arrays)."""
        next_states, probs = self.game.transition_support(self.t, mu)
        last = self._support_arrays
        if (
            self._table is None
            or last is None
            or last[0] is not next_states
            or last[1] is not probs
        ):
            self._table = SupportTable.of(self.game, next_states, probs)
            self._support_arrays = (next_states, probs)
        return self._table

    def _advance(
        self,
        actions: IntArray,
        draw: tuple[np.ndarray, int, np.ndarray] | None = None,
        out: tuple[IntArray, FloatArray] | None = None,
    ) -> tuple[IntArray, FloatArray]:
        """(next_states[N] (a copy), rewards[N] received at epoch t) for validated actions[N],
        or, with draw = (thresholds, stride, u_action), for actions drawn into `actions` in the
        same pass; written into `out` when given; the agents' states and histogram become the
        next epoch's."""
        if self.game.state_action_mean_field:
            mu = self.state_action_distribution(actions)
        else:
            mu = self.mean_field()
        reward, prev = self._reward_table(mu)
        table = self._support(mu)
        u = self.rng.random(out=self._u, dtype=np.float32)
        if out is None:
            next_states = np.empty(self.n_agents, dtype=np.int64)
            rewards = np.empty(self.n_agents, dtype=np.float64)
        else:
            next_states, rewards = out
        counts = np.zeros(self.game.n_states, dtype=np.int64)
        thresholds, a_stride, u_action = draw if draw is not None else (_NO_DRAW, 0, _NO_DRAW)
        kernels.advance(
            self._states,
            actions,
            draw is not None,
            thresholds,
            a_stride,
            u_action,
            u,
            table.support,
            table.width,
            table.cdf,
            table.stride,
            reward,
            prev,
            next_states,
            rewards,
            counts,
        )
        self._counts = counts
        return next_states, rewards


class LastActionSim(FiniteGameSim):
    """A simulator whose rewards charge the previous action (crowd games' literal last-move
    cost): keeps prev_actions[N], neutral at t = 0.

    The game provides `position_and_crowd_reward(mu) -> [S]` (the action-free part of the
    reward) and `move_cost[A]`: an agent at s whose previous action was a' receives
    position_and_crowd_reward(mu_N)[s] - move_cost[a'] at every epoch.
    """

    def __init__(self, game: FiniteMeanFieldGame, n_agents: int, neutral_action: int) -> None:
        super().__init__(game, n_agents)
        self.neutral_action = neutral_action
        self.prev_actions: IntArray = np.full(n_agents, neutral_action, dtype=np.int64)

    def _on_reset(self) -> None:
        self.prev_actions = np.full(self.n_agents, self.neutral_action, dtype=np.int64)

    def _reward_table(self, mu: FloatArray) -> tuple[FloatArray, IntArray]:
        """(r[s * A + a'] = position_and_crowd_reward(mu)[s] - move_cost[a'] for the previous
        action a', prev_actions[N]: the kernel replaces them by the epoch's actions in place)."""
        game = self.game
        cell = np.asarray(game.position_and_crowd_reward(mu), dtype=np.float64)  # type: ignore[attr-defined]
        cost = np.asarray(game.move_cost, dtype=np.float64)  # type: ignore[attr-defined]
        self.prev_actions = np.ascontiguousarray(self.prev_actions, dtype=np.int64)
        return (cell[:, None] - cost[None, :]).reshape(-1), self.prev_actions
