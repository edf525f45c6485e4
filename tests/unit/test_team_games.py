"""Team games through the capabilities of the registry: windows, training, acting, opponents.

`tag`, a second simulator-only team benchmark defined here (its own params, simulator and one
registry entry, as a new benchmark would be), runs the Ray-free generate -> windows -> train ->
act path with no layer asking for its name; battle's windows, its planner at two team sizes, a
checkpoint opponent and a small planner learning to beat `random` are checked on battle itself.
"""

from __future__ import annotations

import ast
import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

import mfdiffuser
from mfdiffuser.data.manifest import Manifest, dataset_id, dataset_spec, write_manifest
from mfdiffuser.data.schema import SCHEMA_VERSION
from mfdiffuser.data.team_windows import TeamWindowSampler, team_episodes_from_table
from mfdiffuser.data.windows import load_episodes
from mfdiffuser.envs.battle import BattleParams, BattleSim
from mfdiffuser.envs.registry import BENCHMARKS, BenchmarkSpec, Simulator, get_benchmark
from mfdiffuser.envs.team import TeamLayout, generate_team_shard, team_outcomes, team_summary
from mfdiffuser.evaluation.team import team_scores
from mfdiffuser.methods import team
from mfdiffuser.methods.checkpoint import save_checkpoint
from mfdiffuser.methods.registry import get_method
from mfdiffuser.workers.datagen import write_shard

torch.set_num_threads(1)

# ------------------------------------------------------------------ tag: a second team game
TAG_MOVES = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)])  # stay, left, right, up, down
TAG = 5  # tag an adjacent enemy (4-neighbourhood): it is out


class TagParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    map_size: int = Field(default=8, ge=4, le=64)
    agents_per_team: int = Field(default=3, ge=1, le=60)
    max_steps: int = Field(default=10, ge=1, le=1000)

    def with_team_size(self, n: int) -> TagParams:
        if n > self.map_size - 2:
            raise ValueError(f"n_agents = {n}: tag holds 1..{self.map_size - 2} per team")
        return self.model_copy(update={"agents_per_team": n})


