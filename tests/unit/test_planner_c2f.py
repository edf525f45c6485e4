"""Hierarchical coarse-to-fine denoising and its use when acting (docs/method.md)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pydantic
import pytest
import torch
from line_game import LineGame

from mfdiffuser.planner.acting import FiniteStatePlannerPolicy, allocate, stage_assignment
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser, branch_counts, parents_from_counts

torch.set_num_threads(1)

D_S, N_A, C = 3, 2, 4
SMALL: dict[str, Any] = {"window": 3, "diffusion_steps": 6, "hidden": 16, "n_blocks": 1}


def make_planner(**kw: Any) -> MFDiffuser:
    torch.manual_seed(0)
    return MFDiffuser(PlannerConfig(**{**SMALL, **kw}), state_dim=D_S, n_actions=N_A, context_dim=C)


def stage_inputs(
    planner: MFDiffuser, m_final: int, b: int, seed: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[int], torch.Generator]:
    """Plan from a seeded generator; stage first states = parent's state repeated (random)."""
    gen = torch.Generator().manual_seed(seed)
    plan = planner.plan_stages(m_final, gen)
    g = torch.Generator().manual_seed(1000 + seed)
    final = torch.rand(b, m_final, D_S, generator=g) * 2 - 1
    firsts = [final]
    for par in reversed(plan.parents):
        # Any states work for the sampler: take each parent's first child's state.
        first_child = torch.searchsorted(par, torch.arange(int(par.max()) + 1))
        firsts.append(firsts[-1][:, first_child])
    ctx = torch.rand(b, C, generator=g)
    return ctx, firsts[::-1], plan.parents, plan.steps, gen


def test_one_stage_equals_flat_exactly() -> None:
    planner = make_planner(stages=1)
    ctx = torch.rand(2, C)
    first = torch.rand(2, 5, D_S) * 2 - 1
    flat = planner.sample(ctx, first, torch.Generator().manual_seed(7))
    plan = planner.plan_stages(5, torch.Generator().manual_seed(7))
    assert plan.counts == [5] and plan.steps == [6] and plan.parents == []
    c2f = planner.sample_coarse_to_fine(ctx, [first], [], torch.Generator().manual_seed(7))
    assert torch.equal(flat, c2f)


def test_merged_small_final_count_is_flat() -> None:
    # M_L = 1 with L = 3: all stage counts are 1, merged into one stage = the flat sampler.
    planner = make_planner(stages=3)
    plan = planner.plan_stages(1, torch.Generator().manual_seed(0))
    assert plan.counts == [1] and plan.steps == [6] and plan.parents == []


@pytest.mark.parametrize(
    ("m_final", "stages", "growth", "expected"),
    [(10, 3, 4, [1, 3, 10]), (64, 3, 4, [4, 16, 64]), (1024, 3, 4, [64, 256, 1024]),
     (7, 2, 2, [4, 7]), (100, 4, 3, [4, 12, 34, 100])],
)  # fmt: skip
def test_stage_counts_increase_to_final(
    m_final: int, stages: int, growth: int, expected: list[int]
) -> None:
    cfg = PlannerConfig(**{**SMALL, "stages": stages, "growth": growth})
    counts = cfg.stage_particles(m_final)
    assert counts == expected
    assert counts[-1] == m_final
    assert all(a < b for a, b in itertools.pairwise(counts))
    assert counts == [
        max(1, math.ceil(m_final / growth ** (stages - 1 - i))) for i in range(stages)
    ]
    planner = MFDiffuser(cfg, state_dim=D_S, n_actions=N_A, context_dim=C)
    plan = planner.plan_stages(m_final, torch.Generator().manual_seed(3))
    assert plan.counts == expected
    assert sum(plan.steps) == cfg.diffusion_steps
    for i, par in enumerate(plan.parents):
        assert par.shape == (expected[i + 1],)
        n_children = torch.bincount(par, minlength=expected[i])
        assert n_children.shape == (expected[i],)
        q = expected[i + 1] // expected[i]
        assert set(n_children.tolist()) <= {q, q + 1}
        assert bool((par[1:] >= par[:-1]).all())


def test_fractional_growth_extra_children_are_sampled() -> None:
    seen = set()
    for seed in range(20):
        counts = branch_counts(3, 10, torch.Generator().manual_seed(seed))
        assert int(counts.sum()) == 10 and sorted(counts.tolist()) == [3, 3, 4]
        seen.add(int(counts.argmax()))
    assert seen == {0, 1, 2}  # the parent with the extra child varies with the generator
    # An exact multiple draws nothing from the generator.
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert branch_counts(4, 16, g).tolist() == [4] * 4
    assert torch.equal(g.get_state(), state)
    assert parents_from_counts(torch.tensor([1, 3, 2])).tolist() == [0, 1, 1, 1, 2, 2]


