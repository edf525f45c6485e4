"""Finite-state mean-field games: a small tensor contract and exact dynamic programming.

Modelled on MFGLib's environment contract (reward and transition as functions of time and the
mean field), but transitions are never dense |S|x|A|x|S| tensors: a game supplies `push` (move
state-action mass forward one epoch) and its adjoint `pull` (expectation of a next-epoch function),
which a grid game writes as shifts.

Axis order, used everywhere in this package:
    policy[T, S, A]   pi_t(a | s) for decision epochs t = 0..T-1 (T = game.horizon)
    flow[T, S]        mu_t(s), the population state distribution at epoch t, flow[0] = mu0
    Q[T, S, A]        expected reward-to-go of taking a in s at epoch t, then following a policy
    mass[S, A]        probability mass in state s taking action a (one epoch)

Time convention: at epoch t an agent in state s takes action a, receives r_t(s, a, mu_t) and then
moves; there is no reward after the last epoch (t = T-1).

State-action mean fields: a game whose rewards and dynamics depend on the state-action
distribution L_t(s, a) = mu_t(s) pi_t(a | s) (MFGLib's contract), not only on mu_t, sets the class
attribute `state_action_mean_field = True`. Its `reward`, `push`, `pull`, `transition_support` and
`sample_next` then receive L_t[S, A] where the others receive mu_t[S], and every function below
that takes a population flow takes it in the game's own form, the MEAN-FIELD FLOW:
    mf_flow[T, S]     mu_t(s)           (state_action_mean_field = False, the default)
    mf_flow[T, S, A]  L_t(s, a)         (state_action_mean_field = True)
`mean_field_flow(game, policy)` gives it for a policy; `propagate` always gives the state flow
flow[T, S] (what a planner's context and the data hold). A [T, S] flow handed to an L_t game is
refused with a ValueError (it cannot be right: the actions of the population are unknown).
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Float32Array = npt.NDArray[np.float32]

_TIE_TOLERANCE = 1e-12  # relative: best-response actions within this of the best are ties


class FiniteMeanFieldGame(ABC):
    """A mean-field game with finite states and actions and a finite number of decision epochs."""

    n_states: int
    n_actions: int
    horizon: int  # number of decision epochs t = 0..horizon-1
    mu0: FloatArray  # mu0[S]
    # True: reward/push/pull/sample_next take the state-action distribution L_t[S, A] (see the
    # module docstring); False: the state distribution mu_t[S].
    state_action_mean_field: bool = False

    @abstractmethod
    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        """Expected reward r_t(s, a, mu) at epoch t: [S, A], given the population mu[S]
        (L_t[S, A] for a state-action mean-field game)."""

    @abstractmethod
    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        """Next-state distribution [S] of mass[S, A] under the epoch-t dynamics (population mu,
        or L_t[S, A] for a state-action mean-field game)."""

    @abstractmethod
    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        """Adjoint of `push`: [S, A] with E[v_next(s') | s, a] under the epoch-t dynamics."""

    def transition_support(self, t: int, mu: FloatArray) -> tuple[IntArray, FloatArray]:
        """Sparse epoch-t dynamics: (next_states[S * A, K], probs[S * A, K]), row s * A + a
        holding the K next states of (s, a) and their probabilities (population mu, or L_t[S, A]
        for a state-action mean-field game). Rows sum to 1; a zero-probability entry (padding)
        is never drawn, and a next state may repeat within a row.

        This is what the N-agent simulators sample from (`simulate.FiniteGameSim`, through
        `kernels.advance`): built once per epoch, O(S A K), then one pass over the agents. A game
        whose table does not change between calls may return the same two arrays each time (the
        simulator then reuses its thresholds); they are never written to.

        Generic default for small games (S * A * S <= 10**6): the rows
        P[s, a, :] = push(t, mu, unit mass at (s, a)), with K the most non-zero entries of a
        row. A game with many states overrides this with its own few next states per (s, a).
        """
        n_s, n_a = self.n_states, self.n_actions
        if n_s * n_a * n_s > 10**6:
            raise NotImplementedError(
                f"{type(self).__name__}.transition_support: the generic default builds dense"
                f" transition rows ({n_s} x {n_a} x {n_s} > 10**6 entries); override"
                " transition_support"
            )
        rows = np.empty((n_s * n_a, n_s))  # rows[s * A + a, s']
        unit = np.zeros((n_s, n_a))
        for s in range(n_s):
            for a in range(n_a):
                unit[s, a] = 1.0
                rows[s * n_a + a] = self.push(t, mu, unit)
                unit[s, a] = 0.0
        return sparse_rows(rows)

    def sample_next(
        self,
        t: int,
        mu: FloatArray,
        states: IntArray,
        actions: IntArray,
        rng: np.random.Generator,
    ) -> IntArray:
        """One next state per agent under the epoch-t dynamics (population mu, or L_t[S, A] for a
        state-action mean-field game): next_states[N].

        Inverse-CDF draws from `transition_support(t, mu)` with one float32 uniform per agent
        (the simulators' rule, see `kernels`), O(N) in one compiled pass.
        """
        from mfdiffuser.envs import kernels

        table = SupportTable.of(self, *self.transition_support(t, mu))
        states = np.asarray(states, dtype=np.int64)
        actions = np.asarray(actions, dtype=np.int64)
        if actions.size and actions.view(np.uint64).max() >= self.n_actions:
            raise ValueError(f"sample_next: actions must lie in 0..{self.n_actions - 1}")
        pairs = states * self.n_actions + actions
        u = np.asarray(rng.random(pairs.shape[0], dtype=np.float32))
        out = np.empty(pairs.shape[0], dtype=np.int64)
        bad = kernels.draw_next(pairs, u, table.support, table.width, table.cdf, table.stride, out)
        if bad:
            raise ValueError(f"sample_next: states must lie in 0..{self.n_states - 1}")
        return out

    # Fast paths (optional). A game whose dynamics depend on neither t nor the mean field returns
    # them once as a `LinearDynamics` (cached on the game); `exploitability` and
    # `exploitability_batch` then run on it, with every epoch's rewards from `flow_rewards`.
    def linear_dynamics(self) -> LinearDynamics | None:
        """The epoch dynamics as one fixed sparse operator, when they depend on neither t nor
        the mean field (None: they do, or the game does not say; push/pull are used)."""
        return None

    def flow_rewards(self, flow: FloatArray) -> FloatArray:
        """Every epoch's rewards against a state flow[..., T, S], ACTION-MAJOR: R[..., T, A, S]
        with R[..., t, a, s] = reward(t, flow[..., t, :])[s, a] (leading axes: a batch of flows).

        Used only for mu_t games (state_action_mean_field = False). This default calls `reward`
        once per epoch and flow; games override it with one vectorised expression."""
        flow = np.asarray(flow, dtype=np.float64)
        n_t, n_s = flow.shape[-2:]
        flat = flow.reshape(-1, n_t, n_s)
        out = np.empty((flat.shape[0], n_t, self.n_actions, n_s))
        for b in range(flat.shape[0]):
            for t in range(n_t):
                out[b, t] = np.asarray(self.reward(t, flat[b, t])).T
        return out.reshape(*flow.shape[:-2], n_t, self.n_actions, n_s)

    # Per-agent features and mean-field context for a planner. The defaults suit small S;
    # a game with a large state space overrides them with a compact encoding.
    @property
    def feature_dim(self) -> int:
        return self.n_states

    def features(self, states: npt.ArrayLike) -> Float32Array:
        """One-hot state features scaled to [-1, 1] (1 at the state, -1 elsewhere): [..., S]."""
        states = np.asarray(states)
        one_hot = states[..., None] == np.arange(self.n_states)
        return np.where(one_hot, np.float32(1.0), np.float32(-1.0)).astype(np.float32)

    @property
    def context_dim(self) -> int:
        return 1 + 2 * self._time_frequencies + self.n_states

    @property
    def _time_frequencies(self) -> int:
        # Enough octaves that adjacent decision epochs differ clearly in some feature.
        return math.ceil(math.log2(max(self.horizon, 2))) + 1

    def context(self, t: int, mu: FloatArray) -> Float32Array:
        """Mean-field context c = (t, mu_t): [t / T, sin(pi 2^j t/T), cos(pi 2^j t/T), mu].

        The Fourier features of time let a planner tell t = 0 from t = 1 as sharply as it tells
        two states apart (a lone t / T scalar was learned as an average over nearby epochs).
        """
        x = t / self.horizon
        freqs = np.pi * 2.0 ** np.arange(self._time_frequencies)
        return np.concatenate(
            [[x], np.sin(freqs * x), np.cos(freqs * x), np.asarray(mu, dtype=np.float64)]
        ).astype(np.float32)


# One epoch's transitions as a dense matrix when it holds at most this many entries (a small
# dense product beats a sparse one's call overhead); a sparse CSR matrix above it.
_DENSE_ENTRIES = 2**16


class LinearDynamics:
    """Epoch dynamics that depend on neither t nor the mean field, as one linear operator.

    P[a, s, s'] is held with ACTION-MAJOR rows a * S + s, in one of two forms, each built once
    per game:
    - combined (`LinearDynamics(S, A, rows, cols, probs)`: coordinate form, duplicates summed);
    - factored (`LinearDynamics.factored(move, targets, probs)`): a deterministic move
      m = move[a, s], then a spread of m over next states, P[a, s, :] = spread[move[a, s], :]
      (crowd_2d: the move, then the noise), so a pull is one product with the S x S spread
      and a gather.
    A matrix of at most 2^16 entries is dense float64 (a small dense product beats a sparse
    one's call overhead); a larger one is a scipy CSR matrix, with its transpose for `push`.
    Both operations take leading batch axes:

        push(mass[..., A, S]) -> next[..., S]     next[s'] = sum_{a, s} mass[a, s] P[a, s, s']
        pull(v[..., S])       -> out[..., A, S]   out[a, s] = sum_{s'} P[a, s, s'] v[s']
    """

    def __init__(
        self, n_states: int, n_actions: int, rows: IntArray, cols: IntArray, probs: FloatArray
    ) -> None:
        self.n_states, self.n_actions = n_states, n_actions
        self._p, self._p_t = _operator(
            (n_actions * n_states, n_states), np.asarray(rows), np.asarray(cols), probs
        )
        self._move: IntArray | None = None
        self._support: tuple[IntArray, FloatArray] | None = None
        self._move_flat: IntArray | None = None
        self._spread: Any = None
        self._spread_t: Any = None
        self._kernel_arrays: Any = None  # the compiled exploitability's form (finite.py)

    @classmethod
    def from_targets(cls, targets: IntArray, probs: FloatArray | None = None) -> LinearDynamics:
        """From next-state targets[A, S, K] with probabilities probs[A, S, K] (K outcomes per
        state-action pair; repeated targets add up; targets[A, S] and None: deterministic)."""
        targets = np.asarray(targets, dtype=np.int64)
        n_a, n_s = targets.shape[:2]
        targets = targets.reshape(n_a, n_s, -1)
        weights = np.ones(targets.shape) if probs is None else np.asarray(probs, dtype=np.float64)
        rows = np.repeat(np.arange(n_a * n_s), targets.shape[2])
        return cls(n_s, n_a, rows, targets.reshape(-1), weights.reshape(-1))

    @classmethod
    def factored(cls, move: IntArray, targets: IntArray, probs: FloatArray) -> LinearDynamics:
        """A move m = move[A, S], then m spreads to targets[S, K] with probabilities
        probs[S, K] (repeated targets add up)."""
        move = np.ascontiguousarray(move, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.int64)
        probs = np.asarray(probs, dtype=np.float64)
        out = cls.from_targets(targets[move], probs[move])
        n_s, k = targets.shape
        out._move = move
        out._move_flat = move.reshape(-1)
        out._spread, out._spread_t = _operator(
            (n_s, n_s), np.repeat(np.arange(n_s), k), targets.reshape(-1), probs.reshape(-1)
        )
        return out

    def support(self) -> tuple[IntArray, FloatArray]:
        """The rows P[a, s, :] as the simulators' sparse table (next_states[S * A, K],
        probs[S * A, K]), row s * A + a (`FiniteMeanFieldGame.transition_support`), K the most
        next states of any pair, padded with probability 0; built once, never written to."""
        if self._support is None:
            import scipy.sparse as sparse

            n_s, n_a = self.n_states, self.n_actions
            state_major = (np.arange(n_s)[:, None] + n_s * np.arange(n_a)[None, :]).reshape(-1)
            matrix = sparse.csr_matrix(self._p)[state_major]  # row s * A + a
            matrix.data = np.maximum(matrix.data, 0.0)
            matrix.eliminate_zeros()
            counts = np.diff(matrix.indptr)
            width = max(int(counts.max(initial=0)), 1)
            rows = np.repeat(np.arange(n_s * n_a), counts)
            slot = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], counts)
            next_states = np.zeros((n_s * n_a, width), dtype=np.int64)
            probs = np.zeros((n_s * n_a, width))
            next_states[rows, slot] = matrix.indices
            probs[rows, slot] = matrix.data
            self._support = (next_states, probs)
        return self._support

    def matrix(self) -> FloatArray:
        """Dense P[A * S, S] (for tests and small games)."""
        p = self._p
        return np.array(p) if isinstance(p, np.ndarray) else p.toarray()

    def push(self, mass: FloatArray) -> FloatArray:
        lead = mass.shape[:-2]
        if not lead and self._move_flat is not None:
            moved = np.bincount(self._move_flat, mass.reshape(-1), minlength=self.n_states)
            return _matvec(self._spread_t, moved)  # type: ignore[arg-type]
        flat = mass.reshape(*lead, self.n_actions * self.n_states)
        if isinstance(self._p, np.ndarray):
            return flat @ self._p  # type: ignore[no-any-return]
        if not lead:
            return _matvec(self._p_t, flat)
        out = self._p_t @ flat.reshape(-1, flat.shape[-1]).T
        return np.ascontiguousarray(out.T).reshape(*lead, self.n_states)

    def pull(self, v: FloatArray) -> FloatArray:
        lead = v.shape[:-1]
        if self._move is not None:
            if isinstance(self._spread, np.ndarray) or not lead:
                spread = _matvec(self._spread, v) if not lead else v @ self._spread_t
            else:
                spread = (self._spread @ v.reshape(-1, self.n_states).T).T.reshape(v.shape)
            return spread[..., self._move]  # type: ignore[no-any-return]
        if isinstance(self._p, np.ndarray):
            out = v @ self._p_t
        elif not lead:
            out = _matvec(self._p, v)
        else:
            out = np.ascontiguousarray((self._p @ v.reshape(-1, self.n_states).T).T)
        return out.reshape(*lead, self.n_actions, self.n_states)  # type: ignore[no-any-return]


