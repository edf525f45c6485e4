"""mfglib: any MFGLib 0.3.0 `Environment` as a finite mean-field game (the `mfglib` benchmark).

MFGLib (Guo et al., https://github.com/radar-research-lab/MFGLib) describes a game by callables
`reward(t, L_t)` -> r[*S, *A] and `prob(t, L_t)` -> P[*S_dst, *S_src, *A] of the state-action
distribution L_t[*S, *A], with T + 1 epochs t = 0..T and a reward at every one of them (the
last included) and transitions between them. Here:

- Time: our horizon is MFGLib's T + 1 (decision epochs t = 0..T, a reward at each, no move after
  the last): the convention of `finite.py`, as `sis` = susceptible_infected with T = 50 has
  horizon 51. MFGLib's prob(T, .) is never used (the last epoch has no transition), and the
  simulator leaves agents where they are after the last epoch.
- Indices: multi-dimensional states and actions are flattened ROW-MAJOR (C order, the last axis
  fastest): state s = ravel_multi_index((s_0, .., s_k), S), e.g. building_evacuation's
  (floor, row, column) is s = (floor * floor_l + row) * floor_w + column; actions likewise
  (equilibrium_price's (q, h) is a = q * (H + 1) + h). `state_index` / `state_coordinates`
  convert. policy[T, S, A] of ours is MFGLib's pi[T + 1, *S, *A] reshaped.
- Mean field: the three MFGLib environments whose rewards or dynamics depend on the actions of
  the population (conservative_treasure_hunting, equilibrium_price, random_linear) are
  state-action mean-field games (`state_action_mean_field = True`: they receive L_t[S, A]);
  the others depend on mu_t only and receive mu_t[S], handed to MFGLib as L_t = mu_t x uniform
  (any L_t with that state marginal gives the same numbers for them; the agreement tests use
  non-uniform policies, which would show it otherwise). A user's own `Environment` wrapped with
  `MFGLibGame` is treated as state-action unless told otherwise.
- Precision: every call to MFGLib runs under torch's float64 default dtype, and the environment
  is built under float64 inside `torch.random.fork_rng()` (random_linear and crowd_motion seed
  torch and draw their tensors in their constructors), so the caller's RNG and dtype are left
  as they were and the numbers are float64 throughout.
- Dense transitions: MFGLib's transitions are dense S x S x A tensors, so this family is the
  documented exception to the package's "never dense" rule. One epoch's tensor is held as
  float64 P[S * A, S]; an environment with S * S * A > `MAX_DENSE_ENTRIES` (2^25 entries,
  256 MiB) is refused with an error naming the sizes, and the tensors kept for reuse (one per
  epoch, for the population flow they were computed at) are capped at `CACHE_BYTES` in all.

MFGLib is an optional dependency (`pip install mfglib==0.3.0`, in the `dev` extra); without it,
building a game of this family raises an ImportError saying so. Importing this module imports
neither MFGLib nor torch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from mfdiffuser.envs.finite import FiniteMeanFieldGame, FloatArray, IntArray, sparse_rows

MFGLIB_VERSION = "0.3.0"
INSTALL_HINT = f"pip install mfglib=={MFGLIB_VERSION}"
MAX_DENSE_ENTRIES = 2**25  # S * S * A float64 entries of one epoch's transitions (256 MiB)
CACHE_BYTES = 2**30  # transition and reward tensors kept for reuse, all epochs together

EnvName = Literal[
    "beach_bar",
    "building_evacuation",
    "conservative_treasure_hunting",
    "crowd_motion",
    "equilibrium_price",
    "left_right",
    "linear_quadratic",
    "random_linear",
    "rock_paper_scissors",
    "susceptible_infected",
]
ENV_NAMES: tuple[str, ...] = get_args(EnvName)

# The environments whose rewards or dynamics depend on the population's actions (L_t).
STATE_ACTION_ENVS = frozenset(
    {"conservative_treasure_hunting", "equilibrium_price", "random_linear"}
)

# Each environment's constructor keyword arguments (MFGLib 0.3.0 `Environment.<name>`), their
# types and defaults, as MFGLib declares them (tests/unit/test_mfglib_family.py checks this
# table against MFGLib's signatures). `mu0` is not exposed: each environment's own default.
_FIVE = tuple[float, float, float, float, float]
ENV_KWARGS: dict[str, dict[str, tuple[Any, Any]]] = {
    "beach_bar": {
        "T": (int, 2),
        "n": (int, 4),
        "bar_loc": (int, 2),
        "log_eps": (float, 1e-20),
        "p_still": (float, 0.5),
    },
    "building_evacuation": {
        "T": (int, 3),
        "n_floor": (int, 5),
        "floor_l": (int, 10),
        "floor_w": (int, 10),
        "log_eps": (float, 1e-20),
        "eta": (float, 1.0),
        "evac_r": (float, 10.0),
    },
    "conservative_treasure_hunting": {
        "T": (int, 5),
        "n": (int, 3),
        "r": (tuple[float, ...], (1.0, 1.0, 1.0)),
        "c": (tuple[float, ...], (1.0, 1.0, 1.0, 1.0, 1.0)),
    },
    "crowd_motion": {
        "T": (int, 3),
        "torus_l": (int, 20),
        "torus_w": (int, 20),
        "loc_change_freq": (int, 2),
        "c": (float, 10.0),
        "log_eps": (float, 1e-10),
        "p_still": (float, 0.5),
        "seed": (int, 0),
    },
    "equilibrium_price": {
        "T": (int, 4),
        "s_inv": (int, 3),
        "Q": (int, 2),
        "H": (int, 2),
        "d": (float, 1.0),
        "e0": (float, 1.0),
        "sigma": (float, 1.0),
        "c": (_FIVE, (1.0, 1.0, 1.0, 1.0, 1.0)),
    },
    "left_right": {},
    "linear_quadratic": {
        "T": (int, 3),
        "el": (int, 5),
        "m": (int, 2),
        "sigma": (float, 3.0),
        "delta": (float, 0.1),
        "k": (float, 1.0),
        "q": (float, 0.01),
        "kappa": (float, 0.5),
        "c_term": (float, 1.0),
    },
    "random_linear": {"T": (int, 3), "n": (int, 5), "m": (float, 10.0), "seed": (int, 0)},
    "rock_paper_scissors": {"T": (int, 1)},
    "susceptible_infected": {"T": (int, 50)},
}
_KWARG_NAMES = sorted({k for kwargs in ENV_KWARGS.values() for k in kwargs})


def _import_mfglib() -> tuple[Any, Any]:
    """(torch, mfglib.env.Environment), or an ImportError saying how to install MFGLib."""
    try:
        import torch
        from mfglib.env import Environment
    except ImportError as err:
        raise ImportError(
            f"benchmark mfglib needs MFGLib {MFGLIB_VERSION}, which is not installed "
            f"({err}); install it with `{INSTALL_HINT}` (it is in the `dev` extra)"
        ) from None
    return torch, Environment


@contextmanager
def torch_float64(torch: Any) -> Iterator[None]:
    """torch's default dtype float64 inside, the caller's again after (MFGLib builds its tensors
    in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class MFGLibParams(BaseModel):
    """`benchmark.params` of `mfglib`: the environment and its constructor's keyword arguments.

    Each keyword argument is optional: unset (None) is the chosen environment's own default, and
    the validated parameters record every argument of that environment with its value. Setting
    one the environment does not take is an error naming it, its value and what is allowed.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    env: EnvName = Field(
        "beach_bar",
        description="MFGLib 0.3.0 environment (`Environment.<env>`), one of: "
        + ", ".join(ENV_NAMES),
    )
    T: int | None = Field(
        None,
        ge=0,
        description="MFGLib's T: epochs 0..T, so the horizon is T + 1 (all but left_right)",
    )
    n: int | None = Field(
        None,
        ge=1,
        description="states (beach_bar, conservative_treasure_"
        "hunting, random_linear; also their actions for the last two)",
    )
    bar_loc: int | None = Field(None, ge=0, description="beach_bar: the bar's cell, 0..n-1")
    log_eps: float | None = Field(
        None,
        gt=0.0,
        description="log(mu + log_eps) offset (beach_bar, building_evacuation, crowd_motion)",
    )
    p_still: float | None = Field(
        None, ge=0.0, le=1.0, description="probability of staying put (beach_bar, crowd_motion)"
    )
    n_floor: int | None = Field(None, ge=1, description="building_evacuation: floors")
    floor_l: int | None = Field(None, ge=1, description="building_evacuation: floor length")
    floor_w: int | None = Field(None, ge=1, description="building_evacuation: floor width")
    eta: float | None = Field(None, description="building_evacuation: crowd aversion")
    evac_r: float | None = Field(None, description="building_evacuation: evacuation reward")
    r: tuple[float, ...] | None = Field(
        None, description="conservative_treasure_hunting: treasure per state (length n)"
    )
    c: float | tuple[float, ...] | None = Field(
        None,
        description="crowd_motion: bar reward weight (a number); conservative_treasure_"
        "hunting: costs per epoch (length T); equilibrium_price: the five cost coefficients",
    )
    torus_l: int | None = Field(None, ge=1, description="crowd_motion: torus length")
    torus_w: int | None = Field(None, ge=1, description="crowd_motion: torus width")
    loc_change_freq: int | None = Field(
        None, ge=1, description="crowd_motion: epochs between bar moves"
    )
    seed: int | None = Field(
        None,
        ge=0,
        description="torch seed of the environment's random draws (crowd_motion, random_linear)",
    )
    s_inv: int | None = Field(None, ge=0, description="equilibrium_price: inventory capacity")
    Q: int | None = Field(None, ge=0, description="equilibrium_price: largest consumption")
    H: int | None = Field(None, ge=0, description="equilibrium_price: largest replenishment")
    d: float | None = Field(None, description="equilibrium_price: demand scale")
    e0: float | None = Field(None, description="equilibrium_price: demand offset")
    sigma: float | None = Field(
        None, description="equilibrium_price: demand elasticity; linear_quadratic: noise scale"
    )
    el: int | None = Field(None, ge=1, description="linear_quadratic: states are -el..el")
    m: float | None = Field(
        None,
        description="linear_quadratic: actions are -m..m (an integer); random_linear: "
        "scale of the random coefficients",
    )
    delta: float | None = Field(None, description="linear_quadratic: time step")
    k: float | None = Field(None, description="linear_quadratic: mean-reversion speed")
    q: float | None = Field(None, description="linear_quadratic: cross-cost weight")
    kappa: float | None = Field(None, description="linear_quadratic: deviation cost")
    c_term: float | None = Field(None, description="linear_quadratic: terminal cost weight")

    @model_validator(mode="after")
    def _env_kwargs(self) -> MFGLibParams:
        allowed = ENV_KWARGS[self.env]
        for name in _KWARG_NAMES:
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, allowed[name][1] if name in allowed else None)
                continue
            if name not in allowed:
                raise ValueError(
                    f"{name} = {value!r}: not a parameter of MFGLib's {self.env}; allowed: "
                    + (", ".join(["env", *allowed]) if allowed else "env only")
                )
            kind = allowed[name][0]
            if kind is int and isinstance(value, float) and value.is_integer():
                value = int(value)  # m of linear_quadratic: the shared field is a float
            try:
                checked = TypeAdapter(kind).validate_python(value, strict=kind is int)
            except ValidationError:
                raise ValueError(
                    f"{name} = {value!r}: {self.env} takes {getattr(kind, '__name__', kind)} here"
                ) from None
            object.__setattr__(self, name, checked)
        check_dense_size(self.env, *self.shapes())
        return self

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """MFGLib's state and action shapes (env.S, env.A) of these parameters, known without
        building the environment (whose constructor already allocates its dense tensors)."""
        p = self
        shapes: dict[str, Any] = {
            "beach_bar": lambda: ((p.n,), (3,)),
            "building_evacuation": lambda: ((p.n_floor, p.floor_l, p.floor_w), (6,)),
            "conservative_treasure_hunting": lambda: ((p.n,), (p.n,)),
            "crowd_motion": lambda: ((p.torus_l, p.torus_w), (5,)),
            "equilibrium_price": lambda: ((p.s_inv + 1,), (p.Q + 1, p.H + 1)),  # type: ignore[operator]
            "left_right": lambda: ((3,), (2,)),
            "linear_quadratic": lambda: ((2 * p.el + 1,), (2 * int(p.m) + 1,)),  # type: ignore[operator, arg-type]
            "random_linear": lambda: ((p.n,), (p.n,)),
            "rock_paper_scissors": lambda: ((4,), (3,)),
            "susceptible_infected": lambda: ((2,), (2,)),
        }
        return shapes[self.env]()  # type: ignore[no-any-return]

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `Environment.<env>`, every one given."""
        return {name: getattr(self, name) for name in ENV_KWARGS[self.env]}


def check_dense_size(
    name: str,
    state_shape: tuple[int, ...],
    action_shape: tuple[int, ...],
    max_entries: int = MAX_DENSE_ENTRIES,
) -> None:
    """ValueError naming the sizes when one epoch's dense transitions S x S x A are too big."""
    n_s, n_a = math.prod(state_shape), math.prod(action_shape)
    entries = n_s * n_s * n_a
    if entries > max_entries:
        raise ValueError(
            f"MFGLib environment {name} (states {state_shape}, actions {action_shape}): its "
            f"dense transitions hold S x S x A = {n_s} x {n_s} x {n_a} = {entries:,} float64 "
            f"entries ({entries * 8 / 2**20:,.0f} MiB per epoch), more than the limit of "
            f"{max_entries:,} ({max_entries * 8 / 2**20:,.0f} MiB); choose smaller sizes"
        )


def make_environment(name: str, **kwargs: Any) -> Any:
    """MFGLib's `Environment.<name>(**kwargs)`, built in float64 with the caller's torch RNG
    untouched (random_linear and crowd_motion seed torch in their constructors)."""
    torch, environment = _import_mfglib()
    if name not in ENV_NAMES:
        raise ValueError(
            f"env = {name!r}: not an MFGLib environment; allowed: {', '.join(ENV_NAMES)}"
        )
    with torch.random.fork_rng(devices=[]), torch_float64(torch):
        try:
            return getattr(environment, name)(**kwargs)
        except (ValueError, TypeError) as err:
            raise ValueError(f"benchmark.params: MFGLib's {name} refuses {kwargs}: {err}") from None


class MFGLibGame(FiniteMeanFieldGame):
    """An MFGLib `Environment` as a FiniteMeanFieldGame (see the module docstring for the time
    convention, the row-major flattening and the dense-transition limit)."""

    def __init__(
        self,
        env: Any,
        *,
        name: str = "custom",
        state_action: bool = True,
        max_dense_entries: int = MAX_DENSE_ENTRIES,
    ) -> None:
        torch, _ = _import_mfglib()
        self._torch = torch
        self.env = env
        self.name = name
        self.state_shape = tuple(int(x) for x in env.S)
        self.action_shape = tuple(int(x) for x in env.A)
        self.n_states = math.prod(self.state_shape)
        self.n_actions = math.prod(self.action_shape)
        self.horizon = int(env.T) + 1
        check_dense_size(name, self.state_shape, self.action_shape, max_dense_entries)
        self.state_action_mean_field = bool(state_action)
        self.mu0 = np.asarray(env.mu0.detach().cpu().numpy(), dtype=np.float64).reshape(-1)
        self._cache: OrderedDict[tuple[str, int], tuple[FloatArray, FloatArray]] = OrderedDict()
        self._cache_bytes = 0
        # the sparse form of the last dense rows handed out, and the stay-put table
        self._sparse: tuple[FloatArray, tuple[IntArray, FloatArray]] | None = None
        self._stay: tuple[IntArray, FloatArray] | None = None

    def clear_cache(self) -> None:
        """Forget the reward and transition tensors kept for reuse (a timing's fresh start)."""
        self._cache.clear()
        self._cache_bytes = 0
        self._sparse = None

    # Index conversion (row-major, see the module docstring).
    def state_index(self, coordinates: Any) -> IntArray:
        return np.ravel_multi_index(tuple(np.asarray(coordinates).T), self.state_shape)

    def state_coordinates(self, states: Any) -> IntArray:
        return np.stack(np.unravel_index(np.asarray(states), self.state_shape), axis=-1)

    def _field(self, mf: FloatArray) -> Any:
        """L_t as MFGLib's torch tensor [*S, *A] (mu_t x uniform for a mu-only environment)."""
        mf = np.asarray(mf, dtype=np.float64)
        if self.state_action_mean_field:
            if mf.shape != (self.n_states, self.n_actions):
                raise ValueError(
                    f"{self.name}: a state-action mean field L_t[S, A] = "
                    f"{(self.n_states, self.n_actions)} is expected, got shape {mf.shape}"
                )
            big_l = mf
        else:
            if mf.shape != (self.n_states,):
                raise ValueError(
                    f"{self.name}: a state distribution mu_t[S] = ({self.n_states},) is "
                    f"expected, got shape {mf.shape}"
                )
            big_l = np.repeat(mf[:, None] / self.n_actions, self.n_actions, axis=1)
        tensor = self._torch.from_numpy(np.ascontiguousarray(big_l))
        return tensor.reshape(*self.state_shape, *self.action_shape)

    def _cached(self, kind: str, t: int, mf: FloatArray) -> FloatArray:
        key = (kind, t)
        mf = np.asarray(mf, dtype=np.float64)
        hit = self._cache.get(key)
        if hit is not None and hit[0].shape == mf.shape and np.array_equal(hit[0], mf):
            self._cache.move_to_end(key)
            return hit[1]
        torch = self._torch
        with torch_float64(torch), torch.no_grad():
            big_l = self._field(mf)
            if kind == "reward":
                out = self.env.reward(t, big_l).to(torch.float64)
                value = out.reshape(self.n_states, self.n_actions).numpy().copy()
            else:  # prob[*S_dst, *S_src, *A] -> P[S_src * A, S_dst]
                out = self.env.prob(t, big_l).to(torch.float64)
                p = out.reshape(self.n_states, self.n_states * self.n_actions)
                value = np.ascontiguousarray(p.numpy().T)
        if hit is not None:
            self._cache_bytes -= hit[0].nbytes + hit[1].nbytes
            del self._cache[key]
        self._cache[key] = (mf.copy(), value)
        self._cache_bytes += mf.nbytes + value.nbytes
        while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, (old_mf, old) = self._cache.popitem(last=False)
            self._cache_bytes -= old_mf.nbytes + old.nbytes
        return value

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        return self._cached("reward", t, mu)

    def transition_matrix(self, t: int, mu: FloatArray) -> FloatArray:
        """P[s * A + a, s'] of epoch t under the population mu (L_t for an L_t game)."""
        return self._cached("prob", t, mu)

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        mass = np.asarray(mass, dtype=np.float64).reshape(-1)
        return mass @ self.transition_matrix(t, mu)

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        if t >= self.horizon - 1:  # no transition after the last epoch (MFGLib's T)
            return np.zeros((self.n_states, self.n_actions))
        v = np.asarray(v_next, dtype=np.float64)
        return (self.transition_matrix(t, mu) @ v).reshape(self.n_states, self.n_actions)

    def transition_support(self, t: int, mu: FloatArray) -> tuple[IntArray, FloatArray]:
        """The non-zero entries of the dense rows P[s * A + a, :] (`finite.sparse_rows`); after
        the last epoch (MFGLib's T, no transition) every agent stays where it is."""
        if t >= self.horizon - 1:
            if self._stay is None:
                stay = np.repeat(np.arange(self.n_states, dtype=np.int64), self.n_actions)
                self._stay = (stay[:, None], np.ones((stay.shape[0], 1)))
            return self._stay
        dense = self.transition_matrix(t, mu)
        if self._sparse is None or self._sparse[0] is not dense:
            self._sparse = (dense, sparse_rows(dense))
        return self._sparse[1]


def make_mfglib_game(params: MFGLibParams) -> MFGLibGame:
    """The `mfglib` benchmark's game from validated parameters."""
    env = make_environment(params.env, **params.kwargs())
    return MFGLibGame(env, name=params.env, state_action=params.env in STATE_ACTION_ENVS)
