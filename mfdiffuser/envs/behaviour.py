"""Behaviour policies that generate offline datasets of a given quality (D4RL-style names).

A dataset's episodes are assigned round-robin to the returned policies.
"""

from __future__ import annotations

from mfdiffuser.envs.finite import FiniteMeanFieldGame, FloatArray, uniform_policy
from mfdiffuser.envs.solvers import fictitious_play

QUALITIES = ("random", "expert")


def behaviour_policies(
    game: FiniteMeanFieldGame, quality: str, *, solver_iterations: int = 200
) -> list[FloatArray]:
    """Policies policy[T, S, A] for a data quality: `random` = uniform, `expert` = converged FP."""
    if quality == "random":
        return [uniform_policy(game)]
    if quality == "expert":
        return [fictitious_play(game, solver_iterations).policy]
    raise ValueError(f"quality: unknown quality {quality!r}; allowed: {', '.join(QUALITIES)}")
