"""Out-of-range benchmark parameters fail with an error naming the parameter, the value and the
allowed range, for every parameter model in the registry."""

from __future__ import annotations

from typing import Any

import annotated_types as at
import pytest
from pydantic import BaseModel, ValidationError

from mfdiffuser.envs.building_evacuation import BuildingEvacuationParams
from mfdiffuser.envs.crowd_2d import Crowd2DParams
from mfdiffuser.envs.predator_prey import PredatorPreyParams
from mfdiffuser.envs.registry import BENCHMARKS
from mfdiffuser.envs.sis import SISParams
from mfdiffuser.platform.config import ConfigError, load_config

MODELS: dict[str, type[BaseModel]] = {name: s.params_model for name, s in BENCHMARKS.items()}


def _num(v: float) -> str:
    """A bound as pydantic prints it (0.0 -> '0')."""
    return str(int(v)) if float(v).is_integer() else str(v)


def _bound_cases() -> list[tuple[str, str, Any, str]]:
    """(benchmark, field, out-of-range value, text of the bound) for every numeric bound."""
    cases = []
    for name, model in sorted(MODELS.items()):
        for field, info in model.model_fields.items():
            for m in info.metadata:
                if isinstance(m, at.Ge):
                    cases.append((name, field, m.ge - 1, f"greater than or equal to {_num(m.ge)}"))
                elif isinstance(m, at.Gt):
                    cases.append((name, field, m.gt - 1, f"greater than {_num(m.gt)}"))
                elif isinstance(m, at.Le):
                    cases.append((name, field, m.le + 1, f"less than or equal to {_num(m.le)}"))
                elif isinstance(m, at.Lt):
                    cases.append((name, field, m.lt + 1, f"less than {_num(m.lt)}"))
    return cases


CASES = _bound_cases()


def test_every_bounded_parameter_is_covered() -> None:
    fields = {(name, field) for name, field, _, _ in CASES}
    for must in [
        ("crowd_1d", "size"),
        ("crowd_2d", "noise_intensity"),
        ("sis", "initial_infected"),
        ("predator_prey", "size"),
        ("predator_prey", "noise_probability"),
        ("gaussian_squeeze", "width"),
        ("crowd_2d", "size"),  # the grids are bounded above: no 10^10-state allocation
        ("crowd_motion", "torus_l"),
        ("building_evacuation", "floor_w"),
    ]:
        assert must in fields


@pytest.mark.parametrize(("name", "field", "value", "bound"), CASES)
def test_out_of_range_names_field_value_and_bound(
    name: str, field: str, value: Any, bound: str
) -> None:
    with pytest.raises(ValidationError) as err:
        MODELS[name](**{field: value})
    text = str(err.value)
    assert field in text and bound in text and str(value) in text


@pytest.mark.parametrize(("name", "field", "value", "bound"), CASES)
def test_the_config_loader_reports_the_same(name: str, field: str, value: Any, bound: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"benchmark.name={name}", f"benchmark.params.{field}={value}"])
    text = str(err.value)
    assert f"params.{field}" in text and bound in text


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (Crowd2DParams, {"walls": "##\n##"}, "walls: the map has no free cell"),
        (Crowd2DParams, {"walls": "#.\n#"}, "walls: rows must all have the same length"),
        (Crowd2DParams, {"size": 4, "initial": [(4, 0)]}, r"initial: cell \(4, 0\) is off"),
        (Crowd2DParams, {"initial": [(0, 0)], "initial_weights": [-1.0]}, "initial_weights"),
        (Crowd2DParams, {"noise_intensity": -0.5}, "noise_intensity"),
        (SISParams, {"initial_infected": 1.5}, "initial_infected"),
        (PredatorPreyParams, {"reward_matrix": [[0.0, 1.0]]}, "reward_matrix: must be square"),
        (PredatorPreyParams, {"initial": [(0, 0)]}, "initial: need one start cell"),
        (PredatorPreyParams, {"size": 3, "initial": [(0, 0), (3, 0), (0, 2)]}, "0..2"),
        (PredatorPreyParams, {"geometry": "sphere"}, "geometry"),
        (
            BuildingEvacuationParams,
            {"n_floor": 100, "floor_l": 1000, "floor_w": 1000},
            "n_floor x floor_l x floor_w = 100,000,000 states; allowed: at most 1,000,000",
        ),
    ],
)
def test_structural_errors_are_named(
    model: type[BaseModel], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        model(**kwargs)


def test_unknown_parameters_are_rejected_by_name() -> None:
    for model in MODELS.values():
        with pytest.raises(ValidationError, match="no_such_parameter"):
            model(no_such_parameter=1)
