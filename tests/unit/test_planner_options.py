"""Planner options (issue 4): return guidance, inverse dynamics, DDIM, EMA, replanning, matching,
exact seeding, ablation flags. Tiny models only; every check is a number or an identity."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from line_game import LineGame
from torch import Tensor, nn

from mfdiffuser.data.windows import EpisodeArrays, WindowSampler
from mfdiffuser.methods.checkpoint import load_checkpoint, save_checkpoint
from mfdiffuser.methods.mf_diffuser import MFDiffuserMethod
from mfdiffuser.planner.acting import (
    FiniteStatePlannerPolicy,
    MatchingPlannerPolicy,
    PlannerPolicy,
    balanced_assignment,
    representatives,
)
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.denoiser import MeanFieldDenoiser
from mfdiffuser.planner.diffusion import MFDiffuser, ema_update
from mfdiffuser.planner.objective import cfg_drop_mask, encode_actions, returns_to_go
from mfdiffuser.planner.sampling import ddim_sequence
from mfdiffuser.planner.training import to_batch, train_epochs
from mfdiffuser.platform.config import load_config

torch.set_num_threads(1)


class PointGame:
    """Continuous per-agent states (x, y, hp) as feature rows, like a battle team."""

    n_actions, horizon, feature_dim, context_dim = 4, 5, 3, 4

    def features(self, states: np.ndarray) -> np.ndarray:
        return np.asarray(states, dtype=np.float32)

    def context(self, t: int, mu: np.ndarray) -> np.ndarray:
        return np.concatenate([[t / self.horizon], np.asarray(mu)]).astype(np.float32)


GAME = LineGame()
S, A, T = GAME.n_states, GAME.n_actions, GAME.horizon
BASE = {"window": 3, "n_particles": 6, "max_particles": 8, "diffusion_steps": 6, "hidden": 8}
BASE.update(n_blocks=1)


def _cfg(**kw: Any) -> PlannerConfig:
    return PlannerConfig(**{**BASE, **kw})


def _planner(seed: int = 0, **kw: Any) -> MFDiffuser:
    torch.manual_seed(seed)
    return MFDiffuser.from_spec(_cfg(**kw), GAME.feature_dim, A, GAME.context_dim)


def _prior() -> np.ndarray:
    return np.random.default_rng(0).dirichlet(np.ones(A), size=(T, S))


def _inputs(b: int = 2, m: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(seed)
    first = torch.as_tensor(GAME.features(rng.integers(0, S, size=(b, m))))
    ctx = torch.as_tensor(np.stack([GAME.context(1, GAME.mu0) for _ in range(b)]))
    return ctx, first


def _arrays(seed: int = 0, e: int = 4, n: int = 10) -> EpisodeArrays:
    """Episodes of the line game under a random policy; reward = −|s − 2|."""
    rng = np.random.default_rng(seed)
    states = np.zeros((e, T, n), dtype=np.int64)
    actions = rng.integers(0, A, size=(e, T, n))
    states[:, 0] = rng.integers(0, S, size=(e, n))
    for t in range(T - 1):
        states[:, t + 1] = GAME.next_state(states[:, t], actions[:, t])
    rewards = -np.abs(states - 2).astype(np.float32)
    return EpisodeArrays(states, actions, rewards)


class Counter:
    """Counts evaluations of a denoiser's trunk, the part run at every denoising step (cost =
    network evaluations, not time; the sampler embeds the fixed conditioning once per call, and
    the blocks' FiLM once per stage). `trunk_filmed` is the trunk proper (`trunk` calls it)."""

    def __init__(self, net: MeanFieldDenoiser) -> None:
        self.calls = 0
        trunk = net.trunk_filmed

        def counted(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            return trunk(*args, **kw)

        net.trunk_filmed = counted  # type: ignore[method-assign]


def _count(planner: MFDiffuser) -> Counter:
    assert planner.sampling_model() is planner.model
    return Counter(planner.model)


# ------------------------------------------------------------------ 1. return guidance


def test_guidance_off_is_bit_identical_to_the_unguided_planner() -> None:
    ctx, first = _inputs()
    plain = _planner()
    off = _planner(cfg_dropout=0.5, guidance=3.0, guidance_quantile=0.2)  # no return_guidance
    assert plain.state_dict()["model"].keys() == off.state_dict()["model"].keys()
    a = plain.sample(ctx, first, torch.Generator().manual_seed(3))
    b = off.sample(ctx, first, torch.Generator().manual_seed(3), ret=0.7)  # ret is ignored
    assert torch.equal(a, b)
    batch = {"x": torch.randn(2, 5, 3, S + A), "ctx": ctx, "ret": torch.tensor([0.1, 0.9])}
    la, _ = plain.loss(batch, generator=torch.Generator().manual_seed(1))
    lb, info = off.loss(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(la, lb) and "cfg_dropped" not in info
    # Turning guidance on adds parameters after the existing ones: those start identical.
    on = _planner(return_guidance=True)
    for k, v in plain.model.state_dict().items():
        assert torch.equal(on.model.state_dict()[k], v)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_guidance_weight_interpolates_unconditional_and_conditional(w: float) -> None:
    planner = _planner(return_guidance=True, guidance=w)
    nn.init.normal_(planner.model.null_return)  # type: ignore[arg-type]
    x = torch.randn(2, 5, 3, S + A)
    kk, ctx = torch.tensor([3, 3]), _inputs()[0]
    ret = torch.tensor([0.8, -0.2])
    with torch.no_grad():
        eps_u = planner.model(x, kk, ctx)
        eps_c = planner.model(x, kk, ctx, ret=ret)
        # A dropped sample sees exactly the null embedding.
        dropped = planner.model(x, kk, ctx, ret=ret, drop=torch.tensor([True, True]))
    assert torch.equal(dropped, eps_u) and not torch.allclose(eps_u, eps_c)
    got = planner.guided_eps(x, kk, ctx, ret)
    if w == 0.0:
        assert torch.equal(got, eps_u)
    elif w == 1.0:
        torch.testing.assert_close(got, eps_c, atol=1e-6, rtol=0)
    else:
        torch.testing.assert_close(got, eps_u + w * (eps_c - eps_u))


def test_cfg_dropout_rate_and_loss_uses_it() -> None:
    n, p = 20_000, 0.3
    mask = cfg_drop_mask(n, p, torch.Generator().manual_seed(7), "cpu")
    u = torch.rand(n, generator=torch.Generator().manual_seed(7))
    assert int(mask.sum()) == int((u < p).sum())  # seeded count
    assert abs(int(mask.sum()) - n * p) < 4 * math.sqrt(n * p * (1 - p))  # binomial, 4σ
    assert int(cfg_drop_mask(100, 0.0, None, "cpu").sum()) == 0
    assert int(cfg_drop_mask(100, 1.0, None, "cpu").sum()) == 100
    # In the loss the mask is drawn after k and the noise, from the same generator.
    planner = _planner(return_guidance=True, cfg_dropout=p)
    b = 64
    batch = {"x": torch.randn(b, 4, 3, S + A), "ctx": torch.randn(b, 1 + S), "ret": torch.rand(b)}
    _, info = planner.loss(batch, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    torch.randint(0, 6, (b,), generator=g)
    torch.randn((b, 4, 3, S + A), generator=g)
    assert info["cfg_dropped"] == float((torch.rand(b, generator=g) < p).sum())
    with pytest.raises(ValueError, match="ret"):
        planner.loss({"x": batch["x"], "ctx": batch["ctx"]})


def test_return_stats_targets_and_batches() -> None:
    arrays = _arrays()
    rtg = returns_to_go(arrays.rewards)
    r = arrays.rewards.astype(np.float64).mean(axis=2)
    np.testing.assert_allclose(rtg[:, 2], r[:, 2:].sum(axis=1))
    planner = _planner(return_guidance=True, guidance_quantile=0.5)
    planner.set_return_stats(rtg)
    lo, hi = rtg.min(), rtg.max()
    expected = 2 * (np.median(rtg[:, 3]) - lo) / (hi - lo) - 1
    assert planner.guidance_target(3) == pytest.approx(expected)
    assert planner.guidance_target(99) == pytest.approx(planner.guidance_target(T - 1))
    assert _planner().guidance_target(3) is None
    raw = {"x": np.zeros((2, 1, 1, 1)), "ctx": np.zeros((2, 1)), "episode": [1, 3], "t0": [0, 4]}
    norm = planner.normalise_returns(rtg)
    batch = to_batch(raw, "cpu", returns=norm)
    np.testing.assert_allclose(batch["ret"].numpy(), [norm[1, 0], norm[3, 4]], rtol=1e-6)


# ------------------------------------------------------------------ 2. inverse dynamics


def _id_batch(rng: np.random.Generator, b: int, m: int) -> dict[str, Tensor]:
    """Line-game windows: a deterministic action a = s_{t+1} − s_t + 1 (interior moves)."""
    s0 = rng.integers(1, S - 1, size=(b, m))
    a0 = rng.integers(0, A, size=(b, m))
    s1 = GAME.next_state(s0, a0)
    a1 = np.where(s1 == 0, 2, np.where(s1 == S - 1, 0, 1))  # stay inside, deterministic
    s2 = GAME.next_state(s1, a1)
    states = np.stack([s0, s1, s2], axis=2)
    actions = np.stack([a0, a1, a1], axis=2)
    x = np.concatenate([GAME.features(states), encode_actions(actions, A).numpy()], axis=-1)
    ctx = np.stack([GAME.context(0, GAME.mu0)] * b)
    return {"x": torch.as_tensor(x), "ctx": torch.as_tensor(ctx)}


@pytest.fixture(scope="module")
def id_planner() -> MFDiffuser:
    planner = _planner(action_head="inverse_dynamics", inverse_hidden=16, ema_decay=0.5)
    assert planner.transition_dim == S  # states only
    module = planner.train_module()
    opt = torch.optim.Adam(module.parameters(), lr=2e-2)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    for _ in range(120):
        loss, info = planner.loss(_id_batch(rng, 8, 6), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        planner.update_ema()
    assert info["loss_inverse"] < 0.1
    return planner


def test_inverse_dynamics_head_learns_the_mapping(id_planner: MFDiffuser) -> None:
    s = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3])
    a = np.array([0, 1, 2] * 3)
    s_next = GAME.next_state(s, a)
    f = torch.as_tensor(GAME.features(np.stack([s, s_next], 1)))[None, :, :, :]  # [1, 9, 2, S]
    ctx = torch.as_tensor(GAME.context(0, GAME.mu0))[None]
    planned = id_planner.plan_actions(f, ctx)  # [1, 9, 1]: one action per state pair
    assert planned.shape == (1, 9, 1)
    assert np.array_equal(planned[0, :, 0].numpy(), a)


def test_inverse_dynamics_acting_and_checkpoint(id_planner: MFDiffuser, tmp_path: Path) -> None:
    policy = FiniteStatePlannerPolicy(id_planner, GAME, _prior(), id_planner.cfg)
    table = policy.action_table(0, GAME.mu0, None, torch.Generator().manual_seed(0))
    assert table.shape == (S, A) and np.all(table >= 0)
    np.testing.assert_allclose(table.sum(-1), 1.0)
    save_checkpoint(tmp_path, MFDiffuserMethod.of(id_planner), _prior(), {"epoch": 1})
    loaded = load_checkpoint(tmp_path)[0].planner
    assert loaded.inverse is not None and id_planner.inverse is not None
    for name in ("inverse", "ema_model", "ema_inverse"):
        saved, back = id_planner.state_dict()[name], loaded.state_dict()[name]
        assert all(torch.equal(saved[k], back[k]) for k in saved)
    ctx, first = _inputs()
    a = id_planner.sample(ctx, first, torch.Generator().manual_seed(4))
    b = loaded.sample(ctx, first, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert torch.equal(id_planner.plan_actions(a, ctx), loaded.plan_actions(b, ctx))
    # In the data layout: the same states, then the head's actions (last one repeated).
    full = id_planner.sample_transitions(ctx, first, torch.Generator().manual_seed(4))
    assert full.shape == (2, 5, 3, S + A) and torch.equal(full[..., :S], a)
    acts = full[..., S:].argmax(-1)
    assert torch.equal(acts[..., :2], id_planner.plan_actions(a, ctx))
    assert torch.equal(acts[..., 2], acts[..., 1])
    plain = _planner()
    assert torch.equal(
        plain.sample_transitions(ctx, first, torch.Generator().manual_seed(4), t=2),
        plain.sample(ctx, first, torch.Generator().manual_seed(4)),
    )


def test_inverse_dynamics_needs_two_steps() -> None:
    with pytest.raises(ValueError, match="window >= 2"):
        _cfg(action_head="inverse_dynamics", window=1, replan_every=1)


# ------------------------------------------------------------------ 3. DDIM


def test_ddim_full_schedule_eta_one_is_ddpm() -> None:
    k = 6
    ddpm = _planner()
    ddim = _planner(sampler="ddim", sampling_steps=k, ddim_eta=1.0)
    s = ddpm.schedule
    sig = [ddim.ddim_sigma(i, i - 1) for i in range(1, k)]
    np.testing.assert_allclose(sig, s.posterior_std[1:].numpy(), rtol=1e-5)
    assert ddim.ddim_sigma(0, -1) == 0.0  # the last step is deterministic, as in DDPM
    ctx, first = _inputs()
    a = ddpm.sample(ctx, first, torch.Generator().manual_seed(5))
    b = ddim.sample(ctx, first, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ddim_eta_zero_is_deterministic_given_initial_noise() -> None:
    planner = _planner(sampler="ddim", sampling_steps=3, ddim_eta=0.0)
    ctx, first = _inputs()
    g = torch.Generator().manual_seed(9)
    x = planner.sample(ctx, first, g)
    # Only the initial noise was drawn: the generator is where one randn of that shape leaves it.
    g2 = torch.Generator().manual_seed(9)
    torch.randn((2, 5, 3, S + A), generator=g2)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=g2))
    assert torch.equal(x, planner.sample(ctx, first, torch.Generator().manual_seed(9)))
    assert torch.equal(x[:, :, 0, :S], first)  # in-painted


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_sampling_cost_scales_with_sampling_steps(steps: int) -> None:
    planner = _planner(sampler="ddim", sampling_steps=steps, stages=1)
    counter = _count(planner)
    planner.sample(*_inputs(), torch.Generator().manual_seed(0))
    assert counter.calls == steps
    assert ddim_sequence(6, steps)[0] == 5 and len(set(ddim_sequence(6, steps))) == steps


def test_ddim_composes_with_coarse_to_fine() -> None:
    planner = _planner(sampler="ddim", sampling_steps=4, stages=2, growth=2, stage_steps=[3, 1])
    counter = _count(planner)
    gen = torch.Generator().manual_seed(0)
    plan = planner.plan_stages(6, gen)
    assert plan.counts == [3, 6] and plan.steps == [3, 1]
    ctx = _inputs()[0]
    firsts = [_inputs(m=c, seed=i)[1] for i, c in enumerate(plan.counts)]
    x = planner.sample_coarse_to_fine(ctx, firsts, plan.parents, gen, plan.steps)
    assert counter.calls == 4 and x.shape == (2, 6, 3, S + A)
    assert torch.equal(x[:, :, 0, :S], firsts[1])
    # One stage = the flat DDIM sampler, exactly.
    flat = _planner(sampler="ddim", sampling_steps=4, stages=1)
    a = flat.sample(ctx, firsts[1], torch.Generator().manual_seed(1))
    b = flat.sample_coarse_to_fine(ctx, [firsts[1]], [], torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="sampling steps"):
        _cfg(sampler="ddim", sampling_steps=4, stages=2, stage_steps=[3, 3])
    with pytest.raises(ValueError, match="sampling_steps"):
        _cfg(sampler="ddim", sampling_steps=7)


# ------------------------------------------------------------------ 4. EMA


def test_ema_update_rule() -> None:
    torch.manual_seed(0)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, model, 0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p.detach())


def test_ema_in_training_checkpoint_and_sampling(tmp_path: Path) -> None:
    off = _planner()
    assert off.ema_model is None and set(off.state_dict()) == {"model", "config", "dims"}
    assert off.sampling_model() is off.model
    planner = _planner(ema_decay=0.9)
    assert planner.ema_model is not None
    start = {k: v.clone() for k, v in planner.model.state_dict().items()}
    sampler = WindowSampler(_arrays(), GAME, 3, 6, seed=0)  # type: ignore[arg-type]
    seen: list[dict[str, float]] = []
    train_epochs(
        planner,
        sampler,
        epochs=1,
        steps_per_epoch=3,
        batch_size=2,
        lr=1e-2,
        on_epoch=lambda e, m, o: seen.append(m),
    )
    ema, model = planner.ema_model.state_dict(), planner.model.state_dict()
    assert any(not torch.equal(ema[k], model[k]) for k in ema)
    assert any(not torch.equal(ema[k], start[k]) for k in ema)
    save_checkpoint(tmp_path, MFDiffuserMethod.of(planner), _prior(), {"epoch": 1})
    loaded = load_checkpoint(tmp_path)[0].planner
    assert loaded.ema_model is not None
    assert all(torch.equal(loaded.ema_model.state_dict()[k], ema[k]) for k in ema)
    # Sampling uses the EMA weights: equal to a plain planner that holds them as its model.
    plain = _planner()
    plain.model.load_state_dict(ema)
    ctx, first = _inputs()
    a = loaded.sample(ctx, first, torch.Generator().manual_seed(2))
    # Equal up to float rounding (a frozen copy may take another convolution kernel).
    torch.testing.assert_close(
        a, plain.sample(ctx, first, torch.Generator().manual_seed(2)), atol=1e-5, rtol=0
    )
    plain.model.load_state_dict(model)  # the raw weights give another sample
    b = plain.sample(ctx, first, torch.Generator().manual_seed(2))
    assert (a - b).abs().max() > 1e-3


# ------------------------------------------------------------------ 5. replanning


def _step_episode(policy: Any, n: int, seed: int, steps: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    states = rng.integers(0, S, size=n)
    out = []
    for t in range(steps):
        actions = policy(t, states, rng)
        out.append(actions)
        states = GAME.next_state(states, actions)
    return out


def test_replan_every_one_is_the_per_step_rule() -> None:
    planner = _planner()
    base = FiniteStatePlannerPolicy(planner, GAME, _prior(), planner.cfg)
    gen = torch.Generator().manual_seed(0)
    want = _step_episode(lambda t, s, r: base.act(t, s, r, gen), 30, 1, T)
    live = PlannerPolicy(planner, GAME, _prior(), planner.cfg, torch.Generator().manual_seed(0))
    live.reset()
    got = _step_episode(live.act, 30, 1, T)
    assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))


