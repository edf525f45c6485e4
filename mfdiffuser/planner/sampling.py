"""The reverse process, separate from the model (as diffusers separates `Scheduler.step`).

Axes: x[B, M, H, D] = (batch, particle, time, feature). Three parts:
- `NoiseSchedule`: the buffers of a K-step cosine DDPM (also the forward process `q_sample`).
- Schedulers, the next-step map x_k -> x_{k'} given the clean estimate x̂_0: `DDPMScheduler`
  (ancestral posterior step, k' = k − 1) and `DDIMScheduler` (`sampling_steps` S ≤ K evenly
  strided indices round(linspace(K − 1, 0, S)); from k to the next index k' (ᾱ_{-1} = 1)
  x' = sqrt(ᾱ_k')·x̂_0 + sqrt(1 − ᾱ_k' − σ²)·ε̂ + σ·z, σ = η·sqrt((1 − ᾱ_k')/(1 − ᾱ_k)·(1 −
  ᾱ_k/ᾱ_k')), ε̂ recomputed from the (clipped) x̂_0; with S = K and η = 1 this is the DDPM step).
- `Sampler`: runs a scheduler over any model that gives ε̂ (a `Conditioning`), flat
  (`sample`) or coarse-to-fine (`sample_coarse_to_fine`), in-painting every particle's first
  state after every step, with an optional value guide.

Coarse-to-fine: `plan_stages` turns a final count M_L into stage counts M_1 < … < M_L, steps K_l
and `parents[l][M_{l+1}]` (the parent of each child, sorted, so the children of a parent are a
contiguous block; the parents that get an extra child when M_{l+1} is not a multiple of M_l are
drawn from the generator). Stage l runs M_l particles for K_l steps; at its last step k the
children are made from their parent's x_k and clean estimate x̂_0, by `branch` (the config's):
'renoise' (default, `branch_particles`) = sqrt(ᾱ_k')·x̂_0(parent) + sqrt(1 − ᾱ_k')·ε_new at the
next step k'; 'ancestral' = the scheduler's own step k -> k' for each child with its own noise,
so every lineage is a chain of the flat sampler. Either way the children are in-painted with their
own first states and draw one noise tensor of their shape (DDPM). Cost Σ_l M_l·K_l network
evaluations instead of M_L·K. With one stage it is exactly the flat sampler (same random draws
in the same order).

Value guide (classifier guidance, Diffuser): `guide(x_k, k, ctx)` returns s·∇_x Σ J(x_k, k, c);
the DDPM step's mean is shifted by the posterior variance times it (μ + s·Σ_k·∇J), the DDIM step
shifts ε̂ by −sqrt(1 − ᾱ_k) times it. Without a guide no operation of the step changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.denoiser import LeanWeights, MeanFieldDenoiser

Guide = Callable[[Tensor, int, Tensor], Tensor]  # (x_k, k, ctx) -> s·∇_x Σ J
Films = list[tuple[Tensor, Tensor]]  # every block's FiLM (1 + scale, shift)
# Largest FiLM table (elements of cond at all of a stage's steps, times 2) that `at_stage`
# computes in one call per block (4 MiB of float32); above it the FiLM is computed per step.
FILM_TABLE_ELEMENTS = 1 << 20


def cosine_betas(n_steps: int, s: float = 0.008) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal): betas[K] from ᾱ(t) = cos²((t/K + s)/(1 + s)·π/2)."""
    t = np.linspace(0, n_steps, n_steps + 1, dtype=np.float64)
    ac = np.cos(((t / n_steps) + s) / (1 + s) * math.pi / 2) ** 2
    ac = ac / ac[0]
    betas = 1.0 - ac[1:] / ac[:-1]
    return np.clip(betas, 0.0, 0.999)


