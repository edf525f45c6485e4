"""building_evacuation: MFGLib 0.3.0's building_evacuation written as this package's game.

MFGLib's Environment.building_evacuation (after Perolat et al. 2021), from its definition:

States: tiles (f, l, w) of a building of F floors, each an L x W grid; index
s = (f * L + l) * W + w (MFGLib's row-major flattening). Floor 0 is the exit floor.
Actions (deterministic, a move off the floor leaves the agent where it is):
    0: l + 1   1: l - 1   2: w - 1   3: w + 1
    4: downstairs, f - 1, only from the staircase tile (l, w) = (0, 0) of a floor above 0
    5: upstairs, f + 1, only from the staircase tile (L - 1, W - 1) of a floor below the top
(4 or 5 anywhere else, or off the building, is staying put). The dynamics depend on neither t
nor the population: one gather per push and pull.

Reward at each epoch t = 0..H-1 (the last included, as MFGLib's t = 0..T), for every action:
    r_t(s, mu) = -eta * log(max(mu_t(s), log_eps)) + evac_r * [f == 0].

Horizon: H decision epochs = MFGLib's T + 1 (default T = 3: H = 4). mu0 uniform over tiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mfdiffuser.envs.finite import FixedDynamicsGame, FloatArray, LinearDynamics

N_ACTIONS = 6
MAX_STATES = 10**6  # F x L x W


class BuildingEvacuationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    horizon: int = Field(
        default=4, ge=1, le=10_000, description="decision epochs H (MFGLib's T + 1), 1..1e4"
    )
    n_floor: int = Field(
        default=5, ge=1, le=100, description="floors F (floor 0 is the exit), 1..100"
    )
    floor_l: int = Field(default=10, ge=1, le=1000, description="floor length L, 1..1000")
    floor_w: int = Field(default=10, ge=1, le=1000, description="floor width W, 1..1000")
    log_eps: float = Field(default=1e-20, gt=0.0, description="mu is clipped below at log_eps")
    eta: float = Field(default=1.0, description="crowd aversion (coefficient of -log mu)")
    evac_r: float = Field(default=10.0, description="reward per epoch on floor 0")

    @model_validator(mode="after")
    def _check_states(self) -> BuildingEvacuationParams:
        states = self.n_floor * self.floor_l * self.floor_w
        if states > MAX_STATES:
            raise ValueError(
                f"n_floor x floor_l x floor_w = {states:,} states; allowed: at most {MAX_STATES:,}"
            )
        return self


class BuildingEvacuation(FixedDynamicsGame):
    """Exact mean-field model of MFGLib's building_evacuation with gather dynamics."""

    def __init__(self, params: BuildingEvacuationParams | None = None, **overrides: Any) -> None:
        if params is None:
            params = BuildingEvacuationParams(**overrides)
        elif overrides:
            raise TypeError(
                "BuildingEvacuation: pass either a BuildingEvacuationParams or keyword parameters"
            )
        self.params = params
        n_f, n_l, n_w = params.n_floor, params.floor_l, params.floor_w
        self.n_states = n_f * n_l * n_w
        self.n_actions = N_ACTIONS
        self.horizon = params.horizon
        self.mu0 = np.full(self.n_states, 1.0 / self.n_states)
        s = np.arange(self.n_states)
        self._tiles = (s // (n_l * n_w), (s // n_w) % n_l, s % n_w)  # (f, l, w)
        self.exit_reward = np.where(self._tiles[0] == 0, params.evac_r, 0.0)  # [S]

    def build_dynamics(self) -> LinearDynamics:
        p = self.params
        n_f, n_l, n_w = p.n_floor, p.floor_l, p.floor_w
        f, l_tile, w = self._tiles
        down = (l_tile == 0) & (w == 0)
        up = (l_tile == n_l - 1) & (w == n_w - 1)
        targets = [
            (f, np.minimum(l_tile + 1, n_l - 1), w),
            (f, np.maximum(l_tile - 1, 0), w),
            (f, l_tile, np.maximum(w - 1, 0)),
            (f, l_tile, np.minimum(w + 1, n_w - 1)),
            (np.where(down, np.maximum(f - 1, 0), f), l_tile, w),
            (np.where(up, np.minimum(f + 1, n_f - 1), f), l_tile, w),
        ]
        index = np.stack([(ff * n_l + ll) * n_w + ww for ff, ll, ww in targets])  # [A, S]
        return LinearDynamics.from_targets(index)

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        mu = np.maximum(np.asarray(mu, dtype=np.float64), self.params.log_eps)
        cell = self.exit_reward - self.params.eta * np.log(mu)
        return np.repeat(cell[:, None], self.n_actions, axis=1)

    def flow_rewards(self, flow: FloatArray) -> FloatArray:
        """R[..., T, A, S] = -eta log(max(mu, log_eps)) + evac_r [f == 0], every action."""
        mu = np.maximum(np.asarray(flow), self.params.log_eps)
        cell = self.exit_reward - self.params.eta * np.log(mu)  # [..., T, S]
        shape = (*cell.shape[:-1], self.n_actions, cell.shape[-1])
        return np.broadcast_to(cell[..., None, :], shape)


def make_building_evacuation(**params: Any) -> BuildingEvacuation:
    return BuildingEvacuation(BuildingEvacuationParams(**params))
