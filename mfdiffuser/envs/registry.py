"""One registry of named, versioned benchmark settings.

A benchmark is a name, a version and a validated parameter model: never a bag of loose arguments.
Every artifact records all three (see `BenchmarkSpec.describe`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from mfdiffuser.envs import battle
from mfdiffuser.envs.behaviour import Behaviour, make_behaviour
from mfdiffuser.envs.building_evacuation import BuildingEvacuation, BuildingEvacuationParams
from mfdiffuser.envs.crowd_1d import Crowd1D, Crowd1DParams, Crowd1DSim
from mfdiffuser.envs.crowd_2d import Crowd2DParams, Crowd2DSim, FourRoomsParams, make_crowd_2d
from mfdiffuser.envs.crowd_motion import CrowdMotion, CrowdMotionParams
from mfdiffuser.envs.finite import FiniteMeanFieldGame
from mfdiffuser.envs.mfglib_env import MFGLibParams, make_mfglib_game
from mfdiffuser.envs.predator_prey import PredatorPreyParams, PredatorPreySim, make_predator_prey
from mfdiffuser.envs.simulate import FiniteGameSim
from mfdiffuser.envs.sis import SIS, SISParams
from mfdiffuser.envs.solvers import SolverSetting
from mfdiffuser.envs.stage_games import (
    GaussianSqueeze,
    GaussianSqueezeParams,
    LeftRight,
    LeftRightParams,
    RockPaperScissors,
    RockPaperScissorsParams,
    expert_policy,
    welfare_optimum,
)
from mfdiffuser.envs.team import TeamLayout, team_outcomes, team_summary
from mfdiffuser.plugins import Registry

Populations = Literal["one", "several", "teams"]
StateSpace = Literal["finite", "continuous"]


@dataclass(frozen=True)
class Simulator:
    """What a simulator-only benchmark provides in place of an exact mean-field model.

    Every layer that generates, reads or plays its data asks these, never the benchmark's name;
    a new simulator-only benchmark is its own module plus one `BenchmarkSpec` holding one of
    these. Functions of the benchmark's validated parameters `p`:
    - `with_agents(p, n)`: `p` with the dataset's N (e.g. battle: agents per team, which sets
      the map), validated (ValueError names the field);
    - `generate_shard(p, quality, episodes, seed)`: (rows in the spec's row schema, outcomes);
    - `outcomes(rows, n)`: the same outcomes recomputed from rows (a resumed shard);
    - `summary(outcomes, quality)`: the behaviour's figures of a dataset from its summed outcomes;
    - `stats(p, quality, episodes)`: the simulated figures of a scripted policy (`mfd solve`):
      `return`, `return_std`, `win_rate`, `draw_rate`, `kill_ratio`, `episodes`;
    - `layout(p)`: the `TeamLayout` the window reader and the team adapter are built from;
    - `make_sim(p)`: a fresh simulator (`mfdiffuser.evaluation.team` plays it);
    - `scripted`: the named opponents, each (sim, agents, rng) -> actions of those agents.
    """

    with_agents: Callable[[Any, int], Any]
    generate_shard: Callable[..., tuple[Any, dict[str, float]]]
    outcomes: Callable[[Any, int], dict[str, float]]
    summary: Callable[[dict[str, float], str], dict[str, Any]]
    stats: Callable[[Any, str, int], dict[str, Any]]
    layout: Callable[[Any], TeamLayout]
    make_sim: Callable[[Any], Any]
    scripted: dict[str, Callable[..., np.ndarray]]


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
    # J of the reference policy when it is not an equilibrium (the welfare optimum).
    reference_value: Callable[[FiniteMeanFieldGame], float] | None = None
    # Capabilities: what every layer asks instead of the benchmark's name.
    # Populations: one, several (predator_prey: one exact model over (population, cell)) or
    # teams (simulated, team 0 plays the data's behaviour).
    populations: Populations = "one"
    # finite: states are indices with features; continuous: per-agent feature vectors only.
    state_space: StateSpace = "finite"
    # The row schema of its datasets (`data.schema.ROW_SCHEMAS`), recorded in each manifest.
    row_schema: str = "finite"
    # Simulator-only benchmarks (no FiniteMeanFieldGame, so no exact value, best response or
    # exploitability; `game()` raises a clear error): what they provide instead.
    simulator: Simulator | None = None
    # How the expert (and the `mixed` replay) is solved: fictitious play, 200 iterations, unless a
    # benchmark needs another solver to converge (sis: damped fictitious play; see solvers.py).
    expert_solver: SolverSetting = SolverSetting()  # noqa: RUF009 (frozen, immutable)
    # Decision epochs per episode of simulator-only benchmarks (no game to ask); a finite game's
    # episode length is its own `horizon` (stage games have no such parameter: always 2).
    episode_length: Callable[[Any], int] | None = None

    @property
    def exact_model(self) -> bool:
        """An exact mean-field model (flow, value, best response, exploitability)."""
        return self.simulator is None

    def dataset_params(self, overrides: dict[str, Any] | None, n_agents: int) -> dict[str, Any]:
        """The parameters a dataset of N = n_agents is made with (ValueError if they clash)."""
        if self.simulator is None:
            return dict(overrides or {})
        return self.simulator.with_agents(self.params(overrides), n_agents).model_dump()

    def params(self, overrides: dict[str, Any] | None = None) -> BaseModel:
        """Validated parameters: defaults updated by `overrides` (pydantic names bad fields)."""
        return self.params_model(**(overrides or {}))

    def game(self, overrides: dict[str, Any] | None = None) -> FiniteMeanFieldGame:
        if not self.exact_model:
            raise ValueError(
                f"{self.name} has no exact mean-field model (no value, best response or "
                "exploitability); use its simulator (`make_sim`) and its own statistics"
            )
        return self.make_game(self.params(overrides))

    def horizon(self, overrides: dict[str, Any] | None = None) -> int:
        """Decision epochs per episode under these parameters (what every dataset row count,
        window bound and transition budget is made of)."""
        params = self.params(overrides)
        if self.episode_length is not None:
            return int(self.episode_length(params))
        return int(self.make_game(params).horizon)

    def behaviour(
        self, game: FiniteMeanFieldGame, quality: str, solver_iterations: int | None = None
    ) -> Behaviour:
        """Behaviour policies of a quality; `solver_iterations` overrides expert_solver's."""
        return make_behaviour(
            game,
            quality,
            expert=self.expert,
            cooperative=self.cooperative,
            solver_iterations=solver_iterations,
            solver=self.expert_solver,
        )

    def describe(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "family": self.family,
            "params": self.params(overrides).model_dump(),
        }


def _finite_sim(game: Any, n: int) -> FiniteGameSim:
    return FiniteGameSim(game, n)


def _no_game(params: Any) -> FiniteMeanFieldGame:
    raise ValueError("this benchmark has no exact mean-field model")


def _crowd_2d_sim(game: Any, n: int) -> Crowd2DSim:
    return Crowd2DSim(game, n)


_BUILT_IN = (
    BenchmarkSpec(
        name="left_right",
        version=1,
        family="stage",
        description="left-right stage game (MFGLib 0.3.0, T=1): 2/3 go left at equilibrium",
        params_model=LeftRightParams,
        make_game=lambda p: LeftRight(),
        make_sim=_finite_sim,
    ),
    BenchmarkSpec(
        name="rock_paper_scissors",
        version=1,
        family="stage",
        description="generalised Shapley rock-paper-scissors (MFGLib 0.3.0, T=1)",
        params_model=RockPaperScissorsParams,
        make_game=lambda p: RockPaperScissors(),
        make_sim=_finite_sim,
    ),
    BenchmarkSpec(
        name="gaussian_squeeze",
        version=1,
        family="stage",
        description="cooperative Gaussian squeeze (after Yang et al. 2018): welfare gap",
        params_model=GaussianSqueezeParams,
        make_game=lambda p: GaussianSqueeze(**p.model_dump()),
        make_sim=_finite_sim,
        expert=lambda g: expert_policy(g),  # type: ignore[arg-type]
        cooperative=True,
        reference_value=lambda g: welfare_optimum(g)[1],  # type: ignore[arg-type]
    ),
    BenchmarkSpec(
        name="crowd_1d",
        version=1,
        family="sequential",
        description="1-D crowd modelling on a torus (OpenSpiel's crowd_modelling, exact values)",
        params_model=Crowd1DParams,
        make_game=lambda p: Crowd1D(**p.model_dump()),
        make_sim=lambda game, n: Crowd1DSim(game, n),
    ),
    BenchmarkSpec(
        name="crowd_2d",
        version=1,
        family="sequential",
        description="2-D crowd modelling on a torus with optional ASCII walls "
        "(OpenSpiel's crowd_modelling_2d, exact values)",
        params_model=Crowd2DParams,
        make_game=lambda p: make_crowd_2d(**p.model_dump()),
        make_sim=_crowd_2d_sim,
    ),
    BenchmarkSpec(
        name="four_rooms",
        version=1,
        family="sequential",
        description="crowd_2d on OpenSpiel's 13x13 four-rooms map, horizon 40, all mass at "
        "(1, 1), reward -log mu only",
        params_model=FourRoomsParams,
        make_game=lambda p: make_crowd_2d(**p.model_dump()),
        make_sim=_crowd_2d_sim,
    ),
    BenchmarkSpec(
        name="sis",
        version=1,
        family="sequential",
        description="SIS epidemic (MFGLib 0.3.0 susceptible_infected, T=50: horizon 51)",
        params_model=SISParams,
        make_game=lambda p: SIS(**p.model_dump()),
        make_sim=_finite_sim,
        # plain fictitious play oscillates here (exploitability 0.78 after 100 iterations,
        # 0.66 after 1000); damped fictitious play gets to ~1e-6 in 400
        expert_solver=SolverSetting(algorithm="damped_fp", iterations=500, step_exponent=0.4),
    ),
    BenchmarkSpec(
        name="crowd_motion",
        version=1,
        family="sequential",
        description="MFGLib 0.3.0's crowd_motion as a native game: an L x W grid, a bar that "
        "moves at random (MFGLib's draws for a seed), sparse clipped move + noise dynamics",
        params_model=CrowdMotionParams,
        make_game=lambda p: CrowdMotion(p),  # type: ignore[arg-type]
        make_sim=_finite_sim,
    ),
    BenchmarkSpec(
        name="building_evacuation",
        version=1,
        family="sequential",
        description="MFGLib 0.3.0's building_evacuation as a native game: floors of L x W "
        "tiles, staircases at opposite corners, reward on floor 0 minus crowding",
        params_model=BuildingEvacuationParams,
        make_game=lambda p: BuildingEvacuation(p),  # type: ignore[arg-type]
        make_sim=_finite_sim,
        # uniform is already good here (exploitability 0.32 at the defaults) and fictitious
        # play overshoots it (0.41 after 20 iterations, 0.036 after 200); online mirror
        # descent gets 0.05 in 30 and 0.003 in 300
        expert_solver=SolverSetting(algorithm="omd", iterations=200, learning_rate=0.1),
    ),
    BenchmarkSpec(
        name="predator_prey",
        version=1,
        family="team",
        description="three populations on a 5x5 grid after OpenSpiel's predator_prey, exact "
        "model over (population, cell); exploitability = mean of per-population gains",
        params_model=PredatorPreyParams,
        make_game=lambda p: make_predator_prey(**p.model_dump()),
        make_sim=lambda game, n: PredatorPreySim(game, n),
        populations="several",
    ),
    BenchmarkSpec(
        name="battle",
        version=1,
        family="team",
        description="two-team grid combat after MAgent's battle (0.04·map² agents per team; "
        "n_agents = agents per team); no exact model: return, win rate, kill ratio",
        params_model=battle.BattleParams,
        make_game=_no_game,
        make_sim=lambda p, n: battle.BattleSim(p.with_team_size(n)),
        episode_length=lambda p: p.max_steps,
        populations="teams",
        state_space="continuous",
        row_schema="team",
        simulator=Simulator(
            with_agents=lambda p, n: p.with_team_size(n),
            generate_shard=battle.generate_shard,
            outcomes=team_outcomes,
            summary=lambda out, q: team_summary(out, battle.behaviour_info(q)),
            stats=battle.battle_stats,
            layout=battle.layout,
            make_sim=battle.BattleSim,
            scripted=battle.POLICIES,
        ),
    ),
    BenchmarkSpec(
        name="mfglib",
        version=1,
        family="mfglib",
        description="any MFGLib 0.3.0 environment (params.env; optional: pip install "
        "mfglib==0.3.0), exact model from its dense float64 transitions, MFGLib's T: "
        "horizon T+1",
        params_model=MFGLibParams,
        make_game=make_mfglib_game,  # type: ignore[arg-type]
        make_sim=_finite_sim,
    ),
)

# The built-in benchmarks, then the plugins' (entry points `mfdiffuser.benchmarks`, read on first
# use in each process: see mfdiffuser.plugins).
BENCHMARKS: Registry[BenchmarkSpec] = Registry(
    "benchmark", "mfdiffuser.benchmarks", BenchmarkSpec, _BUILT_IN
)


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """` (did you mean <prefix>X?)` for the closest X of `choices`, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def unknown_benchmark(name: str) -> str:
    return (
        f"unknown benchmark{did_you_mean(name, BENCHMARKS)}; "
        f"available: {', '.join(sorted(BENCHMARKS))}"
    )


def get_benchmark(name: str) -> BenchmarkSpec:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"benchmark = {name!r}: {unknown_benchmark(name)}") from None
