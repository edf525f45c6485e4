"""MFDiffuser (docs/method.md): schedule, loss with in-painting and weights, seeded sampling."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mfdiffuser.planner import (
    MFDiffuser,
    PlannerConfig,
    decode_actions,
    encode_actions,
    value_weights,
)

torch.set_num_threads(1)

DS, A, C = 5, 3, 6
CFG = PlannerConfig(window=4, diffusion_steps=10, hidden=16)


def _planner(seed: int = 0, cfg: PlannerConfig = CFG) -> MFDiffuser:
    torch.manual_seed(seed)
    return MFDiffuser.from_spec(cfg, state_dim=DS, n_actions=A, context_dim=C)


def _batch(b: int = 3, m: int = 5, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(0, DS, (b, m, CFG.window), generator=g)
    actions = torch.randint(0, A, (b, m, CFG.window), generator=g)
    x = torch.cat([encode_actions(states, DS), encode_actions(actions, A)], dim=-1)
    return {"x": x, "ctx": torch.rand(b, C, generator=g)}


def _first_states(b: int, m: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return encode_actions(torch.randint(0, DS, (b, m), generator=g), DS)


def test_cosine_schedule() -> None:
    s = _planner().schedule
    ac = s.alphas_cumprod
    assert ac.shape == (CFG.diffusion_steps,)
    assert torch.all(ac[1:] < ac[:-1]) and ac[0] < 1 and ac[-1] > 0
    assert s.posterior_std[0] == 0  # the last reverse step returns the posterior mean
    x0, noise = torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    xk = s.q_sample(x0, torch.tensor([0, 9]), noise)
    torch.testing.assert_close(xk.flatten(), s.sqrt_alphas_cumprod[[0, 9]])


def test_encode_decode_actions() -> None:
    a = np.array([[0, 2], [1, 1]])
    x = encode_actions(a, 3)
    assert x.shape == (2, 2, 3) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(decode_actions(x), torch.as_tensor(a))


def test_loss_weights_none_equals_ones() -> None:
    planner, batch = _planner(), _batch()
    loss_none, info = planner.loss(batch, generator=torch.Generator().manual_seed(7))
    ones = {**batch, "weights": torch.ones(3, 5)}
    loss_ones, _ = planner.loss(ones, generator=torch.Generator().manual_seed(7))
    assert torch.equal(loss_none, loss_ones)
    assert info["loss"] == pytest.approx(loss_none.item())


class _Recorder(nn.Module):
    """Wraps the denoiser and keeps its input and output, to inspect what the loss sees."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inp: Tensor | None = None
        self.out: Tensor | None = None
        self.k: Tensor | None = None

    def forward(self, x: Tensor, k: Tensor, ctx: Tensor) -> Tensor:
        self.inp, self.k = x.detach().clone(), k.clone()
        out = self.net(x, k, ctx)
        out.retain_grad()
        self.out = out
        return out


