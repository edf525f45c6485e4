"""battle (docs/benchmarks.md): hand-computed steps, observations, parameters, policies, rows."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from mfdiffuser import api
from mfdiffuser.data.schema import TEAM_ROW_SCHEMA
from mfdiffuser.envs.battle import (
    ATTACKS,
    MOVES,
    N_ACTIONS,
    N_MOVES,
    STAY,
    BattleParams,
    BattleSim,
    battle_stats,
    expert_actions,
    map_for_team,
    team_capacity,
)
from mfdiffuser.envs.battle import generate_shard as generate_battle_shard
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.envs.team import team_outcomes as battle_outcomes
from mfdiffuser.platform.config import ConfigError

STEP, PENALTY, HIT, KILL, DEATH = -0.005, -0.1, 0.2, 5.0, -0.1


def move(dx: int, dy: int) -> int:
    return int(np.flatnonzero((MOVES == (dx, dy)).all(axis=1))[0])


def attack(dx: int, dy: int) -> int:
    return N_MOVES + int(np.flatnonzero((ATTACKS == (dx, dy)).all(axis=1))[0])


def sim_with(n: int, map_size: int = 16) -> BattleSim:
    return BattleSim(BattleParams(map_size=map_size, agents_per_team=n, max_steps=50))


def test_action_set_is_magents() -> None:
    assert N_ACTIONS == 21 and len(MOVES) == 13 and len(ATTACKS) == 8
    assert ((MOVES**2).sum(axis=1) <= 4).all() and len({tuple(m) for m in MOVES}) == 13
    assert tuple(MOVES[STAY]) == (0, 0) and STAY == 6
    assert (np.abs(ATTACKS).max(axis=1) == 1).all()


@pytest.mark.parametrize(("map_size", "team"), [(40, 64), (160, 1024), (320, 4096)])
def test_team_sizes_follow_magent(map_size: int, team: int) -> None:
    sim = BattleSim(BattleParams(map_size=map_size, observations=False))
    assert sim.n_team == team and sim.n_agents == 2 * team
    assert map_for_team(team) == map_size
    # MAgent's layout: two blocks two cells apart, left and right of the centre, inside walls
    x, y = sim.x, sim.y
    assert (x[:team] < map_size // 2).all() and (x[team:] > map_size // 2).all()
    assert x.min() >= 1 and x.max() <= map_size - 2 and y.min() >= 1 and y.max() <= map_size - 2
    assert len(np.unique(sim.cells())) == 2 * team


def test_two_movers_to_one_cell_exactly_one_wins_and_both_can() -> None:
    winners = set()
    for seed in range(20):
        sim = sim_with(1)
        sim.reset(seed)
        sim.place([5, 7], [5, 5])  # the target (6, 5) is between them
        _, rew, _ = sim.step(np.array([move(1, 0), move(-1, 0)]))
        moved = (sim.x == 6) & (sim.y == 5)
        assert moved.sum() == 1
        winners.add(int(np.flatnonzero(moved)[0]))
        np.testing.assert_allclose(rew, [STEP, STEP])
    assert winners == {0, 1}  # random priority, not index order


def test_moves_into_walls_or_occupied_cells_fail_and_jumps_skip_paths() -> None:
    sim = sim_with(2)
    # agent 0 at (1, 5) jumps 2 left into the wall; agent 1 at (5, 5) moves onto agent 2 at
    # (6, 5), which moves away in the same step (occupied at the start: still fails); agent 3 at
    # (10, 5) jumps over agent 2's path to (10, 7) (no path check)
    sim.place([1, 5, 6, 10], [5, 5, 5, 5])
    sim.step(np.array([move(-2, 0), move(1, 0), move(0, -1), move(0, 2)]))
    assert list(zip(sim.x, sim.y, strict=True)) == [(1, 5), (5, 5), (6, 4), (10, 7)]
    assert (sim.occ[sim.pos] == np.arange(4)).all() and (sim.occ >= 0).sum() == 4


def test_attack_damage_recovery_and_rewards() -> None:
    sim = sim_with(1)
    sim.place([5, 6], [5, 5])
    _, rew, done = sim.step(np.array([attack(1, 0), STAY]))
    assert sim.hp[1] == pytest.approx(10 - 2 + 0.1)  # damage, then recovery
    assert sim.hp[0] == pytest.approx(10)  # capped
    np.testing.assert_allclose(rew, [STEP + PENALTY + HIT, STEP])
    assert not done and sim.kills.tolist() == [0, 0]
    # recovery is capped at 10
    sim.place([5, 6], [5, 5], hp=[9.95, 10])
    sim.step(np.array([STAY, STAY]))
    assert sim.hp[0] == pytest.approx(10)


def test_death_at_the_sixth_hit_with_kill_and_death_rewards() -> None:
    sim = sim_with(1)
    sim.place([5, 6], [5, 5])
    acts = np.array([attack(1, 0), STAY])
    for k in range(5):
        _, rew, done = sim.step(acts)
        assert sim.alive[1] and not done
        assert sim.hp[1] == pytest.approx(10 - 1.9 * (k + 1))  # 8.1, 6.2, 4.3, 2.4, 0.5
    _, rew, done = sim.step(acts)
    assert not sim.alive[1] and sim.hp[1] == pytest.approx(0.5 - 2) and done
    np.testing.assert_allclose(rew, [STEP + PENALTY + HIT + KILL, STEP + DEATH])
    assert sim.kills.tolist() == [1, 0] and sim.winner() == 0
    assert sim.occ[sim.pos[1]] == -1  # the dead leave the map
    # the dead no longer act, count or receive rewards
    _, rew, _ = sim.step(np.array([STAY, attack(-1, 0)]))
    assert rew[1] == 0.0 and sim.hp[0] == pytest.approx(10)


def test_simultaneous_hits_one_kill_and_hits_on_the_corpse_earn_nothing() -> None:
    sim = sim_with(8)
    # team 1's agent 8 at (6, 6), team 0's agents 0..6 on 7 of its neighbours
    ring = [(dx, dy) for dx, dy in ATTACKS.tolist()][:7]
    x = [6 + dx for dx, _ in ring] + [2] + [6] + [13] * 7
    y = [6 + dy for _, dy in ring] + [13] + [6] + list(range(1, 14, 2))[:7]
    sim.place(x, y)
    acts = np.full(16, STAY)
    acts[:7] = [attack(-dx, -dy) for dx, dy in ring]
    _, rew, _ = sim.step(acts)
    assert not sim.alive[8] and sim.kills.tolist() == [1, 0]
    gain = rew[:7] - STEP - PENALTY
    # hp 10: hits 1..5 leave 0 (alive), the 6th kills, the 7th lands on a corpse
    assert np.isclose(gain, HIT).sum() == 5
    assert np.isclose(gain, HIT + KILL).sum() == 1
    assert np.isclose(gain, 0.0).sum() == 1
    assert rew[8] == pytest.approx(STEP + DEATH)


def test_attacks_on_empty_wall_or_own_cells_cost_only_the_penalty() -> None:
    sim = sim_with(2)
    sim.place([1, 2, 8, 10], [1, 1, 8, 8])
    # agent 0 hits the wall, agent 1 its teammate, agent 2 an empty cell
    _, rew, _ = sim.step(np.array([attack(-1, 0), attack(-1, 0), attack(1, 1), STAY]))
    np.testing.assert_allclose(rew, [STEP + PENALTY] * 3 + [STEP])
    np.testing.assert_allclose(sim.hp, 10.0)


def test_observation_channels_orientation_and_walls() -> None:
    sim = sim_with(1)
    sim.place([1, 3], [1, 2], hp=[10, 5])
    obs = sim.observations()
    assert obs.shape == (2, 13, 13, 5) and obs.dtype == np.float32
    o = obs[0]  # agent 0 at (1, 1): row r, column c is cell (y + r - 6, x + c - 6)
    assert o[6, 6].tolist() == [0, 1, 1, 0, 0]  # itself: own presence, own hp 10/10
    assert o[6, 5, 0] == 1 and o[5, 6, 0] == 1 and o[0, 0, 0] == 1  # walls x = 0, y = 0, off-map
    assert o[7, 7, 0] == 0 and o[6:, 6:, 0].sum() == 0  # inside is free of walls
    assert o[7, 8].tolist() == [0, 0, 0, 1, 0.5]  # the enemy at (3, 2): dy = 1, dx = 2
    assert o[:, :, 1].sum() == 1 and o[:, :, 3].sum() == 1
    p = obs[1]  # the enemy's own view: channels swapped, agent 0 at dy = -1, dx = -2
    assert p[6, 6].tolist() == [0, 1, 0.5, 0, 0]
    assert p[5, 4].tolist() == [0, 0, 0, 1, 1]
    # the east and south walls (x = y = 15 on a 16 map) seen from (14, 14)
    sim.place([1, 14], [1, 14])
    q = sim.observations([1])[0]
    assert q[6, 7, 0] == 1 and q[7, 6, 0] == 1 and q[6, 6, 0] == 0 and q[5, 5, 0] == 0
    r, c = np.meshgrid(np.arange(13), np.arange(13), indexing="ij")
    np.testing.assert_array_equal(q[:, :, 0], (r >= 7) | (c >= 7))  # the wall and beyond


def test_mean_field_counts_living_agents_per_coarse_cell() -> None:
    sim = sim_with(2)
    sim.place([1, 14, 14, 8], [1, 1, 14, 8], hp=[10, 10, 10, -1])
    mf = sim.mean_field()  # 8x8 coarse cells of 2x2 on a 16 map; 1/team size per agent
    assert mf.shape == (2, 8, 8)
    assert mf[0, 0, 0] == 0.5 and mf[0, 0, 7] == 0.5 and mf[1, 7, 7] == 0.5
    assert mf.sum() == pytest.approx(1.5)  # the dead agent does not count


def test_states_are_normalised_and_follow_moves() -> None:
    sim = sim_with(1)
    sim.place([5, 10], [5, 10], hp=[10, 4])
    states, _, _ = sim.step(np.array([move(2, 0), move(0, 1)]))
    np.testing.assert_allclose(states, [[7 / 15, 5 / 15, 1.0], [10 / 15, 11 / 15, 0.41]], 1e-6)


def test_bad_parameters_name_the_field_and_range() -> None:
    with pytest.raises(ValidationError, match="map_size"):
        BattleParams(map_size=8)
    with pytest.raises(ValidationError, match=r"agents_per_team = 100: team larger .* 1\.\.27"):
        BattleParams(map_size=20, agents_per_team=100)
    with pytest.raises(ValidationError, match="view_range = 12"):
        BattleParams(view_range=12)
    with pytest.raises(ValidationError, match="horizon"):  # no alias: max_steps is the cap
        BattleParams(horizon=5)
    with pytest.raises(ValidationError, match="opponent"):
        BattleParams(opponent="tit-for-tat")
    assert BattleParams(**BattleParams(max_steps=7).model_dump()).max_steps == 7  # round trip
    assert team_capacity(20) == 27
    sim = sim_with(1)
    with pytest.raises(ValueError, match=r"0\.\.20"):
        sim.step(np.array([0, 21]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        sim.step(np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="observations = False"):
        BattleSim(BattleParams(map_size=16, observations=False)).observations()
    with pytest.raises(ValueError, match="agents_per_team is set to 5"):
        BattleParams(agents_per_team=5).with_team_size(6)
    assert BattleParams().with_team_size(1024).map_size == 160


def test_no_exact_model_in_the_registry_and_solve_reports_simulated_figures() -> None:
    spec = get_benchmark("battle")
    assert spec.family == "team" and not spec.exact_model
    with pytest.raises(ValueError, match="battle has no exact mean-field model"):
        spec.game()
    with pytest.raises(ConfigError, match="allowed: uniform, expert"):
        api.solve("battle", algorithm="fp")
    out = api.solve("battle", {"map_size": 16, "max_steps": 30}, "expert", episodes=2)
    assert out["exploitability"] is None and out["episodes"] == 2
    assert {"return", "return_std", "win_rate", "draw_rate", "kill_ratio"} <= set(out)
    assert out["agents_per_team"] == 10 and out["benchmark"]["params"]["max_steps"] == 30


def test_same_seed_same_episode_other_seed_other_episode() -> None:
    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        sim = BattleSim(BattleParams(map_size=24, max_steps=30))
        sim.reset(seed)
        rng = np.random.default_rng(seed)
        total = np.zeros(sim.n_agents)
        for _ in range(30):
            acts = rng.integers(0, N_ACTIONS, sim.n_agents)
            acts[sim.n_team :] = expert_actions(sim, np.arange(sim.n_team, sim.n_agents), rng)
            total += sim.step(acts)[1]
        return total, sim.cells()

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_expert_attacks_adjacent_enemies_and_approaches_far_ones() -> None:
    sim = sim_with(2)
    sim.place([5, 12, 6, 2], [5, 12, 5, 12])
    rng = np.random.default_rng(0)
    acts = expert_actions(sim, np.arange(4), rng)
    assert acts[0] == attack(1, 0) and acts[2] == attack(-1, 0)
    # agent 1 at (12, 12): the nearest enemy is at (6, 5); a 2-cell move toward it
    dx, dy = MOVES[acts[1]]
    assert (12 + dx - 6) ** 2 + (12 + dy - 5) ** 2 < 6**2 + 7**2 - 8
    # agent 3 at (2, 12) walks toward agent 0's block
    dx, dy = MOVES[acts[3]]
    assert dy < 0


def test_expert_beats_random_and_random_loses() -> None:
    params = {"map_size": 40, "max_steps": 60, "opponent": "random"}
    expert = battle_stats(params, "expert", 3)
    assert expert["win_rate"] == 1.0 and expert["kill_ratio"] > 5
    random = battle_stats({**params, "opponent": "expert"}, "random", 2)
    assert random["win_rate"] == 0.0 and random["return"] < expert["return"]
    with pytest.raises(ValueError, match="quality = 'best'"):
        battle_stats(params, "best", 1)


def test_battle_rows_and_outcomes_agree() -> None:
    params = BattleParams(map_size=20, max_steps=25)
    table, outcomes = generate_battle_shard(params, "mixed", range(3), seed=1)
    assert table.schema.equals(TEAM_ROW_SCHEMA)
    assert outcomes == pytest.approx(battle_outcomes(table, params.team_size), rel=1e-6)
    assert outcomes["episodes"] == 3
    ep = table["episode"].to_numpy()
    t, team = table["t"].to_numpy(), table["team"].to_numpy()
    # every agent has one row per step until (and including) the step it dies
    for e in range(3):
        rows = ep == e
        steps = t[rows].max() + 1
        first = rows & (t == 0)
        assert first.sum() == 2 * params.team_size and steps <= 25
        assert (np.bincount(team[rows & (t == steps - 1)], minlength=2) >= 0).all()
    dies = table["dies"].to_numpy()
    agents = table["agent"].to_numpy()
    for e in range(3):
        died = agents[(ep == e) & dies]
        assert len(np.unique(died)) == len(died)
        last = {a: t[(ep == e) & (agents == a)].max() for a in died}
        assert all(t[(ep == e) & dies & (agents == a)][0] == last[a] for a in died)
    assert outcomes["kills0"] + outcomes["kills1"] == dies.sum()


@pytest.mark.parametrize("quality", ["random", "medium", "expert", "mixed", "medium-expert"])
def test_every_quality_generates_rows_deterministically(quality: str) -> None:
    params = BattleParams(map_size=20, max_steps=15)
    table, outcomes = generate_battle_shard(params, quality, range(2), seed=3)
    again, _ = generate_battle_shard(params, quality, range(2), seed=3)
    assert table.schema.equals(TEAM_ROW_SCHEMA) and table.equals(again)
    assert outcomes["episodes"] == 2
    assert set(np.unique(table["episode"].to_numpy())) == {0, 1}
    # both teams start with every agent alive, one row each at t = 0 per episode
    first = table.filter(pc.equal(table["t"], 0))
    assert first.num_rows == 2 * 2 * params.team_size


def test_return_rises_with_quality_against_the_expert() -> None:
    params = {"map_size": 40, "max_steps": 80}
    ret = {q: battle_stats(params, q, 2)["return"] for q in ("random", "medium", "expert")}
    assert ret["random"] < ret["medium"] < ret["expert"]


def slow_view(sim: BattleSim, i: int) -> np.ndarray:
    """Agent i's view cell by cell from the rules (docs/battle.md): off-map and border = wall."""
    m, r = sim.map_size, sim.radius
    out = np.zeros((2 * r + 1, 2 * r + 1, 5), dtype=np.float32)
    x, y = sim.x, sim.y
    for row in range(2 * r + 1):
        for col in range(2 * r + 1):
            cx, cy = x[i] + col - r, y[i] + row - r
            if not (1 <= cx <= m - 2 and 1 <= cy <= m - 2):
                out[row, col, 0] = 1.0
                continue
            for j in np.flatnonzero(sim.alive & (x == cx) & (y == cy)):
                ch = 1 if sim.team[j] == sim.team[i] else 3
                out[row, col, ch] = 1.0
                out[row, col, ch + 1] = np.float32(sim.hp[j] / 10.0)
    return out


