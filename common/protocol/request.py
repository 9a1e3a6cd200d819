"""The server's training request, as a site reads it from the train message's ConfigRecord.

The site trusts nothing in it: every value is type- and range-checked here (NaN, negative,
huge, missing and unknown keys are refused with the reason), and the site's policy then clamps
or refuses what it allows (``client.policy``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.config import RunSettings
from common.config.limits import (
    MAX_BATCH_SIZE,
    MAX_CLIP_NORM,
    MAX_LEARNING_RATE,
    MAX_LOCAL_EPOCHS,
    MAX_LOCAL_STEPS,
    MAX_NOISE_MULTIPLIER,
    MAX_ROUNDS,
    MAX_RUN_KEY,
    MAX_TARGET_EPSILON,
)


class RequestError(ValueError):
    """The server's request is malformed or out of range; the site trains nothing."""


@dataclass(frozen=True)
class TrainRequest:
    """What the server asks of a site for one round.

    run_key: the run's name as the site keys its plan and rounds (a resumed run keeps it);
    noise_multiplier: sigma asked for (0 = calibrate sigma to target_epsilon for the whole run);
    max_grad_norm: C; target_epsilon: what the run may cost the site; local_steps: 0 = epochs;
    evaluate_received: also evaluate the received global model on the local validation split.
    """

    server_round: int
    run_key: str
    num_server_rounds: int
    dp: bool
    target_epsilon: float
    noise_multiplier: float
    max_grad_norm: float
    local_epochs: int
    local_steps: int
    batch_size: int
    learning_rate: float
    evaluate_received: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainRequest:
        """Parse the train message's ConfigRecord; raise RequestError naming what is wrong."""
        missing = sorted(set(REQUEST_KEYS) - set(config))
        if missing:
            raise RequestError(f"request lacks {missing}")
        unknown = sorted(set(config) - set(REQUEST_KEYS))
        if unknown:
            raise RequestError(f"request holds keys this site does not know: {unknown}")
        values = {name: _checked(key, config[key], *REQUEST_KEYS[key]) for key, name in _NAMES}
        request = cls(**values)
        if request.server_round > request.num_server_rounds:
            raise RequestError(
                f"round {request.server_round} of a {request.num_server_rounds}-round run"
            )
        return request

    @staticmethod
    def of_run(settings: RunSettings, run_key: str) -> dict[str, Any]:
        """The request an honest server sends for ``settings`` (without server-round, which
        Flower's strategy adds each round)."""
        return {
            "run-key": run_key,
            "num-server-rounds": settings.num_server_rounds,
            "dp": settings.dp,
            "target-epsilon": settings.target_epsilon,
            "noise-multiplier": settings.noise_multiplier,
            "max-grad-norm": settings.max_grad_norm,
            "local-epochs": settings.local_epochs,
            "local-steps": settings.local_steps,
            "batch-size": settings.batch_size,
            "learning-rate": settings.learning_rate,
            "evaluate-received": settings.evaluate_with_train,
        }


# key -> (type, lowest, highest, lowest allowed exclusive?)
REQUEST_KEYS: dict[str, tuple[type, float, float, bool]] = {
    "server-round": (int, 1, MAX_ROUNDS, False),
    "run-key": (str, 1, MAX_RUN_KEY, False),
    "num-server-rounds": (int, 1, MAX_ROUNDS, False),
    "dp": (bool, 0, 1, False),
    "target-epsilon": (float, 0, MAX_TARGET_EPSILON, True),
    "noise-multiplier": (float, 0, MAX_NOISE_MULTIPLIER, False),
    "max-grad-norm": (float, 0, MAX_CLIP_NORM, True),
    "local-epochs": (int, 1, MAX_LOCAL_EPOCHS, False),
    "local-steps": (int, 0, MAX_LOCAL_STEPS, False),
    "batch-size": (int, 1, MAX_BATCH_SIZE, False),
    "learning-rate": (float, 0, MAX_LEARNING_RATE, True),
    "evaluate-received": (bool, 0, 1, False),
}
_NAMES = [(key, key.replace("-", "_")) for key in REQUEST_KEYS]


def _checked(key: str, value: Any, kind: type, low: float, high: float, open_low: bool) -> Any:
    if kind is str:
        if not isinstance(value, str) or not low <= len(value) <= high or not value.isprintable():
            raise RequestError(f"{key} must be 1 to {high:g} printable characters, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise RequestError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{key} must be a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise RequestError(f"{key} must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise RequestError(f"{key} must be finite, got {value}")
    too_low = value <= low if open_low else value < low
    if too_low or value > high:
        bound = f"{'>' if open_low else '>='} {low:g}"
        raise RequestError(f"{key} must be {bound} and <= {high:g}, got {value:g}")
    return kind(value)