class TagSim:
    """Two columns of agents facing each other; moves to free cells, tags, +1 per tag."""

    def __init__(self, p: TagParams) -> None:
        self.p, self.n_team, self.n_agents = p, p.agents_per_team, 2 * p.agents_per_team
        self.team = np.repeat(np.arange(2), self.n_team)

    def reset(self, seed: int) -> np.ndarray:
        m, n = self.p.map_size, self.n_team
        self.rng = np.random.default_rng(seed)
        self.xy = np.stack([np.r_[[1] * n, [m - 2] * n], np.r_[1 : n + 1, 1 : n + 1]], axis=1)
        self.alive = np.ones(self.n_agents, dtype=bool)
        self.kills, self.t = np.zeros(2, dtype=np.int64), 0
        return self.agent_states()

    def cells(self) -> np.ndarray:
        return self.xy[:, 1] * self.p.map_size + self.xy[:, 0]

    def agent_states(self) -> np.ndarray:
        hp = self.alive.astype(np.float32)
        return np.c_[self.xy / (self.p.map_size - 1), hp].astype(np.float32)

    def mean_field(self) -> np.ndarray:
        g, m = 2, self.p.map_size
        idx = self.team * g * g + (self.xy[:, 1] * g // m) * g + self.xy[:, 0] * g // m
        return (np.bincount(idx[self.alive], minlength=2 * g * g) / self.n_team).reshape(2, g, g)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        rewards = np.zeros(self.n_agents)
        start = self.alive.copy()
        for i in np.flatnonzero(start & (actions == TAG)):
            d = np.abs(self.xy - self.xy[i]).sum(axis=1)
            prey = np.flatnonzero(self.alive & (self.team != self.team[i]) & (d == 1))
            if len(prey):
                self.alive[prey[0]] = False
                rewards[i] += 1.0
                rewards[prey[0]] -= 1.0
                self.kills[self.team[i]] += 1
        for i in self.rng.permutation(np.flatnonzero(self.alive & (actions < TAG))):
            to = np.clip(self.xy[i] + TAG_MOVES[actions[i]], 0, self.p.map_size - 1)
            if not (self.alive & (self.xy == to).all(axis=1)).any():
                self.xy[i] = to
        self.t += 1
        done = self.t >= self.p.max_steps or not self.alive[: self.n_team].any()
        return self.agent_states(), rewards, done or not self.alive[self.n_team :].any()

    def winner(self) -> int:
        return -1 if self.kills[0] == self.kills[1] else int(np.argmax(self.kills))


def _tag_chase(sim: TagSim, agents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tag when an enemy is adjacent, else step toward the nearest one."""
    out = np.zeros(len(agents), dtype=np.int64)
    for k, i in enumerate(agents):
        enemies = np.flatnonzero(sim.alive & (sim.team != sim.team[i]))
        if not sim.alive[i] or not len(enemies):
            continue
        d = sim.xy[enemies] - sim.xy[i]
        near = d[np.abs(d).sum(axis=1).argmin()]
        if np.abs(near).sum() == 1:
            out[k] = TAG
        else:
            axis = int(np.abs(near[1]) > np.abs(near[0]))
            out[k] = (1 + axis * 2) + int(near[axis] > 0)
    return out


def _tag_random(sim: TagSim, agents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, TAG + 1, size=len(agents))


TAG_SCRIPTED = {"expert": _tag_chase, "random": _tag_random}


def _tag_play(sim: TagSim, episode: int, seed: int) -> dict[str, Any]:
    sim.reset(seed)
    rng = np.random.default_rng(seed)
    rec: dict[str, list[np.ndarray]] = {k: [] for k in ("cells", "hp", "alive", "actions")}
    rec["rewards"] = []
    returns, done = np.zeros(sim.n_agents), False
    while not done:
        n = sim.n_team
        acts = np.r_[_tag_chase(sim, np.arange(n), rng), _tag_random(sim, np.arange(n, 2 * n), rng)]
        rec["cells"].append(sim.cells())
        rec["hp"].append(sim.alive.astype(np.float64))
        rec["alive"].append(sim.alive.copy())
        rec["actions"].append(acts)
        _, rew, done = sim.step(acts)
        rec["rewards"].append(rew)
        returns += rew
    out: dict[str, Any] = {k: np.stack(v) for k, v in rec.items()}
    out["alive_end"] = np.concatenate([out["alive"][1:], sim.alive[None]])
    return {**out, "returns": returns, "kills": sim.kills.copy(), "winner": sim.winner()}


def _tag_layout(p: TagParams) -> TeamLayout:
    return TeamLayout(p.map_size, p.agents_per_team, p.max_steps, 6, 1.0, 2, (0, 2, 1, 3, 4, 5))


def _no_game(p: Any) -> Any:
    raise ValueError("tag has no exact mean-field model")


TAG_SPEC = BenchmarkSpec(
    name="tag",
    version=1,
    family="team",
    description="two teams tag each other on a small grid (a test benchmark)",
    params_model=TagParams,
    make_game=_no_game,
    make_sim=lambda p, n: TagSim(p.with_team_size(n)),
    episode_length=lambda p: p.max_steps,
    populations="teams",
    state_space="continuous",
    row_schema="team",
    simulator=Simulator(
        with_agents=lambda p, n: p.with_team_size(n),
        generate_shard=lambda p, q, eps, seed: generate_team_shard(TagSim(p), _tag_play, eps, seed),
        outcomes=team_outcomes,
        summary=lambda out, q: team_summary(out, {"quality": q}),
        stats=lambda p, q, e: {},
        layout=_tag_layout,
        make_sim=TagSim,
        scripted=TAG_SCRIPTED,
    ),
)


def test_a_second_simulator_only_benchmark_runs_generate_windows_train_act(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BENCHMARKS, "tag", TAG_SPEC)
    spec = get_benchmark("tag")
    params = spec.dataset_params({"max_steps": 10}, 4)
    uri = str(tmp_path / "tag-data")
    Path(uri).mkdir()
    shards = [
        write_shard(spec, None, params, [], "expert", uri, i, r, 4, seed=0)
        for i, r in enumerate([(0, 3), (3, 6)])
    ]
    dspec = dataset_spec(spec.describe(params), "expert", 4, 6, 2, 0)
    outcomes = {k: sum(s.outcomes[k] for s in shards) for k in shards[0].outcomes}  # type: ignore[index]
    write_manifest(
        uri,
        Manifest(
            schema_version=SCHEMA_VERSION,
            dataset_id=dataset_id(dspec),
            spec=dspec,
            shards=shards,
            rows=sum(s.rows for s in shards),
            episodes=6,
            behaviour=spec.simulator.summary(outcomes, "expert"),  # type: ignore[union-attr]
            code_version="test",
            created=dt.datetime.now(dt.UTC).isoformat(),
            row_schema=spec.row_schema,
        ),
    )
    arrays, manifest = load_episodes(uri)  # parsed by the manifest's row schema
    assert manifest.row_schema == "team" and arrays.cells.shape == (6, 10, 8)
    assert arrays.alive[:, 0].all() and (arrays.lengths <= 10).all()
    layout = _tag_layout(TagParams(**params))
    for name in ("bc", "mf_diffuser"):
        mspec = get_method(name)
        small = {"hidden": 16, "n_particles": 4}
        if name == "mf_diffuser":
            small.update(window=3, diffusion_steps=5, stages=1, max_particles=4, n_blocks=1)
        method = mspec.build(mspec.params(small), team.dims_of(layout))
        losses = team.fit(method, arrays, steps=20, batch_size=8, lr=1e-3, seed=0)
        assert np.isfinite(losses).all()
        player = team.TeamPolicy(method, layout, seed=0)
        sim = spec.simulator.make_sim(spec.params(params))  # type: ignore[union-attr]
        scores = team_scores(sim, layout, TAG_SCRIPTED, player, "random", 2, seed=1)
        assert 0.0 <= scores["win_rate"] <= 1.0 and len(scores["returns"]) == 2
        assert scores["kill_ratio"] >= 0.0 and 0.0 <= scores["survival"] <= 1.0


def test_no_layer_outside_the_battle_module_and_the_registry_names_a_benchmark() -> None:
    """Nothing outside them says "battle", and no reader detects a row schema by its columns
    (`... in table.column_names`): the manifest's `row_schema` says what the rows are."""
    root = Path(mfdiffuser.__file__).parent
    allowed = {root / "envs" / "battle.py", root / "envs" / "registry.py"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            named = isinstance(node, ast.Constant) and node.value == "battle"
            sniffed = (
                isinstance(node, ast.Compare)
                and isinstance(node.ops[0], ast.In | ast.NotIn)
                and isinstance(node.comparators[0], ast.Attribute)
                and node.comparators[0].attr == "column_names"
            )
            if (named and path not in allowed) or sniffed:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


# ------------------------------------------------------------------ battle
def _battle_arrays(n: int = 64, episodes: int = 2, steps: int = 30, quality: str = "expert"):
    spec = get_benchmark("battle")
    p = spec.params({"max_steps": steps, "observations": False}).with_team_size(n)
    table, _ = spec.simulator.generate_shard(p, quality, range(episodes), 0)  # type: ignore[union-attr]
    layout = spec.simulator.layout(p)  # type: ignore[union-attr]
    return p, layout, team_episodes_from_table(table, layout, "test")


def test_battle_windows_shapes_normalisation_and_dead_agents_padded() -> None:
    p, layout, arrays = _battle_arrays(steps=40)
    assert layout.context_dim == 1 + 2 * 8 * 8 and arrays.cells.shape == (2, 40, 128)
    sampler = TeamWindowSampler(arrays, window=6, n_particles=16, seed=0)
    b = sampler.sample(64)
    assert b["x"].shape == (64, 16, 6, 3 + 21) and b["ctx"].shape == (64, 129)
    assert b["valid"].shape == (64, 16, 6) and (b["valid"][:, :, 0] == 1).all()
    feats = b["x"][..., :3]
    assert feats.min() >= 0.0 and feats.max() <= 1.0
    # the features and context at the window's start are what the simulator shows when acting
    sim = BattleSim(p)
    from mfdiffuser.data.generate import episode_seed
    from mfdiffuser.envs.battle import play_episode

    e, t0 = int(b["episode"][0]), int(b["t0"][0])
    ep = play_episode(sim, 0.0, episode_seed(0, e), record=True)
    cells, hp = ep["cells"][t0], ep["hp"][t0]
    m = sim.map_size
    want = np.c_[cells % m / (m - 1), cells // m / (m - 1), hp / 10.0][:64]
    got = feats[0, :, 0]
    assert all(np.isclose(want, g, atol=1e-6).all(axis=1).any() for g in got)
    # dead agents and steps past the end are padded: valid is a prefix, padding repeats it
    assert (np.diff(b["valid"], axis=2) <= 0).all() and (b["valid"] == 0).any()
    last = b["valid"].sum(axis=2).astype(int) - 1
    pad = b["valid"] == 0
    rep = np.take_along_axis(b["x"], last[..., None, None].repeat(24, -1), axis=2)
    assert np.allclose(b["x"][pad], np.broadcast_to(rep, b["x"].shape)[pad])
    # ... and the loss has zero gradient with respect to the denoiser's output there
    mspec = get_method("mf_diffuser")
    cfg = {"window": 6, "n_particles": 16, "diffusion_steps": 10, "hidden": 16, "n_blocks": 1}
    method = mspec.build(mspec.params(cfg), team.dims_of(layout))
    planner, batch = method.planner, method.to_batch(b, "cpu")
    outputs: list[torch.Tensor] = []

    def net(*args: Any, **kw: Any) -> torch.Tensor:
        out = planner.train_module()(*args, **kw)
        out.retain_grad()
        outputs.append(out)
        return out

    loss, _ = planner.loss(batch, model=net)
    loss.backward()
    grad = outputs[0].grad
    assert grad is not None and grad[torch.as_tensor(pad)].abs().max() == 0
    assert grad[torch.as_tensor(~pad)][..., 3:].abs().sum() > 0


def test_the_same_weights_act_for_64_and_4096_agents_per_team() -> None:
    mspec = get_method("mf_diffuser")
    cfg = {"window": 4, "n_particles": 16, "max_particles": 64, "diffusion_steps": 10}
    cfg.update(hidden=16, n_blocks=1, stages=1)
    _, layout64, _ = _battle_arrays(episodes=1, steps=3)
    method = mspec.build(mspec.params(cfg), team.dims_of(layout64))
    for n in (64, 4096):
        p = BattleParams(max_steps=3, observations=False).with_team_size(n)
        layout = get_benchmark("battle").simulator.layout(p)  # type: ignore[union-attr]
        assert team.dims_of(layout) == method.dims  # one set of dimensions for every map
        player = team.TeamPolicy(method, layout, seed=0)
        sim = BattleSim(p)
        scores = team_scores(sim, layout, {}, player, player, 1, seed=0)
        assert scores["episodes"] == 1 and sim.n_team == n and sim.t == 3


def test_a_checkpoint_opponent_plays_a_full_episode(tmp_path: Path) -> None:
    p, layout, arrays = _battle_arrays(n=16, episodes=2, steps=20)
    bc = get_method("bc")
    method = bc.build(bc.params({"hidden": 16}), team.dims_of(layout))
    team.fit(method, arrays, steps=30, batch_size=16, lr=3e-3, seed=0)
    meta = {"config": {"benchmark": {"name": "battle", "params": p.model_dump()}}}
    ckpt = save_checkpoint(tmp_path / "bc", method, np.zeros(0), meta)
    opponent = team.load_player(str(ckpt), "battle", layout, seed=1)
    me = team.TeamPolicy(method, layout, seed=0)
    sim = BattleSim(p)
    scores = team_scores(sim, layout, {}, me, opponent, 1, seed=3)
    assert sim.done and 1 <= scores["episodes"] and sim.t <= 20
    other = save_checkpoint(
        tmp_path / "other", method, np.zeros(0), {"config": {"benchmark": {"name": "crowd_1d"}}}
    )
    with pytest.raises(
        ValueError, match=r"opponent = .*trained on crowd_1d; allowed: expert, random"
    ):
        team.load_player(str(other), "battle", layout, seed=1)


def test_a_small_planner_trained_on_expert_data_beats_random_more_often_than_untrained() -> None:
    """Map 40 (64 per team), 6 expert episodes of 40 steps, a fixed budget of 200 steps; both
    planners play the same 6 seeded episodes against `random`."""
    start = time.perf_counter()
    p, layout, arrays = _battle_arrays(n=64, episodes=6, steps=40)
    mspec = get_method("mf_diffuser")
    cfg = {"window": 4, "n_particles": 16, "max_particles": 64, "diffusion_steps": 10}
    cfg.update(hidden=64, n_blocks=1, stages=1, replan_every=4)
    torch.manual_seed(0)
    untrained = mspec.build(mspec.params(cfg), team.dims_of(layout))
    trained = mspec.build(mspec.params(cfg), team.dims_of(layout))
    trained.load_state_dict(untrained.state_dict())
    team.fit(trained, arrays, steps=200, batch_size=32, lr=3e-3, seed=0)
    scripted = get_benchmark("battle").simulator.scripted  # type: ignore[union-attr]
    wins = {}
    for name, method in (("trained", trained), ("untrained", untrained)):
        player = team.TeamPolicy(method, layout, seed=0)
        scores = team_scores(BattleSim(p), layout, scripted, player, "random", 6, seed=7)
        wins[name] = scores["win_rate"]
    assert wins["trained"] >= 0.5 and wins["trained"] > wins["untrained"], wins
    assert time.perf_counter() - start < 120  # about 60 s on 2 loaded cores


def test_mf_iql_learns_from_per_agent_transitions_and_plays_battle() -> None:
    """Its transitions: s' is the agent's next step, done where it has none (it died, or the
    episode ended); a few training steps, then a full episode against `expert` through the
    acting path bc takes."""
    p, layout, arrays = _battle_arrays(n=16, episodes=2, steps=20)
    spec = get_method("mf_iql")
    assert spec.cannot_run(get_benchmark("battle"), [16]) is None
    method = spec.build(spec.params({"hidden": 16, "n_particles": 8}), team.dims_of(layout))
    b = team.team_batches(method, arrays, seed=0).sample(256)
    assert b["x"].shape == (256, 8, 2, 3 + 21) and b["ctx_next"].shape == (256, 129)
    assert (b["valid"][:, :, 0] == 1).all() and np.array_equal(b["done"], 1 - b["valid"][:, :, 1])
    running = (b["t0"] + 1 < arrays.lengths[b["episode"]])[:, None]
    assert (b["done"].astype(bool) & running).any()  # deaths mid-episode are done
    assert (b["done"] == 0).any()
    # the context at t0 + 1 is the next step's: its time is (t0 + 1) / T
    assert np.allclose(b["ctx_next"][:, 0], np.minimum(b["t0"] + 1, 19) / 20)
    batch = method.to_batch(b, "cpu")
    assert batch["not_done"].shape == (256, 8)
    before = method.loss(batch, method.train_module())[1]["q_loss"]
    losses = team.fit(method, arrays, steps=60, batch_size=16, lr=3e-3, seed=0)
    after = method.loss(batch, method.train_module())[1]["q_loss"]
    assert np.isfinite(losses).all() and after < before, (before, after)
    player = team.TeamPolicy(method, layout, seed=0)
    sim = BattleSim(p)
    scripted = get_benchmark("battle").simulator.scripted  # type: ignore[union-attr]
    scores = team_scores(sim, layout, scripted, player, "expert", 1, seed=2)
    assert scores["episodes"] == 1 and sim.done and 0.0 <= scores["survival"] <= 1.0


def test_madiff_plays_battle_up_to_its_agent_limit() -> None:
    """Every agent of team 0 is a particle of its training windows and of its joint plan; a
    team above 1,024 agents is refused with the limit."""
    battle = get_benchmark("battle")
    spec = get_method("madiff")
    assert spec.cannot_run(battle, [64, 1024]) is None
    assert "at most 1024 agents" in str(spec.cannot_run(battle, [64, 4096]))
    p, layout, arrays = _battle_arrays(n=16, episodes=2, steps=12)
    small = {"window": 3, "diffusion_steps": 5, "hidden": 16, "n_blocks": 1, "heads": 2}
    method = spec.build(spec.params(small), team.dims_of(layout))
    b = team.team_batches(method, arrays, seed=0).sample(4)
    assert b["x"].shape == (4, 16, 3, 3 + 21)
    losses = team.fit(method, arrays, steps=10, batch_size=4, lr=1e-3, seed=0)
    assert np.isfinite(losses).all()
    player = team.TeamPolicy(method, layout, seed=0)
    sim = BattleSim(p)
    feats = sim.reset(0)[:16]
    planned = player.act(0, feats, sim.mean_field(), np.random.default_rng(0))
    assert planned.shape == (16,) and ((0 <= planned) & (planned < 21)).all()
    assert player.live.rule == "matching" and player.live.cfg.max_particles >= 16
    scripted = battle.simulator.scripted  # type: ignore[union-attr]
    scores = team_scores(sim, layout, scripted, player, "random", 1, seed=2)
    assert scores["episodes"] == 1 and sim.done and sim.t <= 12


def test_mfd_crossplay_prints_the_win_rate_matrix_and_refuses_bad_checkpoints(
    tmp_path: Path,
) -> None:
    """Two checkpoints (bc, mf_iql) through `mfd crossplay` in-process: a 2 x 2 matrix of the
    row's win rate as team 0, named by each checkpoint's id; bad input exits 2 in one line."""
    import json

    from typer.testing import CliRunner

    from mfdiffuser.cli import _crossplay_text, app
    from mfdiffuser.platform.tracking import opponent_name

    p, layout, arrays = _battle_arrays(n=16, episodes=2, steps=12)
    config = {"benchmark": {"name": "battle", "params": p.model_dump()}, "data": {"n_agents": 16}}
    paths = []
    for name in ("bc", "mf_iql"):
        spec = get_method(name)
        method = spec.build(spec.params({"hidden": 16}), team.dims_of(layout))
        team.fit(method, arrays, steps=10, batch_size=8, lr=3e-3, seed=0)
        paths.append(str(save_checkpoint(tmp_path / name, method, np.zeros(0), {"config": config})))
    result = CliRunner().invoke(app, ["crossplay", *paths, "--episodes", "2", "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    out = json.loads(result.stdout)
    assert out["players"] == {opponent_name(c, []): c for c in paths} and out["n_agents"] == 16
    assert np.shape(out["win_rate"]) == (2, 2) and np.shape(out["kill_ratio"]) == (2, 2)
    assert all(0.0 <= w <= 1.0 for row in out["win_rate"] for w in row)
    text = _crossplay_text(out)  # what the command prints without --json
    assert "win rate of the row (team 0)" in text and f"{list(out['players'])[1]} = " in text
    crowd = save_checkpoint(
        tmp_path / "crowd", method, np.zeros(0), {"config": {"benchmark": {"name": "crowd_1d"}}}
    )
    for args, says in (
        ([paths[0]], "allowed: two or more checkpoint directories"),
        ([paths[0], str(crowd)], "a checkpoint of crowd_1d; allowed"),
        ([paths[0], str(tmp_path / "nothing")], "not a checkpoint"),
        ([paths[0], paths[0]], "a checkpoint twice"),
        ([*paths, "-n", "0"], "allowed: 1 or more agents per team"),
    ):
        bad = CliRunner().invoke(app, ["crossplay", *args])
        assert bad.exit_code == 2 and bad.stderr.count("\n") == 1, bad.output
        assert bad.stderr.startswith("error: ") and says in bad.stderr