class NoiseSchedule(nn.Module):
    """Buffers of a K-step DDPM; index k = 0..K-1, k = K-1 is the noisiest step."""

    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_std: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    def __init__(self, n_steps: int) -> None:
        super().__init__()
        self.n_steps = n_steps
        betas = cosine_betas(n_steps)
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.concatenate([[1.0], ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        buffers = {
            "betas": betas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
            # Posterior q(x_{k-1} | x_k, x_0); its variance is 0 at k = 0 (last step = the mean).
            "posterior_std": np.sqrt(post_var),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        }
        self.alphas_cumprod64 = ac  # float64 copy for the DDIM coefficients
        self.posterior_var64 = post_var  # the guide's scale Σ_k
        # Python floats of every buffer for the sampler, whose steps share one k across the
        # batch: a scalar multiply instead of a gather + broadcast per coefficient.
        self.scalars = {name: value.tolist() for name, value in buffers.items()}
        for name, value in buffers.items():
            # Schedules are not learned state: rebuilt from K, so kept out of the state_dict.
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32), persistent=False)

    @staticmethod
    def extract(buf: Tensor, k: Tensor) -> Tensor:
        """buf[K] gathered at k[B] -> [B, 1, 1, 1] to broadcast over (particle, time, feature)."""
        return buf[k].view(-1, 1, 1, 1)

    def q_sample(self, x0: Tensor, k: Tensor, noise: Tensor) -> Tensor:
        """x_k = sqrt(ᾱ_k)·x_0 + sqrt(1 − ᾱ_k)·ε, with k[B]."""
        return (
            self.extract(self.sqrt_alphas_cumprod, k) * x0
            + self.extract(self.sqrt_one_minus_alphas_cumprod, k) * noise
        )


