"""The MADiff-style joint diffuser baseline (METHOD.md §7): shapes, equivariance, in-painting,
learning on a tiny batch, reproducibility and validation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pydantic
import pytest
import torch

from mfdiffuser.baselines.joint_diffuser import (
    AgentAttention,
    JointDiffuser,
    JointDiffuserConfig,
)
from mfdiffuser.envs.crowd_1d import Crowd1D

D_S, N_A, C = 5, 3, 7
CFG = JointDiffuserConfig(window=3, diffusion_steps=5, hidden=16, n_blocks=2, heads=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny tensors: extra threads only add synchronisation cost on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make(seed: int = 0, cfg: JointDiffuserConfig = CFG) -> JointDiffuser:
    torch.manual_seed(seed)
    return JointDiffuser(cfg, state_dim=D_S, n_actions=N_A, context_dim=C)


def inputs(b: int, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, n, CFG.window, D_S + N_A, generator=g) * 2 - 1
    ctx = torch.rand(b, C, generator=g) * 2 - 1
    first = torch.rand(b, n, D_S, generator=g) * 2 - 1
    return x, ctx, first


def test_shapes_of_forward_sample_and_actions() -> None:
    jd = make()
    x, ctx, first = inputs(2, 6)
    eps = jd.model(x, torch.tensor([0, 4]), ctx)
    assert eps.shape == (2, 6, CFG.window, D_S + N_A)
    x0 = jd.sample(ctx, first, torch.Generator().manual_seed(0))
    assert x0.shape == (2, 6, CFG.window, D_S + N_A)
    actions = jd.first_actions(x0)
    assert actions.shape == (2, 6) and actions.dtype == torch.long
    assert int(actions.min()) >= 0 and int(actions.max()) < N_A


def test_permutation_equivariance_over_agents() -> None:
    jd = make()
    jd.model.eval()
    x, ctx, _ = inputs(2, 7)
    k = torch.tensor([1, 3])
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(5))
    out = jd.model(x, k, ctx)
    out_perm = jd.model(x[:, perm], k, ctx)
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=1e-5)
    # Not trivially equivariant: each agent's output depends on the others (attention mixes).
    x_other = x.clone()
    x_other[:, 1:] = -x_other[:, 1:]
    changed = (jd.model(x_other, k, ctx)[:, 0] - out[:, 0]).abs().max()
    assert changed > 1e-3


def test_identical_agents_get_identical_updates() -> None:
    # Identical tokens attend alike (softmax rows sum to 1 over the same values), so every
    # agent's update is the same: the attention has no notion of agent identity.
    att = AgentAttention(8, 2)
    h = torch.randn(1, 1, 2, 8).expand(1, 5, 2, 8).contiguous()
    out = att(h)
    torch.testing.assert_close(out[:, 0:1].expand_as(out), out)


def test_inpainted_first_states_are_fixed_through_sampling() -> None:
    jd = make()
    _, ctx, first = inputs(2, 5)
    x0 = jd.sample(ctx, first, torch.Generator().manual_seed(3))
    assert torch.equal(x0[:, :, 0, :D_S], first)
    # The rest is generated (clipped x̂_0 keeps the posterior mean inside a bounded box).
    assert not torch.equal(x0[:, :, 1:, :D_S], torch.zeros_like(x0[:, :, 1:, :D_S]))


def test_loss_decreases_on_a_tiny_batch() -> None:
    jd = make()
    x, ctx, _ = inputs(2, 4)
    batch = {"x": x, "ctx": ctx}
    opt = torch.optim.Adam(jd.model.parameters(), lr=1e-2)

    def fixed_loss() -> torch.Tensor:  # the same noise and steps each time: only weights change
        return jd.loss(batch, torch.Generator().manual_seed(9))

    with torch.no_grad():
        before = float(fixed_loss())
    for _ in range(30):
        loss = fixed_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(fixed_loss()) < 0.5 * before


def test_value_weights_scale_the_loss() -> None:
    jd = make()
    x, ctx, _ = inputs(1, 4)
    plain = jd.loss({"x": x, "ctx": ctx}, torch.Generator().manual_seed(0))
    doubled = jd.loss(
        {"x": x, "ctx": ctx, "weights": torch.full((1, 4), 2.0)}, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(doubled, 2 * plain)


def test_seeded_sampling_and_init_reproduce() -> None:
    _, ctx, first = inputs(1, 4)
    a = make(seed=4).sample(ctx, first, torch.Generator().manual_seed(7))
    b = make(seed=4).sample(ctx, first, torch.Generator().manual_seed(7))
    c = make(seed=4).sample(ctx, first, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_act_in_crowd_1d_gives_one_valid_action_per_agent() -> None:
    game = Crowd1D(size=6, horizon=4)
    torch.manual_seed(0)
    jd = JointDiffuser(
        JointDiffuserConfig(window=2, diffusion_steps=3, hidden=8, n_blocks=1, heads=2),
        state_dim=game.feature_dim,
        n_actions=game.n_actions,
        context_dim=game.context_dim,
    )
    states = np.array([0, 3, 3, 5, 1])
    actions = jd.act(1, states, game, torch.Generator().manual_seed(0))
    assert actions.shape == (5,)
    assert set(actions.tolist()) <= {0, 1, 2}


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="heads = 3 must divide hidden = 16"):
        JointDiffuserConfig(hidden=16, heads=3)
    with pytest.raises(ValueError, match="kernel_size = 4"):
        JointDiffuserConfig(kernel_size=4)
    with pytest.raises(pydantic.ValidationError, match="diffusion_steps"):
        JointDiffuserConfig(diffusion_steps=1)
    with pytest.raises(ValueError, match="n_actions = 0"):
        JointDiffuser(CFG, state_dim=2, n_actions=0, context_dim=1)
    with pytest.raises(ValueError, match="expected"):
        make().loss({"x": torch.zeros(1, 2, 5, D_S + N_A), "ctx": torch.zeros(1, C)})
