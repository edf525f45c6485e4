"""The four-term suboptimality decomposition (finite-state benchmarks).

    J^∞(π_ref) − J^N(π̂) =  [J^∞(π_ref) − J^∞(π_β*)]     regularisation gap (data quality, β)
                          + [J^∞(π_β*)  − J^∞(π_β^D)]    offline distribution shift (coverage)
                          + [J^∞(π_β^D) − J^∞(π̂)]       generative error (the diffusion model)
                          + [J^∞(π̂)    − J^N(π̂)]        mean-field approximation error

Our choices where the paper's bound leaves room:
- π_b (in π_β*) is the TRUE behaviour policy: the occupancy-weighted mixture of the policies that
  made the data (`occupancy_mixture`), and A^{π_b} its exact advantage against its own exact flow.
- π_β^D is the target the diffusion model is actually trained on: the data's EMPIRICAL behaviour
  policy (action counts per (t, s), uniform where unseen: the prior stored in the checkpoint)
  tilted by the dataset-estimated advantage. So the shift term holds everything the finite data
  gets wrong (unvisited states, sampling noise of π_b and of the returns), and the generative term
  is only how far the model is from its own training target.
- Both tilts are clipped where the training weights clip: w = exp(β·A) over its expected batch mean
  (`expected_log_normaliser`, the batch mean's limit), capped at w_max. For π_β* the batch mean is
  taken under the true behaviour occupancy.
- Every J^∞ is exact (finite model); J^N is a Monte Carlo mean over episodes at each N.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mfdiffuser.data.advantages import TabularAdvantage, expected_log_normaliser, tilted_policy
from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    mean_field_flow,
    policy_value,
    propagate,
    q_values,
)


def true_advantage(game: FiniteMeanFieldGame, policy: np.ndarray) -> np.ndarray:
    """A^π[T, S, A] = Q^π − V^π against π's own exact flow (exact dynamic programming; the flow
    in the game's form: L_t for a state-action mean-field game)."""
    q = q_values(game, policy, mean_field_flow(game, policy))
    return q - (policy * q).sum(axis=-1, keepdims=True)


def occupancy(game: FiniteMeanFieldGame, policy: np.ndarray) -> np.ndarray:
    """State-action occupancy occ[T, S, A] = μ^π_t(s)·π_t(a | s)."""
    return propagate(game, policy)[..., None] * policy


def beta_star_policy(
    game: FiniteMeanFieldGame,
    behaviour: np.ndarray,
    beta: float,
    weight_clip: float,
) -> np.ndarray:
    """π_β*: the true behaviour tilted by its exact advantage, clipped as in training."""
    adv = true_advantage(game, behaviour)
    # As if the data were infinite: counts ∝ the behaviour's occupancy, Q̂ − V̂ = the exact A.
    exact = TabularAdvantage(q=adv, v=np.zeros(adv.shape[:2]), counts=occupancy(game, behaviour))
    log_z = expected_log_normaliser(exact, beta)
    return tilted_policy(behaviour, exact, beta, weight_clip, log_normaliser=log_z)


def beta_data_policy(
    prior: np.ndarray,
    advantage: TabularAdvantage,
    beta: float,
    weight_clip: float,
) -> np.ndarray:
    """π_β^D: the data's empirical behaviour tilted by the dataset advantage (A = 0 unseen)."""
    log_z = expected_log_normaliser(advantage, beta)
    return tilted_policy(prior, advantage, beta, weight_clip, log_normaliser=log_z)


@dataclass(frozen=True)
class Decomposition:
    """The exact values of the decomposition and the Monte Carlo J^N per episode at each N."""

    j_ref: float  # J^∞(π_ref) (the welfare optimum's value for cooperative games)
    j_beta_star: float  # J^∞(π_β*)
    j_beta_data: float  # J^∞(π_β^D)
    j_hat: float  # J^∞(π̂) of the frozen table
    episode_returns: Mapping[int, Sequence[float]]  # N -> J^N of each episode (live planner)

    @property
    def regularisation_gap(self) -> float:
        return self.j_ref - self.j_beta_star

    @property
    def distribution_shift(self) -> float:
        return self.j_beta_star - self.j_beta_data

    @property
    def generative_error(self) -> float:
        return self.j_beta_data - self.j_hat

    def mean_field_error(self, n: int) -> float:
        """Signed J^∞(π̂) − J^N(π̂) at N (J^N = mean over episodes)."""
        return self.j_hat - float(np.mean(self.episode_returns[n]))

    def mean_field_abs_deviation(self, n: int) -> float:
        """E|J^N_episode − J^∞(π̂)|: the per-episode deviation (shrinks like 1/√N)."""
        return float(np.mean(np.abs(np.asarray(self.episode_returns[n]) - self.j_hat)))

    def total(self, n: int) -> float:
        return self.j_ref - float(np.mean(self.episode_returns[n]))

    def metrics(self) -> dict[str, float]:
        """Metric names of the MLflow scheme (`subopt/…`), all signed except the abs deviation."""
        out = {
            "subopt/j_ref": self.j_ref,
            "subopt/j_beta_star": self.j_beta_star,
            "subopt/j_beta_data": self.j_beta_data,
            "subopt/j_hat": self.j_hat,
            "subopt/regularisation_gap": self.regularisation_gap,
            "subopt/distribution_shift": self.distribution_shift,
            "subopt/generative_error": self.generative_error,
        }
        for n in sorted(self.episode_returns):
            out[f"subopt/mf_error/n{n}"] = self.mean_field_error(n)
            out[f"subopt/mf_abs_dev/n{n}"] = self.mean_field_abs_deviation(n)
            out[f"subopt/total/n{n}"] = self.total(n)
        return out


def exact_terms(
    game: FiniteMeanFieldGame,
    *,
    j_ref: float,
    behaviour: np.ndarray,
    prior: np.ndarray,
    advantage: TabularAdvantage,
    table: np.ndarray,
    beta: float,
    weight_clip: float,
) -> dict[str, float]:
    """The N-free values (J^∞ of π_ref, π_β*, π_β^D, π̂): the first three terms' ingredients."""
    pi_star = beta_star_policy(game, behaviour, beta, weight_clip)
    pi_data = beta_data_policy(prior, advantage, beta, weight_clip)
    return {
        "j_ref": float(j_ref),
        "j_beta_star": policy_value(game, pi_star),
        "j_beta_data": policy_value(game, pi_data),
        "j_hat": policy_value(game, table),
    }