def randn(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> Tensor:
    # Drawn on the generator's device, then moved: a CPU generator reproduces on any device.
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def ddim_sequence(n_steps: int, n_sampling: int) -> list[int]:
    """Descending schedule indices round(linspace(K − 1, 0, S)): distinct for S ≤ K."""
    if not 1 <= n_sampling <= n_steps:
        raise ValueError(f"sampling steps must be in 1..{n_steps}, got {n_sampling}")
    return [int(v) for v in np.rint(np.linspace(n_steps - 1, 0, n_sampling))]


class DDPMScheduler:
    """Ancestral sampling over all K steps: x_{k-1} ~ q(x_{k-1} | x_k, x̂_0)."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule

    def timesteps(self) -> list[int]:
        return list(range(self.schedule.n_steps - 1, -1, -1))

    def step(
        self,
        x: Tensor,
        x0_hat: Tensor,
        k: int,
        k_prev: int,
        generator: torch.Generator,
        shift: Tensor | None = None,
    ) -> Tensor:
        """x_k -> x_{k-1} (k_prev = k − 1); shift: the guide's s·∇J, added times Σ_k."""
        c = self.schedule.scalars
        x = torch.add(x0_hat * c["posterior_mean_coef1"][k], x, alpha=c["posterior_mean_coef2"][k])
        if shift is not None:
            x = x.add_(shift, alpha=float(self.schedule.posterior_var64[k]))
        if k > 0:
            x = x.add_(randn(x.shape, generator, x.device), alpha=c["posterior_std"][k])
        return x


class DDIMScheduler:
    """DDIM on an evenly strided sub-schedule of S ≤ K steps, stochasticity η."""

    def __init__(self, schedule: NoiseSchedule, n_sampling: int, eta: float) -> None:
        self.schedule, self.n_sampling, self.eta = schedule, n_sampling, eta

    def timesteps(self) -> list[int]:
        return ddim_sequence(self.schedule.n_steps, self.n_sampling)

    def _alphas(self, k: int, k_prev: int) -> tuple[float, float]:
        ac = self.schedule.alphas_cumprod64
        return float(ac[k]), (float(ac[k_prev]) if k_prev >= 0 else 1.0)

    def sigma(self, k: int, k_prev: int) -> float:
        """σ of the step k -> k_prev (k_prev = -1: the clean end, ᾱ = 1)."""
        a_k, a_p = self._alphas(k, k_prev)
        return self.eta * math.sqrt((1.0 - a_p) / (1.0 - a_k) * (1.0 - a_k / a_p))

    def step(
        self,
        x: Tensor,
        x0_hat: Tensor,
        k: int,
        k_prev: int,
        generator: torch.Generator,
        shift: Tensor | None = None,
    ) -> Tensor:
        """x_k -> x_{k_prev}; shift: the guide's s·∇J, taken off ε̂ times sqrt(1 − ᾱ_k)."""
        a_k, a_p = self._alphas(k, k_prev)
        eps = (x - math.sqrt(a_k) * x0_hat) / math.sqrt(1.0 - a_k)
        if shift is not None:
            # ε̂ − sqrt(1 − ᾱ_k)·g, and the x̂_0 that ε̂ implies (a zero g changes nothing)
            eps = eps - math.sqrt(1.0 - a_k) * shift
            x0_hat = x0_hat + (1.0 - a_k) / math.sqrt(a_k) * shift
        sigma = self.sigma(k, k_prev)
        x = math.sqrt(a_p) * x0_hat + math.sqrt(max(1.0 - a_p - sigma**2, 0.0)) * eps
        if sigma > 0.0:
            x = x + sigma * randn(x.shape, generator, x.device)
        return x


Scheduler = DDPMScheduler | DDIMScheduler


def make_scheduler(cfg: PlannerConfig, schedule: NoiseSchedule) -> Scheduler:
    if cfg.sampler == "ddim":
        return DDIMScheduler(schedule, cfg.n_sampling_steps, cfg.ddim_eta)
    return DDPMScheduler(schedule)


@dataclass
class Conditioning:
    """ε̂ of a denoiser under the conditioning that stays fixed through one sampling call.

    Context (and target-return) embeddings, the step embedding of every step the sampler visits,
    and the embedding of the current stage's in-painted first states (`at_stage`): computed once
    per call or stage, not at every denoising step, where they were most of a small denoiser
    call's fixed cost. Each step then runs only `MeanFieldDenoiser.trunk`.
    """

    net: MeanFieldDenoiser
    ctx: Tensor  # [B, C], for a value guide
    ctx_u: Tensor  # [B, hidden]: context without return (a guided model's null embedding)
    ctx_c: Tensor | None  # [B, hidden]: context + target return; None = unguided or w = 0
    guidance: float  # w of classifier-free guidance
    steps: dict[int, Tensor] = field(default_factory=dict)  # k -> step embedding [1, hidden]
    state: Tensor | None = None  # [B, M, hidden] of the current stage's first states
    # k -> the blocks' FiLM for ε_u (and ε_c) at the current stage's steps (`at_stage`)
    films: dict[int, tuple[Films, Films | None]] = field(default_factory=dict)
    weights: LeanWeights | None = None  # the trunk's weights for sampling, once per call

    @classmethod
    def of(
        cls,
        net: MeanFieldDenoiser,
        ctx: Tensor,
        ret: Tensor | None,
        guidance: float,
        steps: Sequence[int] = (),
    ) -> Conditioning:
        """Embeddings of ctx[B, C] (and of the target return ret[B], None = unguided) and of
        the diffusion steps `steps`."""
        steps = list(steps)
        table = (
            net.step_embedding(torch.tensor(steps, device=ctx.device, dtype=torch.long))
            if steps
            else None
        )
        guided = ret is not None and guidance != 0.0
        return cls(
            net=net,
            ctx=ctx,
            ctx_u=net.context_embedding(ctx),
            ctx_c=net.context_embedding(ctx, ret) if guided else None,
            guidance=guidance,
            steps={} if table is None else {k: table[i : i + 1] for i, k in enumerate(steps)},
        )

    def at_stage(self, first_states: Tensor, steps: Sequence[int] = ()) -> None:
        """Embed the stage's first states; and, without autograd, compute the blocks' FiLM of
        the conditioning at every step of `steps` (which must have step embeddings) in one
        batched call per block, unless that table would exceed FILM_TABLE_ELEMENTS."""
        self.state = self.net.state_embedding(first_states)
        self.films = {}
        b, m = first_states.shape[:2]
        n = len(steps) * b * (1 if self.state is None else m) * self.ctx_u.shape[-1]
        if (
            not steps
            or torch.is_grad_enabled()
            or n * 2 > FILM_TABLE_ELEMENTS
            or type(self.net).trunk is not MeanFieldDenoiser.trunk  # a subclass's own trunk
        ):
            return
        self.weights = self.weights or self.net.lean_weights()
        emb = torch.cat([self.steps[k] for k in steps])  # [S, hidden]

        def table(ctx_embedding: Tensor) -> list[Films]:
            shared = (emb[:, None] + ctx_embedding[None])[:, :, None]  # [S, B, 1, hidden]
            cond = shared if self.state is None else shared + self.state[None]
            per_block = [(s1p.unbind(0), sh.unbind(0)) for s1p, sh in self.net.films(cond)]
            return [[(s1p[i], sh[i]) for s1p, sh in per_block] for i in range(len(steps))]

        u = table(self.ctx_u)
        c = table(self.ctx_c) if self.ctx_c is not None else [None] * len(steps)
        self.films = {k: (u[i], c[i]) for i, k in enumerate(steps)}

    def eps_at(self, x: Tensor, k: int) -> Tensor:
        """ε̂ at x[B, M, H, D] at a step k of the current stage: from the FiLM table of
        `at_stage` when it holds k, else `eps` with k's step embedding."""
        films = self.films.get(k)
        if films is None:
            return self.eps(x, self.steps[k])
        eps_u = self.net.trunk_filmed(x, films[0], self.weights)
        if films[1] is None:
            return eps_u
        return eps_u + self.guidance * (self.net.trunk_filmed(x, films[1], self.weights) - eps_u)

    def eps(self, x: Tensor, step: Tensor) -> Tensor:
        """ε̂ at x[B, M, H, D] for step embeddings step[B or 1, hidden]: ε_u, or with guidance
        ε_u + w·(ε_c − ε_u)."""

        def eps(ctx_embedding: Tensor) -> Tensor:
            shared = (step + ctx_embedding)[:, None]  # [B, 1, hidden]
            return self.net.trunk(x, shared if self.state is None else shared + self.state)

        eps_u = eps(self.ctx_u)
        if self.ctx_c is None:
            return eps_u
        return eps_u + self.guidance * (eps(self.ctx_c) - eps_u)


@dataclass(frozen=True)
class StagePlan:
    """A coarse-to-fine schedule: counts[L] (strictly increasing, ending at M_L), steps[L] (K_l,
    summing to K) and parents[L-1], parents[l][M_{l+1}] long = index in stage l of each child of
    stage l + 1 (sorted: children of one parent are contiguous; every parent has >= 1 child)."""

    counts: list[int]
    steps: list[int]
    parents: list[Tensor]


def branch_counts(m_parent: int, m_child: int, generator: torch.Generator) -> Tensor:
    """Children per parent, counts[m_parent] long summing to m_child >= m_parent.

    Every parent gets floor(m_child / m_parent); the remainder r = m_child mod m_parent extra
    children go to r distinct parents drawn uniformly (one randperm from `generator`, drawn only
    when r > 0, so an exact multiple consumes no randomness).
    """
    if not 1 <= m_parent <= m_child:
        raise ValueError(f"need 1 <= m_parent <= m_child, got {m_parent}, {m_child}")
    q, r = divmod(m_child, m_parent)
    counts = torch.full((m_parent,), q, dtype=torch.long)
    if r:
        extra = torch.randperm(m_parent, generator=generator, device=generator.device)[:r]
        counts[extra.cpu()] += 1
    return counts


def parents_from_counts(counts: Tensor) -> Tensor:
    """counts[M_l] -> parents[sum(counts)]: parent index of every child, sorted (contiguous)."""
    return torch.repeat_interleave(torch.arange(counts.shape[0]), counts.cpu())


def plan_stages(cfg: PlannerConfig, m_final: int, generator: torch.Generator) -> StagePlan:
    """Stage counts, steps and sampled parent maps for a final count M_L = m_final.

    Counts are `cfg.stage_particles(m_final)` and steps `cfg.resolved_stage_steps()`.
    Consecutive stages with equal counts (small M_L) are merged, their steps added, so counts are
    strictly increasing; one stage left = the flat sampler, and then nothing is drawn from
    `generator`. Branching draws (see `branch_counts`) are made here, coarsest boundary first,
    before any noise of the sampler.
    """
    counts: list[int] = []
    steps: list[int] = []
    for m, k in zip(cfg.stage_particles(m_final), cfg.resolved_stage_steps(), strict=True):
        if counts and counts[-1] == m:
            steps[-1] += k
        else:
            counts.append(m)
            steps.append(k)
    parents = [
        parents_from_counts(branch_counts(counts[i], counts[i + 1], generator))
        for i in range(len(counts) - 1)
    ]
    return StagePlan(counts=counts, steps=steps, parents=parents)


class Sampler:
    """The reverse process of a scheduler over x[B, M, H, D] with in-painted first states.

    The model enters only through a `Conditioning` (ε̂ at a step); `state_dim` says which
    features are the in-painted first state, `clip_denoised` whether x̂_0 is clipped to [-1, 1];
    `guide` is an optional value guide (see the module doc); `branch` how children are made
    at a coarse-to-fine stage boundary (see the module doc)."""

    def __init__(
        self,
        scheduler: Scheduler,
        state_dim: int,
        clip_denoised: bool,
        guide: Guide | None = None,
        branch: str = "renoise",
    ) -> None:
        if branch not in ("ancestral", "renoise"):
            raise ValueError(f"branch must be 'ancestral' or 'renoise', got {branch!r}")
        self.branch = branch
        self.scheduler = scheduler
        self.schedule = scheduler.schedule
        self.state_dim = state_dim
        self.clip_denoised = clip_denoised
        self.guide = guide

    def inpaint(self, x: Tensor, first_states: Tensor) -> Tensor:
        """Fix each particle's first state: x[:, :, 0, :d_s] <- first_states[B, M, d_s]."""
        x = x.clone()
        x[:, :, 0, : self.state_dim] = first_states
        return x

    def x0(self, x: Tensor, k: int, cond: Conditioning) -> Tensor:
        """x̂_0 = x/sqrt(ᾱ_k) − sqrt(1/ᾱ_k − 1)·ε̂ at a step k embedded in `cond`, clipped to
        [-1, 1] if clip_denoised (every step of the sampler, and to branch particles)."""
        c = self.schedule.scalars
        eps = cond.eps_at(x, k)
        x0 = torch.sub(
            x * c["sqrt_recip_alphas_cumprod"][k], eps, alpha=c["sqrt_recipm1_alphas_cumprod"][k]
        )
        return x0.clamp_(-1.0, 1.0) if self.clip_denoised else x0

    @torch.no_grad()
    def denoise(
        self,
        x: Tensor,
        steps: Sequence[int],
        cond: Conditioning,
        first_states: Tensor,
        generator: torch.Generator,
        targets: Sequence[int],
    ) -> Tensor:
        """Steps x_k -> x_{k'} for k in `steps` (descending), k' = targets[i] (the next index
        of the sampling sequence, -1 = clean), in-painting first_states after each.

        `cond` holds the embeddings of `steps` and of first_states (`at_stage`). Runs without
        autograd: a guide that needs gradients enables them itself.
        """
        for k, k_prev in zip(steps, targets, strict=True):
            x0_hat = self.x0(x, k, cond)
            shift = None if self.guide is None else self.guide(x, k, cond.ctx)
            x = self.scheduler.step(x, x0_hat, k, k_prev, generator, shift)
            x[:, :, 0, : self.state_dim] = first_states  # in-paint (x is a new tensor)
        return x

    @torch.no_grad()
    def sample(
        self,
        cond_of: Callable[[Sequence[int]], Conditioning],
        first_states: Tensor,
        window: int,
        transition_dim: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Flat sampler: first_states[B, M, d_s] -> x0[B, M, window, transition_dim].

        cond_of(steps): the model's conditioning for the steps visited. All randomness comes
        from `generator`."""
        b, m, _ = first_states.shape
        x = self.inpaint(
            randn((b, m, window, transition_dim), generator, first_states.device), first_states
        )
        steps = self.scheduler.timesteps()
        cond = cond_of(steps)
        cond.at_stage(first_states, steps)
        return self.denoise(x, steps, cond, first_states, generator, [*steps[1:], -1])

    def branch_particles(self, x0_hat: Tensor, parents: Tensor, k: int, noise: Tensor) -> Tensor:
        """Children at step k from parents' clean estimates (no in-painting, no randomness).

        x0_hat[B, M_l, H, D], parents[M_{l+1}] long, noise[B, M_{l+1}, H, D] ->
        x_k[B, M_{l+1}, H, D] = sqrt(ᾱ_k)·x̂_0[:, parents] + sqrt(1 − ᾱ_k)·noise.
        """
        kk = torch.full((x0_hat.shape[0],), k, device=x0_hat.device, dtype=torch.long)
        return self.schedule.q_sample(x0_hat[:, parents.to(x0_hat.device)], kk, noise)

    @torch.no_grad()
    def sample_coarse_to_fine(
        self,
        cond_of: Callable[[Sequence[int]], Conditioning],
        stage_first_states: Sequence[Tensor],
        parents: Sequence[Tensor],
        stage_steps: Sequence[int],
        window: int,
        transition_dim: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Hierarchical sampler -> x0[B, M_L, window, transition_dim].

        stage_first_states[l][B, M_l, d_s], the in-painted first states of every stage;
        parents[l][M_{l+1}] long, the parent (index in stage l) of every particle of stage l + 1;
        stage_steps[L] (K_l, summing to the sampling steps). Stage l runs its K_l steps on M_l
        particles; at its last step k the children are `branch_particles` of the parents' x̂_0
        at the next step k' ('renoise'), or its step k -> k' is taken for each child from its
        parent's x_k and x̂_0 with fresh noise ('ancestral'); in-painted with the children's
        first states. All randomness comes from `generator`; with one stage
        this is exactly `sample`.
        """
        n_stages = len(stage_first_states)
        steps_l = list(stage_steps)
        if len(steps_l) != n_stages or len(parents) != n_stages - 1:
            raise ValueError(
                f"need one stage_steps entry per stage and one parents map per boundary: "
                f"{n_stages} stages, {len(steps_l)} stage_steps, {len(parents)} parents"
            )
        all_steps = self.scheduler.timesteps()
        if any(k < 1 for k in steps_l) or sum(steps_l) != len(all_steps):
            raise ValueError(
                f"stage_steps must be >= 1 and sum to the sampling steps ({len(all_steps)}), "
                f"got {steps_l}"
            )
        # Target of every step: the next index of the (possibly strided) sequence, -1 = clean.
        nxt = dict(zip(all_steps, [*all_steps[1:], -1], strict=True))
        firsts = list(stage_first_states)
        b = firsts[0].shape[0]
        for i, p in enumerate(parents):
            m_par, m_child = firsts[i].shape[1], firsts[i + 1].shape[1]
            if p.shape != (m_child,) or int(p.min()) < 0 or int(p.max()) >= m_par:
                raise ValueError(
                    f"parents[{i}] must be [M_{i + 2}] = [{m_child}] indices in [0, {m_par}), "
                    f"got shape {tuple(p.shape)}"
                )
        cond = cond_of(all_steps)
        device = firsts[0].device
        x = self.inpaint(
            randn((b, firsts[0].shape[1], window, transition_dim), generator, device), firsts[0]
        )
        start = 0
        for i in range(n_stages):
            stage = all_steps[start : start + steps_l[i]]
            start += steps_l[i]
            cond.at_stage(firsts[i], stage)
            if i == n_stages - 1:
                return self.denoise(x, stage, cond, firsts[i], generator, [nxt[k] for k in stage])
            # The stage's last step k -> k' (k' = the next stage's first step) is taken per
            # child: from the parent's x_k and x̂_0, or re-noised from x̂_0 alone.
            x = self.denoise(
                x, stage[:-1], cond, firsts[i], generator, [nxt[k] for k in stage[:-1]]
            )
            k = stage[-1]
            x0_hat = self.x0(x, k, cond)
            par = parents[i].to(device)
            if self.branch == "ancestral":
                shift = None if self.guide is None else self.guide(x, k, cond.ctx)[:, par]
                x = self.scheduler.step(x[:, par], x0_hat[:, par], k, nxt[k], generator, shift)
            else:
                noise = randn((b, par.shape[0], window, transition_dim), generator, device)
                x = self.branch_particles(x0_hat, par, nxt[k], noise)
            x = self.inpaint(x, firsts[i + 1])
        raise AssertionError("unreachable: the last stage returns")