@pytest.mark.parametrize("acting", ["finite", "matching"])
def test_replan_every_window_calls_the_denoiser_once_per_window(acting: str) -> None:
    h = 3
    planner = _planner(replan_every=h, acting=acting)
    counter = _count(planner)
    live = PlannerPolicy(planner, GAME, _prior(), planner.cfg, torch.Generator().manual_seed(0))
    actions = _step_episode(live.act, 40, 2, T)
    assert counter.calls == math.ceil(T / h) * planner.cfg.diffusion_steps
    assert all(a.shape == (40,) and a.min() >= 0 and a.max() < A for a in actions)
    live.reset()  # a new episode replans at once
    _step_episode(live.act, 40, 3, 1)
    assert counter.calls == (math.ceil(T / h) + 1) * planner.cfg.diffusion_steps


def test_between_replans_agents_follow_their_particles() -> None:
    planner = _planner(replan_every=3)
    base = FiniteStatePlannerPolicy(planner, GAME, _prior(), planner.cfg)
    rng = np.random.default_rng(0)
    states = rng.integers(0, S, size=25)
    actions, plan = base.plan(0, states, rng, torch.Generator().manual_seed(0))
    joined = plan.assign >= 0
    assert joined.any()
    # Joined agents have their particle's state and first action.
    assert np.array_equal(plan.states[plan.assign[joined], 0], states[joined])
    assert np.array_equal(plan.actions[plan.assign[joined], 0], actions[joined])
    # At offset 1, an agent exactly on its particle's planned state takes the planned action.
    on_plan = np.where(joined, plan.states[np.maximum(plan.assign, 0), 1], 0)
    nxt = base.follow(plan, 1, 1, on_plan, rng)
    want = plan.actions[plan.assign[joined], 1]
    assert np.array_equal(nxt[joined], want)
    with pytest.raises(ValueError, match="replan_every"):
        _cfg(replan_every=4)


