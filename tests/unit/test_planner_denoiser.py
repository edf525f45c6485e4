"""MeanFieldDenoiser (docs/method.md): shapes, particle equivariance, any M, interaction switch."""

from __future__ import annotations

import pydantic
import pytest
import torch

from mfdiffuser.planner import MeanFieldDenoiser, PlannerConfig

torch.set_num_threads(1)

D, C = 8, 6


def _net(interaction: bool = True, seed: int = 0) -> MeanFieldDenoiser:
    torch.manual_seed(seed)
    return MeanFieldDenoiser(D, C, hidden=16, n_blocks=2, interaction=interaction).eval()


def _inputs(b: int, m: int, h: int = 4, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, m, h, D, generator=g)
    k = torch.randint(0, 20, (b,), generator=g)
    ctx = torch.randn(b, C, generator=g)
    return x, k, ctx


@pytest.mark.parametrize("h", [1, 4, 7])
def test_output_shape(h: int) -> None:
    x, k, ctx = _inputs(3, 5, h)
    assert _net()(x, k, ctx).shape == (3, 5, h, D)


def test_permutation_equivariance() -> None:
    net = _net(interaction=True)
    x, k, ctx = _inputs(2, 9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = net(x, k, ctx)
        out_perm = net(x[:, perm], k, ctx)
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=0)


@pytest.mark.parametrize("m", [1, 7, 33])
def test_same_weights_any_particle_count(m: int) -> None:
    net = _net()
    x, k, ctx = _inputs(2, m)
    with torch.no_grad():
        out = net(x, k, ctx)
    assert out.shape == (2, m, 4, D)
    assert torch.isfinite(out).all()


def test_parameter_count_does_not_depend_on_particles() -> None:
    cfg = PlannerConfig()
    net = MeanFieldDenoiser(D, C, cfg.hidden, cfg.n_blocks, cfg.kernel_size, cfg.interaction)
    # Nothing in the constructor knows M or N; the count is fixed by (D, C, hidden, blocks).
    n_params = sum(p.numel() for p in net.parameters())
    ablation = MeanFieldDenoiser(D, C, cfg.hidden, cfg.n_blocks, cfg.kernel_size, False)
    n_interaction = 2 * cfg.n_blocks * (cfg.hidden * cfg.hidden + cfg.hidden)
    assert n_params - sum(p.numel() for p in ablation.parameters()) == n_interaction


@pytest.mark.parametrize("interaction", [False, True])
def test_interaction_switch(interaction: bool) -> None:
    net = _net(interaction=interaction)
    x, k, ctx = _inputs(1, 4)
    x2 = x.clone()
    x2[:, 2] += 1.0  # change particle 2 only
    with torch.no_grad():
        out, out2 = net(x, k, ctx), net(x2, k, ctx)
    particle0_changed = not torch.equal(out[:, 0], out2[:, 0])
    assert particle0_changed == interaction
    assert not torch.equal(out[:, 2], out2[:, 2])


def test_conditioning_matters() -> None:
    net = _net()
    x, k, ctx = _inputs(1, 3)
    with torch.no_grad():
        base = net(x, k, ctx)
        assert not torch.allclose(base, net(x, (k + 5) % 20, ctx))
        assert not torch.allclose(base, net(x, k, ctx + 1.0))


def test_config_validation() -> None:
    assert PlannerConfig().window == 4
    with pytest.raises(pydantic.ValidationError):
        PlannerConfig(window=0)
    with pytest.raises(pydantic.ValidationError):
        PlannerConfig(diffusion_steps=1)
    with pytest.raises(pydantic.ValidationError):
        PlannerConfig(kernel_size=4)
    with pytest.raises(pydantic.ValidationError):
        PlannerConfig(unknown_field=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("interaction", [True, False])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_sampling_trunk_equals_the_module_path(interaction: bool, kernel_size: int) -> None:
    """Without autograd the trunk runs on the modules' weights directly (`_trunk_lean`); it must
    give the module path's values, for shared (M' = 1) and per-particle (M' = M) conditioning,
    contiguous or not."""
    torch.manual_seed(0)
    net = MeanFieldDenoiser(
        D, C, hidden=16, n_blocks=2, kernel_size=kernel_size, interaction=interaction
    ).eval()
    g = torch.Generator().manual_seed(2)
    for cond_m in (1, 5):
        x = torch.randn(3, 5, 4, D, generator=g)
        cond = torch.randn(3, cond_m, 16, generator=g)
        for xi in (x, x.transpose(1, 2).contiguous().transpose(1, 2)):  # the second is strided
            with torch.enable_grad():
                module = net.trunk_filmed(xi, net.films(cond))  # the module path
            with torch.no_grad():
                assert net.lean_weights() is not None
                lean = net.trunk(xi, cond)
            torch.testing.assert_close(lean, module.detach(), atol=1e-6, rtol=1e-6)
