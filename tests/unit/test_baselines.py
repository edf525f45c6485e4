"""The mean-field baselines `bc`, `mf_iql`, `mf_cql` on the Method interface, trained in-process
by the platform's one loop: what defines each one, that each learns, and the checkpoint round trip.

Learning is judged by the exact exploitability of the frozen policy table (each method's own
`expected_table` along its exact flow) against the same network untrained (same seed). The fits
are module-scoped: one per (method, dataset), shared by the tests that read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mfdiffuser.baselines.mf_cql import MeanFieldCQL
from mfdiffuser.baselines.mf_iql import MeanFieldIQL
from mfdiffuser.data.advantages import returns_to_go as agent_returns_to_go
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import (
    EpisodeArrays,
    WindowSampler,
    behaviour_prior,
    episodes_from_table,
    mean_fields,
)
from mfdiffuser.envs import Crowd1D, FiniteMeanFieldGame, exploitability, propagate
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.methods.base import DataStats, Dims, TrainedMethod
from mfdiffuser.methods.checkpoint import load_checkpoint, save_checkpoint
from mfdiffuser.methods.registry import get_method
from mfdiffuser.methods.training import train_epochs
from mfdiffuser.planner.diffusion import returns_to_go

BASELINES = ["bc", "mf_iql", "mf_cql"]
BATCH = 32
# The rate of each of the 4 epochs: a decaying rate settles what a constant one leaves jittering
# (a mixture weight to about 0.01, as the planner's left_right test found).
RATES = [3e-3, 1e-3, 3e-4, 3e-4]


@dataclass
class Data:
    game: FiniteMeanFieldGame
    arrays: EpisodeArrays
    prior: np.ndarray


def _data(
    benchmark: str, game: FiniteMeanFieldGame, policies: list[np.ndarray], n: int, episodes: int
) -> Data:
    spec = get_benchmark(benchmark)
    table, _ = generate_shard(lambda: spec.make_sim(game, n), policies, range(episodes), seed=0)
    arrays = episodes_from_table(table, n)
    return Data(game, arrays, behaviour_prior(arrays, game.n_states, game.n_actions))


def _table_exploitability(method: TrainedMethod, data: Data) -> float:
    game = data.game
    table = method.policy(game, data.prior, 0).expected_table(lambda p: propagate(game, p), 0)
    return exploitability(game, table)


def _fit(name: str, data: Data, steps: int, **params: Any) -> tuple[TrainedMethod, float, float]:
    """(trained method, exploitability untrained, trained) after `steps` Adam steps in 4 epochs
    of the RATES schedule."""
    spec = get_method(name)
    torch.manual_seed(0)
    method = spec.build(spec.params(params), Dims.of(data.game))
    assert isinstance(method, TrainedMethod)
    method.prepare(DataStats(data.prior, None, returns_to_go(data.arrays.rewards)))  # type: ignore[arg-type]
    before = _table_exploitability(method, data)

    def schedule(epoch: int, _metrics: dict[str, float], opt: torch.optim.Optimizer) -> None:
        for group in opt.param_groups:
            group["lr"] = RATES[min(epoch + 1, 3)]

    train_epochs(
        method,
        method.batches(data.arrays, data.game, seed=0),
        epochs=4,
        steps_per_epoch=steps // 4,
        batch_size=BATCH,
        lr=RATES[0],
        on_epoch=schedule,
    )
    return method, before, _table_exploitability(method, data)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------- crowd_1d medium: every method


@pytest.fixture(scope="module")
def crowd() -> Data:
    game = Crowd1D(size=10, horizon=10)
    behaviour = get_benchmark("crowd_1d").behaviour(game, "medium")
    return _data("crowd_1d", game, behaviour.policies, n=100, episodes=40)


@pytest.fixture(scope="module")
def crowd_fits(crowd: Data) -> dict[str, tuple[TrainedMethod, float, float]]:
    return {name: _fit(name, crowd, steps=1000) for name in BASELINES}


@pytest.mark.parametrize("name", BASELINES)
def test_learns_on_crowd_1d_medium(name: str, crowd_fits: dict[str, Any]) -> None:
    # Untrained, each policy is a random function of (s, t, mu) (exploitability ~2.4-2.8 here);
    # the medium behaviour's table has 1.4, so even cloning it is a clear step.
    _, before, after = crowd_fits[name]
    assert after <= 0.7 * before, (name, before, after)


# ---------------------------------------------------------------- left_right expert: bc, mf_iql


@pytest.fixture(scope="module")
def left_right() -> Data:
    spec = get_benchmark("left_right")
    game = spec.game()
    return _data("left_right", game, spec.behaviour(game, "expert").policies, n=100, episodes=200)


@pytest.fixture(scope="module")
def bc_left_right(left_right: Data) -> tuple[TrainedMethod, float, float]:
    return _fit("bc", left_right, steps=1000)


def test_bc_near_equilibrium_on_left_right(bc_left_right: tuple[Any, float, float]) -> None:
    _, before, after = bc_left_right
    assert after < 0.05, (before, after)


def test_bc_matches_the_data_frequencies(left_right: Data, bc_left_right: Any) -> None:
    """The one decision of left_right, at t = 0 from the start state, is covered by all 20,000
    of the data's decisions, always in the same context (mu_0 is the start state), so bc's
    cross-entropy optimum there is exactly the data's frequency of left (~0.664, sampling error
    sqrt(2/9 / 20000) = 0.003 around the behaviour's 2/3). Within 0.02: the accuracy the
    equilibrium needs (exploitability < 0.05 allows P(left) in about [0.625, 0.69])."""
    bc, game = bc_left_right[0], left_right.game
    feats = torch.as_tensor(game.features(np.arange(game.n_states)))[None]
    ctx = torch.as_tensor(game.context(0, game.mu0))[None]
    with torch.no_grad():
        pi = torch.softmax(bc.nets["policy"](feats, ctx)[0, 0].double(), dim=-1).numpy()
    np.testing.assert_allclose(pi, left_right.prior[0, 0], atol=0.02)


def test_iql_near_equilibrium_on_left_right(left_right: Data) -> None:
    """With its defaults. The data's mixture (left 0.658, the equilibrium 2/3) leaves the exact
    Q(L) - Q(R) at 0.07 value-scale units, and the advantage weights tilt the policy by
    exp(awr_beta * that) toward the best response to the data's mean field: exploitability
    < 0.05 needs P(left) within about [0.625, 0.69]; the default awr_beta = 1 gives 0.67
    (exploitability 0.010 seen), awr_beta = 3 gave 0.71 (0.083)."""
    _, before, after = _fit("mf_iql", left_right, steps=1000)
    assert after < 0.05, (before, after)


# ---------------------------------------------------------------- signatures of the Q methods


@pytest.fixture(scope="module")
def two_actions() -> Data:
    """A small crowd where the data never takes action 2 (move right): uniform over 0 and 1."""
    game = Crowd1D(size=5, horizon=3)
    policy = np.zeros((game.horizon, game.n_states, game.n_actions))
    policy[..., :2] = 0.5
    return _data("crowd_1d", game, [policy], n=100, episodes=40)


def _states_and_contexts(data: Data, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """feats[E, S, d_s] of every state, ctx[E, C] of every episode's mu_t."""
    game = data.game
    mu = mean_fields(data.arrays, game.n_states)[:, t]
    feats = torch.as_tensor(game.features(np.arange(game.n_states)))
    ctx = torch.as_tensor(np.stack([game.context(t, m) for m in mu]))
    return feats[None].expand(len(mu), -1, -1), ctx


