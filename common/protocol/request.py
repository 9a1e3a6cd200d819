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

from common.config import GRAD_SAMPLE_MODES, OPTIMIZERS, RunSettings
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
from common.privacy.accounting import ACCOUNTANTS


class RequestError(ValueError):
    """The server's request is malformed or out of range; the site trains nothing."""


@dataclass(frozen=True)
class TrainRequest:
    """What the server asks of a site for one round.

    run_key: the run's name as the site keys its plan and rounds (a resumed run keeps it);
    noise_multiplier: sigma asked for (0 = calibrate sigma to target_epsilon for the whole run);
    max_grad_norm: C; target_epsilon: what the run may cost the site; target_delta: the delta
    asked (0 = the site's 0.1/n; a site never loosens its own); accountant: how the site composes
    (pld or rdp, both upper bounds); local_steps: 0 = epochs; head_learning_rate: 0 = the same;
    optimizer, grad_sample_mode, max_physical_batch_size: how the site runs its DP-SGD steps
    (none changes the mechanism: sigma, q, C and steps do); evaluate_received: also evaluate the
    received global model on the local validation split. Everything a site executes for the
    round is in here; the run config only names the model (architecture, pooling, max-length)
    that the arrays must fit.
    """

    server_round: int
    run_key: str
    num_server_rounds: int
    dp: bool
    target_epsilon: float
    target_delta: float
    accountant: str
    noise_multiplier: float
    max_grad_norm: float
    local_epochs: int
    local_steps: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float
    optimizer: str
    grad_sample_mode: str
    max_physical_batch_size: int
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
            "target-delta": settings.target_delta,
            "accountant": settings.accountant,
            "noise-multiplier": settings.noise_multiplier,
            "max-grad-norm": settings.max_grad_norm,
            "local-epochs": settings.local_epochs,
            "local-steps": settings.local_steps,
            "batch-size": settings.batch_size,
            "learning-rate": settings.learning_rate,
            "head-learning-rate": settings.head_learning_rate,
            "optimizer": settings.optimizer,
            "grad-sample-mode": settings.grad_sample_mode,
            "max-physical-batch-size": settings.max_physical_batch_size,
            "evaluate-received": settings.evaluate_with_train,
        }


# key -> (type, lowest, highest, lowest excluded?[, highest excluded?]); a string among
# choices: (str, choices)
REQUEST_KEYS: dict[str, tuple[Any, ...]] = {
    "server-round": (int, 1, MAX_ROUNDS, False),
    "run-key": (str, 1, MAX_RUN_KEY, False),
    "num-server-rounds": (int, 1, MAX_ROUNDS, False),
    "dp": (bool, 0, 1, False),
    "target-epsilon": (float, 0, MAX_TARGET_EPSILON, True),
    "target-delta": (float, 0, 1, False, True),
    "accountant": (str, ACCOUNTANTS),
    "noise-multiplier": (float, 0, MAX_NOISE_MULTIPLIER, False),
    "max-grad-norm": (float, 0, MAX_CLIP_NORM, True),
    "local-epochs": (int, 1, MAX_LOCAL_EPOCHS, False),
    "local-steps": (int, 0, MAX_LOCAL_STEPS, False),
    "batch-size": (int, 1, MAX_BATCH_SIZE, False),
    "learning-rate": (float, 0, MAX_LEARNING_RATE, True),
    "head-learning-rate": (float, 0, MAX_LEARNING_RATE, False),
    "optimizer": (str, OPTIMIZERS),
    "grad-sample-mode": (str, GRAD_SAMPLE_MODES),
    "max-physical-batch-size": (int, 0, MAX_BATCH_SIZE, False),
    "evaluate-received": (bool, 0, 1, False),
}
_NAMES = [(key, key.replace("-", "_")) for key in REQUEST_KEYS]


def _checked(key: str, value: Any, kind: type, *limits: Any) -> Any:
    if kind is str and len(limits) == 1:
        (choices,) = limits
        if not isinstance(value, str) or value not in choices:
            raise RequestError(f"{key} must be one of {list(choices)}, got {value!r}")
        return value
    low, high, open_low, open_high = (*limits, False)[:4]
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
    too_high = value >= high if open_high else value > high
    if too_low or too_high:
        bound = f"{'>' if open_low else '>='} {low:g} and {'<' if open_high else '<='} {high:g}"
        raise RequestError(f"{key} must be {bound}, got {value:g}")
    return kind(value)
