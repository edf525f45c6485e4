"""crowd_2d: walls, x/y consistency, exact values over the true state and the N-agent simulator."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pydantic
import pytest

from mfdiffuser.envs.crowd_2d import (
    FOUR_ROOMS_MAP,
    Crowd2D,
    Crowd2DParams,
    Crowd2DSim,
    FourRoomsParams,
    four_rooms_params,
    make_crowd_2d,
    make_four_rooms,
)
from mfdiffuser.envs.finite import (
    best_response,
    exploitability,
    policy_value,
    propagate,
    sample_actions,
    uniform_policy,
)
from mfdiffuser.envs.solvers import fictitious_play

DX = (0, -1, 0, 1, 0)  # actions 0..4: -y, -x, stay, +x, +y
DY = (-1, 0, 0, 0, 1)
STAY, PLUS_X, PLUS_Y = 2, 3, 4

# 3x3 torus with one wall in the middle: (x, y) = (1, 1)
MAP_3 = "...\n.#.\n..."

MAP_5 = "\n".join(["..#..", ".....", "##.#.", ".....", "....."])


def random_policy(game: Crowd2D, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(5), size=(game.horizon, game.n_states))


def test_propagate_conserves_mass_and_never_puts_mass_on_walls() -> None:
    for game in (make_four_rooms(horizon=15), Crowd2D(walls=MAP_5, horizon=6)):
        flow = propagate(game, random_policy(game, 0))
        np.testing.assert_allclose(flow.sum(axis=1), 1.0, atol=1e-12)
        assert np.all(flow >= 0.0)
        assert np.all(flow[:, game.wall] == 0.0)  # exactly: no mass is ever routed into a wall


@pytest.mark.parametrize("walls", [MAP_5, FOUR_ROOMS_MAP, None])
def test_push_and_pull_are_adjoint(walls: str | None) -> None:
    game = Crowd2D(walls=walls, size=40) if walls is None else Crowd2D(walls=walls)
    rng = np.random.default_rng(1)
    mass = rng.random((game.n_states, 5))
    v = rng.normal(size=game.n_states)
    lhs = float(np.sum(game.push(0, game.mu0, mass) * v))
    rhs = float(np.sum(mass * game.pull(0, game.mu0, v)))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-9)
    # mass is conserved by push, and pull of a constant is that constant
    assert game.push(0, game.mu0, mass).sum() == pytest.approx(mass.sum(), rel=1e-12)
    np.testing.assert_allclose(game.pull(0, game.mu0, np.ones(game.n_states)), 1.0, atol=1e-12)


def test_hand_computed_one_step_on_a_3x3_map_with_one_wall() -> None:
    game = Crowd2D(walls=MAP_3, horizon=2)
    assert game.n_states == 9 and game.wall.tolist() == [False] * 4 + [True] + [False] * 4
    idx = game.cell_index
    # Agent at (0, 0) takes +x and lands on (1, 0). Noise from (1, 0): -y -> (1, 2) (wrap),
    # -x -> (0, 0), stay -> (1, 0), +x -> (2, 0); +y -> (1, 1) is the wall and is not drawn.
    # 4 legal outcomes, 1/4 each.
    mass = np.zeros((9, 5))
    mass[idx(0, 0), PLUS_X] = 1.0
    expected = np.zeros(9)
    expected[[idx(1, 2), idx(0, 0), idx(1, 0), idx(2, 0)]] = 0.25
    np.testing.assert_allclose(game.push(0, game.mu0, mass), expected, atol=1e-15)
    # Agent at (1, 0) takes +y into the wall: it stays at (1, 0), then the same noise.
    mass = np.zeros((9, 5))
    mass[idx(1, 0), PLUS_Y] = 1.0
    np.testing.assert_allclose(game.push(0, game.mu0, mass), expected, atol=1e-15)
    # Agent at (0, 0) takes +y to (0, 1); noise: -y -> (0, 0), -x -> (2, 1) (wrap), stay,
    # +x -> (1, 1) wall (not drawn), +y -> (0, 2): 1/4 each. Half the mass here, half as above.
    mass = np.zeros((9, 5))
    mass[idx(0, 0), PLUS_Y] = 0.5
    mass[idx(0, 0), PLUS_X] = 0.5
    expected_y = np.zeros(9)
    expected_y[[idx(0, 0), idx(2, 1), idx(0, 1), idx(0, 2)]] = 0.25
    np.testing.assert_allclose(
        game.push(0, game.mu0, mass), 0.5 * expected + 0.5 * expected_y, atol=1e-15
    )
    # noise_intensity 1/2: each of the 3 legal moves gets (1/2)/4 = 1/8, stay 1 - 1/2 + 1/8 = 5/8
    half = Crowd2D(walls=MAP_3, horizon=2, noise_intensity=0.5)
    mass = np.zeros((9, 5))
    mass[idx(0, 0), PLUS_X] = 1.0
    expected = np.zeros(9)
    expected[[idx(1, 2), idx(0, 0), idx(2, 0)]] = 1 / 8
    expected[idx(1, 0)] = 5 / 8
    np.testing.assert_allclose(half.push(0, half.mu0, mass), expected, atol=1e-15)
    # Reward at t = 0 (H = 2, so the move cost is charged), mu0 uniform on the 8 free cells,
    # centre (3 // 2, 3 // 2) = (1, 1): at (0, 0) taking +x,
    #   r_x + r_y = (1 - 2/3 * 1) + (1 - 2/3 * 1) = 2/3, cost 1/3, crowd -log(1/8) = log 8.
    r = game.reward(0, game.mu0)
    assert r[idx(0, 0), PLUS_X] == pytest.approx(2 / 3 - 1 / 3 + math.log(8), abs=1e-12)
    assert r[idx(0, 0), STAY] == pytest.approx(2 / 3 + math.log(8), abs=1e-12)
    # At the last epoch the cost is not charged (it would be paid after the game ends).
    assert game.reward(1, game.mu0)[idx(0, 0), PLUS_X] == pytest.approx(2 / 3 + math.log(8))


def test_moves_into_walls_are_blocked_and_x_y_are_not_transposed() -> None:
    # Row y = 3 of the map has a wall at x = 4; the start (x=1, y=3) is asymmetric.
    walls = "\n".join(["......", "......", "......", "....#.", "......", "......"])
    game = Crowd2D(walls=walls, horizon=5, initial=[(1, 3)], noise_intensity=0.0)
    assert game.wall[3 * 6 + 4] and game.cell_index(4, 3) == 3 * 6 + 4
    assert game.mu0[game.cell_index(1, 3)] == 1.0  # mass on row 3, column 1 of the map
    policy = np.zeros((5, 36, 5))
    policy[:, :, PLUS_X] = 1.0
    flow = propagate(game, policy)
    # +x twice: (1, 3) -> (2, 3) -> (3, 3); then (4, 3) is a wall: the agent stays at (3, 3).
    for t, x in enumerate([1, 2, 3, 3, 3]):
        assert flow[t, game.cell_index(x, 3)] == 1.0, (t, flow[t].reshape(6, 6))
    # With noise: from (3, 3) the +x noise outcome is the wall, so it is never drawn.
    noisy = Crowd2D(walls=walls, horizon=5, initial=[(1, 3)])
    flow = propagate(noisy, policy)
    assert np.all(flow[:, noisy.cell_index(4, 3)] == 0.0)
    # at t = 1 (from (2, 3), 1/5 each): (2, 2), (1, 3), (2, 3), (3, 3), (2, 4)
    expected = {(2, 2): 0.2, (1, 3): 0.2, (2, 3): 0.2, (3, 3): 0.2, (2, 4): 0.2}
    for (x, y), p in expected.items():
        assert flow[1, noisy.cell_index(x, y)] == pytest.approx(p, abs=1e-15)
    # The simulator uses the same indices: deterministic run lands on (3, 3).
    sim = Crowd2DSim(game, 7)
    states = sim.reset(0)
    assert np.all(states == game.cell_index(1, 3))
    for _ in range(4):
        states, _, _ = sim.step(np.full(7, PLUS_X))
    assert np.all(states == game.cell_index(3, 3))


def test_exploitability_of_uniform_and_fictitious_play() -> None:
    game = Crowd2D()
    expl_uniform = exploitability(game, uniform_policy(game))
    assert 5.30 < expl_uniform < 5.40  # measured 5.3548
    result = fictitious_play(game, 30)
    # measured 0.2536 after 30 iterations (0.0737 after 100): < 5% of the uniform policy's
    assert result.exploitability_curve[-1] < 0.3
    rooms = make_four_rooms()
    expl_rooms = exploitability(rooms, uniform_policy(rooms))
    assert 180.0 < expl_rooms < 182.0  # measured 180.906
    rooms_fp = fictitious_play(rooms, 25)
    # measured 6.265 after 25 iterations (1.385 after 100): < 4% of the uniform policy's
    assert rooms_fp.exploitability_curve[-1] < 7.0


def test_best_response_to_own_flow_without_crowd_aversion_is_exact_equilibrium() -> None:
    game = Crowd2D(size=6, horizon=5, crowd_aversion=0.0)
    br, br_value = best_response(game, propagate(game, uniform_policy(game)))
    assert abs(exploitability(game, br)) < 1e-9
    assert policy_value(game, br) == pytest.approx(br_value, abs=1e-12)


def test_large_grids_work() -> None:
    game = Crowd2D(size=60, horizon=4)  # 3600 states
    flow = propagate(game, random_policy(game, 2))
    np.testing.assert_allclose(flow.sum(axis=1), 1.0, atol=1e-12)
    assert exploitability(game, uniform_policy(game)) > 0.0


def _numpy_form(game: Any, dynamics: Any, policy: np.ndarray) -> float:
    """The exact exploitability of policy[T, S, A] on factored dynamics in numpy loops (the
    library's form before the compiled kernels): multiply, bincount of the masses by their
    move's target, then the spread (scipy CSR product, or numpy's dot when dense); the best
    response's backward pass; the reference the compiled passes are checked against."""
    from mfdiffuser.envs.finite import _matvec

    pol = np.ascontiguousarray(np.swapaxes(policy, -1, -2))  # pi[T, A, S]
    n_t, n_a, n_s = pol.shape
    move, move_flat, spread = dynamics._move, dynamics._move_flat, dynamics._spread
    dense = isinstance(spread, np.ndarray)
    flow, mass = np.empty((n_t, n_s)), np.empty((n_t, n_a, n_s))
    flow[0] = game.mu0
    for t in range(n_t):
        np.multiply(pol[t], flow[t], out=mass[t])
        if t < n_t - 1:
            moved = np.bincount(move_flat, mass[t].reshape(-1), minlength=n_s)
            flow[t + 1] = moved @ spread if dense else _matvec(dynamics._spread_t, moved)
    rewards = np.asarray(game.flow_rewards(flow), dtype=np.float64)  # R[T, A, S]
    value = np.multiply(mass, rewards, out=mass).sum()
    v_best = rewards[n_t - 1].max(axis=0)
    for t in reversed(range(n_t - 1)):
        after = spread @ v_best if dense else _matvec(spread, v_best)
        v_best = (np.take(after, move) + rewards[t]).max(axis=0)
    return float((v_best * game.mu0).sum() - value)