@pytest.mark.parametrize(("map_size", "n", "view"), [(16, 6, 13), (24, None, 13), (20, 12, 5)])
def test_fused_engine_matches_the_numpy_engine_and_a_slow_view_every_step(
    map_size: int, n: int | None, view: int
) -> None:
    """The fused kernels against the numpy engine they replaced (tests/unit/battle_numpy.py):
    the same seed and actions give bit-identical states, rewards, hp, cells, kills, observations
    and generator state at every step; the views also match a cell-by-cell reference."""
    from battle_numpy import NumpyBattleSim

    params = BattleParams(map_size=map_size, agents_per_team=n, max_steps=80, view_range=view)
    ours, ref = BattleSim(params), NumpyBattleSim(params)
    for seed in (0, 5):
        assert np.array_equal(ours.reset(seed), ref.reset(seed))
        rng = np.random.default_rng([seed, 9])
        done, t = False, 0
        while not done:
            acts = rng.integers(0, N_ACTIONS, ours.n_agents, dtype=np.int32 if t % 2 else np.int64)
            if t % 3:  # scripted attackers: many simultaneous hits and kills
                team1 = np.arange(ours.n_team, ours.n_agents)
                acts[ours.n_team :] = expert_actions(ref, team1, rng)
            live = np.flatnonzero(ours.alive)
            obs = ours.observations(live)
            assert np.array_equal(obs, ref.observations(live))
            assert np.array_equal(ours.observations(), ref.observations())
            if t % 10 == 0:
                for q, i in enumerate(live[:6]):
                    np.testing.assert_array_equal(obs[q], slow_view(ours, i))
            (s1, r1, done), (s2, r2, d2) = ours.step(acts), ref.step(acts)
            assert done == d2 and np.array_equal(s1, s2)
            assert np.array_equal(r1.view(np.int64), r2.view(np.int64))  # bit for bit
            assert np.array_equal(ours.hp.view(np.int64), ref.hp.view(np.int64))
            assert np.array_equal(ours.alive, ref.alive)
            assert np.array_equal(ours.cells(), ref.cells())
            assert ours.kills.tolist() == ref.kills.tolist()
            assert (
                ours.n_alive.tolist()
                == ref.n_alive.tolist()
                == [
                    int(ours.alive[: ours.n_team].sum()),
                    int(ours.alive[ours.n_team :].sum()),
                ]
            )
            assert ours.rng.bit_generator.state == ref.rng.bit_generator.state
            # agents conserved: every living agent holds its own cell, nothing else is on the map
            assert (ours.occ[ours.pos[ours.alive]] == np.flatnonzero(ours.alive)).all()
            assert (ours.occ >= 0).sum() == ours.alive.sum()
            t += 1
        assert t > 10


