"""`madiff`, the joint diffuser, on the Method interface: attention across agents on MF-Diffuser's
shared schedule, loss, in-painting and sampler; every agent of an episode in a training sample;
its agent limit; equivariance; a checkpoint round trip; and that it learns on crowd_1d data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml
from typer.testing import CliRunner

from mfdiffuser.baselines.joint_diffuser import AgentAttention, JointDenoiser
from mfdiffuser.baselines.madiff import MAX_AGENTS, MADiffMethod
from mfdiffuser.cli import app
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import EpisodeArrays, behaviour_prior, episodes_from_table
from mfdiffuser.envs import exploitability, propagate
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.methods.base import Dims
from mfdiffuser.methods.checkpoint import load_checkpoint, save_checkpoint
from mfdiffuser.methods.registry import get_method
from mfdiffuser.methods.training import train_epochs
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser
from mfdiffuser.platform.config import ConfigError, load_config
from mfdiffuser.tuning.sweep import load_sweep

D_S, N_A, C = 5, 3, 7
ROOT = Path(__file__).resolve().parents[2]
SPEC = get_method("madiff")
TINY = {"window": 3, "diffusion_steps": 5, "hidden": 16, "n_blocks": 2, "heads": 4}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny tensors: extra threads only add synchronisation cost on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def denoiser(attention: str = "fused", seed: int = 0, open_gates: bool = True) -> JointDenoiser:
    """A joint denoiser; with `open_gates` its attention gates (zero at initialisation) are set
    to random weights, as after training, so that the attention reaches the output."""
    torch.manual_seed(seed)
    net = JointDenoiser(D_S + N_A, C, D_S, hidden=16, n_blocks=2, heads=4, attention=attention)  # type: ignore[arg-type]
    if open_gates:
        for mixer in net.mixers:
            torch.nn.init.normal_(mixer.gate[1].weight, std=0.5)
            torch.nn.init.normal_(mixer.gate[1].bias, mean=1.0, std=0.1)
    return net


def inputs(b: int, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, n, 3, D_S + N_A, generator=g) * 2 - 1
    return x, torch.tensor([1, 3])[:b], torch.rand(b, C, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def crowd() -> tuple[object, np.ndarray, EpisodeArrays]:
    """crowd_1d (10 cells, horizon 10) medium data: 400 episodes of 30 agents. Enough that its
    empirical behaviour is close to the true one (exploitability 1.46 vs 1.40; 1.57 with 40
    episodes, too near the learns test's bar for even a perfect imitator)."""
    spec = get_benchmark("crowd_1d")
    game = spec.game({"size": 10, "horizon": 10})
    made = spec.behaviour(game, "medium")
    table, _ = generate_shard(lambda: spec.make_sim(game, 30), made.policies, range(400), 0)
    arrays = episodes_from_table(table, 30)
    return game, behaviour_prior(arrays, game.n_states, game.n_actions), arrays


def test_it_is_mf_diffusers_planner_with_the_attention_denoiser() -> None:
    method = SPEC.build(SPEC.params(TINY), Dims(D_S, N_A, C, 4, 6))
    assert isinstance(method, MADiffMethod) and type(method.planner) is MFDiffuser
    assert isinstance(method.planner.model, JointDenoiser)
    cfg = method.planner.cfg
    assert (cfg.stages, cfg.beta, cfg.max_particles) == (1, 0.0, MAX_AGENTS)
    assert all(isinstance(m, AgentAttention) for m in method.planner.model.mixers)
    # Its loss weights each agent's first action (the cells acting reads) 10x by default, leaves
    # the in-painted first state out, and counts every other cell once.
    mask = method.planner.objective.loss_mask(3, torch.device("cpu"))
    assert mask[0, :D_S].eq(0).all() and mask[0, D_S:].eq(10).all() and mask[1:].eq(1).all()
    # The shared flat sampler in-paints every agent's first state.
    _, _, ctx = inputs(2, 6)
    first = torch.rand(2, 6, D_S) * 2 - 1
    x0 = method.planner.sample(ctx, first, torch.Generator().manual_seed(0))
    assert x0.shape == (2, 6, 3, D_S + N_A) and torch.equal(x0[:, :, 0, :D_S], first)


def test_naive_and_fused_attention_agree() -> None:
    fused, naive = denoiser("fused"), denoiser("naive")
    naive.load_state_dict(fused.state_dict())
    x, k, ctx = inputs(2, 9)
    with torch.no_grad():
        out = fused(x, k, ctx)
        torch.testing.assert_close(naive(x, k, ctx), out, atol=1e-5, rtol=1e-5)
    assert out.abs().max() > 1e-2  # not trivially equal


def test_attention_gates_start_closed() -> None:
    """Untrained, every attention gate is zero (adaLN-Zero): each agent's output does not depend
    on the other agents, so the untrained joint model is the per-agent denoiser; the gates are
    a function of the conditioning, so once trained they open per (diffusion step, (t, mu))."""
    net = denoiser(open_gates=False).eval()
    x, k, ctx = inputs(2, 7)
    other = x.clone()
    other[:, 1:] = -other[:, 1:]
    with torch.no_grad():
        torch.testing.assert_close(net(other, k, ctx)[:, 0], net(x, k, ctx)[:, 0])
        alone = net(x[:, :1], k, ctx)[:, 0]  # the same agent sampled without the others
        torch.testing.assert_close(alone, net(x, k, ctx)[:, 0])
        gated = denoiser(open_gates=True).mixers[0].gate(torch.rand(2, 7, 16))
    assert gated.std() > 0.1  # opened, the gate varies with its conditioning


def test_permutation_equivariance_over_agents() -> None:
    net = denoiser().eval()
    x, k, ctx = inputs(2, 7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = net(x, k, ctx)
        torch.testing.assert_close(net(x[:, perm], k, ctx), out[:, perm], atol=1e-5, rtol=1e-5)
        # Not trivially equivariant: each agent's output depends on the others (attention).
        other = x.clone()
        other[:, 1:] = -other[:, 1:]
        assert (net(other, k, ctx)[:, 0] - out[:, 0]).abs().max() > 1e-3


def test_a_training_sample_holds_all_agents_of_its_episode(crowd: tuple) -> None:
    game, _, arrays = crowd
    method = SPEC.build(SPEC.params({"window": 2}), Dims.of(game))
    raw = method.batches(arrays, game, seed=0).sample(8)
    assert raw["x"].shape == (8, 30, 2, game.feature_dim + game.n_actions)
    for b in range(8):
        episode, t0 = raw["episode"][b], raw["t0"][b]
        # Every agent exactly once: the sample's first states are the episode's states at t0.
        assert sorted(raw["first_states"][b]) == sorted(arrays.states[episode, t0])
    orders = {tuple(raw["first_states"][b]) for b in range(8)}
    assert len(orders) > 1  # agents in random order, not always the same


def test_agent_limit_refuses_configs_and_skips_sweep_cells(tmp_path: Path) -> None:
    crowd_1d = get_benchmark("crowd_1d")
    assert SPEC.max_agents == MAX_AGENTS
    assert SPEC.cannot_run(crowd_1d, [MAX_AGENTS]) is None
    reason = SPEC.cannot_run(crowd_1d, [100, MAX_AGENTS + 1])
    assert reason == (
        f"madiff acts for at most {MAX_AGENTS} agents (a joint model over all N), "
        f"asked for N = {MAX_AGENTS + 1}"
    )
    # `mfd train` refuses before any Ray or MLflow work: exit 2, one line.
    ray_before = ray.is_initialized()  # the session's Ray may run already (integration tests)
    result = CliRunner().invoke(
        app,
        ["train", "-s", "method=madiff", "-s", "n_agents=2000", "--storage", str(tmp_path / "s")],
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: method.name = 'madiff': madiff acts for at most {MAX_AGENTS} agents "
        "(a joint model over all N), asked for N = 2000\n"
    )
    assert ray.is_initialized() == ray_before and sorted(p.name for p in tmp_path.iterdir()) == []
    # A sweep skips the cells above the limit, with the reason, and runs the rest.
    sweep = tmp_path / "sweep.yaml"
    base = yaml.safe_load((ROOT / "configs/sweep_quickstart.yaml").read_text())
    base["sweep"] = {"grid": {"N": [100, 2000], "method": ["mf_diffuser", "madiff"]}}
    base.pop("method")
    sweep.write_text(yaml.safe_dump(base))
    loaded = load_sweep(sweep)
    assert sorted((t.axes["N"], t.method) for t in loaded.trials) == [
        (100, "madiff"),
        (100, "mf_diffuser"),
        (2000, "mf_diffuser"),
    ]
    (skipped,) = loaded.skipped
    assert (skipped.method, skipped.n_agents) == ("madiff", 2000)
    assert skipped.reason.endswith("asked for N = 2000")
    with pytest.raises(ConfigError, match=r"method\.params\.heads = 3 must divide hidden = 16"):
        load_config(None, ["method=madiff", "hidden=16", "heads=3"])


def test_checkpoint_round_trip_is_bit_exact_and_acts_identically(
    crowd: tuple, tmp_path: Path
) -> None:
    game, prior, arrays = crowd
    torch.manual_seed(0)
    method = SPEC.build(SPEC.params(TINY), Dims.of(game))
    train_epochs(
        method,
        method.batches(arrays, game, seed=0),
        epochs=1,
        steps_per_epoch=3,
        batch_size=2,
        lr=1e-2,
        on_epoch=lambda *_: None,
    )
    save_checkpoint(tmp_path, method, prior, {"epoch": 1})
    loaded, prior2, meta, _ = load_checkpoint(tmp_path)
    assert isinstance(loaded, MADiffMethod) and meta["method"]["name"] == "madiff"
    np.testing.assert_array_equal(prior2, prior)
    saved, back = method.state_dict()["model"], loaded.state_dict()["model"]
    assert saved.keys() == back.keys()
    assert all(torch.equal(saved[k], back[k]) for k in saved)
    states = arrays.states[0, 0]
    a, b = (
        m.policy(game, prior, seed=3).act(0, states, np.random.default_rng(1))
        for m in (method, loaded)
    )
    np.testing.assert_array_equal(a, b)
    assert a.shape == (30,) and set(a.tolist()) <= {0, 1, 2}


def test_learns_on_crowd_1d_medium_data(crowd: tuple) -> None:
    """At seeds 0, 1 and 2, each with its own untrained self (same seed, same readout), the
    frozen table's exploitability is at least 30% below the untrained one's (issue 10's bar).

    The budget: 1,000 steps of batch 64. Measured (hard readout, one thread): 2.385 -> 1.515,
    3.049 -> 1.891, 2.524 -> 1.650 (36.5%, 38.0%, 34.6%). With 800 steps of batch 16 the drops
    were 27%, 31%, 31%: the joint model's windows hold all 30 agents, so a batch of 16 windows is
    a noisy gradient; batch 32 gave 29.6%, 34.0%, 32.7%, batch 64 at 800 steps 36.3%, 35.3%,
    30.4%."""
    game, prior, arrays = crowd
    params = SPEC.params(
        {"window": 1, "diffusion_steps": 10, "hidden": 32, "n_blocks": 1, "heads": 2, "draws": 16}
    )

    def table_exploitability(seed: int, steps: int) -> float:
        torch.manual_seed(seed)
        method = SPEC.build(params, Dims.of(game))
        if steps:
            batches = method.batches(arrays, game, seed=seed)
            train_epochs(
                method,
                batches,
                epochs=1,
                steps_per_epoch=steps,
                batch_size=64,
                lr=3e-3,
                on_epoch=lambda *_: None,
            )
        table = method.policy(game, prior, seed).expected_table(lambda p: propagate(game, p), seed)
        return exploitability(game, table)

    pairs = [(table_exploitability(s, 0), table_exploitability(s, 1000)) for s in (0, 1, 2)]
    drops = [1 - trained / untrained for untrained, trained in pairs]
    assert min(drops) >= 0.30, pairs


def test_shares_the_planners_field_definitions() -> None:
    """The fields madiff takes over from MF-Diffuser are one definition: the same bounds,
    description and validators (an even kernel is refused by both with the same message)."""
    shared = ["window", "diffusion_steps", "hidden", "n_blocks", "kernel_size"]
    shared += ["clip_denoised", "smoothing", "draws", "ema_decay"]
    ours, planner = SPEC.params_model.model_fields, PlannerConfig.model_fields
    for name in shared:
        assert ours[name].metadata == planner[name].metadata, name
        assert ours[name].description == planner[name].description, name
    for model in (SPEC.params_model, PlannerConfig):
        with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
            model.model_validate({"kernel_size": 4})
        with pytest.raises(ValueError, match="less than or equal to 1000"):
            model.model_validate({"window": 1001})


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        (
            ["n_agents=1000", "train.batch_size=128", "hidden=1024"],
            "train.batch_size x data.n_agents x method.params.window x method.params.hidden = "
            "128 x 1000 x 4 x 1024 = 5.24e+08 floats per activation",
        ),
        (  # fits with the fused attention (2.6e8 floats), not with its N² score matrix
            ["n_agents=1000", "train.batch_size=64", "hidden=1024", "attention=naive"],
            "train.batch_size x method.params.window x method.params.heads x data.n_agents x "
            "data.n_agents = 64 x 4 x 4 x 1000 x 1000 = 1.02e+09 floats per activation",
        ),
    ],
)
def test_config_refuses_activations_over_the_memory_bound(settings: list[str], line: str) -> None:
    """madiff's activations hold all N agents of a window (and N² scores per head with the
    naive attention): `mfd config` bounds those, naming madiff's own fields."""
    runner = CliRunner()
    args = ["config", "-s", "method=madiff"]
    fused = [s for s in settings if not s.startswith("attention")]
    if len(fused) < len(settings):
        assert runner.invoke(app, [*args, *(a for s in fused for a in ("-s", s))]).exit_code == 0
    result = runner.invoke(app, [*args, *(a for s in settings for a in ("-s", s))])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {line}; allowed: <= 2^28 (1 GiB of float32)\n"