def test_compiled_exploitability_is_bit_for_bit_the_numpy_form() -> None:
    """`exploitability` on crowd_2d runs the compiled passes (kernels.py): bit for bit the numpy
    loops with a sparse spread (20x20, 32x32), to 1e-12 with a small game's dense spread
    (10x10, converted to CSR, summed in its order); and the batched numpy path agrees."""
    from mfdiffuser.envs import finite

    for size in (10, 20, 32):
        game = make_crowd_2d(size=size, horizon=6)
        dynamics = game.linear_dynamics()
        dense = isinstance(dynamics._spread, np.ndarray)
        assert dense == (size == 10)
        for seed in (0, 1):
            pol = random_policy(game, seed)
            ours, reference = exploitability(game, pol), _numpy_form(game, dynamics, pol)
            if dense:
                assert ours == pytest.approx(reference, rel=1e-12)
            else:
                assert ours == reference
            batch = finite.exploitability_batch(game, pol[None])  # the batched numpy path
            assert ours == pytest.approx(float(batch[0]), rel=1e-12)


# --- brute force over the true state (cell, previous action) with the literal reward ----------


def loop_transitions(walls: list[str], x: int, y: int, a: int, p: float) -> dict:
    """{(x', y'): prob} after the move by a and the noise, written out with loops."""
    n = len(walls)

    def step(cx: int, cy: int, k: int) -> tuple[int, int]:
        nx, ny = (cx + DX[k]) % n, (cy + DY[k]) % n
        return (cx, cy) if walls[ny][nx] == "#" else (nx, ny)

    mx, my = step(x, y, a)
    legal = [k for k in range(5) if walls[(my + DY[k]) % n][(mx + DX[k]) % n] != "#"]
    out: dict = {}
    for k in legal:
        q = p / len(legal) + (1.0 - p if k == STAY else 0.0)
        cell = ((mx + DX[k]) % n, (my + DY[k]) % n)
        out[cell] = out.get(cell, 0.0) + q
    return out