class FixedDynamicsGame(FiniteMeanFieldGame):
    """A mu_t game whose dynamics depend on neither t nor the mean field: a subclass builds
    them once (`build_dynamics`) and writes its rewards as `flow_rewards`; `push`, `pull`,
    `transition_support` (so `sample_next` and the simulators) and `reward` follow from those
    two."""

    _linear: LinearDynamics | None = None

    @abstractmethod
    def build_dynamics(self) -> LinearDynamics:
        """The game's fixed dynamics (called once, on first use)."""

    def linear_dynamics(self) -> LinearDynamics:
        if self._linear is None:
            self._linear = self.build_dynamics()
        return self._linear

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        flow = np.zeros((self.horizon, self.n_states))
        flow[t] = mu
        return np.ascontiguousarray(self.flow_rewards(flow)[t].T)  # type: ignore[no-any-return]

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        mass_t = np.ascontiguousarray(np.asarray(mass, dtype=np.float64).T)  # [A, S]
        return self.linear_dynamics().push(mass_t)

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        out = self.linear_dynamics().pull(np.asarray(v_next, dtype=np.float64))
        return np.ascontiguousarray(out.T)

    def transition_support(self, t: int, mu: FloatArray) -> tuple[IntArray, FloatArray]:
        """The fixed dynamics' sparse table (`LinearDynamics.support`), the same two arrays at
        every epoch (the simulators then reuse their thresholds)."""
        return self.linear_dynamics().support()