def test_cql_penalty_lowers_actions_absent_from_the_data(two_actions: Data) -> None:
    plain = _fit("mf_cql", two_actions, steps=400, cql_alpha=0.0)[0]
    conservative = _fit("mf_cql", two_actions, steps=400, cql_alpha=1.0)[0]
    assert isinstance(plain, MeanFieldCQL) and isinstance(conservative, MeanFieldCQL)
    for t in range(two_actions.game.horizon):
        feats, ctx = _states_and_contexts(two_actions, t)
        q0 = plain.q_values(feats, ctx).mean(dim=0)  # [S, A], reward units
        q1 = conservative.q_values(feats, ctx).mean(dim=0)
        # The absent action falls below the data's actions in every state, by far more than
        # without the penalty (where nothing constrains it).
        gap0 = q0[:, :2].mean(dim=1) - q0[:, 2]
        gap1 = q1[:, :2].mean(dim=1) - q1[:, 2]
        assert (gap1 > gap0 + 0.5).all(), (t, gap0, gap1)


def test_iql_expectile_between_mean_and_max_return(two_actions: Data) -> None:
    """V(s, t, mu) by expectile regression is the expectile of Q over the data's actions: at
    expectile 0.5 the data's mean return-to-go from (s, t) (within 0.15, about 3% of the values
    here: the fit of 400 steps), and as the expectile grows it rises toward the best action's
    value, staying below the data's best return-to-go. Not at the last epoch: crowd_1d charges
    no move there, so every action is worth the same and every expectile is the mean. The
    targets follow the critics fast (polyak 0.1) so that 400 steps carry values back through
    the three epochs."""
    game, arrays = two_actions.game, two_actions.arrays
    rtg = agent_returns_to_go(arrays.rewards)  # [E, T, N]
    values: dict[float, list[np.ndarray]] = {}
    for tau in (0.5, 0.9):
        iql = _fit("mf_iql", two_actions, steps=400, expectile=tau, polyak=0.1)[0]
        assert isinstance(iql, MeanFieldIQL)
        values[tau] = []
        for t in range(game.horizon):
            feats, ctx = _states_and_contexts(two_actions, t)
            values[tau].append(iql.v_values(feats, ctx).mean(dim=0).numpy())  # [S]
    for t in range(game.horizon):
        s_t, g_t = arrays.states[:, t].ravel(), rtg[:, t].ravel()
        mean = np.array([g_t[s_t == s].mean() for s in range(game.n_states)])
        best = np.array([g_t[s_t == s].max() for s in range(game.n_states)])
        low, high = values[0.5][t], values[0.9][t]
        assert (np.abs(low - mean) < 0.15).all(), (t, low, mean)
        assert (high < best).all(), (t, high, best)
        if t < game.horizon - 1:
            assert (high > low + 0.02).all(), (t, low, high)