def test_loss_inpainted_first_state_clean_and_excluded() -> None:
    planner, batch = _planner(), _batch()
    rec = _Recorder(planner.model)
    loss, _ = planner.loss(batch, model=rec, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert rec.inp is not None and rec.out is not None and rec.out.grad is not None
    # The first state enters the denoiser clean, everything else is noised.
    assert torch.equal(rec.inp[:, :, 0, :DS], batch["x"][:, :, 0, :DS])
    assert not torch.equal(rec.inp[:, :, 1:], batch["x"][:, :, 1:])
    # ε̂ at the in-painted entries has no effect on the loss; every other entry counts.
    grad = rec.out.grad
    assert torch.all(grad[:, :, 0, :DS] == 0)
    rest = torch.ones_like(grad, dtype=torch.bool)
    rest[:, :, 0, :DS] = False
    assert torch.all(grad[rest] != 0)


@pytest.mark.parametrize("lam", [1.0, 4.0])
def test_loss_matches_formula(lam: float) -> None:
    """Recompute L = mean_b (1/M) Σ_j w_j Σ_{modelled (h, d)} m_hd (ε − ε̂)² / Σ m_hd from the
    recorded ε̂, m = 0 on the in-painted first state, λ = `first_action_weight` on the first
    action, 1 elsewhere."""
    planner = _planner(cfg=CFG.model_copy(update={"first_action_weight": lam}))
    batch = _batch()
    weights = torch.rand(3, 5, generator=torch.Generator().manual_seed(4)) * 2
    rec = _Recorder(planner.model)
    loss, _ = planner.loss(
        {**batch, "weights": weights}, model=rec, generator=torch.Generator().manual_seed(5)
    )
    assert rec.inp is not None and rec.out is not None and rec.k is not None
    # Recover ε from the noised input, x_k = sqrt(ᾱ_k) x_0 + sqrt(1 − ᾱ_k) ε, at the recorded k.
    ac = planner.schedule.alphas_cumprod[rec.k].view(-1, 1, 1, 1)
    eps = (rec.inp - ac.sqrt() * batch["x"]) / (1 - ac).sqrt()
    sq = (eps - rec.out.detach()) ** 2
    sq[:, :, 0, :DS] = 0.0
    sq[:, :, 0, DS:] *= lam
    per_particle = sq.sum(dim=(2, 3)) / (CFG.window * (DS + A) - DS - A + lam * A)
    expected = (weights * per_particle).sum(dim=1) / 5
    torch.testing.assert_close(loss.detach(), expected.mean(), atol=1e-4, rtol=1e-4)


def test_value_weights() -> None:
    adv = torch.tensor([[0.0, 1.0], [-1.0, 5.0]])
    assert torch.equal(value_weights(adv, 0.0, 20.0), torch.ones(2, 2))
    w = value_weights(adv, 1.0, 1e9)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    assert value_weights(adv, 1.0, 2.0).max() == 2.0


def test_sampling_inpaints_and_is_seeded() -> None:
    planner = _planner()
    ctx, first = torch.rand(2, C), _first_states(2, 6)
    x = planner.sample(ctx, first, torch.Generator().manual_seed(0))
    assert x.shape == (2, 6, CFG.window, DS + A)
    assert torch.equal(x[:, :, 0, :DS], first)
    again = planner.sample(ctx, first, torch.Generator().manual_seed(0))
    other = planner.sample(ctx, first, torch.Generator().manual_seed(1))
    assert torch.equal(x, again)
    assert not torch.equal(x, other)


def test_denoise_steps_inpaints_after_every_step() -> None:
    planner = _planner()
    ctx, first = torch.rand(1, C), _first_states(1, 4)
    gen = torch.Generator().manual_seed(0)
    x = planner.inpaint(torch.randn(1, 4, CFG.window, DS + A, generator=gen), first)
    steps = planner.sampling_sequence()
    cond = planner.conditioning(ctx, None, steps)
    cond.at_stage(first)
    sampler = planner.sampler()
    for k in steps:
        assert sampler.x0(x, k, cond).abs().max() <= 1.0  # clip_denoised
        x = sampler.denoise(x, [k], cond, first, gen, [k - 1])
        assert torch.equal(x[:, :, 0, :DS], first)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_value_guide_shifts_each_reverse_step_and_nothing_else(sampler: str) -> None:
    """A guide's shift g moves a DDPM step's mean by exactly Σ_k·g (same noise); a zero guide
    changes no value of either scheduler's samples."""
    cfg = CFG.model_copy(update={"sampler": sampler, "stages": 1})
    planner = _planner(cfg=cfg)
    ctx, first = torch.rand(2, C), _first_states(2, 4)
    plain = planner.sample(ctx, first, torch.Generator().manual_seed(0))
    planner.guide = lambda x, k, c: torch.zeros_like(x)
    assert torch.equal(planner.sample(ctx, first, torch.Generator().manual_seed(0)), plain)
    if sampler == "ddim":
        return
    shift = torch.randn(2, 4, CFG.window, DS + A, generator=torch.Generator().manual_seed(1))
    planner.guide = lambda x, k, c: shift
    k = 5
    x = planner.inpaint(torch.randn(2, 4, CFG.window, DS + A), first)
    cond = planner.conditioning(ctx, None, [k])
    cond.at_stage(first)
    moved = planner.sampler().denoise(x, [k], cond, first, torch.Generator().manual_seed(2), [4])
    planner.guide = None
    still = planner.sampler().denoise(x, [k], cond, first, torch.Generator().manual_seed(2), [4])
    var = float(planner.schedule.posterior_std[k]) ** 2
    expected = still + var * shift
    expected[:, :, 0, :DS] = first  # the in-painted first state stays
    torch.testing.assert_close(moved, expected, atol=1e-6, rtol=1e-5)
    assert not torch.equal(moved, still)


def test_state_dict_round_trip_weights_only() -> None:
    planner = _planner(seed=3)
    buf = io.BytesIO()
    torch.save({"planner": planner.state_dict(), "step": 10}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    clone = MFDiffuser.from_state_dict(loaded["planner"])
    ctx, first = torch.rand(1, C), _first_states(1, 3)
    x1 = planner.sample(ctx, first, torch.Generator().manual_seed(2))
    x2 = clone.sample(ctx, first, torch.Generator().manual_seed(2))
    assert torch.equal(x1, x2)
    fresh = _planner(seed=4)
    fresh.load_state_dict(loaded["planner"])
    assert torch.equal(fresh.sample(ctx, first, torch.Generator().manual_seed(2)), x1)
    wrong = MFDiffuser.from_spec(CFG, state_dim=DS, n_actions=A + 1, context_dim=C)
    with pytest.raises(ValueError, match="dims"):
        wrong.load_state_dict(loaded["planner"])


class _KeepOutput(nn.Module):
    """The real denoiser, keeping its output's gradient for inspection."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.out = net, torch.empty(0)

    def forward(self, *args: object, **kw: object) -> Tensor:
        self.out = self.net(*args, **kw)
        self.out.retain_grad()
        return self.out


def test_loss_leaves_out_steps_padded_past_the_episode_end() -> None:
    planner = _planner()
    g = torch.Generator().manual_seed(0)
    batch = {
        "x": torch.rand(3, 4, CFG.window, DS + A, generator=g) * 2 - 1,
        "ctx": torch.rand(3, C),
    }
    plain, _ = planner.loss(batch, generator=torch.Generator().manual_seed(1))
    ones = {**batch, "valid": torch.ones(3, CFG.window)}
    assert torch.equal(planner.loss(ones, generator=torch.Generator().manual_seed(1))[0], plain)
    # Sample 0 ends after 2 steps, sample 1 after its first, sample 2 is whole.
    valid = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    net = _KeepOutput(planner.model)
    loss, _ = planner.loss({**batch, "valid": valid}, model=net, generator=g)
    loss.backward()
    grad = net.out.grad
    assert grad is not None
    padded = (valid == 0)[:, None, :, None].expand_as(grad)
    assert torch.all(grad[padded] == 0)
    assert torch.all(grad[:, :, 0, DS:] != 0)  # every sample's first action is learned
    assert torch.all(grad[2, :, 1:] != 0)
