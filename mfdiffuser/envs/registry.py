"""One registry of named, versioned benchmark settings.

A benchmark is a name, a version and a validated parameter model: never a bag of loose arguments.
Every artifact records all three (see `BenchmarkSpec.describe`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from mfdiffuser.envs.behaviour import Behaviour, make_behaviour
from mfdiffuser.envs.crowd_1d import Crowd1D, Crowd1DParams, Crowd1DSim
from mfdiffuser.envs.finite import FiniteMeanFieldGame


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    version: int
    family: str
    description: str
    params_model: type[BaseModel]
    make_game: Callable[[BaseModel], FiniteMeanFieldGame]
    make_sim: Callable[[Any, int], Any]
    # The reference/expert policy when it is not fictitious play (e.g. a welfare optimum).
    expert: Callable[[FiniteMeanFieldGame], np.ndarray] | None = None
    # Cooperative games: every policy is a Nash equilibrium, so quality is measured by return.
    cooperative: bool = False

    def params(self, overrides: dict[str, Any] | None = None) -> BaseModel:
        """Validated parameters: defaults updated by `overrides` (pydantic names bad fields)."""
        return self.params_model(**(overrides or {}))

    def game(self, overrides: dict[str, Any] | None = None) -> FiniteMeanFieldGame:
        return self.make_game(self.params(overrides))

    def behaviour(self, game: FiniteMeanFieldGame, quality: str) -> Behaviour:
        return make_behaviour(game, quality, expert=self.expert, cooperative=self.cooperative)

    def describe(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "family": self.family,
            "params": self.params(overrides).model_dump(),
        }


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "crowd_1d": BenchmarkSpec(
        name="crowd_1d",
        version=1,
        family="sequential",
        description="1-D crowd modelling on a torus (OpenSpiel's crowd_modelling, exact values)",
        params_model=Crowd1DParams,
        make_game=lambda p: Crowd1D(**p.model_dump()),
        make_sim=lambda game, n: Crowd1DSim(game, n),
    ),
}


def get_benchmark(name: str) -> BenchmarkSpec:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(
            f"benchmark: unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}"
        ) from None
