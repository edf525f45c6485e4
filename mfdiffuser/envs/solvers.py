"""Exact mean-field solvers for finite games: fictitious play and online mirror descent.

Both return the policy reached and, per iteration, its exploitability and its value against its
own flow, so a dataset can record how far its behaviour policy is from equilibrium.

State-action mean-field games (`state_action_mean_field = True`) are solved directly: best
responses are taken against the iterate's L_t flow (`mean_field_flow`), and the averages below
weight policies by state distributions as for any game (an average of state-action
distributions d(s) pi(a | s) is what they compute).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    FloatArray,
    _state_flow,
    best_response,
    exploitability,
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


@dataclass(frozen=True)
class _Evaluation:
    """A policy against its own flow: state flow mu[T, S], the population flow in the game's form
    (mu[T, S], or L[T, S, A] for a state-action mean-field game), Q[T, S, A], value and
    exploitability."""

    flow: FloatArray
    population: FloatArray
    q: FloatArray
    value: float
    exploitability: float


def _evaluate(game: FiniteMeanFieldGame, policy: FloatArray) -> _Evaluation:
    flow, population = _state_flow(game, policy)
    q = q_values(game, policy, population)
    value = float(game.mu0 @ np.einsum("sa,sa->s", policy[0], q[0]))
    # exploitability() itself, so a solver's curve ends on exactly what `mfd solve` reports
    return _Evaluation(flow, population, q, value, exploitability(game, policy))


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
    d0, population = _state_flow(game, uniform)  # d_j,t(s): [T, S]
    weighted = d0[:, :, None] * uniform  # sum_j d_j,t(s) br_j,t(a | s): [T, S, A]
    weight = d0.copy()  # sum_j d_j,t(s): [T, S]
    avg = uniform
    curve: list[float] = []
    values: list[float] = []
    for _ in range(iterations):
        br, _ = best_response(game, population)
        d = propagate(game, br, flow=population)
        weighted += d[:, :, None] * br
        weight += d
        reached = weight > 0
        avg = np.where(
            reached[:, :, None], weighted / np.where(reached, weight, 1.0)[:, :, None], uniform
        )
        ev = _evaluate(game, avg)
        population = ev.population
        curve.append(ev.exploitability)
        values.append(ev.value)
    return SolveResult(policy=avg, exploitability_curve=curve, values=values)


def damped_fictitious_play(
    game: FiniteMeanFieldGame, iterations: int, step_exponent: float = 0.4
) -> SolveResult:
    """Fictitious play with a slower-decaying mixing step a_k = (k + 1)^-step_exponent.

    Iteration k best-responds to the flow mu of the current policy pi and mixes the best response
    in as a state-action distribution, with weights (1 - a_k) d_pi,t(s) and a_k d_br,t(s):
        pi'_t(a | s) = [(1 - a_k) d_pi,t(s) pi_t(a | s) + a_k d_br,t(s) br_t(a | s)]
                       / [(1 - a_k) d_pi,t(s) + a_k d_br,t(s)]
    (d_pi = mu, d_br the best responder's distribution inside mu). With step_exponent = 1 this is
    ordinary fictitious play up to how old iterates are weighted; with 0 < step_exponent < 1 the
    steps shrink more slowly, which is what gets past the slow oscillation of plain fictitious play
    on sis (exploitability 0.78 after 100 plain iterations, 0.66 after 1000; see
    benchmarks/behaviour_table.py). States neither reaches keep their previous policy.
    """
    _check_iterations(iterations)
    if not 0.0 < step_exponent <= 1.0:
        raise ValueError(f"step_exponent: must lie in (0, 1], got {step_exponent}")
    policy = uniform_policy(game)
    flow, population = _state_flow(game, policy)
    curve: list[float] = []
    values: list[float] = []
    for k in range(1, iterations + 1):
        a = (k + 1.0) ** -step_exponent
        br, _ = best_response(game, population)
        d_br = propagate(game, br, flow=population)
        num = (1.0 - a) * flow[:, :, None] * policy + a * d_br[:, :, None] * br
        den = (1.0 - a) * flow + a * d_br
        reached = den > 0
        policy = np.where(
            reached[:, :, None], num / np.where(reached, den, 1.0)[:, :, None], policy
        )
        ev = _evaluate(game, policy)
        flow, population = ev.flow, ev.population
        curve.append(ev.exploitability)
        values.append(ev.value)
    return SolveResult(policy=policy, exploitability_curve=curve, values=values)


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
    q = _evaluate(game, policy).q
    curve: list[float] = []
    values: list[float] = []
    for _ in range(iterations):
        y += learning_rate * q
        policy = _softmax(y)
        ev = _evaluate(game, policy)
        q = ev.q
        curve.append(ev.exploitability)
        values.append(ev.value)
    return SolveResult(policy=policy, exploitability_curve=curve, values=values)


SolverName = Literal["fp", "damped_fp", "omd"]


@dataclass(frozen=True)
class SolverSetting:
    """How a benchmark's expert is computed (BenchmarkSpec.expert_solver): a solver, its
    iterations and its step parameter. The default is plain fictitious play, 200 iterations."""

    algorithm: SolverName = "fp"
    iterations: int = 200
    learning_rate: float = 0.1  # omd only
    step_exponent: float = 0.4  # damped_fp only

    def run(self, game: FiniteMeanFieldGame, iterations: int | None = None) -> SolveResult:
        k = self.iterations if iterations is None else iterations
        if self.algorithm == "fp":
            return fictitious_play(game, k)
        if self.algorithm == "damped_fp":
            return damped_fictitious_play(game, k, step_exponent=self.step_exponent)
        if self.algorithm == "omd":
            return online_mirror_descent(game, k, learning_rate=self.learning_rate)
        raise ValueError(
            f"algorithm: unknown solver {self.algorithm!r}; allowed: fp, damped_fp, omd"
        )

    def describe(self, iterations: int | None = None) -> str:
        k = self.iterations if iterations is None else iterations
        if self.algorithm == "fp":
            return f"fictitious play, {k} iterations"
        if self.algorithm == "damped_fp":
            return f"damped fictitious play (step (k+1)^-{self.step_exponent}), {k} iterations"
        return f"online mirror descent (learning rate {self.learning_rate}), {k} iterations"