# ------------------------------------------------------------------ 6. matching rule


@pytest.mark.parametrize(("n", "m"), [(1000, 7), (10, 4), (3, 8), (64, 64)])
def test_balanced_assignment_loads(n: int, m: int) -> None:
    rng = np.random.default_rng(n + m)
    assign = balanced_assignment(rng.normal(size=(n, 3)), rng.normal(size=(m, 3)))
    loads = np.bincount(assign, minlength=m)
    assert loads.sum() == n and set(loads.tolist()) <= {n // m, -(-n // m)}


def test_matching_agents_meet_particles_with_their_state() -> None:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(6, 3))
    particles = states[rng.permutation(6)]
    agents = np.repeat(states, 4, axis=0)[rng.permutation(24)]  # each state held by 4 agents
    assign = balanced_assignment(agents, particles)
    assert np.array_equal(particles[assign], agents)
    # The policy's particles are block representatives: each is matched to its own particle.
    feats = rng.normal(size=(103, 3))
    reps, _ = representatives(feats, 10)
    assert np.array_equal(balanced_assignment(feats, feats[reps])[reps], np.arange(10))


def test_matching_is_permutation_equivariant() -> None:
    rng = np.random.default_rng(1)
    feats = rng.uniform(-1, 1, size=(50, 3))
    perm = rng.permutation(50)
    p = rng.uniform(-1, 1, size=(6, 3))
    assert np.array_equal(balanced_assignment(feats[perm], p), balanced_assignment(feats, p)[perm])
    game = PointGame()
    cfg = PlannerConfig(window=2, n_particles=4, max_particles=6, diffusion_steps=3, hidden=8)
    torch.manual_seed(0)
    planner = MFDiffuser.from_spec(cfg, 3, game.n_actions, game.context_dim)
    policy = MatchingPlannerPolicy(planner, game, cfg)  # type: ignore[arg-type]
    mu = np.array([0.2, 0.3, 0.5])

    def act(x: np.ndarray) -> np.ndarray:
        return policy.act(0, x, rng, torch.Generator().manual_seed(3), mu=mu)

    a = act(feats)
    assert a.shape == (50,) and a.min() >= 0 and a.max() < game.n_actions
    assert np.array_equal(act(feats[perm]), a[perm])
    small = act(feats[:4])  # N < M_max: one particle per agent
    assert small.shape == (4,)


