"""Parameters of the mean-field baselines, apart from their torch code: validating a config that
names one (`mfd config`, any bad input) does not import torch."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# The network sizes every baseline (and RLlib's methods) share, so bounds cannot drift.
Hidden = Annotated[int, Field(ge=1, le=4096, description="Width of each hidden layer, 1..4096.")]
Layers = Annotated[int, Field(ge=1, le=16, description="Hidden layers of each network, 1..16.")]


class NetworkParams(BaseModel):
    """The parameters every mean-field baseline has."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    hidden: Hidden = 64
    layers: Layers = 2
    n_particles: int = Field(
        16,
        ge=1,
        le=4096,
        description="M: agents per training sample (one episode and time, so one shared "
        "context), 1..4096.",
    )


class QParams(NetworkParams):
    """The parameters of both Q-learning baselines."""

    polyak: float = Field(
        0.005,
        gt=0.0,
        le=1.0,
        description="τ: after every step the target critics move this fraction of the way to "
        "the trained ones, (0, 1]; 1 = a copy.",
    )
    discount: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="γ of the targets, 0..1; 1 = the undiscounted finite-horizon return the "
        "platform scores (J).",
    )
