"""crowd_motion: MFGLib 0.3.0's crowd_motion written as this package's game (sparse dynamics).

MFGLib's Environment.crowd_motion (after Perolat et al. 2021: beach bar in two dimensions),
from its definition:

States: cells (i, j) of an L x W grid (MFGLib calls it a torus, but moves are clipped at the
edges, not wrapped), i = 0..L-1, j = 0..W-1, index s = i * W + j (MFGLib's row-major flattening).
Actions 0..4 are the displacements (+1, 0), (-1, 0), (0, +1), (0, -1), (0, 0).

Dynamics (independent of t and of the population): from (i, j) with action (a_i, a_j), a noise
displacement (d_i, d_j) is drawn from the same five, (0, 0) with probability p_still and each of
the other four with (1 - p_still) / 4, and the agent lands on
    (clip(i + a_i + d_i, 0, L-1), clip(j + a_j + d_j, 0, W-1)):
the sum of move and noise is clipped once (a move off the grid followed by noise back onto it
ends inside, not on the edge). Held as one sparse operator (at most 5 next cells per pair).

Reward at epoch t = 0..H-1 (the last included, as MFGLib's t = 0..T), the same for every action:
    r_t(s, mu) = c * (1 - (|i - b_t,i| + |j - b_t,j|) / (L + W)) - log(mu_t(s) + log_eps),
with the bar at b_t. The bar starts at (L // 2, W // 2); for k = 0..H-1, if (k + 1) is a multiple
of loc_change_freq, two fair signs (r, u) in {-1, +1} are drawn and the bar at epoch k + 1 moves
to b + (r, u) if that cell is on the grid (else it stays). The signs are drawn as MFGLib draws
them: torch's CPU generator seeded with `seed`, two torch.randint(0, 2, (1,)) per move (torch is
imported only then), so a seed gives MFGLib's bar path; `bar_path` gives it explicitly instead.

Horizon: H decision epochs = MFGLib's T + 1 (default T = 3: H = 4). mu0 uniform.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mfdiffuser.envs.finite import FixedDynamicsGame, FloatArray, LinearDynamics

MOVES = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (0, 0)], dtype=np.int64)  # (d_i, d_j)
STILL = 4


class CrowdMotionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    horizon: int = Field(
        default=4, ge=1, le=10_000, description="decision epochs H (MFGLib's T + 1), 1..1e4"
    )
    torus_l: int = Field(default=20, ge=1, le=1000, description="grid length L (rows i), 1..1000")
    torus_w: int = Field(default=20, ge=1, le=1000, description="grid width W (columns j), 1..1000")
    loc_change_freq: int = Field(default=2, ge=1, description="epochs between bar moves")
    c: float = Field(default=10.0, description="weight of the bar-distance reward")
    log_eps: float = Field(default=1e-10, gt=0.0, description="offset in log(mu + log_eps)")
    p_still: float = Field(default=0.5, ge=0.0, le=1.0, description="noise: P(no displacement)")
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="torch seed of the bar's moves (as MFGLib)"
    )
    bar_path: list[tuple[int, int]] | None = Field(
        default=None, description="the bar's cell (i, j) at each epoch (H of them); default: drawn"
    )

    @model_validator(mode="after")
    def _check_bar_path(self) -> CrowdMotionParams:
        if self.bar_path is not None:
            if len(self.bar_path) != self.horizon:
                raise ValueError(
                    f"bar_path: need one cell per epoch ({self.horizon}), got {len(self.bar_path)}"
                )
            for i, j in self.bar_path:
                if not (0 <= i < self.torus_l and 0 <= j < self.torus_w):
                    raise ValueError(f"bar_path: cell {(i, j)} is off the grid")
        return self


def draw_bar_path(params: CrowdMotionParams) -> list[tuple[int, int]]:
    """The bar's cell at epochs 0..H-1, drawn as MFGLib draws it (see the module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(params.seed)
    bar = (params.torus_l // 2, params.torus_w // 2)
    path = [bar]
    for k in range(params.horizon - 1):
        if (k + 1) % params.loc_change_freq == 0:
            sign_i = (-1, 1)[int(torch.randint(0, 2, (1,), generator=gen))]
            sign_j = (-1, 1)[int(torch.randint(0, 2, (1,), generator=gen))]
            moved = (bar[0] + sign_i, bar[1] + sign_j)
            if 0 <= moved[0] < params.torus_l and 0 <= moved[1] < params.torus_w:
                bar = moved
        path.append(bar)
    return path


class CrowdMotion(FixedDynamicsGame):
    """Exact mean-field model of MFGLib's crowd_motion with sparse dynamics."""

    def __init__(self, params: CrowdMotionParams | None = None, **overrides: Any) -> None:
        if params is None:
            params = CrowdMotionParams(**overrides)
        elif overrides:
            raise TypeError("CrowdMotion: pass either a CrowdMotionParams or keyword parameters")
        self.params = params
        n_l, n_w = params.torus_l, params.torus_w
        self.n_states = n_l * n_w
        self.n_actions = len(MOVES)
        self.horizon = params.horizon
        self.mu0 = np.full(self.n_states, 1.0 / self.n_states)
        self.bar_path = list(params.bar_path or draw_bar_path(params))
        cells_i = np.arange(self.n_states) // n_w
        cells_j = np.arange(self.n_states) % n_w
        self._cells = (cells_i, cells_j)
        bar = np.array(self.bar_path, dtype=np.int64)  # [H, 2]
        dist = np.abs(cells_i[None, :] - bar[:, :1]) + np.abs(cells_j[None, :] - bar[:, 1:])
        self.bar_reward = params.c * (1.0 - dist / (n_l + n_w))  # [H, S]

    def build_dynamics(self) -> LinearDynamics:
        n_l, n_w = self.params.torus_l, self.params.torus_w
        cells_i, cells_j = self._cells
        # next[a, s, e]: the cell after action a and noise e
        step = MOVES[:, None, :] + MOVES[None, :, :]  # [A, E, 2]
        next_i = np.clip(cells_i[None, :, None] + step[:, None, :, 0], 0, n_l - 1)
        next_j = np.clip(cells_j[None, :, None] + step[:, None, :, 1], 0, n_w - 1)
        noise = np.full(len(MOVES), (1.0 - self.params.p_still) / 4.0)
        noise[STILL] = self.params.p_still
        probs = np.broadcast_to(noise, next_i.shape)
        return LinearDynamics.from_targets(next_i * n_w + next_j, probs)

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        cell = self.bar_reward[t] - np.log(np.asarray(mu, dtype=np.float64) + self.params.log_eps)
        return np.repeat(cell[:, None], self.n_actions, axis=1)

    def flow_rewards(self, flow: FloatArray) -> FloatArray:
        """R[..., T, A, S] = c (1 - distance to the bar) - log(mu + log_eps), every action."""
        cell = self.bar_reward - np.log(np.asarray(flow) + self.params.log_eps)  # [..., T, S]
        shape = (*cell.shape[:-1], self.n_actions, cell.shape[-1])
        return np.broadcast_to(cell[..., None, :], shape)


def make_crowd_motion(**params: Any) -> CrowdMotion:
    return CrowdMotion(CrowdMotionParams(**params))
