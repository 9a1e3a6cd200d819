"""Epsilon of a sequence of DP-SGD releases, from what actually ran.

A release batch is k steps of the Poisson-subsampled Gaussian mechanism: sample rate q,
noise multiplier sigma (noise std = sigma * C for clip norm C). Epsilon at a given delta is
computed by composing every batch with a well-kept accountant:

- "pld": Google dp-accounting's privacy-loss-distribution accountant (tightest; the default),
  on cached PLDs (common.privacy.pld_cache.CachedPLDAccountant),
- "rdp": dp-accounting's Renyi-DP accountant (looser, equal to Opacus's RDP accountant).

Nothing here stores an epsilon: callers keep (sigma, q, k) and ask again (STYLE.md, dp-accounting).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import dp_accounting
from dp_accounting import rdp

from common.privacy.pld_cache import CachedPLDAccountant

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


@dataclass(frozen=True)
class NonPrivateRelease:
    """An update trained without DP left the site (run ``run_id``, round ``round``): no epsilon
    bound holds for its records any more (dp-accounting's NonPrivateDpEvent: epsilon = inf)."""

    run_id: str
    round: int

    def event(self) -> dp_accounting.DpEvent:
        return dp_accounting.NonPrivateDpEvent()


Release = DpRelease | NonPrivateRelease


def make_accountant(name: str) -> dp_accounting.PrivacyAccountant:
    """A fresh accountant of the named kind: "pld" (dp-accounting's PLD accountant on cached
    PLDs, common.privacy.pld_cache) or "rdp" (dp-accounting's RdpAccountant)."""
    if name == "pld":
        return CachedPLDAccountant(value_discretization=PLD_VALUE_DISCRETIZATION)
    if name == "rdp":
        return rdp.RdpAccountant()
    raise ValueError(f"unknown accountant {name!r}; use one of {', '.join(ACCOUNTANTS)}")


def compute_epsilon(releases: Iterable[Release], delta: float, accountant: str = "pld") -> float:
    """Epsilon at ``delta`` of all ``releases`` composed (0.0 when nothing was released, inf
    once a non-private release is among them)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    merged: dict[tuple[float, float], int] = {}
    non_private = False
    for release in releases:
        if isinstance(release, NonPrivateRelease):
            non_private = True
        elif release.steps:
            key = (release.noise_multiplier, release.sample_rate)
            merged[key] = merged.get(key, 0) + release.steps
    if not (merged or non_private):
        return 0.0
    return _composed_epsilon(tuple(merged.items()), non_private, delta, accountant)


@lru_cache(maxsize=1024)
def _composed_epsilon(
    batches: tuple[tuple[tuple[float, float], int], ...],
    non_private: bool,
    delta: float,
    accountant: str,
) -> float:
    """Cached: each round asks again for the same history (spent before, spent after). One
    event per (sigma, q) group (RDP: sorted; the PLD accountant orders them itself)."""
    acc = make_accountant(accountant)
    for (sigma, q), steps in batches if accountant == "pld" else sorted(batches):
        acc.compose(DpRelease(sigma, q, steps).event())
    if non_private:
        acc.compose(dp_accounting.NonPrivateDpEvent())
    return float(acc.get_epsilon(delta))
