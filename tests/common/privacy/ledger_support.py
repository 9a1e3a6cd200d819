"""Shared by the ledger's storage tests: dataset keys, and a reservation whose admission rule
admits everything (these tests check what is stored; the budget rule is the site gate's,
tested in tests/client/test_gate.py)."""

from tests.reference_accountants import opacus_rdp as _opacus_rdp
from tests.reference_accountants import reference_pld as _reference_pld

DELTA = 1e-5
FP = "a" * 64  # dataset fingerprints (sha256 hex digests)
OTHER_FP = "b" * 64


def reference_pld(batches, delta=DELTA):
    return _reference_pld(batches, delta)


def opacus_rdp(batches, delta=DELTA):
    return _opacus_rdp(batches, delta)


def admit_all(past):
    """An admission rule that admits every reservation."""


def reserve(
    ledger,
    release,
    *,
    fingerprint=FP,
    run_id="run-1",
    round_number=1,
    accountant="pld",
    epsilon_budget=1e3,
    delta=DELTA,
):
    return ledger.reserve(
        fingerprint,
        run_id,
        round_number,
        release,
        delta=delta,
        accountant=accountant,
        epsilon_budget=epsilon_budget,
        admit=admit_all,
    )


def batches(rows):
    return [(r.noise_multiplier, r.sample_rate, r.steps) for r in rows]
