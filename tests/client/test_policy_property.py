"""Property: whatever the site's policy and whatever the server asks, the site never spends more
than its budget, never trains below its noise floor or above its clip cap or rounds cap, and
every refusal names its reason and records nothing.

Each example is a random policy and a random sequence of server requests (valid, clamped and
malformed), run through the site's real decision path (request parsing, policy, run plan,
ledger reservation) on a real SQLite ledger. Training itself is replaced by its outcome (all
steps taken, fewer steps, or a crash that cancels the reservation): the budget guard must hold
whatever training does. Calibration is replaced by a deliberately careless stub (any sigma,
however small): the guard must hold even if the plan is wrong.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import client.gate as gate
from client.gate import authorize_round
from client.policy import RoundRefused, check_non_private
from common.config import SiteSettings
from common.privacy.ledger import PrivacyLedger
from common.protocol.records import STATUS_NAMES, TRAINED
from common.protocol.request import RequestError, TrainRequest

FP = "d" * 64
N = 100  # the site's records
# RAM-backed folder where there is one: 1,000 ledgers on a real disk cost minutes of fsync.
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

POLICIES = st.builds(
    SiteSettings,
    epsilon_budget=st.floats(0.05, 20.0),
    delta=st.sampled_from([0.0, 1e-5, 1e-3]),
    min_noise_multiplier=st.one_of(st.just(0.0), st.floats(0.3, 5.0)),
    max_grad_norm=st.one_of(st.just(0.0), st.floats(0.01, 10.0)),
    max_rounds_per_run=st.integers(0, 2),
    allow_non_private=st.booleans(),
)
VALID_REQUESTS = st.fixed_dictionaries(
    {
        "run-key": st.just("run"),
        "num-server-rounds": st.integers(4, 8),
        "dp": st.sampled_from([True, True, True, False]),
        "target-epsilon": st.sampled_from([0.5, 1.0, 3.0, 8.0, 50.0]),
        "noise-multiplier": st.sampled_from([0.0, 0.0, 0.3, 0.6, 1.0, 2.5]),
        "max-grad-norm": st.floats(0.01, 100.0),
        "local-epochs": st.integers(1, 2),
        "local-steps": st.sampled_from([0, 1, 3]),
        # B >= n: q = 1 (cheap exact RDP); B = n/2: q = 0.5
        "batch-size": st.sampled_from([N, 2 * N, N // 2]),
        "learning-rate": st.just(0.1),
        "evaluate-received": st.just(False),
    }
)
BAD_VALUES = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e12, 0, 2.5, "1", True])
MALFORMED_REQUESTS = st.tuples(
    VALID_REQUESTS, st.sampled_from(sorted(VALID_REQUESTS.wrapped_strategy.mapping)), BAD_VALUES
).map(lambda t: t[0] | {t[1]: t[2]})
REQUESTS = st.one_of(VALID_REQUESTS, VALID_REQUESTS, VALID_REQUESTS, MALFORMED_REQUESTS)
OUTCOMES = st.sampled_from(["all steps", "fewer steps", "crash"])


def careless_calibration(target_epsilon, delta, sample_rate, steps, accountant="pld"):
    """Any sigma, unrelated to the target: 0.2 .. 1.2."""
    return 0.2 + (hash((target_epsilon, delta, sample_rate, steps)) % 11) / 10


@settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    policy=POLICIES,
    rounds=st.lists(st.tuples(REQUESTS, OUTCOMES), min_size=1, max_size=5),
    run_ids=st.lists(st.sampled_from(["run-a", "run-b"]), min_size=5, max_size=5),
)
def test_no_policy_and_no_request_takes_a_site_over_its_budget(policy, rounds, run_ids):
    refusals = trained = 0
    with (
        pytest.MonkeyPatch.context() as patch,
        tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp,
        PrivacyLedger(Path(tmp) / "ledger.sqlite") as ledger,
    ):
        patch.setattr(gate, "calibrate_noise_multiplier", careless_calibration)
        for number, ((config, outcome), run_id) in enumerate(
            zip(rounds, run_ids, strict=False), start=1
        ):
            before = ledger.rows(FP)
            status, reason, grant = _decide(ledger, policy, run_id, number, config)
            event(STATUS_NAMES.get(status, "?"))
            if status != TRAINED:
                refusals += 1
                assert status in STATUS_NAMES and reason, (status, reason)
                assert ledger.rows(FP) == before, "a refused round recorded a release"
                continue
            if grant is None:  # an allowed non-private round: no DP release to check
                continue
            trained += 1
            release = grant.release
            assert release.noise_multiplier >= policy.min_noise_multiplier
            if policy.max_grad_norm:
                assert grant.max_grad_norm <= policy.max_grad_norm
            if outcome == "crash":
                ledger.cancel(grant.row_id)
            else:
                steps = release.steps if outcome == "all steps" else release.steps // 2
                ledger.mark_released(grant.row_id, steps)
            spent = ledger.epsilon_spent(FP, grant.delta, "rdp")
            assert spent <= grant.epsilon_budget, (spent, grant.epsilon_budget)
            if policy.epsilon_budget:
                assert grant.epsilon_budget == policy.epsilon_budget
            if policy.max_rounds_per_run:
                assert ledger.rounds_recorded(FP, run_id) <= policy.max_rounds_per_run
    assert refusals + trained <= len(rounds)


def _decide(ledger: PrivacyLedger, policy: SiteSettings, run_id: str, number: int, config: dict):
    """The site's decision path of ``client.local_round.run_train_round`` up to training."""
    config = {"server-round": number, **config}
    if config["run-key"] == "run":
        config["run-key"] = run_id
    try:
        request = TrainRequest.from_config(config)
    except RequestError as err:
        return 3, f"invalid request: {err}", None
    try:
        check_non_private(request, policy)
    except RoundRefused as refusal:
        return refusal.status, str(refusal), None
    if not request.dp:
        return TRAINED, "", None
    q = 1.0 / math.ceil(N / request.batch_size)
    steps = request.local_steps or int(1 / q) * request.local_epochs
    try:
        grant = authorize_round(
            ledger,
            FP,
            request.run_key,
            request.server_round,
            request,
            policy,
            requested_delta=0.0,
            accountant="rdp",
            num_records=N,
            sample_rate=q,
            steps=steps,
        )
    except RoundRefused as refusal:
        return refusal.status, str(refusal), None
    return TRAINED, "", grant
