"""common/protocol/request.py: the site reads the server's request and refuses what is malformed."""

import math

import pytest

from common.config import RunSettings
from common.protocol.request import RequestError, TrainRequest

GOOD = {"server-round": 1, **TrainRequest.of_run(RunSettings(), "run-1")}


def test_an_honest_servers_request_parses_to_the_run_settings():
    settings = RunSettings(num_server_rounds=5, noise_multiplier=1.5, batch_size=64)
    request = TrainRequest.from_config({"server-round": 3, **TrainRequest.of_run(settings, "r")})
    assert request == TrainRequest(
        server_round=3,
        run_key="r",
        num_server_rounds=5,
        dp=True,
        target_epsilon=settings.target_epsilon,
        target_delta=settings.target_delta,
        accountant=settings.accountant,
        noise_multiplier=1.5,
        max_grad_norm=settings.max_grad_norm,
        local_epochs=settings.local_epochs,
        local_steps=settings.local_steps,
        batch_size=64,
        learning_rate=settings.learning_rate,
        head_learning_rate=settings.head_learning_rate,
        optimizer=settings.optimizer,
        grad_sample_mode=settings.grad_sample_mode,
        max_physical_batch_size=settings.max_physical_batch_size,
        evaluate_received=False,
    )


def test_integers_are_accepted_for_float_keys():
    assert TrainRequest.from_config(GOOD | {"target-epsilon": 3}).target_epsilon == 3.0


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("noise-multiplier", math.nan, "noise-multiplier must be finite"),
        ("noise-multiplier", -0.5, "noise-multiplier must be >= 0"),
        ("noise-multiplier", 1e9, "noise-multiplier must be >= 0 and <= 10000"),
        ("max-grad-norm", 0.0, "max-grad-norm must be > 0"),
        ("max-grad-norm", math.inf, "max-grad-norm must be finite"),
        ("max-grad-norm", 1e12, "<= 1e+06"),
        ("target-epsilon", -1.0, "target-epsilon must be > 0"),
        ("target-epsilon", 1e6, "<= 1000"),
        ("batch-size", 0, "batch-size must be >= 1"),
        ("batch-size", 2.5, "batch-size must be an integer"),
        ("batch-size", 10**12, "<= 1e+07"),
        ("local-epochs", -3, "local-epochs must be >= 1"),
        ("local-steps", -1, "local-steps must be >= 0"),
        ("learning-rate", math.nan, "learning-rate must be finite"),
        ("num-server-rounds", 0, "num-server-rounds must be >= 1"),
        ("dp", 1, "dp must be true or false"),
        ("batch-size", True, "batch-size must be a number"),
        ("target-epsilon", "8", "target-epsilon must be a number"),
        ("run-key", "", "run-key must be 1 to 200 printable characters"),
        ("run-key", "x" * 201, "run-key must be 1 to 200"),
        ("run-key", "a\nb", "run-key must be 1 to 200 printable"),
        ("run-key", 7, "run-key must be 1 to 200"),
        ("target-delta", -1e-9, "target-delta must be >= 0"),
        ("target-delta", 1.0, "target-delta must be >= 0 and < 1"),
        ("target-delta", math.nan, "target-delta must be finite"),
        ("accountant", "moments", r"accountant must be one of \['pld', 'rdp'\]"),
        ("accountant", 1, "accountant must be one of"),
        ("optimizer", "lbfgs", "optimizer must be one of"),
        ("grad-sample-mode", "none", "grad-sample-mode must be one of"),
        ("max-physical-batch-size", -1, "max-physical-batch-size must be >= 0"),
        ("head-learning-rate", math.inf, "head-learning-rate must be finite"),
    ],
)
def test_a_malformed_value_is_refused_naming_the_key(key, value, says):
    with pytest.raises(RequestError, match=says.replace("+", r"\+")):
        TrainRequest.from_config(GOOD | {key: value})


def test_missing_and_unknown_keys_are_named():
    config = dict(GOOD)
    del config["noise-multiplier"]
    with pytest.raises(RequestError, match=r"lacks \['noise-multiplier'\]"):
        TrainRequest.from_config(config)
    with pytest.raises(RequestError, match=r"does not know: \['secret-knob'\]"):
        TrainRequest.from_config(GOOD | {"secret-knob": 1})


def test_a_round_beyond_the_run_is_refused():
    with pytest.raises(RequestError, match="round 4 of a 3-round run"):
        TrainRequest.from_config(GOOD | {"server-round": 4, "num-server-rounds": 3})


def test_what_a_site_executes_travels_in_the_request():
    """The run config names the model only: every knob of the round's DP-SGD and of its
    accounting (delta, accountant) is a checked request key."""
    settings = RunSettings(
        target_delta=1e-7,
        accountant="rdp",
        optimizer="adam",
        head_learning_rate=0.5,
        grad_sample_mode="ghost",
        max_physical_batch_size=8,
    )
    request = TrainRequest.from_config({"server-round": 1, **TrainRequest.of_run(settings, "r")})
    assert (request.target_delta, request.accountant, request.optimizer) == (1e-7, "rdp", "adam")
    assert (request.head_learning_rate, request.grad_sample_mode) == (0.5, "ghost")
    assert request.max_physical_batch_size == 8
