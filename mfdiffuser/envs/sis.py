"""sis: MFGLib 0.3.0's susceptible_infected epidemic game (mfglib/env/examples).

States 0 = S (susceptible), 1 = I (infected); actions 0 = go out, 1 = keep distance. MFGLib's
T = 50 means epochs t = 0..50, so `horizon` = 51, with a reward at every epoch (the last
included). mu0 = (0.4, 0.6). Dynamics depend on the population mu_t:
    I -> S w.p. 0.3 (either action);
    S & go out -> I w.p. 0.9^2 * mu_t(I);  S & keep distance stays S.
Rewards (time- and mu-independent): -0.5 (S, distance), -1 (I, out), -1.5 (I, distance), 0 else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mfdiffuser.envs.finite import FiniteMeanFieldGame, FloatArray, IntArray

SUSCEPTIBLE, INFECTED = 0, 1
GO_OUT, KEEP_DISTANCE = 0, 1
RECOVERY = 0.3
INFECTION = 0.9**2  # written as MFGLib writes it (0.8100000000000001)
REWARD = np.array([[0.0, -0.5], [-1.0, -1.5]])  # REWARD[s, a]
_NEXT = np.array([[SUSCEPTIBLE, INFECTED]] * 4, dtype=np.int64)  # every row: S or I
_NEXT.flags.writeable = False


class SISParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    horizon: int = Field(default=51, ge=1, description="decision epochs (MFGLib's T + 1)")
    initial_infected: float = Field(
        default=0.6, ge=0.0, le=1.0, description="mu0(I); mu0(S) = 1 - mu0(I)"
    )


class SIS(FiniteMeanFieldGame):
    """Exact mean-field model of MFGLib's susceptible_infected."""

    def __init__(self, horizon: int = 51, initial_infected: float = 0.6) -> None:
        self.params = SISParams(horizon=horizon, initial_infected=initial_infected)
        self.n_states = 2
        self.n_actions = 2
        self.horizon = self.params.horizon
        self.mu0 = np.array([1.0 - self.params.initial_infected, self.params.initial_infected])

    def infection_probability(self, mu: FloatArray) -> float:
        """P(S -> I | go out) = 0.81 * mu(I)."""
        return INFECTION * float(np.asarray(mu)[INFECTED])

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        return REWARD.copy()

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        mass = np.asarray(mass, dtype=np.float64)
        p = self.infection_probability(mu)
        infected_mass = mass[INFECTED].sum()
        out_mass = mass[SUSCEPTIBLE, GO_OUT]
        return np.array(
            [
                RECOVERY * infected_mass + (1.0 - p) * out_mass + mass[SUSCEPTIBLE, KEEP_DISTANCE],
                (1.0 - RECOVERY) * infected_mass + p * out_mass,
            ]
        )

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        v = np.asarray(v_next, dtype=np.float64)
        p = self.infection_probability(mu)
        from_infected = RECOVERY * v[SUSCEPTIBLE] + (1.0 - RECOVERY) * v[INFECTED]
        return np.array(
            [
                [(1.0 - p) * v[SUSCEPTIBLE] + p * v[INFECTED], v[SUSCEPTIBLE]],
                [from_infected, from_infected],
            ]
        )

    def transition_support(self, t: int, mu: FloatArray) -> tuple[IntArray, FloatArray]:
        """Rows (s, a) = (S, out), (S, distance), (I, out), (I, distance) over next (S, I)."""
        p = self.infection_probability(mu)
        probs = np.array(
            [[1.0 - p, p], [1.0, 0.0], [RECOVERY, 1.0 - RECOVERY], [RECOVERY, 1.0 - RECOVERY]]
        )
        return _NEXT, probs


def make_sis(**params: Any) -> SIS:
    return SIS(**SISParams(**params).model_dump())
