"""One registry of named, versioned methods (like the benchmark registry).

Registering a method here enrols it everywhere: the config's `method:` section, `-s method=…`,
the sweep's `method` axis, `mfd methods`, and the registry-wide tests.
"""

from __future__ import annotations

from mfdiffuser.baselines.madiff import MAX_AGENTS as MADIFF_MAX_AGENTS
from mfdiffuser.envs.registry import did_you_mean
from mfdiffuser.methods.base import MethodSpec
from mfdiffuser.plugins import Registry

_MF = "mfdiffuser.methods.mf_diffuser"
_RLLIB = "mfdiffuser.workers.rllib.methods"  # with the Ray code: it runs RLlib

_SPECS = [
    MethodSpec(
        "mf_diffuser",
        1,
        "trained",
        "MF-Diffuser: diffusion over a set of M representative agents' trajectories, "
        "interacting through their empirical measure; value-weighted objective; coarse-to-fine "
        "sampling",
        _MF,
        family="mf_diffuser",
    ),
    MethodSpec(
        "mf_diffuser_flat",
        1,
        "trained",
        "MF-Diffuser with the flat sampler (ablation of coarse-to-fine: stages = 1)",
        _MF,
        fixed={"stages": 1},
        family="mf_diffuser",
    ),
    MethodSpec(
        "mf_diffuser_unweighted",
        1,
        "trained",
        "MF-Diffuser trained on the unweighted objective (ablation of value weighting: beta = 0)",
        _MF,
        fixed={"beta": 0.0},
        family="mf_diffuser",
    ),
    MethodSpec(
        "per_agent_diffuser",
        1,
        "trained",
        "MF-Diffuser without interaction between particles and with the flat sampler: each "
        "agent's trajectory diffused alone (interaction = false, stages = 1)",
        _MF,
        fixed={"interaction": False, "stages": 1},
        family="mf_diffuser",
    ),
    MethodSpec(
        "decision_diffuser",
        1,
        "trained",
        "Decision Diffuser per agent: states diffused without interaction, actions read by an "
        "inverse-dynamics model, classifier-free guidance on the return-to-go",
        _MF,
        fixed={
            "interaction": False,
            "stages": 1,
            "beta": 0.0,
            "action_head": "inverse_dynamics",
            "return_guidance": True,
        },
        family="mf_diffuser",
    ),
    MethodSpec(
        "madiff",
        2,
        "trained",
        "MADiff-style joint diffuser: one denoiser over all N agents' windows with attention "
        "across agents at every block, on MF-Diffuser's schedule, unweighted loss, in-painting "
        "and flat sampler; every agent a particle, so N is limited (see max_agents)",
        "mfdiffuser.baselines.madiff",
        max_agents=MADIFF_MAX_AGENTS,
    ),
    MethodSpec(
        "diffuser",
        1,
        "trained",
        "Diffuser per agent: each agent's trajectory diffused alone with the flat sampler "
        "(interaction = false, stages = 1, beta = 0), guided by a value network trained jointly "
        "on noisy windows to predict each agent's return in its window (guide_scale)",
        "mfdiffuser.baselines.diffuser",
        fixed={
            "interaction": False,
            "stages": 1,
            "beta": 0.0,
            "return_guidance": False,
            "action_head": "diffuse",
        },
    ),
    MethodSpec(
        "bc",
        1,
        "trained",
        "behaviour cloning: a mean-field policy pi(a | s, t, mu) fitted to the data's actions",
        "mfdiffuser.baselines.bc",
    ),
    MethodSpec(
        "mf_iql",
        1,
        "trained",
        "Implicit Q-Learning on mean-field transitions: expectile V, twin Q, a policy extracted "
        "by advantage-weighted regression",
        "mfdiffuser.baselines.mf_iql",
    ),
    MethodSpec(
        "mf_cql",
        1,
        "trained",
        "Conservative Q-Learning on mean-field transitions: twin Q with the CQL penalty, acting "
        "by softmax(Q / temperature)",
        "mfdiffuser.baselines.mf_cql",
    ),
    MethodSpec(
        "rllib_bc",
        1,
        "external",
        "RLlib's behaviour cloning (BC, new API stack) on the data's per-agent transitions, "
        "observing state features, time and mu_t; RLlib's own training loop and checkpoint",
        _RLLIB,
    ),
    MethodSpec(
        "rllib_marwil",
        1,
        "external",
        "RLlib's MARWIL (advantage-weighted imitation with a value function, new API stack) on "
        "the same observations; RLlib's own training loop and checkpoint",
        _RLLIB,
        params_name="MARWILParams",
    ),
    MethodSpec(
        "fp",
        1,
        "reference",
        "fictitious play on the exact mean-field model (no data): an approximate Nash "
        "equilibrium, an exploitability reference",
        "mfdiffuser.methods.reference",
        params_name="FPParams",
    ),
    MethodSpec(
        "omd",
        1,
        "reference",
        "online mirror descent on the exact mean-field model (no data): an exploitability "
        "reference",
        "mfdiffuser.methods.reference",
        params_name="OMDParams",
    ),
]

# The built-in methods, then the plugins' (entry points `mfdiffuser.methods`, read on first use
# in each process: see mfdiffuser.plugins).
METHODS: Registry[MethodSpec] = Registry("method", "mfdiffuser.methods", MethodSpec, _SPECS)


def unknown_method(name: str) -> str:
    return f"unknown method{did_you_mean(name, METHODS)}; allowed: {', '.join(METHODS)}"


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise KeyError(f"method {name!r}: {unknown_method(name)}")
    return METHODS[name]
