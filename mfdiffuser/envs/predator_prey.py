"""predator_prey: OpenSpiel's multi-population predator-prey mean-field game
(python_mfg_predator_prey, after Perolat et al. 2022, section 5.4), with an exact model over
(population, cell).

Grid and moves (OpenSpiel's defaults): a size x size square (moves off the grid are clipped to the
border, OpenSpiel's Geometry.SQUARE; `geometry="torus"` wraps instead); cell (x, y) has index
c = y * size + x. Actions (OpenSpiel's order): 0 = (0, 0) stay (neutral), 1 = (+1, 0),
2 = (0, +1), 3 = (0, -1), 4 = (-1, 0).

Dynamics at epoch t: the agent moves by its action, then noise moves it again by one of the same 5
displacements (clipped the same way): no displacement w.p. 1 - p, each of the 4 moves w.p. p / 4,
with OpenSpiel's noise_probability p = 0.8: OpenSpiel's chance node after every decision, which
with p = 0.8 is uniform over the 5 displacements (docs/benchmarks.md). The chosen move itself is
always made (it is not replaced by the noise).

Populations: P = 3 by default, each starting with all its mass in a corner: (0, 0),
(size - 1, 0), (0, size - 1) (OpenSpiel's three-population init_distrib). Reward of an agent of
population i at cell x at epoch t (OpenSpiel's rewards(), action-independent):

    r_i = -congestion_coeff * log(mu_i(x) + 1e-25) + sum_j R_ij mu_j(x),
    R = [[0, -1, 1], [1, 0, -1], [-1, 1, 0]]   (i is attracted to i + 1 and avoids i + 2)

with mu_j the distribution of population j (each sums to 1).

Exact model: one FiniteMeanFieldGame over the extended state s = i * size^2 + c (P * size^2
states). The population index never changes, and mu over the extended state gives each population
mass 1/P, so mu_i(x) = P * mu(i, x). Flow, value, best response, fictitious play, mirror descent,
behaviour policies and data generation then work unchanged. A best response over the extended
state is a best response per population (no state of one population reaches another's), so

    exploitability (aggregate, what `exploitability()` returns)
        = sum_i (1/P) (V_i^BR - V_i) = the MEAN of the per-population gains,

and OpenSpiel's multi-population NashConv (the SUM of the per-population gains) is P times it;
`PredatorPrey.exploitability_per_population` gives the gains one by one.

Horizon: `horizon` decision epochs t = 0..H-1, each with a reward; OpenSpiel's horizon H is the
same game: with the defaults, the uniform policy's per-population gains sum to 36.968383925226,
OpenSpiel 2.0.2's NashConv on python_mfg_predator_prey to every printed digit
(benchmarks/run.py checks it).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    FloatArray,
    IntArray,
    best_response,
    propagate,
    q_values,
)
from mfdiffuser.envs.simulate import FiniteGameSim, draw_rows

MOVE_X = np.array([0, 1, 0, 0, -1], dtype=np.int64)  # dx(a), OpenSpiel's _ACTION_TO_MOVE
MOVE_Y = np.array([0, 0, 1, -1, 0], dtype=np.int64)  # dy(a)
NEUTRAL_ACTION = 0
N_ACTIONS = len(MOVE_X)
LOG_EPS = 1e-25
DEFAULT_REWARD_MATRIX = [[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]

Cell = tuple[int, int]  # (x, y)


class PredatorPreyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    size: int = Field(default=5, ge=2, description="grid side")
    horizon: int = Field(default=10, ge=1, description="decision epochs H")
    noise_probability: float = Field(
        default=0.8, ge=0.0, le=1.0, description="p: noise moves the agent w.p. p (p/4 per move)"
    )
    congestion_coeff: float = Field(
        default=1.0, ge=0.0, description="coefficient of -log(mu_i(x) + 1e-25)"
    )
    reward_matrix: list[list[float]] = Field(
        default_factory=lambda: [list(row) for row in DEFAULT_REWARD_MATRIX],
        description="R[i][j]: reward to population i per unit of mu_j at its cell; P x P, P >= 1",
    )
    initial: list[Cell] | None = Field(
        default=None,
        description="start cell (x, y) of each population; default: corners (0, 0), "
        "(size-1, 0), (0, size-1), (size-1, size-1) in that order",
    )
    geometry: Literal["square", "torus"] = Field(
        default="square", description="square: moves clip at the border; torus: they wrap"
    )

    @model_validator(mode="after")
    def _check(self) -> PredatorPreyParams:
        p = len(self.reward_matrix)
        if p < 1 or any(len(row) != p for row in self.reward_matrix):
            raise ValueError(
                f"reward_matrix: must be square P x P with P >= 1, got rows of lengths "
                f"{[len(row) for row in self.reward_matrix]}"
            )
        if self.initial is None:
            if p > 4:
                raise ValueError(
                    f"initial: give one start cell per population ({p} populations; the corner "
                    "default covers at most 4)"
                )
        else:
            if len(self.initial) != p:
                raise ValueError(
                    f"initial: need one start cell per population ({p}), got {len(self.initial)}"
                )
            for cell in self.initial:
                if not all(0 <= v < self.size for v in cell):
                    raise ValueError(
                        f"initial: cell {tuple(cell)} is off the grid (x, y in 0..{self.size - 1})"
                    )
        return self


def _frozen(a: np.ndarray) -> np.ndarray:
    out = np.array(a)
    out.flags.writeable = False
    return out


def corners(size: int) -> list[Cell]:
    return [(0, 0), (size - 1, 0), (0, size - 1), (size - 1, size - 1)]


class PredatorPrey(FiniteMeanFieldGame):
    """Exact mean-field model over (population, cell); dynamics are bincounts and gathers."""

    def __init__(self, params: PredatorPreyParams | None = None, **overrides: Any) -> None:
        if params is None:
            params = PredatorPreyParams(**overrides)
        elif overrides:
            raise TypeError("PredatorPrey: pass either a PredatorPreyParams or keyword parameters")
        self.params = params
        n = self.size = params.size
        self.reward_matrix = np.asarray(params.reward_matrix, dtype=np.float64)  # [P, P]
        self.n_populations = p = self.reward_matrix.shape[0]
        self.n_cells = c = n * n
        self.n_states = p * c
        self.n_actions = N_ACTIONS
        self.horizon = params.horizon
        self.congestion_coeff = params.congestion_coeff
        self.population_mass = 1.0 / p  # each population's share of the extended mu
        self.population = np.repeat(np.arange(p), c)  # population[S]
        self.cell = np.tile(np.arange(c), p)  # cell[S]

        starts = params.initial if params.initial is not None else corners(n)[:p]
        self.mu0 = np.zeros(self.n_states)
        for i, (x, y) in enumerate(starts):
            self.mu0[i * c + y * n + x] = self.population_mass

        xs, ys = np.arange(c) % n, np.arange(c) // n
        tx, ty = xs[:, None] + MOVE_X, ys[:, None] + MOVE_Y  # [C, 5]
        if params.geometry == "torus":
            tx, ty = tx % n, ty % n
        else:
            tx, ty = np.clip(tx, 0, n - 1), np.clip(ty, 0, n - 1)
        cell_target = ty * n + tx  # [C, 5]: one displacement, for a move or for noise
        offsets = (np.arange(p) * c)[:, None, None]
        self.target = (cell_target[None] + offsets).reshape(self.n_states, N_ACTIONS)  # [S, 5]
        q = params.noise_probability
        self.noise_prob = np.array([1.0 - q] + [q / 4.0] * 4)  # [5], indexed like actions
        moved = self.target.reshape(-1)  # [S * A]
        self._support = (
            _frozen(self.target[moved]),  # [S * A, 5]
            _frozen(np.broadcast_to(self.noise_prob, (moved.shape[0], N_ACTIONS))),
        )

    def population_distributions(self, mu: FloatArray) -> FloatArray:
        """mu_i(x) [P, C]: each population's own distribution (rows sum to 1 on a flow)."""
        return np.asarray(mu, dtype=np.float64).reshape(self.n_populations, self.n_cells) / (
            self.population_mass
        )

    def state_reward(self, mu: FloatArray) -> FloatArray:
        """Action-free reward per extended state [S]: -c log(mu_i(x) + eps) + sum_j R_ij mu_j(x)."""
        m = self.population_distributions(mu)  # [P, C]
        r = -self.congestion_coeff * np.log(m + LOG_EPS) + self.reward_matrix @ m  # [P, C]
        return r.reshape(-1)

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        return np.repeat(self.state_reward(mu)[:, None], N_ACTIONS, axis=1)

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        # after_move[m] = sum_{(s, a): target[s, a] = m} mass[s, a]; then the same for noise
        n_s = self.n_states
        after_move = np.bincount(
            self.target.ravel(), weights=np.asarray(mass, dtype=np.float64).ravel(), minlength=n_s
        )
        noisy = (after_move[:, None] * self.noise_prob).ravel()
        out: FloatArray = np.bincount(self.target.ravel(), weights=noisy, minlength=n_s).astype(
            np.float64, copy=False
        )
        return out

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        # out[s, a] = sum_e noise_prob[e] v_next[target[m, e]], m = target[s, a]
        after_move = np.asarray(v_next, dtype=np.float64)[self.target] @ self.noise_prob  # [S]
        return after_move[self.target]

    def transition_support(self, t: int, mu: FloatArray) -> tuple[IntArray, FloatArray]:
        """Move by the action, then one noise displacement: row s * A + a holds
        target[target[s, a], e] with probability noise_prob[e] (K = 5, mu-independent)."""
        return self._support

    def population_values(self, policy: FloatArray, flow: FloatArray) -> FloatArray:
        """V_i [P]: each population's expected return under `policy` against flow[T, S]."""
        q0 = q_values(self, policy, flow)[0]
        v0 = np.einsum("sa,sa->s", np.asarray(policy, dtype=np.float64)[0], q0)
        per_state = (self.mu0 * v0).reshape(self.n_populations, self.n_cells)
        return per_state.sum(axis=1) / self.population_mass

    def exploitability_per_population(self, policy: FloatArray) -> FloatArray:
        """Gains V_i^BR - V_i [P] of a best responder of each population against the policy's
        flow; their mean is `exploitability(game, policy)`, their sum OpenSpiel's NashConv."""
        flow = propagate(self, policy)
        br, _ = best_response(self, flow)
        return self.population_values(br, flow) - self.population_values(policy, flow)