def _matvec(matrix: Any, x: FloatArray) -> FloatArray:
    """matrix @ x for a dense array or scipy CSR matrix and a vector x[n].

    A CSR product calls scipy's compiled kernel directly when it is there: the public `@`
    spends more time checking its operands than multiplying at these sizes (a few thousand
    non-zeros)."""
    if isinstance(matrix, np.ndarray) or _csr_matvec is None:
        return matrix @ x  # type: ignore[no-any-return]
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.zeros(matrix.shape[0])
    _csr_matvec(
        matrix.shape[0], matrix.shape[1], matrix.indptr, matrix.indices, matrix.data, x, out
    )
    return out


try:  # scipy's compiled CSR kernel (private, stable for years); the public `@` otherwise
    from scipy.sparse._sparsetools import csr_matvec as _csr_matvec
except ImportError:  # pragma: no cover
    _csr_matvec = None


def _operator(
    shape: tuple[int, int], rows: IntArray, cols: IntArray, probs: FloatArray
) -> tuple[Any, Any]:
    """(M, M^T) of a coordinate-form matrix: dense arrays when small, else scipy CSR."""
    import scipy.sparse as sparse

    matrix = sparse.csr_matrix(
        (np.asarray(probs, dtype=np.float64).reshape(-1), (rows, cols)), shape=shape
    )
    matrix.sum_duplicates()
    if shape[0] * shape[1] <= _DENSE_ENTRIES:
        dense = np.ascontiguousarray(matrix.toarray())
        return dense, np.ascontiguousarray(dense.T)
    return matrix, matrix.T.tocsr()