def test_auto_rule_picks_by_state_space_size() -> None:
    planner = _planner(acting="auto")
    live = PlannerPolicy(planner, GAME, _prior(), planner.cfg, torch.Generator())
    assert live.rule == "finite"  # S = 5 <= max_particles = 8
    big = LineGame(n_states=12)
    torch.manual_seed(0)
    p2 = MFDiffuser.from_spec(_cfg(acting="auto"), 12, A, big.context_dim)
    assert PlannerPolicy(p2, big, None, p2.cfg, torch.Generator()).rule == "matching"


# ------------------------------------------------------------------ 7. exact seeding


def test_same_seed_same_actions_across_calls_and_checkpoint(tmp_path: Path) -> None:
    kw = {"stages": 2, "growth": 2, "sampler": "ddim", "sampling_steps": 4, "ddim_eta": 0.5}
    planner = _planner(return_guidance=True, ema_decay=0.5, **kw)
    planner.set_return_stats(returns_to_go(_arrays().rewards))
    states = np.random.default_rng(0).integers(0, S, size=20)

    def actions(p: MFDiffuser, global_seed: int) -> np.ndarray:
        torch.manual_seed(global_seed)  # the global RNG must not matter
        live = PlannerPolicy(p, GAME, _prior(), p.cfg, torch.Generator().manual_seed(11))
        return np.stack([live.act(t, states, np.random.default_rng(5)) for t in range(3)])

    first = actions(planner, 1)
    assert np.array_equal(first, actions(planner, 2))
    save_checkpoint(tmp_path, MFDiffuserMethod.of(planner), _prior(), {"epoch": 1})
    loaded = load_checkpoint(tmp_path)[0].planner
    assert loaded.return_stats is not None
    assert np.array_equal(first, actions(loaded, 3))
    table = FiniteStatePlannerPolicy(loaded, GAME, _prior(), loaded.cfg).expected_table(
        lambda pol: np.tile(GAME.mu0, (T, 1)), seed=4
    )
    again = FiniteStatePlannerPolicy(planner, GAME, _prior(), planner.cfg).expected_table(
        lambda pol: np.tile(GAME.mu0, (T, 1)), seed=4
    )
    assert np.array_equal(table, again)


