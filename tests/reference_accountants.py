"""Independent accountants the tests check fedpriv's epsilon against (no fedpriv code here)."""

from __future__ import annotations

from collections.abc import Iterable

import dp_accounting
from dp_accounting import pld

Batch = tuple[float, float, int]  # (noise multiplier sigma, sample rate q, steps)


def dpsgd_event(sigma: float, q: float, steps: int) -> dp_accounting.DpEvent:
    """SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps), built here, not by fedpriv."""
    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def reference_pld(batches: Iterable[Batch], delta: float) -> float:
    """dp-accounting PLD, default discretisation, one composed event per batch."""
    accountant = pld.PLDAccountant()
    for sigma, q, steps in batches:
        accountant.compose(dpsgd_event(sigma, q, steps))
    return accountant.get_epsilon(delta)


def reference_rdp(batches: Iterable[Batch], delta: float) -> float:
    """dp-accounting RDP, one composed event per batch."""
    accountant = dp_accounting.rdp.RdpAccountant()
    for sigma, q, steps in batches:
        accountant.compose(dpsgd_event(sigma, q, steps))
    return accountant.get_epsilon(delta)


def ledger_rdp(rows: list) -> float:
    """reference_rdp over ledger rows (sigma, q, steps each), at the delta of the last."""
    batches = [(r.noise_multiplier, r.sample_rate, r.steps) for r in rows]
    return reference_rdp(batches, rows[-1].delta)


def opacus_rdp(batches: Iterable[Batch], delta: float) -> float:
    """Opacus's RDP accountant over the same history."""
    from opacus.accountants import RDPAccountant  # imported here: spawned workers skip torch

    accountant = RDPAccountant()
    accountant.history = list(batches)
    return accountant.get_epsilon(delta)