def _check_policy(game: FiniteMeanFieldGame, policy: FloatArray) -> FloatArray:
    policy = np.asarray(policy, dtype=np.float64)
    expected = (game.horizon, game.n_states, game.n_actions)
    if policy.shape != expected:
        raise ValueError(f"policy: expected shape [T, S, A] = {expected}, got {policy.shape}")
    return policy


def _check_flow(game: FiniteMeanFieldGame, flow: FloatArray) -> FloatArray:
    """A population flow in the game's form: mu[T, S], or L[T, S, A] for an L_t game."""
    flow = np.asarray(flow, dtype=np.float64)
    if game.state_action_mean_field:
        expected: tuple[int, ...] = (game.horizon, game.n_states, game.n_actions)
        if flow.shape != expected:
            got = (
                "a state flow mu[T, S]: its actions are unknown, so the rewards and dynamics "
                "cannot be evaluated; pass mean_field_flow(game, policy)"
                if flow.shape == expected[:2]
                else f"shape {flow.shape}"
            )
            raise ValueError(
                f"flow: {type(game).__name__} is a state-action mean-field game "
                f"(state_action_mean_field = True): expected L_t[T, S, A] = {expected}, got {got}"
            )
        return flow
    expected = (game.horizon, game.n_states)
    if flow.shape != expected:
        raise ValueError(f"flow: expected shape [T, S] = {expected}, got {flow.shape}")
    return flow