# ---------------------------------------------------------------- checkpoints


def _flat(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        return {
            k: v for key, sub in state.items() for k, v in _flat(sub, f"{prefix}{key}.").items()
        }
    return {prefix: state}


@pytest.mark.parametrize("name", BASELINES)
def test_checkpoint_round_trip(
    name: str, crowd: Data, crowd_fits: dict[str, Any], tmp_path: Path
) -> None:
    method = crowd_fits[name][0]
    save_checkpoint(tmp_path, method, crowd.prior, {"epoch": 4})
    loaded, prior, meta, _ = load_checkpoint(tmp_path)
    assert meta["method"]["name"] == name and np.array_equal(prior, crowd.prior)
    before, after = _flat(method.state_dict()), _flat(loaded.state_dict())
    assert before.keys() == after.keys() and len(before) > 4
    for key, value in before.items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(after[key])), key
    states = np.random.default_rng(1).integers(0, crowd.game.n_states, size=500)
    acted = [
        m.policy(crowd.game, prior, 0).act(3, states, np.random.default_rng(7))
        for m in (method, loaded)
    ]
    np.testing.assert_array_equal(acted[0], acted[1])
    assert len(np.unique(acted[0])) > 1  # a real draw, not a constant


def test_transition_batches_do_not_change_window_batches(crowd: Data) -> None:
    """ctx_next and done are added without touching what windows hold (MF-Diffuser trains on the
    same batches), and they are the context of t0 + 1 and the last-step flag."""
    game, arrays = crowd.game, crowd.arrays
    plain = WindowSampler(arrays, game, 2, 8, seed=3).sample(64)
    more = WindowSampler(arrays, game, 2, 8, seed=3, next_context=True).sample(64)
    for key, value in plain.items():
        assert np.array_equal(more[key], value), key
    mu = mean_fields(arrays, game.n_states)
    for i, (e, t0) in enumerate(zip(more["episode"], more["t0"], strict=True)):
        t1 = min(t0 + 1, game.horizon - 1)
        assert np.array_equal(more["ctx_next"][i], game.context(int(t1), mu[e, t1]))
    assert np.array_equal(more["done"], (more["t0"] == game.horizon - 1).astype(np.float32))
    assert more["done"].any() and not more["done"].all()
    assert more["rewards"].shape == more["states"].shape == (64, 8, 2)
