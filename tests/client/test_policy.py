"""client/policy.py: the site's rules applied to a request (pure functions, no ledger)."""

import pytest

from client.policy import (
    Clamp,
    RoundRefused,
    check_non_private,
    check_round_cap,
    clip_norm,
    noise_multiplier,
    planned_rounds,
    run_target_epsilon,
)
from common.config import RunSettings, SiteSettings
from common.protocol.records import NON_PRIVATE_REFUSED, ROUND_LIMIT
from common.protocol.request import TrainRequest


def request(**overrides) -> TrainRequest:
    config = {"server-round": 1, **TrainRequest.of_run(RunSettings(), "run-1")}
    return TrainRequest.from_config(config | overrides)


def test_non_private_requests_need_the_sites_consent():
    with pytest.raises(RoundRefused, match="allow-non-private") as refused:
        check_non_private(request(dp=False), SiteSettings())
    assert refused.value.status == NON_PRIVATE_REFUSED
    check_non_private(request(dp=False), SiteSettings(allow_non_private=True))
    check_non_private(request(dp=True), SiteSettings())


@pytest.mark.parametrize(
    ("asked", "planned", "floor", "used", "why"),
    [
        (1.0, 1.0, 0.0, 1.0, None),
        (0.5, 1.0, 0.0, 1.0, "run plan"),
        (0.5, 1.0, 2.0, 2.0, "site min-noise-multiplier"),
        (3.0, 1.0, 2.0, 3.0, None),  # more noise is always fine
        (1.0, 2.0, 2.0, 2.0, "site min-noise-multiplier"),
    ],
)
def test_noise_is_the_largest_of_request_plan_and_floor(asked, planned, floor, used, why):
    sigma, clamps = noise_multiplier(asked, planned, SiteSettings(min_noise_multiplier=floor))
    assert sigma == used
    assert clamps == ([] if why is None else [Clamp("noise-multiplier", asked, used, why)])


def test_clip_target_and_rounds_are_capped_by_the_policy():
    policy = SiteSettings(max_grad_norm=0.5, max_rounds_per_run=3)
    assert clip_norm(request(**{"max-grad-norm": 2.0}), policy) == (
        0.5,
        [Clamp("max-grad-norm", 2.0, 0.5, "site max-grad-norm")],
    )
    assert clip_norm(request(**{"max-grad-norm": 0.2}), policy) == (0.2, [])
    assert clip_norm(request(**{"max-grad-norm": 9.0}), SiteSettings()) == (9.0, [])
    assert run_target_epsilon(request(**{"target-epsilon": 9.0}), 4.0)[0] == 4.0
    assert run_target_epsilon(request(**{"target-epsilon": 2.0}), 4.0) == (2.0, [])
    assert planned_rounds(request(**{"num-server-rounds": 10}), policy)[0] == 3
    assert planned_rounds(request(**{"num-server-rounds": 10}), SiteSettings()) == (10, [])


def test_the_round_cap_refuses_once_reached():
    check_round_cap(2, SiteSettings(max_rounds_per_run=3))
    check_round_cap(100, SiteSettings())
    with pytest.raises(RoundRefused, match="at most 3 round") as refused:
        check_round_cap(3, SiteSettings(max_rounds_per_run=3))
    assert refused.value.status == ROUND_LIMIT


def test_a_clamp_reads_as_asked_used_and_why():
    assert str(Clamp("max-grad-norm", 2.0, 0.5, "site max-grad-norm")) == (
        "max-grad-norm 2 -> 0.5 (site max-grad-norm)"
    )