# ------------------------------------------------------------------ 8. ablation flags


@pytest.mark.parametrize(
    ("item", "field", "value"),
    [
        ("interaction=false", "interaction", False),
        ("stages=1", "stages", 1),
        ("beta=0", "beta", 0.0),
        ("sampler=ddim", "sampler", "ddim"),
        ("ema_decay=0.99", "ema_decay", 0.99),
        ("acting=matching", "acting", "matching"),
        ("action_head=inverse_dynamics", "action_head", "inverse_dynamics"),
        ("return_guidance=true", "return_guidance", True),
        ("replan_every=2", "replan_every", 2),
    ],
)
def test_flags_parse_from_overrides(item: str, field: str, value: object) -> None:
    cfg = load_config(overrides=["stages=2", "beta=1.0", item])
    assert getattr(cfg.planner, field) == value


def test_ablation_flags_take_effect() -> None:
    cfg = load_config(overrides=["interaction=false", "stages=1", "beta=0"]).planner
    planner = MFDiffuser.from_spec(cfg, S, A, GAME.context_dim)
    assert len(planner.model.mixers) == 0 and cfg.resolved_stage_steps() == [cfg.diffusion_steps]
    raw = {"x": np.zeros((2, 1, 1, 1)), "ctx": np.zeros((2, 1)), "advantages": np.ones((2, 1))}
    assert "weights" not in to_batch(raw, "cpu", beta=cfg.beta)
    with pytest.raises(Exception, match="sampling_steps"):
        load_config(overrides=["sampling_steps=5"])