def make_predator_prey(**params: Any) -> PredatorPrey:
    return PredatorPrey(PredatorPreyParams(**params))


class PredatorPreySim(FiniteGameSim):
    """N-agent predator_prey simulator: agent k belongs to population k mod P (sizes differ by at
    most one), the mean field is each population's own empirical histogram (mu_i(x) =
    count_i(x) / N_i, scaled to the extended-state convention), O(N) per step, seeded."""

    game: PredatorPrey

    def __init__(self, game: PredatorPrey, n_agents: int) -> None:
        if n_agents < game.n_populations:
            raise ValueError(
                f"n_agents: need at least one agent per population (>= {game.n_populations}), "
                f"got {n_agents}"
            )
        super().__init__(game, n_agents)
        self.agent_population = np.arange(n_agents, dtype=np.int64) % game.n_populations  # [N]
        self.population_size = np.bincount(self.agent_population, minlength=game.n_populations)

    def reset(self, seed: int) -> IntArray:
        """Each agent's start cell drawn from its population's part of mu0; t = 0."""
        game = self.game
        self.rng = np.random.default_rng(seed)
        per_pop = game.mu0.reshape(game.n_populations, game.n_cells)
        cell = draw_rows(per_pop, self.agent_population, self.rng)
        self.states = self.agent_population * game.n_cells + cell
        self.t = 0
        self._started = True
        return self.states.copy()

    def mean_field(self) -> FloatArray:
        game = self.game
        counts = self.counts().reshape(game.n_populations, game.n_cells)
        return (counts / self.population_size[:, None] * game.population_mass).reshape(-1)
