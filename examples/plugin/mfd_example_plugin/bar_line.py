"""bar_line: agents on a line of n cells walk toward a bar and away from crowds.

A finite mean-field game written against mfdiffuser's contract (`FiniteMeanFieldGame`): reward
and dynamics as functions of time and the population's distribution mu_t, transitions as `push`
(mass forward) and `pull` (its adjoint), never a dense S x A x S tensor. Everything else (exact
value, best response, exploitability, the solvers, the N-agent simulator, the data qualities,
every method) the platform derives from these.

At epoch t an agent in cell x taking action a (0, 1, 2 = step -1, 0, +1) receives

    r_t(x, a, mu) = -|x - bar| / n - crowding * log(mu(x) + 1e-12) - step_cost * |step(a)|

then moves to clip(x + step(a), 0, n - 1); with probability `slip` it slips one more cell in
a uniformly random direction (clipped too). mu0 is uniform.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mfdiffuser.envs.finite import FiniteMeanFieldGame, FloatArray
from mfdiffuser.envs.registry import BenchmarkSpec
from mfdiffuser.envs.simulate import FiniteGameSim

STEPS = np.array([-1, 0, 1])


class BarLineParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    size: int = Field(default=8, ge=2, le=1000, description="cells n on the line")
    bar: int = Field(default=6, ge=0, description="the bar's cell, 0..size-1")
    horizon: int = Field(default=6, ge=1, le=1000, description="decision epochs")
    crowding: float = Field(default=0.5, ge=0.0, le=100.0, description="crowd aversion")
    step_cost: float = Field(default=0.05, ge=0.0, le=10.0, description="cost of a step")
    slip: float = Field(default=0.2, ge=0.0, le=1.0, description="chance of one random extra step")

    @model_validator(mode="after")
    def _bar_on_the_line(self) -> BarLineParams:
        if self.bar >= self.size:
            raise ValueError(f"bar = {self.bar}: allowed 0..{self.size - 1} (size - 1)")
        return self


class BarLine(FiniteMeanFieldGame):
    def __init__(self, p: BarLineParams) -> None:
        self.p = p
        self.n_states, self.n_actions, self.horizon = p.size, len(STEPS), p.horizon
        self.mu0 = np.full(p.size, 1.0 / p.size)
        cells = np.arange(p.size)
        self._base = -np.abs(cells - p.bar) / p.size  # [S]
        self._cost = p.step_cost * np.abs(STEPS)  # [A]
        # where (x, a) lands before the slip, then the two slips: [S, A], [S, A, 2]
        self._land = np.clip(cells[:, None] + STEPS[None, :], 0, p.size - 1)
        self._slips = np.clip(self._land[..., None] + np.array([-1, 1]), 0, p.size - 1)

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        crowd = -self.p.crowding * np.log(np.asarray(mu) + 1e-12)
        return (self._base + crowd)[:, None] - self._cost[None, :]

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        mass = np.asarray(mass)
        out = np.zeros(self.n_states)
        np.add.at(out, self._land, (1.0 - self.p.slip) * mass)
        for k in range(2):
            np.add.at(out, self._slips[..., k], 0.5 * self.p.slip * mass)
        return out

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        v = np.asarray(v_next)
        slipped = 0.5 * (v[self._slips[..., 0]] + v[self._slips[..., 1]])
        return (1.0 - self.p.slip) * v[self._land] + self.p.slip * slipped


SPEC = BenchmarkSpec(
    name="bar_line",
    version=1,
    family="example-plugin",
    description="agents on a line walk to a bar and avoid crowds (mfd-example-plugin)",
    params_model=BarLineParams,
    make_game=lambda p: BarLine(p),  # type: ignore[arg-type]
    make_sim=lambda game, n: FiniteGameSim(game, n),
)