def test_observations_into_a_reused_buffer_and_bad_arguments() -> None:
    sim = sim_with(3)
    fresh = sim.observations([0, 4, -1])
    buf = np.full((3, 13, 13, 5), np.nan, dtype=np.float32)
    assert sim.observations([0, 4, 5], out=buf) is buf
    np.testing.assert_array_equal(buf, fresh)
    with pytest.raises(ValueError, match=r"shape \(2, 13, 13, 5\)"):
        sim.observations([0, 1], out=buf)
    with pytest.raises(ValueError, match="float32"):
        sim.observations([0, 1, 2], out=buf.astype(np.float64))
    with pytest.raises(IndexError, match=r"0\.\.5"):
        sim.observations([6])
    with pytest.raises(IndexError, match=r"0\.\.5"):
        sim.observations([-7])
    with pytest.raises(ValueError, match=r"0\.\.20"):  # unsigned and negative values, any width
        sim.step(np.array([0, 0, 0, 0, 0, 2**63], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"0\.\.20"):
        sim.step(np.array([0, 0, 0, 0, 0, -1], dtype=np.int8))
    with pytest.raises(ValueError, match=r"0\.\.20"):
        sim.step(np.zeros(6, dtype=float))
    # a rejected step changed nothing and drew nothing
    state = sim.rng.bit_generator.state
    before = (sim.pos.copy(), sim.hp.copy(), sim.t)
    with pytest.raises(ValueError, match=r"0\.\.20"):
        sim.step(np.array([13, 13, 13, 13, 13, 99]))
    assert sim.rng.bit_generator.state == state and sim.t == before[2]
    assert np.array_equal(sim.pos, before[0]) and np.array_equal(sim.hp, before[1])
    sim.step(np.arange(6, dtype=np.uint8))  # other integer widths are accepted
    sim.step(np.arange(12, dtype=np.int64)[::2])  # and strided arrays


def test_kernel_constants_are_the_engines() -> None:
    from mfdiffuser.envs import battle, battle_kernels

    for name in ("FREE", "WALL", "N_MOVES", "N_ACTIONS", "MAX_HP", "RECOVER", "DAMAGE"):
        assert getattr(battle_kernels, name) == getattr(battle, name), name
    for name in ("STEP_REWARD", "ATTACK_PENALTY", "HIT_REWARD", "KILL_REWARD", "DEATH_PENALTY"):
        assert getattr(battle_kernels, name) == getattr(battle, name), name
