"""Reference methods: policies computed from the exact mean-field model, with no data.

`fp` (fictitious play) and `omd` (online mirror descent) are the solvers of `mfd solve`, run with
the same settings, so their exploitability is exactly what `mfd solve` prints. They are
exploitability references in the comparison: a Nash equilibrium does not maximise return, so
they are left out of its win counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mfdiffuser.envs.finite import FiniteMeanFieldGame
from mfdiffuser.methods.base import Dims, Policy, ReferenceMethod
from mfdiffuser.methods.policies import TablePolicy


class FPParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    iterations: int = Field(200, ge=1, le=100_000, description="fictitious-play iterations")


class OMDParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    iterations: int = Field(200, ge=1, le=100_000, description="mirror-descent iterations")
    learning_rate: float = Field(0.1, gt=0, le=1000.0, description="step size of the logits")


class SolvedPolicy(ReferenceMethod):
    """The solver's final policy table; its state is that table."""

    def __init__(self, params: BaseModel, dims: Dims) -> None:
        super().__init__(params, dims)
        self.table = np.full((dims.horizon, dims.n_states, dims.n_actions), 1.0 / dims.n_actions)

    def solve(self, game: FiniteMeanFieldGame) -> dict[str, float]:
        from mfdiffuser.envs.solvers import SolverSetting

        p: Any = self.params
        algorithm = "omd" if isinstance(p, OMDParams) else "fp"
        setting = SolverSetting(algorithm, p.iterations, getattr(p, "learning_rate", 0.1))
        result = setting.run(game)
        self.table = np.asarray(result.policy, dtype=np.float64)
        return {"solve/exploitability": float(result.exploitability_curve[-1])}

    def state_dict(self) -> dict[str, Any]:
        import torch

        return {"table": torch.as_tensor(self.table, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        table = np.asarray(state["table"].numpy(), dtype=np.float64)
        d = self.dims
        if table.shape != (d.horizon, d.n_states, d.n_actions):
            raise ValueError(f"policy table of shape {table.shape}, the game needs {d}")
        self.table = table

    def policy(self, game: FiniteMeanFieldGame, prior: np.ndarray, seed: int) -> Policy:
        return TablePolicy(self.table)


def build(params: BaseModel, dims: Dims) -> SolvedPolicy:
    return SolvedPolicy(params, dims)