def test_cosine_learning_rate_by_global_step_and_resume() -> None:
    """train.lr_schedule = cosine: the rate of each step is half a cosine of its global step
    from lr to lr_min, the optimizer's steps use it (logged as train/lr per epoch), and a fit
    resumed at epoch 2 of 4 runs on the same curve as the uninterrupted one."""
    from mfdiffuser.methods.training import learning_rate

    assert learning_rate(0, 100, 3e-3, "cosine") == pytest.approx(3e-3)
    assert learning_rate(50, 100, 3e-3, "cosine", 1e-4) == pytest.approx((3e-3 + 1e-4) / 2)
    assert learning_rate(100, 100, 3e-3, "cosine", 1e-4) == pytest.approx(1e-4)
    assert learning_rate(77, 100, 3e-3, "constant") == 3e-3
    with pytest.raises(ValueError, match="allowed: constant, cosine"):
        learning_rate(0, 10, 1e-3, "linear")

    class Killed(Exception):
        pass

    def fit(segments: list[tuple[int, int]]) -> tuple[list[float], list[float]]:
        """(train/lr of each epoch, the rate Adam held after each epoch) of a 4-epoch fit run as
        the segments (start_epoch, killed after epoch): each later one resumes at its
        start_epoch with the optimizer's state, as the trainer does from a checkpoint."""
        planner = _planner()
        state: dict[str, Any] = {}
        logged: list[float] = []
        held: list[float] = []
        for start, stop in segments:

            def keep(
                e: int, m: dict[str, float], o: torch.optim.Optimizer, stop: int = stop
            ) -> None:
                logged.append(m["train/lr"])
                held.append(o.param_groups[0]["lr"])
                state["opt"] = o.state_dict()
                if e + 1 == stop:
                    raise Killed

            with pytest.raises(Killed):
                train_epochs(
                    planner,
                    WindowSampler(_arrays(), GAME, 3, 6, seed=0),  # type: ignore[arg-type]
                    epochs=4,
                    start_epoch=start,
                    steps_per_epoch=5,
                    batch_size=2,
                    lr=1e-2,
                    lr_schedule="cosine",
                    lr_min=1e-3,
                    optimizer_state=state.get("opt"),
                    on_epoch=keep,
                )
        return logged, held

    logged, held = fit([(0, 4)])
    expected = [learning_rate(5 * e + 4, 20, 1e-2, "cosine", 1e-3) for e in range(4)]
    assert logged == pytest.approx(expected) and held == pytest.approx(expected)
    assert logged == sorted(logged, reverse=True) and logged[-1] > 1e-3
    assert fit([(0, 2), (2, 4)]) == (logged, held)  # killed after epoch 2, resumed
