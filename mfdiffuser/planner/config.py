"""Configuration of the MF-Diffuser planner: one object, validated."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _odd(value: int) -> int:
    # An odd kernel with padding k // 2 keeps the window length H unchanged.
    if value % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {value}")
    return value


# The fields other diffusion methods (`madiff`) share with the planner, defined once so that
# their bounds and descriptions cannot drift apart; each model keeps its own default.
Window = Annotated[
    int,
    Field(ge=1, le=1000, description="H: planning window, number of steps per particle, 1..1000."),
]
DiffusionSteps = Annotated[
    int, Field(ge=2, le=1000, description="K: number of denoising steps, 2..1000.")
]
Hidden = Annotated[
    int, Field(ge=1, le=4096, description="Channels of the per-particle temporal trunk, 1..4096.")
]
NBlocks = Annotated[
    int, Field(ge=1, le=64, description="Residual temporal blocks (one interaction each), 1..64.")
]
KernelSize = Annotated[
    int,
    Field(ge=1, le=63, description="Temporal convolution kernel (odd, 'same'), 1..63."),
    AfterValidator(_odd),
]
ClipDenoised = Annotated[
    bool,
    Field(
        description="Clip the clean estimate x̂_0 to [-1, 1] while sampling (features and "
        "one-hot actions are scaled to that box)."
    ),
]
Smoothing = Annotated[
    float,
    Field(
        ge=0.0, le=1e6, description="Additive smoothing of per-state first-action counts, 0..1e6."
    ),
]
Draws = Annotated[
    int,
    Field(
        ge=1, le=1000, description="Seeded draws averaged into the expected policy table, 1..1000."
    ),
]
Readout = Annotated[
    Literal["hard", "soft"],
    Field(
        description="How the per-state action table reads each particle's first action. "
        "'hard': its decoded action (argmax of the action channel), one count per particle. "
        "'soft' (Rao-Blackwellised): the denoiser's clean estimate of the action channel read "
        "as the posterior over actions it is the mean of, p(a) ∝ max(0, (x̂_0[a] + 1) / 2) "
        "(softmax of the head's logits with inverse dynamics), so each particle adds a "
        "distribution: the same table in expectation, with lower variance. Replanning's "
        "particle assignment (replan_every > 1) always uses the decoded actions."
    ),
]
FirstActionWeight = Annotated[
    float,
    Field(
        ge=0.0,
        le=1e6,
        description="λ: weight in the denoising loss of each particle's first action (the cells "
        "acting and the policy table read) relative to the window's other cells, 0..1e6; "
        "1 = every cell alike. Not used with action_head: inverse_dynamics (the head reads the "
        "actions).",
    ),
]
EmaDecay = Annotated[
    float,
    Field(
        ge=0.0,
        lt=1.0,
        description="Decay of an exponential moving average of the weights, updated after every "
        "optimizer step and used for acting and evaluation; 0 = off.",
    ),
]


class PlannerConfig(BaseModel):
    """Every knob of the planner. Dimensions of the game (d_s, A, C) are not here: they come from
    the game itself, so one config serves every benchmark."""

    # strict: a bool is not an int and "5" is not 5; finite floats only
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # trajectory windows and particle sets
    window: Window = 4
    n_particles: int = Field(
        32, ge=1, le=4096, description="M: particles per training sample, 1..4096."
    )
    max_particles: int = Field(
        64,
        ge=1,
        le=4096,
        description="M_max: particle cap when acting; M = min(N, M_max), 1..4096.",
    )

    # denoiser
    diffusion_steps: DiffusionSteps = 20
    hidden: Hidden = 64
    n_blocks: NBlocks = 2
    kernel_size: KernelSize = 3
    interaction: bool = Field(
        True,
        description="Mean-field pooling after every block. False = per-agent Diffuser ablation "
        "(`-s interaction=false`).",
    )
    clip_denoised: ClipDenoised = True

    # hierarchical coarse-to-fine denoising
    stages: int = Field(
        3,
        ge=1,
        le=16,
        description="L: denoising stages with growing particle counts (must be <= the sampling "
        "steps), 1..16; 1 = the flat sampler (the coarse-to-fine ablation, `-s stages=1`).",
    )
    growth: int = Field(
        4,
        ge=2,
        le=64,
        description="b: particle growth per stage, M_l = ceil(M_L / b^(L-l)) (at least 1), 2..64.",
    )
    stage_steps: list[int] | None = Field(
        None,
        description="K_l: denoising steps per stage (coarsest first), summing to diffusion_steps "
        "(to sampling_steps for 'ddim'). "
        "None = the K steps apportioned ∝ 2^(L-l) (a halving geometric series, coarse stages "
        "get more: L = 3, K = 20 gives [11, 6, 3]), largest remainder, at least 1 per stage.",
    )
    branch: Literal["renoise", "ancestral"] = Field(
        "renoise",
        description="How a stage boundary at step k makes children: 'renoise' = "
        "sqrt(ᾱ_k')·x̂_0(parent) + sqrt(1 − ᾱ_k')·ε_new; 'ancestral' = each child is the "
        "sampler's own step k -> k' from its parent's x_k and x̂_0 with its own noise (every "
        "lineage is a flat sampler's chain; with deterministic DDIM, η = 0, the children of one "
        "parent then differ only by their first states). See docs/method.md §4 for measurements.",
    )

    # value-weighted objective (slot: beta = 0 is unweighted trajectory modelling)
    beta: float = Field(
        1.0,
        ge=0.0,
        le=1000.0,
        description="β: inverse temperature of the advantage tilt, 0..1000; 0 = unweighted "
        "trajectory modelling (the value-weighting ablation, `-s beta=0`).",
    )
    weight_clip: float = Field(
        20.0, gt=0.0, le=1e6, description="w_max: clip of normalised weights, (0, 1e6]."
    )
    first_action_weight: FirstActionWeight = 1.0
    advantage_shrinkage: float = Field(
        1.5,
        ge=0.0,
        le=100.0,
        description="z: the dataset advantage is soft-thresholded toward 0 by z standard errors "
        "of Q̂ before the tilt, sign(Â)·max(0, |Â| − z·se); (t, s, a) seen once get Â = 0. "
        "0..100; 0 = the raw Â. Keeps the tilt off noise on data near an equilibrium "
        "(docs/method.md, benchmarks/beta_choice.py).",
    )

    # acting
    smoothing: Smoothing = 0.0
    draws: Draws = 16
    readout: Readout = "hard"
    acting: Literal["finite", "matching", "auto"] = Field(
        "finite",
        description="How agents read actions off particles. 'finite': per-state table of "
        "first actions, each agent samples from π̂_t(· | s_i) (finite S). 'matching': agents are "
        "matched to particles by their state features with balanced loads (floor/ceil(N/M) "
        "agents per particle, sort-based, O(N log N)) and take their particle's action; works "
        "for any game with per-agent features. 'auto': 'finite' when the game has n_states <= "
        "max_particles, else 'matching'. The frozen evaluation table (expected_table) always uses "
        "the finite rule.",
    )
    replan_every: int = Field(
        1,
        ge=1,
        le=1000,
        description="r: replan every r steps; between replans each agent follows its "
        "particle's planned actions. 1 = plan at every step. Must be <= window.",
    )

    # classifier-free return guidance (off by default)
    return_guidance: bool = Field(
        False,
        description="Condition the denoiser on the normalised population return-to-go of the "
        "window's episode from the window start (classifier-free guidance). False = no return "
        "embedding at all (the model is exactly the unguided one).",
    )
    cfg_dropout: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="p: probability that a training sample's return embedding is replaced by "
        "the learned null embedding (only with return_guidance).",
    )
    guidance: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="w: eps = eps_uncond + w·(eps_cond − eps_uncond), 0..100; 0 = unconditional, "
        "1 = conditional, > 1 extrapolates (only with return_guidance).",
    )
    guidance_quantile: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Target return at decision time t: this quantile of the dataset's "
        "population returns-to-go at t, normalised as in training.",
    )

    # Decision-Diffuser style inverse dynamics (an alternative to diffusing actions)
    action_head: Literal["diffuse", "inverse_dynamics"] = Field(
        "diffuse",
        description="'diffuse': actions are diffused with the states. 'inverse_dynamics': the "
        "diffusion models states only and an MLP f(s_t, s_{t+1}, context) -> action logits, "
        "trained with cross-entropy on the same windows, reads the actions (needs window >= 2).",
    )
    inverse_hidden: int = Field(
        64, ge=1, le=4096, description="Width of the inverse-dynamics MLP, 1..4096."
    )

    # Sampler
    sampler: Literal["ddpm", "ddim"] = Field(
        "ddpm", description="'ddpm': ancestral K steps. 'ddim': strided DDIM with sampling_steps."
    )
    sampling_steps: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="DDIM steps (<= diffusion_steps) on an evenly strided sub-schedule of the K "
        "training steps; None = K. Only 'ddim' may use fewer than K.",
    )
    ddim_eta: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="η of DDIM, 0..1: 0 = deterministic given the initial noise; 1 with "
        "sampling_steps = K = DDPM's posterior variance (the ancestral sampler).",
    )

    # Training
    ema_decay: EmaDecay = 0.0

    @property
    def n_sampling_steps(self) -> int:
        """Denoiser evaluations per particle of one sample (K for 'ddpm')."""
        if self.sampler == "ddim" and self.sampling_steps is not None:
            return self.sampling_steps
        return self.diffusion_steps

    @model_validator(mode="after")
    def _check_options(self) -> Self:
        if self.sampling_steps is not None and self.sampling_steps > self.diffusion_steps:
            raise ValueError(
                f"sampling_steps = {self.sampling_steps} must be <= diffusion_steps "
                f"({self.diffusion_steps}); allowed: 1..{self.diffusion_steps}"
            )
        if (
            self.sampler == "ddpm"
            and self.sampling_steps is not None
            and self.sampling_steps != self.diffusion_steps
        ):
            raise ValueError(
                f"sampling_steps = {self.sampling_steps}: fewer steps than diffusion_steps "
                f"({self.diffusion_steps}) need sampler = 'ddim'"
            )
        if self.replan_every > self.window:
            raise ValueError(
                f"replan_every = {self.replan_every} must be <= window ({self.window}): a plan "
                f"has only window steps; allowed: 1..{self.window}"
            )
        if self.action_head == "inverse_dynamics" and self.window < 2:
            raise ValueError(
                f"action_head = 'inverse_dynamics' needs window >= 2 (a state pair), "
                f"got window = {self.window}"
            )
        return self

    @model_validator(mode="after")
    def _check_stages(self) -> Self:
        n_steps = self.n_sampling_steps
        if self.stages > n_steps:
            raise ValueError(
                f"stages ({self.stages}) must be <= the sampling steps ({n_steps}): "
                "every stage needs at least one denoising step"
            )
        if self.stage_steps is not None:
            steps = self.stage_steps
            if len(steps) != self.stages:
                raise ValueError(
                    f"stage_steps must have one entry per stage (stages={self.stages}), "
                    f"got {len(steps)}: {steps}"
                )
            if any(k < 1 for k in steps):
                raise ValueError(f"stage_steps entries must be >= 1, got {steps}")
            if sum(steps) != n_steps:
                raise ValueError(
                    f"stage_steps must sum to the sampling steps ({n_steps}: diffusion_steps, "
                    f"or sampling_steps for 'ddim'), got sum({steps}) = {sum(steps)}"
                )
        return self

    def resolved_stage_steps(self) -> list[int]:
        """K_l per stage, coarsest first: `stage_steps`, or the default documented there.

        The steps are those of the sampler: K, or sampling_steps for 'ddim' (stage boundaries lie
        on the strided schedule)."""
        if self.stage_steps is not None:
            return list(self.stage_steps)
        n, k = self.stages, self.n_sampling_steps
        # One step per stage first, the rest ∝ 2^(L-l) by largest remainder (ties to coarse).
        weights = [2.0 ** (n - 1 - i) for i in range(n)]
        quota = [(k - n) * w / sum(weights) for w in weights]
        steps = [1 + int(q) for q in quota]
        order = sorted(range(n), key=lambda i: (-(quota[i] - int(quota[i])), i))
        for i in order[: k - sum(steps)]:
            steps[i] += 1
        return steps

    def stage_particles(self, m_final: int) -> list[int]:
        """M_l = max(1, ceil(M_L / b^(L-l))) for l = 1..L, ending at M_L = m_final.

        Non-decreasing; strictly increasing unless M_L is small (then some are equal, and the
        sampler merges stages of equal count, see `MFDiffuser.plan_stages`).
        """
        if m_final < 1:
            raise ValueError(f"m_final must be >= 1, got {m_final}")
        n, b = self.stages, self.growth
        # Integer ceil division: exact for any size (no float rounding).
        return [max(1, -(-m_final // b ** (n - 1 - i))) for i in range(n)]
