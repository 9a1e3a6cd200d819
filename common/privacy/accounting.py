"""Epsilon of a sequence of DP-SGD releases, from what actually ran.

A release batch is k steps of the Poisson-subsampled Gaussian mechanism: sample rate q,
noise multiplier sigma (noise std = sigma * C for clip norm C). Epsilon at a given delta is
computed by composing every batch with a well-kept accountant:

- "pld": Google dp-accounting's privacy-loss-distribution accountant (tightest; the default),
- "rdp": dp-accounting's Renyi-DP accountant (looser, equal to Opacus's RDP accountant).

Nothing here stores an epsilon: callers keep (sigma, q, k) and ask again (STYLE.md, dp-accounting).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import dp_accounting
from dp_accounting import pld, rdp

from common.privacy.pld_cache import pld_epsilon

ACCOUNTANTS = ("pld", "rdp")


class _SkipRdpOrderNotes(logging.Filter):
    """dp-accounting's RDP logs a warning per Renyi order it cannot evaluate at small alpha and
    leaves that order out (a correct, conservative choice); drop that one message only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Excluding this order" not in record.getMessage()


logging.getLogger("absl").addFilter(_SkipRdpOrderNotes())

# PLD grid step for the privacy-loss values: dp-accounting's default. A coarser grid (1e-3) is
# faster but over-reports epsilon by up to ~80% at small sample rates (q ~ 1e-3, many steps).
PLD_VALUE_DISCRETIZATION = 1e-4


@dataclass(frozen=True)
class DpRelease:
    """k = ``steps`` DP-SGD steps with noise multiplier sigma and Poisson sample rate q."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise multiplier sigma must be > 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate q must be in (0, 1], got {self.sample_rate}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")

    def event(self) -> dp_accounting.DpEvent:
        """The dp-accounting event: SelfComposed(PoissonSampled(q, Gaussian(sigma)), k)."""
        step = dp_accounting.PoissonSampledDpEvent(
            self.sample_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
        )
        return dp_accounting.SelfComposedDpEvent(step, self.steps)


def make_accountant(name: str) -> dp_accounting.PrivacyAccountant:
    """A fresh accountant of the named kind ("pld" or "rdp")."""
    if name == "pld":
        return pld.PLDAccountant(value_discretization_interval=PLD_VALUE_DISCRETIZATION)
    if name == "rdp":
        return rdp.RdpAccountant()
    raise ValueError(f"unknown accountant {name!r}; use one of {', '.join(ACCOUNTANTS)}")


def compute_epsilon(releases: Iterable[DpRelease], delta: float, accountant: str = "pld") -> float:
    """Epsilon at ``delta`` of all ``releases`` composed (0.0 when nothing was released)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    merged: dict[tuple[float, float], int] = {}
    for release in releases:
        if release.steps:
            key = (release.noise_multiplier, release.sample_rate)
            merged[key] = merged.get(key, 0) + release.steps
    if not merged:
        return 0.0
    if accountant == "pld" and all(q == 1.0 for _, q in merged):
        return gaussian_epsilon(merged, delta)
    return _composed_epsilon(tuple(sorted(merged.items())), delta, accountant)


def gaussian_epsilon(batches: dict[tuple[float, float], int], delta: float) -> float:
    """Exact epsilon of Gaussian answers without subsampling (q = 1): k_i answers at z_i
    compose to one Gaussian mechanism with z = (sum k_i / z_i^2)^(-1/2) (their privacy loss
    is Gaussian), whose delta(epsilon) dp-accounting's GaussianPrivacyLoss gives exactly
    (Balle & Wang 2018); epsilon is found by bisection. Equal to the PLD accountant up to its
    discretization (which only over-reports), and thousands of times faster at many answers."""
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

    z = sum(k / sigma**2 for (sigma, _), k in batches.items()) ** -0.5
    loss = GaussianPrivacyLoss(standard_deviation=z, sensitivity=1.0)
    if loss.get_delta_for_epsilon(0.0) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while loss.get_delta_for_epsilon(high) > delta:
        low, high = high, 2 * high
    for _ in range(60):  # to ~1e-15 relative: delta(eps) is decreasing in eps
        mid = (low + high) / 2
        if loss.get_delta_for_epsilon(mid) > delta:
            low = mid
        else:
            high = mid
    return high


@lru_cache(maxsize=1024)
def _composed_epsilon(
    batches: tuple[tuple[tuple[float, float], int], ...], delta: float, accountant: str
) -> float:
    """Cached: each round asks again for the same history (spent before, spent after). PLD:
    the same composition as PLDAccountant, with per-(sigma, q) and per-(sigma, q, k) PLDs
    reused across histories (common.privacy.pld_cache)."""
    if accountant == "pld":
        return pld_epsilon(batches, delta, PLD_VALUE_DISCRETIZATION)
    acc = make_accountant(accountant)
    for (sigma, q), steps in batches:
        acc.compose(DpRelease(sigma, q, steps).event())
    return float(acc.get_epsilon(delta))
