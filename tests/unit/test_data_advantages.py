"""Dataset advantages (docs/method.md), value weights in training batches and π_β^D
(docs/metrics.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mfdiffuser.data.advantages import (
    TabularAdvantage,
    expected_log_normaliser,
    fit_tabular_advantage,
    returns_to_go,
    tilted_policy,
)
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import (
    EpisodeArrays,
    WindowSampler,
    behaviour_prior,
    episodes_from_table,
)
from mfdiffuser.envs import (
    Crowd1D,
    Crowd1DSim,
    policy_value,
    propagate,
    q_values,
    uniform_policy,
)
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser
from mfdiffuser.planner.training import to_batch, train_epochs

N_AGENTS, N_EPISODES = 2000, 32


def _arrays(table) -> EpisodeArrays:
    return episodes_from_table(table, int(table["agent"].to_numpy().max()) + 1)


@pytest.fixture(scope="module")
def game() -> Crowd1D:
    return Crowd1D(size=6, horizon=5)


@pytest.fixture(scope="module")
def uniform_data(game: Crowd1D) -> EpisodeArrays:
    table, _ = generate_shard(
        lambda: Crowd1DSim(game, N_AGENTS), [uniform_policy(game)], range(N_EPISODES), seed=4
    )
    return _arrays(table)


@pytest.fixture(scope="module")
def true_advantage(game: Crowd1D) -> tuple[np.ndarray, np.ndarray]:
    """TRUE Q[T, S, A] and A[T, S, A] of the uniform policy against its own flow."""
    pol = uniform_policy(game)
    q = q_values(game, pol, propagate(game, pol))
    return q, q - np.einsum("tsa,tsa->ts", pol, q)[:, :, None]


# ---------------------------------------------------------------- tabular estimates


def test_returns_to_go_hand_written() -> None:
    rewards = np.array([[[1.0, 0.5], [2.0, -1.0], [3.0, 0.25]]])  # [E=1, T=3, N=2]
    rtg = returns_to_go(rewards)
    assert rtg.dtype == np.float64
    assert np.array_equal(rtg, np.array([[[6.0, -0.25], [5.0, -0.75], [3.0, 0.25]]]))


def _tiny() -> EpisodeArrays:
    # E = 2 episodes, T = 2, N = 2 agents, S = 2, A = 2.
    states = np.array([[[0, 1], [1, 1]], [[0, 0], [1, 0]]])
    actions = np.array([[[0, 1], [1, 0]], [[0, 1], [0, 0]]])
    rewards = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 5.0], [1.0, 2.0]]], dtype=np.float32)
    return EpisodeArrays(states, actions, rewards)


def test_tabular_fit_matches_hand_computation() -> None:
    # rtg: ep0 t0 [4, 6], t1 [3, 4]; ep1 t0 [1, 7], t1 [1, 2].
    adv = fit_tabular_advantage(_tiny(), n_states=2, n_actions=2)
    assert isinstance(adv, TabularAdvantage)
    assert np.array_equal(adv.counts, [[[2, 1], [0, 1]], [[1, 0], [2, 1]]])
    # t = 0: (s0, a0) rtg {4, 1}, (s0, a1) {7}, (s1, a1) {6}, (s1, a0) unseen.
    assert np.allclose(adv.q[0], [[2.5, 7.0], [0.0, 6.0]])
    assert np.allclose(adv.v[0], [4.0, 6.0])
    # t = 1: (s0, a0) {2}, (s0, a1) unseen, (s1, a0) {4, 1}, (s1, a1) {3}.
    assert np.allclose(adv.q[1], [[2.0, 0.0], [2.5, 3.0]])
    assert np.allclose(adv.v[1], [2.0, 8.0 / 3.0])
    expected_a = np.array([[[-1.5, 3.0], [0.0, 0.0]], [[0.0, 0.0], [-1.0 / 6.0, 1.0 / 3.0]]])
    assert np.allclose(adv.table, expected_a)
    # Unseen (t, s, a) have A = 0 exactly.
    assert adv.advantage(0, 1, 0) == 0.0 and adv.advantage(1, 0, 1) == 0.0
    # Vectorised lookup with broadcasting.
    got = adv.advantage(np.array([[0], [1]]), np.array([[0, 0]]), np.array([[0, 1]]))
    assert np.allclose(got, [[-1.5, 3.0], [0.0, 0.0]])
    # V̂ is the count-weighted mean of Q̂ (the behaviour policy's value estimate).
    seen = adv.counts.sum(-1) > 0
    weighted = (adv.counts * adv.q).sum(-1) / np.maximum(adv.counts.sum(-1), 1)
    assert np.allclose(adv.v[seen], weighted[seen])


def test_tabular_q_approaches_true_q(
    game: Crowd1D, uniform_data: EpisodeArrays, true_advantage: tuple[np.ndarray, np.ndarray]
) -> None:
    q_true, a_true = true_advantage
    adv = fit_tabular_advantage(uniform_data, game.n_states, game.n_actions)
    enough = adv.counts >= 500
    assert enough.all()  # uniform data covers every (t, s, a) ~ 3500 times
    # The simulator records at x_t the move cost of a_{t-1} (not a_t; a_{T-1}'s is never paid):
    # rtg_t = the exact model's return from t − cost(a_{t-1}). Under the uniform policy and its
    # uniform flow, a_{t-1} is uniform given x_t, so the offset is 2/(3n) for t >= 1, 0 at t = 0.
    # It does not depend on a_t, so it cancels in A.
    offset = np.where(np.arange(game.horizon) > 0, 2.0 / (3.0 * game.size), 0.0)[:, None, None]
    q_err = np.abs(adv.q - (q_true - offset))[enough]
    a_err = np.abs(adv.table - a_true)[enough]
    # Measured (seed 4, E = 32, N = 2000): max |ΔQ| ≈ 0.04, mean ≈ 0.013, max |ΔA| ≈ 0.03, with
    # per-cell standard errors ≤ 0.024 (episode-to-episode; Q̂ at t = 0 is ~11).
    assert q_err.max() < 0.1 and q_err.mean() < 0.03
    assert a_err.max() < 0.08


# ---------------------------------------------------------------- value weights in batches


def test_sampler_advantages_are_first_action_advantages(
    game: Crowd1D, uniform_data: EpisodeArrays
) -> None:
    adv = fit_tabular_advantage(uniform_data, game.n_states, game.n_actions)
    sampler = WindowSampler(uniform_data, game, window=2, n_particles=8, seed=0, advantage=adv)
    raw = sampler.sample(16)
    assert raw["advantages"].shape == (16, 8) and raw["advantages"].dtype == np.float32
    expected = adv.table[raw["t0"][:, None], raw["first_states"], raw["first_actions"]]
    assert np.allclose(raw["advantages"], expected, atol=1e-6)
    assert "advantages" not in WindowSampler(uniform_data, game, 2, 8, seed=0).sample(4)
    with pytest.raises(ValueError, match="advantage"):
        WindowSampler(
            uniform_data, game, 2, 8, seed=0, advantage=fit_tabular_advantage(_tiny(), 2, 2)
        )


def _planner(game: Crowd1D, beta: float = 0.0) -> MFDiffuser:
    torch.manual_seed(0)
    cfg = PlannerConfig(window=2, n_particles=8, diffusion_steps=4, hidden=8, beta=beta)
    return MFDiffuser.from_spec(
        cfg, state_dim=game.feature_dim, n_actions=game.n_actions, context_dim=game.context_dim
    )


def test_beta_zero_is_the_unweighted_loss(game: Crowd1D, uniform_data: EpisodeArrays) -> None:
    adv = fit_tabular_advantage(uniform_data, game.n_states, game.n_actions)
    raw = WindowSampler(uniform_data, game, 2, 8, seed=1, advantage=adv).sample(6)
    batch = to_batch(raw, "cpu", beta=0.0)
    assert set(batch) == {"x", "ctx", "valid"}
    planner = _planner(game)
    plain = {k: raw[k] for k in ("x", "ctx", "valid")}
    loss_a, _ = planner.loss(batch, generator=torch.Generator().manual_seed(3))
    loss_b, _ = planner.loss(to_batch(plain, "cpu"), generator=torch.Generator().manual_seed(3))
    assert torch.equal(loss_a, loss_b)


def test_weights_normalised_clipped_and_follow_advantage(
    game: Crowd1D, uniform_data: EpisodeArrays
) -> None:
    adv = fit_tabular_advantage(uniform_data, game.n_states, game.n_actions)
    raw = WindowSampler(uniform_data, game, 2, 8, seed=2, advantage=adv).sample(32)
    a = raw["advantages"].astype(np.float64)
    beta = 3.0
    unclipped = to_batch(raw, "cpu", beta=beta, weight_clip=1e9)["weights"].numpy()
    assert unclipped.shape == (32, 8)
    assert math.isclose(float(unclipped.mean()), 1.0, rel_tol=1e-5)  # mean 1 before clipping
    assert np.allclose(unclipped, np.exp(beta * a) / np.exp(beta * a).mean(), rtol=1e-4)
    # Higher first-action advantage -> larger weight (monotone in A).
    order = np.argsort(a.ravel(), kind="stable")
    assert np.all(np.diff(unclipped.ravel()[order]) >= -1e-6)
    assert unclipped.ravel()[order[-1]] > unclipped.ravel()[order[0]]
    clip = float(np.quantile(unclipped, 0.75))
    clipped = to_batch(raw, "cpu", beta=beta, weight_clip=clip)["weights"].numpy()
    assert clipped.max() <= clip + 1e-6
    assert np.allclose(clipped, np.minimum(unclipped, clip), rtol=1e-5)


def test_train_epochs_passes_beta_and_clip(game: Crowd1D, uniform_data: EpisodeArrays) -> None:
    adv = fit_tabular_advantage(uniform_data, game.n_states, game.n_actions)
    sampler = WindowSampler(uniform_data, game, 2, 8, seed=3, advantage=adv)
    planner = _planner(game, beta=2.0)
    seen: list[dict[str, torch.Tensor]] = []
    loss_fn = planner.loss

    def spy(batch, **kw):  # type: ignore[no-untyped-def]
        seen.append(batch)
        return loss_fn(batch, **kw)

    planner.loss = spy  # type: ignore[method-assign, assignment]
    train_epochs(
        planner,
        sampler,
        epochs=1,
        steps_per_epoch=2,
        batch_size=4,
        lr=1e-3,
        on_epoch=lambda *_: None,
    )
    assert len(seen) == 2 and all("weights" in b for b in seen)
    assert all(float(b["weights"].max()) <= planner.cfg.weight_clip for b in seen)


# ---------------------------------------------------------------- tilted policy π_β


def test_tilted_policy_hand_example_and_clip() -> None:
    prior = np.full((1, 1, 2), 0.5)
    a = np.array([[[0.0, math.log(4.0)]]])
    # Unclipped: π ∝ π_b·exp(A) = [0.2, 0.8]. Per-state normaliser Z = 2.5, ratios [0.4, 1.6];
    # clip at 1.2 -> [0.4, 1.2] -> [0.25, 0.75].
    assert np.allclose(tilted_policy(prior, a, 1.0, 1e9), [[[0.2, 0.8]]])
    assert np.allclose(tilted_policy(prior, a, 1.0, 1.2), [[[0.25, 0.75]]])
    # A scalar normaliser instead: Z = 1 -> ratios [1, 4], clip 2 -> [1/3, 2/3].
    assert np.allclose(tilted_policy(prior, a, 1.0, 2.0, log_normaliser=0.0), [[[1 / 3, 2 / 3]]])
    # Huge β stays finite (log-space) and puts all mass on the argmax.
    assert np.allclose(tilted_policy(prior, a, 1e6, 1e9), [[[0.0, 1.0]]])


def test_tilted_policy_properties(
    game: Crowd1D, uniform_data: EpisodeArrays, true_advantage: tuple[np.ndarray, np.ndarray]
) -> None:
    adv = fit_tabular_advantage(uniform_data, game.n_states, game.n_actions)
    prior = behaviour_prior(uniform_data, game.n_states, game.n_actions)
    assert np.array_equal(tilted_policy(prior, adv, 0.0, 20.0), prior)  # β = 0: the prior, exactly
    best = adv.table.argmax(-1)
    top2 = np.sort(adv.table, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-3  # rows whose argmax is clear (not near-tied)
    assert clear.mean() > 0.5
    mass = []
    for beta in (0.5, 2.0, 8.0, 32.0, 1e4):
        pol = tilted_policy(prior, adv, beta, 20.0)
        assert np.allclose(pol.sum(-1), 1.0) and (pol >= 0).all()
        mass.append(np.take_along_axis(pol, best[..., None], -1)[..., 0][clear].mean())
    assert all(np.diff(mass) > 0) and mass[-1] > 0.99
    # π_β^D (dataset estimate) is close to π_β* (true advantage) with this much data.
    _, a_true = true_advantage
    uniform = uniform_policy(game)
    pi_d = tilted_policy(prior, adv, 2.0, 20.0)
    pi_star = tilted_policy(uniform, a_true, 2.0, 20.0)
    assert np.abs(pi_d - pi_star).max() < 0.05


def test_tilt_with_true_advantage_improves_value(
    game: Crowd1D, true_advantage: tuple[np.ndarray, np.ndarray]
) -> None:
    _, a_true = true_advantage
    uniform = uniform_policy(game)
    base = policy_value(game, uniform)  # ≈ 11.01
    # Measured J∞(π_β*): β = 1 -> 11.19, 2 -> 11.25, 5 -> 11.15, 10 -> 11.00, 50 -> 10.85. Large
    # β approaches the best response to the UNIFORM flow, which against its own flow crowds the
    # centre (a Nash game, not a welfare one), so the improvement is over moderate β.
    for beta in (1.0, 2.0, 5.0):
        assert policy_value(game, tilted_policy(uniform, a_true, beta, 20.0)) > base + 0.1


def test_expected_log_normaliser_matches_batch_mean(
    game: Crowd1D, uniform_data: EpisodeArrays
) -> None:
    adv = fit_tabular_advantage(uniform_data, game.n_states, game.n_actions)
    beta, window = 2.0, 2
    raw = WindowSampler(uniform_data, game, window, 16, seed=5, advantage=adv).sample(2000)
    batch_log_mean = math.log(float(np.exp(beta * raw["advantages"].astype(np.float64)).mean()))
    assert abs(batch_log_mean - expected_log_normaliser(adv, beta)) < 0.03


def test_standard_errors_and_shrinkage_from_the_additive_sums() -> None:
    """se(Q̂) per (t, s, a) is the returns-to-go's sample std / sqrt(n), from sums that add over
    shards; `shrunk(z)` soft-thresholds Â by z·se, zeroes once-seen (t, s, a), z = 0 is Â."""
    from mfdiffuser.data.advantages import advantage_from_sums, advantage_sums

    rng = np.random.default_rng(0)
    e, t, n, s, a = 6, 3, 50, 4, 3
    arrays = EpisodeArrays(
        states=rng.integers(0, s, (e, t, n)),
        actions=rng.integers(0, a, (e, t, n)),
        rewards=rng.normal(size=(e, t, n)).astype(np.float32),
    )
    arrays.actions[0, 0, 0], arrays.states[0, 0, 0] = 2, 3  # (0, 3, 2) seen exactly once
    mask = (arrays.states[:, 0] == 3) & (arrays.actions[:, 0] == 2)
    arrays.states[:, 0][mask] = 0
    arrays.states[0, 0, 0] = 3
    first = EpisodeArrays(arrays.states[:3], arrays.actions[:3], arrays.rewards[:3])
    second = EpisodeArrays(arrays.states[3:], arrays.actions[3:], arrays.rewards[3:])
    whole = advantage_sums(arrays, s, a)
    parts = [advantage_sums(x, s, a) for x in (first, second)]
    for i in range(3):
        np.testing.assert_allclose(parts[0][i] + parts[1][i], whole[i], rtol=1e-12)
    adv = advantage_from_sums(*whole)
    rtg = returns_to_go(arrays.rewards)
    for tt, ss, aa in [(0, 0, 0), (1, 2, 1), (2, 3, 2)]:
        sel = rtg[:, tt][(arrays.states[:, tt] == ss) & (arrays.actions[:, tt] == aa)]
        assert adv.counts[tt, ss, aa] == sel.size > 1
        assert adv.q[tt, ss, aa] == pytest.approx(sel.mean(), rel=1e-12)
        expected_se = sel.std(ddof=1) / math.sqrt(sel.size)
        assert adv.se is not None and adv.se[tt, ss, aa] == pytest.approx(expected_se, rel=1e-9)
    assert adv.counts[0, 3, 2] == 1 and adv.se is not None and np.isinf(adv.se[0, 3, 2])

    assert adv.shrunk(0.0) is adv
    z = 1.5
    shrunk = adv.shrunk(z)
    raw, se = adv.table, adv.se
    many = adv.counts > 1
    expected = np.where(
        many, np.sign(raw) * np.maximum(0.0, np.abs(raw) - z * np.where(many, se, 0)), 0
    )
    np.testing.assert_allclose(shrunk.table, expected, atol=1e-12)
    assert shrunk.table[0, 3, 2] == 0.0 and raw[0, 3, 2] != 0.0
    assert np.all(np.abs(shrunk.table) <= np.abs(raw) + 1e-12)  # toward 0, never past it
    assert np.all(shrunk.table * raw >= -1e-12)  # no sign flips
    np.testing.assert_array_equal(shrunk.v, adv.v)
    with pytest.raises(ValueError, match="se is None"):
        TabularAdvantage(q=adv.q, v=adv.v, counts=adv.counts).shrunk(1.0)


def test_pure_noise_advantages_shrink_to_zero_and_real_ones_survive() -> None:
    """Data where the action does not change the return (Â is noise only) keeps almost no tilt
    at z = 1.5; a real advantage of 10 standard errors keeps most of its size."""
    from mfdiffuser.data.advantages import advantage_from_sums, advantage_sums

    rng = np.random.default_rng(1)
    e, t, n = 40, 1, 200
    actions = rng.integers(0, 2, (e, t, n))
    noise = rng.normal(size=(e, t, n))
    states = np.zeros((e, t, n), dtype=np.int64)
    flat = EpisodeArrays(states, actions, noise.astype(np.float32))
    adv = advantage_from_sums(*advantage_sums(flat, 1, 2))
    assert np.abs(adv.table).max() > 0.0
    assert np.abs(adv.shrunk(1.5).table).max() <= 0.2 * np.abs(adv.table).max()
    step = 10 * 2 / math.sqrt(e * n / 2)  # 10 standard errors of each action's mean
    real = EpisodeArrays(states, actions, (noise + step * actions).astype(np.float32))
    adv = advantage_from_sums(*advantage_sums(real, 1, 2))
    gap = adv.shrunk(1.5).table[0, 0, 1] - adv.shrunk(1.5).table[0, 0, 0]
    assert gap > 0.6 * step


@pytest.mark.parametrize("z", [0.0, 1.5])
def test_mf_diffuser_trains_and_is_scored_with_its_configured_shrinkage(
    game: Crowd1D, uniform_data: EpisodeArrays, z: float
) -> None:
    """`advantage_shrinkage` reaches the training weights (prepare) and the decomposition's
    tilt (`tilt_advantage`, what evaluation tilts π_β^D by) as the same shrunk Â; other
    methods tilt by the raw Â; z = 0 is the raw Â."""
    from mfdiffuser.methods.base import DataStats, Dims
    from mfdiffuser.methods.registry import get_method

    stats = DataStats.of(uniform_data, game)
    spec = get_method("mf_diffuser")
    method = spec.build(spec.params({"advantage_shrinkage": z}), Dims.of(game))
    method.prepare(stats)
    expected = stats.advantage.shrunk(z).table
    np.testing.assert_array_equal(method.advantage.table, expected)
    np.testing.assert_array_equal(method.tilt_advantage(stats.advantage).table, expected)
    assert (z == 0) == np.array_equal(expected, stats.advantage.table)
    bc = get_method("bc")
    other = bc.build(bc.params({}), Dims.of(game))
    assert other.tilt_advantage(stats.advantage) is stats.advantage
