"""Every registered method of the platform's own kinds through the one code path, in-process (no
Ray): built for a game, trained a few steps by the one loop (trained methods) or solved
(references), saved, loaded weights-only, and played. Parametrised over the registry by kind:
registering a method enrols it. External methods (RLlib's: their own loop, their own checkpoint)
have their registry-wide test in tests/integration/test_rllib.py, since their library needs Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mfdiffuser.api import solve
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import EpisodeArrays, episodes_from_table
from mfdiffuser.envs import exploitability
from mfdiffuser.envs.crowd_1d import Crowd1D, Crowd1DSim
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.evaluation.rollout import propagate_fn
from mfdiffuser.methods.base import DataStats, Dims, Method, ReferenceMethod, TrainedMethod
from mfdiffuser.methods.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from mfdiffuser.methods.registry import METHODS
from mfdiffuser.methods.training import train_epochs

torch.set_num_threads(1)
N_AGENTS = 12

# Small values for whichever of these parameters a method has (the rest stay at defaults).
TINY = {
    "hidden": 8,
    "inverse_hidden": 8,
    "value_hidden": 8,
    "n_blocks": 1,
    "diffusion_steps": 4,
    "n_particles": 4,
    "max_particles": 6,
    "window": 2,
    "draws": 1,
    "iterations": 20,
    "layers": 1,
}


@pytest.fixture(scope="module")
def game() -> Crowd1D:
    return Crowd1D(size=5, horizon=3)


@pytest.fixture(scope="module")
def data(game: Crowd1D) -> EpisodeArrays:
    policy = get_benchmark("crowd_1d").behaviour(game, "medium").policies
    table, _ = generate_shard(lambda: Crowd1DSim(game, N_AGENTS), policy, range(3), seed=1)
    return episodes_from_table(table, N_AGENTS)


def _build(name: str, game: Crowd1D) -> Method:
    spec = METHODS[name]
    fields = spec.params_model.model_fields
    params = {k: v for k, v in TINY.items() if k in fields and k not in spec.fixed}
    if "stages" in fields and "stages" not in spec.fixed:
        params["stages"] = 2  # <= the 4 sampling steps
    torch.manual_seed(0)
    return spec.build(spec.params(params), Dims.of(game))


def _fit(method: Method, game: Crowd1D, data: EpisodeArrays) -> np.ndarray:
    """Train three steps (or solve); returns the behaviour prior the checkpoint holds."""
    stats = DataStats.of(data, game)
    if isinstance(method, ReferenceMethod):
        method.solve(game)
        return stats.prior
    assert isinstance(method, TrainedMethod)
    method.prepare(stats)
    epochs: list[dict[str, float]] = []
    train_epochs(
        method,
        method.batches(data, game, seed=3),
        epochs=1,
        steps_per_epoch=3,
        batch_size=4,
        lr=1e-3,
        on_epoch=lambda e, m, o: epochs.append(m),
    )
    assert np.isfinite(epochs[0]["train/loss"]) and epochs[0]["train/epoch"] == 1.0
    return stats.prior


def _flat(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        return {k2: v2 for k, v in state.items() for k2, v2 in _flat(v, f"{prefix}{k}/").items()}
    return {prefix: state}


@pytest.mark.parametrize("name", sorted(n for n, s in METHODS.items() if s.kind != "external"))
def test_every_trained_or_reference_method_trains_saves_loads_bit_for_bit_and_acts(
    name: str, game: Crowd1D, data: EpisodeArrays, tmp_path: Path
) -> None:
    method = _build(name, game)
    prior = _fit(method, game, data)
    save_checkpoint(tmp_path, method, prior, {"epoch": 1})
    # weights-only: the checkpoint holds tensors and plain values only
    torch.load(tmp_path / WEIGHTS, weights_only=True)
    loaded, prior2, meta, _ = load_checkpoint(tmp_path)
    assert meta["method"]["name"] == name and type(loaded) is type(method)
    np.testing.assert_array_equal(prior2, prior)
    saved, back = _flat(method.state_dict()), _flat(loaded.state_dict())
    assert saved.keys() == back.keys() and saved
    for key, value in saved.items():  # bit for bit
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, back[key]), key
        else:
            assert value == back[key], key

    states = np.random.default_rng(0).integers(0, game.n_states, size=N_AGENTS)
    acts = [
        m.policy(game, prior, seed=5).act(0, states, np.random.default_rng(1))
        for m in (method, loaded)
    ]
    assert np.array_equal(acts[0], acts[1])  # the same actions under a seed after loading
    assert acts[0].shape == (N_AGENTS,) and set(acts[0]) <= set(range(game.n_actions))
    table = loaded.policy(game, prior, seed=5).expected_table(propagate_fn(game), seed=5)
    assert table.shape == (game.horizon, game.n_states, game.n_actions)
    np.testing.assert_allclose(table.sum(-1), 1.0, atol=1e-9)
    assert 0.0 <= exploitability(game, table) < 10.0


@pytest.mark.parametrize("name", [n for n, s in METHODS.items() if s.kind == "reference"])
def test_reference_methods_reproduce_mfd_solve(name: str) -> None:
    spec = METHODS[name]
    benchmark = get_benchmark("crowd_1d")
    params = {"size": 5, "horizon": 3}
    game = benchmark.game(params)
    method = spec.build(spec.params({"iterations": 30}), Dims.of(game))
    assert isinstance(method, ReferenceMethod)
    figures = method.solve(game)
    table = method.policy(game, np.zeros(0), seed=0).expected_table(propagate_fn(game), 0)
    solved = solve("crowd_1d", params, algorithm=name, iterations=30)
    assert exploitability(game, table) == solved["exploitability"]
    assert figures["solve/exploitability"] == solved["exploitability"]


MF_FAMILY = sorted(n for n, s in METHODS.items() if s.family == "mf_diffuser")


@pytest.fixture(scope="module")
def crowd_medium() -> tuple[Crowd1D, EpisodeArrays]:
    game = Crowd1D(size=10, horizon=10)
    policies = get_benchmark("crowd_1d").behaviour(game, "medium").policies
    table, _ = generate_shard(lambda: Crowd1DSim(game, 100), policies, range(40), seed=0)
    return game, episodes_from_table(table, 100)


# The small MF-Diffuser the family's tests train (what a variant pins stays pinned).
FAMILY_SETTINGS = {"window": 4, "n_particles": 16, "max_particles": 32, "diffusion_steps": 10}
# draws and smoothing as when the ratios below were measured (the defaults are now 16 and 0).
FAMILY_SETTINGS |= {"hidden": 32, "n_blocks": 2, "draws": 2, "smoothing": 0.1}


def _family_member(
    name: str, game: Crowd1D, data: EpisodeArrays, **extra: Any
) -> tuple[TrainedMethod, DataStats]:
    spec = METHODS[name]
    settings = {k: v for k, v in {**FAMILY_SETTINGS, **extra}.items() if k not in spec.fixed}
    torch.manual_seed(0)
    method = spec.build(spec.params(settings), Dims.of(game))
    assert isinstance(method, TrainedMethod)
    stats = DataStats.of(data, game)
    method.prepare(stats)
    return method, stats


def _train_300(method: TrainedMethod, game: Crowd1D, data: EpisodeArrays) -> None:
    """300 Adam steps of 16 windows at 3e-3 (the budget of configs/sweep_table_quick.yaml)."""
    train_epochs(
        method,
        method.batches(data, game, seed=0),
        epochs=1,
        steps_per_epoch=300,
        batch_size=16,
        lr=3e-3,
        on_epoch=lambda e, m, o: None,
    )


@pytest.mark.parametrize("name", MF_FAMILY)
def test_the_mf_diffuser_family_learns_on_crowd_1d_medium(
    name: str, crowd_medium: tuple[Crowd1D, EpisodeArrays]
) -> None:
    """300 Adam steps (the budget of configs/sweep_table_quick.yaml) take the frozen table's
    exploitability at least 10% below the untrained model's. The ratio depends on the data's
    draw: over datasets of seeds 0..4 (40 episodes of 100 agents) it ranged 0.35-0.72 for
    mf_diffuser, 0.69-0.84 for _unweighted, 0.24-0.77 for decision_diffuser (seed 0: 0.45,
    0.62, 0.84, 0.48, 0.77 for mf_diffuser, _flat, _unweighted, per_agent_diffuser,
    decision_diffuser; the simulators' random stream changed with the fused step, and the old
    stream's seed 0 gave 0.62, 0.62, 0.68, 0.33, 0.55, so the former 30% bound held by luck)."""
    game, data = crowd_medium
    method, stats = _family_member(name, game, data)

    def expl() -> float:
        policy = method.policy(game, stats.prior, seed=0)
        return exploitability(game, policy.expected_table(propagate_fn(game), seed=0))

    before = expl()
    _train_300(method, game, data)
    after = expl()
    assert after <= 0.9 * before, (name, before, after)


def test_decision_diffuser_reads_actions_and_follows_its_return_guidance(
    crowd_medium: tuple[Crowd1D, EpisodeArrays],
) -> None:
    """Its inverse-dynamics head is accurate on held-out transitions (measured 0.734, against
    0.750 for the best any rule of (t, s, s') can do on those transitions and 0.616 for always
    the most frequent action: crowd_1d's moves are noisy, so (s, s') does not always tell the
    action), and guidance raises its return: J^inf at w = 1 and w = 3 both above w = 0, same
    weights, same seeds (measured 27.858, 27.896, 27.864 at w = 0, 1, 3; with the simulators'
    random stream before the fused step, whose data differed, 27.704, 27.739, 27.777: the order
    of w = 1 and 3 is the data's draw, the gain over w = 0 held on both)."""
    from mfdiffuser.data.windows import mean_fields
    from mfdiffuser.envs import policy_value

    game, data = crowd_medium
    spec = METHODS["decision_diffuser"]
    method, stats = _family_member(spec.name, game, data, inverse_hidden=32)
    settings = method.params.model_dump()
    _train_300(method, game, data)
    policies = get_benchmark("crowd_1d").behaviour(game, "medium").policies
    table, _ = generate_shard(lambda: Crowd1DSim(game, 100), policies, range(40, 50), seed=7)
    held = episodes_from_table(table, 100)
    e, t, n = held.states.shape
    mu = mean_fields(held, game.n_states)
    ctx = np.stack([[game.context(k, mu[i, k]) for k in range(t - 1)] for i in range(e)])
    ctx = np.broadcast_to(ctx[:, :, None, :], (e, t - 1, n, ctx.shape[-1])).reshape(
        -1, ctx.shape[-1]
    )
    s, s2 = held.states[:, :-1].reshape(-1), held.states[:, 1:].reshape(-1)
    a = held.actions[:, :-1].reshape(-1)
    steps = np.broadcast_to(np.arange(t - 1)[None, :, None], (e, t - 1, n)).reshape(-1)
    feats = np.asarray(game.features(np.arange(game.n_states)), dtype=np.float32)
    head = method.planner.sampling_inverse()
    with torch.no_grad():
        logits = head(*(torch.as_tensor(x) for x in (feats[s], feats[s2], ctx.astype(np.float32))))
    accuracy = float((logits.argmax(-1).numpy() == a).mean())
    key = (steps * game.n_states + s) * game.n_states + s2
    best = sum(np.bincount(a[key == k]).max() for k in np.unique(key)) / len(a)
    majority = np.bincount(a).max() / len(a)
    assert accuracy >= best - 0.04 and accuracy >= majority + 0.08, (accuracy, best, majority)

    values = []
    for w in (0.0, 1.0, 3.0):
        guided = spec.build(spec.params({**settings, "guidance": w}), Dims.of(game))
        guided.load_state_dict(method.state_dict())
        frozen = guided.policy(game, stats.prior, 0).expected_table(propagate_fn(game), 0)
        values.append(policy_value(game, frozen))
    assert values[0] < min(values[1], values[2]), values
