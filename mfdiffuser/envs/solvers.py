"""Exact mean-field solvers for finite games: fictitious play and online mirror descent.

Both return the policy reached and, per iteration, its exploitability and its value against its
own flow, so a dataset can record how far its behaviour policy is from equilibrium.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    FloatArray,
    best_response,
    propagate,
    q_values,
    uniform_policy,
)


@dataclass(frozen=True)
class SolveResult:
    """policy[T, S, A] after the last iteration; curves have one entry per iteration."""

    policy: FloatArray
    exploitability_curve: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # value of the iterate against its own flow


def _evaluate(
    game: FiniteMeanFieldGame, policy: FloatArray
) -> tuple[FloatArray, FloatArray, float, float]:
    """flow[T, S] and Q[T, S, A] of a policy against its own flow, its value and exploitability."""
    flow = propagate(game, policy)
    q = q_values(game, policy, flow)
    value = float(game.mu0 @ np.einsum("sa,sa->s", policy[0], q[0]))
    _, br_value = best_response(game, flow)
    return flow, q, value, br_value - value


def _check_iterations(iterations: int) -> None:
    if iterations < 1:
        raise ValueError(f"iterations: must be >= 1, got {iterations}")


def fictitious_play(game: FiniteMeanFieldGame, iterations: int) -> SolveResult:
    """Fictitious play with the state-distribution-weighted average policy.

    Iterate 0 is the uniform policy with its own distribution. Iteration k best-responds to the
    flow of the current average, then mixes the best response in with weight d_k,t(s), its own
    state distribution inside that population:
        avg_t(a | s) = sum_j d_j,t(s) br_j,t(a | s) / sum_j d_j,t(s)
    This is the policy whose state-action distribution is the average of the iterates' ones (a
    plain average of action probabilities is not). States no iterate reaches stay uniform.
    """
    _check_iterations(iterations)
    uniform = uniform_policy(game)
    d0 = propagate(game, uniform)  # d_j,t(s): [T, S]
    weighted = d0[:, :, None] * uniform  # sum_j d_j,t(s) br_j,t(a | s): [T, S, A]
    weight = d0.copy()  # sum_j d_j,t(s): [T, S]
    avg = uniform
    flow = d0
    curve: list[float] = []
    values: list[float] = []
    for _ in range(iterations):
        br, _ = best_response(game, flow)
        d = propagate(game, br, flow=flow)
        weighted += d[:, :, None] * br
        weight += d
        reached = weight > 0
        avg = np.where(
            reached[:, :, None], weighted / np.where(reached, weight, 1.0)[:, :, None], uniform
        )
        flow, _, value, expl = _evaluate(game, avg)
        curve.append(expl)
        values.append(value)
    return SolveResult(policy=avg, exploitability_curve=curve, values=values)


def _softmax(logits: FloatArray) -> FloatArray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def online_mirror_descent(
    game: FiniteMeanFieldGame, iterations: int, learning_rate: float = 0.1
) -> SolveResult:
    """Online mirror descent with the entropy regulariser (Perolat et al. 2022).

    y_{k+1} = y_k + lr * Q^{pi_k} (against pi_k's own flow), pi_{k+1} = softmax(y_{k+1}) per
    (t, s), starting from y = 0 (uniform).
    """
    _check_iterations(iterations)
    y = np.zeros((game.horizon, game.n_states, game.n_actions))  # y[T, S, A]
    policy = _softmax(y)
    _, q, _, _ = _evaluate(game, policy)
    curve: list[float] = []
    values: list[float] = []
    for _ in range(iterations):
        y += learning_rate * q
        policy = _softmax(y)
        _, q, value, expl = _evaluate(game, policy)
        curve.append(expl)
        values.append(value)
    return SolveResult(policy=policy, exploitability_curve=curve, values=values)
