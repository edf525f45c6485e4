"""Acting with the planner in a finite game (docs/method.md): allocation, tables, a tiny fit."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from line_game import LineGame

from mfdiffuser.planner import (
    FiniteStatePlannerPolicy,
    MFDiffuser,
    PlannerConfig,
    allocate,
    encode_actions,
)

torch.set_num_threads(1)


GAME = LineGame()
S, A, T = GAME.n_states, GAME.n_actions, GAME.horizon
CFG = PlannerConfig(window=4, n_particles=8, max_particles=64, diffusion_steps=10, hidden=32)


def _prior() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.dirichlet(np.ones(A), size=(T, S))


def _target(s: np.ndarray) -> np.ndarray:
    return s % A


def _synthetic_batch(rng: np.random.Generator, b: int, m: int) -> dict[str, torch.Tensor]:
    """First action a = s mod 3; state and action then constant over the window."""
    s = rng.integers(0, S, size=(b, m))
    feats = np.concatenate([GAME.features(s), encode_actions(_target(s), A).numpy()], axis=-1)
    x = np.repeat(feats[:, :, None, :], CFG.window, axis=2)  # x[B, M, H, D]
    t = rng.integers(0, T, size=b)
    mus = rng.dirichlet(np.ones(S), size=b)
    ctx = np.stack([GAME.context(int(t[i]), mus[i]) for i in range(b)])
    return {"x": torch.as_tensor(x, dtype=torch.float32), "ctx": torch.as_tensor(ctx)}


@pytest.fixture(scope="module")
def trained() -> MFDiffuser:
    torch.manual_seed(0)
    planner = MFDiffuser.from_spec(CFG, GAME.feature_dim, A, GAME.context_dim)
    opt = torch.optim.Adam(planner.model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(300):
        loss, _ = planner.loss(_synthetic_batch(rng, 16, CFG.n_particles))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return planner


def _policy(planner: MFDiffuser) -> FiniteStatePlannerPolicy:
    return FiniteStatePlannerPolicy(planner, GAME, _prior(), CFG)


# ------------------------------------------------------------------ allocation


@pytest.mark.parametrize("m", [1, 7, 64, 100])
def test_allocate_float(m: int) -> None:
    mu = np.random.default_rng(m).dirichlet(np.ones(S))
    idx = allocate(mu, m)
    n_per_state = np.bincount(idx, minlength=S)
    assert idx.shape == (m,) and n_per_state.sum() == m
    assert np.all(np.abs(n_per_state - m * mu) < 1)
    assert np.array_equal(idx, allocate(mu, m))  # deterministic
    assert np.all(np.diff(idx) >= 0)


def test_allocate_counts_exact() -> None:
    counts = np.array([3, 0, 10, 1, 6])
    assert np.array_equal(np.bincount(allocate(counts, 20), minlength=S), counts)
    half = np.bincount(allocate(counts, 10), minlength=S)
    assert half.sum() == 10 and np.all(np.abs(half - counts / 2) < 1)
    assert half[1] == 0
    with pytest.raises(ValueError):
        allocate(np.zeros(S), 3)


# ------------------------------------------------------------------ tables


def test_prior_validation() -> None:
    planner = MFDiffuser.from_spec(CFG, GAME.feature_dim, A, GAME.context_dim)
    with pytest.raises(ValueError, match="prior"):
        FiniteStatePlannerPolicy(planner, GAME, _prior()[:-1], CFG)
    with pytest.raises(ValueError, match="prior"):
        FiniteStatePlannerPolicy(planner, GAME, 2 * _prior(), CFG)


def test_tiny_fit_action_table(trained: MFDiffuser) -> None:
    policy = _policy(trained)
    table = policy.action_table(2, GAME.mu0, None, torch.Generator().manual_seed(0))
    assert table.shape == (S, A)
    np.testing.assert_allclose(table.sum(-1), 1.0)
    right = table[np.arange(S), _target(np.arange(S))]
    assert np.all(right > 0.9), table


def test_states_without_particles_take_prior(trained: MFDiffuser) -> None:
    policy = _policy(trained)
    mu = np.array([0.5, 0.0, 0.5, 0.0, 0.0])
    # Past the horizon's end the window still works: t + H > T.
    table = policy.action_table(T - 1, mu, 12, torch.Generator().manual_seed(1))
    prior = _prior()
    for s in (1, 3, 4):
        assert np.array_equal(table[s], prior[T - 1, s])
    for s in (0, 2):
        assert table[s, _target(np.array(s))] > 0.9


def test_act_follows_table(trained: MFDiffuser) -> None:
    policy = _policy(trained)
    rng = np.random.default_rng(0)
    states = rng.integers(0, S, size=500)
    actions = policy.act(0, states, rng, torch.Generator().manual_seed(0))
    assert actions.shape == (500,) and actions.min() >= 0 and actions.max() < A
    assert np.mean(actions == _target(states)) > 0.85


def test_expected_table(trained: MFDiffuser) -> None:
    policy = _policy(trained)
    start = time.perf_counter()
    table = policy.expected_table(GAME.propagate, seed=0)
    assert time.perf_counter() - start < 10
    assert table.shape == (T, S, A)
    np.testing.assert_allclose(table.sum(-1), 1.0)
    flow = GAME.propagate(table)
    for t in range(T):
        populated = np.bincount(allocate(flow[t], CFG.max_particles), minlength=S) > 0
        for s in range(S):
            if populated[s]:
                assert table[t, s, _target(np.array(s))] > 0.9
            else:
                assert np.array_equal(table[t, s], _prior()[t, s])
    assert np.array_equal(table, policy.expected_table(GAME.propagate, seed=0))


# ------------------------------------------------------------------ the O(N) readout


def test_fast_readout_draws_each_agent_from_its_states_row() -> None:
    """policy.act at a large N: every agent's action follows its own state's row of the table
    the planner drew (Pearson chi-square per state), and a seed fixes the output."""
    torch.manual_seed(3)
    policy = _policy(MFDiffuser.from_spec(CFG, GAME.feature_dim, A, GAME.context_dim))
    n = 300_000
    states = np.random.default_rng(4).integers(0, S, size=n)
    counts_s = np.bincount(states, minlength=S)
    # the table act draws from: the same particle set (same generator seed, same allocation)
    gen = torch.Generator().manual_seed(5)
    table = policy._draw_tables(0, counts_s / n, counts_s, CFG.max_particles, gen, 1)[0]
    actions = policy.act(0, states, np.random.default_rng(6), torch.Generator().manual_seed(5))
    assert actions.shape == (n,) and actions.dtype == np.int64
    counts = np.zeros((S, A))
    np.add.at(counts, (states, actions), 1)
    assert np.all(counts[table == 0] == 0)
    expected = counts_s[:, None] * table
    cell = expected >= 5
    chi2 = np.sum((counts[cell] - expected[cell]) ** 2 / expected[cell])
    dof = int(cell.sum() - S)
    assert dof >= S  # the rows are mixed, not point masses: the test has power
    assert chi2 < dof + 6 * np.sqrt(2 * dof)  # about a 1e-4 false-alarm rate
    # a row shifted to another state would fail: the rows differ by far more than the noise
    wrong = counts_s[:, None] * np.roll(table, 1, axis=0)
    assert np.sum((counts[cell] - wrong[cell]) ** 2 / np.maximum(wrong[cell], 1)) > 10 * chi2
    again = policy.act(0, states, np.random.default_rng(6), torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(actions, again)
    other = policy.act(0, states, np.random.default_rng(7), torch.Generator().manual_seed(5))
    assert np.any(actions != other)