def test_default_stage_steps_favour_coarse_stages() -> None:
    cfg = PlannerConfig(stages=3, diffusion_steps=20)
    steps = cfg.resolved_stage_steps()
    assert steps == [11, 6, 3]
    assert sum(steps) == 20
    m = cfg.stage_particles(64)
    ideal = 64 * 20 / sum(a * k for a, k in zip(m, steps, strict=True))
    assert ideal > 2.0
    for stages, k in [(2, 2), (4, 4), (5, 37), (3, 7)]:
        st = PlannerConfig(stages=stages, diffusion_steps=k).resolved_stage_steps()
        assert sum(st) == k and min(st) >= 1 and st == sorted(st, reverse=True)
    assert PlannerConfig(stages=2, stage_steps=[15, 5]).resolved_stage_steps() == [15, 5]


def test_children_share_parent_plan_at_branching() -> None:
    planner = make_planner(stages=2)
    g = torch.Generator().manual_seed(0)
    x0_hat = torch.rand(2, 3, 3, D_S + N_A, generator=g) * 2 - 1
    parents = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    k = 2
    ac = planner.schedule.alphas_cumprod[k]
    noise = torch.randn(2, 7, 3, D_S + N_A, generator=g)
    children = planner.branch_particles(x0_hat, parents, k, noise)
    # Exactly: children = sqrt(ᾱ_k)·x̂_0(parent) + sqrt(1 − ᾱ_k)·ε.
    expected = torch.sqrt(ac) * x0_hat[:, parents] + torch.sqrt(1 - ac) * noise
    torch.testing.assert_close(children, expected)
    # Zero noise: the children's mean is the parent's x̂_0 scaled by sqrt(ᾱ_k).
    mean = planner.branch_particles(x0_hat, parents, k, torch.zeros_like(noise))
    torch.testing.assert_close(mean, torch.sqrt(ac) * x0_hat[:, parents])
    # Many children of one parent: their empirical mean approaches sqrt(ᾱ_k)·x̂_0(parent).
    many = torch.zeros(5000, dtype=torch.long)
    eps = torch.randn(1, 5000, 3, D_S + N_A, generator=g)
    kids = planner.branch_particles(x0_hat[:1, :1], many, k, eps)
    torch.testing.assert_close(
        kids.mean(dim=1), torch.sqrt(ac) * x0_hat[:1, 0], atol=0.06, rtol=0.0
    )


@pytest.mark.parametrize(("m_final", "stages"), [(10, 3), (9, 2), (16, 3)])
def test_inpainted_first_states_and_reproducible(m_final: int, stages: int) -> None:
    planner = make_planner(stages=stages)
    ctx, firsts, parents, steps, gen = stage_inputs(planner, m_final, 2, seed=5)
    x = planner.sample_coarse_to_fine(ctx, firsts, parents, gen, steps)
    assert x.shape == (2, m_final, SMALL["window"], D_S + N_A)
    assert torch.isfinite(x).all()
    assert torch.equal(x[:, :, 0, :D_S], firsts[-1])
    ctx2, firsts2, parents2, steps2, gen2 = stage_inputs(planner, m_final, 2, seed=5)
    x2 = planner.sample_coarse_to_fine(ctx2, firsts2, parents2, gen2, steps2)
    assert torch.equal(x, x2)
    _, _, _, _, gen3 = stage_inputs(planner, m_final, 2, seed=6)
    x3 = planner.sample_coarse_to_fine(ctx, firsts, parents, gen3, steps)
    assert not torch.equal(x, x3)


def test_sampler_rejects_bad_inputs() -> None:
    planner = make_planner(stages=2)
    ctx, firsts, parents, steps, gen = stage_inputs(planner, 8, 1, seed=0)
    with pytest.raises(ValueError, match="stage_steps"):
        planner.sample_coarse_to_fine(ctx, firsts, parents, gen, [1, 1])
    with pytest.raises(ValueError, match="parents"):
        planner.sample_coarse_to_fine(ctx, firsts, [parents[0][:-1]], gen, steps)
    with pytest.raises(ValueError, match="parents"):
        planner.sample_coarse_to_fine(ctx, firsts, [], gen, steps)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"stages": 2, "stage_steps": [3, 4]}, "stage_steps"),
        ({"stages": 2, "stage_steps": [20]}, "stage_steps"),
        ({"stages": 2, "stage_steps": [21, -1]}, "stage_steps"),
        ({"growth": 1}, "growth"),
        ({"stages": 0}, "stages"),
        ({"stages": 30, "diffusion_steps": 20}, "stages"),
    ],
)
def test_invalid_configs_name_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        PlannerConfig(**kw)
    assert field in str(info.value)


