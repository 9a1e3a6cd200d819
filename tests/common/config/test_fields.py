"""common/config/fields.py: limits declared once on a field, checked for any settings class."""

from dataclasses import dataclass

import pytest

from common.config.fields import ConfigError, check_fields, setting, typed_values


@dataclass(frozen=True)
class Knobs:
    rate: float = setting(0.5, low=0, high=1, open_low=True)
    cap: int = setting(0, low=3, zero="no cap")
    mode: str = setting("a", choices=("a", "b"))
    budget: float = setting(1.0, low=0, hint="set it in the policy")
    sigma: float = setting(1.0, low=0, open_low=True, cap=100.0)
    free: str = ""


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"rate": 0.0}, r"rate must be in \(0, 1\], got 0"),
        ({"rate": 1.5}, r"rate must be in \(0, 1\], got 1.5"),
        ({"rate": float("inf")}, "rate must be in"),
        ({"cap": 2}, r"cap must be an integer >= 3 \(0 = no cap\), got 2"),
        ({"sigma": 0.0}, "sigma must be a finite number > 0 and at most 100, got 0"),
        ({"sigma": 101.0}, "sigma must be a finite number > 0 and at most 100, got 101"),
        ({"mode": "c"}, r"mode must be one of \['a', 'b'\], got 'c'"),
        ({"budget": -1.0}, r"site x: budget must be a finite number >= 0, got -1 \(set it in"),
    ],
)
def test_a_value_outside_its_declared_limits_is_named_with_them(values, says):
    with pytest.raises(ConfigError, match=says):
        check_fields(Knobs(**values), "site x" if "budget" in values else "")


def test_values_at_the_limits_and_the_special_zero_pass():
    check_fields(Knobs(rate=1.0, cap=0, mode="b", budget=0.0))
    check_fields(Knobs(cap=3))


def test_typed_values_convert_ints_to_floats_and_refuse_wrong_types_nan_and_unknown_keys():
    assert typed_values(Knobs, {"rate": 1, "free": "x"}, "t") == {"rate": 1.0, "free": "x"}
    for values, says in [
        ({"cap": 2.0}, "cap must be an integer"),
        ({"cap": True}, "cap must be an integer"),
        ({"rate": "0.5"}, "rate must be a number"),
        ({"rate": float("nan")}, "rate must not be NaN"),
        ({"free": 3}, "free must be a string"),
        ({"rat": 0.5}, r"unknown keys \['rat'\]"),
    ]:
        with pytest.raises(ConfigError, match=says):
            typed_values(Knobs, values, "t")
