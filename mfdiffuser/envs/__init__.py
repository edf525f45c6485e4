"""Benchmarks: finite mean-field games (exact models), N-agent simulators and solvers.

Plain numpy only: no Ray, MLflow or torch here.
"""

from mfdiffuser.envs.battle import BattleParams, BattleSim, battle_stats
from mfdiffuser.envs.behaviour import QUALITIES, Behaviour, make_behaviour
from mfdiffuser.envs.crowd_1d import Crowd1D, Crowd1DParams, Crowd1DSim, make_crowd_1d
from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    best_response,
    exploitability,
    mean_field_flow,
    policy_value,
    propagate,
    q_values,
    sample_actions,
    uniform_policy,
)
from mfdiffuser.envs.solvers import (
    SolveResult,
    SolverSetting,
    damped_fictitious_play,
    fictitious_play,
    online_mirror_descent,
)

__all__ = [
    "QUALITIES",
    "BattleParams",
    "BattleSim",
    "Behaviour",
    "Crowd1D",
    "Crowd1DParams",
    "Crowd1DSim",
    "FiniteMeanFieldGame",
    "SolveResult",
    "SolverSetting",
    "battle_stats",
    "best_response",
    "damped_fictitious_play",
    "exploitability",
    "fictitious_play",
    "make_behaviour",
    "make_crowd_1d",
    "mean_field_flow",
    "online_mirror_descent",
    "policy_value",
    "propagate",
    "q_values",
    "sample_actions",
    "uniform_policy",
]