def test_stage_assignment_contiguous_nearest() -> None:
    idx = allocate(np.array([3, 1, 0, 4, 2]), 10)  # sorted states of 10 agents
    par1 = parents_from_counts(torch.tensor([3, 4, 3]))
    par0 = parents_from_counts(torch.tensor([3]))
    states = stage_assignment(idx, [par0, par1])
    assert [s.shape[0] for s in states] == [1, 3, 10]
    assert np.array_equal(states[-1], idx)
    blocks = [idx[0:3], idx[3:7], idx[7:10]]
    assert states[1].tolist() == [int(b[(len(b) - 1) // 2]) for b in blocks]
    assert states[0].tolist() == [int(idx[4])]
    # Each stage is sorted (a systematic subsample of the sorted allocation) and every child's
    # block lies within its parent's: the children are the final states nearest the parent.
    for s in states:
        assert np.all(np.diff(s) >= 0)


@pytest.mark.parametrize("stages", [1, 3])
def test_acting_with_stages_gives_valid_tables(stages: int) -> None:
    game = LineGame(horizon=3)
    cfg = PlannerConfig(**{**SMALL, "stages": stages, "max_particles": 10, "draws": 2})
    torch.manual_seed(0)
    planner = MFDiffuser(cfg, game.feature_dim, game.n_actions, game.context_dim)
    prior = np.full((game.horizon, game.n_states, game.n_actions), 1.0 / game.n_actions)
    policy = FiniteStatePlannerPolicy(planner, game, prior, cfg)
    gen = torch.Generator().manual_seed(0)
    table = policy.action_table(0, game.mu0, None, gen)
    assert table.shape == (game.n_states, game.n_actions)
    assert np.all(table >= 0) and np.allclose(table.sum(-1), 1.0)
    states = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 4, 4, 1])
    actions = policy.act(0, states, np.random.default_rng(0), gen)
    assert actions.shape == states.shape and actions.min() >= 0 and actions.max() < 3
    full = policy.expected_table(game.propagate, seed=3)
    assert full.shape == prior.shape
    assert np.all(full >= 0) and np.allclose(full.sum(-1), 1.0)
    again = policy.expected_table(game.propagate, seed=3)
    assert np.array_equal(full, again)


def test_acting_flat_unchanged_when_one_stage() -> None:
    # stages = 1 must take the flat path: same tables as calling `sample` directly.
    game = LineGame(horizon=3)
    cfg = PlannerConfig(**{**SMALL, "max_particles": 10, "stages": 1})
    torch.manual_seed(0)
    planner = MFDiffuser(cfg, game.feature_dim, game.n_actions, game.context_dim)
    prior = np.full((game.horizon, game.n_states, game.n_actions), 1.0 / game.n_actions)
    policy = FiniteStatePlannerPolicy(planner, game, prior, cfg)
    t1 = policy.action_table(1, game.mu0, None, torch.Generator().manual_seed(4))
    cfg3 = PlannerConfig(**{**SMALL, "max_particles": 10, "stages": 3})
    policy3 = FiniteStatePlannerPolicy(planner, game, prior, cfg3)
    t3 = policy3.action_table(1, game.mu0, None, torch.Generator().manual_seed(4))
    assert t1.shape == t3.shape
    idx = allocate(game.mu0, 10)
    x0 = planner.sample(
        torch.as_tensor(game.context(1, game.mu0)).unsqueeze(0),
        torch.as_tensor(game.features(idx)).unsqueeze(0),
        torch.Generator().manual_seed(4),
    )
    acts = x0[0, :, 0, game.feature_dim :].argmax(-1).numpy()
    counts = np.zeros((game.n_states, game.n_actions))
    np.add.at(counts, (idx, acts), 1.0)
    sm = counts + cfg.smoothing
    np.testing.assert_allclose(t1, sm / sm.sum(-1, keepdims=True))


def test_ancestral_branching_is_the_schedulers_step_per_child() -> None:
    """branch='ancestral': stage 1's last step is the DDPM step from each child's parent's x_k
    and x̂_0 (one noise draw of the children's shape, like 'renoise'); in-painted, reproducible,
    and different from 'renoise' on the same draws."""
    renoise = make_planner(stages=2)
    ancestral = make_planner(stages=2, branch="ancestral")
    ctx, firsts, parents, steps, gen = stage_inputs(ancestral, 10, 2, seed=5)
    x = ancestral.sample_coarse_to_fine(ctx, firsts, parents, gen, steps)
    assert torch.equal(x[:, :, 0, :D_S], firsts[-1]) and torch.isfinite(x).all()
    *_, gen2 = stage_inputs(ancestral, 10, 2, seed=5)
    assert torch.equal(x, ancestral.sample_coarse_to_fine(ctx, firsts, parents, gen2, steps))
    *_, gen3 = stage_inputs(renoise, 10, 2, seed=5)
    assert not torch.equal(x, renoise.sample_coarse_to_fine(ctx, firsts, parents, gen3, steps))
    with pytest.raises(ValueError, match="branch"):
        PlannerConfig(**{**SMALL, "branch": "copy"})
