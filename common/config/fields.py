"""How a setting is declared once: its default, its limits and its meaning, in the dataclass field.

``setting(default, low=..., high=..., cap=..., choices=..., zero=...)`` stores the limits in the
field's metadata; ``check_fields`` enforces them for every field of a settings dataclass, and
``typed_values`` turns a kebab-case mapping (Flower's run config, a node config, a TOML table) into
typed field values. Our own (a few lines) because dataclasses have no validation of their own and
pydantic is not a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import Field, field, fields
from typing import Any


class ConfigError(ValueError):
    """A run or site setting is missing, unknown, of the wrong type or out of range."""


def setting(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    cap: float | None = None,
    choices: tuple[str, ...] = (),
    zero: str = "",
    hint: str = "",
) -> Any:
    """A settings field: ``default``; numbers in [low, high] (``open_*``: the bound excluded;
    always finite) and at most ``cap`` (a sanity limit beyond which no setting is meaningful,
    shared with the request's checks); strings among ``choices``; ``zero``: what 0 means, if 0
    is allowed outside the range (e.g. "no cap"); ``hint``: what to do, appended to the error."""
    limits = {"low": low, "high": high, "open_low": open_low, "open_high": open_high, "cap": cap}
    return field(
        default=default, metadata={**limits, "choices": choices, "zero": zero, "hint": hint}
    )


def kebab(name: str) -> str:
    return name.replace("_", "-")


def check_fields(settings: Any, where: str = "", section: type | None = None) -> None:
    """Raise ConfigError naming the first field of ``settings`` (only those ``section`` declares,
    if given) outside its declared limits."""
    prefix = f"{where}: " if where else ""
    for spec in fields(section or settings):
        message = _violation(spec, getattr(settings, spec.name))
        if message:
            hint = spec.metadata.get("hint", "")
            raise ConfigError(f"{prefix}{message}" + (f" ({hint})" if hint else ""))


def _violation(spec: Field, value: Any) -> str:
    meta, key = spec.metadata, kebab(spec.name)
    if meta.get("choices") and value not in meta["choices"]:
        return f"{key} must be one of {list(meta['choices'])}, got {value!r}"
    low, high, cap = meta.get("low"), meta.get("high"), meta.get("cap")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if low is None and high is None and cap is None:
        return ""
    if value == 0 and meta.get("zero"):
        return ""
    low_ok = low is None or (value > low if meta["open_low"] else value >= low)
    high_ok = high is None or (value < high if meta["open_high"] else value <= high)
    if math.isfinite(value) and low_ok and high_ok and (cap is None or value <= cap):
        return ""
    what = "an integer" if isinstance(spec.default, int) else "a finite number"
    if high is not None and low is not None:
        left, right = "(" if meta["open_low"] else "[", ")" if meta["open_high"] else "]"
        bound = f"in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        bound = f"{what} {'>' if meta['open_low'] else '>='} {low:g}"
    else:
        bound = what
    if cap is not None:
        bound += f" and at most {cap:g}"
    zero = f" (0 = {meta['zero']})" if meta.get("zero") else ""
    return f"{key} must be {bound}{zero}, got {value:g}"


def typed_values(cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Field values of ``cls`` from kebab-case ``values``: unknown keys, wrong types and NaN
    raise ConfigError naming the key; ints given for float fields become floats."""
    known = {kebab(f.name): f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    require(not unknown, f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        spec = known[key]
        default = spec.default
        if isinstance(default, bool):
            require(isinstance(value, bool), f"{where}: {key} must be true or false, not {value!r}")
        elif isinstance(default, int):
            require(
                isinstance(value, int) and not isinstance(value, bool),
                f"{where}: {key} must be an integer, got {value!r}",
            )
        elif isinstance(default, float):
            require(
                isinstance(value, int | float) and not isinstance(value, bool),
                f"{where}: {key} must be a number, got {value!r}",
            )
            value = float(value)
            require(not math.isnan(value), f"{where}: {key} must not be NaN")
        else:
            require(isinstance(value, str), f"{where}: {key} must be a string, got {value!r}")
        out[spec.name] = value
    return out


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