def uniform_policy(game: FiniteMeanFieldGame) -> FloatArray:
    """policy[T, S, A] with every action equally likely."""
    return np.full((game.horizon, game.n_states, game.n_actions), 1.0 / game.n_actions)


def _state_flow(game: FiniteMeanFieldGame, policy: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(state flow mu[T, S], mean-field flow in the game's form) of a validated policy."""
    out = np.empty((game.horizon, game.n_states))
    out[0] = game.mu0
    lifted = game.state_action_mean_field
    for t in range(game.horizon - 1):
        mass = out[t][:, None] * policy[t]  # L_t[S, A]
        out[t + 1] = game.push(t, mass if lifted else out[t], mass)
    return out, (out[..., None] * policy if lifted else out)


def mean_field_flow(game: FiniteMeanFieldGame, policy: FloatArray) -> FloatArray:
    """The policy's own population flow in the form the game's rewards and dynamics take:
    mu[T, S], or L[T, S, A] with L_t(s, a) = mu_t(s) pi_t(a | s) for a state-action mean-field
    game. This is what `q_values`, `best_response` and `propagate(flow=...)` take."""
    return _state_flow(game, _check_policy(game, policy))[1]


def propagate(
    game: FiniteMeanFieldGame, policy: FloatArray, flow: FloatArray | None = None
) -> FloatArray:
    """State distribution flow[T, S] of an agent following `policy`, starting from mu0.

    Without `flow` the population is the agent's own distribution (the mean-field flow of the
    policy). With a population `flow` (in the game's form, see `mean_field_flow`), dynamics at
    epoch t are those induced by flow[t]: the distribution of one agent (e.g. a best responder)
    inside a fixed population.
    """
    policy = _check_policy(game, policy)
    if flow is None:
        return _state_flow(game, policy)[0]
    population = _check_flow(game, flow)
    out = np.empty((game.horizon, game.n_states))
    out[0] = game.mu0
    for t in range(game.horizon - 1):
        out[t + 1] = game.push(t, population[t], out[t][:, None] * policy[t])
    return out


def q_values(game: FiniteMeanFieldGame, policy: FloatArray, flow: FloatArray) -> FloatArray:
    """Q[T, S, A] of `policy` against the fixed population flow (backward recursion); the flow
    in the game's form (`mean_field_flow`: mu[T, S], or L[T, S, A] for an L_t game)."""
    policy = _check_policy(game, policy)
    flow = _check_flow(game, flow)
    q = np.empty((game.horizon, game.n_states, game.n_actions))
    v_next = np.zeros(game.n_states)  # V_T = 0: no reward after the last epoch
    for t in reversed(range(game.horizon)):
        q[t] = game.reward(t, flow[t]) + game.pull(t, flow[t], v_next)
        v_next = np.einsum("sa,sa->s", policy[t], q[t])
    return q


def _value_from_q(game: FiniteMeanFieldGame, policy: FloatArray, q: FloatArray) -> float:
    return float(game.mu0 @ np.einsum("sa,sa->s", policy[0], q[0]))


def policy_value(
    game: FiniteMeanFieldGame, policy: FloatArray, flow: FloatArray | None = None
) -> float:
    """Expected return sum_s mu0(s) V_0(s) of `policy` against the population `flow` (in the
    game's form, see `mean_field_flow`; default: the policy's own flow)."""
    policy = _check_policy(game, policy)
    if flow is None:
        flow = mean_field_flow(game, policy)
    return _value_from_q(game, policy, q_values(game, policy, flow))


def best_response(game: FiniteMeanFieldGame, flow: FloatArray) -> tuple[FloatArray, float]:
    """Deterministic best response policy[T, S, A] to a population flow and its value; the flow
    in the game's form (`mean_field_flow`: mu[T, S], or L[T, S, A] for an L_t game).

    Ties (up to a relative 1e-12) go to the lowest action index.
    """
    flow = _check_flow(game, flow)
    policy = np.zeros((game.horizon, game.n_states, game.n_actions))
    v_next = np.zeros(game.n_states)
    states = np.arange(game.n_states)
    for t in reversed(range(game.horizon)):
        q_t = game.reward(t, flow[t]) + game.pull(t, flow[t], v_next)
        # Ties go to the lowest index; values equal up to rounding count as ties, so symmetric
        # games do not pick a side by floating-point noise.
        q_max = q_t.max(axis=1, keepdims=True)
        best = np.argmax(q_t >= q_max - _TIE_TOLERANCE * (1.0 + np.abs(q_max)), axis=1)
        policy[t, states, best] = 1.0
        v_next = q_t[states, best]
    return policy, float(game.mu0 @ v_next)


def exploitability(game: FiniteMeanFieldGame, policy: FloatArray) -> float:
    """Best-response value against the policy's own flow minus the policy's value (>= 0).

    One forward pass (the flow) and ONE backward pass carrying both values: the best response's
    V*_t(s) = max_a Q*_t(s, a) and the policy's V_t(s) = sum_a pi_t(a | s) Q_t(s, a), each
    epoch's reward computed once. A mu_t game with `linear_dynamics` runs on that fixed operator
    and its vectorised `flow_rewards` (`exploitability_batch`'s kernel, one policy), where the
    policy's value against its own flow is its expected reward along that flow (the forward
    pass's state-action masses against the rewards), so the backward pass is the best
    response's alone. The best-response value is the max (best_response's tie rule, a relative
    1e-12, picks the policy, not the value).
    """
    policy = _check_policy(game, policy)
    dynamics = None if game.state_action_mean_field else game.linear_dynamics()
    if dynamics is not None:
        return float(_exploitability_linear(game, dynamics, policy))
    flow = _state_flow(game, policy)[1]
    v_best = np.zeros(game.n_states)
    v_pol = np.zeros(game.n_states)
    for t in reversed(range(game.horizon)):
        r_t = game.reward(t, flow[t])
        q_best = r_t + game.pull(t, flow[t], v_best)
        q_pol = r_t + game.pull(t, flow[t], v_pol)
        v_best = q_best.max(axis=1)
        v_pol = (policy[t] * q_pol).sum(axis=1)
    return float(game.mu0 @ v_best - game.mu0 @ v_pol)


def exploitability_batch(game: FiniteMeanFieldGame, policies: FloatArray) -> FloatArray:
    """`exploitability` of each of a batch of policies[B, T, S, A]: [B].

    A mu_t game with `linear_dynamics` evaluates the whole batch at once (every epoch one
    batched product); other games loop over the batch."""
    policies = np.asarray(policies, dtype=np.float64)
    expected = (game.horizon, game.n_states, game.n_actions)
    if policies.ndim != 4 or policies.shape[1:] != expected:
        raise ValueError(
            f"policies: expected shape [B, T, S, A] = [B, {', '.join(map(str, expected))}], "
            f"got {policies.shape}"
        )
    dynamics = None if game.state_action_mean_field else game.linear_dynamics()
    if dynamics is not None:
        return np.asarray(_exploitability_linear(game, dynamics, policies), dtype=np.float64)
    return np.array([exploitability(game, p) for p in policies], dtype=np.float64)


def _exploitability_linear(
    game: FiniteMeanFieldGame, dynamics: LinearDynamics, policy: FloatArray
) -> FloatArray:
    """Exploitability of policy[..., T, S, A] on fixed dynamics: [...] (a float array).

    The policy's value against its own flow is its expected reward along that flow,
    sum_t sum_{s,a} mu_t(s) pi_t(a | s) r_t(s, a, mu_t): the forward pass's state-action masses
    against every epoch's rewards, one product. Only the best response needs a backward pass.
    """
    n_t = game.horizon
    if policy.ndim == 3 and dynamics._move is not None:
        return _exploitability_factored(game, dynamics, policy)
    pol = np.ascontiguousarray(np.swapaxes(policy, -1, -2))  # pi[..., T, A, S]
    lead = pol.shape[:-3]
    flow = np.empty((*lead, n_t, game.n_states))
    mass = np.empty(pol.shape)  # L_t[..., T, A, S] = mu_t(s) pi_t(a | s)
    flow[..., 0, :] = game.mu0
    for t in range(n_t):
        np.multiply(pol[..., t, :, :], flow[..., t, None, :], out=mass[..., t, :, :])
        if t < n_t - 1:
            flow[..., t + 1, :] = dynamics.push(mass[..., t, :, :])
    rewards = np.asarray(game.flow_rewards(flow), dtype=np.float64)  # R[..., T, A, S]
    # (not np.vdot: a BLAS dot may wake idle threads, milliseconds on a busy machine)
    value = np.multiply(mass, rewards, out=mass).reshape(*lead, -1).sum(axis=-1)
    v_best = rewards[..., n_t - 1, :, :].max(axis=-2)  # no move after the last epoch: Q = r
    for t in reversed(range(n_t - 1)):
        q_best = dynamics.pull(v_best)
        q_best += rewards[..., t, :, :]
        v_best = q_best.max(axis=-2)
    return (v_best * game.mu0).sum(axis=-1) - value  # type: ignore[no-any-return]


def _exploitability_factored(
    game: FiniteMeanFieldGame, dynamics: LinearDynamics, pol: FloatArray
) -> FloatArray:
    """`_exploitability_linear` of one policy[T, S, A] (not transposed) on factored dynamics (a
    move, then a spread): both passes compiled (`kernels.factored_forward`, `factored_backward`)
    on the spread's CSR arrays (a small game's dense spread converted once), the game's
    vectorised `flow_rewards` between them, the two final sums in numpy. With a sparse spread
    the value is bit for bit that of the numpy loops (multiply, bincount, CSR product; the
    test's reference); with a dense one the sums run in CSR order, not BLAS's. The kernels'
    arrays (unsigned indices) are built once per dynamics."""
    from mfdiffuser.envs import kernels

    arrays = dynamics._kernel_arrays
    if arrays is None:
        assert dynamics._move_flat is not None

        def csr(matrix: Any) -> tuple[np.ndarray, np.ndarray, FloatArray]:
            return (
                matrix.indptr.astype(np.uint64),
                matrix.indices.astype(np.uint64),
                np.ascontiguousarray(matrix.data, dtype=np.float64),
            )

        spread, spread_t = dynamics._spread, dynamics._spread_t
        if isinstance(spread, np.ndarray):  # a small game's dense spread: flow = moved @ spread
            import scipy.sparse

            spread, spread_t = scipy.sparse.csr_matrix(spread), scipy.sparse.csr_matrix(spread.T)
        move_flat = dynamics._move_flat.astype(np.uint64)
        arrays = dynamics._kernel_arrays = (move_flat, csr(spread_t), csr(spread))
    move_flat, spread_t, spread = arrays
    pol = np.ascontiguousarray(pol, dtype=np.float64)
    n_t, n_s, n_a = pol.shape
    flow = np.empty((n_t, n_s))
    mass = np.empty((n_t, n_a, n_s))
    scratch = np.empty(n_s)
    kernels.factored_forward(pol, np.ascontiguousarray(game.mu0, dtype=np.float64), move_flat,
                             *spread_t, scratch, flow, mass)  # fmt: skip
    rewards = np.ascontiguousarray(game.flow_rewards(flow), dtype=np.float64)  # R[T, A, S]
    v_best = np.empty(n_s)
    kernels.factored_backward(rewards, move_flat, *spread, scratch, v_best)
    value = np.multiply(mass, rewards, out=mass).sum()
    return (v_best * game.mu0).sum() - value  # type: ignore[no-any-return]


def cdf_thresholds(probs: FloatArray) -> tuple[Float32Array, int]:
    """The inverse-CDF thresholds of rows probs[R, K] in the kernels' row layout: (float32
    thresholds, stride), row r holding c_k = (p_0 + .. + p_k) / sum(p) for k < K-1 (see
    `kernels`: u picks #{k : c_k <= u}). Negative entries count as 0; every row needs a positive
    sum."""
    from mfdiffuser.envs import kernels

    cdf = np.cumsum(np.maximum(np.asarray(probs, dtype=np.float64), 0.0), axis=1)
    total = cdf[:, -1:]
    if not np.all(total > 0.0):
        raise ValueError("probabilities: every row needs a positive sum")
    cdf /= total
    return kernels.pad_thresholds(cdf[:, :-1]), kernels.stride_for(cdf.shape[1] - 1)


def sparse_rows(rows: FloatArray) -> tuple[IntArray, FloatArray]:
    """Dense rows[R, S] as a sparse table (next_states[R, K], probs[R, K]): each row's non-zero
    entries in increasing state order, K the most of any row, padded with probability 0."""
    rows = np.maximum(np.asarray(rows, dtype=np.float64), 0.0)
    nonzero = rows > 0.0
    width = max(int(nonzero.sum(axis=1).max()), 1)
    order = np.argsort(~nonzero, axis=1, kind="stable")[:, :width]  # non-zeros first
    return order.astype(np.int64), np.take_along_axis(rows, order, axis=1)


class SupportTable:
    """A validated transition support in the kernels' flat form: support int64[S * A * K]
    (width K), and its float32 thresholds cdf[S * A * stride] (see `kernels`)."""

    def __init__(self, support: IntArray, width: int, cdf: Float32Array, stride: int) -> None:
        self.support, self.width, self.cdf, self.stride = support, width, cdf, stride

    @classmethod
    def of(
        cls, game: FiniteMeanFieldGame, next_states: IntArray, probs: FloatArray
    ) -> SupportTable:
        n_s, n_a = game.n_states, game.n_actions
        next_states = np.asarray(next_states)
        probs = np.asarray(probs, dtype=np.float64)
        if (
            next_states.ndim != 2
            or next_states.shape[0] != n_s * n_a
            or (probs.shape != next_states.shape)
        ):
            raise ValueError(
                f"{type(game).__name__}.transition_support: expected next_states and probs of"
                f" shape [S * A, K] = [{n_s * n_a}, K], got {next_states.shape} and {probs.shape}"
            )
        if next_states.size and (next_states.min() < 0 or next_states.max() >= n_s):
            raise ValueError(
                f"{type(game).__name__}.transition_support: next states must lie in 0..{n_s - 1}"
            )
        width = next_states.shape[1]
        support = np.ascontiguousarray(next_states, dtype=np.int64).reshape(-1)
        return cls(support, width, *cdf_thresholds(probs))


def policy_thresholds(policy_t: FloatArray) -> tuple[Float32Array, int]:
    """(float32 thresholds, stride) of a policy row table policy_t[S, A] in the kernels' row
    layout: row s holds cdf[s, k] for k < A-1 (see `kernels`)."""
    from mfdiffuser.envs import kernels

    policy_t = np.asarray(policy_t, dtype=np.float64)
    if policy_t.ndim != 2:
        raise ValueError(f"policy_t: expected shape [S, A], got {policy_t.shape}")
    cdf = np.cumsum(policy_t, axis=1)  # cdf[S, A]
    cdf /= cdf[:, -1:]
    return kernels.pad_thresholds(cdf[:, :-1]), kernels.stride_for(cdf.shape[1] - 1)


_SCRATCH = threading.local()


def _uniform_scratch(n: int) -> Float32Array:
    """A float32[n] buffer this thread reuses for the uniforms it draws (a fresh 4 MB array
    per call at N = 10^6 costs its page faults again whenever the allocator returned it)."""
    buf: Float32Array | None = getattr(_SCRATCH, "u", None)
    if buf is None or buf.shape[0] < n:
        buf = np.empty(n, dtype=np.float32)
        _SCRATCH.u = buf
    return buf[:n]


def sample_actions(policy_t: FloatArray, states: IntArray, rng: np.random.Generator) -> IntArray:
    """One action per agent from policy_t[S, A] at its state states[N]: actions[N], O(N).

    Inverse-CDF sampling with one float32 uniform per agent: action = #{k < A-1 : cdf[s, k] <= u}.
    Rows are normalised so cdf[s, A-1] is exactly 1 > u; a zero-probability action leaves the
    CDF unchanged (equal float64 values round to equal float32 values), so it is never drawn.
    The probabilities the float32 uniforms and thresholds realise differ from policy_t by less
    than 2^-24 per action. One compiled pass over the agents (`kernels.draw_actions`); a state
    outside 0..S-1 is an IndexError.
    """
    from mfdiffuser.envs import kernels

    policy_t = np.asarray(policy_t, dtype=np.float64)
    thresholds, stride = policy_thresholds(policy_t)
    n_s = policy_t.shape[0]
    states = np.ascontiguousarray(states, dtype=np.int64)
    if states.ndim != 1:
        raise ValueError(f"states: expected shape [N], got {states.shape}")
    u = rng.random(out=_uniform_scratch(states.shape[0]), dtype=np.float32)  # u[N]
    out = np.empty(states.shape[0], dtype=np.int64)
    if kernels.draw_actions(thresholds, stride, n_s, states, u, out):
        raise IndexError(f"states: must lie in 0..{n_s - 1}")
    return out