def brute_force(
    walls: list[str], horizon: int, params: dict, policy: np.ndarray, best: bool = False
) -> tuple[np.ndarray, float]:
    """(flow[T, S], value) by plain recursion over (t, x, y, a_prev) with the literal r_t."""
    n = len(walls)
    p = params.get("noise_intensity", 1.0)
    aversion = params.get("crowd_aversion", 1.0)
    free = [(x, y) for y in range(n) for x in range(n) if walls[y][x] != "#"]
    flow = np.zeros((horizon, n * n))
    for x, y in free:
        flow[0, y * n + x] = 1.0 / len(free)
    for t in range(horizon - 1):
        for x, y in free:
            for a in range(5):
                for (nx, ny), q in loop_transitions(walls, x, y, a, p).items():
                    flow[t + 1, ny * n + nx] += flow[t, y * n + x] * policy[t, y * n + x, a] * q
    targets = params.get("positional_reward") or [(n // 2, n // 2)]
    weights = params.get("positional_reward_value") or [1.0]

    def literal(t: int, x: int, y: int, a_prev: int) -> float:
        crowd = -aversion * math.log(flow[t, y * n + x] + 1e-25)
        if params.get("only_distribution_reward", False):
            return crowd
        r_x = 1.0 - sum(
            2 * w / n * abs(x - tx) for (tx, _), w in zip(targets, weights, strict=True)
        )
        r_y = 1.0 - sum(
            2 * w / n * abs(y - ty) for (_, ty), w in zip(targets, weights, strict=True)
        )
        return r_x + r_y - (abs(DX[a_prev]) + abs(DY[a_prev])) / n + crowd

    @functools.cache  # keyed on the whole true state (t, x, y, a_prev): exact
    def v(t: int, x: int, y: int, a_prev: int) -> float:
        if t == horizon:
            return 0.0
        q = [
            sum(
                pr * v(t + 1, nx, ny, a)
                for (nx, ny), pr in loop_transitions(walls, x, y, a, p).items()
            )
            for a in range(5)
        ]
        future = max(q) if best else sum(policy[t, y * n + x, a] * q[a] for a in range(5))
        return literal(t, x, y, a_prev) + future

    value = sum(flow[0, y * n + x] * v(0, x, y, STAY) for x, y in free)
    return flow, value


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"crowd_aversion": 0.3, "noise_intensity": 0.6},
        {"positional_reward": [(0, 2), (2, 0)], "positional_reward_value": [0.5, 2.0]},
        {"only_distribution_reward": True},
    ],
)
def test_values_equal_brute_force_over_the_true_state(params: dict) -> None:
    walls, horizon = MAP_3.split("\n"), 3
    game = Crowd2D(walls=MAP_3, horizon=horizon, **params)
    rng = np.random.default_rng(3)
    policies = [rng.dirichlet(np.ones(5), size=(horizon, 9)) for _ in range(3)]
    policies.append(np.eye(5)[rng.integers(0, 5, size=(horizon, 9))])  # deterministic
    for policy in policies:
        flow, expected = brute_force(walls, horizon, params, policy)
        np.testing.assert_allclose(propagate(game, policy), flow, atol=1e-14)
        assert policy_value(game, policy) == pytest.approx(expected, abs=1e-10)
        _, br_value = best_response(game, propagate(game, policy))
        _, expected_best = brute_force(walls, horizon, params, policy, best=True)
        assert br_value == pytest.approx(expected_best, abs=1e-10)


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"size": 1}, "size"),
        ({"horizon": 0}, "horizon"),
        ({"crowd_aversion": -1.0}, "crowd_aversion"),
        ({"noise_intensity": 1.5}, "noise_intensity"),
        ({"walls": "##\n##"}, "walls"),  # no free cell
        ({"walls": "...\n..\n..."}, "walls"),  # ragged rows
        ({"walls": "...\n..."}, "walls"),  # not square
        ({"walls": "..\n.x"}, "walls"),  # unknown character
        ({"walls": MAP_3, "initial": [(1, 1)]}, "initial"),  # start in a wall
        ({"initial": [(10, 0)]}, "initial"),  # off the map
        ({"initial": [(0, 0)], "initial_weights": [1.0, 2.0]}, "initial_weights"),
        ({"positional_reward": [(1, 1)]}, "positional_reward_value"),
        ({"walls": MAP_3, "size": 4}, "size"),
        ({"grid_size": 5}, "grid_size"),
    ],
)
def test_bad_parameters_raise_validation_errors_naming_the_field(params: dict, field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        Crowd2DParams(**params)
    with pytest.raises(pydantic.ValidationError, match=field):
        make_crowd_2d(**params)


def test_map_sets_the_size_and_four_rooms_preset() -> None:
    params = Crowd2DParams(**four_rooms_params())
    assert params.size == 13 and params.horizon == 40
    assert Crowd2DParams(**params.model_dump()) == params  # a dump round-trips
    assert (
        FourRoomsParams().model_dump() == params.model_dump()
    )  # the same setting as a params model with its defaults
    assert FourRoomsParams(horizon=12).horizon == 12
    rooms = make_four_rooms()
    assert rooms.n_states == 169 and rooms.mu0[rooms.cell_index(1, 1)] == 1.0
    assert int(rooms.wall.sum()) == FOUR_ROOMS_MAP.count("#")
    np.testing.assert_array_equal(rooms.move_cost, 0.0)
    np.testing.assert_array_equal(rooms.position_reward, 0.0)
    # a map with spaces for free cells (OpenSpiel's notation) and surrounding blank lines
    spaced = Crowd2D(walls="\n" + FOUR_ROOMS_MAP.replace(".", " ") + "\n")
    np.testing.assert_array_equal(spaced.wall, rooms.wall)
    weighted = Crowd2D(initial=[(0, 0), (3, 1)], initial_weights=[1.0, 3.0])
    assert weighted.mu0[weighted.cell_index(3, 1)] == pytest.approx(0.75)


# --- simulator --------------------------------------------------------------------------------


def run_episode(
    game: Crowd2D, policy: np.ndarray, n_agents: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    sim = Crowd2DSim(game, n_agents)
    rng = np.random.default_rng(seed + 1_000)
    states = sim.reset(seed)
    all_states, all_actions, all_rewards = [], [], []
    done = False
    while not done:
        actions = sample_actions(policy[sim.t], states, rng)
        all_states.append(states)
        all_actions.append(actions)
        states, rewards, done = sim.step(actions)
        all_rewards.append(rewards)
    assert sim.t == game.horizon
    return all_states, all_actions, all_rewards


def test_simulator_rewards_are_literal_and_walls_are_never_entered() -> None:
    game = Crowd2D(walls=MAP_5, horizon=4, crowd_aversion=0.7)
    policy = random_policy(game, 4)
    states, actions, rewards = run_episode(game, policy, n_agents=300, seed=5)
    n = 5
    for t in range(game.horizon):
        assert not np.any(game.wall[states[t]])
        hist = np.bincount(states[t], minlength=25) / 300
        for i in range(0, 300, 7):
            s = int(states[t][i])
            x, y = s % n, s // n
            a_prev = STAY if t == 0 else int(actions[t - 1][i])
            literal = (
                (1 - 2 / n * abs(x - 2))
                + (1 - 2 / n * abs(y - 2))
                - (abs(DX[a_prev]) + abs(DY[a_prev])) / n
                - 0.7 * math.log(hist[s] + 1e-25)
            )
            assert rewards[t][i] == pytest.approx(literal, abs=1e-12)
        if t + 1 < game.horizon:  # each step lands on a cell the loop transition allows
            for i in range(0, 300, 7):
                s = int(states[t][i])
                allowed = loop_transitions(
                    MAP_5.split("\n"), s % n, s // n, int(actions[t][i]), 1.0
                )
                nxt = int(states[t + 1][i])
                assert (nxt % n, nxt // n) in allowed


def test_simulator_is_deterministic_under_a_seed() -> None:
    game = Crowd2D(walls=MAP_5, horizon=5)
    policy = uniform_policy(game)
    first = run_episode(game, policy, 1_000, seed=3)
    second = run_episode(game, policy, 1_000, seed=3)
    other = run_episode(game, policy, 1_000, seed=4)
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert any(np.any(x != y) for x, y in zip(first[0], other[0], strict=True))


def test_simulator_lifecycle_errors() -> None:
    sim = Crowd2DSim(Crowd2D(size=3, horizon=1), 10)
    with pytest.raises(RuntimeError, match="reset"):
        sim.step(np.full(10, STAY))
    sim.reset(0)
    with pytest.raises(ValueError, match="actions"):
        sim.step(np.full(10, 5))
    _, _, done = sim.step(np.full(10, STAY))
    assert done
    with pytest.raises(RuntimeError, match="done"):
        sim.step(np.full(10, STAY))
    with pytest.raises(ValueError, match="n_agents"):
        Crowd2DSim(Crowd2D(), 0)


def test_monte_carlo_return_matches_exact_value() -> None:
    game = make_four_rooms(horizon=10)
    policy = random_policy(game, 6)
    _, _, rewards = run_episode(game, policy, 200_000, seed=6)
    mc_return = float(np.sum(rewards, axis=0).mean())
    assert mc_return == pytest.approx(policy_value(game, policy), abs=0.03)


def test_empirical_histogram_error_shrinks_like_one_over_sqrt_n() -> None:
    game = Crowd2D(walls=MAP_5, horizon=6)
    policy = random_policy(game, 7)
    exact = propagate(game, policy)  # the dynamics do not depend on mu: the N -> inf flow
    mean_l1 = []
    for n_agents in (1_000, 10_000, 100_000):
        errors = []
        for seed in range(4):
            states, _, _ = run_episode(game, policy, n_agents, seed)
            hist = np.array([np.bincount(s, minlength=25) / n_agents for s in states])
            errors.append(np.abs(hist - exact).sum(axis=1).mean())
        mean_l1.append(float(np.mean(errors)))
    ratios = [mean_l1[0] / mean_l1[1], mean_l1[1] / mean_l1[2]]
    assert all(2.0 < r < 5.0 for r in ratios), (mean_l1, ratios)  # sqrt(10) = 3.16
